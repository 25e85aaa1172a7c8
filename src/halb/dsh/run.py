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
    """ExecWorker over dsh machine specs (which may be user@host, so they do
    not go through NodeSet), keeping the user's order."""

    SHELL_CLASS = _RshClient

    def __init__(self, plan: Plan, handler, timeout=None):
        DistantWorker.__init__(self, handler)
        self._close_count = 0
        self._has_timeout = False
        self._clients = []
        self.plan = plan
        self.nodes = list(plan.hosts)
        self.command = "<halb dsh>"
        self.source = self.dest = None
        for rank, host in enumerate(plan.hosts):
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
            for node in worker.iter_keys_timeout():
                res = self.r.results[node]
                res.timed_out = True
                res.ended = time.monotonic()


class _StdinPort(EventHandler):
    """Receives chunks of our stdin from the reader thread (dsh -i)."""

    def __init__(self, worker):
        self.worker = worker

    def ev_msg(self, port, msg):
        if msg is None:
            self.worker.set_write_eof()
        else:
            self.worker.write(msg)


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

    def run(self) -> list[HostResult]:
        plan = self.plan
        task = task_self()  # runs in this thread; unbound (kill=True) when done
        task.set_info("fanout", plan.fanout)
        task.set_default("stdout_msgtree", plan.gather)
        task.set_default("stderr_msgtree", plan.gather)
        worker = _RshWorker(plan, _Handler(self), timeout=plan.timeout)
        task.schedule(worker)
        if plan.dup_input:
            port = task.port(handler=_StdinPort(worker), autoclose=True)
            threading.Thread(target=_stdin_reader, args=(port, self.stdin_fd), daemon=True).start()
        else:
            if plan.script is not None:
                worker.write(plan.script)
            worker.set_write_eof()
        try:
            task.resume()
            if plan.gather:
                self._print_gathered(task, worker)
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

    def _print_gathered(self, task, worker):
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
