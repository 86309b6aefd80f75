"""A minimal OpenSSH mux-protocol client, for timing a master without the
cost of starting an ssh process (which is most of `ssh -S sock host true`
and the same for every master).

It sends what the stock client sends for `ssh -S sock host true` with
stdin from /dev/null (../shared/docs/mux-protocol.md): HELLO, ALIVE_CHECK,
NEW_SESSION with its three descriptors each on its own carrier byte, and
waits for SESSION_OPENED, EXIT_MESSAGE and the master's EOF, as the stock
client does. Python standard library only.
"""

import os
import socket
import struct
import time

HELLO = 0x00000001
NEW_SESSION = 0x10000002
ALIVE_CHECK = 0x10000004
S_EXIT_MESSAGE = 0x80000004
S_ALIVE = 0x80000005
S_SESSION_OPENED = 0x80000006


class MuxError(RuntimeError):
    pass


def _string(b):
    return struct.pack(">I", len(b)) + b


def _send_packet(s, payload):
    s.sendall(struct.pack(">I", len(payload)) + payload)


def _recv_exact(s, n):
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise MuxError("master closed the connection mid-packet")
        buf += chunk
    return buf


def _recv_packet(s):
    (length,) = struct.unpack(">I", _recv_exact(s, 4))
    body = _recv_exact(s, length)
    return struct.unpack(">I", body[:4])[0], body[4:]


def _hello(s):
    _send_packet(s, struct.pack(">II", HELLO, 4))
    kind, _ = _recv_packet(s)
    if kind != HELLO:
        raise MuxError(f"expected HELLO, got {kind:#x}")


def _alive(s, rid):
    _send_packet(s, struct.pack(">II", ALIVE_CHECK, rid))
    kind, body = _recv_packet(s)
    if kind != S_ALIVE:
        raise MuxError(f"ALIVE_CHECK answered {kind:#x}")
    return struct.unpack(">II", body[:8])[1]


def check(sock_path):
    """`ssh -O check`: HELLO and ALIVE_CHECK. Returns milliseconds."""
    t0 = time.perf_counter()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(sock_path)
        _hello(s)
        _alive(s, 0)
    return (time.perf_counter() - t0) * 1000.0


def session(sock_path, command=b"true", marks=None):
    """One non-tty session running `command`; its output is discarded.
    Returns milliseconds from connect to the master's EOF after
    EXIT_MESSAGE; raises MuxError on a refusal or a non-zero exit.

    `marks`, a list, gets the `time.perf_counter()` of each step as the
    client sees it: connected, HELLO answered, ALIVE_CHECK answered,
    request and descriptors sent, SESSION_OPENED, EXIT_MESSAGE, EOF."""
    mark = marks.append if marks is not None else (lambda _t: None)
    null = os.open(os.devnull, os.O_RDWR)
    out_r, out_w = os.pipe()
    try:
        t0 = time.perf_counter()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(sock_path)
            mark(t0)
            _hello(s)
            mark(time.perf_counter())
            _alive(s, 0)
            mark(time.perf_counter())
            payload = struct.pack(">II", NEW_SESSION, 1) + _string(b"")
            payload += struct.pack(">IIIII", 0, 0, 0, 0, 0x7E)
            payload += _string(b"") + _string(command)
            _send_packet(s, payload)
            for fd in (null, out_w, out_w):
                s.sendmsg([b"\0"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                     struct.pack("i", fd))])
            mark(time.perf_counter())
            os.close(out_w)
            out_w = -1
            kind, body = _recv_packet(s)
            if kind != S_SESSION_OPENED:
                raise MuxError(f"NEW_SESSION answered {kind:#x}: {body[4:]!r}")
            mark(time.perf_counter())
            kind, body = _recv_packet(s)
            if kind != S_EXIT_MESSAGE:
                raise MuxError(f"expected EXIT_MESSAGE, got {kind:#x}")
            mark(time.perf_counter())
            status = struct.unpack(">II", body[:8])[1]
            if s.recv(1) != b"":
                raise MuxError("master sent more after EXIT_MESSAGE")
            mark(time.perf_counter())
        dt = time.perf_counter() - t0
        if status != 0:
            raise MuxError(f"{command!r} exited {status}")
        return dt * 1000.0
    finally:
        os.close(null)
        os.close(out_r)
        if out_w >= 0:
            os.close(out_w)
