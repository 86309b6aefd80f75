#!/usr/bin/env python3
"""New-session latency over a link with a round trip, muxguard vs OpenSSH's master.

Both masters reach the same local sshd through a userspace relay that holds
every chunk for --delay-ms in each direction (this kernel has no netem), so
a round trip costs twice that. Then `ssh -S sock host true` is timed through
each master, interleaved, and the medians and their ratio are printed.

OpenSSH's master opens the session channel when the client asks (one round
trip), then sends the request; muxguard takes a channel it opened ahead.

    python3 bench/delay.py [--delay-ms 25] [-n 30]
"""

import argparse
import asyncio
import os
import socket
import statistics
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402  (Env, Procs, Method, timed, muxguard_binary, log)

log = bench.log


class DelayRelay:
    """127.0.0.1:port -> target, each direction delayed by `delay` seconds
    (order kept, no rate limit)."""

    def __init__(self, target_port, delay):
        self.target_port, self.delay = target_port, delay
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.port = None
        threading.Thread(target=self._run, daemon=True).start()
        if not self.ready.wait(10):
            raise RuntimeError("the delay relay did not start")

    def _run(self):
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(
            asyncio.start_server(self._serve, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self.ready.set()
        self.loop.run_forever()

    async def _serve(self, client_r, client_w):
        try:
            server_r, server_w = await asyncio.open_connection(
                "127.0.0.1", self.target_port)
        except OSError:
            client_w.close()
            return
        for w in (client_w, server_w):
            w.get_extra_info("socket").setsockopt(
                socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await asyncio.gather(self._pipe(client_r, server_w),
                             self._pipe(server_r, client_w),
                             return_exceptions=True)

    async def _pipe(self, reader, writer):
        queue = asyncio.Queue()

        async def deliver():
            while True:
                due, data = await queue.get()
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                if not data:
                    writer.close()
                    return
                writer.write(data)
                await writer.drain()

        sender = asyncio.ensure_future(deliver())
        try:
            while True:
                data = await reader.read(1 << 16)
                queue.put_nowait((time.monotonic() + self.delay, data))
                if not data:
                    break
            await sender
        except (ConnectionError, OSError):
            sender.cancel()
            writer.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--delay-ms", type=float, default=25.0,
                    help="one-way delay (default 25: a 50 ms round trip)")
    ap.add_argument("-n", "--runs", type=int, default=30)
    args = ap.parse_args()
    bin_path = bench.muxguard_binary()
    with tempfile.TemporaryDirectory(prefix="mgdelay-") as tmp:
        procs = bench.Procs()
        try:
            env = bench.Env(tmp, procs)
            env.start_sshd()
            relay = DelayRelay(env.port, args.delay_ms / 1000.0)
            env.port = relay.port  # the masters' config points at the relay
            with open(os.path.join(tmp, "known_hosts"), "w") as f:
                f.write(f"[127.0.0.1]:{relay.port} {env.hostpub}\n")
            cfg = env.write_config(bench.DEFAULT_CIPHERS.split(",")[0])
            masters = [bench.start_muxguard(env, cfg, bin_path),
                       bench.start_openssh(env, cfg)]
            times = {m.name: [] for m in masters}
            for m in masters:  # warm-up: first use, a warm channel to refill
                for _ in range(3):
                    bench.timed(m.client() + [env.alias, "true"])
            for i in range(args.runs):
                for m in (masters if i % 2 == 0 else masters[::-1]):
                    times[m.name].append(
                        bench.timed(m.client() + [env.alias, "true"]))
                    # A warm channel is refilled one round trip after it
                    # was taken; a person does not start sessions faster.
                    time.sleep(4 * args.delay_ms / 1000.0)
        finally:
            procs.stop_all()
    mg = statistics.median(times["muxguard"])
    os_ = statistics.median(times["openssh"])
    rtt = 2 * args.delay_ms
    print(f"\n`ssh -S sock host true` over a {rtt:g} ms round trip "
          f"(userspace delay relay), {args.runs} runs each, interleaved:\n")
    print("| master | median ms | p90 ms | round trips (median / RTT) |")
    print("|---|---:|---:|---:|")
    for name, label in (("openssh", "OpenSSH master"), ("muxguard", "muxguard")):
        values = times[name]
        median = statistics.median(values)
        print(f"| {label} | {median:.1f} | {bench.percentile(values, 90):.1f} "
              f"| {median / rtt:.2f} |")
    print(f"\nmuxguard / OpenSSH: {mg / os_:.2f}x")


if __name__ == "__main__":
    main()
