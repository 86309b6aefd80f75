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
        "connect", "ensure", "setup", "policy", "audit", "status", "forget", "ls", "sandbox",
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
fn man_dir_writes_a_page_per_subcommand() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = run(Command::new(MUXGUARD)
        .arg("man")
        .arg("--dir")
        .arg(dir.path()));
    out.assert_success("muxguard man --dir");
    for page in [
        "muxguard.1",
        "muxguard-connect.1",
        "muxguard-policy.1",
        "muxguard-audit.1",
    ] {
        let text = std::fs::read_to_string(dir.path().join(page))
            .unwrap_or_else(|e| panic!("{page}: {e}; written: {}", out.stdout));
        let title = page.trim_end_matches(".1");
        assert!(text.contains(&format!(".TH {title} 1")), "{page}:\n{text}");
    }
    let connect = std::fs::read_to_string(dir.path().join("muxguard-connect.1")).unwrap();
    assert!(
        connect.contains("control\\-path"),
        "connect's options are missing:\n{connect}"
    );
    assert!(!dir.path().join("muxguard-proc-helper.1").exists());
    assert!(!dir.path().join("muxguard-help.1").exists());
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
