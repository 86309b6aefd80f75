//! Terminal modes and window size for an upstream `pty-req`.
//!
//! A mux client passes its terminal as a file descriptor before it switches
//! to raw mode, so the master can read the user's real settings from it and
//! ask the server for a remote pty that behaves the same. This module turns
//! those settings into the encoded terminal modes of RFC 4254 §8, choosing
//! the same opcodes and values, in the same order, as OpenSSH's client so
//! that servers see nothing unusual, and reads the window size.

use std::os::fd::AsFd;

use russh::Pty;
use rustix::termios::{
    ControlModes, InputModes, LocalModes, OutputModes, SpecialCodeIndex, Termios, tcgetwinsize,
};

/// Linux's `_POSIX_VDISABLE`: a control character with this value is off.
const LOCAL_DISABLED_CHAR: u8 = 0;

/// How a disabled control character is sent. 255 is what OpenSSH uses, and
/// it makes the receiving side translate back to its own disabled value.
const WIRE_DISABLED_CHAR: u32 = 255;

/// The speed OpenSSH reports for any rate it does not know.
const FALLBACK_BAUD: u32 = 9600;

/// The rates OpenSSH's client can report on Linux. It converts the `B*`
/// constants of `speed_t` through a fixed table and sends 9600 for anything
/// else, so any other rate (Linux allows arbitrary ones) is reported the
/// same way here.
const KNOWN_BAUDS: [u32; 19] = [
    0, 50, 75, 110, 134, 150, 200, 300, 600, 1200, 1800, 2400, 4800, 9600, 19200, 38400, 57600,
    115200, 230400,
];

/// Control characters, in OpenSSH's order. Linux has no VDSUSP, VFLUSH,
/// VSWTCH or VSTATUS, and OpenSSH leaves out those the platform lacks.
const CONTROL_CHARS: [(Pty, SpecialCodeIndex); 14] = [
    (Pty::VINTR, SpecialCodeIndex::VINTR),
    (Pty::VQUIT, SpecialCodeIndex::VQUIT),
    (Pty::VERASE, SpecialCodeIndex::VERASE),
    (Pty::VKILL, SpecialCodeIndex::VKILL),
    (Pty::VEOF, SpecialCodeIndex::VEOF),
    (Pty::VEOL, SpecialCodeIndex::VEOL),
    (Pty::VEOL2, SpecialCodeIndex::VEOL2),
    (Pty::VSTART, SpecialCodeIndex::VSTART),
    (Pty::VSTOP, SpecialCodeIndex::VSTOP),
    (Pty::VSUSP, SpecialCodeIndex::VSUSP),
    (Pty::VREPRINT, SpecialCodeIndex::VREPRINT),
    (Pty::VWERASE, SpecialCodeIndex::VWERASE),
    (Pty::VLNEXT, SpecialCodeIndex::VLNEXT),
    (Pty::VDISCARD, SpecialCodeIndex::VDISCARD),
];

const INPUT_FLAGS: [(Pty, InputModes); 13] = [
    (Pty::IGNPAR, InputModes::IGNPAR),
    (Pty::PARMRK, InputModes::PARMRK),
    (Pty::INPCK, InputModes::INPCK),
    (Pty::ISTRIP, InputModes::ISTRIP),
    (Pty::INLCR, InputModes::INLCR),
    (Pty::IGNCR, InputModes::IGNCR),
    (Pty::ICRNL, InputModes::ICRNL),
    (Pty::IUCLC, InputModes::IUCLC),
    (Pty::IXON, InputModes::IXON),
    (Pty::IXANY, InputModes::IXANY),
    (Pty::IXOFF, InputModes::IXOFF),
    (Pty::IMAXBEL, InputModes::IMAXBEL),
    (Pty::IUTF8, InputModes::IUTF8),
];

const LOCAL_FLAGS: [(Pty, LocalModes); 13] = [
    (Pty::ISIG, LocalModes::ISIG),
    (Pty::ICANON, LocalModes::ICANON),
    (Pty::XCASE, LocalModes::XCASE),
    (Pty::ECHO, LocalModes::ECHO),
    (Pty::ECHOE, LocalModes::ECHOE),
    (Pty::ECHOK, LocalModes::ECHOK),
    (Pty::ECHONL, LocalModes::ECHONL),
    (Pty::NOFLSH, LocalModes::NOFLSH),
    (Pty::TOSTOP, LocalModes::TOSTOP),
    (Pty::IEXTEN, LocalModes::IEXTEN),
    (Pty::ECHOCTL, LocalModes::ECHOCTL),
    (Pty::ECHOKE, LocalModes::ECHOKE),
    (Pty::PENDIN, LocalModes::PENDIN),
];

const OUTPUT_FLAGS: [(Pty, OutputModes); 6] = [
    (Pty::OPOST, OutputModes::OPOST),
    (Pty::OLCUC, OutputModes::OLCUC),
    (Pty::ONLCR, OutputModes::ONLCR),
    (Pty::OCRNL, OutputModes::OCRNL),
    (Pty::ONOCR, OutputModes::ONOCR),
    (Pty::ONLRET, OutputModes::ONLRET),
];

const CONTROL_FLAGS: [(Pty, ControlModes); 4] = [
    (Pty::CS7, ControlModes::CS7),
    (Pty::CS8, ControlModes::CS8),
    (Pty::PARENB, ControlModes::PARENB),
    (Pty::PARODD, ControlModes::PARODD),
];

/// Encodes `t` as the terminal-modes list of a `pty-req`, without the
/// closing `TTY_OP_END` (russh adds that).
///
/// Order and values match OpenSSH's client: output speed, input speed, the
/// control characters, then input, local, output and control flags as 0/1.
pub fn encode_modes(t: &Termios) -> Vec<(Pty, u32)> {
    let mut modes = Vec::with_capacity(
        2 + CONTROL_CHARS.len()
            + INPUT_FLAGS.len()
            + LOCAL_FLAGS.len()
            + OUTPUT_FLAGS.len()
            + CONTROL_FLAGS.len(),
    );

    modes.push((Pty::TTY_OP_OSPEED, reported_baud(t.output_speed())));
    modes.push((Pty::TTY_OP_ISPEED, reported_baud(t.input_speed())));

    modes.extend(CONTROL_CHARS.iter().map(|&(op, index)| {
        let value = match t.special_codes[index] {
            LOCAL_DISABLED_CHAR => WIRE_DISABLED_CHAR,
            c => u32::from(c),
        };
        (op, value)
    }));

    // Flags are tested with "any bit in common", as OpenSSH does. That only
    // matters for CS7 and CS8, which are values of the multi-bit CSIZE field
    // rather than single bits: a CS8 terminal therefore reports CS7=1 too.
    // OpenSSH's sshd applies the two in order, so it still ends up with CS8;
    // reporting CS7 "correctly" as 0 would make no difference there, and
    // matching the reference client keeps us indistinguishable from it.
    let flag = |set: bool| u32::from(set);
    modes.extend(
        INPUT_FLAGS
            .iter()
            .map(|&(op, bit)| (op, flag(t.input_modes.intersects(bit)))),
    );
    modes.extend(
        LOCAL_FLAGS
            .iter()
            .map(|&(op, bit)| (op, flag(t.local_modes.intersects(bit)))),
    );
    modes.extend(
        OUTPUT_FLAGS
            .iter()
            .map(|&(op, bit)| (op, flag(t.output_modes.intersects(bit)))),
    );
    modes.extend(
        CONTROL_FLAGS
            .iter()
            .map(|&(op, bit)| (op, flag(t.control_modes.intersects(bit)))),
    );

    modes
}

/// The baud rate to report for a terminal speed.
fn reported_baud(speed: u32) -> u32 {
    if KNOWN_BAUDS.contains(&speed) {
        speed
    } else {
        FALLBACK_BAUD
    }
}

/// The window size of the terminal `fd` as `(columns, rows, x pixels,
/// y pixels)`, the order a `pty-req` and `window-change` carry them in, or
/// `None` if `fd` is not a terminal or the size cannot be read. OpenSSH
/// sends all zeros in that case.
pub fn window_size(fd: impl AsFd) -> Option<(u32, u32, u32, u32)> {
    let size = tcgetwinsize(fd).ok()?;
    Some((
        u32::from(size.ws_col),
        u32::from(size.ws_row),
        u32::from(size.ws_xpixel),
        u32::from(size.ws_ypixel),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::collections::HashMap;
    use std::os::fd::OwnedFd;

    use rustix::pty::{OpenptFlags, grantpt, ioctl_tiocgptpeer, openpt, unlockpt};
    use rustix::termios::{OptionalActions, Winsize, tcgetattr, tcsetattr, tcsetwinsize};

    /// A fresh pseudo-terminal; returns (controller, terminal).
    fn open_pty() -> (OwnedFd, OwnedFd) {
        let flags = OpenptFlags::RDWR | OpenptFlags::NOCTTY;
        let controller = openpt(flags).expect("openpt");
        grantpt(&controller).expect("grantpt");
        unlockpt(&controller).expect("unlockpt");
        let terminal = ioctl_tiocgptpeer(&controller, flags).expect("open pty peer");
        (controller, terminal)
    }

    /// Termios with every flag this module reports cleared and every control
    /// character set to a distinct, recognisable value.
    fn blank_termios(fd: &OwnedFd) -> Termios {
        let mut t = tcgetattr(fd).expect("tcgetattr");
        t.input_modes = InputModes::empty();
        t.output_modes = OutputModes::empty();
        t.local_modes = LocalModes::empty();
        t.control_modes
            .remove(ControlModes::CSIZE | ControlModes::PARENB | ControlModes::PARODD);
        t.control_modes.insert(ControlModes::CREAD);
        for (n, &(_, index)) in (1u8..).zip(CONTROL_CHARS.iter()) {
            t.special_codes[index] = n;
        }
        t
    }

    fn apply(fd: &OwnedFd, t: &Termios) -> HashMap<u8, u32> {
        tcsetattr(fd, OptionalActions::Now, t).expect("tcsetattr");
        let read_back = tcgetattr(fd).expect("tcgetattr");
        let encoded = encode_modes(&read_back);
        let map: HashMap<u8, u32> = encoded.iter().map(|&(op, v)| (op as u8, v)).collect();
        assert_eq!(map.len(), encoded.len(), "an opcode appears twice");
        map
    }

    #[test]
    fn encodes_every_mode_once_in_openssh_order() {
        let (_controller, terminal) = open_pty();
        let t = tcgetattr(&terminal).expect("tcgetattr");
        let ops: Vec<u8> = encode_modes(&t).iter().map(|&(op, _)| op as u8).collect();
        let expected: Vec<u8> = [129, 128]
            .into_iter()
            .chain(1..=10)
            .chain([12, 13, 14, 18])
            .chain(30..=42)
            .chain(50..=62)
            .chain(70..=75)
            .chain(90..=93)
            .collect();
        assert_eq!(ops, expected);
    }

    #[test]
    fn all_flags_clear() {
        let (_controller, terminal) = open_pty();
        let modes = apply(&terminal, &blank_termios(&terminal));

        for (n, &(op, _)) in (1u32..).zip(CONTROL_CHARS.iter()) {
            assert_eq!(modes[&(op as u8)], n, "{op:?}");
        }
        for op in (30..=42).chain(50..=62).chain(70..=75) {
            assert_eq!(modes[&op], 0, "opcode {op}");
        }
    }

    #[test]
    fn single_flags_are_reported() {
        let (_controller, terminal) = open_pty();
        let mut t = blank_termios(&terminal);
        t.input_modes = InputModes::ICRNL | InputModes::IXON | InputModes::IUTF8;
        t.local_modes = LocalModes::ICANON | LocalModes::ECHO | LocalModes::ECHOKE;
        t.output_modes = OutputModes::OPOST | OutputModes::ONLCR;
        let modes = apply(&terminal, &t);

        let set: [u8; 8] = [36, 38, 42, 51, 53, 61, 70, 72];
        for op in (30..=42).chain(50..=62).chain(70..=75) {
            let expected = u32::from(set.contains(&op));
            assert_eq!(modes[&op], expected, "opcode {op}");
        }
    }

    #[test]
    fn pty_control_flags_read_back() {
        // Linux pseudo-terminals force CS8 and clear PARENB whatever is set,
        // so that is all a real pty can show. CS7 is reported as well, as
        // OpenSSH does (see `encode_modes`).
        let (_controller, terminal) = open_pty();
        let mut t = blank_termios(&terminal);
        t.control_modes
            .insert(ControlModes::CS7 | ControlModes::PARENB | ControlModes::PARODD);
        let modes = apply(&terminal, &t);
        assert_eq!(modes[&(Pty::CS7 as u8)], 1);
        assert_eq!(modes[&(Pty::CS8 as u8)], 1);
        assert_eq!(modes[&(Pty::PARENB as u8)], 0);
        assert_eq!(modes[&(Pty::PARODD as u8)], 1);
    }

    #[test]
    fn control_flags_are_reported_like_openssh() {
        // A pty will not keep these settings, so they are encoded straight
        // from a modified copy of its termios.
        let (_controller, terminal) = open_pty();
        let base = blank_termios(&terminal);
        let encode = |size: ControlModes, extra: ControlModes| {
            let mut t = base.clone();
            t.control_modes.insert(size | extra);
            let modes: HashMap<u8, u32> = encode_modes(&t)
                .into_iter()
                .map(|(op, v)| (op as u8, v))
                .collect();
            [Pty::CS7, Pty::CS8, Pty::PARENB, Pty::PARODD].map(|op| modes[&(op as u8)])
        };

        let none = ControlModes::empty();
        assert_eq!(encode(ControlModes::CS5, none), [0, 0, 0, 0]);
        assert_eq!(encode(ControlModes::CS6, none), [0, 1, 0, 0]);
        assert_eq!(encode(ControlModes::CS7, none), [1, 1, 0, 0]);
        assert_eq!(encode(ControlModes::CS8, none), [1, 1, 0, 0]);
        assert_eq!(
            encode(ControlModes::CS8, ControlModes::PARENB),
            [1, 1, 1, 0]
        );
        assert_eq!(
            encode(
                ControlModes::CS7,
                ControlModes::PARENB | ControlModes::PARODD
            ),
            [1, 1, 1, 1]
        );
    }

    #[test]
    fn control_characters_and_disabled_ones() {
        let (_controller, terminal) = open_pty();
        let mut t = blank_termios(&terminal);
        t.special_codes[SpecialCodeIndex::VINTR] = 0x03;
        t.special_codes[SpecialCodeIndex::VERASE] = 0x7f;
        t.special_codes[SpecialCodeIndex::VEOL] = 0;
        t.special_codes[SpecialCodeIndex::VDISCARD] = 0;
        let modes = apply(&terminal, &t);

        assert_eq!(modes[&(Pty::VINTR as u8)], 3);
        assert_eq!(modes[&(Pty::VERASE as u8)], 127);
        assert_eq!(modes[&(Pty::VEOL as u8)], 255);
        assert_eq!(modes[&(Pty::VDISCARD as u8)], 255);
        assert_eq!(modes[&(Pty::VQUIT as u8)], 2);
    }

    #[test]
    fn speeds_are_baud_numbers() {
        let (_controller, terminal) = open_pty();
        let mut t = blank_termios(&terminal);
        t.set_input_speed(9600).expect("input speed");
        t.set_output_speed(38400).expect("output speed");
        let modes = apply(&terminal, &t);
        assert_eq!(modes[&(Pty::TTY_OP_ISPEED as u8)], 9600);
        assert_eq!(modes[&(Pty::TTY_OP_OSPEED as u8)], 38400);
    }

    #[test]
    fn unknown_speeds_fall_back_like_openssh() {
        assert_eq!(reported_baud(38400), 38400);
        assert_eq!(reported_baud(0), 0);
        assert_eq!(reported_baud(12345), 9600);
    }

    #[test]
    fn window_size_reads_back() {
        let (_controller, terminal) = open_pty();
        let size = Winsize {
            ws_row: 50,
            ws_col: 132,
            ws_xpixel: 1056,
            ws_ypixel: 800,
        };
        tcsetwinsize(&terminal, size).expect("tcsetwinsize");
        assert_eq!(window_size(&terminal), Some((132, 50, 1056, 800)));
    }

    #[test]
    fn window_size_of_non_terminal_is_none() {
        let (read_end, _write_end) = std::io::pipe().expect("pipe");
        assert_eq!(window_size(&read_end), None);
    }
}
