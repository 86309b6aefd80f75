//! The outgoing side of one upstream connection while someone types: bulk
//! sessions wait here for their turn ([`Uplink::admit`]) at the rate
//! `upstream::pacing` allows, and the kernel spreads what they send at
//! that rate too (SO_MAX_PACING_RATE), so no burst fills the bottleneck's
//! queue between two samples. The path is sampled from TCP_INFO, or by
//! keepalive pings where the kernel gives no figures. Interactive sessions
//! never come here, and nobody waits at all while no interactive session
//! is open.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use russh::client::Handle;

use super::connect::ClientHandler;
use super::lanes::ChannelClass;
use super::pacing::{Pacer, Signal};
use super::socket::LinkProbe;

/// Time between two samples of the path (the end of one ping and the next).
const SAMPLE_INTERVAL: Duration = Duration::from_millis(10);

/// The kernel may send this much faster than bulk data is admitted: it
/// only smooths the admitted bursts and is never what holds data back, so
/// the socket's buffer stays short (it is ahead of typing when interactive
/// and bulk sessions share the connection).
const KERNEL_PACING_HEADROOM: f64 = 1.1;

/// A ping not answered within this is taken as this much queueing.
const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// Sampling stops after this long without bulk data to pace.
const IDLE_STOP: Duration = Duration::from_secs(1);

/// How many interactive sessions are open on the master, on any
/// connection: while there are none, bulk data is not paced.
pub type Typing = Arc<AtomicUsize>;

struct State {
    pacer: Pacer,
    sampling: bool,
    last_admitted: Instant,
}

pub struct Uplink {
    handle: Arc<Handle<ClientHandler>>,
    probe: LinkProbe,
    typing: Typing,
    /// Interactive sessions on this connection itself.
    interactive_here: AtomicUsize,
    /// The connection's congestion control keeps the bottleneck's queue
    /// short by itself (BBR paces at the bandwidth it measures). Typing on
    /// *other* connections then has nothing to gain from pacing this one,
    /// which only costs throughput; typing on this one still waits behind
    /// what is queued in the socket and in russh, so it is paced then.
    keeps_queues_short: bool,
    state: Mutex<State>,
}

impl Uplink {
    pub fn new(
        handle: Arc<Handle<ClientHandler>>,
        probe: LinkProbe,
        typing: Typing,
    ) -> Arc<Uplink> {
        let now = Instant::now();
        Arc::new(Uplink {
            handle,
            probe: probe.clone(),
            typing,
            interactive_here: AtomicUsize::new(0),
            keeps_queues_short: probe.keeps_queues_short(),
            state: Mutex::new(State {
                pacer: Pacer::new(now),
                sampling: false,
                last_admitted: now,
            }),
        })
    }

    /// Waits until `bytes` of a session of `class` may be handed to the
    /// connection.
    pub async fn admit(self: &Arc<Self>, class: ChannelClass, bytes: usize) {
        let typing = self.typing_that_pacing_helps();
        if !Pacer::paces(class, typing) {
            return;
        }
        let wait = {
            let mut state = self.state.lock().expect("not poisoned");
            let now = Instant::now();
            state.last_admitted = now;
            if !state.sampling {
                state.sampling = true;
                tokio::spawn(Arc::clone(self).sample_while_needed());
            }
            state.pacer.admit(now, class, bytes, typing)
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }

    /// Whether someone types whose keystrokes pacing this connection
    /// protects: anyone on the master, or, when the congestion control
    /// keeps the bottleneck's queue short by itself, someone on this
    /// connection (see `keeps_queues_short`).
    fn typing_that_pacing_helps(&self) -> bool {
        let typists = if self.keeps_queues_short {
            &self.interactive_here
        } else {
            &*self.typing
        };
        typists.load(Ordering::Relaxed) > 0
    }

    pub fn interactive_session_started(&self) {
        if self.interactive_here.fetch_add(1, Ordering::Relaxed) == 0 {
            // A keystroke must not wait for the ACK of earlier data.
            self.probe.set_nodelay(true);
        }
    }

    pub fn interactive_session_ended(&self) {
        self.interactive_here.fetch_sub(1, Ordering::Relaxed);
    }

    /// The bulk rate now, in bytes per second, if bulk data is being paced.
    pub fn paced_rate(&self) -> Option<f64> {
        let state = self.state.lock().expect("not poisoned");
        state.sampling.then(|| state.pacer.controller.rate())
    }

    async fn sample_while_needed(self: Arc<Self>) {
        loop {
            let needed = {
                let mut state = self.state.lock().expect("not poisoned");
                let needed =
                    self.typing_that_pacing_helps() && state.last_admitted.elapsed() < IDLE_STOP;
                if !needed {
                    state.sampling = false;
                }
                needed
            };
            if !needed {
                self.probe.set_max_pacing_rate(None);
                self.probe.set_nodelay(true);
                return;
            }
            // While paced data flows on a connection nobody types on, its
            // writes are coalesced into full segments (Nagle): paced, the
            // socket runs dry after every write, and with TCP_NODELAY the
            // tail of each went out as a short segment, 2-3% of the line
            // lost to headers. A waiting tail is sent when the previous
            // segment is acknowledged or the next write fills it.
            self.probe
                .set_nodelay(self.interactive_here.load(Ordering::Relaxed) > 0);
            let Some(signal) = self.measure().await else {
                // The connection is gone; nothing left to pace.
                self.state.lock().expect("not poisoned").sampling = false;
                return;
            };
            let rate = {
                let mut state = self.state.lock().expect("not poisoned");
                state.pacer.controller.sample(Instant::now(), signal);
                state.pacer.controller.rate()
            };
            if matches!(signal, Signal::Link { .. }) {
                self.probe
                    .set_max_pacing_rate(Some(rate * KERNEL_PACING_HEADROOM));
            }
            tracing::trace!(?signal, rate, "pacing sample");
            tokio::time::sleep(SAMPLE_INTERVAL).await;
        }
    }

    /// One sample of the path: the kernel's figures, or a ping's round
    /// trip. `None` once the connection is gone.
    async fn measure(&self) -> Option<Signal> {
        if let Some(link) = self.probe.sample() {
            return Some(Signal::Link {
                queueing: link.queueing(),
                delivery_rate: link.delivery_rate,
            });
        }
        let sent = Instant::now();
        match tokio::time::timeout(PING_TIMEOUT, self.handle.send_ping()).await {
            Ok(Ok(())) => Some(Signal::Ping(sent.elapsed())),
            Ok(Err(_)) => None,
            Err(_) => Some(Signal::Ping(PING_TIMEOUT)),
        }
    }
}
