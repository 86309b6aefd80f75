//! The OpenSSH mux protocol (version 4), master side.

pub mod cmdline;
pub mod escape;
pub mod fdpass;
pub mod limits;
pub mod passed_fd;
pub mod probe;
pub mod proxy;
mod requests;
pub mod server;
pub mod session;
pub mod wire;
