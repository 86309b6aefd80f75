//! The `~C` command line of a multiplexed tty session: a small line editor
//! fed the bytes typed after `~C`, a parser that turns the finished line
//! into a typed command (`-L`, `-R`, `-D`, `-KL`, `-KR`, `-KD`, help), and
//! the texts the session prints about it. Pure: no I/O, no decisions; the
//! session asks the policy about each forward and carries it out.
//!
//! The syntax is ssh's command line's (see `~C` in ssh(1)); a forward spec
//! is read into the same [`ForwardSpec`] the stock client sends for
//! `ssh -O forward`, so a forward opened one way can be cancelled the
//! other.

use std::fmt;

use crate::access::decide::Outcome;
use crate::endpoint::{Endpoint, ForwardKind, ForwardSpec};
use crate::upstream::forward::OpenResult;

/// The prompt written when `~C` opens the command line.
pub const PROMPT: &[u8] = b"\r\nmuxguard> ";

/// The longest line the editor takes; what is typed beyond it is dropped.
const MAX_LINE: usize = 1024;

const CTRL_C: u8 = 0x03;
const CTRL_D: u8 = 0x04;
const BACKSPACE: u8 = 0x08;
const CTRL_U: u8 = 0x15;
const CTRL_W: u8 = 0x17;
const ESC: u8 = 0x1b;
const DEL: u8 = 0x7f;

/// How a command line ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finished {
    /// Enter: the line as typed, without the newline.
    Submitted(String),
    /// Ctrl-C, Esc, or Ctrl-D on an empty line: nothing is done.
    Cancelled,
}

/// Where the editor stands inside a terminal escape sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Sequence {
    #[default]
    None,
    /// ESC was read; what follows says whether it was the Esc key.
    Esc,
    /// Inside `ESC [ …` (arrow keys, bracketed paste marks): ignored up to
    /// its final byte.
    Csi,
    /// `ESC O`: one more byte (arrow keys in application mode), ignored.
    Ss3,
}

/// The line being typed after `~C`. It edits only at the end of the line:
/// printable ASCII is added and echoed, Backspace/DEL erases a character,
/// Ctrl-W a word, Ctrl-U the whole line; CR or LF submits; Ctrl-C, Esc,
/// and Ctrl-D on an empty line cancel. Other control bytes and escape
/// sequences such as the arrow keys are ignored.
#[derive(Debug, Clone, Default)]
pub struct LineEditor {
    line: String,
    sequence: Sequence,
}

impl LineEditor {
    /// Takes one typed byte; what the terminal should show goes to `echo`.
    /// Returns how the line ended, if this byte ended it; the editor is then
    /// empty and ready for the next command line.
    pub fn feed(&mut self, byte: u8, echo: &mut Vec<u8>) -> Option<Finished> {
        match self.sequence {
            Sequence::None => {}
            Sequence::Esc => {
                self.sequence = match byte {
                    b'[' => Sequence::Csi,
                    b'O' => Sequence::Ss3,
                    // Esc followed by anything else (Alt+key) is the Esc
                    // key: the byte after it goes with the cancelled line.
                    _ => return Some(self.cancel(echo)),
                };
                return None;
            }
            Sequence::Csi if (0x20..=0x3f).contains(&byte) => return None,
            Sequence::Csi | Sequence::Ss3 => {
                self.sequence = Sequence::None;
                // A well-formed sequence ends in a byte from 0x40 to 0x7e;
                // anything else means it was cut short and counts itself.
                if (0x40..=0x7e).contains(&byte) {
                    return None;
                }
            }
        }
        match byte {
            b'\r' | b'\n' => {
                echo.extend_from_slice(b"\r\n");
                return Some(Finished::Submitted(std::mem::take(&mut self.line)));
            }
            CTRL_C => return Some(self.cancel(echo)),
            CTRL_D if self.line.is_empty() => return Some(self.cancel(echo)),
            ESC => self.sequence = Sequence::Esc,
            BACKSPACE | DEL => self.erase(1, echo),
            CTRL_U => self.erase(self.line.len(), echo),
            CTRL_W => {
                let kept = self
                    .line
                    .trim_end_matches(' ')
                    .trim_end_matches(|c: char| c != ' ');
                self.erase(self.line.len() - kept.len(), echo);
            }
            0x20..=0x7e if self.line.len() < MAX_LINE => {
                self.line.push(char::from(byte));
                echo.push(byte);
            }
            _ => {}
        }
        None
    }

    /// Called when a read from the terminal has been fed in full. A lone
    /// ESC at the end of a read is the Esc key (a terminal sends an arrow
    /// key's whole sequence in one write), so it cancels the line.
    pub fn end_of_read(&mut self, echo: &mut Vec<u8>) -> Option<Finished> {
        (self.sequence == Sequence::Esc).then(|| self.cancel(echo))
    }

    fn cancel(&mut self, echo: &mut Vec<u8>) -> Finished {
        *self = LineEditor::default();
        echo.extend_from_slice(b"\r\n");
        Finished::Cancelled
    }

    /// Removes the last `count` characters (all ASCII, so bytes) and erases
    /// them on the screen.
    fn erase(&mut self, count: usize, echo: &mut Vec<u8>) {
        let count = count.min(self.line.len());
        self.line.truncate(self.line.len() - count);
        for _ in 0..count {
            echo.extend_from_slice(b"\x08 \x08");
        }
    }
}

/// A finished command line, understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// An empty line (or a lone `-`): nothing to do.
    Nothing,
    /// `?`, `-h`: list the commands.
    Help,
    /// `-L`, `-R`, `-D`: open this forward.
    Open(ForwardSpec),
    /// `-KL`, `-KR`, `-KD`: cancel the open forward of this kind that
    /// listens here.
    Cancel(Cancel),
}

/// What `-KL`/`-KR`/`-KD` names: a kind and the listening side, as ssh's
/// command line cancels forwards (the target is not given).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cancel {
    pub kind: ForwardKind,
    pub listen: Endpoint,
}

/// Why a command line was not understood; each reads as one sentence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmdlineError {
    /// Not a command this line knows.
    InvalidCommand,
    /// `!command`: running local commands is not offered.
    LocalCommand,
    /// A forward spec that does not fit its kind.
    BadSpec(ForwardKind),
    /// A `-K…` spec that is not `[bind:]port` or a socket path.
    BadCancel,
    /// `-R [bind:]port`: a SOCKS proxy on the server side.
    RemoteDynamic,
}

impl fmt::Display for CmdlineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CmdlineError::InvalidCommand => f.write_str("Invalid command (? lists the commands)."),
            CmdlineError::LocalCommand => {
                f.write_str("Local commands (!) are not available in shared sessions.")
            }
            CmdlineError::BadSpec(kind) => {
                let kind = match kind {
                    ForwardKind::Local => "local",
                    ForwardKind::Remote => "remote",
                    ForwardKind::Dynamic => "dynamic",
                };
                write!(f, "Bad {kind} forwarding specification.")
            }
            CmdlineError::BadCancel => f.write_str("Bad forwarding close specification."),
            CmdlineError::RemoteDynamic => f.write_str(
                "Remote dynamic forwarding (-R [bind:]port) is not supported by muxguard.",
            ),
        }
    }
}

/// Understands one finished command line.
///
/// Leading blanks and one leading `-` are optional, as in ssh: `L8080:h:80`
/// and `-L 8080:h:80` mean the same. A line starting with `h`, `H` or `?`
/// asks for help.
pub fn parse(line: &str) -> Result<Command, CmdlineError> {
    let text = line.trim();
    let text = text.strip_prefix('-').unwrap_or(text);
    let Some(first) = text.chars().next() else {
        return Ok(Command::Nothing);
    };
    if matches!(first, 'h' | 'H' | '?') {
        return Ok(Command::Help);
    }
    if first == '!' {
        return Err(CmdlineError::LocalCommand);
    }
    let (cancel, text) = match text.strip_prefix('K') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let mut chars = text.chars();
    let kind = match chars.next() {
        Some('L') => ForwardKind::Local,
        Some('R') => ForwardKind::Remote,
        Some('D') => ForwardKind::Dynamic,
        _ => return Err(CmdlineError::InvalidCommand),
    };
    let spec = chars.as_str().trim_start();
    if cancel {
        cancel_spec(kind, spec).map(Command::Cancel)
    } else {
        open_spec(kind, spec).map(Command::Open)
    }
}

/// One colon-separated field of a forward spec.
#[derive(Debug, PartialEq, Eq)]
struct Field {
    text: String,
    /// It holds a `/`: a Unix socket path, not a host or port.
    path: bool,
}

/// Splits a spec at its colons, at most four fields. A field in square
/// brackets is taken literally (an IPv6 address, a path with colons), and a
/// backslash takes the next character literally. `None`: malformed.
fn fields(spec: &str) -> Option<Vec<Field>> {
    let mut fields = Vec::new();
    let mut chars = spec.chars().peekable();
    while chars.peek().is_some() {
        let mut text = String::new();
        if chars.next_if_eq(&'[').is_some() {
            loop {
                match chars.next()? {
                    ']' => break,
                    c => text.push(c),
                }
            }
            // The closing bracket ends the field.
            if chars.next().is_some_and(|c| c != ':') {
                return None;
            }
        } else {
            loop {
                match chars.next() {
                    None | Some(':') => break,
                    Some('\\') => text.push(chars.next()?),
                    Some(c) => text.push(c),
                }
            }
        }
        let path = text.contains('/');
        fields.push(Field { text, path });
        if fields.len() > 4 {
            return None;
        }
    }
    Some(fields)
}

/// A port as typed: decimal, 0 to 65535.
fn port(field: &Field) -> Option<u16> {
    if field.path || field.text.is_empty() || !field.text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    field.text.parse().ok()
}

/// A listening side given as bind address and port. A bind address given
/// empty (`:8080`) means every address, which the stock client sends as `*`;
/// none at all is sent as the empty string (loopback).
fn listen_tcp(bind: Option<&Field>, port_field: &Field) -> Option<Endpoint> {
    let host = match bind {
        None => String::new(),
        Some(bind) if bind.path => return None,
        Some(bind) if bind.text.is_empty() => "*".to_string(),
        Some(bind) => bind.text.clone(),
    };
    Some(Endpoint::Tcp {
        host,
        port: port(port_field)?,
    })
}

/// A target given as host and port: both needed, the port not 0.
fn target_tcp(host: &Field, port_field: &Field) -> Option<Endpoint> {
    if host.path || host.text.is_empty() {
        return None;
    }
    let port = port(port_field).filter(|&p| p != 0)?;
    Some(Endpoint::Tcp {
        host: host.text.clone(),
        port,
    })
}

fn socket(field: &Field) -> Option<Endpoint> {
    field.path.then(|| Endpoint::Unix {
        path: field.text.clone(),
    })
}

/// `-L`, `-R`, `-D` specs.
fn open_spec(kind: ForwardKind, spec: &str) -> Result<ForwardSpec, CmdlineError> {
    let bad = CmdlineError::BadSpec(kind);
    let fields = fields(spec).ok_or(bad)?;
    if kind == ForwardKind::Dynamic {
        let listen = match fields.as_slice() {
            [port] => listen_tcp(None, port),
            [bind, port] => listen_tcp(Some(bind), port),
            _ => None,
        }
        .ok_or(bad)?;
        return local_port_given(listen, bad).map(|listen| ForwardSpec {
            kind,
            listen,
            connect: Endpoint::Tcp {
                host: "socks".into(),
                port: 0,
            },
        });
    }
    let ends = match fields.as_slice() {
        // -R [bind:]port would be a SOCKS proxy on the server's side.
        [last] | [_, last] if kind == ForwardKind::Remote && port(last).is_some() => {
            return Err(CmdlineError::RemoteDynamic);
        }
        [listen, connect] if listen.path => socket(listen).zip(socket(connect)),
        [port, connect] => listen_tcp(None, port).zip(socket(connect)),
        [listen, host, port] if listen.path => socket(listen).zip(target_tcp(host, port)),
        [bind, port, connect] if connect.path => listen_tcp(Some(bind), port).zip(socket(connect)),
        [port, host, hostport] => listen_tcp(None, port).zip(target_tcp(host, hostport)),
        [bind, port, host, hostport] => {
            listen_tcp(Some(bind), port).zip(target_tcp(host, hostport))
        }
        _ => None,
    };
    let (listen, connect) = ends.ok_or(bad)?;
    // The server picks the port of `-R 0:…`; a local listener needs one.
    let listen = match kind {
        ForwardKind::Remote => listen,
        _ => local_port_given(listen, bad)?,
    };
    Ok(ForwardSpec {
        kind,
        listen,
        connect,
    })
}

fn local_port_given(listen: Endpoint, bad: CmdlineError) -> Result<Endpoint, CmdlineError> {
    match listen {
        Endpoint::Tcp { port: 0, .. } => Err(bad),
        listen => Ok(listen),
    }
}

/// `-KL`, `-KR`, `-KD` specs: `[bind:]port` or a socket path.
fn cancel_spec(kind: ForwardKind, spec: &str) -> Result<Cancel, CmdlineError> {
    let fields = fields(spec).ok_or(CmdlineError::BadCancel)?;
    let listen = match fields.as_slice() {
        [path] if path.path => socket(path),
        [port] => listen_tcp(None, port),
        [bind, port] => listen_tcp(Some(bind), port),
        _ => None,
    };
    let listen = listen.ok_or(CmdlineError::BadCancel)?;
    let listen = local_port_given(listen, CmdlineError::BadCancel)?;
    Ok(Cancel { kind, listen })
}

/// The list `?` prints, with `\r\n` line ends for a terminal in raw mode.
pub fn help_text() -> String {
    let rows = [
        (
            "-L [bind:]port:host:hostport",
            "forward a local port to host:hostport",
        ),
        (
            "-R [bind:]port:host:hostport",
            "forward a server port here (port 0: the server picks)",
        ),
        ("-D [bind:]port", "a SOCKS proxy on a local port"),
        ("-KL [bind:]port", "cancel a local forward"),
        ("-KR [bind:]port", "cancel a remote forward"),
        ("-KD [bind:]port", "cancel a dynamic forward"),
        ("?", "show this list"),
    ];
    let mut text = String::from("Commands:\r\n");
    for (command, meaning) in rows {
        text.push_str(&format!("  {command:<30} {meaning}\r\n"));
    }
    text.push_str(
        "A /path in place of [bind:]port or host:hostport is a Unix socket.\r\n\
         The master's policy decides each request, and its audit log records it.\r\n",
    );
    text
}

/// What the session prints when the policy did not allow a request.
pub fn refused_text(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Direct { reason } => format!(
            "muxguard: refused by policy (it says to connect directly, which a shared \
             session cannot do): {reason}\r\n"
        ),
        _ => crate::mux::server::denial_text(outcome.reason()),
    }
}

/// What the session prints once an allowed forward was opened, or not.
pub fn opened_text(spec: &ForwardSpec, result: &OpenResult) -> String {
    match result {
        OpenResult::Opened => "Forwarding port.\r\n".to_string(),
        OpenResult::RemotePort(port) => format!(
            "Allocated port {port} for remote forward to {}\r\n",
            spec.connect
        ),
        OpenResult::Failed(reason) => format!("muxguard: {reason}\r\n"),
    }
}

/// What the session prints after an allowed cancel.
pub fn cancelled_text(result: &Result<(), String>) -> String {
    match result {
        Ok(()) => "Canceled forwarding.\r\n".to_string(),
        Err(reason) => format!("muxguard: {reason}\r\n"),
    }
}

/// What the session prints when no open forward matches a `-K…` line.
pub const UNKNOWN_FORWARD: &str = "Unknown port forwarding.\r\n";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::tcp;

    fn unix(path: &str) -> Endpoint {
        Endpoint::Unix { path: path.into() }
    }

    fn open(
        kind: ForwardKind,
        listen: Endpoint,
        connect: Endpoint,
    ) -> Result<Command, CmdlineError> {
        Ok(Command::Open(ForwardSpec {
            kind,
            listen,
            connect,
        }))
    }

    fn cancel(kind: ForwardKind, listen: Endpoint) -> Result<Command, CmdlineError> {
        Ok(Command::Cancel(Cancel { kind, listen }))
    }

    /// Feeds `input` as one read; returns the echo and the lines finished.
    fn type_into(editor: &mut LineEditor, input: &[u8]) -> (Vec<u8>, Vec<Finished>) {
        let mut echo = Vec::new();
        let mut finished = Vec::new();
        for &byte in input {
            finished.extend(editor.feed(byte, &mut echo));
        }
        finished.extend(editor.end_of_read(&mut echo));
        (echo, finished)
    }

    fn submitted(line: &str) -> Finished {
        Finished::Submitted(line.into())
    }

    #[test]
    fn typing_echoes_and_enter_submits() {
        let mut editor = LineEditor::default();
        let (echo, done) = type_into(&mut editor, b"-L 80:h:80");
        assert_eq!(echo, b"-L 80:h:80");
        assert!(done.is_empty());
        let (echo, done) = type_into(&mut editor, b"\r");
        assert_eq!(echo, b"\r\n");
        assert_eq!(done, [submitted("-L 80:h:80")]);
        // Ready for the next line, which LF ends as well.
        assert_eq!(type_into(&mut editor, b"?\n").1, [submitted("?")]);
        assert_eq!(type_into(&mut editor, b"\r").1, [submitted("")]);
    }

    #[test]
    fn erasing() {
        let mut editor = LineEditor::default();
        let (echo, done) = type_into(&mut editor, b"-Lx\x7f \x08\x08 8");
        assert_eq!(echo, b"-Lx\x08 \x08 \x08 \x08\x08 \x08 8");
        assert!(done.is_empty());
        assert_eq!(type_into(&mut editor, b"\r").1, [submitted("- 8")]);

        // Backspace on an empty line erases nothing.
        let (echo, _) = type_into(&mut editor, b"\x7f\x08");
        assert_eq!(echo, b"");

        // Ctrl-U clears the line, Ctrl-W the last word and blanks after it.
        let (echo, _) = type_into(&mut editor, b"abc\x15-KL 1  \x17");
        assert_eq!(
            echo,
            b"abc\x08 \x08\x08 \x08\x08 \x08-KL 1  \x08 \x08\x08 \x08\x08 \x08"
        );
        assert_eq!(type_into(&mut editor, b"2\r").1, [submitted("-KL 2")]);
    }

    #[test]
    fn cancelling() {
        let mut editor = LineEditor::default();
        let (echo, done) = type_into(&mut editor, b"-L 1\x03");
        assert_eq!(echo, b"-L 1\r\n");
        assert_eq!(done, [Finished::Cancelled]);
        // The cancelled text is gone.
        assert_eq!(type_into(&mut editor, b"x\r").1, [submitted("x")]);

        // Ctrl-D cancels an empty line only.
        assert_eq!(type_into(&mut editor, b"\x04").1, [Finished::Cancelled]);
        assert_eq!(type_into(&mut editor, b"a\x04\r").1, [submitted("a")]);

        // A lone Esc ends the read it came in: cancelled.
        assert_eq!(type_into(&mut editor, b"-L\x1b").1, [Finished::Cancelled]);
        // Esc and another key (Alt+key) cancels, and the key goes with it.
        assert_eq!(type_into(&mut editor, b"ab\x1bx").1, [Finished::Cancelled]);
        assert_eq!(type_into(&mut editor, b"\r").1, [submitted("")]);
    }

    #[test]
    fn escape_sequences_are_ignored() {
        let mut editor = LineEditor::default();
        // Up, Left (CSI), Home in application mode (SS3), a bracketed paste.
        let (echo, done) = type_into(
            &mut editor,
            b"-L\x1b[A\x1b[D\x1bOH \x1b[200~8:h:8\x1b[201~\x1b[1;5C\r",
        );
        assert_eq!(echo, b"-L 8:h:8\r\n");
        assert_eq!(done, [submitted("-L 8:h:8")]);

        // A sequence cut short by Enter: the Enter still counts.
        assert_eq!(type_into(&mut editor, b"x\x1b[1\r").1, [submitted("x")]);
    }

    #[test]
    fn control_bytes_and_non_ascii_are_dropped_and_the_line_is_capped() {
        let mut editor = LineEditor::default();
        let (echo, _) = type_into(&mut editor, "a\tb\x01é".as_bytes());
        assert_eq!(echo, b"ab");
        let long = vec![b'x'; MAX_LINE + 10];
        let (echo, _) = type_into(&mut editor, &long);
        assert_eq!(echo.len(), MAX_LINE - 2);
        let (_, done) = type_into(&mut editor, b"\r");
        let [Finished::Submitted(line)] = done.as_slice() else {
            panic!("{done:?}")
        };
        assert_eq!(line.len(), MAX_LINE);
    }

    #[test]
    fn nothing_and_help() {
        for line in ["", "  ", "-", " - "] {
            assert_eq!(parse(line), Ok(Command::Nothing), "{line:?}");
        }
        for line in ["?", "-?", "h", "-h", "help", "H"] {
            assert_eq!(parse(line), Ok(Command::Help), "{line:?}");
        }
    }

    #[test]
    fn invalid_commands() {
        for line in [
            "x",
            "-X 1",
            "-K",
            "-KX 1",
            "-l 1:h:1",
            "--L 1:h:1",
            "-KKL 1",
        ] {
            assert_eq!(parse(line), Err(CmdlineError::InvalidCommand), "{line:?}");
        }
        assert_eq!(parse("!ls"), Err(CmdlineError::LocalCommand));
        assert_eq!(
            CmdlineError::InvalidCommand.to_string(),
            "Invalid command (? lists the commands)."
        );
    }

    #[test]
    fn local_forwards() {
        use ForwardKind::Local;
        assert_eq!(
            parse("-L 8080:127.0.0.1:22"),
            open(Local, tcp("", 8080), tcp("127.0.0.1", 22))
        );
        // Without the dash or the blank, with blanks around.
        assert_eq!(
            parse("  L8080:db:5432 "),
            open(Local, tcp("", 8080), tcp("db", 5432))
        );
        assert_eq!(
            parse("-L localhost:8080:db:5432"),
            open(Local, tcp("localhost", 8080), tcp("db", 5432))
        );
        // An empty bind address is every address, as the client sends it.
        assert_eq!(
            parse("-L :8080:db:5432"),
            open(Local, tcp("*", 8080), tcp("db", 5432))
        );
        assert_eq!(
            parse("-L [::1]:8080:[fe80::1]:22"),
            open(Local, tcp("::1", 8080), tcp("fe80::1", 22))
        );
        // Unix sockets on either side.
        assert_eq!(
            parse("-L 8080:/run/db.sock"),
            open(Local, tcp("", 8080), unix("/run/db.sock"))
        );
        assert_eq!(
            parse("-L /tmp/l.sock:db:5432"),
            open(Local, unix("/tmp/l.sock"), tcp("db", 5432))
        );
        assert_eq!(
            parse("-L /tmp/l.sock:/run/db.sock"),
            open(Local, unix("/tmp/l.sock"), unix("/run/db.sock"))
        );
        assert_eq!(
            parse("-L 127.0.0.1:8080:/run/db.sock"),
            open(Local, tcp("127.0.0.1", 8080), unix("/run/db.sock"))
        );
        // A colon in a path: brackets or a backslash.
        assert_eq!(
            parse(r"-L [/tmp/a:b]:/run/c\:d"),
            open(Local, unix("/tmp/a:b"), unix("/run/c:d"))
        );
    }

    #[test]
    fn bad_local_forwards() {
        let bad = Err(CmdlineError::BadSpec(ForwardKind::Local));
        for line in [
            "-L",
            "-L 8080",
            "-L 8080:db",
            "-L 0:db:5432",
            "-L 8080:db:0",
            "-L 8080::5432",
            "-L 70000:db:5432",
            "-L x:db:5432",
            "-L 8080:db:http",
            "-L +80:db:80",
            "-L a:b:c:d:e",
            "-L ::1:8080:db:22",
            "-L [::1:8080:db:22",
            "-L [::1]x:8080:db:22",
            r"-L 8080:db:22\",
            "-L 8080:db:/x:22",
        ] {
            assert_eq!(parse(line), bad, "{line:?}");
        }
        assert_eq!(
            CmdlineError::BadSpec(ForwardKind::Local).to_string(),
            "Bad local forwarding specification."
        );
    }

    #[test]
    fn remote_forwards() {
        use ForwardKind::Remote;
        assert_eq!(
            parse("-R 9000:localhost:80"),
            open(Remote, tcp("", 9000), tcp("localhost", 80))
        );
        // The server picks the port.
        assert_eq!(
            parse("-R 0:localhost:80"),
            open(Remote, tcp("", 0), tcp("localhost", 80))
        );
        assert_eq!(
            parse("-R *:9000:localhost:80"),
            open(Remote, tcp("*", 9000), tcp("localhost", 80))
        );
        assert_eq!(
            parse("-R /tmp/r.sock:/run/x.sock"),
            open(Remote, unix("/tmp/r.sock"), unix("/run/x.sock"))
        );
        assert_eq!(
            parse("-R 9000:/run/x.sock"),
            open(Remote, tcp("", 9000), unix("/run/x.sock"))
        );
        assert_eq!(parse("-R 9000"), Err(CmdlineError::RemoteDynamic));
        assert_eq!(parse("-R 10.0.0.1:9000"), Err(CmdlineError::RemoteDynamic));
        for line in ["-R 9000:h:0", "-R x", "-R a:b", "-R"] {
            assert_eq!(
                parse(line),
                Err(CmdlineError::BadSpec(ForwardKind::Remote)),
                "{line:?}"
            );
        }
    }

    #[test]
    fn dynamic_forwards() {
        use ForwardKind::Dynamic;
        let socks = || tcp("socks", 0);
        assert_eq!(parse("-D 1080"), open(Dynamic, tcp("", 1080), socks()));
        assert_eq!(
            parse("-D 127.0.0.1:1080"),
            open(Dynamic, tcp("127.0.0.1", 1080), socks())
        );
        assert_eq!(parse("-D :1080"), open(Dynamic, tcp("*", 1080), socks()));
        let bad = Err(CmdlineError::BadSpec(Dynamic));
        for line in [
            "-D",
            "-D 0",
            "-D /tmp/s.sock",
            "-D 1080:h:80",
            "-D a:b:c",
            "-D x",
        ] {
            assert_eq!(parse(line), bad, "{line:?}");
        }
    }

    #[test]
    fn cancels() {
        use ForwardKind::{Dynamic, Local, Remote};
        assert_eq!(parse("-KL 8080"), cancel(Local, tcp("", 8080)));
        assert_eq!(parse("KL8080"), cancel(Local, tcp("", 8080)));
        assert_eq!(
            parse("-KR 127.0.0.1:9000"),
            cancel(Remote, tcp("127.0.0.1", 9000))
        );
        assert_eq!(parse("-KD :1080"), cancel(Dynamic, tcp("*", 1080)));
        assert_eq!(parse("-KL /tmp/l.sock"), cancel(Local, unix("/tmp/l.sock")));
        for line in ["-KL", "-KL 0", "-KL 8080:h:80", "-KR x", "-KD 1:2:3"] {
            assert_eq!(parse(line), Err(CmdlineError::BadCancel), "{line:?}");
        }
    }

    #[test]
    fn messages() {
        let spec = ForwardSpec {
            kind: ForwardKind::Remote,
            listen: tcp("", 0),
            connect: tcp("localhost", 80),
        };
        assert_eq!(
            opened_text(&spec, &OpenResult::Opened),
            "Forwarding port.\r\n"
        );
        assert_eq!(
            opened_text(&spec, &OpenResult::RemotePort(40000)),
            "Allocated port 40000 for remote forward to localhost:80\r\n"
        );
        assert_eq!(
            opened_text(&spec, &OpenResult::Failed("Port forwarding failed".into())),
            "muxguard: Port forwarding failed\r\n"
        );
        assert_eq!(cancelled_text(&Ok(())), "Canceled forwarding.\r\n");
        assert_eq!(
            cancelled_text(&Err("port not found".into())),
            "muxguard: port not found\r\n"
        );
        let denied = Outcome::Deny {
            reason: "rule \"no forwards\"".into(),
        };
        assert_eq!(
            refused_text(&denied),
            "muxguard: denied by policy: rule \"no forwards\"\r\n"
        );
    }

    #[test]
    fn help_lists_every_command() {
        let help = help_text();
        assert!(help.split_inclusive("\r\n").all(|l| l.ends_with("\r\n")));
        for command in ["-L ", "-R ", "-D ", "-KL ", "-KR ", "-KD ", "? "] {
            assert!(
                help.lines().any(|l| l.trim_start().starts_with(command)),
                "{command:?} missing from:\n{help}"
            );
        }
        assert!(help.contains("policy"));
    }
}
