"""Free loopback port selection and TCP readiness helpers for the test harness.

``free_port()`` binds port 0 on 127.0.0.1, lets the kernel choose, closes the
socket and returns the number.  Ports handed out by this process are remembered
so two daemons in one pytest session never get the same number, even if the
kernel would hand it out again.  There is still a window between closing the
probe socket and the daemon binding, so daemon wrappers retry with a new port
when the daemon dies with "address already in use".
"""

from __future__ import annotations

import os
import socket
import threading
import time

LOOPBACK = "127.0.0.1"

_lock = threading.Lock()
_handed_out: set[int] = set()


def free_port(host: str = LOOPBACK) -> int:
    """Return a TCP port on ``host`` that was free a moment ago and is unique
    within this process."""
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        with _lock:
            if port not in _handed_out:
                _handed_out.add(port)
                return port
    raise RuntimeError("could not find a free loopback port after 200 tries")


def port_is_open(host: str, port: int, timeout: float = 0.2) -> bool:
    """True if something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_port_closed(host: str, port: int, timeout: float = 10.0) -> bool:
    """Wait until nothing accepts connections on host:port; True on success."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not port_is_open(host, port):
            return True
        time.sleep(0.05)
    return False


def _listening_inodes(port: int) -> set[str]:
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    local, state, inode = fields[1], fields[3], fields[9]
                    if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                        inodes.add(inode)
        except FileNotFoundError:
            continue
    return inodes


def pid_listens_on(pid: int, port: int) -> bool:
    """True if process ``pid`` itself holds a listening TCP socket on ``port``
    (so a readiness probe is not fooled by some other server on that port).
    Falls back to True where /proc is unavailable."""
    if not os.path.exists("/proc/net/tcp"):
        return True
    inodes = _listening_inodes(port)
    if not inodes:
        return False
    fd_dir = f"/proc/{pid}/fd"
    try:
        for fd in os.listdir(fd_dir):
            try:
                link = os.readlink(os.path.join(fd_dir, fd))
            except OSError:
                continue
            if link.startswith("socket:[") and link[8:-1] in inodes:
                return True
    except OSError:
        return False
    return False
