//! `muxguard ensure`: for `Match exec` in ssh_config. Succeeds once a live
//! master serves the destination's control path, starting one in the
//! background if none does. Failing makes ssh skip the Match block and
//! connect on its own, which is the right fallback.
//!
//! The `ssh -G` that ensure (and connect) run evaluates the same
//! `Match exec` again; that nested ensure sees [`NESTED_ENV`] and succeeds
//! at once without doing anything, so the nested resolution keeps the
//! block's ControlPath and nothing recurses.

use std::ffi::OsString;
use std::process::ExitCode;
use std::time::Duration;

use crate::cli::EnsureArgs;
use crate::config::{self, NESTED_ENV};
use crate::daemon::{self, Started};
use crate::master;
use crate::paths::{self, Existing};

pub fn run(args: EnsureArgs) -> anyhow::Result<ExitCode> {
    if std::env::var_os(NESTED_ENV).is_some() {
        return Ok(ExitCode::SUCCESS);
    }
    let host = config::resolve(&args.ssh)?;
    let control_path = master::choose_control_path(args.control_path.clone(), &host, &args.ssh)?;
    if let Existing::Live { .. } = paths::probe(&control_path, Duration::from_secs(2)) {
        return Ok(ExitCode::SUCCESS);
    }
    let mut connect_args: Vec<OsString> = vec!["--control-path".into(), control_path.into()];
    if let Some(persist) = &args.persist {
        connect_args.push("--persist".into());
        connect_args.push(crate::connect::persist_arg(persist).into());
    }
    connect_args.extend(args.ssh.to_args());
    match daemon::spawn_and_wait(&connect_args)? {
        Started::Ready { .. } => Ok(ExitCode::SUCCESS),
        Started::Failed { .. } => Ok(ExitCode::FAILURE),
    }
}
