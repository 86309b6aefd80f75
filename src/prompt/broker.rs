//! Runs the `SSH_ASKPASS` helper from outside the master's sandbox.
//!
//! A dialog program needs what the sandboxed master must not have: to
//! execute programs, to read the X authority file, fonts and its own
//! settings, to write wherever it likes. So before the sandbox goes on, the
//! master starts a small helper process (`muxguard askpass-broker PROGRAM`,
//! a fresh exec of this binary) that runs the one helper named at start-up
//! with the prompt text it is sent, and answers allow, deny, timeout or
//! unavailable. The master can ask it nothing else, and the helper exits
//! when the master closes the pipe, ending an open dialog first.
//!
//! Frames as in [`crate::helper`]: a request is `u32 timeout in ms, prompt
//! text`; a reply is `u8 answer, reason text` (0 allow once, 1 deny, 2 timed
//! out, 3 failed). The helper survives any request: one it cannot use is
//! answered "failed" and the next is served as usual, so one bad prompt can
//! never leave every later one without a dialog.

use std::io;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdin, ChildStdout};
use tokio::sync::Mutex;

use super::askpass::Askpass;
use super::{Answer, PromptText};
use crate::helper::{Frame, MAX_FRAME, read_frame, write_frame};

/// The master's end: one question at a time (a second dialog waits for the
/// first, as two at once would only confuse).
pub struct Broker {
    /// Each exchange runs in a task of its own holding these, so that a
    /// request abandoned half-way (its client left, its wait timed out)
    /// still writes its whole frame and reads its own reply: the pipe never
    /// gets out of step.
    pipes: Arc<Mutex<(ChildStdin, ChildStdout)>>,
    /// Whether the helper may render markup (see [`Askpass::renders_markup`]).
    markup: bool,
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
            pipes: Arc::new(Mutex::new((stdin, stdout))),
            markup: askpass.renders_markup(),
            _child: child,
        })
    }

    pub async fn confirm(&self, text: &PromptText, timeout: Duration) -> Answer {
        let prompt = format!("{}\n\n{}", text.summary, text.body);
        let prompt = if self.markup {
            super::text::escape_markup(&prompt)
        } else {
            prompt
        };
        let millis = u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX);
        let mut request = millis.to_be_bytes().to_vec();
        request.extend_from_slice(prompt.as_bytes());
        let pipes = Arc::clone(&self.pipes);
        let exchange = tokio::spawn(async move {
            let mut pipes = pipes.lock().await;
            let (stdin, stdout) = &mut *pipes;
            write_frame_async(stdin, &request).await?;
            read_frame_async(stdout).await
        });
        // The helper enforces the timeout itself; the slack covers its
        // start-up and a slow machine.
        match tokio::time::timeout(timeout + Duration::from_secs(10), exchange).await {
            Ok(Ok(Ok(reply))) => decode_answer(&reply),
            Ok(Ok(Err(e))) => Answer::Failed(format!("the askpass helper process failed: {e}")),
            Ok(Err(e)) => Answer::Failed(format!("the askpass exchange failed: {e}")),
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
        _ => Answer::Failed(reason),
    }
}

fn encode_answer(answer: &Answer) -> Vec<u8> {
    let (code, reason) = match answer {
        Answer::AllowOnce | Answer::AllowRemember => (0, ""),
        Answer::Deny | Answer::Dismissed(_) => (1, ""),
        Answer::TimedOut => (2, ""),
        Answer::Unavailable(reason) | Answer::Failed(reason) => (3, reason.as_str()),
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
        // Read past it, so that the next reply is read from its start.
        let skipped = tokio::io::copy(&mut r.take(len as u64), &mut tokio::io::sink()).await?;
        if skipped < len as u64 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
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
    // Watched while a dialog is open: the master never sends a question
    // before the answer to the last, so stdin turning readable then means
    // the master has gone (end of file), and the dialog is ended with it.
    let master_pipe = rustix::io::dup(io::stdin())?;
    serve_frames(
        &mut io::stdin().lock(),
        &mut io::stdout().lock(),
        |prompt, timeout| {
            runtime.block_on(unless_master_gone(
                askpass.confirm(prompt, timeout),
                &master_pipe,
            ))
        },
    )?;
    Ok(())
}

/// The dialog's answer, or "failed" as soon as `master_pipe` (the request
/// pipe) turns readable while it runs: the master went away, and dropping
/// the dialog's future kills the dialog (`kill_on_drop`).
async fn unless_master_gone(
    dialog: impl std::future::Future<Output = Answer>,
    master_pipe: &std::os::fd::OwnedFd,
) -> Answer {
    // Looked at every 100 ms: a dialog waits for a person, and this keeps
    // the pipe's flags and the blocking reads of the request loop as they
    // are (registering it with the event loop would need both changed).
    let gone = async {
        loop {
            let mut fds = [rustix::event::PollFd::new(
                master_pipe,
                rustix::event::PollFlags::IN,
            )];
            match rustix::event::poll(&mut fds, Some(&rustix::event::Timespec::default())) {
                Ok(0) | Err(rustix::io::Errno::INTR) => {}
                _ => return,
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::select! {
        answer = dialog => answer,
        () = gone => Answer::Failed("the master went away during the dialog".into()),
    }
}

/// The broker's loop, with the dialog as `confirm`.
fn serve_frames(
    input: &mut impl io::Read,
    output: &mut impl io::Write,
    mut confirm: impl FnMut(&str, Duration) -> Answer,
) -> io::Result<()> {
    while let Some(frame) = read_frame(input)? {
        let answer = match frame {
            Frame::Data(request) => match request.split_first_chunk::<4>() {
                Some((millis, prompt)) => {
                    let timeout = Duration::from_millis(u64::from(u32::from_be_bytes(*millis)));
                    confirm(&String::from_utf8_lossy(prompt), timeout)
                }
                None => Answer::Failed(format!("askpass request of {} bytes", request.len())),
            },
            Frame::TooLong(len) => Answer::Failed(format!("askpass prompt of {len} bytes")),
        };
        write_frame(output, &encode_answer(&answer))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dialog_ends_when_the_master_goes() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (read, write) = rustix::pipe::pipe().unwrap();
        // With the master there, the dialog's answer is the answer.
        let answered = rt.block_on(unless_master_gone(async { Answer::Deny }, &read));
        assert_eq!(answered, Answer::Deny);
        // A dialog that never answers ends once the other end closes.
        drop(write);
        let ended = rt.block_on(async {
            tokio::time::timeout(
                Duration::from_secs(5),
                unless_master_gone(std::future::pending(), &read),
            )
            .await
        });
        assert!(matches!(ended, Ok(Answer::Failed(why)) if why.contains("went away")));
    }

    #[test]
    fn answers_survive_the_round_trip() {
        for answer in [Answer::AllowOnce, Answer::Deny, Answer::TimedOut] {
            assert_eq!(decode_answer(&encode_answer(&answer)), answer);
        }
        assert_eq!(
            decode_answer(&encode_answer(&Answer::Failed("no display".into()))),
            Answer::Failed("no display".into())
        );
        // Nothing the master cannot read is "nobody to ask".
        assert!(matches!(decode_answer(&[]), Answer::Failed(_)));
        assert!(matches!(decode_answer(&[9]), Answer::Failed(_)));
    }

    #[test]
    fn the_broker_survives_any_request() {
        let mut requests = Vec::new();
        write_frame(&mut requests, &[0, 1]).unwrap();
        let mut huge = 1000u32.to_be_bytes().to_vec();
        huge.resize(MAX_FRAME + 100, b'x');
        write_frame(&mut requests, &huge).unwrap();
        let mut fine = 1000u32.to_be_bytes().to_vec();
        fine.extend_from_slice(b"Allow?");
        write_frame(&mut requests, &fine).unwrap();
        let mut asked = Vec::new();
        let mut replies = Vec::new();
        serve_frames(&mut requests.as_slice(), &mut replies, |prompt, timeout| {
            asked.push((prompt.to_owned(), timeout));
            Answer::AllowOnce
        })
        .unwrap();
        assert_eq!(asked, [("Allow?".to_owned(), Duration::from_secs(1))]);
        let mut replies = replies.as_slice();
        let mut next = || match read_frame(&mut replies).unwrap() {
            Some(Frame::Data(reply)) => decode_answer(&reply),
            other => panic!("{other:?}"),
        };
        assert!(matches!(next(), Answer::Failed(_)));
        assert!(matches!(next(), Answer::Failed(why) if why.contains("bytes")));
        assert_eq!(next(), Answer::AllowOnce);
    }
}
