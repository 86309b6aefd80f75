//! What one admitted client (or a flood of connections) may take from the
//! accept loop: a cap on control connections open at once, a back-off
//! when `accept` fails (EMFILE would otherwise spin the loop), and a
//! refusal log that says what happened without writing a line per
//! refused connection.
//!
//! No I/O: time is passed in.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// Descriptors kept for everything but control connections: the upstream
/// connections, spill files, listeners, the audit log, accept itself.
pub const RESERVED_FDS: u64 = 64;

/// Each control connection may hold its socket and the three descriptors
/// of a session.
const FDS_PER_CONNECTION: u64 = 4;

/// The default cap is never above this, whatever the descriptor limit.
const DEFAULT_CAP: usize = 1000;

/// How long a new connection may take to say HELLO.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// The default number of control connections open at once for a
/// descriptor limit of `nofile`: as many as fit with their descriptors
/// after [`RESERVED_FDS`], at most [`DEFAULT_CAP`], at least 1.
pub fn default_cap(nofile: u64) -> usize {
    let fit = nofile.saturating_sub(RESERVED_FDS) / FDS_PER_CONNECTION;
    usize::try_from(fit)
        .unwrap_or(usize::MAX)
        .clamp(1, DEFAULT_CAP)
}

/// Counts open control connections against a cap. When the cap is
/// reached, the oldest connection that has not said HELLO yet makes room
/// (as sshd's MaxStartups drops unauthenticated connections): a real
/// client says HELLO at once, so a flood of silent connections can delay
/// others by at most that, never lock them out.
#[derive(Debug, Clone)]
pub struct ConnectionLimit {
    table: Arc<Mutex<Table>>,
    cap: usize,
}

#[derive(Debug, Default)]
struct Table {
    open: usize,
    next_id: u64,
    /// Connections before HELLO, oldest first.
    pending: VecDeque<(u64, Arc<Notify>)>,
}

/// One open control connection; dropping it frees its place.
#[derive(Debug)]
pub struct ConnectionSlot {
    table: Arc<Mutex<Table>>,
    id: u64,
    evict: Arc<Notify>,
}

/// What [`ConnectionLimit::try_acquire`] made room with.
#[derive(Debug)]
pub enum Admission {
    /// There was room.
    Admitted(ConnectionSlot),
    /// The oldest connection still without HELLO is being closed for it.
    Evicting(ConnectionSlot),
    /// Full of connections past HELLO.
    Refused,
}

impl ConnectionLimit {
    /// Evictions whose connections have not closed yet may take the count
    /// this far over the cap, no further.
    const EVICTING_MAX: usize = 64;

    pub fn new(cap: usize) -> ConnectionLimit {
        ConnectionLimit {
            table: Arc::default(),
            cap,
        }
    }

    pub fn cap(&self) -> usize {
        self.cap
    }

    #[cfg(test)]
    pub fn open(&self) -> usize {
        self.table.lock().expect("not poisoned").open
    }

    /// A place for one more connection, if the cap allows or an older
    /// connection without HELLO can give up its place.
    pub fn try_acquire(&self) -> Admission {
        let mut table = self.table.lock().expect("not poisoned");
        let evicting = if table.open < self.cap {
            false
        } else if table.open < self.cap + Self::EVICTING_MAX
            && let Some((_, victim)) = table.pending.pop_front()
        {
            victim.notify_one();
            true
        } else {
            return Admission::Refused;
        };
        table.open += 1;
        let id = table.next_id;
        table.next_id += 1;
        let evict = Arc::new(Notify::new());
        table.pending.push_back((id, Arc::clone(&evict)));
        let slot = ConnectionSlot {
            table: Arc::clone(&self.table),
            id,
            evict,
        };
        if evicting {
            Admission::Evicting(slot)
        } else {
            Admission::Admitted(slot)
        }
    }
}

impl ConnectionSlot {
    /// The client said HELLO: this connection no longer gives way.
    pub fn established(&self) {
        let mut table = self.table.lock().expect("not poisoned");
        table.pending.retain(|(id, _)| *id != self.id);
    }

    /// Completes when a newer connection took this one's place.
    pub async fn evicted(&self) {
        self.evict.notified().await
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut table = self.table.lock().expect("not poisoned");
        table.open -= 1;
        table.pending.retain(|(id, _)| *id != self.id);
    }
}

/// The pause after failed `accept` calls: doubling from 10 ms to 1 s,
/// reset by a success.
#[derive(Debug, Default)]
pub struct AcceptBackoff {
    failures: u32,
}

impl AcceptBackoff {
    const FIRST: Duration = Duration::from_millis(10);
    const MAX: Duration = Duration::from_secs(1);

    /// Records a failure; returns how long to wait before the next accept.
    pub fn failed(&mut self) -> Duration {
        let pause = Self::FIRST
            .saturating_mul(1 << self.failures.min(10))
            .min(Self::MAX);
        self.failures = self.failures.saturating_add(1);
        pause
    }

    /// Whether this is the first failure of a run (worth a log line).
    pub fn is_first(&self) -> bool {
        self.failures == 1
    }

    pub fn succeeded(&mut self) {
        self.failures = 0;
    }
}

/// Says the first refusal of a burst at once and the rest as one count per
/// [`RefusalLog::WINDOW`], so that a flood neither fills the log nor
/// hides.
#[derive(Debug, Default)]
pub struct RefusalLog {
    window_start: Option<Instant>,
    unreported: u64,
}

impl RefusalLog {
    pub const WINDOW: Duration = Duration::from_secs(10);

    /// Counts one refusal; returns what to log and audit now, if anything:
    /// the refusal itself (`None` count) or how many went unreported.
    pub fn refused(&mut self, now: Instant) -> Option<Report> {
        match self.window_start {
            Some(start) if now.duration_since(start) < Self::WINDOW => {
                self.unreported += 1;
                None
            }
            _ => {
                let earlier = std::mem::take(&mut self.unreported);
                self.window_start = Some(now);
                Some(Report {
                    also_refused: earlier,
                })
            }
        }
    }
}

/// A refusal to report, with how many more were refused since the last
/// report without one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    pub also_refused: u64,
}

impl Report {
    /// `what` (one event), with the count of the unreported ones after it.
    pub fn describe(&self, what: &str, more: &str) -> String {
        if self.also_refused == 0 {
            return what.to_owned();
        }
        format!(
            "{what}; {} more {more}in the last {} s",
            self.also_refused,
            RefusalLog::WINDOW.as_secs()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_leaves_descriptors_for_everything_else() {
        assert_eq!(default_cap(1024), 240);
        assert_eq!(default_cap(20_000), DEFAULT_CAP);
        assert_eq!(default_cap(10), 1);
    }

    fn slot(admission: Admission) -> Option<ConnectionSlot> {
        match admission {
            Admission::Admitted(slot) | Admission::Evicting(slot) => Some(slot),
            Admission::Refused => None,
        }
    }

    #[test]
    fn slots_are_counted_and_freed() {
        let limit = ConnectionLimit::new(2);
        let a = slot(limit.try_acquire()).expect("first");
        let b = slot(limit.try_acquire()).expect("second");
        a.established();
        b.established();
        assert!(matches!(limit.try_acquire(), Admission::Refused));
        assert_eq!(limit.open(), 2);
        drop(a);
        assert!(matches!(limit.try_acquire(), Admission::Admitted(_)));
    }

    #[test]
    fn a_full_table_evicts_the_oldest_connection_without_hello() {
        let rt = crate::test_support::runtime();
        let limit = ConnectionLimit::new(2);
        let talked = slot(limit.try_acquire()).expect("first");
        talked.established();
        let silent = slot(limit.try_acquire()).expect("second");
        let newer = match limit.try_acquire() {
            Admission::Evicting(slot) => slot,
            other => panic!("{other:?}"),
        };
        // The silent one is told to go; the one past HELLO is not.
        rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(1), silent.evicted())
                .await
                .expect("evicted");
        });
        drop(silent);
        newer.established();
        assert!(matches!(limit.try_acquire(), Admission::Refused));
        drop(talked);
    }

    #[test]
    fn accept_failures_back_off_to_a_second_and_reset() {
        let mut backoff = AcceptBackoff::default();
        assert_eq!(backoff.failed(), Duration::from_millis(10));
        assert!(backoff.is_first());
        assert_eq!(backoff.failed(), Duration::from_millis(20));
        for _ in 0..20 {
            backoff.failed();
        }
        assert_eq!(backoff.failed(), Duration::from_secs(1));
        backoff.succeeded();
        assert_eq!(backoff.failed(), Duration::from_millis(10));
    }

    #[test]
    fn a_flood_of_refusals_is_reported_once_per_window() {
        let start = Instant::now();
        let mut log = RefusalLog::default();
        assert_eq!(log.refused(start), Some(Report { also_refused: 0 }));
        for i in 1..=500 {
            assert_eq!(log.refused(start + Duration::from_millis(i)), None);
        }
        let later = start + RefusalLog::WINDOW;
        assert_eq!(log.refused(later), Some(Report { also_refused: 500 }));
    }
}
