"""Fixtures: a real `halb proxy` daemon (started with the CLI, private run dir)
and real back ends (tests/proxy/backend.py processes) on loopback."""
from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from halb.context import Context

HERE = Path(__file__).parent


def free_port(host="127.0.0.1", kind=socket.SOCK_STREAM) -> int:
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, kind)
    s.bind((host, 0))
    port = s.getsockname()[1]
    s.close()
    return port


def halb(*args, ctx: Context | None = None, timeout=60):
    pre = ["--node", ctx.node, "--run-dir", str(ctx.run_dir), "--engine", "proxy"] if ctx else []
    return subprocess.run([sys.executable, "-m", "halb", *pre, *args], capture_output=True, text=True,
                          timeout=timeout)


def alive(pid: int) -> bool:
    try:
        import psutil

        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except Exception:
        return False


def read_to_end(s: socket.socket) -> bytes:
    """Everything the peer sends on s until it closes its side."""
    chunks = []
    while True:
        b = s.recv(1 << 16)
        if not b:
            return b"".join(chunks)
        chunks.append(b)


def wait_for(pred, timeout=15.0, interval=0.05, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)


class Proxy:
    def __init__(self, run_dir: Path, extra=()):
        self.ctx = Context(node=f"pt{random.randrange(1 << 30):x}", run_dir=run_dir, engine="proxy")
        self.extra = list(extra)
        self.pid = None
        self.engine = None

    def start(self):
        r = halb("proxy", "start", *self.extra, ctx=self.ctx)
        assert r.returncode == 0, r.stderr
        self.pid = int((self.ctx.run_dir / "proxy.pid").read_text())
        from halb.proxy.client import connect

        self.engine = connect(self.ctx)
        return self

    @contextlib.contextmanager
    def foreground(self, prefix=(), args=()):
        """`halb proxy run` started under `prefix` (a capability drop, a
        descriptor limit...), its output in proxy.log; yields (process, engine)
        once the control socket answers, kills the process if still running."""
        from halb.proxy.client import connect

        self.ctx.run_dir.mkdir(parents=True)
        with open(self.ctx.run_dir / "proxy.log", "wb") as log:
            proc = subprocess.Popen([*prefix, sys.executable, "-m", "halb", "--node", self.ctx.node,
                                     "--run-dir", str(self.ctx.run_dir), "proxy", "run", *args],
                                    stdout=log, stderr=log)
            try:
                yield proc, wait_for(lambda: (self.ctx.run_dir / "proxy.sock").exists() and connect(self.ctx),
                                     what="daemon")
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()

    def log(self) -> str:
        try:
            return (self.ctx.run_dir / "proxy.log").read_text()
        except OSError:
            return ""

    def cleanup(self):
        if self.engine is not None:
            self.engine.close()
        if self.pid and alive(self.pid):
            halb("proxy", "stop", ctx=self.ctx, timeout=30)
            if alive(self.pid):
                os.kill(self.pid, signal.SIGKILL)


@pytest.fixture
def proxy(tmp_path):
    p = Proxy(tmp_path / "run").start()
    try:
        yield p
    finally:
        p.cleanup()


class Backends:
    def __init__(self):
        self.procs = []

    def start(self, kind: str, name: str, host="127.0.0.1"):
        for _ in range(5):
            port = free_port(host, socket.SOCK_STREAM if kind in ("http", "echo") else socket.SOCK_DGRAM)
            p = subprocess.Popen([sys.executable, str(HERE / "backend.py"), kind, name, host, str(port)],
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            line = p.stdout.readline()
            if line.strip() == "ready":
                self.procs.append(p)
                return host, port
            p.kill()
            p.wait()
        raise RuntimeError("backend did not start")

    def stop(self):
        for p in self.procs:
            p.kill()
        for p in self.procs:
            p.wait()


@pytest.fixture(scope="module")
def web():
    """Two HTTP back ends, N1 and N2: {name: (host, port)}."""
    b = Backends()
    try:
        yield {"N1": b.start("http", "N1"), "N2": b.start("http", "N2")}
    finally:
        b.stop()


@pytest.fixture(scope="module")
def tcp_echo():
    """One TCP echo back end (backend.py echo): (host, port)."""
    b = Backends()
    try:
        yield b.start("echo", "E1")
    finally:
        b.stop()


@pytest.fixture(scope="module")
def udp_echo():
    b = Backends()
    try:
        yield {"U1": b.start("udp", "U1"), "U2": b.start("udp", "U2")}
    finally:
        b.stop()


@pytest.fixture
def vip():
    """A loopback VIP and a free port on it."""
    addr = f"127.0.{random.randrange(1, 250)}.{random.randrange(2, 250)}"
    return addr, free_port(addr)
