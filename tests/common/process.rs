//! Child processes for the tests: guards that always stop what they started,
//! waiting with a (generous) timeout, signals, and process-tree lookups.

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// How long a command may take before a test gives up on it. Not a
/// performance assertion: it only keeps a broken master from hanging the
/// suite (a 9.2 client waits forever for a HELLO that never comes).
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

/// Polls `cond` until it returns true. Panics with `what` after `timeout`.
pub fn wait_for(what: &str, timeout: Duration, cond: impl FnMut() -> bool) {
    if !poll_until(timeout, cond) {
        panic!("timed out after {timeout:?} waiting for {what}");
    }
}

/// Polls `cond` until it returns true (then returns true) or `timeout` has
/// passed (then returns false).
pub fn poll_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    let mut pause = Duration::from_millis(5);
    loop {
        if cond() {
            return true;
        }
        if start.elapsed() > timeout {
            return false;
        }
        thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// Waits for `child` to exit; `None` if it is still running after `timeout`.
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let start = Instant::now();
    let mut pause = Duration::from_millis(2);
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if start.elapsed() > timeout {
            return None;
        }
        thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// Sends `signal` (a name such as "TERM", "STOP", "KILL") to each pid.
/// Pids that are already gone are ignored.
pub fn send_signal(pids: &[u32], signal: &str) {
    if pids.is_empty() {
        return;
    }
    // std has no kill(2) for arbitrary pids and the tests avoid `unsafe`;
    // the shell's builtin `kill` is always there.
    let _ = Command::new("sh")
        .arg("-c")
        .arg("kill -s \"$0\" \"$@\" 2>/dev/null")
        .arg(signal)
        .args(pids.iter().map(u32::to_string))
        .stdin(Stdio::null())
        .status();
}

/// True while `pid` exists and is not a zombie.
pub fn is_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => parse_stat(&stat).is_some_and(|(state, _)| state != 'Z' && state != 'X'),
        Err(_) => false,
    }
}

/// `(state, ppid)` from the text of /proc/PID/stat. The command name may
/// contain spaces and parentheses, so fields are counted from the last ')'.
fn parse_stat(stat: &str) -> Option<(char, u32)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

/// All living descendants of `root` (children, grandchildren, ...).
pub fn descendants(root: u32) -> Vec<u32> {
    let mut parent_of = Vec::new();
    for entry in fs::read_dir("/proc").expect("read /proc").flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if let Ok(stat) = fs::read_to_string(entry.path().join("stat"))
            && let Some((state, ppid)) = parse_stat(&stat)
            && state != 'Z'
        {
            parent_of.push((pid, ppid));
        }
    }
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(
            parent_of
                .iter()
                .filter(|&&(_, ppid)| ppid == parent)
                .map(|&(pid, _)| pid),
        );
        i += 1;
    }
    found.remove(0);
    found
}

/// The processes that have `path` (e.g. a terminal) open.
pub fn holders_of(path: &Path) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in fs::read_dir("/proc").expect("read /proc").flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        if fds
            .flatten()
            .any(|fd| fs::read_link(fd.path()).is_ok_and(|target| target == path))
        {
            pids.push(pid);
        }
    }
    pids
}

/// Kills `root` and every process below it. The tree is frozen with SIGSTOP
/// first (repeatedly, until no new process appears), so that nothing can
/// fork or be re-parented away while it is being collected; then everything
/// gets SIGKILL.
pub fn kill_tree(root: u32) {
    let mut tree = Vec::new();
    for _ in 0..20 {
        let mut now = vec![root];
        now.extend(descendants(root));
        now.sort_unstable();
        send_signal(&now, "STOP");
        if now == tree {
            break;
        }
        tree = now;
    }
    send_signal(&tree, "KILL");
}

/// A child process that is killed (and reaped) when the guard is dropped.
pub struct ChildGuard {
    child: Child,
    name: String,
}

impl ChildGuard {
    pub fn spawn(mut cmd: Command, name: &str) -> ChildGuard {
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({cmd:?}): {e}"));
        ChildGuard {
            child,
            name: name.to_owned(),
        }
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    /// The exit status if the process has exited, without waiting.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("try_wait")
    }

    /// Waits for the exit; panics (after killing it) if that takes longer
    /// than `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        match wait_timeout(&mut self.child, timeout) {
            Some(status) => status,
            None => {
                self.kill();
                panic!("{} did not exit within {timeout:?}", self.name);
            }
        }
    }

    /// Asks politely (SIGTERM), then kills after `grace`. Returns the exit
    /// status.
    pub fn terminate(&mut self, grace: Duration) -> ExitStatus {
        if let Some(status) = self.try_status() {
            return status;
        }
        send_signal(&[self.id()], "TERM");
        match wait_timeout(&mut self.child, grace) {
            Some(status) => status,
            None => {
                self.kill();
                self.child.wait().expect("wait")
            }
        }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if self.try_status().is_none() {
            self.kill();
        }
    }
}

/// The result of [`run`]: exit status and everything the command printed.
#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// Panics with the whole output unless the command exited 0.
    #[track_caller]
    pub fn assert_success(&self, what: &str) -> &Self {
        assert!(self.status.success(), "{what} failed: {self:#?}");
        self
    }
}

/// Runs `cmd` to completion with stdin from /dev/null (unless the caller set
/// it) and stdout/stderr captured in anonymous files. Files, not pipes: a
/// daemon forked by the command may keep a pipe open forever.
pub fn run(cmd: &mut Command) -> Output {
    run_timeout(cmd, COMMAND_TIMEOUT)
}

pub fn run_timeout(cmd: &mut Command, timeout: Duration) -> Output {
    let stdout = tempfile::tempfile().expect("tempfile");
    let stderr = tempfile::tempfile().expect("tempfile");
    cmd.stdout(stdout.try_clone().expect("dup"))
        .stderr(stderr.try_clone().expect("dup"));
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let status = match wait_timeout(&mut child, timeout) {
        Some(status) => status,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{cmd:?} did not finish within {timeout:?}\nstdout: {}\nstderr: {}",
                read_all(stdout),
                read_all(stderr)
            );
        }
    };
    Output {
        status,
        stdout: read_all(stdout),
        stderr: read_all(stderr),
    }
}

fn read_all(mut file: File) -> String {
    let mut bytes = Vec::new();
    file.seek(SeekFrom::Start(0)).expect("seek");
    file.read_to_end(&mut bytes).expect("read output");
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The contents of a (log) file, or an empty string if it does not exist.
pub fn read_lossy(path: &Path) -> String {
    fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}
