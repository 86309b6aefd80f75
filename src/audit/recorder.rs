//! The master's side of the audit log: one stream per master, records
//! written as things happen, and decisions written before what they allow
//! starts and on disk before anything flows through it.
//!
//! Fail closed: when a decision cannot be recorded (disk full, log
//! unwritable, log never opened), the request is denied with that reason,
//! unless the policy says `audit_failure = "allow"`. Other records are best
//! effort and a failure is logged.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::oneshot;

use super::chain::{Event, MasterStart};
use super::journal::Journal;
use super::log::{AuditLog, LOCK_WAIT};

/// Records waiting for the writer at most; past it, best-effort records
/// are dropped (and logged) and decisions are refused.
const BACKLOG: usize = 4096;

/// The audit stream of one master. Every record goes through one writer
/// thread, in order, so that nothing on the event loop ever waits for the
/// file's lock or the disk.
pub struct Recorder {
    path: PathBuf,
    /// `Err` keeps why the log could not be opened, for every refusal.
    writer: Result<SyncSender<Job>, RecordError>,
    /// Set once the stop record is written; the stream ends there.
    stopped: Mutex<bool>,
}

enum Job {
    Append {
        event: Event,
        queued: Instant,
        /// For a record something waits on: where the outcomes of its
        /// append and of the `fdatasync` after it go.
        done: Option<Waiters>,
    },
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
        let writer = log.and_then(|log| {
            let (jobs, queue) = mpsc::sync_channel(BACKLOG);
            std::thread::Builder::new()
                .name("audit writer".into())
                .spawn(move || write_jobs(log, journal, queue))
                .map(|_| jobs)
                .map_err(|e| RecordError::NoWriter(Arc::new(e)))
        });
        Recorder {
            path: path.to_path_buf(),
            writer,
            stopped: Mutex::new(false),
        }
    }

    /// Best-effort record.
    pub fn record(&self, event: Event) {
        if let Err(e) = self.enqueue(event, None) {
            tracing::error!("audit record not written: {e}");
        }
    }

    /// Queues `event`, in order with every other record, and returns the
    /// waits for it to be in the file and then on disk, so that the caller
    /// can do preparatory work meanwhile and await each before what it
    /// guards. `Err` at once if it cannot even be queued.
    pub fn record_durably(&self, event: Event) -> Result<PendingRecord, RecordError> {
        let (written_tx, written) = oneshot::channel();
        let (synced_tx, synced) = oneshot::channel();
        self.enqueue(
            event,
            Some(Waiters {
                written: written_tx,
                synced: synced_tx,
            }),
        )?;
        Ok(PendingRecord {
            written: Some(written),
            synced,
        })
    }

    fn enqueue(&self, event: Event, done: Option<Waiters>) -> Result<(), RecordError> {
        if *self.stopped.lock().expect("not poisoned") {
            return Err(RecordError::MasterStopped);
        }
        let writer = self.writer.as_ref().map_err(Clone::clone)?;
        let name = event.name();
        let job = Job::Append {
            event,
            queued: Instant::now(),
            done,
        };
        writer.try_send(job).map_err(|e| match e {
            TrySendError::Full(_) => RecordError::Backlog {
                name,
                path: self.path.clone(),
            },
            TrySendError::Disconnected(_) => RecordError::WriterStopped,
        })
    }

    /// Writes the stop record; the stream ends here. Waits for the writer
    /// to finish what is queued (each record at most [`LOCK_WAIT`] for the
    /// lock).
    pub fn stop(&self, reason: &str) {
        let mut stopped = self.stopped.lock().expect("not poisoned");
        if std::mem::replace(&mut *stopped, true) {
            return;
        }
        let Ok(writer) = &self.writer else {
            return;
        };
        let (done, finished) = mpsc::channel();
        let job = Job::Stop {
            reason: reason.to_owned(),
            done,
        };
        if writer.send(job).is_ok() {
            let _ = finished.recv();
        }
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
    synced: oneshot::Receiver<Outcome>,
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
        self.synced.await.unwrap_or_else(|_| writer_stopped())
    }
}

fn writer_stopped() -> Outcome {
    Err(RecordError::WriterStopped)
}

/// Records written after one that waits for the disk, before the sync
/// that then covers them all, at most.
const GROUP_COMMIT: usize = 64;

/// The writer thread: appends each queued record, waiting for the file's
/// lock at most [`LOCK_WAIT`] from when the record was queued, so that a
/// lock held by someone else costs the records queued meanwhile at most
/// that wait in all, not that wait each. A record something waits on is
/// followed by an `fdatasync` here, on this thread, after what was queued
/// behind it is written too: decisions that arrive together share one sync
/// (group commit), and the waiter is woken once, when its record is on
/// disk.
fn write_jobs(mut log: AuditLog, journal: Option<Journal>, queue: mpsc::Receiver<Job>) {
    while let Ok(job) = queue.recv() {
        let mut waiting = Vec::new();
        let mut next = Some(job);
        let mut written_in_group = 0;
        while let Some(job) = next.take() {
            match job {
                Job::Append {
                    event,
                    queued,
                    done,
                } => {
                    let written =
                        append(&mut log, journal.as_ref(), &event, queued, done.is_none());
                    if let Some(Waiters {
                        written: tell,
                        synced,
                    }) = done
                    {
                        let _ = tell.send(written.clone());
                        waiting.push((synced, written));
                    }
                }
                Job::Stop { reason, done } => {
                    answer_after_sync(&log, waiting);
                    if let Err(e) = log.stop(reason) {
                        tracing::error!("audit stop record not written: {e}");
                    }
                    let _ = done.send(());
                    return;
                }
            }
            written_in_group += 1;
            if !waiting.is_empty() && written_in_group < GROUP_COMMIT {
                next = queue.try_recv().ok();
            }
        }
        answer_after_sync(&log, waiting);
    }
}

/// Appends one record; a failure of a record nobody waits on is logged.
fn append(
    log: &mut AuditLog,
    journal: Option<&Journal>,
    event: &Event,
    queued: Instant,
    best_effort: bool,
) -> Outcome {
    let wait = LOCK_WAIT.saturating_sub(queued.elapsed());
    let written = log
        .append_within(event, wait)
        .map_err(|e| RecordError::write(log.path(), e));
    match &written {
        Ok(()) => {
            if let Some(journal) = journal {
                journal.send(&String::from_utf8_lossy(log.last_line()));
            }
        }
        Err(e) if best_effort => {
            tracing::error!("audit record {} not written: {e}", event.name());
        }
        Err(_) => {}
    }
    written
}

/// Syncs the file once for every waiting record that was written, and
/// tells each waiter its record's fate.
fn answer_after_sync(log: &AuditLog, waiting: Vec<(oneshot::Sender<Outcome>, Outcome)>) {
    if waiting.is_empty() {
        return;
    }
    let synced = if waiting.iter().any(|(_, written)| written.is_ok()) {
        log.sync().map_err(|e| RecordError::write(log.path(), e))
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

    /// Decisions queued together, between best-effort records, are each
    /// answered once they are written; the file holds every record, once,
    /// in queue order, and its chain holds.
    #[test]
    fn records_waited_on_together_are_all_written_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let recorder = Recorder::start(&path, master_start("host"));
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
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
