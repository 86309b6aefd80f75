//! Helper processes: small, fresh execs of this binary, started before the
//! sandbox goes on, that do on request the few things the sandboxed master
//! may not do itself. Each one answers one kind of question about data it
//! is sent, so a compromised master gains nothing it could not ask anyway.
//!
//! - `muxguard proc-helper` reads the `exe` and `cwd` links of the /proc
//!   directories the master sends it: Landlock forbids a sandboxed process
//!   the ptrace-class access these links need on processes outside its
//!   sandbox.
//! - `muxguard askpass-broker PROGRAM` (see `prompt::broker`) runs the
//!   `SSH_ASKPASS` dialog.
//!
//! Both speak frames, `u32 length (big-endian), payload`: the askpass
//! broker on its stdin and stdout, the proc helper on a socket on its
//! stdin (it is sent descriptors).

use std::io::{self, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};

use crate::procfs::ProcDir;

/// The longest frame either side accepts, far above any real one (a proc
/// reply for a 32-process chain with 4 KiB paths is about 260 KiB).
pub const MAX_FRAME: usize = 1024 * 1024;

/// One frame as read.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    Data(Vec<u8>),
    /// A frame over [`MAX_FRAME`], whose payload was read and dropped so
    /// that the next frame is read from its start: a bad frame costs one
    /// answer, never the pipe.
    TooLong(usize),
}

/// Writes one frame in one `write` where it fits the pipe, so that the
/// reader wakes once per frame, not once for its length and again for it.
pub fn write_frame(w: &mut impl Write, payload: &[u8]) -> io::Result<()> {
    let len = u32::try_from(payload.len()).map_err(|_| io::ErrorKind::InvalidInput)?;
    let mut frame = Vec::with_capacity(4 + payload.len());
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(payload);
    w.write_all(&frame)?;
    w.flush()
}

/// One frame; `Ok(None)` at a clean end of input.
pub fn read_frame(r: &mut impl Read) -> io::Result<Option<Frame>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        let skipped = io::copy(&mut r.take(len as u64), &mut io::sink())?;
        if skipped < len as u64 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        return Ok(Some(Frame::TooLong(len)));
    }
    let mut payload = vec![0; len];
    r.read_exact(&mut payload)?;
    Ok(Some(Frame::Data(payload)))
}

/// Helpers hold nothing worth stealing, but a same-uid process that could
/// ptrace one could feed the master false answers.
pub fn harden_helper() {
    let _ = rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable);
    let _ = rustix::thread::set_no_new_privs(true);
}

// ---------------------------------------------------------------------------
// The /proc link reader
// ---------------------------------------------------------------------------
//
// The master sends the helper the /proc directories it has open, not pids:
// a directory descriptor stays bound to the process it was opened for (if
// that process exits, lookups in it fail even once its pid is reused), so
// the links the helper reads belong to exactly the process whose stat and
// cmdline the master read. It costs no start-time check, on either side.
//
// A request is one frame, `u32 count`, sent in one `sendmsg` with `count`
// directory descriptors; the reply is one frame of `count` entries. The
// socket is a socketpair on the helper's stdin.

/// The most processes one request may name: the longest chain walked
/// (`access::peer`) and then some.
pub const MAX_PINNED: usize = 64;

/// What the helper read for one process.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcLinks {
    pub exe: Option<PathBuf>,
    pub cwd: Option<PathBuf>,
}

/// The master's end of `muxguard proc-helper`.
pub struct ProcHelper {
    socket: Mutex<UnixStream>,
    _child: Child,
}

static PROC_HELPER: OnceLock<ProcHelper> = OnceLock::new();

impl ProcHelper {
    /// Starts the helper and makes [`links`] use it from now on.
    pub fn install() -> io::Result<()> {
        let (ours, theirs) = UnixStream::pair()?;
        let child = Command::new(std::env::current_exe()?)
            .arg("proc-helper")
            .stdin(Stdio::from(std::os::fd::OwnedFd::from(theirs)))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()?;
        let _ = PROC_HELPER.set(ProcHelper {
            socket: Mutex::new(ours),
            _child: child,
        });
        Ok(())
    }

    fn ask(&self, dirs: &[&ProcDir]) -> io::Result<Vec<ProcLinks>> {
        let mut socket = self.socket.lock().unwrap_or_else(|e| e.into_inner());
        let fds: Vec<BorrowedFd<'_>> = dirs.iter().map(|d| d.as_fd()).collect();
        send_request(&socket, &fds)?;
        let reply = match read_frame(&mut *socket)?.ok_or(io::ErrorKind::UnexpectedEof)? {
            Frame::Data(reply) => reply,
            Frame::TooLong(len) => {
                let why = format!("proc-helper reply of {len} bytes");
                return Err(io::Error::new(io::ErrorKind::InvalidData, why));
            }
        };
        decode_links(&reply, dirs.len())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad proc-helper reply"))
    }
}

/// The exe and cwd links of each process: through the helper when one is
/// installed (the master under its sandbox), else read directly.
pub fn links(dirs: &[&ProcDir]) -> Vec<ProcLinks> {
    match PROC_HELPER.get() {
        Some(helper) => helper.ask(dirs).unwrap_or_else(|e| {
            tracing::warn!("proc-helper: {e}; requesting programs are unknown");
            vec![ProcLinks::default(); dirs.len()]
        }),
        None => dirs.iter().map(|dir| read_links(dir)).collect(),
    }
}

fn read_links(dir: &ProcDir) -> ProcLinks {
    ProcLinks {
        exe: dir.read_link("exe"),
        cwd: dir.read_link("cwd"),
    }
}

fn send_request(socket: &UnixStream, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
    if fds.len() > MAX_PINNED {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "too many processes in one proc-helper request",
        ));
    }
    let mut frame = Vec::with_capacity(8);
    frame.extend_from_slice(&4u32.to_be_bytes());
    frame.extend_from_slice(&(fds.len() as u32).to_be_bytes());
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_PINNED))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::ErrorKind::InvalidInput.into());
    }
    let sent = rustix::net::sendmsg(
        socket,
        &[io::IoSlice::new(&frame)],
        &mut control,
        SendFlags::NOSIGNAL,
    )?;
    // Eight bytes into an empty socket go in one piece; anything else
    // would leave the helper holding half a request.
    if sent != frame.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "proc-helper request cut short",
        ));
    }
    Ok(())
}

/// One request as the helper received it: the frame's payload and the
/// descriptors that came with it, in order.
struct Request {
    payload: Vec<u8>,
    fds: Vec<std::os::fd::OwnedFd>,
}

/// Reads one request frame with its descriptors; `Ok(None)` at a clean
/// end. Descriptors are collected from every read that makes up the frame.
fn receive_request(socket: &UnixStream) -> io::Result<Option<Request>> {
    use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
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
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let received = rustix::net::recvmsg(
            socket,
            &mut [io::IoSliceMut::new(&mut buf[..room])],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        )?;
        for message in control.drain() {
            if let RecvAncillaryMessage::ScmRights(received_fds) = message {
                fds.extend(received_fds);
            }
        }
        if received.bytes == 0 {
            if bytes.is_empty() {
                return Ok(None);
            }
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        bytes.extend_from_slice(&buf[..received.bytes]);
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

/// The links for one request, or `None` for a request the helper cannot
/// use: a count that is not the number of descriptors sent, or a
/// descriptor that is not a /proc directory.
fn answer(request: Request) -> Option<Vec<ProcLinks>> {
    let count = u32::from_be_bytes(request.payload.as_slice().try_into().ok()?) as usize;
    if count != request.fds.len() || count > MAX_PINNED {
        return None;
    }
    let dirs: Option<Vec<ProcDir>> = request
        .fds
        .into_iter()
        .map(ProcDir::from_received)
        .collect();
    Some(dirs?.iter().map(read_links).collect())
}

fn put_optional(out: &mut Vec<u8>, bytes: Option<&[u8]>) {
    match bytes {
        Some(b) => {
            out.extend_from_slice(&(b.len() as u32).to_be_bytes());
            out.extend_from_slice(b);
        }
        None => out.extend_from_slice(&u32::MAX.to_be_bytes()),
    }
}

fn encode_links(links: &[ProcLinks]) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    let mut out = Vec::new();
    for l in links {
        put_optional(&mut out, l.exe.as_ref().map(|p| p.as_os_str().as_bytes()));
        put_optional(&mut out, l.cwd.as_ref().map(|p| p.as_os_str().as_bytes()));
    }
    out
}

fn decode_links(mut bytes: &[u8], count: usize) -> Option<Vec<ProcLinks>> {
    use std::os::unix::ffi::OsStrExt;
    fn take<'a>(bytes: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (head, rest) = bytes.split_at_checked(n)?;
        *bytes = rest;
        Some(head)
    }
    let path = |bytes: &mut &[u8]| -> Option<Option<PathBuf>> {
        let len = u32::from_be_bytes(take(bytes, 4)?.try_into().ok()?);
        if len == u32::MAX {
            return Some(None);
        }
        let raw = take(bytes, len as usize)?;
        Some(Some(PathBuf::from(std::ffi::OsStr::from_bytes(raw))))
    };
    let mut links = Vec::with_capacity(count);
    for _ in 0..count {
        let exe = path(&mut bytes)?;
        let cwd = path(&mut bytes)?;
        links.push(ProcLinks { exe, cwd });
    }
    bytes.is_empty().then_some(links)
}

/// `muxguard proc-helper`: answers until the master closes the socket.
pub fn serve_proc() -> anyhow::Result<()> {
    harden_helper();
    let socket = UnixStream::from(io::stdin().as_fd().try_clone_to_owned()?);
    serve_proc_requests(&socket)?;
    Ok(())
}

/// The proc-helper's loop. A request it cannot use gets an empty reply,
/// which the master reads as "not known" for every process of it; the
/// next request is answered as usual.
fn serve_proc_requests(socket: &UnixStream) -> io::Result<()> {
    while let Some(request) = receive_request(socket)? {
        let reply = answer(request).map_or_else(Vec::new, |links| encode_links(&links));
        write_frame(&mut &*socket, &reply)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn frames_are_bounded_and_a_long_one_keeps_the_stream_in_step() {
        let mut buf = Vec::new();
        write_frame(&mut buf, b"abc").unwrap();
        write_frame(&mut buf, &vec![7; MAX_FRAME + 1]).unwrap();
        write_frame(&mut buf, b"after").unwrap();
        let mut input = buf.as_slice();
        assert_eq!(
            read_frame(&mut input).unwrap(),
            Some(Frame::Data(b"abc".to_vec()))
        );
        assert_eq!(
            read_frame(&mut input).unwrap(),
            Some(Frame::TooLong(MAX_FRAME + 1))
        );
        assert_eq!(
            read_frame(&mut input).unwrap(),
            Some(Frame::Data(b"after".to_vec()))
        );
        assert_eq!(read_frame(&mut input).unwrap(), None);
        // A frame cut short is an error, not a silent end.
        let huge = (MAX_FRAME as u32 + 1).to_be_bytes();
        assert!(read_frame(&mut &huge[..]).is_err());
        assert!(read_frame(&mut &[0, 0, 0, 9, 1][..]).is_err());
    }

    /// A helper loop on one end of a socketpair, as `ProcHelper` runs it.
    fn helper_on_a_thread() -> (UnixStream, std::thread::JoinHandle<io::Result<()>>) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let thread = std::thread::spawn(move || serve_proc_requests(&theirs));
        (ours, thread)
    }

    fn reply_to(socket: &UnixStream, count: usize) -> Option<Vec<ProcLinks>> {
        let Some(Frame::Data(reply)) = read_frame(&mut &*socket).unwrap() else {
            panic!("no reply")
        };
        decode_links(&reply, count)
    }

    #[test]
    fn the_proc_helper_survives_any_request() {
        let (socket, thread) = helper_on_a_thread();
        let me = ProcDir::open(std::process::id()).unwrap();
        // A count that is not the number of descriptors sent.
        let mut bad = Vec::new();
        write_frame(&mut bad, &2u32.to_be_bytes()).unwrap();
        (&socket).write_all(&bad).unwrap();
        assert_eq!(reply_to(&socket, 2), None, "a bad request is not answered");
        // A directory that is not on /proc: refused, not read.
        let elsewhere = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/etc/shadow", elsewhere.path().join("exe")).unwrap();
        let not_proc = rustix::fs::open(
            elsewhere.path(),
            rustix::fs::OFlags::PATH | rustix::fs::OFlags::DIRECTORY,
            rustix::fs::Mode::empty(),
        )
        .unwrap();
        send_request(&socket, &[me.as_fd(), not_proc.as_fd()]).unwrap();
        assert_eq!(
            reply_to(&socket, 2),
            None,
            "a plain directory is no process"
        );
        // The next request is answered.
        send_request(&socket, &[me.as_fd(), me.as_fd()]).unwrap();
        let links = reply_to(&socket, 2).expect("the next request is answered");
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
        send_request(&socket, &[dir.as_fd()]).unwrap();
        let links = reply_to(&socket, 1).unwrap();
        assert_eq!(
            links[0].exe.as_deref().and_then(|e| e.file_name()),
            Some("sleep".as_ref())
        );
        // Once that process is gone its directory answers nothing, whoever
        // has the pid by then.
        child.kill().unwrap();
        child.wait().unwrap();
        send_request(&socket, &[dir.as_fd()]).unwrap();
        assert_eq!(reply_to(&socket, 1).unwrap(), vec![ProcLinks::default()]);
        drop(socket);
        thread.join().unwrap().unwrap();
    }
}
