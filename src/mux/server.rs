//! One control connection, from accept to close: the HELLO exchange, then
//! one request at a time, answered in order (the stock client never
//! pipelines, and OpenSSH stops reading a connection while a reply is
//! deferred). A malformed packet closes this connection only, with the
//! reason logged; the master goes on serving everyone else.

use std::sync::Arc;

use tokio::net::UnixStream;
use tracing::{debug, info, warn};

use super::fdpass::{ControlReader, ControlWriter, ReadError};
use super::passed_fd::{self, InputSource, OutputSink};
use super::wire::{self, ClientMessage, ServerMessage};
use crate::access::peer::Peer;
use crate::master::MasterState;
use crate::spill::SpillBuffer;
use crate::upstream::forward::{self, OpenResult};
use crate::upstream::session::{self, SessionEnd, SessionOpenError, SessionStart};

/// Serves one accepted control connection until it ends.
pub async fn serve_connection(
    stream: UnixStream,
    peer: Peer,
    master: Arc<MasterState>,
    client_id: u64,
) {
    let peer_pid = peer.pid;
    let stream = Arc::new(stream);
    let mut reader = ControlReader::new(Arc::clone(&stream));
    let writer = ControlWriter::new(stream);
    match serve(&mut reader, &writer, &master, client_id).await {
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
enum CloseReason {
    #[error("{0}")]
    Read(#[from] ReadError),
    #[error("first message was {0}, not HELLO")]
    NoHello(&'static str),
    #[error("client speaks mux protocol version {0}, not 4")]
    WrongVersion(u32),
    #[error("second HELLO")]
    SecondHello,
    #[error("write failed: {0}")]
    Write(#[from] std::io::Error),
}

async fn serve(
    reader: &mut ControlReader,
    writer: &ControlWriter,
    master: &Arc<MasterState>,
    client_id: u64,
) -> Result<(), CloseReason> {
    // Our HELLO goes first, before reading anything: the client also writes
    // before it reads, so neither side can deadlock.
    writer
        .send(&ServerMessage::Hello { extensions: vec![] })
        .await?;
    let Some(first) = reader.read_packet().await? else {
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
                let fds = reader.receive_fds(wire::SessionRequest::FD_COUNT).await?;
                let fds = match passed_fd::adopt(fds) {
                    Ok(fds) => fds,
                    Err(e) => {
                        writer
                            .send(&ServerMessage::Failure {
                                rid,
                                reason: format!("cannot use passed file descriptors: {e}"),
                            })
                            .await?;
                        continue;
                    }
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
                let session_id = master.next_session_id();
                let command = describe_request(&request);
                info!(
                    client = client_id,
                    session = session_id,
                    "new session: {command}"
                );
                let _guard = master.register_session(session_id, command);
                let outcome = session::run(SessionStart {
                    rid,
                    session_id,
                    request,
                    fds,
                    control: writer.clone(),
                    reader,
                    master: Arc::clone(master),
                })
                .await;
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
                }
            }
            ClientMessage::Terminate { rid } => {
                info!(client = client_id, "termination requested (-O exit)");
                // The client takes EOF as success too, so a lost OK is fine.
                let _ = writer.send(&ServerMessage::Ok { rid }).await;
                master.shutdown("master terminated by request (-O exit)");
                return Ok(());
            }
            ClientMessage::StopListening { rid } => {
                info!(client = client_id, "stop listening requested (-O stop)");
                master.stop_listening();
                writer.send(&ServerMessage::Ok { rid }).await?;
            }
            ClientMessage::NewStdioForward { rid, request } => {
                let fds = reader
                    .receive_fds(wire::StdioForwardRequest::FD_COUNT)
                    .await?;
                let fds = match passed_fd::adopt(fds) {
                    Ok(fds) => fds,
                    Err(e) => {
                        writer
                            .send(&ServerMessage::Failure {
                                rid,
                                reason: format!("cannot use passed file descriptors: {e}"),
                            })
                            .await?;
                        continue;
                    }
                };
                let session_id = master.next_session_id();
                let description = format!("stdio forward to {}", request.target);
                info!(client = client_id, session = session_id, "{description}");
                let _guard = master.register_session(session_id, description);
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
                let reply = match master
                    .forwards
                    .open(spec, &master.upstream, &master.remote_routes)
                    .await
                {
                    OpenResult::Opened => ServerMessage::Ok { rid },
                    OpenResult::RemotePort(port) => ServerMessage::RemotePort { rid, port },
                    OpenResult::Failed(reason) => ServerMessage::Failure { rid, reason },
                };
                master.recount_active();
                writer.send(&reply).await?;
            }
            ClientMessage::CloseForward { rid, spec } => {
                let reply = match master
                    .forwards
                    .close(&spec, &master.upstream, &master.remote_routes)
                    .await
                {
                    Ok(()) => ServerMessage::Ok { rid },
                    Err(reason) => ServerMessage::Failure { rid, reason },
                };
                master.recount_active();
                writer.send(&reply).await?;
            }
            ClientMessage::Proxy { rid } => {
                // A proxy client speaks raw SSH connection-protocol packets
                // and can open any channel or global request it likes, past
                // every per-request decision this master makes. It stays
                // refused until a policy explicitly allows it for a host.
                writer
                    .send(&ServerMessage::PermissionDenied {
                        rid,
                        reason: "Permission denied".into(),
                    })
                    .await?;
            }
            ClientMessage::ExtInfo { rid, .. } | ClientMessage::Unknown { rid, .. } => {
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
        SessionEnd::Finished { exit_status } => {
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
