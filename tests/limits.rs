//! What a client of the master's own uid can take from everyone else: a
//! flood of connections that never say HELLO, connections past the cap,
//! and a connection that stays silent. Tried with raw connections against
//! the real master.

mod common;

use std::os::unix::net::UnixStream;
use std::time::Duration;

use common::mux::{MUX_C_ALIVE_CHECK, MUX_S_ALIVE, Msg, RawClient, hello};
use common::process::poll_until;
use common::{Master, MasterKind, TestEnv, run};

/// USER_HZ: what /proc reports CPU times in, 100 on every Linux.
const CLK_TCK: f64 = 100.0;

/// The master's user+system CPU time, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .expect("comm")
        .1
        .split_whitespace()
        .collect();
    // utime and stime are fields 14 and 15; after the comm, 12 and 13.
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 / CLK_TCK
}

/// Lets this test process open as many sockets as it needs.
fn raise_fd_limit(wanted: u64) -> u64 {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let hard = limit.maximum.unwrap_or(wanted);
    let soft = wanted.min(hard);
    let _ = setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(soft),
            maximum: limit.maximum,
        },
    );
    getrlimit(Resource::Nofile).current.unwrap_or(1024)
}

#[test]
fn a_flood_of_silent_connections_never_locks_out_a_session() {
    const FLOOD: usize = 3000;
    if !common::selected(MasterKind::Muxguard) {
        return;
    }
    let available = raise_fd_limit(FLOOD as u64 + 256) as usize;
    let flood_size = FLOOD.min(available.saturating_sub(256));
    let env = TestEnv::new();
    let master = Master::start_with_args(&env, MasterKind::Muxguard, &["--max-clients", "200"]);
    let flood: Vec<UnixStream> = (0..flood_size)
        .filter_map(|_| UnixStream::connect(env.control_path()).ok())
        .collect();
    assert!(flood.len() >= 1000, "only {} connections made", flood.len());

    // Sessions still run: silent connections give way to them.
    env.control("check")
        .assert_success("-O check during the flood");
    let out = run(&mut env.ssh_cmd("echo served"));
    out.assert_success("a session during the flood");
    assert_eq!(out.stdout.trim(), "served");

    // And the master does not spin while the flood stays open.
    let before = cpu_seconds(master.pid());
    std::thread::sleep(Duration::from_secs(2));
    let spent = cpu_seconds(master.pid()) - before;
    assert!(
        spent < 0.5,
        "the master used {spent} s of CPU in 2 s of an idle flood"
    );
    assert!(
        master
            .log()
            .contains("closing the oldest one that has not said HELLO"),
        "{}",
        master.log()
    );
    drop(flood);
}

#[test]
fn connections_past_the_cap_are_refused_with_the_reason() {
    if !common::selected(MasterKind::Muxguard) {
        return;
    }
    let env = TestEnv::new();
    let master = Master::start_with_args(&env, MasterKind::Muxguard, &["--max-clients", "2"]);
    let audit_path = env.path().join("state/muxguard/audit.jsonl");
    let refusals = || {
        std::fs::read_to_string(&audit_path)
            .unwrap_or_default()
            .matches("the most allowed (--max-clients)")
            .count()
    };
    let talking: Vec<RawClient> = (0..2)
        .map(|_| {
            // The harness's readiness probe (`-O check`) holds a place
            // until the master is done identifying it, a while under load:
            // a connection refused meanwhile is made again.
            let mut client = RawClient::connect(env.control_path());
            let greeted = poll_until(Duration::from_secs(10), || {
                client.greeted() || {
                    client = RawClient::connect(env.control_path());
                    false
                }
            });
            assert!(greeted, "never greeted: {}", master.log());
            client.send(&hello(4)).expect("HELLO");
            // Answered only after the master has taken the HELLO, so both
            // are past it (no longer give way) before the third connects.
            client
                .send(&Msg::new(MUX_C_ALIVE_CHECK).u32(1))
                .expect("ALIVE_CHECK");
            let reply = client.read_packet();
            assert_eq!(reply[..4], MUX_S_ALIVE.to_be_bytes());
            client
        })
        .collect();
    let refused_before = refusals();
    let mut third = RawClient::connect(env.control_path());
    third.expect_closed("a third connection over --max-clients 2");
    assert!(
        poll_until(Duration::from_secs(5), || master
            .log()
            .contains("2 control connections are open, the most allowed")),
        "{}",
        master.log()
    );
    // The audit writer runs on its own thread: give it a moment.
    let audited = || {
        let audit = std::fs::read_to_string(&audit_path).unwrap_or_default();
        audit.contains("\"client_refused\"") && refusals() > refused_before
    };
    assert!(
        poll_until(Duration::from_secs(5), audited),
        "{}",
        std::fs::read_to_string(&audit_path).unwrap_or_default()
    );
    drop(talking);
    // Room again, once the master has seen the two go.
    assert!(
        poll_until(Duration::from_secs(5), || env
            .control("check")
            .status
            .success()),
        "-O check failed after the two were gone: {}",
        master.log()
    );
}

#[test]
fn a_connection_that_never_says_hello_is_closed() {
    if !common::selected(MasterKind::Muxguard) {
        return;
    }
    let env = TestEnv::new();
    let master = env.start_master(MasterKind::Muxguard);
    let mut silent = RawClient::connect(env.control_path());
    silent.expect_hello();
    // The harness's read timeout is shorter than the HELLO timeout: wait
    // for the master's log line, then see the connection closed.
    assert!(
        poll_until(Duration::from_secs(20), || master
            .log()
            .contains("no HELLO within 10 s")),
        "{}",
        master.log()
    );
    silent.expect_closed("a connection silent for the HELLO timeout");
}

/// The master's open descriptors, and its helper threads (the threads that
/// do blocking I/O on passed descriptors).
fn fds_and_helpers(pid: u32) -> (usize, usize) {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0);
    let helpers = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|tasks| {
            tasks
                .flatten()
                .filter(|t| {
                    std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| {
                        c.starts_with("muxguard-read") || c.starts_with("muxguard-wri")
                    })
                })
                .count()
        })
        .unwrap_or(0);
    (fds, helpers)
}

/// An eventfd as stdin (epoll can watch it, but it is no pipe or socket):
/// the session runs, and when the client is killed nothing of it stays —
/// no thread blocked for good in a read, no descriptor.
#[test]
fn an_eventfd_stdin_leaves_nothing_behind() {
    const CLIENT: &str = r#"
import os, subprocess, sys
efd = os.eventfd(0)
ssh = subprocess.Popen(sys.argv[1:], stdin=efd, stdout=subprocess.PIPE)
line = ssh.stdout.readline()
print(line.decode().strip(), flush=True)
ssh.kill()
ssh.wait()
"#;
    if !common::selected(MasterKind::Muxguard) {
        return;
    }
    let env = TestEnv::new();
    let master = env.start_master(MasterKind::Muxguard);
    run(&mut env.ssh_cmd("true")).assert_success("a first session");
    let (idle_fds, idle_helpers) = fds_and_helpers(master.pid());
    let out = run(env
        .command("/usr/bin/python3")
        .args(["-c", CLIENT, "ssh", "-F"])
        .arg(env.config_path())
        .args([common::HOST, "echo started; sleep 30"]));
    out.assert_success("the eventfd client");
    assert_eq!(out.stdout.trim(), "started");
    assert!(
        poll_until(Duration::from_secs(10), || {
            let (fds, helpers) = fds_and_helpers(master.pid());
            fds <= idle_fds && helpers <= idle_helpers
        }),
        "after the client went: {:?}, idle: {:?}",
        fds_and_helpers(master.pid()),
        (idle_fds, idle_helpers)
    );
}

/// A client that passes thousands of descriptors nobody asked for is cut
/// off, and the master holds none of them afterwards.
#[test]
fn thousands_of_passed_descriptors_are_refused_and_released() {
    const CLIENT: &str = r#"
import os, socket, struct, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
n = struct.unpack(">I", s.recv(4))[0]
s.recv(n)
s.sendall(struct.pack(">III", 8, 1, 4))
null = os.open("/dev/null", os.O_RDONLY)
fds = [os.dup(null) for _ in range(200)]
sent = 0
try:
    for _ in range(10):
        socket.send_fds(s, [b"\0"], fds)
        sent += len(fds)
    s.settimeout(10)
    closed = s.recv(1) == b""
except (BrokenPipeError, ConnectionResetError):
    closed = True
print("closed" if closed else "open", sent)
"#;
    if !common::selected(MasterKind::Muxguard) {
        return;
    }
    let env = TestEnv::new();
    let master = env.start_master(MasterKind::Muxguard);
    env.control("check").assert_success("-O check");
    let (idle_fds, _) = fds_and_helpers(master.pid());
    let out = run(env
        .command("/usr/bin/python3")
        .args(["-c", CLIENT])
        .arg(env.control_path()));
    out.assert_success("the descriptor-flooding client");
    assert!(out.stdout.starts_with("closed"), "{}", out.stdout);
    assert!(
        poll_until(Duration::from_secs(10), || fds_and_helpers(master.pid()).0
            <= idle_fds),
        "the master holds {} descriptors, {idle_fds} before",
        fds_and_helpers(master.pid()).0
    );
    assert!(
        master
            .log()
            .contains("file descriptors it was not asked for"),
        "{}",
        master.log()
    );
    env.control("check").assert_success("-O check afterwards");
}

/// A small tmpfs mounted over a directory of the test, unmounted on drop.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    /// `None` where mounting is not allowed (no CAP_SYS_ADMIN).
    fn mount(path: &std::path::Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(path).expect("mkdir");
        let ok = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(path)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(path.to_path_buf()))
    }

    /// Fills what is left with a file; returns its path.
    fn fill(&self) -> std::path::PathBuf {
        let junk = self.0.join("junk");
        let mut file = std::fs::File::create(&junk).expect("junk");
        let block = vec![0u8; 4096];
        while std::io::Write::write_all(&mut file, &block).is_ok() {}
        while std::io::Write::write_all(&mut file, b"x").is_ok() {}
        junk
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// The state directory (audit log, spill files) on a full disk: sessions
/// are refused with the reason while the decision cannot be recorded, a
/// stalled client's output is kept (in memory) rather than lost, and once
/// there is space again everything works.
#[test]
fn a_full_disk_refuses_or_keeps_and_the_master_recovers() {
    const SIZE: usize = 40 << 20;
    if !common::selected(MasterKind::Muxguard) {
        return;
    }
    let env = TestEnv::new();
    let Some(disk) = Tmpfs::mount(&env.path().join("state/muxguard"), "1m") else {
        eprintln!("skipped: cannot mount a tmpfs here");
        return;
    };
    let master = env.start_master(MasterKind::Muxguard);
    let junk = disk.fill();

    // The log's last page may still hold a few records; a handful of
    // sessions use it up (each writes three or more records).
    let refused = (0..20)
        .map(|_| run(&mut env.ssh_cmd("echo ran")))
        .find(|out| !out.status.success())
        .expect("a session was refused once the disk was full");
    assert!(!refused.stdout.contains("ran"), "{refused:#?}");
    assert!(
        refused.stderr.contains("No space left on device"),
        "{}",
        refused.stderr
    );
    env.control("check")
        .assert_success("-O check on a full disk");
    std::fs::remove_file(&junk).expect("free the space");

    // A stalled download: its output cannot go to the (again full) disk.
    let mut download = env
        .ssh_cmd(&format!("head -c {SIZE} /dev/zero"))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("ssh");
    // Started (its decision on disk) before the disk fills again.
    let mut received = vec![0u8; 1];
    let stdout = download.stdout.as_mut().expect("stdout");
    std::io::Read::read_exact(stdout, &mut received).expect("the first byte");
    let junk = disk.fill();
    assert!(
        poll_until(Duration::from_secs(30), || master
            .log()
            .contains("cannot spill to disk")),
        "{}",
        master.log()
    );
    std::io::Read::read_to_end(download.stdout.as_mut().expect("stdout"), &mut received)
        .expect("read the download");
    assert!(download.wait().expect("wait").success());
    assert_eq!(received.len(), SIZE, "bytes were lost");
    std::fs::remove_file(&junk).expect("free the space");

    let out = run(&mut env.ssh_cmd("echo ran"));
    out.assert_success("a session once there is space again");
    assert_eq!(out.stdout.trim(), "ran");
}
