//! `muxguard proc-helper`: identifies the processes that connect, for a
//! master whose sandbox keeps it from doing so itself (Landlock denies a
//! sandboxed process the ptrace-class access that `/proc/PID/exe` and
//! `cwd` need on processes outside its domain).
//!
//! The master sends /proc directories it has open, not pids: a directory
//! descriptor stays bound to the process it was opened for (once that
//! process exits, lookups in it fail, even after its pid is reused), so
//! what the helper reads belongs to exactly the process the master named.
//!
//! Two questions, each one frame (`helper::write_frame`) sent in one
//! `sendmsg` with its descriptors, over a socketpair on the helper's stdin:
//!
//! - `IDENTIFY pid` + the connecting process's directory: the whole walk
//!   (`access::peer::walk_from`) in one round trip (the account names are
//!   the master's to look up, meanwhile);
//! - `LINKS count` + `count` directories: their exe and cwd links (the
//!   check before a request that the peer has not exec'd).
//!
//! The master talks to it from the event loop, one question at a time,
//! without a thread hop. Without a helper (no sandbox) or when it fails,
//! the master does the same reads itself, off the event loop.

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;

use crate::access::ancestors::Ancestors;
use crate::access::peer::{self, Walk};
use crate::codec::{Reader, put_optional, put_u32};
use crate::helper::{MAX_FRAME, harden_helper, write_frame};
use crate::procfs::ProcDir;

/// The most directories one request may carry: the longest chain walked
/// (`access::peer`) and then some.
pub const MAX_PINNED: usize = 64;

/// How long the master waits for an answer. The helper only reads /proc
/// and two files under /etc: past this it is taken as broken, and the
/// master reads for itself from then on (a late answer would leave the
/// socket out of step).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);

const OP_IDENTIFY: u32 = 1;
const OP_LINKS: u32 = 2;

/// What the helper read for one process.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcLinks {
    pub exe: Option<PathBuf>,
    pub cwd: Option<PathBuf>,
}

impl ProcLinks {
    pub(crate) fn of(dir: &ProcDir) -> ProcLinks {
        ProcLinks {
            exe: dir.read_link("exe"),
            cwd: dir.read_link("cwd"),
        }
    }
}

// ---------------------------------------------------------------- master side

/// The master's end of `muxguard proc-helper`.
struct ProcHelper {
    socket: tokio::sync::Mutex<tokio::net::UnixStream>,
    broken: AtomicBool,
    _child: Child,
}

static PROC_HELPER: OnceLock<ProcHelper> = OnceLock::new();

/// Starts the helper and makes [`identify`] and [`links`] use it from now
/// on. Called inside the master's runtime, before the sandbox goes on.
pub fn install() -> io::Result<()> {
    let (ours, theirs) = UnixStream::pair()?;
    let child = Command::new(std::env::current_exe()?)
        .arg("proc-helper")
        .stdin(Stdio::from(OwnedFd::from(theirs)))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()?;
    ours.set_nonblocking(true)?;
    let socket = tokio::net::UnixStream::from_std(ours)?;
    let _ = PROC_HELPER.set(ProcHelper {
        socket: tokio::sync::Mutex::new(socket),
        broken: AtomicBool::new(false),
        _child: child,
    });
    Ok(())
}

impl ProcHelper {
    /// One question and its answer, or `None` (logged) if the helper
    /// failed; after a failure it is not asked again.
    async fn ask(&self, payload: &[u8], fds: &[BorrowedFd<'_>]) -> Option<Vec<u8>> {
        if self.broken.load(Ordering::Relaxed) {
            return None;
        }
        let mut socket = self.socket.lock().await;
        let exchange = async {
            send_request(&socket, payload, fds).await?;
            read_reply(&mut socket).await
        };
        let failure = match tokio::time::timeout(ANSWER_TIMEOUT, exchange).await {
            Ok(Ok(reply)) => return Some(reply),
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {} s", ANSWER_TIMEOUT.as_secs()),
        };
        self.broken.store(true, Ordering::Relaxed);
        tracing::warn!(
            "proc-helper: {failure}; the master reads /proc itself from now on, \
             and under its sandbox cannot see requesting programs' executables"
        );
        None
    }
}

async fn send_request(
    socket: &tokio::net::UnixStream,
    payload: &[u8],
    fds: &[BorrowedFd<'_>],
) -> io::Result<()> {
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
    if fds.len() > MAX_PINNED {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "too many processes in one proc-helper request",
        ));
    }
    let mut frame = Vec::with_capacity(4 + payload.len());
    write_frame(&mut frame, payload)?;
    let sent = socket
        .async_io(tokio::io::Interest::WRITABLE, || {
            let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_PINNED))];
            let mut control = SendAncillaryBuffer::new(&mut space);
            if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
                return Err(io::ErrorKind::InvalidInput.into());
            }
            rustix::net::sendmsg(
                socket,
                &[io::IoSlice::new(&frame)],
                &mut control,
                SendFlags::NOSIGNAL | SendFlags::DONTWAIT,
            )
            .map_err(io::Error::from)
        })
        .await?;
    // A request of a few bytes goes into an empty socket whole; anything
    // else would leave the helper holding half of one.
    if sent != frame.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "proc-helper request cut short",
        ));
    }
    Ok(())
}

async fn read_reply(socket: &mut tokio::net::UnixStream) -> io::Result<Vec<u8>> {
    let len = socket.read_u32().await? as usize;
    if len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("proc-helper reply of {len} bytes"),
        ));
    }
    let mut reply = vec![0; len];
    socket.read_exact(&mut reply).await?;
    Ok(reply)
}

/// Identifies the process behind `dir`: through the helper when one is
/// installed and answers, else by reading /proc here, on the blocking pool.
/// Returns `dir` with the answer (the caller keeps it for rechecks).
pub async fn identify(dir: ProcDir, pid: u32) -> (ProcDir, Option<Walk>) {
    if let Some(helper) = PROC_HELPER.get() {
        let mut payload = Vec::with_capacity(8);
        for word in [OP_IDENTIFY, pid] {
            put_u32(&mut payload, word);
        }
        let asked_at = Instant::now();
        let reply = helper.ask(&payload, &[dir.as_fd()]).await;
        if let Some(walk) = reply.and_then(|r| decode_walk_reply(&r, asked_at)) {
            return (dir, walk);
        }
    }
    tokio::task::spawn_blocking(move || {
        let walk = peer::walk_from(&dir, pid, &mut Ancestors::default());
        (dir, walk)
    })
    .await
    .expect("the identification does not panic")
}

/// The exe and cwd links behind `dir`, through the helper when one is
/// installed, else read here.
pub async fn links(dir: &ProcDir) -> ProcLinks {
    if let Some(helper) = PROC_HELPER.get() {
        let mut payload = Vec::with_capacity(8);
        put_u32(&mut payload, OP_LINKS);
        put_u32(&mut payload, 1);
        let reply = helper.ask(&payload, &[dir.as_fd()]).await;
        if let Some(mut links) = reply.and_then(|r| decode_links(&r, 1)) {
            return links.pop().unwrap_or_default();
        }
        // The sandboxed master cannot read the links itself.
        return ProcLinks::default();
    }
    ProcLinks::of(dir)
}

// ---------------------------------------------------------------- helper side

/// `muxguard proc-helper`: answers until the master closes the socket.
pub fn serve() -> anyhow::Result<()> {
    harden_helper();
    let socket = UnixStream::from(io::stdin().as_fd().try_clone_to_owned()?);
    serve_requests(&socket)?;
    Ok(())
}

/// The helper's loop. A request it cannot use gets an empty reply, which
/// the master reads as "not known"; the next request is answered as usual.
fn serve_requests(socket: &UnixStream) -> io::Result<()> {
    let mut ancestors = Ancestors::default();
    while let Some(request) = receive_request(socket)? {
        let reply = answer(request, &mut ancestors).unwrap_or_default();
        write_frame(&mut &*socket, &reply)?;
    }
    Ok(())
}

/// One request as the helper received it: the frame's payload and the
/// descriptors that came with it, in order.
struct Request {
    payload: Vec<u8>,
    fds: Vec<OwnedFd>,
}

/// Reads one request frame with its descriptors; `Ok(None)` at a clean
/// end. Descriptors are collected from every read that makes up the frame.
fn receive_request(socket: &UnixStream) -> io::Result<Option<Request>> {
    let mut bytes = Vec::new();
    let mut fds = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let wanted = match bytes.get(..4) {
            Some(len) => 4 + u32::from_be_bytes(len.try_into().expect("4 bytes")) as usize,
            None => 4,
        };
        if bytes.len() >= wanted {
            break;
        }
        let room = (wanted - bytes.len()).min(buf.len());
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_PINNED))];
        let received = crate::scm::recv_with_fds(socket, &mut buf[..room], &mut space, &mut fds)?;
        if received == 0 {
            if bytes.is_empty() {
                return Ok(None);
            }
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        bytes.extend_from_slice(&buf[..received]);
        if bytes.len() > 4 + MAX_FRAME {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "request too long",
            ));
        }
    }
    Ok(Some(Request {
        payload: bytes.split_off(4),
        fds,
    }))
}

/// The reply to one request, or `None` for a request the helper cannot
/// use: an unknown question, a count that is not the number of
/// descriptors sent, or a descriptor that is not a /proc directory.
fn answer(request: Request, ancestors: &mut Ancestors) -> Option<Vec<u8>> {
    let mut payload = Reader::new(&request.payload);
    let op = payload.u32()?;
    let dirs: Vec<ProcDir> = request
        .fds
        .into_iter()
        .map(ProcDir::from_received)
        .collect::<Option<_>>()?;
    match op {
        OP_IDENTIFY => {
            let pid = payload.u32()?;
            let [dir] = dirs.as_slice() else {
                return None;
            };
            payload.finished()?;
            // The ancestors stay open for the next walk.
            Some(encode_walk_reply(
                peer::walk_from(dir, pid, ancestors).as_ref(),
            ))
        }
        OP_LINKS => {
            let count = payload.u32()? as usize;
            payload.finished()?;
            if count != dirs.len() || count > MAX_PINNED {
                return None;
            }
            let links: Vec<ProcLinks> = dirs.iter().map(ProcLinks::of).collect();
            Some(encode_links(&links))
        }
        _ => None,
    }
}

// ---------------------------------------------------------------- encoding

pub(crate) fn put_path(out: &mut Vec<u8>, path: Option<&std::path::Path>) {
    use std::os::unix::ffi::OsStrExt;
    put_optional(out, path.map(|p| p.as_os_str().as_bytes()));
}

pub(crate) fn take_path(reader: &mut Reader<'_>) -> Option<Option<PathBuf>> {
    use std::os::unix::ffi::OsStrExt;
    Some(
        reader
            .optional()?
            .map(|raw| PathBuf::from(std::ffi::OsStr::from_bytes(raw))),
    )
}

fn encode_links(links: &[ProcLinks]) -> Vec<u8> {
    let mut out = Vec::new();
    for l in links {
        put_path(&mut out, l.exe.as_deref());
        put_path(&mut out, l.cwd.as_deref());
    }
    out
}

fn decode_links(bytes: &[u8], count: usize) -> Option<Vec<ProcLinks>> {
    let mut reader = Reader::new(bytes);
    let mut links = Vec::with_capacity(count);
    for _ in 0..count {
        let exe = take_path(&mut reader)?;
        let cwd = take_path(&mut reader)?;
        links.push(ProcLinks { exe, cwd });
    }
    reader.finished()?;
    Some(links)
}

/// An IDENTIFY's answer: whether there is a walk, then the walk.
fn encode_walk_reply(walk: Option<&Walk>) -> Vec<u8> {
    let mut out = Vec::new();
    match walk {
        Some(walk) => {
            put_u32(&mut out, 1);
            walk.encode(&mut out);
        }
        None => put_u32(&mut out, 0),
    }
    out
}

/// Reads [`encode_walk_reply`]'s answer: `None` if it is malformed,
/// `Some(None)` if the helper found no walk.
fn decode_walk_reply(bytes: &[u8], asked_at: Instant) -> Option<Option<Walk>> {
    let mut reader = Reader::new(bytes);
    let walk = match reader.u32()? {
        0 => None,
        1 => Some(Walk::decode(&mut reader, asked_at)?),
        _ => return None,
    };
    reader.finished()?;
    Some(walk)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::helper::{Frame, read_frame};

    #[test]
    fn links_survive_the_round_trip() {
        let links = vec![
            ProcLinks {
                exe: Some("/usr/bin/git".into()),
                cwd: None,
            },
            ProcLinks {
                exe: None,
                cwd: Some("/home/a b".into()),
            },
        ];
        let bytes = encode_links(&links);
        assert_eq!(decode_links(&bytes, 2), Some(links));
        // Truncated, too long, or the wrong count: refused.
        assert_eq!(decode_links(&bytes[..bytes.len() - 1], 2), None);
        assert_eq!(decode_links(&bytes, 1), None);
    }

    #[test]
    fn an_identification_survives_the_round_trip() {
        let me = ProcDir::open(std::process::id()).unwrap();
        let here = peer::walk_from(&me, std::process::id(), &mut Ancestors::default());
        let walk = here.expect("walked");
        let bytes = encode_walk_reply(Some(&walk));
        let back = decode_walk_reply(&bytes, Instant::now()).expect("decodes");
        assert_eq!(walk.chain, back.expect("a walk").chain);
        assert_eq!(walk.chain[0].pid, std::process::id());
        // Any cut is refused, never half read; no walk is told as such.
        for cut in [1, 5, bytes.len() / 2, bytes.len() - 1] {
            assert!(
                decode_walk_reply(&bytes[..cut], Instant::now()).is_none(),
                "cut at {cut}"
            );
        }
        let none = decode_walk_reply(&encode_walk_reply(None), Instant::now());
        assert!(matches!(none, Some(None)));
    }

    /// A helper loop on one end of a socketpair, as the master runs it.
    fn helper_on_a_thread() -> (UnixStream, std::thread::JoinHandle<io::Result<()>>) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let thread = std::thread::spawn(move || serve_requests(&theirs));
        (ours, thread)
    }

    /// Sends one request the blocking way, as a misbehaving master might.
    fn send(socket: &UnixStream, payload: &[u8], fds: &[BorrowedFd<'_>]) {
        use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
        let mut frame = Vec::new();
        write_frame(&mut frame, payload).unwrap();
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_PINNED))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !fds.is_empty() {
            assert!(control.push(SendAncillaryMessage::ScmRights(fds)));
        }
        let iov = [io::IoSlice::new(&frame)];
        rustix::net::sendmsg(socket, &iov, &mut control, SendFlags::empty()).unwrap();
    }

    fn links_request(count: u32) -> Vec<u8> {
        let mut payload = Vec::new();
        put_u32(&mut payload, OP_LINKS);
        put_u32(&mut payload, count);
        payload
    }

    fn reply(socket: &UnixStream) -> Vec<u8> {
        match read_frame(&mut &*socket).unwrap() {
            Some(Frame::Data(reply)) => reply,
            other => panic!("no reply: {other:?}"),
        }
    }

    #[test]
    fn the_proc_helper_survives_any_request() {
        let (socket, thread) = helper_on_a_thread();
        let me = ProcDir::open(std::process::id()).unwrap();
        // A count that is not the number of descriptors sent.
        send(&socket, &links_request(2), &[]);
        assert!(reply(&socket).is_empty(), "a bad request is not answered");
        // An unknown question, and one cut short.
        send(&socket, &99u32.to_be_bytes(), &[me.as_fd()]);
        assert!(reply(&socket).is_empty());
        send(&socket, &OP_IDENTIFY.to_be_bytes(), &[me.as_fd()]);
        assert!(reply(&socket).is_empty());
        // A directory that is not on /proc: refused, not read.
        let elsewhere = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/etc/shadow", elsewhere.path().join("exe")).unwrap();
        let not_proc = rustix::fs::open(
            elsewhere.path(),
            rustix::fs::OFlags::PATH | rustix::fs::OFlags::DIRECTORY,
            rustix::fs::Mode::empty(),
        )
        .unwrap();
        send(&socket, &links_request(2), &[me.as_fd(), not_proc.as_fd()]);
        assert!(reply(&socket).is_empty(), "a plain directory is no process");
        // The next request is answered.
        send(&socket, &links_request(2), &[me.as_fd(), me.as_fd()]);
        let links = decode_links(&reply(&socket), 2).expect("the next request is answered");
        assert_eq!(links[0].exe, std::env::current_exe().ok());
        assert_eq!(links[1].cwd, std::env::current_dir().ok());
        drop(socket);
        thread.join().unwrap().unwrap();
    }

    #[test]
    fn the_links_are_those_of_the_process_the_directory_was_opened_for() {
        let (socket, thread) = helper_on_a_thread();
        let mut child = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap();
        let dir = ProcDir::open(child.id()).unwrap();
        send(&socket, &links_request(1), &[dir.as_fd()]);
        let links = decode_links(&reply(&socket), 1).unwrap();
        assert_eq!(
            links[0].exe.as_deref().and_then(|e| e.file_name()),
            Some("sleep".as_ref())
        );
        // Once that process is gone its directory answers nothing, whoever
        // has the pid by then.
        child.kill().unwrap();
        child.wait().unwrap();
        send(&socket, &links_request(1), &[dir.as_fd()]);
        assert_eq!(
            decode_links(&reply(&socket), 1),
            Some(vec![ProcLinks::default()])
        );
        drop(socket);
        thread.join().unwrap().unwrap();
    }

    #[test]
    fn the_helper_identifies_the_process_of_the_directory() {
        let (socket, thread) = helper_on_a_thread();
        let me = ProcDir::open(std::process::id()).unwrap();
        let mut payload = Vec::new();
        for word in [OP_IDENTIFY, std::process::id()] {
            put_u32(&mut payload, word);
        }
        send(&socket, &payload, &[me.as_fd()]);
        let walk = decode_walk_reply(&reply(&socket), Instant::now())
            .expect("answered")
            .expect("walked");
        assert_eq!(walk.chain[0].pid, std::process::id());
        assert_eq!(walk.chain[0].exe, std::env::current_exe().ok());
        drop(socket);
        thread.join().unwrap().unwrap();
    }
}
