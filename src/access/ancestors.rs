//! The processes above the connecting one, kept open from one walk to the
//! next. A person's requests come from the same few ancestors again and
//! again (the shell, the terminal, the session manager; the git or the
//! ansible that runs ssh after ssh), so the walk re-reads their files
//! through descriptors it already has instead of opening and closing a
//! directory and two files per ancestor on every connection.
//!
//! Nothing is remembered but the descriptors: every walk reads each
//! ancestor's `stat`, `cmdline` and `exe` as they are now. A descriptor is
//! bound to the process it was opened for, so one whose process has gone
//! reads nothing and is dropped; its pid, if reused, is opened afresh.

use std::collections::HashMap;

use crate::procfs::{OpenProcess, ProcDir};

/// How many processes stay open (three descriptors each). Past it, the
/// one used longest ago is closed.
const CAPACITY: usize = 64;

/// The open ancestors, by pid.
#[derive(Debug, Default)]
pub struct Ancestors {
    open: HashMap<u32, Kept>,
    /// Counts visits, to find the least recently used.
    clock: u64,
}

#[derive(Debug)]
struct Kept {
    process: OpenProcess,
    used: u64,
}

/// An ancestor's `stat` and `cmdline` as read on this visit.
pub struct Visited {
    pub stat: String,
    pub cmdline: Vec<u8>,
}

impl Ancestors {
    /// Reads the process with `pid` now: through the descriptors kept for
    /// it if that process is still there, else through newly opened ones
    /// (kept for next time). `None` if there is no such process.
    pub fn visit(&mut self, pid: u32) -> Option<Visited> {
        self.clock += 1;
        if let Some(kept) = self.open.get_mut(&pid) {
            if let Some(visited) = read(&kept.process) {
                kept.used = self.clock;
                return Some(visited);
            }
            // Gone: whoever has the pid now is another process.
            self.open.remove(&pid);
        }
        let process = OpenProcess::open(pid)?;
        let visited = read(&process)?;
        if self.open.len() >= CAPACITY {
            self.close_least_recently_used();
        }
        let used = self.clock;
        self.open.insert(pid, Kept { process, used });
        Some(visited)
    }

    /// The directory of an ancestor visited in this walk, for its links.
    pub fn dir(&self, pid: u32) -> Option<&ProcDir> {
        self.open.get(&pid).map(|kept| kept.process.dir())
    }

    fn close_least_recently_used(&mut self) {
        let oldest = self
            .open
            .iter()
            .min_by_key(|(_, kept)| kept.used)
            .map(|(pid, _)| *pid);
        if let Some(pid) = oldest {
            self.open.remove(&pid);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.open.len()
    }
}

fn read(process: &OpenProcess) -> Option<Visited> {
    Some(Visited {
        stat: process.stat()?,
        // A zombie's or a kernel thread's is empty, not missing.
        cmdline: process.cmdline().unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::procfs::parse_stat;
    use std::process::{Command, Stdio};

    fn sleeper() -> std::process::Child {
        Command::new("sleep")
            .arg("60")
            .stdin(Stdio::null())
            .spawn()
            .unwrap()
    }

    /// Visits `pid` until its command line starts with `prefix` (an exec
    /// takes a moment to show).
    fn visit_until(ancestors: &mut Ancestors, pid: u32, prefix: &[u8]) -> Visited {
        crate::test_support::eventually("the exec to show", || {
            let visited = ancestors.visit(pid).unwrap();
            visited.cmdline.starts_with(prefix).then_some(visited)
        })
    }

    #[test]
    fn a_kept_process_is_read_as_it_is_now_and_dropped_once_gone() {
        use std::io::Write;
        let mut ancestors = Ancestors::default();
        let mut child = Command::new("sh")
            .args(["-c", "read line; exec sleep 60"])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id();
        let before = visit_until(&mut ancestors, pid, b"sh\0");
        assert_eq!(before.cmdline, b"sh\0-c\0read line; exec sleep 60\0");
        let start_time = parse_stat(&before.stat).unwrap().start_time;

        // The same descriptors, after an exec: what it runs now.
        child.stdin.take().unwrap().write_all(b"go\n").unwrap();
        let after = visit_until(&mut ancestors, pid, b"sleep\0");
        assert_eq!(after.cmdline, b"sleep\x0060\x00");
        assert_eq!(parse_stat(&after.stat).unwrap().start_time, start_time);
        let exe = ancestors.dir(pid).and_then(|d| d.read_link("exe")).unwrap();
        assert!(exe.ends_with("sleep"), "{exe:?}");
        assert_eq!(ancestors.len(), 1);

        child.kill().unwrap();
        child.wait().unwrap();
        assert!(
            ancestors.visit(pid).is_none(),
            "a reaped process reads nothing"
        );
        assert_eq!(ancestors.len(), 0);
    }

    #[test]
    fn the_least_recently_used_is_closed_past_capacity() {
        let mut ancestors = Ancestors::default();
        let me = std::process::id();
        ancestors.visit(me).unwrap();
        let mut children: Vec<_> = (0..CAPACITY).map(|_| sleeper()).collect();
        for child in &children {
            ancestors.visit(child.id()).unwrap();
        }
        assert_eq!(ancestors.len(), CAPACITY);
        assert!(ancestors.dir(me).is_none(), "the oldest visit was closed");
        assert!(ancestors.dir(children[0].id()).is_some());
        for child in &mut children {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }
}
