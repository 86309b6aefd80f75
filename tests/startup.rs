//! Starting a master in the background: `muxguard connect` without
//! `--foreground` returns 0 once the control socket is live, and otherwise
//! fails with a non-zero exit and a one-line `muxguard: ...` error.
//!
//! The OpenSSH runs use `ssh -f -M -N -o ControlPersist=yes`, the closest
//! equivalent; they prove that each broken set-up really is broken and that
//! the chosen key words are natural ones (OpenSSH's messages contain them
//! too, except where noted).

mod common;

use std::fs;
use std::time::Duration;

use common::env::set_mode;
use common::master::MUXGUARD;
use common::process::{self, Output, poll_until, run_timeout, send_signal};
use common::sshd::free_port;
use common::{HOST, MasterKind, TestEnv, for_both_masters, keygen, public_key, selected};

for_both_masters!(
    daemon_is_ready_when_connect_returns,
    unknown_host_key,
    changed_host_key,
    missing_identity,
    server_not_listening,
);

/// Starts a background master for `testhost`. The guard stops a daemon the
/// command may have left behind, whether or not the test expected one.
fn connect(env: &TestEnv, kind: MasterKind) -> (Output, DaemonGuard<'_>) {
    let mut cmd = match kind {
        MasterKind::Muxguard => {
            let mut cmd = env.command(MUXGUARD);
            cmd.arg("connect")
                .arg("-F")
                .arg(env.config_path())
                .arg(HOST);
            cmd
        }
        MasterKind::OpenSsh => {
            let mut cmd = env.ssh();
            cmd.args(["-f", "-M", "-N", "-o", "ControlPersist=yes", HOST]);
            cmd
        }
    };
    let out = run_timeout(&mut cmd, Duration::from_secs(60));
    (out, DaemonGuard { env })
}

struct DaemonGuard<'a> {
    env: &'a TestEnv,
}

impl DaemonGuard<'_> {
    /// The pid a live master reports to `-O check`.
    fn pid(&self) -> Option<u32> {
        let check = self.env.control("check");
        let rest = check.stderr.split("Master running (pid=").nth(1)?;
        rest.split(')').next()?.parse().ok()
    }
}

impl Drop for DaemonGuard<'_> {
    fn drop(&mut self) {
        if !self.env.control_path().exists() {
            return;
        }
        let pid = self.pid();
        let _ = self.env.control("exit");
        if let Some(pid) = pid
            && !poll_until(Duration::from_secs(5), || !process::is_alive(pid))
        {
            send_signal(&[pid], "KILL");
        }
    }
}

/// Runs `connect` in an environment that cannot work and checks the error:
/// non-zero exit, stderr containing every one of `keywords` (compared
/// case-insensitively) and, for muxguard, starting with `muxguard:`; and no
/// socket left behind.
fn expect_startup_error(env: &TestEnv, kind: MasterKind, keywords: &[&str]) {
    let (out, _daemon) = connect(env, kind);
    assert!(!out.status.success(), "connect succeeded: {out:#?}");
    if kind == MasterKind::Muxguard {
        assert!(
            out.stderr.starts_with("muxguard:"),
            "stderr should start with `muxguard:`: {out:#?}"
        );
    }
    let stderr = out.stderr.to_lowercase();
    for keyword in keywords {
        assert!(
            stderr.contains(&keyword.to_lowercase()),
            "stderr should mention {keyword:?}: {out:#?}"
        );
    }
    assert!(
        !env.control_path().exists(),
        "a failed start left the control socket behind"
    );
}

/// The contract: when `connect` returns 0 the socket is already live, so
/// the very next `ssh -O check` and session succeed without waiting.
fn daemon_is_ready_when_connect_returns(kind: MasterKind) {
    let env = TestEnv::new();
    let (out, daemon) = connect(&env, kind);
    out.assert_success("connect");
    let pid = daemon.pid().expect("-O check right after connect returned");
    assert!(
        process::is_alive(pid),
        "the reported pid {pid} is not alive"
    );
    run_timeout(&mut env.ssh_cmd("true"), Duration::from_secs(60))
        .assert_success("a session right after connect returned");
    env.assert_connections(1);
}

/// Key word: "host key". known_hosts is empty, so the server's key is
/// unknown, and StrictHostKeyChecking is yes.
fn unknown_host_key(kind: MasterKind) {
    let env = TestEnv::new();
    fs::write(env.known_hosts_path(), "").expect("empty known_hosts");
    expect_startup_error(&env, kind, &["host key"]);
    env.assert_connections(0);
}

/// Key words: "changed", and the known_hosts file with the line number of
/// the offending entry (`<path>:2`).
fn changed_host_key(kind: MasterKind) {
    let env = TestEnv::new();
    let other = env.path().join("other_host_key");
    keygen(&other);
    let other = public_key(&other);
    let known_hosts = env.known_hosts_path();
    fs::write(
        &known_hosts,
        format!(
            "[127.0.0.1]:1 {other}\n[127.0.0.1]:{port} {other}\n",
            port = env.sshd().port()
        ),
    )
    .expect("write known_hosts");
    let location = format!("{}:2", known_hosts.display());
    expect_startup_error(&env, kind, &["changed", &location]);
    env.assert_connections(0);
}

/// Key word: the path of the missing identity file (OpenSSH only says
/// "Permission denied (publickey)"). The only identity file does not exist
/// and there is no agent, so no authentication method can succeed.
fn missing_identity(kind: MasterKind) {
    let mut env = TestEnv::new();
    let missing = env.path().join("home/no_such_key");
    env.set_identity(&missing);
    let keyword = match kind {
        MasterKind::Muxguard => missing.display().to_string(),
        MasterKind::OpenSsh => "permission denied".to_owned(),
    };
    expect_startup_error(&env, kind, &[&keyword]);
    env.assert_connections(0);
}

/// Key word: "connect" (as in "cannot connect" / "Connection refused").
/// Nothing listens on the port.
fn server_not_listening(kind: MasterKind) {
    let mut env = TestEnv::new();
    env.set_port(free_port());
    expect_startup_error(&env, kind, &["connect"]);
}

/// Key word: the control socket's directory, which anyone may write to
/// (mode 0777), so a socket in it could be replaced by someone else.
/// muxguard only: OpenSSH does not check this.
#[test]
fn control_directory_too_open() {
    if !selected(MasterKind::Muxguard) {
        return;
    }
    let env = TestEnv::new();
    set_mode(&env.control_dir(), 0o777);
    let dir = env.control_dir().display().to_string();
    expect_startup_error(&env, MasterKind::Muxguard, &[&dir]);
}
