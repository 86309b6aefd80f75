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
finds the machine in another state); shuffled, the same copies agree
within about 20 us, so a change smaller than that is not shown here.

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


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", "--runs", type=int, default=600)
    ap.add_argument("binaries", nargs="+", help="muxguard builds to compare")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="mgphases-") as tmp:
        procs = bench.Procs()
        try:
            env = bench.Env(tmp, procs)
            env.start_sshd()
            cfg = env.write_config(bench.DEFAULT_CIPHERS.split(",")[0])
            masters = []
            for i, binary in enumerate(args.binaries):
                masters.append(bench.start_muxguard(
                    env, cfg, binary, name=f"mg{i}",
                    label=f"muxguard {i}: {binary}"))
            masters.append(bench.start_openssh(env, cfg))
            results = {m.name: [] for m in masters}
            for m in masters:  # warm-up: first use, the warm channel
                for _ in range(5):
                    session_phases(m.sock)
            for _ in range(args.runs):
                order = list(masters)
                random.shuffle(order)
                for m in order:
                    results[m.name].append(session_phases(m.sock))
        finally:
            procs.stop_all()
    print(f"\nIn-process session `true`, {args.runs} rounds in shuffled "
          "order; median ms per phase:\n")
    print("| master | " + " | ".join(PHASES) + " |")
    print("|---|" + "---:|" * len(PHASES))
    for m in masters:
        columns = zip(*results[m.name])
        print(f"| {m.label} | "
              + " | ".join(f"{statistics.median(c):.3f}" for c in columns)
              + " |")
    first = masters[0]
    print(f"\nMedian of per-round differences from {first.label}, us:\n")
    print("| master | " + " | ".join(PHASES) + " |")
    print("|---|" + "---:|" * len(PHASES))
    for m in masters[1:]:
        pairs = list(zip(results[first.name], results[m.name]))
        diffs = [statistics.median(b[k] - a[k] for a, b in pairs) * 1000.0
                 for k in range(len(PHASES))]
        print(f"| {m.label} | " + " | ".join(f"{d:+.0f}" for d in diffs)
              + " |")


if __name__ == "__main__":
    main()
