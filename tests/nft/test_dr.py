"""The article's §4.2 session with the nft engine, in the namespace lab."""
from __future__ import annotations

import pytest

from nft_helpers import Director, get, vip_on, wait_for

pytestmark = [pytest.mark.root, pytest.mark.timeout(180)]


def _session(d: Director, lab):
    vip, rip1, rip2 = lab.vip, lab.node("N1").ip, lab.node("N2").ip
    d.ipvsadm("-A", "-t", f"{vip}:80", "-s", "rr")
    d.ipvsadm("-a", "-t", f"{vip}:80", "-r", f"{rip1}:80", "-g")
    d.ipvsadm("-a", "-t", f"{vip}:80", "-r", f"{rip2}:80", "-g")


def _alternates(seq):
    return all(a != b for a, b in zip(seq, seq[1:]))


def test_article_session_direct_return(director_lab):
    lab, d = director_lab
    # strict reverse-path filtering on the director changes nothing (the check
    # ignores marks: src_valid_mark=0)
    d.sh(f"sysctl -qw net.ipv4.conf.all.rp_filter=1 net.ipv4.conf.{lab.node('N1').iface}.rp_filter=1")
    before = d.snapshot()
    n2_before = d.snapshot("N2")
    lab.run("N2", ["python3", "-m", "halb", "realserver", "start", "--vip", lab.vip], check=True)
    _session(d, lab)
    url = f"http://{lab.vip}/testcluster.html"
    got = [get(lab, url) for _ in range(6)]
    assert set(got) == {"N1", "N2"} and _alternates(got), got
    # the listing shows what the kernel does: N1 Local, N2 Route, counters
    out = d.ipvsadm("-L", "-n").stdout
    lines = {ln.split()[1]: ln.split() for ln in out.splitlines() if ln.strip().startswith("->")
             and ln.split()[1][0].isdigit()}
    assert lines[f"{lab.node('N1').ip}:80"][2] == "Local", out
    assert lines[f"{lab.node('N2').ip}:80"][2] == "Route", out
    stats = d.ipvsadm("-L", "-n", "--stats").stdout
    conns = [int(ln.split()[2]) for ln in stats.splitlines() if ln.strip().startswith("->")
             and ln.split()[1][0].isdigit()]
    assert conns == [3, 3], stats
    conns_out = d.ipvsadm("-L", "-n", "-c").stdout
    assert conns_out.count(lab.client().ip) >= 6, conns_out
    # N2 answered the client directly, as the client itself: its Apache logged
    # the client's address (health-check page excluded: ask for / twice)
    for _ in range(2):
        assert get(lab, f"http://{lab.vip}/") is not None
    assert wait_for(lambda: lab.client().ip in lab.apache_log("N2").read_text(), timeout=10)
    # -C removes exactly what halb added
    d.ipvsadm("-C")
    assert d.snapshot() == before
    assert get(lab, url, timeout=1.0) == "N1"  # the VIP is N1's own again
    lab.run("N2", ["python3", "-m", "halb", "realserver", "stop"], check=True)
    assert d.snapshot("N2") == n2_before


def test_without_realserver_every_other_request_times_out(director_lab):
    lab, d = director_lab
    _session(d, lab)
    url = f"http://{lab.vip}/testcluster.html"
    got = [get(lab, url, timeout=1.0) for _ in range(4)]
    # N2 has no VIP on lo: it drops what the director sends it
    assert got.count(None) == 2 and got.count("N1") == 2 and _alternates(got), got


def test_cleanup_leaves_other_tables_and_rules(director_lab):
    lab, d = director_lab
    d.sh("nft add table inet mine; nft add chain inet mine c '{ type filter hook prerouting priority 0; }';"
         " nft add rule inet mine c counter; ip rule add fwmark 7 lookup 77 pref 500;"
         " ip route add default via " + lab.node("N2").ip + " table 77")
    before = d.snapshot()
    _session(d, lab)
    d.ipvsadm("-e", "-t", f"{lab.vip}:80", "-r", f"{lab.node('N2').ip}:80", "-g", "-w", "3")
    mid = d.snapshot()
    assert mid != before and "table inet halb" in mid["ruleset"] and "table inet mine" in mid["ruleset"]
    st = d.halb("nft", "status").stdout
    assert "services: 1" in st and "present" in st and "local rule moved: yes" in st, st
    d.halb("nft", "flush")
    st = d.halb("nft", "status").stdout
    assert "services: 0" in st and "absent" in st and "ip rule" not in st, st
    assert d.snapshot() == before
    # the engine forgot the table too
    assert d.ipvsadm("-L", "-n").stdout.count("->") <= 1
    # and -C on an already empty engine is harmless
    d.ipvsadm("-C")
    assert d.snapshot() == before


def test_no_privilege_is_a_clear_error(director_lab):
    lab, d = director_lab
    r = lab.run("N1", ["setpriv", "--inh-caps=-all", "--bounding-set=-net_admin", "--",
                       "python3", "-m", "halb", "--engine", "nft", "ipvsadm", "-L", "-n"])
    assert r.returncode != 0
    assert "CAP_NET_ADMIN" in r.stderr and "--engine proxy" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
