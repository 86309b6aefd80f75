//! The OpenSSH mux protocol (version 4) as bytes: message types, framing and
//! a codec for every message the master receives or sends.
//!
//! Pure: no I/O. The layouts follow what the stock OpenSSH client sends and
//! expects on the wire (see docs/mux-protocol.md), which differs from
//! PROTOCOL.mux in places: "bool" fields are uint32, the stdio-forward port is
//! a uint32, and no MUX_S_OK ever follows SESSION_OPENED.

/// The only protocol version any OpenSSH release has spoken since 5.x.
pub const PROTOCOL_VERSION: u32 = 4;

/// OpenSSH's master refuses packets longer than this; so do we.
pub const MAX_PACKET_LEN: usize = 256 * 1024;

/// Port value meaning "the host field is a Unix-socket path".
pub const PORT_STREAMLOCAL: u32 = 0xFFFF_FFFE;

pub mod msg {
    pub const HELLO: u32 = 0x0000_0001;
    pub const C_NEW_SESSION: u32 = 0x1000_0002;
    pub const C_ALIVE_CHECK: u32 = 0x1000_0004;
    pub const C_TERMINATE: u32 = 0x1000_0005;
    pub const C_OPEN_FWD: u32 = 0x1000_0006;
    pub const C_CLOSE_FWD: u32 = 0x1000_0007;
    pub const C_NEW_STDIO_FWD: u32 = 0x1000_0008;
    pub const C_STOP_LISTENING: u32 = 0x1000_0009;
    pub const C_PROXY: u32 = 0x1000_000f;
    pub const C_EXT_INFO: u32 = 0x2000_0001;
    pub const S_OK: u32 = 0x8000_0001;
    pub const S_PERMISSION_DENIED: u32 = 0x8000_0002;
    pub const S_FAILURE: u32 = 0x8000_0003;
    pub const S_EXIT_MESSAGE: u32 = 0x8000_0004;
    pub const S_ALIVE: u32 = 0x8000_0005;
    pub const S_SESSION_OPENED: u32 = 0x8000_0006;
    pub const S_REMOTE_PORT: u32 = 0x8000_0007;
    pub const S_TTY_ALLOC_FAIL: u32 = 0x8000_0008;
    pub const S_PROXY: u32 = 0x8000_000f;
    pub const S_EXT_INFO: u32 = 0x9000_0001;
}

/// Why a packet could not be decoded. Every variant closes the control
/// connection that sent it (OpenSSH does the same for malformed bodies).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("packet ends early while reading {0}")]
    Truncated(&'static str),
    #[error("{0} contains a NUL byte")]
    EmbeddedNul(&'static str),
    #[error("{0} is not valid UTF-8")]
    NotUtf8(&'static str),
    #[error("{len} trailing bytes after {what}")]
    TrailingBytes { what: &'static str, len: usize },
    #[error("packet length {0} is above the {MAX_PACKET_LEN}-byte limit")]
    TooLong(usize),
    #[error("empty packet")]
    Empty,
    #[error("forwarding type {0} is not local (1), remote (2) or dynamic (3)")]
    BadForwardType(u32),
    #[error("{what} port {port} is out of range")]
    BadPort { what: &'static str, port: u32 },
}

pub use crate::endpoint::{Endpoint, ForwardKind, ForwardSpec};

/// A NEW_SESSION body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRequest {
    pub want_tty: bool,
    pub want_x11: bool,
    pub want_agent: bool,
    pub subsystem: bool,
    /// Raw escape-char value; anything above 255 (the client sends
    /// 0xFFFFFFFF for `ssh -e none`) disables escapes.
    pub escape_char: u32,
    pub term: String,
    /// The remote command, or the subsystem name; empty means a shell.
    pub command: String,
    /// `NAME=value` entries in the order the client sent them.
    pub env: Vec<String>,
}

impl SessionRequest {
    /// The number of fds (stdin, stdout, stderr) that follow the packet.
    pub const FD_COUNT: usize = 3;
}

/// A NEW_STDIO_FWD target (`ssh -W host:port` or `ssh -W /path`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StdioForwardRequest {
    pub target: Endpoint,
}

impl StdioForwardRequest {
    /// stdin and stdout; a stdio forward has no stderr fd.
    pub const FD_COUNT: usize = 2;
}

/// Every message a client can send after its HELLO, plus HELLO itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientMessage {
    Hello {
        version: u32,
        extensions: Vec<(String, String)>,
    },
    NewSession {
        rid: u32,
        request: SessionRequest,
    },
    AliveCheck {
        rid: u32,
    },
    Terminate {
        rid: u32,
    },
    OpenForward {
        rid: u32,
        spec: ForwardSpec,
    },
    CloseForward {
        rid: u32,
        spec: ForwardSpec,
    },
    NewStdioForward {
        rid: u32,
        request: StdioForwardRequest,
    },
    StopListening {
        rid: u32,
    },
    Proxy {
        rid: u32,
    },
    ExtInfo {
        rid: u32,
        name: String,
    },
    /// A type we do not know. OpenSSH answers FAILURE "unsupported request"
    /// and keeps the connection, provided a request id is present.
    Unknown {
        msg_type: u32,
        rid: u32,
    },
}

impl ClientMessage {
    /// The name used in logs and audit records.
    pub fn name(&self) -> &'static str {
        match self {
            ClientMessage::Hello { .. } => "HELLO",
            ClientMessage::NewSession { .. } => "NEW_SESSION",
            ClientMessage::AliveCheck { .. } => "ALIVE_CHECK",
            ClientMessage::Terminate { .. } => "TERMINATE",
            ClientMessage::OpenForward { .. } => "OPEN_FWD",
            ClientMessage::CloseForward { .. } => "CLOSE_FWD",
            ClientMessage::NewStdioForward { .. } => "NEW_STDIO_FWD",
            ClientMessage::StopListening { .. } => "STOP_LISTENING",
            ClientMessage::Proxy { .. } => "PROXY",
            ClientMessage::ExtInfo { .. } => "EXT_INFO",
            ClientMessage::Unknown { .. } => "unknown",
        }
    }
}

/// Every message the master sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerMessage {
    Hello {
        extensions: Vec<(String, String)>,
    },
    Ok {
        rid: u32,
    },
    PermissionDenied {
        rid: u32,
        reason: String,
    },
    Failure {
        rid: u32,
        reason: String,
    },
    ExitMessage {
        session_id: u32,
        exit_value: u32,
    },
    Alive {
        rid: u32,
        pid: u32,
    },
    SessionOpened {
        rid: u32,
        session_id: u32,
    },
    RemotePort {
        rid: u32,
        port: u32,
    },
    TtyAllocFail {
        session_id: u32,
    },
    Proxy {
        rid: u32,
    },
    ExtInfo {
        rid: u32,
        supported: bool,
        text: String,
    },
}

impl ServerMessage {
    /// Appends the framed packet (length prefix included) to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0; 4]);
        let mut w = Writer(out);
        match self {
            ServerMessage::Hello { extensions } => {
                w.u32(msg::HELLO);
                w.u32(PROTOCOL_VERSION);
                for (name, value) in extensions {
                    w.string(name.as_bytes());
                    w.string(value.as_bytes());
                }
            }
            ServerMessage::Ok { rid } => {
                w.u32(msg::S_OK);
                w.u32(*rid);
            }
            ServerMessage::PermissionDenied { rid, reason } => {
                w.u32(msg::S_PERMISSION_DENIED);
                w.u32(*rid);
                w.string(reason.as_bytes());
            }
            ServerMessage::Failure { rid, reason } => {
                w.u32(msg::S_FAILURE);
                w.u32(*rid);
                w.string(reason.as_bytes());
            }
            ServerMessage::ExitMessage {
                session_id,
                exit_value,
            } => {
                w.u32(msg::S_EXIT_MESSAGE);
                w.u32(*session_id);
                w.u32(*exit_value);
            }
            ServerMessage::Alive { rid, pid } => {
                w.u32(msg::S_ALIVE);
                w.u32(*rid);
                w.u32(*pid);
            }
            ServerMessage::SessionOpened { rid, session_id } => {
                w.u32(msg::S_SESSION_OPENED);
                w.u32(*rid);
                w.u32(*session_id);
            }
            ServerMessage::RemotePort { rid, port } => {
                w.u32(msg::S_REMOTE_PORT);
                w.u32(*rid);
                w.u32(*port);
            }
            ServerMessage::TtyAllocFail { session_id } => {
                w.u32(msg::S_TTY_ALLOC_FAIL);
                w.u32(*session_id);
            }
            ServerMessage::Proxy { rid } => {
                w.u32(msg::S_PROXY);
                w.u32(*rid);
            }
            ServerMessage::ExtInfo {
                rid,
                supported,
                text,
            } => {
                w.u32(msg::S_EXT_INFO);
                w.u32(*rid);
                w.u32(u32::from(*supported));
                w.string(text.as_bytes());
            }
        }
        let len = (out.len() - start - 4) as u32;
        out[start..start + 4].copy_from_slice(&len.to_be_bytes());
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(32);
        self.encode_into(&mut out);
        out
    }
}

/// Checks a packet's length prefix before its body is read.
pub fn check_length(len: u32) -> Result<usize, WireError> {
    let len = len as usize;
    if len == 0 {
        Err(WireError::Empty)
    } else if len > MAX_PACKET_LEN {
        Err(WireError::TooLong(len))
    } else {
        Ok(len)
    }
}

/// Decodes one packet body (without its length prefix) sent by a client.
pub fn decode_client(payload: &[u8]) -> Result<ClientMessage, WireError> {
    let mut r = Reader(payload);
    let msg_type = r.u32("message type")?;
    if msg_type == msg::HELLO {
        let version = r.u32("HELLO version")?;
        let mut extensions = Vec::new();
        while !r.is_empty() {
            let name = r.cstring("HELLO extension name")?;
            let value = r.cstring("HELLO extension value")?;
            extensions.push((name, value));
        }
        return Ok(ClientMessage::Hello {
            version,
            extensions,
        });
    }
    let rid = r.u32("request id")?;
    let message = match msg_type {
        msg::C_NEW_SESSION => {
            let _reserved = r.string("reserved")?;
            let want_tty = r.flag("want tty")?;
            let want_x11 = r.flag("want X11")?;
            let want_agent = r.flag("want agent")?;
            let subsystem = r.flag("subsystem flag")?;
            let escape_char = r.u32("escape char")?;
            let term = r.cstring("terminal type")?;
            let command = r.cstring("command")?;
            let mut env = Vec::new();
            while !r.is_empty() {
                env.push(r.cstring("environment entry")?);
            }
            ClientMessage::NewSession {
                rid,
                request: SessionRequest {
                    want_tty,
                    want_x11,
                    want_agent,
                    subsystem,
                    escape_char,
                    term,
                    command,
                    env,
                },
            }
        }
        msg::C_ALIVE_CHECK => ClientMessage::AliveCheck { rid },
        msg::C_TERMINATE => ClientMessage::Terminate { rid },
        msg::C_STOP_LISTENING => ClientMessage::StopListening { rid },
        msg::C_PROXY => ClientMessage::Proxy { rid },
        msg::C_OPEN_FWD => ClientMessage::OpenForward {
            rid,
            spec: r.forward_spec()?,
        },
        msg::C_CLOSE_FWD => ClientMessage::CloseForward {
            rid,
            spec: r.forward_spec()?,
        },
        msg::C_NEW_STDIO_FWD => {
            let _reserved = r.string("reserved")?;
            let host = r.cstring("stdio forward host")?;
            let port = r.u32("stdio forward port")?;
            let target = endpoint(host, port, "stdio forward")?;
            ClientMessage::NewStdioForward {
                rid,
                request: StdioForwardRequest { target },
            }
        }
        msg::C_EXT_INFO => ClientMessage::ExtInfo {
            rid,
            name: r.cstring("info name")?,
        },
        other => {
            // Unknown types are answered, not parsed: their body is opaque.
            return Ok(ClientMessage::Unknown {
                msg_type: other,
                rid,
            });
        }
    };
    if !r.is_empty() {
        return Err(WireError::TrailingBytes {
            what: message.name(),
            len: r.0.len(),
        });
    }
    Ok(message)
}

fn endpoint(host: String, port: u32, what: &'static str) -> Result<Endpoint, WireError> {
    if port == PORT_STREAMLOCAL {
        return Ok(Endpoint::Unix { path: host });
    }
    let port = u16::try_from(port).map_err(|_| WireError::BadPort { what, port })?;
    Ok(Endpoint::Tcp { host, port })
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], WireError> {
        if self.0.len() < n {
            return Err(WireError::Truncated(what));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, WireError> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn flag(&mut self, what: &'static str) -> Result<bool, WireError> {
        Ok(self.u32(what)? != 0)
    }

    fn string(&mut self, what: &'static str) -> Result<&'a [u8], WireError> {
        let len = self.u32(what)? as usize;
        self.take(len, what)
    }

    /// A string the master treats as a C string: no NUL, and UTF-8 so that
    /// it can be shown, matched against policy and logged without loss.
    fn cstring(&mut self, what: &'static str) -> Result<String, WireError> {
        let bytes = self.string(what)?;
        if bytes.contains(&0) {
            return Err(WireError::EmbeddedNul(what));
        }
        String::from_utf8(bytes.to_vec()).map_err(|_| WireError::NotUtf8(what))
    }

    fn forward_spec(&mut self) -> Result<ForwardSpec, WireError> {
        let kind = match self.u32("forwarding type")? {
            1 => ForwardKind::Local,
            2 => ForwardKind::Remote,
            3 => ForwardKind::Dynamic,
            other => return Err(WireError::BadForwardType(other)),
        };
        let listen_host = self.cstring("listen host")?;
        let listen_port = self.u32("listen port")?;
        let connect_host = self.cstring("connect host")?;
        let connect_port = self.u32("connect port")?;
        Ok(ForwardSpec {
            kind,
            listen: endpoint(listen_host, listen_port, "listen")?,
            connect: endpoint(connect_host, connect_port, "connect")?,
        })
    }
}

struct Writer<'a>(&'a mut Vec<u8>);

impl Writer<'_> {
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }

    fn string(&mut self, s: &[u8]) {
        self.u32(s.len() as u32);
        self.0.extend_from_slice(s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        s.split_whitespace()
            .map(|b| u8::from_str_radix(b, 16).unwrap())
            .collect()
    }

    /// Strips the length prefix after checking it.
    fn body(packet: &[u8]) -> &[u8] {
        let len = u32::from_be_bytes(packet[..4].try_into().unwrap());
        assert_eq!(len as usize, packet.len() - 4);
        &packet[4..]
    }

    #[test]
    fn hello_matches_openssh_bytes() {
        let hello = ServerMessage::Hello { extensions: vec![] }.encode();
        assert_eq!(hello, hex("00 00 00 08 00 00 00 01 00 00 00 04"));
        assert_eq!(
            decode_client(body(&hello)).unwrap(),
            ClientMessage::Hello {
                version: 4,
                extensions: vec![]
            }
        );
    }

    #[test]
    fn replies_match_openssh_bytes() {
        // Appendix A.2, A.3, A.6, A.7 of the protocol notes.
        let cases = [
            (
                ServerMessage::Alive { rid: 0, pid: 11349 },
                "00 00 00 0c 80 00 00 05 00 00 00 00 00 00 2c 55",
            ),
            (
                ServerMessage::SessionOpened {
                    rid: 1,
                    session_id: 2,
                },
                "00 00 00 0c 80 00 00 06 00 00 00 01 00 00 00 02",
            ),
            (
                ServerMessage::ExitMessage {
                    session_id: 2,
                    exit_value: 3,
                },
                "00 00 00 0c 80 00 00 04 00 00 00 02 00 00 00 03",
            ),
            (
                ServerMessage::Ok { rid: 0 },
                "00 00 00 08 80 00 00 01 00 00 00 00",
            ),
            (
                ServerMessage::RemotePort {
                    rid: 0,
                    port: 40000,
                },
                "00 00 00 0c 80 00 00 07 00 00 00 00 00 00 9c 40",
            ),
            (
                ServerMessage::TtyAllocFail { session_id: 7 },
                "00 00 00 08 80 00 00 08 00 00 00 07",
            ),
            (
                ServerMessage::PermissionDenied {
                    rid: 1,
                    reason: "Permission denied".into(),
                },
                "00 00 00 1d 80 00 00 02 00 00 00 01 00 00 00 11 50 65 72 6d 69 73 73 69 6f 6e 20 64 65 6e 69 65 64",
            ),
        ];
        for (message, expected) in cases {
            assert_eq!(message.encode(), hex(expected), "{message:?}");
        }
    }

    #[test]
    fn decodes_a_real_new_session() {
        // Appendix A.3: `ssh -S x anyhost true`, TERM=xterm, LANG=C.UTF-8.
        let packet = hex("00 00 00 41 10 00 00 02 00 00 00 01 00 00 00 00
             00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00
             00 00 00 7e 00 00 00 05 78 74 65 72 6d 00 00 00
             04 74 72 75 65 00 00 00 0c 4c 41 4e 47 3d 43 2e
             55 54 46 2d 38");
        let message = decode_client(body(&packet)).unwrap();
        assert_eq!(
            message,
            ClientMessage::NewSession {
                rid: 1,
                request: SessionRequest {
                    want_tty: false,
                    want_x11: false,
                    want_agent: false,
                    subsystem: false,
                    escape_char: 0x7e,
                    term: "xterm".into(),
                    command: "true".into(),
                    env: vec!["LANG=C.UTF-8".into()],
                }
            }
        );
    }

    #[test]
    fn decodes_a_real_tty_session_and_stdio_forward() {
        let tty = hex("00 00 00 46 10 00 00 02 00 00 00 01 00 00 00 00
             00 00 00 01 00 00 00 00 00 00 00 00 00 00 00 00
             00 00 00 7e 00 00 00 0e 78 74 65 72 6d 2d 32 35
             36 63 6f 6c 6f 72 00 00 00 00 00 00 00 0c 4c 41
             4e 47 3d 43 2e 55 54 46 2d 38");
        let ClientMessage::NewSession { request, .. } = decode_client(body(&tty)).unwrap() else {
            panic!("not a session");
        };
        assert!(request.want_tty);
        assert_eq!(request.term, "xterm-256color");
        assert_eq!(request.command, "");

        let stdio = hex("00 00 00 1d 10 00 00 08 00 00 00 01 00 00 00 00
             00 00 00 09 6c 6f 63 61 6c 68 6f 73 74 00 00 00 16");
        assert_eq!(
            decode_client(body(&stdio)).unwrap(),
            ClientMessage::NewStdioForward {
                rid: 1,
                request: StdioForwardRequest {
                    target: Endpoint::Tcp {
                        host: "localhost".into(),
                        port: 22
                    }
                }
            }
        );
    }

    #[test]
    fn decodes_real_forward_requests() {
        let local = hex("00 00 00 25 10 00 00 06 00 00 00 00 00 00 00 01
             00 00 00 00 00 00 04 d2 00 00 00 09 6c 6f 63 61
             6c 68 6f 73 74 00 00 00 16");
        assert_eq!(
            decode_client(body(&local)).unwrap(),
            ClientMessage::OpenForward {
                rid: 0,
                spec: ForwardSpec {
                    kind: ForwardKind::Local,
                    listen: Endpoint::Tcp {
                        host: String::new(),
                        port: 1234
                    },
                    connect: Endpoint::Tcp {
                        host: "localhost".into(),
                        port: 22
                    },
                }
            }
        );
        let unix = hex("00 00 00 32 10 00 00 06 00 00 00 03 00 00 00 01
             00 00 00 0b 2f 74 6d 70 2f 6c 2e 73 6f 63 6b ff
             ff ff fe 00 00 00 0b 2f 74 6d 70 2f 72 2e 73 6f
             63 6b ff ff ff fe");
        let ClientMessage::OpenForward { rid: 3, spec } = decode_client(body(&unix)).unwrap()
        else {
            panic!("not a forward");
        };
        assert_eq!(
            spec.listen,
            Endpoint::Unix {
                path: "/tmp/l.sock".into()
            }
        );
        assert_eq!(spec.to_owned().connect.to_string(), "/tmp/r.sock");
    }

    #[test]
    fn unknown_types_keep_their_request_id() {
        let packet = [0x10, 0, 0, 0x99, 0, 0, 0, 5, 1, 2, 3];
        assert_eq!(
            decode_client(&packet).unwrap(),
            ClientMessage::Unknown {
                msg_type: 0x1000_0099,
                rid: 5
            }
        );
    }

    #[test]
    fn malformed_bodies_are_errors() {
        assert_eq!(
            decode_client(&[]),
            Err(WireError::Truncated("message type"))
        );
        assert_eq!(
            decode_client(&[0x10, 0, 0, 4]),
            Err(WireError::Truncated("request id"))
        );
        // A string length running past the end.
        let mut bad = vec![0x10, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 9];
        bad.extend_from_slice(b"abc");
        assert_eq!(decode_client(&bad), Err(WireError::Truncated("reserved")));
        // An embedded NUL in the command.
        let mut nul = vec![0x10, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 0];
        nul.extend_from_slice(&[0; 16]);
        nul.extend_from_slice(&[0, 0, 0, 0x7e, 0, 0, 0, 0, 0, 0, 0, 3, b'a', 0, b'b']);
        assert_eq!(decode_client(&nul), Err(WireError::EmbeddedNul("command")));
        // Trailing bytes after a fixed-size message.
        assert!(matches!(
            decode_client(&[0x10, 0, 0, 4, 0, 0, 0, 0, 9]),
            Err(WireError::TrailingBytes { .. })
        ));
        // A TCP port above 65535.
        let mut port = vec![0x10, 0, 0, 6, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0];
        port.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 1, b'h', 0, 0, 0, 22]);
        assert_eq!(
            decode_client(&port),
            Err(WireError::BadPort {
                what: "listen",
                port: 65536
            })
        );
    }

    #[test]
    fn length_limits() {
        assert_eq!(check_length(0), Err(WireError::Empty));
        assert_eq!(check_length(8), Ok(8));
        assert_eq!(check_length(256 * 1024), Ok(256 * 1024));
        assert!(check_length(300 * 1024).is_err());
    }

    #[test]
    fn decoding_arbitrary_bytes_never_panics() {
        // A cheap deterministic fuzz: every prefix and a pseudo-random walk.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for len in 0..512 {
            let bytes: Vec<u8> = (0..len)
                .map(|i| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    if i < 4 {
                        [0x10, 0, 0, 2][i % 4]
                    } else {
                        state as u8 & 0x0f
                    }
                })
                .collect();
            let _ = decode_client(&bytes);
        }
    }
}
