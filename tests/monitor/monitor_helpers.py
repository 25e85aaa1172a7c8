"""Helpers of the monitor tests: free ports, processes, HTTP."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Procs:
    def __init__(self, tmp_path):
        self.tmp = tmp_path
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, *args, node: str = "mgr") -> subprocess.Popen:
        log = open(self.tmp / f"{name}.log", "ab")
        env = dict(os.environ, HALB_NODE=node)
        p = subprocess.Popen([sys.executable, "-m", "halb", "--run-dir", str(self.tmp / f"run-{node}"),
                              "--engine", "proxy", *args], stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                             env=env, start_new_session=True)
        log.close()
        self.procs[name] = p
        return p

    def gmond(self, node: str, port: int, *extra) -> subprocess.Popen:
        return self.start(f"gmond-{node}", "gmond", "--bind", "127.0.0.1", "--port", str(port), "--interval", "1",
                          "--tmax", "1", *extra, node=node)

    def gmetad(self, conf, port: int, data_dir, name="gmetad") -> subprocess.Popen:
        return self.start(name, "gmetad", "-c", str(conf), "--listen", f"127.0.0.1:{port}",
                          "--data-dir", str(data_dir))

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text(errors="replace")

    def stop(self, name: str, timeout: float = 10) -> int:
        p = self.procs.pop(name)
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                return p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
                raise AssertionError(f"{name} did not stop on SIGTERM within {timeout} s")
        return p.returncode

    def stop_all(self):
        for name in list(self.procs):
            p = self.procs.pop(name)
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait(5)


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def get_json(url: str):
    status, body = http_get(url)
    assert status == 200, (url, status, body[:200])
    return json.loads(body)


def wait_for(pred, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = pred()
            if last:
                return last
        except (OSError, ValueError, AssertionError) as e:
            last = e
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")

