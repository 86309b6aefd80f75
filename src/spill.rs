//! Per-channel output buffers that never make the connection wait on a
//! slow client: data the client has not read yet stays in memory up to a
//! small bound, then goes to an unlinked temporary file in the master's
//! private state directory (as nginx buffers for slow clients), up to a
//! per-channel cap and a cap over all channels. Only past those caps does a
//! producer have to wait — and so the connection pause — and that is logged.
//!
//! Bytes come out exactly in the order they went in: once anything is on
//! disk, new data follows it there until the file has been read back.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::Notify;

/// Limits shared by every buffer of one master.
#[derive(Debug)]
pub struct SpillLimits {
    pub memory_per_channel: usize,
    pub disk_per_channel: u64,
    pub disk_total: u64,
    /// Where spill files are created (mode 0700, ours).
    pub directory: PathBuf,
    /// Bytes on disk over all channels right now.
    pub disk_in_use: AtomicU64,
}

impl SpillLimits {
    pub const DEFAULT_MEMORY: usize = 8 << 20;
    pub const DEFAULT_DISK: u64 = 1 << 30;
    pub const DEFAULT_DISK_TOTAL: u64 = 4 << 30;

    pub fn new(directory: PathBuf) -> Self {
        SpillLimits {
            memory_per_channel: Self::DEFAULT_MEMORY,
            disk_per_channel: Self::DEFAULT_DISK,
            disk_total: Self::DEFAULT_DISK_TOTAL,
            directory,
            disk_in_use: AtomicU64::new(0),
        }
    }
}

/// Read from a spill file in chunks of this size.
const READ_BACK_CHUNK: usize = 256 * 1024;

struct SpillFile {
    file: File,
    written: u64,
    read: u64,
}

struct State {
    memory: VecDeque<Bytes>,
    memory_bytes: usize,
    spill: Option<SpillFile>,
    closed: bool,
    /// Set while a producer waits for room; cleared when it gets it.
    paused: bool,
    total_in: u64,
}

/// One stream's buffer: a producer (the channel reader) and a consumer
/// (the writer to the client's fd).
pub struct SpillBuffer {
    state: Mutex<State>,
    limits: Arc<SpillLimits>,
    data_ready: Notify,
    room_ready: Notify,
    name: String,
}

/// How a push went.
#[derive(Debug, PartialEq, Eq)]
pub enum Pushed {
    Accepted,
    /// Over every cap: the caller must `wait_for_room` and push again.
    Full(Bytes),
}

impl SpillBuffer {
    pub fn new(limits: Arc<SpillLimits>, name: String) -> Arc<Self> {
        Arc::new(SpillBuffer {
            state: Mutex::new(State {
                memory: VecDeque::new(),
                memory_bytes: 0,
                spill: None,
                closed: false,
                paused: false,
                total_in: 0,
            }),
            limits,
            data_ready: Notify::new(),
            room_ready: Notify::new(),
            name,
        })
    }

    /// Adds data without waiting. A disk error is reported; the data is
    /// then kept in memory rather than lost.
    pub fn push(&self, data: Bytes) -> Pushed {
        if data.is_empty() {
            return Pushed::Accepted;
        }
        let mut state = self.state.lock().expect("not poisoned");
        let spilling = state.spill.as_ref().is_some_and(|s| s.read < s.written);
        if !spilling && state.memory_bytes + data.len() <= self.limits.memory_per_channel {
            state.memory_bytes += data.len();
            state.total_in += data.len() as u64;
            state.memory.push_back(data);
            drop(state);
            self.data_ready.notify_one();
            return Pushed::Accepted;
        }
        let on_disk = state.spill.as_ref().map_or(0, |s| s.written - s.read);
        let len = data.len() as u64;
        let total = self.limits.disk_in_use.load(Ordering::Relaxed);
        if on_disk + len > self.limits.disk_per_channel || total + len > self.limits.disk_total {
            if !state.paused {
                state.paused = true;
                tracing::warn!(
                    "{}: client is not reading and its buffer is full ({} MiB in memory, {} MiB on disk); pausing this stream",
                    self.name,
                    state.memory_bytes >> 20,
                    on_disk >> 20
                );
            }
            return Pushed::Full(data);
        }
        match self.spill_write(&mut state, &data) {
            Ok(()) => {
                state.total_in += len;
                self.limits.disk_in_use.fetch_add(len, Ordering::Relaxed);
            }
            Err(e) => {
                tracing::warn!(
                    "{}: cannot spill to disk ({e}); keeping the data in memory",
                    self.name
                );
                if let Some(spill) = &state.spill
                    && spill.read < spill.written
                {
                    // Order matters more than memory: wait for the file to drain.
                    return Pushed::Full(data);
                }
                state.memory_bytes += data.len();
                state.total_in += len;
                state.memory.push_back(data);
            }
        }
        drop(state);
        self.data_ready.notify_one();
        Pushed::Accepted
    }

    /// Adds data, waiting only when every cap is reached.
    pub async fn push_wait(&self, mut data: Bytes) {
        loop {
            // Registered before trying, so a consumer that makes room in
            // between cannot be missed.
            let room = self.room_ready.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            match self.push(data) {
                Pushed::Accepted => return,
                Pushed::Full(back) => {
                    data = back;
                    room.await;
                }
            }
        }
    }

    fn spill_write(&self, state: &mut State, data: &[u8]) -> io::Result<()> {
        if state.spill.is_none() {
            state.spill = Some(SpillFile {
                file: open_spill_file(&self.limits.directory)?,
                written: 0,
                read: 0,
            });
            tracing::info!(
                "{}: client is reading slowly; buffering its output on disk in {}",
                self.name,
                self.limits.directory.display()
            );
        }
        let spill = state.spill.as_mut().expect("just created");
        let mut offset = 0;
        while offset < data.len() {
            let n =
                rustix::io::pwrite(&spill.file, &data[offset..], spill.written + offset as u64)?;
            offset += n;
        }
        spill.written += data.len() as u64;
        Ok(())
    }

    /// Marks the end of the stream: `pop` returns `None` once drained.
    pub fn close(&self) {
        self.state.lock().expect("not poisoned").closed = true;
        self.data_ready.notify_one();
        self.room_ready.notify_waiters();
    }

    /// The next chunk in order, waiting for one; `None` at the end.
    pub async fn pop(&self) -> Option<Bytes> {
        loop {
            let ready = self.data_ready.notified();
            tokio::pin!(ready);
            ready.as_mut().enable();
            match self.try_pop() {
                Ok(Some(chunk)) => return Some(chunk),
                Ok(None) => return None,
                Err(()) => ready.await,
            }
        }
    }

    /// `Ok(Some)`: a chunk; `Ok(None)`: closed and empty; `Err`: empty now.
    fn try_pop(&self) -> Result<Option<Bytes>, ()> {
        let mut state = self.state.lock().expect("not poisoned");
        let chunk = if let Some(chunk) = state.memory.pop_front() {
            state.memory_bytes -= chunk.len();
            Some(chunk)
        } else if let Some(spill) = state.spill.as_mut().filter(|s| s.read < s.written) {
            let want = (spill.written - spill.read).min(READ_BACK_CHUNK as u64) as usize;
            let mut buf = vec![0u8; want];
            match rustix::io::pread(&spill.file, &mut buf, spill.read) {
                Ok(n) if n > 0 => {
                    buf.truncate(n);
                    spill.read += n as u64;
                    self.limits
                        .disk_in_use
                        .fetch_sub(n as u64, Ordering::Relaxed);
                    if spill.read == spill.written {
                        // Drained: start the file over, and give the space back.
                        let _ = rustix::fs::ftruncate(&spill.file, 0);
                        spill.read = 0;
                        spill.written = 0;
                    }
                    Some(Bytes::from(buf))
                }
                _ => {
                    tracing::error!(
                        "{}: cannot read back spilled output; dropping the stream",
                        self.name
                    );
                    state.closed = true;
                    state.memory.clear();
                    state.spill = None;
                    None
                }
            }
        } else if state.closed {
            return Ok(None);
        } else {
            return Err(());
        };
        if state.paused {
            state.paused = false;
            tracing::info!("{}: client is reading again; resuming", self.name);
        }
        drop(state);
        self.room_ready.notify_waiters();
        Ok(chunk)
    }

    /// What this buffer holds ("session 3 stdout").
    pub fn name(&self) -> &str {
        &self.name
    }

    /// (bytes in memory, bytes on disk, paused) for `~#` and status.
    pub fn usage(&self) -> (usize, u64, bool) {
        let state = self.state.lock().expect("not poisoned");
        let disk = state.spill.as_ref().map_or(0, |s| s.written - s.read);
        (state.memory_bytes, disk, state.paused)
    }
}

impl Drop for SpillBuffer {
    fn drop(&mut self) {
        if let Ok(state) = self.state.lock()
            && let Some(spill) = &state.spill
        {
            self.limits
                .disk_in_use
                .fetch_sub(spill.written - spill.read, Ordering::Relaxed);
        }
    }
}

/// An anonymous file in `directory`: it has no name, so nothing else can
/// open it and it disappears with its last descriptor.
fn open_spill_file(directory: &std::path::Path) -> io::Result<File> {
    use rustix::fs::{Mode, OFlags};
    std::fs::create_dir_all(directory)?;
    let fd = rustix::fs::open(
        directory,
        OFlags::TMPFILE | OFlags::RDWR | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )
    .or_else(|_| {
        // Filesystems without O_TMPFILE: create and unlink at once.
        let path = directory.join(format!(
            "spill-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        let fd = rustix::fs::open(
            &path,
            OFlags::CREATE | OFlags::EXCL | OFlags::RDWR | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )?;
        let _ = std::fs::remove_file(&path);
        Ok::<_, rustix::io::Errno>(fd)
    })?;
    Ok(File::from(fd))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(dir: &std::path::Path, memory: usize, disk: u64) -> Arc<SpillLimits> {
        let mut limits = SpillLimits::new(dir.to_path_buf());
        limits.memory_per_channel = memory;
        limits.disk_per_channel = disk;
        Arc::new(limits)
    }

    #[test]
    fn order_is_kept_across_memory_and_disk() {
        let dir = tempfile::tempdir().unwrap();
        let limits = limits(dir.path(), 10, 1 << 20);
        let buffer = SpillBuffer::new(Arc::clone(&limits), "test".into());
        let mut expected = Vec::new();
        for i in 0..200u32 {
            let chunk = Bytes::from(format!("<{i}>"));
            expected.extend_from_slice(&chunk);
            assert_eq!(buffer.push(chunk), Pushed::Accepted);
        }
        assert!(buffer.usage().1 > 0, "should have spilled");
        assert!(limits.disk_in_use.load(Ordering::Relaxed) > 0);
        // Nothing named is left in the directory.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        buffer.close();
        let got = crate::test_support::runtime().block_on(async {
            let mut got = Vec::new();
            while let Some(chunk) = buffer.pop().await {
                got.extend_from_slice(&chunk);
            }
            got
        });
        assert_eq!(got, expected);
        assert_eq!(limits.disk_in_use.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn full_buffer_refuses_then_accepts_after_reading() {
        let dir = tempfile::tempdir().unwrap();
        let buffer = SpillBuffer::new(limits(dir.path(), 4, 4), "test".into());
        assert_eq!(buffer.push(Bytes::from_static(b"abcd")), Pushed::Accepted);
        assert_eq!(buffer.push(Bytes::from_static(b"efgh")), Pushed::Accepted);
        assert_eq!(
            buffer.push(Bytes::from_static(b"ijkl")),
            Pushed::Full(Bytes::from_static(b"ijkl"))
        );
        assert!(buffer.usage().2, "paused");
        crate::test_support::runtime().block_on(async {
            assert_eq!(buffer.pop().await.unwrap(), Bytes::from_static(b"abcd"));
            assert_eq!(buffer.pop().await.unwrap(), Bytes::from_static(b"efgh"));
        });
        assert_eq!(buffer.push(Bytes::from_static(b"ijkl")), Pushed::Accepted);
        assert!(!buffer.usage().2);
    }

    #[test]
    fn a_waiting_producer_resumes_when_the_consumer_reads() {
        let dir = tempfile::tempdir().unwrap();
        let buffer = SpillBuffer::new(limits(dir.path(), 1024, 1024), "test".into());
        crate::test_support::runtime().block_on(async {
            let producer = {
                let buffer = Arc::clone(&buffer);
                tokio::spawn(async move {
                    for _ in 0..64 {
                        buffer.push_wait(Bytes::from(vec![1u8; 512])).await;
                    }
                    buffer.close();
                })
            };
            let mut total = 0;
            while let Some(chunk) = buffer.pop().await {
                total += chunk.len();
                tokio::task::yield_now().await;
            }
            producer.await.unwrap();
            assert_eq!(total, 64 * 512);
        });
    }
}
