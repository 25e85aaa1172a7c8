"""systemd's readiness protocol (sd_notify(3)), written by hand: one datagram
of `KEY=VALUE` lines to the unix socket named in $NOTIFY_SOCKET. Outside
systemd (no $NOTIFY_SOCKET) every call is a no-op that returns False.

    ready()       READY=1: the daemon serves (Type=notify units wait for it)
    reloading()   RELOADING=1 (+ MONOTONIC_USEC): a SIGHUP reload begins; ready() ends it
    stopping()    STOPPING=1: the daemon shuts down
    status(text)  STATUS=...: one line shown by `systemctl status`
    watchdog()    WATCHDOG=1: the keep-alive ping when the unit sets WatchdogSec=
    watchdog_interval()  seconds between pings (half of WatchdogSec), or None
"""
from __future__ import annotations

import os
import socket
import time


def notify(*fields: str) -> bool:
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return False
    if addr[0] == "@":                      # abstract namespace socket
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.sendto("\n".join(fields).encode(), addr)
        return True
    except OSError:
        return False


def ready(status: str | None = None) -> bool:
    return notify("READY=1", *([f"STATUS={status}"] if status else []))


def reloading() -> bool:
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify("RELOADING=1", f"MONOTONIC_USEC={usec}")


def stopping(status: str | None = None) -> bool:
    return notify("STOPPING=1", *([f"STATUS={status}"] if status else []))


def status(text: str) -> bool:
    return notify(f"STATUS={text}")


def watchdog() -> bool:
    return notify("WATCHDOG=1")


def watchdog_interval() -> float | None:
    """Half the unit's WatchdogSec (how often to ping), or None when no watchdog
    is asked of this process."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return max(0.05, int(usec) / 2e6)
    except ValueError:
        return None


async def watchdog_loop() -> None:
    """Ping the watchdog from the event loop until cancelled: a loop stuck longer
    than WatchdogSec= gets the daemon restarted by systemd."""
    import asyncio

    every = watchdog_interval()
    while every:
        watchdog()
        await asyncio.sleep(every)


def under_journal() -> bool:
    """True when stderr is connected to systemd's journal ($JOURNAL_STREAM names
    stderr's device:inode): lines then carry a <N> priority prefix and no time stamp,
    and nothing else (syslog) should send the same line to the journal again."""
    js = os.environ.get("JOURNAL_STREAM")
    if not js:
        return False
    try:
        st = os.fstat(2)
        dev, ino = js.split(":")
        return st.st_dev == int(dev) and st.st_ino == int(ino)
    except (OSError, ValueError):
        return False
