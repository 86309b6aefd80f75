#!/usr/bin/env python3
"""Where a new session's time goes, phase by phase, for several muxguard
builds and OpenSSH's master side by side against one throwaway sshd.

Each round runs one in-process session (bench/muxclient.py's, what the
stock client sends for `ssh -S sock host true`) through every master, in
a fresh random order per round, and stamps five points as the client sees
them: HELLO answered, ALIVE_CHECK answered, NEW_SESSION and its three
descriptors sent, SESSION_OPENED, EXIT_MESSAGE, the master's EOF. The
report gives each phase's median per master and, for every build after
the first, the median of its per-round differences from the first.

Why shuffled and paired: with a fixed order, two copies of one binary
differed by up to 40 us in a phase (whoever follows OpenSSH's master
finds the machine in another state). Shuffled, a seat bias is left: the
master started second came out 21 to 69 us slower in total than a copy
of the same build started first (2026-12-06, most of it after
SESSION_OPENED). So with several builds there are two passes, the
second with the builds started in reverse order, and the differences
shown are the mean of the two passes' (with two builds the seat's bias
cancels; each pass's own figure is shown too).

    python3 bench/phases.py -n 1500 OLD_BINARY NEW_BINARY

Python standard library only.
"""

import argparse
import random
import statistics
import tempfile

import bench
import muxclient as mc

PHASES = ["hello", "alive", "sent", "opened", "exit", "eof", "total"]


def session_phases(sock_path):
    """One session `true`: the milliseconds of each phase, then the total."""
    stamps = []
    mc.session(sock_path, marks=stamps)
    phases = [(b - a) * 1000.0 for a, b in zip(stamps, stamps[1:])]
    return phases + [(stamps[-1] - stamps[0]) * 1000.0]


def measure(env, cfg, builds, seats, runs):
    """One pass: a master per build, started in the order `seats` gives
    (indices into `builds`), and OpenSSH's; `runs` shuffled rounds.
    Returns the phases of every round by build index ("openssh" for
    OpenSSH's master)."""
    masters = {}
    for seat, build in enumerate(seats):
        masters[build] = bench.start_muxguard(
            env, cfg, builds[build], name=f"seat{seat}",
            label=f"muxguard {build}")
    masters["openssh"] = bench.start_openssh(env, cfg)
    try:
        for m in masters.values():  # warm-up: first use, the warm channel
            for _ in range(5):
                session_phases(m.sock)
        results = {key: [] for key in masters}
        for _ in range(runs):
            order = list(masters.items())
            random.shuffle(order)
            for key, m in order:
                results[key].append(session_phases(m.sock))
        return results
    finally:
        for m in masters.values():
            m.stop()


def paired_diffs(base, other):
    """The median per-round difference other - base of each phase, us."""
    pairs = list(zip(base, other))
    return [statistics.median(b[k] - a[k] for a, b in pairs) * 1000.0
            for k in range(len(PHASES))]


def print_row(label, values, fmt):
    print(f"| {label} | " + " | ".join(fmt.format(v) for v in values) + " |")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", "--runs", type=int, default=600,
                    help="rounds per pass (two passes with two builds or more)")
    ap.add_argument("binaries", nargs="+", help="muxguard builds to compare")
    args = ap.parse_args()
    builds = args.binaries
    # With several builds, a second pass seats them in reverse order, so
    # that the seat's own bias (see the module's doc) cancels in the mean
    # of the two passes' differences.
    passes = [list(range(len(builds)))]
    if len(builds) > 1:
        passes.append(passes[0][::-1])
    with tempfile.TemporaryDirectory(prefix="mgphases-") as tmp:
        procs = bench.Procs()
        try:
            env = bench.Env(tmp, procs)
            env.start_sshd()
            cfg = env.write_config(bench.DEFAULT_CIPHERS.split(",")[0])
            results = [measure(env, cfg, builds, seats, args.runs)
                       for seats in passes]
        finally:
            procs.stop_all()
    keys = list(range(len(builds))) + ["openssh"]
    label = {k: (f"muxguard {k}: {builds[k]}" if k != "openssh"
                 else "OpenSSH master") for k in keys}
    print(f"\nIn-process session `true`, {len(passes)} x {args.runs} rounds "
          "in shuffled order; median ms per phase:\n")
    print("| master | " + " | ".join(PHASES) + " |")
    print("|---|" + "---:|" * len(PHASES))
    for k in keys:
        pooled = [row for r in results for row in r[k]]
        print_row(label[k], [statistics.median(c) for c in zip(*pooled)],
                  "{:.3f}")
    print(f"\nMedian of per-round differences from {label[0]}, us"
          + (", the mean of both seatings:" if len(passes) > 1 else ":")
          + "\n")
    print("| master | " + " | ".join(PHASES) + " |")
    print("|---|" + "---:|" * len(PHASES))
    for k in keys[1:]:
        per_pass = [paired_diffs(r[0], r[k]) for r in results]
        print_row(label[k], [statistics.mean(d) for d in zip(*per_pass)],
                  "{:+.0f}")
        if len(passes) > 1:
            print_row(f"{label[k]}, each seating",
                      [" / ".join(f"{d:+.0f}" for d in ds)
                       for ds in zip(*per_pass)], "{}")


if __name__ == "__main__":
    main()
