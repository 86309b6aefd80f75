//! Sharing a master with other local users, set up as docs/sharing.md says
//! and with the shipped `policy/shared-workstation.toml`: the socket is
//! reachable because the policy lists peers, a member of the listed group
//! runs git through the owner's connection, and everything else they try —
//! another command, a command chained to git's, a shell — is refused with
//! the rule's name, while an account the policy does not list is turned
//! away before its first message.
//!
//! OpenSSH's master has no counterpart (it refuses every other uid), so
//! there is no compliance run; the checks that the set-up itself is right
//! are the refusals next to the successes.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use common::accounts::{Account, as_user, group_name, running_as_root, test_user};
use common::env::set_mode;
use common::{HOST, MasterKind, TestEnv, run};

const EXAMPLE: &str = include_str!("../policy/shared-workstation.toml");

/// `text` with `from` replaced by `to`; panics if `from` is not there, so
/// that a change to the example cannot silently hollow out this test.
fn substitute(text: &str, from: &str, to: &str) -> String {
    assert!(
        text.contains(from),
        "policy/shared-workstation.toml no longer contains {from:?}"
    );
    text.replace(from, to)
}

/// The example, with its group, hosts and log directory made this test's.
fn example_for(env: &TestEnv, group: &str) -> String {
    let text = substitute(EXAMPLE, "\"group:build\"", &format!("\"group:{group}\""));
    let text = substitute(&text, "\"build-*\"", &format!("\"{HOST}\""));
    substitute(
        &text,
        "/var/log/muxguard/%u.jsonl",
        &format!("{}/%u.jsonl", env.path().join("audit").display()),
    )
}

/// A bare repository with one commit, for the peer to list; returns the
/// repository's path and the commit.
fn repository(env: &TestEnv) -> (std::path::PathBuf, String) {
    let work = env.path().join("src-repo");
    let bare = env.path().join("shared.git");
    let git = |args: &[&str], dir: &Path| {
        let out = run(env
            .command("git")
            .args([
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@t",
                "-c",
                "init.defaultBranch=main",
            ])
            .args(args)
            .current_dir(dir));
        out.assert_success(&format!("git {args:?}"));
        out.stdout
    };
    std::fs::create_dir_all(&work).expect("mkdir");
    git(&["init", "-q"], &work);
    std::fs::write(work.join("README"), "shared\n").expect("write");
    git(&["add", "README"], &work);
    git(&["commit", "-q", "-m", "first"], &work);
    let commit = git(&["rev-parse", "HEAD"], &work).trim().to_owned();
    git(
        &[
            "clone",
            "-q",
            "--bare",
            work.to_str().unwrap(),
            bare.to_str().unwrap(),
        ],
        env.path(),
    );
    (bare, commit)
}

/// A command run as `peer` through the owner's socket, with a home of
/// the peer's own (the test's HOME belongs to root).
fn as_peer(env: &TestEnv, peer: Account, program: &str) -> Command {
    let home = env.path().join("peer-home");
    if !home.exists() {
        std::fs::create_dir(&home).expect("mkdir peer home");
        rustix::fs::chown(
            &home,
            Some(rustix::fs::Uid::from_raw(peer.uid)),
            Some(rustix::fs::Gid::from_raw(peer.gid)),
        )
        .expect("chown peer home");
    }
    let mut cmd = env.command(program);
    cmd.env("HOME", &home).current_dir(&home);
    as_user(&mut cmd, peer);
    cmd
}

/// The peer's ssh: no configuration of its own, the owner's socket.
fn peer_ssh_args(env: &TestEnv) -> Vec<String> {
    vec![
        "-F".into(),
        "/dev/null".into(),
        "-o".into(),
        "BatchMode=yes".into(),
        "-S".into(),
        env.control_path().display().to_string(),
    ]
}

#[test]
fn a_listed_group_runs_git_through_the_owners_master_and_nothing_else() {
    if !common::selected(MasterKind::Muxguard) {
        return;
    }
    if !running_as_root() {
        eprintln!("skipped: acting as another user needs root");
        return;
    }
    let peer = test_user();
    let env = TestEnv::new();
    let (repo, commit) = repository(&env);
    std::fs::create_dir(env.path().join("audit")).expect("mkdir audit");
    let system = env.path().join("system-policy.toml");
    std::fs::write(&system, example_for(&env, &group_name(peer))).expect("write policy");
    let user = env.path().join("no-user-policy.toml");
    // The documented layout: the sharing account's socket directory, and
    // the way to it, may be passed through but not listed or written.
    set_mode(env.path(), 0o711);
    std::fs::create_dir_all(env.control_dir()).expect("mkdir ctl");
    set_mode(&env.control_dir(), 0o711);
    let master = env.start_muxguard_with(&[
        "--system-policy".as_ref(),
        system.as_os_str(),
        "--policy".as_ref(),
        user.as_os_str(),
    ]);

    let mode = std::fs::metadata(env.control_path())
        .expect("socket")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o666, "a policy with peers opens the socket's mode");
    assert!(
        master.log().contains("the policy lists peers"),
        "the master did not say why the socket is open:\n{}",
        master.log()
    );

    // git, as the peer, through the owner's connection.
    let git_ssh = format!("ssh {}", peer_ssh_args(&env).join(" "));
    let listed = run(as_peer(&env, peer, "git")
        .env("GIT_SSH_COMMAND", &git_ssh)
        .arg("ls-remote")
        .arg(format!("{HOST}:{}", repo.display())));
    listed.assert_success("git ls-remote as a peer");
    assert!(
        listed
            .stdout
            .contains(&format!("{commit}\trefs/heads/main")),
        "{listed:#?}"
    );

    // Anything else the peer asks for is refused by the example's
    // catch-all rule, and the command never runs.
    let marker = env.path().join("chained-ran");
    let attempts = [
        "id".to_owned(),
        format!(
            "git-upload-pack '{}'; touch {}",
            repo.display(),
            marker.display()
        ),
    ];
    for attempt in &attempts {
        let out = run(as_peer(&env, peer, "ssh")
            .args(peer_ssh_args(&env))
            .arg(HOST)
            .arg(attempt));
        assert_eq!(out.status.code(), Some(255), "{attempt:?}: {out:#?}");
        assert!(
            out.stderr.contains("denied by policy")
                && out.stderr.contains("build team: everything else"),
            "{attempt:?}: {out:#?}"
        );
    }
    assert!(!marker.exists(), "the chained command ran");

    // An account the policy does not list cannot even say HELLO.
    let nobody = Account {
        uid: 65534,
        gid: 65534,
    };
    let out = run(as_peer(&env, nobody, "ssh")
        .args(peer_ssh_args(&env))
        .args(["-O", "check", HOST]));
    assert!(
        !out.status.success() && !out.stderr.contains("Master running"),
        "an unlisted account was served: {out:#?}"
    );
    assert!(
        master
            .log()
            .lines()
            .any(|l| l.contains("refused control connection") && l.contains("uid 65534")),
        "the refusal is not in the log:\n{}",
        master.log()
    );

    // Every one of those requests is in the owner's audit log, with the
    // peer's uid.
    let audit_file = env
        .path()
        .join("audit")
        .join(format!("{}.jsonl", env.user()));
    let peer_uid = format!("\"uid\":{}", peer.uid);
    let seen = common::process::poll_until(std::time::Duration::from_secs(10), &mut || {
        let text = std::fs::read_to_string(&audit_file).unwrap_or_default();
        text.lines()
            .filter(|l| l.contains(&peer_uid) && l.contains("git-upload-pack"))
            .count()
            >= 2
    });
    assert!(
        seen,
        "the peer's requests are not in {}:\n{}",
        audit_file.display(),
        std::fs::read_to_string(&audit_file).unwrap_or_default()
    );
    env.assert_connections(1);
}
