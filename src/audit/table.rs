//! `muxguard audit`: the log as a readable table, one row per request with
//! what decided it and, for sessions, how they ended. Filters by host, age,
//! kind and decision; `--json` prints the matching raw records instead;
//! `--follow` keeps reading as masters append.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, SystemTime};

use serde_json::Value;

use super::chain::Timestamp;

/// What to show.
#[derive(Debug, Default, Clone)]
pub struct Filter {
    pub host: Option<String>,
    pub since: Option<SystemTime>,
    pub kind: Option<String>,
    pub decision: Option<String>,
}

/// Parses `--since`: an age such as `2h` or an RFC 3339 UTC time.
pub fn parse_since(text: &str, now: SystemTime) -> Result<SystemTime, String> {
    if let Ok(age) = humantime::parse_duration(text) {
        return Ok(now.checked_sub(age).unwrap_or(SystemTime::UNIX_EPOCH));
    }
    text.parse::<Timestamp>()
        .map(|t| t.to_system_time())
        .or_else(|_| humantime::parse_rfc3339_weak(text).map_err(|e| e.to_string()))
        .map_err(|e| {
            format!(
                "--since {text:?}: {e} (use an age like 2h or a time like 2026-11-24T10:00:00Z)"
            )
        })
}

/// One request and what became of it.
#[derive(Debug, Default, Clone)]
struct Row {
    time: String,
    millis: u64,
    host: String,
    requester: String,
    kind: String,
    what: String,
    decision: String,
    why: String,
    duration: String,
    bytes: String,
    exit: String,
    raw: Vec<String>,
}

/// Joins records into rows; keeps state across calls for `--follow`.
#[derive(Default)]
pub struct Joiner {
    hosts: HashMap<String, String>,
    requesters: HashMap<(String, u64), String>,
    rows: HashMap<(String, u64), Row>,
    sessions: HashMap<(String, u64), (String, u64)>,
    order: Vec<(String, u64)>,
}

impl Joiner {
    /// Takes one line of the log.
    pub fn add(&mut self, line: &str) {
        let Ok(record) = serde_json::from_str::<Value>(line) else {
            return;
        };
        let stream = record["stream"].as_str().unwrap_or_default().to_string();
        let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
        match record["event"].as_str().unwrap_or_default() {
            "master_start" => {
                let host = format!("{}@{}", text(&record["user"]), text(&record["destination"]));
                self.hosts.insert(stream, host);
            }
            "client_connect" => {
                let chain = record["chain"]
                    .as_array()
                    .map(|c| {
                        c.iter()
                            .take(3)
                            .map(|p| format!("{}({})", text(&p["name"]), p["pid"]))
                            .collect::<Vec<_>>()
                            .join("<")
                    })
                    .unwrap_or_default();
                let client = record["client"].as_u64().unwrap_or_default();
                self.requesters.insert((stream, client), chain);
            }
            "request" => {
                let client = record["client"].as_u64().unwrap_or_default();
                let request = record["request"].as_u64().unwrap_or_default();
                let kind = text(&record["kind"]);
                let what = ["command", "subsystem", "forward", "operation"]
                    .iter()
                    .map(|f| text(&record[*f]))
                    .find(|t| !t.is_empty())
                    .unwrap_or_default();
                let row = Row {
                    time: text(&record["ts"]),
                    millis: text(&record["ts"])
                        .parse::<Timestamp>()
                        .map(|t| t.unix_millis())
                        .unwrap_or(0),
                    host: self.hosts.get(&stream).cloned().unwrap_or_default(),
                    requester: self
                        .requesters
                        .get(&(stream.clone(), client))
                        .cloned()
                        .unwrap_or_default(),
                    kind,
                    what,
                    raw: vec![line.to_string()],
                    ..Row::default()
                };
                self.order.push((stream.clone(), request));
                self.rows.insert((stream, request), row);
            }
            "decision" => {
                let request = record["request"].as_u64().unwrap_or_default();
                if let Some(row) = self.rows.get_mut(&(stream, request)) {
                    row.decision = text(&record["action"]);
                    row.why = format!(
                        "{}: {}",
                        text(&record["source"]),
                        text(&record["decided_by"])
                    );
                    row.raw.push(line.to_string());
                }
            }
            "session_open" => {
                let request = record["request"].as_u64().unwrap_or_default();
                let session = record["session"].as_u64().unwrap_or_default();
                if let Some(row) = self.rows.get_mut(&(stream.clone(), request)) {
                    row.raw.push(line.to_string());
                }
                self.sessions
                    .insert((stream.clone(), session), (stream, request));
            }
            "session_close" => {
                let session = record["session"].as_u64().unwrap_or_default();
                if let Some(key) = self.sessions.get(&(stream, session))
                    && let Some(row) = self.rows.get_mut(key)
                {
                    row.duration = format!(
                        "{:.1}s",
                        record["duration_ms"].as_u64().unwrap_or(0) as f64 / 1000.0
                    );
                    row.bytes = format!(
                        "{}/{}",
                        record["bytes_in"].as_u64().unwrap_or(0),
                        record["bytes_out"].as_u64().unwrap_or(0)
                    );
                    row.exit = match (&record["exit_status"], &record["exit_signal"]) {
                        (Value::Number(n), _) => n.to_string(),
                        (_, Value::String(s)) => format!("SIG{s}"),
                        _ => "-".into(),
                    };
                    row.raw.push(line.to_string());
                }
            }
            _ => {}
        }
    }

    /// Rows that match, oldest first; they are not returned again.
    fn take_matching(&mut self, filter: &Filter, complete_only: bool) -> Vec<Row> {
        let mut out = Vec::new();
        let mut keep = Vec::new();
        for key in std::mem::take(&mut self.order) {
            let Some(row) = self.rows.get(&key) else {
                continue;
            };
            if complete_only && row.decision.is_empty() {
                keep.push(key);
                continue;
            }
            if filter.matches(row) {
                out.push(row.clone());
            }
        }
        self.order = keep;
        out
    }
}

impl Filter {
    fn matches(&self, row: &Row) -> bool {
        let since_ok = self.since.is_none_or(|since| {
            let millis = since
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            row.millis >= millis
        });
        let host_ok = self.host.as_ref().is_none_or(|pattern| {
            let host = row.host.rsplit('@').next().unwrap_or(&row.host);
            crate::config::wildcard_match(pattern, host)
        });
        since_ok
            && host_ok
            && self.kind.as_ref().is_none_or(|k| &row.kind == k)
            && self.decision.as_ref().is_none_or(|d| &row.decision == d)
    }
}

fn print_rows(rows: &[Row], json: bool) {
    for row in rows {
        if json {
            for line in &row.raw {
                println!("{line}");
            }
        } else {
            println!(
                "{:<23} {:<20} {:<28} {:<34} {:<6} {:>8} {:>15} {:>5}  {}",
                row.time.trim_end_matches('Z').replace('T', " "),
                truncate(&row.host, 20),
                truncate(&row.requester, 28),
                truncate(&format!("{} {}", row.kind, row.what), 34),
                row.decision,
                row.duration,
                row.bytes,
                row.exit,
                row.why
            );
        }
    }
}

fn truncate(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        text.to_string()
    } else {
        let mut cut: String = text.chars().take(width - 1).collect();
        cut.push('…');
        cut
    }
}

/// Prints the table (and with `follow`, keeps printing new rows).
pub fn show(path: &Path, filter: &Filter, json: bool, follow: bool) -> anyhow::Result<()> {
    let bytes = super::log::read_log(path)?;
    let mut joiner = Joiner::default();
    let text = String::from_utf8_lossy(&bytes);
    let mut offset = bytes.len();
    for line in text.lines() {
        joiner.add(line);
    }
    if !json {
        println!(
            "{:<23} {:<20} {:<28} {:<34} {:<6} {:>8} {:>15} {:>5}  why",
            "time (UTC)",
            "host",
            "requester",
            "request",
            "action",
            "duration",
            "bytes in/out",
            "exit"
        );
    }
    print_rows(&joiner.take_matching(filter, false), json);
    if !follow {
        return Ok(());
    }
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let bytes = super::log::read_log(path)?;
        if bytes.len() < offset {
            offset = 0; // rotated or truncated: start over
        }
        let fresh = String::from_utf8_lossy(&bytes[offset..]).into_owned();
        // Only whole lines; a partial one is read again next time.
        let whole = fresh.rfind('\n').map_or(0, |i| i + 1);
        for line in fresh[..whole].lines() {
            joiner.add(line);
        }
        offset += whole;
        print_rows(&joiner.take_matching(filter, true), json);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = r#"{"ts":"2026-11-24T05:00:00.000Z","stream":"s1","seq":0,"event":"master_start","destination":"build-1","host":"10.0.0.1","port":22,"user":"alice"}
{"ts":"2026-11-24T05:00:01.000Z","stream":"s1","seq":1,"event":"client_connect","client":1,"peer":{"uid":1,"gid":1,"pid":10},"chain":[{"pid":10,"name":"ssh"},{"pid":9,"name":"git"}]}
{"ts":"2026-11-24T05:00:01.100Z","stream":"s1","seq":2,"event":"request","client":1,"request":1,"kind":"exec","command":"git-upload-pack 'r'","tty":false,"env":[]}
{"ts":"2026-11-24T05:00:01.200Z","stream":"s1","seq":3,"event":"decision","client":1,"request":1,"action":"allow","source":"rule","decided_by":"allow: rule \"git\" (p.toml:3)"}
{"ts":"2026-11-24T05:00:01.300Z","stream":"s1","seq":4,"event":"session_open","client":1,"request":1,"session":1}
{"ts":"2026-11-24T05:00:03.300Z","stream":"s1","seq":5,"event":"session_close","session":1,"duration_ms":2000,"bytes_in":100,"bytes_out":5,"exit_status":0}
{"ts":"2026-11-24T05:10:00.000Z","stream":"s1","seq":6,"event":"request","client":1,"request":2,"kind":"shell","tty":true,"env":[]}
{"ts":"2026-11-24T05:10:00.100Z","stream":"s1","seq":7,"event":"decision","client":1,"request":2,"action":"deny","source":"default","decided_by":"deny: default"}"#;

    fn rows(filter: &Filter) -> Vec<Row> {
        let mut joiner = Joiner::default();
        for line in LOG.lines() {
            joiner.add(line);
        }
        joiner.take_matching(filter, false)
    }

    #[test]
    fn requests_are_joined_with_their_decision_and_session() {
        let all = rows(&Filter::default());
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].host, "alice@build-1");
        assert_eq!(all[0].requester, "ssh(10)<git(9)");
        assert_eq!(all[0].decision, "allow");
        assert_eq!(all[0].exit, "0");
        assert_eq!(all[0].bytes, "100/5");
        assert_eq!(all[0].raw.len(), 4);
        assert_eq!(all[1].decision, "deny");
        assert_eq!(all[1].exit, "");
    }

    #[test]
    fn filters() {
        let deny = Filter {
            decision: Some("deny".into()),
            ..Filter::default()
        };
        assert_eq!(rows(&deny).len(), 1);
        let other_host = Filter {
            host: Some("prod-*".into()),
            ..Filter::default()
        };
        assert!(rows(&other_host).is_empty());
        let build = Filter {
            host: Some("build-*".into()),
            kind: Some("exec".into()),
            ..Filter::default()
        };
        assert_eq!(rows(&build).len(), 1);
        let since = parse_since("2026-11-24T05:05:00.000Z", SystemTime::now()).unwrap();
        let recent = Filter {
            since: Some(since),
            ..Filter::default()
        };
        assert_eq!(rows(&recent)[0].kind, "shell");
        assert!(parse_since("yesterday-ish", SystemTime::now()).is_err());
    }
}
