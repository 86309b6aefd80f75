//! The state one master shares with every control connection, session and
//! forward: the upstream connection and its overflow, the policy, audit
//! stream and prompter that decide requests, the forwards, and the registry
//! of live sessions that `~#`, `muxguard status` and persistence read.
//! Built once by `master` when the connection is up.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use russh::client::Handle;
use tokio::sync::watch;

use crate::access::decide::PolicyStore;
use crate::audit::recorder::Recorder;
use crate::config::HostConfig;
use crate::prompt::{PromptMemory, Prompter};
use crate::spill::{SpillBuffer, SpillLimits};
use crate::upstream::connect::{self, ClientHandler};
use crate::upstream::forward::{Forwards, RemoteRoutes};

/// Bytes each way of one session or channel, for the audit log and `~#`.
#[derive(Debug, Default)]
pub struct Traffic {
    /// From the server to the client (output).
    pub to_client: AtomicU64,
    /// From the client to the server (input).
    pub to_server: AtomicU64,
}

/// Whether the control socket takes connections (`-O stop`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listening {
    Yes,
    /// `-O stop` asked the accept loop to close it.
    StopAsked,
    /// Closed and its path removed.
    Stopped,
    /// ... and the `-O stop` that asked has been answered: a master with
    /// no session left may go now.
    Answered,
}

/// State shared by every control connection of one master.
pub struct MasterState {
    pub config: HostConfig,
    pub upstream: Arc<Handle<ClientHandler>>,
    /// Becomes `Some(reason)` when the upstream connection is gone.
    pub upstream_closed: watch::Receiver<connect::ClosedReason>,
    /// Bumped on every SIGWINCH; tty sessions re-read their window size.
    pub winch: watch::Sender<u64>,
    /// Becomes `Some(reason)` when the master is shutting down.
    pub shutdown: watch::Sender<Option<String>>,
    /// Whether the control socket still takes connections (`-O stop`).
    listening: watch::Sender<Listening>,
    pub host_key_fingerprint: String,
    pub peer_address: std::net::SocketAddr,
    pub started: Instant,
    pub hardening: crate::sandbox::Report,
    pub policy: PolicyStore,
    pub audit: Arc<Recorder>,
    next_request: AtomicU64,
    pub prompter: Prompter,
    pub prompts: PromptMemory,
    pub forwards: Forwards,
    pub remote_routes: Arc<RemoteRoutes>,
    /// Buffering limits for output a client has not read yet.
    pub spill_limits: Arc<SpillLimits>,
    /// More connections to the server when it refuses more sessions.
    pub overflow: crate::upstream::overflow::Overflow,
    next_session: AtomicU32,
    sessions: Mutex<BTreeMap<u32, SessionInfo>>,
    /// The number of live sessions, watched by the persistence timer.
    active: watch::Sender<usize>,
}

struct SessionInfo {
    description: String,
    started: Instant,
    /// The session's output buffers, for `~#` (memory, disk, paused).
    buffers: Vec<Arc<SpillBuffer>>,
    /// Bytes each way so far, for `~#` and status.
    traffic: Option<Arc<Traffic>>,
}

/// Removes a session from the registry when it ends, however it ends.
pub struct SessionGuard {
    master: Arc<MasterState>,
    id: u32,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.master
            .sessions
            .lock()
            .expect("not poisoned")
            .remove(&self.id);
        self.master.active.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// What a master's shared state is made from (the rest it keeps itself:
/// counters, the session registry, its listening and busy signals).
pub struct Parts {
    pub config: HostConfig,
    pub upstream: Arc<Handle<ClientHandler>>,
    pub upstream_closed: watch::Receiver<connect::ClosedReason>,
    pub winch: watch::Sender<u64>,
    pub shutdown: watch::Sender<Option<String>>,
    pub host_key_fingerprint: String,
    pub peer_address: std::net::SocketAddr,
    pub hardening: crate::sandbox::Report,
    pub policy: PolicyStore,
    pub audit: Arc<Recorder>,
    pub prompter: Prompter,
    pub overflow: crate::upstream::overflow::Overflow,
    pub spill_limits: Arc<SpillLimits>,
    pub remote_routes: Arc<RemoteRoutes>,
}

impl MasterState {
    pub fn new(parts: Parts) -> MasterState {
        let Parts {
            config,
            upstream,
            upstream_closed,
            winch,
            shutdown,
            host_key_fingerprint,
            peer_address,
            hardening,
            policy,
            audit,
            prompter,
            overflow,
            spill_limits,
            remote_routes,
        } = parts;
        MasterState {
            config,
            upstream,
            upstream_closed,
            winch,
            shutdown,
            listening: watch::channel(Listening::Yes).0,
            host_key_fingerprint,
            peer_address,
            started: Instant::now(),
            hardening,
            policy,
            audit,
            next_request: AtomicU64::new(1),
            prompter,
            prompts: PromptMemory::default(),
            forwards: Forwards::default(),
            remote_routes,
            spill_limits,
            overflow,
            next_session: AtomicU32::new(1),
            sessions: Mutex::new(BTreeMap::new()),
            active: watch::channel(0).0,
        }
    }

    /// Changes to whether the control socket takes connections.
    pub fn subscribe_listening(&self) -> watch::Receiver<Listening> {
        self.listening.subscribe()
    }

    /// Says, from the accept loop, that the control socket is gone.
    pub fn stopped_listening(&self) {
        self.listening.send_replace(Listening::Stopped);
    }

    /// Changes to the number of sessions and forwards keeping the master
    /// busy.
    pub fn subscribe_active(&self) -> watch::Receiver<usize> {
        self.active.subscribe()
    }

    pub fn has_sessions(&self) -> bool {
        !self.sessions.lock().expect("not poisoned").is_empty()
    }

    pub fn next_session_id(&self) -> u32 {
        self.next_session.fetch_add(1, Ordering::Relaxed)
    }

    pub fn register_session(self: &Arc<Self>, id: u32, description: String) -> SessionGuard {
        self.sessions.lock().expect("not poisoned").insert(
            id,
            SessionInfo {
                description,
                started: Instant::now(),
                buffers: Vec::new(),
                traffic: None,
            },
        );
        self.recount_active();
        SessionGuard {
            master: Arc::clone(self),
            id,
        }
    }

    pub fn next_request_id(&self) -> u64 {
        self.next_request.fetch_add(1, Ordering::Relaxed)
    }

    /// Whether a decision that cannot be audited must be refused (the
    /// default; `audit_failure = "allow"` in the policy says otherwise).
    pub fn audit_failure_denies(&self) -> bool {
        match self.policy.current() {
            Ok(policy) => {
                policy.settings().audit_failure != crate::access::policy::AuditFailure::Allow
            }
            Err(_) => true,
        }
    }

    /// `-O conninfo`: the connection this master holds.
    pub fn describe_connection(&self) -> String {
        format!(
            "muxguard master pid {} (up {}s)\nhardening: {}\nconnected to {}@{} port {} ({}), host key {}\n",
            std::process::id(),
            self.started.elapsed().as_secs(),
            self.hardening,
            self.config.user,
            self.config.hostname,
            self.config.port,
            self.peer_address,
            self.host_key_fingerprint
        )
    }

    /// `muxguard status`: connection, sessions, forwards, remembered answers.
    pub fn describe_status(&self) -> String {
        let mut text = self.describe_connection();
        text.push_str(&self.overflow.describe());
        text.push_str(&self.describe_sessions().replace("\r\n", "\n"));
        let remembered = self.prompts.remembered();
        if remembered.is_empty() {
            text.push_str("No remembered answers.\n");
        } else {
            text.push_str("Remembered answers:\n");
            for (key, seconds) in remembered {
                text.push_str(&format!(
                    "  {} by {} on {}: allowed for {}s more\n",
                    key.kind,
                    crate::prompt::one_line(&key.requester.anchor.to_string()),
                    key.host,
                    seconds
                ));
            }
        }
        text
    }

    /// Lets `~#` show a session's output buffers.
    pub fn attach_buffers(&self, id: u32, buffers: Vec<Arc<SpillBuffer>>) {
        if let Some(info) = self.sessions.lock().expect("not poisoned").get_mut(&id) {
            info.buffers = buffers;
        }
    }

    /// Lets `~#` and status show a session's byte counts.
    pub fn attach_traffic(&self, id: u32, traffic: Arc<Traffic>) {
        if let Some(info) = self.sessions.lock().expect("not poisoned").get_mut(&id) {
            info.traffic = Some(traffic);
        }
    }

    /// Recounts what keeps the master busy (sessions and forwards) for
    /// persistence; call after either changes.
    pub fn recount_active(&self) {
        let busy = self.sessions.lock().expect("not poisoned").len() + self.forwards.count();
        self.active
            .send_if_modified(|n| std::mem::replace(n, busy) != busy);
    }

    pub fn accepting_sessions(&self) -> bool {
        self.shutdown.borrow().is_none()
    }

    pub fn shutdown(&self, reason: &str) {
        self.shutdown.send_if_modified(|current| {
            if current.is_none() {
                *current = Some(reason.to_string());
                true
            } else {
                false
            }
        });
    }

    /// Why the upstream connection ended, waiting briefly for the reason
    /// when a channel has noticed first.
    pub async fn connection_lost_reason(&self) -> String {
        let mut closed = self.upstream_closed.clone();
        let reason =
            tokio::time::timeout(Duration::from_millis(200), closed.wait_for(|r| r.is_some()))
                .await
                .ok()
                .and_then(|r| r.ok().and_then(|r| r.clone()))
                .unwrap_or_else(|| "connection lost".into());
        format!("connection to {} closed: {reason}", self.config.hostname)
    }

    /// Asks the accept loop to close the control socket and waits until it
    /// has. Gives up waiting after a second, which only a master already
    /// on its way out takes.
    pub async fn stop_listening(&self) {
        let mut listening = self.listening.subscribe();
        self.listening.send_if_modified(|state| {
            let asked = *state == Listening::Yes;
            if asked {
                *state = Listening::StopAsked;
            }
            asked
        });
        let closed =
            listening.wait_for(|state| matches!(state, Listening::Stopped | Listening::Answered));
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), closed).await;
    }

    /// Says that the `-O stop` has been answered (or its client is gone).
    pub fn stop_answered(&self) {
        self.listening.send_if_modified(|state| {
            let stopped = *state == Listening::Stopped;
            if stopped {
                *state = Listening::Answered;
            }
            stopped
        });
    }

    /// The `~#` listing: every open session of this master.
    pub fn describe_sessions(&self) -> String {
        let sessions = self.sessions.lock().expect("not poisoned");
        let mut text = format!(
            "The following connections are open (muxguard master pid {}, {}@{}):\r\n",
            std::process::id(),
            self.config.user,
            self.config.hostname
        );
        for (id, info) in sessions.iter() {
            // Client-supplied text (commands, subsystem names, socket
            // paths) goes to other people's terminals: escaped visibly.
            text.push_str(&format!(
                "  #{id} {} (open {}s",
                crate::prompt::one_line(&info.description),
                info.started.elapsed().as_secs()
            ));
            if let Some(traffic) = &info.traffic {
                text.push_str(&format!(
                    ", {} bytes out, {} bytes in",
                    traffic.to_server.load(Ordering::Relaxed),
                    traffic.to_client.load(Ordering::Relaxed)
                ));
            }
            text.push(')');
            for buffer in &info.buffers {
                let (memory, disk, paused) = buffer.usage();
                // Less than a KiB in memory is output on its way, not a
                // reader that stopped.
                if memory >= 1024 || disk > 0 || paused {
                    text.push_str(&format!(
                        ", {} waiting for the client: {} KiB in memory, {} KiB on disk{}",
                        buffer.name(),
                        memory >> 10,
                        disk >> 10,
                        if paused {
                            ", PAUSED (buffer caps reached)"
                        } else {
                            ""
                        }
                    ));
                }
            }
            text.push_str("\r\n");
        }
        for forward in self.forwards.describe() {
            text.push_str(&format!("  {}\r\n", crate::prompt::one_line(&forward)));
        }
        text
    }
}
