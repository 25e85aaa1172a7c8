"""halb chaos's pure core: the schedule (same seed = same schedule) and the verdict."""
from __future__ import annotations

import pytest

from halb.chaos import core


def test_same_seed_same_schedule_and_budget_kept():
    a = core.schedule(1, 60, list(core.FAULTS))
    assert a == core.schedule(1, 60, list(core.FAULTS))
    assert a != core.schedule(2, 60, list(core.FAULTS))
    assert all(s.at + core.FAULTS[s.fault][1] <= 60 for s in a)
    assert len({s.fault for s in core.schedule(1, 600, list(core.FAULTS))}) == len(core.FAULTS)


def test_parse_faults():
    assert core.parse_faults("all") == list(core.FAULTS)
    assert core.parse_faults("crash, loss,crash") == ["crash", "loss"]
    with pytest.raises(ValueError, match="unknown fault 'bogus'"):
        core.parse_faults("crash,bogus")


def test_verdict_inside_outside_windows_and_double_vip():
    w = [core.Window(1, "crash", "N1", 10.0, 12.0)]
    reqs = [core.Request(9.0, 9.1, True), core.Request(10.5, 11.5, False),
            core.Request(13.0, 14.0, False)]
    samples = {"N1": [(t / 100, t < 1050) for t in range(800, 1500)],
               "N2": [(t / 100, t >= 1040) for t in range(800, 1500)]}
    tl = core.vip_timeline(samples, 8.0, 15.0)
    v = core.verdict(w, reqs, [core.Download(9, 11, True)], [], tl, [])
    assert v["totals"]["failed_outside_windows"] == 1 and v["faults"][0]["failed"] == 1
    assert 80 <= v["totals"]["double_vip_ms"] <= 120 and v["faults"][0]["double_vip_ms"] > 0
    assert not v["clean"]
    assert "NOT CLEAN" in core.table(v)
    v2 = core.verdict(w, reqs[:2], [core.Download(9, 11, True)], [],
                      core.vip_timeline({"N1": [(t / 100, True) for t in range(800, 1500)]}, 8, 15), [])
    assert v2["clean"] and v2["faults"][0]["window_ms"] == 1000


def test_persistence_violation_unless_server_down():
    ans = [core.PersistAnswer(1, "c", "N3"), core.PersistAnswer(2, "c", None),
           core.PersistAnswer(3, "c", "N4"), core.PersistAnswer(4, "c", "N1")]
    v = core.persistence_violations(ans, {"N3": [(1.5, 2.5)]})
    assert v == [{"t": 4, "client": "c", "from": "N4", "to": "N1"}]


def test_a_dead_nodes_last_sample_does_not_count_for_long():
    tl = core.vip_timeline({"N1": [(0.0, True)], "N2": [(t / 100, True) for t in range(50, 100)]}, 0, 1)
    double = sum(b - a for a, b, n in tl if n >= 2)
    assert double == 0
