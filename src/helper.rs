//! Helper processes: small, fresh execs of this binary, started before the
//! sandbox goes on, that do on request the few things the sandboxed master
//! may not do itself. Each one answers one kind of question about data it
//! is sent, so a compromised master gains nothing it could not ask anyway.
//!
//! - `muxguard proc-helper` reads `/proc/PID/exe` and `/proc/PID/cwd` of
//!   the processes that connect: Landlock forbids a sandboxed process the
//!   ptrace-class access these links need on processes outside its sandbox.
//! - `muxguard askpass-broker PROGRAM` (see `prompt::broker`) runs the
//!   `SSH_ASKPASS` dialog.
//!
//! Both speak frames on the helper's stdin and stdout: `u32 length
//! (big-endian), payload`.

use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Mutex, OnceLock};

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

/// Starts `muxguard <args>` with its stdin and stdout as pipes.
pub fn spawn(args: &[&std::ffi::OsStr]) -> io::Result<Child> {
    Command::new(std::env::current_exe()?)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
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

/// What the helper read for one process: its start time (read before the
/// links, so the caller can tell the pid was not reused meanwhile), the
/// executable and the working directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcLinks {
    pub start_time: Option<u64>,
    pub exe: Option<PathBuf>,
    pub cwd: Option<PathBuf>,
}

/// The master's end of `muxguard proc-helper`.
pub struct ProcHelper {
    pipes: Mutex<(ChildStdin, ChildStdout)>,
    _child: Child,
}

static PROC_HELPER: OnceLock<ProcHelper> = OnceLock::new();

impl ProcHelper {
    /// Starts the helper and makes [`links`] use it from now on.
    pub fn install() -> io::Result<()> {
        let mut child = spawn(&["proc-helper".as_ref()])?;
        let stdin = child.stdin.take().expect("piped");
        let stdout = child.stdout.take().expect("piped");
        let _ = PROC_HELPER.set(ProcHelper {
            pipes: Mutex::new((stdin, stdout)),
            _child: child,
        });
        Ok(())
    }

    fn ask(&self, pids: &[u32]) -> io::Result<Vec<ProcLinks>> {
        let mut pipes = self.pipes.lock().unwrap_or_else(|e| e.into_inner());
        let (stdin, stdout) = &mut *pipes;
        let request: Vec<u8> = pids.iter().flat_map(|p| p.to_be_bytes()).collect();
        write_frame(stdin, &request)?;
        let reply = match read_frame(stdout)?.ok_or(io::ErrorKind::UnexpectedEof)? {
            Frame::Data(reply) => reply,
            Frame::TooLong(len) => {
                let why = format!("proc-helper reply of {len} bytes");
                return Err(io::Error::new(io::ErrorKind::InvalidData, why));
            }
        };
        decode_links(&reply, pids.len())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad proc-helper reply"))
    }
}

/// The exe and cwd links of each pid: through the helper when one is
/// installed (the master under its sandbox), else read directly.
pub fn links(pids: &[u32]) -> Vec<ProcLinks> {
    match PROC_HELPER.get() {
        Some(helper) => helper.ask(pids).unwrap_or_else(|e| {
            tracing::warn!("proc-helper: {e}; requesting programs are unknown");
            pids.iter()
                .map(|_| ProcLinks {
                    start_time: None,
                    exe: None,
                    cwd: None,
                })
                .collect()
        }),
        None => pids.iter().map(|&pid| read_links(pid)).collect(),
    }
}

fn read_links(pid: u32) -> ProcLinks {
    let dir = PathBuf::from(format!("/proc/{pid}"));
    ProcLinks {
        start_time: crate::procfs::read_start_time(pid),
        exe: std::fs::read_link(dir.join("exe")).ok(),
        cwd: std::fs::read_link(dir.join("cwd")).ok(),
    }
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
        out.extend_from_slice(&l.start_time.unwrap_or(u64::MAX).to_be_bytes());
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
        let start = u64::from_be_bytes(take(&mut bytes, 8)?.try_into().ok()?);
        let exe = path(&mut bytes)?;
        let cwd = path(&mut bytes)?;
        links.push(ProcLinks {
            start_time: (start != u64::MAX).then_some(start),
            exe,
            cwd,
        });
    }
    bytes.is_empty().then_some(links)
}

/// `muxguard proc-helper`: answers until the master closes the pipe.
pub fn serve_proc() -> anyhow::Result<()> {
    harden_helper();
    serve_proc_frames(&mut io::stdin().lock(), &mut io::stdout().lock())?;
    Ok(())
}

/// The proc-helper's loop. A request it cannot use (too long, not a list
/// of pids) gets an empty reply, which the master reads as "not known" for
/// every pid of it; the next request is answered as usual.
fn serve_proc_frames(input: &mut impl Read, output: &mut impl Write) -> io::Result<()> {
    while let Some(frame) = read_frame(input)? {
        let reply = match frame {
            Frame::Data(request) if request.len() % 4 == 0 => {
                let links: Vec<ProcLinks> = request
                    .chunks_exact(4)
                    .map(|c| read_links(u32::from_be_bytes(c.try_into().expect("4 bytes"))))
                    .collect();
                encode_links(&links)
            }
            Frame::Data(_) | Frame::TooLong(_) => Vec::new(),
        };
        write_frame(output, &reply)?;
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
                start_time: Some(42),
                exe: Some("/usr/bin/git".into()),
                cwd: None,
            },
            ProcLinks {
                start_time: None,
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

    #[test]
    fn the_proc_helper_survives_any_request() {
        let me = std::process::id();
        let mut requests = Vec::new();
        write_frame(&mut requests, &[1, 2, 3]).unwrap();
        write_frame(&mut requests, &vec![0; MAX_FRAME + 4]).unwrap();
        write_frame(&mut requests, &me.to_be_bytes()).unwrap();
        let mut replies = Vec::new();
        serve_proc_frames(&mut requests.as_slice(), &mut replies).unwrap();
        let mut replies = replies.as_slice();
        for _ in 0..2 {
            let Some(Frame::Data(reply)) = read_frame(&mut replies).unwrap() else {
                panic!("no reply")
            };
            assert_eq!(
                decode_links(&reply, 1),
                None,
                "a bad request is not answered"
            );
        }
        let Some(Frame::Data(reply)) = read_frame(&mut replies).unwrap() else {
            panic!("no reply")
        };
        let links = decode_links(&reply, 1).expect("the next request is answered");
        assert_eq!(links[0].exe, std::env::current_exe().ok());
    }
}
