//! The outgoing side of one upstream connection while someone types: bulk
//! sessions wait here for their turn ([`Uplink::admit`]) at the rate
//! `upstream::pacing` allows, measured by keepalive pings that queue
//! behind the data like a keystroke would. Interactive sessions never come
//! here, and nobody waits at all while no interactive session is open.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use russh::client::Handle;

use super::connect::ClientHandler;
use super::lanes::ChannelClass;
use super::pacing::Pacer;

/// Time between the end of one ping and the next.
const PING_INTERVAL: Duration = Duration::from_millis(10);

/// A ping not answered within this is taken as this much queueing.
const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// The pinger stops after this long without bulk data to pace.
const IDLE_STOP: Duration = Duration::from_secs(1);

/// How many interactive sessions are open on the master, on any
/// connection: while there are none, bulk data is not paced.
pub type Typing = Arc<AtomicUsize>;

struct State {
    pacer: Pacer,
    pinger_running: bool,
    last_admitted: Instant,
}

pub struct Uplink {
    handle: Arc<Handle<ClientHandler>>,
    typing: Typing,
    state: Mutex<State>,
}

impl Uplink {
    pub fn new(handle: Arc<Handle<ClientHandler>>, typing: Typing) -> Arc<Uplink> {
        let now = Instant::now();
        Arc::new(Uplink {
            handle,
            typing,
            state: Mutex::new(State {
                pacer: Pacer::new(now),
                pinger_running: false,
                last_admitted: now,
            }),
        })
    }

    /// Waits until `bytes` of a session of `class` may be handed to the
    /// connection.
    pub async fn admit(self: &Arc<Self>, class: ChannelClass, bytes: usize) {
        let typing = self.typing.load(Ordering::Relaxed) > 0;
        if !Pacer::paces(class, typing) {
            return;
        }
        let wait = {
            let mut state = self.state.lock().expect("not poisoned");
            let now = Instant::now();
            state.last_admitted = now;
            if !state.pinger_running {
                state.pinger_running = true;
                tokio::spawn(Arc::clone(self).ping_while_needed());
            }
            state.pacer.admit(now, class, bytes, typing)
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }

    /// The bulk rate now, in bytes per second, if bulk data is being paced.
    pub fn paced_rate(&self) -> Option<f64> {
        let state = self.state.lock().expect("not poisoned");
        state.pinger_running.then(|| state.pacer.controller.rate())
    }

    async fn ping_while_needed(self: Arc<Self>) {
        loop {
            let needed = {
                let mut state = self.state.lock().expect("not poisoned");
                let needed = self.typing.load(Ordering::Relaxed) > 0
                    && state.last_admitted.elapsed() < IDLE_STOP;
                if !needed {
                    state.pinger_running = false;
                }
                needed
            };
            if !needed {
                return;
            }
            let sent = Instant::now();
            let rtt = match tokio::time::timeout(PING_TIMEOUT, self.handle.send_ping()).await {
                Ok(Ok(())) => sent.elapsed(),
                Ok(Err(_)) => {
                    // The connection is gone; nothing left to pace.
                    self.state.lock().expect("not poisoned").pinger_running = false;
                    return;
                }
                Err(_) => PING_TIMEOUT,
            };
            self.state
                .lock()
                .expect("not poisoned")
                .pacer
                .controller
                .sample(Instant::now(), rtt);
            tokio::time::sleep(PING_INTERVAL).await;
        }
    }
}
