"""Run a Plan on ClusterShell's engine (a thin shell around the library).

One local remote-shell process per machine (`ssh [opts] [-l user] host cmd`)
is started by a ClusterShell worker; the task's fan-out gives dsh's -w
(fan-out 1, in order), -c (all at once) and -F N. ClusterShell's per-client
timeout is the per-host timeout, and its message tree gathers identical
outputs for -G. Lines are written as they arrive (prefixed with -M).
"""
from __future__ import annotations

import os
import shlex
import sys
import threading
import time
from dataclasses import dataclass

from ClusterShell.Engine.Engine import FANOUT_UNLIMITED
from ClusterShell.Event import EventHandler
from ClusterShell.NodeSet import RESOLVER_NOGROUP, NodeSet, NodeSetException
from ClusterShell.Task import task_self
from ClusterShell.Worker.Exec import ExecClient, ExecWorker
from ClusterShell.Worker.Worker import DistantWorker

from halb.dsh.options import Plan

SEP = b"-" * 15


@dataclass
class HostResult:
    host: str
    rc: int | None = None          # None: never finished (timeout)
    timed_out: bool = False
    last_err: str = ""
    started: float | None = None
    ended: float | None = None

    @property
    def ok(self) -> bool:
        return self.rc == 0 and not self.timed_out


def describe_failure(r: HostResult, plan: Plan) -> str:
    """One line telling why a host failed (for the final report)."""
    rsh = os.path.basename(plan.remoteshell[0])
    if r.timed_out:
        return f"timed out after {plan.timeout:g} s"
    if r.rc is None:
        return "did not run"
    if rsh == "ssh" and r.rc == 255:
        why = r.last_err or "connection or authentication failure"
        return f"ssh failed (exit 255): {why}"
    if r.rc > 128 and r.rc < 128 + 65:
        return f"killed by signal {r.rc - 128}" + (f" ({r.last_err})" if r.last_err else "")
    return f"exit status {r.rc}"


class _RshClient(ExecClient):
    """One machine: run the plan's argv (a list: no local shell involved)."""

    def _build_cmd(self):
        return (self.worker.plan.argv_for(self.key), None)


class _RshWorker(ExecWorker):
    """ExecWorker for one dsh machine spec (which may be user@host, so it does
    not go through NodeSet). The Runner starts these in the user's order,
    `fanout` at a time (ClusterShell's engine starts delayed clients in no
    particular order, and dsh -w runs the machines in list order)."""

    SHELL_CLASS = _RshClient

    def __init__(self, plan: Plan, host: str, rank: int, handler, timeout=None):
        DistantWorker.__init__(self, handler)
        self._close_count = 0
        self._has_timeout = False
        self._clients = []
        self.plan = plan
        self.host = host
        self.nodes = [host]
        self.command = "<halb dsh>"
        self.source = self.dest = None
        self._fanout = FANOUT_UNLIMITED  # the Runner does the fan-out
        self._add_client(host, rank=rank, timeout=timeout, stderr=True, autoclose=False)


class _Handler(EventHandler):
    def __init__(self, runner: "Runner"):
        self.r = runner

    def ev_pickup(self, worker, node):
        res = self.r.results[node]
        res.started = time.monotonic()
        if self.r.plan.verbose:
            argv = self.r.plan.argv_for(node)
            self.r.note(f"{node}: executing {' '.join(shlex.quote(a) for a in argv)}")

    def ev_read(self, worker, node, sname, msg):
        msg = bytes(msg)
        if sname == worker.SNAME_STDERR and msg.strip():
            self.r.results[node].last_err = msg.decode("utf-8", "replace").strip()[:300]
        if self.r.plan.gather:
            return  # kept by the task's message trees
        stream = self.r.err if sname == worker.SNAME_STDERR else self.r.out
        if self.r.plan.show_names:
            msg = node.encode() + b": " + msg
        stream.write(msg + b"\n")
        stream.flush()

    def ev_hup(self, worker, node, rc):
        res = self.r.results[node]
        res.rc = rc
        res.ended = time.monotonic()
        if self.r.plan.verbose:
            self.r.note(f"{node}: finished, exit status {rc}")

    def ev_close(self, worker, timedout):
        if timedout:
            res = self.r.results[worker.host]
            res.timed_out = True
            res.ended = time.monotonic()
            if self.r.plan.verbose:
                self.r.note(f"{worker.host}: timed out, killed")
        self.r.running -= 1
        self.r.start_next()


class _StdinPort(EventHandler):
    """Receives chunks of our stdin from the reader thread (dsh -i)."""

    def __init__(self, workers):
        self.workers = workers

    def ev_msg(self, port, msg):
        for w in self.workers:
            if w._close_count:  # that machine's command already ended
                continue
            if msg is None:
                w.set_write_eof()
            else:
                w.write(msg)


def _stdin_reader(port, fd: int):
    try:
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            port.msg_send(chunk)
    except OSError:
        pass
    port.msg_send(None)


class Runner:
    def __init__(self, plan: Plan, out=None, err=None, stdin_fd: int = 0):
        self.plan = plan
        self.out = out if out is not None else sys.stdout.buffer
        self.err = err if err is not None else sys.stderr.buffer
        self.stdin_fd = stdin_fd
        self.results = {h: HostResult(h) for h in plan.hosts}

    def note(self, text: str):
        self.err.write(f"halb dsh: {text}\n".encode())
        self.err.flush()

    def start_next(self):
        """Start queued machines while fewer than `fanout` are running."""
        while self.queue and self.running < self.plan.fanout:
            rank, host = self.queue.pop(0)
            w = _RshWorker(self.plan, host, rank, self.handler, timeout=self.plan.timeout)
            self.task.schedule(w)
            if not self.plan.dup_input:
                if self.plan.script is not None:
                    w.write(self.plan.script)
                w.set_write_eof()
            self.workers.append(w)
            self.running += 1

    def run(self) -> list[HostResult]:
        plan = self.plan
        task = self.task = task_self()  # runs in this thread; unbound (kill=True) when done
        task.set_info("fanout", max(64, len(plan.hosts)))
        task.set_default("stdout_msgtree", plan.gather)
        task.set_default("stderr_msgtree", plan.gather)
        self.handler = _Handler(self)
        self.queue = list(enumerate(plan.hosts))
        self.workers: list[_RshWorker] = []
        self.running = 0
        self.start_next()
        if plan.dup_input:  # -i: every machine was started (no fork limit)
            port = task.port(handler=_StdinPort(self.workers), autoclose=True)
            threading.Thread(target=_stdin_reader, args=(port, self.stdin_fd), daemon=True).start()
        try:
            task.resume()
            if plan.gather:
                self._print_gathered(task)
        finally:
            task.abort(kill=True)
        return [self.results[h] for h in plan.hosts]

    def _fold(self, keys) -> bytes:
        keys = sorted(keys, key=self.plan.hosts.index)
        try:
            if any("@" in k or ":" in k for k in keys):
                raise NodeSetException("not node names")
            label = str(NodeSet.fromlist(keys, resolver=RESOLVER_NOGROUP))
        except NodeSetException:
            label = ",".join(keys)
        return f"{label} ({len(keys)})".encode()

    def _print_gathered(self, task):
        order = self.plan.hosts.index
        for stream, it in ((self.out, task.iter_buffers), (self.err, task.iter_errors)):
            groups = [(bytes(msg), list(keys)) for msg, keys in it()]
            groups.sort(key=lambda g: min(order(k) for k in g[1]))
            for msg, keys in groups:
                stream.write(SEP + b"\n" + self._fold(keys) + b"\n" + SEP + b"\n")
                stream.write(msg + b"\n")
            stream.flush()


def exit_status(results: list[HostResult]) -> int:
    """Number of failed hosts, at most 254 (255 means nothing was run)."""
    return min(254, sum(1 for r in results if not r.ok))
