//! The hardening and the Landlock sandbox, proved on the real master
//! process: what the kernel shows of it (/proc), what another process of
//! the same (unprivileged) user can no longer do to it, and what the master
//! itself can no longer do — create sockets outside its directory, connect
//! to ports the policy never allowed, read keys — each checked by an
//! observable behaviour, with a control that shows the check can fail.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::accounts::{Account, as_user, test_user};
use common::net::TcpServer;
use common::process::{ChildGuard, wait_for};
use common::sshd::free_port;
use common::{HOST, Master, MasterKind, TestEnv, run};

const MUXGUARD: &str = env!("CARGO_BIN_EXE_muxguard");

fn proc_field(pid: u32, file: &str, prefix: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/{file}"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_default()
        .to_string()
}

fn audit_log(env: &TestEnv) -> String {
    std::fs::read_to_string(env.path().join("state/muxguard/audit.jsonl")).unwrap_or_default()
}

#[test]
fn master_runs_without_new_privileges_or_core_files() {
    if !common::selected(MasterKind::Muxguard) {
        return;
    }
    let env = TestEnv::new();
    let master = env.start_master(MasterKind::Muxguard);
    let pid = master.pid();

    let no_new_privs = proc_field(pid, "status", "NoNewPrivs:");
    assert_eq!(
        no_new_privs.split_whitespace().nth(1),
        Some("1"),
        "{no_new_privs:?}"
    );
    let core = proc_field(pid, "limits", "Max core file size");
    let fields: Vec<&str> = core.split_whitespace().collect();
    assert_eq!(fields.get(4..6), Some(&["0", "0"][..]), "{core:?}");

    let status = env.status();
    assert!(
        status.contains("fs enforced")
            && status.contains("ptrace: blocked; no_new_privs: on; core dumps: off"),
        "{status}"
    );
    // Without a policy file every forward is allowed, so no port can be
    // closed, and the report says so rather than claim it.
    assert!(status.contains("net NOT enforced"), "{status}");
    let start = audit_log(&env);
    assert!(start.contains("fs enforced"), "{start}");
    // A session still works in the hardened master.
    let out = run(&mut env.ssh_cmd("echo still-works"));
    out.assert_success("session after hardening");
    assert_eq!(out.stdout.trim(), "still-works");
}

// ---------------------------------------------------------------------------
// Another process of the same, unprivileged, user
// ---------------------------------------------------------------------------

/// Hands the test's files to `user` (the server's own directory stays
/// root's) and lets it into the temp dir.
fn give_to(env: &TestEnv, Account { uid, gid }: Account) {
    for entry in std::fs::read_dir(env.path())
        .expect("read temp dir")
        .flatten()
    {
        if entry.file_name() == "sshd" {
            continue;
        }
        let ok = Command::new("chown")
            .arg("-R")
            .arg(format!("{uid}:{gid}"))
            .arg(entry.path())
            .status()
            .expect("chown");
        assert!(ok.success());
    }
    let ok = Command::new("chmod")
        .arg("0711")
        .arg(env.path())
        .status()
        .expect("chmod");
    assert!(ok.success());
}

/// Starts our master as `user` (after [`give_to`]) and waits until it
/// answers that user's `-O check`. Returns it and its log's path.
fn start_master_as(env: &TestEnv, user: Account) -> (ChildGuard, std::path::PathBuf) {
    let mut cmd = env.command(MUXGUARD);
    cmd.arg("connect")
        .arg("-F")
        .arg(env.config_path())
        .args(["--foreground", HOST]);
    let log = env.logs_dir().join("unprivileged-master.log");
    let out = std::fs::File::create(&log).expect("log");
    as_user(&mut cmd, user)
        .stdout(out.try_clone().expect("dup"))
        .stderr(out);
    let master = ChildGuard::spawn(cmd, "unprivileged master");
    wait_for(
        "the unprivileged master to answer",
        Duration::from_secs(30),
        || {
            run(as_user(env.ssh().args(["-O", "check", HOST]), user))
                .status
                .success()
        },
    );
    (master, log)
}

/// Tries, as `user`, what sshjack-style hijacking needs: ptrace-attach to
/// `pid`, open its memory, read its environment. One line per attempt:
/// `attach ok` or `attach EPERM`, and so on.
fn hijack_attempts(env: &TestEnv, user: Account, pid: u32) -> String {
    const PROBE: &str = r#"
import ctypes, errno, os, sys
pid = int(sys.argv[1])
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
name = lambda e: errno.errorcode.get(e, str(e))
if libc.ptrace(16, pid, None, None) == 0:
    os.waitpid(pid, 0)
    libc.ptrace(17, pid, None, None)
    print("attach ok")
else:
    print("attach " + name(ctypes.get_errno()))
for f in ("mem", "environ"):
    try:
        open("/proc/%d/%s" % (pid, f), "rb").close()
        print(f + " ok")
    except OSError as e:
        print(f + " " + name(e.errno))
"#;
    let out = run(as_user(
        env.command("python3")
            .args(["-c", PROBE])
            .arg(pid.to_string()),
        user,
    ));
    out.assert_success("the hijack probe");
    out.stdout
}

#[test]
fn same_user_cannot_ptrace_the_master_or_read_its_memory() {
    if !common::selected(MasterKind::Muxguard) {
        return;
    }
    let user = test_user();
    let env = TestEnv::new();
    give_to(&env, user);

    // The control: an ordinary process of that user can be hijacked, so a
    // refusal below is the master's doing, not this machine's.
    let mut victim = as_user(env.command("sleep").arg("60"), user)
        .spawn()
        .expect("sleep");
    let control = hijack_attempts(&env, user, victim.id());
    let _ = victim.kill();
    let _ = victim.wait();
    assert_eq!(control, "attach ok\nmem ok\nenviron ok\n");

    let (master, log) = start_master_as(&env, user);
    let pid = master.id();
    assert_eq!(
        hijack_attempts(&env, user, pid),
        "attach EPERM\nmem EACCES\nenviron EACCES\n",
        "master log:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let no_new_privs = proc_field(pid, "status", "NoNewPrivs:");
    assert_eq!(no_new_privs.split_whitespace().nth(1), Some("1"));
    // And it still serves its user.
    let out = run(as_user(&mut env.ssh_cmd("echo served"), user));
    out.assert_success("session through the unprivileged master");
    assert_eq!(out.stdout.trim(), "served");
}

// ---------------------------------------------------------------------------
// Landlock: what the master itself can no longer do
// ---------------------------------------------------------------------------

/// The user policy of `env`'s master.
fn write_user_policy(env: &TestEnv, text: &str) {
    let dir = env.path().join("config/muxguard");
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(dir.join("policy.toml"), text).expect("write policy");
}

fn write_policy(env: &TestEnv, ports: &[u16]) {
    let dir = env.path().join("config/muxguard");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
    std::fs::write(
        dir.join("policy.toml"),
        format!(
            "[defaults]\naction = \"deny\"\n\n\
             [[rule]]\nname = \"sessions\"\nkinds = [\"shell\", \"exec\"]\naction = \"allow\"\n\n\
             [[rule]]\nname = \"reverse tunnels\"\nkinds = [\"forward-remote\"]\n\
             ports = [{}]\naction = \"allow\"\n",
            ports.join(", ")
        ),
    )
    .expect("write policy");
}

/// Sends a line through 127.0.0.1:`port` and returns what came back
/// (empty if the connection was dropped).
fn echo_through(port: u16) -> Vec<u8> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let _ = stream.write_all(b"ping\n");
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let mut back = Vec::new();
    let _ = stream.read_to_end(&mut back);
    back
}

/// The sandbox's TCP rules come from the policy at start-up. A policy
/// widened while the master runs lets a new `-R` through the policy check,
/// but the kernel still refuses the master's connection to the new port —
/// defence in depth — and the audit log says why.
#[test]
fn remote_forward_to_a_port_the_policy_did_not_allow_is_blocked_by_the_sandbox() {
    if !common::selected(MasterKind::Muxguard) {
        return;
    }
    let env = TestEnv::new();
    let (allowed, other) = (TcpServer::echo(), TcpServer::echo());
    write_policy(&env, &[allowed.port()]);
    let _master = env.start_master(MasterKind::Muxguard);
    let status = env.status();
    assert!(status.contains("net enforced"), "{status}");

    let (remote_allowed, remote_other) = (free_port(), free_port());
    let forward = |remote: u16, target: u16| {
        run(env.ssh().args([
            "-O",
            "forward",
            "-R",
            &format!("{remote}:127.0.0.1:{target}"),
            HOST,
        ]))
    };
    forward(remote_allowed, allowed.port()).assert_success("-R to the allowed port");
    assert_eq!(echo_through(remote_allowed), b"ping\n");

    // Not allowed at all yet: the policy refuses.
    let refused = forward(remote_other, other.port());
    assert!(!refused.status.success(), "{refused:#?}");

    write_policy(&env, &[allowed.port(), other.port()]);
    forward(remote_other, other.port()).assert_success("-R after widening the policy");
    assert_eq!(
        echo_through(remote_other),
        b"",
        "the sandbox let it through"
    );
    wait_for("the audit record", Duration::from_secs(10), || {
        audit_log(&env).contains("blocked by the sandbox")
    });
    let record = audit_log(&env)
        .lines()
        .find(|l| l.contains("blocked by the sandbox"))
        .expect("record")
        .to_owned();
    assert!(
        record.contains("\"event\":\"forward_connection\""),
        "{record}"
    );
    assert!(
        record.contains(&format!("127.0.0.1:{}", other.port())),
        "{record}"
    );
    // The allowed one is unaffected.
    assert_eq!(echo_through(remote_allowed), b"ping\n");
}

/// A Unix-socket `-L` into ~/.ssh: OpenSSH's master creates it; muxguard's
/// sandbox refuses (it may create sockets only beside its control socket),
/// says so, and creates nothing.
#[test]
fn master_cannot_create_sockets_outside_its_control_directory() {
    for kind in [MasterKind::OpenSsh, MasterKind::Muxguard] {
        if !common::selected(kind) {
            continue;
        }
        let env = TestEnv::new();
        let echo = TcpServer::echo();
        let _master = env.start_master(kind);
        let ssh_dir = env.path().join("home/.ssh");
        std::fs::create_dir_all(&ssh_dir).expect("mkdir");
        let planted = ssh_dir.join("agent.sock");
        let out = run(env.ssh().args([
            "-O",
            "forward",
            "-L",
            &format!("{}:127.0.0.1:{}", planted.display(), echo.port()),
            HOST,
        ]));
        match kind {
            MasterKind::OpenSsh => {
                out.assert_success("OpenSSH creates the socket");
                assert!(planted.exists());
            }
            MasterKind::Muxguard => {
                assert!(!out.status.success(), "{out:#?}");
                assert!(
                    out.stderr.contains("blocked by the sandbox")
                        && out
                            .stderr
                            .contains(&env.control_dir().display().to_string()),
                    "{out:#?}"
                );
                assert!(!planted.exists());
                // Beside the control socket it works.
                let beside = env.control_dir().join("fwd.sock");
                run(env.ssh().args([
                    "-O",
                    "forward",
                    "-L",
                    &format!("{}:127.0.0.1:{}", beside.display(), echo.port()),
                    HOST,
                ]))
                .assert_success("-L beside the control socket");
                assert!(beside.exists());
            }
        }
    }
}

/// `muxguard sandbox` applies the master's own rule set (same functions)
/// to a short-lived process: a planted key cannot be read and nothing can
/// be written outside the master's directories, while the policy file and
/// the state directory stay usable.
#[test]
fn sandbox_rules_keep_keys_unreadable_and_files_unwritable() {
    let env = TestEnv::new();
    let ssh_dir = env.path().join("home/.ssh");
    std::fs::create_dir_all(&ssh_dir).expect("mkdir");
    let key = ssh_dir.join("id_planted");
    std::fs::write(&key, "PRIVATE KEY\n").expect("plant");
    write_policy(&env, &[8080]);
    let policy = env.path().join("config/muxguard/policy.toml");
    let state_file = env.path().join("state/muxguard/probe");
    let outside = env.work_dir().join("written");
    let in_ssh = ssh_dir.join("authorized_keys");
    // The control: without the sandbox all of this works.
    assert_eq!(std::fs::read_to_string(&key).unwrap(), "PRIVATE KEY\n");

    let out = run(env
        .command(MUXGUARD)
        .args(["sandbox", "-F"])
        .arg(env.config_path())
        .arg("--try-read")
        .arg(&key)
        .arg("--try-read")
        .arg(&policy)
        .arg("--try-write")
        .arg(&state_file)
        .arg("--try-write")
        .arg(&outside)
        .arg("--try-write")
        .arg(&in_ssh)
        .arg(HOST));
    out.assert_success("muxguard sandbox");
    let line = |what: &str, path: &Path| {
        let prefix = format!("{what} {}: ", path.display());
        out.stdout
            .lines()
            .find_map(|l| l.strip_prefix(&prefix).map(str::to_owned))
            .unwrap_or_else(|| panic!("no line for {prefix}: {out:#?}"))
    };
    assert!(line("read", &key).starts_with("denied"), "{out:#?}");
    assert_eq!(line("read", &policy), "allowed");
    assert_eq!(line("write", &state_file), "allowed");
    assert!(line("write", &outside).starts_with("denied"), "{out:#?}");
    assert!(line("write", &in_ssh).starts_with("denied"), "{out:#?}");
    assert!(!outside.exists() && !in_ssh.exists());
    assert!(out.stdout.contains("tcp connect ports: 8080"), "{out:#?}");
}

/// `--no-sandbox` is for debugging only: the master warns, and the audit
/// log and status say so.
#[test]
fn no_sandbox_is_loud_and_audited() {
    if !common::selected(MasterKind::Muxguard) {
        return;
    }
    let env = TestEnv::new();
    let master = Master::start_with_args(&env, MasterKind::Muxguard, &["--no-sandbox"]);
    assert!(env.status().contains("SANDBOX DISABLED"));
    let start = audit_log(&env);
    assert!(
        start.contains("\"event\":\"master_start\"") && start.contains("SANDBOX DISABLED"),
        "{start}"
    );
    let log = master.log();
    assert!(
        log.contains("WARN") && log.contains("SANDBOX DISABLED"),
        "{log}"
    );
}

/// Descriptors inherited from whatever started the master are closed: a
/// file opened on fd 100 by a wrapper shell is gone in the master, while a
/// plain program started the same way keeps it (the control).
#[test]
fn inherited_descriptors_are_closed() {
    if !common::selected(MasterKind::Muxguard) {
        return;
    }
    let env = TestEnv::new();
    let secret = env.work_dir().join("inherited");
    std::fs::write(&secret, "x").expect("write");
    let wrapped = |program: &str, args: &[&str]| {
        let mut cmd = env.command("bash");
        cmd.arg("-c")
            .arg(format!("exec 100<{}; exec \"$0\" \"$@\"", secret.display()))
            .arg(program)
            .args(args);
        cmd
    };
    let control = ChildGuard::spawn(wrapped("sleep", &["60"]), "sleep");
    let fd = |pid: u32| std::fs::read_link(format!("/proc/{pid}/fd/100")).ok();
    wait_for("the control's fd", Duration::from_secs(10), || {
        fd(control.id()).is_some()
    });

    let config = env.config_path().display().to_string();
    let master = ChildGuard::spawn(
        wrapped(MUXGUARD, &["connect", "-F", &config, "--foreground", HOST]),
        "master",
    );
    wait_for("the master to answer", Duration::from_secs(30), || {
        env.control("check").status.success()
    });
    assert_eq!(fd(master.id()), None, "the master kept the inherited fd");
}

/// The sandbox lets the master read only directories that existed when it
/// started; it creates the user's policy directory first, so a policy
/// written afterwards still takes effect (here: a deny).
#[test]
fn policy_written_after_start_is_read_under_the_sandbox() {
    if !common::selected(MasterKind::Muxguard) {
        return;
    }
    let env = TestEnv::new();
    let dir = env.path().join("config/muxguard");
    assert!(!dir.exists());
    let _master = env.start_master(MasterKind::Muxguard);
    run(&mut env.ssh_cmd("true")).assert_success("before any policy");
    std::fs::write(
        dir.join("policy.toml"),
        "[[rule]]\nname = \"nothing today\"\naction = \"deny\"\n",
    )
    .expect("write policy");
    let out = run(&mut env.ssh_cmd("true"));
    assert_eq!(out.code(), Some(255), "{out:#?}");
    assert!(out.stderr.contains("nothing today"), "{out:#?}");
}

/// A process whose executable cannot be read (here: one that made itself
/// non-dumpable, so its own user's master cannot read /proc/PID/exe) is
/// known only by the argv\[0\] it chose. Calling itself "bash" must not
/// make the ssh it runs look like ssh typed in a shell: the requesting
/// program is that unverified process, and a `programs` rule for ssh does
/// not admit it. The control, ssh run by a real bash script, is admitted,
/// so the refusal is the unverified name's doing.
#[test]
fn an_argv0_only_name_never_satisfies_a_programs_rule() {
    if !common::selected(MasterKind::Muxguard) {
        return;
    }
    const DISGUISED: &str = r#"
import ctypes, subprocess, sys
PR_SET_DUMPABLE = 4
assert ctypes.CDLL(None).prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) == 0
sys.exit(subprocess.run(sys.argv[1:]).returncode)
"#;
    let user = test_user();
    let env = TestEnv::new();
    write_user_policy(
        &env,
        "[defaults]\naction = \"deny\"\n\n\
         [[rule]]\nname = \"ssh typed in a shell\"\nprograms = [\"/usr/bin/ssh\"]\n\
         action = \"allow\"\n",
    );
    let script = env.path().join("run-ssh.sh");
    std::fs::write(
        &script,
        format!(
            "ssh -F {} {HOST} echo served\n",
            env.config_path().display()
        ),
    )
    .expect("write script");
    give_to(&env, user);
    let (_master, log) = start_master_as(&env, user);

    let from_bash = run(as_user(env.command("/bin/bash").arg(&script), user));
    from_bash.assert_success("ssh run by a bash script");
    assert_eq!(from_bash.stdout.trim(), "served");

    let mut disguised = env.command("/usr/bin/python3");
    disguised
        .arg0("bash")
        .args(["-c", DISGUISED])
        .arg("ssh")
        .arg("-F")
        .arg(env.config_path())
        .args([HOST, "echo", "served"]);
    let refused = run(as_user(&mut disguised, user));
    assert!(
        !refused.status.success() && !refused.stdout.contains("served"),
        "an argv[0]-only \"bash\" got ssh admitted: {refused:#?}\nmaster log:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let audit = audit_log(&env);
    let decision = audit
        .lines()
        .rfind(|l| l.contains("\"decision\""))
        .expect("a decision");
    assert!(decision.contains("\"deny\""), "{decision}");
    // The audit shows the chain as read: ssh, then the disguised process
    // under its chosen name, marked, with no executable.
    let connect = audit
        .lines()
        .rfind(|l| l.contains("\"client_connect\""))
        .expect("the client's record");
    assert!(
        connect.contains(r#""name":"ssh","exe":"/usr/bin/ssh""#)
            && connect.contains(r#""name":"bash [unverified]","cmdline":["bash","-c""#),
        "{connect}"
    );
}

/// Another uid let in by a `peers` rule (here root, named by uid) may run
/// what the rules allow it, but the master's list of sessions (commands,
/// working directories) is its owner's: without a control rule for that
/// peer, `muxguard status` is refused to it, while the owner still gets it.
#[test]
fn another_uid_gets_no_session_list_without_a_control_rule() {
    if !common::selected(MasterKind::Muxguard) {
        return;
    }
    let user = test_user();
    let env = TestEnv::new();
    write_user_policy(
        &env,
        "[defaults]\naction = \"allow\"\n\n\
         [[rule]]\nname = \"root may run commands\"\npeers = [\"0\"]\nkinds = [\"exec\"]\naction = \"allow\"\n\n\
         [[rule]]\nname = \"root: nothing else\"\npeers = [\"0\"]\naction = \"deny\"\n",
    );
    give_to(&env, user);
    let (_master, log) = start_master_as(&env, user);
    let mut secret = as_user(&mut env.ssh_cmd("sleep 30 # secret-marker"), user)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("ssh");
    let status_as = |who: Option<Account>| {
        let mut cmd = env.command(MUXGUARD);
        cmd.args(["status", "--control-path"])
            .arg(env.control_path())
            .arg(HOST);
        if let Some(user) = who {
            as_user(&mut cmd, user);
        }
        run(&mut cmd)
    };
    assert!(
        wait_for_marker(|| status_as(Some(user)).stdout.contains("secret-marker")),
        "the owner does not see its session: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    // Root is admitted (its exec runs)...
    let ran = run(&mut env.ssh_cmd("echo root-ran"));
    ran.assert_success("root's exec under its peers rule");
    // ...but not to the list of sessions.
    let theirs = status_as(None);
    assert!(
        !theirs.status.success() && !theirs.stdout.contains("secret-marker"),
        "{theirs:#?}"
    );
    assert!(
        theirs.stderr.contains("root: nothing else"),
        "{}",
        theirs.stderr
    );
    let _ = secret.kill();
    let _ = secret.wait();
}

fn wait_for_marker(mut seen: impl FnMut() -> bool) -> bool {
    common::process::poll_until(Duration::from_secs(10), &mut seen)
}
