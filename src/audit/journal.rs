//! A copy of every audit record for the systemd journal, so that an
//! existing log pipeline (journald → SIEM) picks it up, in journald's
//! native datagram protocol: `KEY=value` lines, the whole record as JSON in
//! `MUXGUARD_RECORD`, and the main fields as their own journal fields.
//! Off, without errors, when no journal socket exists.

use std::os::unix::net::UnixDatagram;
use std::path::Path;

use serde_json::Value;

const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

pub struct Journal {
    socket: UnixDatagram,
}

impl Journal {
    /// Connects if a journal is running; `None` otherwise.
    pub fn connect() -> Option<Journal> {
        Self::connect_to(Path::new(JOURNAL_SOCKET))
    }

    pub fn connect_to(path: &Path) -> Option<Journal> {
        let socket = UnixDatagram::unbound().ok()?;
        socket.connect(path).ok()?;
        socket.set_nonblocking(true).ok()?;
        Some(Journal { socket })
    }

    /// Sends one record line. Best effort: a full or missing journal never
    /// holds up the master (the file is the record of truth).
    pub fn send(&self, line: &str) {
        let _ = self.socket.send(&entry(line));
    }
}

/// The datagram for one record. Values containing a newline use the
/// protocol's length-prefixed form.
pub fn entry(line: &str) -> Vec<u8> {
    let record: Value = serde_json::from_str(line).unwrap_or(Value::Null);
    let event = record["event"].as_str().unwrap_or("unknown");
    let mut fields: Vec<(String, String)> = vec![
        ("SYSLOG_IDENTIFIER".into(), "muxguard".into()),
        (
            "PRIORITY".into(),
            if record["action"] == "deny" { "4" } else { "6" }.into(),
        ),
        ("MESSAGE".into(), format!("muxguard audit: {event}")),
        ("MUXGUARD_EVENT".into(), event.into()),
        ("MUXGUARD_RECORD".into(), line.into()),
    ];
    for key in [
        "stream",
        "seq",
        "client",
        "request",
        "session",
        "action",
        "kind",
        "command",
        "decided_by",
    ] {
        match &record[key] {
            Value::String(s) => {
                fields.push((format!("MUXGUARD_{}", key.to_uppercase()), s.clone()))
            }
            Value::Number(n) => {
                fields.push((format!("MUXGUARD_{}", key.to_uppercase()), n.to_string()))
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    for (key, value) in fields {
        out.extend_from_slice(key.as_bytes());
        if value.contains('\n') {
            out.push(b'\n');
            out.extend_from_slice(&(value.len() as u64).to_le_bytes());
            out.extend_from_slice(value.as_bytes());
        } else {
            out.push(b'=');
            out.extend_from_slice(value.as_bytes());
        }
        out.push(b'\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_of_a_decision() {
        let line = r#"{"ts":"t","stream":"s","seq":3,"event":"decision","client":1,"request":2,"action":"deny","decided_by":"deny: rule \"x\""}"#;
        let text = String::from_utf8(entry(line)).unwrap();
        assert!(text.contains("SYSLOG_IDENTIFIER=muxguard\n"));
        assert!(text.contains("PRIORITY=4\n"));
        assert!(text.contains("MUXGUARD_EVENT=decision\n"));
        assert!(text.contains("MUXGUARD_SEQ=3\n"));
        assert!(text.contains("MUXGUARD_DECIDED_BY=deny: rule \"x\"\n"));
        assert!(text.contains(&format!("MUXGUARD_RECORD={line}\n")));
    }

    #[test]
    fn records_reach_a_journal_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        let server = UnixDatagram::bind(&path).unwrap();
        let journal = Journal::connect_to(&path).unwrap();
        journal.send(r#"{"event":"master_stop","reason":"x"}"#);
        let mut buf = [0u8; 4096];
        let n = server.recv(&mut buf).unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).contains("MUXGUARD_EVENT=master_stop"));
        assert!(Journal::connect_to(&dir.path().join("absent")).is_none());
    }
}
