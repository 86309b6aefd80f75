//! The SSH connection-protocol packets of `ssh -O proxy`
//! (`src/proxy/packet.rs`).
//!
//! The input is one packet body (padding length, type, payload, padding),
//! as `packet::decode` gets it after the uint32 length.
//!
//! Invariants:
//! - decoding never panics; errors are `PacketError` values that format;
//! - a decoded packet re-encodes (with the client-side encoder below, which
//!   keeps the input's padding length) to a body that decodes to the same
//!   packet;
//! - `check_length` accepts exactly 2..=MAX_PACKET_LEN;
//! - `decode_modes` yields only opcodes 1..=159 and never more pairs than
//!   the string has room for;
//! - every `ServerPacket` (built from the input) is framed correctly, is at
//!   least the 5 bytes OpenSSH's client insists on, and decodes with the
//!   client decoder as the packet of the same layout, fields intact.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::arbitrary::{self, Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use muxguard::fuzzing::packet::{
    self, ChannelRequest, ClientPacket, GlobalRequest, MAX_PACKET_LEN, OpenKind, ServerPacket,
    ServerRequest, msg,
};

fuzz_target!(|data: &[u8]| {
    check_body(data);
    if data.len() >= 4 {
        let prefix = u32::from_be_bytes([data[0], data[1], data[2], data[3]]);
        match packet::check_length(prefix) {
            Ok(len) => assert!((2..=MAX_PACKET_LEN).contains(&len) && len == prefix as usize),
            Err(_) => assert!(prefix < 2 || prefix as usize > MAX_PACKET_LEN),
        }
    }
    let pairs = packet::decode_modes(data);
    assert!(pairs.len() * 5 <= data.len());
    assert!(pairs.iter().all(|&(op, _)| (1..160).contains(&op)));
    check_server_packets(data);
});

fn check_body(body: &[u8]) {
    let decoded = match packet::decode(body) {
        Ok(p) => p,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    let _ = decoded.name();
    let padding = body[0];
    let encoded = encode_client(&decoded, padding);
    if encoded.len() > MAX_PACKET_LEN {
        // Re-encoding may add a few bytes (the reserved fields of a
        // streamlocal open, a language tag); only near the limit.
        return;
    }
    let again = packet::decode(&encoded)
        .unwrap_or_else(|e| panic!("re-encoded {decoded:?} does not decode: {e}"));
    assert_eq!(again, decoded, "round trip changed the packet");
    if let ClientPacket::Request {
        request: ChannelRequest::PtyReq { modes, .. },
        ..
    } = &decoded
    {
        let _ = packet::decode_modes(modes);
    }
    // Where the server has a packet of the same layout, ours must decode to
    // the client's.
    if let Some(server) = server_twin(&decoded) {
        let wire = server.encode();
        let body = framed_body(&wire);
        if body.len() <= MAX_PACKET_LEN {
            assert_eq!(packet::decode(body), Ok(decoded), "server twin {server:?}");
        }
    }
}

/// The server packet with the same wire layout as a client packet.
fn server_twin(p: &ClientPacket) -> Option<ServerPacket> {
    Some(match p.clone() {
        ClientPacket::RequestFailure => ServerPacket::RequestFailure,
        ClientPacket::RequestSuccess => ServerPacket::RequestSuccess { port: None },
        ClientPacket::OpenConfirmation {
            recipient,
            sender,
            window,
            max_packet,
        } => ServerPacket::OpenConfirmation {
            recipient,
            sender,
            window,
            max_packet,
        },
        ClientPacket::OpenFailure {
            recipient,
            reason,
            description,
        } => ServerPacket::OpenFailure {
            recipient,
            reason,
            description,
        },
        ClientPacket::WindowAdjust { recipient, bytes } => {
            ServerPacket::WindowAdjust { recipient, bytes }
        }
        ClientPacket::Data { recipient, data } => ServerPacket::Data { recipient, data },
        ClientPacket::ExtendedData {
            recipient,
            code,
            data,
        } => ServerPacket::ExtendedData {
            recipient,
            code,
            data,
        },
        ClientPacket::Eof { recipient } => ServerPacket::Eof { recipient },
        ClientPacket::Close { recipient } => ServerPacket::Close { recipient },
        ClientPacket::Success { recipient } => ServerPacket::Success { recipient },
        ClientPacket::Failure { recipient } => ServerPacket::Failure { recipient },
        _ => return None,
    })
}

/// Checks a server packet's framing and returns its body.
fn framed_body(wire: &[u8]) -> &[u8] {
    assert!(
        wire.len() >= 4 + 5,
        "below OpenSSH's 5-byte minimum: {wire:?}"
    );
    let len = u32::from_be_bytes(wire[..4].try_into().unwrap()) as usize;
    assert_eq!(len, wire.len() - 4, "length prefix is wrong");
    &wire[4..]
}

fn check_server_packets(data: &[u8]) {
    let mut u = Unstructured::new(data);
    for _ in 0..3 {
        let Ok((server, expected)) = server_packet(&mut u) else {
            return;
        };
        let wire = server.encode();
        let body = framed_body(&wire);
        if body.len() <= MAX_PACKET_LEN {
            assert_eq!(
                packet::decode(body),
                Ok(expected),
                "{server:?} decodes differently"
            );
        }
    }
}

/// A server packet from the input, and what the client decoder must make
/// of its bytes.
fn server_packet(u: &mut Unstructured<'_>) -> arbitrary::Result<(ServerPacket, ClientPacket)> {
    let a = u32::arbitrary(u)?;
    let b = u32::arbitrary(u)?;
    let c = u32::arbitrary(u)?;
    Ok(match u.int_in_range(0..=4u8)? {
        0 => (
            ServerPacket::RequestSuccess {
                port: Option::<u32>::arbitrary(u)?,
            },
            ClientPacket::RequestSuccess,
        ),
        1 => (
            ServerPacket::OpenForwardedTcpip {
                sender: a,
                window: b,
                max_packet: c,
                address: String::arbitrary(u)?,
                port: u32::arbitrary(u)?,
                originator: String::arbitrary(u)?,
                originator_port: u32::arbitrary(u)?,
            },
            ClientPacket::ChannelOpen {
                kind: OpenKind::Other("forwarded-tcpip".into()),
                sender: a,
                window: b,
                max_packet: c,
            },
        ),
        2 => (
            ServerPacket::Request {
                recipient: a,
                request: ServerRequest::ExitStatus(b),
            },
            ClientPacket::Request {
                recipient: a,
                want_reply: false,
                request: ChannelRequest::Other("exit-status".into()),
            },
        ),
        3 => (
            ServerPacket::Request {
                recipient: a,
                request: ServerRequest::ExitSignal {
                    signal: String::arbitrary(u)?,
                    core_dumped: bool::arbitrary(u)?,
                    message: String::arbitrary(u)?,
                },
            },
            ClientPacket::Request {
                recipient: a,
                want_reply: false,
                request: ChannelRequest::Other("exit-signal".into()),
            },
        ),
        _ => {
            let data = Bytes::from(Vec::<u8>::arbitrary(u)?);
            (
                ServerPacket::ExtendedData {
                    recipient: a,
                    code: b,
                    data: data.clone(),
                },
                ClientPacket::ExtendedData {
                    recipient: a,
                    code: b,
                    data,
                },
            )
        }
    })
}

// ---------------------------------------------------------------------------
// A client-side encoder, the inverse of decode (bodies only)
// ---------------------------------------------------------------------------

struct Out(Vec<u8>);

impl Out {
    fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }

    fn bool(&mut self, v: bool) -> &mut Self {
        self.u8(u8::from(v))
    }

    fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }

    fn string(&mut self, s: &[u8]) -> &mut Self {
        self.u32(u32::try_from(s.len()).unwrap());
        self.0.extend_from_slice(s);
        self
    }
}

fn encode_client(p: &ClientPacket, padding: u8) -> Vec<u8> {
    let message_type = match p {
        ClientPacket::GlobalRequest { .. } => msg::GLOBAL_REQUEST,
        ClientPacket::RequestSuccess => msg::REQUEST_SUCCESS,
        ClientPacket::RequestFailure => msg::REQUEST_FAILURE,
        ClientPacket::ChannelOpen { .. } => msg::CHANNEL_OPEN,
        ClientPacket::OpenConfirmation { .. } => msg::CHANNEL_OPEN_CONFIRMATION,
        ClientPacket::OpenFailure { .. } => msg::CHANNEL_OPEN_FAILURE,
        ClientPacket::WindowAdjust { .. } => msg::CHANNEL_WINDOW_ADJUST,
        ClientPacket::Data { .. } => msg::CHANNEL_DATA,
        ClientPacket::ExtendedData { .. } => msg::CHANNEL_EXTENDED_DATA,
        ClientPacket::Eof { .. } => msg::CHANNEL_EOF,
        ClientPacket::Close { .. } => msg::CHANNEL_CLOSE,
        ClientPacket::Request { .. } => msg::CHANNEL_REQUEST,
        ClientPacket::Success { .. } => msg::CHANNEL_SUCCESS,
        ClientPacket::Failure { .. } => msg::CHANNEL_FAILURE,
    };
    let mut o = Out(vec![padding, message_type]);
    match p {
        ClientPacket::GlobalRequest {
            want_reply,
            request,
        } => match request {
            GlobalRequest::TcpipForward { address, port } => {
                o.string(b"tcpip-forward")
                    .bool(*want_reply)
                    .string(address.as_bytes())
                    .u32(*port);
            }
            GlobalRequest::CancelTcpipForward { address, port } => {
                o.string(b"cancel-tcpip-forward")
                    .bool(*want_reply)
                    .string(address.as_bytes())
                    .u32(*port);
            }
            GlobalRequest::Other(name) => {
                o.string(name.as_bytes()).bool(*want_reply);
            }
        },
        ClientPacket::RequestSuccess | ClientPacket::RequestFailure => {}
        ClientPacket::ChannelOpen {
            kind,
            sender,
            window,
            max_packet,
        } => {
            let name: &[u8] = match kind {
                OpenKind::Session => b"session",
                OpenKind::DirectTcpip { .. } => b"direct-tcpip",
                OpenKind::DirectStreamlocal { .. } => b"direct-streamlocal@openssh.com",
                OpenKind::Other(name) => name.as_bytes(),
            };
            o.string(name).u32(*sender).u32(*window).u32(*max_packet);
            match kind {
                OpenKind::DirectTcpip {
                    host,
                    port,
                    originator,
                    originator_port,
                } => {
                    o.string(host.as_bytes())
                        .u32(*port)
                        .string(originator.as_bytes())
                        .u32(*originator_port);
                }
                OpenKind::DirectStreamlocal { path } => {
                    o.string(path.as_bytes()).string(b"").u32(0);
                }
                OpenKind::Session | OpenKind::Other(_) => {}
            }
        }
        ClientPacket::OpenConfirmation {
            recipient,
            sender,
            window,
            max_packet,
        } => {
            o.u32(*recipient).u32(*sender).u32(*window).u32(*max_packet);
        }
        ClientPacket::OpenFailure {
            recipient,
            reason,
            description,
        } => {
            o.u32(*recipient)
                .u32(*reason)
                .string(description.as_bytes())
                .string(b"en");
        }
        ClientPacket::WindowAdjust { recipient, bytes } => {
            o.u32(*recipient).u32(*bytes);
        }
        ClientPacket::Data { recipient, data } => {
            o.u32(*recipient).string(data);
        }
        ClientPacket::ExtendedData {
            recipient,
            code,
            data,
        } => {
            o.u32(*recipient).u32(*code).string(data);
        }
        ClientPacket::Eof { recipient }
        | ClientPacket::Close { recipient }
        | ClientPacket::Success { recipient }
        | ClientPacket::Failure { recipient } => {
            o.u32(*recipient);
        }
        ClientPacket::Request {
            recipient,
            want_reply,
            request,
        } => {
            let name: &[u8] = match request {
                ChannelRequest::PtyReq { .. } => b"pty-req",
                ChannelRequest::Env { .. } => b"env",
                ChannelRequest::Shell => b"shell",
                ChannelRequest::Exec { .. } => b"exec",
                ChannelRequest::Subsystem { .. } => b"subsystem",
                ChannelRequest::WindowChange { .. } => b"window-change",
                ChannelRequest::Signal { .. } => b"signal",
                ChannelRequest::EndOfWrite => b"eow@openssh.com",
                ChannelRequest::Other(name) => name.as_bytes(),
            };
            o.u32(*recipient).string(name).bool(*want_reply);
            match request {
                ChannelRequest::PtyReq {
                    term,
                    cols,
                    rows,
                    width,
                    height,
                    modes,
                } => {
                    o.string(term.as_bytes())
                        .u32(*cols)
                        .u32(*rows)
                        .u32(*width)
                        .u32(*height)
                        .string(modes);
                }
                ChannelRequest::Env { name, value } => {
                    o.string(name.as_bytes()).string(value.as_bytes());
                }
                ChannelRequest::Exec { command } => {
                    o.string(command);
                }
                ChannelRequest::Subsystem { name } | ChannelRequest::Signal { name } => {
                    o.string(name.as_bytes());
                }
                ChannelRequest::WindowChange {
                    cols,
                    rows,
                    width,
                    height,
                } => {
                    o.u32(*cols).u32(*rows).u32(*width).u32(*height);
                }
                ChannelRequest::Shell | ChannelRequest::EndOfWrite | ChannelRequest::Other(_) => {}
            }
        }
    }
    o.0.extend(std::iter::repeat_n(0x5a, usize::from(padding)));
    o.0
}
