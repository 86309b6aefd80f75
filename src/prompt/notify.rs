//! Asking through desktop notifications with action buttons
//! (`org.freedesktop.Notifications`), with zbus directly.
//!
//! notify-rust is not used: measured, it subscribed to the answer signals
//! only after `Notify` returned (an immediate answer was missed) and took
//! `ActionInvoked` from any sender on the bus (a forged click was accepted).
//!
//! How an answer is read, and why:
//! - The server's unique bus name is looked up first, and both the `Notify`
//!   call and the one signal subscription name it: a signal from any other
//!   connection (a forged click) never matches, and a server replaced
//!   mid-prompt cannot answer for the old one.
//! - `ActionInvoked` and `NotificationClosed` arrive on *one* stream, in bus
//!   order. A real server sends `ActionInvoked` and then
//!   `NotificationClosed(2)` microseconds apart when a person clicks; with
//!   two streams both were ready at once and the click was lost at random.
//! - The subscription exists before `Notify` is called, so an answer sent
//!   together with the reply is not missed.
//! - Every bus call is bounded (the connection's method timeout), so a hung
//!   server fails the prompt instead of holding the request forever.

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
}

/// Action keys. None of them is "default": a click on the notification
/// body invokes "default", and that must never mean allow.
const DENY: &str = "muxguard-deny";
const ALLOW_ONCE: &str = "muxguard-allow-once";
const ALLOW_REMEMBER: &str = "muxguard-allow-remember";

/// Every call on the session bus answers within this or fails: a hung
/// notification server fails its prompt, it does not hold the request.
pub const BUS_CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// How long closing an answered notification may delay the answer.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

const SERVICE: &str = "org.freedesktop.Notifications";
const OBJECT_PATH: &str = "/org/freedesktop/Notifications";

/// A session-bus connection used for prompts.
#[derive(Clone)]
pub struct NotificationPrompter {
    connection: zbus::Connection,
}

/// The notification server as found for one prompt.
struct Server<'c> {
    proxy: NotificationsProxy<'c>,
    /// Its unique bus name, which every answer must come from.
    owner: zbus::names::OwnedUniqueName,
    markup: bool,
}

impl NotificationPrompter {
    /// Connects to the session bus; `Err` (with the reason) when there is
    /// none.
    pub async fn connect() -> Result<NotificationPrompter, String> {
        let builder = zbus::connection::Builder::session().method_timeout(BUS_CALL_TIMEOUT);
        match tokio::time::timeout(BUS_CALL_TIMEOUT, builder.build()).await {
            Ok(Ok(connection)) => Ok(NotificationPrompter { connection }),
            Ok(Err(e)) => Err(format!("no D-Bus session bus: {e}")),
            Err(_) => Err("the D-Bus session bus did not answer".into()),
        }
    }

    pub fn connection(&self) -> &zbus::Connection {
        &self.connection
    }

    /// Whether a notification server with action buttons is there now.
    pub async fn available(&self) -> Result<(), String> {
        match self.server().await {
            Ok(_) => Ok(()),
            Err(answer) => Err(answer.describe()),
        }
    }

    /// Finds the server: `Unavailable` when there is none (none running
    /// and none the bus can start) or it has no buttons; `Failed` when the
    /// bus or the server misbehaves.
    async fn server(&self) -> Result<Server<'_>, Answer> {
        let failed = |what: &str, e: zbus::Error| Answer::Failed(format!("{what}: {e}"));
        let bus = zbus::fdo::DBusProxy::new(&self.connection)
            .await
            .map_err(|e| failed("session bus", e))?;
        let name = zbus::names::BusName::try_from(SERVICE).expect("a valid bus name");
        let owner = match bus.get_name_owner(name.clone()).await {
            Ok(owner) => owner,
            Err(zbus::fdo::Error::NameHasNoOwner(_)) => {
                // Servers such as dunst and mako are often started by the
                // bus on first use.
                let well_known =
                    zbus::names::WellKnownName::try_from(SERVICE).expect("a valid bus name");
                if bus.start_service_by_name(well_known, 0).await.is_err() {
                    return Err(Answer::Unavailable(
                        "no notification server on the session bus".into(),
                    ));
                }
                bus.get_name_owner(name)
                    .await
                    .map_err(|e| failed("notification server", e.into()))?
            }
            Err(e) => return Err(failed("session bus", e.into())),
        };
        let proxy = NotificationsProxy::builder(&self.connection)
            .destination(owner.clone())
            .path(OBJECT_PATH)
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await
            .map_err(|e| failed("notification server", e))?;
        let capabilities = proxy
            .get_capabilities()
            .await
            .map_err(|e| failed("notification server", e))?;
        if !capabilities.iter().any(|c| c == "actions") {
            return Err(Answer::Unavailable(
                "the notification server cannot show action buttons".into(),
            ));
        }
        Ok(Server {
            proxy,
            owner,
            markup: capabilities.iter().any(|c| c == "body-markup"),
        })
    }

    /// Shows the prompt and waits for the answer, at most `timeout`.
    pub async fn ask(&self, text: &PromptText, timeout: Duration) -> Answer {
        let server = match self.server().await {
            Ok(server) => server,
            Err(answer) => return answer,
        };
        // Subscribe before Notify, so that an immediate answer is not lost.
        let mut signals = match self.subscribe(&server).await {
            Ok(signals) => signals,
            Err(e) => return Answer::Failed(format!("cannot watch for the answer: {e}")),
        };
        let body = if server.markup {
            super::text::escape_markup(&text.body)
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
        let id = match server
            .proxy
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
            .await
        {
            Ok(id) => id,
            Err(e) => return Answer::Failed(format!("the notification server refused it: {e}")),
        };
        let answer = tokio::time::timeout(timeout, first_answer(&mut signals, id))
            .await
            .unwrap_or(Answer::TimedOut);
        // The server does not remove an answered notification by itself.
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, server.proxy.close_notification(id)).await;
        answer
    }

    /// Both answer signals of this server, on one stream in bus order.
    async fn subscribe(&self, server: &Server<'_>) -> zbus::Result<zbus::MessageStream> {
        let rule = zbus::MatchRule::builder()
            .msg_type(zbus::message::Type::Signal)
            .sender(server.owner.clone())
            .interface(SERVICE)
            .path(OBJECT_PATH)
            .build()?;
        zbus::MessageStream::for_match_rule(rule, &self.connection, None).await
    }
}

/// The first answer to notification `id`: a button, or its closing,
/// whichever the server sent first.
async fn first_answer(signals: &mut zbus::MessageStream, id: u32) -> Answer {
    while let Some(message) = signals.next().await {
        let Ok(message) = message else { continue };
        let header = message.header();
        match header.member().map(|m| m.as_str()) {
            Some("ActionInvoked") => {
                if let Ok((of, key)) = message.body().deserialize::<(u32, String)>()
                    && of == id
                {
                    return answer_for(&key);
                }
            }
            Some("NotificationClosed") => {
                if let Ok((of, reason)) = message.body().deserialize::<(u32, u32)>()
                    && of == id
                {
                    return Answer::Dismissed(close_reason(reason));
                }
            }
            _ => {}
        }
    }
    Answer::Failed("the session bus connection ended".into())
}

fn answer_for(action_key: &str) -> Answer {
    match action_key {
        ALLOW_ONCE => Answer::AllowOnce,
        ALLOW_REMEMBER => Answer::AllowRemember,
        DENY => Answer::Deny,
        // "default" (a click on the body) or anything else.
        other => Answer::Dismissed(format!("action {other:?}")),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_three_buttons_are_answers() {
        assert_eq!(answer_for(ALLOW_ONCE), Answer::AllowOnce);
        assert_eq!(answer_for(ALLOW_REMEMBER), Answer::AllowRemember);
        assert_eq!(answer_for(DENY), Answer::Deny);
        // A click on the body is "default": not allow.
        assert!(matches!(answer_for("default"), Answer::Dismissed(_)));
        assert!(matches!(answer_for(""), Answer::Dismissed(_)));
    }
}
