//! One multiplexed session: bridging the client's passed stdin/stdout/stderr
//! to an upstream session channel, with pty, environment, window changes,
//! escapes and exit status, torn down in the order that lets pipes see all
//! output before the client exits.
//!
//! The channel is always drained at once into per-stream output queues, so
//! russh's session loop never waits on a slow client (one unread channel
//! would otherwise freeze the whole connection).

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use russh::ChannelMsg;
use russh::client::Msg;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::audit::recorder::PendingRecord;
use crate::mux::cmdline::{self, Command};
use crate::mux::escape::{EscapeAction, EscapeFilter, Filtered, Local};
use crate::mux::fdpass::{ControlReader, ControlWriter};
use crate::mux::passed_fd::{InputSource, OutputSink, PassedFd};
use crate::mux::requests::{self, Decided};
use crate::mux::server::{self, Requester};
use crate::mux::wire::{self, ServerMessage, SessionRequest};
use crate::spill::SpillBuffer;
use crate::state::{MasterState, Traffic};
use crate::upstream::lanes::ChannelClass;
use crate::upstream::ttymodes;
use crate::upstream::uplink::Uplink;

/// Input is read in chunks of at most one SSH packet's worth.
const READ_CHUNK: usize = 32 * 1024;

/// How a session ended, for logs.
#[derive(Debug)]
pub enum SessionEnd {
    /// The server closed the channel; output was delivered.
    Finished {
        exit_status: Option<u32>,
        /// The signal's name when the remote command was killed.
        exit_signal: Option<String>,
    },
    /// The client went away (killed, or closed its socket).
    ClientGone,
    /// `~.` typed by the user.
    EscapeTerminated,
    /// The master is shutting down (server gone, `-O exit`, signal).
    MasterShutdown(String),
}

/// Everything needed to start a session once the client's request and fds
/// have been received.
pub struct SessionStart<'a> {
    pub rid: u32,
    pub session_id: u32,
    /// What logs and records the session's start: made once its command
    /// is on its way to the server, which need not wait for it.
    pub announce: Announce<'a>,
    /// The decision record on its way to the disk (`None`: already there):
    /// in the file before the command is asked for, on disk before its
    /// input or output flows.
    pub decision_record: Option<PendingRecord>,
    pub request: SessionRequest,
    pub fds: Vec<PassedFd>,
    pub control: ControlWriter,
    pub reader: &'a mut ControlReader,
    pub master: Arc<MasterState>,
    /// Who opened the session: `~C` requests are decided as theirs.
    pub requester: Arc<Requester>,
    pub traffic: Arc<Traffic>,
}

/// The log lines and audit record of a session's start, made once, as
/// soon as the command has been asked for, or at the latest when the
/// session ends, whatever ended it: a session's records never lack its
/// `session_open`.
pub struct Announce<'a>(Option<Box<dyn FnOnce() + Send + 'a>>);

impl<'a> Announce<'a> {
    pub fn new(announce: impl FnOnce() + Send + 'a) -> Self {
        Announce(Some(Box::new(announce)))
    }

    fn now(&mut self) {
        if let Some(announce) = self.0.take() {
            announce();
        }
    }
}

impl Drop for Announce<'_> {
    fn drop(&mut self) {
        self.now();
    }
}

/// Which channel request a CHANNEL_SUCCESS/FAILURE answers (they come back
/// in request order).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    Pty,
    Start(&'static str),
}

/// Opens the channel, sets it up and runs the session to its end. Errors
/// before SESSION_OPENED are returned to the caller, who answers FAILURE.
pub async fn run(start: SessionStart<'_>) -> Result<SessionEnd, SessionOpenError> {
    let SessionStart {
        rid,
        session_id,
        mut announce,
        decision_record,
        request,
        fds,
        control,
        reader,
        master,
        requester,
        traffic,
    } = start;
    let mut fds = fds.into_iter();
    let (Some(stdin), Some(stdout), Some(stderr)) = (fds.next(), fds.next(), fds.next()) else {
        return Err(SessionOpenError::Local(
            "did not receive file descriptors".into(),
        ));
    };

    let class = ChannelClass::of_session(request.want_tty);
    let opened = master
        .overflow
        .open_session(&master.upstream, &master.config, class)
        .await
        .map_err(SessionOpenError::Refused)?;
    if opened.wants_warm_lane {
        let master = Arc::clone(&master);
        tokio::spawn(async move { master.overflow.warm_lane(&master.config).await });
    }
    let (channel, connection, _lease) = (opened.channel, opened.handle, opened.lease);
    let warm_refill = opened.warm_refill;
    let pace = (class == ChannelClass::Bulk).then_some(opened.uplink);

    // A duplicate of a terminal stdin, for modes now and window size later.
    let tty_fd: Option<OwnedFd> = if request.want_tty {
        stdin.as_fd().try_clone_to_owned().ok()
    } else {
        None
    };

    let mut pending = std::collections::VecDeque::new();
    if let Err(e) = set_up(&channel, &request, &master, tty_fd.as_ref(), &mut pending).await {
        let _ = channel.close().await;
        return Err(SessionOpenError::Refused(e.to_string()));
    }

    let mut decision_record = decision_record;
    let asked = ask_command(
        &channel,
        &request,
        &master,
        &mut decision_record,
        &mut pending,
    )
    .await;
    // The request leaves when russh's connection task next runs: it goes
    // first, and everything else here happens while it is on its way.
    tokio::task::yield_now().await;
    // Past this point the session is open from the client's point of view,
    // as with OpenSSH's master, which answers once the channel is open and
    // before the server has accepted the command.
    if control
        .send(&ServerMessage::SessionOpened { rid, session_id })
        .await
        .is_err()
    {
        let _ = channel.close().await;
        return Ok(SessionEnd::ClientGone);
    }
    announce.now();
    // Set up while the request is on its way (output arrives a round trip
    // later at the earliest, and waits in the channel until read).
    let outputs = Outputs::start(stdout, stderr, &master, session_id);
    let failed = match asked {
        Err(text) => Some(text),
        Ok(()) => durably_recorded(&master, decision_record).await,
    };
    if let Some(text) = failed {
        let _ = channel.close().await;
        outputs.stderr.push(text);
        outputs.finish(Some(Duration::from_secs(2))).await;
        let _ = control
            .send(&ServerMessage::ExitMessage {
                session_id,
                exit_value: 255,
            })
            .await;
        return Err(SessionOpenError::Answered);
    }
    drop(warm_refill);

    let (mut upstream_rx, upstream_tx) = channel.split();
    let upstream_tx = Arc::new(upstream_tx);
    master.attach_buffers(
        session_id,
        vec![Arc::clone(&outputs.stdout), Arc::clone(&outputs.stderr)],
    );
    let (escape_tx, mut escape_rx) = mpsc::unbounded_channel::<Local>();
    let escape = if request.want_tty {
        EscapeFilter::from_wire(request.escape_char)
    } else {
        None
    };
    let input = spawn_input(
        stdin,
        escape,
        pace,
        Arc::clone(&upstream_tx),
        escape_tx,
        Arc::clone(&traffic),
    );

    let mut live = Live {
        session_id,
        escape_char: request.escape_char as u8,
        control,
        master,
        requester,
        connection,
        traffic,
        upstream_tx,
        stdout_queue: Arc::clone(&outputs.stdout),
        stderr_queue: Arc::clone(&outputs.stderr),
        pending,
        exit_status: None,
        exit_signal: None,
    };
    let end = live
        .serve(&mut upstream_rx, reader, &mut escape_rx, tty_fd.as_ref())
        .await;

    input.abort();
    let _ = input.await;
    match &end {
        // Deliver every byte before our copies close and the client is
        // released: `ssh host cmd | consumer` must see all output.
        SessionEnd::Finished { .. } => outputs.finish(None).await,
        _ => {
            let _ = live.upstream_tx.eof().await;
            let _ = live.upstream_tx.close().await;
            // Keep taking the channel's messages until it is gone so that
            // russh's loop never waits on us; output is discarded.
            tokio::spawn(async move { while upstream_rx.wait().await.is_some() {} });
            // Give the echo of `~.` or the shutdown reason a moment to reach
            // the terminal, but never wait on a stuck client.
            outputs.finish(Some(Duration::from_millis(500))).await;
        }
    }
    Ok(end)
}

/// Asks the server to start the command once the decision allowing it is
/// in the log file, then waits for that record to reach the disk: its
/// fdatasync overlaps the request's round trip, and nothing flows between
/// the command and the client before it is on disk. Returns what to tell
/// the client if the session cannot go on.
/// Asks the server to start the command once the decision is in the audit
/// log; `Err` with the text to show the client if it was not, or if the
/// server refused.
async fn ask_command(
    channel: &russh::Channel<Msg>,
    request: &SessionRequest,
    master: &MasterState,
    decision: &mut Option<PendingRecord>,
    pending: &mut std::collections::VecDeque<Pending>,
) -> Result<(), Bytes> {
    if let Some(record) = decision.as_mut()
        && let Some(reason) = server::refusal_if_unrecorded(master, record.written().await)
    {
        return Err(Bytes::from(server::denial_text(&reason)));
    }
    request_start(channel, request, pending)
        .await
        .map_err(|e| Bytes::from(format!("muxguard: the server refused the session: {e}\r\n")))
}

/// Waits until the decision is on disk, before a byte of the session flows;
/// the text to show the client if it could not be made durable.
async fn durably_recorded(master: &MasterState, decision: Option<PendingRecord>) -> Option<Bytes> {
    let reason = server::refusal_if_unrecorded(master, decision?.synced().await)?;
    Some(Bytes::from(server::denial_text(&format!(
        "{reason}; the command was stopped"
    ))))
}

/// The session's output streams and the tasks that write them to the
/// client's descriptors.
struct Outputs {
    stdout: Arc<SpillBuffer>,
    stderr: Arc<SpillBuffer>,
    writers: [JoinHandle<()>; 2],
}

impl Outputs {
    fn start(stdout: PassedFd, stderr: PassedFd, master: &MasterState, session_id: u32) -> Outputs {
        let (stdout, stdout_writer) =
            spawn_output(stdout, master, format!("session {session_id} stdout"));
        let (stderr, stderr_writer) =
            spawn_output(stderr, master, format!("session {session_id} stderr"));
        Outputs {
            stdout,
            stderr,
            writers: [stdout_writer, stderr_writer],
        }
    }

    /// Ends both streams and waits for what is queued to be written: all
    /// of it, or at most `limit`.
    async fn finish(self, limit: Option<Duration>) {
        self.stdout.close();
        self.stderr.close();
        let [stdout, stderr] = self.writers;
        let flush = async {
            let _ = stdout.await;
            let _ = stderr.await;
        };
        match limit {
            Some(limit) => {
                let _ = tokio::time::timeout(limit, flush).await;
            }
            None => flush.await,
        }
    }
}

/// The channel requests before the command: pty (with the client
/// terminal's size and modes) and environment.
async fn set_up(
    channel: &russh::Channel<Msg>,
    request: &SessionRequest,
    master: &MasterState,
    tty_fd: Option<&OwnedFd>,
    pending: &mut std::collections::VecDeque<Pending>,
) -> Result<(), russh::Error> {
    if request.want_tty {
        let (cols, rows, xpixel, ypixel) = tty_fd
            .and_then(ttymodes::window_size)
            .unwrap_or((0, 0, 0, 0));
        let modes = tty_fd
            .and_then(|fd| rustix::termios::tcgetattr(fd).ok())
            .map(|t| ttymodes::encode_modes(&t))
            .unwrap_or_default();
        channel
            .request_pty(true, &request.term, cols, rows, xpixel, ypixel, &modes)
            .await?;
        pending.push_back(Pending::Pty);
    }
    for entry in &request.env {
        if let Some((name, value)) = entry.split_once('=') {
            channel.set_env(false, name, value).await?;
        }
    }
    for (name, value) in &master.config.set_env {
        channel
            .set_env(false, name.as_str(), value.as_str())
            .await?;
    }
    Ok(())
}

/// The request that starts the remote side: subsystem, shell or command.
async fn request_start(
    channel: &russh::Channel<Msg>,
    request: &SessionRequest,
    pending: &mut std::collections::VecDeque<Pending>,
) -> Result<(), russh::Error> {
    if request.subsystem {
        channel
            .request_subsystem(true, request.command.as_str())
            .await?;
        pending.push_back(Pending::Start("subsystem"));
    } else if request.command.is_empty() {
        channel.request_shell(true).await?;
        pending.push_back(Pending::Start("shell"));
    } else {
        channel.exec(true, request.command.as_bytes()).await?;
        pending.push_back(Pending::Start("exec"));
    }
    Ok(())
}

/// An open session: what its event handlers share.
struct Live {
    session_id: u32,
    escape_char: u8,
    control: ControlWriter,
    master: Arc<MasterState>,
    requester: Arc<Requester>,
    /// The upstream connection the channel runs on (for `~R`).
    connection: Arc<russh::client::Handle<crate::upstream::connect::ClientHandler>>,
    traffic: Arc<Traffic>,
    upstream_tx: Arc<russh::ChannelWriteHalf<Msg>>,
    stdout_queue: Arc<SpillBuffer>,
    stderr_queue: Arc<SpillBuffer>,
    /// Requests whose SUCCESS/FAILURE has not come back yet.
    pending: std::collections::VecDeque<Pending>,
    exit_status: Option<u32>,
    exit_signal: Option<String>,
}

impl Live {
    /// Carries the session until it ends: the server's messages, the
    /// client's socket, what the user typed for the master, window
    /// changes, and the master shutting down.
    async fn serve(
        &mut self,
        upstream_rx: &mut russh::ChannelReadHalf,
        reader: &mut ControlReader,
        local_rx: &mut mpsc::UnboundedReceiver<Local>,
        tty_fd: Option<&OwnedFd>,
    ) -> SessionEnd {
        let mut winch = self.master.winch.subscribe();
        let mut shutdown = self.master.shutdown.subscribe();
        loop {
            let ended = tokio::select! {
                message = upstream_rx.wait() => self.on_upstream(message).await,
                closed = reader.peer_closed_or_readable() => match closed {
                    Ok(false) if answer_stray_request(reader, &self.control).await => None,
                    _ => Some(SessionEnd::ClientGone),
                },
                Some(local) = local_rx.recv() => self.on_local(local).await,
                Ok(()) = winch.changed() => {
                    if let Some((cols, rows, xpixel, ypixel)) = tty_fd.and_then(ttymodes::window_size) {
                        let _ = self.upstream_tx.window_change(cols, rows, xpixel, ypixel).await;
                    }
                    None
                }
                Ok(()) = shutdown.changed() => {
                    let reason = shutdown.borrow().clone().unwrap_or_else(|| "master shutting down".into());
                    self.stderr_queue.push(Bytes::from(format!("muxguard: {reason}\r\n")));
                    Some(SessionEnd::MasterShutdown(reason))
                }
            };
            if let Some(end) = ended {
                return end;
            }
        }
    }

    /// A message from the server on the channel (`None`: the channel is
    /// gone). Returns how the session ended, if it did.
    async fn on_upstream(&mut self, message: Option<ChannelMsg>) -> Option<SessionEnd> {
        match message {
            Some(ChannelMsg::Data { data }) => {
                self.count_output(data.len());
                self.stdout_queue.push_wait(data).await
            }
            Some(ChannelMsg::ExtendedData { data, ext: 1 }) => {
                self.count_output(data.len());
                self.stderr_queue.push_wait(data).await
            }
            Some(ChannelMsg::ExitSignal { signal_name, .. }) => {
                self.exit_signal = Some(format!("{signal_name:?}"));
            }
            // EOF: nothing more for stdout; it is closed once drained, when
            // the channel closes.
            Some(ChannelMsg::Eof) => {}
            Some(ChannelMsg::ExitStatus { exit_status }) => {
                // The client hears the first exit status only.
                if self.exit_status.replace(exit_status).is_none() {
                    let message = ServerMessage::ExitMessage {
                        session_id: self.session_id,
                        exit_value: exit_status,
                    };
                    let _ = self.control.send(&message).await;
                }
            }
            Some(ChannelMsg::Success) => {
                self.pending.pop_front();
            }
            Some(ChannelMsg::Failure) => match self.pending.pop_front() {
                Some(Pending::Pty) => {
                    self.stderr_queue
                        .push(Bytes::from_static(b"PTY allocation request failed\r\n"));
                    let message = ServerMessage::TtyAllocFail {
                        session_id: self.session_id,
                    };
                    let _ = self.control.send(&message).await;
                }
                Some(Pending::Start(what)) => {
                    self.stderr_queue
                        .push(Bytes::from(format!("{what} request failed\r\n")));
                    let _ = self.upstream_tx.close().await;
                }
                None => {}
            },
            Some(ChannelMsg::Close) => {
                return Some(SessionEnd::Finished {
                    exit_status: self.exit_status,
                    exit_signal: self.exit_signal.take(),
                });
            }
            None => {
                // The channel vanished without a CLOSE: the connection
                // itself is gone. Say so on the client's stderr.
                let reason = self.master.connection_lost_reason().await;
                self.stderr_queue
                    .push(Bytes::from(format!("muxguard: {reason}\r\n")));
                return Some(SessionEnd::MasterShutdown(reason));
            }
            Some(_) => {}
        }
        None
    }

    fn count_output(&self, bytes: usize) {
        self.traffic
            .to_client
            .fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// What the master handles itself of the user's typing. Returns how
    /// the session ended, if it did.
    async fn on_local(&mut self, local: Local) -> Option<SessionEnd> {
        match local {
            Local::Action(action) => return self.on_escape(action).await,
            Local::Echo(text) => {
                self.stderr_queue.push(Bytes::from(text));
            }
            Local::CommandLine(line) => self.on_command_line(&line),
        }
        None
    }

    /// A finished `~C` line. Help and mistakes are answered at once; a
    /// forward request is decided and carried out in a task of its own, so
    /// that a decision that waits for the person (a prompt) never stops
    /// this session's output, and its answer follows on stderr.
    fn on_command_line(&mut self, line: &str) {
        let command = match cmdline::parse(line) {
            Ok(Command::Nothing) => return,
            Ok(Command::Help) => {
                self.stderr_queue.push(Bytes::from(cmdline::help_text()));
                return;
            }
            Ok(command) => command,
            Err(e) => {
                self.stderr_queue.push(Bytes::from(format!("{e}\r\n")));
                return;
            }
        };
        self.audit_escape('C');
        let master = Arc::clone(&self.master);
        let requester = Arc::clone(&self.requester);
        let stderr = Arc::clone(&self.stderr_queue);
        tokio::spawn(async move {
            let answer = carry_out(&master, &requester, command).await;
            stderr.push(Bytes::from(answer));
        });
    }

    /// The audit record of an escape the master acted on (`~.`, `~C`).
    fn audit_escape(&self, command: char) {
        use crate::audit::chain::{Escape, Event};
        self.master.audit.record(Event::Escape(Escape {
            session: u64::from(self.session_id),
            sequence: format!("{}{command}", char::from(self.escape_char)),
        }));
    }

    /// An escape the user typed. Returns how the session ended, if it did.
    async fn on_escape(&mut self, action: EscapeAction) -> Option<SessionEnd> {
        let echo = action.echo_text(self.escape_char);
        if !echo.is_empty() {
            self.stderr_queue.push(Bytes::from(echo));
        }
        match action {
            EscapeAction::Terminate => {
                self.audit_escape('.');
                return Some(SessionEnd::EscapeTerminated);
            }
            EscapeAction::Rekey => {
                let _ = self.connection.rekey_soon().await;
            }
            EscapeAction::ListChannels => {
                self.stderr_queue
                    .push(Bytes::from(self.master.describe_sessions()));
            }
            EscapeAction::SendBreak => {
                self.stderr_queue.push(Bytes::from_static(
                    b"muxguard: break requests are not supported on multiplexed sessions yet\r\n",
                ));
            }
            EscapeAction::Help | EscapeAction::NotAvailable(_) => {}
        }
        None
    }
}

/// Carries out a `~C` forward request as `-O forward` / `-O cancel` would,
/// and returns what to tell the user.
async fn carry_out(master: &Arc<MasterState>, requester: &Requester, command: Command) -> String {
    match command {
        Command::Open(spec) => {
            match requests::open_forward(master, requester, spec.clone()).await {
                Decided::Refused(outcome) => cmdline::refused_text(&outcome),
                Decided::Done(result) => cmdline::opened_text(&spec, &result),
            }
        }
        Command::Cancel(cancel) => {
            // ssh's command line names a forward by its listening side.
            let Some(spec) = master.forwards.find_listening(cancel.kind, &cancel.listen) else {
                return cmdline::UNKNOWN_FORWARD.to_string();
            };
            match requests::cancel_forward(master, requester, &spec, "~C").await {
                Decided::Refused(outcome) => cmdline::refused_text(&outcome),
                Decided::Done(result) => cmdline::cancelled_text(&result),
            }
        }
        Command::Nothing | Command::Help => String::new(),
    }
}

/// Why a session could not be opened.
#[derive(Debug)]
pub enum SessionOpenError {
    /// The server refused the channel or its setup.
    Refused(String),
    /// Our own side failed (fds).
    Local(String),
    /// The client has been answered already (the decision could not be
    /// recorded and the policy fails closed: refused as a denial is).
    Answered,
}

/// A request on a control connection that already carries a session.
/// Returns false if the connection should be dropped.
async fn answer_stray_request(reader: &mut ControlReader, control: &ControlWriter) -> bool {
    let Ok(Some(packet)) = reader.read_packet().await else {
        return false;
    };
    let reply = match wire::decode_client(&packet) {
        Ok(wire::ClientMessage::AliveCheck { rid }) => ServerMessage::Alive {
            rid,
            pid: std::process::id(),
        },
        Ok(wire::ClientMessage::NewSession { rid, .. }) => {
            let _ = reader.receive_fds(SessionRequest::FD_COUNT).await;
            ServerMessage::Failure {
                rid,
                reason: "Multiple sessions not supported".into(),
            }
        }
        Ok(wire::ClientMessage::NewStdioForward { rid, .. }) => {
            let _ = reader
                .receive_fds(wire::StdioForwardRequest::FD_COUNT)
                .await;
            ServerMessage::Failure {
                rid,
                reason: "Multiple sessions not supported".into(),
            }
        }
        Ok(wire::ClientMessage::Hello { .. }) | Err(_) => return false,
        Ok(other) => ServerMessage::Failure {
            rid: request_id(&other),
            reason: "unsupported request".into(),
        },
    };
    control.send(&reply).await.is_ok()
}

fn request_id(message: &wire::ClientMessage) -> u32 {
    use wire::ClientMessage::*;
    match message {
        Hello { .. } => 0,
        NewSession { rid, .. }
        | AliveCheck { rid }
        | Terminate { rid }
        | OpenForward { rid, .. }
        | CloseForward { rid, .. }
        | NewStdioForward { rid, .. }
        | StopListening { rid }
        | Proxy { rid }
        | ExtInfo { rid, .. }
        | Unknown { rid, .. } => *rid,
    }
}

/// Starts the writer for one output stream, fed from a spill buffer so
/// that pushing only waits when every buffering cap is reached.
fn spawn_output(
    fd: PassedFd,
    master: &MasterState,
    name: String,
) -> (Arc<SpillBuffer>, JoinHandle<()>) {
    let buffer = SpillBuffer::new(Arc::clone(&master.spill_limits), name);
    let queue = Arc::clone(&buffer);
    let handle = tokio::spawn(async move {
        let Ok(mut sink) = OutputSink::new(fd) else {
            while queue.pop().await.is_some() {}
            return;
        };
        let mut broken = false;
        while let Some(chunk) = queue.pop().await {
            if !broken && sink.write_all(chunk).await.is_err() {
                // The reader went away; keep draining so nothing upstream
                // waits, as OpenSSH discards output to a closed fd.
                broken = true;
            }
        }
        let _ = sink.finish().await;
    });
    (buffer, handle)
}

/// Starts the reader of the client's stdin: data goes upstream as the
/// server's window allows, and for a bulk session as `pace` allows while
/// someone types; on a terminal, escapes are filtered out.
fn spawn_input(
    stdin: PassedFd,
    mut escape: Option<EscapeFilter>,
    pace: Option<Arc<Uplink>>,
    upstream: Arc<russh::ChannelWriteHalf<Msg>>,
    actions: mpsc::UnboundedSender<Local>,
    traffic: Arc<Traffic>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let Ok(mut source) = InputSource::new(stdin) else {
            let _ = upstream.eof().await;
            return;
        };
        loop {
            let chunk = match source.read(READ_CHUNK).await {
                Ok(chunk) if !chunk.is_empty() => chunk,
                _ => {
                    let _ = upstream.eof().await;
                    return;
                }
            };
            traffic
                .to_server
                .fetch_add(chunk.len() as u64, Ordering::Relaxed);
            let Some(filter) = escape.as_mut() else {
                if let Some(uplink) = &pace {
                    uplink.admit(ChannelClass::Bulk, chunk.len()).await;
                }
                if upstream.data_bytes(chunk).await.is_err() {
                    return;
                }
                continue;
            };
            for piece in filter.filter(&chunk) {
                match piece {
                    Filtered::Data(data) => {
                        if upstream.data_bytes(Bytes::from(data)).await.is_err() {
                            return;
                        }
                    }
                    Filtered::Local(local) => {
                        let terminate = local == Local::Action(EscapeAction::Terminate);
                        let _ = actions.send(local);
                        if terminate {
                            // Hold stdin until the session task tears down.
                            std::future::pending::<()>().await;
                        }
                    }
                }
            }
        }
    })
}
