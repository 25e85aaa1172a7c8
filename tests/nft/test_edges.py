"""Refusals, rates, clean-up of removed servers, and the controller daemon."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest

from nft_helpers import get, wait_for

pytestmark = [pytest.mark.root, pytest.mark.timeout(180)]


def _one_line_error(r, *words):
    assert r.returncode != 0, r.stdout
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("halb: "), r.stderr
    for w in words:
        assert w in lines[0], lines[0]


def test_refusals_rates_and_removed_server_cleanup(director_lab):
    lab, d = director_lab
    vip, n1, n2 = lab.vip, lab.node("N1"), lab.node("N2")
    d.ipvsadm("-A", "-t", f"{vip}:80", "-s", "rr")
    snap = d.snapshot()
    # a real server on no connected network cannot be reached by Direct Return
    _one_line_error(d.ipvsadm("-a", "-t", f"{vip}:80", "-r", "10.99.99.99:80", "-g", check=False),
                    "10.99.99.99")
    # IPv6 is refused clearly; nothing was half-applied by either refusal
    _one_line_error(d.ipvsadm("-A", "-t", "[fd00::1]:80", "-s", "rr", check=False), "IPv6")
    assert d.snapshot() == snap
    assert "10.99.99.99" not in d.ipvsadm("-L", "-n").stdout
    # rates from two samples of the kernel counters
    d.ipvsadm("-a", "-t", f"{vip}:80", "-r", f"{n1.ip}:80", "-g")
    d.ipvsadm("-L", "-n", "--rate")
    for _ in range(10):
        assert get(lab, f"http://{vip}/testcluster.html") == "N1"
    time.sleep(1.2)
    out = d.ipvsadm("-L", "-n", "--rate").stdout
    svc = next(ln.split() for ln in out.splitlines() if ln.startswith("TCP"))
    assert int(svc[2]) > 0 and int(svc[3]) > 0, out  # CPS, InPPS
    # -Z zeroes the counters the listing shows (the kernel's keep counting)
    stats = d.ipvsadm("-L", "-n", "--stats").stdout
    assert int(next(ln.split() for ln in stats.splitlines() if ln.startswith("TCP"))[2]) >= 10, stats
    d.ipvsadm("-Z")
    stats = d.ipvsadm("-L", "-n", "--stats").stdout
    assert next(ln.split() for ln in stats.splitlines() if ln.startswith("TCP"))[2:4] == ["0", "0"], stats
    assert get(lab, f"http://{vip}/testcluster.html") == "N1"
    stats = d.ipvsadm("-L", "-n", "--stats").stdout
    assert next(ln.split() for ln in stats.splitlines() if ln.startswith("TCP"))[2] == "1", stats
    # --set: new timeouts, written into the kernel's flow updates
    d.ipvsadm("--set", "100", "50", "60")
    assert "100" in d.ipvsadm("-L", "--timeout").stdout
    ruleset = d.sh("nft list table inet halb").stdout
    assert "timeout 1m40s" in ruleset and "timeout 50s" in ruleset and "timeout 1m" in ruleset, ruleset
    # a removed server keeps its route while flows may use it; the GC drops it
    env = dict(os.environ, HALB_NFT_GC_DELAY="0")
    d.ipvsadm("-a", "-t", f"{vip}:80", "-r", f"{n2.ip}:80", "-g")
    assert "lookup 4242" in d.sh("ip rule").stdout
    d.halb("ipvsadm", "-d", "-t", f"{vip}:80", "-r", f"{n2.ip}:80", env=env)
    d.halb("nft", "refresh", env=env)
    assert "lookup 4242" not in d.sh("ip rule").stdout
    assert "0x4b" not in d.sh("nft list map inet halb rtm").stdout
    assert [get(lab, f"http://{vip}/testcluster.html") for _ in range(2)] == ["N1", "N1"]


def _s_chain_handles(d):
    out = d.sh("nft -a list chain inet halb s1").stdout
    return tuple(re.findall(r"# handle (\d+)", out))


def test_controller_keeps_wlc_exact(director_lab):
    lab, d = director_lab
    vip = lab.vip
    lab.run("N2", [sys.executable, "-m", "halb", "realserver", "start", "--vip", vip], check=True)
    d.ipvsadm("-A", "-t", f"{vip}:80", "-s", "wlc")
    d.ipvsadm("-a", "-t", f"{vip}:80", "-r", f"{lab.node('N1').ip}:80", "-g")
    d.ipvsadm("-a", "-t", f"{vip}:80", "-r", f"{lab.node('N2').ip}:80", "-g")
    held = []
    for _ in range(3):  # three long-lived connections: two on one server, one on the other
        s = lab.socket("client0")
        s.settimeout(5)
        s.connect((vip, 80))
        s.sendall(b"GET /testcluster.html HTTP/1.0\r\n")
        held.append(s)
    out = d.ipvsadm("-L", "-n").stdout
    actives = {ln.split()[1]: int(ln.split()[4]) for ln in out.splitlines()
               if ln.strip().startswith("->") and ln.split()[1][0].isdigit()}
    assert sorted(actives.values()) == [1, 2], out
    less = "N1" if actives[f"{lab.node('N1').ip}:80"] == 1 else "N2"
    ctl = lab.popen("N1", [sys.executable, "-m", "halb", "--engine", "nft", "nft", "controller",
                           "--interval", "0.2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        got = []
        for _ in range(4):
            h = _s_chain_handles(d)
            # two refreshes after the previous request closed
            assert wait_for(lambda: _s_chain_handles(d) != h, timeout=15)
            h = _s_chain_handles(d)
            assert wait_for(lambda: _s_chain_handles(d) != h, timeout=15)
            got.append(get(lab, f"http://{vip}/testcluster.html", timeout=3))
        # exact wlc: the server with fewer active connections takes every short one
        assert got == [less] * 4, (got, less)
    finally:
        ctl.send_signal(signal.SIGTERM)
        out, err = ctl.communicate(timeout=15)
        for s in held:
            s.close()
        lab.run("N2", [sys.executable, "-m", "halb", "realserver", "stop"])
    assert ctl.returncode == 0, err
    assert "stopped" in out


def test_host_namespace_is_protected(director_lab):
    """In the machine's own namespace the engine refuses to change anything
    (the suite sets HALB_NFT_HOST_GUARD=1; without HALB_NFT_HOST=1); inside a lab node it works. Only the check is
    called here in the root namespace: nothing is ever applied there."""
    from halb.nft.engine import in_initial_netns, check_namespace
    from halb.errors import EngineUnavailable
    lab, d = director_lab
    assert in_initial_netns()
    with pytest.raises(EngineUnavailable, match="HALB_NFT_HOST=1"):
        check_namespace()
    r = lab.run("N1", [sys.executable, "-c", "from halb.nft.engine import in_initial_netns as f; print(f())"])
    assert r.stdout.strip() == "False", r.stderr


def test_concurrent_cli_calls_are_serialised(director_lab):
    """Parallel `halb ipvsadm` calls share the state file under a lock: every
    edit lands, in the table and in the kernel."""
    lab, d = director_lab
    vip = lab.vip
    d.ipvsadm("-A", "-t", f"{vip}:80", "-s", "wrr")
    procs = [lab.popen("N1", [sys.executable, "-m", "halb", "--engine", "nft", "ipvsadm", "-a", "-t",
                              f"{vip}:80", "-r", lab.addr(20 + i), "-g", "-w", str(i + 1)],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for i in range(6)]
    for p in procs:
        p.wait(timeout=60)
        assert p.returncode == 0, p.stderr.read()
    out = d.ipvsadm("-L", "-n").stdout
    for i in range(6):
        assert f"{lab.addr(20 + i)}:80" in out, out
    rtm = d.sh("nft list map inet halb rtm").stdout
    assert rtm.count("0x4b") == 6, rtm
    # -S / -C / -R round trip through the kernel engine
    saved = d.ipvsadm("-S", "-n").stdout
    assert saved.count("-a -t") == 6, saved
    d.ipvsadm("-C")
    r = lab.run("N1", [sys.executable, "-m", "halb", "--engine", "nft", "ipvsadm", "-R"], input=saved)
    assert r.returncode == 0, r.stderr
    assert d.ipvsadm("-S", "-n").stdout == saved
    assert d.sh("nft list map inet halb rtm").stdout.count("0x4b") == 6


def test_table_removed_behind_halbs_back_is_rebuilt(director_lab):
    lab, d = director_lab
    vip = lab.vip
    lab.run("N2", [sys.executable, "-m", "halb", "realserver", "start", "--vip", vip], check=True)
    try:
        d.ipvsadm("-A", "-t", f"{vip}:80", "-s", "rr")
        d.ipvsadm("-a", "-t", f"{vip}:80", "-r", f"{lab.node('N1').ip}:80", "-g")
        d.ipvsadm("-a", "-t", f"{vip}:80", "-r", f"{lab.node('N2').ip}:80", "-g")
        d.sh("nft delete table inet halb")
        # the next change notices and rebuilds the whole table
        d.ipvsadm("-e", "-t", f"{vip}:80", "-r", f"{lab.node('N2').ip}:80", "-g", "-w", "2")
        got = [get(lab, f"http://{vip}/testcluster.html") for _ in range(4)]
        assert set(got) == {"N1", "N2"}, got
    finally:
        lab.run("N2", [sys.executable, "-m", "halb", "realserver", "stop"])
