#!/usr/bin/env python3
"""Interactive responsiveness while a bulk transfer shares one SSH connection:
OpenSSH's master (`ssh -M`), muxguard, and separate connections, side by
side in one run, over a rate-limited link between network namespaces.

For each profile (line rate x congestion control x direction) and each
configuration, a tty session that echoes raw bytes back (`stty raw -echo;
cat` on a real pty on the server) is timed, one byte every 100 ms: first
idle, then while a bulk `cat` moves as much as it can (upload or download):

  openssh    probe and bulk both through OpenSSH's master;
  muxguard   probe and bulk both through muxguard's master;
  separate   probe and bulk each on a direct connection of its own (the
             floor: what a second TCP connection gives).

Under load, an echo mostly waits behind bulk data: in the bottleneck's
queue, which every connection shares, and, when the connection is shared,
in its socket buffers and the master's channel buffers too.

Topology: three network namespaces, client (mgf-c: both masters, the ssh
clients, the probes, an ssh-agent) - router (mgf-r) - server (mgf-s: sshd),
with tbf on both of the router's egress interfaces. The router is there so
that the queue builds where a real one does, in a hop the sender does not
own: with tbf on the sender's side of a direct veth pair, TCP small queues
would keep the data in the sender's socket instead, and the queue that
congestion control (reno fills it, bbr keeps it short) decides would never
show.

Needs root, iproute2 (ip, tc, ss), OpenSSH (ssh, sshd, ssh-agent, ssh-add,
ssh-keygen) and the Python 3 standard library.

    python3 bench/fairness.py                          # about 6 minutes + build
    python3 bench/fairness.py --rates 20 --ccs bbr --window 5
    python3 bench/fairness.py --markdown docs/benchmarks.md

MUXGUARD_BIN=/path/to/muxguard skips the `cargo build --release` (which
otherwise uses $CARGO_TARGET_DIR, default ../target-bench next to the
repository, so that it does not wait for the lock of a concurrent build).
"""

import argparse
import atexit
import collections
import fcntl
import getpass
import itertools
import json
import os
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.dont_write_bytecode = True  # no __pycache__ in the source tree
import bench  # noqa: E402  (Procs, percentile, machine_info, log)

log = bench.log

NS_C, NS_R, NS_S = "mgf-c", "mgf-r", "mgf-s"
NS_PREFIX = "mgf-"
C_ADDR, R_ADDR_C = "10.231.1.2", "10.231.1.1"
S_ADDR, R_ADDR_S = "10.231.2.2", "10.231.2.1"
DEV_TO_C, DEV_TO_S = "r-c", "r-s"  # the router's egress interfaces
SSHD_PORT = 22
ALIAS = "fair"
TBF_LATENCY = "400ms"

CONFIGS = ("openssh", "muxguard", "separate")
# An upload's bytes are counted where they arrive: by the remote cat, whose
# pid comes first on the session's stdout (see Bulk.count).
BULK_CMD = {"upload": "echo $$ && exec cat >/dev/null", "download": "cat /dev/zero"}
# Raw and without echo before the first byte is read: every byte comes back
# once, at once, from cat, through a real pty.
PROBE_CMD = "stty raw -echo && printf R && exec cat"
PROBE_BYTES = b"abcdefghijklmnopqrstuvwxyz"
INTERVAL = 0.1     # one probe byte every 100 ms
IDLE_SECS = 2.0    # idle probes before the bulk starts
WARM_SECS = 2.0    # bulk running before the window, for the queues to fill,
WARM_MAX_SECS = 8.0  # ... and until the bottleneck has stopped dropping
DRAIN_SECS = 10.0  # how long the last echoes may take after the window
GOAL_MS = 25.0     # muxguard's median may exceed separate's by this much
GOAL_FRACTION = 0.95  # ... while its bulk keeps this share of the line rate
MIB = 1 << 20
MD_BEGIN = "<!-- fairness.py results: begin -->"
MD_END = "<!-- fairness.py results: end -->"


# ---------------------------------------------------------------- helpers


def sh(cmd, timeout=20, **kw):
    """Run a short command; its stdout, or RuntimeError with its stderr."""
    try:
        r = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, timeout=timeout,
                           **kw)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"{' '.join(cmd)}: no answer in {timeout} s")
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {r.returncode}: "
                           f"{r.stderr.strip()}")
    return r.stdout


def in_ns(ns, cmd):
    return ["ip", "netns", "exec", ns] + list(cmd)


def tail(path, lines=15):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:]).strip()
    except OSError:
        return ""


def wait_for(pred, timeout, what, step=0.05):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not within {timeout:g} s")
        time.sleep(step)


def line_rate(mbit):
    """tbf's rate in bytes per second (tc's mbit is 10^6 bits)."""
    return mbit * 1e6 / 8


# ---------------------------------------------------------------- network


def kill_ns_processes(ns, grace=2.0):
    """End what still runs in one of our namespaces, by pid. sshd's
    per-connection children are not in the listener's process group, and
    one whose client's RST was dropped by tbf would wait forever."""
    try:
        pids = [int(p) for p in sh(["ip", "netns", "pids", ns], timeout=10).split()]
    except RuntimeError:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(
                os.path.exists(f"/proc/{pid}") for pid in pids):
            time.sleep(0.05)


def delete_namespaces():
    """Delete every mgf-* namespace (ours at exit, stale ones at start),
    ending the processes still in them first."""
    try:
        out = sh(["ip", "netns", "list"], timeout=10)
    except RuntimeError as e:
        log(f"listing namespaces: {e}")
        return
    for line in out.splitlines():
        name = line.split()[0] if line.split() else ""
        if name.startswith(NS_PREFIX):
            kill_ns_processes(name)
            try:
                sh(["ip", "netns", "del", name], timeout=10)
            except RuntimeError as e:
                log(f"deleting namespace {name}: {e}")


def create_net():
    """c <-> r <-> s, with forwarding in r and default routes via r."""
    for ns in (NS_C, NS_R, NS_S):
        sh(["ip", "netns", "add", ns])
        sh(["ip", "-n", ns, "link", "set", "lo", "up"])
    sh(["ip", "-n", NS_C, "link", "add", "c-r", "type", "veth",
        "peer", "name", DEV_TO_C, "netns", NS_R])
    sh(["ip", "-n", NS_S, "link", "add", "s-r", "type", "veth",
        "peer", "name", DEV_TO_S, "netns", NS_R])
    for ns, dev, addr in ((NS_C, "c-r", C_ADDR), (NS_R, DEV_TO_C, R_ADDR_C),
                          (NS_R, DEV_TO_S, R_ADDR_S), (NS_S, "s-r", S_ADDR)):
        sh(["ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", dev])
        sh(["ip", "-n", ns, "link", "set", dev, "up"])
    sh(["ip", "-n", NS_C, "route", "add", "default", "via", R_ADDR_C])
    sh(["ip", "-n", NS_S, "route", "add", "default", "via", R_ADDR_S])
    sh(in_ns(NS_R, ["sysctl", "-qw", "net.ipv4.ip_forward=1"]))


def tbf_burst(mbit):
    """32 kbit at 20 Mbit/s, scaled with the rate (never below one packet)."""
    return f"{max(32, 32 * mbit // 20)}kbit"


def set_rate(mbit):
    for dev in (DEV_TO_C, DEV_TO_S):
        sh(["tc", "-n", NS_R, "qdisc", "replace", "dev", dev, "root", "tbf",
            "rate", f"{mbit}mbit", "burst", tbf_burst(mbit),
            "latency", TBF_LATENCY])


def set_cc(cc):
    """Congestion control of new sockets, in both end namespaces."""
    for ns in (NS_C, NS_S):
        sh(in_ns(ns, ["sysctl", "-qw", f"net.ipv4.tcp_congestion_control={cc}"]))
        got = sh(in_ns(ns, ["sysctl", "-n",
                            "net.ipv4.tcp_congestion_control"])).strip()
        if got != cc:
            raise RuntimeError(f"{ns}: congestion control is {got}, not {cc}")


def cc_available(cc):
    """Whether the kernel has `cc`, loading its module if need be."""
    def listed():
        with open("/proc/sys/net/ipv4/tcp_available_congestion_control") as f:
            return cc in f.read().split()
    if listed():
        return True
    try:
        subprocess.run(["modprobe", f"tcp_{cc}"], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        pass
    return listed()


def connections_cc(ns, port_filter):
    """Congestion control of each established TCP connection matching
    `port_filter` (ss filter words) in namespace `ns`."""
    out = sh(in_ns(ns, ["ss", "-tinH", "state", "established", *port_filter]))
    names = []
    for line in out.splitlines():
        if line[:1].isspace():  # the info line under each connection
            names.append(line.split()[0])
    return names


def tbf_stats():
    """{dev: (bytes sent, backlog bytes, drops)} of the router's tbf qdiscs."""
    qdiscs = json.loads(sh(["tc", "-n", NS_R, "-s", "-j", "qdisc", "show"],
                           timeout=5))
    return {q["dev"]: (q["bytes"], q["backlog"], q["drops"]) for q in qdiscs
            if q.get("kind") == "tbf"}


def wait_quiet(mbit, timeout=20.0, step=0.25):
    """Wait until the link is (nearly) idle: data of the previous trial still
    queued or in flight would load the next one's idle probes."""
    limit = line_rate(mbit) * step * 0.01
    prev = tbf_stats()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(step)
        cur = tbf_stats()
        if all(cur[d][0] - prev[d][0] < limit and cur[d][1] == 0 for d in cur):
            return
        prev = cur
    log(f"    warning: the link did not go quiet within {timeout:g} s")


class QueueSampler(threading.Thread):
    """Backlog of one router interface, every `every` s from `start` to
    `end` (perf_counter times); in a thread, so the probes are not held up."""

    def __init__(self, dev, start, end, every=0.5):
        super().__init__(daemon=True)
        self.dev, self.start_at, self.end, self.every = dev, start, end, every
        self.samples = []

    def run(self):
        t = self.start_at + self.every / 2
        while t < self.end:
            time.sleep(max(0.0, t - time.perf_counter()))
            try:
                self.samples.append(tbf_stats()[self.dev][1])
            except (RuntimeError, KeyError, ValueError):
                pass
            t += self.every


def tcp_inodes(pid):
    """Socket inodes of the TCP connections in pid's network namespace."""
    inodes = set()
    for name in ("tcp", "tcp6"):
        try:
            with open(f"/proc/{pid}/net/{name}") as f:
                inodes.update(line.split()[9] for line in list(f)[1:])
        except OSError:
            pass
    return inodes


def has_tcp_socket(pid):
    """Whether a process holds a TCP socket: a mux client that does has
    silently fallen back to a direct connection."""
    fd_dir = f"/proc/{pid}/fd"
    mine = set()
    try:
        for fd in os.listdir(fd_dir):
            target = os.readlink(f"{fd_dir}/{fd}")
            if target.startswith("socket:["):
                mine.add(target[8:-1])
    except OSError:
        return False
    return bool(mine & tcp_inodes(pid))


# ---------------------------------------------------------------- sshd, agent, masters


class Site:
    """Throwaway keys, the ssh_config, the agent (client namespace) and sshd
    (server namespace, restarted per profile for the new congestion control)."""

    def __init__(self, tmp, procs):
        self.tmp, self.procs = tmp, procs
        self.hostkey = os.path.join(tmp, "host_ed25519")
        self.userkey = os.path.join(tmp, "user_ed25519")
        self.cfg = os.path.join(tmp, "ssh_config")
        self.agent_sock = os.path.join(tmp, "agent.sock")
        self.sshd_log = os.path.join(tmp, "sshd.log")
        self.sshd = None
        xdg = os.path.join(tmp, "xdg")
        # Everything we start sees the agent; muxguard keeps its state,
        # audit log and (absent) policy file in the temp dir.
        self.env = dict(os.environ, SSH_AUTH_SOCK=self.agent_sock,
                        XDG_CONFIG_HOME=f"{xdg}/config",
                        XDG_STATE_HOME=f"{xdg}/state",
                        XDG_RUNTIME_DIR=f"{xdg}/run")
        for sub in ("config", "state", "run"):
            os.makedirs(f"{xdg}/{sub}", mode=0o700)

    def prepare(self):
        for key in (self.hostkey, self.userkey):
            sh(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key])
        shutil.copy(self.userkey + ".pub", os.path.join(self.tmp, "authorized_keys"))
        with open(self.hostkey + ".pub") as f:
            hostpub = " ".join(f.read().split()[:2])
        with open(os.path.join(self.tmp, "known_hosts"), "w") as f:
            host = S_ADDR if SSHD_PORT == 22 else f"[{S_ADDR}]:{SSHD_PORT}"
            f.write(f"{host} {hostpub}\n")
        self.write_sshd_config()
        self.write_ssh_config()
        self.start_agent()

    def write_sshd_config(self):
        with open(os.path.join(self.tmp, "sshd_config"), "w") as f:
            f.write(f"ListenAddress {S_ADDR}:{SSHD_PORT}\n"
                    f"HostKey {self.hostkey}\n"
                    f"AuthorizedKeysFile {self.tmp}/authorized_keys\n"
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
                    "MaxStartups 100:30:200\n"
                    # No ~/.bashrc for the remote commands (see bench.py).
                    "SetEnv SHLVL=1\n")

    def write_ssh_config(self):
        with open(self.cfg, "w") as f:
            f.write(f"Host {ALIAS}\n"
                    f"  HostName {S_ADDR}\n"
                    f"  Port {SSHD_PORT}\n"
                    f"  User {getpass.getuser()}\n"
                    f"  IdentityFile {self.userkey}\n"
                    "  IdentitiesOnly yes\n"
                    f"  IdentityAgent {self.agent_sock}\n"
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
                    "  LogLevel ERROR\n")

    def start_agent(self):
        with open(os.path.join(self.tmp, "agent.log"), "ab") as logf:
            self.procs.start(in_ns(NS_C, ["ssh-agent", "-D", "-a", self.agent_sock]),
                             stdin=subprocess.DEVNULL, stdout=logf, stderr=logf)
        wait_for(lambda: os.path.exists(self.agent_sock), 10, "ssh-agent socket")
        sh(["ssh-add", "-q", self.userkey], env=self.env)

    def start_sshd(self):
        open(self.sshd_log, "w").close()
        sshd = shutil.which("sshd") or "/usr/sbin/sshd"
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        self.sshd = self.procs.start(
            in_ns(NS_S, [sshd, "-D", "-f", os.path.join(self.tmp, "sshd_config"),
                         "-E", self.sshd_log]),
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)

        def listening():
            if self.sshd.poll() is not None:
                raise RuntimeError(f"sshd exited: {tail(self.sshd_log)}")
            with open(self.sshd_log, errors="replace") as f:
                return "Server listening on" in f.read()
        wait_for(listening, 10, "sshd listening")

    def stop_sshd(self):
        """The listener and every session it left (see kill_ns_processes)."""
        if self.sshd:
            self.procs.stop(self.sshd)
            self.sshd = None
        kill_ns_processes(NS_S)

    def ssh(self, *args):
        """An ssh command line in the client namespace."""
        return in_ns(NS_C, ["ssh", "-F", self.cfg, *args])


class Master:
    """A connection-sharing master in the client namespace."""

    def __init__(self, name, site, argv, sock):
        self.name, self.site, self.argv, self.sock = name, site, argv, sock
        self.log_path = os.path.join(site.tmp, f"{name}.log")
        self.proc = None

    def start(self):
        with open(self.log_path, "ab") as logf:
            self.proc = self.site.procs.start(self.argv, stdin=subprocess.DEVNULL,
                                              stdout=logf, stderr=logf,
                                              env=self.site.env)

        def ready():
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} master exited with "
                                   f"{self.proc.returncode}: {self.log_tail()}")
            return self.control("check")
        wait_for(ready, 30, f"{self.name} master ready", step=0.1)

    def control(self, cmd):
        try:
            r = subprocess.run(self.site.ssh("-S", self.sock, "-O", cmd, ALIAS),
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, timeout=10)
        except subprocess.TimeoutExpired:
            return False
        return r.returncode == 0

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self):
        if self.alive():
            self.control("exit")
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
        if self.proc is not None:
            self.site.procs.stop(self.proc)
            self.proc = None

    def log_tail(self):
        return tail(self.log_path)


def make_masters(site, configs, muxguard_bin):
    masters = {}
    if "openssh" in configs:
        sock = os.path.join(site.tmp, "os.sock")
        masters["openssh"] = Master("openssh", site, site.ssh(
            "-M", "-N", "-S", sock, "-o", "ControlPersist=no", ALIAS), sock)
    if "muxguard" in configs:
        sock = os.path.join(site.tmp, "mg.sock")
        masters["muxguard"] = Master("muxguard", site, in_ns(NS_C, [
            muxguard_bin, "connect", "-F", site.cfg, "--control-path", sock,
            "--foreground", ALIAS]), sock)
    return masters


def client_argv(site, config, masters):
    """ssh's argv up to the destination, for one configuration."""
    if config == "separate":
        return site.ssh("-o", "ControlPath=none")
    return site.ssh("-S", masters[config].sock)


# ---------------------------------------------------------------- probe and bulk


class Probe:
    """The interactive user: a tty session that echoes each byte back."""

    def __init__(self, argv, site, errpath):
        self.site = site
        with open(errpath, "ab") as errf:
            self.p = site.procs.start(argv + ["-tt", "-e", "none", ALIAS, PROBE_CMD],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=errf, env=site.env, bufsize=0)
        self.fd_in, self.fd_out = self.p.stdin.fileno(), self.p.stdout.fileno()
        self.sent = 0
        self.inflight = collections.deque()  # (byte, send time), oldest first

    def read(self, timeout=0.0):
        """What has come back, or None if nothing did within `timeout`."""
        r, _, _ = select.select([self.fd_out], [], [], timeout)
        if not r:
            return None
        data = os.read(self.fd_out, 4096)
        if not data:
            raise RuntimeError(f"probe session ended (ssh exit status "
                               f"{self.p.poll()})")
        return data

    def wait_ready(self, timeout=20.0):
        """Until the raw pty is set up, then three echoes as a warm-up."""
        deadline = time.monotonic() + timeout
        got = b""
        while got != b"R":
            data = self.read(max(0.0, deadline - time.monotonic()))
            if data is None:
                raise RuntimeError(f"probe not ready within {timeout:g} s "
                                   f"(got {got!r})")
            got += data
        for _ in range(3):
            self.send()
            while self.inflight:
                data = self.read(max(0.0, deadline - time.monotonic()))
                if data is None:
                    raise RuntimeError(f"no echo within {timeout:g} s")
                self.receive(data, time.perf_counter())

    def send(self):
        b = PROBE_BYTES[self.sent % len(PROBE_BYTES)]
        self.sent += 1
        self.inflight.append((b, time.perf_counter()))
        os.write(self.fd_in, bytes([b]))

    def receive(self, data, now):
        """Round trips (ms) of the bytes in `data`, matched in order."""
        rtts = []
        for b in data:
            if not self.inflight:
                raise RuntimeError(f"probe echoed {bytes([b])!r}, never sent")
            want, t = self.inflight.popleft()
            if b != want:
                raise RuntimeError(f"probe echoed {bytes([b])!r}, expected "
                                   f"{bytes([want])!r}")
            rtts.append((now - t) * 1000.0)
        return rtts

    def stop(self):
        self.p.stdin.close()
        self.site.procs.stop(self.p)
        self.p.stdout.close()


class Bulk:
    """The bulk transfer: zeros written (upload) or read (download) by this
    process as fast as the session takes or gives them."""

    def __init__(self, argv, direction, site, errpath):
        self.site = site
        self.upload = direction == "upload"
        with open(errpath, "ab") as errf:
            self.p = site.procs.start(
                argv + [ALIAS, BULK_CMD[direction]],
                stdin=subprocess.PIPE if self.upload else subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=errf, env=site.env, bufsize=0)
        self.received = 0
        if self.upload:
            self.remote_pid = self.read_pid()
        self.fd = (self.p.stdin if self.upload else self.p.stdout).fileno()
        os.set_blocking(self.fd, False)
        try:
            fcntl.fcntl(self.fd, fcntl.F_SETPIPE_SZ, MIB)
        except OSError:
            pass  # over /proc/sys/fs/pipe-max-size: the default will do
        self.buf = bytearray(MIB)

    def read_pid(self, timeout=20.0):
        """The remote cat's pid (same pid namespace, other network one)."""
        fd, line = self.p.stdout.fileno(), b""
        deadline = time.monotonic() + timeout
        while not line.endswith(b"\n"):
            r, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
            chunk = os.read(fd, 64) if r else b""
            if not chunk:
                raise RuntimeError(f"bulk session gave no pid (got {line!r}; "
                                   f"ssh exit status {self.p.poll()})")
            line += chunk
        return int(line)

    def count(self):
        """Payload bytes received so far, where they arrive: by the remote
        cat (upload; its rchar in /proc/PID/io) or by us (download)."""
        if not self.upload:
            return self.received
        with open(f"/proc/{self.remote_pid}/io") as f:
            for line in f:
                if line.startswith("rchar:"):
                    return int(line.split()[1])
        raise RuntimeError("no rchar in /proc/PID/io")

    def pump(self):
        try:
            if self.upload:
                os.write(self.fd, self.buf)
                return
            n = os.readv(self.fd, [self.buf])
        except BlockingIOError:
            return
        except BrokenPipeError:
            n = 0
        if n == 0:
            raise RuntimeError(f"bulk session ended (ssh exit status {self.p.poll()})")
        self.received += n

    def stop(self):
        # Closing our ends first lets the master see EOF / EPIPE at once.
        if self.upload:
            self.p.stdin.close()
        self.p.stdout.close()
        self.site.procs.stop(self.p)


def probe_loop(probe, start, end, bulk=None):
    """Send a probe byte every INTERVAL from `start` to `end` (perf_counter
    times) and collect the echoes, waiting up to DRAIN_SECS after `end` for
    the last ones, while pumping `bulk` all along (also before `start`).
    Returns the round trips (ms), how many bytes never came back, and
    (bytes, seconds) of the bulk between `start` and `end`."""
    deadline = end + DRAIN_SECS
    to_send = round((end - start) / INTERVAL)
    next_send = start
    rtts = []
    marks = {}  # "start"/"end" -> (bulk bytes, time)
    rlist, wlist = [probe.fd_out], []
    if bulk:
        (wlist if bulk.upload else rlist).append(bulk.fd)
    while True:
        now = time.perf_counter()
        if bulk:
            for name, t in (("start", start), ("end", end)):
                if name not in marks and now >= t:
                    marks[name] = (bulk.count(), now)
        if (now >= end and not probe.inflight) or now >= deadline:
            break
        if to_send and next_send <= now:
            probe.send()
            to_send -= 1
            next_send += INTERVAL
            continue
        timers = [t for t in (start, end) if t > now] + [deadline]
        if to_send:
            timers.append(next_send)
        r, w, _ = select.select(rlist, wlist, [], max(0.0, min(timers) - now))
        if probe.fd_out in r:
            rtts += probe.receive(probe.read() or b"", time.perf_counter())
        if bulk and bulk.fd in r + w:
            bulk.pump()
    moved = None
    if bulk:
        (b0, t0), (b1, t1) = marks["start"], marks["end"]
        moved = (b1 - b0, t1 - t0)
    return rtts, len(probe.inflight), moved


def warm_up(probe, bulk, dev):
    """Run the bulk for WARM_SECS, then on until the bottleneck has dropped
    nothing for a second (at most WARM_MAX_SECS in all). Slow start ends in
    a burst of drops; while the losses are repaired the receiver holds the
    data after the hole and then delivers it at once, which would count as
    more than the line rate in the window. Returns the seconds it took."""
    t0 = time.perf_counter()
    t = t0 + WARM_SECS - 1.0
    probe_loop(probe, t, t, bulk)
    drops = tbf_stats()[dev][2]
    while time.perf_counter() - t0 < WARM_MAX_SECS:
        t = time.perf_counter() + 1.0
        probe_loop(probe, t, t, bulk)
        now_drops = tbf_stats()[dev][2]
        if now_drops == drops:
            break
        drops = now_drops
    return time.perf_counter() - t0


# ---------------------------------------------------------------- trials


def trial(site, masters, config, direction, mbit, window, errpath):
    """One configuration in one profile: idle probes, then probes while the
    bulk runs. Returns the measurements; raises RuntimeError on failure."""
    master = masters.get(config)
    if master and not master.alive():
        log(f"    the {config} master is gone; restarting it")
        master.start()
    argv = client_argv(site, config, masters)
    probe = Probe(argv, site, errpath)
    bulk = None
    try:
        probe.wait_ready()
        now = time.perf_counter()
        idle, lost, _ = probe_loop(probe, now, now + IDLE_SECS)
        if lost:
            raise RuntimeError(f"{lost} idle probes never came back")
        bulk = Bulk(argv, direction, site, errpath)
        dev = DEV_TO_S if direction == "upload" else DEV_TO_C
        warm = warm_up(probe, bulk, dev)
        start = time.perf_counter()
        end = start + window
        queue = QueueSampler(dev, start, end)
        queue.start()
        rtts, lost, (moved, secs) = probe_loop(probe, start, end, bulk)
        queue.join(10)
        if master:
            for what, p in (("probe", probe.p), ("bulk", bulk.p)):
                if has_tcp_socket(p.pid):
                    raise RuntimeError(f"the {what} client fell back to a "
                                       "direct connection")
    finally:
        if bulk:
            bulk.stop()
        probe.stop()
    if master and not master.alive():
        raise RuntimeError(f"the {config} master died: {master.log_tail()}")
    return {"idle": idle, "rtts": rtts, "lost": lost, "bytes": moved,
            "secs": secs, "queue": queue.samples, "warm": warm}


def failure(e, errpath, master):
    """The reason for a failed trial, with the tails of the logs that tell."""
    reason = str(e)
    said = tail(errpath, 5)
    if said:
        reason += f"; ssh said: {said}"
    if master and not master.alive() and master.log_tail() not in reason:
        reason += f"; {master.name} log: {master.log_tail()}"
    return reason


def check_cc(cc):
    """A note if any connection of the masters (client side) or of sshd
    (server side) does not use `cc`."""
    port = f":{SSHD_PORT}"
    seen = (connections_cc(NS_C, ["dport", "=", port])
            + connections_cc(NS_S, ["sport", "=", port]))
    wrong = sorted(set(n for n in seen if n != cc))
    if wrong:
        return f"profile {cc}: connections found using {', '.join(wrong)}"
    return None


def run_profile(site, masters, mbit, cc, args, results, rounds, notes):
    """All directions, runs and configurations at one rate and congestion
    control, with sshd and the masters started afresh for it."""
    set_rate(mbit)
    keys = [(mbit, cc, d) for d in args.directions]
    for key in keys:
        results[key] = {c: [] for c in args.configs}
    broken = {}  # configuration -> why it cannot run in this profile
    try:
        try:
            set_cc(cc)
            site.start_sshd()
        except RuntimeError as e:
            broken = {c: str(e) for c in args.configs}
            log(f"  profile skipped: {e}")
        for name, m in masters.items():
            if name in broken:
                continue
            try:
                m.start()
            except RuntimeError as e:
                broken[name] = f"master did not start: {e}"
                log(f"  {broken[name]}")
        if not broken:
            note = check_cc(cc)
            if note:
                log(f"  WARNING: {note}")
                notes.append(note)
        for key in keys:
            for run in range(args.runs):
                k = next(rounds) % len(args.configs)
                for config in args.configs[k:] + args.configs[:k]:
                    results[key][config].append(
                        run_one(site, masters, config, key, args, run, broken))
    finally:
        for m in masters.values():
            m.stop()
        site.stop_sshd()


def run_one(site, masters, config, key, args, run, broken):
    mbit, cc, direction = key
    head = f"  [{mbit} Mbit/s {cc} {direction} run {run + 1}] {config:8}"
    if config in broken:
        log(f"{head} skipped: {broken[config]}")
        return {"error": broken[config]}
    wait_quiet(mbit)
    errpath = os.path.join(site.tmp, f"{mbit}-{cc}-{direction}-{run}-{config}.err")
    try:
        t = trial(site, masters, config, direction, mbit, args.window, errpath)
    except (RuntimeError, OSError) as e:
        reason = failure(e, errpath, masters.get(config))
        log(f"{head} FAILED: {reason}")
        return {"error": reason}
    s = summarise([t], mbit)
    log(f"{head} echo median {fmt(s['median'], '.0f')} ms, p90 "
        f"{fmt(s['p90'], '.0f')} ms (idle {fmt(s['idle'])} ms); bulk "
        f"{s['mibs']:.2f} MiB/s = {s['fraction']:.3f} of the line; router "
        f"queue {fmt(s['queue_ms'], '.0f')} ms; {s['probes']} echoes, "
        f"{s['lost']} lost; warm-up {t['warm']:.1f} s")
    return t


# ---------------------------------------------------------------- reporting


def fmt(v, spec=".1f"):
    return "–" if v is None else format(v, spec)


def summarise(trials, mbit):
    """Pooled round trips (median, p90), idle median, median bulk rate."""
    ok = [t for t in trials if "error" not in t]
    s = {"errors": [t["error"] for t in trials if "error" in t], "runs": len(ok)}
    if not ok:
        return s
    rtts = [v for t in ok for v in t["rtts"]]
    idle = [v for t in ok for v in t["idle"]]
    queue = [b for t in ok for b in t["queue"]]
    rate = statistics.median(t["bytes"] / t["secs"] for t in ok)
    s.update(
        median=statistics.median(rtts) if rtts else None,
        p90=bench.percentile(rtts, 90) if rtts else None,
        idle=statistics.median(idle) if idle else None,
        mibs=rate / MIB,
        fraction=rate / line_rate(mbit),
        queue_ms=(statistics.median(queue) / line_rate(mbit) * 1000
                  if queue else None),
        probes=len(rtts),
        lost=sum(t["lost"] for t in ok))
    return s


def result_rows(results, configs):
    L = ["| rate | cc | direction | configuration | echo median ms | echo p90 ms "
         "| idle median ms | bulk MiB/s | of line rate | router queue ms "
         "| echoes |",
         "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for (mbit, cc, d), by_config in results.items():
        for c in configs:
            s = summarise(by_config[c], mbit)
            lead = f"| {mbit} Mbit/s | {cc} | {d} | {c} |"
            if not s["runs"]:
                L.append(f"{lead} **failed** | | | | | | |")
                continue
            echoes = str(s["probes"]) + (f" ({s['lost']} lost)" if s["lost"] else "")
            if s["errors"]:
                echoes += f", {len(s['errors'])} run(s) failed"
            L.append(f"{lead} {fmt(s['median'])} | {fmt(s['p90'])} | "
                     f"{fmt(s['idle'])} | {s['mibs']:.2f} | {s['fraction']:.3f} | "
                     f"{fmt(s['queue_ms'], '.0f')} | {echoes} |")
    return L


def goal_rows(results):
    L = ["| rate | cc | direction | muxguard / openssh median "
         "| muxguard − separate median ms | muxguard of line rate | goal |",
         "|---|---|---|---:|---:|---:|---|"]
    for (mbit, cc, d), by_config in results.items():
        mg, sep = (summarise(by_config[c], mbit) for c in ("muxguard", "separate"))
        osm = summarise(by_config["openssh"], mbit) if "openssh" in by_config else {}
        lead = f"| {mbit} Mbit/s | {cc} | {d} |"
        if mg.get("median") is None or sep.get("median") is None:
            L.append(f"{lead} | | | n/a |")
            continue
        ratio = (f"{mg['median'] / osm['median']:.2f}"
                 if osm.get("median") else "n/a")
        extra = mg["median"] - sep["median"]
        misses = []
        if extra > GOAL_MS:
            misses.append("latency")
        if mg["fraction"] < GOAL_FRACTION:
            misses.append("bulk")
        verdict = f"**fail** ({', '.join(misses)})" if misses else "pass"
        L.append(f"{lead} {ratio} | {extra:+.1f} | {mg['fraction']:.3f} | {verdict} |")
    return L


def build_report(info, args, cmdline, results, notes, elapsed, load):
    L = [f"Machine: {info['nproc']} CPUs ({info['cpu']}), Linux {info['kernel']}, "
         f"{info['ssh']}; {info['date']}",
         f"Command: `{cmdline}` ({elapsed / 60:.1f} min)",
         "",
         f"Router namespace between client and sshd, tbf on both egress "
         f"interfaces (burst 32 kbit per 20 Mbit/s, latency {TBF_LATENCY}). "
         f"Probe: one byte every {INTERVAL * 1000:.0f} ms through a raw tty "
         f"session (`{PROBE_CMD}`), for {args.window:g} s once the bulk "
         f"(`{BULK_CMD['upload']}` / `{BULK_CMD['download']}`) has run "
         f"{WARM_SECS:g} s and the bottleneck has dropped nothing for 1 s "
         f"(at most {WARM_MAX_SECS:g} s); idle: {IDLE_SECS:g} s of the same "
         f"before the bulk starts. {args.runs} run(s) per configuration, "
         "interleaved.",
         "",
         "### Echo round trip while a bulk transfer runs",
         ""]
    L += result_rows(results, args.configs)
    L += ["",
          "Echo: send → that byte back, pooled over the runs; bulk: payload "
          "bytes that arrived during the window (counted by the remote `cat` "
          "for uploads, by this script for downloads; median over the runs), "
          "and their share of tbf's rate (with 1500-byte packets, Ethernet "
          "and TCP/IP headers leave at most about 0.956); router queue: the "
          "bottleneck's tbf backlog, sampled every 0.5 s, in ms at the line "
          "rate.",
          ""]
    if all(c in args.configs for c in ("muxguard", "separate")):
        L += [f"### Goal: muxguard median ≤ separate median + {GOAL_MS:g} ms, "
              f"muxguard bulk ≥ {GOAL_FRACTION} of the line rate", ""]
        L += goal_rows(results)
        L.append("")
    failures = [(key, c, e) for key, by_config in results.items()
                for c, trials in by_config.items()
                for e in summarise(trials, key[0])["errors"]]
    if failures:
        L += ["### Failures", ""]
        L += [f"- {mbit} Mbit/s {cc} {d} {c}: `{' '.join(e.split())[:600]}`"
              for (mbit, cc, d), c, e in failures]
        L.append("")
    for note in notes:
        L.append(f"Note: {note}")
    L.append(f"Load average (1 min) at start / end: {load[0]} / {load[1]}")
    return "\n".join(L).rstrip() + "\n"


# ---------------------------------------------------------------- main


def csv(choices=None, conv=str):
    def parse(text):
        items = [conv(x) for x in text.split(",") if x]
        for x in items:
            if choices and x not in choices:
                raise argparse.ArgumentTypeError(
                    f"{x!r}: choose from {', '.join(choices)}")
        if not items:
            raise argparse.ArgumentTypeError("empty list")
        return items
    return parse


def positive_int(text):
    n = int(text)
    if n <= 0:
        raise argparse.ArgumentTypeError(f"{text}: must be positive")
    return n


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rates", type=csv(conv=positive_int), default=[20, 100],
                    help="tbf rates in Mbit/s (default 20,100)")
    ap.add_argument("--ccs", type=csv(), default=["reno", "bbr"],
                    help="congestion controls (default reno,bbr)")
    ap.add_argument("--directions", type=csv(BULK_CMD), default=list(BULK_CMD),
                    help="bulk directions (default upload,download)")
    ap.add_argument("--configs", type=csv(CONFIGS), default=list(CONFIGS),
                    help="default openssh,muxguard,separate")
    ap.add_argument("--window", type=float, default=10.0,
                    help="seconds of probes under load (default 10)")
    ap.add_argument("--runs", type=positive_int, default=1,
                    help="repeats per configuration and profile (default 1)")
    ap.add_argument("--markdown", metavar="FILE",
                    help="write/update the results section in FILE")
    ap.add_argument("--keep", action="store_true",
                    help="keep the temp dir (logs, configs)")
    return ap.parse_args()


def main():
    args = parse_args()
    if os.geteuid() != 0:
        sys.exit("fairness.py needs root (network namespaces, tc, sysctl)")
    for tool in ("ip", "tc", "ss", "ssh", "sshd", "ssh-agent", "ssh-add",
                 "ssh-keygen"):
        if not shutil.which(tool) and not os.path.exists(f"/usr/sbin/{tool}"):
            sys.exit(f"{tool} not found (iproute2 / OpenSSH)")
    ccs = []
    for cc in args.ccs:
        if cc_available(cc):
            ccs.append(cc)
        else:
            log(f"note: congestion control {cc} is not available; skipping it")
    if not ccs:
        sys.exit("no congestion control left to measure")
    # Its own target directory, so that it never waits for the lock of a
    # concurrent build in the default one.
    target_bench = os.path.join(os.path.dirname(bench.REPO), "target-bench")
    bin_path = (bench.muxguard_binary(target_bench)
                if "muxguard" in args.configs else None)
    cmdline = "python3 bench/fairness.py" + "".join(f" {a}" for a in sys.argv[1:])
    if os.environ.get("MUXGUARD_BIN"):
        cmdline = "MUXGUARD_BIN=… " + cmdline
    info = bench.machine_info("ssh")

    def on_term(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)

    trials = len(args.rates) * len(ccs) * len(args.directions) * args.runs * len(args.configs)
    per_trial = IDLE_SECS + WARM_SECS + args.window + 5  # + set-up, quiet
    log(f"{trials} trials, about {trials * per_trial / 60:.0f} min")
    tmp = tempfile.mkdtemp(prefix="mgf-")  # short: socket paths ≤ 108 bytes
    procs = bench.Procs()
    atexit.register(delete_namespaces)  # atexit runs these last-in first-out
    atexit.register(procs.stop_all)
    results, notes = {}, []
    masters = {}
    rounds = itertools.count()  # rotates the configurations' order
    t0 = time.monotonic()
    load = [bench.loadavg()]
    ok = False
    try:
        delete_namespaces()
        create_net()
        site = Site(tmp, procs)
        site.prepare()
        masters = make_masters(site, args.configs, bin_path)
        log(f"namespaces {NS_C} - {NS_R} - {NS_S} up; temp dir {tmp}")
        for mbit in args.rates:
            for cc in ccs:
                log(f"profile {mbit} Mbit/s, {cc}")
                run_profile(site, masters, mbit, cc, args, results, rounds, notes)
        ok = True
    except KeyboardInterrupt:
        log("interrupted; cleaning up")
        raise SystemExit(130)
    finally:
        for m in masters.values():
            m.stop()
        procs.stop_all()
        delete_namespaces()
        failed = any("error" in t for by_config in results.values()
                     for ts in by_config.values() for t in ts)
        if args.keep or failed or not ok:
            log(f"temp dir kept: {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    load.append(bench.loadavg())
    report = build_report(info, args, cmdline, results, notes,
                          time.monotonic() - t0, load)
    print()
    print(report)
    if args.markdown:
        bench.write_markdown(args.markdown, report, MD_BEGIN, MD_END,
                             "## Fairness (fairness.py)")
        log(f"results written to {args.markdown}")


if __name__ == "__main__":
    main()
