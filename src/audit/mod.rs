//! The tamper-evident audit log: hash-chained JSON Lines records (pure
//! model and verification in `chain`), and the file writer in `log`.

pub mod chain;
pub mod journal;
pub mod log;
pub mod recorder;
pub mod table;

use std::process::ExitCode;

use crate::cli::{AuditArgs, AuditCommand};

/// The default log location.
pub fn default_path() -> std::path::PathBuf {
    crate::paths::state_dir().join("audit.jsonl")
}

/// `muxguard audit …`.
pub fn run(args: AuditArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        None => {
            let path = args.file.unwrap_or_else(default_path);
            let since = args
                .since
                .as_deref()
                .map(|s| table::parse_since(s, std::time::SystemTime::now()))
                .transpose()
                .map_err(|e| anyhow::anyhow!(e))?;
            let filter = table::Filter {
                host: args.host,
                since,
                kind: args.kind,
                decision: args.decision,
            };
            table::show(&path, &filter, args.json, args.follow)?;
            Ok(ExitCode::SUCCESS)
        }
        Some(AuditCommand::Verify { file }) => {
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
