//! Reading and parsing /proc: the files the requester chain is made of,
//! read the way /proc wants to be read, and the pure parsers of their
//! fields. Used by the master's walk (`access::peer`) and by the proc
//! helper (`helper`), which reads what the sandboxed master may not.

use std::path::Path;

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
pub(crate) fn read_proc_file(path: &Path) -> Option<Vec<u8>> {
    use std::io::Read;
    let mut file = std::fs::File::open(path).ok()?;
    // Not `read_to_end`, which asks for the size (statx, lseek) first.
    let mut data = vec![0; 4096];
    let mut len = 0;
    loop {
        if len == data.len() {
            data.resize(len * 2, 0);
        }
        match file.read(&mut data[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
    data.truncate(len);
    Some(data)
}

pub(crate) fn read_proc_text(path: &Path) -> Option<String> {
    String::from_utf8(read_proc_file(path)?).ok()
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
    fn a_file_longer_than_a_page_is_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("long");
        let content: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &content).unwrap();
        assert_eq!(read_proc_file(&path).unwrap(), content);
        assert!(read_proc_file(&dir.path().join("missing")).is_none());
    }
}
