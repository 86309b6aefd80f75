//! Stdio forwarding through the master (mux-protocol.md §3.7, §7): `ssh -W`
//! and `ProxyJump` with the jump host's connection shared by the master.
//! A second sshd on loopback is the target behind the jump host.

mod common;

use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use common::process::ChildGuard;
use common::sshd::{Sshd, SshdConfig};
use common::{HOST, MasterKind, TestEnv, for_both_masters, run};

for_both_masters!(proxy_jump_through_master, stdio_forward_reads_banner);

/// The Host alias of the second server, reached through `testhost`.
const TARGET: &str = "target";

/// A second sshd accepting the test's key, whose host key is in the test's
/// known_hosts, and a `target` entry in the ssh_config that reaches it with
/// `ProxyJump testhost`.
fn start_target(env: &TestEnv) -> Sshd {
    let target = Sshd::start(
        &env.path().join("sshd-target"),
        &env.path().join("authorized_keys"),
        &SshdConfig::default(),
    );
    append(
        &env.known_hosts_path(),
        &format!(
            "[127.0.0.1]:{} {}\n",
            target.port(),
            target.host_public_key()
        ),
    );
    append(
        &env.config_path(),
        &format!(
            "\
Host {TARGET}
    HostName 127.0.0.1
    Port {port}
    ProxyJump {HOST}
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
    ControlPath none
",
            port = target.port(),
            user = env.user(),
            identity = env.path().join("home/id_ed25519").display(),
            known_hosts = env.known_hosts_path().display(),
        ),
    );
    target
}

fn append(path: &std::path::Path, text: &str) {
    OpenOptions::new()
        .append(true)
        .open(path)
        .and_then(|mut file| file.write_all(text.as_bytes()))
        .unwrap_or_else(|e| panic!("append to {}: {e}", path.display()));
}

/// `ssh target 'echo ok'` with `ProxyJump testhost`: the inner
/// `ssh -W [127.0.0.1]:port testhost` goes through the master, so the jump
/// host authenticates only the master's connection, and the target sees
/// its own one authentication (over the forwarded channel).
fn proxy_jump_through_master(kind: MasterKind) {
    let env = TestEnv::new();
    let _master = env.start_master(kind);
    let target = start_target(&env);

    for round in 0..2 {
        let out = run(env.ssh().args([TARGET, "echo ok"]));
        out.assert_success(&format!("ssh {TARGET} via ProxyJump (round {round})"));
        assert_eq!(out.stdout, "ok\n");
    }
    env.assert_connections(1);
    let target_log = target.log();
    assert_eq!(
        target.accepted_count(),
        2,
        "one authentication per `ssh {TARGET}` at the target; its log:\n{target_log}"
    );
    // The master still serves plain sessions.
    run(&mut env.ssh_cmd("true")).assert_success("a session afterwards");
    env.assert_connections(1);
}

/// `ssh -W 127.0.0.1:<port> testhost` on its own: the target's SSH banner
/// arrives on stdout; closing stdin ends the forward and the client exits 0
/// (the master just closes the control connection, §3.7).
fn stdio_forward_reads_banner(kind: MasterKind) {
    let env = TestEnv::new();
    let _master = env.start_master(kind);
    let target = start_target(&env);

    let mut cmd = env.ssh();
    cmd.args(["-W", &format!("127.0.0.1:{}", target.port()), HOST])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut client = ChildGuard::spawn(cmd, "ssh -W");
    let stdout = client.child_mut().stdout.take().expect("stdout");
    let (lines, banner) = mpsc::channel();
    thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = lines.send(line);
    });
    let line = banner
        .recv_timeout(Duration::from_secs(30))
        .expect("a banner line from `ssh -W` within 30 s");
    assert!(
        line.starts_with("SSH-2.0-OpenSSH"),
        "the first line through `ssh -W`: {line:?}"
    );

    drop(client.child_mut().stdin.take());
    let status = client.wait(Duration::from_secs(60));
    let mut stderr = String::new();
    if let Some(mut err) = client.child_mut().stderr.take() {
        let _ = std::io::Read::read_to_string(&mut err, &mut stderr);
    }
    assert_eq!(
        status.code(),
        Some(0),
        "`ssh -W` after its stdin closed: {status}, stderr: {stderr}"
    );
    env.assert_connections(1);
    assert_eq!(
        target.accepted_count(),
        0,
        "nobody authenticated at the target"
    );
}
