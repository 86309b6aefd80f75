//! The `~C` command line in a shared tty session (issue 16), typed through
//! tmux into the stock ssh client: forwards opened and cancelled from it,
//! decided by the policy and audited as `-O forward` / `-O cancel` are, and
//! nothing typed into it ever reaching the remote side. OpenSSH's master
//! refuses `~C` in a shared session; that is checked too.
//!
//! The remote side of every session is `cat` writing to a file, so the file
//! holds exactly what reached the server: the lines typed around the
//! command line, and nothing of the command line itself.

mod common;

use std::fs;
use std::io::Read;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::process::{poll_until, read_lossy, wait_for};
use common::sshd::free_port;
use common::tmux::Tmux;
use common::{HOST, Master, MasterKind, TestEnv};

/// Waits for a forward to appear or go: listeners come and go
/// asynchronously.
const SETTLE: Duration = Duration::from_secs(20);

/// A tty session through the master whose remote side copies what it
/// receives into `typed` (one line per Enter, by the remote pty). Returns
/// once a first line has gone through, so the session is up and `~` at the
/// start of the next line is an escape.
fn start_session<'a>(env: &'a TestEnv, typed: &Path) -> Tmux<'a> {
    let config = env.config_path();
    let remote = format!("echo session-ready; exec cat > '{}'", typed.display());
    let tmux = Tmux::start(
        env,
        200,
        50,
        &[
            "ssh",
            "-F",
            config.to_str().expect("UTF-8 path"),
            "-t",
            HOST,
            &remote,
        ],
    );
    tmux.wait_for_line("the session to start", || {}, |l| l == "session-ready");
    tmux.type_text("before");
    tmux.enter();
    wait_for("the first line to reach the server", SETTLE, || {
        read_lossy(typed) == "before\n"
    });
    tmux
}

/// Opens the command line and waits for its (empty) prompt.
fn open_command_line(tmux: &Tmux<'_>) {
    tmux.type_text("~C");
    tmux.wait_for_line("the ~C prompt", || {}, |l| l == "muxguard>");
}

/// Types one command line and waits for a line of the answer to satisfy
/// `answer`.
fn command(tmux: &Tmux<'_>, line: &str, what: &str, answer: impl Fn(&str) -> bool) {
    open_command_line(tmux);
    tmux.type_text(line);
    tmux.enter();
    tmux.wait_for_line(what, || {}, answer);
}

/// Types one more line and checks that the server has received exactly the
/// first line and this one: nothing of any command line in between.
fn assert_only_data_reached_the_server(tmux: &Tmux<'_>, typed: &Path) {
    tmux.type_text("after");
    tmux.enter();
    let mut last = String::new();
    let arrived = poll_until(SETTLE, || {
        last = read_lossy(typed);
        last.ends_with("after\n")
    });
    assert!(arrived, "the last line never reached the server: {last:?}");
    assert_eq!(
        last, "before\nafter\n",
        "the server received something typed into the command line"
    );
}

/// Whether nothing listens on 127.0.0.1:`port` (any more).
fn refused(port: u16) -> bool {
    matches!(
        TcpStream::connect(("127.0.0.1", port)),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused
    )
}

fn audit_log(env: &TestEnv) -> PathBuf {
    env.path().join("state/muxguard/audit.jsonl")
}

fn records(env: &TestEnv) -> Vec<serde_json::Value> {
    fs::read_to_string(audit_log(env))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect()
}

/// The `request` record whose forward names `needle`, and its decision.
fn request_and_decision(
    records: &[serde_json::Value],
    kind: &str,
    needle: &str,
) -> Option<(serde_json::Value, serde_json::Value)> {
    let request = records.iter().find(|r| {
        r["event"] == "request"
            && r["kind"] == kind
            && r["forward"].as_str().is_some_and(|f| f.contains(needle))
    })?;
    let decision = records
        .iter()
        .find(|r| r["event"] == "decision" && r["request"] == request["request"])?;
    Some((request.clone(), decision.clone()))
}

/// Starts muxguard with `policy` as the user's policy file and no system
/// file.
fn start_with_policy(env: &TestEnv, policy: &str) -> Master {
    let dir = env.path().join("policy");
    fs::create_dir_all(&dir).expect("create policy dir");
    let user = dir.join("policy.toml");
    fs::write(&user, policy).expect("write policy");
    let system = dir.join("no-system-policy.toml");
    env.start_muxguard_with(&[
        "--policy".as_ref(),
        user.as_os_str(),
        "--system-policy".as_ref(),
        system.as_os_str(),
    ])
}

/// `~C -L` opens a forward through which a connection reaches its target
/// (the sshd, whose banner comes back); `~C -KL` cancels it. Help, a bad
/// command and an unknown cancel are answered on the terminal. Nothing
/// typed into any of the command lines reaches the server.
#[test]
fn command_line_opens_and_cancels_a_local_forward() {
    if !common::selected(MasterKind::Muxguard) {
        return;
    }
    let env = TestEnv::new();
    let _master = env.start_master(MasterKind::Muxguard);
    let typed = env.path().join("typed.txt");
    let tmux = start_session(&env, &typed);

    command(&tmux, "?", "the command list", |l| {
        l.trim_start().starts_with("-KL [bind:]port")
    });
    command(&tmux, "-X", "the answer to a bad command", |l| {
        l == "Invalid command (? lists the commands)."
    });

    let port = free_port();
    let spec = format!("{port}:127.0.0.1:{}", env.sshd().port());
    command(&tmux, &format!("-L {spec}"), "the forward to open", |l| {
        l == "Forwarding port."
    });
    let echoed = format!("muxguard> -L {spec}");
    assert!(
        tmux.screen().lines().any(|l| l.trim_end() == echoed),
        "the typed line was not echoed:\n{}",
        tmux.screen()
    );
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to the forward");
    stream
        .set_read_timeout(Some(SETTLE))
        .expect("set a read timeout");
    let mut banner = [0u8; 7];
    stream
        .read_exact(&mut banner)
        .expect("the target's banner through the forward");
    assert_eq!(&banner, b"SSH-2.0");
    drop(stream);

    command(
        &tmux,
        &format!("-KL {port}"),
        "the forward to be cancelled",
        |l| l == "Canceled forwarding.",
    );
    assert!(
        poll_until(SETTLE, || refused(port)),
        "port {port} still listens after ~C -KL"
    );
    command(
        &tmux,
        &format!("-KL {port}"),
        "a second cancel to fail",
        |l| l == "Unknown port forwarding.",
    );

    assert_only_data_reached_the_server(&tmux, &typed);

    // Audited as -O forward and -O cancel are, and the escape that led there.
    let needle = format!("local forward LOCALHOST:{port} -> 127.0.0.1:");
    wait_for("the forward's close record", SETTLE, || {
        records(&env)
            .iter()
            .any(|r| r["event"] == "forward_close" && r["reason"] == "cancelled (~C)")
    });
    let all = records(&env);
    let (request, decision) =
        request_and_decision(&all, "forward-local", &needle).expect("the forward's request");
    assert_eq!(decision["action"], "allow", "{decision}");
    assert!(
        all.iter().any(|r| r["event"] == "forward_open"
            && r["request"] == request["request"]
            && r["spec"].as_str().is_some_and(|s| s.contains(&needle))),
        "no forward_open for {request}"
    );
    let (_, cancel) = request_and_decision(&all, "control", &needle).expect("the cancel's request");
    assert_eq!(cancel["action"], "allow", "{cancel}");
    assert!(
        all.iter()
            .any(|r| r["event"] == "escape" && r["sequence"] == "~C"),
        "no escape record for ~C"
    );
    env.assert_connections(1);
}

/// A policy that denies local forwards and control: `~C -L` says so on the
/// terminal, naming the rule, and nothing listens; the audit log holds the
/// request and its denial. `~C -KD` of a dynamic forward (allowed, opened
/// with `-O forward`) is a cancel, decided as control, and denied too: the
/// forward stays.
#[test]
fn command_line_requests_are_decided_by_the_policy() {
    if !common::selected(MasterKind::Muxguard) {
        return;
    }
    let env = TestEnv::new();
    let _master = start_with_policy(
        &env,
        "\
[defaults]
action = \"allow\"

[[rule]]
name = \"no local forwards\"
kinds = [\"forward-local\"]
action = \"deny\"

[[rule]]
name = \"no control\"
kinds = [\"control\"]
action = \"deny\"
",
    );
    let typed = env.path().join("typed.txt");
    let tmux = start_session(&env, &typed);

    let port = free_port();
    let spec = format!("{port}:127.0.0.1:{}", env.sshd().port());
    command(&tmux, &format!("-L {spec}"), "the denial", |l| {
        l.starts_with("muxguard: denied by policy:") && l.contains("no local forwards")
    });
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "something listens on the denied forward's port {port}"
    );
    let needle = format!("local forward LOCALHOST:{port} -> 127.0.0.1:");
    let all = records(&env);
    let (request, decision) = request_and_decision(&all, "forward-local", &needle)
        .unwrap_or_else(|| panic!("no request for {needle:?} in {all:#?}"));
    assert_eq!(decision["action"], "deny", "{decision}");
    assert!(
        decision["decided_by"]
            .as_str()
            .is_some_and(|d| d.contains("no local forwards")),
        "{decision}"
    );
    assert!(
        !all.iter()
            .any(|r| r["event"] == "forward_open" && r["request"] == request["request"]),
        "a denied forward was recorded as open"
    );

    let socks = free_port();
    common::run(
        env.ssh()
            .args(["-O", "forward", "-D", &socks.to_string(), HOST]),
    )
    .assert_success("-O forward -D");
    command(&tmux, &format!("-KD {socks}"), "the cancel's denial", |l| {
        l.starts_with("muxguard: denied by policy:") && l.contains("no control")
    });
    assert!(
        TcpStream::connect(("127.0.0.1", socks)).is_ok(),
        "the dynamic forward was cancelled anyway"
    );

    assert_only_data_reached_the_server(&tmux, &typed);
    env.assert_connections(1);
}

/// OpenSSH's master does not offer the command line to a shared session:
/// it says so, and sends nothing of it to the server.
#[test]
fn openssh_master_refuses_the_command_line() {
    if !common::selected(MasterKind::OpenSsh) {
        return;
    }
    let env = TestEnv::new();
    let _master = env.start_master(MasterKind::OpenSsh);
    let typed = env.path().join("typed.txt");
    let tmux = start_session(&env, &typed);
    tmux.type_text("~C");
    tmux.wait_for_line(
        "the refusal",
        || {},
        |l| l.ends_with("~C escape not available to multiplexed sessions"),
    );
    assert_only_data_reached_the_server(&tmux, &typed);
}
