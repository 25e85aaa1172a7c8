"""The IP_VS_DEST_F_OVERLOAD rule (ip_vs_conn.c bind/unbind, ip_vs_ctl.c edit)."""
from __future__ import annotations

from halb.model import Dest
from halb.sched import carry_overload, is_overloaded, update_overload


def step(d, total):
    d.activeconns, d.inactconns = total, 0
    update_overload(d)
    return d.overloaded


def test_upper_threshold_sets_and_three_quarters_clears():
    d = Dest("10.0.0.1", 80, u_threshold=10)
    assert [step(d, n) for n in (9, 10, 11, 8, 7, 8, 9, 10)] == \
        [False, True, True, True, False, False, False, True]
    # 8 * 4 = 32 is not < 30; 7 * 4 = 28 is


def test_lower_threshold_clears():
    d = Dest("10.0.0.1", 80, u_threshold=10, l_threshold=5)
    assert [step(d, n) for n in (10, 6, 5, 4, 9)] == [True, True, True, False, False]


def test_inactive_connections_count_too():
    d = Dest("10.0.0.1", 80, u_threshold=4)
    d.activeconns, d.inactconns = 1, 3
    update_overload(d)
    assert is_overloaded(d)


def test_no_threshold_never_overloaded():
    d = Dest("10.0.0.1", 80)
    assert not step(d, 10**6)
    d.overloaded = True  # e.g. thresholds just removed
    assert not step(d, 5)


def test_edit_keeps_or_clears_the_flag_like_the_kernel():
    old = Dest("10.0.0.1", 80, u_threshold=10)
    old.overloaded = True
    lower = Dest("10.0.0.1", 80, u_threshold=5)
    carry_overload(old, lower)
    assert lower.overloaded
    higher = Dest("10.0.0.1", 80, u_threshold=20)
    carry_overload(old, higher)
    assert not higher.overloaded
    none = Dest("10.0.0.1", 80)
    carry_overload(old, none)
    assert not none.overloaded


def test_overloaded_server_skipped_until_cleared(rig):
    r = rig("rr", [1, 1])
    r["B"].u_threshold = 2
    r.load(B=(2, 0))
    update_overload(r["B"])
    assert r.picks(3) == "AAA"
    r.load(B=(1, 0))  # 4 < 6: cleared
    update_overload(r["B"])
    assert r.picks(2) == "BA"
