//! The master's side of the audit log: one stream per master, records
//! written as things happen, and decisions written durably before the
//! session they allow starts.
//!
//! Fail closed: when a decision cannot be recorded (disk full, log
//! unwritable, log never opened), the request is denied with that reason,
//! unless the policy says `audit_failure = "allow"`. Other records are best
//! effort and a failure is logged.

use std::future::Future;
use std::os::fd::OwnedFd;
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
    writer: Result<SyncSender<Job>, String>,
    /// The file again, for `fdatasync` off the writer thread.
    sync_fd: Option<Arc<OwnedFd>>,
    /// Set once the stop record is written; the stream ends there.
    stopped: Mutex<bool>,
}

enum Job {
    Append {
        event: Event,
        queued: Instant,
        /// The append's outcome, for a record something waits on.
        done: Option<oneshot::Sender<Result<(), String>>>,
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
        let log = AuditLog::start(path, start)
            .map_err(|e| format!("cannot write audit log {}: {e}", path.display()));
        if let Err(e) = &log {
            tracing::error!("{e}; requests that need a decision will be refused");
        }
        let journal = Journal::connect();
        if let (Some(journal), Ok(log)) = (&journal, &log) {
            journal.send(&String::from_utf8_lossy(log.last_line()));
        }
        let sync_fd = log
            .as_ref()
            .ok()
            .and_then(|l| l.sync_handle().ok())
            .map(Arc::new);
        let writer = log.and_then(|log| {
            let (jobs, queue) = mpsc::sync_channel(BACKLOG);
            std::thread::Builder::new()
                .name("audit writer".into())
                .spawn(move || write_jobs(log, journal, queue))
                .map(|_| jobs)
                .map_err(|e| format!("cannot start the audit writer: {e}"))
        });
        Recorder {
            path: path.to_path_buf(),
            writer,
            sync_fd,
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
    /// wait for it to be written and reach the disk, so that the caller
    /// can do preparatory work meanwhile and await it before what the
    /// record allows. `Err` at once if it cannot even be queued.
    pub fn record_then_sync(
        &self,
        event: Event,
    ) -> Result<impl Future<Output = Result<(), String>> + Send + 'static, String> {
        let (done, written) = oneshot::channel();
        self.enqueue(event, Some(done))?;
        let sync_fd = self.sync_fd.clone();
        let path = self.path.clone();
        Ok(async move {
            written
                .await
                .unwrap_or_else(|_| Err("the audit writer stopped".into()))?;
            tokio::task::spawn_blocking(move || match sync_fd {
                Some(fd) => super::log::sync(&fd)
                    .map_err(|e| format!("cannot write audit log {}: {e}", path.display())),
                None => Err(format!("audit log {} is not open", path.display())),
            })
            .await
            .unwrap_or_else(|e| Err(format!("audit writer failed: {e}")))
        })
    }

    fn enqueue(
        &self,
        event: Event,
        done: Option<oneshot::Sender<Result<(), String>>>,
    ) -> Result<(), String> {
        if *self.stopped.lock().expect("not poisoned") {
            return Err("the master has stopped".into());
        }
        let writer = self.writer.as_ref().map_err(Clone::clone)?;
        let name = event.name();
        let job = Job::Append {
            event,
            queued: Instant::now(),
            done,
        };
        writer.try_send(job).map_err(|e| match e {
            TrySendError::Full(_) => format!(
                "audit record {name} dropped: {BACKLOG} records already wait for {}",
                self.path.display()
            ),
            TrySendError::Disconnected(_) => "the audit writer stopped".into(),
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

/// The writer thread: appends each queued record, waiting for the file's
/// lock at most [`LOCK_WAIT`] from when the record was queued, so that a
/// lock held by someone else costs the records queued meanwhile at most
/// that wait in all, not that wait each.
fn write_jobs(mut log: AuditLog, journal: Option<Journal>, queue: mpsc::Receiver<Job>) {
    for job in queue {
        match job {
            Job::Append {
                event,
                queued,
                done,
            } => {
                let wait = LOCK_WAIT.saturating_sub(queued.elapsed());
                let written = log
                    .append_within(&event, wait)
                    .map_err(|e| format!("cannot write audit log {}: {e}", log.path().display()));
                match &written {
                    Ok(()) => {
                        if let Some(journal) = &journal {
                            journal.send(&String::from_utf8_lossy(log.last_line()));
                        }
                    }
                    Err(e) if done.is_none() => {
                        tracing::error!("audit record {} not written: {e}", event.name());
                    }
                    Err(_) => {}
                }
                if let Some(done) = done {
                    let _ = done.send(written);
                }
            }
            Job::Stop { reason, done } => {
                if let Err(e) = log.stop(reason) {
                    tracing::error!("audit stop record not written: {e}");
                }
                let _ = done.send(());
                return;
            }
        }
    }
}
