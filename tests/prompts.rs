//! Desktop prompts (issue 5), end to end: a real sshd, the stock ssh client,
//! a muxguard master whose policy says `ask`, a private D-Bus session bus
//! (`dbus-daemon`, started and stopped by each test) and a fake notification
//! server written with zbus that records every call and answers as the test
//! says. OpenSSH's master never asks, so these run against muxguard only.
//!
//! Only the master gets the private bus (and, in the fallback tests,
//! `SSH_ASKPASS`); the clients keep the scrubbed test environment.

mod common;
#[path = "common/dbus.rs"]
mod dbus;

use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::process::{Output, wait_timeout};
use common::{HOST, Master, TestEnv};
use dbus::{
    ALLOW_ONCE, ALLOW_REMEMBER, DENY, NotificationServer, NotifyCall, Reply, ServerConfig,
    SessionBus,
};

// ---------------------------------------------------------------------------
// Set-up
// ---------------------------------------------------------------------------

/// The policy of these tests: everything is asked about, 3 s to answer,
/// "Allow for 10m", 5 s of quiet after a refusal, deny if nobody can be
/// asked. `extra` is appended (rules).
fn policy_text(options: &Options) -> String {
    format!(
        "\
[defaults]
action = \"ask\"
prompt_timeout = \"{}\"
remember = \"10m\"
cooldown = \"{}\"
no_prompter = \"{}\"
when_locked = \"deny\"
{}",
        options.prompt_timeout, options.cooldown, options.no_prompter, options.extra_policy
    )
}

/// How one test's master is set up.
struct Options {
    /// Start a private bus with this fake notification server on it.
    server: Option<ServerConfig>,
    prompt_timeout: &'static str,
    cooldown: &'static str,
    no_prompter: &'static str,
    extra_policy: &'static str,
    /// More environment for the master only.
    master_env: Vec<(String, String)>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            server: Some(ServerConfig::default()),
            prompt_timeout: "3s",
            cooldown: "5s",
            no_prompter: "deny",
            extra_policy: "",
            master_env: Vec::new(),
        }
    }
}

/// One test's world. Field order is drop order: the master goes first, then
/// the notification server, the bus, and last the sshd and temp dir.
struct Setup {
    master: Master,
    server: Option<NotificationServer>,
    _bus: Option<SessionBus>,
    env: TestEnv,
}

impl Setup {
    fn start(options: Options) -> Setup {
        let env = TestEnv::new();
        let user_policy = env.path().join("user-policy.toml");
        fs::write(&user_policy, policy_text(&options)).expect("write policy");
        let args: Vec<OsString> = vec![
            "--policy".into(),
            user_policy.into(),
            "--system-policy".into(),
            env.path().join("no-such-dir/policy.toml").into(),
        ];
        let mut vars = options.master_env;
        let (bus, server) = match options.server {
            Some(config) => {
                let bus = SessionBus::start();
                let server = NotificationServer::start(&bus, config);
                vars.push(("DBUS_SESSION_BUS_ADDRESS".into(), bus.address().to_owned()));
                (Some(bus), Some(server))
            }
            None => (None, None),
        };
        let master = env.start_muxguard_with_env(&args, &vars);
        Setup {
            master,
            server,
            _bus: bus,
            env,
        }
    }

    fn server(&self) -> &NotificationServer {
        self.server
            .as_ref()
            .expect("this test has a notification server")
    }

    /// A path in the work dir that a remote command may create.
    fn marker(&self, name: &str) -> PathBuf {
        let path = self.env.work_dir().join(name);
        assert!(!path.exists());
        path
    }

    /// `ssh testhost '<command>'`, started in the background.
    fn spawn(&self, command: &str) -> Client {
        Client::spawn(self.env.ssh_cmd(command))
    }

    /// `ssh testhost '<command>'`, run to completion.
    fn ssh(&self, command: &str) -> Output {
        self.spawn(command).wait()
    }

    fn log(&self) -> String {
        self.master.log()
    }

    /// `muxguard <subcommand> -F <ssh_config> testhost`, run to completion.
    fn muxguard(&self, subcommand: &str) -> Output {
        common::run(
            self.env
                .command(common::master::MUXGUARD)
                .arg(subcommand)
                .arg("-F")
                .arg(self.env.config_path())
                .arg(HOST),
        )
    }
}

/// An ssh client running in the background, output into anonymous files.
struct Client {
    child: Child,
    stdout: File,
    stderr: File,
    started: Instant,
}

impl Client {
    fn spawn(mut cmd: Command) -> Client {
        let stdout = tempfile::tempfile().expect("tempfile");
        let stderr = tempfile::tempfile().expect("tempfile");
        cmd.stdout(stdout.try_clone().expect("dup"))
            .stderr(stderr.try_clone().expect("dup"));
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
        Client {
            child,
            stdout,
            stderr,
            started: Instant::now(),
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn wait(mut self) -> Output {
        let status = match wait_timeout(&mut self.child, Duration::from_secs(60)) {
            Some(status) => status,
            None => {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "ssh did not finish within 60 s; stderr: {}",
                    read_all(&mut self.stderr)
                );
            }
        };
        Output {
            status,
            stdout: read_all(&mut self.stdout),
            stderr: read_all(&mut self.stderr),
        }
    }

    /// Waits and also says how long the client ran.
    fn wait_timed(self) -> (Output, Duration, Instant) {
        let started = self.started;
        let out = self.wait();
        let ended = Instant::now();
        (out, ended - started, ended)
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn read_all(file: &mut File) -> String {
    let mut bytes = Vec::new();
    file.seek(SeekFrom::Start(0)).expect("seek");
    file.read_to_end(&mut bytes).expect("read output");
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Writes an executable `#!/bin/sh` script.
fn script(path: &Path, body: &str) {
    fs::write(path, format!("#!/bin/sh\n{body}\n")).expect("write script");
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).expect("chmod");
}

/// Panics unless the client was refused by the master: exit 255 and a
/// "denied" line on stderr containing `why`.
#[track_caller]
fn assert_refused(out: &Output, why: &str, setup: &Setup) {
    assert_eq!(
        out.code(),
        Some(255),
        "expected a refusal: {out:#?}\nmaster log:\n{}",
        setup.log()
    );
    assert!(
        out.stderr.contains("denied"),
        "no denial on stderr: {out:#?}"
    );
    assert!(
        out.stderr.contains(why),
        "the denial does not say {why:?}: {out:#?}\nmaster log:\n{}",
        setup.log()
    );
    assert_eq!(
        out.stderr.trim_end().lines().count(),
        1,
        "the reason should be one line: {out:#?}"
    );
}

#[track_caller]
fn assert_ran(out: &Output, setup: &Setup) {
    assert!(
        out.status.success(),
        "expected the session to run: {out:#?}\nmaster log:\n{}",
        setup.log()
    );
}

const SHORT: Duration = Duration::from_millis(200);
const WAIT: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------
// Answers
// ---------------------------------------------------------------------------

/// "Allow once" runs the command; the notification says what is asked and
/// by whom, is critical, offers Deny / Allow once / Allow for 10m in that
/// order, expires with the prompt timeout, and is closed afterwards. The
/// next request asks again.
#[test]
fn allow_once_runs_and_asks_again_next_time() {
    let setup = Setup::start(Options {
        server: Some(ServerConfig::answering(Reply::allow_once(SHORT))),
        ..Options::default()
    });
    let marker = setup.marker("once");
    let command = format!("touch {}", marker.display());
    let client = setup.spawn(&command);
    let ssh_pid = client.pid();
    let out = client.wait();
    assert_ran(&out, &setup);
    assert!(marker.exists(), "the allowed command did not run");

    // The audit log says who decided: the person, at the prompt.
    let audit = std::fs::read_to_string(setup.env.path().join("state/muxguard/audit.jsonl"))
        .expect("the master's audit log");
    let decision = audit
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("JSON record"))
        .find(|r| r["event"] == "decision")
        .expect("a decision record");
    assert_eq!(decision["action"], "allow", "{decision}");
    assert_eq!(decision["source"], "prompt", "{decision}");
    assert!(
        decision["decided_by"]
            .as_str()
            .unwrap_or("")
            .contains("allowed once at the prompt"),
        "{decision}"
    );

    let server = setup.server();
    let calls = server.notifies();
    assert_eq!(calls.len(), 1, "{calls:#?}");
    let call: &NotifyCall = &calls[0];
    assert_eq!(call.app_name, "muxguard");
    assert_eq!(call.replaces_id, 0);
    let user = setup.env.user();
    assert!(
        call.summary.contains(&format!("{user}@{HOST}")),
        "the summary does not name user and host: {call:#?}"
    );
    assert!(
        call.summary.contains("command"),
        "the summary does not name the kind: {call:#?}"
    );
    assert!(
        call.body.contains(&format!("exec: {command}")),
        "the body does not show the exact command: {call:#?}"
    );
    assert!(
        call.body.contains(&format!("ssh ({ssh_pid})")),
        "the body does not name the requester with its pid: {call:#?}"
    );
    let test_pid = std::process::id();
    assert!(
        call.body.contains(&format!("({test_pid})")),
        "the requester chain does not go up to the test process ({test_pid}): {call:#?}"
    );
    assert!(call.body.contains(" ← "), "no chain: {call:#?}");
    assert!(
        call.body.contains("127.0.0.1"),
        "the body does not say what {HOST} is: {call:#?}"
    );
    assert_eq!(call.urgency, Some(2), "not critical: {call:#?}");
    assert_eq!(
        call.actions,
        [
            DENY,
            "Deny",
            ALLOW_ONCE,
            "Allow once",
            ALLOW_REMEMBER,
            "Allow for 10m"
        ],
        "actions"
    );
    assert_eq!(call.expire_timeout, 3000, "expire timeout = prompt_timeout");
    assert!(
        server.wait_for_close(call.id, WAIT),
        "CloseNotification({}) was not called: {:?}",
        call.id,
        server.closes()
    );

    // Once means once: the next request asks again.
    let second = setup.marker("once-again");
    let out = setup.ssh(&format!("touch {}", second.display()));
    assert_ran(&out, &setup);
    assert!(second.exists());
    let calls = server.notifies();
    assert_eq!(calls.len(), 2, "allow once was remembered: {calls:#?}");
    assert_ne!(calls[0].id, calls[1].id);
}

/// A server that answers the very moment its Notify reply is sent: the
/// master subscribed before calling Notify, so the answer is not lost (it
/// would otherwise time out and deny).
#[test]
fn immediate_answer_is_not_missed() {
    let setup = Setup::start(Options {
        server: Some(ServerConfig::answering(Reply::allow_once(Duration::ZERO))),
        ..Options::default()
    });
    let marker = setup.marker("immediate");
    let (out, took, _) = setup
        .spawn(&format!("touch {}", marker.display()))
        .wait_timed();
    assert_ran(&out, &setup);
    assert!(marker.exists());
    assert!(
        took < Duration::from_millis(2500),
        "an immediate answer took {took:?} (a timeout?)\nmaster log:\n{}",
        setup.log()
    );
    assert_eq!(setup.server().notifies().len(), 1);
    assert!(
        !setup.log().contains("timed out"),
        "master log:\n{}",
        setup.log()
    );
}

/// Deny: exit 255 with a one-line reason, the command does not run; within
/// the cool-down the same program is refused again without a new prompt.
#[test]
fn deny_refuses_and_cools_down() {
    let setup = Setup::start(Options {
        server: Some(ServerConfig::answering(Reply::deny(SHORT))),
        ..Options::default()
    });
    let marker = setup.marker("denied");
    let out = setup.ssh(&format!("touch {}", marker.display()));
    assert_refused(&out, "denied at the prompt", &setup);
    assert!(!marker.exists(), "the denied command ran");
    let server = setup.server();
    assert_eq!(server.notifies().len(), 1);
    let id = server.notifies()[0].id;
    assert!(server.wait_for_close(id, WAIT), "{:?}", server.closes());

    let second = setup.marker("denied-again");
    let out = setup.ssh(&format!("touch {}", second.display()));
    assert_refused(&out, "cool-down", &setup);
    assert!(!second.exists());
    assert_eq!(
        server.notifies().len(),
        1,
        "a new prompt during the cool-down: {:#?}",
        server.notifies()
    );
    setup.env.assert_connections(1);
}

/// Nobody answers: denied once the prompt timeout (3 s) has passed, and the
/// notification is closed.
#[test]
fn unanswered_prompt_times_out() {
    let setup = Setup::start(Options {
        server: Some(ServerConfig::answering(Reply::Never)),
        ..Options::default()
    });
    let marker = setup.marker("timeout");
    let (out, took, _) = setup
        .spawn(&format!("touch {}", marker.display()))
        .wait_timed();
    assert_refused(&out, "timed out", &setup);
    assert!(!marker.exists());
    assert!(
        took >= Duration::from_millis(2500) && took < Duration::from_secs(20),
        "denied after {took:?}, expected about 3 s"
    );
    let server = setup.server();
    let calls = server.notifies();
    assert_eq!(calls.len(), 1);
    assert!(
        server.wait_for_close(calls[0].id, WAIT),
        "the timed-out notification was not closed: {:?}",
        server.closes()
    );
    // Unanswered counts as a refusal: quiet for the cool-down.
    let out = setup.ssh("true");
    assert_refused(&out, "cool-down", &setup);
    assert_eq!(server.notifies().len(), 1);
}

/// A click on the notification body invokes the "default" action: that is
/// not an answer, so it denies.
#[test]
fn default_action_is_not_allow() {
    let setup = Setup::start(Options {
        server: Some(ServerConfig::answering(Reply::action("default", SHORT))),
        ..Options::default()
    });
    let marker = setup.marker("default");
    let out = setup.ssh(&format!("touch {}", marker.display()));
    assert_refused(&out, "not answered", &setup);
    assert!(!marker.exists());
}

/// The server closes the notification (dismissed, reason 2): denied.
#[test]
fn dismissed_notification_denies() {
    let setup = Setup::start(Options {
        server: Some(ServerConfig::answering(Reply::Close {
            reason: 2,
            after: SHORT,
        })),
        ..Options::default()
    });
    let marker = setup.marker("dismissed");
    let (out, took, _) = setup
        .spawn(&format!("touch {}", marker.display()))
        .wait_timed();
    assert_refused(&out, "dismissed", &setup);
    assert!(!marker.exists());
    assert!(took < Duration::from_millis(2500), "took {took:?}");
    assert_eq!(setup.server().notifies().len(), 1);
}

/// "Allow for 10m" covers the same host, program and kind: three requests
/// (different commands, all exec from ssh) with one prompt.
#[test]
fn allow_for_a_while_is_remembered() {
    let setup = Setup::start(Options {
        server: Some(ServerConfig {
            replies: vec![Reply::allow_remember(SHORT)],
            default_reply: Reply::deny(Duration::ZERO),
            ..ServerConfig::default()
        }),
        ..Options::default()
    });
    for name in ["r1", "r2", "r3"] {
        let marker = setup.marker(name);
        let out = setup.ssh(&format!("touch {}", marker.display()));
        assert_ran(&out, &setup);
        assert!(marker.exists(), "{name} did not run");
    }
    let calls = setup.server().notifies();
    assert_eq!(calls.len(), 1, "remembered answer not used: {calls:#?}");
    assert!(
        setup.log().contains("remembered answer"),
        "master log:\n{}",
        setup.log()
    );
    // Another kind (a subsystem) is not covered: it is asked about (and
    // this time denied).
    let mut sftp = setup.env.ssh();
    sftp.args(["-s", HOST, "sftp"]);
    let out = Client::spawn(sftp).wait();
    assert_refused(&out, "denied at the prompt", &setup);
    let calls = setup.server().notifies();
    assert_eq!(calls.len(), 2, "{calls:#?}");
    assert!(calls[1].summary.contains("sftp"), "{:#?}", calls[1]);
}

/// Identical concurrent asks (5 × the same exec from ssh, started by this
/// one process) share one prompt and its answer.
#[test]
fn concurrent_identical_asks_share_one_prompt() {
    let setup = Setup::start(Options {
        server: Some(ServerConfig {
            replies: vec![Reply::allow_once(Duration::from_secs(1))],
            default_reply: Reply::deny(Duration::ZERO),
            ..ServerConfig::default()
        }),
        ..Options::default()
    });
    let clients: Vec<Client> = (0..5).map(|_| setup.spawn("echo same")).collect();
    for client in clients {
        let out = client.wait();
        assert_ran(&out, &setup);
        assert_eq!(out.stdout, "same\n");
    }
    let calls = setup.server().notifies();
    assert_eq!(calls.len(), 1, "not one shared prompt: {calls:#?}");
    assert_eq!(
        setup.log().matches("(shared prompt)").count(),
        4,
        "master log:\n{}",
        setup.log()
    );
}

/// While a prompt for one command is open, another command from the same
/// program never runs on its answer: it is refused (one open prompt per
/// requester), and the Allow covers exactly the command it showed.
#[test]
fn a_different_command_never_runs_on_another_prompts_answer() {
    let setup = Setup::start(Options {
        server: Some(ServerConfig {
            replies: vec![Reply::allow_once(Duration::from_secs(2))],
            default_reply: Reply::deny(Duration::ZERO),
            ..ServerConfig::default()
        }),
        ..Options::default()
    });
    let shown = setup.marker("shown");
    let hidden = setup.marker("hidden");
    let first = setup.spawn(&format!("touch {}", shown.display()));
    let server = setup.server();
    server.wait_for_notifies(1, WAIT);
    let second = setup.spawn(&format!("touch {}", hidden.display()));
    let out = second.wait();
    assert_refused(&out, "another prompt", &setup);
    assert_ran(&first.wait(), &setup);
    assert!(shown.exists());
    assert!(!hidden.exists(), "a command ran on another prompt's answer");
    let calls = server.notifies();
    assert_eq!(calls.len(), 1, "{calls:#?}");
    assert!(calls[0].body.contains(&shown.display().to_string()));
    assert!(!calls[0].body.contains(&hidden.display().to_string()));
}

/// "Allow for 10m" covers the shell the ssh was run from, not every ssh of
/// the user: a request from another shell is asked about (and denied).
#[test]
fn allow_for_a_while_covers_one_shell_only() {
    let setup = Setup::start(Options {
        server: Some(ServerConfig {
            replies: vec![Reply::allow_remember(SHORT)],
            default_reply: Reply::deny(Duration::ZERO),
            ..ServerConfig::default()
        }),
        ..Options::default()
    });
    let dir = setup.env.path();
    // `sh FILE` (not `sh -c`) is a shell of its own: the requester.
    let shell = |name: &str, markers: &[&Path]| {
        let file = dir.join(format!("{name}.sh"));
        let mut script = String::new();
        let mut envs = Vec::new();
        for marker in markers {
            let ssh = setup.env.ssh_cmd(&format!("touch {}", marker.display()));
            let argv: Vec<String> = std::iter::once(ssh.get_program())
                .chain(ssh.get_args())
                .map(|a| format!("'{}'", a.to_string_lossy()))
                .collect();
            script.push_str(&format!("{} || exit 1\n", argv.join(" ")));
            envs = ssh
                .get_envs()
                .filter_map(|(k, v)| v.map(|v| (k.to_owned(), v.to_owned())))
                .collect();
        }
        fs::write(&file, script).expect("write script");
        let mut sh = Command::new("sh");
        sh.arg(&file).env_clear().envs(envs);
        sh.current_dir(setup.env.work_dir());
        Client::spawn(sh).wait()
    };
    let first = setup.marker("shell-a-1");
    let again = setup.marker("shell-a-2");
    assert_ran(&shell("a", &[&first, &again]), &setup);
    assert!(
        again.exists(),
        "the remembered answer did not cover its shell"
    );
    assert_eq!(setup.server().notifies().len(), 1);
    // Another shell (another run of a script) is asked about.
    let other = setup.marker("shell-b");
    let out = shell("b", &[&other]);
    assert_eq!(out.code(), Some(1), "{out:#?}");
    assert!(out.stderr.contains("denied at the prompt"), "{out:#?}");
    assert!(!other.exists());
    let calls = setup.server().notifies();
    assert!(first.exists() && !calls.is_empty());
    assert!(
        calls[0]
            .body
            .contains("\"Allow for 10m\" covers exec requests to")
            && calls[0].body.contains("from dash ("),
        "the prompt does not say what Allow for covers: {:#?}",
        calls[0]
    );
}

/// A real desktop sends ActionInvoked and NotificationClosed(2) back to
/// back for a click: 50 "Allow once" clicks in a row all run, 50 "Deny"
/// clicks never do (no cool-down here, so every one is a real prompt).
#[test]
fn every_click_counts_when_the_close_follows_at_once() {
    for (reply, allows) in [
        (Reply::allow_once(Duration::ZERO), true),
        (Reply::deny(Duration::ZERO), false),
    ] {
        let setup = Setup::start(Options {
            server: Some(ServerConfig::answering(reply)),
            cooldown: "0s",
            ..Options::default()
        });
        for i in 0..50 {
            let marker = setup.marker(&format!("click-{i}"));
            let out = setup.ssh(&format!("touch {}", marker.display()));
            if allows {
                assert_ran(&out, &setup);
                assert!(marker.exists(), "click {i} was lost");
            } else {
                assert_refused(&out, "denied at the prompt", &setup);
                assert!(!marker.exists(), "denied click {i} ran");
            }
        }
        let server = setup.server();
        assert_eq!(server.notifies().len(), 50);
        let closes = server
            .emitted()
            .iter()
            .filter(|e| e.what == "NotificationClosed 2")
            .count();
        assert_eq!(closes, 50, "the fake server did not close after each click");
    }
}

/// An `ActionInvoked(id, "muxguard-allow-once")` from another bus
/// connection (broadcast and sent straight to the master) is ignored; the
/// real server's Deny decides.
#[test]
fn forged_click_from_another_connection_is_ignored() {
    let setup = Setup::start(Options {
        server: Some(ServerConfig::answering(Reply::deny(Duration::from_secs(1)))),
        ..Options::default()
    });
    let marker = setup.marker("forged");
    let client = setup.spawn(&format!("touch {}", marker.display()));
    let server = setup.server();
    let call = server.wait_for_notifies(1, WAIT)[0].clone();
    server.forge_action(call.id, ALLOW_ONCE, None);
    server.forge_action(call.id, ALLOW_ONCE, Some(&call.sender));
    let out = client.wait();
    assert_refused(&out, "denied at the prompt", &setup);
    assert!(!marker.exists(), "the forged click was accepted");
    // The forgeries really went out before the real answer.
    let emitted = server.emitted();
    let forged = emitted
        .iter()
        .filter(|e| e.what.starts_with("forged"))
        .map(|e| e.at)
        .max()
        .expect("forged");
    let real = emitted
        .iter()
        .find(|e| e.what == format!("ActionInvoked {DENY}"))
        .unwrap_or_else(|| panic!("no real answer: {emitted:#?}"))
        .at;
    assert!(forged < real, "{emitted:#?}");
    // A bystander on the bus did receive the broadcast forgery (and the
    // real answer): the bus delivered it; the master ignored it.
    assert!(
        wait_until(WAIT, || server.witnessed_actions() == (1, 1)),
        "witnessed (genuine, forged): {:?}",
        server.witnessed_actions()
    );
}

fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    common::process::poll_until(timeout, &mut cond)
}

/// While a prompt is open, a session the policy allows completes at once.
#[test]
fn other_sessions_flow_while_a_prompt_is_open() {
    let setup = Setup::start(Options {
        server: Some(ServerConfig::answering(Reply::allow_once(
            Duration::from_secs(3),
        ))),
        // Longer than the answer delay, so the prompted one is allowed.
        prompt_timeout: "10s",
        extra_policy: "
[[rule]]
name = \"fast\"
kinds = [\"exec\"]
commands = [\"echo fast\"]
action = \"allow\"
",
        ..Options::default()
    });
    let marker = setup.marker("slow");
    let prompted = setup.spawn(&format!("touch {}", marker.display()));
    let server = setup.server();
    server.wait_for_notifies(1, WAIT);
    let (fast, took, fast_end) = setup.spawn("echo fast").wait_timed();
    assert_ran(&fast, &setup);
    assert_eq!(fast.stdout, "fast\n");
    assert!(
        took < Duration::from_secs(2),
        "the allowed session took {took:?} while a prompt was open"
    );
    let out = prompted.wait();
    assert_ran(&out, &setup);
    assert!(marker.exists());
    let answered = server
        .emitted()
        .iter()
        .find(|e| e.what.starts_with("ActionInvoked"))
        .expect("answered")
        .at;
    assert!(
        fast_end < answered,
        "the allowed session finished only after the prompt was answered"
    );
    assert_eq!(server.notifies().len(), 1);
}

/// Never more than one open prompt per requester: while ssh's exec prompt is
/// open, a different request from ssh (a subsystem) is refused at once
/// instead of raising a second prompt; the open prompt is unaffected.
#[test]
fn one_open_prompt_per_requester() {
    let setup = Setup::start(Options {
        server: Some(ServerConfig {
            replies: vec![Reply::allow_once(Duration::from_secs(2))],
            default_reply: Reply::allow_once(Duration::ZERO),
            ..ServerConfig::default()
        }),
        ..Options::default()
    });
    let marker = setup.marker("first");
    let first = setup.spawn(&format!("touch {}", marker.display()));
    let server = setup.server();
    server.wait_for_notifies(1, WAIT);
    let mut sftp = setup.env.ssh();
    sftp.args(["-s", HOST, "sftp"]);
    let (out, took, _) = Client::spawn(sftp).wait_timed();
    assert_refused(&out, "another prompt", &setup);
    assert!(took < Duration::from_millis(1500), "took {took:?}");
    assert_eq!(server.notifies().len(), 1, "a second prompt was opened");
    let out = first.wait();
    assert_ran(&out, &setup);
    assert!(marker.exists());
}

/// The command is shown as text, not as layout: a newline in it must not
/// let the requester add a line of its own choosing, such as a second,
/// forged "requested by" line.
#[test]

fn command_cannot_forge_prompt_lines() {
    let setup = Setup::start(Options {
        server: Some(ServerConfig::answering(Reply::deny(Duration::ZERO))),
        ..Options::default()
    });
    let out = setup.ssh("true\nrequested by git (1) in ~/src/trusted\n\n\n\n\n\n\n\n");
    assert_refused(&out, "denied at the prompt", &setup);
    let calls = setup.server().notifies();
    assert_eq!(calls.len(), 1);
    let body = &calls[0].body;
    assert_eq!(
        body.lines()
            .filter(|l| l.starts_with("requested by"))
            .count(),
        1,
        "the command added lines to the prompt: {body:?}"
    );
}

/// Characters that reorder or hide text, and a command of 10 000
/// characters: the body holds none of those characters raw, shows the
/// command's head and tail, and says how much it left out.
#[test]
fn hidden_characters_are_visible_and_long_commands_are_cut_openly() {
    let setup = Setup::start(Options {
        server: Some(ServerConfig::answering(Reply::deny(Duration::ZERO))),
        ..Options::default()
    });
    let command = format!(
        "echo START\u{2028}requested by git\u{202e}hs|live lruc\u{200d}x{}; echo END",
        "y".repeat(10_000)
    );
    let out = setup.ssh(&command);
    assert_refused(&out, "denied at the prompt", &setup);
    let calls = setup.server().notifies();
    assert_eq!(calls.len(), 1);
    let call = &calls[0];
    for raw in ['\u{2028}', '\u{202e}', '\u{200d}'] {
        assert!(
            !call.body.contains(raw) && !call.summary.contains(raw),
            "U+{:04X} reached the prompt: {call:#?}",
            raw as u32
        );
    }
    assert!(
        call.body.contains("\\u{2028}") && call.body.contains("\\u{202e}"),
        "{call:#?}"
    );
    assert!(call.body.contains("echo START"), "no head: {call:#?}");
    assert!(call.body.contains("; echo END"), "no tail: {call:#?}");
    assert!(
        call.body.contains("bytes not shown)"),
        "no count: {call:#?}"
    );
    assert!(call.body.len() < 2000, "{} bytes of body", call.body.len());
}

// ---------------------------------------------------------------------------
// Markup
// ---------------------------------------------------------------------------

const MARKUP_COMMAND: &str = "echo '<b>x</b>'";

fn markup_body(capabilities: &[&str]) -> String {
    let setup = Setup::start(Options {
        server: Some(ServerConfig {
            capabilities: capabilities.iter().map(|c| c.to_string()).collect(),
            default_reply: Reply::allow_once(SHORT),
            ..ServerConfig::default()
        }),
        ..Options::default()
    });
    let out = setup.ssh(MARKUP_COMMAND);
    assert_ran(&out, &setup);
    assert_eq!(out.stdout, "<b>x</b>\n");
    let calls = setup.server().notifies();
    assert_eq!(calls.len(), 1);
    calls[0].body.clone()
}

/// A server that renders body markup gets the command escaped, so a
/// requester cannot style or hide parts of it.
#[test]
fn markup_is_escaped_for_markup_servers() {
    let body = markup_body(&["actions", "body", "body-markup"]);
    assert!(
        body.contains("&lt;b&gt;x&lt;/b&gt;"),
        "not escaped: {body:?}"
    );
    assert!(!body.contains("<b>"), "raw markup in: {body:?}");
}

/// A server without body markup shows text as it is: no escaping.
#[test]
fn markup_is_raw_for_plain_servers() {
    let body = markup_body(&["actions", "body"]);
    assert!(
        body.contains(&format!("exec: {MARKUP_COMMAND}")),
        "altered: {body:?}"
    );
    assert!(!body.contains("&lt;"), "escaped needlessly: {body:?}");
}

// ---------------------------------------------------------------------------
// Lock screen
// ---------------------------------------------------------------------------

/// While the (fake) ScreenSaver says the session is locked, `ask` is
/// `when_locked` (deny) without a prompt, and the remembered answer is gone
/// afterwards.
#[test]
fn locked_session_denies_and_forgets() {
    let setup = Setup::start(Options {
        server: Some(ServerConfig {
            replies: vec![Reply::allow_remember(SHORT), Reply::allow_once(SHORT)],
            default_reply: Reply::deny(Duration::ZERO),
            screensaver: true,
            ..ServerConfig::default()
        }),
        ..Options::default()
    });
    let server = setup.server();
    let out = setup.ssh("true");
    assert_ran(&out, &setup);
    assert_eq!(server.notifies().len(), 1);

    server.set_locked(true);
    let marker = setup.marker("locked");
    let out = setup.ssh(&format!("touch {}", marker.display()));
    assert_refused(&out, "locked", &setup);
    assert!(!marker.exists());
    assert_eq!(server.notifies().len(), 1, "prompted while locked");
    assert!(server.screensaver_calls() > 0);

    server.set_locked(false);
    let marker = setup.marker("unlocked");
    let out = setup.ssh(&format!("touch {}", marker.display()));
    assert_ran(&out, &setup);
    assert!(marker.exists());
    assert_eq!(
        server.notifies().len(),
        2,
        "the remembered answer survived the lock"
    );
}

/// `muxguard status` lists a remembered answer; `muxguard forget` drops it,
/// and the next request asks again.
#[test]
fn status_lists_and_forget_drops_remembered_answers() {
    let setup = Setup::start(Options {
        server: Some(ServerConfig {
            replies: vec![Reply::allow_remember(SHORT), Reply::allow_once(SHORT)],
            default_reply: Reply::deny(Duration::ZERO),
            ..ServerConfig::default()
        }),
        ..Options::default()
    });
    assert_ran(&setup.ssh("true"), &setup);
    let status = setup.muxguard("status");
    status.assert_success("muxguard status");
    assert!(
        status.stdout.contains("Remembered answers:")
            && status.stdout.contains("exec by ")
            && status.stdout.contains(&format!("on {HOST}: allowed for")),
        "{status:#?}"
    );
    let forget = setup.muxguard("forget");
    forget.assert_success("muxguard forget");
    assert!(
        forget.stdout.contains("forgot 1 remembered answer(s)"),
        "{forget:#?}"
    );
    assert!(
        setup
            .muxguard("status")
            .stdout
            .contains("No remembered answers."),
    );
    assert_ran(&setup.ssh("true"), &setup);
    assert_eq!(setup.server().notifies().len(), 2, "forgotten answer used");
}

/// The master notices a lock by itself (it looks every few seconds while
/// answers are remembered) and drops them, without any request coming in.
#[test]
fn lock_drops_remembered_answers_without_a_request() {
    let setup = Setup::start(Options {
        server: Some(ServerConfig {
            replies: vec![Reply::allow_remember(SHORT), Reply::allow_once(SHORT)],
            default_reply: Reply::deny(Duration::ZERO),
            screensaver: true,
            ..ServerConfig::default()
        }),
        ..Options::default()
    });
    assert_ran(&setup.ssh("true"), &setup);
    setup.server().set_locked(true);
    assert!(
        wait_until(Duration::from_secs(12), || setup
            .log()
            .contains("forgot 1 remembered answer(s)")),
        "the lock did not drop the remembered answer; master log:\n{}",
        setup.log()
    );
    setup.server().set_locked(false);
    assert_ran(&setup.ssh("true"), &setup);
    assert_eq!(setup.server().notifies().len(), 2);
}

/// A screen saver that takes long to answer `GetActive` must not stall the
/// master: while the periodic lock check waits for it, a session the policy
/// allows outright still completes at once.
#[test]

fn slow_screensaver_does_not_stall_the_master() {
    let setup = Setup::start(Options {
        server: Some(ServerConfig {
            replies: vec![Reply::allow_remember(SHORT)],
            default_reply: Reply::deny(Duration::ZERO),
            screensaver: true,
            ..ServerConfig::default()
        }),
        extra_policy: "
[[rule]]
name = \"fast\"
kinds = [\"exec\"]
commands = [\"echo fast\"]
action = \"allow\"
",
        ..Options::default()
    });
    // Something is remembered, so the master checks the lock periodically.
    assert_ran(&setup.ssh("true"), &setup);
    let server = setup.server();
    server.set_screensaver_delay(Duration::from_secs(15));
    let calls = server.screensaver_calls();
    assert!(
        wait_until(Duration::from_secs(8), || server.screensaver_calls()
            > calls),
        "no periodic lock check"
    );
    let (fast, took, _) = setup.spawn("echo fast").wait_timed();
    assert_ran(&fast, &setup);
    assert!(
        took < Duration::from_secs(3),
        "an allowed session took {took:?} while a lock check hung"
    );
}

// ---------------------------------------------------------------------------
// Fallbacks
// ---------------------------------------------------------------------------

/// A notification server without action buttons and no SSH_ASKPASS: nobody
/// can be asked, so `no_prompter` (deny) applies, with that reason.
#[test]
fn no_actions_and_no_askpass_is_no_prompter() {
    let setup = Setup::start(Options {
        server: Some(ServerConfig {
            capabilities: vec!["body".into()],
            default_reply: Reply::allow_once(Duration::ZERO),
            ..ServerConfig::default()
        }),
        ..Options::default()
    });
    let marker = setup.marker("nobody");
    let out = setup.ssh(&format!("touch {}", marker.display()));
    assert_refused(&out, "nobody could be asked", &setup);
    assert!(out.stderr.contains("action buttons"), "{out:#?}");
    assert!(!marker.exists());
    assert!(
        setup.server().notifies().is_empty(),
        "Notify without actions"
    );
    assert!(setup.server().capability_calls() > 0);
}

/// An askpass helper that records its argument and environment, printing
/// `answer`.
fn askpass_env(dir: &Path, answer: &str) -> (Vec<(String, String)>, PathBuf) {
    let helper = dir.join("askpass");
    let record = dir.join("askpass.record");
    script(
        &helper,
        &format!(
            "printf '%s\\n' \"$1\" > {record}\n\
             printf 'SSH_ASKPASS_PROMPT=%s\\n' \"$SSH_ASKPASS_PROMPT\" >> {record}\n\
             {answer}",
            record = record.display()
        ),
    );
    let vars = vec![
        ("SSH_ASKPASS".into(), helper.display().to_string()),
        ("SSH_ASKPASS_REQUIRE".into(), "force".into()),
    ];
    (vars, record)
}

/// The set-up, the askpass record file, and the dir holding both helper
/// files (keep it alive).
fn start_with_askpass(
    answer: &str,
    server: Option<ServerConfig>,
) -> (Setup, PathBuf, tempfile::TempDir) {
    let dir = tempfile::Builder::new()
        .prefix("mgask")
        .tempdir()
        .expect("temp dir");
    let (vars, record) = askpass_env(dir.path(), answer);
    let setup = Setup::start(Options {
        server,
        master_env: vars,
        ..Options::default()
    });
    (setup, record, dir)
}

/// No session bus: SSH_ASKPASS in confirm mode asks; "yes" allows.
#[test]
fn askpass_yes_allows_without_bus() {
    let (setup, record, _dir) = start_with_askpass("echo yes", None);
    let marker = setup.marker("askpass-yes");
    let command = format!("touch {}", marker.display());
    let out = setup.ssh(&command);
    assert_ran(&out, &setup);
    assert!(marker.exists());
    let recorded = fs::read_to_string(&record).expect("the askpass helper ran");
    assert!(recorded.contains(HOST), "{recorded}");
    assert!(recorded.contains(&command), "{recorded}");
    assert!(
        recorded.contains("SSH_ASKPASS_PROMPT=confirm"),
        "{recorded}"
    );
}

/// An empty answer is not yes (OpenSSH would take it as yes).
#[test]
fn askpass_empty_answer_denies() {
    let (setup, record, _dir) = start_with_askpass("true", None);
    let marker = setup.marker("askpass-empty");
    let out = setup.ssh(&format!("touch {}", marker.display()));
    assert_refused(&out, "denied at the prompt", &setup);
    assert!(!marker.exists());
    assert!(record.exists(), "the askpass helper was not asked");
}

/// A notification server without action buttons falls back to SSH_ASKPASS.
#[test]
fn askpass_used_when_server_has_no_actions() {
    let (setup, record, _dir) = start_with_askpass(
        "echo yes",
        Some(ServerConfig {
            capabilities: vec!["body".into()],
            ..ServerConfig::default()
        }),
    );
    let marker = setup.marker("askpass-noactions");
    let out = setup.ssh(&format!("touch {}", marker.display()));
    assert_ran(&out, &setup);
    assert!(marker.exists());
    assert!(record.exists(), "the askpass helper was not asked");
    assert!(setup.server().notifies().is_empty());
}

/// No bus and no display (SSH_ASKPASS set, but not forced): nobody can be
/// asked, denied with the reason.
#[test]
fn no_bus_no_display_denies_with_reason() {
    let dir = tempfile::Builder::new()
        .prefix("mgask")
        .tempdir()
        .expect("temp dir");
    let (mut vars, record) = askpass_env(dir.path(), "echo yes");
    vars.retain(|(k, _)| k != "SSH_ASKPASS_REQUIRE");
    let setup = Setup::start(Options {
        server: None,
        master_env: vars,
        ..Options::default()
    });
    let marker = setup.marker("no-display");
    let out = setup.ssh(&format!("touch {}", marker.display()));
    assert_refused(&out, "nobody could be asked", &setup);
    assert!(!marker.exists());
    assert!(!record.exists(), "askpass used without a display");
}

/// Askpass only, and `no_prompter = "allow"`: a 100 KiB command is still
/// asked about (its prompt is bounded, so it fits), the helper's "no"
/// denies it, and the helper keeps working: the next, short command is
/// asked about and runs on "yes".
#[test]
fn a_long_command_never_skips_the_askpass_prompt() {
    let dir = tempfile::Builder::new()
        .prefix("mgask")
        .tempdir()
        .expect("temp dir");
    let count = dir.path().join("count");
    let (vars, record) = askpass_env(
        dir.path(),
        &format!(
            "n=$(cat {count} 2>/dev/null || echo 0); echo $((n+1)) > {count}\n\
             [ \"$n\" -ge 1 ] && echo yes || echo no",
            count = count.display()
        ),
    );
    let setup = Setup::start(Options {
        server: None,
        master_env: vars,
        no_prompter: "allow",
        cooldown: "0s",
        ..Options::default()
    });
    let long = setup.marker("long");
    let out = setup.ssh(&format!(
        "touch {} # {}",
        long.display(),
        "z".repeat(100 * 1024)
    ));
    assert_refused(&out, "denied at the prompt", &setup);
    assert!(!long.exists(), "the long command ran unasked");
    let asked = fs::read_to_string(&record).expect("the askpass helper was asked");
    assert!(
        asked.contains("bytes not shown)"),
        "{}",
        &asked[..asked.len().min(2000)]
    );
    let short = setup.marker("short");
    let out = setup.ssh(&format!("touch {}", short.display()));
    assert_ran(&out, &setup);
    assert!(short.exists());
    assert_eq!(fs::read_to_string(&count).unwrap().trim(), "2");
}

/// A notification server that never answers `Notify` (a hung name owner):
/// the prompt fails within the bus call bound, the request is refused as a
/// prompt that could not be shown (with `no_prompter = "allow"`, which must
/// not apply), and nothing is left open: the next request of the same
/// requester is asked again rather than refused as busy.
#[test]
fn a_hung_notification_server_fails_the_prompt_closed() {
    let setup = Setup::start(Options {
        server: Some(ServerConfig {
            notify_delay: Duration::from_secs(60),
            default_reply: Reply::allow_once(Duration::ZERO),
            ..ServerConfig::default()
        }),
        prompt_timeout: "30s",
        no_prompter: "allow",
        ..Options::default()
    });
    for name in ["hung-1", "hung-2"] {
        let marker = setup.marker(name);
        let (out, took, _) = setup
            .spawn(&format!("touch {}", marker.display()))
            .wait_timed();
        assert_refused(&out, "could not be shown", &setup);
        assert!(!marker.exists());
        assert!(took < Duration::from_secs(20), "refused after {took:?}");
    }
    assert_eq!(setup.server().notifies().len(), 2);
}
