//! Additional connections to the same server: same address, same host
//! key, authenticated by the agent. They serve two needs:
//!
//! - **Overflow**: when the server refuses more sessions on the first one
//!   (sshd's MaxSessions, 10 by default). OpenSSH's master passes the
//!   refusal on and the client falls back to a connection of its own, with
//!   its own authentication; muxguard carries the session on another
//!   connection instead.
//! - **Lanes**: interactive sessions and bulk ones are kept on different
//!   connections when both are open (`upstream::lanes` says where each
//!   goes), so that typing never queues behind a transfer.
//!
//! An overflow connection closes when its last session ends; a lane when
//! its last session ends and nobody types on the first connection (it is
//! opened ahead of need, "warm", while someone does).
//!
//! Only the agent can authenticate these: the master keeps no key or
//! password after start-up and asks nobody. Without an agent a refusal
//! goes to the client as before, with the reason, and every session shares
//! the first connection.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use russh::client::{Handle, Msg};
use russh::{Channel, ChannelOpenFailure};
use tokio::sync::watch;
use tracing::{info, warn};

use super::connect::{self, ClientHandler, ClosedReason, Reconnect};
use super::forward::RemoteRoutes;
use super::lanes::{self, ChannelClass, Load};
use super::socket::LinkProbe;
use super::uplink::{Typing, Uplink};
use super::warm::{RefillWhenDropped, WarmChannel};
use crate::config::HostConfig;

/// At most this many additional connections (so 100 sessions fit under
/// sshd's default MaxSessions of 10, with room).
const MAX_EXTRA: usize = 15;

/// After a failed attempt, refused sessions are not retried on a new
/// connection for this long (a burst must not make 90 failed logins).
const RETRY_AFTER: Duration = Duration::from_secs(10);

/// After a lane could not be opened, sessions share the first connection
/// for this long: a lane is an optimisation, and every failed attempt is a
/// failed login in the server's log.
const LANE_RETRY_AFTER: Duration = Duration::from_secs(300);

/// Why an additional connection exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purpose {
    Overflow,
    Lane,
}

struct Extra {
    number: u32,
    purpose: Purpose,
    handle: Arc<Handle<ClientHandler>>,
    uplink: Arc<Uplink>,
    closed: watch::Receiver<ClosedReason>,
}

impl Extra {
    fn is_live(&self) -> bool {
        self.closed.borrow().is_none()
    }
}

/// Every connection's sessions, under one lock so that placing a session
/// and closing an idle connection cannot race.
#[derive(Default)]
struct Connections {
    primary: Load,
    extras: Vec<(Arc<Extra>, Load)>,
}

impl Connections {
    fn live_lanes(&self) -> Vec<(Arc<Extra>, Load)> {
        self.extras
            .iter()
            .filter(|(e, _)| e.purpose == Purpose::Lane && e.is_live())
            .cloned()
            .collect()
    }

    fn load_of(&mut self, slot: &Slot) -> Option<&mut Load> {
        match slot {
            Slot::Primary => Some(&mut self.primary),
            Slot::Extra(extra) => self
                .extras
                .iter_mut()
                .find(|(e, _)| Arc::ptr_eq(e, extra))
                .map(|(_, load)| load),
        }
    }

    /// Takes out the additional connections that are no longer needed.
    fn take_done(&mut self) -> Vec<Arc<Extra>> {
        let primary = self.primary;
        let mut done = Vec::new();
        self.extras.retain(|(extra, load)| {
            let finished = match extra.purpose {
                Purpose::Overflow => load.total() == 0,
                Purpose::Lane => lanes::lane_is_done(*load, primary),
            };
            if finished || !extra.is_live() {
                done.push(Arc::clone(extra));
            }
            !finished && extra.is_live()
        });
        done
    }
}

type Shared = Arc<Mutex<Connections>>;

/// Closes connections taken out of the table, with a log line each.
fn close_all(done: Vec<Arc<Extra>>) {
    for extra in done {
        if !extra.is_live() {
            continue;
        }
        let what = match extra.purpose {
            Purpose::Overflow => "additional connection",
            Purpose::Lane => "lane connection",
        };
        info!("closing {what} #{}: its last session ended", extra.number);
        let handle = Arc::clone(&extra.handle);
        tokio::spawn(async move {
            let _ = handle
                .disconnect(russh::Disconnect::ByApplication, "", "")
                .await;
        });
    }
}

#[derive(Clone)]
enum Slot {
    Primary,
    Extra(Arc<Extra>),
}

pub struct Overflow {
    reconnect: Reconnect,
    remote_routes: Arc<RemoteRoutes>,
    /// Why additional connections cannot be made at all, if so.
    unavailable: Option<String>,
    /// Why lanes are not used at all, if so.
    lanes_off: Option<String>,
    connections: Shared,
    primary_uplink: Arc<Uplink>,
    /// The session channel opened ahead on the first connection.
    warm: Arc<WarmChannel>,
    typing: Typing,
    /// One new connection at a time: a burst of refusals waits for it
    /// instead of opening one each.
    opening: tokio::sync::Mutex<Option<(Instant, String)>>,
    /// The last failure to open a lane, which pauses lanes for a while.
    lane_failure: Mutex<Option<(Instant, String)>>,
    next_number: AtomicU32,
}

/// Counts one session on its connection; dropping it uncounts it and
/// closes an additional connection that is no longer needed.
pub struct Lease {
    slot: Slot,
    class: ChannelClass,
    connections: Shared,
    typing: Typing,
    /// The uplink of the session's connection, which must know whether
    /// someone types on that connection itself.
    uplink: Arc<Uplink>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        let done = {
            let mut connections = self.connections.lock().expect("not poisoned");
            if let Some(load) = connections.load_of(&self.slot) {
                load.remove(self.class);
            }
            if self.class == ChannelClass::Interactive {
                self.typing.fetch_sub(1, Ordering::Relaxed);
                self.uplink.interactive_session_ended();
            }
            connections.take_done()
        };
        close_all(done);
    }
}

/// A session channel, the connection it runs on, and what keeps that
/// connection open.
pub struct Opened {
    pub channel: Channel<Msg>,
    pub handle: Arc<Handle<ClientHandler>>,
    /// Where a bulk session's input waits for its turn.
    pub uplink: Arc<Uplink>,
    pub lease: Lease,
    /// A lane should be opened ahead of need now
    /// ([`Overflow::warm_lane`]).
    pub wants_warm_lane: bool,
    /// The warm channel's refill, to drop once the session's request is
    /// sent.
    pub warm_refill: Option<RefillWhenDropped>,
}

impl Overflow {
    /// `lanes`: whether lanes may be opened (`--no-lanes` says no).
    pub fn new(
        config: &HostConfig,
        lanes: bool,
        primary: Arc<Handle<ClientHandler>>,
        primary_link: LinkProbe,
        reconnect: Reconnect,
        remote_routes: Arc<RemoteRoutes>,
    ) -> Self {
        let typing = Typing::default();
        let unavailable = (!possible(config))
            .then(|| "no ssh-agent to authenticate another connection with".to_owned());
        let lanes_off = match &unavailable {
            Some(why) => Some(why.clone()),
            None => (!lanes).then(|| "--no-lanes".to_owned()),
        };
        Overflow {
            reconnect,
            remote_routes,
            unavailable,
            lanes_off,
            connections: Arc::default(),
            primary_uplink: Uplink::new(Arc::clone(&primary), primary_link, Arc::clone(&typing)),
            warm: {
                let warm = Arc::new(WarmChannel::default());
                warm.refill(&primary);
                warm
            },
            typing,
            opening: tokio::sync::Mutex::new(None),
            lane_failure: Mutex::new(None),
            next_number: AtomicU32::new(1),
        }
    }

    /// For `status`: how sessions are spread over connections, and why
    /// there is only one when lanes cannot be used.
    pub fn describe(&self) -> String {
        let connections = self.connections.lock().expect("not poisoned");
        let count = |l: &Load| format!("{} interactive, {} bulk", l.interactive, l.bulk);
        let paced = |uplink: &Uplink| match uplink.paced_rate() {
            Some(rate) => format!(
                "; bulk input paced at {:.1} MiB/s while someone types",
                rate / (1024.0 * 1024.0)
            ),
            None => String::new(),
        };
        let warm = if self.warm.is_ready() {
            "; a session channel opened ahead (warm, runs nothing until a session takes it)"
        } else {
            ""
        };
        let mut text = format!(
            "first connection: {}{}{warm}\n",
            count(&connections.primary),
            paced(&self.primary_uplink)
        );
        for (extra, load) in &connections.extras {
            let why = match extra.purpose {
                Purpose::Overflow => "for sessions the server refused on the first",
                Purpose::Lane => "lane, keeps interactive and bulk sessions apart",
            };
            text.push_str(&format!(
                "additional connection #{} ({why}): {}{}\n",
                extra.number,
                count(load),
                paced(&extra.uplink)
            ));
        }
        if let Some(why) = self.lanes_unavailable() {
            text.push_str(&format!(
                "lanes: off ({why}); interactive and bulk sessions share one connection\n"
            ));
        }
        text
    }

    /// Why lanes cannot be opened now, if so.
    fn lanes_unavailable(&self) -> Option<String> {
        if let Some(why) = &self.lanes_off {
            return Some(why.clone());
        }
        let failure = self.lane_failure.lock().expect("not poisoned");
        match &*failure {
            Some((when, why)) if when.elapsed() < LANE_RETRY_AFTER => Some(format!(
                "the last lane failed {}s ago: {why}",
                when.elapsed().as_secs()
            )),
            _ => None,
        }
    }

    /// Opens a session channel of `class` where [`lanes::place`] says; if
    /// the server refuses it on the first connection, on an overflow
    /// connection. The error is the reason for the client.
    pub async fn open_session(
        &self,
        primary: &Arc<Handle<ClientHandler>>,
        config: &HostConfig,
        class: ChannelClass,
    ) -> Result<Opened, String> {
        match self.reserve_placement(class) {
            Reserved::Primary => {}
            Reserved::Lane(lease) => match self.open_on(lease).await {
                Ok(opened) => return Ok(opened),
                Err(e) => warn!("lane refused a session ({e}); using the first connection"),
            },
            Reserved::NewLane => match self.open_new_lane(config, Some(class)).await {
                Ok(Some(opened)) => return Ok(opened),
                Ok(None) => {}
                Err(e) => warn!("{e}; using the first connection"),
            },
        }
        self.open_on_primary(primary, config, class).await
    }

    /// Opens a lane with no session yet, so that the next bulk session
    /// next to someone's shell does not wait for a login. Does nothing if
    /// one is there, or lanes are off.
    pub async fn warm_lane(&self, config: &HostConfig) {
        if let Err(e) = self.open_new_lane(config, None).await {
            warn!("{e}");
        }
    }

    /// Decides where a session goes and, for an existing lane, counts it
    /// there (so that the lane cannot close under it).
    fn reserve_placement(&self, class: ChannelClass) -> Reserved {
        let possible = self.lanes_unavailable().is_none();
        let connections = &mut *self.connections.lock().expect("not poisoned");
        let live = connections.live_lanes();
        let loads: Vec<Load> = live.iter().map(|(_, l)| *l).collect();
        match lanes::place(class, connections.primary, &loads, possible) {
            lanes::Placement::Primary => Reserved::Primary,
            lanes::Placement::NewLane => Reserved::NewLane,
            lanes::Placement::Lane(index) => {
                let extra = Arc::clone(&live[index].0);
                Reserved::Lane(self.count(connections, Slot::Extra(extra), class))
            }
        }
    }

    /// Counts a session of `class` on `slot`, under the caller's lock.
    fn count(&self, connections: &mut Connections, slot: Slot, class: ChannelClass) -> Lease {
        if let Some(load) = connections.load_of(&slot) {
            load.add(class);
        }
        let uplink = match &slot {
            Slot::Primary => Arc::clone(&self.primary_uplink),
            Slot::Extra(extra) => Arc::clone(&extra.uplink),
        };
        if class == ChannelClass::Interactive {
            self.typing.fetch_add(1, Ordering::Relaxed);
            uplink.interactive_session_started();
        }
        Lease {
            slot,
            class,
            connections: Arc::clone(&self.connections),
            typing: Arc::clone(&self.typing),
            uplink,
        }
    }

    fn lease(&self, slot: Slot, class: ChannelClass) -> Lease {
        let mut connections = self.connections.lock().expect("not poisoned");
        self.count(&mut connections, slot, class)
    }

    async fn open_on_primary(
        &self,
        primary: &Arc<Handle<ClientHandler>>,
        config: &HostConfig,
        class: ChannelClass,
    ) -> Result<Opened, String> {
        let lease = self.lease(Slot::Primary, class);
        let opened = match self.warm.take() {
            Some(channel) => Ok(channel),
            None => primary.channel_open_session().await,
        };
        let refusal = match opened {
            Ok(channel) => {
                // Only when the first connection had room: refused, a
                // refill would be refused too, a wasted round trip per
                // session while it is full.
                let warm_refill = Some(RefillWhenDropped::new(&self.warm, primary));
                let wants_warm_lane = self.wants_warm_lane();
                return Ok(Opened {
                    channel,
                    handle: Arc::clone(primary),
                    uplink: Arc::clone(&self.primary_uplink),
                    lease,
                    wants_warm_lane,
                    warm_refill,
                });
            }
            Err(russh::Error::ChannelOpenFailure(reason)) => describe_refusal(reason),
            Err(e) => return Err(e.to_string()),
        };
        drop(lease);
        if let Some(why) = &self.unavailable {
            return Err(format!("{refusal}; {why}"));
        }
        if let Some(opened) = self.try_overflow(class).await {
            return Ok(opened);
        }
        let mut last_failure = self.opening.lock().await;
        // Another session may have made room while this one waited.
        if let Some(opened) = self.try_overflow(class).await {
            return Ok(opened);
        }
        if let Some((when, why)) = &*last_failure
            && when.elapsed() < RETRY_AFTER
        {
            return Err(format!("{refusal}; {why}"));
        }
        let (extra, lease) = match self
            .connect_extra(config, Purpose::Overflow, Some(class))
            .await
        {
            Ok(Some(made)) => made,
            Ok(None) => {
                return Err(format!(
                    "{refusal}; already {MAX_EXTRA} additional connections"
                ));
            }
            Err(why) => {
                *last_failure = Some((Instant::now(), why.clone()));
                return Err(format!("{refusal}; {why}"));
            }
        };
        *last_failure = None;
        info!(
            "opened additional connection #{} to {}: the server refused more sessions on the first ({refusal})",
            extra.number,
            self.reconnect.peer()
        );
        let number = extra.number;
        self.open_on(lease.expect("a session was counted"))
            .await
            .map_err(|e| format!("{refusal}; and on additional connection #{number}: {e}"))
    }

    fn wants_warm_lane(&self) -> bool {
        if self.lanes_unavailable().is_some() {
            return false;
        }
        let connections = self.connections.lock().expect("not poisoned");
        let loads: Vec<Load> = connections.live_lanes().iter().map(|(_, l)| *l).collect();
        lanes::wants_warm_lane(connections.primary, &loads)
    }

    /// Opens a lane, with a session of `class` on it if given. `Ok(None)`:
    /// nothing to do after all (another task opened one, or the limit is
    /// reached; the session then goes on the first connection).
    async fn open_new_lane(
        &self,
        config: &HostConfig,
        class: Option<ChannelClass>,
    ) -> Result<Option<Opened>, String> {
        let _one_at_a_time = self.opening.lock().await;
        if self.lanes_unavailable().is_some() {
            return Ok(None);
        }
        // The lane another task opened while this one waited will do.
        let again = match class {
            Some(class) => self.reserve_placement(class),
            None if self.wants_warm_lane() => Reserved::NewLane,
            None => return Ok(None),
        };
        match again {
            Reserved::Primary => return Ok(None),
            Reserved::Lane(lease) => return self.open_on(lease).await.map(Some),
            Reserved::NewLane => {}
        }
        let (extra, lease) = match self.connect_extra(config, Purpose::Lane, class).await {
            Ok(Some(made)) => made,
            Ok(None) => return Ok(None),
            Err(why) => {
                *self.lane_failure.lock().expect("not poisoned") =
                    Some((Instant::now(), why.clone()));
                return Err(format!(
                    "a lane connection failed: {why}; lanes are off for {}s",
                    LANE_RETRY_AFTER.as_secs()
                ));
            }
        };
        info!(
            "opened lane connection #{} to {}: interactive and bulk sessions are kept apart",
            extra.number,
            self.reconnect.peer()
        );
        match lease {
            Some(lease) => self.open_on(lease).await.map(Some),
            None => {
                // Nobody may type on the first connection any more.
                let done = self.connections.lock().expect("not poisoned").take_done();
                close_all(done);
                Ok(None)
            }
        }
    }

    /// Connects and authenticates another connection and enters it in the
    /// table, with a session of `class` counted on it if given (so that it
    /// cannot be closed before that session opens). `Ok(None)`: the limit
    /// of additional connections is reached.
    async fn connect_extra(
        &self,
        config: &HostConfig,
        purpose: Purpose,
        class: Option<ChannelClass>,
    ) -> Result<Option<(Arc<Extra>, Option<Lease>)>, String> {
        let live = self
            .connections
            .lock()
            .expect("not poisoned")
            .extras
            .iter()
            .filter(|(e, _)| e.is_live())
            .count();
        if live >= MAX_EXTRA {
            return Ok(None);
        }
        let number = self.next_number.fetch_add(1, Ordering::Relaxed);
        let upstream =
            connect::connect_again(config, &self.reconnect, Arc::clone(&self.remote_routes))
                .await
                .map_err(|e| {
                    let why = format!("an additional connection failed: {e:#}");
                    warn!("{why}");
                    why
                })?;
        let extra = Arc::new(Extra {
            number,
            purpose,
            uplink: Uplink::new(
                Arc::clone(&upstream.handle),
                upstream.link,
                Arc::clone(&self.typing),
            ),
            handle: upstream.handle,
            closed: upstream.closed,
        });
        let mut connections = self.connections.lock().expect("not poisoned");
        connections
            .extras
            .push((Arc::clone(&extra), Load::default()));
        let lease =
            class.map(|class| self.count(&mut connections, Slot::Extra(Arc::clone(&extra)), class));
        Ok(Some((extra, lease)))
    }

    async fn try_overflow(&self, class: ChannelClass) -> Option<Opened> {
        let overflow: Vec<Arc<Extra>> = self
            .connections
            .lock()
            .expect("not poisoned")
            .extras
            .iter()
            .filter(|(e, _)| e.purpose == Purpose::Overflow && e.is_live())
            .map(|(e, _)| Arc::clone(e))
            .collect();
        for extra in overflow {
            let lease = self.lease(Slot::Extra(extra), class);
            if let Ok(opened) = self.open_on(lease).await {
                return Some(opened);
            }
        }
        None
    }

    /// Opens a session channel on the connection `lease` counts it on;
    /// dropping the lease on failure undoes the count.
    async fn open_on(&self, lease: Lease) -> Result<Opened, String> {
        let (handle, uplink) = match &lease.slot {
            Slot::Extra(extra) => (Arc::clone(&extra.handle), Arc::clone(&extra.uplink)),
            Slot::Primary => return Err("internal error: no additional connection".into()),
        };
        match handle.channel_open_session().await {
            Ok(channel) => Ok(Opened {
                channel,
                handle,
                uplink,
                lease,
                wants_warm_lane: false,
                warm_refill: None,
            }),
            Err(russh::Error::ChannelOpenFailure(reason)) => Err(describe_refusal(reason)),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// Where a session goes: [`lanes::Placement`], with the session already
/// counted on an existing lane.
enum Reserved {
    Primary,
    Lane(Lease),
    NewLane,
}

/// Whether additional connections can be made for `config`: only the
/// agent can authenticate them. (The sandbox then lets the master connect
/// to the server's port.)
pub fn possible(config: &HostConfig) -> bool {
    config.identity_agent.is_some() && config.pubkey_authentication
}

fn describe_refusal(reason: ChannelOpenFailure) -> String {
    match reason {
        ChannelOpenFailure::AdministrativelyProhibited => {
            "the server refused another session on this connection (administratively prohibited: sshd's MaxSessions?)".into()
        }
        other => format!("the server refused the session ({other:?})"),
    }
}
