//! Port forwarding through the master (mux-protocol.md §3.5, §3.6): `-L`,
//! `-R` (including `-R 0`), `-D` (SOCKS4, 4a, 5), Unix-socket forwards,
//! `-O forward` / `-O cancel`, forwards asked for by session clients, and
//! bad forwarding requests. The far end of every forward is an echo server
//! in the test; data goes there and back and must come back unchanged.
//! Each scenario also checks that everything went through the master's one
//! connection.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::process::Stdio;
use std::time::Duration;

use common::mux::{
    self, FwdEnd, MUX_FWD_DYNAMIC, MUX_FWD_LOCAL, MUX_FWD_PORT_STREAMLOCAL, MUX_FWD_REMOTE,
    RawClient,
};
use common::net::{self, Conn, IO_TIMEOUT, TcpServer, UnixEchoServer, assert_echoes};
use common::process::{ChildGuard, Output, poll_until, wait_for};
use common::sshd::free_port;
use common::{HOST, MasterKind, TestEnv, for_both_masters, run};

for_both_masters!(
    local_forward,
    remote_forward,
    remote_forward_serves_a_connection_that_arrives_with_the_reply,
    remote_forward_port_zero,
    dynamic_forward_socks,
    dynamic_forward_curl,
    unix_socket_forwards,
    cancel_removes_only_the_named_forward,
    forwards_outlive_their_client,
    absurd_ports_rejected_by_client,
    absurd_port_closes_mux_connection,
    dynamic_forward_on_unix_path_refused,
    socks_garbage,
    unix_path_too_long,
    cancel_unknown_forward,
);

/// How much data each forward carries each way.
const PAYLOAD: u64 = 1024 * 1024;

/// How long a forward may take to appear or disappear where that happens
/// asynchronously (a session client's forward, a cancelled listener).
const SETTLE: Duration = Duration::from_secs(20);

/// `ssh -O <op> <args> testhost`, run to completion.
fn control(env: &TestEnv, op: &str, args: &[&str]) -> Output {
    run(env.ssh().args(["-O", op]).args(args).arg(HOST))
}

/// `ssh -O forward <args> testhost`; panics unless it succeeds.
fn add_forward(env: &TestEnv, args: &[&str]) -> Output {
    let out = control(env, "forward", args);
    out.assert_success(&format!("-O forward {}", args.join(" ")));
    out
}

fn connect(port: u16) -> TcpStream {
    TcpStream::connect(("127.0.0.1", port))
        .unwrap_or_else(|e| panic!("connect to 127.0.0.1:{port}: {e}"))
}

/// Whether nothing listens on 127.0.0.1:`port` any more.
fn refused(port: u16) -> bool {
    matches!(
        TcpStream::connect(("127.0.0.1", port)),
        Err(e) if e.kind() == ErrorKind::ConnectionRefused
    )
}

fn local_forward(kind: MasterKind) {
    let env = TestEnv::new();
    let _master = env.start_master(kind);
    let echo = TcpServer::echo();
    let port = free_port();
    let out = add_forward(&env, &["-L", &format!("{port}:127.0.0.1:{}", echo.port())]);
    assert_eq!(out.stdout, "", "-O forward -L prints nothing");

    let data = net::random_bytes(PAYLOAD);
    assert_echoes(connect(port), &data, "-L forward");
    // A second connection through the same listener.
    assert_echoes(
        connect(port),
        &data[..1000],
        "-L forward, second connection",
    );
    env.assert_connections(1);
}

/// sshd listens (on this machine) and the master connects to the target.
fn remote_forward(kind: MasterKind) {
    let env = TestEnv::new();
    let _master = env.start_master(kind);
    let echo = TcpServer::echo();
    let port = free_port();
    let out = add_forward(&env, &["-R", &format!("{port}:127.0.0.1:{}", echo.port())]);
    assert_eq!(
        out.stdout, "",
        "-O forward -R with a fixed port prints nothing"
    );

    let data = net::random_bytes(PAYLOAD);
    assert_echoes(connect(port), &data, "-R forward");
    env.assert_connections(1);
}

/// A connection that reaches the server's new listener at once: sshd
/// opens its channel right behind the reply to tcpip-forward, and the
/// master must already know where it goes (it routes a fixed port before
/// asking). A client keeps knocking from before the forward exists; its
/// first connection that gets through must be served, not dropped.
fn remote_forward_serves_a_connection_that_arrives_with_the_reply(kind: MasterKind) {
    let env = TestEnv::new();
    let _master = env.start_master(kind);
    let echo = TcpServer::echo();
    let port = free_port();
    let knocker = std::thread::spawn(move || {
        let deadline = std::time::Instant::now() + SETTLE;
        loop {
            match TcpStream::connect(("127.0.0.1", port)) {
                Ok(stream) => return stream,
                Err(e) if std::time::Instant::now() > deadline => {
                    panic!("the forward never listened on {port}: {e}")
                }
                Err(_) => std::thread::sleep(Duration::from_micros(200)),
            }
        }
    });
    add_forward(&env, &["-R", &format!("{port}:127.0.0.1:{}", echo.port())]);
    let first = knocker.join().expect("knocker thread");
    assert_echoes(
        first,
        b"the very first connection",
        "-R forward's first connection",
    );
    env.assert_connections(1);
}

/// `-R 0`: the server picks the port and `-O forward` prints it; the same
/// request again is a duplicate and gets the same port (§3.5 step 2).
fn remote_forward_port_zero(kind: MasterKind) {
    let env = TestEnv::new();
    let _master = env.start_master(kind);
    let echo = TcpServer::echo();
    let spec = format!("0:127.0.0.1:{}", echo.port());

    let first = add_forward(&env, &["-R", &spec]);
    let port: u16 = first
        .stdout
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("-O forward -R 0 should print a port: {first:#?}"));
    assert_eq!(first.stdout, format!("{port}\n"));
    assert_ne!(port, 0);

    let second = add_forward(&env, &["-R", &spec]);
    assert_eq!(
        second.stdout, first.stdout,
        "a duplicate -R 0 gets the port allocated the first time"
    );

    let data = net::random_bytes(PAYLOAD);
    assert_echoes(connect(port), &data, "-R 0 forward");
    env.assert_connections(1);
}

/// `-D`: SOCKS5 with a host name (resolved by the server), SOCKS4 with an
/// address, SOCKS4a with a name.
fn dynamic_forward_socks(kind: MasterKind) {
    let env = TestEnv::new();
    let _master = env.start_master(kind);
    let echo = TcpServer::echo();
    let socks = free_port();
    let out = add_forward(&env, &["-D", &socks.to_string()]);
    assert_eq!(out.stdout, "", "-O forward -D prints nothing");

    let data = net::random_bytes(PAYLOAD);
    let stream = socks5_connect(socks, "localhost", echo.port());
    assert_echoes(stream, &data, "SOCKS5 to localhost");
    let stream = socks4_connect(socks, Socks4Target::Address([127, 0, 0, 1]), echo.port());
    assert_echoes(stream, &data, "SOCKS4 to 127.0.0.1");
    let stream = socks4_connect(socks, Socks4Target::Name("localhost"), echo.port());
    assert_echoes(stream, &data, "SOCKS4a to localhost");
    env.assert_connections(1);
}

/// The stock tool through the SOCKS port: curl POSTs 1 MiB to an HTTP
/// server that answers with the same body, by name (`localhost`, resolved
/// on the server side) and with SOCKS4a.
fn dynamic_forward_curl(kind: MasterKind) {
    let env = TestEnv::new();
    let _master = env.start_master(kind);
    let http = TcpServer::http_echo();
    let socks = free_port();
    add_forward(&env, &["-D", &socks.to_string()]);

    let body = env.work_dir().join("body.bin");
    let answer = env.work_dir().join("answer.bin");
    common::write_random(&body, PAYLOAD);
    for proxy_option in ["--socks5-hostname", "--socks4a"] {
        let _ = std::fs::remove_file(&answer);
        let out = run(env
            .command("curl")
            .args(["--silent", "--show-error", "--fail", "--max-time", "60"])
            .args(["-H", "Expect:", "--data-binary"])
            .arg(format!("@{}", body.display()))
            .arg("--output")
            .arg(&answer)
            .arg(proxy_option)
            .arg(format!("127.0.0.1:{socks}"))
            .arg(format!("http://localhost:{}/echo", http.port())));
        out.assert_success(&format!("curl {proxy_option}"));
        assert_eq!(
            common::sha256_file(&answer),
            common::sha256_file(&body),
            "curl {proxy_option}: the answer differs from the body sent"
        );
    }
    env.assert_connections(1);
}

/// `-L path:path` and `-R path:path` to a Unix-socket echo server.
fn unix_socket_forwards(kind: MasterKind) {
    let env = TestEnv::new();
    let _master = env.start_master(kind);
    let work = env.work_dir();
    let echo = UnixEchoServer::start(&work.join("r.sock"));
    // muxguard's sandbox lets the master create sockets only beside its
    // control socket (see the sandbox tests in hardening.rs).
    let local = env.control_dir().join("l.sock");
    let remote = work.join("rl.sock");
    let target = echo.path().display().to_string();
    add_forward(&env, &["-L", &format!("{}:{target}", local.display())]);
    add_forward(&env, &["-R", &format!("{}:{target}", remote.display())]);

    let data = net::random_bytes(PAYLOAD);
    for (what, path) in [("-L unix", &local), ("-R unix", &remote)] {
        let stream = UnixStream::connect(path)
            .unwrap_or_else(|e| panic!("{what}: connect {}: {e}", path.display()));
        assert_echoes(stream, &data, what);
    }
    env.assert_connections(1);
}

/// `-O cancel` needs the spec as it was opened and removes only that
/// forward; cancelling what does not exist fails but still exits 0.
fn cancel_removes_only_the_named_forward(kind: MasterKind) {
    let env = TestEnv::new();
    let _master = env.start_master(kind);
    let echo = TcpServer::echo();
    let (kept, cancelled, remote) = (free_port(), free_port(), free_port());
    let spec = |port: u16| format!("{port}:127.0.0.1:{}", echo.port());
    add_forward(&env, &["-L", &spec(kept)]);
    add_forward(&env, &["-L", &spec(cancelled)]);
    add_forward(&env, &["-R", &spec(remote)]);
    let data = net::random_bytes(64 * 1024);
    for port in [kept, cancelled, remote] {
        assert_echoes(connect(port), &data, "before the cancel");
    }

    for (flag, port) in [("-L", cancelled), ("-R", remote)] {
        let out = control(&env, "cancel", &[flag, &spec(port)]);
        out.assert_success(&format!("-O cancel {flag}"));
        assert!(
            poll_until(SETTLE, || refused(port)),
            "port {port} still accepts connections after -O cancel {flag}"
        );
    }
    assert_echoes(connect(kept), &data, "the forward that was not cancelled");

    // Not forwarded (any more): a failure message, but exit 0 (§3.6).
    let out = control(&env, "cancel", &["-L", &spec(cancelled)]);
    assert_eq!(out.code(), Some(0), "cancel of a missing forward: {out:#?}");
    assert!(
        out.stderr.contains("port not forwarded"),
        "cancel of a missing forward: {out:#?}"
    );
    assert_echoes(connect(kept), &data, "after the failed cancel");
    env.assert_master_serves();
}

/// Starts `ssh <forward_args> testhost cat` with stdin held open, and waits
/// until its forward on `port` accepts connections.
fn session_with_forward(env: &TestEnv, forward_args: &[&str], port: u16) -> ChildGuard {
    let mut cmd = env.ssh();
    cmd.args(forward_args)
        .args([HOST, "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null());
    let child = ChildGuard::spawn(cmd, "ssh session with a forward");
    wait_for(
        &format!("the session client's forward on port {port}"),
        SETTLE,
        || TcpStream::connect(("127.0.0.1", port)).is_ok(),
    );
    child
}

/// Ends a session started by [`session_with_forward`]: closing its stdin
/// ends the remote `cat`.
fn end_session(mut client: ChildGuard) {
    drop(client.child_mut().stdin.take());
    let status = client.wait(Duration::from_secs(60));
    assert!(status.success(), "session client: {status}");
}

/// Forwards belong to the master (§3.5): the `-L` of a session client that
/// has exited still works, and so do another client's forwards.
fn forwards_outlive_their_client(kind: MasterKind) {
    let env = TestEnv::new();
    let _master = env.start_master(kind);
    let echo = TcpServer::echo();
    let (first_port, second_port) = (free_port(), free_port());
    let spec = |port: u16| format!("{port}:127.0.0.1:{}", echo.port());
    let data = net::random_bytes(PAYLOAD);

    let first = session_with_forward(&env, &["-L", &spec(first_port)], first_port);
    let second = session_with_forward(&env, &["-R", &spec(second_port)], second_port);
    end_session(first);
    assert_echoes(connect(first_port), &data, "-L of the exited client");
    assert_echoes(connect(second_port), &data, "-R of the running client");

    end_session(second);
    assert_echoes(connect(first_port), &data, "-L after both exited");
    assert_echoes(connect(second_port), &data, "-R after both exited");

    // A plain `ssh -L ... host true` leaves its forward behind as well.
    let third_port = free_port();
    run(env.ssh().args(["-L", &spec(third_port), HOST, "true"])).assert_success("ssh -L ... true");
    assert_echoes(connect(third_port), &data, "-L of `ssh -L ... true`");
    env.assert_connections(1);
}

// ---- Bad input ----

/// The client itself refuses ports outside 1..65535 in a forward spec and
/// never asks the master.
fn absurd_ports_rejected_by_client(kind: MasterKind) {
    let env = TestEnv::new();
    let _master = env.start_master(kind);
    for (flag, spec, kind_word) in [
        ("-L", "70000:127.0.0.1:22", "local"),
        ("-L", "5000:127.0.0.1:70000", "local"),
        ("-R", "70000:127.0.0.1:22", "remote"),
        ("-D", "70000", "dynamic"),
    ] {
        let out = control(&env, "forward", &[flag, spec]);
        assert_eq!(out.code(), Some(255), "{flag} {spec}: {out:#?}");
        assert!(
            out.stderr
                .contains(&format!("Bad {kind_word} forwarding specification")),
            "{flag} {spec}: {out:#?}"
        );
    }
    env.assert_master_serves();
}

/// A listen port above 65535 that is not the Unix-socket marker makes the
/// request malformed: the master closes that control connection (§3.5).
fn absurd_port_closes_mux_connection(kind: MasterKind) {
    let env = TestEnv::new();
    let _master = env.start_master(kind);
    let mut client = RawClient::connect(env.control_path());
    client.handshake();
    let listen = FwdEnd {
        host: "",
        port: 70000,
    };
    let target = FwdEnd {
        host: "127.0.0.1",
        port: 22,
    };
    let _ = client.send(&mux::forward(true, 1, MUX_FWD_LOCAL, listen, target));
    client.expect_closed("OPEN_FWD with listen port 70000");
    drop(client);
    env.assert_master_serves();
}

/// A dynamic forward listening on a Unix path is refused (the stock client
/// sends it as it is, so both the raw and the stock way are checked).
fn dynamic_forward_on_unix_path_refused(kind: MasterKind) {
    let env = TestEnv::new();
    let master = env.start_master(kind);
    let path = env.work_dir().join("socks.sock");
    let path_str = path.display().to_string();

    let mut client = RawClient::connect(env.control_path());
    client.handshake();
    let listen = FwdEnd {
        host: &path_str,
        port: MUX_FWD_PORT_STREAMLOCAL,
    };
    let socks = FwdEnd {
        host: "socks",
        port: 0,
    };
    client
        .send(&mux::forward(true, 7, MUX_FWD_DYNAMIC, listen, socks))
        .expect("send OPEN_FWD");
    assert_eq!(client.expect_failure(7), "Invalid forwarding request");
    client.expect_alive(8, master.pid());
    drop(client);

    let out = control(&env, "forward", &["-D", &path_str]);
    assert_eq!(out.code(), Some(255), "-O forward -D <path>: {out:#?}");
    assert!(
        out.stderr.contains("Invalid forwarding request"),
        "-O forward -D <path>: {out:#?}"
    );
    assert!(!path.exists(), "a socket was created at {}", path.display());
    env.assert_master_serves();
}

/// SOCKS clients that send garbage are disconnected without getting
/// anywhere, and the SOCKS port keeps working.
fn socks_garbage(kind: MasterKind) {
    let env = TestEnv::new();
    let _master = env.start_master(kind);
    let echo = TcpServer::echo();
    let socks = free_port();
    add_forward(&env, &["-D", &socks.to_string()]);

    // Not SOCKS at all.
    let mut stream = connect(socks);
    let _ = stream.write_all(b"GET / HTTP/1.0\r\nHost: example\r\n\r\n");
    let answer = read_until_closed(stream, "an HTTP request to the SOCKS port");
    assert!(
        answer.is_empty(),
        "answer to an HTTP request on the SOCKS port: {answer:02x?}"
    );

    // A SOCKS5 greeting, then a request with an unknown command (9) and
    // an unknown address type (7).
    let mut stream = connect(socks);
    stream.write_all(&[5, 1, 0]).expect("SOCKS5 greeting");
    let mut choice = [0; 2];
    stream
        .read_exact(&mut choice)
        .expect("SOCKS5 method choice");
    assert_eq!(choice, [5, 0], "SOCKS5 method choice");
    let _ = stream.write_all(&[5, 9, 0, 7, 1, 2, 3, 4, 5, 6, 7, 8]);
    let answer = read_until_closed(stream, "a bad SOCKS5 request");
    assert!(
        answer.get(1).is_none_or(|&status| status != 0),
        "a bad SOCKS5 request was granted: {answer:02x?}"
    );

    // A SOCKS4 request cut short: the connection is closed, not kept open.
    let mut stream = connect(socks);
    let _ = stream.write_all(&[4, 1, 0]);
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let answer = read_until_closed(stream, "a truncated SOCKS4 request");
    assert!(
        answer.get(1).is_none_or(|&status| status != 90),
        "a truncated SOCKS4 request was granted: {answer:02x?}"
    );

    let data = net::random_bytes(64 * 1024);
    assert_echoes(
        socks5_connect(socks, "localhost", echo.port()),
        &data,
        "SOCKS5 after the garbage",
    );
    env.assert_master_serves();
}

/// Reads whatever the peer still sends until it closes the connection
/// (EOF or reset); panics if it keeps it open for [`IO_TIMEOUT`].
fn read_until_closed(mut stream: TcpStream, what: &str) -> Vec<u8> {
    stream.set_timeouts(IO_TIMEOUT).expect("set timeouts");
    let mut answer = Vec::new();
    match stream.read_to_end(&mut answer) {
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        Err(e) => panic!("{what}: expected the connection to be closed: {e}"),
    }
    answer
}

/// A Unix listen path longer than sun_path (108 bytes): the client refuses
/// it itself; sent raw, the master answers FAILURE (for a local listener
/// and for a remote one, which the server refuses) and keeps working.
fn unix_path_too_long(kind: MasterKind) {
    let env = TestEnv::new();
    let master = env.start_master(kind);
    let work = env.work_dir();
    let echo = UnixEchoServer::start(&work.join("r.sock"));
    let target = echo.path().display().to_string();
    let long = env.control_dir().join(format!("{}.sock", "x".repeat(120)));
    let long_str = long.display().to_string();
    assert!(long_str.len() > 108);

    let out = control(&env, "forward", &["-L", &format!("{long_str}:{target}")]);
    assert_eq!(out.code(), Some(255), "-O forward -L <long path>: {out:#?}");
    assert!(
        out.stderr.contains("Bad local forwarding specification"),
        "-O forward -L <long path>: {out:#?}"
    );

    let mut client = RawClient::connect(env.control_path());
    client.handshake();
    let listen = FwdEnd {
        host: &long_str,
        port: MUX_FWD_PORT_STREAMLOCAL,
    };
    let connect_to = FwdEnd {
        host: &target,
        port: MUX_FWD_PORT_STREAMLOCAL,
    };
    client
        .send(&mux::forward(true, 1, MUX_FWD_LOCAL, listen, connect_to))
        .expect("send OPEN_FWD");
    assert_eq!(client.expect_failure(1), "Port forwarding failed");
    client
        .send(&mux::forward(true, 2, MUX_FWD_REMOTE, listen, connect_to))
        .expect("send OPEN_FWD");
    assert_eq!(
        client.expect_failure(2),
        format!("remote port forwarding failed for listen path {long_str}")
    );
    client.expect_alive(3, master.pid());
    drop(client);
    assert!(!long.exists(), "a socket was created at the long path");

    // A Unix forward with a sane path still works afterwards.
    let local = env.control_dir().join("l.sock");
    add_forward(&env, &["-L", &format!("{}:{target}", local.display())]);
    let stream = UnixStream::connect(&local).expect("connect to the -L socket");
    assert_echoes(stream, b"after the long path", "-L unix afterwards");
    env.assert_master_serves();
}

/// CLOSE_FWD for a forward that was never opened, or that differs from an
/// open one in one field: FAILURE "port not forwarded" (§3.6), and the open
/// forward is untouched.
fn cancel_unknown_forward(kind: MasterKind) {
    let env = TestEnv::new();
    let master = env.start_master(kind);
    let echo = TcpServer::echo();
    let port = free_port();
    let echo_port = u32::from(echo.port());
    add_forward(&env, &["-L", &format!("{port}:127.0.0.1:{echo_port}")]);

    let mut client = RawClient::connect(env.control_path());
    client.handshake();
    let listen = FwdEnd {
        host: "",
        port: u32::from(port),
    };
    let never_opened = FwdEnd {
        host: "",
        port: u32::from(free_port()),
    };
    let target = FwdEnd {
        host: "127.0.0.1",
        port: echo_port,
    };
    let other_target = FwdEnd {
        host: "localhost",
        port: echo_port,
    };
    let bound = FwdEnd {
        host: "127.0.0.1",
        port: u32::from(port),
    };
    let cases = [
        ("never opened", MUX_FWD_LOCAL, never_opened, target),
        ("other connect host", MUX_FWD_LOCAL, listen, other_target),
        ("other bind address spelling", MUX_FWD_LOCAL, bound, target),
        ("remote instead of local", MUX_FWD_REMOTE, listen, target),
    ];
    for (rid, (what, fwd_kind, listen, connect_to)) in (1..).zip(cases) {
        client
            .send(&mux::forward(false, rid, fwd_kind, listen, connect_to))
            .expect("send CLOSE_FWD");
        assert_eq!(client.expect_failure(rid), "port not forwarded", "{what}");
    }
    client.expect_alive(100, master.pid());
    drop(client);

    let data = net::random_bytes(64 * 1024);
    assert_echoes(connect(port), &data, "the forward after failed cancels");
    env.assert_master_serves();
}

// ---- A SOCKS client ----

/// Opens a SOCKS5 CONNECT to `host`:`port` (a name, resolved by the proxy)
/// through the SOCKS port `proxy`; returns the established stream.
fn socks5_connect(proxy: u16, host: &str, port: u16) -> TcpStream {
    let mut stream = connect(proxy);
    stream.set_timeouts(IO_TIMEOUT).expect("set timeouts");
    stream.write_all(&[5, 1, 0]).expect("SOCKS5 greeting");
    let mut choice = [0; 2];
    stream
        .read_exact(&mut choice)
        .expect("SOCKS5 method choice");
    assert_eq!(choice, [5, 0], "SOCKS5 method choice (no authentication)");

    let name_len = u8::try_from(host.len()).expect("host name too long");
    let mut request = vec![5, 1, 0, 3, name_len];
    request.extend_from_slice(host.as_bytes());
    request.extend_from_slice(&port.to_be_bytes());
    stream.write_all(&request).expect("SOCKS5 request");

    let mut head = [0; 4];
    stream.read_exact(&mut head).expect("SOCKS5 reply");
    assert_eq!(head[..2], [5, 0], "SOCKS5 reply: version, status granted");
    let address_len = match head[3] {
        1 => 4,
        4 => 16,
        3 => {
            let mut len = [0];
            stream
                .read_exact(&mut len)
                .expect("SOCKS5 reply name length");
            usize::from(len[0])
        }
        other => panic!("SOCKS5 reply: unknown address type {other}"),
    };
    let mut bound = vec![0; address_len + 2];
    stream.read_exact(&mut bound).expect("SOCKS5 reply address");
    stream
}

enum Socks4Target<'a> {
    Address([u8; 4]),
    /// SOCKS4a: the proxy resolves the name.
    Name(&'a str),
}

/// Opens a SOCKS4 or SOCKS4a CONNECT through the SOCKS port `proxy`.
fn socks4_connect(proxy: u16, target: Socks4Target, port: u16) -> TcpStream {
    let mut stream = connect(proxy);
    stream.set_timeouts(IO_TIMEOUT).expect("set timeouts");
    let mut request = vec![4, 1];
    request.extend_from_slice(&port.to_be_bytes());
    match target {
        Socks4Target::Address(address) => {
            request.extend_from_slice(&address);
            request.extend_from_slice(b"mg\0");
        }
        Socks4Target::Name(name) => {
            request.extend_from_slice(&[0, 0, 0, 1]);
            request.extend_from_slice(b"mg\0");
            request.extend_from_slice(name.as_bytes());
            request.push(0);
        }
    }
    stream.write_all(&request).expect("SOCKS4 request");
    let mut reply = [0; 8];
    stream.read_exact(&mut reply).expect("SOCKS4 reply");
    assert_eq!(reply[..2], [0, 90], "SOCKS4 reply: request granted");
    stream
}
