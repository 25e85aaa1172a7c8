"""Issue 11's decisions in the pure cores, without root: generation counter, freshness,
startup fencing, the cut-off node, fence delay, flooded links, serial framing."""
from __future__ import annotations

from hypothesis import given, strategies as st

from halb.heartbeat import generation
from halb.heartbeat.packet import fresh


@given(st.lists(st.integers(min_value=0, max_value=2**62), min_size=1, max_size=20))
def test_generation_grows_whatever_the_wall_clock_does(walls):
    stored = None
    for w in walls:
        g = generation.next_generation(stored, w)
        assert stored is None or g > stored
        assert g >= w
        stored = g


def test_generation_file_survives_and_corruption_is_reported(tmp_path):
    g1, p1 = generation.take(tmp_path, 1000)
    g2, p2 = generation.take(tmp_path, 10)          # clock stepped back
    assert (g1, g2, p1, p2) == (1000, 1001, [], [])
    assert (tmp_path / "hb_generation").read_text() == "1001\n"
    (tmp_path / "hb_generation").write_text("garbage")
    g3, p3 = generation.take(tmp_path, 5)
    assert g3 == 5 and "corrupt" in p3[0]


def test_state_dir_survives_a_reboot(tmp_path, monkeypatch):
    monkeypatch.delenv("HALB_STATE_DIR", raising=False)
    assert str(generation.state_dir("/run/halb/N1", "N1")) == "/var/lib/halb/N1"
    assert generation.state_dir(tmp_path, "N1") == tmp_path
    monkeypatch.setenv("HALB_STATE_DIR", "/srv/x")
    assert str(generation.state_dir("/run/halb/N1", "N1")) == "/srv/x"


def test_a_beat_is_fresh_only_when_it_names_our_generation():
    assert fresh({"seen": {"N2": 7}}, "N2", 7)
    assert not fresh({"seen": {"N2": 6}}, "N2", 7)
    assert not fresh({"seen": {"N3": 7}}, "N2", 7)
    assert not fresh({}, "N2", 7) and not fresh({"seen": [7]}, "N2", 7)


def _mem(**kw):
    from halb.heartbeat.membership import Membership

    return Membership("N2", ["N1", "N2"], keepalive=0.05, deadtime=0.3, initdead=1.0, tick_interval=0.1, now=0.0, **kw)


def test_a_flooded_link_is_reported_not_a_dead_peer():
    m = _mem(flood_grace=3.0)
    m.beat("N1", "eth0", 0.1)
    ev = m.overflow("eth0", 500, 0.2)
    assert [e.kind for e in ev] == ["link_flooded"] and "500 datagrams dropped" in str(ev[0])
    assert m.overflow("eth0", 10, 0.25) == []                # one report per flood
    seen = []
    for t in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7):
        m.overflow("eth0", 100, t)
        seen += m.tick(t)
    assert [e.kind for e in seen] == ["node_flooded"] and "not declaring it dead" in str(seen[0])
    assert m.state["N1"] == "up" and m.snapshot(0.7)["links"] == {"N1:eth0": "flooded"}
    # the flood ends: deadtime later, a silent N1 is dead
    assert m.next_deadline() <= 0.7 + 0.3 + 1e-9
    kinds = [e.kind for t in (0.8, 0.9, 1.0, 1.05) for e in m.tick(t)]
    assert kinds == ["link_dead", "node_dead"]


def test_a_flood_excuses_a_silence_only_up_to_the_grace():
    m = _mem(flood_grace=2.0)
    m.beat("N1", "eth0", 0.1)
    t = 0.1
    while t < 2.05:
        m.overflow("eth0", 100, t)
        assert "node_dead" not in [e.kind for e in m.tick(t)]
        t += 0.1
    m.overflow("eth0", 100, 2.15)
    assert "node_dead" in [e.kind for e in m.tick(2.15)]    # last beat at 0.1: the grace (2 s) is over


def test_an_overflow_long_before_the_silence_excuses_nothing():
    m = _mem()
    m.beat("N1", "eth0", 0.1)
    m.overflow("eth0", 5, 0.15)
    for t in (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0):
        m.tick(t)
    m.beat("N1", "eth0", 1.0)
    assert "node_dead" in [e.kind for t in (1.1, 1.2, 1.31) for e in m.tick(t)]
