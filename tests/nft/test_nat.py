"""masq (NAT) through the kernel: N1 as the real servers' gateway, and the
same-subnet variant where the director must masquerade the client."""
from __future__ import annotations

import pytest

from nft_helpers import get, wait_for

pytestmark = [pytest.mark.root, pytest.mark.timeout(180)]


def _stats_line(out, rip):
    for ln in out.splitlines():
        f = ln.split()
        if len(f) > 1 and f[0] == "->" and f[1] == f"{rip}:80":
            return f
    raise AssertionError(out)


def test_masq_director_is_the_gateway(director_lab):
    lab, d = director_lab
    n1, n2, c = lab.node("N1"), lab.node("N2"), lab.client()
    # the client lives on another network (10.251.7.0/24) that N1 routes to,
    # and N2 reaches it through N1: the classic LVS-NAT topology
    far = "10.251.7.100"
    lab.run(c.name, ["ip", "addr", "add", f"{far}/24", "dev", c.iface], check=True)
    lab.run("N1", ["ip", "route", "add", "10.251.7.0/24", "via", c.ip], check=True)
    lab.run("N2", ["ip", "route", "add", "10.251.7.0/24", "via", n1.ip], check=True)
    d.ipvsadm("-A", "-t", f"{lab.vip}:80", "-s", "rr")
    d.ipvsadm("-a", "-t", f"{lab.vip}:80", "-r", f"{n2.ip}:80", "-m")
    bodies = []
    for _ in range(4):
        r = lab.run(c.name, ["curl", "-s", "-m", "3", "--interface", far,
                             f"http://{lab.vip}/testcluster.html"])
        bodies.append(r.stdout.strip())
    assert bodies == ["N2"] * 4, bodies
    # no SNAT here: N2 saw the real client address
    for _ in range(2):
        lab.run(c.name, ["curl", "-s", "-m", "3", "--interface", far, f"http://{lab.vip}/"])
    assert wait_for(lambda: far in lab.apache_log("N2").read_text(), timeout=10)
    out = d.ipvsadm("-L", "-n").stdout
    assert _stats_line(out, n2.ip)[2] == "Masq", out
    st = _stats_line(d.ipvsadm("-L", "-n", "--stats").stdout, n2.ip)
    conns, inpkts, outpkts = int(st[2]), int(st[3]), int(st[4])
    assert conns == 6 and inpkts >= 6 * 4 and outpkts >= 6 * 3, st
    # the connection table shows the NATed flows
    assert f"{far}:" in d.ipvsadm("-L", "-n", "-c").stdout


def test_masq_same_subnet_masquerades(director_lab):
    lab, d = director_lab
    n1, n2 = lab.node("N1"), lab.node("N2")
    d.ipvsadm("-A", "-t", f"{lab.vip}:80", "-s", "rr")
    d.ipvsadm("-a", "-t", f"{lab.vip}:80", "-r", f"{n2.ip}:80", "-m")
    got = [get(lab, f"http://{lab.vip}/testcluster.html") for _ in range(3)]
    assert got == ["N2"] * 3, got
    # N2 replies go back through N1 because N1 masqueraded the client
    assert get(lab, f"http://{lab.vip}/") is not None
    assert wait_for(lambda: n1.ip in lab.apache_log("N2").read_text(), timeout=10)
    assert lab.client().ip not in lab.apache_log("N2").read_text()


def test_mixed_local_gate_masq_and_ipip_refused(director_lab):
    lab, d = director_lab
    n1, n2 = lab.node("N1"), lab.node("N2")
    d.ipvsadm("-A", "-t", f"{lab.vip}:80", "-s", "rr")
    r = d.ipvsadm("-a", "-t", f"{lab.vip}:80", "-r", f"{n2.ip}:80", "-i", check=False)
    assert r.returncode != 0 and "ipip" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    d.ipvsadm("-a", "-t", f"{lab.vip}:80", "-r", f"{n1.ip}:80", "-m")
    d.ipvsadm("-a", "-t", f"{lab.vip}:80", "-r", f"{n2.ip}:80", "-m")
    got = {get(lab, f"http://{lab.vip}/testcluster.html") for _ in range(4)}
    assert got == {"N1", "N2"}
    # switch N2 to Direct Return on the fly (realserver set up first)
    lab.run("N2", ["python3", "-m", "halb", "realserver", "start", "--vip", lab.vip], check=True)
    d.ipvsadm("-e", "-t", f"{lab.vip}:80", "-r", f"{n2.ip}:80", "-g")
    got = [get(lab, f"http://{lab.vip}/testcluster.html") for _ in range(4)]
    assert set(got) == {"N1", "N2"}, got
    out = d.ipvsadm("-L", "-n").stdout
    assert _stats_line(out, n2.ip)[2] == "Route" and _stats_line(out, n1.ip)[2] == "Local", out
    lab.run("N2", ["python3", "-m", "halb", "realserver", "stop"], check=True)
