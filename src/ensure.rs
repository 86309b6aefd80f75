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
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use crate::cli::EnsureArgs;
use crate::config::{self, NESTED_ENV};
use crate::daemon::{self, Started};
use crate::mux::probe::{self, Existing};
use crate::paths;

pub fn run(args: EnsureArgs) -> anyhow::Result<ExitCode> {
    if std::env::var_os(NESTED_ENV).is_some() {
        return Ok(ExitCode::SUCCESS);
    }
    // Fast path: `ssh -G` costs several milliseconds on every ssh run, so
    // the control path it gave last time for the same arguments and the
    // same config files is remembered. A stale entry can only point at
    // another live master or at nothing; either way ssh still works.
    let cache = CacheEntry::new(&args);
    if let Some(path) = cache.as_ref().and_then(CacheEntry::load)
        && let Existing::Live { .. } = probe::probe(&path, Duration::from_secs(2))
    {
        return Ok(ExitCode::SUCCESS);
    }
    let host = config::resolve(&args.ssh)?;
    let control_path = paths::choose_control_path(args.control_path.clone(), &host, &args.ssh)?;
    if let Some(cache) = &cache {
        cache.store(&control_path);
    }
    if let Existing::Live { .. } = probe::probe(&control_path, Duration::from_secs(2)) {
        return Ok(ExitCode::SUCCESS);
    }
    let mut connect_args: Vec<OsString> = vec!["--control-path".into(), control_path.into()];
    if let Some(persist) = &args.persist {
        connect_args.push("--persist".into());
        connect_args.push(crate::connect::persist_arg(persist).into());
    }
    if args.no_lanes {
        connect_args.push("--no-lanes".into());
    }
    connect_args.extend(args.policy.to_args());
    connect_args.extend(args.ssh.to_args());
    match daemon::spawn_and_wait(&connect_args)? {
        Started::Ready => Ok(ExitCode::SUCCESS),
        Started::Failed { .. } => Ok(ExitCode::FAILURE),
    }
}

/// A remembered `ssh -G` answer: which control path these arguments give.
struct CacheEntry {
    file: PathBuf,
}

impl CacheEntry {
    /// The entry for these arguments and the current state of the config
    /// files ssh reads first (their size and modification time are part of
    /// the key, so editing them starts a new entry).
    fn new(args: &EnsureArgs) -> Option<CacheEntry> {
        use sha2::{Digest, Sha256};
        let home = config::home_dir();
        let mut hasher = Sha256::new();
        for arg in args.ssh.to_args() {
            hasher.update(arg.as_encoded_bytes());
            hasher.update([0]);
        }
        if let Some(path) = &args.control_path {
            hasher.update(path.as_os_str().as_encoded_bytes());
        }
        let config_files = match &args.ssh.config_file {
            Some(file) => vec![file.clone()],
            None => vec![
                home.join(".ssh/config"),
                PathBuf::from("/etc/ssh/ssh_config"),
            ],
        };
        for file in config_files {
            if let Ok(meta) = std::fs::metadata(&file) {
                use std::os::unix::fs::MetadataExt;
                hasher.update(format!(
                    "{}:{}:{}:{}",
                    file.display(),
                    meta.len(),
                    meta.mtime(),
                    meta.mtime_nsec()
                ));
            }
        }
        let key: String = hasher
            .finalize()
            .iter()
            .take(16)
            .map(|b| format!("{b:02x}"))
            .collect();
        Some(CacheEntry {
            file: paths::runtime_dir().join("ensure-cache").join(key),
        })
    }

    fn load(&self) -> Option<PathBuf> {
        let text = std::fs::read_to_string(&self.file).ok()?;
        Some(PathBuf::from(text.trim_end_matches('\n')))
    }

    fn store(&self, control_path: &std::path::Path) {
        let Some(dir) = self.file.parent() else {
            return;
        };
        if paths::ensure_private_dir(dir).is_err() {
            return;
        }
        let temp = self.file.with_extension("tmp");
        if std::fs::write(&temp, format!("{}\n", control_path.display())).is_ok() {
            let _ = std::fs::rename(&temp, &self.file);
        }
    }
}
