//! The audit log's record model and hash chain, with no I/O.
//!
//! A log file is JSON Lines: one record per line, each line ending in `\n`.
//! Every master writes its own *stream* of records, named by a random
//! 128-bit id, and several streams may share one file. Within a stream,
//! records are numbered from 0 (`seq`) and each carries the SHA-256 of the
//! exact bytes of the stream's previous line (`prev`), so that editing,
//! removing or reordering a record breaks the chain at a place
//! [`verify`] can name. Record 0 is always `master_start`, and its `prev`
//! is 64 zeros.
//!
//! Hashes are taken over the bytes as written, never over a re-serialisation:
//! the verifier must not depend on serde_json producing the same bytes for
//! the same value in a later version. That is also why verification reads
//! only the few envelope fields it needs and ignores the rest of a record,
//! so that a newer muxguard's record types still verify with an older one.
//!
//! The field set is documented, with examples, in `docs/audit.md`; a test
//! below keeps that document's example stream identical to what this code
//! produces.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest as _, Sha256};

// ---------------------------------------------------------------------------
// Small value types of the envelope
// ---------------------------------------------------------------------------

/// A hex string of the wrong length or with characters other than `0-9a-f`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected {expected} lowercase hex digits")]
pub struct HexError {
    expected: usize,
}

/// Decodes exactly `N` bytes of lowercase hex. Uppercase is refused so that
/// each value has a single spelling in the log.
fn decode_hex<const N: usize>(text: &str) -> Result<[u8; N], HexError> {
    let error = HexError { expected: 2 * N };
    let digits = text.as_bytes();
    if digits.len() != 2 * N {
        return Err(error);
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Ok(c - b'0'),
        b'a'..=b'f' => Ok(c - b'a' + 10),
        _ => Err(error.clone()),
    };
    let mut out = [0u8; N];
    for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        *byte = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Ok(out)
}

fn write_hex(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    bytes.iter().try_for_each(|b| write!(f, "{b:02x}"))
}

/// Serialises a value through its `Display` and reads it back through
/// `FromStr`, for the types below that appear in JSON as strings.
macro_rules! serde_as_string {
    ($type:ty, $what:literal) => {
        impl Serialize for $type {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $type {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = String::deserialize(deserializer)?;
                text.parse()
                    .map_err(|e| serde::de::Error::custom(format_args!("invalid {}: {e}", $what)))
            }
        }
    };
}

/// The random id of one master's stream of records (128 bits, shown as 32
/// lowercase hex digits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId([u8; 16]);

impl StreamId {
    /// Wraps bytes that the caller has drawn from a secure random source.
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        StreamId(bytes)
    }

    /// The first 8 hex digits and an ellipsis, for messages meant for people;
    /// the full id is in the log.
    pub fn short(&self) -> String {
        format!(
            "{:02x}{:02x}{:02x}{:02x}…",
            self.0[0], self.0[1], self.0[2], self.0[3]
        )
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

impl FromStr for StreamId {
    type Err = HexError;
    fn from_str(s: &str) -> Result<Self, HexError> {
        decode_hex(s).map(StreamId)
    }
}

serde_as_string!(StreamId, "stream id");

/// A SHA-256 hash: of a record line in `prev`, shown as 64 lowercase hex
/// digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LineHash([u8; 32]);

impl LineHash {
    /// The `prev` of a stream's start record, which has no predecessor.
    pub const ZERO: LineHash = LineHash([0; 32]);

    /// The hash of one record line: its exact bytes, without the newline.
    pub fn of_line(line: &[u8]) -> Self {
        LineHash(Sha256::digest(line).into())
    }
}

impl fmt::Display for LineHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

impl FromStr for LineHash {
    type Err = HexError;
    fn from_str(s: &str) -> Result<Self, HexError> {
        decode_hex(s).map(LineHash)
    }
}

serde_as_string!(LineHash, "hash");

/// A timestamp that is not of the form `2026-11-24T04:52:01.123Z`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected a UTC time like 2026-11-24T04:52:01.123Z")]
pub struct TimestampError;

/// A point in time with millisecond precision, written as UTC RFC 3339 with
/// exactly three fractional digits and a `Z`, e.g. `2026-11-24T04:52:01.123Z`.
/// A fixed width keeps the log sortable as text and easy to grep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp {
    /// Milliseconds since 1970-01-01T00:00:00Z.
    millis: u64,
}

/// The last millisecond of year 9999: later times would need a fifth year
/// digit and break the fixed format.
const MAX_MILLIS: u64 = 253_402_300_799_999;

impl Timestamp {
    /// The current time from the system clock.
    pub fn now() -> Self {
        Self::from_system_time(SystemTime::now())
    }

    /// Times before 1970 (a clock set badly wrong) are recorded as the epoch
    /// rather than refused: a record with an odd time is worth more than a
    /// missing record.
    pub fn from_system_time(time: SystemTime) -> Self {
        let since_epoch = time.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
        let millis = u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX);
        Timestamp {
            millis: millis.min(MAX_MILLIS),
        }
    }

    /// Milliseconds since the Unix epoch, clamped to the years 1970–9999.
    #[cfg(any(test, feature = "fuzzing"))]
    pub fn from_unix_millis(millis: u64) -> Self {
        Timestamp {
            millis: millis.min(MAX_MILLIS),
        }
    }

    pub fn unix_millis(&self) -> u64 {
        self.millis
    }

    pub fn to_system_time(self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.millis)
    }
}

/// The proleptic Gregorian date of a day counted from 1970-01-01, by the
/// usual shift to years that start on 1 March (so the leap day is last) and
/// 400-year eras of 146097 days.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468; // days from 0000-03-01
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = era * 400 + year_of_era + u64::from(month <= 2);
    (year, month, day)
}

/// The inverse of [`civil_from_days`], for dates from 1970 on.
fn days_from_civil(year: u64, month: u64, day: u64) -> u64 {
    let year = year - u64::from(month <= 2);
    let era = year / 400;
    let year_of_era = year % 400;
    let month_from_march = if month > 2 { month - 3 } else { month + 9 };
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

fn days_in_month(year: u64, month: u64) -> u64 {
    let leap = year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400));
    match month {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

const MILLIS_PER_DAY: u64 = 86_400_000;

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (year, month, day) = civil_from_days(self.millis / MILLIS_PER_DAY);
        let in_day = self.millis % MILLIS_PER_DAY;
        let (secs, millis) = (in_day / 1000, in_day % 1000);
        write!(
            f,
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
            secs / 3600,
            secs / 60 % 60,
            secs % 60
        )
    }
}

impl FromStr for Timestamp {
    type Err = TimestampError;

    /// Accepts exactly the form this module writes, nothing looser: the log
    /// has one spelling per instant.
    fn from_str(s: &str) -> Result<Self, TimestampError> {
        let b = s.as_bytes();
        // YYYY-MM-DDTHH:MM:SS.mmmZ
        const SHAPE: &[u8; 24] = b"0000-00-00T00:00:00.000Z";
        if b.len() != SHAPE.len() {
            return Err(TimestampError);
        }
        for (&c, &shape) in b.iter().zip(SHAPE) {
            let ok = if shape == b'0' {
                c.is_ascii_digit()
            } else {
                c == shape
            };
            if !ok {
                return Err(TimestampError);
            }
        }
        let number = |range: std::ops::Range<usize>| {
            b[range]
                .iter()
                .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'))
        };
        let (year, month, day) = (number(0..4), number(5..7), number(8..10));
        let (hour, minute, second, millis) = (
            number(11..13),
            number(14..16),
            number(17..19),
            number(20..23),
        );
        if year < 1970
            || !(1..=12).contains(&month)
            || !(1..=days_in_month(year, month)).contains(&day)
            || hour > 23
            || minute > 59
            || second > 59
        {
            return Err(TimestampError);
        }
        let days = days_from_civil(year, month, day);
        let secs = days * 86_400 + hour * 3600 + minute * 60 + second;
        Ok(Timestamp {
            millis: secs * 1000 + millis,
        })
    }
}

serde_as_string!(Timestamp, "timestamp");

// ---------------------------------------------------------------------------
// Events
// ---------------------------------------------------------------------------

/// What a record is about. The JSON field `event` names the variant; the
/// variant's fields follow it in the same object.
///
/// Optional fields are left out of the JSON when absent, never written as
/// `null`. Names of fields and of values are part of the stable format
/// documented in `docs/audit.md`: add, never rename.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// Record 0 of every stream, and only record 0.
    MasterStart(MasterStart),
    /// The master is going away; nothing follows in this stream.
    MasterStop(MasterStop),
    /// A client connected to the control socket and passed the peer check.
    ClientConnect(ClientConnect),
    /// A client was turned away before it could make any request.
    ClientRefused(ClientRefused),
    /// A client asked for something that needs a decision.
    Request(Request),
    /// The answer to a request, and what gave it.
    Decision(Decision),
    SessionOpen(SessionOpen),
    SessionClose(SessionClose),
    ForwardOpen(ForwardOpen),
    ForwardClose(ForwardClose),
    /// One connection made through an open forward.
    ForwardConnection(ForwardConnection),
    /// An escape sequence typed in a session (`~.` and the like).
    Escape(Escape),
}

impl Event {
    /// The value of the `event` field.
    pub fn name(&self) -> &'static str {
        match self {
            Event::MasterStart(_) => "master_start",
            Event::MasterStop(_) => "master_stop",
            Event::ClientConnect(_) => "client_connect",
            Event::ClientRefused(_) => "client_refused",
            Event::Request(_) => "request",
            Event::Decision(_) => "decision",
            Event::SessionOpen(_) => "session_open",
            Event::SessionClose(_) => "session_close",
            Event::ForwardOpen(_) => "forward_open",
            Event::ForwardClose(_) => "forward_close",
            Event::ForwardConnection(_) => "forward_connection",
            Event::Escape(_) => "escape",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MasterStart {
    /// The destination as the user gave it (`build-1`, `me@host`).
    pub destination: String,
    /// Host name, port and user after ssh_config resolution.
    pub host: String,
    pub port: u16,
    pub user: String,
    /// The server's host key fingerprint, as OpenSSH prints it
    /// (`SHA256:…`).
    pub host_key: String,
    /// muxguard's version.
    pub version: String,
    /// What the sandbox enforced, in words (e.g. which Landlock ABI).
    pub sandbox: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MasterStop {
    pub reason: String,
}

/// The kernel's view of the process at the other end of the control socket
/// (SO_PEERCRED).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
}

/// One process of the requester chain, from the peer up to its ancestors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessEntry {
    pub pid: u32,
    /// A short name (the executable's file name, else argv\[0\]).
    pub name: String,
    /// Absent when /proc would not tell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exe: Option<String>,
    /// Absent when /proc would not tell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientConnect {
    /// The master's number for this client connection; later records of
    /// the client carry it.
    pub client: u64,
    pub peer: Peer,
    /// The peer first, then its parent, and so on.
    pub chain: Vec<ProcessEntry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// The peer's controlling terminal, e.g. `/dev/pts/3`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tty: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientRefused {
    pub peer: Peer,
    pub reason: String,
}

/// The name of an environment variable a client passed. Only names are
/// logged: values often hold secrets. Built from `NAME=value` by keeping
/// what precedes the first `=`, so a caller cannot log a value by mistake.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EnvName(String);

impl EnvName {
    /// From a `NAME=value` string as the mux protocol carries it.
    pub fn from_var(var: &str) -> Self {
        let name = var.split_once('=').map_or(var, |(name, _)| name);
        EnvName(name.to_owned())
    }

    #[cfg(any(test, feature = "fuzzing"))]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A `-O` control operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ControlOperation {
    /// `-O exit`.
    Terminate,
    /// `-O stop`.
    StopListening,
    /// `-O cancel`.
    CancelForward,
    /// `muxguard status`, `muxguard forget`, `-O conninfo`/`channels`
    /// asked by another uid.
    Info,
}

/// What was requested. The JSON field `kind` names it, with the names rule
/// files use for kinds (kebab-case), so one word filters both; the fields
/// each kind carries follow. Carrying the command inside its kind rules out
/// a shell with a command or a forward with a tty.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum RequestKind {
    Shell {
        tty: bool,
        env: Vec<EnvName>,
    },
    Exec {
        command: String,
        tty: bool,
        env: Vec<EnvName>,
    },
    Subsystem {
        subsystem: String,
        tty: bool,
        env: Vec<EnvName>,
    },
    /// `forward` describes the forward, listening side first:
    /// `local forward 127.0.0.1:8080 -> db:5432` (`LOCALHOST:8080` without
    /// a bind address).
    ForwardLocal {
        forward: String,
    },
    /// `remote forward LOCALHOST:9000 -> localhost:9000`.
    ForwardRemote {
        forward: String,
    },
    /// `dynamic forward LOCALHOST:1080 -> *`.
    ForwardDynamic {
        forward: String,
    },
    /// The target: `db:5432`.
    StdioForward {
        forward: String,
    },
    Proxy,
    Control {
        operation: ControlOperation,
        /// The forward being cancelled, for `cancel-forward`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        forward: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub client: u64,
    /// The master's number for this request; the decision and the session
    /// or forward it leads to carry it.
    pub request: u64,
    #[serde(flatten)]
    pub kind: RequestKind,
}

/// What the master did with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Allow,
    /// Declined to share the connection; the client may authenticate on
    /// its own.
    Direct,
    Deny,
}

/// Which mechanism gave the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecisionSource {
    /// A rule matched (see `rule`).
    Rule,
    /// No rule matched; a default applied.
    Default,
    /// The person at the desktop answered a prompt.
    Prompt,
    /// An earlier prompt answer, remembered for a while.
    Remembered,
    /// The screen was locked, so nobody could be asked.
    Locked,
    /// A prompt went unanswered.
    Timeout,
    /// A prompt was needed but no prompter is available.
    NoPrompter,
    /// The policy could not be read or parsed.
    PolicyError,
    /// The audit log could not be written, and the policy fails closed.
    AuditFailure,
}

/// Where a rule is written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleRef {
    pub name: String,
    pub file: String,
    pub line: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub client: u64,
    pub request: u64,
    pub action: Action,
    pub source: DecisionSource,
    /// The explanation given to people, e.g. `rule "ci" (/etc/…:12)`.
    pub decided_by: String,
    /// The rule that decided or led to the decision, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<RuleRef>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionOpen {
    pub client: u64,
    pub request: u64,
    /// The master's number for this session.
    pub session: u64,
}

/// How a session's remote command ended, when the server said.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Exit {
    /// `exit_status`: the command's exit code.
    ExitStatus(u32),
    /// `exit_signal`: the signal's name without `SIG`, e.g. `TERM`.
    ExitSignal(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionClose {
    pub session: u64,
    pub duration_ms: u64,
    /// Bytes from the server to the client (the session's output).
    pub bytes_in: u64,
    /// Bytes from the client to the server (the session's input).
    pub bytes_out: u64,
    /// Absent when the session ended without an exit status or signal
    /// (e.g. the client was killed).
    #[serde(default, flatten, skip_serializing_if = "Option::is_none")]
    pub exit: Option<Exit>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForwardOpen {
    pub client: u64,
    pub request: u64,
    /// In ssh's option syntax, e.g. `-L 127.0.0.1:8080:db:5432`.
    pub spec: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForwardClose {
    pub spec: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForwardConnection {
    pub spec: String,
    /// The address the connection came from (`203.0.113.9:51234`).
    pub peer: String,
    /// Why the master could not reach the forward's target (it then
    /// refused the connection); absent when it connected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Escape {
    pub session: u64,
    /// As typed, e.g. `~.`.
    pub sequence: String,
}

// ---------------------------------------------------------------------------
// Records and the writer's side of the chain
// ---------------------------------------------------------------------------

/// One line of the log. Serialised, the envelope fields come first in the
/// order below, then `event` and the event's own fields.
#[cfg(any(test, feature = "fuzzing"))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub ts: Timestamp,
    pub stream: StreamId,
    pub seq: u64,
    pub prev: LineHash,
    #[serde(flatten)]
    pub event: Event,
}

#[cfg(any(test, feature = "fuzzing"))]
impl Record {
    /// Parses one line (without its newline) for reading. This says nothing
    /// about integrity; use [`verify`] for that.
    pub fn parse(line: &str) -> Result<Record, serde_json::Error> {
        serde_json::from_str(line)
    }
}

/// A record the chain refuses to build.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("a stream must begin with master_start, not {0}")]
    MissingStart(&'static str),
    #[error("master_start may only be the first record of a stream")]
    StartNotFirst,
    #[error("the stream has ended with master_stop")]
    Ended,
    #[error("could not serialise the record: {0}")]
    Serialise(String),
}

/// The writer's state of one stream: what the next record's `seq` and
/// `prev` must be.
///
/// The state only moves forward when a line is known to be written: build
/// it with [`Chain::prepare`], write [`Pending::bytes`], and only then call
/// [`Pending::commit`]. Dropping the `Pending` after a failed write leaves
/// the chain where it was, so the next record links to the last one that
/// is really in the file.
#[derive(Debug, Clone)]
pub struct Chain {
    stream: StreamId,
    next_seq: u64,
    prev: LineHash,
    ended: bool,
}

impl Chain {
    /// A stream with nothing written yet; its first record must be
    /// `master_start`.
    pub fn new(stream: StreamId) -> Self {
        Chain {
            stream,
            next_seq: 0,
            prev: LineHash::ZERO,
            ended: false,
        }
    }

    #[cfg(any(test, feature = "fuzzing"))]
    pub fn stream(&self) -> StreamId {
        self.stream
    }

    /// The `seq` the next record will get, which is also how many records
    /// have been committed.
    #[cfg(any(test, feature = "fuzzing"))]
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Builds the next record's line. Refuses what would make an invalid
    /// stream: anything but `master_start` first, `master_start` later, or
    /// anything after `master_stop`.
    pub fn prepare(&mut self, ts: Timestamp, event: &Event) -> Result<Pending<'_>, ChainError> {
        let is_start = matches!(event, Event::MasterStart(_));
        if self.ended {
            return Err(ChainError::Ended);
        }
        if self.next_seq == 0 && !is_start {
            return Err(ChainError::MissingStart(event.name()));
        }
        if self.next_seq != 0 && is_start {
            return Err(ChainError::StartNotFirst);
        }
        let record = RecordRef {
            ts,
            stream: self.stream,
            seq: self.next_seq,
            prev: self.prev,
            event,
        };
        let mut bytes =
            serde_json::to_vec(&record).map_err(|e| ChainError::Serialise(e.to_string()))?;
        // serde_json escapes control characters inside strings, so the only
        // newline is the terminator added here: no field value can split a
        // record or forge a line.
        debug_assert!(!bytes.contains(&b'\n'));
        let hash = LineHash::of_line(&bytes);
        bytes.push(b'\n');
        let ends = matches!(event, Event::MasterStop(_));
        Ok(Pending {
            chain: self,
            bytes,
            hash,
            ends,
        })
    }
}

/// [`Record`] by reference, so that preparing a line need not clone the
/// event. Its field order is the written order.
#[derive(Serialize)]
struct RecordRef<'a> {
    ts: Timestamp,
    stream: StreamId,
    seq: u64,
    prev: LineHash,
    #[serde(flatten)]
    event: &'a Event,
}

/// A record line built by [`Chain::prepare`] and not yet known to be
/// written. It borrows the chain, so no other record can be prepared in
/// between.
#[derive(Debug)]
pub struct Pending<'c> {
    chain: &'c mut Chain,
    /// The line with its trailing newline, ready for a single write.
    bytes: Vec<u8>,
    hash: LineHash,
    ends: bool,
}

impl Pending<'_> {
    /// The whole line, newline included.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    #[cfg(feature = "fuzzing")]
    pub fn seq(&self) -> u64 {
        self.chain.next_seq
    }

    /// Records that the line is in the file: the next record follows it.
    pub fn commit(self) {
        self.chain.prev = self.hash;
        self.chain.next_seq += 1;
        self.chain.ended = self.ends;
    }
}

// ---------------------------------------------------------------------------
// Verification
// ---------------------------------------------------------------------------

/// What is wrong with a line that could not be placed in any stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineFault {
    /// The bytes are not UTF-8.
    NotUtf8,
    /// Not JSON: a partial, corrupted or hand-edited line.
    NotJson(String),
    /// JSON, but without a valid envelope (`ts`, `stream`, `seq`, `prev`,
    /// `event`).
    NotRecord(String),
    /// The file's last line has no newline: a write was cut short or the
    /// file was truncated.
    Unterminated,
}

/// How a record fails to follow the previous record of its stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkFault {
    /// The first record seen of this stream is not its start (`seq` 0,
    /// `master_start`): the start and maybe more were removed.
    NoStart { event: String },
    /// A `master_start` whose `prev` is not all zeros.
    StartPrevNotZero,
    /// `seq` jumped forward: records between were removed.
    Gap { expected: u64, prev_line: usize },
    /// `seq` did not increase: records were reordered or duplicated.
    Back { expected: u64, prev_line: usize },
    /// `prev` is not the hash of the stream's previous line: that line (or
    /// this record's `prev`) was edited, or a record was replaced.
    PrevMismatch { prev_line: usize },
    /// `master_start` in the middle of a stream.
    StartNotFirst,
    /// A record after the stream's `master_stop`.
    AfterStop { stop_line: usize },
}

/// The first problem found, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Break {
    Line {
        /// 1-based line number.
        line: usize,
        fault: LineFault,
    },
    Link {
        /// 1-based line number of the record where the chain breaks.
        line: usize,
        stream: StreamId,
        seq: u64,
        fault: LinkFault,
    },
}

impl Break {
    /// The 1-based line number where the problem shows.
    #[cfg(any(test, feature = "fuzzing"))]
    pub fn line(&self) -> usize {
        match self {
            Break::Line { line, .. } | Break::Link { line, .. } => *line,
        }
    }
}

impl fmt::Display for Break {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Break::Line { line, fault } => {
                write!(f, "line {line}: ")?;
                match fault {
                    LineFault::NotUtf8 => f.write_str("not UTF-8 (corrupted or edited)"),
                    LineFault::NotJson(e) => {
                        write!(f, "not JSON ({e}): a partial, corrupted or edited line")
                    }
                    LineFault::NotRecord(e) => write!(f, "not an audit record ({e})"),
                    LineFault::Unterminated => f.write_str(
                        "last line has no newline: a write was cut short or the file truncated",
                    ),
                }
            }
            Break::Link {
                line,
                stream,
                seq,
                fault,
            } => {
                write!(
                    f,
                    "line {line}: record seq {seq} of stream {}: ",
                    stream.short()
                )?;
                match fault {
                    LinkFault::NoStart { event } if *seq == 0 => write!(
                        f,
                        "the stream begins with {event}, not master_start (start record removed or replaced)"
                    ),
                    LinkFault::NoStart { .. } => f.write_str(
                        "the stream begins here, without its master_start (earlier records removed)",
                    ),
                    LinkFault::StartPrevNotZero => {
                        f.write_str("master_start must have prev = 64 zeros (record edited)")
                    }
                    LinkFault::Gap { expected, prev_line } => write!(
                        f,
                        "expected seq {expected} after line {prev_line} (records removed or moved)"
                    ),
                    LinkFault::Back { expected, prev_line } => write!(
                        f,
                        "expected seq {expected} after line {prev_line}, seq goes back \
                         (records reordered or duplicated)"
                    ),
                    LinkFault::PrevMismatch { prev_line } => write!(
                        f,
                        "prev does not match line {prev_line} (record edited or removed)"
                    ),
                    LinkFault::StartNotFirst => {
                        f.write_str("master_start in the middle of a stream (record edited)")
                    }
                    LinkFault::AfterStop { stop_line } => write!(
                        f,
                        "record after the stream's master_stop on line {stop_line} (records reordered)"
                    ),
                }
            }
        }
    }
}

/// What the file holds of one stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSummary {
    pub stream: StreamId,
    /// Lines placed in this stream.
    pub records: u64,
    pub first_line: usize,
    pub last_line: usize,
    /// The `seq` of the stream's last line.
    pub last_seq: u64,
    /// Whether the stream's last line is a `master_stop`. A stream that
    /// does not end so belongs to a master still running or one that died,
    /// or its tail was removed: the chain alone cannot tell.
    pub stopped: bool,
}

/// The result of [`verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Lines in the file, the last one counted even without its newline.
    pub lines: usize,
    /// Streams in order of their first line.
    pub streams: Vec<StreamSummary>,
    /// The first broken link in file order; `None` when every chain holds.
    pub first_break: Option<Break>,
}

impl VerifyReport {
    pub fn is_ok(&self) -> bool {
        self.first_break.is_none()
    }
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.first_break {
            Some(broken) => writeln!(f, "{broken}")?,
            None => writeln!(f, "ok: every chain is intact")?,
        }
        let records: u64 = self.streams.iter().map(|s| s.records).sum();
        let streams = self.streams.len();
        writeln!(
            f,
            "{} {}, {records} {} in {streams} {}",
            self.lines,
            plural(self.lines as u64, "line"),
            plural(records, "record"),
            plural(streams as u64, "stream"),
        )?;
        for s in &self.streams {
            let end = if s.stopped {
                "ended by master_stop"
            } else {
                "no master_stop (master still running or crashed, or the end of the stream removed)"
            };
            writeln!(
                f,
                "  stream {}: {} records, lines {}-{}, {end}",
                s.stream, s.records, s.first_line, s.last_line
            )?;
        }
        Ok(())
    }
}

fn plural(count: u64, word: &str) -> String {
    if count == 1 {
        word.to_owned()
    } else {
        format!("{word}s")
    }
}

/// The fields verification reads. Everything else in a record is covered
/// by the hash but not interpreted, so records of types this version does
/// not know still verify.
#[derive(Deserialize)]
struct Envelope {
    #[allow(dead_code)] // parsed only to insist that it is well-formed
    ts: Timestamp,
    stream: StreamId,
    seq: u64,
    prev: LineHash,
    event: String,
}

/// What the verifier remembers of a stream between its records.
struct StreamState {
    summary_index: usize,
    prev_hash: LineHash,
    stop_line: Option<usize>,
}

/// Checks every stream's chain in a whole file's text. See [`verify_bytes`].
#[cfg(any(test, feature = "fuzzing"))]
pub fn verify(text: &str) -> VerifyReport {
    verify_bytes(text.as_bytes())
}

/// Checks every stream's chain in a whole file's bytes: each stream starts
/// with `master_start` at `seq` 0 with a zero `prev`, `seq` goes up by one,
/// and each `prev` is the SHA-256 of the stream's previous line as read.
/// Takes bytes so that a line that is not UTF-8 is reported with its
/// number instead of failing the whole read.
pub fn verify_bytes(data: &[u8]) -> VerifyReport {
    let mut report = VerifyReport {
        lines: 0,
        streams: Vec::new(),
        first_break: None,
    };
    let mut states: HashMap<StreamId, StreamState> = HashMap::new();

    let mut rest = data;
    let mut number = 0;
    while !rest.is_empty() {
        number += 1;
        let (line, terminated) = match rest.iter().position(|&b| b == b'\n') {
            Some(end) => {
                let line = &rest[..end];
                rest = &rest[end + 1..];
                (line, true)
            }
            None => (std::mem::take(&mut rest), false),
        };
        let found = check_line(line, terminated, number, &mut states, &mut report.streams);
        if report.first_break.is_none() {
            report.first_break = found;
        }
    }
    report.lines = number;
    report
}

/// Checks one line against its stream and updates that stream's state.
/// Keeps going after a break so the per-stream counts cover the whole
/// file; only the first break is reported.
fn check_line(
    line: &[u8],
    terminated: bool,
    number: usize,
    states: &mut HashMap<StreamId, StreamState>,
    summaries: &mut Vec<StreamSummary>,
) -> Option<Break> {
    let line_fault = |fault| {
        Some(Break::Line {
            line: number,
            fault,
        })
    };
    if !terminated {
        // Whatever it parses as, a line without its newline was not
        // completely written: the writer emits line and newline at once.
        return line_fault(LineFault::Unterminated);
    }
    let Ok(text) = std::str::from_utf8(line) else {
        return line_fault(LineFault::NotUtf8);
    };
    let envelope: Envelope = match serde_json::from_str(text) {
        Ok(envelope) => envelope,
        Err(e) if e.is_data() => return line_fault(LineFault::NotRecord(e.to_string())),
        Err(e) => return line_fault(LineFault::NotJson(e.to_string())),
    };
    let hash = LineHash::of_line(line);
    let is_start = envelope.event == "master_start";
    let link_fault = |fault| {
        Some(Break::Link {
            line: number,
            stream: envelope.stream,
            seq: envelope.seq,
            fault,
        })
    };

    match states.entry(envelope.stream) {
        Entry::Vacant(vacant) => {
            vacant.insert(StreamState {
                summary_index: summaries.len(),
                prev_hash: hash,
                stop_line: (envelope.event == "master_stop").then_some(number),
            });
            summaries.push(StreamSummary {
                stream: envelope.stream,
                records: 1,
                first_line: number,
                last_line: number,
                last_seq: envelope.seq,
                stopped: envelope.event == "master_stop",
            });
            if envelope.seq != 0 || !is_start {
                link_fault(LinkFault::NoStart {
                    event: envelope.event.clone(),
                })
            } else if envelope.prev != LineHash::ZERO {
                link_fault(LinkFault::StartPrevNotZero)
            } else {
                None
            }
        }
        Entry::Occupied(mut occupied) => {
            let state = occupied.get_mut();
            let summary = &mut summaries[state.summary_index];
            let expected = summary.last_seq + 1;
            let prev_line = summary.last_line;
            let fault = if let Some(stop_line) = state.stop_line {
                Some(LinkFault::AfterStop { stop_line })
            } else if envelope.seq < expected {
                Some(LinkFault::Back {
                    expected,
                    prev_line,
                })
            } else if envelope.seq > expected {
                Some(LinkFault::Gap {
                    expected,
                    prev_line,
                })
            } else if envelope.prev != state.prev_hash {
                Some(LinkFault::PrevMismatch { prev_line })
            } else if is_start {
                Some(LinkFault::StartNotFirst)
            } else {
                None
            };
            state.prev_hash = hash;
            if envelope.event == "master_stop" {
                state.stop_line = Some(number);
            }
            summary.records += 1;
            summary.last_line = number;
            summary.last_seq = envelope.seq;
            summary.stopped = envelope.event == "master_stop";
            fault.and_then(link_fault)
        }
    }
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A small record for tests of the files and streams.
    pub(crate) fn escape(session: u64) -> Event {
        Event::Escape(Escape {
            session,
            sequence: "~.".to_owned(),
        })
    }

    pub(crate) fn master_start(destination: &str) -> MasterStart {
        MasterStart {
            destination: destination.to_owned(),
            host: "build-1.example.org".to_owned(),
            port: 22,
            user: "alice".to_owned(),
            host_key: "SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU".to_owned(),
            version: "0.1.0".to_owned(),
            sandbox: "landlock ABI 7: fs enforced, net enforced, scope enforced; ptrace: blocked; no_new_privs: on; core dumps: off".to_owned(),
        }
    }

    /// A stream that uses every record type once or more, with fixed times
    /// and id so the output is stable: `docs/audit.md` shows exactly these
    /// lines.
    pub(crate) fn example_stream() -> String {
        let stream: StreamId = "3f2a9c41d07be5a8c6e1f0b2d4a79e13".parse().unwrap();
        let peer = Peer {
            uid: 1000,
            gid: 1000,
            pid: 48211,
        };
        let events = vec![
            Event::MasterStart(master_start("build-1")),
            Event::ClientConnect(ClientConnect {
                client: 1,
                peer,
                chain: vec![
                    ProcessEntry {
                        pid: 48211,
                        name: "ssh".to_owned(),
                        exe: Some("/usr/bin/ssh".to_owned()),
                        cmdline: Some(vec!["ssh".into(), "build-1".into(), "make".into()]),
                    },
                    ProcessEntry {
                        pid: 47903,
                        name: "bash".to_owned(),
                        exe: Some("/usr/bin/bash".to_owned()),
                        cmdline: Some(vec!["-bash".into()]),
                    },
                ],
                cwd: Some("/home/alice/src".to_owned()),
                tty: Some("/dev/pts/3".to_owned()),
            }),
            Event::Request(Request {
                client: 1,
                request: 1,
                kind: RequestKind::Exec {
                    command: "make".to_owned(),
                    tty: false,
                    env: vec![EnvName::from_var("LANG=C.UTF-8")],
                },
            }),
            Event::Decision(Decision {
                client: 1,
                request: 1,
                action: Action::Allow,
                source: DecisionSource::Rule,
                decided_by: "rule \"builds\" (/home/alice/.config/muxguard/policy.toml:12)"
                    .to_owned(),
                rule: Some(RuleRef {
                    name: "builds".to_owned(),
                    file: "/home/alice/.config/muxguard/policy.toml".to_owned(),
                    line: 12,
                }),
            }),
            Event::SessionOpen(SessionOpen {
                client: 1,
                request: 1,
                session: 1,
            }),
            Event::Escape(Escape {
                session: 1,
                sequence: "~.".to_owned(),
            }),
            Event::SessionClose(SessionClose {
                session: 1,
                duration_ms: 5312,
                bytes_in: 18234,
                bytes_out: 96,
                exit: Some(Exit::ExitSignal("HUP".to_owned())),
            }),
            Event::ClientRefused(ClientRefused {
                peer: Peer {
                    uid: 1001,
                    gid: 1001,
                    pid: 50112,
                },
                reason: "peer uid 1001 is not the master's user".to_owned(),
            }),
            Event::ClientConnect(ClientConnect {
                client: 2,
                peer: Peer {
                    uid: 1000,
                    gid: 1000,
                    pid: 50230,
                },
                chain: vec![ProcessEntry {
                    pid: 50230,
                    name: "ssh".to_owned(),
                    exe: Some("/usr/bin/ssh".to_owned()),
                    cmdline: None,
                }],
                cwd: None,
                tty: None,
            }),
            Event::Request(Request {
                client: 2,
                request: 2,
                kind: RequestKind::ForwardLocal {
                    forward: "local forward 127.0.0.1:8080 -> db:5432".to_owned(),
                },
            }),
            Event::Decision(Decision {
                client: 2,
                request: 2,
                action: Action::Allow,
                source: DecisionSource::Prompt,
                decided_by: "prompt: Allow for 1 hour".to_owned(),
                rule: None,
            }),
            Event::ForwardOpen(ForwardOpen {
                client: 2,
                request: 2,
                spec: "local forward 127.0.0.1:8080 -> db:5432".to_owned(),
            }),
            Event::ForwardConnection(ForwardConnection {
                spec: "local forward 127.0.0.1:8080 -> db:5432".to_owned(),
                peer: "127.0.0.1:51234".to_owned(),
                error: None,
            }),
            Event::ForwardClose(ForwardClose {
                spec: "local forward 127.0.0.1:8080 -> db:5432".to_owned(),
                reason: "client went away".to_owned(),
            }),
            Event::MasterStop(MasterStop {
                reason: "ssh -O exit".to_owned(),
            }),
        ];
        let mut chain = Chain::new(stream);
        let mut text = String::new();
        let base: Timestamp = "2026-11-24T04:52:01.123Z".parse().unwrap();
        for (i, event) in events.iter().enumerate() {
            let ts = Timestamp::from_unix_millis(base.unix_millis() + 250 * i as u64);
            let pending = chain.prepare(ts, event).unwrap();
            text.push_str(std::str::from_utf8(pending.bytes()).unwrap());
            pending.commit();
        }
        text
    }

    /// Builds `count` records of one stream (a start, then escapes).
    fn stream_lines(id: u8, count: usize) -> Vec<String> {
        let mut chain = Chain::new(StreamId::from_bytes([id; 16]));
        (0..count)
            .map(|i| {
                let event = if i == 0 {
                    Event::MasterStart(master_start("host"))
                } else {
                    Event::Escape(Escape {
                        session: i as u64,
                        sequence: "~.".to_owned(),
                    })
                };
                let ts = Timestamp::from_unix_millis(1_790_000_000_000 + i as u64);
                let pending = chain.prepare(ts, &event).unwrap();
                let line = String::from_utf8(pending.bytes().to_vec()).unwrap();
                pending.commit();
                line
            })
            .collect()
    }

    fn join(lines: &[String]) -> String {
        lines.concat()
    }

    fn link_fault(report: &VerifyReport) -> (usize, &LinkFault) {
        match report.first_break.as_ref().expect("a break") {
            Break::Link { line, fault, .. } => (*line, fault),
            other => panic!("expected a link fault, got {other}"),
        }
    }

    #[test]
    fn timestamps_format_and_parse() {
        let cases = [
            (0, "1970-01-01T00:00:00.000Z"),
            (951_782_400_000, "2000-02-29T00:00:00.000Z"),
            (1_795_495_921_123, "2026-11-24T04:52:01.123Z"),
            (4_107_542_399_999, "2100-02-28T23:59:59.999Z"),
            (MAX_MILLIS, "9999-12-31T23:59:59.999Z"),
        ];
        for (millis, text) in cases {
            let ts = Timestamp::from_unix_millis(millis);
            assert_eq!(ts.to_string(), text);
            assert_eq!(text.parse::<Timestamp>(), Ok(ts));
        }
        // Every day for 1000 years round-trips.
        for day in (0..365_250).step_by(7) {
            let ts = Timestamp::from_unix_millis(day * MILLIS_PER_DAY + 12_345);
            assert_eq!(ts.to_string().parse::<Timestamp>(), Ok(ts));
        }
        for bad in [
            "2026-11-24T04:52:01Z",
            "2026-11-24T04:52:01.123+00:00",
            "2026-02-29T00:00:00.000Z",
            "2026-13-01T00:00:00.000Z",
            "2026-11-24t04:52:01.123Z",
            "1969-12-31T23:59:59.999Z",
            "2026-11-24T24:00:00.000Z",
        ] {
            assert!(bad.parse::<Timestamp>().is_err(), "{bad}");
        }
        let before_epoch = UNIX_EPOCH - Duration::from_secs(5);
        assert_eq!(Timestamp::from_system_time(before_epoch).unix_millis(), 0);
    }

    #[test]
    fn hex_values_are_strict() {
        assert!(
            "3F2A9C41D07BE5A8C6E1F0B2D4A79E13"
                .parse::<StreamId>()
                .is_err()
        );
        assert!("3f2a".parse::<StreamId>().is_err());
        let id: StreamId = "3f2a9c41d07be5a8c6e1f0b2d4a79e13".parse().unwrap();
        assert_eq!(id.to_string(), "3f2a9c41d07be5a8c6e1f0b2d4a79e13");
        assert_eq!(id.short(), "3f2a9c41…");
        assert_eq!(LineHash::ZERO.to_string(), "0".repeat(64));
        // The SHA-256 of "abc", from FIPS 180-2.
        assert_eq!(
            LineHash::of_line(b"abc").to_string(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn envelope_comes_first_and_records_round_trip() {
        let text = example_stream();
        let mut names = Vec::new();
        for line in text.lines() {
            assert!(
                line.starts_with("{\"ts\":\"")
                    && line.contains("\",\"stream\":\"")
                    && line.contains(",\"prev\":\""),
                "{line}"
            );
            let keys: Vec<String> = serde_json::from_str::<serde_json::Map<String, _>>(line)
                .unwrap()
                .keys()
                .cloned()
                .collect();
            // serde_json's Map sorts keys, so check order on the text.
            let positions: Vec<usize> =
                ["\"ts\"", "\"stream\"", "\"seq\"", "\"prev\"", "\"event\""]
                    .iter()
                    .map(|k| line.find(k).unwrap())
                    .collect();
            assert!(positions.windows(2).all(|w| w[0] < w[1]), "{line}");
            assert!(
                keys.iter()
                    .all(|k| k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
            );
            let record = Record::parse(line).unwrap();
            // Serialising the parsed record gives back the same bytes.
            assert_eq!(serde_json::to_string(&record).unwrap(), line);
            names.push(record.event.name());
        }
        for name in [
            "master_start",
            "master_stop",
            "client_connect",
            "client_refused",
            "request",
            "decision",
            "session_open",
            "session_close",
            "forward_open",
            "forward_close",
            "forward_connection",
            "escape",
        ] {
            assert!(names.contains(&name), "no example of {name}");
        }
    }

    #[test]
    fn exit_and_request_kinds_serialise_flat() {
        let close = |exit| {
            let event = Event::SessionClose(SessionClose {
                session: 4,
                duration_ms: 10,
                bytes_in: 1,
                bytes_out: 2,
                exit,
            });
            let json = serde_json::to_string(&event).unwrap();
            assert_eq!(serde_json::from_str::<Event>(&json).unwrap(), event);
            json
        };
        assert!(close(Some(Exit::ExitStatus(3))).ends_with(",\"exit_status\":3}"));
        assert!(
            close(Some(Exit::ExitSignal("KILL".into()))).ends_with(",\"exit_signal\":\"KILL\"}")
        );
        assert!(close(None).ends_with(",\"bytes_out\":2}"));

        for kind in [
            RequestKind::Shell {
                tty: true,
                env: vec![],
            },
            RequestKind::Subsystem {
                subsystem: "sftp".into(),
                tty: false,
                env: vec![],
            },
            RequestKind::ForwardRemote {
                forward: "remote forward LOCALHOST:9000 -> localhost:9000".into(),
            },
            RequestKind::ForwardDynamic {
                forward: "dynamic forward LOCALHOST:1080 -> *".into(),
            },
            RequestKind::StdioForward {
                forward: "db:5432".into(),
            },
            RequestKind::Proxy,
            RequestKind::Control {
                operation: ControlOperation::Terminate,
                forward: None,
            },
            RequestKind::Control {
                operation: ControlOperation::CancelForward,
                forward: Some("local forward LOCALHOST:8080 -> db:5432".into()),
            },
        ] {
            let event = Event::Request(Request {
                client: 1,
                request: 2,
                kind,
            });
            let json = serde_json::to_string(&event).unwrap();
            assert!(
                json.starts_with("{\"event\":\"request\",\"client\":1,\"request\":2,\"kind\":\"")
            );
            assert_eq!(serde_json::from_str::<Event>(&json).unwrap(), event);
        }
    }

    #[test]
    fn env_names_drop_values() {
        assert_eq!(EnvName::from_var("TOKEN=hunter2").as_str(), "TOKEN");
        assert_eq!(EnvName::from_var("A=b=c").as_str(), "A");
        assert_eq!(EnvName::from_var("NOVALUE").as_str(), "NOVALUE");
    }

    #[test]
    fn values_cannot_forge_lines() {
        let mut chain = Chain::new(StreamId::from_bytes([7; 16]));
        let mut start = master_start("x");
        start.destination = "evil\n{\"event\":\"master_stop\"}\r\n".to_owned();
        let pending = chain
            .prepare(Timestamp::now(), &Event::MasterStart(start))
            .unwrap();
        let bytes = pending.bytes();
        assert_eq!(bytes.iter().filter(|&&b| b == b'\n').count(), 1);
        assert_eq!(bytes.last(), Some(&b'\n'));
    }

    #[test]
    fn chain_enforces_start_and_stop() {
        let mut chain = Chain::new(StreamId::from_bytes([1; 16]));
        let escape = Event::Escape(Escape {
            session: 1,
            sequence: "~.".into(),
        });
        let ts = Timestamp::now();
        assert_eq!(
            chain.prepare(ts, &escape).unwrap_err(),
            ChainError::MissingStart("escape")
        );
        // A prepared but uncommitted line leaves the chain where it was.
        let dropped = chain
            .prepare(ts, &Event::MasterStart(master_start("x")))
            .unwrap();
        drop(dropped);
        assert_eq!(chain.next_seq(), 0);
        chain
            .prepare(ts, &Event::MasterStart(master_start("x")))
            .unwrap()
            .commit();
        assert_eq!(chain.next_seq(), 1);
        assert_eq!(
            chain
                .prepare(ts, &Event::MasterStart(master_start("x")))
                .unwrap_err(),
            ChainError::StartNotFirst
        );
        let stop = Event::MasterStop(MasterStop {
            reason: "done".into(),
        });
        chain.prepare(ts, &stop).unwrap().commit();
        assert_eq!(chain.prepare(ts, &escape).unwrap_err(), ChainError::Ended);
    }

    #[test]
    fn intact_chain_verifies() {
        let text = example_stream();
        let report = verify(&text);
        assert!(report.is_ok(), "{report}");
        assert_eq!(report.lines, 15);
        assert_eq!(report.streams.len(), 1);
        let s = &report.streams[0];
        assert_eq!(
            (s.records, s.first_line, s.last_line, s.last_seq),
            (15, 1, 15, 14)
        );
        assert!(s.stopped);
        assert!(
            report
                .to_string()
                .starts_with("ok: every chain is intact\n15 lines, 15 records in 1 stream\n")
        );
        // The empty file is trivially intact.
        assert!(verify("").is_ok());
    }

    #[test]
    fn every_edited_byte_is_caught_at_the_right_line() {
        // Two interleaved streams, so "the next record of that stream" is
        // not simply the next line.
        let a = stream_lines(0xaa, 5);
        let b = stream_lines(0xbb, 5);
        let lines: Vec<String> = a
            .iter()
            .zip(&b)
            .flat_map(|(x, y)| [x.clone(), y.clone()])
            .collect();
        assert!(verify(&join(&lines)).is_ok());
        for (index, line) in lines.iter().enumerate() {
            let number = index + 1;
            // The last record of each stream has no successor to give an
            // edit away (docs/audit.md says so); skip those.
            if number >= lines.len() - 1 {
                continue;
            }
            // The next line of the same stream is two lines on.
            let next = number + 2;
            for pos in 0..line.len() - 1 {
                let mut edited = lines.clone();
                let mut bytes = line.clone().into_bytes();
                bytes[pos] = if bytes[pos] == b'1' { b'2' } else { b'1' };
                edited[index] = String::from_utf8(bytes).unwrap();
                let report = verify(&join(&edited));
                let broken = report
                    .first_break
                    .as_ref()
                    .unwrap_or_else(|| panic!("edit at line {number} byte {pos} not detected"));
                let ok = match broken {
                    // Caught on the edited line itself: bad JSON, bad
                    // envelope, wrong seq or prev, or an unknown stream.
                    Break::Line { line, .. } | Break::Link { line, .. } if *line == number => true,
                    // Caught on the stream's next record, naming the line.
                    Break::Link {
                        line,
                        fault: LinkFault::PrevMismatch { prev_line },
                        ..
                    } => *line == next && *prev_line == number,
                    // The start record's stream id was edited: the rest of
                    // the stream then has no start.
                    Break::Link {
                        line,
                        fault: LinkFault::NoStart { .. },
                        ..
                    } => index < 2 && *line == next,
                    _ => false,
                };
                assert!(ok, "edit at line {number} byte {pos}: {broken}");
            }
        }
    }

    #[test]
    fn removed_record_is_a_gap() {
        let mut lines = stream_lines(1, 6);
        lines.remove(3);
        let report = verify(&join(&lines));
        assert_eq!(
            link_fault(&report),
            (
                4,
                &LinkFault::Gap {
                    expected: 3,
                    prev_line: 3
                }
            )
        );
        assert!(report.to_string().starts_with(
            "line 4: record seq 4 of stream 01010101…: expected seq 3 after line 3 (records removed or moved)"
        ));
    }

    #[test]
    fn removed_start_is_reported() {
        let mut lines = stream_lines(1, 4);
        lines.remove(0);
        let report = verify(&join(&lines));
        assert_eq!(
            link_fault(&report),
            (
                1,
                &LinkFault::NoStart {
                    event: "escape".into()
                }
            )
        );
    }

    #[test]
    fn reordered_and_duplicated_records_are_caught() {
        let mut lines = stream_lines(1, 6);
        lines.swap(2, 3);
        let report = verify(&join(&lines));
        // Line 3 now holds seq 3 where seq 2 was due.
        assert_eq!(
            link_fault(&report),
            (
                3,
                &LinkFault::Gap {
                    expected: 2,
                    prev_line: 2
                }
            )
        );
        // A record moved later: its old place shows as a skip forward.
        let mut lines = stream_lines(1, 6);
        let moved = lines.remove(1);
        lines.insert(4, moved);
        let report = verify(&join(&lines));
        assert_eq!(
            link_fault(&report),
            (
                2,
                &LinkFault::Gap {
                    expected: 1,
                    prev_line: 1
                }
            )
        );
        // A record copied further down: seq goes back there.
        let mut lines = stream_lines(1, 6);
        let dup = lines[2].clone();
        lines.insert(4, dup);
        let report = verify(&join(&lines));
        assert_eq!(
            link_fault(&report),
            (
                5,
                &LinkFault::Back {
                    expected: 4,
                    prev_line: 4
                }
            )
        );
    }

    #[test]
    fn edited_record_is_named_by_the_next() {
        let mut lines = stream_lines(0x3f, 6);
        lines[2] = lines[2].replace("\"session\":2", "\"session\":9");
        let report = verify(&join(&lines));
        assert_eq!(
            link_fault(&report),
            (4, &LinkFault::PrevMismatch { prev_line: 3 })
        );
        assert!(report.to_string().starts_with(
            "line 4: record seq 3 of stream 3f3f3f3f…: prev does not match line 3 (record edited or removed)\n"
        ));
    }

    #[test]
    fn truncated_and_malformed_lines() {
        let lines = stream_lines(1, 4);
        let mut text = join(&lines);
        text.truncate(text.len() - 10);
        let report = verify(&text);
        assert_eq!(
            report.first_break,
            Some(Break::Line {
                line: 4,
                fault: LineFault::Unterminated
            })
        );
        assert_eq!(report.lines, 4);
        assert_eq!(report.streams[0].records, 3);

        // Only the newline lost: still incomplete.
        let text = join(&lines);
        let report = verify(&text[..text.len() - 1]);
        assert_eq!(report.first_break.unwrap().line(), 4);

        // A partial line in the middle (a writer that ignored the lock).
        let mut broken = lines.clone();
        broken.insert(2, "{\"ts\":\"2026-11-".to_owned() + "\n");
        let report = verify(&join(&broken));
        assert!(matches!(
            report.first_break,
            Some(Break::Line {
                line: 3,
                fault: LineFault::NotJson(_)
            })
        ));
        broken[2] = "[1,2]\n".to_owned();
        assert!(matches!(
            verify(&join(&broken)).first_break,
            Some(Break::Line {
                line: 3,
                fault: LineFault::NotRecord(_)
            })
        ));
        broken[2] = "\n".to_owned();
        assert_eq!(verify(&join(&broken)).first_break.unwrap().line(), 3);
        let mut bytes = join(&lines).into_bytes();
        bytes[5] = 0xff;
        assert_eq!(
            verify_bytes(&bytes).first_break,
            Some(Break::Line {
                line: 1,
                fault: LineFault::NotUtf8
            })
        );
    }

    #[test]
    fn interleaved_streams_verify_and_are_counted() {
        let a = stream_lines(0xa, 7);
        let b = stream_lines(0xb, 3);
        let mut lines = Vec::new();
        let (mut ai, mut bi) = (a.iter(), b.iter());
        // a a b a b a b a a
        lines.extend(ai.by_ref().take(2).cloned());
        for _ in 0..3 {
            lines.extend(bi.next().cloned());
            lines.extend(ai.next().cloned());
        }
        lines.extend(ai.cloned());
        let report = verify(&join(&lines));
        assert!(report.is_ok(), "{report}");
        assert_eq!(report.streams.len(), 2);
        assert_eq!(report.streams[0].records, 7);
        assert_eq!(report.streams[1].records, 3);
        assert_eq!(
            (report.streams[1].first_line, report.streams[1].last_line),
            (3, 7)
        );
        assert!(!report.streams[0].stopped);

        // Breaking stream b is reported against b, in file order.
        lines.remove(4); // line 5: b's seq 1, so b's seq 2 moves up to line 6
        let report = verify(&join(&lines));
        match report.first_break.unwrap() {
            Break::Link {
                line,
                stream,
                seq,
                fault,
            } => {
                assert_eq!((line, seq), (6, 2));
                assert_eq!(stream, StreamId::from_bytes([0xb; 16]));
                assert_eq!(
                    fault,
                    LinkFault::Gap {
                        expected: 1,
                        prev_line: 3
                    }
                );
            }
            other => panic!("{other}"),
        }
    }

    #[test]
    fn records_after_stop_are_reported() {
        let mut lines = stream_lines(1, 3);
        let mut chain = Chain::new(StreamId::from_bytes([1; 16]));
        // Rebuild the chain to the same point, stop it, then forge a record
        // that links correctly but follows the stop.
        for line in &lines {
            let record = Record::parse(line.trim_end()).unwrap();
            chain.prepare(record.ts, &record.event).unwrap().commit();
        }
        let stop = Event::MasterStop(MasterStop { reason: "x".into() });
        let pending = chain.prepare(Timestamp::now(), &stop).unwrap();
        lines.push(String::from_utf8(pending.bytes().to_vec()).unwrap());
        pending.commit();
        assert!(verify(&join(&lines)).is_ok());
        let mut forged = chain.clone();
        forged.ended = false;
        let escape = Event::Escape(Escape {
            session: 1,
            sequence: "~.".into(),
        });
        lines.push(
            String::from_utf8(
                forged
                    .prepare(Timestamp::now(), &escape)
                    .unwrap()
                    .bytes()
                    .to_vec(),
            )
            .unwrap(),
        );
        let report = verify(&join(&lines));
        assert_eq!(
            link_fault(&report),
            (5, &LinkFault::AfterStop { stop_line: 4 })
        );
    }

    #[test]
    fn docs_show_the_example_stream() {
        // The block between these markers in docs/audit.md must be what
        // example_stream() produces; run `cargo test print_example_stream
        // -- --ignored --nocapture` and paste its output when it changes.
        let doc = include_str!("../../docs/audit.md");
        let begin = "<!-- example-stream-begin -->\n```json\n";
        let end = "```\n<!-- example-stream-end -->";
        let start = doc.find(begin).expect("begin marker") + begin.len();
        let stop = doc[start..].find(end).expect("end marker") + start;
        assert_eq!(&doc[start..stop], example_stream());
    }

    #[test]
    #[ignore = "prints the example stream for docs/audit.md"]
    fn print_example_stream() {
        print!("{}", example_stream());
    }
}
