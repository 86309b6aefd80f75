//! One handler per control request, as OpenSSH's mux.c has one per message
//! type: each decides (through [`Requester`]), refuses with the reason or
//! acts, and tells the connection loop whether to read the next request.

use std::sync::Arc;
use std::time::Instant;

use tracing::{info, warn};

use super::fdpass::{ControlReader, ControlWriter, ReadError};
use super::passed_fd::{self, InputSource, OutputSink, PassedFd};
use super::server::{CloseReason, Requester, deny_opened_session};
use super::wire::{self, ClientMessage, ServerMessage};
use crate::access::decide::{Asked, Outcome};
use crate::access::policy::RequestKind;
use crate::audit::chain as audit;
use crate::mux::session::{self, SessionEnd, SessionOpenError, SessionStart};
use crate::spill::SpillBuffer;
use crate::state::{MasterState, Traffic};
use crate::upstream::forward::{self, OpenResult};

/// What the connection does after a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Flow {
    /// Read the next request.
    Next,
    /// The connection is done (a session ended, proxy mode ended, the
    /// master was told to exit): close it, which lets the client exit.
    Close,
}

/// One established control connection, after HELLO.
pub(super) struct Connection<'a> {
    pub(super) reader: &'a mut ControlReader,
    pub(super) writer: &'a ControlWriter,
    pub(super) master: &'a Arc<MasterState>,
    pub(super) requester: &'a Arc<Requester>,
    /// When the request being handled was read from the client.
    pub(super) read_at: Instant,
    /// The descriptors of a first request that is a session, taken in
    /// (and adopted) while the peer was being identified.
    pub(super) first_fds: Option<Result<std::io::Result<Vec<PassedFd>>, ReadError>>,
}

impl Connection<'_> {
    pub(super) async fn handle(&mut self, message: ClientMessage) -> Result<Flow, CloseReason> {
        match message {
            ClientMessage::Hello { .. } => Err(CloseReason::SecondHello),
            ClientMessage::AliveCheck { rid } => {
                self.writer.send(&super::server::alive(rid)).await?;
                Ok(Flow::Next)
            }
            ClientMessage::NewSession { rid, request } => self.new_session(rid, request).await,
            ClientMessage::Terminate { rid } => self.terminate(rid).await,
            ClientMessage::StopListening { rid } => self.stop_listening(rid).await,
            ClientMessage::NewStdioForward { rid, request } => {
                self.stdio_forward(rid, request).await
            }
            ClientMessage::OpenForward { rid, spec } => self.open_forward(rid, spec).await,
            ClientMessage::CloseForward { rid, spec } => self.close_forward(rid, spec).await,
            ClientMessage::Proxy { rid } => self.proxy(rid).await,
            ClientMessage::ExtInfo { rid, name } => self.ext_info(rid, &name).await,
            ClientMessage::Unknown { rid, .. } => {
                self.fail(rid, "unsupported request").await?;
                Ok(Flow::Next)
            }
        }
    }

    fn client_id(&self) -> u64 {
        self.requester.client_id
    }

    async fn fail(&self, rid: u32, reason: impl Into<String>) -> Result<(), CloseReason> {
        let reason = reason.into();
        self.writer
            .send(&ServerMessage::Failure { rid, reason })
            .await?;
        Ok(())
    }

    /// Sends the refusal unless `outcome` allows; true if it refused.
    async fn refused(&self, rid: u32, outcome: &Outcome) -> Result<bool, CloseReason> {
        if outcome.is_allow() {
            return Ok(false);
        }
        self.writer
            .send(&ServerMessage::PermissionDenied {
                rid,
                reason: format!("muxguard policy: {}", outcome.reason()),
            })
            .await?;
        Ok(true)
    }

    /// Receives the descriptors that follow a request and prepares them
    /// for use. `None`: they cannot be used, and the client has been told.
    async fn passed_fds(
        &mut self,
        rid: u32,
        count: usize,
    ) -> Result<Option<Vec<PassedFd>>, CloseReason> {
        let adopted = match self.first_fds.take() {
            Some(taken) => taken?,
            None => passed_fd::adopt(self.reader.receive_fds(count).await?),
        };
        match adopted {
            Ok(fds) => Ok(Some(fds)),
            Err(e) => {
                self.fail(rid, format!("cannot use passed file descriptors: {e}"))
                    .await?;
                Ok(None)
            }
        }
    }

    async fn new_session(
        &mut self,
        rid: u32,
        request: wire::SessionRequest,
    ) -> Result<Flow, CloseReason> {
        let Some(fds) = self.passed_fds(rid, wire::SessionRequest::FD_COUNT).await? else {
            return Ok(Flow::Next);
        };
        let master = self.master;
        if !master.accepting_sessions() {
            self.fail(rid, "master is shutting down").await?;
            return Ok(Flow::Next);
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
        // The decision record goes to disk while the session is set up;
        // the session waits for it as `session::run` says.
        let (outcome, request_id, decision_record) = self
            .requester
            .decide_deferred(
                master,
                &asked,
                audited_session(&request),
                Some(self.read_at),
            )
            .await;
        match outcome {
            Outcome::Allow { .. } => {}
            Outcome::Direct { .. } => {
                self.requester.log_outcome(&asked, &outcome);
                // The stock client answers this by connecting on its own:
                // "not through me", not "never".
                self.writer
                    .send(&ServerMessage::PermissionDenied {
                        rid,
                        reason: "Permission denied".into(),
                    })
                    .await?;
                return Ok(Flow::Next);
            }
            Outcome::Deny { ref reason } => {
                self.requester.log_outcome(&asked, &outcome);
                // Refusing the request itself would make the stock client
                // authenticate on its own, so the session is "opened", the
                // reason goes to its stderr and it ends with status 255.
                let session_id = master.next_session_id();
                let stderr = fds.into_iter().nth(2);
                deny_opened_session(self.writer, rid, session_id, stderr, reason).await?;
                return Ok(Flow::Close);
            }
        }
        let session_id = master.next_session_id();
        let command = describe_request(&request);
        let described = format!("{command} by {}", self.requester.peer.describe_chain());
        let _guard = master.register_session(session_id, described);
        let client_id = self.client_id();
        let requester = Arc::clone(self.requester);
        let asked_command = asked.command.map(str::to_owned);
        let announce = session::Announce::new(move || {
            let asked = Asked {
                kind,
                command: asked_command.as_deref(),
                local_port: None,
            };
            requester.log_outcome(&asked, &outcome);
            info!(
                client = client_id,
                session = session_id,
                "new session: {command}"
            );
            master
                .audit
                .record(audit::Event::SessionOpen(audit::SessionOpen {
                    client: client_id,
                    request: request_id,
                    session: u64::from(session_id),
                }));
        });
        let started = std::time::Instant::now();
        let traffic = Arc::new(Traffic::default());
        master.attach_traffic(session_id, Arc::clone(&traffic));
        let outcome = session::run(SessionStart {
            rid,
            session_id,
            announce,
            decision_record,
            request,
            fds,
            control: self.writer.clone(),
            reader: self.reader,
            master: Arc::clone(master),
            requester: Arc::clone(self.requester),
            traffic: Arc::clone(&traffic),
        })
        .await;
        // One session per control connection: once it is over (or was
        // refused and told so), the client may go.
        if matches!(outcome, Ok(_) | Err(SessionOpenError::Answered)) {
            self.writer.hang_up();
        }
        master
            .audit
            .record(session_close(session_id, started, &traffic, &outcome));
        match outcome {
            Ok(end) => {
                log_end(self.client_id(), session_id, &end);
                Ok(Flow::Close)
            }
            Err(SessionOpenError::Refused(reason)) => {
                warn!(session = session_id, "server refused the session: {reason}");
                self.fail(rid, "Session open refused by peer").await?;
                Ok(Flow::Next)
            }
            Err(SessionOpenError::Local(reason)) => {
                self.fail(rid, reason).await?;
                Ok(Flow::Next)
            }
            // The client has its answer (a denial, on its stderr).
            Err(SessionOpenError::Answered) => Ok(Flow::Close),
        }
    }

    /// Decides a `control` request; false if it was refused (and the client
    /// told why).
    async fn control_allowed(
        &self,
        rid: u32,
        operation: audit::ControlOperation,
    ) -> Result<bool, CloseReason> {
        let outcome = self.requester.decide_control(self.master, operation).await;
        Ok(!self.refused(rid, &outcome).await?)
    }

    async fn terminate(&mut self, rid: u32) -> Result<Flow, CloseReason> {
        if !self
            .control_allowed(rid, audit::ControlOperation::Terminate)
            .await?
        {
            return Ok(Flow::Next);
        }
        info!(client = self.client_id(), "termination requested (-O exit)");
        // The client takes EOF as success too, so a lost OK is fine.
        let _ = self.writer.send(&ServerMessage::Ok { rid }).await;
        self.master
            .shutdown("master terminated by request (-O exit)");
        Ok(Flow::Close)
    }

    async fn stop_listening(&mut self, rid: u32) -> Result<Flow, CloseReason> {
        if !self
            .control_allowed(rid, audit::ControlOperation::StopListening)
            .await?
        {
            return Ok(Flow::Next);
        }
        info!(
            client = self.client_id(),
            "stop listening requested (-O stop)"
        );
        // Answered once the socket is gone, as OpenSSH's master does: a
        // client told "stopped" finds no socket.
        self.master.stop_listening().await;
        let answered = self.writer.send(&ServerMessage::Ok { rid }).await;
        self.master.stop_answered();
        answered?;
        Ok(Flow::Next)
    }

    async fn stdio_forward(
        &mut self,
        rid: u32,
        request: wire::StdioForwardRequest,
    ) -> Result<Flow, CloseReason> {
        let Some(fds) = self
            .passed_fds(rid, wire::StdioForwardRequest::FD_COUNT)
            .await?
        else {
            return Ok(Flow::Next);
        };
        let master = self.master;
        let target = request.target.to_string();
        let outcome = self
            .requester
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
        // No fallback exists for -W: a refused client stops here.
        if self.refused(rid, &outcome).await? {
            return Ok(Flow::Next);
        }
        let session_id = master.next_session_id();
        let description = format!("stdio forward to {}", request.target);
        info!(
            client = self.client_id(),
            session = session_id,
            "{description}"
        );
        let _guard = master.register_session(
            session_id,
            format!("{description} by {}", self.requester.peer.describe_chain()),
        );
        let opened =
            forward::open_channel(&master.upstream, &request.target, forward::stdio_origin()).await;
        let channel = match opened {
            Ok(channel) => channel,
            Err(e) => {
                warn!(
                    session = session_id,
                    "server refused stdio forward to {}: {e}", request.target
                );
                self.fail(rid, "Session open refused by peer").await?;
                return Ok(Flow::Next);
            }
        };
        let mut fds = fds.into_iter();
        let (Some(stdin), Some(stdout)) = (fds.next(), fds.next()) else {
            return Err(ReadError::MissingFds.into());
        };
        let (source, sink) = (InputSource::new(stdin)?, OutputSink::new(stdout)?);
        self.writer
            .send(&ServerMessage::SessionOpened { rid, session_id })
            .await?;
        let mut shutdown = master.shutdown.subscribe();
        let reader = &mut *self.reader;
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
            client = self.client_id(),
            session = session_id,
            "stdio forward ended"
        );
        Ok(Flow::Close)
    }

    async fn open_forward(
        &mut self,
        rid: u32,
        spec: wire::ForwardSpec,
    ) -> Result<Flow, CloseReason> {
        let reply = match open_forward(self.master, self.requester, spec).await {
            Decided::Refused(outcome) => {
                self.refused(rid, &outcome).await?;
                return Ok(Flow::Next);
            }
            Decided::Done(OpenResult::Opened) => ServerMessage::Ok { rid },
            Decided::Done(OpenResult::RemotePort(port)) => ServerMessage::RemotePort { rid, port },
            Decided::Done(OpenResult::Failed(reason)) => ServerMessage::Failure { rid, reason },
        };
        self.writer.send(&reply).await?;
        Ok(Flow::Next)
    }

    async fn close_forward(
        &mut self,
        rid: u32,
        spec: wire::ForwardSpec,
    ) -> Result<Flow, CloseReason> {
        let closed = cancel_forward(self.master, self.requester, &spec, "-O cancel").await;
        let reply = match closed {
            Decided::Refused(outcome) => {
                self.refused(rid, &outcome).await?;
                return Ok(Flow::Next);
            }
            Decided::Done(Ok(())) => ServerMessage::Ok { rid },
            Decided::Done(Err(reason)) => ServerMessage::Failure { rid, reason },
        };
        self.writer.send(&reply).await?;
        Ok(Flow::Next)
    }

    async fn proxy(&mut self, rid: u32) -> Result<Flow, CloseReason> {
        // A proxy client speaks raw SSH connection-protocol packets and can
        // open any channel or global request it likes: the protocol has no
        // room for a per-request answer a client would expect. So entering
        // proxy mode is a decision of its own that only a rule naming the
        // kind "proxy" can allow; inside, the translation layer still
        // decides and audits each exec/shell/subsystem, channel open and
        // forward.
        let outcome = self
            .requester
            .decide(
                self.master,
                RequestKind::Proxy,
                None,
                audit::RequestKind::Proxy,
            )
            .await
            .0;
        if self.refused(rid, &outcome).await? {
            return Ok(Flow::Next);
        }
        self.writer.send(&ServerMessage::Proxy { rid }).await?;
        info!(client = self.client_id(), "proxy mode");
        // The connection speaks SSH packets from now on; it ends with the
        // proxy.
        let served = crate::mux::proxy::serve(
            self.reader,
            self.writer.clone(),
            Arc::clone(self.master),
            Arc::clone(self.requester),
        )
        .await;
        match served {
            Ok(()) => Ok(Flow::Close),
            Err(crate::mux::proxy::ProxyError::Read(e)) => Err(e.into()),
            Err(e) => Err(CloseReason::Proxy(e)),
        }
    }

    async fn ext_info(&mut self, rid: u32, name: &str) -> Result<Flow, CloseReason> {
        let master = self.master;
        // What the master knows of every session (commands, cwd) and
        // forgetting answers are its owner's: another uid let in by a
        // `peers` rule needs a control decision for them.
        if self.requester.peer.uid != rustix::process::getuid().as_raw() {
            let outcome = self
                .requester
                .decide(
                    master,
                    RequestKind::Control,
                    Some(name),
                    audit::RequestKind::Control {
                        operation: audit::ControlOperation::Info,
                        forward: None,
                    },
                )
                .await
                .0;
            if self.refused(rid, &outcome).await? {
                return Ok(Flow::Next);
            }
        }
        let (supported, text) = match name {
            "connection" => (true, master.describe_connection()),
            "channels" => (true, master.describe_sessions().replace("\r\n", "\n")),
            // muxguard's own: `muxguard status` and `muxguard forget`.
            "muxguard-status" => (true, master.describe_status()),
            "muxguard-forget" => {
                let dropped = master.prompts.forget();
                info!(
                    client = self.client_id(),
                    "forgot {dropped} remembered answer(s) on request"
                );
                (true, format!("forgot {dropped} remembered answer(s)\n"))
            }
            _ => (false, String::new()),
        };
        self.writer
            .send(&ServerMessage::ExtInfo {
                rid,
                supported,
                text,
            })
            .await?;
        Ok(Flow::Next)
    }
}

/// What became of a request the policy decides before the master acts.
pub(super) enum Decided<T> {
    /// Not allowed; the outcome says why.
    Refused(Outcome),
    /// Allowed and carried out, with this result.
    Done(T),
}

/// Opens a forward for `requester` if the policy allows it: decided as its
/// kind (`forward-local`, `-remote`, `-dynamic`), audited (the request, its
/// decision and, once it listens, `forward_open`). Shared by `-O forward`
/// and a session's `~C` command line.
pub(super) async fn open_forward(
    master: &Arc<MasterState>,
    requester: &Requester,
    spec: wire::ForwardSpec,
) -> Decided<OpenResult> {
    let description = forward::describe_spec(&spec);
    let asked = Asked {
        kind: forward_kind(&spec),
        command: Some(&description),
        local_port: forward::local_tcp_port(&spec),
    };
    let (outcome, request_id) = requester
        .decide_asked(master, &asked, audited_forward(&spec))
        .await;
    if !outcome.is_allow() {
        return Decided::Refused(outcome);
    }
    let opened = master
        .forwards
        .open(spec, &master.upstream, &master.remote_routes)
        .await;
    if !matches!(opened, OpenResult::Failed(_)) {
        master
            .audit
            .record(audit::Event::ForwardOpen(audit::ForwardOpen {
                client: requester.client_id,
                request: request_id,
                spec: description,
            }));
    }
    master.recount_active();
    Decided::Done(opened)
}

/// Cancels the open forward `spec` (an exact match) for `requester` if the
/// policy allows it. Cancelling is control of the master, as `-O exit` is:
/// a rule for opening forwards does not cover it. `how` (`-O cancel`,
/// `~C`) goes into the `forward_close` record's reason. Shared by
/// `-O cancel` and a session's `~C` command line.
pub(super) async fn cancel_forward(
    master: &Arc<MasterState>,
    requester: &Requester,
    spec: &wire::ForwardSpec,
    how: &str,
) -> Decided<Result<(), String>> {
    let description = forward::describe_spec(spec);
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
    if !outcome.is_allow() {
        return Decided::Refused(outcome);
    }
    let closed = master
        .forwards
        .close(spec, &master.upstream, &master.remote_routes)
        .await;
    if closed.is_ok() {
        master
            .audit
            .record(audit::Event::ForwardClose(audit::ForwardClose {
                spec: description,
                reason: format!("cancelled ({how})"),
            }));
    }
    master.recount_active();
    Decided::Done(closed)
}

/// The audit record of a session's end.
fn session_close(
    session_id: u32,
    started: std::time::Instant,
    traffic: &Traffic,
    outcome: &Result<SessionEnd, SessionOpenError>,
) -> audit::Event {
    use std::sync::atomic::Ordering::Relaxed;
    let exit = match outcome {
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
    audit::Event::SessionClose(audit::SessionClose {
        session: u64::from(session_id),
        duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        bytes_in: traffic.to_client.load(Relaxed),
        bytes_out: traffic.to_server.load(Relaxed),
        exit,
    })
}

fn forward_kind(spec: &wire::ForwardSpec) -> RequestKind {
    match spec.kind {
        wire::ForwardKind::Local => RequestKind::ForwardLocal,
        wire::ForwardKind::Remote => RequestKind::ForwardRemote,
        wire::ForwardKind::Dynamic => RequestKind::ForwardDynamic,
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
