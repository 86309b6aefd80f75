//! Small network peers for the forwarding tests: echo servers on TCP and
//! Unix sockets, an HTTP server that echoes the request body, and a helper
//! that pushes data through a connection and checks what comes back.

use std::fs::File;
use std::io::{self, BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// Generous: only there so that a broken forward fails the test instead
/// of hanging it.
pub const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// `size` bytes from /dev/urandom.
pub fn random_bytes(size: u64) -> Vec<u8> {
    let mut data = Vec::new();
    File::open("/dev/urandom")
        .expect("open /dev/urandom")
        .take(size)
        .read_to_end(&mut data)
        .expect("read /dev/urandom");
    assert_eq!(data.len() as u64, size);
    data
}

/// A byte stream the tests can split into a reading and a writing half.
pub trait Conn: Read + Write + Send + Sized + 'static {
    fn duplicate(&self) -> io::Result<Self>;
    fn close_write(&self) -> io::Result<()>;
    fn set_timeouts(&self, timeout: Duration) -> io::Result<()>;
}

impl Conn for TcpStream {
    fn duplicate(&self) -> io::Result<Self> {
        self.try_clone()
    }
    fn close_write(&self) -> io::Result<()> {
        self.shutdown(Shutdown::Write)
    }
    fn set_timeouts(&self, timeout: Duration) -> io::Result<()> {
        self.set_read_timeout(Some(timeout))?;
        self.set_write_timeout(Some(timeout))
    }
}

impl Conn for UnixStream {
    fn duplicate(&self) -> io::Result<Self> {
        self.try_clone()
    }
    fn close_write(&self) -> io::Result<()> {
        self.shutdown(Shutdown::Write)
    }
    fn set_timeouts(&self, timeout: Duration) -> io::Result<()> {
        self.set_read_timeout(Some(timeout))?;
        self.set_write_timeout(Some(timeout))
    }
}

/// Sends `data` through `conn` (from a second thread, so that neither side
/// can block the other), closes the sending direction, and reads until the
/// peer closes. Returns what came back.
pub fn exchange<C: Conn>(conn: C, data: &[u8]) -> Vec<u8> {
    conn.set_timeouts(IO_TIMEOUT).expect("set socket timeouts");
    let mut writer = conn.duplicate().expect("duplicate socket");
    let mut reader = conn;
    thread::scope(|scope| {
        let sending = scope.spawn(move || {
            writer.write_all(data)?;
            writer.close_write()
        });
        let mut back = Vec::with_capacity(data.len());
        let read = reader.read_to_end(&mut back);
        let sent = sending.join().expect("sender thread panicked");
        if let Err(e) = sent {
            panic!("sending through the forward: {e}");
        }
        if let Err(e) = read {
            panic!(
                "reading back through the forward after {} of {} bytes: {e}",
                back.len(),
                data.len()
            );
        }
        back
    })
}

/// Panics unless `data` comes back unchanged through `conn` (which must
/// lead to an echo server).
#[track_caller]
pub fn assert_echoes<C: Conn>(conn: C, data: &[u8], what: &str) {
    let back = exchange(conn, data);
    assert!(
        back == data,
        "{what}: sent {} bytes, got {} bytes back{}",
        data.len(),
        back.len(),
        if back.len() == data.len() {
            " with different contents"
        } else {
            ""
        }
    );
}

/// Something that can stand in for a listening socket in [`Server`].
trait Listener: Send + 'static {
    type Stream: Conn;
    fn accept_one(&self) -> io::Result<Self::Stream>;
}

impl Listener for TcpListener {
    type Stream = TcpStream;
    fn accept_one(&self) -> io::Result<TcpStream> {
        self.accept().map(|(stream, _)| stream)
    }
}

impl Listener for UnixListener {
    type Stream = UnixStream;
    fn accept_one(&self) -> io::Result<UnixStream> {
        self.accept().map(|(stream, _)| stream)
    }
}

/// A server thread handing each accepted connection to `serve` on a thread
/// of its own. Dropping it stops accepting (connections in progress end
/// when their peers close).
pub struct Server {
    stop: Arc<AtomicBool>,
    wake: Box<dyn Fn() + Send>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    fn start<L: Listener>(listener: L, serve: fn(L::Stream), wake: Box<dyn Fn() + Send>) -> Server {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let thread = thread::spawn(move || {
            loop {
                let accepted = listener.accept_one();
                if stopping.load(Ordering::SeqCst) {
                    return;
                }
                match accepted {
                    Ok(stream) => {
                        thread::spawn(move || serve(stream));
                    }
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => panic!("test server: accept: {e}"),
                }
            }
        });
        Server {
            stop,
            wake,
            thread: Some(thread),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        (self.wake)();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A TCP server on 127.0.0.1.
pub struct TcpServer {
    addr: SocketAddr,
    _server: Server,
}

impl TcpServer {
    /// Echoes every byte back until the peer closes its sending side.
    pub fn echo() -> TcpServer {
        TcpServer::start(echo)
    }

    /// Answers each HTTP request with its body (see [`http_echo`]).
    pub fn http_echo() -> TcpServer {
        TcpServer::start(http_echo)
    }

    fn start(serve: fn(TcpStream)) -> TcpServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local_addr");
        let wake = Box::new(move || {
            let _ = TcpStream::connect(addr);
        });
        TcpServer {
            addr,
            _server: Server::start(listener, serve, wake),
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }
}

/// An echo server on a Unix socket.
pub struct UnixEchoServer {
    path: PathBuf,
    _server: Server,
}

impl UnixEchoServer {
    pub fn start(path: &Path) -> UnixEchoServer {
        let listener =
            UnixListener::bind(path).unwrap_or_else(|e| panic!("bind {}: {e}", path.display()));
        let wake_path = path.to_owned();
        let wake = Box::new(move || {
            let _ = UnixStream::connect(&wake_path);
        });
        UnixEchoServer {
            path: path.to_owned(),
            _server: Server::start(listener, echo, wake),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn echo<C: Conn>(stream: C) {
    let Ok(mut writer) = stream.duplicate() else {
        return;
    };
    let mut reader = stream;
    if io::copy(&mut reader, &mut writer).is_ok() {
        let _ = writer.close_write();
    }
}

/// A minimal HTTP/1.0 server: reads one request with a `Content-Length`
/// body (none for GET) and answers `200 OK` with that body, then closes.
fn http_echo(stream: TcpStream) {
    let _ = stream.set_timeouts(IO_TIMEOUT);
    let Ok(mut writer) = stream.duplicate() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    let mut length = 0;
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; length];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    let head = format!(
        "HTTP/1.0 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {length}\r\n\r\n"
    );
    let _ = writer
        .write_all(head.as_bytes())
        .and_then(|()| writer.write_all(&body));
}
