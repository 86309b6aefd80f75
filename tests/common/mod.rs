//! Shared harness of the integration tests: a real sshd, the real OpenSSH
//! client, and a master that is either OpenSSH's own or muxguard.
//!
//! Every scenario written with [`for_both_masters!`] runs against both kinds
//! of master; the OpenSSH run proves the scenario itself is right. Set
//! `MUXGUARD_TEST_MASTERS=openssh|muxguard|both` to restrict the kinds (tests
//! for an excluded kind pass without doing anything and say so on stderr).

// Each test binary uses a different part of the harness.
#![allow(dead_code, unused_imports, unused_macros)]

pub mod accounts;
pub mod agent;
pub mod env;
pub mod master;
pub mod mux;
pub mod net;
pub mod process;
pub mod sshd;
pub mod tmux;

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;
use std::process::Command;

pub use env::{HOST, TestEnv};
pub use master::{Master, MasterKind};
pub use process::{run, run_timeout};

/// Generates, for each named scenario `fn name(kind: MasterKind)`, a module
/// `name` with the tests `name::openssh` and `name::muxguard`.
macro_rules! for_both_masters {
    ($($scenario:ident),+ $(,)?) => {$(
        mod $scenario {
            #[test]
            fn openssh() {
                $crate::common::run_scenario($crate::common::MasterKind::OpenSsh, super::$scenario);
            }

            #[test]
            fn muxguard() {
                $crate::common::run_scenario($crate::common::MasterKind::Muxguard, super::$scenario);
            }
        }
    )+};
}
pub(crate) use for_both_masters;

/// Runs `scenario` against `kind` unless `MUXGUARD_TEST_MASTERS` excludes it.
pub fn run_scenario(kind: MasterKind, scenario: fn(MasterKind)) {
    if selected(kind) {
        scenario(kind);
    }
}

/// Whether tests against `kind` should run; says so on stderr if not.
pub fn selected(kind: MasterKind) -> bool {
    let yes = kind.selected();
    if !yes {
        eprintln!(
            "skipped: {}={:?} excludes the {} master",
            master::SELECT_VAR,
            std::env::var(master::SELECT_VAR).unwrap_or_default(),
            kind.name()
        );
    }
    yes
}

/// Creates an ed25519 key pair without passphrase at `path` (+ `.pub`).
pub fn keygen(path: &Path) {
    run(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "", "-f"])
        .arg(path))
    .assert_success("ssh-keygen");
}

/// The public half of the key at `path`, as `ssh-ed25519 AAAA...`.
pub fn public_key(path: &Path) -> String {
    let mut public = path.as_os_str().to_owned();
    public.push(".pub");
    let text = std::fs::read_to_string(public).expect("read .pub");
    let mut fields = text.split_whitespace();
    match (fields.next(), fields.next()) {
        (Some(kind), Some(blob)) => format!("{kind} {blob}"),
        _ => panic!("malformed public key {text:?}"),
    }
}

/// The SHA-256 of a file, in hex, by `sha256sum` (the same tool the remote
/// side uses).
pub fn sha256_file(path: &Path) -> String {
    let out = run(Command::new("sha256sum").arg(path));
    out.assert_success("sha256sum");
    first_word(&out.stdout)
}

/// The first whitespace-separated word of `text` (e.g. a hash from
/// `sha256sum` output).
pub fn first_word(text: &str) -> String {
    text.split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// Writes `size` random bytes to a new file at `path`.
pub fn write_random(path: &Path, size: u64) {
    let mut random = File::open("/dev/urandom")
        .expect("open /dev/urandom")
        .take(size);
    let mut file = File::create(path).expect("create data file");
    let copied = io::copy(&mut random, &mut file).expect("write data file");
    assert_eq!(copied, size);
}
