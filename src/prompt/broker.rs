//! Runs the `SSH_ASKPASS` helper from outside the master's sandbox.
//!
//! A dialog program needs what the sandboxed master must not have: to
//! execute programs, to read the X authority file, fonts and its own
//! settings, to write wherever it likes. So before the sandbox goes on, the
//! master starts a small helper process (`muxguard askpass-broker PROGRAM`,
//! a fresh exec of this binary) that runs the one helper named at start-up
//! with the prompt text it is sent, and answers allow, deny, timeout or
//! unavailable. The master can ask it nothing else, and the helper exits
//! when the master closes the pipe.
//!
//! Frames as in [`crate::helper`]: a request is `u32 timeout in ms, prompt
//! text`; a reply is `u8 answer, reason text` (0 allow once, 1 deny, 2 timed
//! out, 3 unavailable).

use std::io;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdin, ChildStdout};
use tokio::sync::Mutex;

use super::Answer;
use super::askpass::Askpass;
use crate::helper::{MAX_FRAME, read_frame, write_frame};

/// The master's end: one question at a time (a second dialog waits for the
/// first, as two at once would only confuse).
pub struct Broker {
    pipes: Mutex<(ChildStdin, ChildStdout)>,
    _child: Child,
}

impl Broker {
    /// Starts the helper process for `askpass`.
    pub fn spawn(askpass: &Askpass) -> io::Result<Broker> {
        let exe = std::env::current_exe()?;
        let mut child = tokio::process::Command::new(exe)
            .arg("askpass-broker")
            .arg(askpass.program())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdin = child.stdin.take().expect("piped");
        let stdout = child.stdout.take().expect("piped");
        Ok(Broker {
            pipes: Mutex::new((stdin, stdout)),
            _child: child,
        })
    }

    pub async fn confirm(&self, prompt: &str, timeout: Duration) -> Answer {
        let mut pipes = self.pipes.lock().await;
        let (stdin, stdout) = &mut *pipes;
        let exchange = async {
            let millis = u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX);
            let mut request = millis.to_be_bytes().to_vec();
            request.extend_from_slice(prompt.as_bytes());
            write_frame_async(stdin, &request).await?;
            read_frame_async(stdout).await
        };
        // The helper enforces the timeout itself; the slack covers its
        // start-up and a slow machine.
        match tokio::time::timeout(timeout + Duration::from_secs(10), exchange).await {
            Ok(Ok(reply)) => decode_answer(&reply),
            Ok(Err(e)) => Answer::Unavailable(format!("the askpass helper process failed: {e}")),
            Err(_) => Answer::TimedOut,
        }
    }
}

fn decode_answer(reply: &[u8]) -> Answer {
    let reason = String::from_utf8_lossy(reply.get(1..).unwrap_or_default()).into_owned();
    match reply.first() {
        Some(0) => Answer::AllowOnce,
        Some(1) => Answer::Deny,
        Some(2) => Answer::TimedOut,
        _ => Answer::Unavailable(reason),
    }
}

fn encode_answer(answer: &Answer) -> Vec<u8> {
    let (code, reason) = match answer {
        Answer::AllowOnce | Answer::AllowRemember => (0, ""),
        Answer::Deny | Answer::Dismissed(_) => (1, ""),
        Answer::TimedOut => (2, ""),
        Answer::Unavailable(reason) => (3, reason.as_str()),
    };
    let mut out = vec![code];
    out.extend_from_slice(reason.as_bytes());
    out
}

async fn write_frame_async(w: &mut ChildStdin, payload: &[u8]) -> io::Result<()> {
    let len = u32::try_from(payload.len()).map_err(|_| io::ErrorKind::InvalidInput)?;
    w.write_all(&len.to_be_bytes()).await?;
    w.write_all(payload).await?;
    w.flush().await
}

async fn read_frame_async(r: &mut ChildStdout) -> io::Result<Vec<u8>> {
    let len = r.read_u32().await? as usize;
    if len > MAX_FRAME {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "reply too long"));
    }
    let mut payload = vec![0; len];
    r.read_exact(&mut payload).await?;
    Ok(payload)
}

/// `muxguard askpass-broker PROGRAM`: the helper process. Serves requests
/// on stdin until the master closes it.
pub fn serve(program: PathBuf) -> anyhow::Result<()> {
    crate::helper::harden_helper();
    let askpass = Askpass::new(program);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut stdin = io::stdin().lock();
    let mut stdout = io::stdout().lock();
    while let Some(request) = read_frame(&mut stdin)? {
        let Some((millis, prompt)) = request.split_first_chunk::<4>() else {
            anyhow::bail!("askpass request of {} bytes", request.len());
        };
        let timeout = Duration::from_millis(u64::from(u32::from_be_bytes(*millis)));
        let answer = runtime.block_on(askpass.confirm(&String::from_utf8_lossy(prompt), timeout));
        write_frame(&mut stdout, &encode_answer(&answer))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_survive_the_round_trip() {
        for answer in [
            Answer::AllowOnce,
            Answer::Deny,
            Answer::TimedOut,
            Answer::Unavailable("no display".into()),
        ] {
            assert_eq!(decode_answer(&encode_answer(&answer)), answer);
        }
        assert!(matches!(decode_answer(&[]), Answer::Unavailable(_)));
        assert!(matches!(decode_answer(&[9]), Answer::Unavailable(_)));
    }
}
