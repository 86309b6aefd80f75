//! `ssh -O proxy`: the client runs its whole SSH connection layer over the
//! control socket, and the master translates it onto its russh connection
//! (russh 0.65 cannot relay raw channel messages).
//!
//! Proxy mode is dangerous: a proxy client can open any channel and make
//! any request it likes, so only a policy rule naming the kind "proxy"
//! admits it. Inside, each exec/shell/subsystem, direct-tcpip/streamlocal
//! channel and tcpip-forward still goes through the policy and the audit
//! log, one decision per request, as the same request made through the
//! ordinary mux protocol would.

mod channel;
mod connection;
pub mod packet;

pub use connection::ProxyError;
pub(crate) use connection::serve;
