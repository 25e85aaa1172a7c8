"""The data plane heals itself while the director runs: `nft flush ruleset`
(a firewall reload) and `ip rule flush`-style removals are put back within a
second, logged; meanwhile `halb ipvsadm -L -n` shows the kernel's truth and
says it differs, and `halb nft status` exits 1."""
from __future__ import annotations

import sys
import time

import pytest

from halb.nft.heal import concerns_halb
from nft_helpers import get

pytestmark = []

LDIRECTORD_CF = """checktimeout=1
checkinterval=1
quiescent=no
virtual={vip}:80
\treal={rip1}:80 gate 1
\treal={rip2}:80 gate 1
\tservice=http
\trequest="testcluster.html"
\treceive="N"
\tscheduler=rr
"""


def test_monitor_events_that_concern_halb():
    assert concerns_halb({"delete": {"table": {"family": "inet", "name": "halb", "handle": 3}}})
    assert not concerns_halb({"delete": {"table": {"family": "ip", "name": "filter", "handle": 3}}})
    assert not concerns_halb({"add": {"table": {"family": "inet", "name": "halb", "handle": 3}}})
    assert not concerns_halb(["junk"])


@pytest.mark.root
@pytest.mark.timeout(120)
def test_flush_ruleset_is_restored_within_a_second(director_lab, tmp_path):
    lab, d = director_lab
    rip1, rip2 = lab.node("N1").ip, lab.node("N2").ip
    lab.run("N2", [sys.executable, "-m", "halb", "realserver", "start", "--vip", lab.vip], check=True)
    cfg = tmp_path / "ldirectord.cf"
    cfg.write_text(LDIRECTORD_CF.format(vip=lab.vip, rip1=rip1, rip2=rip2))
    d.halb("director", str(cfg), "start")
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if {get(lab, f"http://{lab.vip}/testcluster.html") for _ in range(4)} == {"N1", "N2"}:
                break
            time.sleep(0.2)
        else:
            raise AssertionError("the director never served both N1 and N2")
        assert d.halb("nft", "status").returncode == 0
        for attempt in range(3):
            # a firewall reload, then a routing rule removed as well
            d.sh("nft flush ruleset; ip rule del pref 100")
            t0 = time.monotonic()
            ok = None
            while time.monotonic() - t0 < 1.0:
                st = d.halb("nft", "status", check=False)
                if st.returncode == 0:
                    ok = time.monotonic() - t0
                    break
            assert ok is not None, f"not restored within 1 s: {st.stdout}{st.stderr}"
            answers = {get(lab, f"http://{lab.vip}/testcluster.html") for _ in range(4)}
            assert answers == {"N1", "N2"}, answers
        # what a sysadmin sees while it is gone: the kernel's truth, a warning, status 1
        r = d.sh("nft flush ruleset; "
                 f"{sys.executable} -m halb --engine nft ipvsadm -L -n; "
                 f"{sys.executable} -m halb --engine nft nft status; echo status-rc=$?")
        text = "\n".join(p.read_text() for p in lab.node_run_dir("N1").glob("director*.log"))
        assert "Restored nftables table inet halb" in text, text[-2000:]
        # a listing taken in the gap either shows the service (already healed) or
        # says the kernel has no table
        if "status-rc=1" in r.stdout:
            assert "not in force" in r.stderr and "MISSING" in r.stdout
        time.sleep(1.0)
        assert d.halb("nft", "status").returncode == 0
        out = d.halb("ipvsadm", "-L", "-n")
        assert f"{rip2}:80" in out.stdout and out.stderr == ""
    finally:
        d.halb("director", str(cfg), "stop", check=False)
        lab.run("N2", [sys.executable, "-m", "halb", "realserver", "stop"])
