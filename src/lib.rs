//! muxguard: a security-hardened replacement for the OpenSSH connection-sharing
//! master. The binary (`src/main.rs`) is a thin wrapper around this library.

pub mod access;
pub mod audit;
pub mod cli;
pub mod config;
pub mod connect;
pub mod daemon;
pub mod ensure;
pub mod helper;
pub mod master;
pub mod mux;
pub mod paths;
pub mod policy_cmd;
pub mod prompt;
pub mod proxy;
pub mod sandbox;
pub mod sandbox_cmd;
pub mod spill;
pub mod status;
pub mod upstream;

/// Helpers shared by the unit tests.
#[cfg(test)]
pub(crate) mod test_support {
    /// A current-thread runtime with I/O and timers, as the master uses.
    pub fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime")
    }
}
