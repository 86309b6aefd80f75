//! `scripts/demo.sh`, the newcomer's first command, runs to the end on this
//! machine and shows what it promises: everything through one connection,
//! a refusal by policy with its reason, and an intact audit log. Git's
//! default branch is set to something odd, since the demo must not depend
//! on it (it once died when the default was `master`).

mod common;

use std::process::Command;

use common::{MasterKind, run};

#[test]
fn the_demo_runs_and_shows_the_security_features() {
    if !common::selected(MasterKind::Muxguard) {
        return;
    }
    let scratch = tempfile::tempdir().expect("temp dir");
    let gitconfig = scratch.path().join("gitconfig");
    std::fs::write(&gitconfig, "[init]\n\tdefaultBranch = trunk\n").expect("write gitconfig");
    let mut cmd = Command::new("bash");
    cmd.arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/demo.sh"))
        .env("MUXGUARD_BIN", env!("CARGO_BIN_EXE_muxguard"))
        .env("GIT_CONFIG_GLOBAL", &gitconfig)
        .env_remove("SSH_AUTH_SOCK")
        .env_remove("DBUS_SESSION_BUS_ADDRESS")
        .env_remove("DISPLAY")
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("XDG_STATE_HOME");
    let out = run(&mut cmd);
    out.assert_success("scripts/demo.sh");
    let text = &out.stdout;
    let after = |header: &str| {
        text.split_once(header)
            .map(|(_, rest)| rest.lines().nth(1).unwrap_or_default().trim().to_owned())
            .unwrap_or_default()
    };
    assert_eq!(
        after("(everything went through one):"),
        "1",
        "not everything went through one connection:\n{text}"
    );
    assert!(
        out.stderr
            .contains("muxguard: denied by policy: deny: rule \"nothing is deleted"),
        "the refusal is not on ssh's stderr:\n{}",
        out.stderr
    );
    assert!(text.contains("keep-me is still there"), "{text}");
    assert!(
        text.contains("first commit"),
        "the git clone did not work:\n{text}"
    );
    assert!(
        text.contains("ok: every chain is intact"),
        "audit verify did not pass:\n{text}"
    );
    assert!(text.contains("hardening: landlock"), "{text}");
}
