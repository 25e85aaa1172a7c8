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
