"""Beat packets (signing, replay), membership state machine and ownership rule, all without sockets or clocks."""
import struct

import pytest
from hypothesis import given, settings, strategies as st

from halb.heartbeat.config import parse_authkeys
from halb.heartbeat.membership import Membership
from halb.heartbeat.ownership import NodeView, decide, desired_owner, fence_targets
from halb.heartbeat.packet import DecodeError, Packet, ReplayGuard, decode, encode

MD5 = parse_authkeys('auth 1\n1 md5 "secret"\n2 crc\n3 sha1 "autre secret"\n')
SHA = parse_authkeys("auth 4\n4 sha256 k2\n")


@pytest.mark.parametrize("keys", [MD5, SHA, parse_authkeys("auth 3\n3 sha1 x\n")])
def test_round_trip(keys):
    p = Packet("N1", 1234567890123, 42, {"held": [0], "claim": 0})
    q = decode(encode(p, keys), keys)
    assert (q.node, q.generation, q.seq, q.payload) == ("N1", 1234567890123, 42, {"held": [0], "claim": 0})


def test_forged_truncated_and_crc_packets_are_refused():
    good = encode(Packet("N1", 1, 1, {"a": 1}), MD5)
    forged = bytearray(good)
    forged[-20] ^= 1  # flip a payload bit, keep the old MAC
    with pytest.raises(DecodeError) as e:
        decode(bytes(forged), MD5)
    assert e.value.reason == "bad_auth"
    wrong_key = parse_authkeys('auth 1\n1 md5 "guess"\n')
    with pytest.raises(DecodeError, match="bad_auth"):
        decode(encode(Packet("N1", 1, 1), wrong_key), MD5)
    for cut in (0, 5, 30, len(good) - 1):
        with pytest.raises(DecodeError) as e:
            decode(good[:cut], MD5)
        assert e.value.reason == "truncated"
    crc = parse_authkeys("auth 2\n2 crc\n")
    with pytest.raises(DecodeError, match="weak_auth"):
        decode(encode(Packet("N1", 1, 1), crc), MD5)   # key 2 of MD5's file is crc: still refused on UDP
    assert decode(encode(Packet("N1", 1, 1), crc), MD5, accept_crc=True).node == "N1"
    with pytest.raises(DecodeError, match="unknown_key"):
        decode(encode(Packet("N1", 1, 1), SHA), MD5)


def test_replay_guard():
    g = ReplayGuard()
    assert g.check("N1", 10, 1) is None
    assert g.check("N1", 10, 1) == "replayed"
    assert g.check("N1", 10, 3) is None
    assert g.check("N1", 10, 2) == "reordered"
    assert g.check("N1", 9, 100) == "old_generation"
    assert g.check("N1", 11, 1) is None       # peer restarted: new generation
    assert g.check("N2", 1, 1) is None


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_decoder_garbage(data):
    with pytest.raises(DecodeError):
        decode(data, MD5)


@settings(max_examples=1000, deadline=None)
@given(st.integers(0, 200), st.integers(0, 255), st.binary(max_size=8))
def test_fuzz_decoder_mutations(pos, val, tail):
    good = encode(Packet("N2", 7, 9, {"held": [0, 1], "ping": 2}), MD5)
    bad = bytearray(good + tail)
    if pos < len(bad):
        bad[pos] = val
    try:
        p = decode(bytes(bad), MD5)
    except DecodeError:
        return
    assert bytes(bad) == good and p.node == "N2"   # only the untouched packet passes


def M(**kw):
    args = dict(keepalive=0.05, deadtime=0.3, warntime=0.2, initdead=0.6, tick_interval=0.025)
    args.update(kw)
    return Membership("N1", ["N1", "N2", "N3"], **args)


def run_ticks(m, t0, t1, step=0.025, beats=()):
    ev = []
    t = t0
    while t <= t1 + 1e-9:
        for node in beats:
            ev += m.beat(node, "eth0", t)
        ev += m.tick(t)
        t = round(t + step, 6)
    return ev


def test_initdead_then_dead_and_up():
    m = M()
    ev = run_ticks(m, 0.025, 0.5, beats=("N2",))
    assert [str(e) for e in ev if e.kind in ("node_up", "link_up")] == ["Link N2:eth0 up.", "node N2: status up"]
    assert not m.settled() and m.state["N3"] == "init"
    ev = run_ticks(m, 0.525, 0.7, beats=("N2",))
    assert [str(e) for e in ev] == ["node N3: is dead"] and m.settled()
    ev = run_ticks(m, 0.725, 1.2)   # N2 stops beating at 0.7
    kinds = [e.kind for e in ev]
    assert kinds == ["link_dead", "node_dead"] and ev[1].node == "N2"
    ev = m.beat("N2", "eth1", 1.3)
    assert [str(e) for e in ev] == ["Link N2:eth1 up.", "node N2: status up"]


def test_late_beat_warns():
    m = M()
    m.beat("N2", "eth0", 0.0)
    m.tick(0.025)
    m.tick(0.05)
    # ticks keep coming; the next beat arrives 0.25 s later: late (> warntime 0.2), not dead (< 0.3)
    run_ticks(m, 0.075, 0.25)
    ev = m.beat("N2", "eth0", 0.25)
    assert [e.kind for e in ev] == ["node_late"] and "interval 250 ms" in str(ev[0])
    assert m.state["N2"] == "up"


def test_own_stall_does_not_kill_peers():
    m = M()
    run_ticks(m, 0.025, 1.0, beats=("N2", "N3"))
    # our loop is frozen for 2 s: no tick, no packet read
    ev = m.tick(3.0)
    assert ev and ev[0].kind == "loop_late" and not any(e.kind == "node_dead" for e in ev)
    # the peers' queued beats arrive now: still up
    ev = run_ticks(m, 3.025, 3.5, beats=("N2", "N3"))
    assert not any(e.kind == "node_dead" for e in ev)
    # but a peer that is really silent after the stall dies in deadtime
    ev = run_ticks(m, 3.525, 4.0, beats=("N2",))
    assert [e.node for e in ev if e.kind == "node_dead"] == ["N3"]


def test_ping_nodes():
    m = Membership("N1", ["N1", "N2"], keepalive=0.05, deadtime=0.3, ping_targets={"gw": ["10.0.0.254"]},
                   deadping=0.2, tick_interval=0.025)
    assert m.ping_score() == 1
    m.ping_reply("10.0.0.254", 0.05)
    ev = run_ticks(m, 0.025, 0.4)
    assert [str(e) for e in ev if e.kind.startswith("ping")] == ["ping node gw: is dead"] and m.ping_score() == 0
    assert [str(e) for e in m.ping_reply("10.0.0.254", 0.5)] == ["ping node gw: status up"]


def views(**kw):
    return {n: (v if isinstance(v, NodeView) else NodeView(alive=v)) for n, v in kw.items()}


NODES = ["N1", "N2"]


def test_preferred_node_takes_its_group_and_survivor_takes_over():
    d = decide("N1", NODES, ["N1"], views(N1=True, N2=True), "off")
    assert d.acquire == [0]
    d = decide("N2", NODES, ["N1"], views(N1=True, N2=True), "off")
    assert d.acquire == [] and d.desired[0] == "N1"
    d = decide("N2", NODES, ["N1"], views(N1=NodeView(False, frozenset({0})), N2=True), "off")
    assert d.acquire == [0]


def test_auto_failback_off_and_on():
    v = views(N1=NodeView(True), N2=NodeView(True, frozenset({0})))
    assert decide("N2", NODES, ["N1"], v, "off").release == []
    assert decide("N1", NODES, ["N1"], v, "off").acquire == []
    d = decide("N2", NODES, ["N1"], v, "on")
    assert d.release == [0]
    d = decide("N1", NODES, ["N1"], v, "on")
    assert d.acquire == [] and d.waiting == [0]     # waits until N2 has released
    assert decide("N2", NODES, ["N1"], v, "legacy").release == [0]


def test_standby_takeover_claims():
    v = views(N1=NodeView(True, frozenset({0}), claim=-1), N2=NodeView(True, claim=0))
    assert decide("N1", NODES, ["N1"], v, "on").release == [0]
    v = views(N1=NodeView(True, claim=0), N2=NodeView(True, frozenset({0}), claim=0))
    v["N1"].claim = 1   # takeover on N1
    assert decide("N2", NODES, ["N1"], v, "off").release == [0]


def test_ipfail_node_without_ping_gives_up():
    v = views(N1=NodeView(True, frozenset({0}), ping=0), N2=NodeView(True, ping=1))
    assert decide("N1", NODES, ["N1"], v, "on").release == [0]
    v = views(N1=NodeView(True, ping=0), N2=NodeView(True, ping=1))
    assert decide("N2", NODES, ["N1"], v, "on").acquire == [0]
    v = views(N1=NodeView(True, frozenset({0}), ping=0), N2=NodeView(True, ping=0))
    assert decide("N1", NODES, ["N1"], v, "on").release == []   # both cut: nothing moves


def test_split_brain_heals_to_one_holder():
    v = views(N1=NodeView(True, frozenset({0})), N2=NodeView(True, frozenset({0})))
    for af in ("on", "off"):
        assert decide("N1", NODES, ["N1"], v, af).release == []
        assert decide("N2", NODES, ["N1"], v, af).release == [0]


def test_several_groups_and_three_nodes():
    nodes = ["N1", "N2", "N3"]
    v = views(N1=False, N2=True, N3=True)
    assert decide("N2", nodes, ["N1", "N2", "N3"], v, "off").acquire == [0, 1]
    assert decide("N3", nodes, ["N1", "N2", "N3"], v, "off").acquire == [2]


def test_fence_targets():
    v = views(N1=False, N2=True)
    assert fence_targets(0, NODES, v, {"N1": {0}}, set()) == ["N1"]
    assert fence_targets(0, NODES, v, {"N1": {0}}, {"N1"}) == []
    assert fence_targets(0, NODES, v, {"N1": set()}, set()) == []
