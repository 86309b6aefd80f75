//! The audit log's reader side: hash-chain verification and record parsing
//! (`src/audit/chain.rs`), and the table's record joiner and `--since`
//! parser (`src/audit/table.rs`).
//!
//! The input is used twice:
//!
//! 1. as the bytes of a log file, given to `chain::verify_bytes`, and line
//!    by line to `Record::parse`, `table::Joiner::add`, `Timestamp`'s parser
//!    and `table::parse_since`;
//! 2. as a recipe for a log written with the real writer (`chain::Chain`):
//!    up to three interleaved streams of arbitrary events, then one byte of
//!    it flipped.
//!
//! Invariants:
//! - nothing panics;
//! - the report's line count is the file's, every line number it names is
//!   inside the file, and an intact file has every line in some stream;
//! - a record that parses serialises to one line that parses back to it;
//! - a timestamp that parses prints as the same text, and every millisecond
//!   value prints as text that parses back to it;
//! - a log from the writer verifies, with the streams and counts written,
//!   and so does every prefix of it that ends at a line end;
//! - flipping a byte is detected whenever it can be: always for a newline,
//!   and for any byte of a line that has a successor in its stream (only a
//!   stream's last line can be edited undetected: nothing links to it).
#![no_main]

use std::time::{Duration, SystemTime};

use libfuzzer_sys::arbitrary::{self, Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use muxguard::fuzzing::chain::{
    self, Action, Chain, ClientConnect, ClientRefused, ControlOperation, Decision, DecisionSource,
    EnvName, Escape, Event, Exit, ForwardClose, ForwardConnection, ForwardOpen, MasterStart,
    MasterStop, Peer, ProcessEntry, Record, Request, RequestKind, RuleRef, SessionClose,
    SessionOpen, StreamId, Timestamp, VerifyReport,
};
use muxguard::fuzzing::table;

fuzz_target!(|data: &[u8]| {
    read_arbitrary_log(data);
    let mut u = Unstructured::new(data);
    let _ = write_and_tamper(&mut u);
});

fn check_report_shape(data: &[u8], report: &VerifyReport) {
    let newlines = data.iter().filter(|&&b| b == b'\n').count();
    let lines = newlines + usize::from(data.last().is_some_and(|&b| b != b'\n'));
    assert_eq!(report.lines, lines);
    let mut records = 0;
    for s in &report.streams {
        assert!(s.records >= 1);
        assert!(1 <= s.first_line && s.first_line <= s.last_line && s.last_line <= lines);
        records += s.records;
    }
    assert!(records as usize <= lines);
    match &report.first_break {
        Some(b) => assert!((1..=lines).contains(&b.line()), "break at {}", b.line()),
        None => assert_eq!(records as usize, lines, "an intact file is all records"),
    }
    let shown = report.to_string();
    assert_eq!(shown.starts_with("ok:"), report.is_ok());
}

fn read_arbitrary_log(data: &[u8]) {
    let report = chain::verify_bytes(data);
    check_report_shape(data, &report);
    if let Ok(text) = std::str::from_utf8(data) {
        assert_eq!(chain::verify(text), report);
    }

    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let text = String::from_utf8_lossy(data);
    let mut joiner = table::Joiner::default();
    for line in text.lines().take(64) {
        joiner.add(line);
        if let Ok(record) = Record::parse(line) {
            let json = serde_json::to_string(&record).expect("a record serialises");
            assert!(!json.contains('\n'), "a record serialises to one line");
            match Record::parse(&json) {
                Ok(again) => assert_eq!(again, record, "{line} came back as {json}"),
                Err(e) => panic!("{line} re-serialised as {json}, which does not parse: {e}"),
            }
        }
        if let Ok(ts) = line.parse::<Timestamp>() {
            assert_eq!(ts.to_string(), line);
        }
        if line.len() < 64 {
            let _ = table::parse_since(line, now);
        }
    }
    if data.len() >= 8 {
        let millis = u64::from_le_bytes(data[..8].try_into().unwrap());
        let ts = Timestamp::from_unix_millis(millis);
        let shown = ts.to_string();
        assert_eq!(shown.len(), 24, "fixed width: {shown}");
        assert_eq!(shown.parse::<Timestamp>(), Ok(ts));
        let _ = ts.to_system_time();
    }
}

// ---------------------------------------------------------------------------
// Logs from the real writer
// ---------------------------------------------------------------------------

fn text(u: &mut Unstructured<'_>) -> arbitrary::Result<String> {
    // Mostly short, sometimes with control characters, quotes, backslashes
    // and non-ASCII, which the writer must escape.
    let s = String::arbitrary(u)?;
    Ok(s.chars().take(40).collect())
}

fn opt_text(u: &mut Unstructured<'_>) -> arbitrary::Result<Option<String>> {
    Ok(if u.ratio(1, 2)? { Some(text(u)?) } else { None })
}

fn peer(u: &mut Unstructured<'_>) -> arbitrary::Result<Peer> {
    Ok(Peer {
        uid: u32::arbitrary(u)?,
        gid: u32::arbitrary(u)?,
        pid: u32::arbitrary(u)?,
    })
}

fn env(u: &mut Unstructured<'_>) -> arbitrary::Result<Vec<EnvName>> {
    let n = u.int_in_range(0..=2)?;
    (0..n).map(|_| Ok(EnvName::from_var(&text(u)?))).collect()
}

fn master_start(u: &mut Unstructured<'_>) -> arbitrary::Result<Event> {
    Ok(Event::MasterStart(MasterStart {
        destination: text(u)?,
        host: text(u)?,
        port: u16::arbitrary(u)?,
        user: text(u)?,
        host_key: text(u)?,
        version: text(u)?,
        sandbox: text(u)?,
    }))
}

/// Any event but master_start.
fn later_event(u: &mut Unstructured<'_>) -> arbitrary::Result<Event> {
    let client = u64::arbitrary(u)?;
    let request = u64::arbitrary(u)?;
    Ok(match u.int_in_range(0..=10u8)? {
        0 => Event::MasterStop(MasterStop { reason: text(u)? }),
        1 => Event::ClientConnect(ClientConnect {
            client,
            peer: peer(u)?,
            chain: (0..u.int_in_range(0..=2)?)
                .map(|_| {
                    Ok(ProcessEntry {
                        pid: u32::arbitrary(u)?,
                        name: text(u)?,
                        exe: opt_text(u)?,
                        cmdline: if u.ratio(1, 2)? {
                            Some(vec![text(u)?, text(u)?])
                        } else {
                            None
                        },
                    })
                })
                .collect::<arbitrary::Result<_>>()?,
            cwd: opt_text(u)?,
            tty: opt_text(u)?,
        }),
        2 => Event::ClientRefused(ClientRefused {
            peer: peer(u)?,
            reason: text(u)?,
        }),
        3 => Event::Request(Request {
            client,
            request,
            kind: match u.int_in_range(0..=8u8)? {
                0 => RequestKind::Shell {
                    tty: bool::arbitrary(u)?,
                    env: env(u)?,
                },
                1 => RequestKind::Exec {
                    command: text(u)?,
                    tty: bool::arbitrary(u)?,
                    env: env(u)?,
                },
                2 => RequestKind::Subsystem {
                    subsystem: text(u)?,
                    tty: bool::arbitrary(u)?,
                    env: env(u)?,
                },
                3 => RequestKind::ForwardLocal { forward: text(u)? },
                4 => RequestKind::ForwardRemote { forward: text(u)? },
                5 => RequestKind::ForwardDynamic { forward: text(u)? },
                6 => RequestKind::StdioForward { forward: text(u)? },
                7 => RequestKind::Proxy,
                _ => RequestKind::Control {
                    operation: *u.choose(&[
                        ControlOperation::Terminate,
                        ControlOperation::StopListening,
                        ControlOperation::CancelForward,
                    ])?,
                    forward: opt_text(u)?,
                },
            },
        }),
        4 => Event::Decision(Decision {
            client,
            request,
            action: *u.choose(&[Action::Allow, Action::Direct, Action::Deny])?,
            source: *u.choose(&[
                DecisionSource::Rule,
                DecisionSource::Default,
                DecisionSource::Prompt,
                DecisionSource::Remembered,
                DecisionSource::Locked,
                DecisionSource::Timeout,
                DecisionSource::NoPrompter,
                DecisionSource::PolicyError,
                DecisionSource::AuditFailure,
            ])?,
            decided_by: text(u)?,
            rule: if u.ratio(1, 2)? {
                Some(RuleRef {
                    name: text(u)?,
                    file: text(u)?,
                    line: u32::arbitrary(u)?,
                })
            } else {
                None
            },
        }),
        5 => Event::SessionOpen(SessionOpen {
            client,
            request,
            session: u64::arbitrary(u)?,
        }),
        6 => Event::SessionClose(SessionClose {
            session: u64::arbitrary(u)?,
            duration_ms: u64::arbitrary(u)?,
            bytes_in: u64::arbitrary(u)?,
            bytes_out: u64::arbitrary(u)?,
            exit: match u.int_in_range(0..=2u8)? {
                0 => None,
                1 => Some(Exit::ExitStatus(u32::arbitrary(u)?)),
                _ => Some(Exit::ExitSignal(text(u)?)),
            },
        }),
        7 => Event::ForwardOpen(ForwardOpen {
            client,
            request,
            spec: text(u)?,
        }),
        8 => Event::ForwardClose(ForwardClose {
            spec: text(u)?,
            reason: text(u)?,
        }),
        9 => Event::ForwardConnection(ForwardConnection {
            spec: text(u)?,
            peer: text(u)?,
            error: opt_text(u)?,
        }),
        _ => Event::Escape(Escape {
            session: u64::arbitrary(u)?,
            sequence: text(u)?,
        }),
    })
}

struct Written {
    bytes: Vec<u8>,
    /// For each line (0-based): its stream, and its byte range with the
    /// newline.
    lines: Vec<(usize, std::ops::Range<usize>)>,
}

fn write_and_tamper(u: &mut Unstructured<'_>) -> arbitrary::Result<()> {
    let stream_count = u.int_in_range(1..=3usize)?;
    let mut chains: Vec<Chain> = (0..stream_count)
        .map(|i| {
            let mut id = <[u8; 16]>::arbitrary(u)?;
            id[0] = i as u8; // distinct streams
            Ok(Chain::new(StreamId::from_bytes(id)))
        })
        .collect::<arbitrary::Result<_>>()?;
    let mut stopped = vec![false; stream_count];
    let mut log = Written {
        bytes: Vec::new(),
        lines: Vec::new(),
    };
    let mut ts = u64::arbitrary(u)? % 253_402_300_799_999;
    let records = u.int_in_range(1..=12usize)?;
    for _ in 0..records {
        let which = u.int_in_range(0..=stream_count - 1)?;
        let event = if chains[which].next_seq() == 0 {
            master_start(u)?
        } else {
            later_event(u)?
        };
        ts += u64::from(u.int_in_range(0..=5000u16)?);
        let chain = &mut chains[which];
        if stopped[which] {
            // The writer refuses to go on after master_stop.
            assert!(
                chain
                    .prepare(Timestamp::from_unix_millis(ts), &event)
                    .is_err()
            );
            continue;
        }
        let pending = chain
            .prepare(Timestamp::from_unix_millis(ts), &event)
            .expect("the writer builds a valid next record");
        let bytes = pending.bytes();
        assert_eq!(bytes.last(), Some(&b'\n'));
        assert_eq!(bytes.iter().filter(|&&b| b == b'\n').count(), 1);
        let line = std::str::from_utf8(&bytes[..bytes.len() - 1]).expect("records are UTF-8");
        let record = Record::parse(line).expect("a written record parses");
        assert_eq!(record.event, event);
        assert_eq!(record.seq, pending.seq());
        let start = log.bytes.len();
        log.bytes.extend_from_slice(bytes);
        log.lines.push((which, start..log.bytes.len()));
        pending.commit();
        stopped[which] = matches!(event, Event::MasterStop(_));
    }

    let report = chain::verify_bytes(&log.bytes);
    assert!(report.is_ok(), "the writer's own log fails: {report}");
    check_report_shape(&log.bytes, &report);
    let used = chains.iter().filter(|c| c.next_seq() > 0).count();
    assert_eq!(report.streams.len(), used);
    for s in &report.streams {
        let chain = chains.iter().find(|c| c.stream() == s.stream).unwrap();
        assert_eq!(s.records, chain.next_seq());
        assert_eq!(s.last_seq + 1, chain.next_seq());
    }
    // A log cut at a line end (a master still writing) is intact too.
    for (_, range) in &log.lines {
        let prefix = &log.bytes[..range.end];
        assert!(chain::verify_bytes(prefix).is_ok());
    }

    // Flip one byte.
    if log.bytes.is_empty() {
        return Ok(());
    }
    let at = u.choose_index(log.bytes.len())?;
    let mask = u.int_in_range(1..=255u8)?;
    let mut tampered = log.bytes.clone();
    tampered[at] ^= mask;
    let report = chain::verify_bytes(&tampered);
    check_report_shape(&tampered, &report);
    let (index, (stream, range)) = log
        .lines
        .iter()
        .enumerate()
        .find(|(_, (_, r))| r.contains(&at))
        .expect("every byte is in a line");
    let was_newline = log.bytes[at] == b'\n';
    let has_successor = log.lines[index + 1..].iter().any(|(s, _)| s == stream);
    if was_newline || has_successor {
        assert!(
            !report.is_ok(),
            "flipping byte {at} (line {}, {:?}) by {mask:#04x} went unnoticed",
            index + 1,
            String::from_utf8_lossy(&log.bytes[range.clone()])
        );
    }
    Ok(())
}
