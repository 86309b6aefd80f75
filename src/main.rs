//! The muxguard binary: parse the command line, run the subcommand, turn
//! errors into one `muxguard: …` line and a non-zero exit status.

use std::process::ExitCode;

use clap::Parser;
use muxguard::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(
        cli.verbose,
        matches!(&cli.command, Command::Connect(a) if a.foreground && !a.daemon_child),
    );
    let result = match cli.command {
        Command::Connect(args) => muxguard::connect::run(args),
        Command::Ensure(args) => muxguard::ensure::run(args),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            let text = format!("{error:#}");
            if text.starts_with('\n') || text.starts_with("muxguard:") {
                eprintln!("{}", text.trim_start_matches('\n'));
            } else {
                eprintln!("muxguard: {text}");
            }
            ExitCode::from(255)
        }
    }
}

/// Foreground masters log at info level; everything else only says what
/// went wrong. -v and RUST_LOG add detail.
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
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}
