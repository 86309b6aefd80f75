//! A minimal raw client for the mux protocol (mux-protocol.md §1.3, §3),
//! for sending what the stock ssh client never would.

use std::io::{self, ErrorKind, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

pub const MUX_MSG_HELLO: u32 = 0x0000_0001;
pub const MUX_C_NEW_SESSION: u32 = 0x1000_0002;
pub const MUX_C_ALIVE_CHECK: u32 = 0x1000_0004;
pub const MUX_S_FAILURE: u32 = 0x8000_0003;
pub const MUX_S_ALIVE: u32 = 0x8000_0005;
pub const PROTOCOL_VERSION: u32 = 4;

/// Generous: only there so that a master that never answers fails the
/// test instead of hanging it.
const IO_TIMEOUT: Duration = Duration::from_secs(20);

/// A message payload under construction (without the length prefix).
#[derive(Default)]
pub struct Msg(Vec<u8>);

impl Msg {
    pub fn new(msg_type: u32) -> Msg {
        Msg::default().u32(msg_type)
    }

    pub fn u32(mut self, value: u32) -> Msg {
        self.0.extend_from_slice(&value.to_be_bytes());
        self
    }

    pub fn string(mut self, value: &[u8]) -> Msg {
        let len = u32::try_from(value.len()).expect("string too long");
        self.0.extend_from_slice(&len.to_be_bytes());
        self.0.extend_from_slice(value);
        self
    }

    /// The payload with its uint32 length prefix: one packet on the wire.
    pub fn framed(&self) -> Vec<u8> {
        let len = u32::try_from(self.0.len()).expect("packet too long");
        let mut packet = len.to_be_bytes().to_vec();
        packet.extend_from_slice(&self.0);
        packet
    }
}

/// `HELLO` with the given protocol version and no extensions.
pub fn hello(version: u32) -> Msg {
    Msg::new(MUX_MSG_HELLO).u32(version)
}

/// `NEW_SESSION` for a plain (no tty) command, as `ssh host command` sends
/// it (mux-protocol.md §3.2).
pub fn new_session(request_id: u32, command: &str) -> Msg {
    Msg::new(MUX_C_NEW_SESSION)
        .u32(request_id)
        .string(b"") // reserved
        .u32(0) // want tty
        .u32(0) // want X11
        .u32(0) // want agent
        .u32(0) // subsystem
        .u32(u32::from(b'~')) // escape char
        .string(b"dumb") // TERM
        .string(command.as_bytes())
}

/// A reader over one received payload.
pub struct Fields<'a>(&'a [u8]);

impl<'a> Fields<'a> {
    pub fn new(payload: &'a [u8]) -> Fields<'a> {
        Fields(payload)
    }

    pub fn u32(&mut self) -> u32 {
        let (head, rest) = self.0.split_at_checked(4).expect("truncated uint32");
        self.0 = rest;
        u32::from_be_bytes(head.try_into().expect("4 bytes"))
    }

    pub fn string(&mut self) -> &'a [u8] {
        let len = self.u32() as usize;
        let (head, rest) = self.0.split_at_checked(len).expect("truncated string");
        self.0 = rest;
        head
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A connection to a control socket.
pub struct RawClient {
    stream: UnixStream,
}

impl RawClient {
    pub fn connect(path: &Path) -> RawClient {
        let stream =
            UnixStream::connect(path).unwrap_or_else(|e| panic!("connect {}: {e}", path.display()));
        stream.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
        stream.set_write_timeout(Some(IO_TIMEOUT)).expect("timeout");
        RawClient { stream }
    }

    /// Writes bytes as they are, framed or not. A write error is returned
    /// rather than panicking: the master may already have hung up.
    pub fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    pub fn send(&mut self, msg: &Msg) -> io::Result<()> {
        self.send_raw(&msg.framed())
    }

    /// Closes our sending direction: the master sees EOF.
    pub fn shutdown_write(&mut self) {
        let _ = self.stream.shutdown(Shutdown::Write);
    }

    /// Reads one packet's payload.
    pub fn read_packet(&mut self) -> Vec<u8> {
        let mut len = [0; 4];
        self.stream
            .read_exact(&mut len)
            .unwrap_or_else(|e| panic!("reading a packet length from the master: {e}"));
        let mut payload = vec![0; u32::from_be_bytes(len) as usize];
        self.stream
            .read_exact(&mut payload)
            .unwrap_or_else(|e| panic!("reading a packet body from the master: {e}"));
        payload
    }

    /// [`RawClient::expect_hello`], or false if the master closes the
    /// connection first (it refused it).
    pub fn greeted(&mut self) -> bool {
        let mut first = [0; 1];
        match rustix::net::recv(&self.stream, &mut first, rustix::net::RecvFlags::PEEK) {
            Ok((0, _)) => false,
            Err(rustix::io::Errno::CONNRESET) => false,
            _ => {
                self.expect_hello();
                true
            }
        }
    }

    /// Reads the master's HELLO and checks that it speaks version 4.
    /// Extensions are allowed and ignored.
    pub fn expect_hello(&mut self) {
        let payload = self.read_packet();
        let mut fields = Fields::new(&payload);
        assert_eq!(fields.u32(), MUX_MSG_HELLO, "first packet is HELLO");
        assert_eq!(fields.u32(), PROTOCOL_VERSION, "HELLO version");
    }

    /// Asserts that the master closes the connection without sending
    /// anything more. A close with our unread bytes still queued on its side
    /// shows up as ECONNRESET, which counts as closed too.
    #[track_caller]
    pub fn expect_closed(&mut self, what: &str) {
        let mut buf = [0; 256];
        match self.stream.read(&mut buf) {
            Ok(0) => {}
            Ok(n) => panic!(
                "{what}: expected the master to close the connection, got {n} bytes: {:02x?}",
                &buf[..n]
            ),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!("{what}: the master kept the connection open for {IO_TIMEOUT:?}")
            }
            Err(e) => panic!("{what}: reading from the master: {e}"),
        }
    }
}

impl RawClient {
    /// Like [`RawClient::expect_closed`], for a connection that may first
    /// answer part of what was sent: reads and discards until the master
    /// closes it. Returns how many bytes came before the close.
    pub fn expect_closed_after_replies(&mut self, what: &str) -> usize {
        let mut buf = [0; 4096];
        let mut discarded = 0;
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => return discarded,
                Ok(n) => discarded += n,
                Err(e) if e.kind() == ErrorKind::ConnectionReset => return discarded,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    panic!("{what}: the master kept the connection open for {IO_TIMEOUT:?}")
                }
                Err(e) => panic!("{what}: reading from the master: {e}"),
            }
        }
    }
}

// ---- Forwarding requests (mux-protocol.md §3.5, §3.6) ----

pub const MUX_C_OPEN_FWD: u32 = 0x1000_0006;
pub const MUX_C_CLOSE_FWD: u32 = 0x1000_0007;
pub const MUX_S_OK: u32 = 0x8000_0001;
pub const MUX_S_REMOTE_PORT: u32 = 0x8000_0007;

/// Forwarding types of OPEN_FWD / CLOSE_FWD.
pub const MUX_FWD_LOCAL: u32 = 1;
pub const MUX_FWD_REMOTE: u32 = 2;
pub const MUX_FWD_DYNAMIC: u32 = 3;

/// The "port" that says the host field is a Unix socket path.
pub const MUX_FWD_PORT_STREAMLOCAL: u32 = 0xFFFF_FFFE;

/// One side of a forward as it goes on the wire: a host (or path) and a
/// port (or [`MUX_FWD_PORT_STREAMLOCAL`]).
#[derive(Clone, Copy, Debug)]
pub struct FwdEnd<'a> {
    pub host: &'a str,
    pub port: u32,
}

/// `OPEN_FWD` (`open` true) or `CLOSE_FWD` with the six fields as given,
/// unchecked.
pub fn forward(open: bool, request_id: u32, kind: u32, listen: FwdEnd, connect: FwdEnd) -> Msg {
    let msg_type = if open {
        MUX_C_OPEN_FWD
    } else {
        MUX_C_CLOSE_FWD
    };
    Msg::new(msg_type)
        .u32(request_id)
        .u32(kind)
        .string(listen.host.as_bytes())
        .u32(listen.port)
        .string(connect.host.as_bytes())
        .u32(connect.port)
}

impl RawClient {
    /// Reads the master's HELLO and answers with ours (version 4).
    pub fn handshake(&mut self) {
        self.expect_hello();
        self.send(&hello(PROTOCOL_VERSION))
            .expect("send HELLO to the master");
    }

    /// Reads one reply, checks that it is `FAILURE` for `request_id`, and
    /// returns its reason.
    #[track_caller]
    pub fn expect_failure(&mut self, request_id: u32) -> String {
        let reply = self.read_packet();
        let mut fields = Fields::new(&reply);
        let msg_type = fields.u32();
        assert_eq!(
            msg_type, MUX_S_FAILURE,
            "expected FAILURE, got message type {msg_type:#x}: {reply:02x?}"
        );
        assert_eq!(fields.u32(), request_id, "request id of the FAILURE");
        let reason = String::from_utf8_lossy(fields.string()).into_owned();
        assert!(fields.is_empty(), "trailing bytes in FAILURE");
        reason
    }

    /// Sends `ALIVE_CHECK` and checks that `ALIVE` comes back with
    /// `master_pid`: the connection is still in working order.
    #[track_caller]
    pub fn expect_alive(&mut self, request_id: u32, master_pid: u32) {
        self.send(&Msg::new(MUX_C_ALIVE_CHECK).u32(request_id))
            .expect("send ALIVE_CHECK");
        let reply = self.read_packet();
        let mut fields = Fields::new(&reply);
        assert_eq!(fields.u32(), MUX_S_ALIVE, "reply type to ALIVE_CHECK");
        assert_eq!(fields.u32(), request_id, "request id of ALIVE");
        assert_eq!(fields.u32(), master_pid, "pid in ALIVE");
    }
}
