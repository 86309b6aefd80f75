//! The file layer of `known_hosts`: reading the configured files (a
//! missing one is skipped, an unreadable one is an error naming it), the
//! lines naming a host with where they are, and appending a new host's key
//! safely. Everything it decides, it asks of the pure layers in the parent
//! module.

use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::*;

/// A known_hosts file that exists but could not be read.
#[derive(Debug, thiserror::Error)]
pub enum KnownHostsError {
    #[error("cannot read known hosts file {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
}

/// A line naming the host that had to be ignored because it is malformed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IgnoredLine {
    pub file: PathBuf,
    pub line: usize,
    pub reason: &'static str,
}

/// The key types known for a host, for ordering HostKeyAlgorithms the way
/// OpenSSH's `order_hostkeyalgs()` does: a server offering a type we already
/// know avoids a spurious [`HostKeyVerdict::Changed`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KnownAlgorithms {
    /// Types of the plain keys recorded for the host, first seen first.
    /// RSA keys appear as `ssh-rsa` whatever signature hash they are used
    /// with.
    pub algorithms: Vec<Algorithm>,
    /// Whether an `@cert-authority` line covers the host, in which case
    /// certificate algorithms deserve preference.
    pub has_cert_authority: bool,
}

/// The configured UserKnownHostsFile and GlobalKnownHostsFile lists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KnownHosts {
    user_files: Vec<PathBuf>,
    global_files: Vec<PathBuf>,
}

#[derive(Default)]
struct Loaded {
    entries: Vec<LocatedEntry>,
    ignored: Vec<IgnoredLine>,
}

impl KnownHosts {
    /// Paths must already have `~` and tokens expanded.  User files are
    /// searched before global ones, which only affects which line a verdict
    /// points at.
    pub fn new(user_files: Vec<PathBuf>, global_files: Vec<PathBuf>) -> Self {
        KnownHosts {
            user_files,
            global_files,
        }
    }

    /// Checks a presented host key against the files at the current time;
    /// see [`verify_entries`] for the meaning of `host` and `port`.
    pub fn verify(
        &self,
        host: &str,
        port: u16,
        key: &PublicKeyOrCertificate,
    ) -> Result<HostKeyVerdict, KnownHostsError> {
        // A clock before 1970 makes every certificate "not yet valid", which
        // is the safe way to be wrong.
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.verify_at(host, port, key, now)
    }

    /// [`KnownHosts::verify`] with an explicit time, in seconds since the
    /// Unix epoch.
    pub fn verify_at(
        &self,
        host: &str,
        port: u16,
        key: &PublicKeyOrCertificate,
        now: u64,
    ) -> Result<HostKeyVerdict, KnownHostsError> {
        let loaded = self.load(&lookup_names(host, port))?;
        Ok(verify_entries(&loaded.entries, host, port, key, now))
    }

    /// The key types recorded for `[host]:port` (no port-less fallback, as
    /// in OpenSSH).
    pub fn known_algorithms(
        &self,
        host: &str,
        port: u16,
    ) -> Result<KnownAlgorithms, KnownHostsError> {
        let name = lookup_name(host, port);
        let loaded = self.load(std::slice::from_ref(&name))?;
        let mut known = KnownAlgorithms::default();
        for e in &loaded.entries {
            match e.entry.marker {
                Marker::None => {
                    let algorithm = e.entry.key.algorithm();
                    if !known.algorithms.contains(&algorithm) {
                        known.algorithms.push(algorithm);
                    }
                }
                Marker::CertAuthority => known.has_cert_authority = true,
                Marker::Revoked => {}
            }
        }
        Ok(known)
    }

    /// Malformed lines that name the host (under any name [`Self::verify`]
    /// consults); worth a warning when a verdict is not what the user
    /// expected.  Malformed lines whose host field cannot be read at all are
    /// not included, since nothing ties them to this host.
    #[cfg(test)]
    pub fn ignored_lines(
        &self,
        host: &str,
        port: u16,
    ) -> Result<Vec<IgnoredLine>, KnownHostsError> {
        Ok(self.load(&lookup_names(host, port))?.ignored)
    }

    /// Reads every file and keeps the lines naming one of `names` (which
    /// must be lowercase lookup names).
    fn load(&self, names: &[String]) -> Result<Loaded, KnownHostsError> {
        let mut loaded = Loaded::default();
        let wanted = |hosts: &HostPatterns| names.iter().any(|n| hosts.matches_lowercase(n));
        for path in self.user_files.iter().chain(&self.global_files) {
            let Some(contents) = read_if_exists(path)? else {
                continue;
            };
            for (index, raw) in contents.split(|&b| b == b'\n').enumerate() {
                let line = index + 1;
                // Comments may be in any encoding.  Lossy conversion only
                // touches bytes that no host name or key contains.
                let text = String::from_utf8_lossy(raw);
                let ignore = |reason| IgnoredLine {
                    file: path.clone(),
                    line,
                    reason,
                };
                match split_line(&text) {
                    Ok(None) => {}
                    Ok(Some(fields)) if wanted(&fields.hosts) => match fields.into_entry() {
                        Ok(entry) => loaded.entries.push(LocatedEntry {
                            file: path.clone(),
                            line,
                            entry,
                        }),
                        Err(bad) => loaded.ignored.push(ignore(bad.reason)),
                    },
                    Ok(Some(_)) => {}
                    Err(bad) => {
                        if bad.hosts.as_ref().is_some_and(wanted) {
                            loaded.ignored.push(ignore(bad.reason));
                        }
                    }
                }
            }
        }
        Ok(loaded)
    }
}

fn read_if_exists(path: &Path) -> Result<Option<Vec<u8>>, KnownHostsError> {
    match fs::read(path) {
        Ok(contents) => Ok(Some(contents)),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
            ) =>
        {
            Ok(None)
        }
        Err(source) => Err(KnownHostsError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Appends `key` for `host` (as `[host]:port` unless the port is 22) to a
/// user known_hosts file, as StrictHostKeyChecking=accept-new or a "yes" at
/// the prompt does, and returns the 1-based number of the line written.
///
/// Creates the parent directory (mode 0700) and the file (mode 0600) when
/// missing.  With `hash`, the name is stored HashKnownHosts-style under a
/// fresh random salt.  The line number assumes nobody else appends at the
/// same moment.
pub fn append_known_host(
    path: &Path,
    host: &str,
    port: u16,
    key: &PublicKey,
    hash: bool,
) -> io::Result<usize> {
    if !is_recordable_host(host) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("refusing to record host name {host:?} in known_hosts"),
        ));
    }
    let name = lookup_name(host, port);
    let host_field = if hash {
        HashedHost::new(&name, random_salt()?).field
    } else {
        name
    };
    let key_text = PublicKey::new(key.key_data().clone(), "")
        .to_openssh()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;

    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty())
        && !parent.exists()
    {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)?;
    }
    let mut file = fs::OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)?;
    let mut existing = Vec::new();
    file.read_to_end(&mut existing)?;

    let unterminated = existing.last().is_some_and(|&b| b != b'\n');
    let lines_before = existing.iter().filter(|&&b| b == b'\n').count() + usize::from(unterminated);
    let mut record = String::new();
    if unterminated {
        // Otherwise our entry would be glued onto someone's last line.
        record.push('\n');
    }
    record.push_str(&host_field);
    record.push(' ');
    record.push_str(&key_text);
    record.push('\n');
    // One write, so that O_APPEND keeps the line in one piece.
    file.write_all(record.as_bytes())?;
    file.flush()?;
    Ok(lines_before + 1)
}

fn random_salt() -> io::Result<[u8; SALT_LEN]> {
    let mut salt = [0u8; SALT_LEN];
    fs::File::open("/dev/urandom")?.read_exact(&mut salt)?;
    Ok(salt)
}
