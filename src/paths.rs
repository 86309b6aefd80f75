//! Where muxguard keeps things (XDG directories) and the safety rules for
//! the control socket's path: a short enough name, a private directory, and
//! a probe that tells a live master from a stale socket.

use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::bail;

use crate::mux::wire::{self, ServerMessage};

/// `sun_path` on Linux holds 108 bytes including the terminating NUL.
pub const SUN_PATH_MAX: usize = 107;

/// The socket is first bound as `<path>.<16 random chars>` and then linked
/// into place, so the final path needs this much room to spare.
pub const TEMP_SUFFIX_LEN: usize = 17;

/// `$XDG_RUNTIME_DIR/muxguard`, or a per-user directory in /tmp.
pub fn runtime_dir() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        Some(dir) => PathBuf::from(dir).join("muxguard"),
        None => PathBuf::from(format!(
            "/tmp/muxguard-{}",
            rustix::process::getuid().as_raw()
        )),
    }
}

/// Where each running master notes its control socket, for `muxguard ls`.
pub fn registry_dir() -> PathBuf {
    runtime_dir().join("masters")
}

/// `$XDG_CONFIG_HOME/muxguard`, default `~/.config/muxguard`.
pub fn config_dir() -> PathBuf {
    match std::env::var_os("XDG_CONFIG_HOME").filter(|d| !d.is_empty()) {
        Some(dir) => PathBuf::from(dir).join("muxguard"),
        None => crate::config::home_dir().join(".config/muxguard"),
    }
}

/// `$XDG_STATE_HOME/muxguard`, default `~/.local/state/muxguard`.
pub fn state_dir() -> PathBuf {
    match std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        Some(dir) => PathBuf::from(dir).join("muxguard"),
        None => crate::config::home_dir().join(".local/state/muxguard"),
    }
}

/// Creates `dir` (mode 0700) if needed and checks it is private enough.
pub fn ensure_private_dir(dir: &Path) -> anyhow::Result<()> {
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| anyhow::anyhow!("cannot create directory {}: {e}", dir.display()))?;
    }
    check_dir_safety(dir)
}

/// Refuses a control directory that another user owns or could write to:
/// anyone who can write there could replace our socket with theirs.
pub fn check_dir_safety(dir: &Path) -> anyhow::Result<()> {
    let meta = std::fs::metadata(dir).map_err(|e| {
        anyhow::anyhow!("cannot use control socket directory {}: {e}", dir.display())
    })?;
    if !meta.is_dir() {
        bail!(
            "control socket directory {} is not a directory",
            dir.display()
        );
    }
    match exposure(&meta) {
        None => Ok(()),
        Some(Exposure::Owner { uid, me }) => bail!(
            "control socket directory {} is owned by uid {uid}, not by you (uid {me}); use a directory of your own",
            dir.display()
        ),
        Some(Exposure::Writable { mode }) => bail!(
            "control socket directory {} is writable by others (mode {mode:04o}); fix it with `chmod go-w {}`",
            dir.display(),
            dir.display()
        ),
    }
}

/// Why a file or directory cannot be trusted as ours, as OpenSSH judges
/// its own files: another user owns it, or group or others may write it.
pub enum Exposure {
    Owner { uid: u32, me: u32 },
    Writable { mode: u32 },
}

pub fn exposure(meta: &std::fs::Metadata) -> Option<Exposure> {
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me {
        return Some(Exposure::Owner {
            uid: meta.uid(),
            me,
        });
    }
    let mode = meta.mode() & 0o7777;
    (mode & 0o022 != 0).then_some(Exposure::Writable { mode })
}

/// The first directory on the way to `path` that nobody but its owner may
/// pass through (no search permission for group or others), with its mode.
/// A peer admitted by the policy cannot reach a socket behind one. Group
/// search permission counts as open: whether a peer is in that group is
/// the administrator's choice, not something to second-guess here.
pub fn first_closed_directory(path: &Path) -> Option<(PathBuf, u32)> {
    path.ancestors()
        .skip(1)
        .filter(|dir| !dir.as_os_str().is_empty())
        .find_map(|dir| {
            let mode = std::fs::metadata(dir).ok()?.mode() & 0o7777;
            (mode & 0o011 == 0).then(|| (dir.to_path_buf(), mode))
        })
}

/// Refuses a control path that cannot be bound, naming the limit and the fix.
pub fn check_path_length(path: &Path) -> anyhow::Result<()> {
    let len = path.as_os_str().len();
    if len + TEMP_SUFFIX_LEN > SUN_PATH_MAX {
        bail!(
            "control path {} is {len} bytes long; Unix socket paths are limited to {SUN_PATH_MAX} bytes \
             and muxguard needs {TEMP_SUFFIX_LEN} more for a temporary name, so at most {} bytes: \
             use a shorter ControlPath (for example ~/.ssh/muxguard/%C) or --control-path",
            path.display(),
            SUN_PATH_MAX - TEMP_SUFFIX_LEN
        );
    }
    Ok(())
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
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn long_paths_are_refused_with_the_limit() {
        let long = PathBuf::from(format!("/tmp/{}", "x".repeat(100)));
        let message = check_path_length(&long).unwrap_err().to_string();
        assert!(message.contains("107"), "{message}");
        assert!(check_path_length(Path::new("/tmp/short")).is_ok());
    }

    #[test]
    fn group_writable_directories_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let message = check_dir_safety(dir.path()).unwrap_err().to_string();
        assert!(message.contains("writable by others"), "{message}");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        assert!(check_dir_safety(dir.path()).is_ok());
    }

    #[test]
    fn a_private_directory_on_the_way_is_found() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let shared = dir.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        let set = |d: &Path, mode| {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(mode)).unwrap()
        };
        set(dir.path(), 0o711);
        set(&shared, 0o700);
        let socket = shared.join("host");
        assert_eq!(
            first_closed_directory(&socket),
            Some((shared.clone(), 0o700))
        );
        set(&shared, 0o710);
        set(dir.path(), 0o700);
        assert_eq!(
            first_closed_directory(&socket),
            Some((dir.path().to_path_buf(), 0o700)),
            "group search permission on the socket's own directory is enough"
        );
        set(dir.path(), 0o711);
        // The rest of the way (the system's temporary directory and /) is
        // open on any usable system.
        assert_eq!(first_closed_directory(&socket), None);
    }

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
