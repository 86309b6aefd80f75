//! The audit log written by a real master: the records an allowed session,
//! a denied one and a control request leave, and `muxguard audit verify`
//! on the intact and on an edited log.

mod common;

use common::{Master, MasterKind, TestEnv, run};

fn records(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .expect("read audit log")
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect()
}

fn events(records: &[serde_json::Value]) -> Vec<&str> {
    records
        .iter()
        .map(|r| r["event"].as_str().unwrap_or("?"))
        .collect()
}

#[test]
fn sessions_decisions_and_the_chain() {
    if !common::selected(MasterKind::Muxguard) {
        return;
    }
    let env = TestEnv::new();
    let log = env.path().join("audit/audit.jsonl");
    let policy = env.path().join("policy.toml");
    std::fs::write(
        &policy,
        "[defaults]\naction = \"allow\"\n\n[[rule]]\nname = \"no touch\"\ncommands = [\"touch *\"]\naction = \"deny\"\n",
    )
    .unwrap();
    let mut master = Master::start_with_args(
        &env,
        MasterKind::Muxguard,
        &[
            "--audit-log".as_ref(),
            log.as_os_str(),
            "--policy".as_ref(),
            policy.as_os_str(),
            "--system-policy".as_ref(),
            env.path().join("no-system.toml").as_os_str(),
        ],
    );
    let out = run(env.ssh_cmd("echo hello; exit 3").env("LANG", "C"));
    assert_eq!(out.status.code(), Some(3), "{out:#?}");
    let out = run(&mut env.ssh_cmd("touch /tmp/never"));
    assert_eq!(out.status.code(), Some(255), "{out:#?}");
    env.control("exit").assert_success("-O exit");
    master.wait_exit();

    // The harness's readiness probe (`-O check`) connects too but makes no
    // request that needs a decision; leave those connections out.
    let raw = records(&log);
    let with_requests: Vec<&serde_json::Value> = raw
        .iter()
        .filter(|r| r["event"] == "request")
        .map(|r| &r["client"])
        .collect();
    let all: Vec<serde_json::Value> = raw
        .iter()
        .filter(|r| r["event"] != "client_connect" || with_requests.contains(&&r["client"]))
        .cloned()
        .collect();
    assert_eq!(
        events(&all),
        [
            "master_start",
            "client_connect",
            "request",
            "decision",
            "session_open",
            "session_close",
            "client_connect",
            "request",
            "decision",
            "client_connect",
            "request",
            "decision",
            "master_stop"
        ]
    );
    assert_eq!(all[0]["host"], "127.0.0.1");
    assert!(all[0]["host_key"].as_str().unwrap().starts_with("SHA256:"));
    assert_eq!(all[1]["chain"][0]["name"], "ssh");
    assert_eq!(all[2]["kind"], "exec");
    assert_eq!(all[2]["command"], "echo hello; exit 3");
    // Only variable names are logged, never values.
    assert!(!std::fs::read_to_string(&log).unwrap().contains("LANG=C"));
    assert_eq!(all[3]["action"], "allow");
    assert_eq!(all[5]["exit_status"], 3);
    assert_eq!(all[5]["bytes_in"], 6, "\"hello\\n\" came from the server");
    assert_eq!(all[8]["action"], "deny");
    assert_eq!(all[8]["source"], "rule");
    assert_eq!(all[8]["rule"]["name"], "no touch");
    assert_eq!(all[8]["rule"]["line"], 4);
    assert_eq!(all[10]["operation"], "terminate");
    assert!(all.iter().all(|r| r["stream"] == all[0]["stream"]));

    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&log).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);

    let verify = |path: &std::path::Path| {
        run(env
            .command(env!("CARGO_BIN_EXE_muxguard"))
            .args(["audit", "verify"])
            .arg(path))
    };
    let ok = verify(&log);
    ok.assert_success("audit verify");
    assert!(ok.stdout.contains("ok"), "{ok:#?}");

    // Edit one record (the denied decision becomes an allow): the next
    // record of the stream no longer chains to it.
    let edited_line = raw
        .iter()
        .position(|r| r["event"] == "decision" && r["action"] == "deny")
        .expect("the deny decision")
        + 1;
    let text = std::fs::read_to_string(&log).unwrap();
    let edited: Vec<String> = text
        .lines()
        .enumerate()
        .map(|(i, l)| {
            if i + 1 == edited_line {
                l.replace("\"deny\"", "\"allow\"")
            } else {
                l.to_string()
            }
        })
        .collect();
    let tampered = env.path().join("tampered.jsonl");
    std::fs::write(&tampered, edited.join("\n") + "\n").unwrap();
    let bad = verify(&tampered);
    assert!(!bad.status.success(), "{bad:#?}");
    assert!(
        bad.stdout.contains(&format!("line {}:", edited_line + 1)),
        "the break is found at the record after the edit (line {}): {bad:#?}",
        edited_line + 1
    );

    // Removing a record is found too.
    let removed: Vec<&str> = text
        .lines()
        .enumerate()
        .filter(|(i, _)| *i != 4)
        .map(|(_, l)| l)
        .collect();
    std::fs::write(&tampered, removed.join("\n") + "\n").unwrap();
    assert!(!verify(&tampered).status.success());
}

#[test]
fn forwards_their_connections_and_a_killed_client() {
    if !common::selected(MasterKind::Muxguard) {
        return;
    }
    let env = TestEnv::new();
    let log = env.path().join("audit.jsonl");
    let mut master = Master::start_with_args(
        &env,
        MasterKind::Muxguard,
        &["--audit-log".as_ref(), log.as_os_str()],
    );

    // A local forward to the sshd itself, and one connection through it.
    let port = common::sshd::free_port();
    let spec = format!("{port}:127.0.0.1:{}", env.sshd().port());
    run(env.ssh().args(["-O", "forward", "-L", &spec, common::HOST])).assert_success("-O forward");
    let mut banner = [0u8; 7];
    let mut stream =
        std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to the forward");
    std::io::Read::read_exact(&mut stream, &mut banner).expect("banner through the forward");
    assert_eq!(&banner, b"SSH-2.0");
    drop(stream);

    // A client killed in the middle of its session.
    let marker = env.work_dir().join("running");
    let mut cmd = env.ssh_cmd(&format!("touch {}; sleep 30", marker.display()));
    cmd.stdin(std::process::Stdio::piped());
    let mut client = common::process::ChildGuard::spawn(cmd, "doomed client");
    common::process::wait_for(
        "the session to start",
        std::time::Duration::from_secs(20),
        || marker.exists(),
    );
    client.kill();
    common::process::wait_for(
        "the session to be closed",
        std::time::Duration::from_secs(20),
        || {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("session_close")
        },
    );

    env.control("exit").assert_success("-O exit");
    master.wait_exit();

    let all = records(&log);
    let forward = all
        .iter()
        .find(|r| r["event"] == "forward_open")
        .expect("forward_open");
    assert!(
        forward["spec"]
            .as_str()
            .unwrap()
            .contains(&format!("local forward LOCALHOST:{port}")),
        "{forward}"
    );
    let connection = all
        .iter()
        .find(|r| r["event"] == "forward_connection")
        .expect("forward_connection");
    assert!(
        connection["peer"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:"),
        "{connection}"
    );
    let close = all
        .iter()
        .find(|r| r["event"] == "session_close")
        .expect("session_close");
    assert!(
        close.get("exit_status").is_none(),
        "a killed client leaves no exit status: {close}"
    );
    assert_eq!(all.last().unwrap()["event"], "master_stop");

    let verify = run(env
        .command(env!("CARGO_BIN_EXE_muxguard"))
        .args(["audit", "verify"])
        .arg(&log));
    verify.assert_success("audit verify");
    let table = run(env
        .command(env!("CARGO_BIN_EXE_muxguard"))
        .args(["audit", "--file"])
        .arg(&log)
        .args(["--kind", "forward-local"]));
    table.assert_success("muxguard audit");
    assert!(table.stdout.contains("forward-local"), "{table:#?}");
    assert!(
        !table.stdout.contains("sleep 30"),
        "the kind filter keeps only forwards: {table:#?}"
    );
    let json = run(env
        .command(env!("CARGO_BIN_EXE_muxguard"))
        .args(["audit", "--json", "--file"])
        .arg(&log)
        .args(["--kind", "forward-local"]));
    json.assert_success("muxguard audit --json");
    assert!(
        json.stdout.contains(&format!("LOCALHOST:{port}")),
        "{json:#?}"
    );
    assert!(
        json.stdout
            .lines()
            .all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok())
    );
}

/// An audit log that cannot be written makes every decision fail closed,
/// unless the policy says `audit_failure = "allow"`.
#[test]
fn unwritable_log_fails_closed() {
    if !common::selected(MasterKind::Muxguard) {
        return;
    }
    for (audit_failure, expect_allowed) in [("deny", false), ("allow", true)] {
        let env = TestEnv::new();
        let policy = env.path().join("policy.toml");
        std::fs::write(
            &policy,
            format!("[defaults]\naction = \"allow\"\naudit_failure = \"{audit_failure}\"\n"),
        )
        .unwrap();
        // /dev/full is not a regular file: the log is refused at start.
        let _master = Master::start_with_args(
            &env,
            MasterKind::Muxguard,
            &[
                "--audit-log",
                "/dev/full",
                "--policy",
                policy.to_str().unwrap(),
                "--system-policy",
                env.path().join("no-system.toml").to_str().unwrap(),
            ],
        );
        let marker = env.work_dir().join("ran");
        let out = run(&mut env.ssh_cmd(&format!("touch {}", marker.display())));
        if expect_allowed {
            out.assert_success("allowed despite the audit failure");
            assert!(marker.exists());
        } else {
            assert_eq!(out.status.code(), Some(255), "{out:#?}");
            assert!(
                out.stderr.contains("audit log"),
                "the reason names the audit log: {out:#?}"
            );
            assert!(
                !marker.exists(),
                "the command ran although its decision was not audited"
            );
            env.assert_connections(1);
        }
    }
}

/// Several masters append to one log at once; every stream verifies.
#[test]
fn two_masters_share_one_log() {
    if !common::selected(MasterKind::Muxguard) {
        return;
    }
    let shared = tempfile::tempdir().unwrap();
    let log = shared.path().join("audit.jsonl");
    let envs = [TestEnv::new(), TestEnv::new()];
    let masters: Vec<Master> = envs
        .iter()
        .map(|env| {
            Master::start_with_args(
                env,
                MasterKind::Muxguard,
                &["--audit-log".as_ref(), log.as_os_str()],
            )
        })
        .collect();
    std::thread::scope(|scope| {
        for env in &envs {
            scope.spawn(move || {
                for i in 0..10 {
                    run(&mut env.ssh_cmd(&format!("echo {i}"))).assert_success("session");
                }
            });
        }
    });
    for env in &envs {
        env.control("exit").assert_success("-O exit");
    }
    drop(masters);
    let verify = run(envs[0]
        .command(env!("CARGO_BIN_EXE_muxguard"))
        .args(["audit", "verify"])
        .arg(&log));
    verify.assert_success("audit verify");
    assert!(verify.stdout.contains("in 2 streams"), "{verify:#?}");
    let sessions = records(&log)
        .iter()
        .filter(|r| r["event"] == "session_close")
        .count();
    assert_eq!(sessions, 20);
}

/// Anyone who can open the log can hold its lock. That must cost them
/// refused decisions for as long as they hold it, never a frozen master:
/// `-O check` is answered at once, a session is refused with the reason
/// (fail closed) while the lock is still held, and once it is released
/// sessions run again.
#[test]
fn a_held_audit_lock_never_freezes_the_master() {
    use common::process::{ChildGuard, poll_until};
    use std::time::Duration;
    if !common::selected(MasterKind::Muxguard) {
        return;
    }
    let env = TestEnv::new();
    let log = env.path().join("state/muxguard/audit.jsonl");
    let _master = env.start_master(MasterKind::Muxguard);
    let is_locked = || {
        !run(env
            .command("flock")
            .args(["-n", "-s"])
            .arg(&log)
            .arg("true"))
        .status
        .success()
    };
    let mut holder = ChildGuard::spawn(
        {
            let mut cmd = env.command("flock");
            // -o: the lock stays with flock itself, so killing it frees it.
            cmd.args(["-x", "-o"]).arg(&log).args(["sleep", "60"]);
            cmd
        },
        "flock holder",
    );
    assert!(
        poll_until(Duration::from_secs(10), is_locked),
        "flock never took the lock"
    );

    env.control("check")
        .assert_success("-O check while the log is locked");
    let refused = run(&mut env.ssh_cmd("echo ran"));
    assert!(
        holder.try_status().is_none(),
        "the master waited for the lock's holder to end"
    );
    assert!(
        !refused.status.success() && !refused.stdout.contains("ran"),
        "{refused:#?}"
    );
    assert!(
        refused.stderr.contains("audit log") && refused.stderr.contains("lock"),
        "{}",
        refused.stderr
    );
    env.control("check")
        .assert_success("-O check after the refusal");

    common::process::kill_tree(holder.id());
    holder.kill();
    let out = run(&mut env.ssh_cmd("echo ran"));
    out.assert_success("a session once the lock is released");
    assert_eq!(out.stdout.trim(), "ran");
}

/// A system policy can give every user a file of their own
/// (`audit_log = ".../%u.jsonl"`), so that nobody can hold the lock of, or
/// write into, another user's log.
#[test]
fn a_system_audit_log_can_be_one_file_per_user() {
    if !common::selected(MasterKind::Muxguard) {
        return;
    }
    let env = TestEnv::new();
    let logs = env.path().join("var-log");
    let system = env.path().join("system-policy.toml");
    std::fs::write(
        &system,
        format!(
            "[defaults]\naction = \"allow\"\naudit_log = \"{}/%u.jsonl\"\n",
            logs.display()
        ),
    )
    .unwrap();
    let _master = Master::start_with_args(
        &env,
        MasterKind::Muxguard,
        &["--system-policy".as_ref(), system.as_os_str()],
    );
    run(&mut env.ssh_cmd("echo hi")).assert_success("session");
    let me = run(std::process::Command::new("id").arg("-un"));
    let mine = logs.join(format!("{}.jsonl", me.stdout.trim()));
    assert!(
        mine.exists(),
        "no per-user log: {:?}",
        std::fs::read_dir(&logs).map(|d| d.count())
    );
    assert!(events(&records(&mine)).contains(&"session_open"));
}
