//! `muxguard ensure` from `Match exec` in ssh_config: the stock ssh starts
//! a master on demand and then uses it, with a single authentication, and
//! the nested `ensure` that `ssh -G` evaluates does not recurse.

mod common;

use std::path::PathBuf;

use common::{HOST, TestEnv, run};

fn muxguard() -> &'static str {
    env!("CARGO_BIN_EXE_muxguard")
}

/// The harness's ssh_config with its ControlPath replaced by the
/// recommended `Match exec` block at the end.
fn ensure_config(env: &TestEnv) -> PathBuf {
    let base = std::fs::read_to_string(env.config_path()).expect("read ssh_config");
    let mut text: String = base
        .lines()
        .filter(|l| !l.trim_start().starts_with("ControlPath"))
        .map(|l| format!("{l}\n"))
        .collect();
    let path = env.path().join("ssh_config_ensure");
    text.push_str(&format!(
        "Match exec \"{} ensure -F {} -p %p -l %r %n\"\n    ControlPath {}/e-%C\n    ControlMaster no\n",
        muxguard(),
        path.display(),
        env.control_dir().display()
    ));
    std::fs::write(&path, text).expect("write config");
    path
}

#[test]
fn match_exec_starts_and_reuses_a_master() {
    if !common::selected(common::MasterKind::Muxguard) {
        return;
    }
    let env = TestEnv::new();
    let config = ensure_config(&env);
    let _cleanup = common::master::ExitOnDrop {
        env: &env,
        config: config.clone(),
    };

    for round in 0..3 {
        let out = run(env
            .command("ssh")
            .arg("-F")
            .arg(&config)
            .args([HOST, &format!("echo round-{round}")]));
        out.assert_success("ssh through ensure");
        assert_eq!(out.stdout.trim(), format!("round-{round}"));
    }
    // One authentication: the master's. The clients never connected on
    // their own, so they all went through it.
    env.assert_connections(1);

    let check = run(env
        .command("ssh")
        .arg("-F")
        .arg(&config)
        .args(["-O", "check", HOST]));
    check.assert_success("-O check");
    assert!(check.stderr.contains("Master running"), "{check:#?}");
    let socket = std::fs::read_dir(env.control_dir())
        .expect("control dir")
        .flatten()
        .any(|e| e.file_name().to_string_lossy().starts_with("e-"));
    assert!(
        socket,
        "the Match block's ControlPath is not where the master listens"
    );

    // With a master alive, ensure answers success by itself.
    let again = run(env
        .command(muxguard())
        .args(["ensure", "-F"])
        .arg(&config)
        .args(["-p", &env.sshd().port().to_string(), "-l", env.user(), HOST]));
    again.assert_success("ensure with a live master");
}

#[test]
fn nested_ensure_does_nothing() {
    if !common::selected(common::MasterKind::Muxguard) {
        return;
    }
    let env = TestEnv::new();
    let config = ensure_config(&env);
    let out = run(env
        .command(muxguard())
        .env("MUXGUARD_NESTED", "1")
        .args(["ensure", "-F"])
        .arg(&config)
        .arg(HOST));
    out.assert_success("nested ensure");
    env.assert_connections(0);
    let entries = std::fs::read_dir(env.control_dir())
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(entries, 0, "a nested ensure must not start a master");
}

#[test]
fn ensure_fails_when_no_master_can_start() {
    if !common::selected(common::MasterKind::Muxguard) {
        return;
    }
    let env = TestEnv::new();
    let config = ensure_config(&env);
    let out = run(env
        .command(muxguard())
        .args(["ensure", "-F"])
        .arg(&config)
        .args(["-p", "1", HOST]));
    assert!(
        !out.status.success(),
        "ensure must fail for a dead server: {out:#?}"
    );
    assert!(out.stderr.contains("muxguard:"), "{out:#?}");
}
