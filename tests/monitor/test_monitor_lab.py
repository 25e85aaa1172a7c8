"""The article's monitoring on the lab: `halb gmond` on N1 and N2 (their own
names from uname -n, port 8649), `halb gmetad` on the client machine with the
article's data_source line (addresses instead of names: the lab has no DNS)."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from halb.lab.netns import stop_popen

pytestmark = [pytest.mark.root, pytest.mark.slow]


def test_gmond_on_two_lab_nodes(make_lab, tmp_path):
    lab = make_lab(nodes=2, clients=1, apache=False)
    n1, n2, cl = lab.node("N1"), lab.node("N2"), lab.client(0)
    conf = tmp_path / "gmetad.conf"
    conf.write_text(f'data_source "Mon Cluster" 1 {n1.ip} {n2.ip}\n')
    procs = {}
    try:
        for n in ("N1", "N2"):
            procs[n] = lab.popen(n, [sys.executable, "-m", "halb", "gmond", "--interval", "1", "--tmax", "1"],
                                 stdout=open(tmp_path / f"gmond-{n}.log", "wb"), stderr=subprocess.STDOUT)
        procs["gmetad"] = lab.popen(cl.name, [sys.executable, "-m", "halb", "gmetad", "-c", conf,
                                              "--listen", f"{cl.ip}:8080", "--data-dir", tmp_path / "rrds"],
                                    stdout=open(tmp_path / "gmetad.log", "wb"), stderr=subprocess.STDOUT)

        def state():
            status, body = lab.http_get(cl.name, f"http://{cl.ip}:8080/api/state", timeout=3)
            assert status == 200
            return json.loads(body)["clusters"][0]

        def wait(pred, timeout, what):
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                try:
                    if pred():
                        return
                except Exception:  # noqa: BLE001 - not up yet
                    pass
                time.sleep(0.3)
            raise AssertionError(f"{what}: {(tmp_path / 'gmetad.log').read_text()[-2000:]}")

        wait(lambda: {h["name"]: h["up"] for h in state()["hosts"]} == {"N1": True, "N2": True}, 25,
             "both lab nodes up")
        hosts = {h["name"]: h for h in state()["hosts"]}
        assert hosts["N1"]["ip"] == n1.ip and hosts["N2"]["ip"] == n2.ip

        def has_series(h):
            status, body = lab.http_get(cl.name, f"http://{cl.ip}:8080/api/series?c=Mon%20Cluster&h={h}&m=load_one")
            return status == 200 and any(v is not None for _, v in json.loads(body)["points"])

        wait(lambda: has_series("N1") and has_series("N2"), 10, "series of both nodes")
        procs["N2"].send_signal(signal.SIGTERM)
        assert procs["N2"].wait(10) == 0
        wait(lambda: {h["name"]: h["up"] for h in state()["hosts"]} == {"N1": True, "N2": False}, 15, "N2 down")
    finally:
        for p in procs.values():
            if p.poll() is None:
                stop_popen(p, 10)
    assert "gmetad shutdown complete" in (tmp_path / "gmetad.log").read_text()
