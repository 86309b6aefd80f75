//! Host settings, taken from the user's real OpenSSH configuration by running
//! `ssh -G` with the options the user gave. We never parse ssh_config
//! ourselves: `Match`, `Include`, canonicalisation and defaults are exactly
//! what ssh itself would use.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};

/// Set in the environment of every `ssh -G` we run, so that a
/// `Match exec "muxguard ensure …"` evaluated by that ssh returns at once
/// instead of recursing (see `ensure.rs`).
pub const NESTED_ENV: &str = "MUXGUARD_NESTED";

/// The ssh options a user may pass to `connect` and `ensure`, mirroring
/// ssh's own flags so that `ssh -G` sees exactly what ssh would.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct SshOptions {
    /// Alternative ssh_config file (ssh -F)
    #[arg(short = 'F', value_name = "ssh_config")]
    pub config_file: Option<PathBuf>,
    /// Port to connect to on the remote host (ssh -p)
    #[arg(short = 'p', value_name = "port")]
    pub port: Option<u16>,
    /// Remote user (ssh -l)
    #[arg(short = 'l', value_name = "login_name")]
    pub login: Option<String>,
    /// Identity file (ssh -i); may be repeated
    #[arg(short = 'i', value_name = "identity_file")]
    pub identities: Vec<PathBuf>,
    /// ssh_config option in Key=Value form (ssh -o); may be repeated
    #[arg(short = 'o', value_name = "option")]
    pub options: Vec<String>,
    /// [user@]host[:port] or ssh://[user@]host[:port], as for ssh
    #[arg(value_name = "DESTINATION")]
    pub destination: String,
}

impl SshOptions {
    /// The arguments to hand to ssh (or to another muxguard) to reproduce
    /// these options, destination last.
    pub fn to_args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = Vec::new();
        if let Some(file) = &self.config_file {
            args.push("-F".into());
            args.push(file.into());
        }
        if let Some(port) = self.port {
            args.push("-p".into());
            args.push(port.to_string().into());
        }
        if let Some(login) = &self.login {
            args.push("-l".into());
            args.push(login.into());
        }
        for identity in &self.identities {
            args.push("-i".into());
            args.push(identity.into());
        }
        for option in &self.options {
            args.push("-o".into());
            args.push(option.into());
        }
        args.push(self.destination.clone().into());
        args
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StrictHostKeyChecking {
    /// Refuse unknown and changed keys.
    Yes,
    /// Ask on the terminal for unknown keys; refuse changed ones.
    Ask,
    /// Add unknown keys; refuse changed ones.
    AcceptNew,
    /// Add unknown keys; refuse changed ones (OpenSSH still refuses a
    /// changed key for a master, since it cannot disable forwarding the way
    /// an interactive ssh does).
    No,
}

/// How long the master stays without clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Persist {
    /// Until `-O exit`, a signal or the server going away.
    Forever,
    /// Exit when this long has passed with no client session or forward.
    Idle(Duration),
    /// Exit as soon as the last client session has ended.
    UntilLastClient,
}

impl std::str::FromStr for Persist {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "yes" | "true" => Ok(Persist::Forever),
            "no" | "false" => Ok(Persist::UntilLastClient),
            _ => {
                // ssh_config takes plain seconds; we also take "10m" etc.
                if let Ok(seconds) = s.parse::<u64>() {
                    return Ok(if seconds == 0 {
                        Persist::Forever
                    } else {
                        Persist::Idle(Duration::from_secs(seconds))
                    });
                }
                humantime::parse_duration(s)
                    .map(Persist::Idle)
                    .map_err(|e| {
                        format!(
                            "invalid persist time {s:?}: {e} (use yes, no, seconds or e.g. 10m)"
                        )
                    })
            }
        }
    }
}

/// The settings the master uses, as `ssh -G` reported them.
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// What the user typed (the alias), used in messages and by policy.
    pub alias: String,
    pub hostname: String,
    pub port: u16,
    pub user: String,
    pub identity_files: Vec<PathBuf>,
    pub identities_only: bool,
    /// `None` when IdentityAgent is "none".
    pub identity_agent: Option<PathBuf>,
    pub user_known_hosts: Vec<PathBuf>,
    pub global_known_hosts: Vec<PathBuf>,
    pub strict_host_key_checking: StrictHostKeyChecking,
    pub hash_known_hosts: bool,
    pub host_key_alias: Option<String>,
    pub control_path: Option<PathBuf>,
    pub control_persist: Persist,
    pub server_alive_interval: Option<Duration>,
    pub server_alive_count_max: u32,
    pub ciphers: Vec<String>,
    pub send_env: Vec<String>,
    pub set_env: Vec<(String, String)>,
    pub connect_timeout: Option<Duration>,
    pub batch_mode: bool,
    pub pubkey_authentication: bool,
    pub password_authentication: bool,
    pub kbd_interactive_authentication: bool,
    pub number_of_password_prompts: u32,
}

/// Runs `ssh -G` for these options and parses its answer.
pub fn resolve(options: &SshOptions) -> anyhow::Result<HostConfig> {
    resolve_with(options, &[])
}

/// Like [`resolve`] with extra `-o` options placed first (so they win).
pub fn resolve_with(options: &SshOptions, extra: &[String]) -> anyhow::Result<HostConfig> {
    let mut command = Command::new(ssh_program());
    command.arg("-G");
    for option in extra {
        command.arg("-o").arg(option);
    }
    command
        .args(options.to_args())
        .env(NESTED_ENV, "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let output = command
        .output()
        .context("could not run `ssh -G` to read your ssh configuration (is OpenSSH installed?)")?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let first = stderr
            .lines()
            .find(|l| !l.contains("Pseudo-terminal"))
            .unwrap_or("")
            .trim();
        bail!("`ssh -G {}` failed: {first}", options.destination);
    }
    let text = String::from_utf8(output.stdout).context("`ssh -G` printed non-UTF-8 output")?;
    parse_ssh_g(&text, &options.destination, &home_dir())
}

/// The ssh binary to use; `MUXGUARD_SSH` overrides it (tests, odd installs).
pub fn ssh_program() -> OsString {
    std::env::var_os("MUXGUARD_SSH").unwrap_or_else(|| "ssh".into())
}

pub fn home_dir() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .or_else(|| {
            rustix::process::getuid()
                .is_root()
                .then(|| PathBuf::from("/root"))
        })
        .unwrap_or_else(|| PathBuf::from("/"))
}

/// Expands a leading `~/` the way ssh does for file options.
pub fn expand_tilde(path: &str, home: &Path) -> PathBuf {
    if path == "~" {
        home.to_path_buf()
    } else if let Some(rest) = path.strip_prefix("~/") {
        home.join(rest)
    } else {
        PathBuf::from(path)
    }
}

fn yes(value: &str) -> bool {
    matches!(value, "yes" | "true")
}

/// Parses `ssh -G` output. Pure, so it is unit-tested without ssh.
pub fn parse_ssh_g(text: &str, alias: &str, home: &Path) -> anyhow::Result<HostConfig> {
    let mut config = HostConfig {
        alias: alias_host(alias),
        hostname: String::new(),
        port: 22,
        user: String::new(),
        identity_files: Vec::new(),
        identities_only: false,
        identity_agent: std::env::var_os("SSH_AUTH_SOCK").map(PathBuf::from),
        user_known_hosts: Vec::new(),
        global_known_hosts: Vec::new(),
        strict_host_key_checking: StrictHostKeyChecking::Ask,
        hash_known_hosts: false,
        host_key_alias: None,
        control_path: None,
        control_persist: Persist::UntilLastClient,
        server_alive_interval: None,
        server_alive_count_max: 3,
        ciphers: Vec::new(),
        send_env: Vec::new(),
        set_env: Vec::new(),
        connect_timeout: None,
        batch_mode: false,
        pubkey_authentication: true,
        password_authentication: true,
        kbd_interactive_authentication: true,
        number_of_password_prompts: 3,
    };
    let paths = |value: &str| -> Vec<PathBuf> {
        value
            .split_whitespace()
            .filter(|p| *p != "none")
            .map(|p| expand_tilde(p, home))
            .collect()
    };
    for line in text.lines() {
        let Some((key, value)) = line.split_once(' ') else {
            continue;
        };
        let value = value.trim();
        match key.to_ascii_lowercase().as_str() {
            "hostname" => config.hostname = value.to_string(),
            "port" => {
                config.port = value
                    .parse()
                    .with_context(|| format!("ssh -G reported an invalid port {value:?}"))?
            }
            "user" => config.user = value.to_string(),
            "identityfile" => config.identity_files.extend(paths(value)),
            "identitiesonly" => config.identities_only = yes(value),
            "identityagent" => {
                config.identity_agent = match value {
                    "none" => None,
                    "SSH_AUTH_SOCK" => std::env::var_os("SSH_AUTH_SOCK").map(PathBuf::from),
                    path => Some(expand_tilde(path, home)),
                }
            }
            "userknownhostsfile" => config.user_known_hosts = paths(value),
            "globalknownhostsfile" => config.global_known_hosts = paths(value),
            "stricthostkeychecking" => {
                config.strict_host_key_checking = match value {
                    "yes" | "true" => StrictHostKeyChecking::Yes,
                    "accept-new" => StrictHostKeyChecking::AcceptNew,
                    "no" | "false" | "off" => StrictHostKeyChecking::No,
                    _ => StrictHostKeyChecking::Ask,
                }
            }
            "hashknownhosts" => config.hash_known_hosts = yes(value),
            "hostkeyalias" => config.host_key_alias = Some(value.to_string()),
            "controlpath" => {
                config.control_path = (value != "none").then(|| expand_tilde(value, home))
            }
            "controlpersist" => {
                config.control_persist = value.parse().map_err(|e: String| anyhow::anyhow!(e))?
            }
            "serveraliveinterval" => {
                let seconds: u64 = value.parse().unwrap_or(0);
                config.server_alive_interval = (seconds > 0).then(|| Duration::from_secs(seconds));
            }
            "serveralivecountmax" => config.server_alive_count_max = value.parse().unwrap_or(3),
            "ciphers" => config.ciphers = value.split(',').map(str::to_string).collect(),
            "sendenv" => config.send_env.push(value.to_string()),
            "setenv" => {
                if let Some((name, val)) = value.split_once('=') {
                    config.set_env.push((name.to_string(), val.to_string()));
                }
            }
            "connecttimeout" => {
                config.connect_timeout = value
                    .parse::<u64>()
                    .ok()
                    .filter(|s| *s > 0)
                    .map(Duration::from_secs)
            }
            "batchmode" => config.batch_mode = yes(value),
            "pubkeyauthentication" => config.pubkey_authentication = value != "no",
            "passwordauthentication" => config.password_authentication = yes(value),
            "kbdinteractiveauthentication" => config.kbd_interactive_authentication = yes(value),
            "numberofpasswordprompts" => {
                config.number_of_password_prompts = value.parse().unwrap_or(3)
            }
            _ => {}
        }
    }
    if config.hostname.is_empty() {
        bail!("`ssh -G` did not report a hostname for {alias:?}");
    }
    if config.user.is_empty() {
        bail!("`ssh -G` did not report a user for {alias:?}");
    }
    Ok(config)
}

/// The host part of a destination as typed (`user@alias:port` → `alias`).
fn alias_host(destination: &str) -> String {
    let rest = destination.strip_prefix("ssh://").unwrap_or(destination);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    if let Some(bracketed) = rest.strip_prefix('[') {
        return bracketed.split(']').next().unwrap_or(bracketed).to_string();
    }
    if destination.starts_with("ssh://") {
        return rest.split(':').next().unwrap_or(rest).to_string();
    }
    rest.to_string()
}

/// ssh_config's `*` and `?` (bytes, case-sensitive, as OpenSSH's
/// `match_pattern`).
pub fn wildcard_match(pattern: &str, text: &str) -> bool {
    crate::glob::ssh_match(pattern.as_bytes(), text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "user alice\nhostname 10.0.0.5\nport 2222\nidentitiesonly yes\n\
        identityfile ~/.ssh/id_ed25519\nidentityfile /keys/other\n\
        userknownhostsfile ~/.ssh/known_hosts ~/.ssh/known_hosts2\n\
        globalknownhostsfile /etc/ssh/ssh_known_hosts\nstricthostkeychecking accept-new\n\
        controlpath /run/user/1000/muxguard/abc\ncontrolpersist 600\nserveraliveinterval 15\n\
        serveralivecountmax 4\nciphers aes128-gcm@openssh.com,chacha20-poly1305@openssh.com\n\
        sendenv LANG\nsendenv LC_*\nsetenv A=b\nsetenv C=d e\nconnecttimeout none\nbatchmode no\n";

    #[test]
    fn parses_the_fields_the_master_uses() {
        let c = parse_ssh_g(SAMPLE, "bob@build:22", Path::new("/home/alice")).unwrap();
        assert_eq!(c.alias, "build:22");
        assert_eq!(c.hostname, "10.0.0.5");
        assert_eq!(c.port, 2222);
        assert_eq!(c.user, "alice");
        assert!(c.identities_only);
        assert_eq!(
            c.identity_files,
            [
                PathBuf::from("/home/alice/.ssh/id_ed25519"),
                PathBuf::from("/keys/other")
            ]
        );
        assert_eq!(c.user_known_hosts.len(), 2);
        assert_eq!(c.strict_host_key_checking, StrictHostKeyChecking::AcceptNew);
        assert_eq!(
            c.control_path,
            Some(PathBuf::from("/run/user/1000/muxguard/abc"))
        );
        assert_eq!(c.control_persist, Persist::Idle(Duration::from_secs(600)));
        assert_eq!(c.server_alive_interval, Some(Duration::from_secs(15)));
        assert_eq!(c.server_alive_count_max, 4);
        assert_eq!(c.ciphers[0], "aes128-gcm@openssh.com");
        assert_eq!(c.send_env, ["LANG", "LC_*"]);
        assert_eq!(
            c.set_env,
            [("A".into(), "b".into()), ("C".into(), "d e".into())]
        );
        assert_eq!(c.connect_timeout, None);
    }

    #[test]
    fn missing_hostname_is_an_error() {
        assert!(parse_ssh_g("user x\n", "h", Path::new("/")).is_err());
    }

    #[test]
    fn persist_values() {
        assert_eq!("yes".parse(), Ok(Persist::Forever));
        assert_eq!("no".parse(), Ok(Persist::UntilLastClient));
        assert_eq!("90".parse(), Ok(Persist::Idle(Duration::from_secs(90))));
        assert_eq!("10m".parse(), Ok(Persist::Idle(Duration::from_secs(600))));
        assert!("soon".parse::<Persist>().is_err());
    }

    #[test]
    fn aliases() {
        assert_eq!(alias_host("host"), "host");
        assert_eq!(alias_host("me@host"), "host");
        assert_eq!(alias_host("ssh://me@host:2200"), "host");
        assert_eq!(alias_host("[::1]"), "::1");
    }

    #[test]
    fn wildcards() {
        assert!(wildcard_match("a*b?c", "axxbyc"));
        assert!(!wildcard_match("a*b?c", "axxbc"));
    }
}
