//! One channel of a proxy client, translated onto a russh channel: the
//! client's channel messages become russh calls, and what russh delivers
//! becomes channel messages for the client.
//!
//! Three tasks per channel, so that no channel can hold up another or the
//! master's session loop:
//!
//! * input (this module's [`run`]): opens or accepts the upstream channel,
//!   then applies the client's messages in order. Data waits for the
//!   server's window inside russh; the client's window is re-opened only
//!   as its data is handed on, so a fast client is paced, never buffered
//!   without bound. exec/shell/subsystem go through the policy first.
//! * upstream reader: drains the russh channel at once into spill buffers
//!   (memory, then disk), as every other session does.
//! * client writer: sends that output in packets no larger than the
//!   client's maximum and only within the window it granted, then EOF,
//!   exit status and CLOSE in the order the server sent them.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use russh::client::Msg;
use russh::{ChannelMsg, ChannelOpenFailure, Pty, Sig};
use tokio::sync::{Notify, mpsc, oneshot};
use tracing::{debug, info, warn};

use super::packet::{ChannelRequest, OpenKind, ServerPacket, ServerRequest, open_failure};
use crate::access::decide::Outcome;
use crate::access::policy::RequestKind;
use crate::audit::chain as audit;
use crate::mux::server::Requester;
use crate::spill::SpillBuffer;
use crate::state::MasterState;
use crate::state::Traffic;

/// The window we grant the client per channel, as OpenSSH's client grants
/// its server (2 MiB).
pub const LOCAL_WINDOW: u32 = 2 * 1024 * 1024;

/// Channel requests a proxy client may have queued on one channel before
/// they are handled (the stock client sends a handful: pty, env, exec).
pub const MAX_PENDING_REQUESTS: usize = 64;
/// The largest data packet we accept from the client.
pub const LOCAL_MAX_PACKET: u32 = 32 * 1024;
/// The largest data packet we send, whatever the client allows: output
/// chunks are small anyway, and this bounds what one packet holds up.
const SEND_MAX_PACKET: usize = 64 * 1024;

/// Finished packets on their way to the client's socket.
pub type Out = mpsc::Sender<Vec<u8>>;

/// A client message for one channel, in the order it arrived.
#[derive(Debug)]
pub enum Op {
    Data(Bytes),
    ExtendedData(u32, Bytes),
    Eof,
    Close,
    Request {
        want_reply: bool,
        request: ChannelRequest,
    },
}

/// Told to the connection's main loop by channel tasks.
#[derive(Debug)]
pub enum Event {
    /// The channel never opened; its number can be forgotten.
    Released(u32),
    /// Our CLOSE went to the client.
    SentClose(u32),
}

/// What the proxy connection shares with its channels.
pub struct Context {
    pub master: Arc<MasterState>,
    pub requester: Arc<Requester>,
    pub out: Out,
    pub events: mpsc::UnboundedSender<Event>,
}

impl Context {
    async fn send(&self, packet: ServerPacket) -> bool {
        self.out.send(packet.encode()).await.is_ok()
    }
}

/// The window the client granted us on one channel.
pub struct ClientWindow {
    state: Mutex<WindowState>,
    changed: Notify,
    max_packet: usize,
}

struct WindowState {
    available: u64,
    /// The client will not read this channel any more (it closed it, or it
    /// went away): output is discarded instead of waiting for room.
    abandoned: bool,
}

impl ClientWindow {
    pub fn new(window: u32, max_packet: u32) -> Arc<Self> {
        Arc::new(ClientWindow {
            state: Mutex::new(WindowState {
                available: u64::from(window),
                abandoned: false,
            }),
            changed: Notify::new(),
            max_packet: (max_packet as usize).clamp(1, SEND_MAX_PACKET),
        })
    }

    /// WINDOW_ADJUST from the client.
    pub fn grant(&self, bytes: u32) {
        let mut state = self.state.lock().expect("not poisoned");
        // RFC 4254 caps a window at 2^32-1; a client adding past that only
        // hurts itself, so saturate rather than fail.
        state.available = (state.available + u64::from(bytes)).min(u64::from(u32::MAX));
        drop(state);
        self.changed.notify_one();
    }

    pub fn abandon(&self) {
        self.state.lock().expect("not poisoned").abandoned = true;
        self.changed.notify_one();
    }

    /// Takes up to `want` bytes of window, waiting for some if there is
    /// none. `None`: abandoned, discard.
    async fn take(&self, want: usize) -> Option<usize> {
        let want = want.min(self.max_packet);
        loop {
            {
                let mut state = self.state.lock().expect("not poisoned");
                if state.abandoned {
                    return None;
                }
                if state.available > 0 {
                    let n = (want as u64).min(state.available);
                    state.available -= n;
                    return Some(n as usize);
                }
            }
            // notify_one keeps a permit, so a grant between the check and
            // this wait is not lost.
            self.changed.notified().await;
        }
    }
}

/// Replies to the client's channel requests, which must come back in the
/// order of the requests, whether the server or we ourselves answer them.
/// They go through the channel writer's queue, which never makes the
/// sender wait: the upstream reader answers from here, and it must never
/// wait on the client.
struct Replies {
    slots: Mutex<VecDeque<Option<bool>>>,
    writer: mpsc::UnboundedSender<Marked>,
    recipient: u32,
}

impl Replies {
    /// A request went upstream with want_reply.
    fn expect(&self) {
        self.slots.lock().expect("not poisoned").push_back(None);
    }

    /// The server answered the oldest request it has not answered yet.
    fn answered(&self, ok: bool) {
        let mut slots = self.slots.lock().expect("not poisoned");
        if let Some(slot) = slots.iter_mut().find(|s| s.is_none()) {
            *slot = Some(ok);
        }
        self.flush(&mut slots);
    }

    /// We answer a request ourselves (refused, or not supported).
    fn local(&self, ok: bool) {
        let mut slots = self.slots.lock().expect("not poisoned");
        slots.push_back(Some(ok));
        self.flush(&mut slots);
    }

    fn flush(&self, slots: &mut VecDeque<Option<bool>>) {
        let recipient = self.recipient;
        while let Some(Some(ok)) = slots.front().copied() {
            slots.pop_front();
            let packet = if ok {
                ServerPacket::Success { recipient }
            } else {
                ServerPacket::Failure { recipient }
            };
            // Marks of zero: a reply need not wait for output.
            let _ = self.writer.send(Marked {
                data: 0,
                ext: 0,
                packet,
            });
        }
    }
}

/// Where the upstream channel comes from.
pub enum Upstream {
    /// The client asked for it with CHANNEL_OPEN.
    Open(OpenKind),
    /// The server opened it on one of the client's remote forwards, and the
    /// client confirmed it.
    Accepted {
        channel: russh::Channel<Msg>,
        reply: russh::client::ChannelOpenHandle,
    },
}

/// Everything a channel's tasks need.
pub struct ChannelStart {
    /// Our number for the channel (the client's recipient id).
    pub id: u32,
    /// The client's number for it (our recipient id).
    pub client_channel: u32,
    pub upstream: Upstream,
    pub ops: mpsc::UnboundedReceiver<Op>,
    /// Dropped by the connection when the channel is finished or the
    /// client went away: stop at once, even in the middle of a send.
    pub cancel: oneshot::Receiver<()>,
    pub window: Arc<ClientWindow>,
    /// Requests queued in `ops` and not handled yet.
    pub pending_requests: Arc<AtomicUsize>,
    /// The window we still grant the client; the connection checks data
    /// against it, we re-open it as data is consumed.
    pub granted: Arc<AtomicU32>,
    pub ctx: Arc<Context>,
}

/// State shared by a channel's three tasks.
struct Shared {
    /// Bytes put into each output buffer so far: control messages from the
    /// server are sent only after the output that preceded them.
    pushed_data: AtomicU64,
    pushed_ext: AtomicU64,
    traffic: Arc<Traffic>,
    exit: Mutex<Option<audit::Exit>>,
    replies: Replies,
}

/// A server message that is not output, with the output that came first.
struct Marked {
    data: u64,
    ext: u64,
    packet: ServerPacket,
}

/// How the policy and the audit log see a session channel.
#[derive(Default)]
struct SessionSetup {
    tty: bool,
    env: Vec<audit::EnvName>,
}

/// An exec/shell/subsystem that was allowed and started.
struct StartedSession {
    session: u32,
    started: std::time::Instant,
    _guard: crate::state::SessionGuard,
}

/// Opens the upstream channel (or accepts the server's) and tells the
/// client the outcome. `None`: the open failed and the client was told.
async fn establish(
    ctx: &Context,
    upstream: Upstream,
    client_channel: u32,
    id: u32,
) -> Option<russh::Channel<Msg>> {
    match upstream {
        Upstream::Open(kind) => match open(ctx, &kind).await {
            Ok(channel) => {
                ctx.send(ServerPacket::OpenConfirmation {
                    recipient: client_channel,
                    sender: id,
                    window: LOCAL_WINDOW,
                    max_packet: LOCAL_MAX_PACKET,
                })
                .await;
                Some(channel)
            }
            Err((reason, description)) => {
                ctx.send(ServerPacket::OpenFailure {
                    recipient: client_channel,
                    reason,
                    description,
                })
                .await;
                None
            }
        },
        Upstream::Accepted { channel, reply } => {
            reply.accept().await;
            Some(channel)
        }
    }
}

/// Runs one channel from open to close.
pub async fn run(start: ChannelStart) {
    let ChannelStart {
        id,
        client_channel,
        upstream,
        mut ops,
        cancel,
        window,
        granted,
        pending_requests,
        ctx,
    } = start;
    let master = Arc::clone(&ctx.master);
    let client = ctx.requester.client_id;
    let is_session = matches!(upstream, Upstream::Open(OpenKind::Session));
    let Some(channel) = establish(&ctx, upstream, client_channel, id).await else {
        let _ = ctx.events.send(Event::Released(id));
        return;
    };

    let (upstream_rx, upstream_tx) = channel.split();
    let (marked_tx, marked_rx) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        pushed_data: AtomicU64::new(0),
        pushed_ext: AtomicU64::new(0),
        traffic: Arc::new(Traffic::default()),
        exit: Mutex::new(None),
        replies: Replies {
            slots: Mutex::new(VecDeque::new()),
            writer: marked_tx.clone(),
            recipient: client_channel,
        },
    });
    let name = format!("proxy client {client} channel {id}");
    let data = SpillBuffer::new(Arc::clone(&master.spill_limits), format!("{name} output"));
    let ext = SpillBuffer::new(Arc::clone(&master.spill_limits), format!("{name} stderr"));
    tokio::spawn(read_upstream(
        upstream_rx,
        Arc::clone(&data),
        Arc::clone(&ext),
        marked_tx,
        Arc::clone(&shared),
        client_channel,
    ));
    tokio::spawn(write_client(
        data,
        ext,
        marked_rx,
        Arc::clone(&window),
        Arc::clone(&ctx),
        client_channel,
        id,
    ));

    let mut closed = false;
    let mut setup = SessionSetup::default();
    let mut started: Option<StartedSession> = None;
    let input = async {
        let mut consumed: u32 = 0;
        while let Some(op) = ops.recv().await {
            match op {
                Op::Data(bytes) | Op::ExtendedData(_, bytes) if closed => {
                    consumed = consumed.saturating_add(bytes.len() as u32);
                }
                Op::Data(bytes) => {
                    let n = bytes.len();
                    shared
                        .traffic
                        .to_server
                        .fetch_add(n as u64, Ordering::Relaxed);
                    // Waits for the server's window: this is what paces a
                    // fast client, since its own window re-opens only below.
                    let _ = upstream_tx.data_bytes(bytes).await;
                    consumed = consumed.saturating_add(n as u32);
                }
                Op::ExtendedData(code, bytes) => {
                    let n = bytes.len();
                    shared
                        .traffic
                        .to_server
                        .fetch_add(n as u64, Ordering::Relaxed);
                    let _ = upstream_tx.extended_data_bytes(code, bytes).await;
                    consumed = consumed.saturating_add(n as u32);
                }
                Op::Eof => {
                    let _ = upstream_tx.eof().await;
                }
                Op::Close => {
                    closed = true;
                    let _ = upstream_tx.close().await;
                }
                Op::Request {
                    want_reply,
                    request,
                } => {
                    pending_requests.fetch_sub(1, Ordering::AcqRel);
                    handle_request(
                        &ctx,
                        &shared,
                        &upstream_tx,
                        is_session,
                        want_reply,
                        request,
                        &mut setup,
                        &mut started,
                    )
                    .await;
                }
            }
            // Re-open the client's window in large steps, as OpenSSH does,
            // rather than with a packet per packet.
            if consumed >= LOCAL_WINDOW / 2 {
                granted.fetch_add(consumed, Ordering::AcqRel);
                ctx.send(ServerPacket::WindowAdjust {
                    recipient: client_channel,
                    bytes: consumed,
                })
                .await;
                consumed = 0;
            }
        }
    };
    tokio::select! {
        () = input => {}
        _ = cancel => {}
    }
    if !closed {
        let _ = upstream_tx.eof().await;
        let _ = upstream_tx.close().await;
    }
    if let Some(session) = started {
        let exit = shared.exit.lock().expect("not poisoned").clone();
        master
            .audit
            .record(audit::Event::SessionClose(audit::SessionClose {
                session: u64::from(session.session),
                duration_ms: u64::try_from(session.started.elapsed().as_millis())
                    .unwrap_or(u64::MAX),
                bytes_in: shared.traffic.to_client.load(Ordering::Relaxed),
                bytes_out: shared.traffic.to_server.load(Ordering::Relaxed),
                exit,
            }));
        info!(
            client,
            session = session.session,
            "proxy session finished, exit {:?}",
            shared.exit.lock().expect("not poisoned")
        );
    }
}

/// Opens the upstream channel a CHANNEL_OPEN asks for, after the policy
/// allowed it for the direct kinds (a session is decided at its
/// exec/shell/subsystem request, as a mux session is). The error is a
/// CHANNEL_OPEN_FAILURE reason and description.
async fn open(ctx: &Context, kind: &OpenKind) -> Result<russh::Channel<Msg>, (u32, String)> {
    let upstream = &ctx.master.upstream;
    let opened = match kind {
        OpenKind::Session => upstream.channel_open_session().await,
        OpenKind::DirectTcpip {
            host,
            port,
            originator,
            originator_port,
        } => {
            let target = if host.contains(':') {
                format!("[{host}]:{port}")
            } else {
                format!("{host}:{port}")
            };
            allow_direct(ctx, &target).await?;
            upstream
                .channel_open_direct_tcpip(
                    host.as_str(),
                    *port,
                    originator.as_str(),
                    *originator_port,
                )
                .await
        }
        OpenKind::DirectStreamlocal { path } => {
            allow_direct(ctx, path).await?;
            upstream
                .channel_open_direct_streamlocal(path.as_str())
                .await
        }
        OpenKind::Other(kind) => {
            return Err((
                open_failure::UNKNOWN_CHANNEL_TYPE,
                format!("muxguard: channel type {kind} is not available"),
            ));
        }
    };
    opened.map_err(|e| {
        let code = match &e {
            russh::Error::ChannelOpenFailure(reason) => match reason {
                ChannelOpenFailure::AdministrativelyProhibited => {
                    open_failure::ADMINISTRATIVELY_PROHIBITED
                }
                ChannelOpenFailure::ConnectFailed => open_failure::CONNECT_FAILED,
                ChannelOpenFailure::UnknownChannelType => open_failure::UNKNOWN_CHANNEL_TYPE,
                ChannelOpenFailure::ResourceShortage => open_failure::RESOURCE_SHORTAGE,
                ChannelOpenFailure::Other { code, .. } => *code,
            },
            _ => open_failure::CONNECT_FAILED,
        };
        debug!("proxy channel open refused: {e}");
        (code, format!("open failed: {e}"))
    })
}

/// The policy decision for a direct-tcpip / direct-streamlocal channel,
/// which is what a `-W` stdio forward opens too.
async fn allow_direct(ctx: &Context, target: &str) -> Result<(), (u32, String)> {
    let (outcome, _) = ctx
        .requester
        .decide(
            &ctx.master,
            RequestKind::StdioForward,
            Some(target),
            audit::RequestKind::StdioForward {
                forward: target.to_string(),
            },
        )
        .await;
    match outcome {
        Outcome::Allow { .. } => Ok(()),
        refused => Err((
            open_failure::ADMINISTRATIVELY_PROHIBITED,
            format!("muxguard policy: {}", refused.reason()),
        )),
    }
}

/// Applies one channel request of the client.
#[allow(clippy::too_many_arguments)]
async fn handle_request(
    ctx: &Context,
    shared: &Shared,
    upstream: &russh::ChannelWriteHalf<Msg>,
    is_session: bool,
    want_reply: bool,
    request: ChannelRequest,
    setup: &mut SessionSetup,
    started: &mut Option<StartedSession>,
) {
    let replies = &shared.replies;
    // Requests that only make sense on a session channel, and only before
    // its command starts (one command per channel, as sshd enforces).
    let session_setup = matches!(
        request,
        ChannelRequest::PtyReq { .. }
            | ChannelRequest::Env { .. }
            | ChannelRequest::Shell
            | ChannelRequest::Exec { .. }
            | ChannelRequest::Subsystem { .. }
    );
    if session_setup && (!is_session || started.is_some()) {
        if want_reply {
            replies.local(false);
        }
        return;
    }
    // Only pty-req and env go upstream with the client's want_reply; the
    // slot is taken before sending so that the server's answer finds it.
    let sent = match request {
        ChannelRequest::PtyReq {
            term,
            cols,
            rows,
            width,
            height,
            modes,
        } => {
            setup.tty = true;
            if want_reply {
                replies.expect();
            }
            let modes: Vec<(Pty, u32)> = super::packet::decode_modes(&modes)
                .into_iter()
                .filter_map(|(op, value)| Pty::from_u8(op).map(|p| (p, value)))
                .collect();
            upstream
                .request_pty(want_reply, &term, cols, rows, width, height, &modes)
                .await
        }
        ChannelRequest::Env { name, value } => {
            setup.env.push(audit::EnvName::from_var(&name));
            if want_reply {
                replies.expect();
            }
            upstream.set_env(want_reply, name, value).await
        }
        ChannelRequest::Shell | ChannelRequest::Exec { .. } | ChannelRequest::Subsystem { .. } => {
            start_session(ctx, shared, upstream, want_reply, request, setup, started).await;
            return;
        }
        ChannelRequest::WindowChange {
            cols,
            rows,
            width,
            height,
        } => {
            // russh sends these without want_reply, so any answer is ours.
            let sent = upstream.window_change(cols, rows, width, height).await;
            if want_reply {
                replies.local(sent.is_ok());
            }
            return;
        }
        ChannelRequest::Signal { name } => {
            let sent = upstream.signal(signal_from_name(&name)).await;
            if want_reply {
                replies.local(sent.is_ok());
            }
            return;
        }
        ChannelRequest::EndOfWrite | ChannelRequest::Other(_) => {
            // eow@openssh.com needs nothing (EOF follows); the others
            // (x11-req, auth-agent-req@openssh.com, break) russh cannot
            // send or we would have nowhere to route their channels.
            if want_reply {
                replies.local(false);
            }
            return;
        }
    };
    if sent.is_err() && want_reply {
        // The channel is gone upstream; no reply will come from there.
        replies.answered(false);
    }
}

/// exec / shell / subsystem: decided and audited as a mux session is.
#[allow(clippy::too_many_arguments)]
async fn start_session(
    ctx: &Context,
    shared: &Shared,
    upstream: &russh::ChannelWriteHalf<Msg>,
    want_reply: bool,
    request: ChannelRequest,
    setup: &SessionSetup,
    started: &mut Option<StartedSession>,
) {
    let (kind, command, audited, described) = match &request {
        ChannelRequest::Shell => (
            RequestKind::Shell,
            None,
            audit::RequestKind::Shell {
                tty: setup.tty,
                env: setup.env.clone(),
            },
            "shell".to_string(),
        ),
        ChannelRequest::Exec { command } => {
            let command = String::from_utf8_lossy(command).into_owned();
            (
                RequestKind::Exec,
                Some(command.clone()),
                audit::RequestKind::Exec {
                    command: command.clone(),
                    tty: setup.tty,
                    env: setup.env.clone(),
                },
                format!("exec {command:?}"),
            )
        }
        ChannelRequest::Subsystem { name } => (
            RequestKind::Subsystem,
            Some(name.clone()),
            audit::RequestKind::Subsystem {
                subsystem: name.clone(),
                tty: setup.tty,
                env: setup.env.clone(),
            },
            format!("subsystem {name}"),
        ),
        _ => unreachable!("only session-starting requests come here"),
    };
    let (outcome, request_id) = ctx
        .requester
        .decide(&ctx.master, kind, command.as_deref(), audited)
        .await;
    if !outcome.is_allow() {
        // "Direct" means nothing here: the client is already ours.
        warn!(
            client = ctx.requester.client_id,
            "proxy {described} refused: {}",
            outcome.reason()
        );
        if want_reply {
            shared.replies.local(false);
        } else {
            // Nobody would hear a refusal: end the channel instead.
            let _ = upstream.close().await;
        }
        return;
    }
    let master = &ctx.master;
    let session = master.next_session_id();
    let tty = if setup.tty { " (tty)" } else { "" };
    let guard = master.register_session(
        session,
        format!(
            "proxy {described}{tty} by {}",
            ctx.requester.peer.describe_chain()
        ),
    );
    master.attach_traffic(session, Arc::clone(&shared.traffic));
    master
        .audit
        .record(audit::Event::SessionOpen(audit::SessionOpen {
            client: ctx.requester.client_id,
            request: request_id,
            session: u64::from(session),
        }));
    info!(
        client = ctx.requester.client_id,
        session, "proxy session: {described}{tty}"
    );
    *started = Some(StartedSession {
        session,
        started: std::time::Instant::now(),
        _guard: guard,
    });
    if want_reply {
        shared.replies.expect();
    }
    let sent = match request {
        ChannelRequest::Shell => upstream.request_shell(want_reply).await,
        ChannelRequest::Exec { command } => upstream.exec(want_reply, command).await,
        ChannelRequest::Subsystem { name } => upstream.request_subsystem(want_reply, name).await,
        _ => Ok(()),
    };
    if sent.is_err() && want_reply {
        shared.replies.answered(false);
    }
}

/// Drains the russh channel at once (see the module comment).
async fn read_upstream(
    mut upstream: russh::ChannelReadHalf,
    data: Arc<SpillBuffer>,
    ext: Arc<SpillBuffer>,
    marked: mpsc::UnboundedSender<Marked>,
    shared: Arc<Shared>,
    recipient: u32,
) {
    let mark = |packet: ServerPacket| Marked {
        data: shared.pushed_data.load(Ordering::Acquire),
        ext: shared.pushed_ext.load(Ordering::Acquire),
        packet,
    };
    loop {
        match upstream.wait().await {
            Some(ChannelMsg::Data { data: bytes }) => {
                let n = bytes.len() as u64;
                shared.traffic.to_client.fetch_add(n, Ordering::Relaxed);
                data.push_wait(bytes).await;
                shared.pushed_data.fetch_add(n, Ordering::AcqRel);
            }
            Some(ChannelMsg::ExtendedData {
                data: bytes,
                ext: 1,
            }) => {
                let n = bytes.len() as u64;
                shared.traffic.to_client.fetch_add(n, Ordering::Relaxed);
                ext.push_wait(bytes).await;
                shared.pushed_ext.fetch_add(n, Ordering::AcqRel);
            }
            Some(ChannelMsg::Eof) => {
                let _ = marked.send(mark(ServerPacket::Eof { recipient }));
            }
            Some(ChannelMsg::ExitStatus { exit_status }) => {
                *shared.exit.lock().expect("not poisoned") =
                    Some(audit::Exit::ExitStatus(exit_status));
                let _ = marked.send(mark(ServerPacket::Request {
                    recipient,
                    request: ServerRequest::ExitStatus(exit_status),
                }));
            }
            Some(ChannelMsg::ExitSignal {
                signal_name,
                core_dumped,
                error_message,
                ..
            }) => {
                let signal = signal_name_of(&signal_name);
                *shared.exit.lock().expect("not poisoned") =
                    Some(audit::Exit::ExitSignal(signal.clone()));
                let _ = marked.send(mark(ServerPacket::Request {
                    recipient,
                    request: ServerRequest::ExitSignal {
                        signal,
                        core_dumped,
                        message: error_message,
                    },
                }));
            }
            Some(ChannelMsg::Success) => shared.replies.answered(true),
            Some(ChannelMsg::Failure) => shared.replies.answered(false),
            Some(ChannelMsg::Close) | None => {
                // None: the connection itself is gone; the client still
                // gets a CLOSE so that it can finish.
                let _ = marked.send(mark(ServerPacket::Close { recipient }));
                break;
            }
            Some(_) => {}
        }
    }
    data.close();
    ext.close();
}

/// Sends output and the server's channel messages to the client (see the
/// module comment).
async fn write_client(
    data: Arc<SpillBuffer>,
    ext: Arc<SpillBuffer>,
    mut marked: mpsc::UnboundedReceiver<Marked>,
    window: Arc<ClientWindow>,
    ctx: Arc<Context>,
    recipient: u32,
    id: u32,
) {
    let mut sent_data = 0u64;
    let mut sent_ext = 0u64;
    let mut data_open = true;
    let mut ext_open = true;
    loop {
        tokio::select! {
            chunk = data.pop(), if data_open => match chunk {
                Some(chunk) => {
                    sent_data += chunk.len() as u64;
                    send_output(&ctx, &window, recipient, None, chunk).await;
                }
                None => data_open = false,
            },
            chunk = ext.pop(), if ext_open => match chunk {
                Some(chunk) => {
                    sent_ext += chunk.len() as u64;
                    send_output(&ctx, &window, recipient, Some(1), chunk).await;
                }
                None => ext_open = false,
            },
            message = marked.recv() => {
                let Some(message) = message else { break };
                while sent_data < message.data {
                    let Some(chunk) = data.pop().await else { break };
                    sent_data += chunk.len() as u64;
                    send_output(&ctx, &window, recipient, None, chunk).await;
                }
                while sent_ext < message.ext {
                    let Some(chunk) = ext.pop().await else { break };
                    sent_ext += chunk.len() as u64;
                    send_output(&ctx, &window, recipient, Some(1), chunk).await;
                }
                let close = matches!(message.packet, ServerPacket::Close { .. });
                ctx.send(message.packet).await;
                if close {
                    let _ = ctx.events.send(Event::SentClose(id));
                    break;
                }
            }
        }
    }
}

/// One chunk of output, cut to the client's packet size and window.
async fn send_output(
    ctx: &Context,
    window: &ClientWindow,
    recipient: u32,
    code: Option<u32>,
    mut chunk: Bytes,
) {
    while !chunk.is_empty() {
        let Some(n) = window.take(chunk.len()).await else {
            // Abandoned: the client will not read it.
            return;
        };
        let piece = chunk.split_to(n);
        let packet = match code {
            None => ServerPacket::Data {
                recipient,
                data: piece,
            },
            Some(code) => ServerPacket::ExtendedData {
                recipient,
                code,
                data: piece,
            },
        };
        if !ctx.send(packet).await {
            return;
        }
    }
}

/// RFC 4254 §6.10 signal names (without "SIG").
fn signal_name_of(signal: &Sig) -> String {
    match signal {
        Sig::ABRT => "ABRT",
        Sig::ALRM => "ALRM",
        Sig::FPE => "FPE",
        Sig::HUP => "HUP",
        Sig::ILL => "ILL",
        Sig::INT => "INT",
        Sig::KILL => "KILL",
        Sig::PIPE => "PIPE",
        Sig::QUIT => "QUIT",
        Sig::SEGV => "SEGV",
        Sig::TERM => "TERM",
        Sig::USR1 => "USR1",
        Sig::Custom(name) => name,
    }
    .to_string()
}

fn signal_from_name(name: &str) -> Sig {
    match name {
        "ABRT" => Sig::ABRT,
        "ALRM" => Sig::ALRM,
        "FPE" => Sig::FPE,
        "HUP" => Sig::HUP,
        "ILL" => Sig::ILL,
        "INT" => Sig::INT,
        "KILL" => Sig::KILL,
        "PIPE" => Sig::PIPE,
        "QUIT" => Sig::QUIT,
        "SEGV" => Sig::SEGV,
        "TERM" => Sig::TERM,
        "USR1" => Sig::USR1,
        other => Sig::Custom(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_is_taken_in_packet_sized_pieces_and_waits() {
        crate::test_support::runtime().block_on(async {
            let window = ClientWindow::new(100_000, 0x8000);
            assert_eq!(window.take(1 << 20).await, Some(0x8000));
            let window = ClientWindow::new(10, 0x8000);
            assert_eq!(window.take(100).await, Some(10));
            // Empty now: a take waits until the client grants more.
            let waiting =
                tokio::time::timeout(std::time::Duration::from_millis(50), window.take(100)).await;
            assert!(waiting.is_err(), "took window the client never granted");
            window.grant(5);
            assert_eq!(window.take(100).await, Some(5));
            window.abandon();
            assert_eq!(window.take(100).await, None);
        });
    }

    #[test]
    fn signal_names_round_trip() {
        for name in ["TERM", "KILL", "USR1", "WINCH"] {
            assert_eq!(signal_name_of(&signal_from_name(name)), name);
        }
    }
}
