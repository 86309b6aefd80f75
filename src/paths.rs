//! Where muxguard keeps things (XDG directories), which control path a
//! host's master uses, and the safety rules for that path: a short enough
//! name and a private directory. (What is at the path, a live master or a
//! stale socket, is `mux::probe`.)

use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use anyhow::bail;

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

/// Picks the control path: the flag, then ssh's ControlPath, then
/// `$XDG_RUNTIME_DIR/muxguard/%C` (expanded by ssh itself).
pub fn choose_control_path(
    flag: Option<PathBuf>,
    config: &crate::config::HostConfig,
    options: &crate::config::SshOptions,
) -> anyhow::Result<PathBuf> {
    if let Some(path) = flag {
        return Ok(path);
    }
    if let Some(path) = &config.control_path {
        return Ok(path.clone());
    }
    let template = runtime_dir().join("%C");
    let resolved =
        crate::config::resolve_with(options, &[format!("ControlPath={}", template.display())])?;
    resolved
        .control_path
        .ok_or_else(|| anyhow::anyhow!("ssh did not expand the default control path"))
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
}
