//! The two kinds of connection-sharing master the scenarios run against:
//! OpenSSH's own (`ssh -M`), which proves a scenario is right, and muxguard.

use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use super::env::{HOST, TestEnv};
use super::process::{self, ChildGuard, run_timeout, wait_for};

/// The binary under test.
pub const MUXGUARD: &str = env!("CARGO_BIN_EXE_muxguard");

/// Environment variable restricting which masters the scenarios run
/// against: `openssh`, `muxguard` or `both` (the default).
pub const SELECT_VAR: &str = "MUXGUARD_TEST_MASTERS";

/// How long a master may take to come up or go away before a test fails.
pub const MASTER_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MasterKind {
    OpenSsh,
    Muxguard,
}

impl MasterKind {
    pub fn name(self) -> &'static str {
        match self {
            MasterKind::OpenSsh => "openssh",
            MasterKind::Muxguard => "muxguard",
        }
    }

    /// Whether [`SELECT_VAR`] lets tests run against this kind.
    pub fn selected(self) -> bool {
        match std::env::var(SELECT_VAR).as_deref() {
            Err(_) | Ok("") | Ok("both") => true,
            Ok(one) if one == self.name() => true,
            Ok("openssh" | "muxguard") => false,
            Ok(other) => panic!("{SELECT_VAR}={other:?}: expected openssh, muxguard or both"),
        }
    }
}

/// A running master serving `testhost`'s ControlPath. Dropping it stops
/// it: SIGTERM, then SIGKILL if it has not exited after 5 s.
pub struct Master {
    kind: MasterKind,
    child: ChildGuard,
    log: PathBuf,
}

impl Master {
    pub(super) fn start(env: &TestEnv, kind: MasterKind) -> Master {
        Master::start_with_args(env, kind, &[] as &[&OsStr])
    }

    /// Like [`Master::start`], with extra arguments for muxguard's
    /// `connect` (such as `--policy FILE`), placed before the destination.
    /// OpenSSH's master takes no extra arguments.
    pub fn start_with_args<S: AsRef<OsStr>>(env: &TestEnv, kind: MasterKind, args: &[S]) -> Master {
        Master::start_with_args_env(env, kind, args, &[] as &[(&str, &str)])
    }

    /// Like [`Master::start_with_args`], with extra environment variables
    /// for the master process only (e.g. a private `DBUS_SESSION_BUS_ADDRESS`
    /// or `SSH_ASKPASS`, which [`TestEnv::command`] otherwise removes).
    /// Clients started by the test do not get them.
    pub fn start_with_args_env<S, K, V>(
        env: &TestEnv,
        kind: MasterKind,
        args: &[S],
        vars: &[(K, V)],
    ) -> Master
    where
        S: AsRef<OsStr>,
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        assert!(
            kind == MasterKind::Muxguard || vars.is_empty(),
            "extra environment is for muxguard only"
        );
        assert!(
            kind == MasterKind::Muxguard || args.is_empty(),
            "extra arguments are for muxguard only"
        );
        let log = env.logs_dir().join(format!("{}-master.log", kind.name()));
        let mut cmd = match kind {
            // In the foreground (no ControlPersist, no -f) so that the pid
            // we spawned is the master's.
            MasterKind::OpenSsh => {
                let mut cmd = env.ssh();
                cmd.args(["-M", "-N", "-o", "ControlPersist=no", HOST]);
                cmd
            }
            MasterKind::Muxguard => {
                let mut cmd = env.command(MUXGUARD);
                cmd.arg("connect")
                    .arg("-F")
                    .arg(env.config_path())
                    .arg("--foreground")
                    .args(args)
                    .arg(HOST);
                for (key, value) in vars {
                    cmd.env(key, value);
                }
                cmd
            }
        };
        let out = append(&log);
        cmd.stdout(out.try_clone().expect("dup")).stderr(out);
        let mut master = Master {
            kind,
            child: ChildGuard::spawn(cmd, &format!("{} master", kind.name())),
            log,
        };
        master.wait_ready(env);
        master
    }

    fn wait_ready(&mut self, env: &TestEnv) {
        let name = self.kind.name();
        wait_for(
            &format!("the {name} master to answer `ssh -O check`"),
            MASTER_TIMEOUT,
            || {
                if let Some(status) = self.child.try_status() {
                    panic!(
                        "the {name} master exited with {status} before it was ready; its output:\n{}",
                        self.log()
                    );
                }
                let check = run_timeout(
                    env.ssh().args(["-O", "check", HOST]),
                    Duration::from_secs(10),
                );
                check.status.success()
            },
        );
    }

    pub fn kind(&self) -> MasterKind {
        self.kind
    }

    /// The pid a client should see in `Master running (pid=N)`.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the master printed so far.
    pub fn log(&self) -> String {
        process::read_lossy(&self.log)
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The exit status, if the master has exited.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        self.child.try_status()
    }

    /// Waits for the master to exit on its own; panics after
    /// [`MASTER_TIMEOUT`].
    pub fn wait_exit(&mut self) -> ExitStatus {
        self.child.wait(MASTER_TIMEOUT)
    }
}

impl Drop for Master {
    fn drop(&mut self) {
        self.child.terminate(Duration::from_secs(5));
    }
}

fn append(path: &Path) -> File {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
}

/// Ends, when dropped, the master that ssh's configuration `config` leads
/// to (`ssh -F config -O exit`): for masters started on demand by a
/// `Match exec` block, which no guard of ours started.
pub struct ExitOnDrop<'a> {
    pub env: &'a TestEnv,
    pub config: PathBuf,
}

impl Drop for ExitOnDrop<'_> {
    fn drop(&mut self) {
        let _ = process::run(
            self.env
                .command("ssh")
                .arg("-F")
                .arg(&self.config)
                .args(["-O", "exit", HOST]),
        );
    }
}
