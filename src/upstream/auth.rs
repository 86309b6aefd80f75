//! User authentication to the server, in the order ssh uses: keys held by
//! ssh-agent, then IdentityFile keys (asking for a passphrase on the
//! terminal, or through SSH_ASKPASS when there is none), then password and
//! keyboard-interactive on the terminal.
//!
//! Secrets read here (passphrases, passwords, decrypted keys) are dropped as
//! soon as authentication is over; passphrase strings are zeroed.

use std::io::{BufRead, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;

use anyhow::{Context, bail};
use russh::MethodKind;
use russh::client::{AuthResult, Handle, KeyboardInteractiveAuthResponse};
use russh::keys::{PrivateKeyWithHashAlg, ssh_key};
use zeroize::Zeroizing;

use super::connect::ClientHandler;
use crate::config::HostConfig;

/// Authenticates `handle` as `config.user` with the agent's keys alone
/// (for additional connections, made without anyone to ask).
pub async fn authenticate_with_agent(
    handle: &mut Handle<ClientHandler>,
    config: &HostConfig,
    identity_publics: &[ssh_key::PublicKey],
) -> anyhow::Result<()> {
    authenticate_by(handle, config, Methods::AgentOnly, identity_publics).await
}

/// The public halves of the IdentityFile keys (what IdentitiesOnly lets
/// the agent offer), read once at start-up.
pub fn identity_publics(config: &HostConfig) -> Vec<ssh_key::PublicKey> {
    config
        .identity_files
        .iter()
        .filter_map(|path| read_public_half(path))
        .collect()
}

/// Authenticates `handle` as `config.user`. The error says what was tried.
pub async fn authenticate(
    handle: &mut Handle<ClientHandler>,
    config: &HostConfig,
    identity_publics: &[ssh_key::PublicKey],
) -> anyhow::Result<()> {
    authenticate_by(handle, config, Methods::All, identity_publics).await
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Methods {
    All,
    /// The agent only: no key files (the sandbox forbids reading them), no
    /// passwords, no prompts.
    AgentOnly,
}

async fn authenticate_by(
    handle: &mut Handle<ClientHandler>,
    config: &HostConfig,
    methods_allowed: Methods,
    identity_publics: &[ssh_key::PublicKey],
) -> anyhow::Result<()> {
    let mut tried: Vec<String> = Vec::new();
    let mut offered_methods: Option<Vec<MethodKind>> = None;
    let rsa_hash = handle.best_supported_rsa_hash().await?.flatten();

    if config.pubkey_authentication {
        if let Some(agent_path) = &config.identity_agent {
            match russh::keys::agent::client::AgentClient::connect_uds(agent_path).await {
                Ok(mut agent) => {
                    let identities = agent.request_identities().await.unwrap_or_default();
                    for identity in identities {
                        let key = identity.public_key().into_owned();
                        if config.identities_only
                            && !identity_publics
                                .iter()
                                .any(|p| p.key_data() == key.key_data())
                        {
                            continue;
                        }
                        tried.push(format!("agent key {}", key.fingerprint(Default::default())));
                        let hash = if key.algorithm().is_rsa() {
                            rsa_hash
                        } else {
                            None
                        };
                        match handle
                            .authenticate_publickey_with(&config.user, key, hash, &mut agent)
                            .await
                        {
                            Ok(result) => {
                                if done(result, &mut offered_methods)? {
                                    return Ok(());
                                }
                            }
                            Err(e) => tracing::debug!("agent signing failed: {e}"),
                        }
                    }
                }
                Err(e) => tracing::debug!("no ssh-agent at {}: {e}", agent_path.display()),
            }
        }

        let files: &[std::path::PathBuf] = match methods_allowed {
            Methods::All => &config.identity_files,
            Methods::AgentOnly => &[],
        };
        for path in files {
            let key = match load_identity(path, config)? {
                Some(key) => key,
                None => continue,
            };
            tried.push(format!("key {}", path.display()));
            let hash = if key.algorithm().is_rsa() {
                rsa_hash
            } else {
                None
            };
            let result = handle
                .authenticate_publickey(
                    &config.user,
                    PrivateKeyWithHashAlg::new(Arc::new(key), hash),
                )
                .await?;
            if done(result, &mut offered_methods)? {
                return Ok(());
            }
        }
    }

    let can_prompt = methods_allowed == Methods::All && !config.batch_mode && has_terminal();
    let methods = offered_methods.clone().unwrap_or_default();
    if can_prompt
        && config.kbd_interactive_authentication
        && methods.contains(&MethodKind::KeyboardInteractive)
    {
        tried.push("keyboard-interactive".into());
        if keyboard_interactive(handle, config).await? {
            return Ok(());
        }
    }
    if can_prompt && config.password_authentication && methods.contains(&MethodKind::Password) {
        for _ in 0..config.number_of_password_prompts.max(1) {
            tried.push("password".into());
            let prompt = format!("{}@{}'s password: ", config.user, config.hostname);
            let password = Zeroizing::new(rpassword::prompt_password(prompt)?);
            let result = handle
                .authenticate_password(&config.user, password.as_str())
                .await?;
            if done(result, &mut offered_methods)? {
                return Ok(());
            }
            eprintln!("Permission denied, please try again.");
        }
    }

    let offered = offered_methods
        .map(|m| m.iter().map(<&str>::from).collect::<Vec<_>>().join(","))
        .unwrap_or_else(|| "unknown".into());
    if tried.is_empty() {
        bail!(
            "permission denied ({offered}): no usable identity for {}@{} (no readable IdentityFile, no ssh-agent key{})",
            config.user,
            config.hostname,
            if config.batch_mode {
                ", and BatchMode forbids prompting"
            } else {
                ""
            }
        );
    }
    bail!(
        "permission denied ({offered}) for {}@{}; tried: {}",
        config.user,
        config.hostname,
        tried.join(", ")
    )
}

/// Interprets one authentication answer: success ends, partial success or
/// failure records which methods the server still offers.
fn done(result: AuthResult, offered: &mut Option<Vec<MethodKind>>) -> anyhow::Result<bool> {
    match result {
        AuthResult::Success => Ok(true),
        AuthResult::Failure {
            remaining_methods, ..
        } => {
            *offered = Some(remaining_methods.to_vec());
            Ok(false)
        }
    }
}

fn read_public_half(private_path: &Path) -> Option<ssh_key::PublicKey> {
    let mut public = private_path.as_os_str().to_owned();
    public.push(".pub");
    russh::keys::load_public_key(Path::new(&public)).ok()
}

/// Loads one IdentityFile. Missing files are skipped, as ssh skips them
/// (ssh -G lists the default names whether or not they exist); a file that
/// exists but cannot be read or parsed is an error worth stopping for.
fn load_identity(path: &Path, config: &HostConfig) -> anyhow::Result<Option<ssh_key::PrivateKey>> {
    if !path.exists() {
        if config.identities_only && !is_default_identity(path) {
            bail!("identity file {} does not exist", path.display());
        }
        return Ok(None);
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read identity file {}", path.display()))
        .map(Zeroizing::new)?;
    match russh::keys::decode_secret_key(&text, None) {
        Ok(key) => Ok(Some(key)),
        Err(russh::keys::Error::KeyIsEncrypted) => {
            for _ in 0..3 {
                let Some(passphrase) = ask_passphrase(path, config)? else {
                    return Ok(None);
                };
                match russh::keys::decode_secret_key(&text, Some(&passphrase)) {
                    Ok(key) => return Ok(Some(key)),
                    Err(_) => eprintln!("Bad passphrase, try again for {}", path.display()),
                }
            }
            Ok(None)
        }
        Err(e) => bail!("cannot load identity file {}: {e}", path.display()),
    }
}

fn is_default_identity(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("id_"))
}

fn has_terminal() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .is_ok()
}

/// Asks for a key's passphrase on the terminal, or with SSH_ASKPASS when
/// there is no terminal (or SSH_ASKPASS_REQUIRE=force). `None`: nobody can
/// be asked, so the key is skipped.
fn ask_passphrase(path: &Path, config: &HostConfig) -> anyhow::Result<Option<Zeroizing<String>>> {
    if config.batch_mode {
        return Ok(None);
    }
    let prompt = format!("Enter passphrase for key '{}': ", path.display());
    let require = std::env::var("SSH_ASKPASS_REQUIRE").unwrap_or_default();
    let askpass = std::env::var_os("SSH_ASKPASS").filter(|a| !a.is_empty());
    let display = std::env::var_os("DISPLAY").is_some_and(|d| !d.is_empty())
        || std::env::var_os("WAYLAND_DISPLAY").is_some_and(|d| !d.is_empty());
    let use_askpass = require != "never"
        && askpass.is_some()
        && (require == "force" || (!has_terminal() && (display || require == "prefer")));
    if use_askpass {
        let askpass = askpass.expect("checked above");
        let output = Command::new(&askpass)
            .arg(&prompt)
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()
            .with_context(|| format!("cannot run SSH_ASKPASS program {askpass:?}"))?;
        if !output.status.success() {
            return Ok(None);
        }
        let mut answer = Zeroizing::new(String::from_utf8_lossy(&output.stdout).into_owned());
        let line_end = answer.find(['\r', '\n']).unwrap_or(answer.len());
        answer.truncate(line_end);
        return Ok(Some(answer));
    }
    if !has_terminal() {
        return Ok(None);
    }
    Ok(Some(Zeroizing::new(rpassword::prompt_password(prompt)?)))
}

async fn keyboard_interactive(
    handle: &mut Handle<ClientHandler>,
    config: &HostConfig,
) -> anyhow::Result<bool> {
    let mut response = handle
        .authenticate_keyboard_interactive_start(&config.user, None)
        .await?;
    loop {
        match response {
            KeyboardInteractiveAuthResponse::Success => return Ok(true),
            KeyboardInteractiveAuthResponse::Failure { .. } => return Ok(false),
            KeyboardInteractiveAuthResponse::InfoRequest {
                name,
                instructions,
                prompts,
            } => {
                let mut tty = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open("/dev/tty")?;
                for text in [&name, &instructions] {
                    if !text.is_empty() {
                        writeln!(tty, "{text}")?;
                    }
                }
                let mut answers = Vec::with_capacity(prompts.len());
                for prompt in prompts {
                    if prompt.echo {
                        write!(tty, "{}", prompt.prompt)?;
                        let mut line = String::new();
                        std::io::BufReader::new(&tty).read_line(&mut line)?;
                        answers.push(line.trim_end_matches(['\r', '\n']).to_string());
                    } else {
                        answers.push(rpassword::prompt_password(&prompt.prompt)?);
                    }
                }
                response = handle
                    .authenticate_keyboard_interactive_respond(answers)
                    .await?;
            }
        }
    }
}
