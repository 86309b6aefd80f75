//! Who is on the other end of a control connection: the kernel's word on
//! the peer's uid, gid and pid (SO_PEERCRED), and the requesting program
//! chain read from /proc (`ssh ← git ← bash ← tmux`), read in one go right
//! after accept and checked to still be the same process afterwards.
//!
//! PID reuse: each process's /proc directory is opened once and every file
//! of it is read relative to that descriptor (the sandboxed master sends
//! the connecting process's to the proc helper, which walks from it). A
//! directory descriptor stays bound to the process it was opened for: once
//! that process exits, reads through it fail, whoever has the pid by then.
//! A pidfd is opened on the peer as soon as its pid is known and gives a
//! reliable "has it exited?" (it polls readable then). The walk is trusted
//! only if, after it, the pidfd says the process is still running (without
//! a pidfd, kernels before 5.3, if its start time is unchanged): then the
//! directory was opened on the process that connected.
//!
//! Exec: a process keeps its pid and start time across exec, so a client
//! could connect, hand the socket to a child and exec another program. The
//! identity read at accept is the one every decision uses, and before each
//! request the connecting process is looked at again ([`Peer::recheck`]):
//! if it has exited or now runs another executable, the requesting program
//! is unverified from then on (it never satisfies a `programs` rule) and
//! prompts and the audit log say why.
//!
//! Names: a process whose executable cannot be read (another user's, or
//! one that made itself non-dumpable) is known only by its argv\[0\],
//! which it chose. Such a name is shown marked "unverified" and is never
//! taken as ssh, a shell or a wrapper when the chain is interpreted.

use std::fmt;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use crate::access::ancestors::Ancestors;
use crate::access::decide::PeerIdentity;
use crate::access::decide::accounts::Accounts;
use crate::access::proc_helper;
use crate::codec::{Reader, put_bytes, put_optional, put_u32, put_u64};
use crate::procfs::{ProcDir, groups_of, parse_stat, read_start_time, tty_name};
use crate::prompt::ProcessRef;

/// One process of the requester chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessInfo {
    pub pid: u32,
    pub ppid: u32,
    /// `None` when /proc would not tell (another user's process).
    pub exe: Option<PathBuf>,
    pub cmdline: Vec<String>,
    pub cwd: Option<PathBuf>,
    /// e.g. `/dev/pts/3`.
    pub tty: Option<String>,
    pub session: u32,
    start_time: u64,
}

impl ProcessInfo {
    /// The executable's file name, if the executable could be read.
    pub fn verified_name(&self) -> Option<String> {
        self.exe
            .as_deref()
            .and_then(Path::file_name)
            .map(|n| n.to_string_lossy().into_owned())
    }

    /// A short name to show: the executable's file name, else argv\[0\]'s
    /// marked as unverified.
    pub fn name(&self) -> String {
        if let Some(name) = self.verified_name() {
            return name;
        }
        match self.cmdline.first() {
            Some(arg0) => format!("{} [unverified]", arg0.rsplit('/').next().unwrap_or(arg0)),
            None => "? [unverified]".into(),
        }
    }

    /// This process, pinned by pid, start time and name.
    pub fn pinned(&self) -> ProcessRef {
        ProcessRef {
            pid: self.pid,
            start_time: self.start_time,
            name: self.name(),
        }
    }

    fn is_shell(&self) -> bool {
        const SHELLS: &[&str] = &[
            "sh", "bash", "dash", "zsh", "fish", "ksh", "mksh", "tcsh", "csh", "busybox",
        ];
        self.verified_name()
            .is_some_and(|name| SHELLS.contains(&name.as_str()))
    }

    /// A shell run as `sh -c '…'`: a wrapper some program used to start
    /// ssh (git's GIT_SSH_COMMAND, for one), not a person's shell.
    fn is_command_wrapper(&self) -> bool {
        self.is_shell() && self.cmdline.iter().skip(1).any(|a| a == "-c")
    }

    fn is_ssh(&self) -> bool {
        self.verified_name().as_deref() == Some("ssh")
    }
}

/// The peer of one control connection.
#[derive(Debug)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
    /// The connecting process first, then its ancestors up to its session
    /// leader. Empty when the process could not be identified.
    pub chain: Vec<ProcessInfo>,
    /// Tells whether the connecting process has exited.
    pidfd: Option<OwnedFd>,
    /// The connecting process's /proc directory, for rechecks.
    proc_dir: Option<ProcDir>,
    /// When the last read of the connecting process's executable (at
    /// accept, or by a recheck that found it unchanged) began.
    exe_read_at: Mutex<Instant>,
    /// Set, for good, once a recheck found the connecting process gone or
    /// running another executable: why its identity is no longer verified.
    drifted: OnceLock<String>,
}

/// The process that connected, as the socket pins it (SO_PEERPIDFD):
/// unlike its pid, this cannot come to name another process.
pub enum ConnectedProcess {
    Pinned(OwnedFd),
    /// It has exited (and been reaped): whatever runs under its pid now
    /// is someone else, so no chain read from that pid is trusted.
    Gone,
    /// The kernel cannot say (before Linux 6.5): a pidfd is opened from
    /// the pid instead, which a process that exited before that moment
    /// may already have handed on.
    Unknown,
}

impl ConnectedProcess {
    pub fn of(socket: &impl AsFd) -> ConnectedProcess {
        use nix::sys::socket::{getsockopt, sockopt::PeerPidfd};
        match getsockopt(socket, PeerPidfd) {
            Ok(fd) => ConnectedProcess::Pinned(fd),
            Err(nix::errno::Errno::ENOPROTOOPT) => ConnectedProcess::Unknown,
            // Linux 6.5 to 6.15 refuse a pidfd for a reaped peer (EINVAL,
            // ESRCH); nothing else is expected of a connected socket.
            Err(_) => ConnectedProcess::Gone,
        }
    }
}

/// The supplementary groups of the process that connected to `socket`, as
/// the kernel recorded them at connect (SO_PEERGROUPS, Linux 4.13): like
/// SO_PEERCRED, and unlike the process's status, what it held when it
/// connected. `None` where the kernel cannot say.
#[allow(unsafe_code)] // see the SAFETY comment inside
pub fn peer_groups(socket: &impl AsFd) -> Option<Vec<u32>> {
    use std::os::fd::AsRawFd;
    const GID: usize = std::mem::size_of::<libc::gid_t>();
    // Most accounts are in a few groups; a longer list says how long.
    let mut groups: Vec<libc::gid_t> = vec![0; 32];
    loop {
        let mut length = (groups.len() * GID) as libc::socklen_t;
        // SAFETY: getsockopt writes at most `length` bytes, the size of
        // `groups`' live buffer (gid_t-aligned, and any bytes are a valid
        // gid_t), and stores in `length` how many it wrote or, failing
        // with ERANGE, how many it needs; the descriptor is the open
        // socket `socket` borrows for the whole call.
        let rc = unsafe {
            libc::getsockopt(
                socket.as_fd().as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &raw mut length,
            )
        };
        let too_short = rc != 0
            && rustix::io::Errno::from_io_error(&std::io::Error::last_os_error())
                == Some(rustix::io::Errno::RANGE);
        let length = length as usize;
        if rc == 0 {
            groups.truncate(length / GID);
            return Some(groups);
        }
        // NGROUPS_MAX is 65536.
        if !too_short || length <= groups.len() * GID || length > 65536 * GID {
            return None;
        }
        groups.resize(length / GID, 0);
    }
}

impl Peer {
    /// Identifies the peer of an accepted connection from what the kernel
    /// recorded of it at connect: its credentials (SO_PEERCRED), its
    /// supplementary groups (`groups`, e.g. [`peer_groups`] of the socket;
    /// `None` where the kernel cannot say) and the process itself
    /// ([`ConnectedProcess`]), with the account names its policy matching
    /// needs. The groups are asked for, and their names looked up, once the
    /// walk is under way.
    pub async fn identify(
        cred: rustix::net::UCred,
        groups: impl FnOnce() -> Option<Vec<u32>>,
        connected: ConnectedProcess,
    ) -> (Peer, PeerIdentity) {
        let uid = cred.uid.as_raw();
        let gid = cred.gid.as_raw();
        let pid = cred.pid.as_raw_nonzero().get() as u32;
        // A pidfd from the socket is the process that connected; one opened
        // from the pid is whoever has that pid now, which is why its uid is
        // checked below.
        let (pidfd, gone, pinned) = match connected {
            ConnectedProcess::Pinned(fd) => (Some(fd), false, true),
            ConnectedProcess::Gone => (None, true, false),
            ConnectedProcess::Unknown => (
                rustix::process::Pid::from_raw(pid as i32).and_then(|p| {
                    rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()).ok()
                }),
                false,
                false,
            ),
        };
        let look_up = |groups: &[u32]| Accounts::look_up(uid, gid, groups);
        // A peer already gone leaves nothing of its own to read: the pid's
        // /proc directory would be someone else's.
        let proc_dir = if gone { None } else { ProcDir::open(pid) };
        // Done here while the helper walks (its question goes out first).
        // `None` where the kernel would not give the groups.
        let socket_accounts = async { groups().as_deref().map(look_up) };
        let (proc_dir, walk, accounts) = match proc_dir {
            Some(dir) => {
                let ((dir, walk), accounts) =
                    tokio::join!(proc_helper::identify(dir, pid), socket_accounts);
                (Some(dir), walk, accounts)
            }
            None => (None, None, socket_accounts.await),
        };
        // What only the process's status tells, read when needed: its uid
        // for a process not pinned by the socket, its groups where the
        // kernel would not give them for the socket.
        let status = match (&proc_dir, &walk) {
            (Some(dir), Some(_)) if !pinned || accounts.is_none() => dir.read_text("status"),
            _ => None,
        };
        // The chain is only trusted if its first process is still the one
        // that connected: running (pidfd; without one, same start time),
        // and, unless the socket pinned it, of the same uid.
        let trusted = !gone
            && walk.as_ref().is_some_and(|walk| {
                let same_process = match &pidfd {
                    Some(fd) => !has_exited(fd),
                    None => read_start_time(pid) == Some(walk.chain[0].start_time),
                };
                let same_uid =
                    pinned || status.as_deref().and_then(|s| status_id(s, "Uid:")) == Some(uid);
                same_process && same_uid
            });
        let accounts = accounts.unwrap_or_else(|| {
            // Groups read from a process not known to be the one that
            // connected are not used: then only the kernel's gid counts.
            let read = status.as_deref().filter(|_| trusted).map(groups_of);
            look_up(read.as_deref().unwrap_or_default())
        });
        let (chain, proc_dir, exe_read_at) = match walk {
            Some(walk) if trusted => (walk.chain, proc_dir, walk.links_read_at),
            _ => (Vec::new(), None, Instant::now()),
        };
        let peer = Peer {
            uid,
            gid,
            pid,
            chain,
            pidfd,
            proc_dir,
            exe_read_at: Mutex::new(exe_read_at),
            drifted: OnceLock::new(),
        };
        let identity = PeerIdentity::named(&peer, accounts);
        (peer, identity)
    }

    /// Looks at the connecting process again, before a request read at
    /// `request_read_at` is decided: it must still be running the
    /// executable it ran at accept. Once it is not, the identity stays
    /// unverified for this connection.
    ///
    /// An executable read that began after the request was read needs no
    /// repeating: the request had been written by then, so what that read
    /// saw is what the process had become by the time it asked (the
    /// overlapped HELLO often makes a connection's first request one).
    pub async fn recheck(&self, request_read_at: Instant) {
        if self.drifted.get().is_some() {
            return;
        }
        let Some(first) = self.chain.first() else {
            return;
        };
        if *self.exe_read_at() > request_read_at {
            return;
        }
        let started = Instant::now();
        let gone = || match &self.pidfd {
            Some(pidfd) => has_exited(pidfd),
            None => read_start_time(self.pid) != Some(first.start_time),
        };
        const GONE: &str = "the connecting process has exited (its connection was handed on)";
        let why = if gone() {
            Some(GONE.to_string())
        } else {
            // Read through the directory opened at accept: the link is that
            // process's, or nothing once it has gone.
            let now_exe = match &self.proc_dir {
                Some(dir) => proc_helper::links(dir).await.exe,
                None => None,
            };
            // Looked at again after the read: a link that could not be read
            // because the process had just gone is told as its going.
            if gone() {
                Some(GONE.to_string())
            } else if now_exe != first.exe {
                let now = now_exe.map_or_else(
                    || "an unreadable executable".into(),
                    |e| e.display().to_string(),
                );
                Some(format!(
                    "the connecting process {} now runs {now}",
                    self.pid
                ))
            } else {
                None
            }
        };
        match why {
            Some(why) => {
                let _ = self.drifted.set(why);
            }
            None => {
                let mut read_at = self.exe_read_at();
                *read_at = (*read_at).max(started);
            }
        }
    }

    fn exe_read_at(&self) -> std::sync::MutexGuard<'_, Instant> {
        self.exe_read_at.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Why the requesting program is no longer verified, if it is not.
    pub fn drift(&self) -> Option<&str> {
        self.drifted.get().map(String::as_str)
    }

    /// The requesting program's executable, if it is known and verified.
    pub fn program_exe(&self) -> Option<&Path> {
        if self.drifted.get().is_some() {
            return None;
        }
        self.program().and_then(|p| p.exe.as_deref())
    }

    /// The process a request is attributed to for remembered answers and
    /// flood protection: the first ancestor that is neither ssh nor a
    /// `sh -c` wrapper (the shell of the terminal the ssh was typed in, or
    /// the git that ran it), else the connecting process itself.
    pub fn anchor(&self) -> ProcessRef {
        let anchor = self
            .chain
            .iter()
            .skip(1)
            .find(|p| !p.is_ssh() && !p.is_command_wrapper())
            .or(self.chain.first());
        match anchor {
            Some(process) => process.pinned(),
            None => ProcessRef {
                pid: self.pid,
                start_time: 0,
                name: "unidentified process".into(),
            },
        }
    }

    /// The program a policy matches: the first ancestor that is not ssh
    /// itself (skipping `sh -c` wrappers), or ssh when it was run directly
    /// from a person's shell. `None` if the chain is unknown.
    pub fn program(&self) -> Option<&ProcessInfo> {
        let client = self.chain.first()?;
        for ancestor in self.chain.iter().skip(1) {
            if ancestor.is_ssh() && !client.is_ssh() {
                continue;
            }
            if ancestor.is_command_wrapper() {
                continue;
            }
            if ancestor.is_shell() || ancestor.pid == 1 {
                return Some(client);
            }
            return Some(ancestor);
        }
        Some(client)
    }

    /// `ssh (4242) ← git (4240) ← bash (4100) in ~/src/app`
    pub fn describe_chain(&self) -> String {
        if self.chain.is_empty() {
            return format!("pid {} (process details unavailable)", self.pid);
        }
        let mut text = self
            .chain
            .iter()
            .map(|p| format!("{} ({})", p.name(), p.pid))
            .collect::<Vec<_>>()
            .join(" ← ");
        if let Some(cwd) = self.chain.first().and_then(|p| p.cwd.as_ref()) {
            text.push_str(&format!(" in {}", cwd.display()));
        }
        if let Some(why) = self.drift() {
            text.push_str(&format!(" (unverified since connect: {why})"));
        }
        text
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "uid {} pid {}: {}",
            self.uid,
            self.pid,
            self.describe_chain()
        )
    }
}

/// Whether the process behind `pidfd` has exited (its pidfd polls
/// readable). An error counts as exited: fail closed.
fn has_exited(pidfd: &OwnedFd) -> bool {
    use rustix::event::{PollFd, PollFlags, Timespec};
    let mut fds = [PollFd::new(pidfd, PollFlags::IN)];
    let now = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    match rustix::event::poll(&mut fds, Some(&now)) {
        Ok(ready) => ready > 0,
        Err(_) => true,
    }
}

/// What the walk read: the chain. Nothing of a process's status is read:
/// the socket tells the connecting one's credentials and groups.
#[derive(Debug)]
pub struct Walk {
    pub chain: Vec<ProcessInfo>,
    /// When the read of the executables began, or an instant before it.
    /// The helper tells its own: a walk that ends after the first request
    /// was read then needs no recheck (`Peer::recheck`).
    links_read_at: Instant,
}

/// Walks from the process behind `first_dir` (pid `pid`) up to its session
/// leader (at most 32 steps), every file of a process read through one
/// directory descriptor of it. Reads the exe and cwd links too, which
/// needs ptrace-class access: the proc helper has it, the sandboxed master
/// not (its links then stay unknown).
///
/// The ancestors are read through `ancestors`, which keeps them open for
/// the next walk; the connecting process (new on most connections) only
/// through `first_dir`.
pub fn walk_from(first_dir: &ProcDir, pid: u32, ancestors: &mut Ancestors) -> Option<Walk> {
    let first = process_info(
        pid,
        &first_dir.read_text("stat")?,
        first_dir.read("cmdline"),
    )?;
    let mut chain = vec![first];
    while chain.len() < 32 {
        let last = chain.last().expect("the chain starts with one");
        if last.pid == last.session || last.ppid <= 1 {
            break;
        }
        let ppid = last.ppid;
        let visited = ancestors.visit(ppid)?;
        chain.push(process_info(ppid, &visited.stat, Some(visited.cmdline))?);
    }
    let links_read_at = Instant::now();
    let (first, above) = chain.split_first_mut().expect("the chain starts with one");
    first.exe = first_dir.read_link("exe");
    // Only the connecting process's cwd is ever shown.
    first.cwd = first_dir.read_link("cwd");
    for info in above {
        info.exe = ancestors.dir(info.pid).and_then(|dir| dir.read_link("exe"));
    }
    Some(Walk {
        chain,
        links_read_at,
    })
}

impl Walk {
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        put_u64(out, monotonic_nanos(self.links_read_at));
        put_u32(out, self.chain.len() as u32);
        for p in &self.chain {
            for word in [p.pid, p.ppid, p.session] {
                put_u32(out, word);
            }
            put_u64(out, p.start_time);
            put_optional(out, p.tty.as_deref().map(str::as_bytes));
            put_u32(out, p.cmdline.len() as u32);
            for arg in &p.cmdline {
                put_bytes(out, arg.as_bytes());
            }
            proc_helper::put_path(out, p.exe.as_deref());
            proc_helper::put_path(out, p.cwd.as_deref());
        }
    }

    /// Reads what [`Walk::encode`] wrote, for a walk asked for at
    /// `asked_at`: its links were read after that, and a time it gives
    /// outside `asked_at..now` is taken as `asked_at`.
    pub(crate) fn decode(reader: &mut Reader<'_>, asked_at: Instant) -> Option<Walk> {
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        let links_read_at = instant_of_monotonic(reader.u64()?)
            .filter(|at| (asked_at..=Instant::now()).contains(at))
            .unwrap_or(asked_at);
        let process_count = reader.count(40)?;
        if process_count == 0 || process_count > 32 {
            return None;
        }
        let mut chain = Vec::with_capacity(process_count);
        for _ in 0..process_count {
            let (pid, ppid, session) = (reader.u32()?, reader.u32()?, reader.u32()?);
            let start_time = reader.u64()?;
            let tty = reader.optional()?.map(text);
            let arg_count = reader.count(4)?;
            let cmdline = (0..arg_count)
                .map(|_| reader.bytes().map(text))
                .collect::<Option<Vec<_>>>()?;
            let exe = proc_helper::take_path(reader)?;
            let cwd = proc_helper::take_path(reader)?;
            chain.push(ProcessInfo {
                pid,
                ppid,
                exe,
                cmdline,
                cwd,
                tty,
                session,
                start_time,
            });
        }
        Some(Walk {
            chain,
            links_read_at,
        })
    }
}

/// CLOCK_MONOTONIC now, in nanoseconds: one clock for every process of the
/// machine, so that the helper's instants mean the same in the master.
fn monotonic_now() -> u64 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    (now.tv_sec as u64).saturating_mul(1_000_000_000) + now.tv_nsec as u64
}

/// `at` on CLOCK_MONOTONIC. The clock is read before `Instant::now()`, so
/// any error makes the result earlier, never later.
fn monotonic_nanos(at: Instant) -> u64 {
    let now = monotonic_now();
    let ago = Instant::now().saturating_duration_since(at);
    now.saturating_sub(u64::try_from(ago.as_nanos()).unwrap_or(u64::MAX))
}

/// The `Instant` of a CLOCK_MONOTONIC time, `None` if it is in the future.
/// `Instant::now()` is read first, so any error makes it earlier.
fn instant_of_monotonic(nanos: u64) -> Option<Instant> {
    let here = Instant::now();
    let ago = monotonic_now().checked_sub(nanos)?;
    here.checked_sub(std::time::Duration::from_nanos(ago))
}

/// The effective id on a status line (`Uid:\treal\teffective\tsaved\tfs`).
fn status_id(status: &str, name: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|rest| rest.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// One process's entry, from its stat and cmdline.
/// One process of the chain from its `stat` and `cmdline` (links not yet
/// read).
fn process_info(pid: u32, stat: &str, cmdline: Option<Vec<u8>>) -> Option<ProcessInfo> {
    let stat = parse_stat(stat)?;
    let cmdline = cmdline
        .map(|raw| {
            raw.split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        })
        .unwrap_or_default();
    Some(ProcessInfo {
        pid,
        ppid: stat.ppid,
        exe: None,
        cmdline,
        cwd: None,
        tty: tty_name(stat.tty_nr),
        session: stat.session,
        start_time: stat.start_time,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn process(pid: u32, exe: &str, args: &[&str]) -> ProcessInfo {
        ProcessInfo {
            pid,
            ppid: pid - 1,
            exe: Some(PathBuf::from(exe)),
            cmdline: args.iter().map(|a| a.to_string()).collect(),
            cwd: None,
            tty: None,
            session: 1,
            start_time: 0,
        }
    }

    fn peer(chain: Vec<ProcessInfo>) -> Peer {
        Peer {
            uid: 1000,
            gid: 1000,
            pid: chain.first().map_or(0, |p| p.pid),
            chain,
            pidfd: None,
            proc_dir: None,
            exe_read_at: Mutex::new(Instant::now()),
            drifted: OnceLock::new(),
        }
    }

    #[test]
    fn the_program_is_the_first_interesting_ancestor() {
        let ssh = process(10, "/usr/bin/ssh", &["ssh", "host", "git-upload-pack"]);
        let git = process(9, "/usr/bin/git", &["git", "clone", "host:repo"]);
        let bash = process(8, "/usr/bin/bash", &["bash"]);
        let wrapper = process(
            9,
            "/usr/bin/dash",
            &["sh", "-c", "ssh host git-upload-pack"],
        );
        let git_above_wrapper = process(8, "/usr/bin/git", &["git", "fetch"]);

        let direct = peer(vec![ssh.clone(), bash.clone()]);
        assert_eq!(direct.program().unwrap().name(), "ssh");
        let via_git = peer(vec![ssh.clone(), git.clone(), bash.clone()]);
        assert_eq!(via_git.program().unwrap().name(), "git");
        let via_wrapper = peer(vec![ssh.clone(), wrapper, git_above_wrapper]);
        assert_eq!(via_wrapper.program().unwrap().name(), "git");
        assert_eq!(via_git.describe_chain(), "ssh (10) ← git (9) ← bash (8)");
        assert!(peer(vec![]).program().is_none());
    }

    #[test]
    fn an_argv0_only_name_is_never_taken_as_a_shell_or_ssh() {
        let ssh = process(10, "/usr/bin/ssh", &["ssh", "host", "true"]);
        let mut disguised = process(9, "/unused", &["bash"]);
        disguised.exe = None;
        let via_disguise = peer(vec![ssh.clone(), disguised]);
        // Not "ssh run from a shell" (which would make ssh the program):
        // the unverified process is the program, and its exe is unknown.
        let program = via_disguise.program().unwrap();
        assert_eq!(program.pid, 9);
        assert_eq!(program.name(), "bash [unverified]");
        assert_eq!(via_disguise.program_exe(), None);
        assert_eq!(via_disguise.anchor().pid, 9);
        assert!(
            via_disguise
                .describe_chain()
                .contains("bash [unverified] (9)")
        );
    }

    #[test]
    fn our_own_process_reads_back() {
        let me = std::process::id();
        let walk = walk_from(&ProcDir::open(me).unwrap(), me, &mut Ancestors::default()).unwrap();
        let chain = walk.chain;
        assert_eq!(chain[0].pid, me);
        assert_eq!(
            chain[0].exe.as_deref(),
            std::env::current_exe().ok().as_deref()
        );
        assert_eq!(read_start_time(me), Some(chain[0].start_time));
    }

    /// The groups are those the process held when it connected: one that
    /// leaves its groups afterwards (as root can) is still seen in them,
    /// as SO_PEERCRED keeps its uid.
    #[test]
    fn the_peer_groups_are_those_held_at_connect() {
        if !rustix::process::geteuid().is_root() {
            eprintln!("skipped: setting supplementary groups needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let script = format!(
            "import os, socket, time\n\
             s = socket.socket(socket.AF_UNIX)\n\
             s.connect({path:?})\n\
             os.setgroups([])\n\
             s.send(b'x')\n\
             time.sleep(10)\n"
        );
        let mut child = std::process::Command::new("setpriv")
            .args(["--groups=4242,4343", "--", "python3", "-c", &script])
            .spawn()
            .unwrap();
        let (mut stream, _) = listener.accept().unwrap();
        let mut byte = [0u8; 1];
        std::io::Read::read_exact(&mut stream, &mut byte).unwrap();
        let groups = peer_groups(&stream);
        child.kill().unwrap();
        child.wait().unwrap();
        let mut groups = groups.expect("the kernel tells the groups");
        groups.sort();
        assert_eq!(groups, vec![4242, 4343]);
    }

    /// The helper's time of its link reads reaches the master as it was,
    /// through CLOCK_MONOTONIC, and is never taken as earlier than the
    /// question or later than the answer.
    #[test]
    fn the_links_read_time_crosses_from_the_helper_and_is_bounded() {
        let me = std::process::id();
        let asked_at = Instant::now();
        let walk = walk_from(&ProcDir::open(me).unwrap(), me, &mut Ancestors::default()).unwrap();
        let mut bytes = Vec::new();
        walk.encode(&mut bytes);
        let decode = |asked_at| Walk::decode(&mut Reader::new(&bytes), asked_at).unwrap();

        let back = decode(asked_at).links_read_at;
        assert!(back >= asked_at && back <= Instant::now());
        let error = back
            .saturating_duration_since(walk.links_read_at)
            .max(walk.links_read_at.saturating_duration_since(back));
        assert!(
            error < std::time::Duration::from_millis(1),
            "{error:?} apart"
        );
        assert!(back <= walk.links_read_at, "the error errs early");

        // Asked after the helper says it read: the question's time counts.
        let later = Instant::now();
        assert_eq!(decode(later).links_read_at, later);
        // A time from the future (a broken stamp) counts as the question's.
        let mut future = bytes.clone();
        future[..8].copy_from_slice(&u64::MAX.to_be_bytes());
        let broken = Walk::decode(&mut Reader::new(&future), asked_at).unwrap();
        assert_eq!(broken.links_read_at, asked_at);
    }

    #[test]
    fn a_second_walk_sees_what_an_ancestor_runs_now() {
        use crate::test_support::eventually;
        use std::io::Write;
        use std::process::{Command, Stdio};
        // A shell with a child; told to, it execs another program, and the
        // child stays its child.
        let mut shell = Command::new("sh")
            .args(["-c", "sleep 60 & read line; exec sleep 61"])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        let shell_pid = shell.id();
        let children = format!("/proc/{shell_pid}/task/{shell_pid}/children");
        let child = eventually("the shell's child", || {
            let pid: u32 = std::fs::read_to_string(&children)
                .ok()?
                .trim()
                .parse()
                .ok()?;
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            cmdline.starts_with(b"sleep\x0060").then_some(pid)
        });
        let mut ancestors = Ancestors::default();
        let walk = |ancestors: &mut Ancestors| {
            walk_from(&ProcDir::open(child).unwrap(), child, ancestors)
                .unwrap()
                .chain
        };
        let before = walk(&mut ancestors);
        assert_eq!(before[1].pid, shell_pid);
        assert_eq!(before[1].cmdline[0], "sh");

        shell.stdin.take().unwrap().write_all(b"go\n").unwrap();
        let after = eventually("the shell's exec", || {
            let chain = walk(&mut ancestors);
            (chain[1].cmdline == ["sleep", "61"]).then_some(chain)
        });
        assert_eq!(after[1].pid, shell_pid);
        assert_eq!(after[1].start_time, before[1].start_time);
        assert!(after[1].exe.as_ref().unwrap().ends_with("sleep"));
        assert_eq!(
            after[2..],
            before[2..],
            "the rest of the chain is as it was"
        );

        shell.kill().unwrap();
        shell.wait().unwrap();
        let _ = rustix::process::kill_process(
            rustix::process::Pid::from_raw(child as i32).unwrap(),
            rustix::process::Signal::KILL,
        );
    }
}
