"""Issue 11 in the namespace lab, the links and the fencing decisions: a node restarted
with its clock stepped back, a recorded stream replayed after a node died, startup during
a partition, the cut-off node, a junk flood, the article's serial link."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time

import pytest

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from hb_cluster import wait_for  # noqa: E402

pytestmark = [pytest.mark.root]

FAKETIME = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"
MCAST = ("225.0.0.7", 694)


def down_node(lab, node):
    """A crash: freeze, unplug, kill everything."""
    lab.freeze(node)
    lab.cut_link(node)
    lab.kill_node(node)


def mcast_socket(lab, client="client0"):
    """A socket in `client` that receives and sends on the article's heartbeat group."""
    cl = lab.client(int(client[len("client"):]))
    s = lab.socket(client, socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(MCAST)
    s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, socket.inet_aton(MCAST[0]) + socket.inet_aton(cl.ip))
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(cl.ip))
    return s


def record(s, src_ip, seconds):
    """Every datagram from `src_ip` for `seconds`: [(offset s, bytes)]."""
    out, t0 = [], time.monotonic()
    s.settimeout(0.1)
    while time.monotonic() - t0 < seconds:
        try:
            data, src = s.recvfrom(2048)
        except socket.timeout:
            continue
        if src[0] == src_ip:
            out.append((time.monotonic() - t0, data))
    return out


@pytest.mark.timeout(120)
@pytest.mark.skipif(not os.path.exists(FAKETIME), reason="needs libfaketime (apt-get install faketime)")
def test_restart_with_the_clock_stepped_back_is_still_a_member(cluster_factory):
    """Item 9: N1 restarted with its wall clock an hour behind: its generation still grows
    (hb_generation in its state dir), so N2 takes its beats and hands the VIP back."""
    c = cluster_factory(apache=False, auto_failback="on")
    c.start("N1")
    c.start("N2")
    wait_for(lambda: c.holders() == ["N1"], 15, what="N1 to hold the VIP")
    gen1 = c.status("N1")["generation"]
    c.stop("N1")
    wait_for(lambda: c.holders() == ["N2"], 10, what="N2 to take over")
    c.start("N1", env={"LD_PRELOAD": FAKETIME, "FAKETIME": "-3600", "FAKETIME_DONT_FAKE_MONOTONIC": "1",
                       "FAKETIME_NO_CACHE": "1"})
    wait_for(lambda: c.status("N2")["nodes"]["N1"]["status"] == "up", 10, what="N2 to see N1 up again")
    wait_for(lambda: c.holders() == ["N1"], 10, what="the VIP back on N1 (auto_failback on)")
    assert c.status("N2")["counters"].get("old_generation", 0) == 0
    gen2 = c.status("N1")["generation"]
    assert gen2 == gen1 + 1 and gen1 > time.time_ns() - 3600 * 10**9    # not the wall clock, an hour behind
    assert (c.run_dir("N1") / "hb_generation").read_text().strip() == str(gen2)


@pytest.mark.timeout(120)
def test_replayed_stream_of_a_dead_node_does_not_bring_it_back(cluster_factory):
    """Item 9: N1's signed beats recorded off the wire, N1 dies, N2 restarts; the recording
    replayed at N2 (as N1 sent it, held group and all) is not a live N1: N2 takes the VIP."""
    c = cluster_factory(apache=False)
    lab = c.lab
    c.start("N1")
    c.start("N2")
    wait_for(lambda: c.holders() == ["N1"], 15, what="N1 to hold the VIP")
    s = mcast_socket(lab)
    try:
        rec = record(s, lab.node("N1").ip, 8.0)
        assert len(rec) > 100
        down_node(lab, "N1")
        c.procs.pop("N1")
        wait_for(lambda: c.vip_on("N2"), 10, what="N2 to take the VIP")
        c.stop("N2")
        c.start("N2")

        def replay():
            t0 = time.monotonic()
            for off, data in rec:                 # at the pace it was sent
                d = off - (time.monotonic() - t0)
                if d > 0:
                    time.sleep(d)
                s.sendto(data, MCAST)
        th = threading.Thread(target=replay)
        th.start()
        try:
            # initdead (600 ms) after its start, N2 takes the VIP: the replay is no live N1
            wait_for(lambda: c.vip_on("N2"), 4, what="N2 to hold the VIP during the replay")
            assert th.is_alive()
            st = c.status("N2")
        finally:
            th.join()
    finally:
        s.close()
    assert st["nodes"]["N1"]["status"] == "dead"
    assert st["counters"].get("stale", 0) > 10
    assert "Status update for node N1" not in c.log("N2").split(" generation ")[-1]


def flood(lab, client, dest, rate, seconds, claim="N1"):
    """Junk at `rate` datagrams/s for `seconds` from `client` (bounded): shaped like `claim`'s
    beats (magic, header, name) with a wrong signature, and plain garbage. Returns the count sent."""
    import random
    import struct

    s = lab.socket(client, socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(lab.client(0).ip))
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
        s.setblocking(False)
        name = claim.encode()
        junk = []
        for i in range(64):
            body = b'{"held":[0],"claim":99}'
            head = struct.pack("!4sBBBBQQ", b"HALB", 1, 1, 1, 0, 2**62 + i, i) + bytes([len(name)]) + name
            junk.append(head + struct.pack("!H", len(body)) + body + random.randbytes(16))
            junk.append(random.randbytes(40 + i))
        sent, t0 = 0, time.monotonic()
        batch = max(1, rate // 200)
        while True:
            el = time.monotonic() - t0
            if el >= seconds:
                break
            due = int(el * rate)
            while sent < due:
                for _ in range(batch):
                    try:
                        s.sendto(junk[sent & 127], dest)
                    except (BlockingIOError, OSError):
                        pass
                    sent += 1
            time.sleep(0.002)
        return sent, time.monotonic() - t0
    finally:
        s.close()


@pytest.mark.timeout(120)
def test_junk_flood_is_no_death(cluster_factory):
    """Item 7: 50,000 junk datagrams/s for 10 s from a third namespace to the heartbeat
    group: no node declared dead, the VIP never moves, the junk is counted."""
    c = cluster_factory(apache=False)
    c.start("N1")
    c.start("N2")
    wait_for(lambda: c.holders() == ["N1"], 15, what="N1 to hold the VIP")
    time.sleep(0.5)
    out = {}
    th = threading.Thread(target=lambda: out.setdefault("r", flood(c.lab, "client0", MCAST, 50_000, 10.0)))
    th.start()
    holders = []
    while th.is_alive():
        holders.append(tuple(c.holders()))
        time.sleep(0.2)
    th.join()
    sent, took = out["r"]
    assert sent / took > 45_000, f"sent only {sent} datagrams in {took:.1f} s"
    time.sleep(0.5)
    s1, s2 = c.status("N1"), c.status("N2")
    assert s2["nodes"]["N1"]["deaths"] == 0 and s1["nodes"]["N2"]["deaths"] == 0, (s1["counters"], s2["counters"])

    assert set(holders) == {("N1",)}
    for st in (s1, s2):
        k = st["counters"]
        dropped = sum(k.get(r, 0) for r in ("foreign_source", "malformed", "bad_auth", "own", "truncated"))
        assert dropped > sent * 0.9, k
    assert "is dead" not in c.log("N2") and "is dead" not in c.log("N1")
