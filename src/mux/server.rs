//! One control connection, from accept to close: the HELLO exchange, then
//! one request at a time, answered in order (the stock client never
//! pipelines, and OpenSSH stops reading a connection while a reply is
//! deferred), each by its handler in `requests`. Who is asking and how a
//! request is decided and audited live here. A malformed packet closes
//! this connection only, with the reason logged; the master goes on
//! serving everyone else.

use std::sync::Arc;
use std::time::Instant;

use tokio::net::UnixStream;
use tracing::{debug, info, warn};

use super::fdpass::{ControlReader, ControlWriter, ReadError};
use super::limits::ConnectionSlot;
use super::passed_fd::{self, OutputSink};
use super::requests::{Connection, Flow};
use super::wire::{self, ClientMessage, ServerMessage};
use crate::access::decide::{self, Asked, Outcome, PeerIdentity, Prompting};
use crate::access::peer::Peer;
use crate::access::policy::RequestKind;
use crate::audit::chain as audit;
use crate::audit::recorder::{PendingRecord, RecordError};
use crate::state::MasterState;

/// Who is on a control connection: known at accept, or being found out
/// while the HELLO exchange goes on (the master's own uid).
pub enum PeerLookup {
    Known(Box<(Peer, PeerIdentity)>),
    Pending(tokio::task::JoinHandle<(Peer, PeerIdentity)>),
}

impl PeerLookup {
    async fn resolve(self) -> Option<(Peer, PeerIdentity)> {
        match self {
            PeerLookup::Known(known) => Some(*known),
            PeerLookup::Pending(task) => task.await.ok(),
        }
    }
}

/// Serves one accepted control connection until it ends.
pub async fn serve_connection(
    stream: Arc<UnixStream>,
    lookup: PeerLookup,
    master: Arc<MasterState>,
    client_id: u64,
    slot: &ConnectionSlot,
) {
    let mut reader = ControlReader::new(Arc::clone(&stream));
    let writer = ControlWriter::new(stream);
    // Nothing the greeting does depends on who the peer is, so it goes on
    // while the peer is identified; every request after it waits for the
    // peer. The record of the connection, which comes before any of its
    // requests' records, is made as soon as the peer is known.
    let greeting = async {
        let greeted = greet(&mut reader, &writer, slot, client_id).await;
        // A session's descriptors follow its request at once: taken in
        // and looked at while the peer is still being identified, they
        // cost the session nothing afterwards.
        let first_fds = match &greeted {
            Ok(Some((ClientMessage::NewSession { .. }, _))) => Some(
                reader
                    .receive_fds(wire::SessionRequest::FD_COUNT)
                    .await
                    .map(passed_fd::adopt),
            ),
            _ => None,
        };
        (greeted, first_fds)
    };
    let identified = async {
        let known = lookup.resolve().await;
        if let Some((peer, _)) = &known {
            debug!(client = client_id, "control connection from {peer}");
            master.audit.record(connect_record(client_id, peer));
        }
        known
    };
    let ((greeted, first_fds), known) = tokio::join!(greeting, identified);
    let Some((peer, identity)) = known else {
        warn!(
            client = client_id,
            "closing control connection: its peer could not be identified"
        );
        return;
    };
    let peer_pid = peer.pid;
    let requester = Arc::new(Requester {
        peer,
        identity,
        client_id,
    });
    let served = match greeted {
        Ok(Some((first, read_at))) => {
            let mut connection = Connection {
                reader: &mut reader,
                writer: &writer,
                master: &master,
                requester: &requester,
                read_at,
                first_fds,
            };
            serve(first, &mut connection).await
        }
        Ok(None) => Ok(()),
        Err(reason) => Err(reason),
    };
    match served {
        Ok(()) => debug!(
            client = client_id,
            pid = peer_pid,
            "control connection closed"
        ),
        Err(reason) => warn!(
            client = client_id,
            pid = peer_pid,
            "closing control connection: {reason}"
        ),
    }
}

fn connect_record(client_id: u64, peer: &Peer) -> audit::Event {
    audit::Event::ClientConnect(audit::ClientConnect {
        client: client_id,
        peer: audit::Peer {
            uid: peer.uid,
            gid: peer.gid,
            pid: peer.pid,
        },
        chain: peer
            .chain
            .iter()
            .map(|p| audit::ProcessEntry {
                pid: p.pid,
                name: p.name(),
                exe: p.exe.as_ref().map(|e| e.display().to_string()),
                cmdline: Some(p.cmdline.clone()),
            })
            .collect(),
        cwd: peer
            .chain
            .first()
            .and_then(|p| p.cwd.as_ref())
            .map(|c| c.display().to_string()),
        tty: peer.chain.first().and_then(|p| p.tty.clone()),
    })
}

/// Why a control connection was closed by us.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CloseReason {
    #[error("{0}")]
    Read(#[from] ReadError),
    #[error("first message was {0}, not HELLO")]
    NoHello(&'static str),
    #[error("client speaks mux protocol version {0}, not 4")]
    WrongVersion(u32),
    #[error("second HELLO")]
    SecondHello,
    #[error(
        "no HELLO within {} s",
        super::limits::HELLO_TIMEOUT.as_secs()
    )]
    HelloTimeout,
    #[error("write failed: {0}")]
    Write(#[from] std::io::Error),
    #[error("{0}")]
    Proxy(crate::mux::proxy::ProxyError),
}

/// Who is on this control connection.
pub(crate) struct Requester {
    pub(crate) peer: Peer,
    identity: PeerIdentity,
    pub(crate) client_id: u64,
}

impl Requester {
    /// The policy's answer for one request, logged with what decided it,
    /// and audited: the decision is on disk before anything it allows
    /// happens, or the request is refused (unless `audit_failure = allow`).
    pub(crate) async fn decide(
        &self,
        master: &MasterState,
        kind: RequestKind,
        command: Option<&str>,
        audited: audit::RequestKind,
    ) -> (Outcome, u64) {
        let asked = Asked {
            kind,
            command,
            local_port: None,
        };
        self.decide_asked(master, &asked, audited).await
    }

    pub(super) async fn decide_asked(
        &self,
        master: &MasterState,
        asked: &Asked<'_>,
        audited: audit::RequestKind,
    ) -> (Outcome, u64) {
        let (outcome, request, record) = self.decide_deferred(master, asked, audited, None).await;
        let outcome = match record {
            Some(record) => settle(master, outcome, record.synced().await),
            None => outcome,
        };
        self.log_outcome(asked, &outcome);
        (outcome, request)
    }

    /// Decides, and appends the decision record. For an allowed request the
    /// record is returned on its way to the disk, for the caller to await
    /// before what it allows (see `mux::session::run` for what a session
    /// does meanwhile); otherwise it has already been awaited and applied:
    /// an unwritable log turns the outcome into a denial unless the policy
    /// says `audit_failure = allow`.
    pub(super) async fn decide_deferred(
        &self,
        master: &MasterState,
        asked: &Asked<'_>,
        audited: audit::RequestKind,
        read_at: Option<Instant>,
    ) -> (Outcome, u64, Option<PendingRecord>) {
        let request = master.next_request_id();
        master.audit.record(audit::Event::Request(audit::Request {
            client: self.client_id,
            request,
            kind: audited,
        }));
        // The identity read at accept decides; this only notices that the
        // connecting process has since exited or exec'd another program.
        // `read_at` is known only for a request that is one mux packet;
        // any other is taken as read now, which always looks again.
        self.peer
            .recheck(read_at.unwrap_or_else(Instant::now))
            .await;
        let decided = decide::decide(
            &master.policy,
            &master.config,
            &self.peer,
            &self.identity,
            asked,
            Prompting {
                prompter: &master.prompter,
                memory: &master.prompts,
            },
        )
        .await;
        let outcome = decided.outcome;
        let action = match &outcome {
            Outcome::Allow { .. } => audit::Action::Allow,
            Outcome::Direct { .. } => audit::Action::Direct,
            Outcome::Deny { .. } => audit::Action::Deny,
        };
        let record = audit::Event::Decision(audit::Decision {
            client: self.client_id,
            request,
            action,
            source: decided.source,
            decided_by: outcome.reason().to_string(),
            rule: decided.rule,
        });
        match master.audit.record_durably(record) {
            Err(e) => (settle(master, outcome, Err(e)), request, None),
            Ok(pending) if outcome.is_allow() => (outcome, request, Some(pending)),
            Ok(pending) => (
                settle(master, outcome, pending.synced().await),
                request,
                None,
            ),
        }
    }

    pub(super) fn log_outcome(&self, asked: &Asked<'_>, outcome: &Outcome) {
        let what = match asked.command {
            Some(command) => format!("{} {command:?}", asked.kind),
            None => asked.kind.to_string(),
        };
        match outcome {
            Outcome::Allow { reason } => {
                info!(
                    client = self.client_id,
                    "{what} from {}: allowed ({reason})", self.peer
                )
            }
            Outcome::Direct { reason } => {
                warn!(
                    client = self.client_id,
                    "{what} from {}: not shared ({reason})", self.peer
                )
            }
            Outcome::Deny { reason } => {
                warn!(
                    client = self.client_id,
                    "{what} from {}: denied ({reason})", self.peer
                )
            }
        }
    }
}

/// Applies the fate of a decision's record to its outcome: a decision that
/// could not be recorded allows nothing when the policy fails closed.
pub(crate) fn settle(
    master: &MasterState,
    outcome: Outcome,
    recorded: Result<(), RecordError>,
) -> Outcome {
    if matches!(outcome, Outcome::Deny { .. }) {
        return outcome;
    }
    match refusal_if_unrecorded(master, recorded) {
        Some(reason) => Outcome::Deny { reason },
        None => outcome,
    }
}

/// What a decision record that could not be written means for what it
/// allowed: the reason to refuse it after all when the policy fails closed,
/// `None` to go on.
pub(crate) fn refusal_if_unrecorded(
    master: &MasterState,
    recorded: Result<(), RecordError>,
) -> Option<String> {
    match recorded {
        Ok(()) => None,
        Err(e) if master.audit_failure_denies() => Some(format!(
            "{e}; the policy fails closed (audit_failure = deny)"
        )),
        Err(e) => {
            warn!("{e}; going on as the policy says (audit_failure = allow)");
            None
        }
    }
}

impl Requester {
    /// A `-O exit` / `-O stop` decision (kind `control`).
    pub(super) async fn decide_control(
        &self,
        master: &MasterState,
        operation: audit::ControlOperation,
    ) -> Outcome {
        let word = match operation {
            audit::ControlOperation::Terminate => "exit",
            audit::ControlOperation::StopListening => "stop",
            audit::ControlOperation::CancelForward => "cancel",
            audit::ControlOperation::Info => "info",
        };
        let audited = audit::RequestKind::Control {
            operation,
            forward: None,
        };
        self.decide(master, RequestKind::Control, Some(word), audited)
            .await
            .0
    }
}

/// What a refused session's client reads on its stderr (and a refused
/// `~C` request, in its session).
pub(crate) fn denial_text(reason: &str) -> String {
    // \r\n: a tty client is in raw mode by now.
    format!("muxguard: denied by policy: {reason}\r\n")
}

/// Refuses a session the client asked for as the policy's `deny` does:
/// opens it, says why on its stderr, and ends it with status 255, so that
/// the stock client does not fall back to a connection of its own.
pub(crate) async fn deny_opened_session(
    writer: &ControlWriter,
    rid: u32,
    session_id: u32,
    stderr: Option<passed_fd::PassedFd>,
    reason: &str,
) -> Result<(), CloseReason> {
    writer
        .send(&ServerMessage::SessionOpened { rid, session_id })
        .await?;
    if let Some(stderr) = stderr
        && let Ok(mut sink) = OutputSink::new(stderr)
    {
        let message = bytes::Bytes::from(denial_text(reason));
        let deliver = async {
            let _ = sink.write_all(message).await;
            let _ = sink.finish().await;
        };
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), deliver).await;
    }
    writer
        .send(&ServerMessage::ExitMessage {
            session_id,
            exit_value: 255,
        })
        .await?;
    Ok(())
}

/// The HELLO exchange, then the ALIVE_CHECKs that come before any real
/// request (the stock client sends one before each session): answered at
/// once, as they say nothing about anyone. Returns the first other
/// message and when it was read, or `None` if the client hung up first.
async fn greet(
    reader: &mut ControlReader,
    writer: &ControlWriter,
    slot: &ConnectionSlot,
    client_id: u64,
) -> Result<Option<(ClientMessage, Instant)>, CloseReason> {
    // Our HELLO goes first, before reading anything: the client also writes
    // before it reads, so neither side can deadlock.
    writer
        .send(&ServerMessage::Hello {
            // As OpenSSH 10.3+: lets newer clients use -O conninfo and
            // -O channels; older ones ignore unknown extensions.
            extensions: vec![("info".into(), "0".into())],
        })
        .await?;
    let first = tokio::time::timeout(super::limits::HELLO_TIMEOUT, reader.read_packet())
        .await
        .map_err(|_| CloseReason::HelloTimeout)??;
    let Some(first) = first else {
        return Ok(None);
    };
    match wire::decode_client(&first).map_err(ReadError::from)? {
        ClientMessage::Hello {
            version,
            extensions,
        } => {
            if version != wire::PROTOCOL_VERSION {
                return Err(CloseReason::WrongVersion(version));
            }
            for (name, value) in extensions {
                debug!(
                    client = client_id,
                    "ignoring HELLO extension {name}={value}"
                );
            }
        }
        other => return Err(CloseReason::NoHello(other.name())),
    }
    slot.established();
    loop {
        let Some(packet) = reader.read_packet().await? else {
            return Ok(None);
        };
        let read_at = Instant::now();
        let message = wire::decode_client(&packet).map_err(ReadError::from)?;
        debug!(client = client_id, "request {}", message.name());
        match message {
            ClientMessage::AliveCheck { rid } => writer.send(&alive(rid)).await?,
            other => return Ok(Some((other, read_at))),
        }
    }
}

/// The answer to an ALIVE_CHECK: the pid the client relays window
/// changes to.
pub(super) fn alive(rid: u32) -> ServerMessage {
    ServerMessage::Alive {
        rid,
        pid: std::process::id(),
    }
}

/// Serves the requests from `first` (read at `connection.read_at`) on, one
/// at a time.
async fn serve(first: ClientMessage, connection: &mut Connection<'_>) -> Result<(), CloseReason> {
    let client_id = connection.requester.client_id;
    let mut message = first;
    loop {
        if connection.handle(message).await? == Flow::Close {
            return Ok(());
        }
        let Some(packet) = connection.reader.read_packet().await? else {
            return Ok(());
        };
        connection.read_at = Instant::now();
        message = wire::decode_client(&packet).map_err(ReadError::from)?;
        debug!(client = client_id, "request {}", message.name());
    }
}
