//! The muxguard binary: parse the command line, run the subcommand, turn
//! errors into one `muxguard: …` line and a non-zero exit status.

use std::process::ExitCode;

use clap::Parser;
use muxguard::cli::{Cli, Command};
use tracing_subscriber::fmt::writer::MakeWriterExt;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(&cli.command, Command::Connect(_)) {
        muxguard::sandbox::close_inherited_fds();
    }
    if matches!(&cli.command, Command::Connect(a) if a.daemon_child) {
        muxguard::daemon::mark_child();
    }
    init_logging(
        cli.verbose,
        matches!(&cli.command, Command::Connect(a) if a.foreground),
    );
    let result = match cli.command {
        Command::Connect(args) => muxguard::connect::run(args),
        Command::Ensure(args) => muxguard::ensure::run(args),
        Command::Policy(command) => muxguard::policy_cmd::run(command),
        Command::Audit(command) => muxguard::audit::run(command),
        Command::Status(args) => muxguard::status::run(args, "muxguard-status"),
        Command::Forget(args) => muxguard::status::run(args, "muxguard-forget"),
        Command::Ls => muxguard::status::list(),
        Command::PromptTest { timeout } => muxguard::prompt::prompt_test(timeout),
        Command::Sandbox(args) => muxguard::sandbox_cmd::run(args),
        Command::ProcHelper => muxguard::helper::serve_proc().map(|()| ExitCode::SUCCESS),
        Command::AskpassBroker { program } => {
            muxguard::prompt::broker::serve(program).map(|()| ExitCode::SUCCESS)
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
            muxguard::daemon::detached()
                || *meta.level() <= tracing::Level::WARN
                || !muxguard::daemon::is_child()
        }))
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}
