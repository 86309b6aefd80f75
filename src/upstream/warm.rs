//! One session channel opened ahead on the first connection, so that a new
//! session costs one round trip (its request) instead of two (channel open,
//! then request). OpenSSH's master opens the channel when the client asks;
//! on a link with a 50 ms round trip that is 50 ms of every `ssh host cmd`.
//!
//! The warm channel carries no request until a session takes it: nothing
//! runs on the server unasked (sshd starts nothing for a bare channel). It
//! counts against the server's MaxSessions like any session; when the
//! server refuses it, there is simply none, and sessions open their own.
//! It closes with the connection.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::FutureExt;
use russh::client::{Handle, Msg};
use russh::{Channel, ChannelMsg};

use super::connect::ClientHandler;

/// The warm channel of one connection, if there is one.
#[derive(Default)]
pub struct WarmChannel {
    ready: Mutex<Option<Channel<Msg>>>,
    /// A refill is under way (at most one at a time).
    filling: AtomicBool,
}

impl WarmChannel {
    /// The warm channel, if one is ready and still open.
    pub fn take(&self) -> Option<Channel<Msg>> {
        let mut channel = self.ready.lock().expect("not poisoned").take()?;
        // A channel the server closed meanwhile has its CLOSE (or the end
        // of the connection) waiting; anything else a bare channel can get
        // (window adjustments) means nothing yet.
        while let Some(message) = channel.wait().now_or_never() {
            match message {
                None | Some(ChannelMsg::Close | ChannelMsg::Eof) => return None,
                Some(_) => {}
            }
        }
        Some(channel)
    }

    pub fn is_ready(&self) -> bool {
        self.ready.lock().expect("not poisoned").is_some()
    }

    /// Opens a new warm channel in the background unless one is ready or
    /// being opened.
    pub fn refill(self: &Arc<Self>, connection: &Arc<Handle<ClientHandler>>) {
        if self.is_ready() || self.filling.swap(true, Ordering::AcqRel) {
            return;
        }
        let warm = Arc::clone(self);
        let connection = Arc::clone(connection);
        tokio::spawn(async move {
            match connection.channel_open_session().await {
                Ok(channel) => {
                    // Only refills fill the slot, one at a time, so it is
                    // empty; were it not, the older channel is closed, as
                    // russh does not close a dropped one.
                    let older = warm.ready.lock().expect("not poisoned").replace(channel);
                    if let Some(older) = older {
                        let _ = older.close().await;
                    }
                }
                // MaxSessions reached, or the connection is going: sessions
                // open their own channels as OpenSSH's master does.
                Err(e) => tracing::debug!("no warm session channel: {e}"),
            }
            warm.filling.store(false, Ordering::Release);
        });
    }
}

/// A refill of a connection's warm channel, due once the session that took
/// the last one has sent its request: done when this is dropped. Opening
/// the next channel before that would put its CHANNEL_OPEN, and the
/// server's work on it, ahead of the request someone is waiting for.
pub struct RefillWhenDropped {
    warm: Arc<WarmChannel>,
    connection: Arc<Handle<ClientHandler>>,
}

impl RefillWhenDropped {
    pub fn new(warm: &Arc<WarmChannel>, connection: &Arc<Handle<ClientHandler>>) -> Self {
        RefillWhenDropped {
            warm: Arc::clone(warm),
            connection: Arc::clone(connection),
        }
    }
}

impl Drop for RefillWhenDropped {
    fn drop(&mut self) {
        self.warm.refill(&self.connection);
    }
}
