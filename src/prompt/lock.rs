//! Whether the desktop session is locked: logind's `LockedHint` for our
//! session, else the freedesktop ScreenSaver's `GetActive`. While locked,
//! `ask` becomes the policy's `when_locked`; a state that cannot be
//! determined counts as unlocked and is reported as unknown.

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockState {
    Locked { source: &'static str },
    Unlocked { source: &'static str },
    Unknown,
}

impl LockState {
    pub fn is_locked(&self) -> bool {
        matches!(self, LockState::Locked { .. })
    }

    pub fn describe(&self) -> &'static str {
        match self {
            LockState::Locked { source } | LockState::Unlocked { source } => source,
            LockState::Unknown => "lock state unknown",
        }
    }
}

/// Asks logind (system bus) first, then the ScreenSaver (session bus).
pub async fn query(
    session_bus: Option<&zbus::Connection>,
    system_bus: Option<&zbus::Connection>,
) -> LockState {
    if let Some(system) = system_bus
        && let Some(locked) = logind_locked_hint(system).await
    {
        return if locked {
            LockState::Locked {
                source: "logind LockedHint",
            }
        } else {
            LockState::Unlocked {
                source: "logind LockedHint",
            }
        };
    }
    if let Some(session) = session_bus
        && let Some(active) = screensaver_active(session).await
    {
        return if active {
            LockState::Locked {
                source: "ScreenSaver.GetActive",
            }
        } else {
            LockState::Unlocked {
                source: "ScreenSaver.GetActive",
            }
        };
    }
    LockState::Unknown
}

async fn logind_locked_hint(system: &zbus::Connection) -> Option<bool> {
    // "auto" is the session of the calling process; a master started from
    // a desktop session stays in it (setsid does not change logind's view).
    let path = match std::env::var("XDG_SESSION_ID") {
        Ok(id) if !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric()) => {
            format!("/org/freedesktop/login1/session/{id}")
        }
        _ => "/org/freedesktop/login1/session/auto".to_string(),
    };
    let proxy = zbus::Proxy::new(
        system,
        "org.freedesktop.login1",
        path,
        "org.freedesktop.login1.Session",
    )
    .await
    .ok()?;
    proxy.get_property::<bool>("LockedHint").await.ok()
}

async fn screensaver_active(session: &zbus::Connection) -> Option<bool> {
    let proxy = zbus::Proxy::new(
        session,
        "org.freedesktop.ScreenSaver",
        "/org/freedesktop/ScreenSaver",
        "org.freedesktop.ScreenSaver",
    )
    .await
    .ok()?;
    proxy.call::<_, _, bool>("GetActive", &()).await.ok()
}
