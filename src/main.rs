//! The muxguard binary: parse the command line and run it (see lib.rs).

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    muxguard::run(muxguard::cli::Cli::parse())
}
