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
