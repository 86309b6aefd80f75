//! Command-line interface: one subcommand per job, options mirroring ssh's
//! own where they mean the same thing.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::{Persist, SshOptions};

#[derive(Debug, Parser)]
#[command(
    name = "muxguard",
    version,
    about = "A security-hardened OpenSSH connection-sharing master",
    long_about = "muxguard holds one authenticated SSH connection per host and lets the stock \
                  OpenSSH client (and scp, sftp, rsync, git) reuse it through a control socket \
                  that speaks OpenSSH's own mux protocol."
)]
pub struct Cli {
    /// More log output (-v: debug, -vv: trace)
    #[arg(short = 'v', long = "verbose", action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Connect to a host and serve its control socket (in the background
    /// once the socket is live, unless --foreground)
    Connect(ConnectArgs),
    /// Make sure a live master serves DESTINATION, starting one in the
    /// background if needed; for `Match exec` in ssh_config
    Ensure(EnsureArgs),
}

#[derive(Debug, clap::Args)]
pub struct ConnectArgs {
    /// How long to stay without clients: yes (until -O exit), no (exit when
    /// the last client leaves), or a time such as 600 or 10m. Default:
    /// ssh's ControlPersist when it is set to a time, else yes
    #[arg(long, value_name = "DURATION|yes|no")]
    pub persist: Option<Persist>,
    /// Stay attached to the terminal and log to stderr
    #[arg(long)]
    pub foreground: bool,
    /// Control socket path (default: ssh's ControlPath, else
    /// $XDG_RUNTIME_DIR/muxguard/%C)
    #[arg(long, value_name = "PATH")]
    pub control_path: Option<PathBuf>,
    /// Internal: this process is the background master started by
    /// `connect`; report readiness on stdout, then detach
    #[arg(long, hide = true)]
    pub daemon_child: bool,
    #[command(flatten)]
    pub ssh: SshOptions,
}

#[derive(Debug, clap::Args)]
pub struct EnsureArgs {
    /// Control socket path (default: as for connect)
    #[arg(long, value_name = "PATH")]
    pub control_path: Option<PathBuf>,
    /// Persistence of a master started by ensure (see connect --persist)
    #[arg(long, value_name = "DURATION|yes|no")]
    pub persist: Option<Persist>,
    #[command(flatten)]
    pub ssh: SshOptions,
}
