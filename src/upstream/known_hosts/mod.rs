//! Host key verification against OpenSSH `known_hosts` files.
//!
//! muxguard replaces the OpenSSH ControlMaster, so it has to decide whether
//! to trust a server exactly as `ssh` would: same files, same line format,
//! same host-pattern rules, same precedence between revoked keys, certificate
//! authorities and plain keys.  The reference is OpenSSH 9.2 (`hostfile.c`,
//! `match.c`, `check_host_key()` in `sshconnect.c`, sshd(8) "SSH_KNOWN_HOSTS
//! FILE FORMAT").  Where this module deliberately differs, the item says so.
//!
//! The module has three layers so that each can be tested on its own:
//!
//! * a pure parsing and matching layer ([`parse_line`], [`HostPatterns`],
//!   [`HostPattern`]) that never touches the file system and is safe to fuzz;
//! * a pure decision layer ([`verify_entries`]) that turns the lines naming a
//!   host into a [`HostKeyVerdict`];
//! * a thin file layer ([`KnownHosts`], [`append_known_host`]).
//!
//! What to do with a verdict (StrictHostKeyChecking, prompting, logging) is
//! the caller's business; this module only reports what the files say.

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use russh::keys::PublicKeyOrCertificate;
use russh::keys::ssh_key::certificate::CertType;
use russh::keys::ssh_key::public::KeyData;
use russh::keys::ssh_key::{Algorithm, Certificate, HashAlg, PublicKey};
use sha1::Sha1;

/// The port OpenSSH leaves out of known_hosts names.
const DEFAULT_PORT: u16 = 22;

/// Prefix of a HashKnownHosts entry; "1" is the only scheme OpenSSH defines.
const HASH_MAGIC: &str = "|1|";

/// OpenSSH insists on a salt exactly as long as the SHA-1 output.
const SALT_LEN: usize = 20;

/// `match_pattern_list()` copies each sub-pattern into a 1024-byte buffer and
/// gives up on the whole list (no match) when one does not fit.  Mirroring it
/// keeps a line that OpenSSH ignores from being trusted here.
const MAX_SUBPATTERN_LEN: usize = 1023;

/// Suffix shared by every OpenSSH certificate key type name.
const CERT_TYPE_SUFFIX: &str = "-cert-v01@openssh.com";

// ---------------------------------------------------------------------------
// Parsing layer
// ---------------------------------------------------------------------------

/// The optional marker at the start of a known_hosts line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Marker {
    /// A plain host key line.
    None,
    /// `@cert-authority`: the key signs host certificates for these hosts.
    CertAuthority,
    /// `@revoked`: the key must never be accepted for these hosts.
    Revoked,
}

/// One comma-separated element of a host field, e.g. `*.example.com`,
/// `!bastion.example.com` or `[host]:2222`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern {
    negated: bool,
    /// Lowercased, because OpenSSH compares host names case-insensitively.
    glob: String,
    /// `glob` compiled once, as a line is matched against every name that
    /// is looked up.
    compiled: crate::glob::Glob<u8>,
}

impl HostPattern {
    /// Parses one element of a host list; every string is a valid pattern.
    pub fn parse(text: &str) -> Self {
        let (negated, glob) = match text.strip_prefix('!') {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let glob = glob.to_ascii_lowercase();
        HostPattern {
            negated,
            compiled: crate::glob::Glob::new(glob.as_bytes(), crate::glob::Rules::PLAIN),
            glob,
        }
    }

    /// Whether the pattern was written with a leading `!`.
    #[cfg(feature = "fuzzing")]
    pub fn is_negated(&self) -> bool {
        self.negated
    }

    /// The pattern without its `!`, lowercased.
    #[cfg(feature = "fuzzing")]
    pub fn glob(&self) -> &str {
        &self.glob
    }

    /// Whether `name` matches the glob (`*` and `?` wildcards, ASCII case
    /// ignored).  Negation is not applied here: see [`HostPatterns::matches`].
    #[cfg(any(test, feature = "fuzzing"))]
    pub fn matches(&self, name: &str) -> bool {
        self.compiled.matches(name.to_ascii_lowercase().as_bytes())
    }
}

/// A HashKnownHosts entry: `|1|base64(salt)|base64(HMAC-SHA1(salt, name))`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HashedHost {
    salt: [u8; SALT_LEN],
    /// The field exactly as written; matching compares against it verbatim,
    /// as OpenSSH does, so a non-canonical encoding never matches.
    field: String,
}

impl HashedHost {
    /// Parses a `|1|salt|hash` field.  `None` when OpenSSH would call the
    /// line malformed (wrong magic, missing delimiter, salt not 20 bytes).
    pub fn parse(field: &str) -> Option<Self> {
        let rest = field.strip_prefix(HASH_MAGIC)?;
        let (salt_b64, _) = rest.split_once('|')?;
        let salt: [u8; SALT_LEN] = STANDARD.decode(salt_b64).ok()?.try_into().ok()?;
        Some(HashedHost {
            salt,
            field: field.to_owned(),
        })
    }

    /// Hashes `name` (in lookup form, see [`lookup_name`]) with the given
    /// salt.  The name is lowercased first, since that is what lookups hash.
    pub fn new(name: &str, salt: [u8; SALT_LEN]) -> Self {
        HashedHost {
            salt,
            field: hash_host_name(&name.to_ascii_lowercase(), &salt),
        }
    }

    /// Whether this entry was made from `name`.
    #[cfg(any(test, feature = "fuzzing"))]
    pub fn matches(&self, name: &str) -> bool {
        self.matches_lowercase(&name.to_ascii_lowercase())
    }

    fn matches_lowercase(&self, name: &str) -> bool {
        hash_host_name(name, &self.salt) == self.field
    }

    /// The field as it appears in the file.
    #[cfg(any(test, feature = "fuzzing"))]
    pub fn as_str(&self) -> &str {
        &self.field
    }
}

fn hash_host_name(name: &str, salt: &[u8; SALT_LEN]) -> String {
    let mut mac =
        <Hmac<Sha1> as KeyInit>::new_from_slice(salt).expect("HMAC accepts keys of any length");
    mac.update(name.as_bytes());
    let digest = mac.finalize().into_bytes();
    format!(
        "{HASH_MAGIC}{}|{}",
        STANDARD.encode(salt),
        STANDARD.encode(digest)
    )
}

/// The host field of a line: either a pattern list or a single hashed name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPatterns {
    /// Comma-separated patterns, in file order.
    List(Vec<HostPattern>),
    /// A hashed name; OpenSSH treats the whole field as one hash, so hashed
    /// names cannot be mixed with patterns on one line.
    Hashed(HashedHost),
}

impl HostPatterns {
    /// Parses a host field.  `None` only for a malformed hashed field.
    pub fn parse(field: &str) -> Option<Self> {
        if field.starts_with('|') {
            return HashedHost::parse(field).map(HostPatterns::Hashed);
        }
        // `split_terminator` drops one trailing empty element, which is how
        // OpenSSH's list walker treats a trailing comma.
        Some(HostPatterns::List(
            field
                .split_terminator(',')
                .map(HostPattern::parse)
                .collect(),
        ))
    }

    /// Whether the line applies to `name` (a [`lookup_name`]): some positive
    /// pattern matches and no negated pattern does.
    #[cfg(any(test, feature = "fuzzing"))]
    pub fn matches(&self, name: &str) -> bool {
        self.matches_lowercase(&name.to_ascii_lowercase())
    }

    fn matches_lowercase(&self, name: &str) -> bool {
        match self {
            HostPatterns::Hashed(hashed) => hashed.matches_lowercase(name),
            HostPatterns::List(patterns) => {
                let mut positive = false;
                for pattern in patterns {
                    if pattern.glob.len() >= MAX_SUBPATTERN_LEN {
                        return false;
                    }
                    if pattern.compiled.matches(name.as_bytes()) {
                        if pattern.negated {
                            return false;
                        }
                        positive = true;
                    }
                }
                positive
            }
        }
    }
}

/// One well-formed known_hosts line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub marker: Marker,
    pub hosts: HostPatterns,
    /// The key (for `@cert-authority`, the CA key); its own comment is empty.
    pub key: PublicKey,
    /// Whatever followed the key, trimmed; may be empty.
    pub comment: String,
}

/// Why a non-blank, non-comment line could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MalformedLine {
    pub reason: &'static str,
    /// The host field, when parsing got that far, so that a caller can tell
    /// whether the broken line was meant for the host it is checking.
    pub hosts: Option<HostPatterns>,
}

/// Parses one line (without its `\n`).  `None` for blank lines, comments and
/// malformed lines alike; use [`parse_line_checked`] to tell them apart.
#[cfg(any(test, feature = "fuzzing"))]
pub fn parse_line(line: &str) -> Option<Entry> {
    parse_line_checked(line).ok().flatten()
}

/// Parses one line: `Ok(None)` for blank lines and comments, `Err` for lines
/// OpenSSH would skip as malformed.
#[cfg(any(test, feature = "fuzzing"))]
pub fn parse_line_checked(line: &str) -> Result<Option<Entry>, MalformedLine> {
    match split_line(line)? {
        Some(fields) => fields.into_entry().map(Some),
        None => Ok(None),
    }
}

/// A line cut into fields, with the host field parsed but the key not yet:
/// key parsing is the expensive part, and the file layer only does it for
/// lines that name the host being checked.
struct RawLine<'a> {
    marker: Marker,
    hosts: HostPatterns,
    key_type: &'a str,
    key_base64: &'a str,
    comment: &'a str,
}

impl RawLine<'_> {
    fn into_entry(self) -> Result<Entry, MalformedLine> {
        match parse_key(self.key_type, self.key_base64) {
            Ok(key) => Ok(Entry {
                marker: self.marker,
                hosts: self.hosts,
                key,
                comment: self.comment.to_owned(),
            }),
            Err(reason) => Err(MalformedLine {
                reason,
                hosts: Some(self.hosts),
            }),
        }
    }
}

fn is_field_separator(c: char) -> bool {
    c == ' ' || c == '\t'
}

/// Splits off the next space/tab separated field: `(field, rest)`.
fn next_field(s: &str) -> Option<(&str, &str)> {
    let s = s.trim_start_matches(is_field_separator);
    if s.is_empty() {
        return None;
    }
    let end = s.find(is_field_separator).unwrap_or(s.len());
    Some(s.split_at(end))
}

fn split_line(line: &str) -> Result<Option<RawLine<'_>>, MalformedLine> {
    // A stray `\r` from a file edited on Windows would otherwise end up in
    // the key data; OpenSSH's base64 decoder happens to skip it too.
    let line = line.trim_end_matches(['\r', '\n']);
    let Some((first, rest)) = next_field(line) else {
        return Ok(None);
    };
    if first.starts_with('#') {
        return Ok(None);
    }
    let malformed = |reason, hosts| Err(MalformedLine { reason, hosts });

    let (marker, host_field, rest) = if first.starts_with('@') {
        let marker = match first {
            "@cert-authority" => Marker::CertAuthority,
            "@revoked" => Marker::Revoked,
            _ => return malformed("unknown marker", None),
        };
        let Some((host_field, rest)) = next_field(rest) else {
            return malformed("nothing after the marker", None);
        };
        if host_field.starts_with('@') {
            return malformed("more than one marker", None);
        }
        (marker, host_field, rest)
    } else {
        (Marker::None, first, rest)
    };

    let Some(hosts) = HostPatterns::parse(host_field) else {
        return malformed("invalid hashed host name", None);
    };
    let Some((key_type, rest)) = next_field(rest) else {
        return malformed("no key after the host names", Some(hosts));
    };
    if key_type.starts_with('#') {
        return malformed("no key after the host names", Some(hosts));
    }
    let Some((key_base64, rest)) = next_field(rest) else {
        return malformed("key type without key data", Some(hosts));
    };
    Ok(Some(RawLine {
        marker,
        hosts,
        key_type,
        key_base64,
        comment: rest.trim_matches(is_field_separator),
    }))
}

fn parse_key(key_type: &str, key_base64: &str) -> Result<PublicKey, &'static str> {
    // A certificate in known_hosts is meaningless (trust in certificates comes
    // from @cert-authority lines); refuse it rather than guess.
    if key_type.ends_with(CERT_TYPE_SUFFIX) {
        return Err("certificate where a plain key is expected");
    }
    // from_openssh also checks that the type name matches the encoded key.
    PublicKey::from_openssh(&format!("{key_type} {key_base64}"))
        .map(|key| PublicKey::new(key.key_data().clone(), ""))
        .map_err(|_| "invalid key type or key data")
}

/// The name OpenSSH looks up in known_hosts: the host itself on port 22,
/// `[host]:port` otherwise, lowercased.  Port 0 means "no port", as in
/// OpenSSH.
pub fn lookup_name(host: &str, port: u16) -> String {
    let host = host.to_ascii_lowercase();
    if port == DEFAULT_PORT || port == 0 {
        host
    } else {
        format!("[{host}]:{port}")
    }
}

// ---------------------------------------------------------------------------
// Decision layer
// ---------------------------------------------------------------------------

/// A parsed line together with where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocatedEntry {
    pub file: PathBuf,
    /// 1-based.
    pub line: usize,
    pub entry: Entry,
}

/// What the known_hosts files say about a presented host key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostKeyVerdict {
    /// A plain line for this host carries exactly this key.
    Trusted { file: PathBuf, line: usize },
    /// The certificate is signed by the `@cert-authority` key on this line
    /// and passed every check.
    TrustedByCa {
        file: PathBuf,
        line: usize,
        /// `SHA256:...` of the CA key.
        ca_fingerprint: String,
    },
    /// No line for this host decides anything: the key is new.  Under
    /// accept-new/ask the caller may record it with [`append_known_host`].
    Unknown,
    /// Lines for this host exist but none carries this key.  As in OpenSSH
    /// 9.2 this includes keys of a *different* type (`ssh` prints "Offending
    /// ECDSA key" for an ed25519 server); `known_key_type` lets the caller
    /// say which.  Reported line: the first one of the presented key's type,
    /// else the first one at all.
    Changed {
        file: PathBuf,
        line: usize,
        /// Key type name as in the file, e.g. `ecdsa-sha2-nistp256`.
        known_key_type: String,
        /// `SHA256:...` of the key on that line.
        known_fingerprint: String,
    },
    /// An `@revoked` line for this host names the key, or the CA that signed
    /// the presented certificate.  Overrides everything else.
    Revoked { file: PathBuf, line: usize },
    /// The presented certificate is unacceptable and its plain key is not
    /// known either.  `authority` is the `@cert-authority` line of its CA,
    /// when one matched.
    CertRejected {
        reason: String,
        authority: Option<(PathBuf, usize)>,
    },
}

impl HostKeyVerdict {
    /// Whether the connection may proceed without asking anybody.
    #[cfg(any(test, feature = "fuzzing"))]
    pub fn is_trusted(&self) -> bool {
        matches!(
            self,
            HostKeyVerdict::Trusted { .. } | HostKeyVerdict::TrustedByCa { .. }
        )
    }
}

/// `SHA256:<unpadded base64>`, as `ssh-keygen -l` prints it.
pub fn fingerprint_sha256(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

fn matching<'a>(
    entries: &'a [LocatedEntry],
    name: &'a str,
) -> impl Iterator<Item = &'a LocatedEntry> + 'a {
    entries
        .iter()
        .filter(move |e| e.entry.hosts.matches_lowercase(name))
}

enum PlainLookup<'a> {
    Match(&'a LocatedEntry),
    Mismatch(&'a LocatedEntry),
    Nothing,
}

/// Looks `key` up among the plain (unmarked) lines for `name`.
fn lookup_plain<'a>(entries: &'a [LocatedEntry], name: &'a str, key: &KeyData) -> PlainLookup<'a> {
    let mut first_other = None;
    let mut first_same_type = None;
    for e in matching(entries, name).filter(|e| e.entry.marker == Marker::None) {
        let known = e.entry.key.key_data();
        if known == key {
            return PlainLookup::Match(e);
        }
        first_other.get_or_insert(e);
        if first_same_type.is_none() && known.algorithm() == key.algorithm() {
            first_same_type = Some(e);
        }
    }
    match first_same_type.or(first_other) {
        Some(e) => PlainLookup::Mismatch(e),
        None => PlainLookup::Nothing,
    }
}

/// Decides on a presented host key from already-loaded lines, in the order
/// OpenSSH's `check_host_key()` does.
///
/// `host` is the name ssh would record: the HostKeyAlias if one is set (pass
/// port 22 then, since OpenSSH never adds a port to an alias), otherwise the
/// host name being connected to.  It is also the name a certificate must list
/// as a principal.  `now` is in seconds since the Unix epoch.
///
/// Departures from OpenSSH 9.2, all towards refusing:
/// * `@revoked` lines are honoured for both `[host]:port` and `host`, where
///   OpenSSH's port-less retry could skip one that only names `host`;
/// * a certificate whose signature does not verify is rejected outright
///   (OpenSSH refuses it while parsing, before any of this);
/// * a certificate that its trusted CA signed but that fails a check is
///   [`HostKeyVerdict::CertRejected`] rather than an unknown plain key that
///   accept-new would silently record.
pub fn verify_entries(
    entries: &[LocatedEntry],
    host: &str,
    port: u16,
    key: &PublicKeyOrCertificate,
    now: u64,
) -> HostKeyVerdict {
    let name = lookup_name(host, port);
    let bare_name = portless_name(host, port);
    let principal = host.to_ascii_lowercase();

    let (plain, cert) = match key {
        PublicKeyOrCertificate::PublicKey { key, .. } => (key.key_data(), None),
        PublicKeyOrCertificate::Certificate(cert) => (cert.public_key(), Some(cert)),
    };

    for lookup in std::iter::once(&name).chain(bare_name.as_ref()) {
        let revoked = matching(entries, lookup)
            .filter(|e| e.entry.marker == Marker::Revoked)
            .find(|e| {
                let revoked_key = e.entry.key.key_data();
                revoked_key == plain || cert.is_some_and(|c| c.signature_key() == revoked_key)
            });
        if let Some(e) = revoked {
            return HostKeyVerdict::Revoked {
                file: e.file.clone(),
                line: e.line,
            };
        }
    }

    let mut rejection = None;
    if let Some(cert) = cert {
        if let Err(reason) = check_cert_signature(cert) {
            return HostKeyVerdict::CertRejected {
                reason,
                authority: None,
            };
        }
        // Only the CA that actually signed counts; another CA trusted for
        // this host neither helps nor makes the key "changed".
        let authority = matching(entries, &name).find(|e| {
            e.entry.marker == Marker::CertAuthority
                && e.entry.key.key_data() == cert.signature_key()
        });
        if let Some(ca) = authority {
            match check_host_certificate(cert, &principal, now, &ca.entry.key) {
                Ok(()) => {
                    return HostKeyVerdict::TrustedByCa {
                        file: ca.file.clone(),
                        line: ca.line,
                        ca_fingerprint: fingerprint_sha256(&ca.entry.key),
                    };
                }
                Err(reason) => rejection = Some((reason, (ca.file.clone(), ca.line))),
            }
        }
        // Like OpenSSH, go on with the certificate's plain key.
    }

    match lookup_plain(entries, &name, plain) {
        PlainLookup::Match(e) => {
            return HostKeyVerdict::Trusted {
                file: e.file.clone(),
                line: e.line,
            };
        }
        PlainLookup::Mismatch(e) => {
            return HostKeyVerdict::Changed {
                file: e.file.clone(),
                line: e.line,
                known_key_type: e.entry.key.algorithm().as_str().to_owned(),
                known_fingerprint: fingerprint_sha256(&e.entry.key),
            };
        }
        PlainLookup::Nothing => {}
    }

    // OpenSSH retries a key that is entirely new under `[host]:port` with the
    // bare host name, and accepts it only on an exact plain-key match there.
    if let Some(bare) = &bare_name
        && let PlainLookup::Match(e) = lookup_plain(entries, bare, plain)
    {
        return HostKeyVerdict::Trusted {
            file: e.file.clone(),
            line: e.line,
        };
    }

    match rejection {
        Some((reason, authority)) => HostKeyVerdict::CertRejected {
            reason,
            authority: Some(authority),
        },
        None => HostKeyVerdict::Unknown,
    }
}

/// OpenSSH 9.2's default CASignatureAlgorithms: no DSA, and no RSA with
/// SHA-1 (`ssh-rsa`).
fn ca_signature_allowed(algorithm: &Algorithm) -> bool {
    matches!(
        algorithm,
        Algorithm::Ed25519
            | Algorithm::Ecdsa { .. }
            | Algorithm::SkEd25519
            | Algorithm::SkEcdsaSha2NistP256
            | Algorithm::Rsa { hash: Some(_) }
    )
}

fn check_cert_signature(cert: &Certificate) -> Result<(), String> {
    let algorithm = cert.signature().algorithm();
    if !ca_signature_allowed(&algorithm) {
        return Err(format!(
            "certificate signed with disallowed algorithm {}",
            algorithm.as_str()
        ));
    }
    // validate_at() also checks the signature, but only together with a CA
    // fingerprint; this check has to happen before we know whether any CA
    // line applies.
    cert.verify_signature()
        .map_err(|_| "certificate signature does not verify".to_owned())
}

/// The checks OpenSSH's `sshkey_cert_check_host()` makes once the CA is
/// trusted for the host.
fn check_host_certificate(
    cert: &Certificate,
    principal: &str,
    now: u64,
    ca: &PublicKey,
) -> Result<(), String> {
    if cert.cert_type() != CertType::Host {
        return Err("certificate is not a host certificate".to_owned());
    }
    if now < cert.valid_after() {
        return Err("certificate is not yet valid".to_owned());
    }
    if now >= cert.valid_before() {
        return Err("certificate has expired".to_owned());
    }
    // OpenSSH 9.2 accepts a host certificate with no principals at all (it
    // is then good for every host its CA line covers), and otherwise wants
    // the name verbatim: principals are not patterns.
    let principals = cert.valid_principals();
    if !principals.is_empty() && !principals.iter().any(|p| p == principal) {
        return Err(format!(
            "certificate is not valid for {principal} (principals: {})",
            principals.join(",")
        ));
    }
    // No critical option is defined for host certificates, so any is unknown.
    if !cert.critical_options().is_empty() {
        let names: Vec<&str> = cert.critical_options().keys().map(String::as_str).collect();
        return Err(format!(
            "certificate has unsupported critical options: {}",
            names.join(",")
        ));
    }
    // Belt and braces: the library's own check of signature, CA and validity.
    let ca_fingerprint = ca.fingerprint(HashAlg::Sha256);
    cert.validate_at(now, [&ca_fingerprint])
        .map_err(|_| "certificate failed validation against its CA".to_owned())
}

/// The names [`verify_entries`] consults: `[host]:port`, then plain `host`
/// for the port-less retry.
pub(super) fn lookup_names(host: &str, port: u16) -> Vec<String> {
    std::iter::once(lookup_name(host, port))
        .chain(portless_name(host, port))
        .collect()
}

/// The bare host name OpenSSH retries with when `[host]:port` knows nothing;
/// `None` when the lookup name has no port to begin with.
pub(super) fn portless_name(host: &str, port: u16) -> Option<String> {
    (port != DEFAULT_PORT && port != 0).then(|| lookup_name(host, DEFAULT_PORT))
}

/// Characters that would change the meaning of a known_hosts line if they
/// appeared in a recorded name.  OpenSSH refuses to record names containing
/// `@?*#[]|'"\`; separators and `!`/`,` are added here because they would
/// split or negate the pattern.
pub(super) fn is_recordable_host(host: &str) -> bool {
    !host.is_empty()
        && !host
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || "@?*#[]|'\"\\,!".contains(c))
}

mod file;

pub use file::{KnownAlgorithms, KnownHosts, append_known_host};

#[cfg(test)]
mod tests {
    use super::file::KnownHostsError;
    use super::*;
    use std::fs;
    use std::io;
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;

    // Throwaway keys made with ssh-keygen for these tests only.
    const HOST_ED: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKcjisPAhgE0qoUlr/i5oLJ2XvVZ5RKeTJZvbonQA9i9";
    const HOST_ED_FP: &str = "SHA256:hePZEMrVrv/3TXfUv9pJ8tQ90XDWiX4gwlwW55VD9U8";
    const HOST_EC: &str = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBGI7cm2w8WFTgsBk8BeDwGsKUDNsBxmR5z44jvdXKXHK6rXlkzcSpSQBb3Y3ltwU55hemmttZXGAER34asW7x+A=";
    const HOST_EC_FP: &str = "SHA256:rGdG+F77nu00uo8eXdyG2I+uT74qv5wNP1RBh2J643Q";
    const OTHER_ED: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILIxLYJlV6fCNH8eNxDjxYqFo5/3+dOdnA/HIsm57cWv";
    const OTHER_ED_FP: &str = "SHA256:Jpn+p6IDgHAM+676KMRHSMK5PDr7Xe7i9hewyNzuCrA";
    const OTHER_EC: &str = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBNe5eVVCR4wUaGKdyNqBwmJCop0LJ5CewT6pN6tkcp4DhtblXiOx23m7aCTzbDm8QtFp8KlDCOCPDe+p12FQZ+s=";
    const HOST_RSA: &str = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQCtEtdUtlcGIBehYbW7VFEgayCvcMoZcpglBzKjkKzHgPSspu3uKK9FzRq8J37t++SboPN7txgFwWtgQQClCkQZU01Ft15ftw9lIBr5gqI1xUzBvqUK+hrP0GccbUvgloylhNjNH692hqAZKMg8nfgFzw7E9/Ku/MGIGdUFjyXUtw==";
    const HOST_RSA_FP: &str = "SHA256:QO58W6ai8B9kweEylVWl5f+1XyrHHNoEcfklBxvjIl4";
    const CA: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFtHl5AeMehyrkEZGxMpJXSuGgnd8A8avn6OiuJIVcL/";
    const CA_FP: &str = "SHA256:u7e+Wz5JdV0SfqLsUiZJmaBLliEx+IzdjBwj5BCKCws";
    const CA2: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIH0lmOkISXMNvyi83cpms9XworurkL3jNuWdLxfd6rc6";

    // `ssh-keygen -H` of "hashed.example.org HOST_ED" and
    // "[hashed.example.org]:2222 HOST_EC".
    const HASHED_22: &str = "|1|Uav8ixpEaRjKPY2OvF+EkySwWe4=|pU7/LP7vg1SjKCfVNqw9izWTVzo=";
    const HASHED_2222: &str = "|1|Z3mjNcs3lgLMrViKI/zJ5kmPZIU=|r70Y6bp721hNSI44LVaphEtL/bs=";

    // Host certificates for HOST_ED, all valid from 2020-01-01 to 2099-01-01
    // unless said otherwise, made with `ssh-keygen -s ca -h ...`.
    /// Signed by CA, principals host.example.com and alias.
    const CERT_VALID: &str = "ssh-ed25519-cert-v01@openssh.com AAAAIHNzaC1lZDI1NTE5LWNlcnQtdjAxQG9wZW5zc2guY29tAAAAIPOV7I42bMO+2sGDHQ7H3Ti0srx9mHjHvKUWT4AzsP8rAAAAIKcjisPAhgE0qoUlr/i5oLJ2XvVZ5RKeTJZvbonQA9i9AAAAAAAAAAAAAAACAAAABXZhbGlkAAAAHQAAABBob3N0LmV4YW1wbGUuY29tAAAABWFsaWFzAAAAAF4L4QAAAAAA8qUjgAAAAAAAAAAAAAAAAAAAADMAAAALc3NoLWVkMjU1MTkAAAAgW0eXkB4x6HKuQRkbEykldK4aCd3wDxq+fo6K4khVwv8AAABTAAAAC3NzaC1lZDI1NTE5AAAAQEcm9cAlQbeLHt+q4h01rhMlpoV5z1ieMWsO8rG2i0TTkq+6s41evS4YJF7hr6cIvsS1TruPQv2KTxOoKFsJlAE=";
    /// Signed by CA, host.example.com, valid 2020-01-01 to 2021-01-01 only.
    const CERT_EXPIRED: &str = "ssh-ed25519-cert-v01@openssh.com AAAAIHNzaC1lZDI1NTE5LWNlcnQtdjAxQG9wZW5zc2guY29tAAAAIPc5OuFe5/Yl72xiMEnbFAQK8ByCtUNv2MfgT6s185g3AAAAIKcjisPAhgE0qoUlr/i5oLJ2XvVZ5RKeTJZvbonQA9i9AAAAAAAAAAAAAAACAAAAB2V4cGlyZWQAAAAUAAAAEGhvc3QuZXhhbXBsZS5jb20AAAAAXgvhAAAAAABf7mYAAAAAAAAAAAAAAAAAAAAAMwAAAAtzc2gtZWQyNTUxOQAAACBbR5eQHjHocq5BGRsTKSV0rhoJ3fAPGr5+joriSFXC/wAAAFMAAAALc3NoLWVkMjU1MTkAAABAwsRVc1u7vhr8ZZ1HnUQ/MF14nMICrLGTGlwPH/BIJxjr5vbCsdte4ElbHddAlTyugnF+xrCxs/nylDupgXtPCg==";
    /// Signed by CA, no principals.
    const CERT_NO_PRINCIPALS: &str = "ssh-ed25519-cert-v01@openssh.com AAAAIHNzaC1lZDI1NTE5LWNlcnQtdjAxQG9wZW5zc2guY29tAAAAIPDo4s5CZDtRgPfLQdDlpRVwvlwFZFlY44po0wOQHvW3AAAAIKcjisPAhgE0qoUlr/i5oLJ2XvVZ5RKeTJZvbonQA9i9AAAAAAAAAAAAAAACAAAADG5vcHJpbmNpcGFscwAAAAAAAAAAXgvhAAAAAADypSOAAAAAAAAAAAAAAAAAAAAAMwAAAAtzc2gtZWQyNTUxOQAAACBbR5eQHjHocq5BGRsTKSV0rhoJ3fAPGr5+joriSFXC/wAAAFMAAAALc3NoLWVkMjU1MTkAAABADXTQYBvo9sXWd5dDL4yc+CR0+5sseBxDE82vzc+FJywZbmfu1+KyEMCfQt53L6FbJBv7TAxjpSL4MdN/D8dTDQ==";
    /// Signed by CA, host.example.com, but a *user* certificate.
    const CERT_USER: &str = "ssh-ed25519-cert-v01@openssh.com AAAAIHNzaC1lZDI1NTE5LWNlcnQtdjAxQG9wZW5zc2guY29tAAAAICPdOT1QocJSBzzU4sFZGhwiB8EUEeNBN8/rlem7HPvaAAAAIKcjisPAhgE0qoUlr/i5oLJ2XvVZ5RKeTJZvbonQA9i9AAAAAAAAAAAAAAABAAAACHVzZXJjZXJ0AAAAFAAAABBob3N0LmV4YW1wbGUuY29tAAAAAF4L4QAAAAAA8qUjgAAAAAAAAACCAAAAFXBlcm1pdC1YMTEtZm9yd2FyZGluZwAAAAAAAAAXcGVybWl0LWFnZW50LWZvcndhcmRpbmcAAAAAAAAAFnBlcm1pdC1wb3J0LWZvcndhcmRpbmcAAAAAAAAACnBlcm1pdC1wdHkAAAAAAAAADnBlcm1pdC11c2VyLXJjAAAAAAAAAAAAAAAzAAAAC3NzaC1lZDI1NTE5AAAAIFtHl5AeMehyrkEZGxMpJXSuGgnd8A8avn6OiuJIVcL/AAAAUwAAAAtzc2gtZWQyNTUxOQAAAEBhF8sxG8EL+99BWTO8ZT5OuVqd18VFB9GBIh7oqWyH0eGENnKLhjOSAkZXA9vUETlQIpMHH9mMUyQhSbVh7n0G";
    /// Signed by CA2, host.example.com.
    const CERT_BY_CA2: &str = "ssh-ed25519-cert-v01@openssh.com AAAAIHNzaC1lZDI1NTE5LWNlcnQtdjAxQG9wZW5zc2guY29tAAAAINIuNMDcToE4INrN/iFdmNT1+mGbtWQr7LkfwSHekAL9AAAAIKcjisPAhgE0qoUlr/i5oLJ2XvVZ5RKeTJZvbonQA9i9AAAAAAAAAAAAAAACAAAABWJ5Y2EyAAAAFAAAABBob3N0LmV4YW1wbGUuY29tAAAAAF4L4QAAAAAA8qUjgAAAAAAAAAAAAAAAAAAAADMAAAALc3NoLWVkMjU1MTkAAAAgfSWY6QhJcw2/KLzdymaz1fCiu6uQveM25Z0vF93qtzoAAABTAAAAC3NzaC1lZDI1NTE5AAAAQKHAm0naIP9CTLpUPtLkxWpxwgrJjAOB0FcD5WDqzfdYSGN0q+WlJfoIhy4LOIRNMChNDbYOMwrLbHRLKFlFRgM=";
    /// Signed by CA, host.example.com, critical option foo@example.com=bar.
    const CERT_CRITICAL: &str = "ssh-ed25519-cert-v01@openssh.com AAAAIHNzaC1lZDI1NTE5LWNlcnQtdjAxQG9wZW5zc2guY29tAAAAIGPNAERjjEJc6jTTfOiaM6ZtybO5P4zMRZfNZcIj8cHeAAAAIKcjisPAhgE0qoUlr/i5oLJ2XvVZ5RKeTJZvbonQA9i9AAAAAAAAAAAAAAACAAAABGNyaXQAAAAUAAAAEGhvc3QuZXhhbXBsZS5jb20AAAAAXgvhAAAAAADypSOAAAAAHgAAAA9mb29AZXhhbXBsZS5jb20AAAAHAAAAA2JhcgAAAAAAAAAAAAAAMwAAAAtzc2gtZWQyNTUxOQAAACBbR5eQHjHocq5BGRsTKSV0rhoJ3fAPGr5+joriSFXC/wAAAFMAAAALc3NoLWVkMjU1MTkAAABADi/futs280lZ+zKedTNQVEK/H3EqjmCjkRwxi9/jRgThtqEIGgjAljpIjnEwgbrFdbmGoxpD68tHC4auwnI3Dw==";

    /// 2023-11-14, inside every validity window above except the expired one.
    const NOW: u64 = 1_700_000_000;

    fn key(line: &str) -> PublicKey {
        PublicKey::from_openssh(line).expect("test key parses")
    }

    fn plain(line: &str) -> PublicKeyOrCertificate {
        key(line).into()
    }

    fn cert(line: &str) -> PublicKeyOrCertificate {
        Certificate::from_openssh(line)
            .expect("test cert parses")
            .into()
    }

    /// A KnownHosts over one user file with `contents`, kept alive by the
    /// returned TempDir.
    fn hosts_with(contents: &str) -> (tempfile::TempDir, PathBuf, KnownHosts) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("known_hosts");
        fs::write(&path, contents).unwrap();
        let known = KnownHosts::new(vec![path.clone()], Vec::new());
        (dir, path, known)
    }

    fn verdict(
        contents: &str,
        host: &str,
        port: u16,
        presented: &PublicKeyOrCertificate,
    ) -> (PathBuf, HostKeyVerdict) {
        let (_dir, path, known) = hosts_with(contents);
        let verdict = known.verify_at(host, port, presented, NOW).unwrap();
        (path, verdict)
    }

    fn trusted(path: &Path, line: usize) -> HostKeyVerdict {
        HostKeyVerdict::Trusted {
            file: path.to_owned(),
            line,
        }
    }

    // --- parsing -----------------------------------------------------------

    #[test]
    fn parses_plain_line_with_comment() {
        let entry =
            parse_line(&format!("host.example.com,10.0.0.1 {HOST_ED} my  comment ")).unwrap();
        assert_eq!(entry.marker, Marker::None);
        assert_eq!(entry.key.key_data(), key(HOST_ED).key_data());
        assert_eq!(entry.comment, "my  comment");
        assert!(entry.hosts.matches("host.example.com"));
        assert!(entry.hosts.matches("10.0.0.1"));
        assert!(!entry.hosts.matches("other.example.com"));
    }

    #[test]
    fn parses_tabs_and_runs_of_spaces() {
        let (kt, kb) = HOST_ED.split_once(' ').unwrap();
        let line = format!(" \t@revoked\t \thost.example.com  \t{kt}\t\t{kb}\r");
        let entry = parse_line(&line).unwrap();
        assert_eq!(entry.marker, Marker::Revoked);
        assert_eq!(entry.key.key_data(), key(HOST_ED).key_data());
        assert_eq!(entry.comment, "");
        let ca = parse_line(&format!("@cert-authority *.example.com {CA}")).unwrap();
        assert_eq!(ca.marker, Marker::CertAuthority);
    }

    #[test]
    fn skips_blank_lines_and_comments() {
        for line in ["", "   ", "\t", "# comment", "   # indented comment", "\r"] {
            assert_eq!(parse_line_checked(line), Ok(None), "{line:?}");
        }
    }

    #[test]
    fn rejects_malformed_lines() {
        let (kt, kb) = HOST_ED.split_once(' ').unwrap();
        let bad = [
            format!("@bogus host {HOST_ED}"),
            format!("@revoked @cert-authority host {HOST_ED}"),
            "@revoked".to_owned(),
            "host.example.com".to_owned(),
            format!("host.example.com {kt}"),
            format!("host.example.com #{kt} {kb}"),
            format!("host.example.com {kt} not-base64!"),
            format!("host.example.com {kt} {}", &kb[..kb.len() - 4]),
            // Type name disagreeing with the encoded key.
            format!("host.example.com ecdsa-sha2-nistp256 {kb}"),
            format!("host.example.com {}", CERT_VALID),
            // Hashed fields with a bad magic or a salt of the wrong size.
            format!("|2|Uav8ixpEaRjKPY2OvF+EkySwWe4=|pU7/LP7vg1SjKCfVNqw9izWTVzo= {HOST_ED}"),
            format!("|1|AAAA|pU7/LP7vg1SjKCfVNqw9izWTVzo= {HOST_ED}"),
            format!("|1|Uav8ixpEaRjKPY2OvF+EkySwWe4= {HOST_ED}"),
        ];
        for line in &bad {
            assert!(parse_line_checked(line).is_err(), "{line:?}");
            assert_eq!(parse_line(line), None);
        }
        // The host field survives when the key is what is broken.
        let err = parse_line_checked(&format!("host.example.com {kt}")).unwrap_err();
        assert!(err.hosts.unwrap().matches("host.example.com"));
    }

    #[test]
    fn parse_never_panics_on_odd_input() {
        let samples = [
            "@",
            "@@",
            "|",
            "|1|",
            "|1||",
            "||||",
            ",,,",
            "!",
            "*",
            "\u{0}",
            "é ssh-ed25519 é",
            "[host]:22 ssh-ed25519 AAAA",
            "@revoked\t",
            "host ssh-ed25519 AAAAC3NzaC1lZDI1NTE5",
        ];
        for s in samples {
            let _ = parse_line_checked(s);
            if let Some(hosts) = HostPatterns::parse(s) {
                let _ = hosts.matches(s);
            }
        }
    }

    // --- patterns ----------------------------------------------------------

    #[test]
    fn glob_wildcards() {
        let m = |p: &str, s: &str| HostPattern::parse(p).matches(s);
        assert!(m("*", ""));
        assert!(m("*", "anything"));
        assert!(m("*.example.com", "a.b.example.com"));
        assert!(!m("*.example.com", "example.com"));
        assert!(m("host?.example.com", "host1.example.com"));
        assert!(!m("host?.example.com", "host.example.com"));
        assert!(!m("host?.example.com", "host12.example.com"));
        assert!(m("h*t*.e*.com", "host1.example.com"));
        assert!(m("*a*b", "aaab"));
        assert!(!m("*a*b", "aaba"));
        assert!(m("a**b", "ab"));
        assert!(!m("abc", "ab"));
        assert!(!m("ab", "abc"));
        assert!(m("", ""));
        // A pattern that would take exponential time with naive backtracking.
        let hostile = format!("{}b", "*a".repeat(40));
        assert!(!m(&hostile, &"a".repeat(200)));
    }

    /// OpenSSH's recursive algorithm, kept simple as a reference.
    fn reference_glob(pattern: &[u8], text: &[u8]) -> bool {
        match pattern.split_first() {
            None => text.is_empty(),
            Some((b'*', rest)) => (0..=text.len()).any(|i| reference_glob(rest, &text[i..])),
            Some((&c, rest)) => match text.split_first() {
                Some((&t, text_rest)) if c == b'?' || c == t => reference_glob(rest, text_rest),
                _ => false,
            },
        }
    }

    /// A tiny deterministic generator, so the exhaustive-ish tests below
    /// need no extra crate and always run the same cases.
    struct Lcg(u64);

    impl Lcg {
        fn below(&mut self, n: usize) -> usize {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((self.0 >> 33) % n as u64) as usize
        }
    }

    #[test]
    fn glob_agrees_with_reference_matcher() {
        let mut rng = Lcg(1);
        let alphabet = b"ab*?";
        for _ in 0..20_000 {
            let pattern: Vec<u8> = (0..rng.below(7)).map(|_| alphabet[rng.below(4)]).collect();
            let text: Vec<u8> = (0..rng.below(7)).map(|_| alphabet[rng.below(2)]).collect();
            assert_eq!(
                crate::glob::ssh_match(&pattern, &text),
                reference_glob(&pattern, &text),
                "{:?} vs {:?}",
                String::from_utf8_lossy(&pattern),
                String::from_utf8_lossy(&text)
            );
        }
    }

    #[test]
    fn random_lines_never_panic() {
        let pieces = [
            "@revoked",
            "@cert-authority",
            "@",
            "host",
            "*",
            "!host",
            "[host]:22",
            ",",
            "|1|",
            HASHED_22,
            "|",
            "ssh-ed25519",
            "ecdsa-sha2-nistp256",
            "AAAA",
            "#",
            "\t",
            " ",
            "  ",
            HOST_ED,
            CA,
            "=",
            "\r",
            "é",
        ];
        let mut rng = Lcg(7);
        for _ in 0..5_000 {
            let line: String = (0..rng.below(8))
                .map(|_| pieces[rng.below(pieces.len())])
                .collect();
            if let Err(bad) = parse_line_checked(&line) {
                if let Some(hosts) = bad.hosts {
                    let _ = hosts.matches("host");
                }
            } else if let Some(entry) = parse_line(&line) {
                let _ = entry.hosts.matches("[host]:22");
            }
        }
    }

    #[test]
    fn patterns_ignore_ascii_case() {
        let hosts = HostPatterns::parse("Host.EXAMPLE.com,*.Corp").unwrap();
        assert!(hosts.matches("host.example.com"));
        assert!(hosts.matches("HOST.example.COM"));
        assert!(hosts.matches("x.CORP"));
    }

    #[test]
    fn negation_overrides_other_patterns() {
        let hosts = HostPatterns::parse("*.example.com,!secret.example.com").unwrap();
        assert!(hosts.matches("www.example.com"));
        assert!(!hosts.matches("secret.example.com"));
        // The order of the patterns does not matter.
        let hosts = HostPatterns::parse("!secret.example.com,*.example.com").unwrap();
        assert!(!hosts.matches("secret.example.com"));
        // A negation alone never matches anything.
        let hosts = HostPatterns::parse("!secret.example.com").unwrap();
        assert!(!hosts.matches("www.example.com"));
    }

    #[test]
    fn trailing_comma_adds_no_empty_pattern() {
        let HostPatterns::List(list) = HostPatterns::parse("a,").unwrap() else {
            panic!("expected a list");
        };
        assert_eq!(list.len(), 1);
        assert!(!HostPatterns::parse("a,").unwrap().matches(""));
        assert!(HostPatterns::parse("a,,b").unwrap().matches(""));
    }

    #[test]
    fn overlong_subpattern_matches_nothing() {
        let field = format!("host.example.com,{}", "x".repeat(MAX_SUBPATTERN_LEN));
        assert!(
            !HostPatterns::parse(&field)
                .unwrap()
                .matches("host.example.com")
        );
    }

    #[test]
    fn bracketed_pattern_is_port_specific() {
        let hosts = HostPatterns::parse("[host.example.com]:2222").unwrap();
        assert!(hosts.matches(&lookup_name("host.example.com", 2222)));
        assert!(!hosts.matches(&lookup_name("host.example.com", 22)));
        assert!(!hosts.matches(&lookup_name("host.example.com", 2223)));
        let any_port = HostPatterns::parse("[*.example.com]:*").unwrap();
        assert!(any_port.matches(&lookup_name("a.example.com", 1234)));
    }

    #[test]
    fn lookup_names_follow_openssh() {
        assert_eq!(lookup_name("Host.Example.COM", 22), "host.example.com");
        assert_eq!(lookup_name("host", 0), "host");
        assert_eq!(lookup_name("host", 2222), "[host]:2222");
        assert_eq!(lookup_name("::1", 2222), "[::1]:2222");
    }

    #[test]
    fn hashed_names_match_ssh_keygen_output() {
        let h22 = HostPatterns::parse(HASHED_22).unwrap();
        assert!(h22.matches("hashed.example.org"));
        assert!(h22.matches("HASHED.example.org"));
        assert!(!h22.matches("other.example.org"));
        assert!(!h22.matches("[hashed.example.org]:2222"));
        let h2222 = HostPatterns::parse(HASHED_2222).unwrap();
        assert!(h2222.matches("[hashed.example.org]:2222"));
        assert!(!h2222.matches("hashed.example.org"));
        // The whole field is one hash: appending a pattern spoils it.
        let mixed = HostPatterns::parse(&format!("{HASHED_22},other")).unwrap();
        assert!(!mixed.matches("hashed.example.org"));
        // Round trip of our own hashing.
        let ours = HashedHost::new("[x.example]:2022", [7; SALT_LEN]);
        let parsed = HashedHost::parse(ours.as_str()).unwrap();
        assert!(parsed.matches("[x.example]:2022"));
    }

    // --- fingerprints ------------------------------------------------------

    #[test]
    fn fingerprints_match_ssh_keygen() {
        assert_eq!(fingerprint_sha256(&key(HOST_ED)), HOST_ED_FP);
        assert_eq!(fingerprint_sha256(&key(HOST_EC)), HOST_EC_FP);
        assert_eq!(fingerprint_sha256(&key(CA)), CA_FP);
        assert_eq!(fingerprint_sha256(&key(HOST_RSA)), HOST_RSA_FP);
    }

    #[test]
    fn rsa_key_matches_whatever_signature_hash_was_negotiated() {
        let contents = format!("host.example.com {HOST_RSA}\n");
        let presented = PublicKeyOrCertificate::PublicKey {
            key: key(HOST_RSA),
            hash_alg: Some(HashAlg::Sha512),
        };
        let (path, v) = verdict(&contents, "host.example.com", 22, &presented);
        assert_eq!(v, trusted(&path, 1));
    }

    // --- plain keys --------------------------------------------------------

    #[test]
    fn exact_match_is_trusted() {
        let contents =
            format!("# header\nother.example.com {OTHER_ED}\nhost.example.com {HOST_ED}\n");
        let (path, v) = verdict(&contents, "host.example.com", 22, &plain(HOST_ED));
        assert_eq!(v, trusted(&path, 3));
        assert!(v.is_trusted());
    }

    #[test]
    fn host_argument_is_case_insensitive() {
        let contents = format!("host.example.com {HOST_ED}\n");
        let (path, v) = verdict(&contents, "HOST.Example.com", 22, &plain(HOST_ED));
        assert_eq!(v, trusted(&path, 1));
    }

    #[test]
    fn unknown_host_is_unknown() {
        let contents = format!("other.example.com {OTHER_ED}\n");
        let (_, v) = verdict(&contents, "host.example.com", 22, &plain(HOST_ED));
        assert_eq!(v, HostKeyVerdict::Unknown);
        assert!(!v.is_trusted());
    }

    #[test]
    fn bracketed_line_only_matches_its_port() {
        let contents = format!("[host.example.com]:2222 {HOST_ED}\n");
        let (path, v) = verdict(&contents, "host.example.com", 2222, &plain(HOST_ED));
        assert_eq!(v, trusted(&path, 1));
        let (_, v) = verdict(&contents, "host.example.com", 22, &plain(HOST_ED));
        assert_eq!(v, HostKeyVerdict::Unknown);
        let (_, v) = verdict(&contents, "host.example.com", 2200, &plain(HOST_ED));
        assert_eq!(v, HostKeyVerdict::Unknown);
    }

    #[test]
    fn nonstandard_port_falls_back_to_bare_name() {
        // Nothing under [host]:2222, so OpenSSH retries with the bare name.
        let contents = format!("host.example.com {HOST_ED}\n");
        let (path, v) = verdict(&contents, "host.example.com", 2222, &plain(HOST_ED));
        assert_eq!(v, trusted(&path, 1));
        // The retry only ever trusts; a different key there stays unknown.
        let (_, v) = verdict(&contents, "host.example.com", 2222, &plain(OTHER_ED));
        assert_eq!(v, HostKeyVerdict::Unknown);
        // And it does not happen when [host]:2222 has its own opinion.
        let contents = format!("[host.example.com]:2222 {OTHER_ED}\nhost.example.com {HOST_ED}\n");
        let (_, v) = verdict(&contents, "host.example.com", 2222, &plain(HOST_ED));
        assert!(
            matches!(v, HostKeyVerdict::Changed { line: 1, .. }),
            "{v:?}"
        );
    }

    #[test]
    fn wildcard_line_matches() {
        let contents = format!("*.example.com {HOST_ED}\n");
        let (path, v) = verdict(&contents, "host.example.com", 22, &plain(HOST_ED));
        assert_eq!(v, trusted(&path, 1));
        // `*` also matches bracketed names.
        let contents = format!("* {HOST_ED}\n");
        let (path, v) = verdict(&contents, "host.example.com", 2222, &plain(HOST_ED));
        assert_eq!(v, trusted(&path, 1));
    }

    #[test]
    fn negated_host_is_not_matched() {
        let contents = format!("*.example.com,!host.example.com {HOST_ED}\n");
        let (_, v) = verdict(&contents, "host.example.com", 22, &plain(HOST_ED));
        assert_eq!(v, HostKeyVerdict::Unknown);
        let (path, v) = verdict(&contents, "www.example.com", 22, &plain(HOST_ED));
        assert_eq!(v, trusted(&path, 1));
    }

    #[test]
    fn hashed_entries_are_matched() {
        let contents = format!("{HASHED_22} {HOST_ED}\n{HASHED_2222} {HOST_EC}\n");
        let (path, v) = verdict(&contents, "hashed.example.org", 22, &plain(HOST_ED));
        assert_eq!(v, trusted(&path, 1));
        let (path, v) = verdict(&contents, "Hashed.Example.org", 2222, &plain(HOST_EC));
        assert_eq!(v, trusted(&path, 2));
    }

    #[test]
    fn different_key_of_same_type_is_changed() {
        let contents = format!("host.example.com {OTHER_EC}\nhost.example.com {OTHER_ED}\n");
        let (path, v) = verdict(&contents, "host.example.com", 22, &plain(HOST_ED));
        assert_eq!(
            v,
            HostKeyVerdict::Changed {
                file: path,
                line: 2,
                known_key_type: "ssh-ed25519".to_owned(),
                known_fingerprint: OTHER_ED_FP.to_owned(),
            }
        );
    }

    #[test]
    fn exact_key_anywhere_beats_a_changed_line() {
        let contents = format!("host.example.com {OTHER_ED}\n*.example.com {HOST_ED}\n");
        let (path, v) = verdict(&contents, "host.example.com", 22, &plain(HOST_ED));
        assert_eq!(v, trusted(&path, 2));
    }

    #[test]
    fn key_of_other_type_is_changed_as_in_openssh() {
        // OpenSSH 9.2 reports "REMOTE HOST IDENTIFICATION HAS CHANGED" with
        // "Offending ECDSA key" when only an ECDSA key is known and the
        // server shows ed25519.
        let contents = format!("host.example.com {HOST_EC}\n");
        let (path, v) = verdict(&contents, "host.example.com", 22, &plain(HOST_ED));
        assert_eq!(
            v,
            HostKeyVerdict::Changed {
                file: path,
                line: 1,
                known_key_type: "ecdsa-sha2-nistp256".to_owned(),
                known_fingerprint: HOST_EC_FP.to_owned(),
            }
        );
    }

    #[test]
    fn ca_lines_do_not_make_a_plain_key_changed() {
        let contents = format!("@cert-authority host.example.com {CA}\n");
        let (_, v) = verdict(&contents, "host.example.com", 22, &plain(HOST_ED));
        assert_eq!(v, HostKeyVerdict::Unknown);
    }

    #[test]
    fn known_algorithms_lists_types_for_the_host() {
        let contents = format!(
            "host.example.com {HOST_EC}\nhost.example.com {OTHER_EC}\n*.example.com {OTHER_ED}\n\
             @cert-authority *.example.com {CA}\nelsewhere {HOST_ED}\n"
        );
        let (_dir, _path, known) = hosts_with(&contents);
        let algs = known.known_algorithms("host.example.com", 22).unwrap();
        assert_eq!(
            algs.algorithms,
            vec![key(HOST_EC).algorithm(), Algorithm::Ed25519]
        );
        assert!(algs.has_cert_authority);
        let none = known.known_algorithms("nowhere", 22).unwrap();
        assert_eq!(none, KnownAlgorithms::default());
    }

    // --- revocation --------------------------------------------------------

    #[test]
    fn revoked_key_wins_over_trust() {
        let contents = format!("host.example.com {HOST_ED}\n@revoked * {HOST_ED}\n");
        let (path, v) = verdict(&contents, "host.example.com", 22, &plain(HOST_ED));
        assert_eq!(
            v,
            HostKeyVerdict::Revoked {
                file: path,
                line: 2
            }
        );
    }

    #[test]
    fn revocation_in_global_file_applies() {
        let dir = tempfile::tempdir().unwrap();
        let user = dir.path().join("user");
        let global = dir.path().join("global");
        fs::write(&user, format!("host.example.com {HOST_ED}\n")).unwrap();
        fs::write(
            &global,
            format!("# global\n@revoked *.example.com {HOST_ED}\n"),
        )
        .unwrap();
        let known = KnownHosts::new(vec![user], vec![global.clone()]);
        let v = known
            .verify_at("host.example.com", 22, &plain(HOST_ED), NOW)
            .unwrap();
        assert_eq!(
            v,
            HostKeyVerdict::Revoked {
                file: global,
                line: 2
            }
        );
    }

    #[test]
    fn revocation_for_other_hosts_does_not_apply() {
        let contents =
            format!("host.example.com {HOST_ED}\n@revoked other.example.com {HOST_ED}\n");
        let (path, v) = verdict(&contents, "host.example.com", 22, &plain(HOST_ED));
        assert_eq!(v, trusted(&path, 1));
    }

    #[test]
    fn revoked_ca_rejects_its_certificates() {
        let contents = format!("@cert-authority *.example.com {CA}\n@revoked * {CA}\n");
        let (path, v) = verdict(&contents, "host.example.com", 22, &cert(CERT_VALID));
        assert_eq!(
            v,
            HostKeyVerdict::Revoked {
                file: path,
                line: 2
            }
        );
    }

    #[test]
    fn revoked_host_key_rejects_its_certificate() {
        let contents = format!("@cert-authority *.example.com {CA}\n@revoked * {HOST_ED}\n");
        let (path, v) = verdict(&contents, "host.example.com", 22, &cert(CERT_VALID));
        assert_eq!(
            v,
            HostKeyVerdict::Revoked {
                file: path,
                line: 2
            }
        );
    }

    // --- certificates ------------------------------------------------------

    #[test]
    fn certificate_from_trusted_ca_is_trusted() {
        let contents =
            format!("@cert-authority *.example.com {CA2}\n@cert-authority *.example.com {CA}\n");
        let (path, v) = verdict(&contents, "host.example.com", 22, &cert(CERT_VALID));
        assert_eq!(
            v,
            HostKeyVerdict::TrustedByCa {
                file: path,
                line: 2,
                ca_fingerprint: CA_FP.to_owned(),
            }
        );
        assert!(v.is_trusted());
        // The second principal works as a HostKeyAlias would use it.
        let contents = format!("@cert-authority alias {CA}\n");
        let (_, v) = verdict(&contents, "alias", 22, &cert(CERT_VALID));
        assert!(matches!(v, HostKeyVerdict::TrustedByCa { .. }), "{v:?}");
    }

    #[test]
    fn certificate_checks_principal_against_bare_host() {
        let contents = format!("@cert-authority [host.example.com]:2222 {CA}\n");
        let (_, v) = verdict(&contents, "host.example.com", 2222, &cert(CERT_VALID));
        assert!(
            matches!(v, HostKeyVerdict::TrustedByCa { line: 1, .. }),
            "{v:?}"
        );
    }

    #[test]
    fn ca_line_must_match_the_host() {
        let contents = format!("@cert-authority *.example.net {CA}\n");
        let (_, v) = verdict(&contents, "host.example.com", 22, &cert(CERT_VALID));
        assert_eq!(v, HostKeyVerdict::Unknown);
    }

    #[test]
    fn certificate_without_principals_is_accepted_like_openssh_9_2() {
        let contents = format!("@cert-authority *.example.com {CA}\n");
        let (_, v) = verdict(&contents, "host.example.com", 22, &cert(CERT_NO_PRINCIPALS));
        assert!(matches!(v, HostKeyVerdict::TrustedByCa { .. }), "{v:?}");
    }

    fn assert_rejected(v: &HostKeyVerdict, path: &Path, needle: &str) {
        match v {
            HostKeyVerdict::CertRejected { reason, authority } => {
                assert!(reason.contains(needle), "{reason}");
                assert_eq!(authority.as_ref(), Some(&(path.to_owned(), 1)));
            }
            other => panic!("expected CertRejected, got {other:?}"),
        }
    }

    #[test]
    fn expired_certificate_is_rejected() {
        let contents = format!("@cert-authority *.example.com {CA}\n");
        let (path, v) = verdict(&contents, "host.example.com", 22, &cert(CERT_EXPIRED));
        assert_rejected(&v, &path, "expired");
        // ...and a certificate before its validity starts.
        let (_dir, path, known) = hosts_with(&contents);
        let v = known
            .verify_at("host.example.com", 22, &cert(CERT_VALID), 1_500_000_000)
            .unwrap();
        assert_rejected(&v, &path, "not yet valid");
        // valid_before is exclusive.
        let expired = Certificate::from_openssh(CERT_EXPIRED).unwrap();
        let at_end = known
            .verify_at(
                "host.example.com",
                22,
                &cert(CERT_EXPIRED),
                expired.valid_before(),
            )
            .unwrap();
        assert_rejected(&at_end, &path, "expired");
        let just_before = known
            .verify_at(
                "host.example.com",
                22,
                &cert(CERT_EXPIRED),
                expired.valid_before() - 1,
            )
            .unwrap();
        assert!(just_before.is_trusted());
    }

    #[test]
    fn certificate_for_other_name_is_rejected() {
        let contents = format!("@cert-authority *.example.com {CA}\n");
        let (path, v) = verdict(&contents, "www.example.com", 22, &cert(CERT_VALID));
        assert_rejected(&v, &path, "not valid for www.example.com");
        // Principals are compared verbatim, not as patterns or suffixes.
        let contents = format!("@cert-authority * {CA}\n");
        let (path, v) = verdict(&contents, "example.com", 22, &cert(CERT_VALID));
        assert_rejected(&v, &path, "not valid for");
    }

    #[test]
    fn user_certificate_is_rejected() {
        let contents = format!("@cert-authority *.example.com {CA}\n");
        let (path, v) = verdict(&contents, "host.example.com", 22, &cert(CERT_USER));
        assert_rejected(&v, &path, "not a host certificate");
    }

    #[test]
    fn unknown_critical_option_is_rejected() {
        let contents = format!("@cert-authority *.example.com {CA}\n");
        let (path, v) = verdict(&contents, "host.example.com", 22, &cert(CERT_CRITICAL));
        assert_rejected(&v, &path, "foo@example.com");
    }

    #[test]
    fn rejected_certificate_falls_back_to_plain_key() {
        let contents = format!("@cert-authority *.example.com {CA}\nhost.example.com {HOST_ED}\n");
        let (path, v) = verdict(&contents, "host.example.com", 22, &cert(CERT_EXPIRED));
        assert_eq!(v, trusted(&path, 2));
    }

    #[test]
    fn certificate_from_unknown_ca_falls_back_to_plain_key() {
        let contents = format!("@cert-authority *.example.com {CA}\nhost.example.com {HOST_ED}\n");
        let (path, v) = verdict(&contents, "host.example.com", 22, &cert(CERT_BY_CA2));
        assert_eq!(v, trusted(&path, 2));
        // Without a plain line the key is simply new...
        let contents = format!("@cert-authority *.example.com {CA}\n");
        let (_, v) = verdict(&contents, "host.example.com", 22, &cert(CERT_BY_CA2));
        assert_eq!(v, HostKeyVerdict::Unknown);
        // ...or changed when another plain key is known.
        let contents = format!("@cert-authority *.example.com {CA}\nhost.example.com {OTHER_ED}\n");
        let (_, v) = verdict(&contents, "host.example.com", 22, &cert(CERT_BY_CA2));
        assert!(
            matches!(v, HostKeyVerdict::Changed { line: 2, .. }),
            "{v:?}"
        );
    }

    #[test]
    fn plain_line_with_ca_key_does_not_trust_certificates() {
        let contents = format!("host.example.com {CA}\n");
        let (_, v) = verdict(&contents, "host.example.com", 22, &cert(CERT_VALID));
        // The CA key on a plain line is just a different ed25519 key.
        assert!(matches!(v, HostKeyVerdict::Changed { .. }), "{v:?}");
    }

    #[test]
    fn tampered_certificate_is_rejected() {
        let original = Certificate::from_openssh(CERT_VALID).unwrap();
        let mut bytes = original.to_bytes().unwrap();
        // Flip a byte inside the key id ("valid" -> "walid"): still
        // decodable, no longer what the CA signed.
        let pos = bytes.windows(5).position(|w| w == b"valid").unwrap();
        bytes[pos] = b'w';
        let forged = Certificate::from_bytes(&bytes).unwrap();
        let contents = format!("@cert-authority *.example.com {CA}\nhost.example.com {HOST_ED}\n");
        let (_, v) = verdict(&contents, "host.example.com", 22, &forged.into());
        assert!(
            matches!(&v, HostKeyVerdict::CertRejected { authority: None, reason } if reason.contains("signature")),
            "{v:?}"
        );
    }

    // --- files -------------------------------------------------------------

    #[test]
    fn missing_files_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let present = dir.path().join("present");
        fs::write(&present, format!("host.example.com {HOST_ED}\n")).unwrap();
        let known = KnownHosts::new(
            vec![
                dir.path().join("absent"),
                present.join("not-a-dir"),
                present.clone(),
            ],
            vec![dir.path().join("also/absent")],
        );
        let v = known
            .verify_at("host.example.com", 22, &plain(HOST_ED), NOW)
            .unwrap();
        assert_eq!(v, trusted(&present, 1));
    }

    #[test]
    fn unreadable_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        // A directory exists but cannot be read as a file, even by root.
        let known = KnownHosts::new(Vec::new(), vec![dir.path().to_owned()]);
        let err = known.verify_at("h", 22, &plain(HOST_ED), NOW).unwrap_err();
        let KnownHostsError::Read { path, .. } = &err;
        assert_eq!(path, dir.path());
        assert!(err.to_string().contains(&dir.path().display().to_string()));
    }

    #[test]
    fn malformed_lines_are_skipped_and_reported_when_relevant() {
        let (kt, _) = HOST_ED.split_once(' ').unwrap();
        let contents = format!(
            "host.example.com {kt} garbage\n@bogus host.example.com {HOST_ED}\n\
             other.example.com {kt}\nhost.example.com {HOST_ED}\n"
        );
        let (_dir, path, known) = hosts_with(&contents);
        // A trailing line that is not even UTF-8.
        let mut bytes = fs::read(&path).unwrap();
        bytes.extend_from_slice(b"\xff\xfe host.example.com\n");
        fs::write(&path, bytes).unwrap();
        let v = known
            .verify_at("host.example.com", 22, &plain(HOST_ED), NOW)
            .unwrap();
        assert_eq!(v, trusted(&path, 4));
        let ignored = known.ignored_lines("host.example.com", 22).unwrap();
        assert_eq!(ignored.len(), 1, "{ignored:?}");
        assert_eq!(ignored[0].line, 1);
        assert_eq!(ignored[0].file, path);
    }

    #[test]
    fn crlf_and_missing_final_newline_are_fine() {
        let contents = format!("# c\r\nhost.example.com {HOST_ED}\r\nlast.example.com {HOST_EC}");
        let (path, v) = verdict(&contents, "last.example.com", 22, &plain(HOST_EC));
        assert_eq!(v, trusted(&path, 3));
        let (path, v) = verdict(&contents, "host.example.com", 22, &plain(HOST_ED));
        assert_eq!(v, trusted(&path, 2));
    }

    // --- appending ---------------------------------------------------------

    #[test]
    fn append_creates_private_file_and_directory() {
        let dir = tempfile::tempdir().unwrap();
        let ssh_dir = dir.path().join("home/.ssh");
        let path = ssh_dir.join("known_hosts");
        let line = append_known_host(&path, "Host.Example.com", 22, &key(HOST_ED), false).unwrap();
        assert_eq!(line, 1);
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            format!("host.example.com {HOST_ED}\n")
        );
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&ssh_dir), 0o700);

        let line =
            append_known_host(&path, "host.example.com", 2222, &key(HOST_EC), false).unwrap();
        assert_eq!(line, 2);
        let known = KnownHosts::new(vec![path.clone()], Vec::new());
        let v = known
            .verify_at("host.example.com", 2222, &plain(HOST_EC), NOW)
            .unwrap();
        assert_eq!(v, trusted(&path, 2));
        assert!(
            fs::read_to_string(&path)
                .unwrap()
                .contains("[host.example.com]:2222 ")
        );
    }

    #[test]
    fn append_terminates_an_unterminated_last_line() {
        let (_dir, path, known) = hosts_with(&format!("# one\nother.example.com {OTHER_ED}"));
        let line = append_known_host(&path, "host.example.com", 22, &key(HOST_ED), false).unwrap();
        assert_eq!(line, 3);
        let text = fs::read_to_string(&path).unwrap();
        assert!(
            text.ends_with(&format!("{OTHER_ED}\nhost.example.com {HOST_ED}\n")),
            "{text}"
        );
        let v = known
            .verify_at("host.example.com", 22, &plain(HOST_ED), NOW)
            .unwrap();
        assert_eq!(v, trusted(&path, 3));
        let v = known
            .verify_at("other.example.com", 22, &plain(OTHER_ED), NOW)
            .unwrap();
        assert_eq!(v, trusted(&path, 2));
    }

    #[test]
    fn hashed_append_round_trips_through_verify() {
        let (_dir, path, known) = hosts_with("");
        let line = append_known_host(&path, "Host.Example.com", 2222, &key(HOST_ED), true).unwrap();
        assert_eq!(line, 1);
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("|1|"), "{text}");
        assert!(!text.to_ascii_lowercase().contains("example"), "{text}");
        let v = known
            .verify_at("host.example.com", 2222, &plain(HOST_ED), NOW)
            .unwrap();
        assert_eq!(v, trusted(&path, 1));
        let v = known
            .verify_at("host.example.com", 22, &plain(HOST_ED), NOW)
            .unwrap();
        assert_eq!(v, HostKeyVerdict::Unknown);
        // Two hashes of the same name differ by their salt.
        append_known_host(&path, "host.example.com", 2222, &key(HOST_ED), true).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        let fields: Vec<&str> = text.lines().map(|l| l.split(' ').next().unwrap()).collect();
        assert_ne!(fields[0], fields[1]);
    }

    #[test]
    fn append_refuses_names_that_would_be_patterns() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("known_hosts");
        for host in [
            "",
            "*.example.com",
            "a,b",
            "!a",
            "a b",
            "a\nb",
            "[a]:22",
            "a|b",
            "a#b",
        ] {
            let err = append_known_host(&path, host, 22, &key(HOST_ED), false).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{host:?}");
        }
        assert!(!path.exists());
    }
}
