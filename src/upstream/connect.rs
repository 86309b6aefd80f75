//! Opening the one upstream connection: TCP connect, key exchange with host
//! key verification against known_hosts (OpenSSH's semantics), and user
//! authentication. Everything here runs before the control socket exists.

use std::borrow::Cow;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use russh::client::{self, Handle};
use russh::keys::{PublicKeyOrCertificate, ssh_key};
use tokio::sync::watch;

use super::forward::{self, RemoteRoutes};
use super::known_hosts::{self, HostKeyVerdict, KnownHosts};
use super::socket::{LinkProbe, SharedStream};
use crate::config::{HostConfig, StrictHostKeyChecking};

/// Why the upstream connection ended, once it has.
pub type ClosedReason = Option<String>;

/// The russh callbacks. They run inside russh's session loop, so nothing
/// here may wait on anything slow.
pub struct ClientHandler {
    host_key_check: HostKeyPolicy,
    /// The outcome of the host-key check, for a message better than
    /// russh's generic error.
    host_key_outcome: Arc<Mutex<Option<Result<String, String>>>>,
    closed: watch::Sender<ClosedReason>,
    /// Where connections on our remote forwards go.
    remote_routes: Arc<RemoteRoutes>,
}

/// How the server's host key is judged.
enum HostKeyPolicy {
    /// The first connection: known_hosts, with OpenSSH's semantics.
    KnownHosts(HostKeyCheck),
    /// An overflow connection to the same server: exactly the key the first
    /// connection accepted (known_hosts is out of the sandbox's reach, and
    /// nothing else would be right anyway).
    Pinned { fingerprint: String },
}

impl HostKeyPolicy {
    fn check(&self, presented: &PublicKeyOrCertificate) -> Result<String, String> {
        match self {
            HostKeyPolicy::KnownHosts(check) => check.check(presented),
            HostKeyPolicy::Pinned { fingerprint } => {
                let presented = known_hosts::fingerprint_sha256(&public_key_of(presented));
                if presented == *fingerprint {
                    Ok(presented)
                } else {
                    Err(format!(
                        "the server presented host key {presented} on an additional connection, \
                         not {fingerprint} as on the first; refusing it"
                    ))
                }
            }
        }
    }
}

fn public_key_of(presented: &PublicKeyOrCertificate) -> ssh_key::PublicKey {
    match presented {
        PublicKeyOrCertificate::PublicKey { key, .. } => key.clone(),
        PublicKeyOrCertificate::Certificate(cert) => {
            ssh_key::PublicKey::new(cert.public_key().clone(), "")
        }
    }
}

struct HostKeyCheck {
    known_hosts: KnownHosts,
    lookup_host: String,
    port: u16,
    strict: StrictHostKeyChecking,
    hash_new_entries: bool,
    /// Where accepted new keys are recorded: the first UserKnownHostsFile.
    learn_file: Option<std::path::PathBuf>,
}

impl ClientHandler {
    fn note_closed(&self, reason: String) {
        self.closed.send_if_modified(|current| {
            if current.is_none() {
                *current = Some(reason);
                true
            } else {
                false
            }
        });
    }
}

impl Drop for ClientHandler {
    fn drop(&mut self) {
        // The session loop owns the handler; it is dropped when the loop
        // ends for whatever reason.
        self.note_closed("connection closed".into());
    }
}

impl client::Handler for ClientHandler {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let outcome = self.host_key_check.check(key);
        let accepted = outcome.is_ok();
        *self.host_key_outcome.lock().expect("not poisoned") = Some(outcome);
        Ok(accepted)
    }

    async fn server_channel_open_forwarded_tcpip(
        &mut self,
        channel: russh::Channel<client::Msg>,
        connected_address: &str,
        connected_port: u32,
        originator_address: &str,
        originator_port: u32,
        reply: client::ChannelOpenHandle,
        _session: &mut client::Session,
    ) -> Result<(), Self::Error> {
        self.remote_routes.route_forwarded_tcpip(
            channel,
            reply,
            connected_address,
            connected_port,
            originator_address,
            originator_port,
        );
        Ok(())
    }

    async fn server_channel_open_forwarded_streamlocal(
        &mut self,
        channel: russh::Channel<client::Msg>,
        socket_path: &str,
        reply: client::ChannelOpenHandle,
        _session: &mut client::Session,
    ) -> Result<(), Self::Error> {
        let target = self.remote_routes.unix_target(socket_path);
        forward::accept_remote_connection(
            channel,
            reply,
            target,
            format!("remote forward connection on {socket_path}"),
            String::new(),
            Arc::clone(&self.remote_routes),
        );
        Ok(())
    }

    async fn disconnected(
        &mut self,
        reason: client::DisconnectReason<Self::Error>,
    ) -> Result<(), Self::Error> {
        match reason {
            client::DisconnectReason::ReceivedDisconnect(info) => {
                self.note_closed(format!("server disconnected: {}", info.message.trim()));
                Ok(())
            }
            client::DisconnectReason::Error(e) => {
                self.note_closed(format!("connection lost: {e}"));
                Err(e)
            }
        }
    }
}

impl HostKeyCheck {
    /// Applies StrictHostKeyChecking to the known_hosts verdict. Ok carries
    /// the key's fingerprint; Err the full, loud explanation.
    fn check(&self, presented: &PublicKeyOrCertificate) -> Result<String, String> {
        let public = public_key_of(presented);
        let fingerprint = known_hosts::fingerprint_sha256(&public);
        let verdict = self
            .known_hosts
            .verify(&self.lookup_host, self.port, presented)
            .map_err(|e| format!("cannot read known_hosts: {e}"))?;
        let name = host_port(&self.lookup_host, self.port);
        match verdict {
            HostKeyVerdict::Trusted { .. } | HostKeyVerdict::TrustedByCa { .. } => Ok(fingerprint),
            HostKeyVerdict::Revoked { file, line } => Err(format!(
                "host key for {name} ({fingerprint}) is marked as REVOKED in {}:{line}; refusing to connect",
                file.display()
            )),
            HostKeyVerdict::CertRejected { reason, .. } => {
                Err(format!("host certificate for {name} rejected: {reason}"))
            }
            HostKeyVerdict::Changed {
                file,
                line,
                known_key_type,
                known_fingerprint,
            } => Err(format!(
                "host key for {name} has CHANGED ({}:{line}); refusing to connect\n\
                 @@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@\n\
                 @    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @\n\
                 @@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@\n\
                 IT IS POSSIBLE THAT SOMEONE IS DOING SOMETHING NASTY!\n\
                 Someone could be eavesdropping on you right now (man-in-the-middle attack)!\n\
                 It is also possible that a host key has just been changed.\n\
                 The {} host key sent by {name} is\n{fingerprint}\n\
                 but {}:{line} holds the {known_key_type} key {known_fingerprint} for it.\n\
                 Remove the old entry (ssh-keygen -R '{name}') once you have checked the new key.",
                file.display(),
                public.algorithm(),
                file.display(),
            )),
            HostKeyVerdict::Unknown => {
                let hint = String::new();
                match self.strict {
                    StrictHostKeyChecking::Yes => Err(format!(
                        "no {} host key is known for {name}{hint} and StrictHostKeyChecking is yes: \
                         host key verification failed (server key {fingerprint}); \
                         check the key, then record it with ssh (StrictHostKeyChecking ask) or ssh-keyscan",
                        public.algorithm()
                    )),
                    StrictHostKeyChecking::Ask => {
                        if self.ask_on_terminal(&name, &public, &fingerprint, &hint) {
                            self.learn(&public, &fingerprint)
                        } else {
                            Err(format!(
                                "host key verification failed: {name} ({fingerprint}) was not accepted{hint}"
                            ))
                        }
                    }
                    StrictHostKeyChecking::AcceptNew | StrictHostKeyChecking::No => {
                        self.learn(&public, &fingerprint)
                    }
                }
            }
        }
    }

    fn learn(&self, key: &ssh_key::PublicKey, fingerprint: &str) -> Result<String, String> {
        let Some(file) = &self.learn_file else {
            return Ok(fingerprint.to_string());
        };
        match known_hosts::append_known_host(
            file,
            &self.lookup_host,
            self.port,
            key,
            self.hash_new_entries,
        ) {
            Ok(_) => {
                eprintln!(
                    "Warning: Permanently added '{}' ({}) to the list of known hosts.",
                    host_port(&self.lookup_host, self.port),
                    key.algorithm()
                );
                Ok(fingerprint.to_string())
            }
            Err(e) => {
                eprintln!(
                    "muxguard: could not record the host key in {}: {e}",
                    file.display()
                );
                Ok(fingerprint.to_string())
            }
        }
    }

    /// StrictHostKeyChecking=ask: the question ssh asks, on the terminal.
    fn ask_on_terminal(
        &self,
        name: &str,
        key: &ssh_key::PublicKey,
        fingerprint: &str,
        hint: &str,
    ) -> bool {
        use std::io::{BufRead, Write};
        let Ok(mut tty) = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/tty")
        else {
            return false;
        };
        let _ = write!(
            tty,
            "The authenticity of host '{name}' can't be established.{hint}\n\
             {} key fingerprint is {fingerprint}.\n\
             Are you sure you want to continue connecting (yes/no/[fingerprint])? ",
            key.algorithm()
        );
        loop {
            let mut answer = String::new();
            if std::io::BufReader::new(&tty)
                .read_line(&mut answer)
                .unwrap_or(0)
                == 0
            {
                return false;
            }
            match answer.trim() {
                "yes" => return true,
                "no" => return false,
                typed if typed == fingerprint => return true,
                _ => {
                    let _ = write!(tty, "Please type 'yes', 'no' or the fingerprint: ");
                }
            }
        }
    }
}

fn host_port(host: &str, port: u16) -> String {
    if port == 22 {
        host.to_string()
    } else {
        format!("[{host}]:{port}")
    }
}

/// At most this much data waits unsent in the kernel: past it the socket
/// reads as not writable, so the master's own per-channel queues (which can
/// put interactive data first) hold the backlog, not one deep FIFO.
const UPSTREAM_NOTSENT_LOWAT: u32 = 128 * 1024;

/// Sets TCP_NOTSENT_LOWAT. Best effort: an old kernel without it only loses
/// the latency benefit, so a failure is logged and ignored.
#[allow(unsafe_code)] // see the SAFETY comment inside
fn limit_unsent_bytes(stream: &TcpStream, bytes: u32) {
    use std::os::fd::AsRawFd;
    let value = bytes as libc::c_int;
    // SAFETY: setsockopt reads exactly `size_of::<c_int>()` bytes from a
    // pointer to a live, properly aligned c_int on our stack, and the fd is
    // an open socket owned by `stream` for the whole call.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_NOTSENT_LOWAT,
            (&raw const value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        tracing::debug!(
            "TCP_NOTSENT_LOWAT not set: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Bytes read from the server per system call at most.
const UPSTREAM_READ_BUFFER: usize = 256 * 1024;

/// The authenticated connection.
pub struct Upstream {
    pub handle: Arc<Handle<ClientHandler>>,
    /// Becomes `Some(reason)` when the connection is gone.
    pub closed: watch::Receiver<ClosedReason>,
    /// The kernel's view of the connection's path, for pacing.
    pub link: LinkProbe,
    pub host_key_fingerprint: String,
    pub peer: SocketAddr,
    /// What an additional connection to the same server needs.
    pub reconnect: Reconnect,
}

/// Enough to open another connection to the server the first one reached:
/// its address, the host key it accepted, and the same algorithm
/// preferences (so the server presents the same kind of key).
#[derive(Clone)]
pub struct Reconnect {
    peer: SocketAddr,
    fingerprint: String,
    russh_config: Arc<client::Config>,
    identity_publics: Arc<Vec<ssh_key::PublicKey>>,
}

impl Reconnect {
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }
}

/// Connects, verifies the host key and authenticates.
pub async fn connect(
    config: &HostConfig,
    remote_routes: Arc<RemoteRoutes>,
) -> anyhow::Result<Upstream> {
    let (stream, peer) = tcp_connect(config)?;
    let known_hosts = KnownHosts::new(
        config.user_known_hosts.clone(),
        config.global_known_hosts.clone(),
    );
    // OpenSSH never adds a port to a HostKeyAlias.
    let (lookup_host, lookup_port) = match &config.host_key_alias {
        Some(alias) => (alias.clone(), 22),
        None => (config.hostname.clone(), config.port),
    };
    let known = known_hosts
        .known_algorithms(&lookup_host, lookup_port)
        .unwrap_or_default();
    let check = HostKeyPolicy::KnownHosts(HostKeyCheck {
        known_hosts,
        lookup_host,
        port: lookup_port,
        strict: config.strict_host_key_checking,
        hash_new_entries: config.hash_known_hosts,
        learn_file: config.user_known_hosts.first().cloned(),
    });
    let russh_config = Arc::new(russh_config(config, &known));
    let Handshake {
        mut handle,
        fingerprint,
        closed,
        link,
    } = handshake(
        config,
        stream,
        peer,
        check,
        Arc::clone(&russh_config),
        remote_routes,
    )
    .await?;
    let identity_publics = Arc::new(super::auth::identity_publics(config));
    super::auth::authenticate(&mut handle, config, &identity_publics).await?;
    Ok(Upstream {
        handle: Arc::new(handle),
        closed,
        link,
        host_key_fingerprint: fingerprint.clone(),
        peer,
        reconnect: Reconnect {
            peer,
            fingerprint,
            russh_config,
            identity_publics,
        },
    })
}

/// Opens an additional connection to the server of `reconnect`, which must
/// present the same host key, and authenticates with the agent only: the
/// master keeps no key or password after start-up, and asks nobody.
pub async fn connect_again(
    config: &HostConfig,
    reconnect: &Reconnect,
    remote_routes: Arc<RemoteRoutes>,
) -> anyhow::Result<Upstream> {
    let timeout = config.connect_timeout.unwrap_or(Duration::from_secs(30));
    let stream = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(reconnect.peer))
        .await
        .map_err(|_| anyhow::anyhow!("timed out connecting to {}", reconnect.peer))?
        .with_context(|| format!("cannot connect to {}", reconnect.peer))?
        .into_std()?;
    stream.set_nonblocking(false)?;
    let check = HostKeyPolicy::Pinned {
        fingerprint: reconnect.fingerprint.clone(),
    };
    let Handshake {
        mut handle,
        fingerprint,
        closed,
        link,
    } = handshake(
        config,
        stream,
        reconnect.peer,
        check,
        Arc::clone(&reconnect.russh_config),
        remote_routes,
    )
    .await?;
    super::auth::authenticate_with_agent(&mut handle, config, &reconnect.identity_publics).await?;
    Ok(Upstream {
        handle: Arc::new(handle),
        closed,
        link,
        host_key_fingerprint: fingerprint,
        peer: reconnect.peer,
        reconnect: reconnect.clone(),
    })
}

/// A connection whose key exchange is done.
struct Handshake {
    handle: Handle<ClientHandler>,
    /// The accepted host key's.
    fingerprint: String,
    /// Reports the connection's end.
    closed: watch::Receiver<ClosedReason>,
    link: LinkProbe,
}

/// The key exchange on a connected socket, with the host key judged by
/// `check`.
async fn handshake(
    config: &HostConfig,
    stream: TcpStream,
    peer: SocketAddr,
    check: HostKeyPolicy,
    russh_config: Arc<client::Config>,
    remote_routes: Arc<RemoteRoutes>,
) -> anyhow::Result<Handshake> {
    stream.set_nodelay(true)?;
    limit_unsent_bytes(&stream, UPSTREAM_NOTSENT_LOWAT);
    stream.set_nonblocking(true)?;
    // russh reads each packet with two small reads (length, then body);
    // a read buffer turns a burst of packets into one system call.
    let (stream, link) = SharedStream::new(tokio::net::TcpStream::from_std(stream)?);
    let stream = tokio::io::BufReader::with_capacity(UPSTREAM_READ_BUFFER, stream);
    let outcome = Arc::new(Mutex::new(None));
    let (closed_tx, closed) = watch::channel(None);
    let handler = ClientHandler {
        host_key_check: check,
        host_key_outcome: Arc::clone(&outcome),
        closed: closed_tx,
        remote_routes,
    };
    let handshake = client::connect_stream(russh_config, stream, handler);
    let handshake = match config.connect_timeout {
        Some(limit) => tokio::time::timeout(limit, handshake)
            .await
            .map_err(|_| anyhow::anyhow!("timed out during the SSH handshake with {peer}"))?,
        None => handshake.await,
    };
    let host_key_outcome = outcome.lock().expect("not poisoned").take();
    match (handshake, host_key_outcome) {
        (_, Some(Err(explanation))) => bail!("{explanation}"),
        (Ok(handle), Some(Ok(fingerprint))) => Ok(Handshake {
            handle,
            fingerprint,
            closed,
            link,
        }),
        (Ok(_), None) => bail!("the server never presented a host key"),
        (Err(e), _) => bail!("SSH handshake with {peer} failed: {e}"),
    }
}

fn russh_config(config: &HostConfig, known: &known_hosts::KnownAlgorithms) -> client::Config {
    let mut preferred = russh::Preferred::default();
    // As ssh does: prefer the host-key types we already know for this host,
    // so that a server with several keys presents one we can check instead
    // of one that would look like a changed key.
    if !known.algorithms.is_empty() {
        let mut keys: Vec<ssh_key::Algorithm> = Vec::new();
        for algorithm in &known.algorithms {
            for offered in preferred.key.iter() {
                let same_family = offered == algorithm
                    || (offered.clone().is_rsa() && algorithm.clone().is_rsa());
                if same_family && !keys.contains(offered) {
                    keys.push(offered.clone());
                }
            }
        }
        for offered in preferred.key.iter() {
            if !keys.contains(offered) {
                keys.push(offered.clone());
            }
        }
        preferred.key = Cow::Owned(keys);
    }
    if known.has_cert_authority {
        preferred.host_key_certificates = preferred.key.clone();
    }
    // Use the user's cipher order, as ssh would, so that comparisons with
    // OpenSSH's own master run the same cipher.
    let ciphers: Vec<russh::cipher::Name> = config
        .ciphers
        .iter()
        .filter_map(|name| russh::cipher::Name::try_from(name.as_str()).ok())
        .filter(|name| *name != russh::cipher::NONE && *name != russh::cipher::CLEAR)
        .collect();
    if !ciphers.is_empty() {
        preferred.cipher = Cow::Owned(ciphers);
    }
    client::Config {
        nodelay: true,
        keepalive_interval: config.server_alive_interval,
        keepalive_max: config.server_alive_count_max as usize,
        preferred,
        ..Default::default()
    }
}

/// Resolves and connects with the standard library: a blocking lookup is
/// fine here (nothing else is running yet) and keeps tokio's blocking pool,
/// and so extra threads, out of start-up.
fn tcp_connect(config: &HostConfig) -> anyhow::Result<(TcpStream, SocketAddr)> {
    let addresses: Vec<SocketAddr> = (config.hostname.as_str(), config.port)
        .to_socket_addrs()
        .with_context(|| format!("could not resolve hostname {}", config.hostname))?
        .collect();
    let timeout = config.connect_timeout.unwrap_or(Duration::from_secs(30));
    let mut last_error = None;
    for address in &addresses {
        match TcpStream::connect_timeout(address, timeout) {
            Ok(stream) => return Ok((stream, *address)),
            Err(e) => last_error = Some(e),
        }
    }
    match last_error {
        Some(e) => bail!(
            "cannot connect to {} port {}: {e}",
            config.hostname,
            config.port
        ),
        None => bail!("hostname {} resolved to no address", config.hostname),
    }
}
