//! Reading and writing one control connection: framed mux packets plus the
//! file descriptors the client passes with SCM_RIGHTS.
//!
//! Every read is a `recvmsg` with room for descriptors. A plain `read` that
//! consumed a carrier byte would make Linux close the descriptor riding on it,
//! and a read-ahead buffer could swallow the next packet's carrier bytes, so
//! we read exactly the bytes we need and queue any descriptors in arrival
//! order, whatever grouping the client used.

use std::collections::VecDeque;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use tokio::io::Interest;
use tokio::net::UnixStream;

use super::wire::{self, ServerMessage, WireError};

/// Why reading from a control connection stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("client closed the connection")]
    Closed,
    #[error("client closed the connection in the middle of a packet")]
    TruncatedPacket,
    #[error("malformed packet: {0}")]
    Malformed(#[from] WireError),
    #[error("did not receive file descriptors")]
    MissingFds,
    #[error("client passed more than {MAX_QUEUED_FDS} file descriptors it was not asked for")]
    TooManyFds,
    #[error("read error: {0}")]
    Io(#[from] io::Error),
    #[error("malformed proxy packet: {0}")]
    Proxy(#[from] crate::mux::proxy::packet::PacketError),
}

/// At most this many descriptors are accepted with any one byte; more than a
/// session needs, so that a client packing all three into one `sendmsg` works.
const MAX_FDS_PER_READ: usize = 4;

/// At most this many received descriptors wait for the request that uses
/// them (a session takes three): a client cannot make the master hold its
/// descriptors by the thousand.
const MAX_QUEUED_FDS: usize = 8;

/// The reading side of a control connection.
pub struct ControlReader {
    stream: Arc<UnixStream>,
    fds: VecDeque<OwnedFd>,
}

impl ControlReader {
    pub fn new(stream: Arc<UnixStream>) -> Self {
        ControlReader {
            stream,
            fds: VecDeque::new(),
        }
    }

    /// Reads one packet body. `Ok(None)` is a clean end of stream between
    /// packets.
    pub async fn read_packet(&mut self) -> Result<Option<Vec<u8>>, ReadError> {
        let mut len = [0u8; 4];
        match self.read_exact(&mut len).await {
            Ok(()) => {}
            Err(ReadError::Closed) => return Ok(None),
            Err(e) => return Err(e),
        }
        let len = wire::check_length(u32::from_be_bytes(len))?;
        let mut body = vec![0u8; len];
        match self.read_exact(&mut body).await {
            Err(ReadError::Closed) => Err(ReadError::TruncatedPacket),
            other => other.map(|()| Some(body)),
        }
    }

    /// Reads one SSH packet body of a proxy client (padding length, type,
    /// payload, padding). The framing is a uint32 length as for mux
    /// packets; only the limits differ. `Ok(None)`: clean end of stream.
    pub async fn read_proxy_packet(&mut self) -> Result<Option<Vec<u8>>, ReadError> {
        let mut len = [0u8; 4];
        match self.read_exact(&mut len).await {
            Ok(()) => {}
            Err(ReadError::Closed) => return Ok(None),
            Err(e) => return Err(e),
        }
        let len = crate::mux::proxy::packet::check_length(u32::from_be_bytes(len))?;
        let mut body = vec![0u8; len];
        match self.read_exact(&mut body).await {
            Err(ReadError::Closed) => Err(ReadError::TruncatedPacket),
            other => other.map(|()| Some(body)),
        }
    }

    /// Receives `count` descriptors that follow a request, reading one
    /// carrier byte at a time until enough have arrived.
    pub async fn receive_fds(&mut self, count: usize) -> Result<Vec<OwnedFd>, ReadError> {
        while self.fds.len() < count {
            let before = self.fds.len();
            let mut carrier = [0u8; 1];
            self.read_exact(&mut carrier).await?;
            if self.fds.len() == before {
                return Err(ReadError::MissingFds);
            }
        }
        Ok(self.fds.drain(..count).collect())
    }

    /// Waits until the client closes the connection or sends more bytes.
    /// Returns true on end of stream. Used while a session runs, when the
    /// only interesting event is the client going away.
    pub async fn peer_closed_or_readable(&self) -> io::Result<bool> {
        loop {
            self.stream.readable().await?;
            let mut byte = [0u8; 1];
            match self.stream.try_io(Interest::READABLE, || {
                rustix::net::recv(&*self.stream, &mut byte, rustix::net::RecvFlags::PEEK)
                    .map(|(n, _)| n)
                    .map_err(io::Error::from)
            }) {
                Ok(0) => return Ok(true),
                Ok(_) => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Ok(true),
                Err(e) => return Err(e),
            }
        }
    }

    async fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), ReadError> {
        let mut filled = 0;
        while filled < buf.len() {
            let n = self.recv_some(&mut buf[filled..]).await?;
            if n == 0 {
                return Err(if filled == 0 {
                    ReadError::Closed
                } else {
                    ReadError::TruncatedPacket
                });
            }
            filled += n;
        }
        Ok(())
    }

    async fn recv_some(&mut self, buf: &mut [u8]) -> Result<usize, ReadError> {
        let fds = &mut self.fds;
        let stream = &self.stream;
        let n = stream
            .async_io(Interest::READABLE, || {
                let mut space =
                    [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS_PER_READ))];
                Ok(crate::scm::recv_with_fds(&**stream, buf, &mut space, fds)?)
            })
            .await?;
        if self.fds.len() > MAX_QUEUED_FDS {
            self.fds.clear();
            return Err(ReadError::TooManyFds);
        }
        Ok(n)
    }
}

/// The writing side of a control connection. Replies are small and written
/// whole; a client that stops reading them only stalls its own task.
#[derive(Clone)]
pub struct ControlWriter {
    stream: Arc<UnixStream>,
}

impl ControlWriter {
    pub fn new(stream: Arc<UnixStream>) -> Self {
        ControlWriter { stream }
    }

    pub async fn send(&self, message: &ServerMessage) -> io::Result<()> {
        self.send_raw(&message.encode()).await
    }

    /// Ends our half of the connection: the client reads EOF, which is
    /// what lets it exit once its session is over, without waiting for the
    /// master's bookkeeping (audit record, log line) that follows.
    pub fn hang_up(&self) {
        let _ = rustix::net::shutdown(&*self.stream, rustix::net::Shutdown::Write);
    }

    /// Writes bytes that are already framed (proxy-mode SSH packets).
    pub async fn send_raw(&self, bytes: &[u8]) -> io::Result<()> {
        let mut written = 0;
        while written < bytes.len() {
            let n = self
                .stream
                .async_io(Interest::WRITABLE, || {
                    rustix::net::send(
                        &*self.stream,
                        &bytes[written..],
                        rustix::net::SendFlags::NOSIGNAL,
                    )
                    .map_err(io::Error::from)
                })
                .await?;
            written += n;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
    use std::io::IoSlice;
    use std::os::fd::AsFd;

    fn send_with_fds(sock: &std::os::unix::net::UnixStream, bytes: &[u8], fds: &[OwnedFd]) {
        let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(4))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !borrowed.is_empty() {
            assert!(control.push(SendAncillaryMessage::ScmRights(&borrowed)));
        }
        rustix::net::sendmsg(
            sock,
            &[IoSlice::new(bytes)],
            &mut control,
            SendFlags::empty(),
        )
        .unwrap();
    }

    fn devnull() -> OwnedFd {
        std::fs::File::open("/dev/null").unwrap().into()
    }

    async fn pair() -> (std::os::unix::net::UnixStream, ControlReader) {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        b.set_nonblocking(true).unwrap();
        let b = UnixStream::from_std(b).unwrap();
        (a, ControlReader::new(Arc::new(b)))
    }

    #[test]
    fn packet_then_one_fd_per_carrier_byte() {
        crate::test_support::runtime().block_on(async {
            let (client, mut reader) = pair().await;
            let hello = ServerMessage::Hello { extensions: vec![] }.encode();
            // The packet and the first carrier byte can arrive in one read
            // on the receiving side; exact-length reads keep them apart.
            send_with_fds(&client, &hello, &[]);
            send_with_fds(&client, &[0], &[devnull()]);
            send_with_fds(&client, &[0], &[devnull()]);
            send_with_fds(&client, &[0], &[devnull()]);
            let body = reader.read_packet().await.unwrap().unwrap();
            assert_eq!(body, hello[4..]);
            let fds = reader.receive_fds(3).await.unwrap();
            assert_eq!(fds.len(), 3);
            drop(client);
            assert!(reader.read_packet().await.unwrap().is_none());
        });
    }

    #[test]
    fn three_fds_in_one_sendmsg_are_accepted() {
        crate::test_support::runtime().block_on(async {
            let (client, mut reader) = pair().await;
            send_with_fds(&client, &[0], &[devnull(), devnull(), devnull()]);
            assert_eq!(reader.receive_fds(3).await.unwrap().len(), 3);
        });
    }

    #[test]
    fn descriptors_nobody_asked_for_are_bounded() {
        crate::test_support::runtime().block_on(async {
            let (client, mut reader) = pair().await;
            for _ in 0..3 {
                send_with_fds(&client, &[0], &[devnull(), devnull(), devnull()]);
            }
            send_with_fds(&client, &0u32.to_be_bytes(), &[]);
            assert!(matches!(
                reader.read_packet().await,
                Err(ReadError::TooManyFds)
            ));
        });
    }

    #[test]
    fn carrier_without_fd_is_an_error() {
        crate::test_support::runtime().block_on(async {
            let (client, mut reader) = pair().await;
            send_with_fds(&client, &[0, 0, 0], &[]);
            assert!(matches!(
                reader.receive_fds(3).await,
                Err(ReadError::MissingFds)
            ));
        });
    }

    #[test]
    fn truncated_and_oversized_packets() {
        crate::test_support::runtime().block_on(async {
            let (client, mut reader) = pair().await;
            send_with_fds(&client, &[0, 0, 0, 8, 0, 0], &[]);
            drop(client);
            assert!(matches!(
                reader.read_packet().await,
                Err(ReadError::TruncatedPacket)
            ));

            let (client, mut reader) = pair().await;
            send_with_fds(&client, &(300u32 * 1024).to_be_bytes(), &[]);
            assert!(matches!(
                reader.read_packet().await,
                Err(ReadError::Malformed(WireError::TooLong(_)))
            ));
        });
    }
}
