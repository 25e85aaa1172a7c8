"""`halb realserver` inside a lab node: ARP sysctls, hidden VIP, order,
exact revert, idempotence, haresources, clear errors. (The DR path itself
is tested by the nft engine's tests.)"""
from __future__ import annotations

import json
import sys

import pytest

pytestmark = pytest.mark.root

HALB = [sys.executable, "-m", "halb"]


def rs(lab, node, *args, env=None):
    return lab.run(node, HALB + ["realserver", *args], timeout=60, env=env)


def snapshot(lab, node):
    """Every ARP sysctl of the node and the addresses of lo."""
    r = lab.run(node, ["sh", "-c", "grep -H . /proc/sys/net/ipv4/conf/*/arp_ignore "
                                   "/proc/sys/net/ipv4/conf/*/arp_announce"], check=True)
    lo = json.loads(lab.run(node, ["ip", "-j", "addr", "show", "dev", "lo"], check=True).stdout)
    return r.stdout, [(a["local"], a["prefixlen"]) for a in lo[0]["addr_info"]]


def sysctl(lab, node, iface, key):
    return lab.run(node, ["cat", f"/proc/sys/net/ipv4/conf/{iface}/{key}"], check=True).stdout.strip()


def arp_answers(lab, ip) -> bool:
    c = lab.client(0)
    r = lab.run(c.name, ["arping", "-c", "2", "-C", "1", "-i", c.iface, ip], timeout=20)
    return r.returncode == 0


@pytest.mark.timeout(120)
def test_start_status_stop_in_a_node(lab):
    n2, vip = lab.node("N2"), lab.vip
    before = snapshot(lab, "N2")
    assert rs(lab, "N2", "status").returncode == 3

    r = rs(lab, "N2", "start", "--vip", vip)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    # arp_ignore and arp_announce on the LAN interface BEFORE the VIP on lo
    assert lines == [f"realserver: {n2.iface}: arp_ignore 0 -> 1",
                     f"realserver: {n2.iface}: arp_announce 0 -> 2",
                     f"realserver: lo: add {vip}/32"]
    assert (sysctl(lab, "N2", n2.iface, "arp_ignore"), sysctl(lab, "N2", n2.iface, "arp_announce")) == ("1", "2")
    assert sysctl(lab, "N2", "all", "arp_ignore") == "0"       # only the LAN interface is touched
    lo = json.loads(lab.run("N2", ["ip", "-j", "addr", "show", "dev", "lo"], check=True).stdout)[0]["addr_info"]
    assert {"local": vip, "prefixlen": 32} in [{"local": a["local"], "prefixlen": a["prefixlen"]} for a in lo]
    # the node accepts the VIP but never answers ARP for it
    assert not arp_answers(lab, vip)
    assert arp_answers(lab, n2.ip)

    st = rs(lab, "N2", "status")
    assert st.returncode == 0 and "realserver is running" in st.stdout and f"{vip}/32 present" in st.stdout
    js = json.loads(rs(lab, "N2", "status", "--json").stdout)
    assert js["state"] == "running" and js["vips"][0]["iface"] == n2.iface

    # idempotent: a second start changes nothing
    mid = snapshot(lab, "N2")
    r = rs(lab, "N2", "start", "--vip", vip)
    assert r.returncode == 0 and "nothing to change" in r.stdout
    assert snapshot(lab, "N2") == mid

    # degraded when the VIP disappears behind its back
    lab.run("N2", ["ip", "addr", "del", f"{vip}/32", "dev", "lo"], check=True)
    st = rs(lab, "N2", "status")
    assert st.returncode == 1 and "MISSING" in st.stdout
    lab.run("N2", ["ip", "addr", "add", f"{vip}/32", "dev", "lo"], check=True)

    r = rs(lab, "N2", "restart", "--vip", vip)
    assert r.returncode == 0 and r.stdout.splitlines()[-1] == f"realserver: lo: add {vip}/32"
    assert snapshot(lab, "N2") == mid

    r = rs(lab, "N2", "stop")
    assert r.returncode == 0
    assert r.stdout.splitlines()[0] == f"realserver: lo: del {vip}/32"   # VIP first, then ARP
    assert snapshot(lab, "N2") == before
    assert arp_answers(lab, n2.ip)
    r = rs(lab, "N2", "stop")
    assert r.returncode == 0 and "nothing to revert" in r.stdout
    assert rs(lab, "N2", "status").returncode == 3


def test_naive_setup_answers_arp(lab):
    """Why lvsdr exists: the VIP on lo without the sysctls answers ARP."""
    lab.run("N2", ["ip", "addr", "add", f"{lab.vip}/32", "dev", "lo"], check=True)
    assert arp_answers(lab, lab.vip)


def test_revert_is_exact_with_prior_settings(lab):
    n1, vip = lab.node("N1"), lab.vip
    other = lab.addr(11)
    # someone already set arp_ignore=1 and put another address on lo
    lab.run("N1", ["sh", "-c", f"echo 1 > /proc/sys/net/ipv4/conf/{n1.iface}/arp_ignore"], check=True)
    lab.run("N1", ["ip", "addr", "add", f"{other}/32", "dev", "lo"], check=True)
    before = snapshot(lab, "N1")
    r = rs(lab, "N1", "start", "--vip", vip, "--vip", other, "--interface", n1.iface)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [f"realserver: lo: {other}/32 already present (left alone by stop)",
                                     f"realserver: {n1.iface}: arp_announce 0 -> 2",
                                     f"realserver: lo: add {vip}/32"]
    assert rs(lab, "N1", "stop").returncode == 0
    assert snapshot(lab, "N1") == before       # arp_ignore stays 1, the other address stays


def test_haresources_file(lab, tmp_path):
    n2 = lab.node("N2")
    vip2 = lab.addr(20)
    hr = tmp_path / "haresources"
    hr.write_text("# the article's line, then a second group\n"
                  "N1 IPAddr2::$VIP ldirectord\n"
                  f"N2 IPaddr2::{vip2}/24/{n2.iface}\n")
    env = lab.node_env("N2")
    env["VIP"] = lab.vip
    r = rs(lab, "N2", "start", "--haresources", str(hr), env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-2:] == [f"realserver: lo: add {lab.vip}/32", f"realserver: lo: add {vip2}/32"]
    js = json.loads(rs(lab, "N2", "status", "--json").stdout)
    assert sorted(v["vip"] for v in js["vips"]) == sorted([lab.vip, vip2])
    assert rs(lab, "N2", "stop").returncode == 0
    # bad lines: file and line named, nothing applied
    hr.write_text("N1 IPAddr2::$VIP ldirectord\nN2 IPaddr2::10.0.0.999\n")
    before = snapshot(lab, "N2")
    r = rs(lab, "N2", "start", "--haresources", str(hr), env=env)
    assert r.returncode == 1 and r.stderr == f"halb: {hr}:2: bad VIP in IPaddr2::10.0.0.999: '10.0.0.999' is not an IPv4 address\n"
    assert snapshot(lab, "N2") == before


def test_errors_apply_nothing(lab):
    before = snapshot(lab, "N2")
    cases = [
        (["start", "--vip", lab.vip, "--vip", "1.2.3"], "halb: bad VIP: '1.2.3' is not an IPv4 address"),
        (["start", "--vip", "192.0.2.50"], "halb: no route to VIP 192.0.2.50"),
        (["start", "--vip", lab.vip, "--interface", "eth9"], "halb: interface eth9 does not exist"),
        (["start", "--haresources", "/nonexistent/haresources"], "halb: /nonexistent/haresources: no such file"),
        (["start"], "halb: realserver: no VIP given"),
        (["bogus"], "halb: realserver: argument start|stop|status|restart: invalid choice"),
    ]
    for args, msg in cases:
        r = rs(lab, "N2", *args)
        assert r.returncode != 0 and r.stderr.startswith(msg) and r.stderr.count("\n") == 1, (args, r.stderr)
    assert snapshot(lab, "N2") == before
    # one state file per network namespace: sharing a run dir is refused
    shared = str(lab.dir / "shared-run")
    assert rs(lab, "N1", "start", "--vip", lab.vip, env=lab.node_env("N1", {"HALB_RUN_DIR": shared})).returncode == 0
    r = rs(lab, "N2", "start", "--vip", lab.vip, env=lab.node_env("N2", {"HALB_RUN_DIR": shared}))
    assert r.returncode == 1 and "belongs to another network namespace" in r.stderr
    assert snapshot(lab, "N2") == before


def test_node_holding_the_vip_keeps_it_off_lo(lab):
    """On the director (IPaddr2 put the VIP on its LAN interface) lvsdr sets
    the ARP sysctls but does not hide a second copy of the VIP on lo."""
    n1, vip = lab.node("N1"), lab.vip
    lab.run("N1", ["ip", "addr", "add", f"{vip}/{lab.prefixlen}", "dev", n1.iface], check=True)
    r = rs(lab, "N1", "start", "--vip", vip)
    assert r.returncode == 0, r.stderr
    assert f"realserver: {vip} is up on {n1.iface} (this node holds the VIP): not hidden on lo" in r.stdout
    assert f"lo: add" not in r.stdout
    st = rs(lab, "N1", "status")
    assert st.returncode == 0 and f"held on {n1.iface}" in st.stdout
    assert rs(lab, "N1", "stop").returncode == 0
    # stop leaves the director's VIP where it is
    assert vip in lab.run("N1", ["ip", "-4", "addr", "show", "dev", n1.iface], check=True).stdout
