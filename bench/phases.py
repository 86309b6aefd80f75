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
import os
import random
import socket
import statistics
import struct
import tempfile
import time

import bench
import muxclient as mc

PHASES = ["hello", "alive", "sent", "opened", "exit", "eof", "total"]


def session_phases(sock_path):
    """One session `true`: the milliseconds of each phase, then the total."""
    null = os.open(os.devnull, os.O_RDWR)
    out_r, out_w = os.pipe()
    try:
        stamps = [time.perf_counter()]
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(sock_path)
            mc._hello(s)
            stamps.append(time.perf_counter())
            mc._alive(s, 0)
            stamps.append(time.perf_counter())
            payload = struct.pack(">II", mc.NEW_SESSION, 1) + mc._string(b"")
            payload += struct.pack(">IIIII", 0, 0, 0, 0, 0x7E)
            payload += mc._string(b"") + mc._string(b"true")
            mc._send_packet(s, payload)
            for fd in (null, out_w, out_w):
                s.sendmsg([b"\0"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                     struct.pack("i", fd))])
            stamps.append(time.perf_counter())
            os.close(out_w)
            out_w = -1
            for expected in (mc.S_SESSION_OPENED, mc.S_EXIT_MESSAGE):
                kind, body = mc._recv_packet(s)
                if kind != expected:
                    raise mc.MuxError(f"expected {expected:#x}, got {kind:#x}: "
                                      f"{body!r}")
                stamps.append(time.perf_counter())
            if s.recv(1) != b"":
                raise mc.MuxError("master sent more after EXIT_MESSAGE")
            stamps.append(time.perf_counter())
    finally:
        os.close(null)
        os.close(out_r)
        if out_w >= 0:
            os.close(out_w)
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
                m = bench.Method(f"mg{i}", f"muxguard {i}: {binary}", env, cfg,
                                 os.path.join(tmp, f"mg{i}.sock"))
                m.start([binary, "connect", "-F", cfg, "--control-path",
                         m.sock, "--foreground", env.alias])
                masters.append(m)
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
