//! `ssh -O check | stop | exit` against the master.

mod common;

use std::fs::File;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use common::process::{ChildGuard, read_lossy, wait_for};
use common::{MasterKind, TestEnv, for_both_masters, run};

for_both_masters!(
    check_reports_pid,
    stop_keeps_running_sessions,
    stop_with_no_session_is_answered,
    exit_ends_master
);

fn check_reports_pid(kind: MasterKind) {
    let env = TestEnv::new();
    let master = env.start_master(kind);
    let out = env.control("check");
    out.assert_success("-O check");
    assert!(
        out.stderr
            .contains(&format!("Master running (pid={})", master.pid())),
        "expected the master's pid {}: {out:#?}",
        master.pid()
    );
    env.assert_connections(1);
}

/// Starts `ssh testhost '<command>'` with stdout in a file and stdin from a
/// pipe the guard holds open, and waits until the remote command has
/// printed `started`.
fn start_session(env: &TestEnv, name: &str, command: &str) -> (ChildGuard, PathBuf) {
    let out = env.work_dir().join(format!("{name}.out"));
    let mut cmd = env.ssh_cmd(&format!("echo started; {command}"));
    cmd.stdin(Stdio::piped())
        .stdout(File::create(&out).expect("create output file"));
    let child = ChildGuard::spawn(cmd, name);
    wait_for(&format!("{name} to start"), Duration::from_secs(20), || {
        read_lossy(&out).contains("started")
    });
    (child, out)
}

/// After `-O stop` the master no longer takes new sessions (the socket is
/// gone, so a new client connects directly: a second authentication), while
/// a session that was already running finishes normally.
fn stop_keeps_running_sessions(kind: MasterKind) {
    let env = TestEnv::new();
    let _master = env.start_master(kind);
    let (mut running, output) = start_session(&env, "running", "sleep 2; echo done");

    let out = env.control("stop");
    out.assert_success("-O stop");
    assert!(
        !env.control_path().exists(),
        "the control socket is still there after -O stop"
    );

    run(&mut env.ssh_cmd("true")).assert_success("a new session after -O stop");
    env.assert_connections(2);

    let status = running.wait(Duration::from_secs(60));
    assert!(status.success(), "the running session ended with {status}");
    assert_eq!(read_lossy(&output), "started\ndone\n");
}

/// `-O stop` with no session running is answered (even by a master that
/// then has nothing left to do), and only once the socket is gone.
fn stop_with_no_session_is_answered(kind: MasterKind) {
    let env = TestEnv::new();
    let _master = env.start_master(kind);
    for _ in 0..3 {
        run(&mut env.ssh_cmd("true")).assert_success("a session before -O stop");
    }
    let out = env.control("stop");
    out.assert_success("-O stop");
    assert!(
        out.stderr.contains("Stop listening request sent."),
        "{out:#?}"
    );
    assert!(
        !env.control_path().exists(),
        "the control socket is still there after -O stop"
    );
}

/// `-O exit` ends the master and removes its socket; a session still
/// running loses its master and exits 255 (mux-protocol.md §3.4). (The
/// remote `cat` ends when the connection closes its stdin.)
fn exit_ends_master(kind: MasterKind) {
    let env = TestEnv::new();
    let mut master = env.start_master(kind);
    let (mut running, _) = start_session(&env, "running", "cat >/dev/null");

    let out = env.control("exit");
    out.assert_success("-O exit");
    assert!(out.stderr.contains("Exit request sent."), "{out:#?}");
    master.wait_exit();
    assert!(
        !env.control_path().exists(),
        "the control socket is still there after the master exited"
    );
    let status = running.wait(Duration::from_secs(60));
    assert_eq!(status.code(), Some(255), "the running session: {status}");
    env.assert_connections(1);
}
