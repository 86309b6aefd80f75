//! Pacing of bulk uploads while someone types: how fast bulk sessions may
//! hand data to one upstream connection, so that the queue a keystroke
//! waits in stays a few milliseconds deep.
//!
//! The queue that matters is the bottleneck's (a router's buffer on the
//! path), which every connection through it shares. The kernel measures it
//! for us: TCP_INFO's smoothed round trip against its minimum is the
//! queueing the connection's own segments see, and its delivery rate is
//! what the bottleneck passes while it is busy. Where TCP_INFO is missing,
//! an SSH keepalive's round trip against its recent minimum stands in
//! (it also counts the queues inside the master and the socket).
//!
//! As LEDBAT does, the controller aims at a small target of queueing and
//! moves in proportion to the distance from it. Unlike a purely
//! multiplicative controller it is anchored to what the link delivers: at
//! the target the rate *is* the delivery rate, above it a share less,
//! below it a share more. The queue then settles at the target instead of
//! swinging around it, and does not empty (an empty queue is line rate
//! lost; the multiplicative controller lost 5-12% that way).
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

/// The base (no-queue) round trip of pings is the minimum over this much
/// history, kept in buckets, so a route that became longer is learnt
/// within it. (The kernel keeps its own minimum for TCP_INFO.)
const BASE_HISTORY: Duration = Duration::from_secs(60);
const BASE_BUCKET: Duration = Duration::from_secs(10);

/// The link's delivery rate is the largest sample over this window: a
/// sample taken while the queue ran dry, or one of the kernel's short
/// dips, must not pull the anchor down.
const DELIVERY_WINDOW: Duration = Duration::from_millis(200);

/// The step per sample, as a share of the anchor, at no queueing (up) and
/// at twice the target or more (down). With the kernel's signal the rate
/// is a share of the delivery rate, so a step is not compounded; 20% drains
/// a queue of twice the target in about five targets' time. Pings come
/// every 15-30 ms and lag the queue by a round trip, so their steps are
/// smaller: at 25% and 30% the rate swung between 0.4 and 1.4 times the
/// line and the queue emptied in every swing.
const LINK_STEP: f64 = 0.2;
const PING_GROWTH: f64 = 0.1;
const PING_CUT: f64 = 0.1;

/// One measurement of the path.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Signal {
    /// From the kernel (TCP_INFO): the queueing of the connection's
    /// segments and the latest delivery rate, in bytes per second.
    Link {
        queueing: Duration,
        delivery_rate: f64,
    },
    /// A keepalive's round trip, where TCP_INFO is missing.
    Ping(Duration),
}

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

/// The windowed maximum of delivery-rate samples.
#[derive(Debug, Default)]
struct DeliveryRate {
    samples: VecDeque<(Instant, f64)>,
}

impl DeliveryRate {
    /// Adds a sample; returns the maximum over the window.
    fn add(&mut self, now: Instant, rate: f64) -> f64 {
        while self
            .samples
            .front()
            .is_some_and(|&(at, _)| now.saturating_duration_since(at) > DELIVERY_WINDOW)
        {
            self.samples.pop_front();
        }
        // A smaller sample before a larger one can never be the maximum.
        while self.samples.back().is_some_and(|&(_, r)| r <= rate) {
            self.samples.pop_back();
        }
        self.samples.push_back((now, rate));
        self.samples.front().map_or(rate, |&(_, r)| r)
    }
}

/// The rate controller of one connection.
#[derive(Debug)]
pub struct RateController {
    rate: f64,
    base: BaseDelay,
    delivered: DeliveryRate,
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
            delivered: DeliveryRate::default(),
            target,
        }
    }

    /// Bytes per second bulk sessions may send now.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// The queueing a ping's `rtt` shows, given the history.
    fn ping_queueing(&self, rtt: Duration) -> Duration {
        self.base
            .get()
            .map_or(Duration::ZERO, |base| rtt.saturating_sub(base))
    }

    /// Takes one measurement and adjusts the rate.
    pub fn sample(&mut self, now: Instant, signal: Signal) {
        let (queueing, anchor, up, down) = match signal {
            Signal::Link {
                queueing,
                delivery_rate,
            } => {
                let delivered = self.delivered.add(now, delivery_rate);
                (queueing, delivered, LINK_STEP, LINK_STEP)
            }
            Signal::Ping(rtt) => {
                self.base.add(now, rtt);
                (self.ping_queueing(rtt), self.rate, PING_GROWTH, PING_CUT)
            }
        };
        let queueing = queueing.as_secs_f64();
        let target = self.target.as_secs_f64();
        // +1 at no queueing, 0 on target, -1 at twice the target or more.
        let off_target = ((target - queueing) / target).clamp(-1.0, 1.0);
        let step = if off_target >= 0.0 { up } else { down };
        self.rate = (anchor * (1.0 + step * off_target)).clamp(MIN_RATE, MAX_RATE);
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

    /// A bottleneck of `capacity` bytes/s with a queue in front, measured
    /// every 10 ms by pings (which see the queue now) or by the kernel
    /// (whose smoothed round trip lags: here, half of it is the previous
    /// sample's). Returns, over the second half, the share of the capacity
    /// used and the queueing each sample saw (ms).
    fn simulate(capacity: f64, kernel: bool, seconds: f64) -> (f64, Vec<f64>) {
        let base = 2 * MS;
        let mut controller = RateController::default();
        let start = Instant::now();
        let step = 0.010;
        let (mut queue, mut delivered, mut possible) = (0.0f64, 0.0, 0.0);
        let mut smoothed = 0.0f64;
        let mut delays = Vec::new();
        let mut t = 0.0;
        while t < seconds {
            let offered = controller.rate() * step;
            let out = (capacity * step).min(queue + offered);
            queue = (queue + offered - out).max(0.0);
            let queueing = queue / capacity;
            let signal = if kernel {
                smoothed = (smoothed + queueing) / 2.0;
                Signal::Link {
                    queueing: Duration::from_secs_f64(smoothed),
                    delivery_rate: out / step,
                }
            } else {
                Signal::Ping(base + Duration::from_secs_f64(queueing))
            };
            controller.sample(start + Duration::from_secs_f64(t), signal);
            if t > seconds / 2.0 {
                delivered += out;
                possible += capacity * step;
                delays.push(queueing * 1000.0);
            }
            t += step;
        }
        (delivered / possible, delays)
    }

    #[test]
    fn the_queue_stays_near_the_target_and_the_link_stays_busy() {
        for kernel in [true, false] {
            for capacity in [2.5e6, 12.5e6, 100e6] {
                let (used, delays) = simulate(capacity, kernel, 30.0);
                let mean: f64 = delays.iter().sum::<f64>() / delays.len() as f64;
                let worst = delays.iter().cloned().fold(0.0, f64::max);
                let context = format!(
                    "{capacity} B/s, kernel signal {kernel}: {used:.3} of the link, \
                     mean {mean:.1} ms, worst {worst:.1} ms"
                );
                assert!(mean < 15.0 && worst < 40.0, "{context}");
                assert!(used > 0.95, "{context}");
                if kernel {
                    // Anchored to the delivery rate, the queue never runs
                    // dry: every byte of the line is used.
                    assert!(used > 0.999, "{context}");
                }
            }
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
    fn with_pings_no_queueing_grows_the_rate_and_queueing_cuts_it() {
        let now = Instant::now();
        let mut c = RateController::default();
        c.sample(now, Signal::Ping(2 * MS));
        let grown = c.rate();
        assert!(grown > START_RATE);
        c.sample(now + MS, Signal::Ping(2 * MS + 4 * TARGET_QUEUEING));
        assert!(c.rate() < grown * (1.0 - PING_CUT) * 1.01, "{}", c.rate());
        for i in 0..200 {
            c.sample(now + MS * (2 + i), Signal::Ping(Duration::from_secs(1)));
        }
        assert_eq!(c.rate(), MIN_RATE, "the floor holds");
    }

    #[test]
    fn with_the_kernels_signal_the_rate_is_a_share_of_the_delivery_rate() {
        let now = Instant::now();
        let mut c = RateController::default();
        let link = |queueing: Duration, delivery_rate: f64| Signal::Link {
            queueing,
            delivery_rate,
        };
        // No queue: a step above what the link delivered.
        c.sample(now, link(Duration::ZERO, 2e6));
        assert_eq!(c.rate(), 2e6 * (1.0 + LINK_STEP));
        // On target: exactly the delivery rate, whatever the rate was.
        c.sample(now + 10 * MS, link(TARGET_QUEUEING, 2e6));
        assert_eq!(c.rate(), 2e6);
        // Twice the target: a step below; the anchor is the largest
        // delivery of the window, not a dip.
        c.sample(now + 20 * MS, link(2 * TARGET_QUEUEING, 1e6));
        assert_eq!(c.rate(), 2e6 * (1.0 - LINK_STEP));
        // Once the window has passed, the dip is the anchor.
        let later = now + 20 * MS + DELIVERY_WINDOW + MS;
        c.sample(later, link(TARGET_QUEUEING, 1e6));
        assert_eq!(c.rate(), 1e6);
    }

    #[test]
    fn the_base_forgets_an_old_minimum() {
        let now = Instant::now();
        let mut c = RateController::default();
        c.sample(now, Signal::Ping(MS));
        // The route got longer: 20 ms is the new no-queue round trip.
        let later = now + BASE_HISTORY + BASE_BUCKET * 2;
        c.sample(later, Signal::Ping(20 * MS));
        assert_eq!(c.ping_queueing(20 * MS), Duration::ZERO);
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
