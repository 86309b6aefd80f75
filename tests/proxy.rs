//! `ssh -O proxy`: the client runs its own connection layer through the
//! master. Sessions (exit status, stderr, binary data both ways, a tty),
//! `-L` and `-R` through a proxy client, the policy gate and the audit
//! records, and malformed proxy packets from a raw client.
//!
//! The scenarios that OpenSSH's master can run too go through
//! `for_both_masters!`. Debian's 9.2 (deb12u10) master asks before a proxy
//! connection only under `ControlMaster ask`/`autoask`; the harness starts
//! it with `-M` (`yes`), so it does not ask.

mod common;

use std::fs::File;
use std::io::ErrorKind;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::mux::{Msg, RawClient};
use common::net::{TcpServer, assert_echoes, random_bytes};
use common::process::{ChildGuard, poll_until, read_lossy, wait_for};
use common::sshd::free_port;
use common::tmux::Tmux;
use common::{HOST, Master, MasterKind, TestEnv, for_both_masters, run, run_timeout};

for_both_masters!(
    exec_output_and_status,
    binary_both_ways,
    tty_session,
    local_forward,
    dynamic_forward,
    remote_forward,
);

const MUX_C_PROXY: u32 = 0x1000_000f;
const MUX_S_PROXY: u32 = 0x8000_000f;

/// A policy that allows everything, proxy mode included.
const ALLOW_PROXY: &str = "\
[defaults]
action = \"allow\"

[[rule]]
name = \"proxy ok\"
kinds = [\"proxy\"]
action = \"allow\"
";

/// Starts a master; muxguard with `policy` and an audit log at
/// `<env>/audit/audit.jsonl`.
fn start(env: &TestEnv, kind: MasterKind, policy: &str) -> Master {
    match kind {
        MasterKind::OpenSsh => env.start_master(kind),
        MasterKind::Muxguard => start_muxguard_with_env(env, policy, &[]),
    }
}

/// muxguard as [`start`] starts it, with extra environment variables for
/// the master.
fn start_muxguard_with_env(env: &TestEnv, policy: &str, vars: &[(&str, &str)]) -> Master {
    let file = env.path().join("policy.toml");
    std::fs::write(&file, policy).expect("write policy");
    env.start_muxguard_with_env(
        &[
            "--audit-log".as_ref(),
            audit_log(env).as_os_str(),
            "--policy".as_ref(),
            file.as_os_str(),
            "--system-policy".as_ref(),
            env.path().join("no-system.toml").as_os_str(),
        ],
        vars,
    )
}

fn audit_log(env: &TestEnv) -> PathBuf {
    env.path().join("audit/audit.jsonl")
}

/// `ssh -O proxy <args> testhost [command]`.
fn proxy(env: &TestEnv, args: &[&str], command: Option<&str>) -> Command {
    let mut cmd = env.ssh();
    cmd.args(["-O", "proxy"]).args(args).arg(HOST);
    if let Some(command) = command {
        cmd.arg(command);
    }
    cmd
}

fn records(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .expect("read audit log")
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect()
}

fn exec_output_and_status(kind: MasterKind) {
    let env = TestEnv::new();
    let _master = start(&env, kind, ALLOW_PROXY);
    let out = run(&mut proxy(&env, &[], Some("echo hi; echo err >&2; exit 3")));
    assert_eq!(out.code(), Some(3), "{out:#?}");
    assert_eq!(out.stdout, "hi\n", "{out:#?}");
    assert!(out.stderr.contains("err\n"), "{out:#?}");
    // Environment the server accepts, and a subsystem (sftp reading EOF).
    let out = run(&mut proxy(
        &env,
        &["-o", "SetEnv=MUXGUARD_TEST_PROXY=42"],
        Some("echo env=$MUXGUARD_TEST_PROXY"),
    ));
    assert_eq!(out.stdout, "env=42\n", "{out:#?}");
    let out = run(&mut proxy(&env, &["-s"], Some("sftp")));
    assert_eq!(out.code(), Some(0), "sftp subsystem: {out:#?}");
    // A killed remote command: exit-signal, which ssh reports as 255.
    let out = run(&mut proxy(&env, &[], Some("kill -TERM $$")));
    assert_eq!(out.code(), Some(255), "{out:#?}");
    env.assert_master_serves();
}

fn binary_both_ways(kind: MasterKind) {
    let env = TestEnv::new();
    let _master = start(&env, kind, ALLOW_PROXY);
    let input = env.path().join("input.bin");
    let output = env.path().join("output.bin");
    common::write_random(&input, 50 << 20);
    let expected = common::sha256_file(&input);
    // Through the remote `cat` and back in one go: both directions at once,
    // each paced by windows.
    // (run() would capture stdout itself, so spawn directly.)
    let mut child = proxy(&env, &[], Some("cat"))
        .stdin(File::open(&input).expect("open input"))
        .stdout(File::create(&output).expect("create output"))
        .spawn()
        .expect("spawn ssh -O proxy");
    let status = common::process::wait_timeout(&mut child, Duration::from_secs(120))
        .unwrap_or_else(|| {
            let _ = child.kill();
            panic!("cat through -O proxy did not finish in 120 s")
        });
    assert!(status.success(), "cat through -O proxy: {status}");
    assert_eq!(common::sha256_file(&output), expected, "cat both ways");
    // Upload only, hashed on the far side.
    let out = run_timeout(
        proxy(&env, &[], Some("sha256sum")).stdin(File::open(&input).expect("open input")),
        Duration::from_secs(120),
    );
    out.assert_success("sha256sum through -O proxy");
    assert_eq!(common::first_word(&out.stdout), expected, "upload");
    env.assert_master_serves();
}

const PROMPT: &str = "pxprompt> ";

fn tty_session(kind: MasterKind) {
    let env = TestEnv::new();
    let _master = start(&env, kind, ALLOW_PROXY);
    let config = env.config_path();
    let status_file = env.path().join("ssh.status");
    let remote = format!("env PS1='{PROMPT}' bash --norc --noprofile -i");
    let tmux = Tmux::start(
        &env,
        80,
        24,
        &[
            "sh",
            "-c",
            "status=$1; shift; ssh \"$@\"; echo $? > \"$status\"",
            "sh",
            path_str(&status_file),
            "-F",
            path_str(&config),
            "-t",
            "-O",
            "proxy",
            HOST,
            &remote,
        ],
    );
    tmux.wait_for_line(
        "the remote prompt",
        || {},
        |l| l.starts_with(PROMPT.trim_end()),
    );
    tmux.type_text("tty >/dev/null && stty size");
    tmux.enter();
    tmux.wait_for_line("`stty size` to print 24 80", || {}, |l| l == "24 80");
    // The client sends window-change itself in proxy mode.
    tmux.resize(100, 30);
    tmux.wait_for_line(
        "`stty size` to print 30 100",
        || {
            tmux.type_text("stty size");
            tmux.enter();
        },
        |l| l == "30 100",
    );
    tmux.type_text("exit 7");
    tmux.enter();
    let ended = poll_until(Duration::from_secs(20), || {
        read_lossy(&status_file).ends_with('\n')
    });
    assert!(ended, "ssh did not exit; screen:\n{}", tmux.screen());
    assert_eq!(read_lossy(&status_file), "7\n");
    env.assert_master_serves();
}

fn connect(port: u16) -> TcpStream {
    TcpStream::connect(("127.0.0.1", port))
        .unwrap_or_else(|e| panic!("connect to 127.0.0.1:{port}: {e}"))
}

fn listening(port: u16) -> bool {
    TcpStream::connect(("127.0.0.1", port)).is_ok()
}

fn refused(port: u16) -> bool {
    matches!(
        TcpStream::connect(("127.0.0.1", port)),
        Err(e) if e.kind() == ErrorKind::ConnectionRefused
    )
}

/// A long-running `ssh -O proxy -N <forward>` client.
fn spawn_forwarding_client(env: &TestEnv, forward: &[&str]) -> ChildGuard {
    let mut cmd = env.ssh();
    cmd.args(["-O", "proxy", "-N", "-o", "ExitOnForwardFailure=yes"])
        .args(forward)
        .arg(HOST)
        .stdout(Stdio::null())
        .stderr(File::create(env.logs_dir().join("proxy-client.log")).expect("client log"));
    ChildGuard::spawn(cmd, "ssh -O proxy -N")
}

fn local_forward(kind: MasterKind) {
    let env = TestEnv::new();
    let _master = start(&env, kind, ALLOW_PROXY);
    let echo = TcpServer::echo();
    let port = free_port();
    let spec = format!("{port}:127.0.0.1:{}", echo.port());
    let mut client = spawn_forwarding_client(&env, &["-L", &spec]);
    wait_for(
        "the proxy client's -L listener",
        Duration::from_secs(20),
        || {
            assert!(
                client.try_status().is_none(),
                "the proxy client exited: {}",
                read_lossy(&env.logs_dir().join("proxy-client.log"))
            );
            listening(port)
        },
    );
    let data = random_bytes(4 << 20);
    assert_echoes(connect(port), &data, "-L through -O proxy");
    assert_echoes(connect(port), b"second connection", "second -L connection");
    client.terminate(Duration::from_secs(5));
    env.assert_master_serves();
}

/// `-D` in the proxy client: the client speaks SOCKS and opens a
/// direct-tcpip channel per connection; curl posts 1 MiB and gets it back.
fn dynamic_forward(kind: MasterKind) {
    let env = TestEnv::new();
    let _master = start(&env, kind, ALLOW_PROXY);
    let http = TcpServer::http_echo();
    let socks = free_port();
    let mut client = spawn_forwarding_client(&env, &["-D", &socks.to_string()]);
    wait_for(
        "the proxy client's SOCKS port",
        Duration::from_secs(20),
        || {
            assert!(client.try_status().is_none(), "the proxy client exited");
            listening(socks)
        },
    );
    let body = env.work_dir().join("body.bin");
    let answer = env.work_dir().join("answer.bin");
    common::write_random(&body, 1 << 20);
    let out = run(env
        .command("curl")
        .args(["--silent", "--show-error", "--fail", "--max-time", "60"])
        .args(["-H", "Expect:", "--data-binary"])
        .arg(format!("@{}", body.display()))
        .arg("--output")
        .arg(&answer)
        .arg("--socks5-hostname")
        .arg(format!("127.0.0.1:{socks}"))
        .arg(format!("http://localhost:{}/echo", http.port())));
    out.assert_success("curl through -D of a proxy client");
    assert_eq!(
        common::sha256_file(&answer),
        common::sha256_file(&body),
        "the answer differs from the body sent"
    );
    client.terminate(Duration::from_secs(5));
    env.assert_master_serves();
}

fn remote_forward(kind: MasterKind) {
    let env = TestEnv::new();
    let master = start(&env, kind, ALLOW_PROXY);
    let echo = TcpServer::echo();
    let port = free_port();
    let spec = format!("{port}:127.0.0.1:{}", echo.port());
    let mut client = spawn_forwarding_client(&env, &["-R", &spec]);
    // sshd listens on the same machine: connect to the forwarded port here.
    wait_for("sshd's -R listener", Duration::from_secs(20), || {
        assert!(
            client.try_status().is_none(),
            "the proxy client exited: {}\nmaster log:\n{}",
            read_lossy(&env.logs_dir().join("proxy-client.log")),
            master.log()
        );
        listening(port)
    });
    let data = random_bytes(4 << 20);
    assert_echoes(connect(port), &data, "-R through -O proxy");
    assert_echoes(connect(port), b"again", "second -R connection");
    // The forward belongs to the proxy client: it goes when the client does.
    client.terminate(Duration::from_secs(5));
    wait_for(
        "the -R listener to go with its proxy client",
        Duration::from_secs(20),
        || refused(port),
    );

    // -R 0: the server picks the port, which the client learns from the
    // REQUEST_SUCCESS and prints (at LogLevel INFO; the config says ERROR).
    // OpenSSH's 9.2 master does not pass that reply on to a proxy client
    // (tested: the client waits and prints nothing), so only muxguard is
    // checked here.
    if kind == MasterKind::OpenSsh {
        env.assert_master_serves();
        return;
    }
    let spec = format!("0:127.0.0.1:{}", echo.port());
    let mut client = spawn_forwarding_client(&env, &["-o", "LogLevel=INFO", "-R", &spec]);
    let log = env.logs_dir().join("proxy-client.log");
    let mut allocated = None;
    let found = poll_until(Duration::from_secs(20), || {
        assert!(client.try_status().is_none(), "{}", read_lossy(&log));
        allocated = read_lossy(&log).lines().find_map(|l| {
            l.strip_prefix("Allocated port ")?
                .split_whitespace()
                .next()?
                .parse::<u16>()
                .ok()
        });
        allocated.is_some()
    });
    assert!(
        found,
        "the proxy client printed no allocated port: {}",
        read_lossy(&log)
    );
    let allocated = allocated.expect("a port");
    assert_echoes(connect(allocated), b"through -R 0", "-R 0 through -O proxy");
    client.terminate(Duration::from_secs(5));
    env.assert_master_serves();
}

/// Without a rule naming "proxy" the request is refused (and audited), even
/// under a policy that allows everything else.
#[test]
fn refused_without_a_proxy_rule() {
    if !common::selected(MasterKind::Muxguard) {
        return;
    }
    let env = TestEnv::new();
    let master = start(
        &env,
        MasterKind::Muxguard,
        "[defaults]\naction = \"allow\"\n",
    );
    let out = run(&mut proxy(&env, &[], Some("echo never")));
    assert_eq!(out.code(), Some(255), "{out:#?}");
    assert!(!out.stdout.contains("never"), "{out:#?}");
    assert!(out.stderr.contains("lists kind \"proxy\""), "{out:#?}");
    let all = records(&audit_log(&env));
    let request = all
        .iter()
        .find(|r| r["event"] == "request" && r["kind"] == "proxy")
        .unwrap_or_else(|| panic!("no proxy request in the audit log: {all:#?}"));
    assert!(
        all.iter().any(|r| r["event"] == "decision"
            && r["request"] == request["request"]
            && r["action"] == "deny"),
        "no denial recorded: {all:#?}"
    );
    assert!(
        !all.iter().any(|r| r["event"] == "session_open"),
        "a refused proxy opened a session: {all:#?}"
    );
    drop(master);
}

/// An allowed proxy exec leaves the same records as a mux session (request,
/// decision, session open, close with bytes and exit status), after the
/// proxy decision; a policy denial inside the proxy is audited too and
/// refuses the exec only. The chain verifies.
#[test]
fn audited_per_request_inside_the_proxy() {
    if !common::selected(MasterKind::Muxguard) {
        return;
    }
    let env = TestEnv::new();
    let policy = format!(
        "{ALLOW_PROXY}\n[[rule]]\nname = \"no touch\"\ncommands = [\"touch *\"]\naction = \"deny\"\n"
    );
    let mut master = start(&env, MasterKind::Muxguard, &policy);
    let out = run(&mut proxy(&env, &[], Some("echo audited; exit 4")));
    assert_eq!(out.code(), Some(4), "{out:#?}");
    let marker = env.path().join("touched");
    let out = run(&mut proxy(
        &env,
        &[],
        Some(&format!("touch {}", marker.display())),
    ));
    assert_ne!(out.code(), Some(0), "{out:#?}");
    assert!(!marker.exists(), "a denied exec ran through the proxy");
    env.control("exit").assert_success("-O exit");
    master.wait_exit();

    let all = records(&audit_log(&env));
    let exec = all
        .iter()
        .find(|r| {
            r["event"] == "request" && r["kind"] == "exec" && r["command"] == "echo audited; exit 4"
        })
        .unwrap_or_else(|| panic!("no exec request recorded: {all:#?}"));
    let client = &exec["client"];
    assert!(
        all.iter()
            .any(|r| r["event"] == "request" && r["kind"] == "proxy" && &r["client"] == client),
        "the exec's client made no proxy request: {all:#?}"
    );
    let allowed = all.iter().any(|r| {
        r["event"] == "decision" && r["request"] == exec["request"] && r["action"] == "allow"
    });
    assert!(allowed, "no allow decision for the exec: {all:#?}");
    let open = all
        .iter()
        .find(|r| r["event"] == "session_open" && r["request"] == exec["request"])
        .unwrap_or_else(|| panic!("no session_open for the exec: {all:#?}"));
    let close = all
        .iter()
        .find(|r| r["event"] == "session_close" && r["session"] == open["session"])
        .unwrap_or_else(|| panic!("no session_close: {all:#?}"));
    assert_eq!(close["exit_status"], 4, "{close:#?}");
    assert_eq!(close["bytes_in"], "audited\n".len(), "{close:#?}");

    let touch = all
        .iter()
        .find(|r| {
            r["event"] == "request"
                && r["kind"] == "exec"
                && r["command"]
                    .as_str()
                    .is_some_and(|c| c.starts_with("touch "))
        })
        .unwrap_or_else(|| panic!("no touch request recorded: {all:#?}"));
    assert!(
        all.iter().any(|r| r["event"] == "decision"
            && r["request"] == touch["request"]
            && r["action"] == "deny"),
        "the denial inside the proxy was not recorded: {all:#?}"
    );
    let verify = run(env
        .command(common::master::MUXGUARD)
        .args(["audit", "verify"])
        .arg(audit_log(&env)));
    verify.assert_success("audit verify");
}

/// One SSH packet as a proxy client frames it: length, padding length 0,
/// type, payload.
fn ssh_packet(message_type: u8, payload: &[u8]) -> Vec<u8> {
    let mut body = vec![0, message_type];
    body.extend_from_slice(payload);
    let mut framed = (body.len() as u32).to_be_bytes().to_vec();
    framed.extend(body);
    framed
}

/// A raw client that has entered proxy mode.
fn raw_proxy(env: &TestEnv) -> RawClient {
    let mut raw = RawClient::connect(env.control_path());
    raw.handshake();
    raw.send(&Msg::new(MUX_C_PROXY).u32(0)).expect("send PROXY");
    let reply = raw.read_packet();
    assert_eq!(
        &reply[..8],
        &[MUX_S_PROXY.to_be_bytes(), 0u32.to_be_bytes()].concat()[..],
        "expected MUX_S_PROXY rid 0, got {reply:02x?}"
    );
    raw
}

/// Malformed proxy input closes that connection only; the master goes on.
#[test]
fn malformed_proxy_packets_close_the_connection_only() {
    if !common::selected(MasterKind::Muxguard) {
        return;
    }
    let env = TestEnv::new();
    let master = start(&env, MasterKind::Muxguard, ALLOW_PROXY);

    // A transport-layer message (KEXINIT) has no place in proxy mode.
    let mut raw = raw_proxy(&env);
    raw.send_raw(&ssh_packet(20, &[0; 16])).expect("send");
    raw.expect_closed("a transport message in proxy mode");

    // A length above 256 KiB.
    let mut raw = raw_proxy(&env);
    raw.send_raw(&(300u32 * 1024).to_be_bytes()).expect("send");
    raw.expect_closed("an oversized proxy packet");

    // CHANNEL_DATA whose string claims more than the packet holds.
    let mut raw = raw_proxy(&env);
    let mut payload = 0u32.to_be_bytes().to_vec();
    payload.extend(1000u32.to_be_bytes());
    payload.extend(b"short");
    raw.send_raw(&ssh_packet(94, &payload)).expect("send");
    raw.expect_closed("a truncated CHANNEL_DATA");

    // A packet cut off by the client closing its side.
    let mut raw = raw_proxy(&env);
    raw.send_raw(&[0, 0, 0, 40, 0, 90]).expect("send");
    raw.shutdown_write();
    raw.expect_closed("a truncated packet");

    // An unknown connection-protocol message type.
    let mut raw = raw_proxy(&env);
    raw.send_raw(&ssh_packet(120, b"")).expect("send");
    raw.expect_closed("an unknown message type");

    let log = master.log();
    assert!(
        log.contains("not a connection-protocol message"),
        "the reason is not logged:\n{log}"
    );
    env.assert_master_serves();
}

/// Channel types and requests the master does not support are refused
/// with OPEN_FAILURE / CHANNEL_FAILURE, never left hanging, and unknown
/// global requests get REQUEST_FAILURE.
#[test]
fn unsupported_requests_are_refused_not_hung() {
    if !common::selected(MasterKind::Muxguard) {
        return;
    }
    let env = TestEnv::new();
    let _master = start(&env, MasterKind::Muxguard, ALLOW_PROXY);
    let mut raw = raw_proxy(&env);
    let string = |s: &[u8]| [&(s.len() as u32).to_be_bytes()[..], s].concat();

    // A global request nobody here implements, wanting a reply.
    let mut payload = string(b"hostkeys-prove-00@openssh.com");
    payload.push(1);
    raw.send_raw(&ssh_packet(80, &payload)).expect("send");
    assert_eq!(read_ssh_packet(&mut raw)[1], 82, "REQUEST_FAILURE");

    // An x11 channel: OPEN_FAILURE for our sender id 7.
    let mut payload = string(b"x11");
    payload.extend(7u32.to_be_bytes());
    payload.extend(0x20_0000u32.to_be_bytes());
    payload.extend(0x8000u32.to_be_bytes());
    payload.extend(string(b"127.0.0.1"));
    payload.extend(6010u32.to_be_bytes());
    raw.send_raw(&ssh_packet(90, &payload)).expect("send");
    let failure = read_ssh_packet(&mut raw);
    assert_eq!(failure[1], 92, "CHANNEL_OPEN_FAILURE: {failure:02x?}");
    assert_eq!(&failure[2..6], &7u32.to_be_bytes(), "recipient is our id");

    // A session with an unsupported request (x11-req) wanting a reply.
    let ours = open_session_channel(&mut raw, 3);
    let mut payload = ours.clone();
    payload.extend(string(b"x11-req"));
    payload.push(1);
    payload.push(0);
    payload.extend(string(b"MIT-MAGIC-COOKIE-1"));
    payload.extend(string(b"00"));
    payload.extend(0u32.to_be_bytes());
    raw.send_raw(&ssh_packet(98, &payload)).expect("send");
    let reply = read_ssh_packet(&mut raw);
    assert_eq!(reply[1], 100, "CHANNEL_FAILURE: {reply:02x?}");
    assert_eq!(&reply[2..6], &3u32.to_be_bytes());
    drop(raw);
    env.assert_master_serves();
}

/// Channel requests carry no window, so a client that queues them while
/// one is being decided is cut off at the bound (docs/limits.md) instead of
/// growing the master's memory; others are not affected. The exec waits on
/// a prompt nobody answers (an askpass that sleeps), so the queue behind it
/// can only grow.
#[test]
fn a_flood_of_channel_requests_closes_that_client_only() {
    if !common::selected(MasterKind::Muxguard) {
        return;
    }
    let env = TestEnv::new();
    let askpass = env.path().join("askpass-never-answers");
    std::fs::write(&askpass, "#!/bin/sh\nexec sleep 60\n").expect("write askpass");
    common::env::set_mode(&askpass, 0o755);
    let askpass_var = askpass.display().to_string();
    let master = start_muxguard_with_env(
        &env,
        "[defaults]\naction = \"ask\"\n\n[[rule]]\nname = \"proxy ok\"\nkinds = [\"proxy\"]\naction = \"allow\"\n",
        &[
            ("SSH_ASKPASS", askpass_var.as_str()),
            ("SSH_ASKPASS_REQUIRE", "force"),
        ],
    );
    let mut raw = raw_proxy(&env);
    let string = |s: &[u8]| [&(s.len() as u32).to_be_bytes()[..], s].concat();
    let ours = open_session_channel(&mut raw, 3);

    let request = |name: &[u8], fields: &[&[u8]]| {
        let mut payload = ours.clone();
        payload.extend(string(name));
        payload.push(1);
        for field in fields {
            payload.extend(string(field));
        }
        ssh_packet(98, &payload)
    };
    let mut flood = request(b"exec", &[b"echo never-runs"]);
    for _ in 0..1000 {
        flood.extend(request(b"env", &[b"MUXGUARD_FLOOD", b"1"]));
    }
    // The master may close the connection before it has read everything.
    let _ = raw.send_raw(&flood);
    raw.expect_closed_after_replies("a flood of channel requests");
    let log = master.log();
    assert!(
        log.contains(&format!(
            "more than {} requests on channel",
            64 // channel::MAX_PENDING_REQUESTS, as docs/limits.md states it
        )),
        "the reason is not logged:\n{log}"
    );
    // Another client is served meanwhile: the prompt of the first is still
    // open, so this one is asked too; -O check needs no decision.
    let check = env.control("check");
    check.assert_success("-O check after the flood");
    env.assert_connections(1);

    // The master goes while its dialog is still open: the askpass broker
    // ends the dialog and exits with it, instead of waiting out the
    // prompt's timeout.
    let broker_alive = || {
        std::fs::read_dir("/proc")
            .expect("/proc")
            .flatten()
            .any(|entry| {
                std::fs::read(entry.path().join("cmdline")).is_ok_and(|cmdline| {
                    cmdline
                        .split(|b| *b == 0)
                        .any(|arg| arg == b"askpass-broker")
                        && cmdline
                            .windows(askpass_var.len())
                            .any(|w| w == askpass_var.as_bytes())
                })
            })
    };
    assert!(broker_alive(), "no askpass broker runs the open dialog");
    drop(master);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while broker_alive() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(!broker_alive(), "the askpass broker outlived its master");
}

/// Opens a session channel as `sender` (2 MiB window, 32 KiB packets) and
/// returns the master's channel number for it, as on the wire.
fn open_session_channel(raw: &mut RawClient, sender: u32) -> Vec<u8> {
    let mut payload = [&7u32.to_be_bytes()[..], b"session"].concat();
    payload.extend(sender.to_be_bytes());
    payload.extend(0x20_0000u32.to_be_bytes());
    payload.extend(0x8000u32.to_be_bytes());
    raw.send_raw(&ssh_packet(90, &payload)).expect("send");
    let confirmation = read_ssh_packet(raw);
    assert_eq!(
        confirmation[1], 91,
        "OPEN_CONFIRMATION: {confirmation:02x?}"
    );
    assert_eq!(
        &confirmation[2..6],
        &sender.to_be_bytes(),
        "recipient is ours"
    );
    confirmation[6..10].to_vec()
}

/// Reads one SSH packet body (padding length, type, payload) in proxy mode.
fn read_ssh_packet(raw: &mut RawClient) -> Vec<u8> {
    raw.read_packet()
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("temp paths are UTF-8")
}

/// A proxy client killed in the middle of a session: the master closes the
/// channel upstream (the remote command sees its input end), records the
/// session's end, and serves on.
#[test]
fn killed_client_closes_its_channels() {
    if !common::selected(MasterKind::Muxguard) {
        return;
    }
    let env = TestEnv::new();
    let _master = start(&env, MasterKind::Muxguard, ALLOW_PROXY);
    let pid_file = env.path().join("remote.pid");
    // The remote side prints its pid, then waits on its input: it ends
    // only when the channel is closed.
    let remote = format!("echo $$ > {}; exec cat", pid_file.display());
    let mut client = ChildGuard::spawn(
        {
            let mut cmd = proxy(&env, &[], Some(&remote));
            cmd.stdin(Stdio::piped()).stdout(Stdio::null());
            cmd
        },
        "ssh -O proxy cat",
    );
    wait_for(
        "the remote command to start",
        Duration::from_secs(20),
        || read_lossy(&pid_file).ends_with('\n'),
    );
    let remote_pid: u32 = read_lossy(&pid_file).trim().parse().expect("a pid");
    assert!(common::process::is_alive(remote_pid));
    client.kill();
    wait_for(
        "the remote command to end with its channel",
        Duration::from_secs(20),
        || !common::process::is_alive(remote_pid),
    );
    wait_for(
        "the session's end in the audit log",
        Duration::from_secs(20),
        || {
            records(&audit_log(&env))
                .iter()
                .any(|r| r["event"] == "session_close")
        },
    );
    env.assert_master_serves();
}

/// A proxy client that stops reading its output holds up only itself:
/// another client's session through the same master answers at once.
#[test]
fn stalled_proxy_client_does_not_stall_others() {
    if !common::selected(MasterKind::Muxguard) {
        return;
    }
    let env = TestEnv::new();
    let _master = start(&env, MasterKind::Muxguard, ALLOW_PROXY);
    // Its stdout is a pipe nobody reads: the client's window closes after
    // a few MiB and the rest waits in the master (memory, then disk).
    let mut stalled = ChildGuard::spawn(
        {
            let mut cmd = proxy(&env, &[], Some("head -c 64M /dev/zero; sleep 60"));
            cmd.stdout(Stdio::piped());
            cmd
        },
        "stalled ssh -O proxy",
    );
    std::thread::sleep(Duration::from_secs(2));
    assert!(stalled.try_status().is_none(), "the stalled client exited");
    let started = std::time::Instant::now();
    let out = run(&mut env.ssh_cmd("echo prompt"));
    out.assert_success("a session beside the stalled proxy client");
    assert_eq!(out.stdout, "prompt\n");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the session took {:?} beside a stalled proxy client",
        started.elapsed()
    );
    let out = run(&mut proxy(&env, &[], Some("echo proxied")));
    assert_eq!(out.stdout, "proxied\n", "{out:#?}");
    drop(stalled);
}
