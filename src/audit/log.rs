//! Appending one master's stream of records to the audit log file.
//!
//! Several masters (one per destination, maybe of several users when the
//! system policy names a shared file) append to the same file at once. Each
//! record goes out as one `write(2)` of the whole line on a file opened with
//! `O_APPEND`, under an exclusive `flock` held only for that write. The lock
//! is what guarantees whole lines: `O_APPEND` alone makes concurrent writes
//! land at the end but does not promise they are never split (NFS, very
//! large writes, writers that retry short writes).
//!
//! A short write is followed by one write of the rest (which completes the
//! line, or fails with the reason, e.g. `ENOSPC`). A failed write leaves
//! the chain where it was and is returned to the caller, which fails
//! closed; a partial line is also cut back off the file so that the next
//! record, ours or another master's, does not end up glued to it.
//!
//! The calls block (on the lock, and on `fdatasync` for durable records),
//! except [`AuditLog::append_unless_locked`], which only tries the lock and
//! writes to the page cache: the master's event loop appends with it and
//! leaves waits and syncs to a thread of its own. The wait for the lock is
//! bounded ([`LOCK_WAIT`], or what [`AuditLog::append_within`] is given):
//! anyone who can open the file can hold its lock, and that must cost them
//! a refused record, not a master that waits forever.

use std::fs::{DirBuilder, File};
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;

use rustix::fs::{FileType, FlockOperation, Mode, OFlags};
use rustix::io::Errno;

use super::chain::{Chain, Event, MasterStart, MasterStop, StreamId, Timestamp};

/// How long a write waits at most for another process's lock on the file.
pub const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// One master's stream in an audit log file.
///
/// Made only by [`AuditLog::start`], which writes the stream's
/// `master_start` record, so no stream can lack one; [`AuditLog::stop`]
/// consumes the log, so nothing can follow `master_stop`.
#[derive(Debug)]
pub struct AuditLog {
    file: OwnedFd,
    chain: Chain,
    /// The last record written (without its newline), for copies elsewhere.
    last_line: Vec<u8>,
    /// Where the file ended after our last write, which ended in a newline:
    /// found there again, nothing was appended since, and the last byte
    /// needs no read.
    our_end: Option<u64>,
}

impl AuditLog {
    /// Opens (or creates) the log at `path` and writes the start record of
    /// a new stream with a fresh random id, durably.
    ///
    /// A missing parent directory is created 0700 and a missing file 0600.
    /// Existing ones keep their modes: a system-wide log's directory is the
    /// administrator's to set. A symlink or anything but a regular file at
    /// `path` is refused, so a planted link or FIFO cannot redirect or stall
    /// the log.
    pub fn start(path: impl AsRef<Path>, start: MasterStart) -> io::Result<AuditLog> {
        let path = path.as_ref();
        let stream = StreamId::from_bytes(rand::random());
        let file = open_log_file(path)?;
        let mut log = AuditLog {
            file,
            chain: Chain::new(stream),
            last_line: Vec::new(),
            our_end: None,
        };
        log.write_record(
            &Event::MasterStart(start),
            Durability::Synced,
            LockWait::Within(LOCK_WAIT),
            write_once,
        )?;
        Ok(log)
    }

    /// Appends a record without waiting for it to reach the disk. For
    /// records that nothing waits on (connects, session ends, forwards).
    ///
    /// An error means the record is not in the log; the stream is left as
    /// it was and later records still chain correctly. `master_start` (only
    /// [`AuditLog::start`] writes it) and anything after a `master_stop` are
    /// refused with [`io::ErrorKind::InvalidInput`].
    #[cfg(test)]
    pub fn append(&mut self, event: &Event) -> io::Result<()> {
        self.append_within(event, LOCK_WAIT)
    }

    /// [`append`](Self::append), waiting at most `wait` for the file's
    /// lock ([`io::ErrorKind::TimedOut`] after it).
    pub fn append_within(&mut self, event: &Event, wait: std::time::Duration) -> io::Result<()> {
        self.write_record(
            event,
            Durability::Buffered,
            LockWait::Within(wait),
            write_once,
        )
        .map(|_| ())
    }

    /// [`append`](Self::append) if the file's lock is free right now:
    /// `Ok(false)`, with nothing written and the stream as it was, if
    /// another process holds it. Never sleeps; the write goes to the page
    /// cache.
    pub fn append_unless_locked(&mut self, event: &Event) -> io::Result<bool> {
        self.write_record(event, Durability::Buffered, LockWait::No, write_once)
            .map(|written| written == Written::Yes)
    }

    /// Appends a record and returns only once it is on disk (`fdatasync`).
    /// The master appends decisions like any record and syncs them on its
    /// writer thread, once for all that arrived together (see
    /// `Recorder::record_durably`); this one-call form serves the tests
    /// of concurrent durable writers.
    ///
    /// If the write succeeds but the sync fails, the record is in the file
    /// (and the stream continues after it) but the error is returned, so
    /// the caller can still fail closed.
    #[cfg(test)]
    pub fn append_durable(&mut self, event: &Event) -> io::Result<()> {
        self.write_record(
            event,
            Durability::Synced,
            LockWait::Within(LOCK_WAIT),
            write_once,
        )
        .map(|_| ())
    }

    /// Writes the stream's `master_stop` record durably and closes the
    /// stream.
    pub fn stop(mut self, reason: impl Into<String>) -> io::Result<()> {
        let event = Event::MasterStop(MasterStop {
            reason: reason.into(),
        });
        self.write_record(
            &event,
            Durability::Synced,
            LockWait::Within(LOCK_WAIT),
            write_once,
        )
        .map(|_| ())
    }

    /// A second descriptor of the log file, to make what is written durable
    /// without holding the log (see [`sync_file`]).
    pub fn sync_handle(&self) -> io::Result<OwnedFd> {
        self.file.try_clone()
    }

    /// The last record written, as its exact line (no newline).
    pub fn last_line(&self) -> &[u8] {
        &self.last_line
    }

    /// This master's stream id.
    #[cfg(test)]
    pub fn stream(&self) -> StreamId {
        self.chain.stream()
    }

    /// How many records of this stream are in the file.
    #[cfg(test)]
    pub fn records(&self) -> u64 {
        self.chain.next_seq()
    }

    /// Builds the record and writes it with `write`, which tests replace to
    /// provoke short writes and errors.
    fn write_record(
        &mut self,
        event: &Event,
        durability: Durability,
        lock_wait: LockWait,
        mut write: impl FnMut(BorrowedFd<'_>, &[u8]) -> io::Result<usize>,
    ) -> io::Result<Written> {
        let fd = self.file.as_fd();
        {
            let Some(_lock) = FileLock::exclusive(fd, lock_wait)? else {
                return Ok(Written::LockHeld);
            };
            // The time is taken under the lock so that, between masters,
            // file order is time order as far as the clock allows.
            let pending = self
                .chain
                .prepare(Timestamp::now(), event)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;

            let end = rustix::fs::fstat(fd)?.st_size;
            let end = u64::try_from(end).map_err(|_| io::Error::other("negative file size"))?;
            // A line left without its newline (a crash mid-write on some
            // file systems, or a writer that ignores the lock) would swallow
            // our record into a line that cannot parse. Finish it first: it
            // stays a visible bad line and our record stays whole. A file
            // that still ends where our last line did ends in its newline
            // (such a line only ever makes the file longer).
            let ends_a_line = end == 0 || self.our_end == Some(end) || last_byte(fd, end)? == b'\n';
            let separated;
            let bytes = if !ends_a_line {
                separated = [b"\n", pending.bytes()].concat();
                &separated[..]
            } else {
                pending.bytes()
            };

            let mut written = retry_interrupted(|| write(fd, bytes))?;
            if written != 0 && written < bytes.len() {
                // A short write to a regular file is the disk (or a size
                // limit) filling up, or a signal. The rest, written once
                // more under our lock, lands right after the first part:
                // it completes the line, or its error says why not.
                match retry_interrupted(|| write(fd, &bytes[written..])) {
                    Ok(more) => written += more,
                    Err(e) => {
                        let _ = rustix::fs::ftruncate(fd, end);
                        return Err(e);
                    }
                }
            }
            if written != bytes.len() {
                // Nobody else writes while we hold the lock, so the file
                // ended at `end` before this write: cut the partial line
                // off. If even that fails, verification will show the bad
                // line; the chain still continues from our last whole one.
                let _ = rustix::fs::ftruncate(fd, end);
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    format!(
                        "short write to the audit log ({written} of {} bytes)",
                        bytes.len()
                    ),
                ));
            }
            self.our_end = Some(end + bytes.len() as u64);
            self.last_line = pending
                .bytes()
                .strip_suffix(b"\n")
                .unwrap_or(pending.bytes())
                .to_vec();
            pending.commit();
        }
        // Synced outside the lock so other masters are not held up by our
        // flush; fdatasync covers everything written to the file so far.
        if durability == Durability::Synced {
            retry_interrupted(|| rustix::fs::fdatasync(fd).map_err(io::Error::from))?;
        }
        Ok(Written::Yes)
    }
}

/// How long an append waits for another process's lock on the file.
#[derive(Debug, Clone, Copy)]
enum LockWait {
    Within(std::time::Duration),
    No,
}

/// Whether an append wrote its record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Written {
    Yes,
    /// Another process held the lock and the append did not wait.
    LockHeld,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Durability {
    Buffered,
    Synced,
}

/// The one `write(2)` of a record.
fn write_once(fd: BorrowedFd<'_>, bytes: &[u8]) -> io::Result<usize> {
    Ok(rustix::io::write(fd, bytes)?)
}

/// Waits until everything written to the log file so far is on disk, by
/// any of its descriptors.
pub fn sync_file(file: &OwnedFd) -> io::Result<()> {
    retry_interrupted(|| rustix::fs::fdatasync(file).map_err(io::Error::from))
}

/// Retries a call interrupted by a signal before it did anything: for
/// `write` to a regular file, `EINTR` means no byte was written.
fn retry_interrupted<T>(mut call: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    loop {
        match call() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

fn last_byte(fd: BorrowedFd<'_>, end: u64) -> io::Result<u8> {
    let mut byte = [0u8; 1];
    let read = retry_interrupted(|| Ok(rustix::io::pread(fd, &mut byte[..], end - 1)?))?;
    if read == 1 {
        Ok(byte[0])
    } else {
        Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "audit log shrank while locked",
        ))
    }
}

/// Creates the directory and opens the file as [`AuditLog::start`]
/// describes.
fn open_log_file(path: &Path) -> io::Result<OwnedFd> {
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
    if let Some(dir) = parent {
        // Also any missing ancestors, 0700 as well (e.g. ~/.local/state).
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| {
                io::Error::new(e.kind(), format!("cannot create {}: {e}", dir.display()))
            })?;
    }
    let with_path = |e: io::Error| {
        io::Error::new(
            e.kind(),
            format!("cannot open audit log {}: {e}", path.display()),
        )
    };
    // Read access is for peeking at the last byte; O_NONBLOCK keeps a FIFO
    // planted at the path from blocking the open (it is refused below) and
    // changes nothing for a regular file.
    let flags = OFlags::RDWR
        | OFlags::APPEND
        | OFlags::CREATE
        | OFlags::CLOEXEC
        | OFlags::NOFOLLOW
        | OFlags::NOCTTY
        | OFlags::NONBLOCK;
    let file = rustix::fs::open(path, flags, Mode::RUSR | Mode::WUSR).map_err(|e| {
        if e == Errno::LOOP {
            with_path(io::Error::new(
                io::ErrorKind::InvalidInput,
                "it is a symlink",
            ))
        } else {
            with_path(e.into())
        }
    })?;
    let stat = rustix::fs::fstat(&file).map_err(|e| with_path(e.into()))?;
    if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
        return Err(with_path(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        )));
    }
    // Make the new directory entry durable too, so a crash cannot lose the
    // file that the first (synced) record went into. Best effort: some file
    // systems do not sync directories, and the record itself is synced.
    if let Some(dir) = parent
        && let Ok(dir) = File::open(dir)
    {
        let _ = dir.sync_all();
    }
    Ok(file)
}

/// An exclusive or shared `flock` on an open file, released on drop.
struct FileLock<'fd> {
    fd: BorrowedFd<'fd>,
}

impl<'fd> FileLock<'fd> {
    /// Polls for the exclusive lock until `wait` has passed (`None` at once
    /// if it is held and `wait` is [`LockWait::No`]). `flock` has no
    /// timeout of its own, and a blocked `flock` cannot be interrupted
    /// without a signal handler.
    fn exclusive(fd: BorrowedFd<'fd>, wait: LockWait) -> io::Result<Option<Self>> {
        const POLL: std::time::Duration = std::time::Duration::from_millis(5);
        let wait = match wait {
            LockWait::Within(wait) => wait,
            LockWait::No => {
                return match rustix::fs::flock(fd, FlockOperation::NonBlockingLockExclusive) {
                    Ok(()) => Ok(Some(FileLock { fd })),
                    Err(Errno::WOULDBLOCK | Errno::INTR) => Ok(None),
                    Err(e) => Err(e.into()),
                };
            }
        };
        let deadline = std::time::Instant::now() + wait;
        loop {
            match rustix::fs::flock(fd, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => return Ok(Some(FileLock { fd })),
                Err(Errno::INTR) => continue,
                Err(Errno::WOULDBLOCK) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(POLL);
                }
                Err(Errno::WOULDBLOCK) => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "another process has held the audit log's lock for over {} ms",
                            wait.as_millis()
                        ),
                    ));
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn shared(fd: BorrowedFd<'fd>) -> io::Result<Self> {
        Self::take(fd, FlockOperation::LockShared)
    }

    fn take(fd: BorrowedFd<'fd>, operation: FlockOperation) -> io::Result<Self> {
        retry_interrupted(|| Ok(rustix::fs::flock(fd, operation)?))?;
        Ok(FileLock { fd })
    }
}

impl Drop for FileLock<'_> {
    fn drop(&mut self) {
        // Unlocking an fd we hold a lock on cannot meaningfully fail; were
        // it to, closing the file would release the lock anyway.
        let _ = rustix::fs::flock(self.fd, FlockOperation::Unlock);
    }
}

/// Reads a whole log file for verification or display, under a shared lock
/// so that no record being appended at that moment is seen half-written.
pub fn read_log(path: impl AsRef<Path>) -> io::Result<Vec<u8>> {
    let path = path.as_ref();
    let file = File::open(path).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot read audit log {}: {e}", path.display()),
        )
    })?;
    let mut data = Vec::new();
    {
        let _lock = FileLock::shared(file.as_fd())?;
        // `Read for &File`, as the lock borrows the file.
        (&file).read_to_end(&mut data)?;
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::chain::tests::{escape, master_start};
    use crate::audit::chain::{Break, LineFault, Record, verify, verify_bytes};
    use std::os::unix::fs::PermissionsExt;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn creates_private_directory_and_file() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("state/muxguard/audit.jsonl");
        let mut log = AuditLog::start(&path, master_start("h")).unwrap();
        log.append(&escape(1)).unwrap();
        log.append_durable(&escape(2)).unwrap();
        assert_eq!(log.records(), 3);
        let stream = log.stream();
        log.stop("done").unwrap();

        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().unwrap()), 0o700);
        assert_eq!(mode(&tmp.path().join("state")), 0o700);

        let data = read_log(&path).unwrap();
        let report = verify_bytes(&data);
        assert!(report.is_ok(), "{report}");
        assert_eq!(report.streams.len(), 1);
        assert_eq!(report.streams[0].stream, stream);
        assert_eq!(report.streams[0].records, 4);
        assert!(report.streams[0].stopped);
        let text = String::from_utf8(data).unwrap();
        let first = Record::parse(text.lines().next().unwrap()).unwrap();
        assert_eq!(first.event, Event::MasterStart(master_start("h")));
    }

    #[test]
    fn refuses_symlinks_and_special_files() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("elsewhere");
        std::fs::write(&target, "").unwrap();
        let link = tmp.path().join("audit.jsonl");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let err = AuditLog::start(&link, master_start("h")).unwrap_err();
        assert!(err.to_string().contains("symlink"), "{err}");
        assert_eq!(std::fs::read(&target).unwrap(), b"");

        let err = AuditLog::start(tmp.path(), master_start("h")).unwrap_err();
        assert!(err.to_string().contains("cannot open audit log"), "{err}");
    }

    #[test]
    fn unwritable_directory_is_a_clear_error() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("not-a-dir");
        std::fs::write(&file, "").unwrap();
        let err = AuditLog::start(file.join("audit.jsonl"), master_start("h")).unwrap_err();
        assert!(err.to_string().starts_with("cannot create "), "{err}");
    }

    #[test]
    fn misplaced_start_is_refused_and_changes_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("audit.jsonl");
        let mut log = AuditLog::start(&path, master_start("h")).unwrap();
        let before = std::fs::read(&path).unwrap();
        let err = log
            .append(&Event::MasterStart(master_start("again")))
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert_eq!(std::fs::read(&path).unwrap(), before);
        assert_eq!(log.records(), 1);
        log.append(&Event::MasterStop(MasterStop {
            reason: "by hand".into(),
        }))
        .unwrap();
        assert_eq!(
            log.append(&escape(1)).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        assert!(verify_bytes(&std::fs::read(&path).unwrap()).is_ok());
    }

    #[test]
    fn failed_and_short_writes_leave_the_chain_intact() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("audit.jsonl");
        let mut log = AuditLog::start(&path, master_start("h")).unwrap();
        log.append(&escape(1)).unwrap();
        let before = std::fs::read(&path).unwrap();

        // The disk fills up: nothing written.
        let err = log
            .write_record(
                &escape(2),
                Durability::Synced,
                LockWait::Within(LOCK_WAIT),
                |_, _| {
                    Err(io::Error::from_raw_os_error(28)) // ENOSPC
                },
            )
            .unwrap_err();
        assert_eq!(err.raw_os_error(), Some(28));
        assert_eq!(log.records(), 2);

        // The disk fills up mid-line: half the line gets in.
        let err = log
            .write_record(
                &escape(3),
                Durability::Buffered,
                LockWait::Within(LOCK_WAIT),
                |fd, bytes| write_once(fd, &bytes[..bytes.len() / 2]),
            )
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WriteZero);
        assert_eq!(log.records(), 2);
        assert_eq!(
            std::fs::read(&path).unwrap(),
            before,
            "partial line not cut off"
        );

        // The disk fills up mid-line and stays full: the rest's error is
        // the one told, and the partial line is cut off.
        let mut calls = 0;
        let err = log
            .write_record(
                &escape(3),
                Durability::Buffered,
                LockWait::Within(LOCK_WAIT),
                |fd, bytes| {
                    calls += 1;
                    if calls == 1 {
                        write_once(fd, &bytes[..10])
                    } else {
                        Err(io::Error::from_raw_os_error(28))
                    }
                },
            )
            .unwrap_err();
        assert_eq!(err.raw_os_error(), Some(28), "{err}");
        assert_eq!(log.records(), 2);
        assert_eq!(std::fs::read(&path).unwrap(), before);

        // Interrupted mid-line, then the rest goes in: one whole record.
        let mut calls = 0;
        log.write_record(
            &escape(3),
            Durability::Buffered,
            LockWait::Within(LOCK_WAIT),
            |fd, bytes| {
                calls += 1;
                write_once(fd, if calls == 1 { &bytes[..10] } else { bytes })
            },
        )
        .unwrap();
        assert_eq!(log.records(), 3);

        // The next record chains to the last one really written.
        log.append(&escape(4)).unwrap();
        let report = verify_bytes(&std::fs::read(&path).unwrap());
        assert!(report.is_ok(), "{report}");
        assert_eq!(report.streams[0].records, 4);
    }

    #[test]
    fn a_partial_line_left_by_others_does_not_swallow_records() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("audit.jsonl");
        let mut log = AuditLog::start(&path, master_start("h")).unwrap();
        // Someone appended without the lock and died mid-line.
        let mut other = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        io::Write::write_all(&mut other, b"{\"ts\":\"2026-").unwrap();
        log.append(&escape(1)).unwrap();
        log.stop("done").unwrap();

        let text = std::fs::read_to_string(&path).unwrap();
        let report = verify(&text);
        assert!(
            matches!(
                report.first_break,
                Some(Break::Line {
                    line: 2,
                    fault: LineFault::NotJson(_)
                })
            ),
            "{report}"
        );
        // Our stream is whole around it.
        assert_eq!(report.streams.len(), 1);
        assert_eq!(report.streams[0].records, 3);
        assert!(report.streams[0].stopped);
        let ours: Vec<&str> = text.lines().filter(|l| *l != "{\"ts\":\"2026-").collect();
        assert!(verify(&(ours.join("\n") + "\n")).is_ok());
    }

    #[test]
    fn concurrent_masters_never_interleave() {
        const MASTERS: usize = 4;
        const RECORDS: u64 = 200;
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("audit.jsonl");
        let threads: Vec<_> = (0..MASTERS)
            .map(|m| {
                let path = path.clone();
                std::thread::spawn(move || {
                    let mut log =
                        AuditLog::start(&path, master_start(&format!("host-{m}"))).unwrap();
                    for i in 0..RECORDS {
                        // Some durable, as decisions are, to mix in syncs.
                        if i % 50 == 0 {
                            log.append_durable(&escape(i)).unwrap();
                        } else {
                            log.append(&escape(i)).unwrap();
                        }
                    }
                    log.stream()
                })
            })
            .collect();
        let streams: Vec<StreamId> = threads.into_iter().map(|t| t.join().unwrap()).collect();

        let data = read_log(&path).unwrap();
        let text = String::from_utf8(data).unwrap();
        assert_eq!(text.lines().count(), MASTERS * (RECORDS as usize + 1));
        for line in text.lines() {
            Record::parse(line).unwrap();
        }
        let report = verify(&text);
        assert!(report.is_ok(), "{report}");
        assert_eq!(report.streams.len(), MASTERS);
        for summary in &report.streams {
            assert!(streams.contains(&summary.stream));
            assert_eq!(summary.records, RECORDS + 1);
            assert_eq!(summary.last_seq, RECORDS);
        }
    }
}
