"""`watchdog DEVICE` in ha.cf: a heartbeat that dies must not keep its resources.

heartbeat opens the watchdog device (the kernel's softdog) and writes to it
from its main loop: if heartbeat dies or hangs, the kernel reboots the
machine, and a rebooted machine holds no VIP. halb does the same when the
device exists (`Device`). Where it does not (no softdog here), the daemon
forks this small death-watch instead (`python -S watchdog.py`, standard
library only, a few MB): it holds the read end of a pipe the daemon kicks,
and
  - end of file without the magic "V" (the daemon died: kill -9, a crash):
    runs `halb heartbeat release` (stop every haresources resource on this
    node: VIP, director and its nft table);
  - no kick for TIMEOUT seconds (the daemon hangs: SIGSTOP, a deadlock):
    kills the daemon (the reboot softdog would do) and releases the same way;
  - "V" then end of file: a clean stop (the daemon released everything
    itself): exits.
It ignores SIGINT/SIGTERM/SIGHUP (a Ctrl-C or a service stop is for the
daemon, which then closes it cleanly) and logs in heartbeat's words to
stderr and the ha.cf logfile.
"""
from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time

MAGIC_CLOSE = b"V"


class Device:
    """A real watchdog device (/dev/watchdog): kicked by writes, closed with "V"."""

    def __init__(self, path: str):
        self.path = path
        self.fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)

    def kick(self) -> bool:
        try:
            os.write(self.fd, b"k")
            return True
        except OSError:
            return False

    def close(self) -> None:
        try:
            os.write(self.fd, MAGIC_CLOSE)    # magic close: the kernel disarms the timer
        except OSError:
            pass
        os.close(self.fd)

    def abandon(self) -> None:
        """The daemon ends without having released its resources: no magic close."""
        os.close(self.fd)

    def describe(self) -> str:
        return f"{self.path} (kernel watchdog: the machine reboots if heartbeat stops kicking it)"


class DeathWatch:
    """Parent side: the forked death-watch process and the pipe that kicks it."""

    def __init__(self, *, daemon_pid: int, timeout: float, release_argv: list, logfile: str | None, why: str):
        r, w = os.pipe()
        env = dict(os.environ, HALB_RELEASE_WHY=why)
        argv = [sys.executable, "-S", os.path.abspath(__file__), str(r), str(daemon_pid), repr(timeout),
                logfile or "", "--", *release_argv]
        self.proc = subprocess.Popen(argv, pass_fds=[r], stdin=subprocess.DEVNULL, env=env,
                                     start_new_session=True)
        os.close(r)
        self.fd = w
        self.timeout = timeout

    def kick(self) -> bool:
        try:
            os.write(self.fd, b"k")
            return True
        except OSError:
            return False

    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> None:
        """Clean stop: the magic close, then end of file; the watch exits without acting."""
        try:
            os.write(self.fd, MAGIC_CLOSE)
        except OSError:
            pass
        os.close(self.fd)
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(2)

    def abandon(self) -> None:
        """The daemon ends without having released its resources (it failed): end of
        file without the magic close, so the watch releases them once we are gone."""
        os.close(self.fd)

    def describe(self) -> str:
        return (f"death-watch pid {self.proc.pid} (no watchdog device): releases this node's resources "
                f"if heartbeat dies or stops kicking it for {self.timeout:g}s")


# ---------------------------------------------------------------- the watch itself


def _log(logfile: str, level: str, msg: str) -> None:
    t = time.time()
    stamp = time.strftime("%Y/%m/%d_%H:%M:%S", time.localtime(t)) + f".{int(t * 1000) % 1000:03d}"
    line = f"heartbeat[{os.getpid()}]: {stamp} {level}: {msg}\n"
    try:
        sys.stderr.write(line)
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    if logfile:
        try:
            with open(logfile, "a") as f:
                f.write(line)
        except OSError:
            pass


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (OSError, IndexError):
        return True


def watch(fd: int, daemon_pid: int, timeout: float, logfile: str, release_argv: list) -> int:
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    clean = False
    last = time.monotonic()
    while True:
        left = last + timeout - time.monotonic()
        if left <= 0:
            _log(logfile, "error", f"watchdog: heartbeat (pid {daemon_pid}) has not kicked the watchdog for "
                                   f"{timeout:g}s: killing it and releasing this node's resources")
            try:
                os.kill(daemon_pid, signal.SIGKILL)
            except OSError:
                pass
            break
        r, _, _ = select.select([fd], [], [], left)
        if not r:
            continue
        try:
            data = os.read(fd, 4096)
        except OSError:
            data = b""
        if not data:
            if clean:
                return 0
            _log(logfile, "error", f"watchdog: heartbeat (pid {daemon_pid}) died: releasing this node's resources")
            break
        clean = data.endswith(MAGIC_CLOSE)
        last = time.monotonic()
    deadline = time.monotonic() + 10
    while not _gone(daemon_pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    for attempt in range(3):
        try:
            r = subprocess.run(release_argv, stdin=subprocess.DEVNULL, timeout=300)
        except (OSError, subprocess.TimeoutExpired) as e:
            _log(logfile, "error", f"watchdog: cannot run {' '.join(release_argv)}: {e}")
            return 1
        if r.returncode == 0:
            return 0
        time.sleep(0.2)     # e.g. the pid file still held for a moment: try again
    _log(logfile, "error", "watchdog: some resources could not be released (see above)")
    return 1


def main(argv: list) -> int:
    fd, pid, timeout, logfile = int(argv[0]), int(argv[1]), float(argv[2]), argv[3]
    return watch(fd, pid, timeout, logfile, argv[5:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
