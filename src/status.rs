//! `muxguard status DEST` and `muxguard forget DEST`: ask a running master
//! (through its control socket, with the mux protocol's `info` extension)
//! what it holds, or to drop its remembered prompt answers.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::cli::StatusArgs;
use crate::mux::wire::{self, ServerMessage};

pub fn run(args: StatusArgs, request: &str) -> anyhow::Result<ExitCode> {
    let control_path = match &args.control_path {
        Some(path) => path.clone(),
        None => {
            let host = crate::config::resolve(&args.ssh)?;
            crate::paths::choose_control_path(None, &host, &args.ssh)?
        }
    };
    let text = ask_master(&control_path, request)?;
    print!("{text}");
    Ok(ExitCode::SUCCESS)
}

/// One EXT_INFO exchange with the master at `path`.
pub fn ask_master(path: &Path, name: &str) -> anyhow::Result<String> {
    let mut stream = UnixStream::connect(path)
        .with_context(|| format!("no master answers on {} (is one running?)", path.display()))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let _hello = read_packet(&mut stream)?;
    let mut request = ServerMessage::Hello { extensions: vec![] }.encode();
    let mut body = Vec::new();
    body.extend_from_slice(&wire::msg::C_EXT_INFO.to_be_bytes());
    body.extend_from_slice(&0u32.to_be_bytes());
    body.extend_from_slice(&(name.len() as u32).to_be_bytes());
    body.extend_from_slice(name.as_bytes());
    request.extend_from_slice(&(body.len() as u32).to_be_bytes());
    request.extend_from_slice(&body);
    stream.write_all(&request)?;
    let reply = read_packet(&mut stream)?;
    let field = |at: usize| -> Option<u32> {
        Some(u32::from_be_bytes(reply.get(at..at + 4)?.try_into().ok()?))
    };
    match field(0) {
        Some(wire::msg::S_EXT_INFO) => {}
        Some(wire::msg::S_PERMISSION_DENIED) => {
            let reason = field(8)
                .and_then(|len| reply.get(12..12 + len as usize))
                .map(|text| crate::prompt::one_line(&String::from_utf8_lossy(text)))
                .unwrap_or_default();
            bail!("the master refused the request: {reason}")
        }
        _ => bail!(
            "{} is not a muxguard master (it does not answer {name})",
            path.display()
        ),
    }
    if field(8) != Some(1) {
        bail!("the master at {} does not support {name}", path.display());
    }
    let len = field(12).context("short reply")? as usize;
    let text = reply.get(16..16 + len).context("short reply")?;
    Ok(String::from_utf8_lossy(text).into_owned())
}

fn read_packet(stream: &mut UnixStream) -> anyhow::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    stream
        .read_exact(&mut len)
        .context("the master closed the connection")?;
    let len = wire::check_length(u32::from_be_bytes(len))?;
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body)?;
    Ok(body)
}

/// Notes this master in the registry; the entry goes when the guard drops.
pub struct Registration {
    file: std::path::PathBuf,
}

impl Registration {
    pub fn register(control_path: &Path, destination: &str) -> Option<Registration> {
        let dir = crate::paths::registry_dir();
        crate::paths::ensure_private_dir(&dir).ok()?;
        let file = dir.join(std::process::id().to_string());
        std::fs::write(
            &file,
            format!("{}\n{destination}\n", control_path.display()),
        )
        .ok()?;
        Some(Registration { file })
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.file);
    }
}

/// `muxguard ls`: every live master of this user, with its status.
pub fn list() -> anyhow::Result<ExitCode> {
    let mut found = 0;
    let entries = match std::fs::read_dir(crate::paths::registry_dir()) {
        Ok(entries) => entries.flatten().collect::<Vec<_>>(),
        Err(_) => Vec::new(),
    };
    for entry in entries {
        let Ok(text) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        let mut lines = text.lines();
        let (Some(path), Some(destination)) = (lines.next(), lines.next()) else {
            continue;
        };
        let pid = entry.file_name().to_string_lossy().into_owned();
        match crate::mux::probe::probe(Path::new(path), Duration::from_secs(2)) {
            crate::mux::probe::Existing::Live { pid: live } if live.to_string() == pid => {
                found += 1;
                println!("{destination} (pid {pid}, {path})");
                match ask_master(Path::new(path), "muxguard-status") {
                    Ok(status) => {
                        for line in status.lines().skip(1) {
                            println!("  {line}");
                        }
                    }
                    Err(e) => println!("  status unavailable: {e}"),
                }
            }
            // The master is gone (or its socket was replaced): drop the entry.
            _ => {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    if found == 0 {
        println!("no muxguard master is running");
    }
    Ok(ExitCode::SUCCESS)
}
