//! Receiving descriptors passed over a Unix socket (SCM_RIGHTS), the one
//! way both readers of them do it: the control connection (`mux::fdpass`)
//! and the proc helper (`access::proc_helper`).

use std::io::IoSliceMut;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};

use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};

/// One `recvmsg` into `buf`. The descriptors that came with it, as many as
/// `control` has room for (size it with `rustix::cmsg_space!`), are
/// appended to `fds`, close-on-exec; any beyond that room the kernel
/// closes. Returns the number of bytes read (0 at the end).
pub fn recv_with_fds(
    socket: impl AsFd,
    buf: &mut [u8],
    control: &mut [MaybeUninit<u8>],
    fds: &mut impl Extend<OwnedFd>,
) -> rustix::io::Result<usize> {
    let mut control = RecvAncillaryBuffer::new(control);
    let received = rustix::net::recvmsg(
        socket,
        &mut [IoSliceMut::new(buf)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received_fds) = message {
            fds.extend(received_fds);
        }
    }
    Ok(received.bytes)
}
