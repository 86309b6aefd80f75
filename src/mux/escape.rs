//! Escape-character handling for multiplexed tty sessions.
//!
//! When a mux client asks for a tty session and names an escape character,
//! the master (not the client) watches the bytes it reads from the client's
//! stdin for escape sequences such as `~.`, exactly as a plain `ssh` would.
//! This module is the pure state machine behind that: it splits a stream of
//! stdin reads into data that must go upstream and escape commands that the
//! session code has to carry out, and it knows what text each command echoes
//! to the session's stderr. It performs no I/O itself.
//!
//! The behaviour follows what the OpenSSH 9.2 master does for mux sessions
//! (see §6.5 of the mux protocol notes), with two deliberate differences.
//! OpenSSH keeps the "at start of line" flag in a single global shared by
//! every session, whereas here each session has its own, so typing in one
//! session can never arm or disarm escapes in another. And `~C` opens the
//! command line (see [`crate::mux::cmdline`]) where OpenSSH's master says
//! it is not available: what is typed into it is echoed locally and never
//! sent upstream, and the finished line goes to the session to carry out.

use crate::mux::cmdline::{self, Finished, LineEditor};

/// Ctrl-Z, which OpenSSH uses for "suspend" after the escape character.
const CTRL_Z: u8 = 0x1a;

/// One piece of a filtered read, in the order it occurred in the input.
///
/// Order matters: data typed before an escape command has to reach the
/// server before the command takes effect (for instance before a BREAK).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filtered {
    /// Bytes to send upstream as channel data. Never empty.
    Data(Vec<u8>),
    /// Something for the session itself; nothing of it goes upstream.
    Local(Local),
}

/// The part of a session's input that the master handles itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Local {
    /// An escape command the session must carry out.
    Action(EscapeAction),
    /// Text for the session's stderr: the `~C` prompt and the echo of what
    /// is typed after it. Never empty.
    Echo(Vec<u8>),
    /// A `~C` command line finished with Enter, as typed (without the
    /// newline); [`cmdline::parse`] says what it asks for.
    CommandLine(String),
}

/// An escape command recognised in a session's input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EscapeAction {
    /// `~.`: force-close this session only, without an exit status, so the
    /// client exits with 255. The rest of the connection stays up.
    ///
    /// OpenSSH also throws away any session input not yet sent upstream at
    /// this point; the filter still reports data that preceded the escape in
    /// the same read, and the caller may drop it.
    Terminate,
    /// `~B`: a `break` channel request (not sent yet on multiplexed
    /// sessions: the session says so on its stderr).
    SendBreak,
    /// `~R`: start a key re-exchange on the whole upstream connection.
    Rekey,
    /// `~#`: write the list of all open channels of the connection to the
    /// session's stderr, after [`EscapeAction::echo_text`].
    ListChannels,
    /// `~?`: write the help text ([`EscapeAction::echo_text`]) to stderr.
    Help,
    /// An escape that plain `ssh` supports but a mux session cannot; only a
    /// message is printed and nothing is sent upstream.
    NotAvailable(UnavailableEscape),
}

/// Escapes that only make sense in a non-multiplexed `ssh` process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnavailableEscape {
    /// `~V`: lower the log level.
    LessVerbose,
    /// `~v`: raise the log level.
    MoreVerbose,
    /// `~&`: put ssh in the background.
    Background,
    /// `~^Z`: suspend ssh.
    Suspend,
}

impl UnavailableEscape {
    /// How the escape is spelled in messages; Ctrl-Z is written out as `^Z`
    /// because echoing the raw control byte would be invisible.
    pub fn spelling(self) -> &'static str {
        match self {
            UnavailableEscape::LessVerbose => "V",
            UnavailableEscape::MoreVerbose => "v",
            UnavailableEscape::Background => "&",
            UnavailableEscape::Suspend => "^Z",
        }
    }
}

impl EscapeAction {
    /// Maps the byte typed after the escape character to a command, if it is
    /// one. Commands take precedence over "escape char twice", as in OpenSSH,
    /// so with an escape character of `B`, typing `BB` sends a break.
    fn from_command_byte(byte: u8) -> Option<EscapeAction> {
        let action = match byte {
            b'.' => EscapeAction::Terminate,
            b'B' => EscapeAction::SendBreak,
            b'R' => EscapeAction::Rekey,
            b'#' => EscapeAction::ListChannels,
            b'?' => EscapeAction::Help,
            b'V' => EscapeAction::NotAvailable(UnavailableEscape::LessVerbose),
            b'v' => EscapeAction::NotAvailable(UnavailableEscape::MoreVerbose),
            b'&' => EscapeAction::NotAvailable(UnavailableEscape::Background),
            CTRL_Z => EscapeAction::NotAvailable(UnavailableEscape::Suspend),
            _ => return None,
        };
        Some(action)
    }

    /// The bytes to write to the session's stderr when this action runs.
    ///
    /// `escape_char` is the session's escape character (see
    /// [`EscapeFilter::escape_char`]). The result is bytes rather than a
    /// string because the escape character may be any byte, and it is echoed
    /// raw. It is empty for [`EscapeAction::Rekey`], which prints nothing.
    /// For [`EscapeAction::ListChannels`] it is only the echo line; the
    /// caller appends the channel list.
    #[must_use]
    pub fn echo_text(self, escape_char: u8) -> Vec<u8> {
        let mut text = Vec::new();
        let mut echo_line = |suffix: &str| {
            text.push(escape_char);
            text.extend_from_slice(suffix.as_bytes());
            text.extend_from_slice(b"\r\n");
        };
        match self {
            EscapeAction::Terminate => echo_line("."),
            EscapeAction::SendBreak => echo_line("B"),
            EscapeAction::Rekey => {}
            EscapeAction::ListChannels => echo_line("#"),
            EscapeAction::Help => {
                echo_line("?");
                push_help(&mut text, escape_char);
            }
            EscapeAction::NotAvailable(which) => {
                echo_line(&format!(
                    "{} escape not available to multiplexed sessions",
                    which.spelling()
                ));
            }
        }
        text
    }
}

/// Appends the help listing for mux sessions: only the escapes this module
/// acts on, in the two-column layout ssh users know.
fn push_help(text: &mut Vec<u8>, escape_char: u8) {
    text.extend_from_slice(b"Escape sequences in this shared session:\r\n");
    let rows: [(&[u8], &str); 7] = [
        (b".", "close this session; the shared connection stays up"),
        (b"B", "send a BREAK to the remote side"),
        (b"R", "renegotiate the connection's keys"),
        (b"#", "show the open channels of the connection"),
        (
            b"C",
            "command line: forwards (-L -R -D -KL -KR -KD), decided by the policy",
        ),
        (b"?", "show this list"),
        (&[escape_char], "send the escape character itself"),
    ];
    for (command, meaning) in rows {
        text.push(b' ');
        text.push(escape_char);
        text.extend_from_slice(command);
        // Pad the command column to three characters so the dashes line up.
        text.resize(text.len() + 3usize.saturating_sub(command.len()), b' ');
        text.extend_from_slice(format!(" - {meaning}\r\n").as_bytes());
    }
    text.extend_from_slice(b"(An escape is only recognised at the start of a line.)\r\n");
}

/// Where the filter stands between two input bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Nothing has been read yet, or the last byte passed upstream was `\r`
    /// or `\n`: the escape character here begins an escape.
    LineStart,
    /// Inside a line: the escape character is ordinary data.
    MidLine,
    /// The escape character was seen at a line start and withheld; the next
    /// byte, possibly in a later read, decides what it meant.
    EscapePending,
    /// `~C` was seen: input goes to the command line's editor until the
    /// line is submitted or cancelled.
    CommandLine,
    /// `~.` was seen. The session is going away, so input is ignored.
    Terminated,
}

impl State {
    /// The state after `byte` has been passed upstream as data.
    fn after_data(byte: u8) -> State {
        if byte == b'\r' || byte == b'\n' {
            State::LineStart
        } else {
            State::MidLine
        }
    }
}

/// The escape filter of one mux tty session.
#[derive(Debug, Clone)]
pub struct EscapeFilter {
    escape_char: u8,
    state: State,
    /// The `~C` line being typed (empty outside [`State::CommandLine`]).
    editor: LineEditor,
}

impl EscapeFilter {
    /// A filter for `escape_char`, starting at the beginning of a line so an
    /// escape typed first thing is recognised.
    pub fn new(escape_char: u8) -> EscapeFilter {
        EscapeFilter {
            escape_char,
            state: State::LineStart,
            editor: LineEditor::default(),
        }
    }

    /// Builds the filter from the escape-char field of a mux `NEW_SESSION`
    /// request, or `None` when the session should have no filter.
    ///
    /// The wire value 0xFFFFFFFF means "no escape character". Anything else
    /// that does not fit in a byte cannot come from a real client and is
    /// treated the same way rather than truncated into some arbitrary byte.
    /// The caller must also skip the filter for sessions without a tty.
    pub fn from_wire(value: u32) -> Option<EscapeFilter> {
        // The "none" marker is itself too large for a byte, so one range
        // check covers both cases.
        u8::try_from(value).ok().map(EscapeFilter::new)
    }

    /// The session's escape character.
    #[cfg(test)]
    pub fn escape_char(&self) -> u8 {
        self.escape_char
    }

    /// Whether `~.` has been seen; from then on all input is discarded.
    #[cfg(test)]
    pub fn is_terminated(&self) -> bool {
        self.state == State::Terminated
    }

    /// Filters one read from the session's stdin.
    ///
    /// Returns data and local pieces in input order; adjacent data is merged
    /// into one [`Filtered::Data`], adjacent echo into one [`Local::Echo`].
    /// An escape character at the end of `input` is held back until the next
    /// call shows what follows it. After `~C` every byte goes to the command
    /// line until it ends, and a lone Esc at the end of `input` cancels it
    /// (see [`LineEditor::end_of_read`]). After [`EscapeAction::Terminate`]
    /// the rest of `input`, and of every later call, is dropped.
    #[must_use = "the filtered data must be sent upstream"]
    pub fn filter(&mut self, input: &[u8]) -> Vec<Filtered> {
        let mut out = Vec::new();
        let mut data = Vec::with_capacity(input.len());

        for &byte in input {
            match self.state {
                State::Terminated => break,
                State::LineStart if byte == self.escape_char => {
                    self.state = State::EscapePending;
                }
                State::LineStart | State::MidLine => {
                    data.push(byte);
                    self.state = State::after_data(byte);
                }
                State::EscapePending if byte == b'C' => {
                    push_local(&mut out, &mut data, Local::Echo(cmdline::PROMPT.to_vec()));
                    self.state = State::CommandLine;
                }
                State::CommandLine => {
                    let mut echo = Vec::new();
                    let finished = self.editor.feed(byte, &mut echo);
                    self.edited(echo, finished, &mut out);
                }
                State::EscapePending => match EscapeAction::from_command_byte(byte) {
                    Some(action) => {
                        push_local(&mut out, &mut data, Local::Action(action));
                        // A command sends nothing upstream, so the line is
                        // still at its start and another escape may follow
                        // straight away, as in OpenSSH.
                        self.state = if action == EscapeAction::Terminate {
                            State::Terminated
                        } else {
                            State::LineStart
                        };
                    }
                    None => {
                        // Doubling the escape character sends one copy; any
                        // other byte means it was not an escape after all, so
                        // the withheld character goes out with it.
                        if byte != self.escape_char {
                            data.push(self.escape_char);
                        }
                        data.push(byte);
                        self.state = State::after_data(byte);
                    }
                },
            }
        }

        if self.state == State::CommandLine {
            let mut echo = Vec::new();
            let finished = self.editor.end_of_read(&mut echo);
            self.edited(echo, finished, &mut out);
        }
        flush_data(&mut data, &mut out);
        out
    }

    /// Reports what one step of the command line's editor produced. Once
    /// the line is over the session is at the start of a line again, so an
    /// escape may follow at once.
    fn edited(&mut self, echo: Vec<u8>, finished: Option<Finished>, out: &mut Vec<Filtered>) {
        // Nothing goes upstream while the command line is open.
        if !echo.is_empty() {
            append_local(out, Local::Echo(echo));
        }
        match finished {
            None => {}
            Some(Finished::Cancelled) => self.state = State::LineStart,
            Some(Finished::Submitted(line)) => {
                out.push(Filtered::Local(Local::CommandLine(line)));
                self.state = State::LineStart;
            }
        }
    }
}

/// Moves pending data, if any, into the output as one chunk.
fn flush_data(data: &mut Vec<u8>, out: &mut Vec<Filtered>) {
    if !data.is_empty() {
        out.push(Filtered::Data(std::mem::take(data)));
    }
}

/// Appends a local piece after the data before it.
fn push_local(out: &mut Vec<Filtered>, data: &mut Vec<u8>, local: Local) {
    flush_data(data, out);
    append_local(out, local);
}

/// Appends a local piece; echo right after echo joins it, so a typed line
/// comes out as one piece per read.
fn append_local(out: &mut Vec<Filtered>, local: Local) {
    match (out.last_mut(), local) {
        (Some(Filtered::Local(Local::Echo(earlier))), Local::Echo(more)) => {
            earlier.extend_from_slice(&more);
        }
        (_, local) => out.push(Filtered::Local(local)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(bytes: &[u8]) -> Filtered {
        Filtered::Data(bytes.to_vec())
    }

    fn action(action: EscapeAction) -> Filtered {
        Filtered::Local(Local::Action(action))
    }

    fn echo(bytes: &[u8]) -> Filtered {
        Filtered::Local(Local::Echo(bytes.to_vec()))
    }

    fn command_line(line: &str) -> Filtered {
        Filtered::Local(Local::CommandLine(line.to_string()))
    }

    fn tilde() -> EscapeFilter {
        EscapeFilter::from_wire(u32::from(b'~')).expect("valid escape char")
    }

    #[test]
    fn from_wire_none_and_out_of_range() {
        assert!(EscapeFilter::from_wire(0xFFFF_FFFF).is_none());
        assert!(EscapeFilter::from_wire(0x100).is_none());
        assert!(EscapeFilter::from_wire(0x7E7E).is_none());
        assert_eq!(
            EscapeFilter::from_wire(0x7E).map(|f| f.escape_char()),
            Some(b'~')
        );
        assert_eq!(
            EscapeFilter::from_wire(0xFF).map(|f| f.escape_char()),
            Some(0xFF)
        );
        assert_eq!(EscapeFilter::from_wire(0).map(|f| f.escape_char()), Some(0));
    }

    #[test]
    fn plain_data_passes_through() {
        let mut f = tilde();
        assert_eq!(f.filter(b"hello world"), vec![data(b"hello world")]);
        assert_eq!(f.filter(b""), vec![]);
    }

    #[test]
    fn escape_at_very_start_is_recognised() {
        let mut f = tilde();
        assert_eq!(f.filter(b"~."), vec![action(EscapeAction::Terminate)]);
        assert!(f.is_terminated());
    }

    #[test]
    fn escape_after_cr_or_lf_but_not_mid_line() {
        let mut f = tilde();
        assert_eq!(
            f.filter(b"ls\r~B"),
            vec![data(b"ls\r"), action(EscapeAction::SendBreak)]
        );

        let mut f = tilde();
        assert_eq!(
            f.filter(b"ls\n~B"),
            vec![data(b"ls\n"), action(EscapeAction::SendBreak)]
        );

        let mut f = tilde();
        assert_eq!(f.filter(b"a~."), vec![data(b"a~.")]);
        assert!(!f.is_terminated());
    }

    #[test]
    fn terminate_drops_rest_of_read_and_later_reads() {
        let mut f = tilde();
        assert_eq!(
            f.filter(b"echo hi\r~.rm -rf\r"),
            vec![data(b"echo hi\r"), action(EscapeAction::Terminate)]
        );
        assert!(f.is_terminated());
        assert_eq!(f.filter(b"more\r~."), vec![]);
    }

    #[test]
    fn doubled_escape_sends_one() {
        let mut f = tilde();
        assert_eq!(f.filter(b"~~"), vec![data(b"~")]);
        // The `~` just sent is ordinary data, so the line is no longer at its
        // start and a further `~.` is not an escape.
        assert_eq!(f.filter(b"~."), vec![data(b"~.")]);
    }

    #[test]
    fn escape_then_other_byte_sends_both() {
        let mut f = tilde();
        assert_eq!(f.filter(b"~x~."), vec![data(b"~x~.")]);

        // `~I` is only an escape from OpenSSH 10.3 on; 9.2 sends it on.
        let mut f = tilde();
        assert_eq!(f.filter(b"~I"), vec![data(b"~I")]);
    }

    #[test]
    fn escape_then_newline_keeps_line_start() {
        let mut f = tilde();
        assert_eq!(
            f.filter(b"~\r~."),
            vec![data(b"~\r"), action(EscapeAction::Terminate)]
        );
    }

    #[test]
    fn pending_escape_split_across_reads() {
        let mut f = tilde();
        assert_eq!(f.filter(b"abc\r~"), vec![data(b"abc\r")]);
        assert_eq!(f.filter(b"."), vec![action(EscapeAction::Terminate)]);

        let mut f = tilde();
        assert_eq!(f.filter(b"~"), vec![]);
        assert_eq!(f.filter(b"x"), vec![data(b"~x")]);

        let mut f = tilde();
        assert_eq!(f.filter(b"\r~"), vec![data(b"\r")]);
        assert_eq!(f.filter(b"~"), vec![data(b"~")]);
    }

    #[test]
    fn newline_split_from_escape() {
        let mut f = tilde();
        assert_eq!(f.filter(b"abc\r"), vec![data(b"abc\r")]);
        assert_eq!(f.filter(b"~R"), vec![action(EscapeAction::Rekey)]);
        assert_eq!(f.filter(b"abc"), vec![data(b"abc")]);
        assert_eq!(f.filter(b"~R"), vec![data(b"~R")]);
    }

    #[test]
    fn escape_may_follow_a_command_directly() {
        let mut f = tilde();
        assert_eq!(
            f.filter(b"\r~B~#~."),
            vec![
                data(b"\r"),
                action(EscapeAction::SendBreak),
                action(EscapeAction::ListChannels),
                action(EscapeAction::Terminate),
            ]
        );
    }

    #[test]
    fn data_and_actions_keep_their_order() {
        let mut f = tilde();
        assert_eq!(
            f.filter(b"one\r~Btwo\n~?three"),
            vec![
                data(b"one\r"),
                action(EscapeAction::SendBreak),
                data(b"two\n"),
                action(EscapeAction::Help),
                data(b"three"),
            ]
        );
    }

    #[test]
    fn consecutive_lines() {
        let mut f = tilde();
        assert_eq!(
            f.filter(b"a\rb\r~#c\r\n~~d\r~zz"),
            vec![
                data(b"a\rb\r"),
                action(EscapeAction::ListChannels),
                data(b"c\r\n~d\r~zz"),
            ]
        );
    }

    #[test]
    fn all_commands_are_recognised() {
        let cases: [(u8, EscapeAction); 9] = [
            (b'.', EscapeAction::Terminate),
            (b'B', EscapeAction::SendBreak),
            (b'R', EscapeAction::Rekey),
            (b'#', EscapeAction::ListChannels),
            (b'?', EscapeAction::Help),
            (
                b'V',
                EscapeAction::NotAvailable(UnavailableEscape::LessVerbose),
            ),
            (
                b'v',
                EscapeAction::NotAvailable(UnavailableEscape::MoreVerbose),
            ),
            (
                b'&',
                EscapeAction::NotAvailable(UnavailableEscape::Background),
            ),
            (0x1a, EscapeAction::NotAvailable(UnavailableEscape::Suspend)),
        ];
        for (byte, expected) in cases {
            let mut f = tilde();
            assert_eq!(
                f.filter(&[b'~', byte]),
                vec![action(expected)],
                "byte {byte:#x}"
            );
        }
    }

    fn prompt_then(typed: &[u8]) -> Filtered {
        let mut text = cmdline::PROMPT.to_vec();
        text.extend_from_slice(typed);
        echo(&text)
    }

    #[test]
    fn command_line_is_echoed_and_never_sent_upstream() {
        let mut f = tilde();
        assert_eq!(
            f.filter(b"ls\r~C-L 80:h:80\rmore"),
            vec![
                data(b"ls\r"),
                prompt_then(b"-L 80:h:80\r\n"),
                command_line("-L 80:h:80"),
                data(b"more"),
            ]
        );
    }

    #[test]
    fn command_line_across_reads() {
        let mut f = tilde();
        assert_eq!(f.filter(b"~"), vec![]);
        assert_eq!(f.filter(b"C"), vec![prompt_then(b"")]);
        assert_eq!(f.filter(b"-KL"), vec![echo(b"-KL")]);
        assert_eq!(f.filter(b" 1\x7f"), vec![echo(b" 1\x08 \x08")]);
        assert_eq!(
            f.filter(b"2\r"),
            vec![echo(b"2\r\n"), command_line("-KL 2")]
        );
        assert_eq!(f.filter(b"ls"), vec![data(b"ls")]);
    }

    #[test]
    fn escapes_inside_the_command_line_are_text() {
        let mut f = tilde();
        assert_eq!(
            f.filter(b"~C~.\r"),
            vec![prompt_then(b"~.\r\n"), command_line("~.")]
        );
        assert!(!f.is_terminated());
    }

    #[test]
    fn after_the_command_line_an_escape_may_follow_at_once() {
        let mut f = tilde();
        assert_eq!(
            f.filter(b"~Cx\r~."),
            vec![
                prompt_then(b"x\r\n"),
                command_line("x"),
                action(EscapeAction::Terminate)
            ]
        );
    }

    #[test]
    fn a_cancelled_command_line_sends_nothing() {
        let mut f = tilde();
        assert_eq!(
            f.filter(b"~Cabc\x03~#"),
            vec![prompt_then(b"abc\r\n"), action(EscapeAction::ListChannels)]
        );

        // Esc alone at the end of a read cancels; what follows is data.
        let mut f = tilde();
        assert_eq!(f.filter(b"~Cab\x1b"), vec![prompt_then(b"ab\r\n")]);
        assert_eq!(f.filter(b"x"), vec![data(b"x")]);

        // An arrow key in one read is ignored, the line goes on.
        let mut f = tilde();
        assert_eq!(f.filter(b"~Ca\x1b[D"), vec![prompt_then(b"a")]);
        assert_eq!(f.filter(b"\r"), vec![echo(b"\r\n"), command_line("a")]);
    }

    #[test]
    fn command_line_with_c_as_the_escape_char() {
        let mut f = EscapeFilter::new(b'C');
        assert_eq!(
            f.filter(b"CC?\r"),
            vec![prompt_then(b"?\r\n"), command_line("?")]
        );
    }

    #[test]
    fn non_default_escape_char() {
        let mut f = EscapeFilter::from_wire(u32::from(b'%')).expect("valid escape char");
        assert_eq!(f.filter(b"\r~."), vec![data(b"\r~.")]);
        assert_eq!(
            f.filter(b"\r%B%%x%y"),
            vec![data(b"\r"), action(EscapeAction::SendBreak), data(b"%x%y")]
        );
        assert_eq!(
            f.filter(b"\n%."),
            vec![data(b"\n"), action(EscapeAction::Terminate)]
        );
    }

    #[test]
    fn control_byte_as_escape_char() {
        // `EscapeChar ^]` in ssh_config gives 0x1d.
        let mut f = EscapeFilter::new(0x1d);
        assert_eq!(f.filter(b"\x1d\x1d\r\x1dq"), vec![data(b"\x1d\r\x1dq")]);
    }

    #[test]
    fn command_wins_over_doubled_escape() {
        let mut f = EscapeFilter::new(b'B');
        assert_eq!(f.filter(b"BB"), vec![action(EscapeAction::SendBreak)]);
    }

    #[test]
    fn echo_texts() {
        let tilde = b'~';
        assert_eq!(EscapeAction::Terminate.echo_text(tilde), b"~.\r\n");
        assert_eq!(EscapeAction::SendBreak.echo_text(tilde), b"~B\r\n");
        assert_eq!(EscapeAction::ListChannels.echo_text(tilde), b"~#\r\n");
        assert_eq!(EscapeAction::Rekey.echo_text(tilde), b"");
        assert_eq!(
            EscapeAction::NotAvailable(UnavailableEscape::Background).echo_text(tilde),
            b"~& escape not available to multiplexed sessions\r\n"
        );
        assert_eq!(
            EscapeAction::NotAvailable(UnavailableEscape::Suspend).echo_text(tilde),
            b"~^Z escape not available to multiplexed sessions\r\n"
        );
        assert_eq!(
            EscapeAction::NotAvailable(UnavailableEscape::MoreVerbose).echo_text(b'%'),
            b"%v escape not available to multiplexed sessions\r\n"
        );
        assert_eq!(EscapeAction::Terminate.echo_text(0xFF), b"\xFF.\r\n");
    }

    #[test]
    fn help_lists_exactly_the_mux_escapes() {
        let help = EscapeAction::Help.echo_text(b'%');
        let text = String::from_utf8(help).expect("ASCII help");
        assert!(text.starts_with("%?\r\n"));
        assert!(text.ends_with("\r\n"));
        assert!(text.split_inclusive("\r\n").all(|l| l.ends_with("\r\n")));

        let listed: Vec<&str> = text
            .split("\r\n")
            .filter_map(|line| line.strip_prefix(" %"))
            .map(|rest| rest.split_whitespace().next().unwrap_or(""))
            .collect();
        assert_eq!(listed, [".", "B", "R", "#", "C", "?", "%"]);
        assert!(text.contains(" %%   - "));
        assert!(text.contains(" %.   - "));
        assert!(text.contains("start of a line"));
    }
}
