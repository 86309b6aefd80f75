//! Command-line interface: one subcommand per job, options mirroring ssh's
//! own where they mean the same thing.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::{Persist, SshOptions};

#[derive(Debug, Parser)]
#[command(
    name = "muxguard",
    version = concat!(env!("CARGO_PKG_VERSION"), " (", env!("MUXGUARD_BUILD"), ")"),
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
    /// Show the ssh_config block that makes ssh start and share masters on
    /// demand (Match exec running ensure), and where it goes; with
    /// --append, add it at the end of the file
    Setup(SetupArgs),
    /// Check a policy file, or explain the decision for a request
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Show the audit log as a table (or check it: `audit verify`)
    Audit(AuditArgs),
    /// Show what a running master holds: its connection, sessions with
    /// their buffers, forwards, and remembered prompt answers
    Status(StatusArgs),
    /// Drop a running master's remembered prompt answers
    Forget(StatusArgs),
    /// List every live master of this user with its sessions and forwards
    Ls,
    /// Show a sample confirmation prompt, to check the desktop set-up, and
    /// print what answered
    PromptTest {
        /// How long to wait for an answer
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
    /// Show the sandbox a master for a destination gets, and try reads,
    /// writes and connections under exactly those rules (in this process,
    /// which exits afterwards)
    Sandbox(SandboxArgs),
    /// Print the manual page (roff), for `man -l -` or to install as
    /// muxguard.1; with --dir, write it and one page per subcommand there
    Man {
        /// Write muxguard.1 and muxguard-SUBCOMMAND.1 into this directory
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// Print shell completions for bash, zsh, fish, elvish or powershell
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Internal: runs SSH_ASKPASS for a sandboxed master
    #[command(hide = true)]
    AskpassBroker { program: PathBuf },
    /// Internal: reads /proc links of connecting processes for a sandboxed
    /// master
    #[command(hide = true)]
    ProcHelper,
}

#[derive(Debug, clap::Args)]
pub struct SetupArgs {
    /// The ssh_config file (default: ~/.ssh/config). For another file, the
    /// block's ensure reads that file too (-F FILE), as for `ssh -F FILE`
    #[arg(short = 'F', long = "config", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Append the block at the end of the file after showing it, keeping a
    /// copy of the file as FILE.muxguard-backup; creates ~/.ssh and
    /// ~/.ssh/muxguard (mode 0700) if missing. Refuses when the file
    /// already has the block, is a symbolic link, or it or its directory
    /// is another user's or writable by others
    #[arg(long)]
    pub append: bool,
}

#[derive(Debug, clap::Args)]
pub struct SandboxArgs {
    /// Try to read this file under the sandbox (repeatable)
    #[arg(long, value_name = "PATH")]
    pub try_read: Vec<PathBuf>,
    /// Try to create (or append to) this file under the sandbox (repeatable)
    #[arg(long, value_name = "PATH")]
    pub try_write: Vec<PathBuf>,
    /// Try to connect to this TCP port on 127.0.0.1 (repeatable)
    #[arg(long, value_name = "PORT")]
    pub try_connect: Vec<u16>,
    /// Control socket path, as for connect
    #[arg(long, value_name = "PATH")]
    pub control_path: Option<PathBuf>,
    /// Audit log file, as for connect
    #[arg(long, value_name = "FILE")]
    pub audit_log: Option<PathBuf>,
    #[command(flatten)]
    pub policy: PolicyFiles,
    #[command(flatten)]
    pub ssh: SshOptions,
}

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct AuditArgs {
    #[command(subcommand)]
    pub command: Option<AuditCommand>,
    /// The log file (default: $XDG_STATE_HOME/muxguard/audit.jsonl)
    #[arg(long, value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Only this host (ssh pattern, matched against the destination)
    #[arg(long, value_name = "HOST")]
    pub host: Option<String>,
    /// Only requests since then: an age (2h, 30m) or a UTC time
    #[arg(long, value_name = "AGE|TIME")]
    pub since: Option<String>,
    /// Only this kind (shell exec subsystem forward-local … control)
    #[arg(long, value_name = "KIND")]
    pub kind: Option<String>,
    /// Only this decision (allow, direct, deny)
    #[arg(long, value_name = "ACTION")]
    pub decision: Option<String>,
    /// Keep showing new requests as they are written
    #[arg(long)]
    pub follow: bool,
    /// Print the matching raw records (JSON Lines) instead of a table
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check every hash chain in the log: exit 0 if intact, 1 with the
    /// first broken link (line number and why) if not
    Verify {
        /// The log file (default: $XDG_STATE_HOME/muxguard/audit.jsonl)
        file: Option<PathBuf>,
    },
}

/// Where the policy files are (both flags default to the standard places).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct PolicyFiles {
    /// User policy file (default: $XDG_CONFIG_HOME/muxguard/policy.toml)
    #[arg(long = "policy", value_name = "FILE")]
    pub user_policy: Option<PathBuf>,
    /// System policy file, the administrator's ceiling (default:
    /// /etc/muxguard/policy.toml)
    #[arg(long = "system-policy", value_name = "FILE")]
    pub system_policy: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Validate a policy file (or both standard ones): exit 0 if valid,
    /// 1 with file:line:column: reason if not
    Check {
        /// The file to check (default: the system and user files)
        file: Option<PathBuf>,
        #[command(flatten)]
        files: PolicyFiles,
    },
    /// Print the decision for a request and which rule in which file made
    /// it
    Explain(ExplainArgs),
}

#[derive(Debug, clap::Args)]
pub struct ExplainArgs {
    /// The destination as typed (alias) and as resolved (hostname)
    #[arg(long, value_name = "HOST")]
    pub host: String,
    /// The resolved host name, if it differs from --host
    #[arg(long, value_name = "HOSTNAME")]
    pub hostname: Option<String>,
    /// Remote user (default: your user name)
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,
    /// The requesting program's executable (e.g. /usr/bin/git)
    #[arg(long, value_name = "PATH")]
    pub program: Option<PathBuf>,
    /// shell exec subsystem forward-local forward-remote forward-dynamic
    /// stdio-forward proxy control (default: exec with --command, else
    /// shell)
    #[arg(long, value_name = "KIND")]
    pub kind: Option<String>,
    /// The remote command, subsystem or forward target
    #[arg(long, value_name = "COMMAND")]
    pub command: Option<String>,
    /// For a forward: the local TCP port (the -L/-D listening port, the -R
    /// target port), matched against rules' `ports`
    #[arg(long, value_name = "PORT")]
    pub port: Option<u16>,
    #[command(flatten)]
    pub files: PolicyFiles,
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
    /// Audit log file (default: the system policy's audit_log, else
    /// $XDG_STATE_HOME/muxguard/audit.jsonl)
    #[arg(long, value_name = "FILE")]
    pub audit_log: Option<PathBuf>,
    /// Run without the Landlock sandbox and let debuggers attach. For
    /// debugging muxguard only: it is logged as a warning, recorded in the
    /// audit log and shown by `muxguard status`
    #[arg(long)]
    pub no_sandbox: bool,
    /// Control connections open at once; more are closed at once, logged
    /// and audited (default: as many as the descriptor limit leaves room
    /// for, at most 1000)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_clients: Option<u32>,
    /// Keep every session on the one connection. By default, with an
    /// ssh-agent, bulk sessions next to an interactive one (or the other
    /// way round) go on a second connection, a lane, so typing never
    /// queues behind a transfer; that is one more login to the server
    #[arg(long)]
    pub no_lanes: bool,
    #[command(flatten)]
    pub policy: PolicyFiles,
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
    /// Keep every session on the one connection. By default, with an
    /// ssh-agent, bulk sessions next to an interactive one (or the other
    /// way round) go on a second connection, a lane, so typing never
    /// queues behind a transfer; that is one more login to the server
    #[arg(long)]
    pub no_lanes: bool,
    #[command(flatten)]
    pub policy: PolicyFiles,
    #[command(flatten)]
    pub ssh: SshOptions,
}

impl PolicyFiles {
    /// The flags again, for a child process.
    pub fn to_args(&self) -> Vec<std::ffi::OsString> {
        let mut args = Vec::new();
        if let Some(file) = &self.user_policy {
            args.push("--policy".into());
            args.push(file.into());
        }
        if let Some(file) = &self.system_policy {
            args.push("--system-policy".into());
            args.push(file.into());
        }
        args
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Control socket path (default: as for connect)
    #[arg(long, value_name = "PATH")]
    pub control_path: Option<PathBuf>,
    #[command(flatten)]
    pub ssh: SshOptions,
}

/// `muxguard man`: the manual pages, generated from these definitions so
/// they never disagree with `--help`. Without a directory, the main page
/// goes to stdout.
pub fn man_pages(dir: Option<&std::path::Path>) -> anyhow::Result<std::process::ExitCode> {
    use anyhow::Context;
    use clap::CommandFactory;
    let render = |command: clap::Command| -> anyhow::Result<Vec<u8>> {
        let mut page = Vec::new();
        clap_mangen::Man::new(command).render(&mut page)?;
        Ok(page)
    };
    let mut top = Cli::command();
    let Some(dir) = dir else {
        std::io::Write::write_all(&mut std::io::stdout().lock(), &render(top)?)?;
        return Ok(std::process::ExitCode::SUCCESS);
    };
    // Subcommand pages are named as the main page's SEE ALSO names them.
    top.build();
    let mut pages = vec![("muxguard.1".to_owned(), render(top.clone())?)];
    let version = top.get_version().unwrap_or_default().to_owned();
    for sub in top
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
    {
        let name = format!("muxguard-{}", sub.get_name());
        let page = render(sub.clone().name(name.clone()).version(version.clone()))?;
        pages.push((format!("{name}.1"), page));
    }
    for (file, page) in pages {
        let path = dir.join(&file);
        std::fs::write(&path, page).with_context(|| format!("cannot write {}", path.display()))?;
        println!("{}", path.display());
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// `muxguard completions SHELL`.
pub fn print_completions(shell: clap_complete::Shell) -> anyhow::Result<std::process::ExitCode> {
    use clap::CommandFactory;
    clap_complete::generate(
        shell,
        &mut Cli::command(),
        "muxguard",
        &mut std::io::stdout(),
    );
    Ok(std::process::ExitCode::SUCCESS)
}
