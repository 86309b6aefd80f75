//! The `SSH_ASKPASS` fallback, in OpenSSH's confirm mode
//! (`SSH_ASKPASS_PROMPT=confirm`, the prompt as the only argument).
//!
//! Stricter than OpenSSH, which takes an empty answer as yes: here only an
//! exit status of 0 together with a first line of exactly "yes" (any case)
//! allows. Helpers that understand confirm mode print "yes" only when the
//! person confirmed; a plain passphrase dialog makes the person type "yes",
//! which is clumsy but safe. Used only when a display is available (or
//! `SSH_ASKPASS_REQUIRE=force`), and never when it is `never`.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncReadExt;

use super::Answer;

pub struct Askpass {
    program: PathBuf,
}

impl Askpass {
    /// The helper named by SSH_ASKPASS, if it may be used here.
    pub fn from_env() -> Option<Askpass> {
        let program = std::env::var_os("SSH_ASKPASS").filter(|p| !p.is_empty())?;
        let require = std::env::var("SSH_ASKPASS_REQUIRE").unwrap_or_default();
        let display = ["DISPLAY", "WAYLAND_DISPLAY"]
            .iter()
            .any(|v| std::env::var_os(v).is_some_and(|d| !d.is_empty()));
        match require.as_str() {
            "never" => None,
            "force" => Some(Askpass {
                program: program.into(),
            }),
            _ if display => Some(Askpass {
                program: program.into(),
            }),
            _ => None,
        }
    }

    pub fn new(program: PathBuf) -> Askpass {
        Askpass { program }
    }

    pub fn program(&self) -> &std::path::Path {
        &self.program
    }

    /// Whether the helper may interpret markup in its prompt. Qt helpers
    /// (ksshaskpass, lxqt-openssh-askpass) guess rich text from the text
    /// itself, so a requester could style or hide part of its command; the
    /// ones known to show plain text are x11-ssh-askpass and OpenSSH's
    /// gnome-ssh-askpass. Anything else is assumed to render markup and is
    /// sent escaped text: `&lt;` on a plain dialog is ugly but truthful.
    /// `/usr/bin/ssh-askpass` is an alternatives link, so the real file's
    /// name decides.
    pub fn renders_markup(&self) -> bool {
        let real = std::fs::canonicalize(&self.program).unwrap_or_else(|_| self.program.clone());
        let name = real
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        !(name == "x11-ssh-askpass" || name.starts_with("gnome-ssh-askpass"))
    }

    pub async fn confirm(&self, prompt: &str, timeout: Duration) -> Answer {
        let child = tokio::process::Command::new(&self.program)
            .arg(prompt)
            .env("SSH_ASKPASS_PROMPT", "confirm")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn();
        let mut child = match child {
            Ok(child) => child,
            Err(e) => {
                return Answer::Failed(format!(
                    "cannot run SSH_ASKPASS {}: {e}",
                    self.program.display()
                ));
            }
        };
        let mut stdout = child.stdout.take().expect("piped");
        let run = async {
            let mut output = Vec::new();
            let _ = (&mut stdout).take(1024).read_to_end(&mut output).await;
            (child.wait().await, output)
        };
        match tokio::time::timeout(timeout, run).await {
            Err(_) => Answer::TimedOut,
            Ok((Ok(status), output)) => {
                let text = String::from_utf8_lossy(&output);
                let first = text.split(['\r', '\n']).next().unwrap_or("");
                if status.success() && first.trim().eq_ignore_ascii_case("yes") {
                    Answer::AllowOnce
                } else {
                    Answer::Deny
                }
            }
            Ok((Err(e), _)) => Answer::Failed(format!("SSH_ASKPASS failed: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn helper(dir: &std::path::Path, script: &str) -> Askpass {
        let path = dir.join("askpass");
        std::fs::write(&path, format!("#!/bin/sh\n{script}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        Askpass::new(path)
    }

    #[test]
    fn only_an_explicit_yes_allows() {
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let ask = |script: &str| {
            rt.block_on(helper(dir.path(), script).confirm("Allow?", Duration::from_secs(5)))
        };
        assert_eq!(
            ask("[ \"$SSH_ASKPASS_PROMPT\" = confirm ] && echo YES"),
            Answer::AllowOnce
        );
        assert_eq!(ask("echo"), Answer::Deny, "an empty answer is not yes");
        assert_eq!(ask("echo no"), Answer::Deny);
        assert_eq!(ask("echo yes; exit 1"), Answer::Deny);
        assert_eq!(
            rt.block_on(
                helper(dir.path(), "sleep 5").confirm("Allow?", Duration::from_millis(200))
            ),
            Answer::TimedOut
        );
        let missing = Askpass::new(dir.path().join("nope"));
        assert!(matches!(
            rt.block_on(missing.confirm("x", Duration::from_secs(1))),
            Answer::Failed(_)
        ));
    }

    #[test]
    fn only_known_plain_text_helpers_get_raw_text() {
        let dir = tempfile::tempdir().unwrap();
        let x11 = dir.path().join("x11-ssh-askpass");
        std::fs::write(&x11, "").unwrap();
        assert!(!Askpass::new(x11.clone()).renders_markup());
        // A link named like the alternative is judged by what it points to.
        let link = dir.path().join("ssh-askpass");
        std::os::unix::fs::symlink(&x11, &link).unwrap();
        assert!(!Askpass::new(link).renders_markup());
        assert!(!Askpass::new("/usr/bin/gnome-ssh-askpass3".into()).renders_markup());
        assert!(Askpass::new("/usr/bin/ksshaskpass".into()).renders_markup());
        assert!(Askpass::new(dir.path().join("my-dialog")).renders_markup());
    }
}
