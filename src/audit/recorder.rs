//! The master's side of the audit log: one stream per master, records
//! written as things happen, and decisions written before what they allow
//! starts and on disk before anything flows through it.
//!
//! A record is appended where it happens, on the event loop, when nothing
//! stands in the way: the file's lock is free (tried, never waited for)
//! and no earlier record is still with the writer thread. Such a write
//! goes to the page cache, so a session's records cost no hand-off to
//! another thread and a decision is in the file the moment it is made.
//! Whatever may wait goes to the writer thread, in order: a record that
//! met another process's lock, every record recorded while one is queued
//! (so that the file keeps the order of events), and each `fdatasync`.
//!
//! Fail closed: when a decision cannot be recorded (disk full, log
//! unwritable, log never opened), the request is denied with that reason,
//! unless the policy says `audit_failure = "allow"`. Other records are best
//! effort and a failure is logged.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::time::Instant;

use tokio::sync::oneshot;

use super::chain::{Event, MasterStart};
use super::journal::Journal;
use super::log::{AuditLog, LOCK_WAIT, sync_file};

/// Jobs waiting for the writer at most; past it, best-effort records are
/// dropped (and logged) and decisions are refused.
const BACKLOG: usize = 4096;

/// The audit stream of one master. Nothing on the event loop ever waits
/// for the file's lock or the disk: that is the writer thread's part.
pub struct Recorder {
    /// `Err` keeps why the log could not be opened, for every refusal.
    stream: Result<Arc<Stream>, RecordError>,
    /// Set once the stop record is asked for; the stream ends there.
    stopped: Mutex<bool>,
}

/// What the recording side and the writer thread share.
struct Stream {
    path: PathBuf,
    /// `None` once the stop record is written. Held for one append at a
    /// time; the writer holds it while it waits for another process's lock,
    /// and the recording side then queues instead of waiting.
    log: Mutex<Option<AuditLog>>,
    journal: Option<Journal>,
    /// Appends handed to the writer and not yet done (counted down under
    /// `log`'s lock once the record is in the file, or has failed).
    queued: AtomicUsize,
    jobs: SyncSender<Job>,
}

enum Job {
    Append {
        event: Event,
        queued: Instant,
        /// For a record something waits on: where the outcomes of its
        /// append and of the `fdatasync` after it go.
        done: Option<Waiters>,
    },
    /// A record already in the file that something waits to see on disk.
    Sync { synced: oneshot::Sender<Outcome> },
    Stop {
        reason: String,
        done: mpsc::Sender<()>,
    },
}

impl Recorder {
    /// Opens the log, writes this master's start record, and starts the
    /// writer.
    pub fn start(path: &Path, start: MasterStart) -> Recorder {
        let log = AuditLog::start(path, start).map_err(|e| RecordError::write(path, e));
        if let Err(e) = &log {
            tracing::error!("{e}; requests that need a decision will be refused");
        }
        let journal = Journal::connect();
        if let (Some(journal), Ok(log)) = (&journal, &log) {
            journal.send(&String::from_utf8_lossy(log.last_line()));
        }
        Recorder {
            stream: log.and_then(|log| Stream::start(path, log, journal)),
            stopped: Mutex::new(false),
        }
    }

    /// Best-effort record.
    pub fn record(&self, event: Event) {
        if let Err(e) = self.enqueue(event, None) {
            tracing::error!("audit record not written: {e}");
        }
    }

    /// Records `event`, in order with every other record, and returns the
    /// waits for it to be in the file and then on disk, so that the caller
    /// can do preparatory work meanwhile and await each before what it
    /// guards. `Err` at once if it cannot even be queued.
    pub fn record_durably(&self, event: Event) -> Result<PendingRecord, RecordError> {
        let (written_tx, written) = oneshot::channel();
        let (synced_tx, synced) = oneshot::channel();
        let sync_later = self.enqueue(
            event,
            Some(Waiters {
                written: written_tx,
                synced: synced_tx,
            }),
        )?;
        Ok(PendingRecord {
            written: Some(written),
            sync_later,
            synced,
        })
    }

    /// Appends or queues `event`; for a waited-on record appended here,
    /// returns the sync to ask the writer for when someone waits for it.
    fn enqueue(
        &self,
        event: Event,
        done: Option<Waiters>,
    ) -> Result<Option<SyncLater>, RecordError> {
        if *self.stopped.lock().expect("not poisoned") {
            return Err(RecordError::MasterStopped);
        }
        let stream = self.stream.as_ref().map_err(Clone::clone)?;
        match stream.append_here(&event) {
            Some(written) => Ok(stream.after_append_here(written, event.name(), done)),
            None => stream.queue(event, done).map(|()| None),
        }
    }

    /// Writes the stop record; the stream ends here. Waits for the writer
    /// to finish what is queued (each record at most [`LOCK_WAIT`] for the
    /// lock).
    pub fn stop(&self, reason: &str) {
        let mut stopped = self.stopped.lock().expect("not poisoned");
        if std::mem::replace(&mut *stopped, true) {
            return;
        }
        let Ok(stream) = &self.stream else {
            return;
        };
        let (done, finished) = mpsc::channel();
        let job = Job::Stop {
            reason: reason.to_owned(),
            done,
        };
        if stream.jobs.send(job).is_ok() {
            let _ = finished.recv();
        }
    }
}

impl Stream {
    fn start(
        path: &Path,
        log: AuditLog,
        journal: Option<Journal>,
    ) -> Result<Arc<Stream>, RecordError> {
        let sync_handle = log.sync_handle().map_err(|e| RecordError::write(path, e))?;
        let (jobs, queue) = mpsc::sync_channel(BACKLOG);
        let stream = Arc::new(Stream {
            path: path.to_path_buf(),
            log: Mutex::new(Some(log)),
            journal,
            queued: AtomicUsize::new(0),
            jobs,
        });
        let writer = Arc::clone(&stream);
        std::thread::Builder::new()
            .name("audit writer".into())
            .spawn(move || write_jobs(&writer, &sync_handle, queue))
            .map_err(|e| RecordError::NoWriter(Arc::new(e)))?;
        Ok(stream)
    }

    /// Appends `event` now if nothing stands in the way; `None` if it must
    /// go to the writer (a record is queued there, the writer holds the
    /// log, or another process holds the file's lock).
    fn append_here(&self, event: &Event) -> Option<Outcome> {
        // Seen as 0, every queued append is done: the writer counts down
        // under the log's lock, after the write.
        if self.queued.load(Ordering::SeqCst) != 0 {
            return None;
        }
        let mut log = match self.log.try_lock() {
            Ok(log) => log,
            Err(TryLockError::WouldBlock) => return None,
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
        };
        let Some(log) = log.as_mut() else {
            return Some(Err(RecordError::MasterStopped));
        };
        match log.append_unless_locked(event) {
            Ok(true) => {
                self.copy_to_journal(log);
                Some(Ok(()))
            }
            Ok(false) => None,
            Err(e) => Some(Err(RecordError::write(&self.path, e))),
        }
    }

    /// Tells the waiters of a record appended here; the sync of a
    /// waited-on one is the writer's, asked for once someone waits for it.
    fn after_append_here(
        self: &Arc<Self>,
        written: Outcome,
        name: &'static str,
        done: Option<Waiters>,
    ) -> Option<SyncLater> {
        let Some(Waiters {
            written: tell,
            synced,
        }) = done
        else {
            if let Err(e) = written {
                tracing::error!("audit record {name} not written: {e}");
            }
            return None;
        };
        let _ = tell.send(written.clone());
        match written {
            Ok(()) => Some(SyncLater {
                stream: Arc::clone(self),
                name,
                synced,
            }),
            Err(e) => {
                let _ = synced.send(Err(e));
                None
            }
        }
    }

    /// Hands `event` to the writer, behind what is already there.
    fn queue(&self, event: Event, done: Option<Waiters>) -> Result<(), RecordError> {
        let name = event.name();
        self.queued.fetch_add(1, Ordering::SeqCst);
        let job = Job::Append {
            event,
            queued: Instant::now(),
            done,
        };
        let sent = self.send(job, name);
        if sent.is_err() {
            self.queued.fetch_sub(1, Ordering::SeqCst);
        }
        sent
    }

    /// Hands `job` to the writer, never waiting: a full backlog refuses it.
    fn send(&self, job: Job, name: &'static str) -> Result<(), RecordError> {
        self.jobs.try_send(job).map_err(|e| match e {
            TrySendError::Full(_) => RecordError::Backlog {
                name,
                path: self.path.clone(),
            },
            TrySendError::Disconnected(_) => RecordError::WriterStopped,
        })
    }

    /// The writer's append of a queued record, waiting for the file's lock
    /// at most [`LOCK_WAIT`] from when the record was queued, so that a
    /// lock held by someone else costs the records queued meanwhile at most
    /// that wait in all, not that wait each. A failure of a record nobody
    /// waits on is logged.
    fn append_queued(&self, event: &Event, queued: Instant, best_effort: bool) -> Outcome {
        let mut log = self.lock_log();
        let written = match log.as_mut() {
            None => Err(RecordError::MasterStopped),
            Some(log) => {
                let wait = LOCK_WAIT.saturating_sub(queued.elapsed());
                let written = log
                    .append_within(event, wait)
                    .map_err(|e| RecordError::write(&self.path, e));
                if written.is_ok() {
                    self.copy_to_journal(log);
                }
                written
            }
        };
        self.queued.fetch_sub(1, Ordering::SeqCst);
        drop(log);
        if let (Err(e), true) = (&written, best_effort) {
            tracing::error!("audit record {} not written: {e}", event.name());
        }
        written
    }

    fn copy_to_journal(&self, log: &AuditLog) {
        if let Some(journal) = &self.journal {
            journal.send(&String::from_utf8_lossy(log.last_line()));
        }
    }

    fn lock_log(&self) -> MutexGuard<'_, Option<AuditLog>> {
        self.log.lock().unwrap_or_else(|e| e.into_inner())
    }
}

type Outcome = Result<(), RecordError>;

/// Why a record is not in the log, or not yet on disk. A decision whose
/// record this is refuses what it allowed unless the policy says
/// `audit_failure = "allow"`.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RecordError {
    /// Opening, locking, writing or syncing the file failed.
    #[error("cannot write audit log {}: {source}", path.display())]
    Write {
        path: PathBuf,
        /// Shared: one failed sync is the answer of every record it covered.
        source: Arc<std::io::Error>,
    },
    #[error("cannot start the audit writer: {0}")]
    NoWriter(Arc<std::io::Error>),
    #[error("audit record {name} dropped: {BACKLOG} records already wait for {}", path.display())]
    Backlog { name: &'static str, path: PathBuf },
    #[error("the audit writer stopped")]
    WriterStopped,
    #[error("the master has stopped")]
    MasterStopped,
}

impl RecordError {
    fn write(path: &Path, source: std::io::Error) -> RecordError {
        RecordError::Write {
            path: path.to_path_buf(),
            source: Arc::new(source),
        }
    }
}

/// Where a waited-on record's fate goes.
struct Waiters {
    written: oneshot::Sender<Outcome>,
    synced: oneshot::Sender<Outcome>,
}

/// A record on its way to the disk (see [`Recorder::record_durably`]).
pub struct PendingRecord {
    /// `None` once awaited.
    written: Option<oneshot::Receiver<Outcome>>,
    /// The sync of a record appended on the event loop, not yet asked for:
    /// waking the writer thread waits until what the record allows has
    /// been set going (a session's command is on its way to the server),
    /// since the disk is needed only before anything flows.
    sync_later: Option<SyncLater>,
    synced: oneshot::Receiver<Outcome>,
}

/// The writer's sync of a record appended on the event loop, to ask for.
struct SyncLater {
    stream: Arc<Stream>,
    name: &'static str,
    synced: oneshot::Sender<Outcome>,
}

impl SyncLater {
    fn ask(self) -> Outcome {
        let job = Job::Sync {
            synced: self.synced,
        };
        self.stream.send(job, self.name)
    }
}

impl PendingRecord {
    /// Completes once the record is in the file: from then on it outlives
    /// the master (killed or crashed), though not yet a crash of the
    /// machine.
    pub async fn written(&mut self) -> Outcome {
        match self.written.take() {
            Some(written) => written.await.unwrap_or_else(|_| writer_stopped()),
            None => Ok(()),
        }
    }

    /// Completes once the record is on disk (`fdatasync`).
    pub async fn synced(mut self) -> Outcome {
        self.written().await?;
        if let Some(sync) = self.sync_later.take() {
            sync.ask()?;
        }
        self.synced.await.unwrap_or_else(|_| writer_stopped())
    }
}

fn writer_stopped() -> Outcome {
    Err(RecordError::WriterStopped)
}

/// Jobs taken after one that waits for the disk, before the sync that then
/// covers them all, at most.
const GROUP_COMMIT: usize = 64;

/// The writer thread: appends the queued records and makes waited-on ones
/// durable. A sync waits until what was queued behind its record is
/// written too: decisions that arrive together share one `fdatasync`
/// (group commit), through a descriptor of its own so that the recording
/// side can go on appending meanwhile, and each waiter is woken once, when
/// its record is on disk.
fn write_jobs(stream: &Stream, sync_handle: &OwnedFd, queue: mpsc::Receiver<Job>) {
    while let Ok(job) = queue.recv() {
        let mut waiting = Vec::new();
        let mut next = Some(job);
        let mut taken = 0;
        while let Some(job) = next.take() {
            match job {
                Job::Append {
                    event,
                    queued,
                    done,
                } => {
                    let written = stream.append_queued(&event, queued, done.is_none());
                    if let Some(Waiters {
                        written: tell,
                        synced,
                    }) = done
                    {
                        let _ = tell.send(written.clone());
                        waiting.push((synced, written));
                    }
                }
                Job::Sync { synced } => waiting.push((synced, Ok(()))),
                Job::Stop { reason, done } => {
                    answer_after_sync(&stream.path, sync_handle, waiting);
                    if let Some(log) = stream.lock_log().take()
                        && let Err(e) = log.stop(reason)
                    {
                        tracing::error!("audit stop record not written: {e}");
                    }
                    let _ = done.send(());
                    return;
                }
            }
            taken += 1;
            if !waiting.is_empty() && taken < GROUP_COMMIT {
                next = queue.try_recv().ok();
            }
        }
        answer_after_sync(&stream.path, sync_handle, waiting);
    }
}

/// Syncs the file once for every waiting record that was written, and
/// tells each waiter its record's fate.
fn answer_after_sync(
    path: &Path,
    sync_handle: &OwnedFd,
    waiting: Vec<(oneshot::Sender<Outcome>, Outcome)>,
) {
    if waiting.is_empty() {
        return;
    }
    let synced = if waiting.iter().any(|(_, written)| written.is_ok()) {
        sync_file(sync_handle).map_err(|e| RecordError::write(path, e))
    } else {
        Ok(())
    };
    for (done, written) in waiting {
        let _ = done.send(written.and_then(|()| synced.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::chain::tests::{escape, master_start};
    use crate::audit::chain::verify_bytes;
    use std::time::Duration;

    /// A log that cannot be opened refuses every waited-on record with a
    /// reason that names the file; after stop, records are refused too.
    #[test]
    fn an_unopenable_log_refuses_decisions_saying_which_file() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("not-a-dir");
        std::fs::write(&blocker, b"").unwrap();
        let path = blocker.join("audit.jsonl");
        let recorder = Recorder::start(&path, master_start("host"));
        let Err(e) = recorder.record_durably(escape(1)) else {
            panic!("a record was queued for a log that is not open")
        };
        assert!(matches!(e, RecordError::Write { .. }), "{e:?}");
        assert!(e.to_string().contains(&path.display().to_string()), "{e}");

        let open = Recorder::start(&dir.path().join("audit.jsonl"), master_start("host"));
        open.stop("test over");
        assert!(matches!(
            open.record_durably(escape(2)),
            Err(RecordError::MasterStopped)
        ));
    }

    fn sessions_in(path: &Path) -> Vec<u64> {
        String::from_utf8(std::fs::read(path).unwrap())
            .unwrap()
            .lines()
            .filter_map(|line| {
                let value: serde_json::Value = serde_json::from_str(line).unwrap();
                value.get("session").and_then(serde_json::Value::as_u64)
            })
            .collect()
    }

    /// With the file's lock free and nothing queued, a record is in the
    /// file when `record` returns, and a decision is written before
    /// `record_durably` returns: no hand-off to the writer thread.
    #[test]
    fn a_record_is_in_the_file_when_recording_returns() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let recorder = Recorder::start(&path, master_start("host"));
        recorder.record(escape(1));
        assert_eq!(sessions_in(&path), [1]);
        let pending = recorder.record_durably(escape(2)).unwrap();
        assert_eq!(sessions_in(&path), [1, 2]);
        let rt = crate::test_support::runtime();
        rt.block_on(pending.synced()).unwrap();
        recorder.stop("test over");
    }

    /// While another process holds the file's lock, recording writes
    /// nothing: the records wait for the writer, and those made while any
    /// still waits queue behind them, so the file keeps the order they
    /// were made in.
    #[test]
    fn records_met_by_a_held_lock_wait_in_order() {
        use rustix::fs::{FlockOperation, flock};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let recorder = Recorder::start(&path, master_start("host"));
        recorder.record(escape(1));
        let other = std::fs::File::open(&path).unwrap();
        flock(&other, FlockOperation::LockExclusive).unwrap();

        recorder.record(escape(2));
        let mut decision = recorder.record_durably(escape(3)).unwrap();
        let rt = crate::test_support::runtime();
        let waited = rt.block_on(async {
            tokio::time::timeout(Duration::from_millis(200), decision.written()).await
        });
        assert!(
            waited.is_err(),
            "a decision was written under another's lock"
        );
        assert_eq!(sessions_in(&path), [1]);

        flock(&other, FlockOperation::Unlock).unwrap();
        // Made after the lock is gone, while 2 and 3 may still be queued.
        recorder.record(escape(4));
        rt.block_on(decision.synced()).unwrap();
        recorder.record(escape(5));
        recorder.stop("test over");
        assert_eq!(sessions_in(&path), [1, 2, 3, 4, 5]);
        let report = verify_bytes(&std::fs::read(&path).unwrap());
        assert!(report.is_ok(), "{report}");
    }

    /// Decisions queued together, between best-effort records, are each
    /// answered once they are written; the file holds every record, once,
    /// in queue order, and its chain holds.
    #[test]
    fn records_waited_on_together_are_all_written_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let recorder = Recorder::start(&path, master_start("host"));
        let rt = crate::test_support::runtime();
        let mut waits = Vec::new();
        for session in 0..200 {
            if session % 3 == 0 {
                recorder.record(escape(session));
            } else {
                waits.push(recorder.record_durably(escape(session)).unwrap());
            }
        }
        rt.block_on(async {
            for mut wait in waits {
                wait.written().await.unwrap();
                wait.synced().await.unwrap();
            }
        });
        recorder.stop("test over");
        let data = std::fs::read(&path).unwrap();
        let report = verify_bytes(&data);
        assert!(report.is_ok(), "{report}");
        let sessions: Vec<u64> = String::from_utf8(data)
            .unwrap()
            .lines()
            .filter_map(|line| {
                let value: serde_json::Value = serde_json::from_str(line).unwrap();
                value.get("session").and_then(serde_json::Value::as_u64)
            })
            .collect();
        assert_eq!(sessions, (0..200).collect::<Vec<u64>>());
    }
}
