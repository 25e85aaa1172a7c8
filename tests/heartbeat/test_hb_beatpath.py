"""The lean beat path: beats packed once, HMAC from precomputed states, deadlines
the beat thread sleeps to, beats judged on their arrival time; the hand-written
rtnetlink socket IPaddr2 uses (real kernel, a throwaway namespace)."""
from __future__ import annotations

import hmac
import os
import subprocess
import sys
import uuid

import pytest
from hypothesis import given, settings, strategies as st

from halb.heartbeat.config import parse_authkeys
from halb.heartbeat.membership import Membership
from halb.heartbeat.packet import BeatEncoder, Packet, _mac, decode, encode, encode_body


@given(method=st.sampled_from(["md5", "sha1", "sha256"]), key=st.binary(max_size=150), data=st.binary(max_size=300))
@settings(max_examples=200, deadline=None)
def test_mac_is_the_standard_hmac(method, key, data):
    assert _mac(method, key, data) == hmac.new(key, data, method).digest()


@pytest.mark.parametrize("keys", ['auth 1\n1 md5 "secret"\n', "auth 2\n2 sha1 k\n", "auth 3\n3 sha256 " + "x" * 80 + "\n"])
def test_encoder_matches_encode_and_decodes(keys):
    auth = parse_authkeys(keys)
    e = BeatEncoder("N1", 12345, auth)
    for body in (encode_body({"st": "up", "held": [0], "claim": 0}), encode_body({"st": "shutdown"})):
        e.set_body(body)
        for seq in (1, 2, 2**40):
            data = e.packet(seq)
            assert data == encode(Packet("N1", 12345, seq), auth, body)
            p = decode(data, auth)
            assert (p.node, p.generation, p.seq, p.payload) == ("N1", 12345, seq, __import__("json").loads(body))


def test_next_deadline_is_when_a_silent_peer_dies():
    m = Membership("N1", ["N1", "N2"], keepalive=0.004, deadtime=0.02, initdead=1.0, tick_interval=0.004, now=0.0)
    assert m.next_deadline() == pytest.approx(1.0)         # initdead
    m.beat("N2", "eth0", 0.100)
    assert m.next_deadline() == pytest.approx(0.120)
    for i in range(1, 30):
        assert m.tick(0.004 * i) == []
    # sleeping to the deadline (plus a hair) and ticking declares the death exactly then
    assert m.tick(0.1199) == []
    assert [e.kind for e in m.tick(0.1202)] == ["link_dead", "node_dead"]
    assert m.next_deadline() == float("inf")


def test_beats_judged_on_arrival_time_read_late():
    """Beats read one tick after they arrived keep their arrival time: a peer that
    went silent dies deadtime after its last beat, not after we read it."""
    m = Membership("N1", ["N1", "N2"], keepalive=0.004, deadtime=0.02, tick_interval=0.004, now=0.0)
    t = 0.0
    while t < 0.1:
        m.beat("N2", "eth0", t)          # arrived at t, read at t + 3.9 ms
        m.tick(t + 0.0039)
        t = round(t + 0.004, 6)
    last = t - 0.004
    assert m.next_deadline() == pytest.approx(last + 0.02)
    assert m.snapshot(0.1)["nodes"]["N2"]["max_interval"] == pytest.approx(0.004)
    # an arrival stamped before the previous one (two links) never moves the clock back
    m.beat("N2", "eth1", last - 0.003)
    assert m.next_deadline() == pytest.approx(last + 0.02)


def test_longest_silence_counts_across_a_death():
    m = Membership("N1", ["N1", "N2"], keepalive=0.01, deadtime=0.05, tick_interval=0.01, now=0.0)
    m.beat("N2", "eth0", 0.0)
    for i in range(1, 10):
        m.tick(i * 0.01)
    assert m.state["N2"] == "dead"
    m.beat("N2", "eth0", 0.095)
    assert m.snapshot(0.1)["nodes"]["N2"]["max_interval"] == pytest.approx(0.095)


@pytest.mark.root
def test_rtnetlink_add_list_delete_in_a_namespace():
    if os.geteuid() != 0:
        pytest.skip("needs root")
    ns = f"hbrt{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        ip = ["ip", "-n", ns]
        subprocess.run(ip + ["link", "add", "v0", "type", "veth", "peer", "name", "v1"], check=True)
        subprocess.run(ip + ["link", "set", "v0", "up"], check=True)
        subprocess.run(ip + ["addr", "add", "10.77.0.1/24", "dev", "v0"], check=True)
        code = r'''
from halb.resources.rtnl import RtNetlink, NetlinkError, link_index
r = RtNetlink(); v0 = link_index("v0")
assert (v0, "10.77.0.1", 24) in r.addresses(v0)
r.add_address(v0, "10.77.0.10", 24)
try:
    r.add_address(v0, "10.77.0.10", 24); raise SystemExit("no EEXIST")
except NetlinkError as e:
    assert e.code == 17
assert (v0, "10.77.0.10", 24) in r.addresses()
r.del_address(v0, "10.77.0.10", 24)
assert all(a[1] != "10.77.0.10" for a in r.addresses())
print("ok")
'''
        out = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=30)
        assert out.stdout.strip() == "ok", out.stderr
        # what the kernel says, through iproute2
        shown = subprocess.run(ip + ["-4", "addr", "show", "v0"], capture_output=True, text=True).stdout
        assert "10.77.0.1/24" in shown and "10.77.0.10" not in shown
    finally:
        subprocess.run(["ip", "netns", "del", ns])
