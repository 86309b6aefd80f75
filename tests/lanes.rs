//! Lanes: with an agent, interactive sessions (a tty) and bulk sessions
//! (everything else) are kept on different upstream connections whenever
//! both are open, so typing never queues behind a transfer. Which
//! connection a session runs on is read on the server: `$SSH_CONNECTION`
//! names the client's source port, one per TCP connection.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Stdio};
use std::time::Duration;

use common::agent::Agent;
use common::process::poll_until;
use common::{HOST, Master, MasterKind, TestEnv, run};

const CONNECTION: &str = "echo \"conn $SSH_CONNECTION\"";

/// The client's source port in a line `conn IP PORT IP PORT`.
fn source_port(line: &str) -> u16 {
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert!(fields.len() == 5 && fields[0] == "conn", "{line:?}");
    fields[2].parse().expect("a port")
}

/// A session kept open until it reads a line, after saying which
/// connection it runs on.
struct Open {
    child: Child,
    stdin: Option<ChildStdin>,
    port: u16,
}

impl Open {
    fn start(env: &TestEnv, tty: bool) -> Open {
        let mut cmd = env.ssh();
        if tty {
            cmd.arg("-tt");
        }
        cmd.arg(HOST)
            .arg(format!("{CONNECTION}; exec head -n1 >/dev/null"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = cmd.spawn().expect("ssh");
        let stdin = child.stdin.take();
        // The remote shell's start-up files may print first (a warning
        // from a heavy .bashrc): skip to our line.
        let mut reader = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        while !line.starts_with("conn ") {
            line.clear();
            let read = reader.read_line(&mut line).expect("a line");
            assert!(read > 0, "the session ended before saying its connection");
        }
        let port = source_port(&line);
        Open { child, stdin, port }
    }

    fn end(mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.write_all(b"done\n");
        }
        let ended = poll_until(Duration::from_secs(10), || {
            self.child.try_wait().ok().flatten().is_some()
        });
        if !ended {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        assert!(ended, "the session did not end when sent a line");
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A bulk (no tty) session's connection.
fn bulk_port(env: &TestEnv) -> u16 {
    let out = run(&mut env.ssh_cmd(CONNECTION));
    out.assert_success("a bulk session");
    source_port(out.stdout.trim())
}

fn master_with_agent(env: &TestEnv, agent: &Agent, args: &[&str]) -> Master {
    Master::start_with_args_env(
        env,
        MasterKind::Muxguard,
        args,
        &[("SSH_AUTH_SOCK", &agent.socket)],
    )
}

#[test]
fn bulk_next_to_a_shell_runs_on_a_warm_lane_that_closes_after() {
    if !common::selected(MasterKind::Muxguard) {
        return;
    }
    let env = TestEnv::new();
    let agent = Agent::start(&env);
    let master = master_with_agent(&env, &agent, &[]);
    let alone = bulk_port(&env);

    let shell = Open::start(&env, true);
    assert_eq!(
        shell.port, alone,
        "a lone shell goes on the first connection"
    );
    // The lane is opened ahead of need while someone types.
    assert!(
        poll_until(Duration::from_secs(10), || env.status().contains("(lane")),
        "no warm lane next to the shell: {}\n{}",
        env.status(),
        master.log()
    );
    let logins = env.sshd().accepted_count();
    let lane = bulk_port(&env);
    assert_ne!(
        lane, shell.port,
        "a bulk session shared the shell's connection"
    );
    assert_eq!(bulk_port(&env), lane, "the lane is reused");
    assert_eq!(
        env.sshd().accepted_count(),
        logins,
        "a bulk session waited for a login of its own"
    );

    shell.end();
    assert!(
        poll_until(Duration::from_secs(10), || !env.status().contains("(lane")),
        "the lane stayed open after the shell ended: {}",
        env.status()
    );
    assert!(
        master.log().contains("closing lane connection"),
        "{}",
        master.log()
    );
    assert_eq!(bulk_port(&env), alone, "back on the first connection");
}

#[test]
fn a_shell_opened_during_a_transfer_gets_a_lane_of_its_own() {
    if !common::selected(MasterKind::Muxguard) {
        return;
    }
    let env = TestEnv::new();
    let agent = Agent::start(&env);
    let master = master_with_agent(&env, &agent, &[]);
    let transfer = Open::start(&env, false);
    let shell = Open::start(&env, true);
    assert_ne!(
        shell.port,
        transfer.port,
        "the shell shared the transfer's connection: {}",
        master.log()
    );
    let text = env.status();
    assert!(
        text.contains("first connection: 0 interactive, 1 bulk")
            && text.contains(
                "(lane, keeps interactive and bulk sessions apart): 1 interactive, 0 bulk"
            ),
        "{text}"
    );
    shell.end();
    transfer.end();
    assert!(
        poll_until(Duration::from_secs(10), || !env.status().contains("(lane")),
        "{}",
        env.status()
    );
}

/// Without an agent nothing can authenticate a second connection: every
/// session shares the first, and `status` says why.
#[test]
fn without_an_agent_everything_shares_one_connection() {
    if !common::selected(MasterKind::Muxguard) {
        return;
    }
    let env = TestEnv::new();
    let _master = env.start_master(MasterKind::Muxguard);
    let shell = Open::start(&env, true);
    assert_eq!(bulk_port(&env), shell.port);
    let text = env.status();
    assert!(
        text.contains("lanes: off (no ssh-agent")
            && text.contains("first connection: 1 interactive, 0 bulk"),
        "{text}"
    );
    shell.end();
    assert_eq!(env.sshd().accepted_count(), 1);
}

/// `--no-lanes`: one login, whatever the agent could do, and `status` says
/// so.
#[test]
fn no_lanes_keeps_one_connection_even_with_an_agent() {
    if !common::selected(MasterKind::Muxguard) {
        return;
    }
    let env = TestEnv::new();
    let agent = Agent::start(&env);
    let _master = master_with_agent(&env, &agent, &["--no-lanes"]);
    let shell = Open::start(&env, true);
    assert_eq!(bulk_port(&env), shell.port);
    let text = env.status();
    assert!(text.contains("lanes: off (--no-lanes)"), "{text}");
    shell.end();
    assert_eq!(env.sshd().accepted_count(), 1);
}

/// On one connection (no agent), a bulk upload next to a shell is paced
/// while the shell is open, and every byte still arrives.
#[test]
fn a_bulk_upload_next_to_a_shell_is_paced_and_complete() {
    const SIZE: usize = 256 << 20;
    if !common::selected(MasterKind::Muxguard) {
        return;
    }
    let env = TestEnv::new();
    let _master = env.start_master(MasterKind::Muxguard);
    let shell = Open::start(&env, true);
    let mut upload = env
        .ssh_cmd("wc -c")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("ssh");
    let mut stdin = upload.stdin.take().expect("stdin");
    let writer = std::thread::spawn(move || {
        let chunk = vec![0u8; 1 << 20];
        for _ in 0..SIZE / chunk.len() {
            stdin.write_all(&chunk).expect("write the upload");
        }
    });
    let paced = poll_until(Duration::from_secs(30), || {
        env.status().contains("bulk input paced at")
    });
    writer.join().expect("writer");
    let out = upload.wait_with_output().expect("upload");
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        SIZE.to_string()
    );
    assert!(paced, "status never showed the upload paced");
    shell.end();
}
