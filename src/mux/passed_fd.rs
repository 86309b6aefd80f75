//! Doing I/O on the descriptors a client passes (its stdin, stdout, stderr)
//! without harming the processes that share them.
//!
//! The passed descriptors share open file descriptions with the user's
//! terminal, shell pipelines and sftp's socketpair. So, as OpenSSH does:
//! a terminal is never made non-blocking; pipes and sockets are made
//! non-blocking only for the session and their original flags are restored
//! before our copy is closed (once, when the last of our copies of that
//! object goes, since sftp passes one socket as both stdin and stdout).
//!
//! Three ways of doing the I/O, chosen by what the descriptor is:
//! - pipes and sockets: non-blocking, driven by the event loop;
//! - a terminal: reads happen on the event loop only when the kernel says a
//!   read will not block; writes go to a helper thread, since a write to a
//!   terminal may block and must not stall the master;
//! - /dev/null: nothing at all. Reading it is end of file and writing it
//!   discards, at once and always, so neither needs a thread (scripts and
//!   `ssh -n` pass it as stdin on every session).
//! - anything else epoll cannot watch (regular files): helper threads.
//!   Whether epoll can watch it is asked of epoll itself, so an eventfd or
//!   an inotify descriptor passed as stdin is polled, never read by a
//!   thread that would block in it for good.
//!
//! Helper threads are counted against [`MAX_HELPER_THREADS`] for the whole
//! master; a request whose descriptors would need more is refused with
//! that reason before anything runs.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use rustix::buffer::spare_capacity;
use rustix::fs::{FileType, OFlags};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::{mpsc, oneshot};

/// What a passed descriptor is, which decides how we do I/O on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FdKind {
    Terminal,
    /// Pipes, FIFOs and sockets.
    Pollable,
    /// The null device: end of file to read, a sink to write.
    Null,
    /// Regular files and other things epoll refuses.
    Blocking,
}

/// The null device's number (Linux: memory devices, minor 3) wherever
/// its node lives: that number is the driver, whatever the node's name.
fn is_null_device(stat: &rustix::fs::Stat) -> bool {
    FileType::from_raw_mode(stat.st_mode) == FileType::CharacterDevice
        && rustix::fs::major(stat.st_rdev) == 1
        && rustix::fs::minor(stat.st_rdev) == 3
}

/// Restores a description's status flags when the last of our copies of it
/// is closed.
struct FlagRestorer {
    fd: OwnedFd,
    original: OFlags,
}

impl Drop for FlagRestorer {
    fn drop(&mut self) {
        let _ = rustix::fs::fcntl_setfl(&self.fd, self.original);
    }
}

/// Helper threads (for descriptors epoll cannot watch, and terminal
/// output) the master runs at most at once.
/// Three for each control connection at the default cap (1000): a burst
/// of sessions whose stdin, stdout and stderr are all regular files must
/// still fit.
pub const MAX_HELPER_THREADS: usize = 3000;

static HELPER_THREADS: AtomicUsize = AtomicUsize::new(0);

/// A place for one helper thread, taken when a descriptor that may need
/// one is adopted and given back when the descriptor (which the thread
/// owns) is dropped.
struct ThreadPermit(());

impl ThreadPermit {
    fn take() -> io::Result<ThreadPermit> {
        HELPER_THREADS
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_HELPER_THREADS).then_some(n + 1)
            })
            .map(|_| ThreadPermit(()))
            .map_err(|_| {
                io::Error::other(format!(
                    "{MAX_HELPER_THREADS} descriptors that need a helper thread (regular files, \
                     terminals) are already in use"
                ))
            })
    }
}

impl Drop for ThreadPermit {
    fn drop(&mut self) {
        HELPER_THREADS.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Helper threads in use now.
#[cfg(test)]
pub fn helper_threads() -> usize {
    HELPER_THREADS.load(Ordering::Acquire)
}

/// Whether epoll accepts `fd` (it refuses regular files and a few devices
/// with EPERM).
fn epoll_can_watch(fd: BorrowedFd<'_>) -> io::Result<bool> {
    use rustix::event::epoll;
    let probe = epoll::create(epoll::CreateFlags::CLOEXEC)?;
    match epoll::add(
        &probe,
        fd,
        epoll::EventData::new_u64(0),
        epoll::EventFlags::IN,
    ) {
        Ok(()) => Ok(true),
        Err(rustix::io::Errno::PERM) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// One descriptor received from a client, classified.
pub struct PassedFd {
    fd: OwnedFd,
    kind: FdKind,
    /// Shared by every passed fd of the same object (see the module header).
    restorer: Option<Arc<FlagRestorer>>,
    /// Held for a descriptor that may need a helper thread.
    _permit: Option<ThreadPermit>,
}

impl PassedFd {
    #[cfg(test)]
    pub fn kind(&self) -> FdKind {
        self.kind
    }

    pub fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Classifies the descriptors of one request and switches the pollable ones
/// to non-blocking mode. Several descriptors may share one open file
/// description (sftp passes one socket as stdin and stdout), and only the
/// description carries O_NONBLOCK, so all original flags are read before any
/// is changed: a descriptor whose flags changed under us shares the
/// description of one changed earlier, and shares its restorer too.
pub fn adopt(fds: Vec<OwnedFd>) -> io::Result<Vec<PassedFd>> {
    let mut originals = Vec::with_capacity(fds.len());
    for fd in &fds {
        let stat = rustix::fs::fstat(fd)?;
        let flags = rustix::fs::fcntl_getfl(fd)?;
        let file_type = if is_null_device(&stat) {
            None
        } else {
            Some(FileType::from_raw_mode(stat.st_mode))
        };
        originals.push(((stat.st_dev, stat.st_ino), file_type, flags));
    }
    let mut adopted: Vec<PassedFd> = Vec::with_capacity(fds.len());
    for (fd, (identity, file_type, original)) in fds.into_iter().zip(originals.iter().copied()) {
        let kind = match file_type {
            None => FdKind::Null,
            Some(FileType::CharacterDevice) if rustix::termios::isatty(&fd) => FdKind::Terminal,
            Some(FileType::Fifo | FileType::Socket) => FdKind::Pollable,
            _ if epoll_can_watch(fd.as_fd())? => FdKind::Pollable,
            _ => FdKind::Blocking,
        };
        let permit = match kind {
            FdKind::Pollable | FdKind::Null => None,
            FdKind::Terminal | FdKind::Blocking => Some(ThreadPermit::take()?),
        };
        let mut restorer = None;
        if kind == FdKind::Pollable {
            if rustix::fs::fcntl_getfl(&fd)? != original {
                restorer = originals
                    .iter()
                    .zip(adopted.iter())
                    .rev()
                    .find(|((id, _, _), passed)| *id == identity && passed.restorer.is_some())
                    .and_then(|(_, passed)| passed.restorer.clone());
            } else if !original.contains(OFlags::NONBLOCK) {
                restorer = Some(Arc::new(FlagRestorer {
                    fd: fd.try_clone()?,
                    original,
                }));
                rustix::fs::fcntl_setfl(&fd, original | OFlags::NONBLOCK)?;
            }
        }
        adopted.push(PassedFd {
            fd,
            kind,
            restorer,
            _permit: permit,
        });
    }
    Ok(adopted)
}

/// Where a session's input comes from.
pub enum InputSource {
    Pollable(AsyncFd<PassedFd>),
    Terminal(AsyncFd<PassedFd>),
    Thread(mpsc::Receiver<io::Result<Bytes>>),
    /// /dev/null (our copy of it is closed at once: it is never read).
    Null,
}

impl InputSource {
    pub fn new(fd: PassedFd) -> io::Result<Self> {
        match fd.kind {
            FdKind::Pollable => Ok(InputSource::Pollable(register(fd, Interest::READABLE)?)),
            FdKind::Terminal => Ok(InputSource::Terminal(register(fd, Interest::READABLE)?)),
            FdKind::Blocking => Ok(InputSource::Thread(spawn_reader(fd)?)),
            FdKind::Null => Ok(InputSource::Null),
        }
    }

    /// Reads the next chunk; an empty chunk is end of file.
    pub async fn read(&mut self, max: usize) -> io::Result<Bytes> {
        match self {
            InputSource::Pollable(afd) => loop {
                let mut guard = afd.readable().await?;
                let mut buf = Vec::with_capacity(max);
                match guard.try_io(|inner| {
                    rustix::io::read(inner.get_ref().as_fd(), spare_capacity(&mut buf))
                        .map_err(io::Error::from)
                }) {
                    Ok(Ok(_)) => return Ok(Bytes::from(buf)),
                    Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionReset => {
                        return Ok(Bytes::new());
                    }
                    Ok(Err(e)) => return Err(e),
                    Err(_would_block) => continue,
                }
            },
            InputSource::Terminal(afd) => loop {
                let mut guard = afd.readable().await?;
                let fd = guard.get_inner().as_fd();
                // The terminal stays blocking, so only read what the kernel
                // says is there right now (a completed line in canonical
                // mode, any bytes in raw mode).
                let mut poll_fd = [rustix::event::PollFd::new(
                    &fd,
                    rustix::event::PollFlags::IN,
                )];
                let ready =
                    rustix::event::poll(&mut poll_fd, Some(&rustix::event::Timespec::default()))?;
                if ready == 0 {
                    guard.clear_ready();
                    continue;
                }
                let available = rustix::io::ioctl_fionread(fd).unwrap_or(0) as usize;
                let want = available.clamp(1, max);
                let mut buf = vec![0u8; want];
                return match rustix::io::read(fd, &mut buf) {
                    Ok(n) => {
                        buf.truncate(n);
                        Ok(Bytes::from(buf))
                    }
                    // A hung-up terminal reads as EIO: that is its end.
                    Err(rustix::io::Errno::IO) => Ok(Bytes::new()),
                    Err(e) => Err(e.into()),
                };
            },
            InputSource::Thread(rx) => match rx.recv().await {
                Some(chunk) => chunk,
                None => Ok(Bytes::new()),
            },
            InputSource::Null => Ok(Bytes::new()),
        }
    }
}

/// What a reader thread reads at once. Large, as each chunk costs a
/// hand-off to the event loop; a file reads at memory speed.
const FILE_READ_CHUNK: usize = 256 * 1024;

fn spawn_reader(fd: PassedFd) -> io::Result<mpsc::Receiver<io::Result<Bytes>>> {
    let (tx, rx) = mpsc::channel(4);
    std::thread::Builder::new()
        .name(format!("muxguard-read-{}", fd.fd.as_raw_fd()))
        .spawn(move || {
            loop {
                let mut buf = Vec::with_capacity(FILE_READ_CHUNK);
                let chunk = match rustix::io::read(&fd.fd, spare_capacity(&mut buf)) {
                    Ok(_) => Ok(Bytes::from(buf)),
                    Err(rustix::io::Errno::INTR) => continue,
                    Err(e) => Err(io::Error::from(e)),
                };
                let done = !matches!(&chunk, Ok(b) if !b.is_empty());
                if tx.blocking_send(chunk).is_err() || done {
                    break;
                }
            }
        })?;
    Ok(rx)
}

/// Where a session's output goes.
pub enum OutputSink {
    Pollable(AsyncFd<PassedFd>),
    Thread {
        tx: mpsc::Sender<Bytes>,
        done: oneshot::Receiver<io::Result<()>>,
    },
    /// /dev/null: what is written is gone, as the device would make it
    /// (our copy of it is closed at once).
    Null,
}

impl OutputSink {
    pub fn new(fd: PassedFd) -> io::Result<Self> {
        match fd.kind {
            FdKind::Pollable => Ok(OutputSink::Pollable(register(fd, Interest::WRITABLE)?)),
            FdKind::Terminal | FdKind::Blocking => Ok(spawn_writer(fd)?),
            FdKind::Null => Ok(OutputSink::Null),
        }
    }

    pub async fn write_all(&mut self, mut data: Bytes) -> io::Result<()> {
        match self {
            OutputSink::Pollable(afd) => {
                while !data.is_empty() {
                    let mut guard = afd.writable().await?;
                    match guard.try_io(|inner| {
                        rustix::io::write(inner.get_ref().as_fd(), &data).map_err(io::Error::from)
                    }) {
                        Ok(Ok(n)) => {
                            let _ = data.split_to(n);
                        }
                        Ok(Err(e)) => return Err(e),
                        Err(_would_block) => continue,
                    }
                }
                Ok(())
            }
            OutputSink::Thread { tx, .. } => tx
                .send(data)
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "output closed")),
            OutputSink::Null => Ok(()),
        }
    }

    /// Waits until everything written so far has reached the descriptor,
    /// then closes our copy of it.
    pub async fn finish(self) -> io::Result<()> {
        match self {
            OutputSink::Pollable(afd) => {
                drop(afd);
                Ok(())
            }
            OutputSink::Thread { tx, done } => {
                drop(tx);
                done.await.unwrap_or(Ok(()))
            }
            OutputSink::Null => Ok(()),
        }
    }
}

fn spawn_writer(fd: PassedFd) -> io::Result<OutputSink> {
    let (tx, mut rx) = mpsc::channel::<Bytes>(16);
    let (done_tx, done) = oneshot::channel();
    std::thread::Builder::new()
        .name(format!("muxguard-write-{}", fd.fd.as_raw_fd()))
        .spawn(move || {
            let mut result = Ok(());
            while let Some(chunk) = rx.blocking_recv() {
                if result.is_err() {
                    continue; // keep draining so senders never wait on a dead fd
                }
                result = write_all_blocking(&fd.fd, &chunk);
            }
            drop(fd);
            let _ = done_tx.send(result);
        })?;
    Ok(OutputSink::Thread { tx, done })
}

fn write_all_blocking(fd: &OwnedFd, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        match rustix::io::write(fd, data) {
            Ok(n) => data = &data[n..],
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Registers a passed fd with the event loop.
#[allow(unsafe_code)] // see the SAFETY comment inside
fn register(fd: PassedFd, interest: Interest) -> io::Result<AsyncFd<PassedFd>> {
    // SAFETY: `PassedFd` owns its `OwnedFd` and never replaces or closes it,
    // and `as_raw_fd` always returns that same descriptor; so the fd stays
    // open and names the same description for as long as the `AsyncFd`
    // holds the `PassedFd`, which is what `register_with_interest` requires.
    unsafe { AsyncFd::register_with_interest(fd, interest) }.map_err(|e| e.into_parts().1)
}

impl AsRawFd for PassedFd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.fd.as_raw_fd()
    }
}

// The transport bridges a stdio forward (`-W`) between these and a
// channel without knowing they are descriptors a client passed.
impl crate::upstream::forward::ByteSource for InputSource {
    async fn read_chunk(&mut self) -> io::Result<Bytes> {
        self.read(crate::upstream::forward::READ_CHUNK).await
    }
}

impl crate::upstream::forward::ByteSink for OutputSink {
    async fn write_chunk(&mut self, data: Bytes) -> io::Result<()> {
        self.write_all(data).await
    }
    async fn finish(self) {
        let _ = OutputSink::finish(self).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipe_flags_are_restored_once_every_copy_is_gone() {
        let (r, w) = rustix::pipe::pipe().unwrap();
        let before = rustix::fs::fcntl_getfl(&r).unwrap();
        assert!(!before.contains(OFlags::NONBLOCK));
        let keep = r.try_clone().unwrap();
        let adopted = adopt(vec![r.try_clone().unwrap(), r]).unwrap();
        assert_eq!(adopted[0].kind(), FdKind::Pollable);
        assert!(
            rustix::fs::fcntl_getfl(&keep)
                .unwrap()
                .contains(OFlags::NONBLOCK)
        );
        let mut adopted = adopted.into_iter();
        drop(adopted.next());
        // The second copy still holds the object in non-blocking mode.
        assert!(
            rustix::fs::fcntl_getfl(&keep)
                .unwrap()
                .contains(OFlags::NONBLOCK)
        );
        drop(adopted);
        assert_eq!(rustix::fs::fcntl_getfl(&keep).unwrap(), before);
        drop(w);
    }

    #[test]
    fn both_ends_of_one_pipe_are_separate_descriptions() {
        let (r, w) = rustix::pipe::pipe().unwrap();
        let (r2, w2) = (r.try_clone().unwrap(), w.try_clone().unwrap());
        let adopted = adopt(vec![r, w]).unwrap();
        assert!(
            rustix::fs::fcntl_getfl(&r2)
                .unwrap()
                .contains(OFlags::NONBLOCK)
        );
        assert!(
            rustix::fs::fcntl_getfl(&w2)
                .unwrap()
                .contains(OFlags::NONBLOCK)
        );
        drop(adopted);
        assert!(
            !rustix::fs::fcntl_getfl(&r2)
                .unwrap()
                .contains(OFlags::NONBLOCK)
        );
        assert!(
            !rustix::fs::fcntl_getfl(&w2)
                .unwrap()
                .contains(OFlags::NONBLOCK)
        );
    }

    #[test]
    fn regular_files_use_threads_and_only_the_null_device_is_null() {
        let file: OwnedFd = tempfile::tempfile().unwrap().into();
        // /dev/zero is a character device of the same driver, minor 5: it
        // reads forever, so it must not be taken for /dev/null.
        let zero: OwnedFd = std::fs::File::open("/dev/zero").unwrap().into();
        let null: OwnedFd = std::fs::File::open("/dev/null").unwrap().into();
        let adopted = adopt(vec![file, zero, null]).unwrap();
        let kinds: Vec<FdKind> = adopted.iter().map(PassedFd::kind).collect();
        assert_eq!(kinds, [FdKind::Blocking, FdKind::Blocking, FdKind::Null]);
        assert!(helper_threads() >= 2);
    }

    #[test]
    fn the_null_device_reads_as_end_of_file_and_swallows_output() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let open = |write: bool| -> PassedFd {
                let file = std::fs::OpenOptions::new()
                    .read(!write)
                    .write(write)
                    .open("/dev/null")
                    .unwrap();
                adopt(vec![file.into()]).unwrap().pop().unwrap()
            };
            let mut input = InputSource::new(open(false)).unwrap();
            assert!(input.read(1024).await.unwrap().is_empty());
            let mut output = OutputSink::new(open(true)).unwrap();
            output.write_all(Bytes::from_static(b"gone")).await.unwrap();
            output.finish().await.unwrap();
        });
    }

    #[test]
    fn an_eventfd_is_polled_not_read_by_a_thread_that_would_block() {
        use rustix::event::{EventfdFlags, eventfd};
        let event = eventfd(0, EventfdFlags::CLOEXEC).unwrap();
        let adopted = adopt(vec![event]).unwrap();
        assert_eq!(adopted[0].kind(), FdKind::Pollable);
    }

    #[test]
    fn output_and_input_round_trip_through_a_pipe_and_a_file() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (r, w) = rustix::pipe::pipe().unwrap();
            let mut adopted = adopt(vec![r, w]).unwrap();
            let mut sink = OutputSink::new(adopted.pop().unwrap()).unwrap();
            let mut source = InputSource::new(adopted.pop().unwrap()).unwrap();
            let writer = tokio::spawn(async move {
                for _ in 0..64 {
                    sink.write_all(Bytes::from(vec![7u8; 8192])).await.unwrap();
                }
                sink.finish().await.unwrap();
            });
            let mut total = 0;
            loop {
                let chunk = source.read(16384).await.unwrap();
                if chunk.is_empty() {
                    break;
                }
                assert!(chunk.iter().all(|&b| b == 7));
                total += chunk.len();
            }
            writer.await.unwrap();
            assert_eq!(total, 64 * 8192);

            let file = tempfile::NamedTempFile::new().unwrap();
            let fd: OwnedFd = file.reopen().unwrap().into();
            let mut sink = OutputSink::new(adopt(vec![fd]).unwrap().pop().unwrap()).unwrap();
            sink.write_all(Bytes::from_static(b"hello ")).await.unwrap();
            sink.write_all(Bytes::from_static(b"world")).await.unwrap();
            sink.finish().await.unwrap();
            assert_eq!(std::fs::read(file.path()).unwrap(), b"hello world");

            let fd: OwnedFd = std::fs::File::open(file.path()).unwrap().into();
            let mut source = InputSource::new(adopt(vec![fd]).unwrap().pop().unwrap()).unwrap();
            assert_eq!(&source.read(100).await.unwrap()[..], b"hello world");
            assert!(source.read(100).await.unwrap().is_empty());
        });
    }
}
