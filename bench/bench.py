#!/usr/bin/env python3
"""muxguard vs OpenSSH's own master vs fresh connections, in one run, against
one throwaway local sshd.

Measures
  1. new-session latency: `ssh -S sock alias true` (and `-O check`, which
     needs no remote process), median and p90, for muxguard, `ssh -M` and
     fresh connections (`-o ControlPath=none`); and for the two masters,
     the same session and HELLO + ALIVE_CHECK through an in-process mux
     client (bench/muxclient.py), which leaves out the ssh process start
     that is most of the figure above and the same for both;
  2. bulk throughput through one session (upload and download, default
     1 GiB), per cipher, with the master's CPU time during the transfer;
  3. a stalled consumer: one session's client does not read its 200 MiB
     for 10 s while new sessions and an interactive echo are timed, then
     reads it all (byte count checked), with the master's peak RSS.

The two masters are interleaved round by round (order alternating) so that
drift on a noisy machine hits both alike. Python standard library only.

    python3 bench/bench.py                  # defaults: 30 runs, 1 GiB x 3
    python3 bench/bench.py --markdown docs/benchmarks.md

MUXGUARD_BIN=/path/to/muxguard skips the `cargo build --release`.
"""

import argparse
import datetime
import getpass
import os
import platform
import re
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import muxclient

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLK_TCK = os.sysconf("SC_CLK_TCK")
MIB = 1 << 20
DEFAULT_CIPHERS = "chacha20-poly1305@openssh.com,aes128-gcm@openssh.com"
MD_BEGIN = "<!-- bench.py results: begin -->"
MD_END = "<!-- bench.py results: end -->"


# ---------------------------------------------------------------- helpers


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def parse_size(text):
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgG]?)(?:i?[bB])?\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"bad size {text!r} (e.g. 1G, 256M)")
    mult = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[m.group(2).lower()]
    return int(float(m.group(1)) * mult)


def percentile(values, p):
    """Linear interpolation between closest ranks (like numpy's default)."""
    s = sorted(values)
    if not s:
        return float("nan")
    k = (len(s) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_ticks(pid):
    """utime+stime of a whole process (all threads), in clock ticks."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def loadavg():
    """1-min load average, and how many tasks are runnable right now (the
    average decays slowly after a burst of other work; the count does not)."""
    try:
        with open("/proc/loadavg") as f:
            fields = f.read().split()
        return f"{fields[0]} (runnable now: {fields[3].split('/')[0]})"
    except (OSError, IndexError):
        return "?"


def reset_hwm(pid):
    """Reset a process's peak RSS (VmHWM) so that the next read is the peak
    of what follows; needs to own the process (Linux ≥ 4.0)."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def vm_hwm_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


class Procs:
    """Everything long-lived we start, killed (whole process group) at exit."""

    def __init__(self):
        self.procs = []

    def start(self, cmd, **kw):
        p = subprocess.Popen(cmd, start_new_session=True, **kw)
        self.procs.append(p)
        return p

    def stop(self, p, grace=3.0):
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                p.wait(grace)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait()
        else:
            # The leader is gone; make sure nothing it left in its group lives.
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if p in self.procs:
            self.procs.remove(p)

    def stop_all(self):
        for p in reversed(list(self.procs)):
            self.stop(p)


# ---------------------------------------------------------------- set-up


class Env:
    def __init__(self, tmp, procs, ssh="ssh", shell_rc=False):
        self.shell_rc = shell_rc
        self.tmp = tmp
        self.procs = procs
        self.ssh = ssh
        self.port = None
        self.sshd = None
        self.sshd_log = os.path.join(tmp, "sshd.log")
        self.alias = "bench"

    def start_sshd(self):
        tmp = self.tmp
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        hostkey = os.path.join(tmp, "host_ed25519")
        userkey = os.path.join(tmp, "user_ed25519")
        for key in (hostkey, userkey):
            run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key],
                stdout=subprocess.DEVNULL)
        shutil.copy(userkey + ".pub", os.path.join(tmp, "authorized_keys"))
        self.userkey = userkey
        with open(hostkey + ".pub") as f:
            self.hostpub = " ".join(f.read().split()[:2])
        sshd_path = shutil.which("sshd") or "/usr/sbin/sshd"
        last_err = ""
        for _attempt in range(5):
            self.port = free_port()
            cfg = os.path.join(tmp, "sshd_config")
            with open(cfg, "w") as f:
                f.write(
                    f"ListenAddress 127.0.0.1:{self.port}\n"
                    f"HostKey {hostkey}\n"
                    f"AuthorizedKeysFile {tmp}/authorized_keys\n"
                    "PidFile none\n"
                    "UsePAM no\n"
                    "StrictModes no\n"
                    "PermitRootLogin prohibit-password\n"
                    "PasswordAuthentication no\n"
                    "KbdInteractiveAuthentication no\n"
                    "PubkeyAuthentication yes\n"
                    "PrintMotd no\n"
                    "PrintLastLog no\n"
                    "UseDNS no\n"
                    "X11Forwarding no\n"
                    "MaxSessions 100\n"
                    "MaxStartups 100:30:200\n"
                    # DEBUG1 for the negotiated-cipher lines (kex: ...
                    # cipher: ...); same cost for every method measured.
                    "LogLevel DEBUG1\n"
                    "Subsystem sftp internal-sftp\n"
                    # Debian's bash sources ~/.bashrc for `ssh host cmd`
                    # unless SHLVL says it is nested; a heavy .bashrc
                    # (pyenv init, ...) would otherwise dominate and blur
                    # the per-session latency. Same for every method.
                    + ("" if self.shell_rc else "SetEnv SHLVL=1\n")
                )
            open(self.sshd_log, "w").close()
            self.sshd = self.procs.start(
                [sshd_path, "-D", "-f", cfg, "-E", self.sshd_log],
                stdin=subprocess.DEVNULL)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                if self.sshd.poll() is not None:
                    break
                try:
                    socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                    break
                except OSError:
                    time.sleep(0.05)
            if self.sshd.poll() is None:
                break
            with open(self.sshd_log) as f:
                last_err = f.read()
            self.procs.stop(self.sshd)
        else:
            raise RuntimeError(f"sshd did not start:\n{last_err}")
        with open(os.path.join(tmp, "known_hosts"), "w") as f:
            f.write(f"[127.0.0.1]:{self.port} {self.hostpub}\n")

    def write_config(self, cipher):
        path = os.path.join(self.tmp, f"ssh_config.{cipher.split('@')[0]}")
        with open(path, "w") as f:
            f.write(
                f"Host {self.alias}\n"
                "  HostName 127.0.0.1\n"
                f"  Port {self.port}\n"
                f"  User {getpass.getuser()}\n"
                f"  IdentityFile {self.userkey}\n"
                "  IdentitiesOnly yes\n"
                "  IdentityAgent none\n"
                f"  UserKnownHostsFile {self.tmp}/known_hosts\n"
                "  GlobalKnownHostsFile /dev/null\n"
                "  StrictHostKeyChecking yes\n"
                "  UpdateHostKeys no\n"
                "  BatchMode yes\n"
                "  Compression no\n"
                "  ForwardAgent no\n"
                "  ForwardX11 no\n"
                "  AddressFamily inet\n"
                "  ControlMaster no\n"
                "  ControlPath none\n"
                "  ControlPersist no\n"
                "  ServerAliveInterval 0\n"
                f"  Ciphers {cipher}\n"
                "  LogLevel ERROR\n"
            )
        return path

    def sshd_log_size(self):
        return os.path.getsize(self.sshd_log)

    def sshd_log_since(self, offset):
        with open(self.sshd_log, errors="replace") as f:
            f.seek(offset)
            return f.read()


class Method:
    """One way of reaching the sshd: a master (muxguard / openssh) or fresh."""

    def __init__(self, name, label, env, cfg, sock=None):
        self.name = name
        self.label = label
        self.env = env
        self.cfg = cfg
        self.sock = sock
        self.proc = None
        self.cipher_seen = None
        self.log_path = None

    def client(self):
        """ssh's argv up to (not including) the destination."""
        base = [self.env.ssh, "-F", self.cfg]
        if self.sock:
            return base + ["-S", self.sock]
        return base + ["-o", "ControlPath=none"]

    def check_cmd(self):
        return [self.env.ssh, "-F", self.cfg, "-S", self.sock, "-O", "check",
                self.env.alias]

    def wait_ready(self, timeout=30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.label} exited with {self.proc.returncode} before "
                    f"becoming ready; log:\n{self.read_log()}")
            r = subprocess.run(self.check_cmd(), stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
            if r.returncode == 0:
                return
            time.sleep(0.1)
        raise RuntimeError(f"{self.label} not ready after {timeout}s; log:\n"
                           f"{self.read_log()}")

    def read_log(self):
        if not self.log_path or not os.path.exists(self.log_path):
            return ""
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def start(self, cmd):
        offset = self.env.sshd_log_size()
        self.log_path = os.path.join(self.env.tmp, f"{self.name}.log")
        logf = open(self.log_path, "ab")
        try:
            self.proc = self.env.procs.start(cmd, stdin=subprocess.DEVNULL,
                                             stdout=logf, stderr=logf)
        finally:
            logf.close()
        self.wait_ready()
        text = self.env.sshd_log_since(offset)
        m = re.search(r"kex: client->server cipher: (\S+)", text)
        self.cipher_seen = m.group(1) if m else None

    def stop(self):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            subprocess.run([self.env.ssh, "-F", self.cfg, "-S", self.sock,
                            "-O", "exit", self.env.alias],
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, timeout=10)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                log(f"warning: {self.label} did not exit after -O exit "
                    "within 5 s; sending SIGTERM")
        self.env.procs.stop(self.proc)
        self.proc = None


def start_muxguard(env, cfg, bin_path, name="muxguard",
                   label="muxguard master"):
    m = Method(name, label, env, cfg, os.path.join(env.tmp, f"{name}.sock"))
    m.start([bin_path, "connect", "-F", cfg, "--control-path", m.sock,
             "--foreground", env.alias])
    return m


def start_openssh(env, cfg):
    m = Method("openssh", "OpenSSH master", env, cfg,
               os.path.join(env.tmp, "os.sock"))
    m.start([env.ssh, "-F", cfg, "-M", "-N", "-S", m.sock,
             "-o", "ControlPersist=no", env.alias])
    return m


# ---------------------------------------------------------------- measuring


def timed(cmd):
    t0 = time.perf_counter()
    r = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=60)
    dt = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {r.returncode}: "
                           f"{r.stderr.decode(errors='replace').strip()}")
    return dt * 1000.0


def count_auths(text):
    return len(re.findall(r"Accepted publickey for ", text))


def bench_latency(env, methods, runs, warmup=3):
    """methods: list of Method; returns {name: {"true": [...], "check": [...],
    "in-true": [...], "in-check": [...]}} (the in-process client's for the
    masters only)"""
    res = {m.name: {"true": [], "check": [], "in-true": [], "in-check": []}
           for m in methods}
    masters = [m for m in methods if m.sock]
    for _ in range(warmup):
        for m in methods:
            timed(m.client() + [env.alias, "true"])
        for m in masters:
            muxclient.session(m.sock)
    offset = env.sshd_log_size()
    for i in range(runs):
        order = methods[i % len(methods):] + methods[:i % len(methods)]
        for m in order:
            res[m.name]["true"].append(timed(m.client() + [env.alias, "true"]))
        in_order = masters if i % 2 == 0 else masters[::-1]
        for m in in_order:
            res[m.name]["check"].append(timed(m.check_cmd()))
        for m in in_order:
            res[m.name]["in-true"].append(muxclient.session(m.sock))
        for m in in_order:
            res[m.name]["in-check"].append(muxclient.check(m.sock))
    # Sanity: sessions through a master must not authenticate anew (a refused
    # mux session makes the stock client silently connect directly).
    auths = count_auths(env.sshd_log_since(offset))
    fresh_runs = sum(1 for m in methods if not m.sock) * runs
    return res, auths - fresh_runs


class Killer:
    def __init__(self, proc, timeout):
        self.proc = proc
        self.fired = False
        self.t = threading.Timer(timeout, self._fire)
        self.t.daemon = True

    def _fire(self):
        self.fired = True
        try:
            self.proc.kill()
        except OSError:
            pass

    def __enter__(self):
        self.t.start()
        return self

    def __exit__(self, *a):
        self.t.cancel()


# How the client's end of the session is wired. The master receives the
# client's stdin/stdout descriptors, so this decides the master's I/O path:
# a pipe is driven by its event loop; a regular file or /dev/null cannot be
# polled (epoll refuses them), so a master may need helper threads there.
DIRECTIONS = {
    "up": "upload, stdin a pipe",
    "down": "download, stdout a pipe",
    "up-file": "upload, stdin a regular file",
    "down-null": "download, stdout /dev/null",
}


def transfer(m, direction, size, timeout, sparse_file=None):
    """One bulk transfer of `size` bytes through one session of `m`.
    Returns (MiB/s, master CPU seconds, seconds)."""
    upload = direction.startswith("up")
    if upload:
        cmd = m.client() + [m.env.alias, "wc -c"]
        stdin = subprocess.PIPE if direction == "up" else open(sparse_file, "rb")
        stdout = subprocess.PIPE
    else:
        cmd = m.client() + [m.env.alias, f"head -c {size} /dev/zero"]
        stdin = subprocess.DEVNULL
        stdout = subprocess.PIPE if direction == "down" else subprocess.DEVNULL
    if m.proc:
        reset_hwm(m.proc.pid)
    c0 = cpu_ticks(m.proc.pid) if m.proc else None
    t0 = time.perf_counter()
    try:
        p = subprocess.Popen(cmd, stdin=stdin, stdout=stdout,
                             stderr=subprocess.PIPE, start_new_session=True,
                             bufsize=0)
    finally:
        if hasattr(stdin, "close"):
            stdin.close()
    got = None
    try:
        with Killer(p, timeout) as k:
            if direction == "up":
                # Generated in Python: 1 MiB writes of a zero buffer.
                chunk = memoryview(bytes(MIB))
                fd = p.stdin.fileno()
                left = size
                try:
                    while left:
                        left -= os.write(fd, chunk[:min(left, MIB)])
                except BrokenPipeError:
                    pass
                p.stdin.close()
            if direction == "down":
                buf = bytearray(MIB)
                got = 0
                while True:
                    n = p.stdout.readinto(buf)
                    if not n:
                        break
                    got += n
            else:
                out = p.stdout.read() if upload else b""
            err = p.stderr.read()
            p.wait()
        dt = time.perf_counter() - t0
        c1 = cpu_ticks(m.proc.pid) if m.proc else None
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    what = f"{DIRECTIONS[direction]} via {m.label}"
    if m.proc and m.proc.poll() is not None:
        raise RuntimeError(f"{m.label} died during {DIRECTIONS[direction]} "
                           f"(exit status {m.proc.returncode}); client said: "
                           f"{err.decode(errors='replace').strip()}")
    if k.fired:
        raise RuntimeError(f"{what}: timed out after {timeout}s")
    errtext = err.decode(errors="replace").strip()
    if p.returncode != 0:
        raise RuntimeError(f"{what}: ssh exited {p.returncode}: {errtext}")
    if upload and out.decode().strip() != str(size):
        raise RuntimeError(f"{what}: remote counted {out.decode().strip()!r} "
                           f"of {size} bytes; {errtext}")
    if got is not None and got != size:
        raise RuntimeError(f"{what}: got {got} of {size} bytes; {errtext}")
    cpu = (c1 - c0) / CLK_TCK if c0 is not None else None
    hwm = vm_hwm_kib(m.proc.pid) if m.proc else None
    return size / MIB / dt, cpu, dt, hwm


def bench_bulk(masters, directions, size, repeats, timeout, sparse_file):
    res = {m.name: {d: [] for d in directions} for m in masters}
    cpu = {m.name: {d: [] for d in directions} for m in masters}
    rss = {m.name: {d: [] for d in directions} for m in masters}
    for r in range(repeats):
        for d in directions:
            order = masters if r % 2 == 0 else masters[::-1]
            for m in order:
                rate, c, dt, hwm = transfer(m, d, size, timeout, sparse_file)
                res[m.name][d].append(rate)
                cpu[m.name][d].append(c)
                rss[m.name][d].append(hwm or 0)
                log(f"    round {r + 1} {d:9} {m.label:16} {rate:8.1f} MiB/s "
                    f"{dt:6.2f} s  master CPU {c:.2f} s  peak RSS "
                    f"{(hwm or 0) / 1024:.1f} MiB")
    return res, cpu, rss



# ---------------------------------------------------------------- stall


def vm_status_kib(pid, field):
    """A `field:` line of /proc/PID/status in KiB (VmRSS, VmHWM, ...)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def deleted_file_bytes(pid):
    """Bytes allocated on disk by the regular files a process holds open
    after unlinking them (muxguard's spill files), summed."""
    total = 0
    d = f"/proc/{pid}/fd"
    try:
        fds = os.listdir(d)
    except OSError:
        return None
    for fd in fds:
        try:
            target = os.readlink(f"{d}/{fd}")
            if not target.endswith(" (deleted)") or not target.startswith("/"):
                continue
            st = os.stat(f"{d}/{fd}")
        except OSError:
            continue
        if st.st_mode & 0o170000 == 0o100000:  # regular file
            total += st.st_blocks * 512
    return total


class Sampler:
    """Samples a master's VmRSS and spill files every `interval` seconds
    in a thread; keeps the maxima."""

    def __init__(self, pid, interval=0.05):
        self.pid = pid
        self.interval = interval
        self.rss_max = 0
        self.spill_max = 0
        self.stop_ev = threading.Event()
        self.t = threading.Thread(target=self._loop, daemon=True)

    def _loop(self):
        while True:
            rss = vm_status_kib(self.pid, "VmRSS")
            spill = deleted_file_bytes(self.pid)
            self.rss_max = max(self.rss_max, rss or 0)
            self.spill_max = max(self.spill_max, spill or 0)
            if self.stop_ev.wait(self.interval):
                return

    def __enter__(self):
        self.t.start()
        return self

    def __exit__(self, *a):
        self.stop_ev.set()
        self.t.join()


class EchoSession:
    """One long-lived `ssh -S sock alias cat`: write a line, time until it
    comes back (an interactive keystroke-and-echo, without a tty)."""

    def __init__(self, m, errfile):
        self.p = subprocess.Popen(m.client() + [m.env.alias, "cat"],
                                  stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=errfile,
                                  start_new_session=True, bufsize=0)
        self.label = m.label
        self.seq = 0
        self.buf = b""

    def round_trip(self, timeout):
        """Milliseconds, or None if the line did not come back in time."""
        self.seq += 1
        line = f"ping {self.seq:06d}\n".encode()
        t0 = time.perf_counter()
        os.write(self.p.stdin.fileno(), line)
        fd = self.p.stdout.fileno()
        # A line that came back late from an earlier (timed-out) round trip
        # may precede ours; wait for our own.
        while line not in self.buf:
            left = timeout - (time.perf_counter() - t0)
            if left <= 0:
                return None
            r, _, _ = select.select([fd], [], [], left)
            if not r:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                raise RuntimeError(f"echo session through {self.label} ended "
                                   f"(ssh exit status {self.p.wait()})")
            self.buf += chunk
        dt = time.perf_counter() - t0
        self.buf = self.buf.split(line, 1)[1]
        return dt * 1000.0

    def close(self):
        try:
            self.p.stdin.close()
            self.p.wait(10)
        except (OSError, subprocess.TimeoutExpired):
            pass
        if self.p.poll() is None:
            os.killpg(self.p.pid, signal.SIGKILL)
            self.p.wait()


def timed_or_none(cmd, timeout):
    """Like timed(), but a run that takes longer than `timeout` seconds is
    killed and counted as None instead of aborting the benchmark."""
    t0 = time.perf_counter()
    try:
        r = subprocess.run(cmd, stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           timeout=timeout)
    except subprocess.TimeoutExpired:
        return None
    dt = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {r.returncode}: "
                           f"{r.stderr.decode(errors='replace').strip()}")
    return dt * 1000.0


def interactive_probes(m, echo, runs, start=None, window=None):
    """`runs` x (new session `true`, echo round trip). With `window`
    seconds from `start`, the probes are spread evenly across it and the
    timeouts end with it (at least 2 s each)."""
    trues, echoes = [], []
    for i in range(runs):
        if window:
            slot = start + i * window / runs
            now = time.perf_counter()
            if slot > now:
                time.sleep(slot - now)
            to = max(2.0, start + window - time.perf_counter())
        else:
            to = 30.0
        trues.append(timed_or_none(m.client() + [m.env.alias, "true"], to))
        if window:
            to = max(2.0, start + window - time.perf_counter())
        echoes.append(echo.round_trip(to))
    return trues, echoes


def stall_one(m, size, secs, runs, timeout):
    """The stalled-consumer test against one master. See README."""
    env = m.env
    pid = m.proc.pid
    errpath = os.path.join(env.tmp, f"stall-{m.name}.err")
    res = {}
    with open(errpath, "wb") as errf:
        echo = EchoSession(m, errf)
        try:
            for _ in range(3):  # warm-up
                if echo.round_trip(30) is None:
                    raise RuntimeError(f"echo through {m.label}: no answer in 30 s")
                timed(m.client() + [env.alias, "true"])
            res["base_true"], res["base_echo"] = interactive_probes(m, echo, runs)
            res["rss_idle"] = vm_status_kib(pid, "VmRSS")
            reset_hwm(pid)
            c0 = cpu_ticks(pid)
            p = subprocess.Popen(
                m.client() + [env.alias, f"head -c {size} /dev/zero"],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errf,
                start_new_session=True, bufsize=0)
            t0 = time.perf_counter()
            try:
                with Sampler(pid) as smp:
                    # Probes from 0.2 s in (while the master is still taking
                    # in the stalled session's output) to 1 s before the end.
                    res["stall_true"], res["stall_echo"] = interactive_probes(
                        m, echo, runs, start=t0 + 0.2,
                        window=max(0.5, secs - 1.2))
                    res["probes_s"] = time.perf_counter() - t0
                    left = t0 + secs - time.perf_counter()
                    if left > 0:
                        time.sleep(left)
                    res["stalled_s"] = time.perf_counter() - t0
                    res["client_alive"] = p.poll() is None
                    c1 = cpu_ticks(pid)
                    res["spill_at_end"] = deleted_file_bytes(pid) or 0
                    # Now read everything.
                    t1 = time.perf_counter()
                    got = 0
                    buf = bytearray(MIB)
                    with Killer(p, timeout) as k:
                        while True:
                            n = p.stdout.readinto(buf)
                            if not n:
                                break
                            got += n
                        p.wait()
                    res["drain_s"] = time.perf_counter() - t1
                    res["drain_timed_out"] = k.fired
                    c2 = cpu_ticks(pid)
                res["hwm"] = vm_hwm_kib(pid)
                res["rss_max"] = smp.rss_max
                res["spill_max"] = smp.spill_max
            finally:
                if p.poll() is None:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait()
            res["got"] = got
            res["rc"] = p.returncode
            res["cpu_stall"] = (c1 - c0) / CLK_TCK
            res["cpu_drain"] = (c2 - c1) / CLK_TCK
            # After the drain: does the interactive session still work, and
            # has the master given its memory back?
            res["after_echo"] = echo.round_trip(30)
            time.sleep(0.5)
            res["rss_after"] = vm_status_kib(pid, "VmRSS")
            res["spill_after"] = deleted_file_bytes(pid) or 0
        finally:
            echo.close()
    if m.proc.poll() is not None:
        raise RuntimeError(f"{m.label} died during the stall test (exit "
                           f"status {m.proc.returncode})")
    with open(errpath, errors="replace") as f:
        res["stderr"] = f.read().strip()
    res["ok"] = (res["got"] == size and res["rc"] == 0
                 and not res["drain_timed_out"])
    return res


def fmt_ms_list(vals):
    """(median, max) strings for a list of ms that may hold None (timeout)."""
    done = [v for v in vals if v is not None]
    lost = len(vals) - len(done)
    if not done:
        return "timeout", "timeout"
    med = f"{statistics.median(done):.1f}"
    mx = f"{max(done):.1f}"
    if lost:
        med += f" ({lost} timed out)"
        mx = "timeout"
    return med, mx


def bench_stall(masters, size, secs, runs, timeout):
    out = {}
    for m in masters:
        log(f"  stall: {m.label}: {size / MIB:.0f} MiB unread for {secs:g} s, "
            f"{runs} x (true, echo) before and during")
        r = stall_one(m, size, secs, runs, timeout)
        out[m.name] = r
        bt, st = fmt_ms_list(r["base_true"]), fmt_ms_list(r["stall_true"])
        be, se = fmt_ms_list(r["base_echo"]), fmt_ms_list(r["stall_echo"])
        log(f"    true ms median/max: no stall {bt[0]}/{bt[1]}, stalled "
            f"{st[0]}/{st[1]}; echo ms: no stall {be[0]}/{be[1]}, stalled "
            f"{se[0]}/{se[1]}")
        def each(vals):
            return " ".join("timeout" if v is None else f"{v:.1f}" for v in vals)
        log(f"    during the stall, in order: true [{each(r['stall_true'])}]; "
            f"echo [{each(r['stall_echo'])}]")
        log(f"    got {r['got']} of {size} bytes, exit {r['rc']}, "
            f"{'OK' if r['ok'] else 'FAIL'}; read-back {r['drain_s']:.2f} s; "
            f"peak RSS {(r['hwm'] or 0) / 1024:.1f} MiB; spill max "
            f"{r['spill_max'] / MIB:.1f} MiB")
    return out



# ---------------------------------------------------------------- reporting


def machine_info(ssh):
    def out(cmd):
        try:
            r = subprocess.run(cmd, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
            return r.stdout.strip()
        except OSError:
            return "?"
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "nproc": out(["nproc"]),
        "cpu": cpu,
        "kernel": platform.release(),
        "ssh": out([ssh, "-V"]),
    }


def fmt_ratio(x):
    return "n/a" if x is None else f"{x:.2f}"


def build_report(info, args, cmdline, lat, lat_extra_auths, bulk, ciphers_seen,
                 load=None, stall=None):
    L = []
    L.append(f"Machine: {info['nproc']} CPUs ({info['cpu']}), Linux "
             f"{info['kernel']}, {info['ssh']}; {info['date']}")
    L.append(f"Command: `{cmdline}`")
    L.append("")
    if lat:
        L.append(f"### New-session latency ({args.runs} runs each, interleaved; "
                 f"cipher {args.ciphers[0]})")
        L.append("")
        L.append("| method | `true` median ms | `true` p90 ms | `-O check` median ms | `-O check` p90 ms |")
        L.append("|---|---:|---:|---:|---:|")
        labels = {"muxguard": "muxguard master", "openssh": "OpenSSH master (`ssh -M`)",
                  "fresh": "fresh connection"}
        for name in ("muxguard", "openssh", "fresh"):
            if name not in lat:
                continue
            t = lat[name]["true"]
            c = lat[name]["check"]
            cm = f"{statistics.median(c):.1f}" if c else "–"
            cp = f"{percentile(c, 90):.1f}" if c else "–"
            L.append(f"| {labels[name]} | {statistics.median(t):.1f} | "
                     f"{percentile(t, 90):.1f} | {cm} | {cp} |")
        L.append("")
        mg, osm = lat.get("muxguard"), lat.get("openssh")
        if mg and osm:
            r_true = statistics.median(mg["true"]) / statistics.median(osm["true"])
            r_chk = statistics.median(mg["check"]) / statistics.median(osm["check"])
            L.append(f"Ratio muxguard / OpenSSH master (median, lower is better, "
                     f"target ≤ 1.0): `true` **{r_true:.2f}**, `-O check` "
                     f"**{r_chk:.2f}**")
            if "fresh" in lat:
                r_f = statistics.median(mg["true"]) / statistics.median(lat["fresh"]["true"])
                L.append(f"Ratio muxguard / fresh connection: {r_f:.2f}")
            dm = statistics.median(mg["true"]) - statistics.median(mg["check"])
            do = statistics.median(osm["true"]) - statistics.median(osm["check"])
            L.append(f"`true` minus `-O check` (the remote session itself): "
                     f"muxguard {dm:.1f} ms, OpenSSH master {do:.1f} ms")
            L.append("")
            L.append("In-process mux client (`bench/muxclient.py`: what the stock "
                     "client sends, without starting an ssh process):")
            L.append("")
            L.append("| master | session `true` median ms | p90 ms | HELLO + ALIVE_CHECK median ms | p90 ms |")
            L.append("|---|---:|---:|---:|---:|")
            for name in ("muxguard", "openssh"):
                t, c = lat[name]["in-true"], lat[name]["in-check"]
                L.append(f"| {labels[name]} | {statistics.median(t):.2f} | "
                         f"{percentile(t, 90):.2f} | {statistics.median(c):.2f} | "
                         f"{percentile(c, 90):.2f} |")
            L.append("")
            r_in = statistics.median(mg["in-true"]) / statistics.median(osm["in-true"])
            r_inc = statistics.median(mg["in-check"]) / statistics.median(osm["in-check"])
            L.append(f"Ratio muxguard / OpenSSH master, in-process client: session "
                     f"**{r_in:.2f}**, HELLO + ALIVE_CHECK **{r_inc:.2f}**")
        if lat_extra_auths:
            L.append(f"**WARNING**: sshd saw {lat_extra_auths} extra "
                     "authentications during the mux runs (a client fell back "
                     "to a direct connection?)")
        L.append("")
    if bulk:
        L.append(f"### Bulk throughput, one session, {args.size / MIB:.0f} MiB, "
                 f"median of {args.repeats}")
        L.append("")
        L.append("| cipher | direction, client side | muxguard MiB/s | "
                 "OpenSSH master MiB/s | ratio (target ≥ 0.9) | muxguard CPU s | "
                 "OpenSSH CPU s | CPU ratio | peak RSS MiB mg / os |")
        L.append("|---|---|---:|---:|---:|---:|---:|---:|---:|")
        for cipher, (rates, cpu, rss) in bulk.items():
            for d in args.directions:
                mg = statistics.median(rates["muxguard"][d])
                osm = statistics.median(rates["openssh"][d])
                mgc = statistics.median(cpu["muxguard"][d])
                osc = statistics.median(cpu["openssh"][d])
                cr = f"{mgc / osc:.2f}" if osc else "n/a"
                mgr = max(rss["muxguard"][d]) / 1024
                osr = max(rss["openssh"][d]) / 1024
                L.append(f"| {cipher} | {DIRECTIONS[d]} | {mg:.0f} | {osm:.0f} | "
                         f"**{mg / osm:.2f}** | {mgc:.2f} | {osc:.2f} | {cr} | "
                         f"{mgr:.1f} / {osr:.1f} |")
        L.append("")
        L.append("CPU s = user+system time of the master process (all its "
                 "threads) during one transfer, median; CPU ratio = "
                 "muxguard / OpenSSH (lower is better); peak RSS = the "
                 "master's VmHWM during the transfer (reset before each), "
                 "max over repeats. Uploads end in "
                 "`wc -c` on the server, downloads start from "
                 "`head -c N /dev/zero`; byte counts are checked.")
        seen = "; ".join(f"{c}: muxguard {s.get('muxguard')}, "
                         f"OpenSSH {s.get('openssh')}"
                         for c, s in ciphers_seen.items())
        L.append("")
        L.append(f"Negotiated ciphers (sshd's log): {seen}")
        L.append("")
    if stall:
        L.extend(stall_report(stall, args))
    if load:
        L.append(f"Load average (1 min) at start / end: {load[0]} / {load[1]}")
        L.append("")
    return "\n".join(L)


def stall_report(stall, args):
    L = []
    mg, osm = stall.get("muxguard"), stall.get("openssh")
    L.append(f"### Stalled consumer: `head -c {args.stall_size / MIB:.0f}M "
             f"/dev/zero`, client not reading for {args.stall_secs:g} s "
             f"({args.stall_runs} probes each; cipher {args.ciphers[0]})")
    L.append("")
    L.append("| probe | muxguard median ms | muxguard max ms | OpenSSH median ms "
             "| OpenSSH max ms | ratio median | ratio max |")
    L.append("|---|---:|---:|---:|---:|---:|---:|")

    def ratio(a, b):
        da = [v for v in a if v is not None]
        db = [v for v in b if v is not None]
        if len(da) < len(a) or len(db) < len(b) or not da or not db:
            return "n/a", "n/a"
        return (f"{statistics.median(da) / statistics.median(db):.2f}",
                f"{max(da) / max(db):.2f}")
    rows = [("new session `true`, no stall", "base_true"),
            ("new session `true`, during the stall", "stall_true"),
            ("echo round trip (`cat` session), no stall", "base_echo"),
            ("echo round trip (`cat` session), during the stall", "stall_echo")]
    for label, key in rows:
        a = fmt_ms_list(mg[key]) if mg else ("–", "–")
        b = fmt_ms_list(osm[key]) if osm else ("–", "–")
        rm, rx = ratio(mg[key], osm[key]) if mg and osm else ("n/a", "n/a")
        L.append(f"| {label} | {a[0]} | {a[1]} | {b[0]} | {b[1]} | {rm} | {rx} |")
    L.append("")
    L.append("| stalled session | muxguard | OpenSSH master |")
    L.append("|---|---:|---:|")

    def cell(r, f):
        return f(r) if r else "–"
    size = args.stall_size
    facts = [
        ("bytes received after the stall",
         lambda r: f"{r['got']} {'**OK**' if r['ok'] else '**FAIL**'}"
                   + ("" if r["rc"] == 0 else f" (ssh exit {r['rc']})")),
        ("client still waiting when the stall ended",
         lambda r: "yes" if r["client_alive"] else "**no**"),
        ("reading it all after the stall",
         lambda r: f"{r['drain_s']:.2f} s ({size / MIB / r['drain_s']:.0f} MiB/s)"),
        ("master RSS MiB: idle / peak (VmHWM) / after",
         lambda r: f"{(r['rss_idle'] or 0) / 1024:.1f} / {(r['hwm'] or 0) / 1024:.1f}"
                   f" / {(r['rss_after'] or 0) / 1024:.1f}"),
        ("master's unlinked (spill) files on disk, MiB: max / at end of stall / after",
         lambda r: f"{r['spill_max'] / MIB:.1f} / {r['spill_at_end'] / MIB:.1f}"
                   f" / {r['spill_after'] / MIB:.1f}"),
        ("master CPU s: during the stall / reading back",
         lambda r: f"{r['cpu_stall']:.2f} / {r['cpu_drain']:.2f}"),
        ("`true` during the stall: max < 100 ms",
         lambda r: "yes" if all(v is not None and v < 100 for v in r["stall_true"])
                   else "**no**"),
        ("echo after the read-back, ms",
         lambda r: "timeout" if r["after_echo"] is None else f"{r['after_echo']:.1f}"),
    ]
    for label, f in facts:
        L.append(f"| {label} | {cell(mg, f)} | {cell(osm, f)} |")
    L.append("")
    L.append("The probes (a new session running `true`, then one line through "
             "a long-lived `cat` session opened before the stall) are spread "
             "over the stall from 0.2 s in; \"no stall\" is the same probes "
             "just before. Peak RSS is VmHWM, reset when the stalled session "
             "starts; spill files are sampled every 50 ms from "
             "`/proc/PID/fd` (unlinked regular files, allocated blocks).")
    for name, r in stall.items():
        if r.get("stderr"):
            L.append("")
            L.append(f"stderr of the {name} stall clients: "
                     f"`{r['stderr'][:300]}`")
    L.append("")
    return L


def print_tables(report):
    # The markdown tables read fine on a terminal too.
    print()
    print(report)


def write_markdown(path, report, begin=MD_BEGIN, end=MD_END,
                   heading="## Results (bench.py)"):
    """Replace the section between `begin` and `end` in `path`, or append
    one under `heading`."""
    block = f"{begin}\n{report.rstrip()}\n{end}\n"
    text = ""
    if os.path.exists(path):
        with open(path) as f:
            text = f.read()
    if begin in text and end in text:
        pre = text.split(begin, 1)[0]
        post = text.split(end, 1)[1].lstrip("\n")
        text = pre + block + ("\n" + post if post else "")
    else:
        if text and not text.endswith("\n"):
            text += "\n"
        text += ("\n" if text else "") + heading + "\n\n" + block
    with open(path, "w") as f:
        f.write(text)


# ---------------------------------------------------------------- main


def muxguard_binary(default_target=os.path.join(REPO, "target")):
    """$MUXGUARD_BIN, else a release build in $CARGO_TARGET_DIR (else
    `default_target`)."""
    env_bin = os.environ.get("MUXGUARD_BIN")
    if env_bin:
        if not os.access(env_bin, os.X_OK):
            sys.exit(f"MUXGUARD_BIN={env_bin} is not an executable")
        return env_bin
    target = os.environ.get("CARGO_TARGET_DIR") or default_target
    log(f"building muxguard (cargo build --release, CARGO_TARGET_DIR={target}; "
        "set MUXGUARD_BIN to skip)")
    subprocess.run(["cargo", "build", "--release"], cwd=REPO, check=True,
                   env=dict(os.environ, CARGO_TARGET_DIR=target), timeout=3600)
    return os.path.join(target, "release", "muxguard")


def main():
    if "--fairness" in sys.argv[1:]:
        # The interactive-under-bulk benchmark is its own script.
        rest = [a for a in sys.argv[1:] if a != "--fairness"]
        fairness = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "fairness.py")
        os.execv(sys.executable, [sys.executable, fairness] + rest)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", "--runs", type=int, default=30,
                    help="latency runs per method (default 30)")
    ap.add_argument("--size", type=parse_size, default=1 << 30,
                    help="bytes per bulk transfer, e.g. 1G, 256M (default 1G)")
    ap.add_argument("-r", "--repeats", type=int, default=3,
                    help="bulk transfers per direction/master/cipher (default 3)")
    ap.add_argument("--ciphers", default=DEFAULT_CIPHERS,
                    help=f"comma-separated; bulk runs once per cipher, latency "
                         f"with the first (default {DEFAULT_CIPHERS})")
    ap.add_argument("--directions", default=",".join(DIRECTIONS),
                    help="bulk cases, comma-separated, from: "
                         + ", ".join(f"{k} ({v})" for k, v in DIRECTIONS.items())
                         + " (default: all)")
    ap.add_argument("--no-latency", action="store_true")
    ap.add_argument("--no-bulk", action="store_true")
    ap.add_argument("--no-stall", action="store_true",
                    help="skip the stalled-consumer test")
    ap.add_argument("--stall-size", type=parse_size, default=200 * MIB,
                    help="output of the stalled session (default 200M)")
    ap.add_argument("--stall-secs", type=float, default=10.0,
                    help="seconds the stalled client does not read (default 10)")
    ap.add_argument("--stall-runs", type=int, default=10,
                    help="`true` and echo probes, with and without the stall "
                         "(default 10)")
    ap.add_argument("--no-fresh", action="store_true",
                    help="skip fresh-connection latency")
    ap.add_argument("--shell-rc", action="store_true",
                    help="let the remote bash read ~/.bashrc (by default sshd "
                         "sets SHLVL=1 so that it does not)")
    ap.add_argument("--timeout", type=float, default=120,
                    help="seconds before one bulk transfer is abandoned")
    ap.add_argument("--markdown", metavar="FILE",
                    help="write/update a results section in FILE")
    ap.add_argument("--keep", action="store_true",
                    help="keep the temp dir (logs, configs) for inspection")
    ap.add_argument("--fairness", action="store_true",
                    help="run fairness.py instead (interactive echo under a "
                         "bulk transfer; needs root), with the other arguments")
    args = ap.parse_args()
    args.ciphers = [c for c in args.ciphers.split(",") if c]
    args.directions = [d for d in args.directions.split(",") if d]
    for d in args.directions:
        if d not in DIRECTIONS:
            ap.error(f"unknown direction {d!r}; choose from {', '.join(DIRECTIONS)}")

    def on_term(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)

    bin_path = muxguard_binary()
    cmdline = "python3 bench/bench.py" + "".join(
        f" {a}" for a in sys.argv[1:])
    if os.environ.get("MUXGUARD_BIN"):
        cmdline = "MUXGUARD_BIN=… " + cmdline
    info = machine_info("ssh")

    load = [loadavg()]
    tmp = tempfile.mkdtemp(prefix="mgb-")  # short: socket paths ≤ 108 bytes
    procs = Procs()
    env = Env(tmp, procs, shell_rc=args.shell_rc)
    lat = None
    extra_auths = 0
    bulk = {}
    stall = None
    ciphers_seen = {}
    masters = []
    ok = False
    interrupted = False
    try:
        env.start_sshd()
        sparse = os.path.join(tmp, "zeros")
        with open(sparse, "wb") as f:  # sparse: reads cost no disk I/O
            f.truncate(args.size)
        if not args.no_bulk and "up-file" in args.directions:
            # Reading a hole still fills the page cache with zeroed pages;
            # do it here, or the first master to read the file pays for it
            # (about 2.5 s of system time per GiB here).
            with open(sparse, "rb", buffering=0) as f:
                buf = bytearray(MIB)
                while f.readinto(buf):
                    pass
        log(f"sshd on 127.0.0.1:{env.port}, temp dir {tmp}")
        for ci, cipher in enumerate(args.ciphers):
            if ci > 0 and args.no_bulk:
                break  # only bulk runs for the other ciphers
            cfg = env.write_config(cipher)
            log(f"[{cipher}] starting masters")
            t0 = time.perf_counter()
            mg = start_muxguard(env, cfg, bin_path)
            t_mg = time.perf_counter() - t0
            masters = [mg]
            t0 = time.perf_counter()
            osm = start_openssh(env, cfg)
            t_os = time.perf_counter() - t0
            masters.append(osm)
            log(f"  ready: muxguard {t_mg * 1000:.0f} ms, OpenSSH "
                f"{t_os * 1000:.0f} ms (incl. -O check polling)")
            ciphers_seen[cipher] = {"muxguard": mg.cipher_seen,
                                    "openssh": osm.cipher_seen}
            for m in masters:
                if m.cipher_seen and m.cipher_seen != cipher:
                    log(f"  WARNING: {m.label} negotiated {m.cipher_seen}, "
                        f"not {cipher}")
            if ci == 0 and not args.no_latency:
                methods = list(masters)
                if not args.no_fresh:
                    methods.append(Method("fresh", "fresh connection", env, cfg))
                log(f"  latency: {args.runs} runs x {len(methods)} methods")
                lat, extra_auths = bench_latency(env, methods, args.runs)
            if ci == 0 and not args.no_stall:
                stall = bench_stall(masters, args.stall_size, args.stall_secs,
                                    args.stall_runs, args.timeout)
            if not args.no_bulk:
                log(f"  bulk: {args.size / MIB:.0f} MiB x {args.repeats} "
                    f"x {len(args.directions)} directions x 2 masters")
                bulk[cipher] = bench_bulk(masters, args.directions, args.size,
                                          args.repeats, args.timeout, sparse)
            for m in masters:
                m.stop()
            masters = []
        ok = True
    except KeyboardInterrupt:
        interrupted = True
        log("interrupted; cleaning up")
        raise SystemExit(130)
    finally:
        for m in masters:
            try:
                m.stop()
            except Exception as e:  # keep cleaning up
                log(f"stopping {m.label}: {e}")
        procs.stop_all()
        if not ok and not interrupted:
            for name in ("muxguard.log", "openssh.log"):
                p = os.path.join(tmp, name)
                if os.path.exists(p) and os.path.getsize(p):
                    with open(p, errors="replace") as f:
                        log(f"--- {name} (tail) ---\n" + "".join(f.readlines()[-20:]))
        if args.keep or (not ok and not interrupted):
            log(f"temp dir kept: {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    load.append(loadavg())
    report = build_report(info, args, cmdline, lat, extra_auths, bulk,
                          ciphers_seen, load, stall)
    print_tables(report)
    if args.markdown:
        write_markdown(args.markdown, report)
        log(f"results written to {args.markdown}")


if __name__ == "__main__":
    main()
