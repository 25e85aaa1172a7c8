"""Small helpers around namespaces: processes inside one, sockets created in
one, killing a namespace's processes. Used by the lab and its clean-up."""
from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import threading
import time

from halb.procs import pid_alive

CLONE_NEWNET = 0x40000000
CLONE_NEWUTS = 0x04000000

_libc = ctypes.CDLL(None, use_errno=True)


def ns_inode(path: str) -> int | None:
    """Inode identifying the namespace bound at `path` (None if gone)."""
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def pids_in(ns_path: str, kind: str = "net") -> list[int]:
    """Pids of every process whose `kind` namespace is the one at ns_path."""
    ino = ns_inode(ns_path)
    if ino is None:
        return []
    me = os.getpid()
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        if pid == me:
            continue
        try:
            if os.stat(f"/proc/{pid}/ns/{kind}").st_ino == ino:
                out.append(pid)
        except OSError:
            continue
    return sorted(out)


def signal_pids(pids, sig) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def kill_pids(pids, grace: float = 2.0) -> None:
    """SIGTERM (with SIGCONT for stopped ones), then SIGKILL after `grace`."""
    pids = [p for p in pids if pid_alive(p)]
    if not pids:
        return
    signal_pids(pids, signal.SIGTERM)
    signal_pids(pids, signal.SIGCONT)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        pids = [p for p in pids if pid_alive(p)]
        if not pids:
            return
        time.sleep(0.02)
    signal_pids(pids, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(pid_alive(p) for p in pids):
        time.sleep(0.02)


def stop_popen(p, timeout: float, kill_wait: float = 5) -> bool:
    """SIGTERM a started process and wait up to `timeout`; SIGKILL it if it
    is still there. True when it ended on SIGTERM (a clean stop)."""
    p.terminate()
    try:
        p.wait(timeout)
        return True
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait(kill_wait)
        return False


def wait_gone(pids, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(pid_alive(p) for p in pids):
            return True
        time.sleep(0.02)
    return not any(pid_alive(p) for p in pids)


def socket_in(ns_path: str, family=socket.AF_INET, type=socket.SOCK_STREAM, proto=0) -> socket.socket:
    """A socket created inside the network namespace at ns_path.

    A socket belongs to the namespace it was created in for its whole life,
    so it can be used from any thread afterwards. The creation happens in a
    short-lived thread that enters the namespace (setns only affects the
    calling thread), leaving the caller's namespace untouched."""
    box: dict = {}

    def work():
        try:
            fd = os.open(ns_path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            box["err"] = e
            return
        try:
            if _libc.setns(fd, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                box["err"] = OSError(err, f"setns({ns_path}): {os.strerror(err)}")
                return
            box["sock"] = socket.socket(family, type, proto)
        except OSError as e:
            box["err"] = e
        finally:
            os.close(fd)

    t = threading.Thread(target=work, name="halb-setns")
    t.start()
    t.join()
    if "err" in box:
        raise box["err"]
    return box["sock"]
