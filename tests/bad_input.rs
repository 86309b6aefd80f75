//! A raw client sends what the stock ssh client never would. The master
//! closes such a connection (after its own HELLO) and keeps serving
//! everyone else (mux-protocol.md §1.4, Appendix A.12).

mod common;

use common::mux::{
    self, MUX_C_ALIVE_CHECK, MUX_S_ALIVE, MUX_S_FAILURE, Msg, PROTOCOL_VERSION, RawClient,
};
use common::{MasterKind, TestEnv, for_both_masters, run};

for_both_masters!(
    garbage_instead_of_hello,
    request_before_hello,
    truncated_packet,
    oversized_packet,
    second_hello,
    hello_version_5,
    new_session_without_fds,
    unknown_request_type,
);

/// Starts a master, lets `misbehave` talk to it right after the master's
/// HELLO, expects the master to hang up, and then checks that a normal
/// session still works through the same master.
fn expect_hang_up(kind: MasterKind, misbehave: impl FnOnce(&mut RawClient)) {
    let env = TestEnv::new();
    let _master = env.start_master(kind);
    let mut client = RawClient::connect(env.control_path());
    client.expect_hello();
    misbehave(&mut client);
    client.expect_closed("after the bad input");
    drop(client);

    run(&mut env.ssh_cmd("true")).assert_success("a normal session afterwards");
    env.assert_connections(1);
}

/// Send errors are ignored: the master may hang up before it has read all.
fn send(client: &mut RawClient, msg: &Msg) {
    let _ = client.send(msg);
}

fn garbage_instead_of_hello(kind: MasterKind) {
    // Read as a length this is 0x47455420, far above the 256 KiB limit.
    expect_hang_up(kind, |c| {
        let _ = c.send_raw(b"GET / HTTP/1.0\r\n\r\n");
    });
}

fn request_before_hello(kind: MasterKind) {
    expect_hang_up(kind, |c| send(c, &Msg::new(MUX_C_ALIVE_CHECK).u32(0)));
}

fn truncated_packet(kind: MasterKind) {
    expect_hang_up(kind, |c| {
        send(c, &mux::hello(PROTOCOL_VERSION));
        // Announces 16 bytes, delivers 6, then end of stream.
        let _ = c.send_raw(&[0, 0, 0, 16, 0x10, 0, 0, 4, 0, 0]);
        c.shutdown_write();
    });
}

fn oversized_packet(kind: MasterKind) {
    expect_hang_up(kind, |c| {
        send(c, &mux::hello(PROTOCOL_VERSION));
        let _ = c.send_raw(&(300 * 1024u32).to_be_bytes());
        let _ = c.send_raw(&[0x10, 0, 0, 4, 0, 0, 0, 1]);
    });
}

fn second_hello(kind: MasterKind) {
    expect_hang_up(kind, |c| {
        send(c, &mux::hello(PROTOCOL_VERSION));
        send(c, &mux::hello(PROTOCOL_VERSION));
    });
}

fn hello_version_5(kind: MasterKind) {
    expect_hang_up(kind, |c| send(c, &mux::hello(5)));
}

/// A NEW_SESSION followed by its three fd-carrier bytes, but sent with a
/// plain write: no SCM_RIGHTS, so no file descriptors arrive.
fn new_session_without_fds(kind: MasterKind) {
    expect_hang_up(kind, |c| {
        send(c, &mux::hello(PROTOCOL_VERSION));
        send(c, &mux::new_session(0, "true"));
        let _ = c.send_raw(&[0, 0, 0]);
    });
}

/// An unknown request type is not malformed: it gets FAILURE "unsupported
/// request" with its request id, and the connection stays usable.
fn unknown_request_type(kind: MasterKind) {
    let env = TestEnv::new();
    let master = env.start_master(kind);
    let mut client = RawClient::connect(env.control_path());
    client.expect_hello();
    client
        .send(&mux::hello(PROTOCOL_VERSION))
        .expect("send HELLO");
    client
        .send(&Msg::new(0x1000_0099).u32(5))
        .expect("send unknown request");
    let reply = client.read_packet();
    let mut fields = mux::Fields::new(&reply);
    assert_eq!(fields.u32(), MUX_S_FAILURE, "reply type");
    assert_eq!(fields.u32(), 5, "reply request id");
    assert_eq!(fields.string(), b"unsupported request");

    client
        .send(&Msg::new(MUX_C_ALIVE_CHECK).u32(6))
        .expect("send ALIVE_CHECK");
    let reply = client.read_packet();
    let mut fields = mux::Fields::new(&reply);
    assert_eq!(fields.u32(), MUX_S_ALIVE, "reply type");
    assert_eq!(fields.u32(), 6, "reply request id");
    assert_eq!(fields.u32(), master.pid(), "pid in ALIVE");
    assert!(fields.is_empty(), "trailing bytes in ALIVE");
    env.assert_connections(1);
}
