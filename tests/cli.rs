//! What the binary says about itself: `--version` names the commit it was
//! built from, `muxguard man` is a manual page of every subcommand, and
//! `muxguard completions` gives shell code the shell accepts.

mod common;

use std::process::Command;

use common::run;

const MUXGUARD: &str = env!("CARGO_BIN_EXE_muxguard");

#[test]
fn version_names_the_commit() {
    let out = run(Command::new(MUXGUARD).arg("--version"));
    out.assert_success("muxguard --version");
    let head = run(Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR")));
    if !head.status.success() {
        eprintln!("skipped the commit check: not a git checkout");
        return;
    }
    let commit = head.stdout.trim();
    assert!(
        out.stdout
            .starts_with(&format!("muxguard {} ({commit}", env!("CARGO_PKG_VERSION"))),
        "{:?} does not name commit {commit}",
        out.stdout
    );
}

#[test]
fn man_page_covers_every_subcommand() {
    let out = run(Command::new(MUXGUARD).arg("man"));
    out.assert_success("muxguard man");
    assert!(out.stdout.contains(".TH muxguard 1"), "{}", out.stdout);
    for subcommand in [
        "connect", "ensure", "policy", "audit", "status", "forget", "ls", "sandbox",
    ] {
        assert!(
            out.stdout.contains(&format!("muxguard\\-{subcommand}"))
                || out.stdout.contains(&format!("\\fB{subcommand}\\fR")),
            "the man page does not list {subcommand}:\n{}",
            out.stdout
        );
    }
    assert!(
        !out.stdout.contains("proc-helper") && !out.stdout.contains("askpass-broker"),
        "internal subcommands are listed"
    );
}

#[test]
fn completions_are_valid_shell_code() {
    let out = run(Command::new(MUXGUARD).args(["completions", "bash"]));
    out.assert_success("muxguard completions bash");
    assert!(out.stdout.contains("connect"), "{}", out.stdout);
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("muxguard.bash");
    std::fs::write(&file, &out.stdout).expect("write");
    let checked = run(Command::new("bash").arg("-n").arg(&file));
    checked.assert_success("bash -n on the completions");
    let refused = run(Command::new(MUXGUARD).args(["completions", "tcsh"]));
    assert!(!refused.status.success(), "an unknown shell was accepted");
}
