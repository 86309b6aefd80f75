//! Hardening the master once start-up is done: no new privileges, not
//! dumpable (other processes of the same user can no longer ptrace it —
//! the "sshjack" hijack — or read its /proc memory, environment and fds),
//! no core files, a private umask. Applied while the process still has a
//! single thread. The Landlock filesystem and network sandbox is not
//! applied yet; the report says so rather than claim it.

use rustix::process::{DumpableBehavior, Resource, Rlimit};

/// What was enforced, in words for the log, the audit record and status.
#[derive(Debug, Clone)]
pub struct Report {
    pub no_new_privs: bool,
    pub not_dumpable: bool,
    pub no_core_files: bool,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let on_off = |b: bool| if b { "on" } else { "FAILED" };
        write!(
            f,
            "ptrace: {}; no_new_privs: {}; core dumps: {}; landlock: not applied (not implemented yet)",
            if self.not_dumpable {
                "blocked"
            } else {
                "NOT blocked"
            },
            on_off(self.no_new_privs),
            if self.no_core_files { "off" } else { "NOT off" },
        )
    }
}

/// Applies the hardening; each step is reported, none is fatal (a kernel
/// that refuses one still gets the others), and failures are logged.
pub fn harden() -> Report {
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    let no_new_privs = rustix::thread::set_no_new_privs(true)
        .inspect_err(|e| tracing::error!("PR_SET_NO_NEW_PRIVS failed: {e}"))
        .is_ok();
    let not_dumpable = rustix::process::set_dumpable_behavior(DumpableBehavior::NotDumpable)
        .inspect_err(|e| tracing::error!("PR_SET_DUMPABLE 0 failed: {e}"))
        .is_ok();
    let no_core_files = rustix::process::setrlimit(
        Resource::Core,
        Rlimit {
            current: Some(0),
            maximum: Some(0),
        },
    )
    .inspect_err(|e| tracing::error!("RLIMIT_CORE 0 failed: {e}"))
    .is_ok();
    Report {
        no_new_privs,
        not_dumpable,
        no_core_files,
    }
}
