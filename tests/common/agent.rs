//! A throwaway ssh-agent holding the test's user key: what the master needs
//! to authenticate connections beyond the first (overflow and lanes).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use super::TestEnv;
use super::process::{ChildGuard, poll_until, run};

pub struct Agent {
    pub socket: PathBuf,
    _process: ChildGuard,
}

impl Agent {
    /// Starts `ssh-agent -D` on a socket in the test's runtime directory
    /// and adds the user key to it.
    pub fn start(env: &TestEnv) -> Agent {
        let socket = env.path().join("run/agent.sock");
        let mut cmd = env.command("ssh-agent");
        cmd.arg("-D").arg("-a").arg(&socket).stdout(Stdio::null());
        let process = ChildGuard::spawn(cmd, "ssh-agent");
        assert!(
            poll_until(Duration::from_secs(10), || socket.exists()),
            "ssh-agent did not create {}",
            socket.display()
        );
        run(env
            .command("ssh-add")
            .arg(env.path().join("home/id_ed25519"))
            .env("SSH_AUTH_SOCK", &socket))
        .assert_success("ssh-add");
        Agent {
            socket,
            _process: process,
        }
    }
}
