//! Reading a policy file: its text goes to the pure parser
//! ([`Policy::parse`]); what could not be read is an error with the file's
//! name, and a file that is not there is no policy.

use std::path::{Path, PathBuf};

use super::policy::{Policy, PolicyError};

/// Why [`load`] could not produce a policy.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{}: cannot read the policy file: {source}", file.display())]
    Read {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Invalid(#[from] PolicyError),
}

/// Reads and parses a policy file.
#[cfg(test)]
pub fn load(path: &Path) -> Result<Policy, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
        file: path.to_owned(),
        source,
    })?;
    Ok(Policy::parse(&text, path)?)
}

/// Like [`load`], but a file that does not exist is `Ok(None)`: both policy
/// files are optional. Any other failure (permissions, a directory, invalid
/// UTF-8) is an error, because silently ignoring a policy the person wrote
/// could loosen what they meant.
pub fn load_optional(path: &Path) -> Result<Option<Policy>, LoadError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(Policy::parse(&text, path)?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(LoadError::Read {
            file: path.to_owned(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::policy::Action;

    #[test]
    fn load_reads_and_reports_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.toml");
        assert!(load_optional(&path).unwrap().is_none());
        let e = load(&path).unwrap_err();
        assert!(matches!(e, LoadError::Read { .. }));
        assert!(e.to_string().contains("cannot read the policy file"), "{e}");

        std::fs::write(&path, "[defaults]\naction = \"deny\"\n").unwrap();
        let p = load(&path).unwrap();
        assert_eq!(p.file(), path);
        assert_eq!(p.defaults().action, Some(Action::Deny));

        std::fs::write(&path, "[defaults]\n\naction = \"nope\"\n").unwrap();
        let e = load_optional(&path).unwrap_err();
        assert!(
            e.to_string()
                .starts_with(&format!("{}:3:10: ", path.display())),
            "{e}"
        );

        // A directory is not "no policy".
        assert!(load_optional(dir.path()).is_err());
    }
}
