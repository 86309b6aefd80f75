//! Pacing of bulk uploads while someone types: how fast bulk sessions may
//! hand data to one upstream connection, so that the queue a keystroke
//! waits in stays a few milliseconds deep.
//!
//! Where the queue is does not matter: russh's outgoing queue, the socket's
//! send buffer or a router's buffer on the path all delay the next
//! keystroke alike. So the signal is the round trip of a ping that goes
//! through all of them (an SSH keepalive, queued behind the data like a
//! keystroke), measured against its recent minimum: anything above the
//! minimum is queueing. As LEDBAT does, the bulk rate rises while the
//! queueing is below a small target and falls in proportion when above.
//! Interactive data is never paced.
//!
//! Pure: time is passed in, nothing here sleeps or does I/O
//! (`upstream::uplink` runs it).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::lanes::ChannelClass;

/// Queueing the controller aims at: well under what a person notices,
/// large enough to keep the bottleneck busy.
pub const TARGET_QUEUEING: Duration = Duration::from_millis(12);

/// Bounds of the bulk rate, in bytes per second. The floor keeps a
/// transfer moving whatever the signal says.
pub const MIN_RATE: f64 = 64.0 * 1024.0;
pub const MAX_RATE: f64 = 4.0 * 1024.0 * 1024.0 * 1024.0;

/// Where the controller starts when pacing begins: a slow link is not
/// flooded before the first samples, a fast one is reached in a second
/// or so of multiplicative growth.
pub const START_RATE: f64 = 1024.0 * 1024.0;

/// The base (no-queue) round trip is the minimum over this much history,
/// kept in buckets, so a route that became longer is learnt within it.
const BASE_HISTORY: Duration = Duration::from_secs(60);
const BASE_BUCKET: Duration = Duration::from_secs(10);

/// Growth per sample at zero queueing, and the cut per sample at twice
/// the target. Both are small because a ping comes every 15–30 ms and the
/// queue answers a change of rate only a round trip later: at 25% and 30%
/// the rate swung between 0.4 and 1.4 times the line, and the queue
/// emptied in every swing (uploads kept 0.88–0.94 of the line). The cut is
/// gentle for another reason too: one delayed ping (a busy machine) must
/// not halve a transfer.
const GROWTH: f64 = 0.1;
const CUT: f64 = 0.1;

/// The windowed minimum of round-trip samples.
#[derive(Debug, Default)]
struct BaseDelay {
    /// (bucket start, minimum in it), oldest first.
    buckets: VecDeque<(Instant, Duration)>,
}

impl BaseDelay {
    fn add(&mut self, now: Instant, rtt: Duration) {
        while let Some(&(start, _)) = self.buckets.front() {
            if now.duration_since(start) > BASE_HISTORY {
                self.buckets.pop_front();
            } else {
                break;
            }
        }
        match self.buckets.back_mut() {
            Some((start, min)) if now.duration_since(*start) < BASE_BUCKET => {
                *min = (*min).min(rtt);
            }
            _ => self.buckets.push_back((now, rtt)),
        }
    }

    fn get(&self) -> Option<Duration> {
        self.buckets.iter().map(|&(_, min)| min).min()
    }
}

/// The rate controller of one connection.
#[derive(Debug)]
pub struct RateController {
    rate: f64,
    base: BaseDelay,
    target: Duration,
}

impl Default for RateController {
    fn default() -> Self {
        RateController::new(TARGET_QUEUEING)
    }
}

impl RateController {
    pub fn new(target: Duration) -> RateController {
        RateController {
            rate: START_RATE,
            base: BaseDelay::default(),
            target,
        }
    }

    /// Bytes per second bulk sessions may send now.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// The queueing `rtt` shows, given the history.
    pub fn queueing(&self, rtt: Duration) -> Duration {
        self.base
            .get()
            .map_or(Duration::ZERO, |base| rtt.saturating_sub(base))
    }

    /// Takes one ping's round trip and adjusts the rate.
    pub fn sample(&mut self, now: Instant, rtt: Duration) {
        self.base.add(now, rtt);
        let queueing = self.queueing(rtt).as_secs_f64();
        let target = self.target.as_secs_f64();
        // +1 at no queueing, 0 on target, -1 at twice the target or more.
        let off_target = ((target - queueing) / target).clamp(-1.0, 1.0);
        let factor = if off_target >= 0.0 {
            1.0 + GROWTH * off_target
        } else {
            1.0 + CUT * off_target
        };
        self.rate = (self.rate * factor).clamp(MIN_RATE, MAX_RATE);
    }
}

/// A token bucket at the controller's rate. Taking more than is there
/// leaves a debt; the answer is how long the taker must wait for it.
#[derive(Debug)]
pub struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl Bucket {
    /// At most this much sending time is saved up while idle, so that a
    /// pause is not followed by a burst that fills the queue.
    const BURST: Duration = Duration::from_millis(10);

    pub fn new(now: Instant) -> Bucket {
        Bucket {
            tokens: 0.0,
            updated: now,
        }
    }

    /// Takes `bytes` at `rate`; returns how long to wait before sending.
    pub fn take(&mut self, now: Instant, rate: f64, bytes: usize) -> Duration {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.updated = now;
        let cap = rate * Self::BURST.as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(cap.max(0.0));
        self.tokens -= bytes as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / rate)
        }
    }
}

/// The pacing of one connection: the controller and its bucket.
#[derive(Debug)]
pub struct Pacer {
    pub controller: RateController,
    bucket: Bucket,
}

impl Pacer {
    /// Whether data of `class` is paced at all.
    pub fn paces(class: ChannelClass, typing: bool) -> bool {
        class == ChannelClass::Bulk && typing
    }

    pub fn new(now: Instant) -> Pacer {
        Pacer {
            controller: RateController::default(),
            bucket: Bucket::new(now),
        }
    }

    /// How long `bytes` of a session of `class` wait before they are
    /// handed to the connection. Interactive data and any data while
    /// nobody types go at once; bulk data while someone types goes at the
    /// controller's rate, after the bulk data admitted before it.
    pub fn admit(
        &mut self,
        now: Instant,
        class: ChannelClass,
        bytes: usize,
        typing: bool,
    ) -> Duration {
        if !Pacer::paces(class, typing) {
            return Duration::ZERO;
        }
        self.bucket.take(now, self.controller.rate(), bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// A bottleneck of `capacity` bytes/s with a queue in front, pinged
    /// every 10 ms. Returns, over the second half, the share of the
    /// capacity used and the queueing each ping saw (ms).
    fn simulate(capacity: f64, base: Duration, seconds: f64) -> (f64, Vec<f64>) {
        let mut controller = RateController::default();
        let start = Instant::now();
        let step = 0.010;
        let (mut queue, mut delivered, mut possible) = (0.0f64, 0.0, 0.0);
        let mut delays = Vec::new();
        let mut t = 0.0;
        while t < seconds {
            let offered = controller.rate() * step;
            let out = (capacity * step).min(queue + offered);
            queue = (queue + offered - out).max(0.0);
            let rtt = base + Duration::from_secs_f64(queue / capacity);
            controller.sample(start + Duration::from_secs_f64(t), rtt);
            if t > seconds / 2.0 {
                delivered += out;
                possible += capacity * step;
                delays.push((rtt - base).as_secs_f64() * 1000.0);
            }
            t += step;
        }
        (delivered / possible, delays)
    }

    #[test]
    fn the_queue_stays_near_the_target_and_the_link_stays_busy() {
        for capacity in [2.5e6, 12.5e6, 100e6] {
            let (used, delays) = simulate(capacity, 2 * MS, 30.0);
            let mean: f64 = delays.iter().sum::<f64>() / delays.len() as f64;
            let worst = delays.iter().cloned().fold(0.0, f64::max);
            assert!(
                mean < 15.0 && worst < 40.0,
                "{capacity}: mean {mean:.1} ms, worst {worst:.1} ms"
            );
            assert!(used > 0.95, "{capacity}: {used:.3} of the link used");
        }
    }

    #[test]
    fn typing_goes_before_the_bulk_data_queued_ahead_of_it() {
        let now = Instant::now();
        let mut pacer = Pacer::new(now);
        // Ten 32 KiB chunks of a bulk session, at the start rate (1 MiB/s):
        // each waits longer than the one before.
        let waits: Vec<Duration> = (0..10)
            .map(|_| pacer.admit(now, ChannelClass::Bulk, 32 * 1024, true))
            .collect();
        assert!(waits.windows(2).all(|w| w[0] < w[1]), "{waits:?}");
        assert!(waits[9] > Duration::from_millis(250), "{waits:?}");
        // A keystroke admitted after them is sent before all of them.
        assert_eq!(
            pacer.admit(now, ChannelClass::Interactive, 1, true),
            Duration::ZERO
        );
        // And the next bulk chunk still queues behind the ten.
        assert!(pacer.admit(now, ChannelClass::Bulk, 1, true) >= waits[9]);
        // Nobody typing: nothing waits.
        assert_eq!(
            pacer.admit(now, ChannelClass::Bulk, 1 << 20, false),
            Duration::ZERO
        );
    }

    #[test]
    fn no_queueing_grows_the_rate_and_queueing_cuts_it() {
        let now = Instant::now();
        let mut c = RateController::default();
        c.sample(now, 2 * MS);
        let grown = c.rate();
        assert!(grown > START_RATE);
        c.sample(now + MS, 2 * MS + 4 * TARGET_QUEUEING);
        assert!(c.rate() < grown * (1.0 - CUT) * 1.01, "{}", c.rate());
        for i in 0..200 {
            c.sample(now + MS * (2 + i), Duration::from_secs(1));
        }
        assert_eq!(c.rate(), MIN_RATE, "the floor holds");
    }

    #[test]
    fn the_base_forgets_an_old_minimum() {
        let now = Instant::now();
        let mut c = RateController::default();
        c.sample(now, MS);
        // The route got longer: 20 ms is the new no-queue round trip.
        let later = now + BASE_HISTORY + BASE_BUCKET * 2;
        c.sample(later, 20 * MS);
        assert_eq!(c.queueing(20 * MS), Duration::ZERO);
    }

    #[test]
    fn the_bucket_spaces_sends_at_the_rate_and_saves_up_little() {
        let now = Instant::now();
        let mut b = Bucket::new(now);
        // 1 MB/s: 10 kB is 10 ms of sending.
        assert_eq!(b.take(now, 1e6, 10_000), Duration::from_millis(10));
        assert_eq!(b.take(now + 10 * MS, 1e6, 0), Duration::ZERO);
        // A long pause saves up at most BURST worth (10 kB here).
        let later = now + Duration::from_secs(10);
        assert_eq!(b.take(later, 1e6, 10_000), Duration::ZERO);
        let wait = b.take(later, 1e6, 1_000);
        assert_eq!(wait, Duration::from_millis(1));
    }
}
