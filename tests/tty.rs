//! An interactive terminal session through the master, driven by tmux:
//! prompt, terminal size, resize, and the `~.` escape.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::process::{holders_of, poll_until, read_lossy, wait_for};
use common::tmux::Tmux;
use common::{HOST, MasterKind, TestEnv, for_both_masters};

for_both_masters!(interactive_session);

const PROMPT: &str = "mgprompt> ";

fn interactive_session(kind: MasterKind) {
    let env = TestEnv::new();
    let master = env.start_master(kind);
    let config = env.config_path();
    let status_file = env.path().join("ssh.status");
    let remote = format!("env PS1='{PROMPT}' bash --norc --noprofile -i");
    // ssh's exit status goes to a file: tmux 3.3 does not always mark a pane
    // dead when its process exits with output still pending.
    let tmux = Tmux::start(
        &env,
        80,
        24,
        &[
            "sh",
            "-c",
            "status=$1; shift; ssh \"$@\"; echo $? > \"$status\"",
            "sh",
            path_str(&status_file),
            "-F",
            path_str(&config),
            // The config says ERROR; INFO makes the client announce the end.
            "-o",
            "LogLevel=INFO",
            "-t",
            HOST,
            &remote,
        ],
    );
    tmux.wait_for_line(
        "the remote prompt",
        || {},
        |l| l.starts_with(PROMPT.trim_end()),
    );

    tmux.type_text("stty size");
    tmux.enter();
    tmux.wait_for_line("`stty size` to print 24 80", || {}, |l| l == "24 80");

    // The new size travels asynchronously (SIGWINCH to the client, which
    // signals the master, which sends window-change); ask until it shows.
    tmux.resize(100, 30);
    tmux.wait_for_line(
        "`stty size` to print 30 100",
        || {
            tmux.type_text("stty size");
            tmux.enter();
        },
        |l| l == "30 100",
    );

    // `~.` is recognised only right after a newline.
    let terminal = PathBuf::from(tmux.format("#{pane_tty}"));
    tmux.enter();
    tmux.type_text("~.");
    let ended = poll_until(Duration::from_secs(20), || status_file.exists());
    assert!(
        ended,
        "ssh did not exit after ~. (processes holding {}: {:?}, master pid {}); screen:\n{}",
        terminal.display(),
        holders_of(&terminal),
        master.pid(),
        tmux.screen()
    );
    wait_for(
        "ssh to write its exit status",
        Duration::from_secs(5),
        || read_lossy(&status_file).ends_with('\n'),
    );
    assert_eq!(
        read_lossy(&status_file),
        "255\n",
        "ssh's exit status after ~."
    );
    tmux.wait_for_line(
        "the client's closing message",
        || {},
        |l| l.ends_with("Shared connection to 127.0.0.1 closed."),
    );

    // `~.` ended that session only: the master still serves new ones.
    let check = env.control("check");
    check.assert_success("-O check after ~.");
    assert!(check.stderr.contains(&format!("pid={}", master.pid())));
    env.assert_connections(1);
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("temp paths are UTF-8")
}
