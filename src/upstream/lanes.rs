//! Which upstream connection a new session channel goes on, so that a
//! person's typing never queues behind a bulk transfer on the same TCP
//! connection.
//!
//! One TCP connection is one FIFO each way: every byte of an scp that
//! sshd has sent (or that we have handed to the socket) is ahead of the
//! next keystroke's echo. The window of one channel cannot be held back
//! per channel on russh's client (it refills on receipt), so the only
//! isolation that works in both directions is a second connection: a
//! *lane*. Interactive sessions (with a tty) and bulk ones (everything
//! else) are kept on different connections whenever both are open and an
//! agent can authenticate the second one.
//!
//! Pure bookkeeping: no I/O. `upstream::overflow` owns the connections and
//! applies these rules.

/// What a session carries, as far as sharing a connection goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelClass {
    /// A session with a tty: someone is typing.
    Interactive,
    /// Anything else: scp, sftp, rsync, git, `ssh host cmd`.
    Bulk,
}

impl ChannelClass {
    pub fn of_session(want_tty: bool) -> ChannelClass {
        if want_tty {
            ChannelClass::Interactive
        } else {
            ChannelClass::Bulk
        }
    }

    fn other(self) -> ChannelClass {
        match self {
            ChannelClass::Interactive => ChannelClass::Bulk,
            ChannelClass::Bulk => ChannelClass::Interactive,
        }
    }
}

/// The sessions open on one connection, by class.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Load {
    pub interactive: usize,
    pub bulk: usize,
}

impl Load {
    pub fn total(&self) -> usize {
        self.interactive + self.bulk
    }

    pub fn carries(&self, class: ChannelClass) -> bool {
        self.count(class) > 0
    }

    pub fn add(&mut self, class: ChannelClass) {
        *self.slot(class) += 1;
    }

    /// Saturating: a release never makes a count wrap.
    pub fn remove(&mut self, class: ChannelClass) {
        let slot = self.slot(class);
        *slot = slot.saturating_sub(1);
    }

    fn count(&self, class: ChannelClass) -> usize {
        match class {
            ChannelClass::Interactive => self.interactive,
            ChannelClass::Bulk => self.bulk,
        }
    }

    fn slot(&mut self, class: ChannelClass) -> &mut usize {
        match class {
            ChannelClass::Interactive => &mut self.interactive,
            ChannelClass::Bulk => &mut self.bulk,
        }
    }
}

/// Where a new session goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// The first connection.
    Primary,
    /// The lane at this index of the slice given to [`place`].
    Lane(usize),
    /// A lane that does not exist yet.
    NewLane,
}

/// Places a session of `class`. It goes on the first connection unless
/// that one carries the other class and lanes can be opened; then on a
/// lane that carries none of the other class (a warm, empty one counts),
/// else on a new lane.
pub fn place(
    class: ChannelClass,
    primary: Load,
    lanes: &[Load],
    lanes_possible: bool,
) -> Placement {
    if !lanes_possible || !primary.carries(class.other()) {
        return Placement::Primary;
    }
    // Prefer a lane already carrying this class, then an empty one.
    let same = lanes
        .iter()
        .position(|l| l.carries(class) && !l.carries(class.other()));
    let empty = || lanes.iter().position(|l| l.total() == 0);
    match same.or_else(empty) {
        Some(index) => Placement::Lane(index),
        None => Placement::NewLane,
    }
}

/// Whether a lane should be opened ahead of need: someone types on the
/// first connection and no lane could take a bulk session without making
/// it wait for a new connection. (A burst of `ssh host cmd` next to an
/// open shell then costs a channel open each, not a login each.)
pub fn wants_warm_lane(primary: Load, lanes: &[Load]) -> bool {
    primary.interactive > 0 && !lanes.iter().any(|l| !l.carries(ChannelClass::Interactive))
}

/// Whether a lane with `lane` open sessions is no longer needed: it is
/// empty and nobody types on the first connection (so no bulk session is
/// expected to need it soon).
pub fn lane_is_done(lane: Load, primary: Load) -> bool {
    lane.total() == 0 && primary.interactive == 0
}

#[cfg(test)]
mod tests {
    use super::ChannelClass::{Bulk, Interactive};
    use super::*;

    fn load(interactive: usize, bulk: usize) -> Load {
        Load { interactive, bulk }
    }

    #[test]
    fn without_a_mix_everything_stays_on_the_first_connection() {
        assert_eq!(place(Bulk, load(0, 0), &[], true), Placement::Primary);
        assert_eq!(place(Bulk, load(0, 5), &[], true), Placement::Primary);
        assert_eq!(
            place(Interactive, load(3, 0), &[], true),
            Placement::Primary
        );
    }

    #[test]
    fn bulk_next_to_a_shell_goes_to_a_lane() {
        assert_eq!(place(Bulk, load(1, 0), &[], true), Placement::NewLane);
        // A warm lane, or one already carrying bulk, is reused.
        assert_eq!(
            place(Bulk, load(1, 0), &[load(0, 0)], true),
            Placement::Lane(0)
        );
        assert_eq!(
            place(Bulk, load(1, 0), &[load(1, 0), load(0, 2)], true),
            Placement::Lane(1)
        );
    }

    #[test]
    fn a_shell_opened_during_a_transfer_goes_to_a_lane_too() {
        assert_eq!(
            place(Interactive, load(0, 1), &[], true),
            Placement::NewLane
        );
        assert_eq!(
            place(Interactive, load(0, 1), &[load(0, 0)], true),
            Placement::Lane(0)
        );
        // Never onto a lane that carries bulk itself.
        assert_eq!(
            place(Interactive, load(0, 1), &[load(0, 3)], true),
            Placement::NewLane
        );
    }

    #[test]
    fn without_an_agent_there_is_one_connection() {
        assert_eq!(place(Bulk, load(1, 0), &[], false), Placement::Primary);
        assert_eq!(
            place(Interactive, load(0, 1), &[], false),
            Placement::Primary
        );
    }

    #[test]
    fn a_lane_is_kept_warm_while_someone_types_and_closes_after() {
        assert!(wants_warm_lane(load(1, 0), &[]));
        assert!(!wants_warm_lane(load(1, 0), &[load(0, 0)]));
        assert!(!wants_warm_lane(load(0, 4), &[]));
        // A lane of shells cannot take bulk.
        assert!(wants_warm_lane(load(1, 0), &[load(2, 0)]));

        assert!(!lane_is_done(load(0, 0), load(1, 0)));
        assert!(!lane_is_done(load(0, 1), load(0, 0)));
        assert!(lane_is_done(load(0, 0), load(0, 7)));
    }

    #[test]
    fn releases_never_wrap() {
        let mut l = load(0, 1);
        l.remove(Interactive);
        l.remove(Bulk);
        l.remove(Bulk);
        assert_eq!(l, load(0, 0));
    }
}
