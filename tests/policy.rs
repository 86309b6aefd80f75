//! The access policy (issue 4), end to end: a real sshd, the stock ssh
//! client (and git), and a muxguard master started with `--policy` and
//! `--system-policy`. OpenSSH's master has no policy, so these scenarios run
//! against muxguard only.
//!
//! Every master here gets an explicit `--system-policy`; unless a test is
//! about the system file, it points at a file that does not exist, so the
//! machine's /etc/muxguard/policy.toml never takes part. Without a prompter
//! an `ask` becomes deny, so each policy states its default action.

mod common;

use std::ffi::OsString;
use std::fs;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::accounts::running_as_root;
use common::env::set_mode;
use common::master::MUXGUARD;
use common::process::Output;
use common::sshd::free_port;
use common::{HOST, Master, TestEnv, run};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// The two policy files of one test, in the test's temp dir. Neither exists
/// until written.
struct Policies {
    user: PathBuf,
    system: PathBuf,
}

impl Policies {
    fn new(env: &TestEnv) -> Policies {
        let dir = |name: &str| {
            let dir = env.path().join(name);
            fs::create_dir_all(&dir).expect("create policy dir");
            dir.join("policy.toml")
        };
        Policies {
            user: dir("user-policy"),
            system: dir("system-policy"),
        }
    }

    /// `--policy USER --system-policy SYSTEM`.
    fn args(&self) -> Vec<OsString> {
        vec![
            "--policy".into(),
            self.user.clone().into(),
            "--system-policy".into(),
            self.system.clone().into(),
        ]
    }
}

/// Replaces the policy file at `path` with `text` in one step (a new file
/// renamed over the old one), so a running master never reads half a file
/// and always sees a new inode.
fn write_policy(path: &Path, text: &str) {
    let temp = path.with_extension("toml.new");
    fs::write(&temp, text).expect("write policy");
    fs::rename(&temp, path).expect("replace policy");
}

/// Starts muxguard for `testhost` with both policy files, and waits until
/// it answers `ssh -O check` (which the policy does not gate).
fn start_with_policy(env: &TestEnv, policies: &Policies) -> Master {
    env.start_muxguard_with(&policies.args())
}

/// The 1-based line of the `[[rule]]` header of the rule named `name` in
/// `text`: the last header above its `name = "…"` line.
fn rule_line(text: &str, name: &str) -> usize {
    let lines: Vec<&str> = text.lines().collect();
    let name_line = lines
        .iter()
        .position(|l| l.trim() == format!("name = \"{name}\""))
        .unwrap_or_else(|| panic!("no rule named {name:?} in:\n{text}"));
    lines[..name_line]
        .iter()
        .rposition(|l| l.trim() == "[[rule]]")
        .map(|i| i + 1)
        .unwrap_or_else(|| panic!("no [[rule]] header above rule {name:?}"))
}

/// Whether `text` contains `file:line` not followed by another digit (so
/// that line 5 is not found in `:57`).
fn names_location(text: &str, file: &Path, line: usize) -> bool {
    let needle = format!("{}:{line}", file.display());
    text.match_indices(&needle).any(|(at, _)| {
        !text[at + needle.len()..]
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_digit())
    })
}

/// Panics unless `out` is a session the master refused: exit 255, and on
/// stderr the denial naming rule `rule` of `file` at `line`.
#[track_caller]
fn assert_denied(out: &Output, rule: &str, file: &Path, line: usize) {
    assert_eq!(out.code(), Some(255), "expected a denial: {out:#?}");
    assert!(
        out.stderr.contains("denied by policy"),
        "no denial message: {out:#?}"
    );
    assert!(
        out.stderr.contains(&format!("\"{rule}\"")),
        "the denial does not name rule {rule:?}: {out:#?}"
    );
    assert!(
        names_location(&out.stderr, file, line),
        "the denial does not point at {}:{line}: {out:#?}",
        file.display()
    );
}

/// A path in the work dir that a remote command may create; it must not
/// exist yet.
fn marker(env: &TestEnv, name: &str) -> PathBuf {
    let path = env.work_dir().join(name);
    assert!(!path.exists());
    path
}

/// `ssh testhost '<command>'`, run to completion.
fn ssh(env: &TestEnv, command: &str) -> Output {
    run(&mut env.ssh_cmd(command))
}

/// `muxguard <args…>` in the test's environment, run to completion.
fn muxguard(env: &TestEnv, args: &[&std::ffi::OsStr]) -> Output {
    run(env.command(MUXGUARD).args(args))
}

/// Panics unless the master still answers `-O check` with its own pid.
#[track_caller]
fn assert_master_alive(env: &TestEnv, master: &Master) {
    let out = env.control("check");
    assert!(
        out.status.success() && out.stderr.contains(&format!("pid={}", master.pid())),
        "the master no longer answers: {out:#?}\nmaster log:\n{}",
        master.log()
    );
}

// ---------------------------------------------------------------------------
// Sessions: deny, direct, and the system ceiling
// ---------------------------------------------------------------------------

/// A deny rule refuses the session with exit 255 and a reason naming the
/// rule and its place; the command never runs and the client does not fall
/// back to a connection of its own. The next allowed command works.
#[test]
fn deny_rule_refuses_command() {
    let env = TestEnv::new();
    let policies = Policies::new(&env);
    let text = "\
# Everything is allowed except touching files.
[defaults]
action = \"allow\"

[[rule]]
name = \"no touching\"
commands = [\"touch *\"]
action = \"deny\"
";
    write_policy(&policies.user, text);
    let master = start_with_policy(&env, &policies);
    let marker = marker(&env, "touched");

    let out = ssh(&env, &format!("touch {}", marker.display()));
    assert_denied(
        &out,
        "no touching",
        &policies.user,
        rule_line(text, "no touching"),
    );
    assert_eq!(rule_line(text, "no touching"), 5);
    assert!(!marker.exists(), "the denied command ran on the server");
    env.assert_connections(1);

    let out = ssh(&env, "echo allowed");
    out.assert_success("an allowed command after a denial");
    assert_eq!(out.stdout, "allowed\n");
    env.assert_connections(1);
    assert_master_alive(&env, &master);
}

/// `direct` declines to share: the stock client authenticates on its own
/// (a second connection at sshd) and the command runs normally.
#[test]
fn direct_rule_makes_client_connect_itself() {
    let env = TestEnv::new();
    let policies = Policies::new(&env);
    write_policy(
        &policies.user,
        "\
[defaults]
action = \"allow\"

[[rule]]
name = \"not shared\"
commands = [\"echo direct*\"]
action = \"direct\"
",
    );
    let master = start_with_policy(&env, &policies);

    let out = ssh(&env, "echo shared");
    out.assert_success("an allowed command");
    assert_eq!(out.stdout, "shared\n");
    env.assert_connections(1);

    let out = ssh(&env, "echo direct-ok");
    out.assert_success("a command the policy sends direct");
    assert_eq!(out.stdout, "direct-ok\n");
    env.assert_connections(2);
    assert_master_alive(&env, &master);
}

/// The system file is a ceiling: a system deny beats a user allow, a user
/// deny beats a system direct, and a system direct beats a user allow.
#[test]
fn system_policy_is_a_ceiling() {
    let env = TestEnv::new();
    let policies = Policies::new(&env);
    let system = "\
[defaults]
action = \"allow\"

[[rule]]
name = \"sys no touch\"
commands = [\"touch *\"]
kinds = [\"exec\"]
action = \"deny\"

[[rule]]
name = \"sys direct echo\"
commands = [\"echo *\"]
action = \"direct\"
";
    let user = "\
[defaults]
action = \"allow\"

[[rule]]
name = \"user allows touch\"
commands = [\"touch *\"]
action = \"allow\"

[[rule]]
name = \"user denies secrets\"
commands = [\"echo secret*\"]
action = \"deny\"
";
    write_policy(&policies.system, system);
    write_policy(&policies.user, user);
    let master = start_with_policy(&env, &policies);

    // System deny over user allow.
    let marker = marker(&env, "touched");
    let out = ssh(&env, &format!("touch {}", marker.display()));
    assert_denied(
        &out,
        "sys no touch",
        &policies.system,
        rule_line(system, "sys no touch"),
    );
    assert!(!marker.exists(), "the denied command ran on the server");
    env.assert_connections(1);

    // User deny over system direct: no fallback connection.
    let out = ssh(&env, "echo secret-value");
    assert_denied(
        &out,
        "user denies secrets",
        &policies.user,
        rule_line(user, "user denies secrets"),
    );
    assert!(!out.stdout.contains("secret-value"), "{out:#?}");
    env.assert_connections(1);

    // System direct over user allow.
    let out = ssh(&env, "echo hello");
    out.assert_success("a command the system file sends direct");
    assert_eq!(out.stdout, "hello\n");
    env.assert_connections(2);

    // Allowed by both: shared.
    let out = ssh(&env, "printf shared");
    out.assert_success("a command both files allow");
    assert_eq!(out.stdout, "shared");
    env.assert_connections(2);
    assert_master_alive(&env, &master);
}

// ---------------------------------------------------------------------------
// Other request kinds
// ---------------------------------------------------------------------------

/// `ssh -O forward -L` refused by a forward-local deny rule: the client
/// reports the master's refusal with the rule's name, and nothing listens.
#[test]
fn forward_deny_opens_no_listener() {
    let env = TestEnv::new();
    let policies = Policies::new(&env);
    write_policy(
        &policies.user,
        "\
[defaults]
action = \"allow\"

[[rule]]
name = \"no local forwards\"
kinds = [\"forward-local\"]
action = \"deny\"
",
    );
    let master = start_with_policy(&env, &policies);
    let port = free_port();
    let spec = format!("127.0.0.1:{port}:127.0.0.1:{}", env.sshd().port());

    let out = run(env.ssh().args(["-O", "forward", "-L", &spec, HOST]));
    assert_eq!(out.code(), Some(255), "{out:#?}");
    assert!(
        out.stderr.contains("Master refused forwarding request")
            && out.stderr.contains("no local forwards"),
        "{out:#?}"
    );
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "something listens on the denied forward's port {port}"
    );

    // Other requests are unaffected.
    ssh(&env, "true").assert_success("a session next to a denied forward");
    env.assert_connections(1);
    assert_master_alive(&env, &master);
}

/// `-O exit` refused by a control deny rule: the client says the master
/// refused, and the master keeps running.
#[test]
fn control_deny_keeps_master_running() {
    let env = TestEnv::new();
    let policies = Policies::new(&env);
    write_policy(
        &policies.user,
        "\
[defaults]
action = \"allow\"

[[rule]]
name = \"no remote control\"
kinds = [\"control\"]
action = \"deny\"
",
    );
    let mut master = start_with_policy(&env, &policies);

    let out = env.control("exit");
    assert_eq!(out.code(), Some(255), "{out:#?}");
    assert!(
        out.stderr.contains("Master refused termination request")
            && out.stderr.contains("no remote control"),
        "{out:#?}"
    );
    assert!(master.try_status().is_none(), "the master exited");
    assert!(env.control_path().exists(), "the socket is gone");
    assert_master_alive(&env, &master);
}

/// `ssh -W` refused for a target the policy denies, while another target
/// goes through (and shows sshd's banner).
#[test]
fn stdio_forward_deny() {
    let env = TestEnv::new();
    let policies = Policies::new(&env);
    write_policy(
        &policies.user,
        "\
[defaults]
action = \"allow\"

[[rule]]
name = \"no stdio to localhost\"
kinds = [\"stdio-forward\"]
commands = [\"localhost:*\"]
action = \"deny\"
",
    );
    let master = start_with_policy(&env, &policies);
    let sshd_port = env.sshd().port();

    let denied = format!("localhost:{sshd_port}");
    let out = run(env.ssh().args(["-W", &denied, HOST]));
    assert_ne!(out.code(), Some(0), "{out:#?}");
    assert!(
        out.stderr
            .contains("Master refused stdio forwarding request")
            && out.stderr.contains("no stdio to localhost"),
        "the refusal does not name the rule: {out:#?}"
    );
    assert!(!out.stdout.contains("SSH-2.0"), "{out:#?}");

    let allowed = format!("127.0.0.1:{sshd_port}");
    let out = run(env.ssh().args(["-W", &allowed, HOST]));
    assert!(
        out.stdout.starts_with("SSH-2.0-"),
        "an allowed stdio forward did not reach sshd: {out:#?}"
    );
    env.assert_connections(1);
    assert_master_alive(&env, &master);
}

/// `-O proxy` is refused unless a rule names the kind, even under a policy
/// that allows everything else; with such a rule it works. The refused
/// client never falls back, and the master survives.
#[test]
fn proxy_needs_a_rule_naming_it() {
    let env = TestEnv::new();
    let policies = Policies::new(&env);
    write_policy(&policies.user, "[defaults]\naction = \"allow\"\n");
    let master = start_with_policy(&env, &policies);

    let out = run(env.ssh().args(["-O", "proxy", HOST, "true"]));
    assert_ne!(out.code(), Some(0), "{out:#?}");
    assert!(
        out.stderr.contains("lists kind \"proxy\""),
        "the refusal does not say why: {out:#?}"
    );
    let log = master.log();
    assert!(
        log.lines()
            .any(|l| l.contains("proxy from") && l.contains("denied")),
        "the master did not deny the proxy request:\n{log}"
    );
    assert_master_alive(&env, &master);

    write_policy(
        &policies.user,
        "\
[defaults]
action = \"allow\"

[[rule]]
name = \"proxy ok\"
kinds = [\"proxy\"]
action = \"allow\"
",
    );
    let out = run(env.ssh().args(["-O", "proxy", HOST, "echo proxied"]));
    out.assert_success("-O proxy with a rule naming it");
    assert_eq!(out.stdout, "proxied\n", "{out:#?}");
    let log = master.log();
    assert!(
        log.lines()
            .any(|l| l.contains("proxy from") && l.contains("allowed")),
        "the proxy rule did not allow the request:\n{log}"
    );
    assert_master_alive(&env, &master);
    env.assert_connections(1);
}

// ---------------------------------------------------------------------------
// Policy files changing and broken
// ---------------------------------------------------------------------------

/// Edits are picked up on the next request without a restart; an invalid
/// edit denies with the parse error and its place; fixing it restores
/// service.
#[test]
fn policy_reload_and_invalid_edit() {
    let env = TestEnv::new();
    let policies = Policies::new(&env);
    write_policy(&policies.user, "[defaults]\naction = \"allow\"\n");
    let master = start_with_policy(&env, &policies);

    let out = ssh(&env, "echo one");
    out.assert_success("allowed by the first policy");
    assert_eq!(out.stdout, "one\n");

    let deny = "\
[defaults]
action = \"allow\"

[[rule]]
name = \"no echo\"
commands = [\"echo *\"]
action = \"deny\"
";
    write_policy(&policies.user, deny);
    let out = ssh(&env, "echo two");
    assert_denied(&out, "no echo", &policies.user, rule_line(deny, "no echo"));
    assert!(!out.stdout.contains("two"), "{out:#?}");

    // An unclosed array-of-tables header on line 3: `[[rule]` is 7
    // characters, and the `]` is missing at column 8.
    write_policy(
        &policies.user,
        "[defaults]\naction = \"allow\"\n[[rule]\nname = \"x\"\naction = \"allow\"\n",
    );
    let out = ssh(&env, "echo three");
    assert_eq!(out.code(), Some(255), "{out:#?}");
    assert!(
        out.stderr.contains("denied by policy") && out.stderr.contains("policy error"),
        "{out:#?}"
    );
    let place = format!("{}:3:8:", policies.user.display());
    assert!(
        out.stderr.contains(&place),
        "the denial does not point at {place}: {out:#?}"
    );
    assert!(!out.stdout.contains("three"), "{out:#?}");

    write_policy(&policies.user, "[defaults]\naction = \"allow\"\n");
    let out = ssh(&env, "echo four");
    out.assert_success("allowed again after the fix");
    assert_eq!(out.stdout, "four\n");

    // The same master all along, and no connection of the client's own.
    env.assert_connections(1);
    assert_master_alive(&env, &master);
}

/// An invalid policy stops `muxguard connect` (background mode) before
/// anything else: an error naming file, line, column and reason, no
/// socket, no connection to the server.
#[test]
fn invalid_policy_refuses_to_start() {
    let env = TestEnv::new();
    let policies = Policies::new(&env);
    write_policy(
        &policies.user,
        "\
[defaults]
action = \"allow\"

[[rule]]
name = \"typo\"
kinds = [\"exec\", \"forward\"]
action = \"deny\"
",
    );
    let mut cmd = env.command(MUXGUARD);
    cmd.arg("connect")
        .arg("-F")
        .arg(env.config_path())
        .args(policies.args())
        .arg(HOST);
    let out = run(&mut cmd);
    let started = env.control_path().exists();
    if started {
        // Stop the master that should never have started before failing.
        let _ = env.control("exit");
    }
    assert!(!started, "a master started despite the invalid policy");
    assert_ne!(out.code(), Some(0), "{out:#?}");
    // `kinds = [` is 9 characters and `"exec", ` 8 more: "forward" starts
    // at column 18 of line 6.
    let expected = format!(
        "muxguard: invalid policy: {}:6:18: kinds: unknown kind \"forward\"",
        policies.user.display()
    );
    assert!(out.stderr.contains(&expected), "{out:#?}");
    env.assert_connections(0);
}

// ---------------------------------------------------------------------------
// policy check / explain
// ---------------------------------------------------------------------------

/// `policy check` accepts valid files (the examples in policy/ included)
/// and rejects an invalid one with exit 1 and `file:line:column: reason`.
#[test]
fn policy_check_reports_place() {
    let env = TestEnv::new();
    let policies = Policies::new(&env);
    write_policy(
        &policies.user,
        "[defaults]\naction = \"deny\"\n\n[[rule]]\nname = \"git\"\nprograms = [\"/usr/bin/git\"]\naction = \"allow\"\n",
    );
    let out = muxguard(
        &env,
        &["policy".as_ref(), "check".as_ref(), policies.user.as_ref()],
    );
    out.assert_success("policy check of a valid file");
    assert!(out.stdout.contains("valid (1 rules)"), "{out:#?}");

    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("policy");
    let mut checked = 0;
    for entry in fs::read_dir(&examples).expect("read policy/") {
        let path = entry.expect("dir entry").path();
        if path.extension().is_some_and(|e| e == "toml") {
            let out = muxguard(&env, &["policy".as_ref(), "check".as_ref(), path.as_ref()]);
            out.assert_success(&format!("policy check {}", path.display()));
            checked += 1;
        }
    }
    assert!(
        checked >= 3,
        "expected the three example policies, found {checked}"
    );

    // A rule without an action: reported at its header (line 4, column 1).
    let bad = env.path().join("bad.toml");
    fs::write(
        &bad,
        "[defaults]\naction = \"allow\"\n\n[[rule]]\nname = \"incomplete\"\ncommands = [\"ls\"]\n",
    )
    .expect("write bad policy");
    let out = muxguard(&env, &["policy".as_ref(), "check".as_ref(), bad.as_ref()]);
    assert_eq!(out.code(), Some(1), "{out:#?}");
    let expected = format!("{}:4:1: rule \"incomplete\" has no action", bad.display());
    assert!(out.stderr.contains(&expected), "{out:#?}");

    // A bad value: line 2, column 10 (where the string starts).
    fs::write(&bad, "[defaults]\naction = \"perhaps\"\n").expect("write bad policy");
    let out = muxguard(&env, &["policy".as_ref(), "check".as_ref(), bad.as_ref()]);
    assert_eq!(out.code(), Some(1), "{out:#?}");
    let expected = format!("{}:2:10: action: unknown action \"perhaps\"", bad.display());
    assert!(out.stderr.contains(&expected), "{out:#?}");
}

/// `policy explain` names the deciding rule with file:line, and shows the
/// system file's answer as the ceiling over the user's.
#[test]
fn policy_explain_names_rule_and_ceiling() {
    let env = TestEnv::new();
    let policies = Policies::new(&env);
    let system = "\
[defaults]
action = \"allow\"

[[rule]]
name = \"sys no rm\"
commands = [\"rm *\"]
action = \"deny\"
";
    let user = "\
[defaults]
action = \"deny\"

[[rule]]
name = \"user allows rm and ls\"
commands = [\"rm *\", \"ls*\"]
action = \"allow\"
";
    write_policy(&policies.system, system);
    write_policy(&policies.user, user);
    let explain = |command: &str| {
        let mut args: Vec<OsString> = ["policy", "explain", "--host", HOST, "--command", command]
            .iter()
            .map(OsString::from)
            .collect();
        args.extend(policies.args());
        run(env.command(MUXGUARD).args(&args))
    };

    let out = explain("rm -rf /tmp/x");
    out.assert_success("policy explain");
    assert!(out.stdout.contains("decision: deny"), "{out:#?}");
    let because = out
        .stdout
        .lines()
        .find(|l| l.contains("because of"))
        .unwrap_or_else(|| panic!("no 'because of' line: {out:#?}"));
    assert!(
        because.contains("\"sys no rm\"")
            && names_location(because, &policies.system, rule_line(system, "sys no rm")),
        "{out:#?}"
    );
    let system_line = out
        .stdout
        .lines()
        .find(|l| l.starts_with("system policy"))
        .unwrap_or_else(|| panic!("no system policy line: {out:#?}"));
    assert!(
        system_line.contains(&policies.system.display().to_string())
            && system_line.contains("deny"),
        "{out:#?}"
    );
    let user_line = out
        .stdout
        .lines()
        .find(|l| l.starts_with("user policy"))
        .unwrap_or_else(|| panic!("no user policy line: {out:#?}"));
    assert!(
        user_line.contains("allow")
            && names_location(
                user_line,
                &policies.user,
                rule_line(user, "user allows rm and ls")
            ),
        "{out:#?}"
    );

    let out = explain("ls -l");
    out.assert_success("policy explain");
    assert!(out.stdout.contains("decision: allow"), "{out:#?}");
    assert!(
        names_location(
            &out.stdout,
            &policies.user,
            rule_line(user, "user allows rm and ls")
        ),
        "{out:#?}"
    );

    let out = explain("id");
    out.assert_success("policy explain");
    assert!(out.stdout.contains("decision: deny"), "{out:#?}");
    assert!(
        out.stdout.contains(&format!(
            "the default action of {}",
            policies.user.display()
        )),
        "{out:#?}"
    );
}

// ---------------------------------------------------------------------------
// Who is asking: the requesting program, other local users
// ---------------------------------------------------------------------------

/// The canonical path of the `git` found on PATH (what /proc/PID/exe shows
/// for it).
fn git_exe(env: &TestEnv) -> PathBuf {
    let out = run(env.command("sh").args(["-c", "command -v git"]));
    out.assert_success("command -v git");
    fs::canonicalize(out.stdout.trim()).expect("canonicalize git")
}

/// A rule allowing only git, everything else denied: `git clone` through
/// the master works, a plain `ssh host command` is refused by name and its
/// command never runs.
#[test]
fn only_git_is_allowed() {
    let env = TestEnv::new();
    let policies = Policies::new(&env);
    let git = git_exe(&env);
    let text = format!(
        "\
[defaults]
action = \"deny\"

[[rule]]
name = \"git only\"
programs = [\"{}\"]
action = \"allow\"

[[rule]]
name = \"nothing else\"
action = \"deny\"
",
        git.display()
    );
    write_policy(&policies.user, &text);
    let master = start_with_policy(&env, &policies);

    let work = env.work_dir();
    let source = work.join("source");
    let bare = work.join("repo.git");
    let git_cmd = |args: &[&str]| {
        let mut cmd = env.command(&git);
        cmd.args(["-c", "user.name=test", "-c", "user.email=test@example.com"])
            .args(args);
        cmd
    };
    run(git_cmd(&["init", "-q"]).arg(&source)).assert_success("git init");
    run(git_cmd(&["-C"])
        .arg(&source)
        .args(["commit", "-q", "--allow-empty", "-m", "first"]))
    .assert_success("git commit");
    run(git_cmd(&["clone", "-q", "--bare"]).arg(&source).arg(&bare))
        .assert_success("git clone --bare");
    let head = run(git_cmd(&["-C"]).arg(&source).args(["rev-parse", "HEAD"]));
    head.assert_success("git rev-parse");

    let clone = work.join("clone");
    let ssh_command = format!("ssh -F {}", env.config_path().display());
    let out = run(git_cmd(&["clone", "-q"])
        .arg(format!("{HOST}:{}", bare.display()))
        .arg(&clone)
        .env("GIT_SSH_COMMAND", &ssh_command));
    out.assert_success("git clone through the master");
    let cloned = run(git_cmd(&["-C"]).arg(&clone).args(["rev-parse", "HEAD"]));
    cloned.assert_success("git rev-parse in the clone");
    assert_eq!(cloned.stdout, head.stdout);
    // Through the master: no connection of the client's own.
    env.assert_connections(1);
    let log = master.log();
    assert!(
        log.lines()
            .any(|l| l.contains("allowed") && l.contains("git only")),
        "the master log shows no allow by the git rule:\n{log}"
    );

    let marker = marker(&env, "touched");
    let out = ssh(&env, &format!("touch {}", marker.display()));
    assert_denied(
        &out,
        "nothing else",
        &policies.user,
        rule_line(&text, "nothing else"),
    );
    assert!(!marker.exists(), "the denied command ran on the server");
    env.assert_connections(1);
    assert_master_alive(&env, &master);
}

fn have_setpriv() -> bool {
    run(Command::new("sh").args(["-c", "command -v setpriv"]))
        .status
        .success()
}

/// A client running as another uid (nobody) is refused before anything is
/// read, even when the policy allows every request; once a rule lists that
/// uid in `peers`, it is served.
#[test]
fn other_uid_needs_peers_rule() {
    if !running_as_root() {
        eprintln!("skipped: acting as another uid needs root");
        return;
    }
    if !have_setpriv() {
        eprintln!("skipped: setpriv (util-linux) is not installed");
        return;
    }
    let env = TestEnv::new();
    let policies = Policies::new(&env);
    write_policy(&policies.user, "[defaults]\naction = \"allow\"\n");
    // nobody may pass through to the socket, but no directory on the way
    // becomes group- or other-writable.
    set_mode(env.path(), 0o711);
    set_mode(&env.control_dir(), 0o711);
    let master = start_with_policy(&env, &policies);
    set_mode(env.control_path(), 0o666);

    let check_as_nobody = || {
        let mut cmd = env.command("setpriv");
        cmd.args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "ssh",
            "-F",
            "/dev/null",
            "-o",
            "BatchMode=yes",
            "-S",
        ])
        .arg(env.control_path())
        .args(["-O", "check", HOST]);
        run(&mut cmd)
    };

    let out = check_as_nobody();
    assert!(
        !out.status.success()
            && !out.stderr.contains("Master running")
            && out.stderr.contains("hello exchange failed"),
        "nobody was served without a peers rule: {out:#?}"
    );
    let log = master.log();
    assert!(
        log.lines()
            .any(|l| l.contains("refused control connection") && l.contains("uid 65534")),
        "the master did not log the refusal:\n{log}"
    );

    write_policy(
        &policies.user,
        "\
[defaults]
action = \"allow\"

[[rule]]
name = \"nobody\"
peers = [\"65534\"]
action = \"allow\"
",
    );
    let out = check_as_nobody();
    out.assert_success("-O check as nobody with a peers rule");
    assert!(
        out.stderr
            .contains(&format!("Master running (pid={})", master.pid())),
        "{out:#?}"
    );
    env.assert_connections(1);
    assert_master_alive(&env, &master);
}

/// What both raw python clients below start with: the mux framing, and a
/// session request for `touch MARKER` with /dev/null as its descriptors,
/// after which the client reads until the master closes the connection.
const PY_MUX_CLIENT: &str = r#"
import os, socket, struct, sys
u32 = lambda v: struct.pack(">I", v)
string = lambda b: u32(len(b)) + b
packet = lambda body: u32(len(body)) + body
def ask_touch_and_drain(s, marker):
    s.sendall(packet(u32(0x10000002) + u32(1) + string(b"") + u32(0) * 4
                     + u32(ord("~")) + string(b"dumb") + string(("touch " + marker).encode())))
    null = os.open("/dev/null", os.O_RDWR)
    for _ in range(3):
        socket.send_fds(s, [b"\0"], [null])
    s.settimeout(20)
    try:
        while s.recv(4096):
            pass
    except OSError:
        pass
"#;

/// A raw mux client in python, made a session leader so that it is the
/// requesting program itself: connects, says HELLO and waits for the
/// answer to an EXT_INFO (which, unlike HELLO and ALIVE_CHECK, the master
/// answers only once it has read who connected), forks a child that keeps
/// the socket, and then either stays (`stay`) or execs `sleep` (`exec`).
/// The child asks for `touch MARKER` and prints what the master answered.
const HANDOFF_CLIENT: &str = r#"
import time
path, marker, mode = sys.argv[1], sys.argv[2], sys.argv[3]
os.setsid()
s = socket.socket(socket.AF_UNIX)
s.connect(path)
def recvall(n):
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk:
            sys.exit("master closed")
        data += chunk
    return data
recvall(struct.unpack(">I", recvall(4))[0])
s.sendall(packet(u32(1) + u32(4)))
s.sendall(packet(u32(0x20000001) + u32(0) + string(b"connection")))
recvall(struct.unpack(">I", recvall(4))[0])
if os.fork() == 0:
    if mode == "exec":
        time.sleep(1)
    ask_touch_and_drain(s, marker)
    os._exit(0)
if mode == "exec":
    os.execv("/usr/bin/sleep", ["sleep", "2"])
os.wait()
"#;

/// Denies everything but requests from Debian's python.
const ONLY_DEBIANS_PYTHON: &str = "\
[defaults]
action = \"deny\"

[[rule]]
name = \"python\"
programs = [\"/usr/bin/python3*\"]
action = \"allow\"
";

/// Connect, hand the socket to a child and exec another program: the
/// identity read at accept is not carried over to what runs under that pid
/// now. A rule allows python, the client connects as python and then
/// execs sleep: its request is refused as an unverified program, and the
/// audit log says why. The control (no exec) is allowed by the same rule.
#[test]
fn a_client_that_execs_after_connecting_loses_its_identity() {
    let env = TestEnv::new();
    let policies = Policies::new(&env);
    write_policy(&policies.user, ONLY_DEBIANS_PYTHON);
    let _master = start_with_policy(&env, &policies);
    let attempt = |mode: &str| {
        let marker = marker(&env, mode);
        let out = run(env
            // Debian's, which the rule names (not a pyenv shim on PATH).
            .command("/usr/bin/python3")
            .args(["-c", &format!("{PY_MUX_CLIENT}{HANDOFF_CLIENT}")])
            .arg(env.control_path())
            .arg(&marker)
            .arg(mode));
        out.assert_success("the handoff client");
        marker
    };
    let stayed = attempt("stay");
    assert!(
        common::process::poll_until(Duration::from_secs(10), || stayed.exists()),
        "the control request (no exec) was not allowed"
    );
    let execed = attempt("exec");
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !execed.exists(),
        "a request ran on the identity of a program that exec'd away"
    );
    let audit = fs::read_to_string(env.path().join("state/muxguard/audit.jsonl")).expect("audit");
    let refusal = audit
        .lines()
        .rfind(|l| l.contains("\"decision\""))
        .expect("a decision");
    assert!(
        refusal.contains("\"deny\"") && refusal.contains("now runs /usr/bin/sleep"),
        "{refusal}"
    );
}

/// Connects, leaves the socket to a child in a session of its own that
/// asks for `touch MARKER` as soon as the master answers, prints its pid
/// and exits.
const VANISHING_CLIENT: &str = r#"
path, marker = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_UNIX)
s.connect(path)
if os.fork() == 0:
    os.setsid()
    null = os.open("/dev/null", os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    s.sendall(packet(u32(1) + u32(4)))
    ask_touch_and_drain(s, marker)
    os._exit(0)
print(os.getpid(), flush=True)
"#;

/// Starts `command` as process `pid` (free again, the caller knows), by
/// setting the kernel's last-given pid just below it; other processes
/// starting meanwhile can take it first, so this tries a few times.
/// `None` if the pid cannot be steered (not root, or no luck).
fn spawn_as_pid(pid: u32, mut command: impl FnMut() -> Command) -> Option<std::process::Child> {
    for _ in 0..50 {
        fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string()).ok()?;
        let mut child = command().spawn().expect("spawn");
        if child.id() == pid {
            return Some(child);
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    None
}

/// Resumes a stopped process however the test ends.
struct Stopped(rustix::process::Pid);

impl Stopped {
    fn stop(pid: u32) -> Stopped {
        let pid = rustix::process::Pid::from_raw(pid as i32).expect("a pid");
        rustix::process::kill_process(pid, rustix::process::Signal::STOP).expect("SIGSTOP");
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = rustix::process::kill_process(self.0, rustix::process::Signal::CONT);
    }
}

/// The pid SO_PEERCRED gives is a number, and may be another process's by
/// the time the master looks. A client connects while the master is
/// stopped (so it cannot accept yet), hands the socket on and exits; a
/// program a rule allows then starts under its pid. The master, resumed,
/// must not take that program for the client: the request is refused.
/// (Before SO_PEERPIDFD the master opened a pidfd from the pid after
/// accept and trusted the newcomer.)
#[test]
fn a_pid_taken_over_after_connecting_is_not_the_client() {
    if !running_as_root() {
        eprintln!("skipped: steering pids needs root");
        return;
    }
    let env = TestEnv::new();
    let policies = Policies::new(&env);
    write_policy(&policies.user, ONLY_DEBIANS_PYTHON);
    let master = start_with_policy(&env, &policies);
    let touched = marker(&env, "taken-over");
    let stopped = Stopped::stop(master.pid());
    let out = run(env
        .command("/usr/bin/python3")
        .args(["-c", &format!("{PY_MUX_CLIENT}{VANISHING_CLIENT}")])
        .arg(env.control_path())
        .arg(&touched));
    out.assert_success("the vanishing client");
    let pid: u32 = out.stdout.trim().parse().expect("the client's pid");
    // An allowed program, session leader (so it is the program a rule
    // matches), now under the client's pid.
    let Some(mut taker) = spawn_as_pid(pid, || {
        let mut python = Command::new("/usr/bin/python3");
        python.args(["-c", "import os, time; os.setsid(); time.sleep(30)"]);
        python
    }) else {
        eprintln!("skipped: pid {pid} could not be given to another process");
        return;
    };
    std::thread::sleep(Duration::from_millis(300));
    drop(stopped);

    let audit_path = env.path().join("state/muxguard/audit.jsonl");
    assert!(
        common::process::poll_until(Duration::from_secs(10), || {
            fs::read_to_string(&audit_path).is_ok_and(|a| a.contains("\"decision\""))
        }),
        "no decision for the client's request"
    );
    std::thread::sleep(Duration::from_millis(300));
    let _ = taker.kill();
    let _ = taker.wait();
    assert!(
        !touched.exists(),
        "a request ran as the program that took over the client's pid"
    );
    let audit = fs::read_to_string(&audit_path).expect("audit");
    let decision = audit
        .lines()
        .rfind(|l| l.contains("\"decision\""))
        .expect("a decision");
    assert!(decision.contains("\"deny\""), "{decision}");
}

/// `-O cancel` is control of the master (like `-O exit`), not a forward:
/// a policy that allows forwards but denies control lets a forward be
/// opened and refuses its cancelling, naming the rule.
#[test]
fn cancelling_a_forward_is_decided_as_control() {
    let env = TestEnv::new();
    let policies = Policies::new(&env);
    write_policy(
        &policies.user,
        "[defaults]\naction = \"allow\"\n\n\
         [[rule]]\nname = \"no control\"\nkinds = [\"control\"]\naction = \"deny\"\n",
    );
    let _master = start_with_policy(&env, &policies);
    let port = free_port();
    let spec = format!("{port}:127.0.0.1:9");
    run(env.ssh().args(["-O", "forward", "-L", &spec, HOST])).assert_success("-O forward");
    // The stock client reports a refused cancel on stderr and exits 0.
    let cancel = run(env.ssh().args(["-O", "cancel", "-L", &spec, HOST]));
    assert!(cancel.stderr.contains("no control"), "{cancel:#?}");
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_ok(),
        "the forward was cancelled anyway"
    );
}
