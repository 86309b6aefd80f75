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

/// Expands the tokens of an `audit_log` setting: `%u` the user's name (its
/// uid when /etc/passwd does not know it), `%i` the uid, `%%` a `%`. A
/// system policy names one file per user this way, so that no user can
/// hold the lock of, or write into, another's log.
pub fn expand_path(setting: &std::path::Path, uid: u32, user: Option<&str>) -> std::path::PathBuf {
    let text = setting.to_string_lossy();
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('u') => match user {
                Some(name) => out.push_str(name),
                None => out.push_str(&uid.to_string()),
            },
            Some('i') => out.push_str(&uid.to_string()),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    std::path::PathBuf::from(out)
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

#[cfg(test)]
mod tests {
    use super::expand_path;
    use std::path::Path;

    #[test]
    fn per_user_tokens_expand() {
        let p = |s: &str, user| expand_path(Path::new(s), 1001, user);
        assert_eq!(
            p("/var/log/muxguard/%u.jsonl", Some("alice")),
            Path::new("/var/log/muxguard/alice.jsonl")
        );
        assert_eq!(
            p("/var/log/muxguard/%u.jsonl", None),
            Path::new("/var/log/muxguard/1001.jsonl")
        );
        assert_eq!(
            p("/l/%i/a%%b%x%", Some("alice")),
            Path::new("/l/1001/a%b%x%")
        );
        assert_eq!(
            p("/plain/audit.jsonl", Some("alice")),
            Path::new("/plain/audit.jsonl")
        );
    }
}
