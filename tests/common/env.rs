//! One test's world: a temp dir laid out like a home directory, a private
//! sshd, a user key, and an ssh_config that reaches the sshd as `testhost`.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;

use tempfile::TempDir;

use super::master::{Master, MasterKind};
use super::process::{self, run};
use super::sshd::{Sshd, SshdConfig};

/// The Host alias of the test server in the generated ssh_config.
pub const HOST: &str = "testhost";

/// Variables of the caller's environment that must not leak into the
/// processes a test starts (a real agent, a real desktop, a real D-Bus).
const REMOVED_VARS: &[&str] = &[
    "SSH_AUTH_SOCK",
    "SSH_AGENT_PID",
    "SSH_ASKPASS",
    "SSH_ASKPASS_REQUIRE",
    "DISPLAY",
    "WAYLAND_DISPLAY",
    "DBUS_SESSION_BUS_ADDRESS",
    "TMUX",
    "TMUX_PANE",
    "GIT_SSH",
    "GIT_SSH_COMMAND",
];

/// The parts of the client configuration that tests may change.
struct ClientSettings {
    port: u16,
    identity: PathBuf,
}

pub struct TestEnv {
    // Field order is drop order: the server goes before its directory.
    sshd: Sshd,
    client: ClientSettings,
    user: String,
    control_path: PathBuf,
    dir: TempDir,
}

impl TestEnv {
    pub fn new() -> TestEnv {
        TestEnv::with_sshd_config(&SshdConfig::default())
    }

    pub fn with_sshd_config(sshd_config: &SshdConfig) -> TestEnv {
        let dir = tempfile::Builder::new()
            .prefix("mg")
            .tempdir()
            .expect("temp dir");
        let root = dir.path();
        for sub in ["home", "run", "state", "config", "logs", "work", "ctl"] {
            fs::create_dir(root.join(sub)).expect("mkdir");
        }
        for private in ["run", "ctl"] {
            set_mode(&root.join(private), 0o700);
        }

        let identity = root.join("home/id_ed25519");
        super::keygen(&identity);
        let authorized_keys = root.join("authorized_keys");
        fs::write(&authorized_keys, super::public_key(&identity) + "\n")
            .expect("write authorized_keys");

        let sshd = Sshd::start(&root.join("sshd"), &authorized_keys, sshd_config);
        let mut env = TestEnv {
            client: ClientSettings {
                port: sshd.port(),
                identity,
            },
            sshd,
            user: current_user(),
            control_path: PathBuf::new(),
            dir,
        };
        let known = format!(
            "[127.0.0.1]:{} {}\n",
            env.sshd.port(),
            env.sshd.host_public_key()
        );
        fs::write(env.known_hosts_path(), known).expect("write known_hosts");
        env.write_ssh_config();
        env
    }

    /// The root of the temp dir.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A scratch directory for test data (also reachable "remotely", since
    /// the server runs on this machine; remote commands must use absolute
    /// paths because the remote HOME is the real one of the user).
    pub fn work_dir(&self) -> PathBuf {
        self.path().join("work")
    }

    pub fn sshd(&self) -> &Sshd {
        &self.sshd
    }

    pub fn sshd_mut(&mut self) -> &mut Sshd {
        &mut self.sshd
    }

    pub fn config_path(&self) -> PathBuf {
        self.path().join("ssh_config")
    }

    pub fn known_hosts_path(&self) -> PathBuf {
        self.path().join("known_hosts")
    }

    pub fn control_dir(&self) -> PathBuf {
        self.path().join("ctl")
    }

    /// The expanded ControlPath for `testhost`, as `ssh -G` computes it.
    pub fn control_path(&self) -> &Path {
        &self.control_path
    }

    /// Where masters and other long-running helpers write their stderr.
    pub fn logs_dir(&self) -> PathBuf {
        self.path().join("logs")
    }

    pub fn user(&self) -> &str {
        &self.user
    }

    /// Points `testhost` at another port (e.g. one nobody listens on).
    pub fn set_port(&mut self, port: u16) {
        self.client.port = port;
        self.write_ssh_config();
    }

    /// Replaces the one identity file the client offers.
    pub fn set_identity(&mut self, identity: &Path) {
        self.client.identity = identity.to_owned();
        self.write_ssh_config();
    }

    fn write_ssh_config(&mut self) {
        let root = self.path();
        let text = format!(
            "\
Host {HOST}
    HostName 127.0.0.1
    Port {port}
    User {user}
    IdentityFile {identity}
    IdentitiesOnly yes
    UserKnownHostsFile {known_hosts}
    GlobalKnownHostsFile /dev/null
    StrictHostKeyChecking yes
    UpdateHostKeys no
    BatchMode yes
    LogLevel ERROR
    ConnectTimeout 20
    ControlMaster no
    ControlPath {ctl}/%C
    SendEnv LANG LC_* MUXGUARD_TEST_*
",
            port = self.client.port,
            user = self.user,
            identity = self.client.identity.display(),
            known_hosts = root.join("known_hosts").display(),
            ctl = root.join("ctl").display(),
        );
        fs::write(self.config_path(), text).expect("write ssh_config");
        self.control_path = self.resolve_control_path();
    }

    fn resolve_control_path(&self) -> PathBuf {
        let out = run(self.ssh().args(["-G", HOST]));
        out.assert_success("ssh -G");
        let line = out
            .stdout
            .lines()
            .find_map(|l| l.strip_prefix("controlpath "))
            .expect("ssh -G prints a controlpath");
        PathBuf::from(line)
    }

    /// A command that runs with this test's HOME, XDG directories and
    /// environment, in the temp dir, with stdin from /dev/null.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        command_in(self.path(), program)
    }

    /// `ssh -F <ssh_config>`.
    pub fn ssh(&self) -> Command {
        let mut cmd = self.command("ssh");
        cmd.arg("-F").arg(self.config_path());
        cmd
    }

    /// `ssh -F <ssh_config> testhost <remote_command>`.
    pub fn ssh_cmd(&self, remote_command: &str) -> Command {
        let mut cmd = self.ssh();
        cmd.arg(HOST).arg(remote_command);
        cmd
    }

    /// `muxguard status` of this test's master; asserts that it succeeds.
    pub fn status(&self) -> String {
        let out = run(self
            .command(super::master::MUXGUARD)
            .args(["status", "--control-path"])
            .arg(self.control_path())
            .arg(HOST));
        out.assert_success("muxguard status");
        out.stdout
    }

    /// `ssh -F <ssh_config> -O <op> testhost`, run to completion.
    pub fn control(&self, op: &str) -> process::Output {
        run(self.ssh().args(["-O", op, HOST]))
    }

    /// Starts a master of the given kind for `testhost` and waits until it
    /// answers `ssh -O check`.
    pub fn start_master(&self, kind: MasterKind) -> Master {
        Master::start(self, kind)
    }

    /// Starts muxguard for `testhost` with extra `connect` arguments (such
    /// as `--policy FILE --system-policy FILE`) and waits until it answers
    /// `ssh -O check`.
    pub fn start_muxguard_with<S: AsRef<OsStr>>(&self, args: &[S]) -> Master {
        Master::start_with_args(self, MasterKind::Muxguard, args)
    }

    /// Like [`TestEnv::start_muxguard_with`], with extra environment
    /// variables for the master only (such as a private
    /// `DBUS_SESSION_BUS_ADDRESS`); clients keep the scrubbed environment.
    pub fn start_muxguard_with_env<S, K, V>(&self, args: &[S], vars: &[(K, V)]) -> Master
    where
        S: AsRef<OsStr>,
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        Master::start_with_args_env(self, MasterKind::Muxguard, args, vars)
    }

    /// Panics unless exactly `expected` connections have authenticated.
    #[track_caller]
    pub fn assert_connections(&self, expected: usize) {
        let seen = self.sshd.accepted_count();
        assert_eq!(
            seen,
            expected,
            "sshd accepted {seen} connection(s), expected {expected}; sshd log:\n{}",
            self.sshd.log()
        );
    }

    /// A normal session still works through the master, and nothing has
    /// needed a second connection: the master came through what the test
    /// did to it unharmed.
    #[track_caller]
    pub fn assert_master_serves(&self) {
        let out = run(&mut self.ssh_cmd("echo still-serving"));
        out.assert_success("a normal session afterwards");
        assert_eq!(out.stdout, "still-serving\n");
        self.assert_connections(1);
    }
}

impl Default for TestEnv {
    fn default() -> Self {
        TestEnv::new()
    }
}

impl Drop for TestEnv {
    /// On failure, show what the server and the master said.
    fn drop(&mut self) {
        if !thread::panicking() {
            return;
        }
        eprintln!("---- sshd log ----\n{}", self.sshd.log());
        if let Ok(entries) = fs::read_dir(self.logs_dir()) {
            for entry in entries.flatten() {
                eprintln!(
                    "---- {} ----\n{}",
                    entry.file_name().to_string_lossy(),
                    process::read_lossy(&entry.path())
                );
            }
        }
    }
}

/// A command with `root/home` as HOME, the XDG directories in `root`
/// (`run`, `state`, `config`), none of the caller's agent, desktop or bus,
/// run in `root` with stdin from /dev/null: [`TestEnv::command`] for tests
/// that need no server.
pub fn command_in(root: &Path, program: impl AsRef<OsStr>) -> Command {
    let mut cmd = Command::new(program);
    for var in REMOVED_VARS {
        cmd.env_remove(var);
    }
    cmd.env("HOME", root.join("home"))
        .env("XDG_RUNTIME_DIR", root.join("run"))
        .env("XDG_STATE_HOME", root.join("state"))
        .env("XDG_CONFIG_HOME", root.join("config"))
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .current_dir(root)
        .stdin(Stdio::null());
    cmd
}

pub fn set_mode(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
}

fn current_user() -> String {
    let out = run(Command::new("id").arg("-un"));
    out.assert_success("id -un");
    out.stdout.trim().to_owned()
}
