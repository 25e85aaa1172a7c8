"""Two halb heartbeat daemons in the namespace lab: failover of the VIP, gratuitous ARP,
auto_failback, partitions with and without fencing, ipfail, hostile packets, standby/takeover."""
from __future__ import annotations

import json
import socket
import struct
import subprocess
import sys
import time

import pytest

from halb.heartbeat.config import parse_authkeys
from halb.heartbeat.packet import Packet, encode

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from hb_cluster import Cluster, wait_for  # noqa: E402

pytestmark = [pytest.mark.root]
pytest_plugins = ["halb.lab.testing"]


def neigh_mac(lab, node, ip):
    r = lab.run(node, ["ip", "-j", "neigh", "show", ip])
    for e in json.loads(r.stdout or "[]"):
        if e.get("lladdr"):
            return e["lladdr"]
    return None


def down_node(lab, node):
    """A crash as the bench does it: freeze, unplug, kill everything."""
    lab.freeze(node)
    lab.cut_link(node)
    lab.kill_node(node)


def nft_drop_heartbeat(lab, node):
    """Partition: drop heartbeat UDP in and out of `node` (in its own namespace)."""
    script = ("table inet hbcut {\n chain i { type filter hook input priority 0; udp dport 694 drop; }\n"
              " chain o { type filter hook output priority 0; udp dport 694 drop; }\n}\n")
    lab.run(node, ["nft", "-f", "-"], input=script, check=True)


def nft_heal(lab, node):
    lab.run(node, ["nft", "delete", "table", "inet", "hbcut"], check=True)


@pytest.mark.timeout(120)
def test_failover_gratuitous_arp_and_no_failback(cluster_factory):
    c = cluster_factory()
    lab = c.lab
    c.start("N1")
    c.start("N2")
    wait_for(lambda: c.holders() == ["N1"], 15, what="N1 to hold the VIP")
    assert "Acquiring resource group" in c.log("N1") and "local resource transition completed." in c.log("N1")
    wait_for(lambda: "remote resource transition completed." in c.log("N2"), 10, what="N2 to log the remote transition")
    assert lab.http_get("client0", "http://VIP/testcluster.html")[1] == "N1\n"
    n1mac, n2mac = lab.node("N1").mac, lab.node("N2").mac
    assert neigh_mac(lab, "client0", lab.vip) == n1mac

    down_node(lab, "N1")
    c.procs.pop("N1", None)
    t0 = time.monotonic()
    wait_for(lambda: c.vip_on("N2"), 10, step=0.01, what="N2 to take the VIP")
    # the client's ARP cache follows at once (gratuitous ARP), not after its entry expires
    wait_for(lambda: neigh_mac(lab, "client0", lab.vip) == n2mac, 2, step=0.02, what="client ARP entry -> N2")
    assert time.monotonic() - t0 < 5
    assert lab.http_get("client0", "http://VIP/testcluster.html")[1] == "N2\n"
    log2 = c.log("N2")
    assert "node N1: is dead" in log2 and "split brain possible" in log2

    # N1 comes back (auto_failback off): N2 keeps the VIP, N1 drops its stale copy
    lab.restore_link("N1")
    lab.apache_start("N1")
    c.start("N1")
    wait_for(lambda: c.status("N1")["nodes"]["N2"]["status"] == "up", 10, what="N1 to see N2")
    time.sleep(1.0)   # several deadtimes: nothing may move
    assert c.holders() == ["N2"]
    assert "is running but this node holds no resources yet: stopping it" in c.log("N1")
    st = c.status("N2")
    assert st["groups"][0]["holders"] == ["N2"] and st["groups"][0]["state"] == "held"
    assert lab.http_get("client0", "http://VIP/testcluster.html")[1] == "N2\n"

    # standby / takeover, as hb_standby / hb_takeover, through the CLI
    r = subprocess.run([sys.executable, "-m", "halb", "--node", "N2", "--run-dir", str(c.run_dir("N2")),
                        "heartbeat", "standby"], capture_output=True, text=True, timeout=20)
    assert r.returncode == 0, r.stderr
    wait_for(lambda: c.holders() == ["N1"], 10, what="standby on N2 to move the VIP to N1")
    r = subprocess.run([sys.executable, "-m", "halb", "--node", "N2", "--run-dir", str(c.run_dir("N2")),
                        "heartbeat", "takeover"], capture_output=True, text=True, timeout=20)
    assert r.returncode == 0, r.stderr
    wait_for(lambda: c.holders() == ["N2"], 10, what="takeover on N2 to bring the VIP back")
    r = subprocess.run([sys.executable, "-m", "halb", "--node", "N2", "--run-dir", str(c.run_dir("N2")),
                        "heartbeat", "status"], capture_output=True, text=True, timeout=20)
    assert r.returncode == 0 and "node N1: up" in r.stdout and "held by N2" in r.stdout

    # clean shutdown releases the VIP and the peer takes it without waiting deadtime
    c.stop("N2")
    assert not c.vip_on("N2")
    wait_for(lambda: c.holders() == ["N1"], 10, what="N1 to take over after N2's shutdown")
    assert "Received shutdown notice from 'N2'." in c.log("N1")


@pytest.mark.timeout(120)
def test_returning_node_becomes_real_server_again(cluster_factory):
    """Article test 4: N1 returns as a Direct Return real server: VIP back on its hidden lo."""
    c = cluster_factory(apache=False)
    lab = c.lab
    for n in ("N1", "N2"):   # lvsdr on every node before heartbeat (§6.3.7)
        r = lab.run(n, [sys.executable, "-m", "halb", "--node", n, "--run-dir", str(c.base / n / "rs"),
                        "realserver", "start", "--haresources", str(c.dir(n) / "haresources")])
        assert r.returncode == 0, r.stderr + r.stdout
        assert c.vip_on(n, "lo")
    c.start("N1")
    c.start("N2")
    wait_for(lambda: c.holders() == ["N1"], 15, what="N1 to hold the VIP")
    assert not c.vip_on("N1", "lo") and c.vip_on("N2", "lo")
    c.stop("N1")   # heartbeat stopped on N1: N2 takes over at once
    assert c.vip_on("N1", "lo") and not c.vip_on("N1")
    wait_for(lambda: c.holders() == ["N2"], 10, what="N2 to hold the VIP")
    assert not c.vip_on("N2", "lo")
    c.start("N1")
    wait_for(lambda: c.status("N1")["settled"], 10, what="N1 settled")
    time.sleep(0.8)
    assert c.holders() == ["N2"] and c.vip_on("N1", "lo")


@pytest.mark.timeout(120)
def test_partition_without_fencing_is_split_brain_then_heals(cluster_factory):
    c = cluster_factory(apache=False, auto_failback="on")
    lab = c.lab
    c.start("N1")
    c.start("N2")
    wait_for(lambda: c.holders() == ["N1"], 15, what="N1 to hold the VIP")
    nft_drop_heartbeat(lab, "N1")
    wait_for(lambda: c.holders() == ["N1", "N2"], 10, what="both nodes to take the VIP")
    assert "split brain possible" in c.log("N2")
    nft_heal(lab, "N1")
    wait_for(lambda: c.holders() == ["N1"], 10, what="the partition to heal to one holder")


@pytest.mark.timeout(120)
def test_partition_with_lab_power_switch_leaves_one_holder(cluster_factory):
    c = cluster_factory(apache=False)
    lab = c.lab
    root = str(lab.dir.parent)
    c.opts["extra"] = f"stonith_host * labpower {lab.name} {root}\n"
    for n in ("N1", "N2"):
        c.write(n)
    c.start("N1")
    c.start("N2")
    wait_for(lambda: c.holders() == ["N1"], 15, what="N1 to hold the VIP")
    nft_drop_heartbeat(lab, "N1")
    wait_for(lambda: "STONITH: node N1 has been reset" in c.log("N2"), 15, what="N2 to fence N1")
    wait_for(lambda: c.vip_on("N2"), 10, what="N2 to hold the VIP")
    time.sleep(0.5)
    # N1 is powered off: no process left, cable out; only N2 answers for the VIP
    assert c.procs["N1"].poll() is not None
    assert lab.describe()["nodes"][0]["link"] == "cut"
    assert "split brain possible" not in c.log("N2").split("STONITH: resetting")[1]
    c.procs.pop("N1")


@pytest.mark.timeout(120)
def test_ipfail_node_that_loses_its_ping_node_gives_up(cluster_factory):
    c = cluster_factory(apache=False)
    lab = c.lab
    gw = lab.client(0).ip
    c.opts["extra"] = f"ping {gw}\ndeadping 400ms\n"
    for n in ("N1", "N2"):
        c.write(n)
    c.start("N1")
    c.start("N2")
    wait_for(lambda: c.holders() == ["N1"], 15, what="N1 to hold the VIP")
    wait_for(lambda: c.status("N1")["ping"] == {gw: "up"}, 10, what="N1 to reach its ping node")
    lab.run("N1", ["nft", "-f", "-"], check=True, input=(
        f"table ip pingcut {{\n chain o {{ type filter hook output priority 0; ip daddr {gw} icmp type echo-request drop; }}\n}}\n"))
    wait_for(lambda: c.holders() == ["N2"], 10, what="the VIP to move to N2")
    assert "ping node " + gw + ": is dead" in c.log("N1")
    assert c.status("N2")["nodes"]["N1"]["status"] == "up"   # a move, not a death


@pytest.mark.timeout(120)
def test_hostile_packets_are_dropped_and_counted(cluster_factory, tmp_path):
    c = cluster_factory(apache=False)
    lab = c.lab
    # also: respawn (as ipfail was started) restarts a helper that exits
    helper = tmp_path / "helper.sh"
    starts = tmp_path / "starts"
    helper.write_text(f"#!/bin/sh\necho started >> {starts}\nsleep 0.2\n")
    helper.chmod(0o755)
    c.opts["extra"] = f"respawn root {helper}\n"
    c.write("N1")
    c.start("N1")
    c.start("N2")
    wait_for(lambda: c.holders() == ["N1"], 15, what="N1 to hold the VIP")
    cl = lab.client(0)
    s = lab.socket("client0", socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("225.0.0.7", 694))
        mreq = socket.inet_aton("225.0.0.7") + socket.inet_aton(cl.ip)
        s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(cl.ip))
        s.settimeout(5)
        # capture a real beat of N1 and replay it
        while True:
            data, src = s.recvfrom(2048)
            if src[0] == lab.node("N1").ip:
                break
        dest = ("225.0.0.7", 694)
        time.sleep(0.2)
        s.sendto(data, dest)                                               # replayed
        forged = encode(Packet("N1", 2**62, 1, {"held": [], "claim": 99}),
                        parse_authkeys('auth 1\n1 md5 "guessed"\n'))
        s.sendto(forged, dest)                                             # bad signature
        s.sendto(data[:20], dest)                                          # truncated
        s.sendto(b"\x00" * 7 + b"garbage" * 10, dest)                      # malformed
        s.sendto(encode(Packet("N1", 2**62, 1, {"claim": 99}), parse_authkeys("auth 2\n2 crc\n")), dest)  # crc
        s.sendto(encode(Packet("N9", 1, 1, {}), parse_authkeys('auth 1\n1 md5 "secret"\n')), dest)  # stranger
    finally:
        s.close()

    def counted():
        k = c.status("N2")["counters"]
        # a beat claiming N1 from a source N1 never sent from (the client) is dropped before
        # its signature is checked: forged, replayed and crc-signed alike
        want = ("foreign_source", "truncated", "malformed", "unknown_node")
        return k if all(k.get(w, 0) >= 1 for w in want) else AssertionError(k)

    counters = wait_for(counted, 5, what="N2 to count every hostile packet")
    assert counters["rx"] > 0
    time.sleep(0.5)
    assert c.holders() == ["N1"] and c.status("N2")["claim"] == 0
    assert c.status("N2")["nodes"]["N1"]["deaths"] == 0
    wait_for(lambda: starts.exists() and len(starts.read_text().splitlines()) >= 2, 10, what="the helper respawned")
    assert "respawn: " in c.log("N1") and "restarting" in c.log("N1")


@pytest.mark.timeout(120)
def test_own_stall_is_not_a_peer_death(cluster_factory):
    """SIGSTOP our own daemon for 5 x deadtime: on waking it must not take the VIP from a live N1."""
    c = cluster_factory(apache=False)
    c.start("N1")
    c.start("N2")
    wait_for(lambda: c.holders() == ["N1"], 15, what="N1 to hold the VIP")
    import os
    import signal

    pid = c.status("N2")["pid"]
    os.kill(pid, signal.SIGSTOP)
    time.sleep(1.5)
    os.kill(pid, signal.SIGCONT)
    wait_for(lambda: c.status("N2")["stalls"] >= 1, 5, what="N2 to notice its own stall")
    time.sleep(0.6)
    assert c.holders() == ["N1"]
    assert c.status("N2")["nodes"]["N1"]["deaths"] == 0
    assert "not judging peers on that silence" in c.log("N2")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", ["bcast", "ucast"])
def test_bcast_and_ucast_links(make_lab, tmp_path, kind):
    lab = make_lab(nodes=2, clients=0, apache=False)
    c = Cluster(lab, tmp_path)
    try:
        for n, peer in (("N1", "N2"), ("N2", "N1")):
            link = (f"bcast {lab.node(n).iface}" if kind == "bcast"
                    else f"ucast {lab.node(n).iface} {lab.node(peer).ip}")
            c.write(n)
            hacf = c.dir(n) / "ha.cf"
            text = hacf.read_text().replace(f"mcast {lab.node(n).iface} 225.0.0.7 694 1 0", link)
            hacf.write_text("udpport 6994\n" + text)
        c.start("N1")
        c.start("N2")
        wait_for(lambda: c.holders() == ["N1"], 15, what="N1 to hold the VIP")
        st = c.status("N2")
        assert st["links"] == {f"N1:{lab.node('N2').iface}": "up"} and st["counters"]["rx"] > 0
        down_node(lab, "N1")
        c.procs.pop("N1")
        wait_for(lambda: c.vip_on("N2"), 10, what="N2 to take over")   # N1 is dead with its copy, cable out
        wait_for(lambda: c.status("N2")["links"] == {f"N1:{lab.node('N2').iface}": "dead"}, 5, what="link dead")
    finally:
        c.close()


@pytest.mark.timeout(120)
def test_takeover_survives_a_dead_agent_helper(cluster_factory):
    """The resource agents run in a helper process; if it dies, the takeover still happens."""
    import psutil

    c = cluster_factory(apache=False)
    lab = c.lab
    c.start("N1")
    c.start("N2")
    wait_for(lambda: c.holders() == ["N1"], 15, what="N1 to hold the VIP")
    def helpers_of(st):
        lanes = {ln.get("pid") for ln in st["lanes"]}
        return [p for p in psutil.Process(st["pid"]).children() if p.pid not in lanes]
    helpers = helpers_of(c.status("N2"))
    assert len(helpers) == 1
    helpers[0].kill()
    wait_for(lambda: not helpers[0].is_running() or helpers[0].status() in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD),
             5, what="the helper gone")
    down_node(lab, "N1")
    c.procs.pop("N1")
    wait_for(lambda: c.vip_on("N2"), 10, what="N2 to take over with a new helper")
    assert "the resource agent helper died" in c.log("N2")
    assert len(helpers_of(c.status("N2"))) == 1


def _log_time(line: str) -> float:
    """Seconds of a heartbeat log line's stamp (2026/11/29_22:22:56.575)."""
    stamp = line.split(": ", 1)[1].split(" ", 1)[0]
    t = time.mktime(time.strptime(stamp[:19], "%Y/%m/%d_%H:%M:%S"))
    return t + int(stamp[20:23]) / 1000


@pytest.mark.timeout(120)
def test_lean_daemon_memory_and_takeover_path(cluster_factory):
    """At 100 beats/s the whole daemon (its process, the agent helper and its beat
    lane) stays under 60 MB; after a crash the VIP is up and announced within milliseconds of the death
    being declared, and the log tells each step in that order."""
    import psutil

    c = cluster_factory(apache=False, keepalive="10ms", deadtime="50ms", warntime="30ms", initdead="1s")
    lab = c.lab
    c.start("N1")
    c.start("N2")
    wait_for(lambda: c.holders() == ["N1"], 15, what="N1 to hold the VIP")
    st = c.status("N2")
    assert "halb-heartbeat-beat" in st["threads"]
    tree = [psutil.Process(st["pid"])] + psutil.Process(st["pid"]).children(recursive=True)
    assert len(tree) == 3, tree                      # the daemon, its resource-agent helper, lane 1
    assert [ln["pid"] for ln in st["lanes"][1:]] == [p.pid for p in tree if p.pid in {ln.get("pid") for ln in st["lanes"]}]
    rss = sum(p.memory_info().rss for p in tree) / 2**20
    assert rss < 60, f"daemon + helper + lane RSS {rss:.1f} MB"
    time.sleep(0.5)
    st = c.status("N2")
    assert 0 < st["nodes"]["N1"]["max_interval"] < 0.05 and st["nodes"]["N1"]["deaths"] == 0

    down_node(lab, "N1")
    c.procs.pop("N1", None)
    wait_for(lambda: c.vip_on("N2"), 10, step=0.01, what="N2 to take the VIP")
    wait_for(lambda: "sent gratuitous ARP" in c.log("N2"), 5, what="N2's takeover logged")
    lines = c.log("N2").splitlines()
    steps = []
    for mark in ("node N1: is dead", "Acquiring resource group", f"{lab.vip}/", "sent gratuitous ARP",
                 "local resource transition completed."):
        i = next(i for i, ln in enumerate(lines) if mark in ln and (not steps or i >= steps[-1][0]))
        steps.append((i, _log_time(lines[i])))
    assert [s[0] for s in steps] == sorted(s[0] for s in steps)
    dead_to_garp = steps[3][1] - steps[0][1]
    assert dead_to_garp < 0.1, f"{dead_to_garp * 1000:.0f} ms from the death to the gratuitous ARP"
