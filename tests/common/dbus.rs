//! A private D-Bus session bus and a scriptable fake notification server
//! (`org.freedesktop.Notifications`, plus an optional fake
//! `org.freedesktop.ScreenSaver`) for the prompt tests.
//!
//! The server runs on its own thread with a current-thread tokio runtime; the
//! (synchronous) tests talk to it through [`NotificationServer`]: they script
//! how each `Notify` is answered, read back every call it received, and can
//! make a second, unrelated bus connection forge signals.
//!
//! Not declared in `common/mod.rs` (only the prompt tests need zbus): use it
//! with `#[path = "common/dbus.rs"] mod dbus;`.

#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use zbus::OwnedVariant;
use zbus::message::Header;
use zbus::object_server::{ResponseDispatchNotifier, SignalEmitter};

pub const NOTIFICATIONS_NAME: &str = "org.freedesktop.Notifications";
pub const NOTIFICATIONS_PATH: &str = "/org/freedesktop/Notifications";
pub const SCREENSAVER_NAME: &str = "org.freedesktop.ScreenSaver";
pub const SCREENSAVER_PATH: &str = "/org/freedesktop/ScreenSaver";

// ---------------------------------------------------------------------------
// The bus
// ---------------------------------------------------------------------------

/// `dbus-daemon --session --nofork --print-address=1`, killed on drop.
pub struct SessionBus {
    child: Child,
    address: String,
}

impl SessionBus {
    pub fn start() -> SessionBus {
        let mut child = Command::new("dbus-daemon")
            .args(["--session", "--nofork", "--print-address=1"])
            .env_remove("DBUS_SESSION_BUS_ADDRESS")
            .env_remove("DISPLAY")
            .env_remove("WAYLAND_DISPLAY")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            // "Failed to set fd limit to 65536: Operation not permitted".
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start dbus-daemon: {e}"));
        let stdout = child.stdout.take().expect("piped");
        let mut line = String::new();
        let read = BufReader::new(stdout).read_line(&mut line);
        let address = line.trim().to_owned();
        if read.is_err() || address.is_empty() {
            let _ = child.kill();
            let _ = child.wait();
            panic!("dbus-daemon printed no address ({read:?})");
        }
        SessionBus { child, address }
    }

    pub fn address(&self) -> &str {
        &self.address
    }
}

impl Drop for SessionBus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------
// What the fake server does and records
// ---------------------------------------------------------------------------

pub const DENY: &str = "muxguard-deny";
pub const ALLOW_ONCE: &str = "muxguard-allow-once";
pub const ALLOW_REMEMBER: &str = "muxguard-allow-remember";

/// How the server answers one `Notify`. Delays count from the moment the
/// method reply has been sent; a zero delay emits the signal right after it.
#[derive(Clone, Debug)]
pub enum Reply {
    /// `ActionInvoked(id, key)` followed at once by
    /// `NotificationClosed(id, 2)`, as a real server sends for a click.
    Action { key: String, after: Duration },
    /// `NotificationClosed(id, reason)`.
    Close { reason: u32, after: Duration },
    /// Nothing at all.
    Never,
}

impl Reply {
    pub fn action(key: &str, after: Duration) -> Reply {
        Reply::Action {
            key: key.to_owned(),
            after,
        }
    }

    pub fn allow_once(after: Duration) -> Reply {
        Reply::action(ALLOW_ONCE, after)
    }

    pub fn allow_remember(after: Duration) -> Reply {
        Reply::action(ALLOW_REMEMBER, after)
    }

    pub fn deny(after: Duration) -> Reply {
        Reply::action(DENY, after)
    }
}

/// One `Notify` call as received.
#[derive(Clone, Debug)]
pub struct NotifyCall {
    pub id: u32,
    pub app_name: String,
    pub replaces_id: u32,
    pub app_icon: String,
    pub summary: String,
    pub body: String,
    pub actions: Vec<String>,
    pub hint_keys: Vec<String>,
    /// The `urgency` hint, if it was a byte.
    pub urgency: Option<u8>,
    pub expire_timeout: i32,
    /// The unique bus name of the caller.
    pub sender: String,
    pub at: Instant,
}

/// A signal the server (or the forger) emitted.
#[derive(Clone, Debug)]
pub struct Emitted {
    pub id: u32,
    /// "ActionInvoked <key>", "NotificationClosed <reason>", "forged <key>".
    pub what: String,
    pub at: Instant,
}

#[derive(Default)]
struct Record {
    notifies: Vec<NotifyCall>,
    closes: Vec<(u32, Instant)>,
    emitted: Vec<Emitted>,
    capability_calls: usize,
    screensaver_calls: usize,
    /// Broadcast ActionInvoked signals a bystander received, by sender.
    witnessed_genuine: usize,
    witnessed_forged: usize,
}

struct Shared {
    record: Mutex<Record>,
    replies: Mutex<VecDeque<Reply>>,
    default_reply: Reply,
    capabilities: Vec<String>,
    next_id: AtomicU32,
    screensaver_active: AtomicBool,
    screensaver_delay_ms: AtomicU64,
    /// How long `Notify` takes to reply (a hung server).
    notify_delay: Duration,
}

impl Shared {
    fn note_emitted(&self, id: u32, what: String) {
        self.record
            .lock()
            .expect("not poisoned")
            .emitted
            .push(Emitted {
                id,
                what,
                at: Instant::now(),
            });
    }
}

struct Notifications {
    shared: Arc<Shared>,
}

#[zbus::interface(name = "org.freedesktop.Notifications")]
impl Notifications {
    #[allow(clippy::too_many_arguments)]
    async fn notify(
        &self,
        app_name: String,
        replaces_id: u32,
        app_icon: String,
        summary: String,
        body: String,
        actions: Vec<String>,
        hints: HashMap<String, OwnedVariant>,
        expire_timeout: i32,
        #[zbus(header)] header: Header<'_>,
        #[zbus(signal_emitter)] emitter: SignalEmitter<'_>,
    ) -> zbus::fdo::Result<ResponseDispatchNotifier<u32>> {
        let id = self.shared.next_id.fetch_add(1, Ordering::SeqCst);
        let mut hint_keys: Vec<String> = hints.keys().cloned().collect();
        hint_keys.sort();
        let urgency = hints.get("urgency").and_then(|v| u8::try_from(v).ok());
        let call = NotifyCall {
            id,
            app_name,
            replaces_id,
            app_icon,
            summary,
            body,
            actions,
            hint_keys,
            urgency,
            expire_timeout,
            sender: header.sender().map(|s| s.to_string()).unwrap_or_default(),
            at: Instant::now(),
        };
        self.shared
            .record
            .lock()
            .expect("not poisoned")
            .notifies
            .push(call);
        let reply = self
            .shared
            .replies
            .lock()
            .expect("not poisoned")
            .pop_front()
            .unwrap_or_else(|| self.shared.default_reply.clone());

        if !self.shared.notify_delay.is_zero() {
            tokio::time::sleep(self.shared.notify_delay).await;
        }
        let (response, sent) = ResponseDispatchNotifier::new(id);
        let emitter = emitter.to_owned();
        let shared = Arc::clone(&self.shared);
        tokio::spawn(async move {
            // The reply is on its way: anything emitted now reaches a client
            // only if it subscribed before calling Notify.
            sent.await;
            match reply {
                Reply::Never => {}
                Reply::Action { key, after } => {
                    tokio::time::sleep(after).await;
                    // As a real desktop does on a click (dunst, measured):
                    // the action, then at once the close, "dismissed".
                    shared.note_emitted(id, format!("ActionInvoked {key}"));
                    let _ = Notifications::action_invoked(&emitter, id, &key).await;
                    shared.note_emitted(id, "NotificationClosed 2".into());
                    let _ = Notifications::notification_closed(&emitter, id, 2).await;
                }
                Reply::Close { reason, after } => {
                    tokio::time::sleep(after).await;
                    shared.note_emitted(id, format!("NotificationClosed {reason}"));
                    let _ = Notifications::notification_closed(&emitter, id, reason).await;
                }
            }
        });
        Ok(response)
    }

    async fn close_notification(
        &self,
        id: u32,
        #[zbus(signal_emitter)] emitter: SignalEmitter<'_>,
    ) {
        self.shared
            .record
            .lock()
            .expect("not poisoned")
            .closes
            .push((id, Instant::now()));
        // As a real server does: "closed by a call to CloseNotification".
        self.shared.note_emitted(id, "NotificationClosed 3".into());
        let _ = Notifications::notification_closed(&emitter, id, 3).await;
    }

    fn get_capabilities(&self) -> Vec<String> {
        self.shared
            .record
            .lock()
            .expect("not poisoned")
            .capability_calls += 1;
        self.shared.capabilities.clone()
    }

    fn get_server_information(&self) -> (String, String, String, String) {
        (
            "muxguard-test-notifications".into(),
            "muxguard tests".into(),
            "0".into(),
            "1.2".into(),
        )
    }

    #[zbus(signal)]
    async fn action_invoked(
        emitter: &SignalEmitter<'_>,
        id: u32,
        action_key: &str,
    ) -> zbus::Result<()>;

    #[zbus(signal)]
    async fn notification_closed(
        emitter: &SignalEmitter<'_>,
        id: u32,
        reason: u32,
    ) -> zbus::Result<()>;
}

struct ScreenSaver {
    shared: Arc<Shared>,
}

#[zbus::interface(name = "org.freedesktop.ScreenSaver")]
impl ScreenSaver {
    async fn get_active(&self) -> bool {
        self.shared
            .record
            .lock()
            .expect("not poisoned")
            .screensaver_calls += 1;
        let delay = self.shared.screensaver_delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        self.shared.screensaver_active.load(Ordering::SeqCst)
    }
}

// ---------------------------------------------------------------------------
// The handle the tests hold
// ---------------------------------------------------------------------------

/// How to start a [`NotificationServer`].
pub struct ServerConfig {
    pub capabilities: Vec<String>,
    /// Answers for the first `Notify` calls, in order.
    pub replies: Vec<Reply>,
    /// The answer once `replies` is used up.
    pub default_reply: Reply,
    /// Also own `org.freedesktop.ScreenSaver`, unlocked at first.
    pub screensaver: bool,
    /// How long each `Notify` takes to reply; zero for at once.
    pub notify_delay: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            capabilities: vec!["actions".into(), "body".into()],
            replies: Vec::new(),
            default_reply: Reply::Never,
            screensaver: false,
            notify_delay: Duration::ZERO,
        }
    }
}

impl ServerConfig {
    pub fn answering(reply: Reply) -> ServerConfig {
        ServerConfig {
            default_reply: reply,
            ..ServerConfig::default()
        }
    }
}

enum Request {
    Forge {
        id: u32,
        key: String,
        destination: Option<String>,
        done: std::sync::mpsc::Sender<Result<(), String>>,
    },
    Stop,
}

/// The fake notification server on its thread; stopped on drop.
pub struct NotificationServer {
    shared: Arc<Shared>,
    requests: tokio::sync::mpsc::UnboundedSender<Request>,
    thread: Option<JoinHandle<()>>,
    unique_name: String,
}

impl NotificationServer {
    pub fn start(bus: &SessionBus, config: ServerConfig) -> NotificationServer {
        let shared = Arc::new(Shared {
            record: Mutex::default(),
            replies: Mutex::new(config.replies.into()),
            default_reply: config.default_reply,
            capabilities: config.capabilities,
            next_id: AtomicU32::new(1),
            screensaver_active: AtomicBool::new(false),
            screensaver_delay_ms: AtomicU64::new(0),
            notify_delay: config.notify_delay,
        });
        let (requests, mut incoming) = tokio::sync::mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<String, String>>();
        let address = bus.address().to_owned();
        let thread_shared = Arc::clone(&shared);
        let screensaver = config.screensaver;
        let thread = thread::Builder::new()
            .name("fake-notifications".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("tokio runtime");
                runtime.block_on(async move {
                    let mut builder = zbus::connection::Builder::address(address.as_str())
                        .name(NOTIFICATIONS_NAME)
                        .serve_at(
                            NOTIFICATIONS_PATH,
                            Notifications {
                                shared: Arc::clone(&thread_shared),
                            },
                        );
                    if screensaver {
                        builder = builder.name(SCREENSAVER_NAME).serve_at(
                            SCREENSAVER_PATH,
                            ScreenSaver {
                                shared: Arc::clone(&thread_shared),
                            },
                        );
                    }
                    let server = match builder.build().await {
                        Ok(connection) => connection,
                        Err(e) => {
                            let _ = ready_tx.send(Err(format!("server connection: {e}")));
                            return;
                        }
                    };
                    // Another client of the same bus, for forged signals.
                    let forger = match zbus::connection::Builder::address(address.as_str())
                        .build()
                        .await
                    {
                        Ok(connection) => connection,
                        Err(e) => {
                            let _ = ready_tx.send(Err(format!("forger connection: {e}")));
                            return;
                        }
                    };
                    let unique = server
                        .unique_name()
                        .map(|n| n.to_string())
                        .unwrap_or_default();
                    // A third client that listens to every broadcast
                    // ActionInvoked, to show that forged ones really went out.
                    let witness = match zbus::connection::Builder::address(address.as_str())
                        .build()
                        .await
                    {
                        Ok(connection) => connection,
                        Err(e) => {
                            let _ = ready_tx.send(Err(format!("witness connection: {e}")));
                            return;
                        }
                    };
                    let rule = "type='signal',interface='org.freedesktop.Notifications',\
                                member='ActionInvoked'";
                    let mut seen =
                        match zbus::MessageStream::for_match_rule(rule, &witness, None).await {
                            Ok(stream) => stream,
                            Err(e) => {
                                let _ = ready_tx.send(Err(format!("witness match rule: {e}")));
                                return;
                            }
                        };
                    let witness_shared = Arc::clone(&thread_shared);
                    let server_name = unique.clone();
                    tokio::spawn(async move {
                        use futures_util::StreamExt;
                        while let Some(Ok(message)) = seen.next().await {
                            let from = message
                                .header()
                                .sender()
                                .map(|s| s.to_string())
                                .unwrap_or_default();
                            let mut record = witness_shared.record.lock().expect("not poisoned");
                            if from == server_name {
                                record.witnessed_genuine += 1;
                            } else {
                                record.witnessed_forged += 1;
                            }
                        }
                    });
                    let _ = ready_tx.send(Ok(unique));
                    while let Some(request) = incoming.recv().await {
                        match request {
                            Request::Stop => break,
                            Request::Forge {
                                id,
                                key,
                                destination,
                                done,
                            } => {
                                thread_shared
                                    .note_emitted(id, format!("forged {key} to {destination:?}"));
                                let result = forger
                                    .emit_signal(
                                        destination.as_deref(),
                                        NOTIFICATIONS_PATH,
                                        NOTIFICATIONS_NAME,
                                        "ActionInvoked",
                                        &(id, key.as_str()),
                                    )
                                    .await
                                    .map_err(|e| e.to_string());
                                let _ = done.send(result);
                            }
                        }
                    }
                    drop(witness);
                    drop(forger);
                    drop(server);
                });
            })
            .expect("spawn the fake notification server");
        let unique_name = match ready_rx.recv_timeout(Duration::from_secs(20)) {
            Ok(Ok(name)) => name,
            Ok(Err(e)) => panic!("fake notification server: {e}"),
            Err(e) => panic!("fake notification server did not start: {e}"),
        };
        NotificationServer {
            shared,
            requests,
            thread: Some(thread),
            unique_name,
        }
    }

    /// The server connection's unique bus name.
    pub fn unique_name(&self) -> &str {
        &self.unique_name
    }

    /// Every `Notify` so far.
    pub fn notifies(&self) -> Vec<NotifyCall> {
        self.shared
            .record
            .lock()
            .expect("not poisoned")
            .notifies
            .clone()
    }

    /// The ids passed to `CloseNotification` so far.
    pub fn closes(&self) -> Vec<u32> {
        self.shared
            .record
            .lock()
            .expect("not poisoned")
            .closes
            .iter()
            .map(|(id, _)| *id)
            .collect()
    }

    /// Every signal emitted so far (including forged ones).
    pub fn emitted(&self) -> Vec<Emitted> {
        self.shared
            .record
            .lock()
            .expect("not poisoned")
            .emitted
            .clone()
    }

    /// Broadcast `ActionInvoked` signals a bystander connection received:
    /// (from the server, from anyone else).
    pub fn witnessed_actions(&self) -> (usize, usize) {
        let record = self.shared.record.lock().expect("not poisoned");
        (record.witnessed_genuine, record.witnessed_forged)
    }

    pub fn capability_calls(&self) -> usize {
        self.shared
            .record
            .lock()
            .expect("not poisoned")
            .capability_calls
    }

    pub fn screensaver_calls(&self) -> usize {
        self.shared
            .record
            .lock()
            .expect("not poisoned")
            .screensaver_calls
    }

    /// What the fake ScreenSaver's `GetActive` answers from now on.
    pub fn set_locked(&self, locked: bool) {
        self.shared
            .screensaver_active
            .store(locked, Ordering::SeqCst);
    }

    /// How long the fake ScreenSaver's `GetActive` takes to answer from now
    /// on (a hung screen saver).
    pub fn set_screensaver_delay(&self, delay: Duration) {
        self.shared
            .screensaver_delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    /// Waits until at least `count` `Notify` calls arrived; panics after
    /// `timeout`.
    #[track_caller]
    pub fn wait_for_notifies(&self, count: usize, timeout: Duration) -> Vec<NotifyCall> {
        let start = Instant::now();
        loop {
            let calls = self.notifies();
            if calls.len() >= count {
                return calls;
            }
            assert!(
                start.elapsed() < timeout,
                "expected {count} Notify call(s) within {timeout:?}, got {calls:#?}"
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits until `CloseNotification(id)` arrived; false after `timeout`.
    pub fn wait_for_close(&self, id: u32, timeout: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if self.closes().contains(&id) {
                return true;
            }
            thread::sleep(Duration::from_millis(10));
        }
        self.closes().contains(&id)
    }

    /// Emits `ActionInvoked(id, key)` from a different bus connection (not
    /// the owner of `org.freedesktop.Notifications`): broadcast when
    /// `destination` is `None`, else sent to that unique name only.
    pub fn forge_action(&self, id: u32, key: &str, destination: Option<&str>) {
        let (done, result) = std::sync::mpsc::channel();
        self.requests
            .send(Request::Forge {
                id,
                key: key.to_owned(),
                destination: destination.map(str::to_owned),
                done,
            })
            .expect("the fake server is running");
        result
            .recv_timeout(Duration::from_secs(10))
            .expect("the forger answered")
            .expect("the forged signal was sent");
    }
}

impl Drop for NotificationServer {
    fn drop(&mut self) {
        let _ = self.requests.send(Request::Stop);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
