//! One control connection, from accept to close: the HELLO exchange, then
//! one request at a time, answered in order (the stock client never
//! pipelines, and OpenSSH stops reading a connection while a reply is
//! deferred). A malformed packet closes this connection only, with the
//! reason logged; the master goes on serving everyone else.

use std::sync::Arc;

use tokio::net::UnixStream;
use tracing::{debug, info, warn};

use super::fdpass::{ControlReader, ControlWriter, ReadError};
use super::limits::ConnectionSlot;
use super::passed_fd::{self, InputSource, OutputSink};
use super::wire::{self, ClientMessage, ServerMessage};
use crate::access::decide::{self, Asked, Outcome, PeerIdentity, Prompting};
use crate::access::peer::Peer;
use crate::access::policy::RequestKind;
use crate::audit::chain as audit;
use crate::master::MasterState;
use crate::spill::SpillBuffer;
use crate::upstream::forward::{self, OpenResult};
use crate::upstream::session::{self, SessionEnd, SessionOpenError, SessionStart, Traffic};

/// Serves one accepted control connection until it ends.
pub async fn serve_connection(
    stream: UnixStream,
    peer: Peer,
    identity: PeerIdentity,
    master: Arc<MasterState>,
    client_id: u64,
    slot: &ConnectionSlot,
) {
    let peer_pid = peer.pid;
    master
        .audit
        .record(audit::Event::ClientConnect(audit::ClientConnect {
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
        }));
    let requester = Arc::new(Requester {
        peer,
        identity,
        client_id,
    });
    let stream = Arc::new(stream);
    let mut reader = ControlReader::new(Arc::clone(&stream));
    let writer = ControlWriter::new(stream);
    match serve(&mut reader, &writer, &master, &requester, slot).await {
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
    Proxy(crate::proxy::ProxyError),
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

    async fn decide_asked(
        &self,
        master: &MasterState,
        asked: &Asked<'_>,
        audited: audit::RequestKind,
    ) -> (Outcome, u64) {
        let (outcome, request, synced) = self.decide_deferred(master, asked, audited).await;
        let outcome = match synced {
            Some(synced) => settle(master, outcome, synced.await),
            None => outcome,
        };
        self.log_outcome(asked, &outcome);
        (outcome, request)
    }

    /// Decides, and appends the decision record. For an allowed request the
    /// record's sync to disk is returned to be awaited before what it allows
    /// starts (sessions open their channel meanwhile); otherwise it has
    /// already been awaited and applied: an unwritable log turns the
    /// outcome into a denial unless the policy says `audit_failure = allow`.
    async fn decide_deferred(
        &self,
        master: &MasterState,
        asked: &Asked<'_>,
        audited: audit::RequestKind,
    ) -> (Outcome, u64, Option<DecisionSync>) {
        let request = master.next_request_id();
        master.audit.record(audit::Event::Request(audit::Request {
            client: self.client_id,
            request,
            kind: audited,
        }));
        // The identity read at accept decides; this only notices that the
        // connecting process has since exited or exec'd another program.
        self.peer.recheck();
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
        match master.audit.record_then_sync(record) {
            Err(e) => (settle(master, outcome, Err(e)), request, None),
            Ok(synced) if matches!(outcome, Outcome::Allow { .. }) => {
                (outcome, request, Some(Box::pin(synced)))
            }
            Ok(synced) => (settle(master, outcome, synced.await), request, None),
        }
    }

    fn log_outcome(&self, asked: &Asked<'_>, outcome: &Outcome) {
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

/// The wait for a decision record to reach the disk.
pub(crate) type DecisionSync =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send>>;

/// Applies the fate of a decision's record to its outcome: a decision that
/// could not be recorded allows nothing when the policy fails closed.
pub(crate) fn settle(
    master: &MasterState,
    outcome: Outcome,
    recorded: Result<(), String>,
) -> Outcome {
    match recorded {
        Err(e) if !matches!(outcome, Outcome::Deny { .. }) && master.audit_failure_denies() => {
            Outcome::Deny {
                reason: format!("{e}; the policy fails closed (audit_failure = deny)"),
            }
        }
        Err(e) => {
            warn!("{e}; going on as the policy says (audit_failure = allow)");
            outcome
        }
        Ok(()) => outcome,
    }
}

impl Requester {
    /// A `-O exit` / `-O stop` decision (kind `control`).
    async fn decide_control(
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

/// What a session request is, for the audit log (env names only).
fn audited_session(request: &wire::SessionRequest) -> audit::RequestKind {
    let env = request
        .env
        .iter()
        .map(|e| audit::EnvName::from_var(e))
        .collect();
    let tty = request.want_tty;
    if request.subsystem {
        audit::RequestKind::Subsystem {
            subsystem: request.command.clone(),
            tty,
            env,
        }
    } else if request.command.is_empty() {
        audit::RequestKind::Shell { tty, env }
    } else {
        audit::RequestKind::Exec {
            command: request.command.clone(),
            tty,
            env,
        }
    }
}

fn audited_forward(spec: &wire::ForwardSpec) -> audit::RequestKind {
    let forward = forward::describe_spec(spec);
    match spec.kind {
        wire::ForwardKind::Local => audit::RequestKind::ForwardLocal { forward },
        wire::ForwardKind::Remote => audit::RequestKind::ForwardRemote { forward },
        wire::ForwardKind::Dynamic => audit::RequestKind::ForwardDynamic { forward },
    }
}

/// The PERMISSION_DENIED reply for a refused request that is not a session.
fn refusal(rid: u32, outcome: &Outcome) -> ServerMessage {
    ServerMessage::PermissionDenied {
        rid,
        reason: format!("muxguard policy: {}", outcome.reason()),
    }
}

async fn serve(
    reader: &mut ControlReader,
    writer: &ControlWriter,
    master: &Arc<MasterState>,
    requester: &Arc<Requester>,
    slot: &ConnectionSlot,
) -> Result<(), CloseReason> {
    let client_id = requester.client_id;
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
        return Ok(());
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
            return Ok(());
        };
        let message = wire::decode_client(&packet).map_err(ReadError::from)?;
        debug!(client = client_id, "request {}", message.name());
        match message {
            ClientMessage::Hello { .. } => return Err(CloseReason::SecondHello),
            ClientMessage::AliveCheck { rid } => {
                writer
                    .send(&ServerMessage::Alive {
                        rid,
                        pid: std::process::id(),
                    })
                    .await?;
            }
            ClientMessage::NewSession { rid, request } => {
                let Some(fds) =
                    receive_passed_fds(reader, writer, rid, wire::SessionRequest::FD_COUNT).await?
                else {
                    continue;
                };
                if !master.accepting_sessions() {
                    writer
                        .send(&ServerMessage::Failure {
                            rid,
                            reason: "master is shutting down".into(),
                        })
                        .await?;
                    continue;
                }
                let kind = if request.subsystem {
                    RequestKind::Subsystem
                } else if request.command.is_empty() {
                    RequestKind::Shell
                } else {
                    RequestKind::Exec
                };
                let asked = Asked {
                    kind,
                    command: (!request.command.is_empty()).then_some(request.command.as_str()),
                    local_port: None,
                };
                // The decision's sync to disk runs while the channel opens;
                // the session awaits it before the command is started.
                let (outcome, request_id, decision_synced) = requester
                    .decide_deferred(master, &asked, audited_session(&request))
                    .await;
                requester.log_outcome(&asked, &outcome);
                match outcome {
                    Outcome::Allow { .. } => {}
                    Outcome::Direct { .. } => {
                        // The stock client answers this by connecting on
                        // its own: "not through me", not "never".
                        writer
                            .send(&ServerMessage::PermissionDenied {
                                rid,
                                reason: "Permission denied".into(),
                            })
                            .await?;
                        continue;
                    }
                    Outcome::Deny { reason } => {
                        let session_id = master.next_session_id();
                        return deny_session(writer, rid, session_id, fds, &reason).await;
                    }
                }
                let session_id = master.next_session_id();
                let command = describe_request(&request);
                info!(
                    client = client_id,
                    session = session_id,
                    "new session: {command}"
                );
                let described = format!("{command} by {}", requester.peer.describe_chain());
                let _guard = master.register_session(session_id, described);
                master
                    .audit
                    .record(audit::Event::SessionOpen(audit::SessionOpen {
                        client: client_id,
                        request: request_id,
                        session: u64::from(session_id),
                    }));
                let started = std::time::Instant::now();
                let traffic = Arc::new(Traffic::default());
                master.attach_traffic(session_id, Arc::clone(&traffic));
                let outcome = session::run(SessionStart {
                    rid,
                    session_id,
                    decision_synced,
                    request,
                    fds,
                    control: writer.clone(),
                    reader,
                    master: Arc::clone(master),
                    traffic: Arc::clone(&traffic),
                })
                .await;
                let exit = match &outcome {
                    Ok(SessionEnd::Finished {
                        exit_status: Some(status),
                        ..
                    }) => Some(audit::Exit::ExitStatus(*status)),
                    Ok(SessionEnd::Finished {
                        exit_signal: Some(signal),
                        ..
                    }) => Some(audit::Exit::ExitSignal(signal.clone())),
                    _ => None,
                };
                master
                    .audit
                    .record(audit::Event::SessionClose(audit::SessionClose {
                        session: u64::from(session_id),
                        duration_ms: u64::try_from(started.elapsed().as_millis())
                            .unwrap_or(u64::MAX),
                        bytes_in: traffic.to_client.load(std::sync::atomic::Ordering::Relaxed),
                        bytes_out: traffic.to_server.load(std::sync::atomic::Ordering::Relaxed),
                        exit,
                    }));
                match outcome {
                    Ok(end) => {
                        log_end(client_id, session_id, &end);
                        // One session per control connection: closing the
                        // socket is what lets the client exit.
                        return Ok(());
                    }
                    Err(SessionOpenError::Refused(reason)) => {
                        warn!(session = session_id, "server refused the session: {reason}");
                        writer
                            .send(&ServerMessage::Failure {
                                rid,
                                reason: "Session open refused by peer".into(),
                            })
                            .await?;
                    }
                    Err(SessionOpenError::Local(reason)) => {
                        writer.send(&ServerMessage::Failure { rid, reason }).await?;
                    }
                    // The client has its answer (a denial, on its stderr).
                    Err(SessionOpenError::Answered) => return Ok(()),
                }
            }
            ClientMessage::Terminate { rid } => {
                let outcome = requester
                    .decide_control(master, audit::ControlOperation::Terminate)
                    .await;
                if !matches!(outcome, Outcome::Allow { .. }) {
                    writer.send(&refusal(rid, &outcome)).await?;
                    continue;
                }
                info!(client = client_id, "termination requested (-O exit)");
                // The client takes EOF as success too, so a lost OK is fine.
                let _ = writer.send(&ServerMessage::Ok { rid }).await;
                master.shutdown("master terminated by request (-O exit)");
                return Ok(());
            }
            ClientMessage::StopListening { rid } => {
                let outcome = requester
                    .decide_control(master, audit::ControlOperation::StopListening)
                    .await;
                if !matches!(outcome, Outcome::Allow { .. }) {
                    writer.send(&refusal(rid, &outcome)).await?;
                    continue;
                }
                info!(client = client_id, "stop listening requested (-O stop)");
                master.stop_listening();
                writer.send(&ServerMessage::Ok { rid }).await?;
            }
            ClientMessage::NewStdioForward { rid, request } => {
                let Some(fds) =
                    receive_passed_fds(reader, writer, rid, wire::StdioForwardRequest::FD_COUNT)
                        .await?
                else {
                    continue;
                };
                let target = request.target.to_string();
                let outcome = requester
                    .decide(
                        master,
                        RequestKind::StdioForward,
                        Some(&target),
                        audit::RequestKind::StdioForward {
                            forward: target.clone(),
                        },
                    )
                    .await
                    .0;
                if !matches!(outcome, Outcome::Allow { .. }) {
                    // No fallback exists for -W: the client stops here.
                    writer.send(&refusal(rid, &outcome)).await?;
                    continue;
                }
                let session_id = master.next_session_id();
                let description = format!("stdio forward to {}", request.target);
                info!(client = client_id, session = session_id, "{description}");
                let _guard = master.register_session(
                    session_id,
                    format!("{description} by {}", requester.peer.describe_chain()),
                );
                let channel = match forward::open_channel(
                    &master.upstream,
                    &request.target,
                    forward::stdio_origin(),
                )
                .await
                {
                    Ok(channel) => channel,
                    Err(e) => {
                        warn!(
                            session = session_id,
                            "server refused stdio forward to {}: {e}", request.target
                        );
                        writer
                            .send(&ServerMessage::Failure {
                                rid,
                                reason: "Session open refused by peer".into(),
                            })
                            .await?;
                        continue;
                    }
                };
                let mut fds = fds.into_iter();
                let (Some(stdin), Some(stdout)) = (fds.next(), fds.next()) else {
                    return Err(ReadError::MissingFds.into());
                };
                let (source, sink) = (InputSource::new(stdin)?, OutputSink::new(stdout)?);
                writer
                    .send(&ServerMessage::SessionOpened { rid, session_id })
                    .await?;
                let mut shutdown = master.shutdown.subscribe();
                let cancel = async {
                    tokio::select! {
                        _ = reader.peer_closed_or_readable() => {}
                        _ = shutdown.changed() => {}
                    }
                };
                let buffer = SpillBuffer::new(
                    Arc::clone(&master.spill_limits),
                    format!("session {session_id}"),
                );
                forward::bridge(channel, source, sink, cancel, buffer).await;
                // No EXIT_MESSAGE for a stdio forward: closing is the end.
                info!(
                    client = client_id,
                    session = session_id,
                    "stdio forward ended"
                );
                return Ok(());
            }
            ClientMessage::OpenForward { rid, spec } => {
                let description = forward::describe_spec(&spec);
                let asked = Asked {
                    kind: forward_kind(&spec),
                    command: Some(&description),
                    local_port: forward::local_tcp_port(&spec),
                };
                let (outcome, request_id) = requester
                    .decide_asked(master, &asked, audited_forward(&spec))
                    .await;
                if !matches!(outcome, Outcome::Allow { .. }) {
                    writer.send(&refusal(rid, &outcome)).await?;
                    continue;
                }
                let opened = master
                    .forwards
                    .open(spec, &master.upstream, &master.remote_routes)
                    .await;
                if !matches!(opened, OpenResult::Failed(_)) {
                    master
                        .audit
                        .record(audit::Event::ForwardOpen(audit::ForwardOpen {
                            client: client_id,
                            request: request_id,
                            spec: description.clone(),
                        }));
                }
                let reply = match opened {
                    OpenResult::Opened => ServerMessage::Ok { rid },
                    OpenResult::RemotePort(port) => ServerMessage::RemotePort { rid, port },
                    OpenResult::Failed(reason) => ServerMessage::Failure { rid, reason },
                };
                master.recount_active();
                writer.send(&reply).await?;
            }
            ClientMessage::CloseForward { rid, spec } => {
                let description = forward::describe_spec(&spec);
                // Cancelling is control of the master, as -O exit is: a
                // rule for opening forwards does not cover it.
                let outcome = requester
                    .decide(
                        master,
                        RequestKind::Control,
                        Some("cancel"),
                        audit::RequestKind::Control {
                            operation: audit::ControlOperation::CancelForward,
                            forward: Some(description.clone()),
                        },
                    )
                    .await
                    .0;
                if !matches!(outcome, Outcome::Allow { .. }) {
                    writer.send(&refusal(rid, &outcome)).await?;
                    continue;
                }
                let reply = match master
                    .forwards
                    .close(&spec, &master.upstream, &master.remote_routes)
                    .await
                {
                    Ok(()) => {
                        master
                            .audit
                            .record(audit::Event::ForwardClose(audit::ForwardClose {
                                spec: description.clone(),
                                reason: "cancelled (-O cancel)".into(),
                            }));
                        ServerMessage::Ok { rid }
                    }
                    Err(reason) => ServerMessage::Failure { rid, reason },
                };
                master.recount_active();
                writer.send(&reply).await?;
            }
            ClientMessage::Proxy { rid } => {
                // A proxy client speaks raw SSH connection-protocol packets
                // and can open any channel or global request it likes: the
                // protocol has no room for a per-request answer a client
                // would expect. So entering proxy mode is a decision of its
                // own that only a rule naming the kind "proxy" can allow;
                // inside, the translation layer still decides and audits
                // each exec/shell/subsystem, channel open and forward.
                let outcome = requester
                    .decide(master, RequestKind::Proxy, None, audit::RequestKind::Proxy)
                    .await
                    .0;
                if !matches!(outcome, Outcome::Allow { .. }) {
                    writer.send(&refusal(rid, &outcome)).await?;
                    continue;
                }
                writer.send(&ServerMessage::Proxy { rid }).await?;
                info!(client = client_id, "proxy mode");
                // The connection speaks SSH packets from now on; it ends
                // with the proxy.
                return match crate::proxy::serve(
                    reader,
                    writer.clone(),
                    Arc::clone(master),
                    Arc::clone(requester),
                )
                .await
                {
                    Ok(()) => Ok(()),
                    Err(crate::proxy::ProxyError::Read(e)) => Err(e.into()),
                    Err(e) => Err(CloseReason::Proxy(e)),
                };
            }
            ClientMessage::ExtInfo { rid, name } => {
                // What the master knows of every session (commands, cwd)
                // and forgetting answers are its owner's: another uid let
                // in by a `peers` rule needs a control decision for them.
                if requester.peer.uid != rustix::process::getuid().as_raw() {
                    let outcome = requester
                        .decide(
                            master,
                            RequestKind::Control,
                            Some(name.as_str()),
                            audit::RequestKind::Control {
                                operation: audit::ControlOperation::Info,
                                forward: None,
                            },
                        )
                        .await
                        .0;
                    if !matches!(outcome, Outcome::Allow { .. }) {
                        writer.send(&refusal(rid, &outcome)).await?;
                        continue;
                    }
                }
                let (supported, text) = match name.as_str() {
                    "connection" => (true, master.describe_connection()),
                    "channels" => (true, master.describe_sessions().replace("\r\n", "\n")),
                    // muxguard's own: `muxguard status` and `muxguard forget`.
                    "muxguard-status" => (true, master.describe_status()),
                    "muxguard-forget" => {
                        let dropped = master.prompts.forget();
                        info!(
                            client = client_id,
                            "forgot {dropped} remembered answer(s) on request"
                        );
                        (true, format!("forgot {dropped} remembered answer(s)\n"))
                    }
                    _ => (false, String::new()),
                };
                writer
                    .send(&ServerMessage::ExtInfo {
                        rid,
                        supported,
                        text,
                    })
                    .await?;
            }
            ClientMessage::Unknown { rid, .. } => {
                writer
                    .send(&ServerMessage::Failure {
                        rid,
                        reason: "unsupported request".into(),
                    })
                    .await?;
            }
        }
    }
}

/// Receives the descriptors that follow a request and prepares them for
/// use. `None`: they cannot be used, and the client has been told so.
async fn receive_passed_fds(
    reader: &mut ControlReader,
    writer: &ControlWriter,
    rid: u32,
    count: usize,
) -> Result<Option<Vec<passed_fd::PassedFd>>, CloseReason> {
    let fds = reader.receive_fds(count).await?;
    match passed_fd::adopt(fds) {
        Ok(fds) => Ok(Some(fds)),
        Err(e) => {
            writer
                .send(&ServerMessage::Failure {
                    rid,
                    reason: format!("cannot use passed file descriptors: {e}"),
                })
                .await?;
            Ok(None)
        }
    }
}

fn forward_kind(spec: &wire::ForwardSpec) -> RequestKind {
    match spec.kind {
        wire::ForwardKind::Local => RequestKind::ForwardLocal,
        wire::ForwardKind::Remote => RequestKind::ForwardRemote,
        wire::ForwardKind::Dynamic => RequestKind::ForwardDynamic,
    }
}

/// A final refusal of a session. Refusing the request itself would make the
/// stock client authenticate on its own, so the session is "opened", the
/// reason is written to the client's stderr and it ends with status 255:
/// the command never runs.
async fn deny_session(
    writer: &ControlWriter,
    rid: u32,
    session_id: u32,
    fds: Vec<passed_fd::PassedFd>,
    reason: &str,
) -> Result<(), CloseReason> {
    deny_opened_session(writer, rid, session_id, fds.into_iter().nth(2), reason).await
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
        // \r\n: a tty client is in raw mode by now.
        let message = bytes::Bytes::from(format!("muxguard: denied by policy: {reason}\r\n"));
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

fn describe_request(request: &wire::SessionRequest) -> String {
    let tty = if request.want_tty { " (tty)" } else { "" };
    if request.subsystem {
        format!("subsystem {}{tty}", request.command)
    } else if request.command.is_empty() {
        format!("shell{tty}")
    } else {
        format!("exec {:?}{tty}", request.command)
    }
}

fn log_end(client_id: u64, session_id: u32, end: &SessionEnd) {
    match end {
        SessionEnd::Finished { exit_status, .. } => {
            info!(
                client = client_id,
                session = session_id,
                "session finished, exit status {exit_status:?}"
            )
        }
        SessionEnd::ClientGone => {
            info!(client = client_id, session = session_id, "client went away")
        }
        SessionEnd::EscapeTerminated => {
            info!(
                client = client_id,
                session = session_id,
                "session terminated with ~."
            )
        }
        SessionEnd::MasterShutdown(reason) => {
            info!(
                client = client_id,
                session = session_id,
                "session ended: {reason}"
            )
        }
    }
}
