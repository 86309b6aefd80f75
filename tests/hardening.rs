//! The hardening applied to the real master process once start-up is
//! done, read from the kernel's view of it (/proc), and reported in its
//! status. (The Landlock sandbox and the unprivileged-user ptrace test are
//! still to come.)

mod common;

use common::{HOST, MasterKind, TestEnv, run};

fn proc_field(pid: u32, file: &str, prefix: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/{file}"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_default()
        .to_string()
}

#[test]
fn master_runs_without_new_privileges_or_core_files() {
    if !common::selected(MasterKind::Muxguard) {
        return;
    }
    let env = TestEnv::new();
    let master = env.start_master(MasterKind::Muxguard);
    let pid = master.pid();

    let no_new_privs = proc_field(pid, "status", "NoNewPrivs:");
    assert_eq!(
        no_new_privs.split_whitespace().nth(1),
        Some("1"),
        "{no_new_privs:?}"
    );
    let core = proc_field(pid, "limits", "Max core file size");
    let fields: Vec<&str> = core.split_whitespace().collect();
    assert_eq!(fields.get(4..6), Some(&["0", "0"][..]), "{core:?}");

    let status = run(env
        .command(env!("CARGO_BIN_EXE_muxguard"))
        .args(["status", "--control-path"])
        .arg(env.control_path())
        .arg(HOST));
    status.assert_success("muxguard status");
    assert!(
        status
            .stdout
            .contains("hardening: ptrace: blocked; no_new_privs: on; core dumps: off"),
        "{status:#?}"
    );
    // A session still works in the hardened master.
    let out = run(&mut env.ssh_cmd("echo still-works"));
    out.assert_success("session after hardening");
    assert_eq!(out.stdout.trim(), "still-works");
}
