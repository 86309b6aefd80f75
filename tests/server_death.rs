//! The server goes away in the middle of a session.

mod common;

use std::fs::File;
use std::process::Stdio;
use std::time::Duration;

use common::process::{ChildGuard, read_lossy, wait_for};
use common::{MasterKind, TestEnv, for_both_masters};

for_both_masters!(server_dies_mid_session);

/// sshd and all its connection processes are killed while a session runs:
/// the client exits non-zero, the master exits and removes its socket.
fn server_dies_mid_session(kind: MasterKind) {
    let mut env = TestEnv::new();
    let mut master = env.start_master(kind);
    let output = env.work_dir().join("session.out");
    let mut cmd = env.ssh_cmd("echo started; sleep 30");
    cmd.stdin(Stdio::piped())
        .stdout(File::create(&output).expect("create output file"));
    let mut session = ChildGuard::spawn(cmd, "ssh session");
    wait_for("the session to start", Duration::from_secs(20), || {
        read_lossy(&output).contains("started")
    });

    env.sshd_mut().kill_all();

    let status = session.wait(Duration::from_secs(60));
    assert!(
        !status.success(),
        "the session survived the server: {status}"
    );
    let status = master.wait_exit();
    assert!(
        !env.control_path().exists(),
        "the master ({status}) left its control socket behind"
    );
}
