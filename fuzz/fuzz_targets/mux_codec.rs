//! The mux protocol codec (`src/mux/wire.rs`).
//!
//! The input is used twice:
//!
//! 1. as one packet body, given to `wire::decode_client`;
//! 2. as a byte stream read the way the master reads its control socket:
//!    a uint32 length, `wire::check_length`, then that many bytes of body.
//!
//! Invariants:
//! - decoding never panics; errors are `WireError` values that format;
//! - every decoded message re-encodes (with the client-side encoder below,
//!   written from docs/mux-protocol.md) to bytes that decode to the same
//!   message, and that encoding is canonical (a fixed point);
//! - `check_length` accepts exactly 1..=MAX_PACKET_LEN;
//! - a server HELLO built from a decoded client HELLO's extensions decodes,
//!   body for body, as a client HELLO of version 4 with those extensions
//!   (both directions share that layout), and every server message's
//!   length prefix is the length of what follows it.
#![no_main]

use libfuzzer_sys::arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use muxguard::fuzzing::wire::{
    self, ClientMessage, Endpoint, ForwardKind, ForwardSpec, MAX_PACKET_LEN, PORT_STREAMLOCAL,
    ServerMessage, msg,
};

fuzz_target!(|data: &[u8]| {
    check_body(data);
    check_stream(data);
    check_server_messages(data);
});

fn check_body(body: &[u8]) {
    match wire::decode_client(body) {
        Ok(message) => {
            let _ = message.name();
            describe(&message);
            let encoded = encode_client(&message);
            let again = wire::decode_client(&encoded).unwrap_or_else(|e| {
                panic!("re-encoded {message:?} does not decode: {e} ({encoded:02x?})")
            });
            assert_eq!(again, message, "round trip changed the message");
            assert_eq!(encode_client(&again), encoded, "encoding is not canonical");
            if let ClientMessage::Hello { extensions, .. } = &message {
                // The server's HELLO has the client's layout, version 4.
                let server = ServerMessage::Hello {
                    extensions: extensions.clone(),
                }
                .encode();
                let body = framed_body(&server);
                assert_eq!(
                    wire::decode_client(body),
                    Ok(ClientMessage::Hello {
                        version: wire::PROTOCOL_VERSION,
                        extensions: extensions.clone(),
                    })
                );
            }
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
}

/// Reads the input as consecutive framed packets until it runs out or a
/// length is refused (which closes the connection in the master).
fn check_stream(mut data: &[u8]) {
    while data.len() >= 4 {
        let prefix = u32::from_be_bytes([data[0], data[1], data[2], data[3]]);
        let len = match wire::check_length(prefix) {
            Ok(len) => {
                assert!((1..=MAX_PACKET_LEN).contains(&len));
                assert_eq!(len, prefix as usize);
                len
            }
            Err(e) => {
                assert!(prefix == 0 || prefix as usize > MAX_PACKET_LEN, "{e}");
                return;
            }
        };
        data = &data[4..];
        if data.len() < len {
            return;
        }
        let (body, rest) = data.split_at(len);
        check_body(body);
        data = rest;
    }
}

/// Builds server messages from the input and checks their framing.
fn check_server_messages(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let mut stream = Vec::new();
    for _ in 0..4 {
        let Ok(message) = server_message(&mut u) else {
            break;
        };
        let alone = message.encode();
        framed_body(&alone);
        // encode_into appends, framing each packet on its own.
        let start = stream.len();
        message.encode_into(&mut stream);
        assert_eq!(&stream[start..], &alone[..]);
    }
    let mut rest = &stream[..];
    while !rest.is_empty() {
        let len = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
        rest = &rest[4 + len..];
    }
}

fn server_message(u: &mut Unstructured<'_>) -> libfuzzer_sys::arbitrary::Result<ServerMessage> {
    let rid = u32::arbitrary(u)?;
    let other = u32::arbitrary(u)?;
    Ok(match u.int_in_range(0..=10u8)? {
        0 => ServerMessage::Hello {
            extensions: Vec::<(String, String)>::arbitrary(u)?,
        },
        1 => ServerMessage::Ok { rid },
        2 => ServerMessage::PermissionDenied {
            rid,
            reason: String::arbitrary(u)?,
        },
        3 => ServerMessage::Failure {
            rid,
            reason: String::arbitrary(u)?,
        },
        4 => ServerMessage::ExitMessage {
            session_id: rid,
            exit_value: other,
        },
        5 => ServerMessage::Alive { rid, pid: other },
        6 => ServerMessage::SessionOpened {
            rid,
            session_id: other,
        },
        7 => ServerMessage::RemotePort { rid, port: other },
        8 => ServerMessage::TtyAllocFail { session_id: rid },
        9 => ServerMessage::Proxy { rid },
        _ => ServerMessage::ExtInfo {
            rid,
            supported: bool::arbitrary(u)?,
            text: String::arbitrary(u)?,
        },
    })
}

/// Checks a framed packet's length prefix and returns its body.
fn framed_body(packet: &[u8]) -> &[u8] {
    assert!(packet.len() >= 8, "a packet has at least a type and an id");
    let len = u32::from_be_bytes(packet[..4].try_into().unwrap()) as usize;
    assert_eq!(len, packet.len() - 4, "length prefix is wrong");
    &packet[4..]
}

/// Formats the parts that have a Display of their own.
fn describe(message: &ClientMessage) {
    match message {
        ClientMessage::OpenForward { spec, .. } | ClientMessage::CloseForward { spec, .. } => {
            let _ = spec.listen.to_string();
            let _ = spec.connect.to_string();
        }
        ClientMessage::NewStdioForward { request, .. } => {
            let _ = request.target.to_string();
        }
        _ => {}
    }
}

// ---------------------------------------------------------------------------
// A client-side encoder, the inverse of decode_client (bodies only)
// ---------------------------------------------------------------------------

struct Out(Vec<u8>);

impl Out {
    fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }

    fn flag(&mut self, v: bool) -> &mut Self {
        self.u32(u32::from(v))
    }

    fn string(&mut self, s: &[u8]) -> &mut Self {
        self.u32(u32::try_from(s.len()).unwrap());
        self.0.extend_from_slice(s);
        self
    }

    fn endpoint(&mut self, e: &Endpoint) -> &mut Self {
        match e {
            Endpoint::Tcp { host, port } => self.string(host.as_bytes()).u32(u32::from(*port)),
            Endpoint::Unix { path } => self.string(path.as_bytes()).u32(PORT_STREAMLOCAL),
        }
    }

    fn forward(&mut self, spec: &ForwardSpec) -> &mut Self {
        let kind = match spec.kind {
            ForwardKind::Local => 1,
            ForwardKind::Remote => 2,
            ForwardKind::Dynamic => 3,
        };
        self.u32(kind)
            .endpoint(&spec.listen)
            .endpoint(&spec.connect)
    }
}

fn encode_client(message: &ClientMessage) -> Vec<u8> {
    let mut o = Out(Vec::new());
    match message {
        ClientMessage::Hello {
            version,
            extensions,
        } => {
            o.u32(msg::HELLO).u32(*version);
            for (name, value) in extensions {
                o.string(name.as_bytes()).string(value.as_bytes());
            }
        }
        ClientMessage::NewSession { rid, request } => {
            o.u32(msg::C_NEW_SESSION)
                .u32(*rid)
                .string(b"")
                .flag(request.want_tty)
                .flag(request.want_x11)
                .flag(request.want_agent)
                .flag(request.subsystem)
                .u32(request.escape_char)
                .string(request.term.as_bytes())
                .string(request.command.as_bytes());
            for var in &request.env {
                o.string(var.as_bytes());
            }
        }
        ClientMessage::AliveCheck { rid } => {
            o.u32(msg::C_ALIVE_CHECK).u32(*rid);
        }
        ClientMessage::Terminate { rid } => {
            o.u32(msg::C_TERMINATE).u32(*rid);
        }
        ClientMessage::OpenForward { rid, spec } => {
            o.u32(msg::C_OPEN_FWD).u32(*rid).forward(spec);
        }
        ClientMessage::CloseForward { rid, spec } => {
            o.u32(msg::C_CLOSE_FWD).u32(*rid).forward(spec);
        }
        ClientMessage::NewStdioForward { rid, request } => {
            o.u32(msg::C_NEW_STDIO_FWD)
                .u32(*rid)
                .string(b"")
                .endpoint(&request.target);
        }
        ClientMessage::StopListening { rid } => {
            o.u32(msg::C_STOP_LISTENING).u32(*rid);
        }
        ClientMessage::Proxy { rid } => {
            o.u32(msg::C_PROXY).u32(*rid);
        }
        ClientMessage::ExtInfo { rid, name } => {
            o.u32(msg::C_EXT_INFO).u32(*rid).string(name.as_bytes());
        }
        ClientMessage::Unknown { msg_type, rid } => {
            o.u32(*msg_type).u32(*rid);
        }
    }
    o.0
}
