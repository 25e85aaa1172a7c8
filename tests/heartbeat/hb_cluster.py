"""Test helper: run halb heartbeat daemons on lab nodes with per-node HA_DIRs."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from halb.heartbeat.daemon import request
from halb.lab.netns import stop_popen
from halb.lab import article

def wait_for(pred, timeout=20.0, step=0.05, what="condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = pred()
            if last and not isinstance(last, Exception):
                return last
        except Exception as e:  # keep polling; report the last problem
            last = e
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


class Cluster:
    def __init__(self, lab, base: Path, *, haresources=None, keepalive="50ms", deadtime="300ms",
                 warntime="200ms", initdead="600ms", auto_failback="off", extra="", auth='auth 1\n1 md5 "secret"\n',
                 serial=None):
        self.lab = lab
        self.base = Path(base)
        self.procs = {}
        self.haresources = haresources if haresources is not None else f"N1 IPAddr2::{lab.vip}\n"
        self.opts = dict(keepalive=keepalive, deadtime=deadtime, warntime=warntime, initdead=initdead,
                         auto_failback=auto_failback, extra=extra)
        self.auth = auth
        self.serial = dict(serial or {})      # node -> serial device (the article's null-modem cable)
        for n in ("N1", "N2"):
            self.write(n)

    def dir(self, node):
        return self.base / node / "ha.d"

    def run_dir(self, node):
        return self.base / node / "run"

    def logfile(self, node):
        return self.base / node / "ha.log"

    def write(self, node, **override):
        d = self.dir(node)
        d.mkdir(parents=True, exist_ok=True)
        opts = dict(self.opts, **override)
        extra = opts.pop("extra")
        iface = self.lab.node(node).iface
        (d / "ha.cf").write_text(article.ha_cf(iface, self.logfile(node), serial=self.serial.get(node),
                                               head="# the article's ha.cf, with timers fast enough for tests\n",
                                               tail=extra.replace("{iface}", iface) + "\n", **opts))
        (d / "authkeys").write_text(self.auth)
        (d / "authkeys").chmod(0o600)
        (d / "haresources").write_text(self.haresources)

    def start(self, node, env=None, wait=True):
        """`env`: more environment for the daemon (e.g. libfaketime's); `wait`: for its control socket."""
        out = open(self.base / node / "stderr.log", "a")
        argv = [sys.executable, "-m", "halb", "--node", node, "--run-dir", str(self.run_dir(node)),
                "heartbeat", "-c", str(self.dir(node)), "run"]
        self.procs[node] = self.lab.popen(node, argv, stdout=out, stderr=subprocess.STDOUT,
                                          env=dict(os.environ, HALB_DEBUG="1", **(env or {})))
        if wait:
            wait_for(lambda: self.status(node), 20, what=f"{node}'s control socket")

    def stop(self, node, timeout=20):
        p = self.procs.pop(node, None)
        if p is None:
            return
        if not stop_popen(p, timeout):
            raise AssertionError(f"{node}: heartbeat did not stop in {timeout}s")

    def status(self, node):
        return request(self.run_dir(node), "status", timeout=3)

    def cmd(self, node, cmd):
        return request(self.run_dir(node), cmd, timeout=3)

    def log(self, node) -> str:
        try:
            return self.logfile(node).read_text()
        except FileNotFoundError:
            return ""

    def vip_on(self, node, dev=None) -> bool:
        return article.vip_on(self.lab, node, dev)

    def holders(self):
        return article.vip_holders(self.lab)

    def close(self):
        for n in list(self.procs):
            try:
                self.stop(n)
            except AssertionError:
                pass
