//! known_hosts parsing, host-pattern matching and the host-key decision
//! (`src/upstream/known_hosts.rs`).
//!
//! The input, if UTF-8, is a known_hosts file; its lines are parsed one by
//! one. Each line's first field is also taken as a host field and matched
//! against names drawn from the other lines.
//!
//! Invariants:
//! - nothing panics;
//! - `parse_line` is `parse_line_checked(..).ok().flatten()`;
//! - a parsed entry, written back out (marker, hosts, key, comment), parses
//!   to the same entry;
//! - `HostPatterns::matches` agrees with a simple reference matcher (`*`,
//!   `?`, ASCII case ignored, `!` negation wins, an over-long pattern makes
//!   the list match nothing), and is case-insensitive;
//! - a hashed name made by `HashedHost::new` parses back and matches the
//!   name it was made from;
//! - `verify_entries` with a key from the file: a `Trusted` verdict points
//!   at a plain line for the host with exactly that key, a `Revoked` one at
//!   an `@revoked` line; and adding an `@revoked` line for the host and key
//!   always makes the verdict `Revoked`.
#![no_main]

use std::path::PathBuf;

use libfuzzer_sys::arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use muxguard::fuzzing::known_hosts::{
    self, Entry, HashedHost, HostKeyVerdict, HostPatterns, LocatedEntry, Marker,
};
use russh::keys::PublicKeyOrCertificate;

/// Mirrors the module's limit (OpenSSH's 1024-byte sub-pattern buffer).
const MAX_SUBPATTERN_LEN: usize = 1023;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        // Still exercise the byte-level paths with the lossy text.
        check_patterns(&String::from_utf8_lossy(data), &["x"]);
        return;
    };
    let lines: Vec<&str> = text.split('\n').take(32).collect();
    let names: Vec<String> = lines
        .iter()
        .filter_map(|l| l.split([' ', '\t']).find(|f| !f.is_empty()))
        .flat_map(|f| f.split(','))
        .map(|p| p.trim_start_matches('!').to_owned())
        .take(8)
        .collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();

    let mut entries = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let checked = known_hosts::parse_line_checked(line);
        assert_eq!(
            known_hosts::parse_line(line),
            checked.clone().ok().flatten()
        );
        match checked {
            Ok(Some(entry)) => {
                check_round_trip(&entry);
                entries.push(LocatedEntry {
                    file: PathBuf::from("/fuzz/known_hosts"),
                    line: i + 1,
                    entry,
                });
            }
            Ok(None) => {}
            Err(malformed) => assert!(!malformed.reason.is_empty()),
        }
        if let Some(field) = line.split([' ', '\t']).find(|f| !f.is_empty()) {
            check_patterns(field, &names);
        }
    }

    let mut u = Unstructured::new(data);
    check_hashed(&mut u);
    if !entries.is_empty() {
        check_verdicts(&mut u, &entries, &names);
    }
});

/// Writes an entry back in known_hosts syntax.
fn write_line(entry: &Entry) -> String {
    let mut line = String::new();
    match entry.marker {
        Marker::None => {}
        Marker::CertAuthority => line.push_str("@cert-authority "),
        Marker::Revoked => line.push_str("@revoked "),
    }
    match &entry.hosts {
        HostPatterns::Hashed(hashed) => line.push_str(hashed.as_str()),
        HostPatterns::List(patterns) => {
            let parts: Vec<String> = patterns
                .iter()
                .map(|p| format!("{}{}", if p.is_negated() { "!" } else { "" }, p.glob()))
                .collect();
            line.push_str(&parts.join(","));
            // A trailing empty pattern needs its comma doubled: one trailing
            // comma is dropped when parsing.
            if parts.last().is_some_and(String::is_empty) {
                line.push(',');
            }
        }
    }
    line.push(' ');
    line.push_str(&entry.key.to_openssh().expect("a parsed key encodes"));
    if !entry.comment.is_empty() {
        line.push(' ');
        line.push_str(&entry.comment);
    }
    line
}

fn check_round_trip(entry: &Entry) {
    let line = write_line(entry);
    match known_hosts::parse_line_checked(&line) {
        Ok(Some(mut again)) => {
            // A comment that ended in `\r` before a trailing tab loses the
            // `\r` once it ends the line; comments carry no meaning.
            let mut expected = entry.clone();
            for e in [&mut again, &mut expected] {
                e.comment = e
                    .comment
                    .trim_end_matches(['\r', '\n', ' ', '\t'])
                    .to_owned();
            }
            assert_eq!(again, expected, "written back as {line:?}");
        }
        other => panic!("{entry:?} written back as {line:?} parses as {other:?}"),
    }
}

/// Patterns times name length above which the reference matcher is not
/// consulted: it is quadratic, and the fuzzer makes long lines.
const REFERENCE_BUDGET: usize = 1 << 14;

/// `*` any run of bytes, `?` one byte, anything else itself: a table of
/// which text prefixes each pattern prefix can match.
fn reference_glob(pattern: &[u8], text: &[u8]) -> bool {
    let mut reach = vec![false; text.len() + 1];
    let mut next = vec![false; text.len() + 1];
    reach[0] = true;
    for &p in pattern {
        let (star, any) = (p == b'*', p == b'?');
        if star {
            let mut open = false;
            for (r, n) in reach.iter().zip(next.iter_mut()) {
                open |= *r;
                *n = open;
            }
        } else {
            next[0] = false;
            for (i, &t) in text.iter().enumerate() {
                next[i + 1] = reach[i] && (any || p == t);
            }
        }
        std::mem::swap(&mut reach, &mut next);
    }
    reach[text.len()]
}

/// The reference answer for a whole host field, or `None` when it would
/// cost too much to compute.
fn reference_list(field: &str, name: &str) -> Option<bool> {
    if field.len().saturating_mul(name.len() + 1) > REFERENCE_BUDGET {
        return None;
    }
    let name = name.to_ascii_lowercase();
    let mut positive = false;
    for part in field.split_terminator(',') {
        let (negated, glob) = match part.strip_prefix('!') {
            Some(rest) => (true, rest),
            None => (false, part),
        };
        if glob.len() >= MAX_SUBPATTERN_LEN {
            return Some(false);
        }
        if reference_glob(glob.to_ascii_lowercase().as_bytes(), name.as_bytes()) {
            if negated {
                return Some(false);
            }
            positive = true;
        }
    }
    Some(positive)
}

fn check_patterns(field: &str, names: &[&str]) {
    let Some(patterns) = HostPatterns::parse(field) else {
        assert!(field.starts_with('|'), "only a hashed field can be refused");
        return;
    };
    for name in names.iter().copied().chain([field]) {
        let got = patterns.matches(name);
        assert_eq!(got, patterns.matches(&name.to_ascii_uppercase()));
        match &patterns {
            HostPatterns::List(list) => {
                let Some(expected) = reference_list(field, name) else {
                    continue;
                };
                assert_eq!(got, expected, "{field:?} against {name:?}");
                let lower = name.to_ascii_lowercase();
                for p in list {
                    assert_eq!(
                        p.matches(name),
                        reference_glob(p.glob().as_bytes(), lower.as_bytes()),
                        "pattern {:?} against {name:?}",
                        p.glob()
                    );
                }
            }
            HostPatterns::Hashed(hashed) => {
                assert_eq!(got, hashed.matches(name));
            }
        }
    }
}

fn check_hashed(u: &mut Unstructured<'_>) {
    let (Ok(name), Ok(salt), Ok(port)) = (
        String::arbitrary(u),
        <[u8; 20]>::arbitrary(u),
        u16::arbitrary(u),
    ) else {
        return;
    };
    let lookup = known_hosts::lookup_name(&name, port);
    let hashed = HashedHost::new(&lookup, salt);
    assert!(hashed.matches(&lookup));
    assert!(hashed.matches(&lookup.to_ascii_uppercase()));
    let parsed = HostPatterns::parse(hashed.as_str()).expect("our own hash parses");
    assert_eq!(parsed, HostPatterns::Hashed(hashed.clone()));
    assert!(parsed.matches(&lookup));
}

fn check_verdicts(u: &mut Unstructured<'_>, entries: &[LocatedEntry], names: &[&str]) {
    let Ok(presented) = u.choose(entries) else {
        return;
    };
    let key = presented.entry.key.clone();
    let host = match u.choose(names) {
        Ok(name) => name
            .trim_start_matches('[')
            .split(']')
            .next()
            .unwrap_or(name)
            .to_owned(),
        Err(_) => "host".to_owned(),
    };
    let port = if u.ratio(1, 2).unwrap_or(true) {
        22
    } else {
        u16::arbitrary(u).unwrap_or(2222)
    };
    let now = u64::arbitrary(u).unwrap_or(0);
    let presented_key = PublicKeyOrCertificate::PublicKey {
        key: key.clone(),
        hash_alg: None,
    };
    let verdict = known_hosts::verify_entries(entries, &host, port, &presented_key, now);
    let _ = verdict.is_trusted();
    let lookup = known_hosts::lookup_name(&host, port);
    let bare = known_hosts::lookup_name(&host, 22);
    let at = |line: usize| {
        &entries
            .iter()
            .find(|e| e.line == line)
            .expect("the verdict names a line that was given")
            .entry
    };
    match &verdict {
        HostKeyVerdict::Trusted { line, .. } => {
            let e = at(*line);
            assert_eq!(e.marker, Marker::None);
            assert_eq!(e.key.key_data(), key.key_data());
            assert!(e.hosts.matches(&lookup) || e.hosts.matches(&bare));
        }
        HostKeyVerdict::Revoked { line, .. } => {
            let e = at(*line);
            assert_eq!(e.marker, Marker::Revoked);
            assert!(e.hosts.matches(&lookup) || e.hosts.matches(&bare));
        }
        HostKeyVerdict::Changed { line, .. } => {
            let e = at(*line);
            assert_eq!(e.marker, Marker::None);
            assert_ne!(e.key.key_data(), key.key_data());
        }
        HostKeyVerdict::TrustedByCa { .. } => panic!("a plain key cannot be trusted by a CA"),
        HostKeyVerdict::Unknown | HostKeyVerdict::CertRejected { .. } => {}
    }

    // Revoking the key for the host always wins.
    let plain_name = !lookup.is_empty()
        && !lookup.contains(',')
        && !lookup.starts_with(['!', '|'])
        && lookup.len() < MAX_SUBPATTERN_LEN;
    if plain_name {
        let mut with_revoked = entries.to_vec();
        let revoked_line = entries.iter().map(|e| e.line).max().unwrap_or(0) + 1;
        with_revoked.push(LocatedEntry {
            file: PathBuf::from("/fuzz/known_hosts"),
            line: revoked_line,
            entry: Entry {
                marker: Marker::Revoked,
                hosts: HostPatterns::parse(&lookup).expect("a plain name parses"),
                key: key.clone(),
                comment: String::new(),
            },
        });
        let verdict = known_hosts::verify_entries(&with_revoked, &host, port, &presented_key, now);
        assert!(
            matches!(verdict, HostKeyVerdict::Revoked { .. }),
            "revoked key for {lookup:?} still gets {verdict:?}"
        );
    }
}
