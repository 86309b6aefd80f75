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
use std::sync::{Arc, Mutex};

use super::chain::{Event, MasterStart};
use super::journal::Journal;
use super::log::AuditLog;

/// The audit stream of one master.
pub struct Recorder {
    path: PathBuf,
    /// A copy of each record for the systemd journal, when one runs.
    journal: Option<Arc<Journal>>,
    /// `Err` keeps why the log could not be opened, for every refusal.
    log: Arc<Mutex<Result<AuditLog, String>>>,
    /// The file again, for `fdatasync` without holding `log` (which the
    /// event loop takes for every record).
    sync_fd: Option<Arc<OwnedFd>>,
}

impl Recorder {
    /// Opens the log and writes this master's start record.
    pub fn start(path: &Path, start: MasterStart) -> Recorder {
        let log = AuditLog::start(path, start)
            .map_err(|e| format!("cannot write audit log {}: {e}", path.display()));
        if let Err(e) = &log {
            tracing::error!("{e}; requests that need a decision will be refused");
        }
        let journal = Journal::connect().map(Arc::new);
        if let (Some(journal), Ok(log)) = (&journal, &log) {
            journal.send(&String::from_utf8_lossy(log.last_line()));
        }
        let sync_fd = log
            .as_ref()
            .ok()
            .and_then(|l| l.sync_handle().ok())
            .map(Arc::new);
        Recorder {
            path: path.to_path_buf(),
            journal,
            log: Arc::new(Mutex::new(log)),
            sync_fd,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Best-effort record.
    pub fn record(&self, event: Event) {
        let mut log = self.log.lock().expect("not poisoned");
        if let Ok(log) = log.as_mut() {
            match log.append(&event) {
                Ok(()) => self.copy_to_journal(log),
                Err(e) => tracing::error!("audit record {} not written: {e}", event.name()),
            }
        }
    }

    /// A record that must be on disk before we go on (decisions).
    pub async fn record_durable(&self, event: Event) -> Result<(), String> {
        self.record_then_sync(event)?.await
    }

    /// Appends `event` now, in order with every other record, and returns
    /// the wait for it to reach the disk (an `fdatasync` off the event
    /// loop), so that the caller can do preparatory work meanwhile and
    /// await it before what the record allows. `Err` if it could not even
    /// be written.
    pub fn record_then_sync(
        &self,
        event: Event,
    ) -> Result<impl Future<Output = Result<(), String>> + Send + 'static, String> {
        let cannot =
            |e: std::io::Error| format!("cannot write audit log {}: {e}", self.path.display());
        {
            let mut log = self.log.lock().expect("not poisoned");
            let log = log.as_mut().map_err(|e| e.clone())?;
            log.append(&event).map_err(cannot)?;
            self.copy_to_journal(log);
        }
        let sync_fd = self.sync_fd.clone();
        let path = self.path.clone();
        let synced = tokio::task::spawn_blocking(move || match sync_fd {
            Some(fd) => super::log::sync(&fd)
                .map_err(|e| format!("cannot write audit log {}: {e}", path.display())),
            None => Err(format!("audit log {} is not open", path.display())),
        });
        Ok(async move {
            synced
                .await
                .unwrap_or_else(|e| Err(format!("audit writer failed: {e}")))
        })
    }

    fn copy_to_journal(&self, log: &AuditLog) {
        if let Some(journal) = &self.journal {
            journal.send(&String::from_utf8_lossy(log.last_line()));
        }
    }

    /// Writes the stop record; the stream ends here.
    pub fn stop(&self, reason: &str) {
        let mut guard = self.log.lock().expect("not poisoned");
        let taken = std::mem::replace(&mut *guard, Err("the master has stopped".into()));
        if let Ok(log) = taken
            && let Err(e) = log.stop(reason)
        {
            tracing::error!("audit stop record not written: {e}");
        }
    }
}
