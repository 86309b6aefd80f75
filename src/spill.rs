//! Per-channel output buffers that never make the connection wait on a
//! slow client: data the client has not read yet stays in memory up to a
//! small bound, then goes to an unlinked temporary file in the master's
//! private state directory (as nginx buffers for slow clients), up to a
//! per-channel cap and a cap over all channels. Only past those caps does a
//! producer have to wait — and so the connection pause — and that is logged.
//!
//! Bytes come out exactly in the order they went in: once anything is on
//! disk, new data follows it there until the file has been read back.
//!
//! A client that is reading, only not quite as fast as the server sends
//! (a bulk download on a busy machine), may use more memory before its
//! output goes to disk: writing a backlog to a file and reading it back
//! costs two more copies of every byte and measurably slows such a
//! transfer. Only a client that has not read for a moment is held to the
//! small bound, and the extra memory is capped over all channels.
//!
//! Bounds, over all channels of the master: memory never goes past
//! `memory_total` (a channel whose share would take it past goes to disk
//! instead), disk never past `disk_total`. Past both a stream pauses;
//! when the disk fails (full, read-only) its data stays in memory only
//! while `memory_total` allows, then the stream pauses too. A paused
//! stream loses nothing and resumes when its client reads.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::Notify;

/// Limits shared by every buffer of one master.
#[derive(Debug)]
pub struct SpillLimits {
    /// Memory per channel for a client that is not reading.
    pub memory_per_channel: usize,
    /// Memory per channel for a client that is reading.
    pub memory_reading: usize,
    /// A client that took output within this long is reading.
    pub reading_window: Duration,
    /// Memory over all channels: past it, output goes to disk (and a
    /// reading client is held to `memory_per_channel` well before).
    pub memory_total: usize,
    /// Bytes in memory over all channels right now.
    pub memory_in_use: AtomicUsize,
    pub disk_per_channel: u64,
    pub disk_total: u64,
    /// Where spill files are created (mode 0700, ours).
    pub directory: PathBuf,
    /// Bytes on disk over all channels right now.
    pub disk_in_use: AtomicU64,
}

impl SpillLimits {
    pub const DEFAULT_MEMORY: usize = 8 << 20;
    pub const DEFAULT_MEMORY_READING: usize = 64 << 20;
    pub const DEFAULT_READING_WINDOW: Duration = Duration::from_millis(100);
    pub const DEFAULT_MEMORY_TOTAL: usize = 256 << 20;
    pub const DEFAULT_DISK: u64 = 1 << 30;
    pub const DEFAULT_DISK_TOTAL: u64 = 4 << 30;

    pub fn new(directory: PathBuf) -> Self {
        SpillLimits {
            memory_per_channel: Self::DEFAULT_MEMORY,
            memory_reading: Self::DEFAULT_MEMORY_READING,
            reading_window: Self::DEFAULT_READING_WINDOW,
            memory_total: Self::DEFAULT_MEMORY_TOTAL,
            memory_in_use: AtomicUsize::new(0),
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
    /// When the consumer last took a chunk.
    last_pop: Option<Instant>,
    /// Memory went past `memory_per_channel` since it was last empty.
    grew: bool,
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
                last_pop: None,
                grew: false,
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
        if !spilling && state.memory_bytes + data.len() <= self.memory_limit(&state, data.len()) {
            self.limits
                .memory_in_use
                .fetch_add(data.len(), Ordering::Relaxed);
            state.memory_bytes += data.len();
            state.grew |= state.memory_bytes > self.limits.memory_per_channel;
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
                if let Some(spill) = &state.spill
                    && spill.read < spill.written
                {
                    // Order matters more than memory: wait for the file to drain.
                    return Pushed::Full(data);
                }
                if self.limits.memory_in_use.load(Ordering::Relaxed) + data.len()
                    > self.limits.memory_total
                {
                    if !state.paused {
                        state.paused = true;
                        tracing::warn!(
                            "{}: cannot spill to disk ({e}) and the master's output memory is full ({} MiB); pausing this stream until its client reads",
                            self.name,
                            self.limits.memory_total >> 20
                        );
                    }
                    return Pushed::Full(data);
                }
                tracing::warn!(
                    "{}: cannot spill to disk ({e}); keeping the data in memory",
                    self.name
                );
                self.limits
                    .memory_in_use
                    .fetch_add(data.len(), Ordering::Relaxed);
                state.memory_bytes += data.len();
                state.total_in += len;
                state.memory.push_back(data);
            }
        }
        drop(state);
        self.data_ready.notify_one();
        Pushed::Accepted
    }

    /// How much this channel may hold in memory now: more while its client
    /// is reading and the master-wide cap allows it.
    fn memory_limit(&self, state: &State, adding: usize) -> usize {
        let limits = &self.limits;
        let in_use = limits.memory_in_use.load(Ordering::Relaxed);
        if in_use + adding > limits.memory_total {
            return 0;
        }
        let reading = state
            .last_pop
            .is_some_and(|t| t.elapsed() < limits.reading_window);
        // A reading client's extra memory stops at half the total, so that
        // stalled clients' small buffers still fit.
        let room = in_use + adding <= limits.memory_total / 2;
        if reading && room {
            limits.memory_reading.max(limits.memory_per_channel)
        } else {
            limits.memory_per_channel
        }
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
            self.limits
                .memory_in_use
                .fetch_sub(chunk.len(), Ordering::Relaxed);
            if state.memory_bytes == 0 && std::mem::take(&mut state.grew) {
                give_back_memory();
            }
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
        state.last_pop = Some(Instant::now());
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
        if let Ok(state) = self.state.lock() {
            self.limits
                .memory_in_use
                .fetch_sub(state.memory_bytes, Ordering::Relaxed);
        }
        if let Ok(state) = self.state.lock()
            && let Some(spill) = &state.spill
        {
            self.limits
                .disk_in_use
                .fetch_sub(spill.written - spill.read, Ordering::Relaxed);
        }
    }
}

/// Returns freed heap memory to the system after a large backlog drained
/// (glibc keeps it otherwise: the chunks are small, so they come from the
/// heap, not from separate mappings). At most every few seconds.
#[allow(unsafe_code)] // see the SAFETY comment inside
fn give_back_memory() {
    static LAST: Mutex<Option<Instant>> = Mutex::new(None);
    let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
    if last.is_some_and(|t| t.elapsed() < Duration::from_secs(2)) {
        return;
    }
    *last = Some(Instant::now());
    // SAFETY: malloc_trim only releases free memory of the allocator's own
    // arenas; it takes the allocator's locks itself and touches no memory
    // the program owns.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::malloc_trim(0);
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
        limits.memory_reading = memory;
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

    #[test]
    fn a_reading_client_gets_more_memory_a_stalled_one_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let mut limits = SpillLimits::new(dir.path().to_path_buf());
        limits.memory_per_channel = 10;
        limits.memory_reading = 100;
        limits.reading_window = Duration::from_millis(200);
        let limits = Arc::new(limits);
        let buffer = SpillBuffer::new(Arc::clone(&limits), "test".into());
        let chunk = || Bytes::from_static(b"0123456789");
        let on_disk = |b: &SpillBuffer| b.usage().1;

        // No read yet: held to the small bound.
        assert_eq!(buffer.push(chunk()), Pushed::Accepted);
        assert_eq!(buffer.push(chunk()), Pushed::Accepted);
        assert_eq!(on_disk(&buffer), 10, "the second chunk spilled");
        // The client reads everything back.
        assert!(buffer.try_pop().unwrap().is_some());
        assert!(buffer.try_pop().unwrap().is_some());
        // Now it is reading: up to the larger bound stays in memory.
        for _ in 0..10 {
            assert_eq!(buffer.push(chunk()), Pushed::Accepted);
        }
        assert_eq!(buffer.usage(), (100, 0, false));
        assert_eq!(limits.memory_in_use.load(Ordering::Relaxed), 100);
        // Past it, to disk.
        assert_eq!(buffer.push(chunk()), Pushed::Accepted);
        assert_eq!(on_disk(&buffer), 10);
        // A client that stopped reading is held to the small bound again.
        let stalled = SpillBuffer::new(Arc::clone(&limits), "stalled".into());
        assert_eq!(stalled.push(chunk()), Pushed::Accepted);
        assert!(stalled.try_pop().unwrap().is_some());
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(stalled.push(chunk()), Pushed::Accepted);
        assert_eq!(stalled.push(chunk()), Pushed::Accepted);
        assert_eq!(on_disk(&stalled), 10);
        // Memory is given back as buffers go.
        drop(buffer);
        drop(stalled);
        assert_eq!(limits.memory_in_use.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn the_master_wide_cap_holds_reading_clients_to_the_small_bound() {
        let dir = tempfile::tempdir().unwrap();
        let mut limits = SpillLimits::new(dir.path().to_path_buf());
        limits.memory_per_channel = 10;
        limits.memory_reading = 100;
        limits.memory_total = 60;
        let limits = Arc::new(limits);
        let buffer = SpillBuffer::new(Arc::clone(&limits), "test".into());
        let chunk = || Bytes::from_static(b"0123456789");
        assert_eq!(buffer.push(chunk()), Pushed::Accepted);
        assert!(buffer.try_pop().unwrap().is_some());
        // A reading client may take up to half the total in memory.
        for _ in 0..3 {
            assert_eq!(buffer.push(chunk()), Pushed::Accepted);
        }
        assert_eq!(buffer.usage(), (30, 0, false));
        assert_eq!(buffer.push(chunk()), Pushed::Accepted);
        assert_eq!(
            buffer.usage().1,
            10,
            "over half the master-wide cap: to disk"
        );
    }

    #[test]
    fn stalled_channels_together_never_pass_the_master_wide_memory_cap() {
        let dir = tempfile::tempdir().unwrap();
        let mut limits = SpillLimits::new(dir.path().to_path_buf());
        limits.memory_per_channel = 10;
        limits.memory_total = 30;
        let limits = Arc::new(limits);
        let buffers: Vec<_> = (0..5)
            .map(|i| SpillBuffer::new(Arc::clone(&limits), format!("stalled {i}")))
            .collect();
        for buffer in &buffers {
            assert_eq!(
                buffer.push(Bytes::from_static(b"0123456789")),
                Pushed::Accepted
            );
        }
        assert_eq!(limits.memory_in_use.load(Ordering::Relaxed), 30);
        let on_disk: u64 = buffers.iter().map(|b| b.usage().1).sum();
        assert_eq!(on_disk, 20, "the channels past the cap went to disk");
    }

    #[test]
    fn a_failing_disk_pauses_a_stream_once_memory_is_full() {
        // A regular file where the spill directory should be: every spill
        // file fails to open (as on a full or read-only disk).
        let dir = tempfile::tempdir().unwrap();
        let not_a_dir = dir.path().join("file");
        std::fs::write(&not_a_dir, b"").unwrap();
        let mut limits = SpillLimits::new(not_a_dir);
        limits.memory_per_channel = 10;
        limits.memory_total = 20;
        let limits = Arc::new(limits);
        let buffer = SpillBuffer::new(Arc::clone(&limits), "test".into());
        let chunk = || Bytes::from_static(b"0123456789");
        assert_eq!(buffer.push(chunk()), Pushed::Accepted);
        // The disk fails: kept in memory while the total allows...
        assert_eq!(buffer.push(chunk()), Pushed::Accepted);
        assert_eq!(buffer.usage(), (20, 0, false));
        // ...then the stream pauses, nothing dropped.
        assert!(matches!(buffer.push(chunk()), Pushed::Full(_)));
        assert!(buffer.usage().2, "paused");
        assert!(buffer.try_pop().unwrap().is_some());
        assert_eq!(buffer.push(chunk()), Pushed::Accepted);
    }
}
