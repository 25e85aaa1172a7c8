"""Process helpers shared by the commands that start and stop halb's daemons
(proxy, director, sync, heartbeat) and by the lab: a pid file held locked by
its daemon, whether a pid is a live process (and waiting for it to go), the
last line a daemon that failed logged, one request to a control socket."""
from __future__ import annotations

import fcntl
import json
import os
import socket
import time


def pid_alive(pid: int, cmd_word: str | None = None) -> bool:
    """True when `pid` runs and is not a zombie (and, given `cmd_word`, its
    command line contains it: a pid reused by another program is not ours)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            if fh.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                return False
        if cmd_word is not None:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                return cmd_word.encode() in fh.read()
        return True
    except (OSError, IndexError):
        return False


def locked_pid(path) -> int | None:
    """The pid written in `path` while its daemon holds the file locked, else None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                return int(os.read(fd, 32).decode().strip())
            except ValueError:
                return None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def hold_pid_file(path, taken: str) -> int:
    """Lock `path` for this process's life and write our pid in it; the open fd
    (closed, or the process gone, the lock goes with it). A file another live
    process holds raises HalbError: `taken` then "(pid N, pid file PATH)"."""
    from halb.errors import HalbError

    for _ in range(10):
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            try:
                other = (os.read(fd, 32).decode(errors="replace").split() or ["?"])[0]
            finally:
                os.close(fd)
            raise HalbError(f"{taken} (pid {other}, pid file {path})") from None
        try:  # the holder unlinked it as we locked it: lock the file that is there now
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def log_tail(path, offset: int, marker: str | None = None) -> str:
    """The last non-blank line written to `path` after `offset` ("no output" if none);
    with `marker` (e.g. "halb-sync["), a line carrying it loses its "...]: " prefix."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            lines = [ln for ln in f.read().decode(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "?"
    if not lines:
        return "no output"
    last = lines[-1].strip()
    return last.split("]: ", 1)[-1] if marker and marker in last else last


def wait_gone(pid: int, seconds: float) -> bool:
    """Wait up to `seconds` for `pid` to exit; True once it has."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        time.sleep(0.05)
    return not pid_alive(pid)


def ask(path, request: dict, timeout: float) -> bytes:
    """One JSON-line request to a daemon's control socket, its reply line (raw).
    Raises OSError (FileNotFoundError, ConnectionRefusedError...) or socket.timeout."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(str(path))
        s.sendall(json.dumps(request).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
        return buf
    finally:
        s.close()


async def serve_commands(reader, writer, dispatch) -> None:
    """A daemon's control connection: JSON lines {"cmd": ...} in, one JSON reply line
    each, from `dispatch(cmd)` (cmd None for an unreadable request; may be a coroutine),
    until the client goes. A line beyond the stream's limit ends the connection."""
    import asyncio
    import inspect

    try:
        while True:
            line = await reader.readline()
            if not line:
                break
            try:
                req = json.loads(line)
                cmd = req.get("cmd") if isinstance(req, dict) else None
            except ValueError:
                cmd = None
            reply = dispatch(cmd)
            if inspect.isawaitable(reply):
                reply = await reply
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError, ValueError):
        pass  # a client gone, or a line longer than the stream limit
    finally:
        writer.close()
