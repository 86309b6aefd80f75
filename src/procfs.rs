//! Reading and parsing /proc: the files the requester chain is made of,
//! read the way /proc wants to be read, and the pure parsers of their
//! fields. Used by the master's walk (`access::peer`) and by the proc
//! helper (`helper`), which reads what the sandboxed master may not.

use std::ffi::OsString;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

use rustix::buffer::spare_capacity;
use rustix::fs::{Mode, OFlags};

pub(crate) fn read_start_time(pid: u32) -> Option<u64> {
    parse_stat(&read_proc_text(Path::new(&format!("/proc/{pid}/stat")))?).map(|s| s.start_time)
}

pub(crate) fn groups_of(status: &str) -> Vec<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .map(|line| {
            line.split_whitespace()
                .filter_map(|g| g.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// A /proc file whole, read as /proc wants to be read: into a page-sized
/// buffer at once. (`fs::read` believes the size of 0 that /proc reports
/// and reads 32 bytes, then 32, 64, ...: twelve system calls for a status
/// file instead of four; the walk reads three files per process on every
/// accept.)
fn read_proc_file(path: &Path) -> Option<Vec<u8>> {
    let file = rustix::fs::open(path, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty()).ok()?;
    read_whole(&file)
}

fn read_proc_text(path: &Path) -> Option<String> {
    String::from_utf8(read_proc_file(path)?).ok()
}

/// One process's /proc directory, opened once: its files are then opened
/// relative to it (one path walk instead of one per file), and all of them
/// belong to the process that had the pid when the directory was opened
/// (if it has gone since, they fail instead of describing a newcomer that
/// reused the pid).
#[derive(Debug)]
pub(crate) struct ProcDir(OwnedFd);

impl ProcDir {
    pub(crate) fn open(pid: u32) -> Option<ProcDir> {
        let path = format!("/proc/{pid}");
        rustix::fs::open(
            path.as_str(),
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .ok()
        .map(ProcDir)
    }

    pub(crate) fn read(&self, name: &str) -> Option<Vec<u8>> {
        read_whole(&self.open_file(name)?)
    }

    fn open_file(&self, name: &str) -> Option<OwnedFd> {
        rustix::fs::openat(
            &self.0,
            name,
            OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .ok()
    }

    pub(crate) fn read_text(&self, name: &str) -> Option<String> {
        String::from_utf8(self.read(name)?).ok()
    }

    /// The target of one of the directory's links (`exe`, `cwd`): needs
    /// ptrace-class access to the process, which the sandboxed master
    /// lacks and the proc helper has.
    pub(crate) fn read_link(&self, name: &str) -> Option<PathBuf> {
        let target = rustix::fs::readlinkat(&self.0, name, Vec::new()).ok()?;
        Some(PathBuf::from(OsString::from_vec(target.into_bytes())))
    }

    /// Takes a descriptor received from elsewhere as a process directory,
    /// if it is one on procfs: the proc helper answers questions about
    /// processes, not about directories the sender could name.
    pub(crate) fn from_received(fd: OwnedFd) -> Option<ProcDir> {
        let fs = rustix::fs::fstatfs(&fd).ok()?;
        (fs.f_type == rustix::fs::PROC_SUPER_MAGIC).then_some(ProcDir(fd))
    }
}

impl AsFd for ProcDir {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

/// A process kept open from one walk to the next: its directory and its
/// `stat` and `cmdline` files, read again in place (a read from offset 0
/// makes /proc show a file anew), which saves the opens and closes of
/// every later walk through it. Like the directory, the files stay bound
/// to the process they were opened for: once it is gone their reads fail,
/// even if its pid has been reused.
#[derive(Debug)]
pub(crate) struct OpenProcess {
    dir: ProcDir,
    stat: OwnedFd,
    cmdline: OwnedFd,
}

impl OpenProcess {
    pub(crate) fn open(pid: u32) -> Option<OpenProcess> {
        let dir = ProcDir::open(pid)?;
        let (stat, cmdline) = (dir.open_file("stat")?, dir.open_file("cmdline")?);
        Some(OpenProcess { dir, stat, cmdline })
    }

    pub(crate) fn dir(&self) -> &ProcDir {
        &self.dir
    }

    /// `stat` as it is now; `None` once the process is gone.
    pub(crate) fn stat(&self) -> Option<String> {
        String::from_utf8(read_whole(&self.stat)?).ok()
    }

    /// `cmdline` as it is now; `None` once the process is gone.
    pub(crate) fn cmdline(&self) -> Option<Vec<u8>> {
        read_whole(&self.cmdline)
    }
}

/// The files read here (`stat`, `status`, `cmdline`) are made whole on
/// each read: `stat` and `status` by a single seq_file show, `cmdline`
/// by a copy of as much of the argument area as asked for. A read that
/// leaves room in the buffer has therefore reached the end, and the read
/// that would return 0 is not made (three fewer system calls per process
/// of the walk). A read that fills the buffer is followed by another.
///
/// Reads are positioned (`pread` from offset 0 on), so a file kept open
/// ([`OpenProcess`]) reads whole again each time.
fn read_whole(file: &OwnedFd) -> Option<Vec<u8>> {
    // Not `read_to_end`, which asks for the size (statx, lseek) first.
    let mut data = Vec::with_capacity(4096);
    loop {
        if data.len() == data.capacity() {
            data.reserve(data.capacity());
        }
        let offset = data.len() as u64;
        match rustix::io::pread(file, spare_capacity(&mut data), offset) {
            Ok(0) => break,
            Ok(_) if data.len() < data.capacity() => break,
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => {}
            Err(_) => return None,
        }
    }
    Some(data)
}

/// The fields of /proc/PID/stat the requester chain needs.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Stat {
    pub(crate) ppid: u32,
    pub(crate) session: u32,
    pub(crate) tty_nr: u32,
    pub(crate) start_time: u64,
}

/// Parses /proc/PID/stat. The command name (field 2) may contain spaces
/// and parentheses, so fields are counted from its last ')'.
pub(crate) fn parse_stat(text: &str) -> Option<Stat> {
    let after_name = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // fields[0] is field 3 (state).
    let field = |n: usize| fields.get(n - 3).copied();
    Some(Stat {
        ppid: field(4)?.parse().ok()?,
        session: field(6)?.parse().ok()?,
        tty_nr: field(7)?.parse().ok()?,
        start_time: field(22)?.parse().ok()?,
    })
}

/// The name of a controlling terminal from its device number.
pub(crate) fn tty_name(tty_nr: u32) -> Option<String> {
    if tty_nr == 0 {
        return None;
    }
    let major = (tty_nr >> 8) & 0xfff;
    let minor = (tty_nr & 0xff) | ((tty_nr >> 12) & 0xfff00);
    match major {
        136..=143 => Some(format!("/dev/pts/{}", (major - 136) * 256 + minor)),
        4 if minor < 64 => Some(format!("/dev/tty{minor}")),
        _ => Some(format!("tty {major}:{minor}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_awkward_names() {
        let text = "4242 (my (odd) prog) S 4100 4242 4100 34819 4242 4194304 1 2 3 4 5 6 7 8 20 0 1 0 987654 0 0";
        assert_eq!(
            parse_stat(text),
            Some(Stat {
                ppid: 4100,
                session: 4100,
                tty_nr: 34819,
                start_time: 987654
            })
        );
        assert_eq!(tty_name(34819).as_deref(), Some("/dev/pts/3"));
        assert_eq!(tty_name(0), None);
    }

    #[test]
    fn a_process_directory_reads_that_process_and_a_missing_one_is_none() {
        let me = std::process::id();
        let dir = ProcDir::open(me).expect("our own /proc directory");
        let stat = parse_stat(&dir.read_text("stat").unwrap()).unwrap();
        assert_eq!(Some(stat.start_time), read_start_time(me));
        assert!(dir.read("no-such-file").is_none());
        assert!(ProcDir::open(u32::MAX).is_none());
    }

    #[test]
    fn a_command_line_of_several_pages_is_read_whole() {
        let long = "x".repeat(10_000);
        // A shell waiting on its stdin keeps any arguments (sleep would
        // reject the long one and exit, leaving an empty command line).
        let mut child = std::process::Command::new("sh")
            .args(["-c", "read line", "sh", &long])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let dir = ProcDir::open(child.id()).unwrap();
        let expected = format!("sh\x00-c\x00read line\x00sh\x00{long}\x00").into_bytes();
        // Until the exec is done the directory shows the forked test binary.
        let mut cmdline = Vec::new();
        for _ in 0..1000 {
            cmdline = dir.read("cmdline").unwrap_or_default();
            if cmdline.starts_with(b"sh\0-c") {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(cmdline, expected);
    }

    #[test]
    fn a_file_longer_than_a_page_is_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("long");
        let content: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &content).unwrap();
        assert_eq!(read_proc_file(&path).unwrap(), content);
        assert!(read_proc_file(&dir.path().join("missing")).is_none());
    }
}
