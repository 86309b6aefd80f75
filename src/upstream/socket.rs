//! The TCP socket under one upstream connection, shared between russh
//! (which reads and writes it) and the pacer (which reads the kernel's
//! view of the path, TCP_INFO, and sets the socket's pacing rate).
//!
//! The pacer holds only a weak reference ([`LinkProbe`]): when russh drops
//! the stream at the connection's end, the socket closes as it would
//! without us, and the probe answers nothing from then on. A duplicated
//! descriptor would instead keep the TCP connection open, and a bare
//! descriptor number could name another file once this one is closed.

use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// The stream russh is given: the socket behind an `Arc`, so that a
/// [`LinkProbe`] can reach it while russh owns it.
pub struct SharedStream(Arc<TcpStream>);

impl SharedStream {
    pub fn new(stream: TcpStream) -> (SharedStream, LinkProbe) {
        let stream = Arc::new(stream);
        let probe = LinkProbe(Arc::downgrade(&stream));
        (SharedStream(stream), probe)
    }
}

impl AsyncRead for SharedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            ready!(self.0.poll_read_ready(cx))?;
            // A `WouldBlock` clears the readiness tokio saw, so the next
            // `poll_read_ready` registers for the next wake-up.
            match self.0.try_read(buf.initialize_unfilled()) {
                Ok(read) => {
                    buf.advance(read);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for SharedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.0.poll_write_ready(cx))?;
            match self.0.try_write(data) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                written => return Poll::Ready(written),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Nothing is buffered here: every write went to the kernel.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(
            rustix::net::shutdown(self.0.as_fd(), rustix::net::Shutdown::Write)
                .map_err(io::Error::from),
        )
    }
}

/// What the kernel knows about the path of one connection, from TCP_INFO.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkSample {
    /// Smoothed round trip of the connection's own segments.
    pub smoothed_rtt: Duration,
    /// The smallest round trip seen recently: the path without queues.
    pub min_rtt: Duration,
    /// The most recent delivery-rate sample, in bytes per second.
    pub delivery_rate: f64,
}

impl LinkSample {
    /// How long the connection's segments wait in queues on the path (a
    /// router's buffer, our own qdisc): what a keystroke sent on any
    /// connection through the same bottleneck waits too.
    pub fn queueing(&self) -> Duration {
        self.smoothed_rtt.saturating_sub(self.min_rtt)
    }
}

/// The pacer's handle on a connection's socket; see the module comment.
#[derive(Clone, Debug, Default)]
pub struct LinkProbe(Weak<TcpStream>);

impl LinkProbe {
    /// The kernel's figures now, or `None` once the connection is closed
    /// (or on a kernel without them).
    pub fn sample(&self) -> Option<LinkSample> {
        let stream = self.0.upgrade()?;
        let info = tcp_info(&stream)?;
        // Kernels before 4.9 do not fill min_rtt; before 4.6, no delivery
        // rate. Without them there is nothing to pace by.
        if info.tcpi_min_rtt == 0 || info.tcpi_delivery_rate == 0 {
            return None;
        }
        Some(LinkSample {
            smoothed_rtt: Duration::from_micros(info.tcpi_rtt.into()),
            min_rtt: Duration::from_micros(info.tcpi_min_rtt.into()),
            delivery_rate: info.tcpi_delivery_rate as f64,
        })
    }

    /// Whether the connection's congestion control is one that measures
    /// the path and paces itself to it (BBR) instead of filling the
    /// bottleneck's buffer until it drops (Reno, CUBIC).
    pub fn keeps_queues_short(&self) -> bool {
        self.0
            .upgrade()
            .and_then(|stream| rustix::net::sockopt::tcp_congestion(stream.as_fd()).ok())
            .is_some_and(|name| name.starts_with("bbr"))
    }

    /// Sets TCP_NODELAY (best effort, as the pacing rate).
    pub fn set_nodelay(&self, on: bool) {
        let Some(stream) = self.0.upgrade() else {
            return;
        };
        if let Err(e) = stream.set_nodelay(on) {
            tracing::debug!("TCP_NODELAY not changed: {e}");
        }
    }

    /// Caps the rate at which the kernel sends on this socket, spreading
    /// segments evenly instead of in bursts (`None`: no cap). Setting a cap
    /// turns on the kernel's own pacing for the socket. Best effort: a
    /// closed connection or an old kernel just goes unpaced.
    pub fn set_max_pacing_rate(&self, bytes_per_second: Option<f64>) {
        let Some(stream) = self.0.upgrade() else {
            return;
        };
        // u64::MAX is the kernel's "unlimited".
        let rate = bytes_per_second.map_or(u64::MAX, |rate| rate.max(1.0) as u64);
        if let Err(e) = set_max_pacing_rate(&stream, rate) {
            tracing::debug!("SO_MAX_PACING_RATE not set: {e}");
        }
    }
}

/// SO_MAX_PACING_RATE from asm-generic/socket.h, which every architecture
/// we build for uses (alpha, mips, parisc and sparc number it otherwise).
#[cfg(not(any(
    target_arch = "mips",
    target_arch = "mips64",
    target_arch = "sparc",
    target_arch = "sparc64"
)))]
const SO_MAX_PACING_RATE: libc::c_int = 47;

#[allow(unsafe_code)] // see the SAFETY comment inside
fn tcp_info(stream: &TcpStream) -> Option<libc::tcp_info> {
    // SAFETY: tcp_info is plain integers, for which all-zero is a valid
    // value (and what fields an older kernel does not know stay at).
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut length = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `length` bytes (the size of `info`,
    // a live, aligned value on our stack) and stores the count written in
    // `length`; the descriptor is the open socket `stream` owns for the
    // whole call.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut info).cast(),
            &raw mut length,
        )
    };
    (rc == 0).then_some(info)
}

#[allow(unsafe_code)] // see the SAFETY comment inside
fn set_max_pacing_rate(stream: &TcpStream, rate: u64) -> io::Result<()> {
    // SAFETY: setsockopt reads exactly `size_of::<u64>()` bytes (the
    // kernel takes a 64-bit rate when given 8 bytes) from a live, aligned
    // u64 on our stack; the descriptor is the open socket `stream` owns
    // for the whole call.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_MAX_PACING_RATE,
            (&raw const rate).cast(),
            std::mem::size_of::<u64>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// The shared stream carries bytes both ways and shuts down like a
    /// plain one; the probe reads a live connection's figures and answers
    /// nothing once the stream is dropped.
    #[tokio::test]
    async fn a_shared_stream_carries_bytes_and_its_probe_dies_with_it() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let client = TcpStream::connect(address).await.unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        let (mut shared, probe) = SharedStream::new(client);

        shared.write_all(b"ping").await.unwrap();
        let mut got = [0u8; 4];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ping");
        server.write_all(b"pong").await.unwrap();
        shared.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"pong");

        let sample = probe.sample().expect("a live connection has TCP_INFO");
        assert!(sample.min_rtt <= sample.smoothed_rtt, "{sample:?}");
        probe.set_max_pacing_rate(Some(1e6));

        shared.shutdown().await.unwrap();
        let mut rest = Vec::new();
        server.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "EOF after shutdown");

        drop(shared);
        assert!(probe.sample().is_none(), "the probe keeps nothing alive");
    }
}
