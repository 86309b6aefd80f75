//! The one SSH connection to the server, held with russh.

pub mod auth;
pub mod connect;
pub mod forward;
pub mod known_hosts;
pub mod lanes;
pub mod overflow;
pub mod pacing;
pub mod socket;
pub mod socks;
pub mod ttymodes;
pub mod uplink;
pub mod warm;
