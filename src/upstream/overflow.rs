//! Additional connections for when the server refuses more sessions on the
//! first one (sshd's MaxSessions, 10 by default). OpenSSH's master passes
//! the refusal on and the client falls back to a connection of its own,
//! with its own authentication; muxguard opens another connection to the
//! same server — same address, same host key, authenticated by the agent —
//! and carries the session there. A connection opened this way closes when
//! its last session ends.
//!
//! Only the agent can authenticate these: the master keeps no key or
//! password after start-up and asks nobody. Without an agent the refusal
//! goes to the client as before, with the reason.

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use russh::client::{Handle, Msg};
use russh::{Channel, ChannelOpenFailure};
use tokio::sync::watch;
use tracing::{info, warn};

use super::connect::{self, ClientHandler, ClosedReason, Reconnect};
use super::forward::RemoteRoutes;
use crate::config::HostConfig;

/// At most this many additional connections (so 100 sessions fit under
/// sshd's default MaxSessions of 10, with room).
const MAX_EXTRA: usize = 15;

/// After a failed attempt, refused sessions are not retried on a new
/// connection for this long (a burst must not make 90 failed logins).
const RETRY_AFTER: Duration = Duration::from_secs(10);

struct Extra {
    number: u32,
    handle: Arc<Handle<ClientHandler>>,
    closed: watch::Receiver<ClosedReason>,
    sessions: AtomicUsize,
}

type Extras = Arc<Mutex<Vec<Arc<Extra>>>>;

pub struct Overflow {
    reconnect: Reconnect,
    remote_routes: Arc<RemoteRoutes>,
    /// Why additional connections cannot be made at all, if so.
    unavailable: Option<String>,
    extras: Extras,
    /// One new connection at a time: a burst of refusals waits for it
    /// instead of opening one each.
    opening: tokio::sync::Mutex<Option<(Instant, String)>>,
    next_number: AtomicU32,
}

/// Keeps a session's additional connection open; the last one to go
/// closes it.
pub struct Lease {
    extra: Option<Arc<Extra>>,
    extras: Extras,
}

impl Drop for Lease {
    fn drop(&mut self) {
        let Some(extra) = self.extra.take() else {
            return;
        };
        if extra.sessions.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.extras
                .lock()
                .expect("not poisoned")
                .retain(|e| !Arc::ptr_eq(e, &extra));
            info!(
                "closing additional connection #{}: its last session ended",
                extra.number
            );
            let handle = Arc::clone(&extra.handle);
            tokio::spawn(async move {
                let _ = handle
                    .disconnect(russh::Disconnect::ByApplication, "", "")
                    .await;
            });
        }
    }
}

/// A session channel, the connection it runs on, and what keeps that
/// connection open.
pub struct Opened {
    pub channel: Channel<Msg>,
    pub handle: Arc<Handle<ClientHandler>>,
    pub lease: Lease,
}

impl Overflow {
    pub fn new(
        config: &HostConfig,
        reconnect: Reconnect,
        remote_routes: Arc<RemoteRoutes>,
    ) -> Self {
        let unavailable = (!possible(config))
            .then(|| "no ssh-agent to authenticate another connection with".to_owned());
        Overflow {
            reconnect,
            remote_routes,
            unavailable,
            extras: Arc::default(),
            opening: tokio::sync::Mutex::new(None),
            next_number: AtomicU32::new(1),
        }
    }

    /// How many additional connections are open, and their sessions.
    pub fn describe(&self) -> Option<String> {
        let extras = self.extras.lock().expect("not poisoned");
        if extras.is_empty() {
            return None;
        }
        let counts: Vec<String> = extras
            .iter()
            .map(|e| format!("#{}: {}", e.number, e.sessions.load(Ordering::Relaxed)))
            .collect();
        Some(format!(
            "{} additional connection(s) for sessions the server refused on the first (sessions {})",
            extras.len(),
            counts.join(", ")
        ))
    }

    /// Opens a session channel on `primary`, or, if the server refuses it
    /// there, on an additional connection. The error is the reason for the
    /// client.
    pub async fn open_session(
        &self,
        primary: &Arc<Handle<ClientHandler>>,
        config: &HostConfig,
    ) -> Result<Opened, String> {
        let refusal = match primary.channel_open_session().await {
            Ok(channel) => {
                return Ok(Opened {
                    channel,
                    handle: Arc::clone(primary),
                    lease: self.lease(None),
                });
            }
            Err(russh::Error::ChannelOpenFailure(reason)) => describe_refusal(reason),
            Err(e) => return Err(e.to_string()),
        };
        if let Some(why) = &self.unavailable {
            return Err(format!("{refusal}; {why}"));
        }
        if let Some(opened) = self.try_extras().await {
            return Ok(opened);
        }
        let mut last_failure = self.opening.lock().await;
        // Another session may have made room while this one waited.
        if let Some(opened) = self.try_extras().await {
            return Ok(opened);
        }
        if let Some((when, why)) = &*last_failure
            && when.elapsed() < RETRY_AFTER
        {
            return Err(format!("{refusal}; {why}"));
        }
        if self.live_extras().len() >= MAX_EXTRA {
            return Err(format!(
                "{refusal}; already {MAX_EXTRA} additional connections"
            ));
        }
        let number = self.next_number.fetch_add(1, Ordering::Relaxed);
        let upstream =
            match connect::connect_again(config, &self.reconnect, Arc::clone(&self.remote_routes))
                .await
            {
                Ok(upstream) => upstream,
                Err(e) => {
                    let why = format!("an additional connection failed: {e:#}");
                    warn!("{why}");
                    *last_failure = Some((Instant::now(), why.clone()));
                    return Err(format!("{refusal}; {why}"));
                }
            };
        *last_failure = None;
        info!(
            "opened additional connection #{number} to {}: the server refused more sessions on the first ({refusal})",
            self.reconnect.peer()
        );
        let extra = Arc::new(Extra {
            number,
            handle: upstream.handle,
            closed: upstream.closed,
            sessions: AtomicUsize::new(0),
        });
        self.extras
            .lock()
            .expect("not poisoned")
            .push(Arc::clone(&extra));
        self.open_on(&extra)
            .await
            .map_err(|e| format!("{refusal}; and on additional connection #{number}: {e}"))
    }

    fn lease(&self, extra: Option<Arc<Extra>>) -> Lease {
        Lease {
            extra,
            extras: Arc::clone(&self.extras),
        }
    }

    fn live_extras(&self) -> Vec<Arc<Extra>> {
        self.extras
            .lock()
            .expect("not poisoned")
            .iter()
            .filter(|e| e.closed.borrow().is_none())
            .cloned()
            .collect()
    }

    async fn try_extras(&self) -> Option<Opened> {
        for extra in self.live_extras() {
            if let Ok(opened) = self.open_on(&extra).await {
                return Some(opened);
            }
        }
        None
    }

    async fn open_on(&self, extra: &Arc<Extra>) -> Result<Opened, String> {
        // Counted before the open, so that the connection cannot be closed
        // under a session being opened on it; the lease undoes it on failure.
        extra.sessions.fetch_add(1, Ordering::AcqRel);
        let lease = self.lease(Some(Arc::clone(extra)));
        match extra.handle.channel_open_session().await {
            Ok(channel) => Ok(Opened {
                channel,
                handle: Arc::clone(&extra.handle),
                lease,
            }),
            Err(russh::Error::ChannelOpenFailure(reason)) => Err(describe_refusal(reason)),
            Err(e) => Err(e.to_string()),
        }
    }
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
