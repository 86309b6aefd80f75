//! The tamper-evident audit log: hash-chained JSON Lines records (pure
//! model and verification in `chain`), and the file writer in `log`.

pub mod chain;
pub mod log;
pub mod recorder;

use std::process::ExitCode;

use crate::cli::AuditCommand;

/// The default log location.
pub fn default_path() -> std::path::PathBuf {
    crate::paths::state_dir().join("audit.jsonl")
}

/// `muxguard audit …`.
pub fn run(command: AuditCommand) -> anyhow::Result<ExitCode> {
    match command {
        AuditCommand::Verify { file } => {
            let path = file.unwrap_or_else(default_path);
            let bytes = log::read_log(&path)?;
            let report = chain::verify_bytes(&bytes);
            println!("{}: {report}", path.display());
            Ok(if report.is_ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}
