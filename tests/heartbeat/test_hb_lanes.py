"""Beat lanes (lane.py): a node's beats also sent by a small process pinned to another
CPU, so that a stalled beat thread (a held vCPU, a paused daemon) is not a dead node,
while a daemon that stays hung is still declared dead once the lease runs out."""
from __future__ import annotations

import os
import signal
import sys
import time

import psutil
import pytest

from halb.heartbeat.config import parse_authkeys, parse_hacf
from halb.heartbeat.lane import lease_for, wanted
from halb.heartbeat.packet import BeatEncoder, ReplayGuard, decode, encode_body

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from hb_cluster import wait_for  # noqa: E402

pytest_plugins = ["halb.lab.testing"]
AUTH = parse_authkeys('auth 1\n1 md5 "secret"\n')


# ---------------------------------------------------------------- pure parts
def test_lane_is_signed_in_the_packet_and_sequences_are_per_lane():
    e0, e1 = BeatEncoder("N1", 7, AUTH), BeatEncoder("N1", 7, AUTH, lane=1)
    for e in (e0, e1):
        e.set_body(encode_body({"st": "up", "v": 1}))
    g = ReplayGuard()
    p1 = decode(e1.packet(1), AUTH)
    assert p1.lane == 1 and decode(e0.packet(1), AUTH).lane == 0
    # both lanes start at 1 and interleave: all accepted
    assert g.check("N1", 7, 1, 0) is None
    assert g.check("N1", 7, 1, 1) is None
    assert g.check("N1", 7, 2, 1) is None
    assert g.check("N1", 7, 2, 0) is None
    # a replay or an old packet is still refused, per lane
    assert g.check("N1", 7, 2, 1) == "replayed"
    assert g.check("N1", 7, 1, 0) == "reordered"
    assert g.check("N1", 6, 99, 1) == "old_generation"
    # a restart (newer generation) resets every lane of the node
    assert g.check("N1", 8, 1, 1) is None and g.check("N1", 8, 1, 0) is None
    # flipping the lane bits breaks the signature: a captured lane-0 beat cannot be replayed as lane 1
    data = bytearray(e0.packet(5))
    data[7] = 1
    with pytest.raises(Exception):
        decode(bytes(data), AUTH)


def test_how_many_lanes():
    assert wanted(None, True, 0.01, 2) == 2          # fast timers, realtime, 2 CPUs: a second lane
    assert wanted(None, True, 2.0, 2) == 1           # the article's 2 s keepalive: no need
    assert wanted(None, False, 0.01, 2) == 1         # realtime off: no pinned real-time senders
    assert wanted(None, True, 0.01, 1) == 1          # one CPU: nowhere to put it
    assert wanted(4, True, 0.01, 2) == 2 and wanted(1, True, 0.01, 8) == 1
    assert lease_for(0.02) == 0.1 and lease_for(0.3) == 0.3 and lease_for(10) == 2.0


def test_halb_beat_lanes_directive(tmp_path):
    base = "keepalive 10ms\ndeadtime 50ms\nmcast eth0 225.0.0.1 694 1 0\nnode N1\nnode N2\n"
    assert parse_hacf(base).beat_lanes is None
    assert parse_hacf(base + "halb_beat_lanes 1\n").beat_lanes == 1
    assert parse_hacf(base + "halb_beat_lanes auto\n").beat_lanes is None
    with pytest.raises(Exception, match=r"ha.cf:6.*halb_beat_lanes.*'9'"):
        parse_hacf(base + "halb_beat_lanes 9\n", path="ha.cf")


# ---------------------------------------------------------------- in the lab
def _pause(pid: int, seconds: float) -> None:
    os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(seconds)
    finally:
        os.kill(pid, signal.SIGCONT)


@pytest.mark.root
@pytest.mark.timeout(120)
def test_a_lane_covers_a_paused_daemon_until_its_lease_runs_out(cluster_factory):
    c = cluster_factory(apache=False, clients=0, keepalive="10ms", deadtime="50ms", warntime="30ms", initdead="1s")
    c.start("N1")
    c.start("N2")
    wait_for(lambda: c.holders() == ["N1"], 15, what="N1 to hold the VIP")
    st = c.status("N1")
    lanes = st["lanes"]
    assert [ln["lane"] for ln in lanes] == [0, 1] and lanes[0]["cpu"] != lanes[1]["cpu"]
    lane_pid = lanes[1]["pid"]
    child = psutil.Process(lane_pid)
    assert child.ppid() == st["pid"] and child.cpu_affinity() == [lanes[1]["cpu"]]
    assert os.sched_getscheduler(lane_pid) == os.SCHED_FIFO
    wait_for(lambda: c.status("N1")["lanes"][1]["tx"] > 20, 5, what="lane 1 to send beats")
    assert "beat lane 1 started on CPU" in c.log("N1")
    r = c.lab.run("N1", [sys.executable, "-m", "halb", "--node", "N1", "--run-dir", str(c.run_dir("N1")),
                         "heartbeat", "status"], timeout=20)
    assert r.returncode == 0 and f"beat lane 1: pid {lane_pid}, CPU {lanes[1]['cpu']}, running" in r.stdout, r

    # the daemon (every thread of it) paused for 80 ms > deadtime: lane 1 goes on, N1 is not dead
    _pause(st["pid"], 0.08)
    time.sleep(0.3)
    n1 = c.status("N2")["nodes"]["N1"]
    assert n1["deaths"] == 0 and n1["status"] == "up", n1
    assert c.holders() == ["N1"]

    # paused for 1 s: past the lease (100 ms) lane 1 holds its beats back, N2 declares N1 dead
    t0 = time.monotonic()
    _pause(st["pid"], 1.0)
    wait_for(lambda: c.status("N2")["nodes"]["N1"]["deaths"] >= 1, 5, what="N2 to declare N1 dead")
    assert "node N1: is dead" in c.log("N2")
    assert c.status("N1")["lanes"][1]["held_back"] > 0
    assert time.monotonic() - t0 < 3


@pytest.mark.root
@pytest.mark.timeout(120)
def test_without_lanes_the_same_pause_is_a_death(cluster_factory):
    """The control: halb_beat_lanes 1, the same 80 ms pause kills N1 in N2's eyes."""
    c = cluster_factory(apache=False, clients=0, keepalive="10ms", deadtime="50ms", warntime="30ms", initdead="1s",
                        extra="halb_beat_lanes 1")
    c.start("N1")
    c.start("N2")
    wait_for(lambda: c.holders() == ["N1"], 15, what="N1 to hold the VIP")
    st = c.status("N1")
    assert st["lanes"] == [] and len(psutil.Process(st["pid"]).children()) == 1   # the agent helper only
    _pause(st["pid"], 0.08)
    wait_for(lambda: c.status("N2")["nodes"]["N1"]["deaths"] >= 1, 5, what="N2 to declare N1 dead")


@pytest.mark.root
@pytest.mark.timeout(120)
def test_a_dead_lane_is_restarted_and_none_outlives_a_clean_stop(cluster_factory):
    """A lane killed is restarted by the daemon within a second or so. A clean stop: N2 takes over at once on the shutdown notice and N1 stays
    left (a late lane beat would bring it back), the lane process is gone."""
    c = cluster_factory(apache=False, clients=0, keepalive="10ms", deadtime="50ms", warntime="30ms", initdead="1s")
    c.start("N1")
    c.start("N2")
    wait_for(lambda: c.holders() == ["N1"], 15, what="N1 to hold the VIP")
    lane_pid = c.status("N1")["lanes"][1]["pid"]
    # a lane that dies is restarted (and said so), twice
    for _ in range(2):
        os.kill(lane_pid, signal.SIGKILL)
        wait_for(lambda: c.status("N1")["lanes"][1]["pid"] not in (None, lane_pid)
                 and c.status("N1")["lanes"][1]["alive"], 5, what="lane 1 restarted")
        assert f"beat lane 1 (pid {lane_pid}) exited with code -9: restarting it" in c.log("N1")
        lane_pid = c.status("N1")["lanes"][1]["pid"]
        tx = c.status("N1")["lanes"][1]["tx"]
        wait_for(lambda: c.status("N1")["lanes"][1]["tx"] > tx + 30, 5, what="the new lane to send")
    # the peer takes its beats (its sequence went on from the old lane's): it covers a pause again
    _pause(c.status("N1")["pid"], 0.08)
    time.sleep(0.3)
    assert c.status("N2")["nodes"]["N1"]["deaths"] == 0
    n2 = c.status("N2")["counters"]
    assert n2.get("reordered", 0) == 0 and n2.get("replayed", 0) == 0, n2
    c.stop("N1")
    wait_for(lambda: c.holders() == ["N2"], 10, what="N2 to take the VIP")
    time.sleep(0.3)
    n1 = c.status("N2")["nodes"]["N1"]
    assert n1["status"] != "up", n1
    assert not psutil.pid_exists(lane_pid) or psutil.Process(lane_pid).status() == psutil.STATUS_ZOMBIE


def test_a_lane_beat_with_the_previous_body_is_only_a_beat():
    """Lane 0 says the new body first, lane 1 still the old one a moment later: the
    receiver keeps the new body (no flip back), yet counts the old-body beat as life."""
    import socket

    from halb.heartbeat.beatloop import BeatLoop
    from halb.heartbeat.membership import Membership
    from halb.heartbeat.transport import Channel

    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.setblocking(False)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    mem = Membership("N2", ["N1", "N2"], keepalive=0.01, deadtime=0.05, initdead=1.0, now=0.0)
    counters = {"tx": 0, "tx_errors": 0, "rx": 0, "own": 0, "unknown_node": 0}
    loop = BeatLoop(me="N2", auth=AUTH, generation=1, channels=[Channel("lo", rx, [])], mem=mem, keepalive=0.01,
                    tick_interval=0.01, accept_crc=False, deliver=lambda items: None, counters=counters)
    try:
        e0, e1 = BeatEncoder("N1", 7, AUTH), BeatEncoder("N1", 7, AUTH, lane=1)
        old = encode_body({"st": "up", "held": [0], "claim": 0, "v": 1, "seen": {"N2": 1}})
        new = encode_body({"st": "up", "held": [], "claim": 0, "v": 2, "seen": {"N2": 1}})
        e0.set_body(old)
        e1.set_body(old)
        sent = [e0.packet(1), e1.packet(1)]
        e0.set_body(new)
        sent += [e0.packet(2), e1.packet(2)]        # lane 1 has not heard of the change yet
        e1.set_body(new)
        sent += [e1.packet(3)]
        for d in sent:
            tx.sendto(d, rx.getsockname())
        time.sleep(0.05)
        items: list = []
        now = time.monotonic()
        loop._drain(loop.channels[0], now, time.time() - now, now - 1, items)
        payloads = [(it[2]["held"], it[2]["v"]) for it in items if it[0] == "payload"]
        assert payloads == [([0], 1), ([], 2)]            # the old body never comes back
        assert counters["rx"] == 5 and counters["old_body"] == 1
        assert loop.last_payload["N1"]["v"] == 2
    finally:
        rx.close()
        tx.close()
        loop.stop()
