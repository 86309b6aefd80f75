//! What is at a control path: nothing, a stale socket, or a live master,
//! asked the way the stock client asks (HELLO, then ALIVE_CHECK), before a
//! new master takes the path or `muxguard ensure` starts one.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use anyhow::bail;

use super::wire::{self, ServerMessage};

/// Checks the control path and what is already there. `Ok(Some(pid))`: a
/// live master already serves it.
pub fn check_control_path(path: &Path) -> anyhow::Result<Option<u32>> {
    crate::paths::check_path_length(path)?;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    crate::paths::ensure_private_dir(dir)?;
    match probe(path, Duration::from_secs(2)) {
        Existing::Nothing | Existing::Stale => Ok(None),
        Existing::Live { pid } => Ok(Some(pid)),
        Existing::Unresponsive => bail!(
            "{} exists and accepts connections but does not answer like a master; not replacing it",
            path.display()
        ),
        Existing::NotASocket => bail!(
            "{} exists and is not a socket; not replacing it",
            path.display()
        ),
    }
}

/// What is at a control path right now.
#[derive(Debug, PartialEq, Eq)]
pub enum Existing {
    Nothing,
    /// A socket nobody listens on: safe to replace.
    Stale,
    /// A master answered with this pid.
    Live {
        pid: u32,
    },
    /// Something accepted the connection but did not answer like a master:
    /// never replaced, since it may be a live master that is busy.
    Unresponsive,
    NotASocket,
}

/// Looks at what is at `path` (connect, HELLO, ALIVE_CHECK).
pub fn probe(path: &Path, timeout: Duration) -> Existing {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Err(_) => return Existing::Nothing,
        Ok(meta) if !meta.file_type().is_socket() => return Existing::NotASocket,
        Ok(_) => {}
    }
    let mut stream = match UnixStream::connect(path) {
        Ok(stream) => stream,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return Existing::Stale,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Existing::Nothing,
        Err(_) => return Existing::Unresponsive,
    };
    match alive_check(&mut stream, timeout) {
        Some(pid) if pid > 1 => Existing::Live { pid },
        _ => Existing::Unresponsive,
    }
}

fn alive_check(stream: &mut UnixStream, timeout: Duration) -> Option<u32> {
    stream.set_read_timeout(Some(timeout)).ok()?;
    stream.set_write_timeout(Some(timeout)).ok()?;
    let mut request = ServerMessage::Hello { extensions: vec![] }.encode();
    // ALIVE_CHECK rid 0; the client side of the protocol, spelled out.
    request.extend_from_slice(&8u32.to_be_bytes());
    request.extend_from_slice(&wire::msg::C_ALIVE_CHECK.to_be_bytes());
    request.extend_from_slice(&0u32.to_be_bytes());
    stream.write_all(&request).ok()?;
    let mut hello = [0u8; 12];
    stream.read_exact(&mut hello).ok()?;
    if hello[4..8] != wire::msg::HELLO.to_be_bytes() {
        return None;
    }
    let hello_len = u32::from_be_bytes(hello[..4].try_into().ok()?) as usize;
    // Skip any HELLO extensions.
    let mut rest = vec![0u8; hello_len.checked_sub(8)?];
    stream.read_exact(&mut rest).ok()?;
    let mut alive = [0u8; 16];
    stream.read_exact(&mut alive).ok()?;
    if alive[4..8] != wire::msg::S_ALIVE.to_be_bytes() {
        return None;
    }
    Some(u32::from_be_bytes(alive[12..16].try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_tells_stale_from_missing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sock");
        assert_eq!(probe(&path, Duration::from_secs(1)), Existing::Nothing);
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert_eq!(probe(&path, Duration::from_secs(1)), Existing::Stale);
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, b"").unwrap();
        assert_eq!(probe(&path, Duration::from_secs(1)), Existing::NotASocket);
    }
}
