//! A control connection after MUX_S_PROXY: the client's whole connection
//! layer, translated onto the master's one russh connection.
//!
//! This loop owns the client's channel numbers and windows and answers
//! global requests; each channel runs in its own tasks (`channel.rs`). It
//! reads the client without ever waiting on a channel, so one stalled
//! channel cannot stall the others. When the client goes away, every channel
//! it opened is closed upstream and every remote forward it asked for is
//! cancelled, as OpenSSH's master does.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use super::channel::{self, ChannelStart, ClientWindow, Context, Event, Op, Upstream};
use super::packet::{self, ClientPacket, GlobalRequest, OpenKind, ServerPacket, open_failure};
use crate::access::policy::RequestKind;
use crate::audit::chain as audit;
use crate::mux::fdpass::{ControlReader, ControlWriter, ReadError};
use crate::mux::server::Requester;
use crate::mux::wire::Endpoint;
use crate::state::MasterState;
use crate::upstream::forward::{AbortOnDrop, InboundOpen, ProxyRoute};

/// Why a proxy connection was closed by us.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("{0}")]
    Read(ReadError),
    #[error("malformed proxy packet: {0}")]
    Packet(#[from] packet::PacketError),
    #[error("client sent {len} bytes on channel {id} with only {window} bytes of window")]
    WindowExceeded { id: u32, len: usize, window: u32 },
    #[error(
        "client queued more than {} requests on channel {id} without waiting for them",
        channel::MAX_PENDING_REQUESTS
    )]
    TooManyRequests { id: u32 },
}

/// One channel number of ours.
struct Entry {
    state: State,
}

enum State {
    /// Open or being opened by its task.
    Running(Running),
    /// Offered to the client (forwarded-tcpip), waiting for its answer.
    Offered(Box<InboundOpen>),
}

struct Running {
    ops: mpsc::UnboundedSender<Op>,
    window: Arc<ClientWindow>,
    granted: Arc<AtomicU32>,
    /// Requests sent to the channel's task that it has not handled yet.
    pending_requests: Arc<AtomicUsize>,
    got_close: bool,
    sent_close: bool,
    /// Dropping it stops the channel's input task.
    _cancel: oneshot::Sender<()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        // Output nobody will read is discarded rather than waiting for
        // window forever.
        self.window.abandon();
    }
}

/// A tcpip-forward this client holds on the server.
struct HeldForward {
    address: String,
    port: u32,
    description: String,
}

/// Serves a proxy client until it goes away or the master stops. The
/// MUX_S_PROXY reply has been sent.
pub(crate) async fn serve(
    reader: &mut ControlReader,
    control: ControlWriter,
    master: Arc<MasterState>,
    requester: Arc<Requester>,
) -> Result<(), ProxyError> {
    // One writer: packets from every channel go out whole, in the order
    // they were queued. Bounded, so a client that does not read stalls
    // only its own channels' writers (their output waits in spill buffers).
    let (out, mut out_rx) = mpsc::channel::<Vec<u8>>(64);
    let writer = tokio::spawn(async move {
        while let Some(bytes) = out_rx.recv().await {
            if control.send_raw(&bytes).await.is_err() {
                break;
            }
        }
    });
    let _writer = AbortOnDrop(writer.abort_handle());

    // The connection itself is listed (status, `~#`) and keeps a master
    // with a persistence timeout alive, even with no session open: its
    // forwards are in use.
    let _listed = master.register_session(
        master.next_session_id(),
        format!("proxy client by {}", requester.peer.describe_chain()),
    );
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let ctx = Arc::new(Context {
        master: Arc::clone(&master),
        requester: Arc::clone(&requester),
        out,
        events: events_tx,
    });
    let (inbound_tx, mut inbound) = mpsc::unbounded_channel::<InboundOpen>();
    let mut proxy = Proxy {
        ctx,
        channels: HashMap::new(),
        next_id: 0,
        forwards: Vec::new(),
        route: ProxyRoute(inbound_tx),
    };

    // Reading is not cancel-safe (a half-read packet would be lost), so it
    // runs as its own loop feeding this one.
    let (packets_tx, mut packets) = mpsc::channel::<Result<Vec<u8>, ReadError>>(8);
    let read_loop = async {
        loop {
            let read = match reader.read_proxy_packet().await {
                Ok(Some(body)) => Ok(body),
                Ok(None) => break,
                Err(e) => Err(e),
            };
            let failed = read.is_err();
            if packets_tx.send(read).await.is_err() || failed {
                break;
            }
        }
        drop(packets_tx);
        std::future::pending::<()>().await;
    };
    let mut shutdown = master.shutdown.subscribe();
    let main_loop = async {
        loop {
            tokio::select! {
                read = packets.recv() => match read {
                    Some(Ok(body)) => proxy.handle(packet::decode(&body)?).await?,
                    Some(Err(e)) => return Err(ProxyError::Read(e)),
                    None => return Ok(()),
                },
                Some(event) = events.recv() => proxy.event(event),
                Some(offer) = inbound.recv() => proxy.offer(offer).await,
                Ok(()) = shutdown.changed() => return Ok(()),
            }
        }
    };
    let result = tokio::select! {
        result = main_loop => result,
        () = read_loop => Ok(()),
    };
    proxy.teardown().await;
    result
}

struct Proxy {
    ctx: Arc<Context>,
    channels: HashMap<u32, Entry>,
    /// Channel numbers are never reused within a connection, so a late
    /// message for a finished channel cannot reach a new one.
    next_id: u32,
    forwards: Vec<HeldForward>,
    route: ProxyRoute,
}

impl Proxy {
    fn client(&self) -> u64 {
        self.ctx.requester.client_id
    }

    async fn send(&self, packet: ServerPacket) {
        let _ = self.ctx.out.send(packet.encode()).await;
    }

    fn allocate(&mut self) -> u32 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        id
    }

    fn running(&mut self, id: u32) -> Option<&mut Running> {
        match self.channels.get_mut(&id) {
            Some(Entry {
                state: State::Running(running),
            }) => Some(running),
            _ => None,
        }
    }

    async fn handle(&mut self, message: ClientPacket) -> Result<(), ProxyError> {
        debug!(client = self.client(), "proxy packet {}", message.name());
        match message {
            ClientPacket::GlobalRequest {
                want_reply,
                request,
            } => self.global_request(want_reply, request).await,
            // Answers to global requests we never send.
            ClientPacket::RequestSuccess | ClientPacket::RequestFailure => {}
            ClientPacket::ChannelOpen {
                kind,
                sender,
                window,
                max_packet,
            } => self.open(kind, sender, window, max_packet).await,
            ClientPacket::OpenConfirmation {
                recipient,
                sender,
                window,
                max_packet,
            } => self.confirmed(recipient, sender, window, max_packet),
            ClientPacket::OpenFailure {
                recipient,
                reason,
                description,
            } => {
                if let Some(Entry {
                    state: State::Offered(offer),
                }) = self.channels.remove(&recipient)
                {
                    debug!(
                        client = self.client(),
                        "client refused forwarded connection on port {}: {reason} {description}",
                        offer.port
                    );
                    offer
                        .reply
                        .reject(russh::ChannelOpenFailure::ConnectFailed)
                        .await;
                }
            }
            ClientPacket::WindowAdjust { recipient, bytes } => {
                if let Some(running) = self.running(recipient) {
                    running.window.grant(bytes);
                }
            }
            ClientPacket::Data { recipient, data } => {
                self.data(recipient, data.len(), Op::Data(data))?;
            }
            ClientPacket::ExtendedData {
                recipient,
                code,
                data,
            } => {
                self.data(recipient, data.len(), Op::ExtendedData(code, data))?;
            }
            ClientPacket::Eof { recipient } => {
                if let Some(running) = self.running(recipient) {
                    let _ = running.ops.send(Op::Eof);
                }
            }
            ClientPacket::Close { recipient } => {
                if let Some(running) = self.running(recipient) {
                    running.got_close = true;
                    running.window.abandon();
                    let _ = running.ops.send(Op::Close);
                    if running.sent_close {
                        self.channels.remove(&recipient);
                    }
                }
            }
            ClientPacket::Request {
                recipient,
                want_reply,
                request,
            } => {
                if let Some(running) = self.running(recipient) {
                    // Requests carry no window: without a bound, a client
                    // could queue them faster than the server answers.
                    let pending = running.pending_requests.fetch_add(1, Ordering::AcqRel);
                    if pending >= channel::MAX_PENDING_REQUESTS {
                        return Err(ProxyError::TooManyRequests { id: recipient });
                    }
                    let _ = running.ops.send(Op::Request {
                        want_reply,
                        request,
                    });
                }
            }
            // Answers to channel requests we send without want_reply.
            ClientPacket::Success { .. } | ClientPacket::Failure { .. } => {}
        }
        Ok(())
    }

    /// Data from the client must fit the window we granted; a client that
    /// ignores it is broken or hostile, and would make us buffer.
    fn data(&mut self, recipient: u32, len: usize, op: Op) -> Result<(), ProxyError> {
        let Some(running) = self.running(recipient) else {
            return Ok(());
        };
        let window = running.granted.load(Ordering::Acquire);
        if len > window as usize {
            return Err(ProxyError::WindowExceeded {
                id: recipient,
                len,
                window,
            });
        }
        running.granted.fetch_sub(len as u32, Ordering::AcqRel);
        let _ = running.ops.send(op);
        Ok(())
    }

    async fn open(&mut self, kind: OpenKind, sender: u32, window: u32, max_packet: u32) {
        let refuse = match &kind {
            OpenKind::Other(kind) => Some((
                open_failure::UNKNOWN_CHANNEL_TYPE,
                format!("muxguard: channel type {kind} is not available to proxy clients"),
            )),
            _ if !self.ctx.master.accepting_sessions() => Some((
                open_failure::ADMINISTRATIVELY_PROHIBITED,
                "master is shutting down".to_string(),
            )),
            _ => None,
        };
        if let Some((reason, description)) = refuse {
            self.send(ServerPacket::OpenFailure {
                recipient: sender,
                reason,
                description,
            })
            .await;
            return;
        }
        let id = self.allocate();
        debug!(client = self.client(), "proxy channel {id}: open {kind:?}");
        self.start(id, sender, window, max_packet, Upstream::Open(kind));
    }

    /// Registers a channel and starts its tasks.
    fn start(
        &mut self,
        id: u32,
        client_channel: u32,
        window: u32,
        max_packet: u32,
        upstream: Upstream,
    ) {
        let (ops_tx, ops) = mpsc::unbounded_channel();
        let (cancel_tx, cancel) = oneshot::channel();
        let client_window = ClientWindow::new(window, max_packet);
        let granted = Arc::new(AtomicU32::new(channel::LOCAL_WINDOW));
        let pending_requests = Arc::new(AtomicUsize::new(0));
        self.channels.insert(
            id,
            Entry {
                state: State::Running(Running {
                    ops: ops_tx,
                    window: Arc::clone(&client_window),
                    granted: Arc::clone(&granted),
                    pending_requests: Arc::clone(&pending_requests),
                    got_close: false,
                    sent_close: false,
                    _cancel: cancel_tx,
                }),
            },
        );
        tokio::spawn(channel::run(ChannelStart {
            id,
            client_channel,
            upstream,
            ops,
            cancel,
            window: client_window,
            granted,
            pending_requests,
            ctx: Arc::clone(&self.ctx),
        }));
    }

    /// The client accepted a forwarded connection we offered.
    fn confirmed(&mut self, id: u32, sender: u32, window: u32, max_packet: u32) {
        if !matches!(
            self.channels.get(&id),
            Some(Entry {
                state: State::Offered(_)
            })
        ) {
            debug!(
                client = self.client(),
                "confirmation for channel {id}, which was not offered"
            );
            return;
        }
        let Some(Entry {
            state: State::Offered(offer),
        }) = self.channels.remove(&id)
        else {
            return;
        };
        let InboundOpen { channel, reply, .. } = *offer;
        self.start(
            id,
            sender,
            window,
            max_packet,
            Upstream::Accepted { channel, reply },
        );
    }

    fn event(&mut self, event: Event) {
        match event {
            Event::Released(id) => {
                self.channels.remove(&id);
            }
            Event::SentClose(id) => {
                if let Some(running) = self.running(id) {
                    running.sent_close = true;
                    if running.got_close {
                        self.channels.remove(&id);
                    }
                }
            }
        }
    }

    /// A connection arrived on one of this client's remote forwards: offer
    /// it as a forwarded-tcpip channel; the client connects it locally.
    async fn offer(&mut self, offer: InboundOpen) {
        let id = self.allocate();
        let spec = format!(
            "proxy remote forward {}:{} (client {})",
            offer.address,
            offer.port,
            self.client()
        );
        self.ctx
            .master
            .audit
            .record(audit::Event::ForwardConnection(audit::ForwardConnection {
                spec,
                peer: format!("{}:{}", offer.originator, offer.originator_port),
                error: None,
            }));
        self.send(ServerPacket::OpenForwardedTcpip {
            sender: id,
            window: channel::LOCAL_WINDOW,
            max_packet: channel::LOCAL_MAX_PACKET,
            address: offer.address.clone(),
            port: offer.port,
            originator: offer.originator.clone(),
            originator_port: offer.originator_port,
        })
        .await;
        self.channels.insert(
            id,
            Entry {
                state: State::Offered(Box::new(offer)),
            },
        );
    }

    async fn global_request(&mut self, want_reply: bool, request: GlobalRequest) {
        let reply = match request {
            GlobalRequest::TcpipForward { address, port } => self.forward(address, port).await,
            GlobalRequest::CancelTcpipForward { address, port } => {
                match self
                    .forwards
                    .iter()
                    .position(|f| f.address == address && f.port == port)
                {
                    Some(index) => {
                        let held = self.forwards.remove(index);
                        self.cancel_forward(held, "cancelled by the proxy client")
                            .await;
                        ServerPacket::RequestSuccess { port: None }
                    }
                    None => ServerPacket::RequestFailure,
                }
            }
            GlobalRequest::Other(name) => {
                // Never passed on: no-more-sessions@openssh.com, for one,
                // would end sharing for every client of this master.
                debug!(
                    client = self.client(),
                    "proxy global request {name} refused"
                );
                ServerPacket::RequestFailure
            }
        };
        if want_reply {
            self.send(reply).await;
        }
    }

    /// tcpip-forward: decided and audited as a `-R` forward is, then routed
    /// to this client.
    async fn forward(&mut self, address: String, port: u32) -> ServerPacket {
        let description = format!("remote forward {address}:{port} -> proxy client");
        let master = Arc::clone(&self.ctx.master);
        let (outcome, request) = self
            .ctx
            .requester
            .decide(
                &master,
                RequestKind::ForwardRemote,
                Some(&description),
                audit::RequestKind::ForwardRemote {
                    forward: description.clone(),
                },
            )
            .await;
        if !outcome.is_allow() {
            return ServerPacket::RequestFailure;
        }
        let Ok(requested) = u16::try_from(port) else {
            return ServerPacket::RequestFailure;
        };
        let bound = match master
            .remote_routes
            .open_tcp_for_proxy(&master.upstream, &address, requested, self.route.clone())
            .await
        {
            Ok(bound) => u32::from(bound),
            Err(e) => {
                warn!(client = self.client(), "{description}: {e}");
                return ServerPacket::RequestFailure;
            }
        };
        let description = format!("remote forward {address}:{bound} -> proxy client");
        master
            .audit
            .record(audit::Event::ForwardOpen(audit::ForwardOpen {
                client: self.client(),
                request,
                spec: description.clone(),
            }));
        info!(client = self.client(), "proxy {description}");
        self.forwards.push(HeldForward {
            address,
            port: bound,
            description,
        });
        ServerPacket::RequestSuccess {
            port: (requested == 0).then_some(bound),
        }
    }

    async fn cancel_forward(&self, held: HeldForward, reason: &str) {
        let master = &self.ctx.master;
        let Ok(port) = u16::try_from(held.port) else {
            return;
        };
        master.remote_routes.remove(&Endpoint::Tcp {
            host: held.address.clone(),
            port,
        });
        if let Err(e) = master
            .upstream
            .cancel_tcpip_forward(held.address.as_str(), held.port)
            .await
        {
            debug!("cancel {}: {e}", held.description);
        }
        master
            .audit
            .record(audit::Event::ForwardClose(audit::ForwardClose {
                spec: held.description.clone(),
                reason: reason.to_string(),
            }));
        info!(
            client = self.client(),
            "proxy {} closed: {reason}", held.description
        );
    }

    /// The client is gone (or the master stops): close what it left.
    async fn teardown(&mut self) {
        let open = self.channels.len();
        // Dropping the entries cancels each channel's input task, which
        // closes the channel upstream; offered channels are refused.
        self.channels.clear();
        for held in std::mem::take(&mut self.forwards) {
            self.cancel_forward(held, "proxy client went away").await;
        }
        if open > 0 {
            info!(
                client = self.client(),
                "proxy client gone; closed {open} channel(s) it left open"
            );
        }
    }
}
