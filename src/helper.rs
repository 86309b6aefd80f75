//! Helper processes: small, fresh execs of this binary, started before the
//! sandbox goes on, that do on request the few things the sandboxed master
//! may not do itself. Each one answers one kind of question about data it
//! is sent, so a compromised master gains nothing it could not ask anyway.
//!
//! - `muxguard proc-helper` (see `access::proc_helper`) identifies the processes
//!   that connect.
//! - `muxguard askpass-broker PROGRAM` (see `prompt::broker`) runs the
//!   `SSH_ASKPASS` dialog.
//!
//! Both speak frames, `u32 length (big-endian), payload`: the askpass
//! broker on its stdin and stdout, the proc helper on a socket on its
//! stdin (it is sent descriptors).

use std::io::{self, Read, Write};

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
