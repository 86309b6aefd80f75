//! `muxguard setup`: shows the ssh_config block that makes the stock ssh
//! start and use masters on demand (`Match exec "muxguard ensure …"`), and
//! with `--append` adds it at the end of the file. What goes into the block
//! is decided in [`block`]; this part reads and writes files, and refuses
//! whatever OpenSSH itself would distrust (a file or directory another user
//! owns or could write) and whatever it cannot be sure of (a symbolic link).
//!
//! The file is replaced by a complete new copy (written beside it, then
//! renamed over it), so a crash or a full disk leaves the old file or the
//! new one, never half a block; the old file is also kept as a backup.

pub mod block;

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};

use crate::cli::SetupArgs;
use crate::paths::{self, Exposure};

pub fn run(args: SetupArgs) -> anyhow::Result<ExitCode> {
    let home = std::path::absolute(crate::config::home_dir())
        .context("cannot tell where your home directory is (set HOME)")?;
    let ssh_dir = home.join(".ssh");
    let default_file = ssh_dir.join("config");
    let file = match &args.config {
        Some(file) => {
            std::path::absolute(file).with_context(|| format!("cannot use {}", file.display()))?
        }
        None => default_file.clone(),
    };
    if fs::canonicalize(&file)
        .unwrap_or_else(|_| file.clone())
        .starts_with("/etc/ssh")
    {
        bail!(
            "{} is read by every user's ssh, and the block names your own binary and control \
             directory; add it to your ~/.ssh/config instead",
            file.display()
        );
    }
    let muxguard = running_binary()?;
    let control_dir = ssh_dir.join("muxguard");
    // Without -F, ssh reads ~/.ssh/config and /etc/ssh/ssh_config, and so
    // does the `ssh -G` ensure runs; with -F it reads that file alone. So
    // ensure gets -F exactly when the block is for a file ssh is given
    // with -F (a link to ~/.ssh/config's own file is the same file).
    let reads_by_default = same_file(&file, &default_file);
    let text = block::block(&block::BlockSpec {
        muxguard: &muxguard,
        config_flag: (!reads_by_default).then_some(file.as_path()),
        control_dir: &control_dir,
    })?;

    // The block alone goes to stdout, so that it can also be copied as is;
    // what would happen, and what did, goes to stderr.
    eprintln!(
        "muxguard setup: this block goes at the end of {} (a Match comes last: it sees \
         the final host, port and user):\n",
        file.display()
    );
    print!("{text}");
    std::io::stdout().flush()?;
    eprintln!();

    let parent = file
        .parent()
        .with_context(|| format!("{} names no file", file.display()))?
        .to_path_buf();
    let mut new_dirs = Vec::new();
    for dir in [&ssh_dir, &control_dir] {
        if fs::symlink_metadata(dir).is_err() {
            new_dirs.push(dir.clone());
        }
    }
    if !new_dirs.contains(&parent) {
        check_own_dir(&parent)?;
    }
    if !new_dirs.contains(&ssh_dir) {
        check_own_dir(&ssh_dir)?;
    }
    if !new_dirs.contains(&control_dir) {
        paths::check_dir_safety(&control_dir)?;
    }
    let current = read_current(&file)?;
    if let Some(content) = &current
        && let Some(found) = block::existing(content)
    {
        let (what, lines) = match found {
            block::Existing::Marker { line } => (
                format!("the block of an earlier muxguard setup (line {line})"),
                format!("lines {line} to the ControlMaster line after it"),
            ),
            block::Existing::HandWritten { line } => (
                format!("a Match exec that runs muxguard ensure (line {line})"),
                format!("line {line} and the indented lines under it"),
            ),
        };
        bail!(
            "{} already has {what}; nothing was changed. To write the block again, delete \
             that one first ({lines})",
            file.display()
        );
    }
    let backup = current
        .as_ref()
        .map(|_| free_backup_name(&file))
        .transpose()?;

    if !args.append {
        for dir in &new_dirs {
            eprintln!("--append would create {} (mode 0700)", dir.display());
        }
        match &backup {
            Some(backup) => eprintln!(
                "--append would keep a copy of the file as {}",
                backup.display()
            ),
            None => eprintln!("--append would create {} (mode 0600)", file.display()),
        }
        let config = match &args.config {
            Some(_) => format!(" --config {}", file.display()),
            None => String::new(),
        };
        eprintln!("Nothing has been changed; to add the block: muxguard setup --append{config}");
        return Ok(ExitCode::SUCCESS);
    }

    for dir in &new_dirs {
        create_private_dir(dir)?;
        eprintln!("created {} (mode 0700)", dir.display());
    }
    paths::check_dir_safety(&control_dir)?;
    let new = block::appended(current.as_deref().unwrap_or_default(), &text);
    match (&current, &backup) {
        (Some(content), Some(backup)) => {
            write_new(backup, content, 0o600)?;
            eprintln!("kept a copy of {} as {}", file.display(), backup.display());
            let mode = fs::metadata(&file)?.mode() & 0o777;
            replace(&file, content, &new, mode)?;
        }
        _ => write_new(&file, &new, 0o600)?,
    }
    eprintln!("appended the block to {}", file.display());
    Ok(ExitCode::SUCCESS)
}

/// The absolute path of this binary, for the block. Not a bare
/// `muxguard`: ssh runs the command with its own PATH, which for an ssh
/// started by an editor, a desktop launcher or cron may not have the
/// directory muxguard is in, and a command that is not found only makes ssh
/// skip the block without a word.
fn running_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find the muxguard binary")?;
    if !exe.is_file() {
        bail!(
            "the running muxguard binary ({}) is gone (replaced while running?); run \
             muxguard setup again from the installed binary",
            exe.display()
        );
    }
    Ok(exe)
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (fs::canonicalize(a), fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// As OpenSSH checks its own files: yours (root's would do for ssh, but
/// setup writes only your own) and writable by nobody else, who could
/// otherwise swap the file or the block's ControlPath under you.
fn check_own_dir(dir: &Path) -> anyhow::Result<()> {
    let meta =
        fs::metadata(dir).with_context(|| format!("cannot use directory {}", dir.display()))?;
    if !meta.is_dir() {
        bail!("{} is not a directory", dir.display());
    }
    check_owner_and_mode(dir, &meta)
}

fn check_owner_and_mode(path: &Path, meta: &fs::Metadata) -> anyhow::Result<()> {
    match paths::exposure(meta) {
        None => Ok(()),
        Some(Exposure::Owner { uid, me }) => bail!(
            "{} is owned by uid {uid}, not by you (uid {me}); muxguard setup only writes your own \
             files: fix the owner, or add the block by hand",
            path.display()
        ),
        Some(Exposure::Writable { mode }) => bail!(
            "{} is writable by others (mode {mode:04o}), which ssh refuses too; fix it with \
             `chmod go-w {}` and run muxguard setup again",
            path.display(),
            path.display()
        ),
    }
}

/// The file's content, or `None` when there is no file yet. A symbolic
/// link is refused, whatever it points to: the file behind it may be shared
/// or belong to a dotfiles tool that rewrites it, and setup cannot tell.
/// The user can name the target with --config once they have checked it.
fn read_current(file: &Path) -> anyhow::Result<Option<Vec<u8>>> {
    match fs::symlink_metadata(file) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => bail!("cannot read {}: {e}", file.display()),
        Ok(meta) if meta.file_type().is_symlink() => {
            let target = fs::canonicalize(file)
                .map(|t| t.display().to_string())
                .unwrap_or_else(|_| "a file that does not exist".to_owned());
            bail!(
                "{} is a symbolic link (to {target}); muxguard setup does not write through \
                 links. If that file is yours and the one ssh should read, run \
                 `muxguard setup --append --config {target}`; or add the block above by hand",
                file.display()
            );
        }
        Ok(meta) if !meta.is_file() => bail!("{} is not a regular file", file.display()),
        Ok(_) => {}
    }
    // O_NOFOLLOW and the checks on the open file: what is read is what was
    // checked, even if the name changes in between.
    let mut handle = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(file)
        .with_context(|| format!("cannot read {}", file.display()))?;
    let meta = handle.metadata()?;
    if !meta.is_file() {
        bail!("{} is not a regular file", file.display());
    }
    check_owner_and_mode(file, &meta)?;
    let mut content = Vec::new();
    handle
        .read_to_end(&mut content)
        .with_context(|| format!("cannot read {}", file.display()))?;
    Ok(Some(content))
}

/// `FILE.muxguard-backup`, or `.1`, `.2` … after it: an older backup may be
/// the only copy of what the file held before, so it is never overwritten.
fn free_backup_name(file: &Path) -> anyhow::Result<PathBuf> {
    let base = format!("{}.muxguard-backup", file.display());
    (0..100)
        .map(|n| match n {
            0 => PathBuf::from(&base),
            n => PathBuf::from(format!("{base}.{n}")),
        })
        .find(|p| fs::symlink_metadata(p).is_err())
        .with_context(|| format!("{base} and 99 more backups exist already; remove some"))
}

fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    fs::DirBuilder::new()
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    // The umask can only have taken bits away; set exactly what was meant.
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    check_own_dir(dir)
}

/// Writes a file that must not exist yet, with exactly `mode`.
fn write_new(path: &Path, content: &[u8], mode: u32) -> anyhow::Result<()> {
    let mut out = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    out.set_permissions(fs::Permissions::from_mode(mode))?;
    out.write_all(content)
        .and_then(|()| out.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Replaces `file`, which held `old` when it was read, by `new`: written
/// beside it and renamed over it. If the file was edited in the meantime,
/// nothing is replaced.
fn replace(file: &Path, old: &[u8], new: &[u8], mode: u32) -> anyhow::Result<()> {
    let dir = file.parent().unwrap_or(Path::new("."));
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = dir.join(format!(".{name}.muxguard-setup-{}", std::process::id()));
    write_new(&temp, new, mode)?;
    let unchanged = read_current(file).ok().flatten().as_deref() == Some(old);
    if !unchanged {
        let _ = fs::remove_file(&temp);
        bail!(
            "{} changed while muxguard setup ran; nothing was written, run it again",
            file.display()
        );
    }
    if let Err(e) = fs::rename(&temp, file) {
        let _ = fs::remove_file(&temp);
        bail!("cannot replace {}: {e}", file.display());
    }
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot sync {}", dir.display()))
}
