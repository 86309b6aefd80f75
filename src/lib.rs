//! muxguard: a security-hardened replacement for the OpenSSH connection-sharing
//! master. The binary (`src/main.rs`) is a thin wrapper around this library:
//! it parses the command line ([`cli`]) and calls [`run`]. Everything else
//! is crate-private, so that the compiler reports code nothing calls; the
//! fuzz targets reach the pure parsers through [`fuzzing`] (feature
//! `fuzzing`).

#![deny(unsafe_code)]
#![warn(clippy::undocumented_unsafe_blocks)]

use std::process::ExitCode;

use cli::{Cli, Command};

pub(crate) mod access;
pub(crate) mod audit;
pub mod cli;
pub(crate) mod codec;
pub(crate) mod config;
pub(crate) mod connect;
pub(crate) mod daemon;
pub(crate) mod endpoint;
pub(crate) mod ensure;
pub(crate) mod glob;
pub(crate) mod helper;
pub(crate) mod master;
pub(crate) mod mux;
pub(crate) mod paths;
pub(crate) mod policy_cmd;
pub(crate) mod procfs;
pub(crate) mod prompt;
pub(crate) mod sandbox;
pub(crate) mod sandbox_cmd;
pub(crate) mod scm;
pub(crate) mod setup;
pub(crate) mod spill;
pub(crate) mod state;
pub(crate) mod status;
pub(crate) mod upstream;

/// Runs one parsed command line: the subcommand, with errors turned into
/// one `muxguard: …` line and exit status 255.
pub fn run(cli: Cli) -> ExitCode {
    if matches!(&cli.command, Command::Connect(_)) {
        sandbox::close_inherited_fds();
    }
    if matches!(&cli.command, Command::Connect(a) if a.daemon_child) {
        daemon::mark_child();
    }
    init_logging(
        cli.verbose,
        matches!(&cli.command, Command::Connect(a) if a.foreground),
    );
    let result = match cli.command {
        Command::Connect(args) => connect::run(args),
        Command::Ensure(args) => ensure::run(args),
        Command::Setup(args) => setup::run(args),
        Command::Policy(command) => policy_cmd::run(command),
        Command::Audit(command) => audit::run(command),
        Command::Status(args) => status::run(args, "muxguard-status"),
        Command::Forget(args) => status::run(args, "muxguard-forget"),
        Command::Ls => status::list(),
        Command::PromptTest { timeout } => prompt::prompt_test(timeout),
        Command::Sandbox(args) => sandbox_cmd::run(args),
        Command::Man { dir } => cli::man_pages(dir.as_deref()),
        Command::Completions { shell } => cli::print_completions(shell),
        Command::ProcHelper => access::proc_helper::serve().map(|()| ExitCode::SUCCESS),
        Command::AskpassBroker { program } => {
            prompt::broker::serve(program).map(|()| ExitCode::SUCCESS)
        }
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("muxguard: {error:#}");
            ExitCode::from(255)
        }
    }
}

/// Masters log at info level; everything else only says what went wrong.
/// A background master shows only warnings on the user's terminal until it
/// has detached and its stderr is its log file. -v and MUXGUARD_LOG add
/// detail.
fn init_logging(verbose: u8, foreground: bool) {
    use tracing_subscriber::EnvFilter;
    use tracing_subscriber::fmt::writer::MakeWriterExt;
    let default = match (verbose, foreground) {
        (0, false) => "muxguard=warn",
        (0, true) => "muxguard=info",
        (1, _) => "muxguard=debug",
        _ => "muxguard=trace,russh=debug",
    };
    let filter =
        EnvFilter::try_from_env("MUXGUARD_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr.with_filter(|meta| {
            daemon::detached() || *meta.level() <= tracing::Level::WARN || !daemon::is_child()
        }))
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}

/// The pure parsers, for the fuzz targets in `fuzz/` only: not an API.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::access::policy;
    pub use crate::audit::{chain, table};
    pub use crate::mux::proxy::packet;
    pub use crate::mux::wire;
    pub use crate::upstream::known_hosts;
}

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

    /// The first `Some` of `what`, asked every 5 ms for up to 5 s: for what
    /// another process shows a moment later (an exec, a child).
    pub fn eventually<T>(what: &str, mut poll: impl FnMut() -> Option<T>) -> T {
        for _ in 0..1000 {
            if let Some(found) = poll() {
                return found;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        panic!("timed out waiting for {what}");
    }
}
