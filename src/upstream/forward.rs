//! Forwarding through the master: local (`-L`), remote (`-R`, including
//! `-R 0`), dynamic (`-D`, SOCKS) and stdio (`-W`, which ProxyJump uses),
//! over TCP or Unix sockets.
//!
//! Forwards belong to the master, not to the client that asked: they stay
//! when that client exits, and go with CLOSE_FWD (an exact six-field match)
//! or with the master. Every forwarded connection is a [`bridge`] between a
//! local byte stream and an upstream channel, which drains the channel at
//! once so that a slow local peer never stalls the connection.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use russh::ChannelMsg;
use russh::client::{Handle, Msg};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::task::AbortHandle;
use tracing::{debug, info, warn};

use super::connect::ClientHandler;
use super::socks;
use crate::audit::recorder::Recorder;
use crate::endpoint::{Endpoint, ForwardKind, ForwardSpec};
use crate::sandbox;
use crate::spill::{SpillBuffer, SpillLimits};

/// Local reads go upstream in chunks of at most one SSH packet.
pub const READ_CHUNK: usize = 32 * 1024;

/// The originator OpenSSH reports for connections it cannot attribute
/// (stdio forwards), so servers see what they would see from ssh.
const STDIO_ORIGIN: (&str, u32) = ("127.0.0.1", 65535);

// ---------------------------------------------------------------------------
// Byte streams on the local side
// ---------------------------------------------------------------------------

/// Something bytes come from: a socket's read half or a passed stdin.
pub trait ByteSource: Send + 'static {
    /// The next chunk; empty at end of stream.
    fn read_chunk(&mut self) -> impl Future<Output = io::Result<Bytes>> + Send;
}

/// Something bytes go to: a socket's write half or a passed stdout.
pub trait ByteSink: Send + 'static {
    fn write_chunk(&mut self, data: Bytes) -> impl Future<Output = io::Result<()>> + Send;
    /// Signals end of stream and releases the sink.
    fn finish(self) -> impl Future<Output = ()> + Send;
}

pub struct StreamSource<S>(pub ReadHalf<S>);
pub struct StreamSink<S>(pub WriteHalf<S>);

impl<S: AsyncRead + AsyncWrite + Send + 'static> ByteSource for StreamSource<S> {
    async fn read_chunk(&mut self) -> io::Result<Bytes> {
        let mut buf = vec![0u8; READ_CHUNK];
        let n = self.0.read(&mut buf).await?;
        buf.truncate(n);
        Ok(Bytes::from(buf))
    }
}

impl<S: AsyncRead + AsyncWrite + Send + 'static> ByteSink for StreamSink<S> {
    async fn write_chunk(&mut self, data: Bytes) -> io::Result<()> {
        self.0.write_all(&data).await
    }
    async fn finish(mut self) {
        let _ = self.0.shutdown().await;
    }
}

/// Splits a socket into a source and a sink.
pub fn split_stream<S: AsyncRead + AsyncWrite + Send + 'static>(
    stream: S,
) -> (StreamSource<S>, StreamSink<S>) {
    let (read, write) = tokio::io::split(stream);
    (StreamSource(read), StreamSink(write))
}

/// Relays bytes both ways between a local source/sink and a channel until
/// the channel closes or `cancel` completes. Channel data is queued at once
/// and written by its own task, so the channel is always drained.
pub async fn bridge(
    channel: russh::Channel<Msg>,
    source: impl ByteSource,
    sink: impl ByteSink,
    cancel: impl Future<Output = ()>,
    buffer: Arc<SpillBuffer>,
) {
    let (mut upstream_rx, upstream_tx) = channel.split();
    let upstream_tx = Arc::new(upstream_tx);
    let queued = Arc::clone(&buffer);
    let writer = tokio::spawn(async move {
        let mut sink = sink;
        let mut broken = false;
        while let Some(chunk) = queued.pop().await {
            if !broken && sink.write_chunk(chunk).await.is_err() {
                broken = true;
            }
        }
        sink.finish().await;
    });
    let reader = {
        let upstream_tx = Arc::clone(&upstream_tx);
        let mut source = source;
        tokio::spawn(async move {
            loop {
                match source.read_chunk().await {
                    Ok(chunk) if !chunk.is_empty() => {
                        if upstream_tx.data_bytes(chunk).await.is_err() {
                            return;
                        }
                    }
                    _ => {
                        let _ = upstream_tx.eof().await;
                        return;
                    }
                }
            }
        })
    };
    tokio::pin!(cancel);
    let cancelled = loop {
        tokio::select! {
            message = upstream_rx.wait() => match message {
                Some(ChannelMsg::Data { data }) => buffer.push_wait(data).await,
                Some(ChannelMsg::Eof) => buffer.close(),
                Some(ChannelMsg::Close) | None => break false,
                Some(_) => {}
            },
            () = &mut cancel => break true,
        }
    };
    reader.abort();
    let _ = reader.await;
    buffer.close();
    if cancelled {
        let _ = upstream_tx.eof().await;
        let _ = upstream_tx.close().await;
        tokio::spawn(async move { while upstream_rx.wait().await.is_some() {} });
        writer.abort();
    } else {
        let _ = upstream_tx.close().await;
        let _ = writer.await;
    }
}

// ---------------------------------------------------------------------------
// Opening channels
// ---------------------------------------------------------------------------

/// Opens the upstream channel for a connection to `target`.
pub async fn open_channel(
    upstream: &Handle<ClientHandler>,
    target: &Endpoint,
    origin: (&str, u32),
) -> Result<russh::Channel<Msg>, russh::Error> {
    match target {
        Endpoint::Tcp { host, port } => {
            upstream
                .channel_open_direct_tcpip(host.as_str(), u32::from(*port), origin.0, origin.1)
                .await
        }
        Endpoint::Unix { path } => {
            upstream
                .channel_open_direct_streamlocal(path.as_str())
                .await
        }
    }
}

/// The originator values OpenSSH uses for stdio forwards.
pub fn stdio_origin() -> (&'static str, u32) {
    STDIO_ORIGIN
}

// ---------------------------------------------------------------------------
// The master's table of forwards
// ---------------------------------------------------------------------------

/// Where connections arriving on a remote forward go. Shared with the russh
/// handler, which receives them.
pub struct RemoteRoutes {
    routes: Mutex<Vec<RemoteRoute>>,
    /// Buffering limits for every forwarded connection.
    pub spill: Arc<SpillLimits>,
    /// Where each forwarded connection is recorded; set once the master's
    /// audit stream exists (after the connection that needs these routes).
    pub audit: std::sync::OnceLock<Arc<Recorder>>,
}

/// Why a remote TCP forward could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum RemoteForwardError {
    #[error("the server refused: {0}")]
    Refused(russh::Error),
    #[error("server allocated an invalid port {0}")]
    InvalidPort(u32),
}

#[derive(Clone)]
struct RemoteRoute {
    /// The listen side as the server knows it: port (allocated if 0 was
    /// asked for) or socket path.
    listen: Endpoint,
    target: RouteTarget,
}

/// Where a remote forward's connections go.
#[derive(Clone)]
enum RouteTarget {
    /// A forward of the master (`-R` via OPEN_FWD): connect locally.
    Local(Endpoint),
    /// A forward a `-O proxy` client asked for with its own tcpip-forward:
    /// the channel is offered to that client, which connects itself.
    Proxy(ProxyRoute),
}

/// The way to a proxy client's connection task, for the server-opened
/// channels of the forwards it asked for.
#[derive(Clone)]
pub struct ProxyRoute(pub tokio::sync::mpsc::UnboundedSender<InboundOpen>);

/// A `forwarded-tcpip` channel the server opened on a proxy client's
/// forward, not yet accepted: the client decides.
pub struct InboundOpen {
    pub channel: russh::Channel<Msg>,
    pub reply: russh::client::ChannelOpenHandle,
    pub address: String,
    pub port: u32,
    pub originator: String,
    pub originator_port: u32,
}

impl RemoteRoutes {
    pub fn new(spill: Arc<SpillLimits>) -> Self {
        RemoteRoutes {
            routes: Mutex::new(Vec::new()),
            spill,
            audit: std::sync::OnceLock::new(),
        }
    }

    /// Records one connection through a forward, if auditing is on.
    fn record_connection(&self, spec: String, peer: String, error: Option<String>) {
        if let Some(audit) = self.audit.get() {
            audit.record(crate::audit::chain::Event::ForwardConnection(
                crate::audit::chain::ForwardConnection { spec, peer, error },
            ));
        }
    }

    fn insert(&self, listen: Endpoint, target: RouteTarget) {
        self.routes
            .lock()
            .expect("not poisoned")
            .push(RemoteRoute { listen, target });
    }

    /// Asks the server to listen on `host:port` (port 0: one it chooses)
    /// and routes the connections that arrive there to `target`. The one
    /// way both `-R` and a `-O proxy` client's tcpip-forward open a
    /// remote TCP forward. Returns the port the server listens on.
    ///
    /// A fixed port is routed before the server is asked: the server may
    /// open the first connection's channel right behind its reply, and
    /// russh hands that channel over before this task runs again. With
    /// port 0 nobody can know the port before the reply.
    async fn open_tcp(
        &self,
        upstream: &Handle<ClientHandler>,
        host: &str,
        port: u16,
        target: RouteTarget,
    ) -> Result<u16, RemoteForwardError> {
        let listen = |port| Endpoint::Tcp {
            host: host.to_string(),
            port,
        };
        if port != 0 {
            self.insert(listen(port), target.clone());
        }
        let allocated = match upstream.tcpip_forward(host, u32::from(port)).await {
            Ok(allocated) => allocated,
            Err(e) => {
                if port != 0 {
                    self.remove(&listen(port));
                }
                return Err(RemoteForwardError::Refused(e));
            }
        };
        if port != 0 {
            return Ok(port);
        }
        match u16::try_from(allocated) {
            Ok(bound) if bound != 0 => {
                self.insert(listen(bound), target);
                Ok(bound)
            }
            _ => {
                let _ = upstream.cancel_tcpip_forward(host, allocated).await;
                Err(RemoteForwardError::InvalidPort(allocated))
            }
        }
    }

    /// A proxy client's remote TCP forward: connections go to that client.
    pub async fn open_tcp_for_proxy(
        &self,
        upstream: &Handle<ClientHandler>,
        host: &str,
        port: u16,
        route: ProxyRoute,
    ) -> Result<u16, RemoteForwardError> {
        self.open_tcp(upstream, host, port, RouteTarget::Proxy(route))
            .await
    }

    pub fn remove(&self, listen: &Endpoint) {
        self.routes
            .lock()
            .expect("not poisoned")
            .retain(|r| &r.listen != listen);
    }

    /// The target for a `forwarded-tcpip` channel. The server reports the
    /// address as it bound it, which may differ in spelling from what we
    /// asked, so the port decides unless several forwards share it.
    #[cfg(test)]
    pub fn tcp_target(&self, address: &str, port: u32) -> Option<Endpoint> {
        match self.tcp_route(address, port)? {
            RouteTarget::Local(target) => Some(target),
            RouteTarget::Proxy(_) => None,
        }
    }

    /// Delivers a `forwarded-tcpip` channel: to the proxy client whose
    /// forward it arrived on, or to the local target of a master forward
    /// (refused when no forward matches). Never waits: it runs inside
    /// russh's session loop.
    #[allow(clippy::too_many_arguments)]
    pub fn route_forwarded_tcpip(
        self: &Arc<Self>,
        channel: russh::Channel<Msg>,
        reply: russh::client::ChannelOpenHandle,
        address: &str,
        port: u32,
        originator: &str,
        originator_port: u32,
    ) {
        let description = format!(
            "remote forward connection {address}:{port} from {originator}:{originator_port}"
        );
        let target = match self.tcp_route(address, port) {
            Some(RouteTarget::Proxy(route)) => {
                let offered = route.0.send(InboundOpen {
                    channel,
                    reply,
                    address: address.to_string(),
                    port,
                    originator: originator.to_string(),
                    originator_port,
                });
                if offered.is_err() {
                    // The client is gone; dropping the handle refuses the
                    // channel.
                    debug!("{description}: its proxy client has gone");
                }
                return;
            }
            Some(RouteTarget::Local(target)) => Some(target),
            None => None,
        };
        accept_remote_connection(
            channel,
            reply,
            target,
            description,
            format!("{originator}:{originator_port}"),
            Arc::clone(self),
        );
    }

    fn tcp_route(&self, address: &str, port: u32) -> Option<RouteTarget> {
        let routes = self.routes.lock().expect("not poisoned");
        let on_port: Vec<&RemoteRoute> = routes
            .iter()
            .filter(|r| matches!(&r.listen, Endpoint::Tcp { port: p, .. } if u32::from(*p) == port))
            .collect();
        match on_port.as_slice() {
            [only] => Some(only.target.clone()),
            several => several
                .iter()
                .find(|r| matches!(&r.listen, Endpoint::Tcp { host, .. } if host == address))
                .or(several.first())
                .map(|r| r.target.clone()),
        }
    }

    pub fn unix_target(&self, path: &str) -> Option<Endpoint> {
        let routes = self.routes.lock().expect("not poisoned");
        routes
            .iter()
            .find(|r| matches!(&r.listen, Endpoint::Unix { path: p } if p == path))
            .and_then(|r| match &r.target {
                RouteTarget::Local(target) => Some(target.clone()),
                // Proxy clients cannot ask for streamlocal forwards.
                RouteTarget::Proxy(_) => None,
            })
    }
}

/// Accepts a `forwarded-tcpip` / `forwarded-streamlocal` channel: connects
/// to the local target first, so that an unreachable target is refused
/// rather than accepted and dropped. Runs in its own task.
pub fn accept_remote_connection(
    channel: russh::Channel<Msg>,
    reply: russh::client::ChannelOpenHandle,
    target: Option<Endpoint>,
    description: String,
    origin: String,
    routes: Arc<RemoteRoutes>,
) {
    let spill = Arc::clone(&routes.spill);
    tokio::spawn(async move {
        let Some(target) = target else {
            warn!("refusing {description}: no remote forward matches it");
            reply
                .reject(russh::ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return;
        };
        let connected = connect_local(&target).await;
        let failure = connected.as_ref().err().map(|e| {
            let port = match &target {
                Endpoint::Tcp { port, .. } => Some(*port),
                Endpoint::Unix { .. } => None,
            };
            let why = port
                .filter(|_| e.kind() == io::ErrorKind::PermissionDenied)
                .and_then(|port| sandbox::explain(sandbox::Refused::Connect(port)));
            match why {
                Some(why) => format!("cannot connect to {target}: {e}: {why}"),
                None => format!("cannot connect to {target}: {e}"),
            }
        });
        routes.record_connection(
            format!("{description} -> {target}"),
            origin,
            failure.clone(),
        );
        match connected {
            Ok(LocalStream::Tcp(stream)) => {
                accept_and_bridge(channel, reply, stream, spill, description).await
            }
            Ok(LocalStream::Unix(stream)) => {
                accept_and_bridge(channel, reply, stream, spill, description).await
            }
            Err(_) => {
                warn!(
                    "{description}: {}",
                    failure.as_deref().unwrap_or("cannot connect")
                );
                reply.reject(russh::ChannelOpenFailure::ConnectFailed).await;
            }
        }
    });
}

/// Accepts a server-opened channel and relays it to a connected stream.
async fn accept_and_bridge<S: AsyncRead + AsyncWrite + Send + 'static>(
    channel: russh::Channel<Msg>,
    reply: russh::client::ChannelOpenHandle,
    stream: S,
    spill: Arc<SpillLimits>,
    description: String,
) {
    reply.accept().await;
    let (source, sink) = split_stream(stream);
    let buffer = SpillBuffer::new(spill, description);
    bridge(channel, source, sink, std::future::pending(), buffer).await;
}

enum LocalStream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

async fn connect_local(target: &Endpoint) -> io::Result<LocalStream> {
    match target {
        Endpoint::Tcp { host, port } => {
            let stream = TcpStream::connect((host.as_str(), *port)).await?;
            let _ = stream.set_nodelay(true);
            Ok(LocalStream::Tcp(stream))
        }
        Endpoint::Unix { path } => Ok(LocalStream::Unix(UnixStream::connect(path).await?)),
    }
}

/// The answer to OPEN_FWD.
#[derive(Debug, PartialEq, Eq)]
pub enum OpenResult {
    Opened,
    /// A remote forward on port 0: the port the server allocated.
    RemotePort(u32),
    Failed(String),
}

struct ActiveForward {
    spec: ForwardSpec,
    /// For remote forwards: the listen side as the server knows it.
    remote_listen: Option<Endpoint>,
    listener: Option<AbortHandle>,
    /// A Unix socket we created for a local forward, removed on close.
    socket_file: Option<PathBuf>,
}

impl Drop for ActiveForward {
    fn drop(&mut self) {
        if let Some(listener) = &self.listener {
            listener.abort();
        }
        if let Some(path) = &self.socket_file {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Every forward of one master.
#[derive(Default)]
pub struct Forwards {
    active: Mutex<Vec<ActiveForward>>,
}

impl Forwards {
    pub fn count(&self) -> usize {
        self.active.lock().expect("not poisoned").len()
    }

    /// A line per forward, for `~#` and status.
    pub fn describe(&self) -> Vec<String> {
        self.active
            .lock()
            .expect("not poisoned")
            .iter()
            .map(|f| match &f.remote_listen {
                Some(listen) => format!("{} (server side {listen})", describe_spec(&f.spec)),
                None => describe_spec(&f.spec),
            })
            .collect()
    }

    /// The open forward of `kind` that listens on `listen`, as ssh's `~C`
    /// command line names one to cancel (`-KL [bind:]port`, no target). No
    /// bind address and `localhost` both mean loopback; a remote forward
    /// opened on port 0 is named by the port the server allocated.
    pub fn find_listening(&self, kind: ForwardKind, listen: &Endpoint) -> Option<ForwardSpec> {
        self.active
            .lock()
            .expect("not poisoned")
            .iter()
            .find(|f| f.spec.kind == kind && listens_on(f, listen))
            .map(|f| f.spec.clone())
    }

    /// OPEN_FWD. Validation follows OpenSSH's master: anything it calls an
    /// invalid forwarding request gets that same reason.
    pub async fn open(
        &self,
        spec: ForwardSpec,
        upstream: &Arc<Handle<ClientHandler>>,
        routes: &Arc<RemoteRoutes>,
    ) -> OpenResult {
        if let Err(reason) = validate(&spec) {
            return OpenResult::Failed(reason.into());
        }
        if let Some(existing) = self
            .active
            .lock()
            .expect("not poisoned")
            .iter()
            .find(|f| f.spec == spec)
        {
            // Identical forwards are answered as OpenSSH answers them: OK,
            // or the port allocated the first time.
            return match (&spec.listen, &existing.remote_listen) {
                (Endpoint::Tcp { port: 0, .. }, Some(Endpoint::Tcp { port, .. })) => {
                    OpenResult::RemotePort(u32::from(*port))
                }
                _ => OpenResult::Opened,
            };
        }
        let opened = match spec.kind {
            ForwardKind::Local | ForwardKind::Dynamic => {
                self.open_listener(&spec, upstream, Arc::clone(routes))
                    .await
            }
            ForwardKind::Remote => self.open_remote(&spec, upstream, routes).await,
        };
        match opened {
            Ok((active, result)) => {
                info!("forward opened: {}", describe_spec(&spec));
                self.active.lock().expect("not poisoned").push(active);
                result
            }
            Err(reason) => {
                warn!("forward failed: {}: {reason}", describe_spec(&spec));
                OpenResult::Failed(reason)
            }
        }
    }

    /// CLOSE_FWD: only an exact match of all six fields is cancelled.
    pub async fn close(
        &self,
        spec: &ForwardSpec,
        upstream: &Arc<Handle<ClientHandler>>,
        routes: &Arc<RemoteRoutes>,
    ) -> Result<(), String> {
        let removed = {
            let mut active = self.active.lock().expect("not poisoned");
            match active.iter().position(|f| &f.spec == spec) {
                Some(index) => active.remove(index),
                None => return Err("port not forwarded".into()),
            }
        };
        if let Some(listen) = &removed.remote_listen {
            routes.remove(listen);
            let cancelled = match listen {
                Endpoint::Tcp { port, .. } => {
                    upstream
                        .cancel_tcpip_forward(server_bind_host(&spec.listen), u32::from(*port))
                        .await
                }
                Endpoint::Unix { path } => upstream.cancel_streamlocal_forward(path.as_str()).await,
            };
            if let Err(e) = cancelled {
                return Err(format!("port not found: {e}"));
            }
        }
        info!("forward closed: {}", describe_spec(spec));
        Ok(())
    }

    async fn open_listener(
        &self,
        spec: &ForwardSpec,
        upstream: &Arc<Handle<ClientHandler>>,
        routes: Arc<RemoteRoutes>,
    ) -> Result<(ActiveForward, OpenResult), String> {
        let spec_for_task = spec.clone();
        let upstream = Arc::clone(upstream);
        let (task, socket_file) = match &spec.listen {
            Endpoint::Tcp { host, port } => {
                let listeners = bind_tcp(host, *port).map_err(|e| {
                    debug!("bind {}: {e}", spec.listen);
                    refused_by_sandbox(&e, sandbox::Refused::Bind(*port))
                })?;
                let task = tokio::spawn(async move {
                    let accepts = listeners.into_iter().map(|listener| {
                        let upstream = Arc::clone(&upstream);
                        let routes = Arc::clone(&routes);
                        let spec = spec_for_task.clone();
                        tokio::spawn(async move {
                            loop {
                                let Ok((stream, peer)) = listener.accept().await else {
                                    // Out of descriptors, most likely: back off, keep the forward.
                                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                                    continue;
                                };
                                let _ = stream.set_nodelay(true);
                                tokio::spawn(serve_listener_connection(
                                    stream,
                                    peer.ip().to_string(),
                                    u32::from(peer.port()),
                                    spec.clone(),
                                    Arc::clone(&upstream),
                                    Arc::clone(&routes),
                                ));
                            }
                        })
                    });
                    let handles: Vec<_> = accepts.collect();
                    // Aborting this task must stop every listener.
                    let _guards: Vec<AbortOnDrop> = handles
                        .iter()
                        .map(|h| AbortOnDrop(h.abort_handle()))
                        .collect();
                    for handle in handles {
                        let _ = handle.await;
                    }
                });
                (task, None)
            }
            Endpoint::Unix { path } => {
                let listener = UnixListener::bind(path).map_err(|e| {
                    debug!("bind {path}: {e}");
                    refused_by_sandbox(&e, sandbox::Refused::MakeSocket(Path::new(path)))
                })?;
                let task = tokio::spawn(async move {
                    loop {
                        let Ok((stream, _)) = listener.accept().await else {
                            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                            continue;
                        };
                        tokio::spawn(serve_listener_connection(
                            stream,
                            STDIO_ORIGIN.0.to_string(),
                            0,
                            spec_for_task.clone(),
                            Arc::clone(&upstream),
                            Arc::clone(&routes),
                        ));
                    }
                });
                (task, Some(PathBuf::from(path)))
            }
        };
        Ok((
            ActiveForward {
                spec: spec.clone(),
                remote_listen: None,
                listener: Some(task.abort_handle()),
                socket_file,
            },
            OpenResult::Opened,
        ))
    }

    async fn open_remote(
        &self,
        spec: &ForwardSpec,
        upstream: &Arc<Handle<ClientHandler>>,
        routes: &Arc<RemoteRoutes>,
    ) -> Result<(ActiveForward, OpenResult), String> {
        let (listen, result) = match &spec.listen {
            Endpoint::Tcp { port, .. } => {
                let host = server_bind_host(&spec.listen);
                let target = RouteTarget::Local(spec.connect.clone());
                let bound = routes
                    .open_tcp(upstream, host, *port, target)
                    .await
                    .map_err(|e| {
                        debug!("tcpip-forward failed: {e}");
                        match e {
                            RemoteForwardError::InvalidPort(_) => e.to_string(),
                            RemoteForwardError::Refused(_) => {
                                format!("remote port forwarding failed for listen port {port}")
                            }
                        }
                    })?;
                let result = if *port == 0 {
                    OpenResult::RemotePort(u32::from(bound))
                } else {
                    OpenResult::Opened
                };
                (
                    Endpoint::Tcp {
                        host: host.to_string(),
                        port: bound,
                    },
                    result,
                )
            }
            Endpoint::Unix { path } => {
                upstream
                    .streamlocal_forward(path.as_str())
                    .await
                    .map_err(|e| {
                        debug!("streamlocal-forward refused: {e}");
                        format!("remote port forwarding failed for listen path {path}")
                    })?;
                let listen = Endpoint::Unix { path: path.clone() };
                routes.insert(listen.clone(), RouteTarget::Local(spec.connect.clone()));
                (listen, OpenResult::Opened)
            }
        };
        Ok((
            ActiveForward {
                spec: spec.clone(),
                remote_listen: Some(listen),
                listener: None,
                socket_file: None,
            },
            result,
        ))
    }
}

/// Whether `forward` listens on `listen` as a cancel names it (see
/// [`Forwards::find_listening`]).
fn listens_on(forward: &ActiveForward, listen: &Endpoint) -> bool {
    fn loopback(host: &str) -> &str {
        if host.is_empty() { "localhost" } else { host }
    }
    match (&forward.spec.listen, listen) {
        (Endpoint::Unix { path }, Endpoint::Unix { path: named }) => path == named,
        (
            Endpoint::Tcp { host, port },
            Endpoint::Tcp {
                host: named_host,
                port: named,
            },
        ) => {
            let allocated = match (&forward.remote_listen, *port) {
                (Some(Endpoint::Tcp { port: bound, .. }), 0) => Some(*bound),
                _ => None,
            };
            loopback(host) == loopback(named_host) && (port == named || allocated == Some(*named))
        }
        _ => false,
    }
}

/// Aborts a task when dropped.
pub struct AbortOnDrop(pub AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One connection accepted by a local or dynamic forward's listener.
async fn serve_listener_connection<S>(
    mut stream: S,
    origin_host: String,
    origin_port: u32,
    spec: ForwardSpec,
    upstream: Arc<Handle<ClientHandler>>,
    routes: Arc<RemoteRoutes>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let spill = Arc::clone(&routes.spill);
    let (target, socks_version) = match spec.kind {
        ForwardKind::Dynamic => match socks::accept(&mut stream).await {
            Ok(request) => (
                Endpoint::Tcp {
                    host: request.host,
                    port: request.port,
                },
                Some(request.version),
            ),
            Err(e) => {
                warn!("dynamic forward {}: {e}", spec.listen);
                return;
            }
        },
        _ => (spec.connect.clone(), None),
    };
    let channel = open_channel(&upstream, &target, (&origin_host, origin_port)).await;
    if let Some(version) = socks_version {
        let _ = stream
            .write_all(&socks::success_reply(version, channel.is_ok()))
            .await;
    }
    match channel {
        Ok(channel) => {
            debug!("forward {} -> {target}", spec.listen);
            routes.record_connection(
                format!("{} (to {target})", describe_spec(&spec)),
                format!("{origin_host}:{origin_port}"),
                None,
            );
            let (source, sink) = split_stream(stream);
            let buffer = SpillBuffer::new(spill, format!("forward {} -> {target}", spec.listen));
            bridge(channel, source, sink, std::future::pending(), buffer).await;
        }
        Err(e) => warn!("forward {} -> {target}: channel refused: {e}", spec.listen),
    }
}

/// Rejects what OpenSSH's master calls an invalid forwarding request.
fn validate(spec: &ForwardSpec) -> Result<(), &'static str> {
    const INVALID: &str = "Invalid forwarding request";
    match (&spec.kind, &spec.listen, &spec.connect) {
        (ForwardKind::Dynamic, Endpoint::Unix { .. }, _) => Err(INVALID),
        (ForwardKind::Dynamic, _, _) => Ok(()),
        (_, _, Endpoint::Tcp { host, .. }) if host.is_empty() => Err(INVALID),
        (ForwardKind::Local, _, Endpoint::Tcp { port: 0, .. }) => Err(INVALID),
        (_, _, Endpoint::Unix { path }) if path.is_empty() => Err(INVALID),
        _ => Ok(()),
    }
}

/// What a remote forward asks the server to bind: OpenSSH sends an empty
/// bind address as "localhost" and "*" as "".
fn server_bind_host(listen: &Endpoint) -> &str {
    match listen {
        Endpoint::Tcp { host, .. } if host.is_empty() => "localhost",
        Endpoint::Tcp { host, .. } if host == "*" => "",
        Endpoint::Tcp { host, .. } => host,
        Endpoint::Unix { path } => path,
    }
}

/// Binds a local listener the way ssh does without GatewayPorts: no bind
/// address means loopback (IPv4 and, where available, IPv6), "*" means
/// every address.
fn bind_tcp(host: &str, port: u16) -> io::Result<Vec<TcpListener>> {
    let addresses: Vec<SocketAddr> = match host {
        "" | "localhost" => vec![
            SocketAddr::from(([127, 0, 0, 1], port)),
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port)),
        ],
        "*" | "0.0.0.0" => vec![SocketAddr::from(([0, 0, 0, 0], port))],
        other => std::net::ToSocketAddrs::to_socket_addrs(&(other, port))?.collect(),
    };
    let mut listeners = Vec::new();
    let mut first_error = None;
    let mut chosen_port = port;
    for address in addresses {
        // With port 0 every address family must get the same port.
        let address = SocketAddr::new(address.ip(), chosen_port);
        match std::net::TcpListener::bind(address) {
            Ok(listener) => {
                chosen_port = listener.local_addr()?.port();
                listener.set_nonblocking(true)?;
                listeners.push(TcpListener::from_std(listener)?);
            }
            // A missing IPv6 stack is not an error when IPv4 worked.
            Err(e) if address.is_ipv6() && !listeners.is_empty() => debug!("bind {address}: {e}"),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    match (listeners.is_empty(), first_error) {
        (false, None) => Ok(listeners),
        (true, Some(e)) => Err(e),
        (true, None) => Err(io::Error::new(
            io::ErrorKind::AddrNotAvailable,
            "no address to bind",
        )),
        // Some families bound and another failed (e.g. the port is taken
        // on IPv4): refuse, as a half-working forward would surprise.
        (false, Some(e)) => Err(e),
    }
}

/// The reason given to the client when a forward cannot listen: OpenSSH's
/// words, and which sandbox rule refused it when that is why.
fn refused_by_sandbox(e: &io::Error, what: sandbox::Refused<'_>) -> String {
    let why = (e.kind() == io::ErrorKind::PermissionDenied)
        .then(|| sandbox::explain(what))
        .flatten();
    match why {
        Some(why) => format!("Port forwarding failed: {why}"),
        None => "Port forwarding failed".to_string(),
    }
}

/// The local TCP port the master itself uses for a forward: the port it
/// listens on for `-L`/`-D`, the port it connects to for `-R`; `None` when
/// that side is a Unix socket. The policy's `ports` and the sandbox's
/// network rules are about this port.
pub fn local_tcp_port(spec: &ForwardSpec) -> Option<u16> {
    let local = match spec.kind {
        ForwardKind::Local | ForwardKind::Dynamic => &spec.listen,
        ForwardKind::Remote => &spec.connect,
    };
    match local {
        Endpoint::Tcp { port, .. } => Some(*port),
        Endpoint::Unix { .. } => None,
    }
}

pub fn describe_spec(spec: &ForwardSpec) -> String {
    match spec.kind {
        ForwardKind::Local => format!("local forward {} -> {}", spec.listen, spec.connect),
        ForwardKind::Remote => format!("remote forward {} -> {}", spec.listen, spec.connect),
        ForwardKind::Dynamic => format!("dynamic forward {} -> *", spec.listen),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::tcp;

    #[test]
    fn validation_matches_openssh() {
        let local = |connect| ForwardSpec {
            kind: ForwardKind::Local,
            listen: tcp("", 1234),
            connect,
        };
        assert!(validate(&local(tcp("h", 22))).is_ok());
        assert!(validate(&local(tcp("", 22))).is_err());
        assert!(validate(&local(tcp("h", 0))).is_err());
        let dynamic_on_path = ForwardSpec {
            kind: ForwardKind::Dynamic,
            listen: Endpoint::Unix {
                path: "/tmp/x".into(),
            },
            connect: tcp("socks", 0),
        };
        assert!(validate(&dynamic_on_path).is_err());
    }

    #[test]
    fn remote_routes_pick_by_port_then_address() {
        let routes = RemoteRoutes::new(Arc::new(SpillLimits::new(std::env::temp_dir())));
        routes.insert(tcp("localhost", 4000), RouteTarget::Local(tcp("a", 1)));
        routes.insert(tcp("", 4001), RouteTarget::Local(tcp("b", 2)));
        routes.insert(tcp("10.0.0.1", 4001), RouteTarget::Local(tcp("c", 3)));
        assert_eq!(routes.tcp_target("127.0.0.1", 4000), Some(tcp("a", 1)));
        assert_eq!(routes.tcp_target("10.0.0.1", 4001), Some(tcp("c", 3)));
        assert_eq!(routes.tcp_target("x", 9), None);
        routes.remove(&tcp("localhost", 4000));
        assert_eq!(routes.tcp_target("127.0.0.1", 4000), None);
    }

    #[test]
    fn cancels_find_forwards_by_kind_and_listening_side() {
        let forward = |kind, listen, remote_listen| ActiveForward {
            spec: ForwardSpec {
                kind,
                listen,
                connect: tcp("target", 1),
            },
            remote_listen,
            listener: None,
            socket_file: None,
        };
        let forwards = Forwards::default();
        forwards.active.lock().unwrap().extend([
            forward(ForwardKind::Local, tcp("", 8080), None),
            forward(ForwardKind::Dynamic, tcp("127.0.0.1", 1080), None),
            forward(
                ForwardKind::Remote,
                tcp("", 0),
                Some(tcp("localhost", 40000)),
            ),
            forward(
                ForwardKind::Local,
                Endpoint::Unix {
                    path: "/tmp/l.sock".into(),
                },
                None,
            ),
        ]);
        let found = |kind, listen: Endpoint| {
            forwards
                .find_listening(kind, &listen)
                .map(|spec| (spec.kind, spec.listen))
        };
        let local = Some((ForwardKind::Local, tcp("", 8080)));
        assert_eq!(found(ForwardKind::Local, tcp("", 8080)), local);
        assert_eq!(found(ForwardKind::Local, tcp("localhost", 8080)), local);
        assert_eq!(found(ForwardKind::Local, tcp("127.0.0.1", 8080)), None);
        assert_eq!(found(ForwardKind::Local, tcp("", 8081)), None);
        assert_eq!(found(ForwardKind::Dynamic, tcp("", 8080)), None);
        assert_eq!(
            found(ForwardKind::Dynamic, tcp("127.0.0.1", 1080)),
            Some((ForwardKind::Dynamic, tcp("127.0.0.1", 1080)))
        );
        // The port the server allocated for `-R 0:…` names that forward.
        assert_eq!(
            found(ForwardKind::Remote, tcp("", 40000)),
            Some((ForwardKind::Remote, tcp("", 0)))
        );
        assert_eq!(found(ForwardKind::Local, tcp("", 40000)), None);
        let socket = Endpoint::Unix {
            path: "/tmp/l.sock".into(),
        };
        assert_eq!(
            found(ForwardKind::Local, socket.clone()),
            Some((ForwardKind::Local, socket))
        );
    }

    #[test]
    fn bind_hosts_sent_to_the_server() {
        assert_eq!(server_bind_host(&tcp("", 1)), "localhost");
        assert_eq!(server_bind_host(&tcp("*", 1)), "");
        assert_eq!(server_bind_host(&tcp("10.1.1.1", 1)), "10.1.1.1");
    }
}
