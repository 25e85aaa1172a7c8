"""Resource agents run in a helper process, not in the daemon.

The agents are Python code and scripts: run in a thread of the daemon they
would take the interpreter lock from the beat thread. The helper is started
once (a fresh interpreter, so it shares nothing with the event loop, and
small: the standard library, halb.resources and its own netlink socket),
keeps the agents (and their open netlink / ARP sockets) and answers one
request at a time over a socketpair: (number, op, group, resource) ->
(number, ok, error message, log lines with the time they happened).

Requests are numbered and a reply is taken only for the request it answers:
a reply that comes late (its request timed out) is never read as the answer
to a later request. An operation that does not answer in time counts as
failed and the helper is killed and started again (an agent stuck in a
netlink call or a script would otherwise hold every later operation).
"""
from __future__ import annotations

import os
import pickle
import socket
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection


def _serve(conn, specs, ha_dir, node, run_dir, engine, rt_prio):
    try:
        if rt_prio:
            # real-time so a takeover is not queued behind ordinary work; what the
            # agents start (scripts, the director) must not inherit it
            os.sched_setscheduler(0, os.SCHED_FIFO | getattr(os, "SCHED_RESET_ON_FORK", 0x40000000),
                                  os.sched_param(rt_prio))
        else:
            os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    except (OSError, AttributeError):
        pass
    from halb.resources import make_agent

    logs: list = []

    def log(level, msg):
        logs.append((level, msg, time.time()))     # the daemon logs it with the time it happened

    agents = [[make_agent(r, ha_dir=ha_dir, node=node, run_dir=run_dir, engine=engine, log=log) for r in group]
              for group in specs]
    while True:
        try:
            req = conn.recv()
        except (EOFError, OSError):
            break
        if req is None:
            break
        n, op, gi, ri = req
        logs = []
        try:
            a = agents[gi][ri]
            if op == "prepare":
                if hasattr(a, "prepare"):
                    a.prepare()
                result = True
            elif op == "status":
                result = bool(a.status())
            elif op == "start":
                a.start()
                result = True
            elif op == "stop":
                a.stop()
                result = True
            else:
                raise ValueError(f"unknown op {op}")
            reply = (n, True, result, logs)
        except BaseException as e:  # noqa: BLE001 - every failure goes back as a message
            reply = (n, False, str(e) or type(e).__name__, logs)
        try:
            conn.send(reply)
        except (OSError, ValueError):
            break
    for group in agents:
        for a in group:
            if hasattr(a, "close"):
                try:
                    a.close()
                except Exception:
                    pass


class AgentWorker:
    """The helper process (`python -m halb.heartbeat.worker FD`), talking over a socketpair."""

    def __init__(self, specs, *, ha_dir, node, run_dir, engine, rt_prio=0, timeout=120.0):
        self.args = (specs, str(ha_dir), node, str(run_dir), engine, rt_prio)
        self.timeout = timeout
        self.seq = 0           # number of the last request sent
        self.restarts = 0      # helpers killed after a request timed out
        self.stale = 0         # replies dropped because they answered an earlier request
        self.lock = threading.Lock()
        self._spawn()

    def _spawn(self):
        mine, theirs = socket.socketpair()
        self.proc = subprocess.Popen([sys.executable, "-m", "halb.heartbeat.worker", str(theirs.fileno())],
                                     pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL)
        theirs.close()
        self.conn = Connection(mine.detach())
        self.conn.send(self.args)

    def _restart(self):
        """Kill a helper that did not answer in time and start a fresh one (its late
        reply dies with its socket)."""
        try:
            self.proc.kill()
            self.proc.wait(5)
        except (OSError, subprocess.TimeoutExpired):
            pass
        self.conn.close()
        self.restarts += 1
        self._spawn()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def call(self, op, gi, ri, timeout=None):
        """Blocking: run one agent operation; returns (ok, result-or-error, logs)."""
        self.lock.acquire()
        err = self._send(op, gi, ri)
        return err if err else self.finish(timeout)

    def begin(self, op, gi, ri):
        """Send a request now, from the caller's thread, without waiting for another
        caller's request to finish: False when the helper is busy (use `call`), None when
        sent (then `finish` must follow), or the failure as (False, error, [])."""
        if not self.lock.acquire(blocking=False):
            return False
        return self._send(op, gi, ri)

    def _send(self, op, gi, ri):
        self.seq += 1
        try:
            self.conn.send((self.seq, op, gi, ri))
            return None
        except (OSError, ValueError) as e:
            self.lock.release()
            return False, f"resource agent helper died ({e or type(e).__name__})", []

    def finish(self, timeout=None):
        """Wait for the answer to the request `begin` or `call` sent; releases the helper.
        Only the reply numbered as that request is taken; none in `timeout`: failed, and
        the helper is restarted."""
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0 or not self.conn.poll(left):
                    self._restart()
                    return False, (f"no answer in {timeout:g}s (operation counted as failed; "
                                   "resource agent helper restarted)"), []
                n, ok, res, logs = self.conn.recv()
                if n == self.seq:
                    return ok, res, logs
                self.stale += 1     # the answer to an earlier request: never this one's
        except (EOFError, OSError, pickle.UnpicklingError, TypeError, ValueError) as e:
            return False, f"resource agent helper died ({e or type(e).__name__})", []
        finally:
            self.lock.release()

    def close(self):
        try:
            with self.lock:
                self.conn.send(None)
        except (OSError, ValueError):
            pass
        try:
            self.proc.wait(5)
        except (subprocess.TimeoutExpired, ChildProcessError):
            self.proc.kill()
            self.proc.wait(2)
        self.conn.close()


def main(argv):
    conn = Connection(int(argv[0]))
    try:
        args = conn.recv()
    except (EOFError, OSError):
        return 1
    _serve(conn, *args)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
