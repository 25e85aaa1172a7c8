"""The demo's cluster (article configs, lvsdr, sync, heartbeat with the
director, nft engine) plus `halb exporter` on every node, for the exporter,
events and dashboard tests. Always torn down: daemons stopped, lab removed."""
from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from halb.demo import HALB, Demo
from halb.lab.netns import stop_popen

EXPORTER_PORT = 9643


def wait_for(pred, timeout, what, step=0.1):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = pred()
            if last:
                return last
        except Exception as e:  # noqa: BLE001 - keep polling, report the last problem
            last = e
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


class ObservedCluster(Demo):
    def __init__(self):
        super().__init__(fast=True)
        self.exporters = {}

    def up(self):
        from halb.lab import Lab

        self.base = Path(tempfile.mkdtemp(prefix="halb-obs-"))
        self.lab = Lab(nodes=2, clients=1, apache=True)
        self.lab.up()
        for node in ("N1", "N2"):
            self.write_configs(node)
            self.start_exporter(node)
        for node in ("N1", "N2"):
            self.start_node(node)
        wait_for(lambda: self.vip_holder() == ["N1"], 60, "N1 to take the VIP")
        wait_for(lambda: len(self.reals_in_table("N1")) == 2, 60, "the director to add N1 and N2")
        return self

    def start_exporter(self, node):
        log = open(self.base / node / "exporter.out", "a")
        self.exporters[node] = self.lab.popen(
            node, HALB + ["--engine", "nft", "exporter", "--listen", f"{self.lab.node(node).ip}:{EXPORTER_PORT}",
                          "--interval", "0.3"], stdout=log, stderr=log)

    def url(self, node, path):
        return f"http://{self.lab.node(node).ip}:{EXPORTER_PORT}{path}"

    def scrape(self, node) -> dict:
        """{(name, sorted labels): value} of one scrape of the node's exporter, from client0."""
        status, body = self.lab.http_get("client0", self.url(node, "/metrics"), timeout=10)
        assert status == 200, body
        out = {}
        for f in text_string_to_metric_families(body):
            for s in f.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out

    def get_json(self, node, path):
        import json

        status, body = self.lab.http_get("client0", self.url(node, path), timeout=10)
        assert status == 200, body
        return json.loads(body)

    def crash(self, node):
        """The demo's crash: frozen, cable cut, killed (the exporter with it)."""
        self.procs.pop(node, None)
        self.exporters.pop(node, None)
        self.lab.freeze(node)
        self.lab.cut_link(node)
        self.lab.kill_node(node)

    def down(self):
        for p in self.exporters.values():
            stop_popen(p, 10)
        for node in list(self.procs):
            self.stop_node(node)
        self.lab.down()
        shutil.rmtree(self.base, ignore_errors=True)


def series(scrape: dict, name: str, **labels) -> dict:
    """The samples of `name` whose labels include `labels`."""
    return {k: v for k, v in scrape.items()
            if k[0] == name and all(dict(k[1]).get(a) == b for a, b in labels.items())}


def value(scrape: dict, name: str, **labels):
    got = series(scrape, name, **labels)
    assert len(got) == 1, f"{name} {labels}: {got}"
    return next(iter(got.values()))


__all__ = ["ObservedCluster", "series", "value", "wait_for", "sys"]
