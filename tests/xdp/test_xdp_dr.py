"""The article's §4.2 session on the xdp engine, in the namespace lab:
Direct Return balanced in N1's driver (XDP_TX), N1 Local, N2 Route."""
from __future__ import annotations

import re
import sys

import pytest

from halb.lab.article import ldirectord_cf
from xdp_helpers import UDP_SERVER, get, udp_ask, wait_for

pytestmark = [pytest.mark.root, pytest.mark.timeout(180)]


def _session(d, lab, proto="-t", port=80, sched="rr"):
    vip, rip1, rip2 = lab.vip, lab.node("N1").ip, lab.node("N2").ip
    d.ipvsadm("-A", proto, f"{vip}:{port}", "-s", sched)
    d.ipvsadm("-a", proto, f"{vip}:{port}", "-r", f"{rip1}:{port}", "-g")
    d.ipvsadm("-a", proto, f"{vip}:{port}", "-r", f"{rip2}:{port}", "-g")


def _alternates(seq):
    return all(a != b for a, b in zip(seq, seq[1:]))


def _dest_lines(out):
    return {ln.split()[1]: ln.split() for ln in out.splitlines()
            if ln.strip().startswith("->") and ln.split()[1][0].isdigit()}


def test_article_session_on_xdp(dr_lab):
    lab, d = dr_lab
    before = d.snapshot()
    _session(d, lab)
    assert d.xdp_progs() == ["halb_xdp"]  # attached to N1's LAN interface
    url = f"http://{lab.vip}/testcluster.html"
    got = [get(lab, url) for _ in range(6)]
    assert set(got) == {"N1", "N2"} and _alternates(got), got
    # the nft engine's table is not involved: the driver did it
    assert "table inet halb" not in d.sh("nft list ruleset").stdout
    out = d.ipvsadm("-L", "-n").stdout
    lines = _dest_lines(out)
    assert lines[f"{lab.node('N1').ip}:80"][2] == "Local", out
    assert lines[f"{lab.node('N2').ip}:80"][2] == "Route", out
    # counters read from the per-CPU map: 3 connections each, packets and bytes in
    stats = d.ipvsadm("-L", "-n", "--stats").stdout
    rows = _dest_lines(stats)
    assert [int(r[2]) for r in rows.values()] == [3, 3], stats
    assert all(int(r[3]) >= 3 * 4 and int(r[5]) > 0 for r in rows.values()), stats
    conns = d.ipvsadm("-L", "-n", "-c").stdout
    assert conns.count(lab.client().ip) == 6 and "FIN_WAIT" in conns, conns
    # N2 answered the client directly: its Apache logged the client's address
    for _ in range(2):
        assert get(lab, f"http://{lab.vip}/") is not None
    assert wait_for(lambda: lab.client().ip in lab.apache_log("N2").read_text(), timeout=10)
    # rates: two readings a second apart around traffic
    d.ipvsadm("-L", "-n", "--rate")
    for _ in range(10):
        assert get(lab, url) is not None
    import time
    time.sleep(1.1)
    rate = d.ipvsadm("-L", "-n", "--rate").stdout
    svc = next(ln for ln in rate.splitlines() if ln.startswith("TCP"))
    assert int(svc.split()[2]) > 0 and int(svc.split()[3]) > 0, rate  # CPS, InPPS
    # -Z zeroes the counters
    d.ipvsadm("-Z")
    assert all(int(r[2]) == 0 for r in _dest_lines(d.ipvsadm("-L", "-n", "--stats").stdout).values())
    # -C leaves nothing attached and nothing else changed
    d.ipvsadm("-C")
    assert d.xdp_progs() == []
    assert d.snapshot() == before
    assert get(lab, url, timeout=1.0) == "N1"  # the VIP is N1's own again


def test_udp_direct_return_and_weight_zero(dr_lab):
    lab, d = dr_lab
    for n in ("N1", "N2"):
        lab.popen(n, [sys.executable, "-c", UDP_SERVER, lab.vip, "5353", n])
    _session(d, lab, "-u", 5353)
    got = wait_for(lambda: udp_ask(lab, 5353, sport=40001), timeout=5)
    assert got in ("N1", "N2")
    # a UDP flow is pinned: the same client port goes to the same server
    assert [udp_ask(lab, 5353, sport=40001) for _ in range(3)] == [got] * 3
    answers = [udp_ask(lab, 5353, sport=40010 + i) for i in range(4)]
    assert set(answers) == {"N1", "N2"} and _alternates(answers), answers
    conns = d.ipvsadm("-L", "-n", "-c").stdout
    assert conns.count("UDP ") >= 5 and "UDP " in conns, conns
    # weight 0: no new flows for N2; N2's established flow stays
    pinned_n2 = next(40010 + i for i, a in enumerate(answers) if a == "N2")
    d.ipvsadm("-e", "-u", f"{lab.vip}:5353", "-r", f"{lab.node('N2').ip}:5353", "-g", "-w", "0")
    assert [udp_ask(lab, 5353, sport=40100 + i) for i in range(3)] == ["N1"] * 3
    assert udp_ask(lab, 5353, sport=pinned_n2) == "N2"


def test_nat_service_goes_to_nft_with_one_line(dr_lab):
    lab, d = dr_lab
    _session(d, lab)
    assert d.xdp_progs() == ["halb_xdp"]
    vip = lab.vip
    r = d.halb("ipvsadm", "-A", "-t", f"{vip}:8080", "-s", "rr")
    assert r.stderr == ""
    r = d.halb("ipvsadm", "-a", "-t", f"{vip}:8080", "-r", f"{lab.node('N2').ip}:80", "-m")
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and "NAT" in err[0] and "nft engine" in err[0], r.stderr
    assert d.xdp_progs() == []
    assert "table inet halb" in d.sh("nft list ruleset").stdout
    out = d.ipvsadm("-L", "-n").stdout
    assert "Masq" in out and "Route" in out and "Local" in out, out
    got = [get(lab, f"http://{vip}/testcluster.html") for _ in range(4)]
    assert set(got) == {"N1", "N2"}, got
    # the NAT service gone: back on XDP, nft's table removed
    r = d.halb("ipvsadm", "-D", "-t", f"{vip}:8080")
    assert len(r.stderr.strip().splitlines()) == 1 and "XDP" in r.stderr, r.stderr
    assert d.xdp_progs() == ["halb_xdp"]
    assert "table inet halb" not in d.sh("nft list ruleset").stdout
    got = [get(lab, f"http://{vip}/testcluster.html") for _ in range(4)]
    assert set(got) == {"N1", "N2"}, got


def test_director_on_xdp_unloads_on_stop(dr_lab, tmp_path):
    lab, d = dr_lab
    cfg = tmp_path / "ldirectord.cf"
    cfg.write_text(ldirectord_cf(lab, "checktimeout=3\ncheckinterval=1\nquiescent=no\n"))
    d.halb("director", str(cfg), "start")
    try:
        def both():
            out = d.ipvsadm("-L", "-n").stdout
            return len(re.findall(r"->\s+\d+\.\d+\.\d+\.\d+:80\s+(Local|Route)\s+1", out)) == 2
        assert wait_for(both, timeout=20), d.ipvsadm("-L", "-n").stdout
        assert d.xdp_progs() == ["halb_xdp"]
        url = f"http://{lab.vip}/testcluster.html"
        assert {get(lab, url) for _ in range(4)} == {"N1", "N2"}
    finally:
        d.halb("director", str(cfg), "stop", check=False)
    assert d.xdp_progs() == []  # the director's services gone: the program is detached
    assert d.ipvsadm("-L", "-n").stdout.count("->") <= 1
