//! The policy file parser and evaluator (`src/access/policy.rs`).
//!
//! The input is a policy file, optionally followed by a NUL byte and bytes
//! that describe requests to evaluate against it. Inputs whose file part is
//! not UTF-8 are skipped (the loader refuses those before parsing).
//!
//! Invariants:
//! - parsing never panics;
//! - an error names a line and a column inside the input (1-based, the
//!   column in characters, at most one past the end of that line);
//! - a parsed file's rules have distinct, non-empty names without control
//!   characters, and header lines inside the file;
//! - evaluation never panics, and a proxy request is never let through by
//!   a default or by a rule that does not list kind "proxy";
//! - with two files the decision is the stricter of the two verdicts;
//! - a decision's one-line reason really is one line (it goes into the
//!   client's stderr and the audit log);
//! - `forward_ports` over-approximates: a forward the file allows or asks
//!   about on local port P has P in the set the sandbox leaves open;
//! - the merged settings never have a zero prompt timeout.
#![no_main]

use std::path::Path;

use libfuzzer_sys::arbitrary::{self, Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use muxguard::fuzzing::policy::{
    Action, DecidedBy, Destination, PeerAccount, Policy, PolicySet, Ports, Request, RequestKind,
};

fuzz_target!(|data: &[u8]| {
    let (file, tail) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let Ok(text) = std::str::from_utf8(file) else {
        return;
    };
    let policy = match Policy::parse(text, "/fuzz/policy.toml") {
        Ok(policy) => policy,
        Err(e) => {
            check_error_position(text, e.line, e.column, &e.to_string());
            assert!(!e.reason.is_empty());
            return;
        }
    };
    check_policy(text, &policy);

    let pool = candidates(text);
    let mut u = Unstructured::new(tail);
    // At least one request, even without a tail (then all-default fields).
    for i in 0..8 {
        if i > 0 && u.is_empty() {
            break;
        }
        let Ok(req) = RequestSpec::build(&mut u, &pool) else {
            break;
        };
        check_request(&policy, &req);
    }
});

fn check_error_position(text: &str, line: usize, column: usize, shown: &str) {
    let lines: Vec<&str> = text.split('\n').collect();
    assert!(
        (1..=lines.len()).contains(&line),
        "error line {line} outside a {}-line input: {shown}",
        lines.len()
    );
    let width = lines[line - 1].chars().count();
    assert!(
        (1..=width + 1).contains(&column),
        "error column {column} outside line {line} of {width} characters: {shown}"
    );
}

fn check_policy(text: &str, policy: &Policy) {
    let lines = text.split('\n').count();
    let rules = policy.rules();
    for (i, rule) in rules.iter().enumerate() {
        assert!(!rule.name().trim().is_empty());
        assert!(!rule.name().chars().any(char::is_control));
        assert!(
            (1..=lines).contains(&rule.line()),
            "rule line {}",
            rule.line()
        );
        assert!(
            rules[..i].iter().all(|r| r.name() != rule.name()),
            "duplicate rule name {:?}",
            rule.name()
        );
        let _ = rule.action();
        let _ = rule.peers();
    }
    let _ = policy.defaults();
    for set in both_ways(policy) {
        let settings = set.settings();
        assert!(!settings.prompt_timeout.is_zero());
        // The master's own uid is always admitted.
        assert!(set.admits_peer(1000, Some("me"), &[1000], &[], 1000));
    }
}

/// The policy as the system file, as the user file, and as both.
fn both_ways(policy: &Policy) -> [PolicySet; 3] {
    [
        PolicySet {
            system: Some(policy.clone()),
            user: None,
        },
        PolicySet {
            system: None,
            user: Some(policy.clone()),
        },
        PolicySet {
            system: Some(policy.clone()),
            user: Some(policy.clone()),
        },
    ]
}

/// Strings worth trying as request fields: the quoted strings of the file,
/// as written and with their wildcards filled in, so that rules match.
fn candidates(text: &str) -> Vec<String> {
    let mut pool = vec![String::new(), "host".to_owned(), "/usr/bin/ssh".to_owned()];
    for quoted in text.split('"').skip(1).step_by(2).take(64) {
        let plain = quoted.trim_start_matches('!');
        pool.push(quoted.to_owned());
        pool.push(plain.replace("**", "a/b").replace(['*', '?'], "x"));
        pool.push(plain.replace(['*', '?'], ""));
    }
    pool
}

struct RequestSpec {
    alias: String,
    hostname: String,
    user: String,
    program: Option<String>,
    kind: RequestKind,
    command: Option<String>,
    local_port: Option<u16>,
    uid: u32,
    peer_user: Option<String>,
    gids: Vec<u32>,
    groups: Vec<String>,
}

impl RequestSpec {
    fn build(u: &mut Unstructured<'_>, pool: &[String]) -> arbitrary::Result<Self> {
        let text = |u: &mut Unstructured<'_>| -> arbitrary::Result<String> {
            if u.ratio(1, 4)? {
                String::arbitrary(u)
            } else {
                Ok(u.choose(pool)?.clone())
            }
        };
        let alias = text(u)?;
        let hostname = if u.ratio(1, 2)? {
            alias.clone()
        } else {
            text(u)?
        };
        let user = text(u)?;
        let program = if u.ratio(1, 5)? { None } else { Some(text(u)?) };
        let kind = *u.choose(&RequestKind::ALL)?;
        let command = if u.ratio(1, 4)? { None } else { Some(text(u)?) };
        let local_port = Option::<u16>::arbitrary(u)?;
        let uid = if u.ratio(1, 2)? {
            1000
        } else {
            u32::arbitrary(u)?
        };
        let peer_user = if u.ratio(1, 2)? { Some(text(u)?) } else { None };
        let gids = Vec::<u32>::arbitrary(u)?;
        let groups = vec![text(u)?];
        Ok(RequestSpec {
            alias,
            hostname,
            user,
            program,
            kind,
            command,
            local_port,
            uid,
            peer_user,
            gids,
            groups,
        })
    }
}

fn check_request(policy: &Policy, spec: &RequestSpec) {
    let req = Request {
        host_alias: &spec.alias,
        hostname: &spec.hostname,
        remote_user: &spec.user,
        program: spec.program.as_deref().map(Path::new),
        kind: spec.kind,
        command: spec.command.as_deref(),
        local_port: spec.local_port,
        peer: PeerAccount {
            uid: spec.uid,
            user: spec.peer_user.as_deref(),
            gids: &spec.gids,
            groups: &spec.groups,
        },
    };
    let verdict = policy.evaluate(&req);
    if req.kind == RequestKind::Proxy && verdict.action != Action::Deny {
        assert!(
            matches!(
                verdict.decided_by,
                DecidedBy::Rule { .. } | DecidedBy::ProgramUnknown { .. }
            ),
            "proxy let through by {:?}",
            verdict.decided_by
        );
    }

    let [system_only, user_only, both] = both_ways(policy);
    for set in [&system_only, &user_only, &both] {
        let decision = set.decide(&req);
        let reason = decision.reason();
        assert!(
            !reason.contains(['\n', '\r']),
            "reason spans lines: {reason:?}"
        );
        let stricter = [&decision.system, &decision.user]
            .into_iter()
            .flatten()
            .map(|v| v.action)
            .max()
            .expect("one file at least");
        assert_eq!(decision.action, stricter);
        assert_eq!(decision.action, verdict.action, "same file, same answer");
        let _ = set.explain(&req);
        let _ = set.admits_peer(
            spec.uid,
            spec.peer_user.as_deref(),
            &spec.gids,
            &spec.groups,
            0,
        );
    }

    // The sandbox opens what forward_ports says; an allowed forward must be
    // inside it.
    if let Some(port) = req.local_port
        && matches!(verdict.action, Action::Allow | Action::Ask)
    {
        let destination = Destination {
            alias: req.host_alias,
            hostname: req.hostname,
            user: req.remote_user,
        };
        let ports = system_only.forward_ports(&destination);
        let set = match req.kind {
            RequestKind::ForwardLocal | RequestKind::ForwardDynamic => Some(&ports.bind),
            RequestKind::ForwardRemote => Some(&ports.connect),
            _ => None,
        };
        if let Some(set) = set {
            let open = match set {
                Ports::Any => true,
                Ports::Only(set) => set.contains(port),
            };
            assert!(
                open,
                "{:?} on port {port} is {} but the sandbox would only open {set}",
                req.kind, verdict.action
            );
        }
        let _ = ports.bind.to_string();
    }
}
