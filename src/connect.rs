//! `muxguard connect`: resolve the host's settings, refuse an unsafe or
//! occupied control path, then run the master — in the background once its
//! socket is live, unless --foreground.

use std::ffi::OsString;
use std::process::ExitCode;

use crate::cli::ConnectArgs;
use crate::config::Persist;
use crate::daemon::{self, Started};
use crate::master::{self, MasterOptions};
use crate::paths;

pub fn run(args: ConnectArgs) -> anyhow::Result<ExitCode> {
    let master::Resolved {
        host,
        policy,
        control_path,
    } = master::resolve(&args.ssh, &args.policy, args.control_path.clone())?;
    if let Some(pid) = crate::mux::probe::check_control_path(&control_path)? {
        eprintln!(
            "muxguard: a master for {} is already running (pid {pid}) on {}",
            args.ssh.destination,
            control_path.display()
        );
        return Ok(ExitCode::SUCCESS);
    }

    if !args.foreground {
        let mut child_args: Vec<OsString> =
            vec!["--control-path".into(), control_path.clone().into()];
        if let Some(persist) = &args.persist {
            child_args.push("--persist".into());
            child_args.push(persist_arg(persist).into());
        }
        if args.no_sandbox {
            child_args.push("--no-sandbox".into());
        }
        if args.no_lanes {
            child_args.push("--no-lanes".into());
        }
        if let Some(n) = args.max_clients {
            child_args.push("--max-clients".into());
            child_args.push(n.to_string().into());
        }
        if let Some(file) = &args.audit_log {
            child_args.push("--audit-log".into());
            child_args.push(file.into());
        }
        child_args.extend(args.policy.to_args());
        child_args.extend(args.ssh.to_args());
        return Ok(match daemon::spawn_and_wait(&child_args)? {
            Started::Ready => ExitCode::SUCCESS,
            Started::Failed { code } => ExitCode::from(u8::try_from(code).unwrap_or(255)),
        });
    }

    // ssh's `ControlPersist no` means "until the master's own session
    // ends"; a muxguard master has no session of its own, so it persists.
    let persist = args.persist.unwrap_or(match host.control_persist {
        Persist::UntilLastClient => Persist::Forever,
        other => other,
    });
    let daemon_child = args.daemon_child;
    let socket_name = control_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "master".into());
    let log_file = paths::state_dir().join(format!("{socket_name}.log"));
    let stop = master::run(MasterOptions {
        config: host,
        control_path,
        persist,
        policy,
        audit_log: args.audit_log.clone(),
        sandbox: if args.no_sandbox {
            crate::sandbox::Mode::Disabled
        } else {
            crate::sandbox::Mode::Enforce
        },
        lanes: !args.no_lanes,
        max_clients: args.max_clients.map(|n| n as usize),
        on_ready: Box::new(move |_| {
            if daemon_child {
                daemon::detach(&log_file)
            } else {
                Ok(())
            }
        }),
    })?;
    Ok(if stop.is_failure() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

pub fn persist_arg(persist: &Persist) -> String {
    match persist {
        Persist::Forever => "yes".into(),
        Persist::UntilLastClient => "no".into(),
        Persist::Idle(d) => d.as_secs().to_string(),
    }
}
