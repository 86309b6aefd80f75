//! Plain sessions through the master: exit codes, separate stdout/stderr,
//! bulk data both ways, many sessions at once.

mod common;

use std::fs::{self, File};
use std::process::{Command, Stdio};
use std::thread;
use std::time::Duration;

use common::process::ChildGuard;
use common::{
    MasterKind, TestEnv, first_word, for_both_masters, run, run_timeout, sha256_file, write_random,
};

for_both_masters!(
    exit_status,
    killed_by_signal,
    output_streams_stay_apart,
    environment_is_forwarded,
    large_transfers,
    concurrent_sessions,
);

/// Long enough for 100 MiB through ssh on a slow, busy machine.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(600);

/// The remote command's exit status is the client's exit code.
fn exit_status(kind: MasterKind) {
    let env = TestEnv::new();
    let _master = env.start_master(kind);
    for code in [0, 7, 42] {
        let out = run(&mut env.ssh_cmd(&format!("exit {code}")));
        assert_eq!(out.code(), Some(code), "`exit {code}`: {out:#?}");
    }
    env.assert_connections(1);
}

/// A remote command killed by a signal gives exit 255, as with a direct
/// connection (mux-protocol.md §6.3: no EXIT_MESSAGE for exit-signal).
fn killed_by_signal(kind: MasterKind) {
    let env = TestEnv::new();
    let _master = env.start_master(kind);
    let out = run(&mut env.ssh_cmd("kill -KILL $$"));
    assert_eq!(out.code(), Some(255), "{out:#?}");
    env.assert_connections(1);
}

fn output_streams_stay_apart(kind: MasterKind) {
    let env = TestEnv::new();
    let _master = env.start_master(kind);
    let out = run(&mut env.ssh_cmd("echo to-stdout; echo to-stderr >&2; exit 3"));
    assert_eq!(out.code(), Some(3), "{out:#?}");
    assert_eq!(out.stdout, "to-stdout\n");
    assert_eq!(out.stderr, "to-stderr\n");
    env.assert_connections(1);
}

/// Variables named by both the client's and the master's SendEnv reach the
/// remote side (the master filters by its own SendEnv, §6.1).
fn environment_is_forwarded(kind: MasterKind) {
    let env = TestEnv::new();
    let _master = env.start_master(kind);
    let out = run(env
        .ssh_cmd("echo \"[$MUXGUARD_TEST_GREETING]\"")
        .env("MUXGUARD_TEST_GREETING", "hello there"));
    out.assert_success("ssh with SendEnv");
    assert_eq!(out.stdout, "[hello there]\n");
    env.assert_connections(1);
}

/// 100 MiB up through stdin, then the same 100 MiB down through stdout and
/// stderr at the same time; all three arrive complete and unmixed.
fn large_transfers(kind: MasterKind) {
    const SIZE: u64 = 100 * 1024 * 1024;
    let env = TestEnv::new();
    let _master = env.start_master(kind);
    let source = env.work_dir().join("source.bin");
    let remote = env.work_dir().join("remote.bin");
    write_random(&source, SIZE);
    let expected = sha256_file(&source);

    let upload = run_timeout(
        env.ssh_cmd(&format!("cat > {r} && sha256sum {r}", r = remote.display()))
            .stdin(File::open(&source).expect("open source")),
        TRANSFER_TIMEOUT,
    );
    upload.assert_success("upload");
    assert_eq!(
        first_word(&upload.stdout),
        expected,
        "uploaded data differs"
    );
    fs::remove_file(&source).expect("remove source");

    let mut out_sum = HashSink::start();
    let mut err_sum = HashSink::start();
    let mut download = env.ssh_cmd(&format!(
        "cat {r} & cat {r} >&2; wait",
        r = remote.display()
    ));
    download.stdout(out_sum.input()).stderr(err_sum.input());
    let status = ChildGuard::spawn(download, "ssh download").wait(TRANSFER_TIMEOUT);
    assert!(status.success(), "download: {status}");
    assert_eq!(out_sum.finish(), expected, "stdout data differs");
    assert_eq!(err_sum.finish(), expected, "stderr data differs");
    fs::remove_file(&remote).expect("remove remote copy");
    env.assert_connections(1);
}

/// Several sessions running at the same time over the one connection each
/// get their own output and exit code.
fn concurrent_sessions(kind: MasterKind) {
    const SESSIONS: u32 = 8;
    let env = TestEnv::new();
    let _master = env.start_master(kind);
    thread::scope(|scope| {
        let env = &env;
        let workers: Vec<_> = (0..SESSIONS)
            .map(|n| {
                scope.spawn(move || {
                    let out = run(&mut env
                        .ssh_cmd(&format!("seq 1 20000 | sed s/^/s{n}-/; sleep 1; exit {n}")));
                    assert_eq!(out.code(), Some(n as i32), "session {n}: {}", out.stderr);
                    let expected: String = (1..=20000).map(|i| format!("s{n}-{i}\n")).collect();
                    assert!(out.stdout == expected, "session {n}: wrong output");
                })
            })
            .collect();
        for worker in workers {
            if let Err(panic) = worker.join() {
                std::panic::resume_unwind(panic);
            }
        }
    });
    env.assert_connections(1);
}

/// A `sha256sum` process hashing whatever is written into its stdin; its
/// result goes to a file so that waiting for it can time out.
struct HashSink {
    child: ChildGuard,
    result: tempfile::NamedTempFile,
}

impl HashSink {
    fn start() -> HashSink {
        let result = tempfile::NamedTempFile::new().expect("tempfile");
        let mut cmd = Command::new("sha256sum");
        cmd.stdin(Stdio::piped())
            .stdout(result.reopen().expect("reopen"));
        HashSink {
            child: ChildGuard::spawn(cmd, "sha256sum"),
            result,
        }
    }

    /// The write end of the hasher's stdin, to hand to another process.
    fn input(&mut self) -> Stdio {
        Stdio::from(self.child.child_mut().stdin.take().expect("stdin"))
    }

    /// Waits until every writer has closed the input; the hash in hex.
    fn finish(&mut self) -> String {
        let status = self.child.wait(TRANSFER_TIMEOUT);
        assert!(status.success(), "sha256sum: {status}");
        first_word(&fs::read_to_string(self.result.path()).expect("read hash"))
    }
}
