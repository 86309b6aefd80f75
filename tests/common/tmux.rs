//! A private tmux server holding one pane, to drive interactive (tty)
//! sessions: type into it, read the screen, resize it.

use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use super::env::TestEnv;
use super::process::{Output, poll_until, run};

const SESSION: &str = "mg";

pub struct Tmux<'a> {
    env: &'a TestEnv,
    socket: PathBuf,
}

impl<'a> Tmux<'a> {
    /// Starts a tmux server on a socket in the test's temp dir with one
    /// detached `width`x`height` window running `argv` (without a shell).
    /// The pane stays after its process exits, so the screen can be read.
    pub fn start(env: &'a TestEnv, width: u16, height: u16, argv: &[&str]) -> Tmux<'a> {
        let conf = env.path().join("tmux.conf");
        fs::write(
            &conf,
            "set -g remain-on-exit on\nset -g status off\nset -g default-terminal screen\n",
        )
        .expect("write tmux.conf");
        let tmux = Tmux {
            env,
            socket: env.path().join("tmux.sock"),
        };
        let mut cmd = tmux.cmd();
        cmd.arg("-f")
            .arg(&conf)
            .args(["new-session", "-d", "-s", SESSION])
            .args(["-x", &width.to_string(), "-y", &height.to_string()])
            .args(argv);
        run(&mut cmd).assert_success("tmux new-session");
        tmux
    }

    fn cmd(&self) -> Command {
        let mut cmd = self.env.command("tmux");
        cmd.env("TERM", "screen").arg("-S").arg(&self.socket);
        cmd
    }

    fn tmux(&self, args: &[&str]) -> Output {
        let out = run(self.cmd().args(args));
        out.assert_success(&format!("tmux {args:?}"));
        out
    }

    /// The visible screen.
    pub fn screen(&self) -> String {
        self.tmux(&["capture-pane", "-p", "-t", SESSION]).stdout
    }

    /// Waits (up to 20 s) until some screen line, without trailing blanks,
    /// satisfies `pred`. `poke` runs before each look, e.g. to type a
    /// command again.
    pub fn wait_for_line(&self, what: &str, mut poke: impl FnMut(), pred: impl Fn(&str) -> bool) {
        let mut screen = String::new();
        let found = poll_until(Duration::from_secs(20), || {
            poke();
            screen = self.screen();
            screen.lines().any(|l| pred(l.trim_end()))
        });
        assert!(found, "timed out waiting for {what}; screen:\n{screen}");
    }

    /// Types `text` literally (no key names, and text starting with `-` is
    /// not taken for an option).
    pub fn type_text(&self, text: &str) {
        self.tmux(&["send-keys", "-t", SESSION, "-l", "--", text]);
    }

    /// Presses Enter.
    pub fn enter(&self) {
        self.tmux(&["send-keys", "-t", SESSION, "Enter"]);
    }

    pub fn resize(&self, width: u16, height: u16) {
        let (w, h) = (width.to_string(), height.to_string());
        self.tmux(&["resize-window", "-t", SESSION, "-x", &w, "-y", &h]);
    }

    /// A `display-message` format evaluated for the pane, e.g. `#{pane_pid}`.
    pub fn format(&self, format: &str) -> String {
        let out = self.tmux(&["display-message", "-p", "-t", SESSION, format]);
        out.stdout.trim().to_owned()
    }
}

impl Drop for Tmux<'_> {
    fn drop(&mut self) {
        // Ends the server and hangs up on the pane's process.
        let _ = run(self.cmd().arg("kill-server"));
        let _ = fs::remove_file(&self.socket);
    }
}
