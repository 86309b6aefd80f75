//! The SSH connection-layer packets a `-O proxy` client exchanges with the
//! master once MUX_S_PROXY has been sent: `uint32 length, byte padding
//! length, byte message type, payload, padding`, unencrypted, with no MAC.
//!
//! Pure: no I/O. Decoding is strict about the messages we act on (a
//! malformed one closes the proxy connection) and lenient only where RFC
//! 4254 lets a request carry data we do not interpret (requests and channel
//! types we refuse anyway). Only connection-protocol messages (types
//! 80–127) are legal from a proxy client; anything else is an error.

use bytes::Bytes;

/// The longest packet body accepted, as for every other control packet
/// (OpenSSH's master has the same limit).
pub const MAX_PACKET_LEN: usize = crate::mux::wire::MAX_PACKET_LEN;

/// The shortest packet body OpenSSH's client accepts in proxy mode.
const MIN_BODY_LEN: usize = 5;

/// Message numbers of RFC 4254.
pub mod msg {
    pub const GLOBAL_REQUEST: u8 = 80;
    pub const REQUEST_SUCCESS: u8 = 81;
    pub const REQUEST_FAILURE: u8 = 82;
    pub const CHANNEL_OPEN: u8 = 90;
    pub const CHANNEL_OPEN_CONFIRMATION: u8 = 91;
    pub const CHANNEL_OPEN_FAILURE: u8 = 92;
    pub const CHANNEL_WINDOW_ADJUST: u8 = 93;
    pub const CHANNEL_DATA: u8 = 94;
    pub const CHANNEL_EXTENDED_DATA: u8 = 95;
    pub const CHANNEL_EOF: u8 = 96;
    pub const CHANNEL_CLOSE: u8 = 97;
    pub const CHANNEL_REQUEST: u8 = 98;
    pub const CHANNEL_SUCCESS: u8 = 99;
    pub const CHANNEL_FAILURE: u8 = 100;
}

/// Reason codes of CHANNEL_OPEN_FAILURE (RFC 4254 §5.1).
pub mod open_failure {
    pub const ADMINISTRATIVELY_PROHIBITED: u32 = 1;
    pub const CONNECT_FAILED: u32 = 2;
    pub const UNKNOWN_CHANNEL_TYPE: u32 = 3;
    pub const RESOURCE_SHORTAGE: u32 = 4;
}

/// Why a proxy packet was rejected. Every variant closes the proxy
/// connection: the client's connection layer is out of step with ours.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    #[error("packet length {0} is above the {MAX_PACKET_LEN}-byte limit")]
    TooLong(usize),
    #[error("packet too short for padding length and message type")]
    TooShort,
    #[error("padding length {padding} does not fit a {len}-byte packet")]
    BadPadding { padding: usize, len: usize },
    #[error("message type {0} is not a connection-protocol message (80-127)")]
    NotConnectionLayer(u8),
    #[error("unknown connection-protocol message type {0}")]
    UnknownType(u8),
    #[error("packet ends early while reading {0}")]
    Truncated(&'static str),
    #[error("{0} is not valid UTF-8")]
    NotUtf8(&'static str),
    #[error("{len} trailing bytes after {what}")]
    TrailingBytes { what: &'static str, len: usize },
}

/// A global request from the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GlobalRequest {
    /// `-R`: listen on the server side.
    TcpipForward {
        address: String,
        port: u32,
    },
    CancelTcpipForward {
        address: String,
        port: u32,
    },
    /// Anything else (no-more-sessions@openssh.com, keepalive@openssh.com,
    /// hostkeys-prove, streamlocal forwards...): refused or ignored, never
    /// passed on, since it would act on the connection every client shares.
    Other(String),
}

/// What a CHANNEL_OPEN asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpenKind {
    Session,
    DirectTcpip {
        host: String,
        port: u32,
        originator: String,
        originator_port: u32,
    },
    DirectStreamlocal {
        path: String,
    },
    /// x11, auth-agent@openssh.com, tun@openssh.com...: refused.
    Other(String),
}

/// A channel request from the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChannelRequest {
    PtyReq {
        term: String,
        cols: u32,
        rows: u32,
        width: u32,
        height: u32,
        /// RFC 4254 §8 encoded terminal modes.
        modes: Vec<u8>,
    },
    Env {
        name: String,
        value: String,
    },
    Shell,
    Exec {
        command: Vec<u8>,
    },
    Subsystem {
        name: String,
    },
    WindowChange {
        cols: u32,
        rows: u32,
        width: u32,
        height: u32,
    },
    Signal {
        name: String,
    },
    /// eow@openssh.com: the client will send no more data (it half-closed
    /// its input); EOF says the same thing to us.
    EndOfWrite,
    /// x11-req, auth-agent-req@openssh.com, break, ...: refused.
    Other(String),
}

/// One packet from the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientPacket {
    GlobalRequest {
        want_reply: bool,
        request: GlobalRequest,
    },
    RequestSuccess,
    RequestFailure,
    ChannelOpen {
        kind: OpenKind,
        sender: u32,
        window: u32,
        max_packet: u32,
    },
    OpenConfirmation {
        recipient: u32,
        sender: u32,
        window: u32,
        max_packet: u32,
    },
    OpenFailure {
        recipient: u32,
        reason: u32,
        description: String,
    },
    WindowAdjust {
        recipient: u32,
        bytes: u32,
    },
    Data {
        recipient: u32,
        data: Bytes,
    },
    ExtendedData {
        recipient: u32,
        code: u32,
        data: Bytes,
    },
    Eof {
        recipient: u32,
    },
    Close {
        recipient: u32,
    },
    Request {
        recipient: u32,
        want_reply: bool,
        request: ChannelRequest,
    },
    Success {
        recipient: u32,
    },
    Failure {
        recipient: u32,
    },
}

impl ClientPacket {
    /// The message's name, for logs.
    pub fn name(&self) -> &'static str {
        match self {
            ClientPacket::GlobalRequest { .. } => "GLOBAL_REQUEST",
            ClientPacket::RequestSuccess => "REQUEST_SUCCESS",
            ClientPacket::RequestFailure => "REQUEST_FAILURE",
            ClientPacket::ChannelOpen { .. } => "CHANNEL_OPEN",
            ClientPacket::OpenConfirmation { .. } => "CHANNEL_OPEN_CONFIRMATION",
            ClientPacket::OpenFailure { .. } => "CHANNEL_OPEN_FAILURE",
            ClientPacket::WindowAdjust { .. } => "CHANNEL_WINDOW_ADJUST",
            ClientPacket::Data { .. } => "CHANNEL_DATA",
            ClientPacket::ExtendedData { .. } => "CHANNEL_EXTENDED_DATA",
            ClientPacket::Eof { .. } => "CHANNEL_EOF",
            ClientPacket::Close { .. } => "CHANNEL_CLOSE",
            ClientPacket::Request { .. } => "CHANNEL_REQUEST",
            ClientPacket::Success { .. } => "CHANNEL_SUCCESS",
            ClientPacket::Failure { .. } => "CHANNEL_FAILURE",
        }
    }
}

/// A request the master sends on a channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerRequest {
    ExitStatus(u32),
    ExitSignal {
        /// Without the "SIG" prefix, as RFC 4254 §6.10 wants.
        signal: String,
        core_dumped: bool,
        message: String,
    },
}

/// One packet to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerPacket {
    /// `port`: the allocated port, for a tcpip-forward of port 0.
    RequestSuccess {
        port: Option<u32>,
    },
    RequestFailure,
    /// A connection arrived on one of the client's remote forwards.
    OpenForwardedTcpip {
        sender: u32,
        window: u32,
        max_packet: u32,
        address: String,
        port: u32,
        originator: String,
        originator_port: u32,
    },
    OpenConfirmation {
        recipient: u32,
        sender: u32,
        window: u32,
        max_packet: u32,
    },
    OpenFailure {
        recipient: u32,
        reason: u32,
        description: String,
    },
    WindowAdjust {
        recipient: u32,
        bytes: u32,
    },
    Data {
        recipient: u32,
        data: Bytes,
    },
    ExtendedData {
        recipient: u32,
        code: u32,
        data: Bytes,
    },
    Eof {
        recipient: u32,
    },
    Close {
        recipient: u32,
    },
    Request {
        recipient: u32,
        request: ServerRequest,
    },
    Success {
        recipient: u32,
    },
    Failure {
        recipient: u32,
    },
}

/// Reads the fields of one payload in order.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], PacketError> {
        if self.rest.len() < n {
            return Err(PacketError::Truncated(what));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, PacketError> {
        Ok(self.take(1, what)?[0])
    }

    fn bool(&mut self, what: &'static str) -> Result<bool, PacketError> {
        Ok(self.u8(what)? != 0)
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, PacketError> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn bytes(&mut self, what: &'static str) -> Result<&'a [u8], PacketError> {
        let len = self.u32(what)? as usize;
        self.take(len, what)
    }

    fn string(&mut self, what: &'static str) -> Result<String, PacketError> {
        let raw = self.bytes(what)?;
        String::from_utf8(raw.to_vec()).map_err(|_| PacketError::NotUtf8(what))
    }

    /// Fails if anything is left after the fields of `what`.
    fn end(&self, what: &'static str) -> Result<(), PacketError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(PacketError::TrailingBytes {
                what,
                len: self.rest.len(),
            })
        }
    }
}

/// Checks the uint32 length that precedes a packet body.
pub fn check_length(len: u32) -> Result<usize, PacketError> {
    let len = len as usize;
    if len > MAX_PACKET_LEN {
        Err(PacketError::TooLong(len))
    } else if len < 2 {
        Err(PacketError::TooShort)
    } else {
        Ok(len)
    }
}

/// Decodes one packet body (everything after the uint32 length).
pub fn decode(body: &[u8]) -> Result<ClientPacket, PacketError> {
    if body.len() > MAX_PACKET_LEN {
        return Err(PacketError::TooLong(body.len()));
    }
    let [padding, message_type, ..] = *body else {
        return Err(PacketError::TooShort);
    };
    let padding = usize::from(padding);
    if padding > body.len() - 2 {
        return Err(PacketError::BadPadding {
            padding,
            len: body.len(),
        });
    }
    let payload = &body[2..body.len() - padding];
    if !(80..=127).contains(&message_type) {
        return Err(PacketError::NotConnectionLayer(message_type));
    }
    let mut r = Reader { rest: payload };
    let packet = match message_type {
        msg::GLOBAL_REQUEST => decode_global_request(&mut r)?,
        msg::REQUEST_SUCCESS => ClientPacket::RequestSuccess,
        msg::REQUEST_FAILURE => ClientPacket::RequestFailure,
        msg::CHANNEL_OPEN => {
            let kind = r.string("channel type")?;
            let sender = r.u32("sender channel")?;
            let window = r.u32("initial window size")?;
            let max_packet = r.u32("maximum packet size")?;
            let kind = match kind.as_str() {
                "session" => {
                    r.end("session open")?;
                    OpenKind::Session
                }
                "direct-tcpip" => {
                    let host = r.string("host to connect")?;
                    let port = r.u32("port to connect")?;
                    let originator = r.string("originator address")?;
                    let originator_port = r.u32("originator port")?;
                    r.end("direct-tcpip open")?;
                    OpenKind::DirectTcpip {
                        host,
                        port,
                        originator,
                        originator_port,
                    }
                }
                "direct-streamlocal@openssh.com" => {
                    let path = r.string("socket path")?;
                    // Two reserved fields follow; OpenSSH's client sends them.
                    let _ = r.string("reserved");
                    let _ = r.u32("reserved");
                    OpenKind::DirectStreamlocal { path }
                }
                _ => OpenKind::Other(kind),
            };
            ClientPacket::ChannelOpen {
                kind,
                sender,
                window,
                max_packet,
            }
        }
        msg::CHANNEL_OPEN_CONFIRMATION => {
            let packet = ClientPacket::OpenConfirmation {
                recipient: r.u32("recipient channel")?,
                sender: r.u32("sender channel")?,
                window: r.u32("initial window size")?,
                max_packet: r.u32("maximum packet size")?,
            };
            // Type-specific data may follow; none is defined for ours.
            packet
        }
        msg::CHANNEL_OPEN_FAILURE => {
            let recipient = r.u32("recipient channel")?;
            let reason = r.u32("reason code")?;
            let description = String::from_utf8_lossy(r.bytes("description")?).into_owned();
            let _language = r.bytes("language tag")?;
            r.end("open failure")?;
            ClientPacket::OpenFailure {
                recipient,
                reason,
                description,
            }
        }
        msg::CHANNEL_WINDOW_ADJUST => {
            let packet = ClientPacket::WindowAdjust {
                recipient: r.u32("recipient channel")?,
                bytes: r.u32("bytes to add")?,
            };
            r.end("window adjust")?;
            packet
        }
        msg::CHANNEL_DATA => {
            let recipient = r.u32("recipient channel")?;
            let data = Bytes::copy_from_slice(r.bytes("data")?);
            r.end("data")?;
            ClientPacket::Data { recipient, data }
        }
        msg::CHANNEL_EXTENDED_DATA => {
            let recipient = r.u32("recipient channel")?;
            let code = r.u32("data type code")?;
            let data = Bytes::copy_from_slice(r.bytes("data")?);
            r.end("extended data")?;
            ClientPacket::ExtendedData {
                recipient,
                code,
                data,
            }
        }
        msg::CHANNEL_EOF | msg::CHANNEL_CLOSE | msg::CHANNEL_SUCCESS | msg::CHANNEL_FAILURE => {
            let recipient = r.u32("recipient channel")?;
            r.end("channel message")?;
            match message_type {
                msg::CHANNEL_EOF => ClientPacket::Eof { recipient },
                msg::CHANNEL_CLOSE => ClientPacket::Close { recipient },
                msg::CHANNEL_SUCCESS => ClientPacket::Success { recipient },
                _ => ClientPacket::Failure { recipient },
            }
        }
        msg::CHANNEL_REQUEST => {
            let recipient = r.u32("recipient channel")?;
            let name = r.string("request type")?;
            let want_reply = r.bool("want reply")?;
            let request = decode_channel_request(name, &mut r)?;
            ClientPacket::Request {
                recipient,
                want_reply,
                request,
            }
        }
        other => return Err(PacketError::UnknownType(other)),
    };
    Ok(packet)
}

fn decode_global_request(r: &mut Reader<'_>) -> Result<ClientPacket, PacketError> {
    let name = r.string("request name")?;
    let want_reply = r.bool("want reply")?;
    let request = match name.as_str() {
        "tcpip-forward" | "cancel-tcpip-forward" => {
            let address = r.string("bind address")?;
            let port = r.u32("bind port")?;
            r.end("tcpip-forward")?;
            if name == "tcpip-forward" {
                GlobalRequest::TcpipForward { address, port }
            } else {
                GlobalRequest::CancelTcpipForward { address, port }
            }
        }
        _ => GlobalRequest::Other(name),
    };
    Ok(ClientPacket::GlobalRequest {
        want_reply,
        request,
    })
}

fn decode_channel_request(name: String, r: &mut Reader<'_>) -> Result<ChannelRequest, PacketError> {
    let request = match name.as_str() {
        "pty-req" => ChannelRequest::PtyReq {
            term: r.string("TERM")?,
            cols: r.u32("columns")?,
            rows: r.u32("rows")?,
            width: r.u32("width")?,
            height: r.u32("height")?,
            modes: r.bytes("terminal modes")?.to_vec(),
        },
        "env" => ChannelRequest::Env {
            name: r.string("variable name")?,
            value: r.string("variable value")?,
        },
        "shell" => ChannelRequest::Shell,
        "exec" => ChannelRequest::Exec {
            command: r.bytes("command")?.to_vec(),
        },
        "subsystem" => ChannelRequest::Subsystem {
            name: r.string("subsystem name")?,
        },
        "window-change" => ChannelRequest::WindowChange {
            cols: r.u32("columns")?,
            rows: r.u32("rows")?,
            width: r.u32("width")?,
            height: r.u32("height")?,
        },
        "signal" => ChannelRequest::Signal {
            name: r.string("signal name")?,
        },
        "eow@openssh.com" => ChannelRequest::EndOfWrite,
        // Whatever it carries is not ours to read: the request is refused.
        _ => return Ok(ChannelRequest::Other(name)),
    };
    r.end("channel request")?;
    Ok(request)
}

/// The opcode/value pairs of an RFC 4254 §8 terminal-modes string. Parsing
/// stops at TTY_OP_END, at an opcode of 160 or more (their arguments are
/// undefined) or at the end of the string, as servers do.
pub fn decode_modes(modes: &[u8]) -> Vec<(u8, u32)> {
    let mut r = Reader { rest: modes };
    let mut pairs = Vec::new();
    while let Ok(opcode) = r.u8("mode") {
        if opcode == 0 || opcode >= 160 {
            break;
        }
        let Ok(value) = r.u32("mode value") else {
            break;
        };
        pairs.push((opcode, value));
    }
    pairs
}

/// Builds one framed packet (length, padding length 0, type, fields).
struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    fn new(message_type: u8, capacity: usize) -> Writer {
        let mut buf = Vec::with_capacity(6 + capacity);
        buf.extend_from_slice(&[0, 0, 0, 0, 0, message_type]);
        Writer { buf }
    }

    fn u8(mut self, value: u8) -> Self {
        self.buf.push(value);
        self
    }

    fn u32(mut self, value: u32) -> Self {
        self.buf.extend_from_slice(&value.to_be_bytes());
        self
    }

    fn bytes(mut self, value: &[u8]) -> Self {
        let len = u32::try_from(value.len()).expect("packets are far below 4 GiB");
        self.buf.extend_from_slice(&len.to_be_bytes());
        self.buf.extend_from_slice(value);
        self
    }

    fn finish(mut self) -> Vec<u8> {
        // OpenSSH's client rejects a proxy packet shorter than 5 bytes
        // ("incomplete message"), and REQUEST_SUCCESS/FAILURE without a
        // port are 2. It skips the padding-length byte without using it,
        // so the padding reaches the message handlers as trailing payload;
        // the handlers of these two messages read nothing after the type.
        let short = MIN_BODY_LEN.saturating_sub(self.buf.len() - 4);
        if short > 0 {
            self.buf[4] = short as u8;
            self.buf.extend(std::iter::repeat_n(0, short));
        }
        let len = u32::try_from(self.buf.len() - 4).expect("packets are far below 4 GiB");
        self.buf[..4].copy_from_slice(&len.to_be_bytes());
        self.buf
    }
}

impl ServerPacket {
    /// The packet with its length prefix and no padding, ready to write.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            ServerPacket::RequestSuccess { port } => {
                let w = Writer::new(msg::REQUEST_SUCCESS, 4);
                match port {
                    Some(port) => w.u32(*port).finish(),
                    None => w.finish(),
                }
            }
            ServerPacket::RequestFailure => Writer::new(msg::REQUEST_FAILURE, 0).finish(),
            ServerPacket::OpenForwardedTcpip {
                sender,
                window,
                max_packet,
                address,
                port,
                originator,
                originator_port,
            } => Writer::new(msg::CHANNEL_OPEN, 64)
                .bytes(b"forwarded-tcpip")
                .u32(*sender)
                .u32(*window)
                .u32(*max_packet)
                .bytes(address.as_bytes())
                .u32(*port)
                .bytes(originator.as_bytes())
                .u32(*originator_port)
                .finish(),
            ServerPacket::OpenConfirmation {
                recipient,
                sender,
                window,
                max_packet,
            } => Writer::new(msg::CHANNEL_OPEN_CONFIRMATION, 16)
                .u32(*recipient)
                .u32(*sender)
                .u32(*window)
                .u32(*max_packet)
                .finish(),
            ServerPacket::OpenFailure {
                recipient,
                reason,
                description,
            } => Writer::new(msg::CHANNEL_OPEN_FAILURE, 16 + description.len())
                .u32(*recipient)
                .u32(*reason)
                .bytes(description.as_bytes())
                .bytes(b"")
                .finish(),
            ServerPacket::WindowAdjust { recipient, bytes } => {
                Writer::new(msg::CHANNEL_WINDOW_ADJUST, 8)
                    .u32(*recipient)
                    .u32(*bytes)
                    .finish()
            }
            ServerPacket::Data { recipient, data } => {
                Writer::new(msg::CHANNEL_DATA, 8 + data.len())
                    .u32(*recipient)
                    .bytes(data)
                    .finish()
            }
            ServerPacket::ExtendedData {
                recipient,
                code,
                data,
            } => Writer::new(msg::CHANNEL_EXTENDED_DATA, 12 + data.len())
                .u32(*recipient)
                .u32(*code)
                .bytes(data)
                .finish(),
            ServerPacket::Eof { recipient } => {
                Writer::new(msg::CHANNEL_EOF, 4).u32(*recipient).finish()
            }
            ServerPacket::Close { recipient } => {
                Writer::new(msg::CHANNEL_CLOSE, 4).u32(*recipient).finish()
            }
            ServerPacket::Success { recipient } => Writer::new(msg::CHANNEL_SUCCESS, 4)
                .u32(*recipient)
                .finish(),
            ServerPacket::Failure { recipient } => Writer::new(msg::CHANNEL_FAILURE, 4)
                .u32(*recipient)
                .finish(),
            ServerPacket::Request { recipient, request } => {
                let w = Writer::new(msg::CHANNEL_REQUEST, 32).u32(*recipient);
                match request {
                    // No reply wanted: the client never answers these.
                    ServerRequest::ExitStatus(status) => {
                        w.bytes(b"exit-status").u8(0).u32(*status).finish()
                    }
                    ServerRequest::ExitSignal {
                        signal,
                        core_dumped,
                        message,
                    } => w
                        .bytes(b"exit-signal")
                        .u8(0)
                        .bytes(signal.as_bytes())
                        .u8(u8::from(*core_dumped))
                        .bytes(message.as_bytes())
                        .bytes(b"")
                        .finish(),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Frames a client packet by hand: type, fields, padding.
    fn body(message_type: u8, fields: &[u8], padding: u8) -> Vec<u8> {
        let mut b = vec![padding, message_type];
        b.extend_from_slice(fields);
        b.extend(std::iter::repeat_n(0xAA, usize::from(padding)));
        b
    }

    fn string(s: &[u8]) -> Vec<u8> {
        let mut v = (s.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(s);
        v
    }

    #[test]
    fn the_stock_clients_first_packet() {
        // Appendix A.10 of the protocol notes: CHANNEL_OPEN "session",
        // sender 0, window 0x200000, max packet 0x8000.
        let wire = [
            0x00, 0x00, 0x00, 0x19, 0x00, 0x5a, 0x00, 0x00, 0x00, 0x07, b's', b'e', b's', b's',
            b'i', b'o', b'n', 0x00, 0x00, 0x00, 0x00, 0x00, 0x20, 0x00, 0x00, 0x00, 0x00, 0x80,
            0x00,
        ];
        let len = check_length(u32::from_be_bytes([wire[0], wire[1], wire[2], wire[3]])).unwrap();
        assert_eq!(len, wire.len() - 4);
        assert_eq!(
            decode(&wire[4..]).unwrap(),
            ClientPacket::ChannelOpen {
                kind: OpenKind::Session,
                sender: 0,
                window: 0x20_0000,
                max_packet: 0x8000,
            }
        );
    }

    #[test]
    fn padding_from_the_client_is_skipped() {
        let mut fields = 7u32.to_be_bytes().to_vec();
        fields.extend(string(b"payload"));
        let decoded = decode(&body(msg::CHANNEL_DATA, &fields, 5)).unwrap();
        assert_eq!(
            decoded,
            ClientPacket::Data {
                recipient: 7,
                data: Bytes::from_static(b"payload"),
            }
        );
        // Padding longer than the packet.
        assert_eq!(
            decode(&[200, msg::CHANNEL_EOF, 0, 0, 0, 1]),
            Err(PacketError::BadPadding {
                padding: 200,
                len: 6
            })
        );
    }

    #[test]
    fn channel_requests() {
        let mut fields = 3u32.to_be_bytes().to_vec();
        fields.extend(string(b"exec"));
        fields.push(1);
        fields.extend(string(b"echo hi"));
        assert_eq!(
            decode(&body(msg::CHANNEL_REQUEST, &fields, 0)).unwrap(),
            ClientPacket::Request {
                recipient: 3,
                want_reply: true,
                request: ChannelRequest::Exec {
                    command: b"echo hi".to_vec()
                },
            }
        );
        let mut fields = 3u32.to_be_bytes().to_vec();
        fields.extend(string(b"x11-req"));
        fields.push(1);
        fields.extend(b"whatever follows");
        assert_eq!(
            decode(&body(msg::CHANNEL_REQUEST, &fields, 0)).unwrap(),
            ClientPacket::Request {
                recipient: 3,
                want_reply: true,
                request: ChannelRequest::Other("x11-req".into()),
            }
        );
    }

    #[test]
    fn global_requests() {
        let mut fields = string(b"tcpip-forward");
        fields.push(1);
        fields.extend(string(b"localhost"));
        fields.extend(0u32.to_be_bytes());
        assert_eq!(
            decode(&body(msg::GLOBAL_REQUEST, &fields, 0)).unwrap(),
            ClientPacket::GlobalRequest {
                want_reply: true,
                request: GlobalRequest::TcpipForward {
                    address: "localhost".into(),
                    port: 0
                },
            }
        );
        let mut fields = string(b"no-more-sessions@openssh.com");
        fields.push(0);
        assert_eq!(
            decode(&body(msg::GLOBAL_REQUEST, &fields, 0)).unwrap(),
            ClientPacket::GlobalRequest {
                want_reply: false,
                request: GlobalRequest::Other("no-more-sessions@openssh.com".into()),
            }
        );
    }

    #[test]
    fn malformed_packets_are_errors() {
        assert_eq!(
            check_length(300 * 1024),
            Err(PacketError::TooLong(300 * 1024))
        );
        assert_eq!(check_length(1), Err(PacketError::TooShort));
        assert_eq!(decode(&[0]), Err(PacketError::TooShort));
        // Transport and authentication messages have no place here.
        assert_eq!(
            decode(&body(20, &[], 0)),
            Err(PacketError::NotConnectionLayer(20))
        );
        assert_eq!(
            decode(&body(50, &[], 0)),
            Err(PacketError::NotConnectionLayer(50))
        );
        assert_eq!(
            decode(&body(120, &[], 0)),
            Err(PacketError::UnknownType(120))
        );
        // A data string claiming more than is there.
        let mut fields = 1u32.to_be_bytes().to_vec();
        fields.extend(100u32.to_be_bytes());
        fields.extend(b"short");
        assert_eq!(
            decode(&body(msg::CHANNEL_DATA, &fields, 0)),
            Err(PacketError::Truncated("data"))
        );
        // Truncated in the middle of a fixed field.
        assert_eq!(
            decode(&body(msg::CHANNEL_WINDOW_ADJUST, &[0, 0, 0, 1, 0, 0], 0)),
            Err(PacketError::Truncated("bytes to add"))
        );
        // Trailing garbage after a known message.
        assert!(matches!(
            decode(&body(msg::CHANNEL_EOF, &[0, 0, 0, 1, 9], 0)),
            Err(PacketError::TrailingBytes { .. })
        ));
        // A body above the limit, even if the length check was skipped.
        let huge = vec![0u8; MAX_PACKET_LEN + 1];
        assert!(matches!(decode(&huge), Err(PacketError::TooLong(_))));
    }

    #[test]
    fn terminal_modes() {
        let modes = [1, 0, 0, 0, 3, 53, 0, 0, 0, 1, 0, 9, 9];
        assert_eq!(decode_modes(&modes), [(1, 3), (53, 1)]);
        assert_eq!(decode_modes(&[1, 0, 0]), []);
        assert_eq!(decode_modes(&[200, 0, 0, 0, 1]), []);
    }

    #[test]
    fn server_packets_encode_with_zero_padding() {
        let data = ServerPacket::Data {
            recipient: 2,
            data: Bytes::from_static(b"hi"),
        }
        .encode();
        assert_eq!(
            data,
            [
                0,
                0,
                0,
                12,
                0,
                msg::CHANNEL_DATA,
                0,
                0,
                0,
                2,
                0,
                0,
                0,
                2,
                b'h',
                b'i'
            ]
        );
        let confirmation = ServerPacket::OpenConfirmation {
            recipient: 0,
            sender: 5,
            window: 0x20_0000,
            max_packet: 0x8000,
        }
        .encode();
        assert_eq!(confirmation.len(), 4 + 2 + 16);
        assert_eq!(confirmation[5], msg::CHANNEL_OPEN_CONFIRMATION);
        // Too short for the client: padded to 5 bytes.
        assert_eq!(
            ServerPacket::RequestFailure.encode(),
            [0, 0, 0, 5, 3, msg::REQUEST_FAILURE, 0, 0, 0]
        );
        assert_eq!(
            ServerPacket::RequestSuccess { port: Some(4000) }.encode(),
            [0, 0, 0, 6, 0, msg::REQUEST_SUCCESS, 0, 0, 0x0f, 0xa0]
        );
        let exit = ServerPacket::Request {
            recipient: 1,
            request: ServerRequest::ExitStatus(3),
        }
        .encode();
        let mut expected = vec![0, msg::CHANNEL_REQUEST, 0, 0, 0, 1];
        expected.extend(string(b"exit-status"));
        expected.extend([0, 0, 0, 0, 3]);
        assert_eq!(&exit[4..], &expected[..]);
    }

    #[test]
    fn our_packets_decode_as_client_packets_where_shared() {
        // Both directions share the channel-message layouts: what we encode
        // must decode to the same values (a round trip of the common ones).
        for packet in [
            ServerPacket::Eof { recipient: 9 },
            ServerPacket::Close { recipient: 9 },
            ServerPacket::WindowAdjust {
                recipient: 9,
                bytes: 1 << 20,
            },
            ServerPacket::ExtendedData {
                recipient: 9,
                code: 1,
                data: Bytes::from_static(b"err"),
            },
        ] {
            let encoded = packet.encode();
            let decoded = decode(&encoded[4..]).unwrap();
            let same = match (&packet, &decoded) {
                (ServerPacket::Eof { recipient: a }, ClientPacket::Eof { recipient: b })
                | (ServerPacket::Close { recipient: a }, ClientPacket::Close { recipient: b }) => {
                    a == b
                }
                (
                    ServerPacket::WindowAdjust { recipient, bytes },
                    ClientPacket::WindowAdjust {
                        recipient: r,
                        bytes: b,
                    },
                ) => recipient == r && bytes == b,
                (
                    ServerPacket::ExtendedData {
                        recipient,
                        code,
                        data,
                    },
                    ClientPacket::ExtendedData {
                        recipient: r,
                        code: c,
                        data: d,
                    },
                ) => recipient == r && code == c && data == d,
                _ => false,
            };
            assert!(same, "{packet:?} came back as {decoded:?}");
        }
    }
}
