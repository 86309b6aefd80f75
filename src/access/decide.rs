//! Turning a request into a final answer: the policy files (re-read when
//! they change on disk), the requester's identity, and what `ask` becomes
//! when nobody can be asked.
//!
//! Fail closed: an invalid or unreadable policy never loosens anything.
//! At start-up it stops the master; while running, every request that needs
//! the policy is denied with the reason until the file is fixed.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::peer::Peer;
use super::policy::DecidedBy;
use super::policy::{Action, Fallback, PeerAccount, PolicySet, Request, RequestKind};
use super::policy_file::{self, LoadError};
use crate::audit::chain::{DecisionSource, RuleRef};
use crate::config::HostConfig;
use crate::prompt::text::shown;
use crate::prompt::{
    Answer, AskKey, Asked as PromptResult, PromptMemory, PromptText, PromptTimes, Prompter,
    RequesterId,
};

/// Where the two policy files live.
#[derive(Debug, Clone)]
pub struct PolicyPaths {
    pub system: PathBuf,
    pub user: PathBuf,
}

impl PolicyPaths {
    pub const SYSTEM_DEFAULT: &'static str = "/etc/muxguard/policy.toml";

    /// The flags if given, else `/etc/muxguard/policy.toml` and
    /// `$XDG_CONFIG_HOME/muxguard/policy.toml`.
    pub fn resolve(system: Option<PathBuf>, user: Option<PathBuf>) -> PolicyPaths {
        PolicyPaths {
            system: system.unwrap_or_else(|| PathBuf::from(Self::SYSTEM_DEFAULT)),
            user: user.unwrap_or_else(|| crate::paths::config_dir().join("policy.toml")),
        }
    }

    /// Loads both files; a missing file is fine, anything else an error
    /// naming file, line, column and reason.
    pub fn load(&self) -> Result<PolicySet, Arc<LoadError>> {
        let load = |path: &Path| policy_file::load_optional(path).map_err(Arc::new);
        Ok(PolicySet {
            system: load(&self.system)?,
            user: load(&self.user)?,
        })
    }
}

/// Identifies a file's content cheaply, to notice edits.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp(Option<(u64, u64, i64, i64, u64)>);

impl Stamp {
    fn of(path: &Path) -> Stamp {
        Stamp(
            std::fs::metadata(path)
                .ok()
                .map(|m| (m.dev(), m.ino(), m.mtime(), m.mtime_nsec(), m.len())),
        )
    }
}

struct Loaded {
    stamps: (Stamp, Stamp),
    /// Shared: every request decided meanwhile gives the same reason.
    policy: Result<Arc<PolicySet>, Arc<LoadError>>,
}

/// The policy as the master currently sees it.
pub struct PolicyStore {
    paths: PolicyPaths,
    loaded: Mutex<Loaded>,
}

impl PolicyStore {
    /// Loads the policy at start-up; an invalid file is an error.
    pub fn open(paths: PolicyPaths) -> anyhow::Result<PolicyStore> {
        let stamps = (Stamp::of(&paths.system), Stamp::of(&paths.user));
        let policy = paths
            .load()
            .map_err(|e| anyhow::anyhow!("invalid policy: {e}"))?;
        Ok(PolicyStore {
            paths,
            loaded: Mutex::new(Loaded {
                stamps,
                policy: Ok(Arc::new(policy)),
            }),
        })
    }

    pub fn paths(&self) -> &PolicyPaths {
        &self.paths
    }

    /// The policy in force, re-read if either file changed since last time.
    /// `Err` carries why the current files cannot be used.
    pub fn current(&self) -> Result<Arc<PolicySet>, Arc<LoadError>> {
        let stamps = (Stamp::of(&self.paths.system), Stamp::of(&self.paths.user));
        let mut loaded = self.loaded.lock().expect("not poisoned");
        if loaded.stamps != stamps {
            loaded.policy = self.paths.load().map(Arc::new);
            match &loaded.policy {
                Ok(_) => tracing::info!("policy reloaded"),
                Err(e) => tracing::error!(
                    "policy is now invalid, denying every request until it is fixed: {e}"
                ),
            }
            loaded.stamps = stamps;
        }
        loaded.policy.clone()
    }
}

/// The answer the master acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Allow {
        reason: String,
    },
    /// Refuse to share: the client may authenticate on its own.
    Direct {
        reason: String,
    },
    /// Refuse outright.
    Deny {
        reason: String,
    },
}

impl Outcome {
    fn reason_mut(&mut self) -> &mut String {
        match self {
            Outcome::Allow { reason } | Outcome::Direct { reason } | Outcome::Deny { reason } => {
                reason
            }
        }
    }

    /// Whether the request may go ahead.
    pub fn is_allow(&self) -> bool {
        matches!(self, Outcome::Allow { .. })
    }

    pub fn reason(&self) -> &str {
        match self {
            Outcome::Allow { reason } | Outcome::Direct { reason } | Outcome::Deny { reason } => {
                reason
            }
        }
    }
}

/// An outcome with what produced it, for the audit log.
#[derive(Debug, Clone)]
pub struct Decided {
    pub outcome: Outcome,
    pub source: DecisionSource,
    pub rule: Option<RuleRef>,
}

impl Decided {
    fn new(outcome: Outcome, source: DecisionSource, rule: Option<RuleRef>) -> Decided {
        Decided {
            outcome,
            source,
            rule,
        }
    }
}

/// The rule behind a policy answer, if a rule gave it.
fn rule_of(decided_by: &DecidedBy) -> Option<RuleRef> {
    match decided_by {
        DecidedBy::Rule { name, file, line } | DecidedBy::ProgramUnknown { name, file, line } => {
            Some(RuleRef {
                name: name.clone(),
                file: file.display().to_string(),
                line: u32::try_from(*line).unwrap_or(u32::MAX),
            })
        }
        DecidedBy::ProxyNotListed { matched } => rule_of(matched),
        DecidedBy::Default { .. } => None,
    }
}

/// The account behind a peer, for policy matching.
pub struct PeerIdentity {
    pub uid: u32,
    pub user: Option<String>,
    pub gids: Vec<u32>,
    pub groups: Vec<String>,
}

impl PeerIdentity {
    /// The identity of `peer` with the names looked up for it.
    pub fn named(peer: &Peer, accounts: accounts::Accounts) -> PeerIdentity {
        PeerIdentity {
            uid: peer.uid,
            user: accounts.user,
            gids: accounts.gids,
            groups: accounts.groups,
        }
    }

    pub fn account(&self) -> PeerAccount<'_> {
        PeerAccount {
            uid: self.uid,
            user: self.user.as_deref(),
            gids: &self.gids,
            groups: &self.groups,
        }
    }
}

/// What is being asked, in the policy's terms.
pub struct Asked<'a> {
    pub kind: RequestKind,
    pub command: Option<&'a str>,
    /// A forward's local TCP port (see [`Request::local_port`]).
    pub local_port: Option<u16>,
}

/// The ways to ask the person, and what was asked before.
pub struct Prompting<'a> {
    pub prompter: &'a Prompter,
    pub memory: &'a PromptMemory,
}

/// Decides one request. `ask` asks the person (see `prompt`), unless a
/// remembered answer, the lock screen, the cool-down or the lack of any way
/// to ask decides first. The peer should have been rechecked just before
/// ([`Peer::recheck`]); a requester whose identity drifted since connect is
/// an unknown program, and the reason says why.
pub async fn decide(
    store: &PolicyStore,
    host: &HostConfig,
    peer: &Peer,
    identity: &PeerIdentity,
    asked: &Asked<'_>,
    prompting: Prompting<'_>,
) -> Decided {
    let mut decided = decide_once(store, host, peer, identity, asked, prompting).await;
    if let Some(why) = peer.drift() {
        decided
            .outcome
            .reason_mut()
            .push_str(&format!("; the requesting program is unverified: {why}"));
    }
    decided
}

async fn decide_once(
    store: &PolicyStore,
    host: &HostConfig,
    peer: &Peer,
    identity: &PeerIdentity,
    asked: &Asked<'_>,
    prompting: Prompting<'_>,
) -> Decided {
    let policy = match store.current() {
        Ok(policy) => policy,
        Err(e) => {
            let outcome = Outcome::Deny {
                reason: format!("policy error: {e}"),
            };
            return Decided::new(outcome, DecisionSource::PolicyError, None);
        }
    };
    let program = peer.program_exe();
    let request = Request {
        host_alias: &host.alias,
        hostname: &host.hostname,
        remote_user: &host.user,
        program,
        kind: asked.kind,
        command: asked.command,
        local_port: asked.local_port,
        peer: identity.account(),
    };
    let decision = policy.decide(&request);
    let reason = decision.reason();
    let rule = rule_of(&decision.decided_by);
    let source = if rule.is_some() {
        DecisionSource::Rule
    } else {
        DecisionSource::Default
    };
    match decision.action {
        Action::Allow => Decided::new(Outcome::Allow { reason }, source, rule),
        Action::Direct => Decided::new(Outcome::Direct { reason }, source, rule),
        Action::Deny => Decided::new(Outcome::Deny { reason }, source, rule),
        Action::Ask => {
            let (outcome, source) =
                ask(&policy, host, peer, identity, asked, prompting, reason).await;
            Decided::new(outcome, source, rule)
        }
    }
}

async fn ask(
    policy: &PolicySet,
    host: &HostConfig,
    peer: &Peer,
    identity: &PeerIdentity,
    asked: &Asked<'_>,
    prompting: Prompting<'_>,
    policy_reason: String,
) -> (Outcome, DecisionSource) {
    let settings = policy.settings();
    let fallback = |fallback: Fallback, why: String| {
        let reason = format!("{policy_reason}; {why}, so {}", fallback.name());
        match fallback {
            Fallback::Allow => Outcome::Allow { reason },
            Fallback::Direct => Outcome::Direct { reason },
            Fallback::Deny => Outcome::Deny { reason },
        }
    };
    let lock = prompting.prompter.lock_state().await;
    if lock.is_locked() {
        // Whatever was allowed "for a while" ends with the lock.
        prompting.memory.forget();
        let why = format!("the desktop is locked ({})", lock.describe());
        return (fallback(settings.when_locked, why), DecisionSource::Locked);
    }
    let requester = RequesterId {
        uid: identity.uid,
        anchor: peer.anchor(),
        program: peer.program_exe().map(|p| p.display().to_string()),
    };
    let key = AskKey {
        requester,
        host: host.alias.clone(),
        kind: asked.kind.to_string(),
        detail: match (asked.command, asked.local_port) {
            (Some(command), Some(port)) => Some(format!("{command} (local port {port})")),
            (Some(command), None) => Some(command.to_string()),
            (None, Some(port)) => Some(format!("local port {port}")),
            (None, None) => None,
        },
    };
    let anchor = key.requester.anchor.clone();
    let result = prompting
        .memory
        .ask(
            prompting.prompter,
            key,
            |key| prompt_text(host, peer, asked, key, settings.remember),
            PromptTimes {
                timeout: settings.prompt_timeout,
                remember: settings.remember,
                cooldown: settings.cooldown,
            },
        )
        .await;
    let deny = |why: String| Outcome::Deny {
        reason: format!("{policy_reason}; {why}"),
    };
    match result {
        PromptResult::Remembered { until_secs } => (
            Outcome::Allow {
                reason: format!("{policy_reason}; remembered answer ({until_secs}s left)"),
            },
            DecisionSource::Remembered,
        ),
        PromptResult::CoolingDown => (
            deny(format!("cool-down after a refused prompt from {anchor}")),
            DecisionSource::Prompt,
        ),
        PromptResult::Busy => (
            deny(format!("another prompt from {anchor} is open")),
            DecisionSource::Prompt,
        ),
        PromptResult::Prompted { answer, shared } => {
            let how = format!(
                "{}{}",
                answer.describe(),
                if shared { " (shared prompt)" } else { "" }
            );
            match answer {
                answer if answer.allows() => (
                    Outcome::Allow {
                        reason: format!("{policy_reason}; {how}"),
                    },
                    DecisionSource::Prompt,
                ),
                Answer::Unavailable(_) => (
                    fallback(settings.no_prompter, how),
                    DecisionSource::NoPrompter,
                ),
                // Asking failed: a denial, never "nobody to ask".
                Answer::Failed(_) => (deny(how), DecisionSource::Prompt),
                Answer::TimedOut => (deny(how), DecisionSource::Timeout),
                _ => (deny(how), DecisionSource::Prompt),
            }
        }
    }
}

/// The prompt's words: host, remote user, the request, the requester, and
/// what an "Allow for …" would cover. Everything a requester chose (the
/// command, a subsystem's name, argv, the working directory) is escaped
/// and bounded by [`shown`].
fn prompt_text(
    host: &HostConfig,
    peer: &Peer,
    asked: &Asked<'_>,
    key: &AskKey,
    remember: std::time::Duration,
) -> PromptText {
    let target = shown(&format!("{}@{}", host.user, host.alias));
    let summary = match asked.kind {
        RequestKind::Shell => format!("Allow a shell on {target}?"),
        RequestKind::Exec => format!("Allow a command on {target}?"),
        RequestKind::Subsystem => format!(
            "Allow the {} subsystem on {target}?",
            crate::prompt::text::one_line_bounded(asked.command.unwrap_or("?"), 40, 20)
        ),
        RequestKind::Control => format!("Allow control of the {target} master?"),
        other => format!("Allow {other} through {target}?"),
    };
    let mut body = String::new();
    if let Some(command) = asked.command {
        body.push_str(&format!("{}: {}\n", asked.kind, shown(command)));
    }
    body.push_str(&format!("requested by {}", shown(&peer.describe_chain())));
    let remember_label = humantime::format_duration(remember).to_string();
    body.push_str(&format!(
        "\n\"Allow for {remember_label}\" covers {} requests to {} from {} only",
        asked.kind,
        shown(&host.alias),
        shown(&key.requester.anchor.to_string()),
    ));
    if host.alias != host.hostname {
        body.push_str(&format!(
            "\n({} is {})",
            shown(&host.alias),
            shown(&host.hostname)
        ));
    }
    PromptText {
        summary,
        body,
        remember_label,
    }
}

/// Whether the policy lets this peer use the socket at all.
pub fn admits(
    store: &PolicyStore,
    identity: &PeerIdentity,
    master_uid: u32,
) -> Result<bool, Arc<LoadError>> {
    // The master's own uid needs no policy to get in, so that a broken
    // policy is reported on each request (and denies it) instead of
    // closing the socket, which would make the stock client connect on
    // its own: a broken policy must never act as "direct".
    if identity.uid == master_uid {
        return Ok(true);
    }
    let policy = store.current()?;
    Ok(policy.admits_peer(
        identity.uid,
        identity.user.as_deref(),
        &identity.gids,
        &identity.groups,
        master_uid,
    ))
}

/// User and group names from /etc/passwd and /etc/group (local accounts;
/// a name the files do not know simply is not used for matching).
pub mod accounts {
    use std::sync::{Arc, Mutex};

    /// The names /etc/passwd and /etc/group give a peer's uid and gids.
    #[derive(Debug, Clone, Default, PartialEq, Eq)]
    pub struct Accounts {
        pub user: Option<String>,
        /// The names of `gids`, in order, of those that have one.
        pub groups: Vec<String>,
        /// The peer's gid first, then its supplementary groups.
        pub gids: Vec<u32>,
    }

    impl Accounts {
        /// Looks the names up (a `stat` of each file, which is read again
        /// only once it has changed).
        pub fn look_up(uid: u32, gid: u32, groups: &[u32]) -> Accounts {
            let mut gids = vec![gid];
            gids.extend(groups.iter().copied().filter(|g| *g != gid));
            Accounts {
                user: user_name(uid),
                groups: group_names(&gids),
                gids,
            }
        }
    }

    pub fn user_name(uid: u32) -> Option<String> {
        find(&PASSWD.text()?, uid)
    }

    /// The names of those of `gids` that /etc/group knows, in order.
    pub fn group_names(gids: &[u32]) -> Vec<String> {
        let Some(text) = GROUP.text() else {
            return Vec::new();
        };
        gids.iter().filter_map(|g| find(&text, *g)).collect()
    }

    static PASSWD: AccountFile = AccountFile::new("/etc/passwd");
    static GROUP: AccountFile = AccountFile::new("/etc/group");

    /// An account file, read again only once it has changed: the master
    /// looks names up for every connection, and a `stat` is one system
    /// call where a read is five.
    struct AccountFile {
        path: &'static str,
        read: Mutex<Option<(Stamp, Arc<str>)>>,
    }

    /// What tells that a file changed: another file (replaced by rename,
    /// as `vipw` and `useradd` do), another size, or another modification
    /// or status-change time (nanoseconds).
    type Stamp = (u64, u64, i64, [i64; 4]);

    impl AccountFile {
        const fn new(path: &'static str) -> AccountFile {
            AccountFile {
                path,
                read: Mutex::new(None),
            }
        }

        fn text(&self) -> Option<Arc<str>> {
            let st = rustix::fs::stat(self.path).ok()?;
            let stamp: Stamp = (
                st.st_dev as u64,
                st.st_ino as u64,
                st.st_size as i64,
                [
                    st.st_mtime as i64,
                    st.st_mtime_nsec as i64,
                    st.st_ctime as i64,
                    st.st_ctime_nsec as i64,
                ],
            );
            let mut read = self.read.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((seen, text)) = read.as_ref()
                && *seen == stamp
            {
                return Some(Arc::clone(text));
            }
            // Changed between the stat and the read: the next stat differs
            // from the stamp kept, and the file is read again then.
            let text: Arc<str> = std::fs::read_to_string(self.path).ok()?.into();
            // File times come from a clock that ticks every few ms: a
            // same-size edit within the tick of the one read would keep
            // the stamp. A file changed in the last two seconds is
            // therefore not kept, and read each time until it is older.
            let modified = u64::try_from(st.st_mtime).ok().and_then(|secs| {
                let nanos = u32::try_from(st.st_mtime_nsec).unwrap_or(0);
                std::time::UNIX_EPOCH.checked_add(std::time::Duration::new(secs, nanos))
            });
            let settled = modified
                .and_then(|m| std::time::SystemTime::now().duration_since(m).ok())
                .is_some_and(|age| age > std::time::Duration::from_secs(2));
            *read = settled.then(|| (stamp, Arc::clone(&text)));
            Some(text)
        }
    }

    #[cfg(test)]
    pub(super) fn names_from(path: &'static str) -> impl Fn(u32) -> Option<String> {
        let file = AccountFile::new(path);
        move |id| find(&file.text()?, id)
    }

    /// Whether two reads of a file unchanged for a while share one text.
    #[cfg(test)]
    pub(super) fn same_text_twice(path: &'static str) -> bool {
        let file = AccountFile::new(path);
        let (a, b) = (file.text(), file.text());
        a.zip(b).is_some_and(|(a, b)| Arc::ptr_eq(&a, &b))
    }

    /// The name on the first `name:x:id:…` line with this id.
    pub fn find(text: &str, id: u32) -> Option<String> {
        text.lines().find_map(|line| {
            let mut fields = line.split(':');
            let name = fields.next()?;
            let _password = fields.next()?;
            (fields.next()?.parse::<u32>().ok()? == id).then(|| name.to_string())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_lines() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\nalice:x:1000:1000::/home/alice:/bin/sh\n";
        assert_eq!(accounts::find(passwd, 1000).as_deref(), Some("alice"));
        assert_eq!(accounts::find(passwd, 0).as_deref(), Some("root"));
        assert_eq!(accounts::find(passwd, 5), None);
    }

    #[test]
    fn an_account_file_is_read_again_once_it_changed() {
        let dir = tempfile::tempdir().unwrap();
        let path: &'static str = Box::leak(
            dir.path()
                .join("passwd")
                .to_string_lossy()
                .into_owned()
                .into_boxed_str(),
        );
        std::fs::write(path, "alice:x:1000:1000::/home/alice:/bin/sh\n").unwrap();
        assert!(
            !accounts::same_text_twice(path),
            "a file changed just now is read each time"
        );
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(60);
        std::fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(old)
            .unwrap();
        assert!(
            accounts::same_text_twice(path),
            "an unchanged file is not read again"
        );
        let names = accounts::names_from(path);
        assert_eq!(names(1000).as_deref(), Some("alice"));
        // Replaced by rename, as vipw and useradd do; and edited in place
        // with the same size.
        let next = dir.path().join("passwd.new");
        std::fs::write(&next, "bob:x:1000:1000::/home/bob:/bin/sh\n").unwrap();
        std::fs::rename(&next, path).unwrap();
        assert_eq!(names(1000).as_deref(), Some("bob"));
        std::fs::write(path, "eve:x:1000:1000::/home/bob:/bin/sh\n").unwrap();
        assert_eq!(names(1000).as_deref(), Some("eve"));
        std::fs::remove_file(path).unwrap();
        assert_eq!(names(1000), None, "a file gone names nobody");
    }

    #[test]
    fn edits_are_noticed_and_invalid_files_deny() {
        let dir = tempfile::tempdir().unwrap();
        let paths = PolicyPaths {
            system: dir.path().join("system.toml"),
            user: dir.path().join("user.toml"),
        };
        std::fs::write(&paths.user, "[defaults]\naction = \"allow\"\n").unwrap();
        let store = PolicyStore::open(paths.clone()).unwrap();
        assert!(store.current().is_ok());
        std::fs::write(&paths.user, "[defaults]\naction = \"perhaps\"\n").unwrap();
        let error = store.current().unwrap_err();
        assert!(matches!(*error, LoadError::Invalid(_)), "{error:?}");
        assert!(error.to_string().contains("user.toml:2:"), "{error}");
        std::fs::write(&paths.user, "[defaults]\naction = \"deny\"\n").unwrap();
        assert!(store.current().is_ok());
        // Invalid at start-up: refuse to start, naming the place.
        std::fs::write(&paths.system, "[[rule]]\nname = \"x\"\n").unwrap();
        let error = PolicyStore::open(paths).err().unwrap().to_string();
        assert!(error.contains("system.toml:1:"), "{error}");
    }
}
