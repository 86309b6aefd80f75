//! The master process: start-up in a safe order, the accept loop with its
//! limits, persistence, signals, and an orderly shutdown that tells every
//! client why and removes the socket.
//!
//! Start-up order: resolve settings (`ssh -G`) → check the control path →
//! connect and authenticate upstream → bind the control socket → report
//! ready → serve. Everything that needs the filesystem or a new TCP
//! connection happens before serving, on one thread (a current-thread
//! runtime without the blocking pool), so that the sandbox added later can
//! be applied while the process still has a single thread.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::net::UnixListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::access::decide::{self, PolicyStore};
use crate::access::peer::{self, ConnectedProcess, Peer};
use crate::access::policy::{Destination, ForwardPorts, Ports};
use crate::audit::chain as audit;
use crate::audit::recorder::Recorder;
use crate::config::{HostConfig, Persist};
use crate::mux::limits::{
    AcceptBackoff, Admission, ConnectionLimit, ConnectionSlot, RefusalLog, Report, default_cap,
};
use crate::mux::probe::{self, Existing};
use crate::mux::server::PeerLookup;
use crate::paths;
use crate::prompt::Prompter;
use crate::sandbox;
use crate::spill::SpillLimits;
use crate::state::{Listening, MasterState, Parts};
use crate::upstream::connect;
use crate::upstream::forward::RemoteRoutes;

/// How often the lock state is looked at while answers are remembered.
const LOCK_CHECK_INTERVAL: Duration = Duration::from_secs(5);

/// Run once the control socket is live (daemon mode detaches there).
pub type ReadyHook = Box<dyn FnOnce(&Path) -> anyhow::Result<()>>;

/// How the master was asked to run.
pub struct MasterOptions {
    pub config: HostConfig,
    pub control_path: PathBuf,
    pub persist: Persist,
    pub policy: PolicyStore,
    /// `--audit-log`; else the system policy's `audit_log`; else the
    /// default in the state directory.
    pub audit_log: Option<PathBuf>,
    /// Whether to sandbox the master (`--no-sandbox` is for debugging).
    pub sandbox: sandbox::Mode,
    /// `--max-clients`: control connections open at once (default: as
    /// many as the descriptor limit leaves room for, at most 1000).
    pub max_clients: Option<usize>,
    /// Whether bulk and interactive sessions may be kept on separate
    /// connections (`--no-lanes` says no).
    pub lanes: bool,
    /// Called once the control socket is live; daemon mode detaches here.
    pub on_ready: ReadyHook,
}

/// What a master for one destination is made from, as `muxguard connect`
/// and `muxguard sandbox` resolve it.
pub struct Resolved {
    /// The host's settings, from `ssh -G`.
    pub host: HostConfig,
    pub policy: PolicyStore,
    pub control_path: PathBuf,
}

/// Resolves the host's settings, loads the policy (an invalid one stops us
/// before anything else happens) and picks the control path.
pub fn resolve(
    ssh: &crate::config::SshOptions,
    policy: &crate::cli::PolicyFiles,
    control_path: Option<PathBuf>,
) -> anyhow::Result<Resolved> {
    let host = crate::config::resolve(ssh)?;
    let policy = PolicyStore::open(decide::PolicyPaths::resolve(
        policy.system_policy.clone(),
        policy.user_policy.clone(),
    ))?;
    let control_path = paths::choose_control_path(control_path, &host, ssh)?;
    Ok(Resolved {
        host,
        policy,
        control_path,
    })
}

/// Where the audit log goes: `--audit-log`, else the policy's `audit_log`,
/// else the default in the state directory.
pub fn audit_path(flag: Option<PathBuf>, policy: &PolicyStore) -> PathBuf {
    let uid = rustix::process::getuid().as_raw();
    let user = crate::access::decide::accounts::user_name(uid);
    flag.or_else(|| policy.current().ok().and_then(|p| p.settings().audit_log))
        .map(|path| crate::audit::expand_path(&path, uid, user.as_deref()))
        .unwrap_or_else(crate::audit::default_path)
}

/// What the master's sandbox is built from: one function, so that
/// `muxguard sandbox` shows and tries exactly the master's rules.
pub fn sandbox_inputs(
    config: &HostConfig,
    control_path: &Path,
    audit_path: &Path,
    policy: &PolicyStore,
) -> sandbox::Inputs {
    let paths = policy.paths();
    // The sandbox can only grant reading a directory that exists: made now,
    // a policy file the user writes later is still picked up.
    if let Some(dir) = paths.user.parent() {
        let _ = crate::paths::ensure_private_dir(dir);
    }
    // A policy that cannot be read now denies every request until it is
    // fixed; no forward can be allowed meanwhile, so no port is needed.
    let forward_ports = match policy.current() {
        Ok(set) => set.forward_ports(&Destination {
            alias: &config.alias,
            hostname: &config.hostname,
            user: &config.user,
        }),
        Err(_) => ForwardPorts {
            bind: Ports::Only(Default::default()),
            connect: Ports::Only(Default::default()),
        },
    };
    // Additional connections to the server (MaxSessions overflow) need
    // its port even when forwards limit TCP connections.
    let forward_ports = match forward_ports {
        ForwardPorts {
            bind,
            connect: Ports::Only(mut set),
        } if crate::upstream::overflow::possible(config) => {
            set.insert(config.port);
            ForwardPorts {
                bind,
                connect: Ports::Only(set),
            }
        }
        other => other,
    };
    sandbox::Inputs::for_master(
        control_path,
        audit_path,
        vec![paths.system.clone(), paths.user.clone()],
        forward_ports,
    )
}

/// Why the master stopped.
#[derive(Debug, Clone)]
pub struct StopReason {
    pub text: String,
    /// The connection was lost (as opposed to a requested or idle stop).
    pub connection_lost: bool,
}

impl StopReason {
    fn requested(text: impl Into<String>) -> Self {
        StopReason {
            text: text.into(),
            connection_lost: false,
        }
    }

    pub fn is_failure(&self) -> bool {
        self.connection_lost
    }
}

/// Runs the master to completion. Returns the reason it stopped.
pub fn run(options: MasterOptions) -> anyhow::Result<StopReason> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the event loop")?;
    runtime.block_on(run_async(options))
}

async fn run_async(options: MasterOptions) -> anyhow::Result<StopReason> {
    let MasterOptions {
        config,
        control_path,
        persist,
        policy,
        audit_log,
        sandbox,
        max_clients,
        lanes,
        on_ready,
    } = options;
    let descriptor_limit = raise_descriptor_limit();
    let spill_limits = Arc::new(SpillLimits::new(paths::state_dir().join("spool")));
    let remote_routes = Arc::new(RemoteRoutes::new(Arc::clone(&spill_limits)));
    let upstream = connect::connect(&config, Arc::clone(&remote_routes)).await?;
    // Before the socket: the bus connection is part of start-up (nothing
    // may need new sockets once the sandbox is on).
    let prompter = Prompter::discover().await;
    let access = SocketAccess::for_policy(&policy);
    let socket = ControlSocket::bind(&control_path, access)?;
    if access == SocketAccess::Peers {
        info!(
            "control socket {} is mode 0666: the policy lists peers; each connection is admitted or refused by its credentials",
            control_path.display()
        );
        if let Some((dir, mode)) = paths::first_closed_directory(&control_path) {
            warn!(
                "the policy lists peers, but {} (mode {mode:04o}) keeps other users from reaching {}: \
                 give them search permission (chmod 0711) or use a ControlPath in a shared directory (docs/sharing.md)",
                dir.display(),
                control_path.display()
            );
        }
    }
    let listener = socket.listener()?;
    let audit_path = audit_path(audit_log, &policy);
    if sandbox == sandbox::Mode::Enforce
        && let Err(e) = crate::access::proc_helper::install()
    {
        warn!("cannot start the /proc helper: {e}; requesting programs will be unknown");
    }
    // Start-up is done: harden while there is still one thread.
    let plan = sandbox::Plan::for_master(&sandbox_inputs(
        &config,
        &control_path,
        &audit_path,
        &policy,
    ));
    let hardening = sandbox::harden(&plan, sandbox);
    match sandbox {
        sandbox::Mode::Enforce => info!("hardening: {hardening}"),
        sandbox::Mode::Disabled => warn!("hardening: {hardening}"),
    }
    let audit = Arc::new(Recorder::start(
        &audit_path,
        audit::MasterStart {
            destination: config.alias.clone(),
            host: config.hostname.clone(),
            port: config.port,
            user: config.user.clone(),
            host_key: upstream.host_key_fingerprint.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            sandbox: hardening.to_string(),
        },
    ));
    let _ = remote_routes.audit.set(Arc::clone(&audit));

    let overflow = crate::upstream::overflow::Overflow::new(
        &config,
        lanes,
        Arc::clone(&upstream.handle),
        upstream.link.clone(),
        upstream.reconnect.clone(),
        Arc::clone(&remote_routes),
    );
    let (shutdown, _) = watch::channel(None);
    let (winch, _) = watch::channel(0u64);
    let master = Arc::new(MasterState::new(Parts {
        config,
        upstream: Arc::clone(&upstream.handle),
        upstream_closed: upstream.closed.clone(),
        winch,
        shutdown,
        host_key_fingerprint: upstream.host_key_fingerprint.clone(),
        peer_address: upstream.peer,
        hardening: hardening.clone(),
        policy,
        audit,
        prompter,
        overflow,
        spill_limits,
        remote_routes,
    }));

    on_ready(&control_path)?;
    let _registration = crate::status::Registration::register(&control_path, &master.config.alias);
    info!(
        "connected to {}@{} ({}), host key {}; listening on {}",
        master.config.user,
        master.config.hostname,
        upstream.peer,
        upstream.host_key_fingerprint,
        control_path.display()
    );

    let limit = ConnectionLimit::new(max_clients.unwrap_or_else(|| default_cap(descriptor_limit)));
    info!(
        "at most {} control connections at once (descriptor limit {descriptor_limit})",
        limit.cap()
    );
    let reason = serve(
        &master,
        listener,
        &socket,
        upstream.closed.clone(),
        persist,
        limit,
    )
    .await;
    master.shutdown(&reason.text);
    socket.remove();
    master.audit.stop(&reason.text);
    // Give sessions a moment to tell their clients why, then go. Forwards
    // have nobody to tell: they are not waited for.
    let mut active = master.subscribe_active();
    let sessions_gone = active.wait_for(|_| !master.has_sessions());
    let _ = tokio::time::timeout(Duration::from_secs(2), sessions_gone).await;
    let _ = upstream
        .handle
        .disconnect(
            russh::Disconnect::ByApplication,
            "muxguard master exiting",
            "en",
        )
        .await;
    info!("master stopped: {}", reason.text);
    Ok(reason)
}

async fn serve(
    master: &Arc<MasterState>,
    listener: UnixListener,
    socket: &ControlSocket,
    mut upstream_closed: watch::Receiver<connect::ClosedReason>,
    persist: Persist,
    limit: ConnectionLimit,
) -> StopReason {
    let my_uid = rustix::process::getuid().as_raw();
    let mut listener = Some(listener);
    let mut listening = master.subscribe_listening();
    let mut shutdown = master.shutdown.subscribe();
    let mut active = master.subscribe_active();
    let mut sigterm = signal(SignalKind::terminate()).ok();
    let mut sigint = signal(SignalKind::interrupt()).ok();
    let mut sighup = signal(SignalKind::hangup()).ok();
    let mut sigwinch = signal(SignalKind::window_change()).ok();
    let next_client = AtomicU64::new(1);
    let mut backoff = AcceptBackoff::default();
    let mut refusals = RefusalLog::default();
    let mut evictions = RefusalLog::default();
    // Set after a failed accept (EMFILE, ENFILE, ENOMEM): accepting waits
    // until then instead of spinning on the same error.
    let mut accept_paused_until: Option<tokio::time::Instant> = None;
    let mut had_client = false;
    let mut idle_since = Some(Instant::now());
    // Remembered prompt answers end when the desktop locks; the lock is
    // not a signal we are sent, so look now and then, in a task of its own
    // so that a slow bus never holds up the accept loop.
    let lock_watch = {
        let master = Arc::clone(master);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(LOCK_CHECK_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if !master.prompts.remembered().is_empty()
                    && master.prompter.lock_state().await.is_locked()
                {
                    let dropped = master.prompts.forget();
                    info!("the desktop locked: forgot {dropped} remembered answer(s)");
                }
            }
        })
    };
    let _stop_lock_watch = crate::upstream::forward::AbortOnDrop(lock_watch.abort_handle());

    loop {
        let idle_deadline = match (persist, idle_since) {
            (Persist::Idle(limit), Some(since)) => Some(since + limit),
            _ => None,
        };
        tokio::select! {
            accepted = async { listener.as_ref().expect("guarded").accept().await },
                if listener.is_some() && accept_paused_until.is_none() =>
            {
                let stream = match accepted {
                    Ok((stream, _)) => {
                        backoff.succeeded();
                        stream
                    }
                    Err(e) => {
                        let pause = backoff.failed();
                        if backoff.is_first() {
                            warn!("cannot accept control connections: {e}; retrying with a pause of up to 1 s");
                        }
                        accept_paused_until = Some(tokio::time::Instant::now() + pause);
                        continue;
                    }
                };
                let client_id = next_client.fetch_add(1, Ordering::Relaxed);
                let slot = match limit.try_acquire() {
                    Admission::Admitted(slot) => slot,
                    Admission::Evicting(slot) => {
                        if let Some(report) = evictions.refused(Instant::now()) {
                            report_eviction(&limit, report);
                        }
                        slot
                    }
                    Admission::Refused => {
                        if let Some(report) = refusals.refused(Instant::now()) {
                            refuse_over_cap(master, &stream, &limit, report);
                        }
                        continue;
                    }
                };
                tokio::spawn(admit_and_serve(stream, slot, Arc::clone(master), client_id, my_uid));
            }
            _ = async { tokio::time::sleep_until(accept_paused_until.expect("guarded")).await },
                if accept_paused_until.is_some() =>
            {
                accept_paused_until = None;
            }
            Ok(()) = listening.changed() => {
                let now = *listening.borrow();
                match now {
                    Listening::StopAsked if listener.is_some() => {
                        info!("no longer accepting control connections (-O stop)");
                        listener = None;
                        socket.remove();
                        master.stopped_listening();
                    }
                    // Not before the `-O stop` has its answer.
                    Listening::Answered if *active.borrow() == 0 => {
                        return StopReason::requested("stopped listening (-O stop) and no session is left");
                    }
                    _ => {}
                }
            }
            Ok(()) = active.changed() => {
                let now_active = *active.borrow();
                if now_active > 0 {
                    had_client = true;
                    idle_since = None;
                } else {
                    idle_since = Some(Instant::now());
                    if *listening.borrow() == Listening::Answered {
                        return StopReason::requested("stopped listening (-O stop) and the last session ended");
                    }
                    if persist == Persist::UntilLastClient && had_client {
                        return StopReason::requested("last client left (persist no)");
                    }
                }
            }
            _ = async { tokio::time::sleep_until(idle_deadline.expect("guarded").into()).await }, if idle_deadline.is_some() => {
                return StopReason::requested("idle time (persist) elapsed");
            }
            Ok(()) = shutdown.changed() => {
                return StopReason::requested(shutdown.borrow().clone().unwrap_or_else(|| "shutdown".into()));
            }
            Ok(()) = upstream_closed.changed() => {
                let reason = upstream_closed.borrow().clone().unwrap_or_else(|| "connection closed".into());
                return StopReason {
                    text: format!("connection to {} closed: {reason}", master.config.hostname),
                    connection_lost: true,
                };
            }
            Some(()) = recv_signal(&mut sigterm) => return StopReason::requested("terminated by SIGTERM"),
            Some(()) = recv_signal(&mut sigint) => return StopReason::requested("interrupted by SIGINT"),
            Some(()) = recv_signal(&mut sighup) => return StopReason::requested("hung up (SIGHUP)"),
            Some(()) = recv_signal(&mut sigwinch) => {
                master.winch.send_modify(|n| *n += 1);
            }
        }
    }
}

/// Identifies the peer of an accepted connection (off the event loop: it
/// reads /proc and asks the proc helper), checks that the policy admits
/// it, and serves it. Holds `slot` until the connection ends.
///
/// A peer of the master's own uid is admitted on the kernel's word alone
/// (SO_PEERCRED), so its HELLO exchange goes on while the chain is read;
/// its first request waits for the chain. Any other uid is admitted only
/// by a policy rule, which needs its account names: it is identified
/// before a single byte is read or sent.
async fn admit_and_serve(
    stream: tokio::net::UnixStream,
    slot: ConnectionSlot,
    master: Arc<MasterState>,
    client_id: u64,
    my_uid: u32,
) {
    let cred = match rustix::net::sockopt::socket_peercred(&stream) {
        Ok(cred) => cred,
        Err(e) => {
            warn!(
                client = client_id,
                "refused control connection: cannot read peer credentials: {e}"
            );
            return;
        }
    };
    // A task of its own, so that a connection dropped meanwhile never
    // leaves a question to the proc helper half asked.
    // Taken from the socket: the process that connected, whatever became
    // of its pid since.
    let connected = ConnectedProcess::of(&stream);
    let stream = Arc::new(stream);
    let socket = Arc::clone(&stream);
    let groups = move || peer::peer_groups(&*socket);
    let identifying = tokio::spawn(Peer::identify(cred, groups, connected));
    let lookup = if cred.uid.as_raw() == my_uid {
        PeerLookup::Pending(identifying)
    } else {
        let Ok((peer, identity)) = identifying.await else {
            return;
        };
        match decide::admits(&master.policy, &identity, my_uid) {
            Ok(true) => PeerLookup::Known(Box::new((peer, identity))),
            // Closed before a single byte is read or sent.
            Ok(false) => {
                let reason = format!(
                    "uid {} is not the master's ({my_uid}) and no policy rule lists it",
                    peer.uid
                );
                warn!(
                    client = client_id,
                    "refused control connection from {peer}: {reason}"
                );
                master.audit.record(refused(&peer, reason));
                return;
            }
            Err(e) => {
                warn!(
                    client = client_id,
                    "refused control connection from {peer}: policy error: {e}"
                );
                master
                    .audit
                    .record(refused(&peer, format!("policy error: {e}")));
                return;
            }
        }
    };
    tokio::select! {
        () = crate::mux::server::serve_connection(stream, lookup, master, client_id, &slot) => {}
        () = slot.evicted() => {
            debug!(client = client_id, "closed before HELLO: a newer connection needed its place");
        }
    }
}

/// Says (once per burst) that connections without HELLO were closed to
/// make room.
fn report_eviction(limit: &ConnectionLimit, report: Report) {
    let what = format!(
        "{} control connections are open, the most allowed (--max-clients): closing the oldest one that has not said HELLO to make room",
        limit.cap()
    );
    warn!("{}", report.describe(&what, ""));
}

/// Closes a connection over the cap, saying why (once per burst).
fn refuse_over_cap(
    master: &MasterState,
    stream: &tokio::net::UnixStream,
    limit: &ConnectionLimit,
    report: Report,
) {
    let what = format!(
        "{} control connections are open, the most allowed (--max-clients)",
        limit.cap()
    );
    let reason = report.describe(&what, "refused ");
    let peer = rustix::net::sockopt::socket_peercred(stream).ok();
    let (uid, gid, pid) = peer.map_or((0, 0, 0), |c| {
        (
            c.uid.as_raw(),
            c.gid.as_raw(),
            c.pid.as_raw_nonzero().get() as u32,
        )
    });
    warn!("refused control connection from uid {uid} pid {pid}: {reason}");
    master
        .audit
        .record(audit::Event::ClientRefused(audit::ClientRefused {
            peer: audit::Peer { uid, gid, pid },
            reason,
        }));
}

fn refused(peer: &Peer, reason: String) -> audit::Event {
    audit::Event::ClientRefused(audit::ClientRefused {
        peer: audit::Peer {
            uid: peer.uid,
            gid: peer.gid,
            pid: peer.pid,
        },
        reason,
    })
}

/// Raises the soft limit on open descriptors to the hard one (at most
/// 65536), as servers do, and returns the limit in force.
fn raise_descriptor_limit() -> u64 {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    const ENOUGH: u64 = 65536;
    let current = getrlimit(Resource::Nofile);
    let soft = current.current.unwrap_or(ENOUGH);
    let wanted = current.maximum.unwrap_or(ENOUGH).min(ENOUGH);
    if wanted > soft
        && setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(wanted),
                maximum: current.maximum,
            },
        )
        .is_ok()
    {
        return wanted;
    }
    soft
}

async fn recv_signal(signal: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match signal {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}

/// Who the control socket's file mode lets connect. SO_PEERCRED decides
/// every connection either way; the mode only keeps out those who could
/// never be admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketAccess {
    /// 0600, as OpenSSH creates it.
    OwnerOnly,
    /// 0666: the policy lists `peers`, who must be able to connect so the
    /// master can check who they are.
    Peers,
}

impl SocketAccess {
    pub fn for_policy(policy: &PolicyStore) -> SocketAccess {
        // An unreadable policy admits no peer (admission fails closed), so
        // the socket stays private until the next start.
        match policy.current() {
            Ok(set) if set.admits_any_peer() => SocketAccess::Peers,
            _ => SocketAccess::OwnerOnly,
        }
    }

    fn umask(self) -> u32 {
        match self {
            SocketAccess::OwnerOnly => 0o177,
            SocketAccess::Peers => 0o111,
        }
    }
}

/// The bound control socket, removed on the way out only if the path still
/// names the socket we created (never another master's).
pub struct ControlSocket {
    path: PathBuf,
    identity: (u64, u64),
    listener: std::os::unix::net::UnixListener,
}

impl ControlSocket {
    /// Binds under a temporary name with the mode `access` says and links
    /// it into place, which fails rather than replaces if the path appeared
    /// meanwhile.
    pub fn bind(path: &Path, access: SocketAccess) -> anyhow::Result<ControlSocket> {
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            use std::os::unix::fs::FileTypeExt;
            if meta.file_type().is_socket()
                && probe::probe(path, Duration::from_secs(2)) == Existing::Stale
            {
                warn!("replacing stale control socket {}", path.display());
                let _ = std::fs::remove_file(path);
            }
        }
        let temp = temp_name(path);
        let old_mask = rustix::process::umask(rustix::fs::Mode::from_raw_mode(access.umask()));
        let bound = std::os::unix::net::UnixListener::bind(&temp);
        rustix::process::umask(old_mask);
        let listener =
            bound.with_context(|| format!("cannot bind control socket {}", temp.display()))?;
        let linked = std::fs::hard_link(&temp, path);
        let _ = std::fs::remove_file(&temp);
        linked.with_context(|| {
            format!(
                "cannot install control socket {} (another master may have just started)",
                path.display()
            )
        })?;
        let meta = std::fs::symlink_metadata(path)?;
        Ok(ControlSocket {
            path: path.to_path_buf(),
            identity: (meta.dev(), meta.ino()),
            listener,
        })
    }

    fn listener(&self) -> anyhow::Result<UnixListener> {
        let listener = self.listener.try_clone()?;
        listener.set_nonblocking(true)?;
        Ok(UnixListener::from_std(listener)?)
    }

    pub fn remove(&self) {
        if let Ok(meta) = std::fs::symlink_metadata(&self.path)
            && (meta.dev(), meta.ino()) == self.identity
        {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        self.remove();
    }
}

fn temp_name(path: &Path) -> PathBuf {
    use rand::RngExt;
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    let suffix: String = (0..16)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect();
    let mut name = path.as_os_str().to_owned();
    name.push(".");
    name.push(suffix);
    PathBuf::from(name)
}
