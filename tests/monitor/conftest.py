"""Processes for the monitor tests: gmonds and a gmetad on loopback, always
stopped at the end of the test (SIGTERM, then SIGKILL)."""
from __future__ import annotations

import pytest
from monitor_helpers import Procs, free_port, get_json, wait_for


@pytest.fixture
def procs(tmp_path):
    ps = Procs(tmp_path)
    try:
        yield ps
    finally:
        ps.stop_all()


@pytest.fixture
def cluster(procs, tmp_path):
    """Two gmonds (N1, N2) and a gmetad polling them every second: the article's
    gmetad.conf with loopback addresses. Returns (procs, base_url, ports)."""
    p1, p2, pw = free_port(), free_port(), free_port()
    procs.gmond("N1", p1)
    procs.gmond("N2", p2)
    conf = tmp_path / "gmetad.conf"
    conf.write_text(f'data_source "Mon Cluster" 1 127.0.0.1:{p1} 127.0.0.1:{p2}\n')
    procs.gmetad(conf, pw, tmp_path / "rrds")
    base = f"http://127.0.0.1:{pw}"

    def ready():
        st = get_json(base + "/api/state")["clusters"][0]
        if st["hosts_up"] != 2:
            return False
        for h in ("N1", "N2"):
            s = get_json(f"{base}/api/series?c=Mon%20Cluster&h={h}&m=load_one")
            if sum(1 for _, v in s["points"] if v is not None) < 2:
                return False
        return True

    wait_for(ready, 20, "both hosts up with data")
    return procs, base, {"N1": p1, "N2": p2, "web": pw, "conf": conf}
