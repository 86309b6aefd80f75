//! Running the master in the background without `fork` in a process that
//! may already hold threads or an event loop: `connect` re-runs itself as a
//! child (`--daemon-child`) that inherits the terminal for passphrase and
//! host-key prompts, and waits until the child reports on its stdout that
//! the control socket is live. The child then detaches: a new session, no
//! terminal, stderr to a log file.

use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;

static IS_CHILD: AtomicBool = AtomicBool::new(false);
static DETACHED: AtomicBool = AtomicBool::new(false);

/// Marks this process as the background child (before logging starts).
pub fn mark_child() {
    IS_CHILD.store(true, Ordering::Relaxed);
}

pub fn is_child() -> bool {
    IS_CHILD.load(Ordering::Relaxed)
}

/// Whether stderr is now the log file rather than the user's terminal.
pub fn detached() -> bool {
    DETACHED.load(Ordering::Relaxed)
}

/// What the parent learned from its background child.
pub enum Started {
    /// The socket is live; the master runs on.
    Ready,
    /// The child exited before it was ready (it has said why on stderr).
    Failed { code: i32 },
}

/// Starts `muxguard connect --foreground --daemon-child ARGS…` and waits for
/// it to be ready or to fail.
pub fn spawn_and_wait(connect_args: &[OsString]) -> anyhow::Result<Started> {
    let exe = std::env::current_exe().context("cannot find the muxguard executable")?;
    let mut child = Command::new(exe)
        .arg("connect")
        .arg("--foreground")
        .arg("--daemon-child")
        .args(connect_args)
        .stdin(Stdio::inherit())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("cannot start the background master")?;
    let stdout = child.stdout.take().expect("piped");
    let mut line = String::new();
    let _ = BufReader::new(stdout).read_line(&mut line);
    if let Some(pid) = line.strip_prefix("ready ")
        && pid.trim().parse::<u32>().is_ok()
    {
        // The child lives on; it is reparented when we exit.
        return Ok(Started::Ready);
    }
    let status = child.wait()?;
    Ok(Started::Failed {
        code: status.code().unwrap_or(255),
    })
}

/// In the child, once the socket is live: tell the parent, leave its session
/// and terminal, and send further log output to `log_file`.
pub fn detach(log_file: &Path) -> anyhow::Result<()> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "ready {}", std::process::id())?;
    stdout.flush()?;
    drop(stdout);
    let _ = rustix::process::setsid();
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    if let Some(dir) = log_file.parent() {
        crate::paths::ensure_private_dir(dir)?;
    }
    let log = std::fs::OpenOptions::new()
        .mode(0o600)
        .create(true)
        .append(true)
        .open(log_file)
        .with_context(|| format!("cannot open log file {}", log_file.display()))?;
    rustix::stdio::dup2_stdin(null.as_fd())?;
    rustix::stdio::dup2_stdout(null.as_fd())?;
    rustix::stdio::dup2_stderr(log.as_fd())?;
    DETACHED.store(true, Ordering::Relaxed);
    Ok(())
}
