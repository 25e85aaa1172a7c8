"""The heartbeat daemon as a sysadmin meets it in the namespace lab: a second start,
SIGHUP, resources lost behind its back (monitoring), a failed stop, a crashed daemon
(the watchdog), a hung agent, and status when nothing runs (issue 11)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from hb_cluster import wait_for  # noqa: E402

pytestmark = [pytest.mark.root]
pytest_plugins = ["halb.lab.testing"]


def halb_on(c, node, *args, timeout=20):
    return c.lab.run(node, [sys.executable, "-m", "halb", "--node", node, "--run-dir", str(c.run_dir(node)),
                            *args], timeout=timeout)


@pytest.mark.timeout(90)
def test_second_instance_leaves_the_running_one_and_its_vip(cluster_factory):
    c = cluster_factory(apache=False)
    c.start("N1")
    c.start("N2")
    wait_for(lambda: c.holders() == ["N1"], 15, what="N1 to hold the VIP")
    pid = c.status("N1")["pid"]
    r = halb_on(c, "N1", "heartbeat", "-c", str(c.dir("N1")), "run")
    assert r.returncode == 1, r.stderr
    assert f"heartbeat is already running on node N1 (pid {pid}" in r.stderr and "Traceback" not in r.stderr
    time.sleep(1.0)      # three deadtimes: nothing moves
    assert c.holders() == ["N1"] and c.status("N1")["pid"] == pid
    assert "is running but this node holds no resources yet" not in c.log("N1")
    assert halb_on(c, "N1", "heartbeat", "status").returncode == 0
