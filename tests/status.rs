//! `muxguard status` and `muxguard forget` against a running master: they
//! talk to it through its control socket with the mux `info` extension.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::process::{ChildGuard, wait_for};
use common::{HOST, MasterKind, TestEnv, run};

#[test]
fn status_lists_the_connection_and_live_sessions() {
    if !common::selected(MasterKind::Muxguard) {
        return;
    }
    let env = TestEnv::new();
    let master = env.start_master(MasterKind::Muxguard);
    let marker = env.work_dir().join("started");
    let mut cmd = env.ssh_cmd(&format!("touch {}; sleep 30", marker.display()));
    cmd.stdin(Stdio::piped());
    let _session = ChildGuard::spawn(cmd, "long session");
    wait_for("the session to start", Duration::from_secs(20), || {
        marker.exists()
    });

    let status = run(env
        .command(env!("CARGO_BIN_EXE_muxguard"))
        .arg("status")
        .arg("-F")
        .arg(env.config_path())
        .arg(HOST));
    status.assert_success("muxguard status");
    assert!(
        status
            .stdout
            .contains(&format!("muxguard master pid {}", master.pid())),
        "{status:#?}"
    );
    assert!(status.stdout.contains("host key SHA256:"), "{status:#?}");
    assert!(
        status.stdout.contains("sleep 30"),
        "the live session is not listed: {status:#?}"
    );
    assert!(
        status.stdout.contains("No remembered answers."),
        "{status:#?}"
    );

    let ls = run(env.command(env!("CARGO_BIN_EXE_muxguard")).arg("ls"));
    ls.assert_success("muxguard ls");
    assert!(
        ls.stdout
            .contains(&format!("{HOST} (pid {},", master.pid())),
        "ls does not list the master: {ls:#?}"
    );
    assert!(ls.stdout.contains("sleep 30"), "{ls:#?}");

    let forget = run(env
        .command(env!("CARGO_BIN_EXE_muxguard"))
        .args(["forget", "--control-path"])
        .arg(env.control_path())
        .arg(HOST));
    forget.assert_success("muxguard forget");
    assert!(
        forget.stdout.contains("forgot 0 remembered answer(s)"),
        "{forget:#?}"
    );
}

#[test]
fn status_without_a_master_says_so() {
    let env = TestEnv::new();
    let out = run(env
        .command(env!("CARGO_BIN_EXE_muxguard"))
        .args(["status", "--control-path"])
        .arg(env.control_path())
        .arg(HOST));
    assert!(!out.status.success(), "{out:#?}");
    assert!(out.stderr.contains("no master answers"), "{out:#?}");
}

#[test]
fn status_of_an_openssh_master_is_refused_clearly() {
    if !common::selected(MasterKind::OpenSsh) {
        return;
    }
    let env = TestEnv::new();
    let _master = env.start_master(MasterKind::OpenSsh);
    let out = run(env
        .command(env!("CARGO_BIN_EXE_muxguard"))
        .args(["status", "--control-path"])
        .arg(env.control_path())
        .arg(HOST));
    assert!(!out.status.success(), "{out:#?}");
    assert!(out.stderr.contains("muxguard:"), "{out:#?}");
}

/// What clients supplied (here a Unix-socket forward whose path carries a
/// terminal escape) reaches other people's terminals through `status` and
/// `~#` escaped visibly, never as a live control sequence.
#[test]
fn client_supplied_text_is_escaped_in_status() {
    if !common::selected(MasterKind::Muxguard) {
        return;
    }
    let env = TestEnv::new();
    let _master = env.start_master(MasterKind::Muxguard);
    let socket = env.path().join("ctl/evil\x1b]0;owned\x07.sock");
    let spec = format!("{}:127.0.0.1:9", socket.display());
    run(env.ssh().args(["-O", "forward", "-L", &spec, HOST])).assert_success("-O forward");
    let status = run(env
        .command(env!("CARGO_BIN_EXE_muxguard"))
        .args(["status", "--control-path"])
        .arg(env.control_path())
        .arg(HOST));
    status.assert_success("muxguard status");
    assert!(
        status.stdout.contains("evil\\u{1b}]0;owned\\u{7}.sock"),
        "{}",
        status.stdout
    );
    assert!(!status.stdout.contains('\x1b') && !status.stdout.contains('\x07'));
}

/// A session whose reader has stopped: what the master holds for it shows
/// in `muxguard status` and in `~#` of another, interactive session, so
/// the user can see where memory and disk went.
#[test]
fn a_stalled_sessions_unread_output_shows_in_status_and_tilde_hash() {
    if !common::selected(MasterKind::Muxguard) {
        return;
    }
    let env = TestEnv::new();
    let _master = env.start_master(MasterKind::Muxguard);
    // Its stdout is a pipe nobody reads: after the pipe's 64 KiB the output
    // waits in the master.
    let mut cmd = env.ssh_cmd("head -c 32M /dev/zero; sleep 60");
    cmd.stdout(Stdio::piped());
    let _stalled = ChildGuard::spawn(cmd, "stalled session");
    // Session 1 is the stalled one. A terminal may wrap the long line
    // anywhere, a space at the wrap included (tmux then drops it), so all
    // whitespace is ignored.
    let waiting = |text: &str| {
        const NEEDLE: &str = "session1stdoutwaitingfortheclient:";
        let text: String = text.chars().filter(|c| !c.is_whitespace()).collect();
        text.find(NEEDLE).is_some_and(|at| {
            let rest = &text[at + NEEDLE.len()..];
            rest.contains("KiBinmemory,") && !rest.starts_with("0KiBinmemory,0KiBondisk")
        })
    };
    let mut last = String::new();
    let shown = common::process::poll_until(Duration::from_secs(20), || {
        last = env.status();
        waiting(&last)
    });
    assert!(shown, "status does not show the stalled output:\n{last}");

    // `~#` in an interactive session lists the same (wide enough for the
    // line not to wrap).
    let config = env.config_path();
    let tmux = common::tmux::Tmux::start(
        &env,
        250,
        24,
        &[
            "ssh",
            "-F",
            config.to_str().expect("UTF-8 path"),
            "-t",
            HOST,
            "env PS1='stalled> ' bash --norc --noprofile -i",
        ],
    );
    tmux.wait_for_line("the remote prompt", || {}, |l| l.starts_with("stalled>"));
    tmux.enter();
    tmux.type_text("~#");
    let mut screen = String::new();
    let listed = common::process::poll_until(Duration::from_secs(20), || {
        screen = tmux.screen();
        waiting(&screen)
    });
    assert!(listed, "`~#` does not list the stalled output:\n{screen}");
}

/// The session channel muxguard opens ahead: `status` shows it, sshd starts
/// nothing for it, a session takes it (one round trip instead of two on a
/// real link) and another is opened ahead for the next.
#[test]
fn a_warm_session_channel_waits_and_runs_nothing_until_a_session_takes_it() {
    if !common::selected(MasterKind::Muxguard) {
        return;
    }
    let env = TestEnv::new();
    let _master = env.start_master(MasterKind::Muxguard);
    let warm = |text: &str| text.contains("a session channel opened ahead (warm");
    let mut last = String::new();
    let shown = common::process::poll_until(Duration::from_secs(20), || {
        last = env.status();
        warm(&last)
    });
    assert!(shown, "status shows no warm channel:\n{last}");
    let started = |log: &str| log.matches("Starting session:").count();
    assert_eq!(
        started(&env.sshd().log()),
        0,
        "sshd started something for the warm channel:\n{}",
        env.sshd().log()
    );

    let out = run(&mut env.ssh_cmd("echo taken"));
    out.assert_success("a session on the warm channel");
    assert_eq!(out.stdout, "taken\n");
    assert_eq!(started(&env.sshd().log()), 1, "{}", env.sshd().log());
    let refilled = common::process::poll_until(Duration::from_secs(20), || {
        last = env.status();
        warm(&last)
    });
    assert!(
        refilled,
        "no warm channel after the session took one:\n{last}"
    );
    // Still nothing started for the new one.
    assert_eq!(started(&env.sshd().log()), 1, "{}", env.sshd().log());
}
