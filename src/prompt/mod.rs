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

/// Makes text from a requester safe to show on one line: control
/// characters (newlines above all, which could forge a "requested by" line
/// or push the real one out of view) are shown escaped.
pub fn one_line(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

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
    /// Nobody could be asked this way (the reason says why).
    Unavailable(String),
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

    /// A prompter that can ask nobody (tests, `--no-prompt`).
    pub fn none() -> Prompter {
        Prompter {
            notifications: None,
            askpass: None,
            system_bus: None,
            no_notifications: Some("prompts are disabled".into()),
        }
    }

    /// Asks with the best available means; `Unavailable` if none works.
    pub async fn ask(&self, text: &PromptText, timeout: Duration) -> Answer {
        let mut why = self.no_notifications.clone().unwrap_or_default();
        if let Some(notifications) = &self.notifications {
            match notifications.ask(text, timeout).await {
                Answer::Unavailable(reason) => why = reason,
                answer => return answer,
            }
        }
        if let Some(askpass) = &self.askpass {
            return askpass
                .confirm(&format!("{}\n\n{}", text.summary, text.body), timeout)
                .await;
        }
        Answer::Unavailable(format!("{why}; and no SSH_ASKPASS with a display"))
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
        let answer = prompter.ask(&text, timeout).await;
        println!("answer: {}", answer.describe());
        Ok(if answer.allows() {
            std::process::ExitCode::SUCCESS
        } else {
            std::process::ExitCode::FAILURE
        })
    })
}

/// Identical asks share one prompt and one answer; an "Allow for …" answer
/// covers the same host + program + kind for a while.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AskKey {
    pub host: String,
    pub program: String,
    pub kind: String,
}

/// One requester, for flood protection: a uid and its program.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RequesterKey {
    pub uid: u32,
    pub program: String,
}

/// The memory around prompts, shared by every connection of a master.
#[derive(Default)]
pub struct PromptMemory {
    remembered: Mutex<HashMap<AskKey, Instant>>,
    cooling: Mutex<HashMap<RequesterKey, Instant>>,
    open: Mutex<HashMap<AskKey, watch::Receiver<Option<Answer>>>>,
    open_by_requester: Mutex<HashMap<RequesterKey, AskKey>>,
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

impl PromptMemory {
    /// Asks, unless a remembered answer or the cool-down decides first.
    pub async fn ask(
        &self,
        prompter: &Prompter,
        key: AskKey,
        requester: RequesterKey,
        text: &PromptText,
        times: PromptTimes,
    ) -> Asked {
        let now = Instant::now();
        if let Some(until) = self
            .remembered
            .lock()
            .expect("not poisoned")
            .get(&key)
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
            .get(&requester)
            .copied()
            && until > now
        {
            return Asked::CoolingDown;
        }
        // Join an identical open prompt, or open one.
        let (sender, shared_receiver) = {
            let mut open = self.open.lock().expect("not poisoned");
            match open.get(&key) {
                Some(receiver) => (None, Some(receiver.clone())),
                None => {
                    let mut by_requester = self.open_by_requester.lock().expect("not poisoned");
                    if by_requester.contains_key(&requester) {
                        return Asked::Busy;
                    }
                    let (sender, receiver) = watch::channel(None);
                    open.insert(key.clone(), receiver);
                    by_requester.insert(requester.clone(), key.clone());
                    (Some(sender), None)
                }
            }
        };
        if let Some(mut receiver) = shared_receiver {
            let answer = receiver
                .wait_for(Option::is_some)
                .await
                .ok()
                .and_then(|a| a.clone())
                .unwrap_or(Answer::Unavailable("the shared prompt went away".into()));
            return Asked::Prompted {
                answer,
                shared: true,
            };
        }
        let sender = sender.expect("set when not shared");
        let answer = prompter.ask(text, times.timeout).await;
        match &answer {
            Answer::AllowRemember => {
                self.remembered
                    .lock()
                    .expect("not poisoned")
                    .insert(key.clone(), Instant::now() + times.remember);
            }
            Answer::Deny | Answer::Dismissed(_) | Answer::TimedOut => {
                self.cooling
                    .lock()
                    .expect("not poisoned")
                    .insert(requester.clone(), Instant::now() + times.cooldown);
            }
            Answer::AllowOnce | Answer::Unavailable(_) => {}
        }
        self.open.lock().expect("not poisoned").remove(&key);
        self.open_by_requester
            .lock()
            .expect("not poisoned")
            .remove(&requester);
        let _ = sender.send(Some(answer.clone()));
        Asked::Prompted {
            answer,
            shared: false,
        }
    }

    /// Remembered answers still in force, with seconds left.
    pub fn remembered(&self) -> Vec<(AskKey, u64)> {
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
            (&a.0.host, &a.0.program, &a.0.kind).cmp(&(&b.0.host, &b.0.program, &b.0.kind))
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(kind: &str) -> AskKey {
        AskKey {
            host: "h".into(),
            program: "/usr/bin/git".into(),
            kind: kind.into(),
        }
    }

    fn requester() -> RequesterKey {
        RequesterKey {
            uid: 1000,
            program: "/usr/bin/git".into(),
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

    #[test]
    fn requester_text_stays_on_one_line() {
        assert_eq!(
            one_line("true\nrequested by git"),
            "true\\nrequested by git"
        );
        assert_eq!(one_line("a\u{1b}[2Jb\tc"), "a\\u{1b}[2Jb\\tc");
        assert_eq!(one_line("plain é"), "plain é");
    }

    #[test]
    fn nobody_to_ask_is_unavailable_and_not_remembered() {
        crate::test_support::runtime().block_on(async {
            let memory = PromptMemory::default();
            let prompter = Prompter::none();
            let asked = memory
                .ask(&prompter, key("exec"), requester(), &text(), times())
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
                .ask(&prompter, key("exec"), requester(), &text(), times())
                .await;
            assert!(matches!(again, Asked::Prompted { .. }));
        });
    }

    #[test]
    fn remembered_answers_are_listed_and_forgotten() {
        let memory = PromptMemory::default();
        memory
            .remembered
            .lock()
            .unwrap()
            .insert(key("exec"), Instant::now() + Duration::from_secs(600));
        let listed = memory.remembered();
        assert_eq!(listed.len(), 1);
        assert!(listed[0].1 > 590);
        let asked = crate::test_support::runtime().block_on(memory.ask(
            &Prompter::none(),
            key("exec"),
            requester(),
            &text(),
            times(),
        ));
        assert!(matches!(asked, Asked::Remembered { .. }));
        assert_eq!(memory.forget(), 1);
        assert!(memory.remembered().is_empty());
    }

    #[test]
    fn cool_down_after_a_refusal() {
        let memory = PromptMemory::default();
        memory
            .cooling
            .lock()
            .unwrap()
            .insert(requester(), Instant::now() + Duration::from_secs(30));
        let asked = crate::test_support::runtime().block_on(memory.ask(
            &Prompter::none(),
            key("shell"),
            requester(),
            &text(),
            times(),
        ));
        assert_eq!(asked, Asked::CoolingDown);
    }
}
