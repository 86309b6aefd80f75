//! A private OpenSSH server on 127.0.0.1 for one test.

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::process::{self, ChildGuard};

const SSHD: &str = "/usr/sbin/sshd";

/// Settings of the test server that tests may change.
#[derive(Clone, Debug)]
pub struct SshdConfig {
    /// sshd's `MaxSessions`: sessions per connection (OpenSSH default 10).
    pub max_sessions: u32,
}

impl Default for SshdConfig {
    fn default() -> Self {
        SshdConfig { max_sessions: 10 }
    }
}

/// A running `sshd -D` with a throwaway host key. Dropping it kills the
/// listener and every connection it serves.
pub struct Sshd {
    child: ChildGuard,
    port: u16,
    log: PathBuf,
    host_public_key: String,
}

impl Sshd {
    /// Starts sshd with its files in `dir`, accepting the keys listed in
    /// `authorized_keys`.
    pub fn start(dir: &Path, authorized_keys: &Path, config: &SshdConfig) -> Sshd {
        // The privilege-separation directory; sshd refuses to start without it.
        fs::create_dir_all("/run/sshd").expect("create /run/sshd");
        fs::create_dir_all(dir).expect("create sshd dir");
        let host_key = dir.join("host_ed25519");
        super::keygen(&host_key);
        let host_public_key = super::public_key(&host_key);
        let log = dir.join("sshd.log");

        // A free port is picked by binding port 0 and letting it go; another
        // test may grab it in between, so a failed bind is retried.
        for _ in 0..10 {
            let port = free_port();
            let config_path = dir.join("sshd_config");
            fs::write(
                &config_path,
                sshd_config(port, &host_key, authorized_keys, config),
            )
            .expect("write sshd_config");
            let _ = fs::remove_file(&log);
            let mut cmd = Command::new(SSHD);
            cmd.arg("-D")
                .arg("-E")
                .arg(&log)
                .arg("-f")
                .arg(&config_path)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            let mut child = ChildGuard::spawn(cmd, "sshd");
            match wait_listening(&mut child, &log, port) {
                Ok(()) => {
                    return Sshd {
                        child,
                        port,
                        log,
                        host_public_key,
                    };
                }
                Err(Retry::PortTaken) => continue,
                Err(Retry::Failed(why)) => {
                    panic!("sshd did not start: {why}\n{}", process::read_lossy(&log))
                }
            }
        }
        panic!("sshd: no free port after 10 attempts");
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The listener's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The host key in `authorized_keys`/`known_hosts` form:
    /// `ssh-ed25519 AAAA...`.
    pub fn host_public_key(&self) -> &str {
        &self.host_public_key
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    pub fn log(&self) -> String {
        process::read_lossy(&self.log)
    }

    /// How many connections have authenticated so far. sshd (LogLevel
    /// VERBOSE or INFO) logs one "Accepted publickey" line per connection,
    /// not per session, so this tells whether work went through a master.
    pub fn accepted_count(&self) -> usize {
        self.log().matches("Accepted publickey").count()
    }

    /// Kills the listener and every per-connection process below it, so
    /// that established connections drop as if the server had died.
    /// (sshd's connection processes call setsid(), so killing the process
    /// group would miss them; they are found through their parent chain.)
    pub fn kill_all(&mut self) {
        process::kill_tree(self.child.id());
        self.child.kill();
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        self.kill_all();
    }
}

enum Retry {
    PortTaken,
    Failed(String),
}

fn wait_listening(child: &mut ChildGuard, log: &Path, port: u16) -> Result<(), Retry> {
    let ready = format!("Server listening on 127.0.0.1 port {port}.");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        // Checked before reading the log, so that the log read afterwards
        // holds everything sshd wrote before it exited.
        let exited = child.try_status();
        let text = process::read_lossy(log);
        if text.contains(&ready) {
            return Ok(());
        }
        if text.contains("Bind to port") || text.contains("Address already in use") {
            child.kill();
            return Err(Retry::PortTaken);
        }
        if let Some(status) = exited {
            return Err(Retry::Failed(format!("sshd exited with {status}")));
        }
        if Instant::now() > deadline {
            child.kill();
            return Err(Retry::Failed("not listening after 20 s".into()));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// `AddressFamily inet`: a remote forward to port 0 binds every loopback
/// address, ::1 first, then 127.0.0.1 on the port the kernel gave ::1. That
/// port can be in use on 127.0.0.1 only (this sshd's own, or another test's
/// server): sshd then keeps the ::1 listener and reports the port, and the
/// test, connecting to 127.0.0.1, reached sshd itself (seen once in
/// `remote_forward_port_zero`). IPv4 only, the port is the kernel's pick.
///
/// `SetEnv SHLVL=1`: Debian's bash reads `~/.bashrc` for `ssh host cmd` only
/// as a top-level shell, and with SHLVL set it is not. The account's rc
/// files are not what a test measures, and a slow one stalls every session:
/// on the CI host root's `.bashrc` runs `pyenv init`, whose rehash waits 60 s
/// on a lock file that a killed session can leave behind.
fn sshd_config(port: u16, host_key: &Path, authorized_keys: &Path, config: &SshdConfig) -> String {
    format!(
        "\
ListenAddress 127.0.0.1:{port}
AddressFamily inet
HostKey {host_key}
AuthorizedKeysFile {authorized_keys}
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
StrictModes no
UsePAM no
PidFile none
LogLevel VERBOSE
MaxSessions {max_sessions}
PrintMotd no
PrintLastLog no
Subsystem sftp internal-sftp
AcceptEnv LANG LC_* GIT_PROTOCOL MUXGUARD_TEST_*
SetEnv SHLVL=1
",
        host_key = host_key.display(),
        authorized_keys = authorized_keys.display(),
        max_sessions = config.max_sessions,
    )
}
