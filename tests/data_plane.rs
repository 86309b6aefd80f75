//! The data plane under pressure: a client that stops reading must not
//! stall anyone else's sessions and must still get every byte afterwards;
//! a burst of 100 concurrent sessions (more than sshd's MaxSessions) gives
//! each client its output or a clear error, never a hang, and the master
//! comes out of it healthy and back at its idle memory.
//!
//! The figures printed on stderr (run with `--no-capture` to see them) are
//! the comparison with OpenSSH's master that issue 3 asks for.

mod common;

use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::process::{ChildStdin, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::process::{ChildGuard, Output, poll_until, run, run_timeout};
use common::sshd::SshdConfig;
use common::{MasterKind, TestEnv, first_word, for_both_masters, sha256_file, write_random};

for_both_masters!(
    stalled_consumer,
    burst_of_100_sessions_default_max_sessions,
    burst_of_100_sessions_max_sessions_200,
);

/// What the stalled session sends.
const STREAM_SIZE: u64 = 200 * 1024 * 1024;

/// How long its client does not read.
const STALL: Duration = Duration::from_secs(10);

/// The bound for work that must not wait behind the stalled session. The
/// issue's target is 100 ms (OpenSSH's master needs about 10 ms); this
/// bound only has to separate "served" from "stuck behind the stalled
/// channel" on a slow, busy machine. The measured figures are printed.
const RESPONSIVE: Duration = Duration::from_secs(5);

/// Generous upper bound for reading the whole stream once the client
/// reads again (a debug build, a busy machine).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(300);

/// One session's stdout is a pipe nobody reads for [`STALL`]. Meanwhile,
/// `ssh testhost true` and an echo round trip through `ssh testhost cat`
/// complete quickly, several times over. Then the client reads and gets
/// the whole stream, byte-exact.
fn stalled_consumer(kind: MasterKind) {
    let env = TestEnv::new();
    let _master = env.start_master(kind);
    let source = env.work_dir().join("stream.bin");
    write_random(&source, STREAM_SIZE);
    let expected = sha256_file(&source);

    // The same measurements with nothing stalled, for comparison.
    let idle: Vec<Round> = (0..3).map(|_| Round::measure(&env)).collect();
    report(kind, "idle", &idle);

    let mut cmd = env.ssh_cmd(&format!("cat {}", source.display()));
    cmd.stdout(Stdio::piped());
    let mut stalled = ChildGuard::spawn(cmd, "stalled session");
    let stalled_out = stalled.child_mut().stdout.take().expect("stdout");
    let stall_start = Instant::now();

    // Let the pipe and whatever the master buffers fill up first.
    thread::sleep(Duration::from_secs(1));
    let mut rounds = Vec::new();
    while stall_start.elapsed() + Duration::from_secs(2) < STALL {
        rounds.push(Round::measure(&env));
        thread::sleep(Duration::from_millis(500));
    }
    let worst = report(kind, "stalled", &rounds);
    assert!(
        worst.session < RESPONSIVE && worst.first_echo < RESPONSIVE && worst.echo < RESPONSIVE,
        "sessions waited behind the stalled client: {rounds:#?}"
    );

    if let Some(remaining) = STALL.checked_sub(stall_start.elapsed()) {
        thread::sleep(remaining);
    }
    // The exit status comes after the output (§6.2): the client cannot have
    // finished while most of its output is still undelivered.
    assert!(
        stalled.try_status().is_none(),
        "the stalled client exited before it had read its output"
    );

    let drain_start = Instant::now();
    let (received, hash) = drain_and_hash(stalled_out);
    let drain = drain_start.elapsed();
    let status = stalled.wait(Duration::from_secs(60));
    eprintln!(
        "{} master, stalled consumer: read {} MiB in {:.1} s after the stall ({:.0} MiB/s)",
        kind.name(),
        received >> 20,
        drain.as_secs_f64(),
        (received >> 20) as f64 / drain.as_secs_f64(),
    );
    assert!(status.success(), "the stalled session: {status}");
    assert_eq!(received, STREAM_SIZE, "bytes the stalled client got");
    assert_eq!(hash, expected, "the stream arrived changed or reordered");
    fs::remove_file(&source).expect("remove the stream file");
    env.assert_connections(1);
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// Times of one round of work done beside the stalled session.
#[derive(Debug, Default, Clone, Copy)]
struct Round {
    /// `ssh testhost true`, start to exit.
    session: Duration,
    /// `ssh testhost cat`: start to the first line echoed.
    first_echo: Duration,
    /// The second line's round trip through the open session.
    echo: Duration,
}

impl Round {
    fn measure(env: &TestEnv) -> Round {
        let started = Instant::now();
        let out = run_timeout(&mut env.ssh_cmd("true"), Duration::from_secs(60));
        let session = started.elapsed();
        out.assert_success("`ssh testhost true`");
        let (first_echo, echo) = echo_round_trips(env);
        Round {
            session,
            first_echo,
            echo,
        }
    }
}

/// Prints each round and the worst figures (over all rounds, per column);
/// returns the worst.
fn report(kind: MasterKind, phase: &str, rounds: &[Round]) -> Round {
    for (i, round) in rounds.iter().enumerate() {
        eprintln!(
            "{} master, {phase}, round {i}: `ssh true` {:.1} ms; `ssh cat` open + first echo \
             {:.1} ms, second echo {:.2} ms",
            kind.name(),
            ms(round.session),
            ms(round.first_echo),
            ms(round.echo),
        );
    }
    let worst = rounds.iter().fold(Round::default(), |worst, round| Round {
        session: worst.session.max(round.session),
        first_echo: worst.first_echo.max(round.first_echo),
        echo: worst.echo.max(round.echo),
    });
    eprintln!(
        "{} master, {phase}, worst of {} rounds: `ssh true` {:.1} ms, open + first echo \
         {:.1} ms, echo round trip {:.2} ms",
        kind.name(),
        rounds.len(),
        ms(worst.session),
        ms(worst.first_echo),
        ms(worst.echo),
    );
    worst
}

/// Opens `ssh testhost cat`, writes a line and reads it back, twice.
/// Returns the time from starting ssh to the first echo, and the time of
/// the second round trip alone.
fn echo_round_trips(env: &TestEnv) -> (Duration, Duration) {
    let started = Instant::now();
    let mut cmd = env.ssh_cmd("cat");
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
    let mut client = ChildGuard::spawn(cmd, "ssh cat");
    let mut stdin = client.child_mut().stdin.take().expect("stdin");
    let lines = line_reader(client.child_mut().stdout.take().expect("stdout"));

    echo_line(&mut stdin, &lines, "ping 1");
    let first = started.elapsed();
    let second_start = Instant::now();
    echo_line(&mut stdin, &lines, "ping 2");
    let second = second_start.elapsed();

    drop(stdin);
    let status = client.wait(Duration::from_secs(60));
    assert!(status.success(), "`ssh testhost cat`: {status}");
    (first, second)
}

/// A thread reading `stdout` line by line into a channel.
fn line_reader(stdout: ChildStdout) -> mpsc::Receiver<String> {
    let (send, receive) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if send.send(line).is_err() {
                return;
            }
        }
    });
    receive
}

fn echo_line(stdin: &mut ChildStdin, lines: &mpsc::Receiver<String>, text: &str) {
    writeln!(stdin, "{text}").expect("write to `ssh cat`");
    stdin.flush().expect("flush");
    let back = lines
        .recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("no echo of {text:?} from `ssh cat` within 60 s: {e}"));
    assert_eq!(back, text, "the echo from `ssh cat`");
}

/// Reads `stdout` to the end, on another thread so that the wait can time
/// out; returns the byte count and the SHA-256 (by `sha256sum`).
fn drain_and_hash(stdout: ChildStdout) -> (u64, String) {
    let mut cmd = Command::new("sha256sum");
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
    let mut hasher = ChildGuard::spawn(cmd, "sha256sum");
    let hasher_in = hasher.child_mut().stdin.take().expect("stdin");
    let (send, receive) = mpsc::channel();
    thread::spawn(move || {
        let mut stdout = stdout;
        let mut hasher_in = hasher_in;
        let _ = send.send(io::copy(&mut stdout, &mut hasher_in));
    });
    let copied = receive
        .recv_timeout(DRAIN_TIMEOUT)
        .unwrap_or_else(|_| {
            panic!("the stalled session's output did not end within {DRAIN_TIMEOUT:?}")
        })
        .expect("copying the stalled session's output");
    let status = hasher.wait(Duration::from_secs(60));
    assert!(status.success(), "sha256sum: {status}");
    let mut hash = String::new();
    hasher
        .child_mut()
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut hash)
        .expect("read the hash");
    (copied, first_word(&hash))
}

// ---- 100 sessions at once ----

const SESSIONS: u32 = 100;

/// No single session may take longer than this: a hang fails the test.
/// Not a performance bound: 100 remote shells starting at once take tens
/// of seconds on a busy 2-core machine.
const BURST_TIMEOUT: Duration = Duration::from_secs(240);

fn burst_of_100_sessions_default_max_sessions(kind: MasterKind) {
    burst(kind, 10);
}

fn burst_of_100_sessions_max_sessions_200(kind: MasterKind) {
    burst(kind, 200);
}

/// 100 concurrent `ssh testhost 'echo N'`. Each prints N and exits 0, or
/// fails with a message on stderr and a non-zero exit. (A session the
/// master cannot open makes the stock client fall back to a connection of
/// its own, which counts as success when its output is right; under sshd's
/// MaxStartups such a connection may itself be dropped, which must then be
/// a clear failure.) Afterwards the master answers `-O check` and its
/// resident memory is back near its idle size.
fn burst(kind: MasterKind, max_sessions: u32) {
    let env = TestEnv::with_sshd_config(&SshdConfig { max_sessions });
    let master = env.start_master(kind);
    run(&mut env.ssh_cmd("true")).assert_success("a first session");
    let idle_rss = rss_kib(master.pid());

    let started = Instant::now();
    let outcomes: Vec<(u32, Output)> = thread::scope(|scope| {
        let env = &env;
        let workers: Vec<_> = (0..SESSIONS)
            .map(|n| {
                scope.spawn(move || {
                    let out = run_timeout(&mut env.ssh_cmd(&format!("echo {n}")), BURST_TIMEOUT);
                    (n, out)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|worker| {
                worker
                    .join()
                    .unwrap_or_else(|p| std::panic::resume_unwind(p))
            })
            .collect()
    });
    let elapsed = started.elapsed();

    let mut failures = Vec::new();
    for (n, out) in &outcomes {
        if out.status.success() {
            assert_eq!(out.stdout, format!("{n}\n"), "session {n}: {out:#?}");
        } else {
            assert!(
                !out.stderr.trim().is_empty(),
                "session {n} failed without saying why: {out:#?}"
            );
            failures.push((n, out.stderr.trim().to_owned()));
        }
    }
    let connections = env.sshd().accepted_count();
    eprintln!(
        "{} master, MaxSessions {max_sessions}: {} of {SESSIONS} sessions succeeded, \
         {} failed, in {:.1} s; sshd accepted {connections} connection(s)",
        kind.name(),
        SESSIONS as usize - failures.len(),
        failures.len(),
        elapsed.as_secs_f64(),
    );
    for (n, why) in failures.iter().take(5) {
        eprintln!("  session {n}: {why}");
    }
    if max_sessions >= SESSIONS {
        // Room for every session on the master's one connection.
        assert!(failures.is_empty(), "sessions failed: {failures:#?}");
        env.assert_connections(1);
    }

    env.control("check")
        .assert_success("-O check after the burst");
    run(&mut env.ssh_cmd("echo after")).assert_success("a session after the burst");

    let bound = idle_rss * 2 + 20 * 1024;
    let settled = poll_until(Duration::from_secs(10), || rss_kib(master.pid()) <= bound);
    let after_rss = rss_kib(master.pid());
    eprintln!(
        "{} master, MaxSessions {max_sessions}: RSS idle {idle_rss} KiB, peak {} KiB, \
         after the burst {after_rss} KiB (bound {bound} KiB)",
        kind.name(),
        status_kib(master.pid(), "VmHWM:"),
    );
    assert!(
        settled,
        "the master's memory did not return to its idle size: {after_rss} KiB after, \
         {idle_rss} KiB idle"
    );
}

/// Beyond OpenSSH: with an ssh-agent holding the key, sessions the server
/// refuses on the master's connection (MaxSessions 10) go over additional
/// connections the master opens itself — every one of 30 concurrent
/// sessions succeeds with about three connections in all, where clients
/// falling back on their own would make some twenty. The additional
/// connections close when their sessions end.
#[test]
fn sessions_beyond_max_sessions_use_additional_connections() {
    const CONCURRENT: u32 = 30;
    if !common::selected(MasterKind::Muxguard) {
        return;
    }
    let env = TestEnv::with_sshd_config(&SshdConfig { max_sessions: 10 });
    let agent = common::agent::Agent::start(&env);
    let master = common::Master::start_with_args_env(
        &env,
        MasterKind::Muxguard,
        &[] as &[&str],
        &[("SSH_AUTH_SOCK", &agent.socket)],
    );

    let outcomes: Vec<(u32, Output)> = thread::scope(|scope| {
        let env = &env;
        let workers: Vec<_> = (0..CONCURRENT)
            .map(|n| {
                scope.spawn(move || {
                    let out = run_timeout(
                        &mut env.ssh_cmd(&format!("sleep 2; echo {n}")),
                        BURST_TIMEOUT,
                    );
                    (n, out)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("worker"))
            .collect()
    });
    for (n, out) in &outcomes {
        out.assert_success(&format!("session {n}"));
        assert_eq!(out.stdout, format!("{n}\n"), "session {n}");
    }
    let connections = env.sshd().accepted_count();
    eprintln!("{CONCURRENT} concurrent sessions under MaxSessions 10: {connections} connections");
    assert!(
        (2..=5).contains(&connections),
        "{connections} connections for {CONCURRENT} sessions under MaxSessions 10; \
         master log:\n{}",
        master.log()
    );
    assert!(
        master.log().contains("opened additional connection"),
        "{}",
        master.log()
    );
    let status = || {
        run(env
            .command(env!("CARGO_BIN_EXE_muxguard"))
            .args(["status", "--control-path"])
            .arg(env.control_path())
            .arg(common::HOST))
        .stdout
    };
    assert!(
        poll_until(Duration::from_secs(10), || !status()
            .contains("additional connection")),
        "the additional connections stayed open: {}",
        status()
    );
    assert!(
        master.log().contains("closing additional connection"),
        "{}",
        master.log()
    );
}

/// The resident set size of `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:")
}

/// A `... kB` field of /proc/PID/status.
fn status_kib(pid: u32, field: &str) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|value| value.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}
