"""The failure rules (heartbeat/recovery.py), without root: restart, then move after
migration-threshold failures; a failed stop keeps the group and escalates; a banned node
is no candidate but still a holder (issue 11, items 3 and 5)."""
from __future__ import annotations

from halb.heartbeat.ownership import NodeView
from halb.heartbeat.recovery import (MIGRATION_THRESHOLD, decide_groups, fence_for_stop_failure, find_group,
                                     on_monitor_failure, on_stop_failure)

NODES = ["N1", "N2"]


def v(alive=True, held=(), ping=0):
    return NodeView(alive, frozenset(held), 0, ping, True)


def test_restart_until_the_threshold_then_move():
    fc = 0
    actions = []
    for _ in range(MIGRATION_THRESHOLD):
        verdict = on_monitor_failure(fc)
        fc = verdict.failcount
        actions.append(verdict.action)
    assert actions == ["restart"] * (MIGRATION_THRESHOLD - 1) + ["move"] and fc == MIGRATION_THRESHOLD


def test_stop_failure_fences_with_stonith_and_a_live_peer_else_blocks():
    assert on_stop_failure(True, ["N2"]) == "fence"
    assert on_stop_failure(False, ["N2"]) == "block"
    assert on_stop_failure(True, []) == "block"


def test_a_banned_holder_gives_up_and_the_peer_waits_for_the_release():
    # N1 holds group 0 and is banned for it: N1 releases; N2 waits while N1 still holds it
    views = {"N1": v(held={0}), "N2": v()}
    banned = {"N1": {0}}
    d1 = decide_groups("N1", NODES, ["N1"], views, "on", banned)
    d2 = decide_groups("N2", NODES, ["N1"], views, "on", banned)
    assert d1.release == [0] and d1.desired[0] == "N2"
    assert d2.acquire == [] and d2.waiting == [0]
    # once released, N2 takes it, even with auto_failback on and N1 preferred
    views = {"N1": v(), "N2": v()}
    assert decide_groups("N2", NODES, ["N1"], views, "on", banned).acquire == [0]
    assert decide_groups("N1", NODES, ["N1"], views, "on", banned).acquire == []
    # banned everywhere: nobody runs it (until cleanup)
    assert decide_groups("N1", NODES, ["N1"], views, "on", {"N1": {0}, "N2": {0}}).desired[0] is None
    # other groups are not affected by a ban on group 0
    d = decide_groups("N1", NODES, ["N1", "N1"], views, "on", banned)
    assert d.acquire == [1]


def test_a_node_whose_stop_failed_still_holds_the_group():
    # N1 failed to stop group 0 (it still advertises it held); N2 is preferred: it must wait
    views = {"N1": v(held={0}), "N2": v()}
    d2 = decide_groups("N2", NODES, ["N2"], views, "on", {})
    assert d2.acquire == [] and d2.waiting == [0]


def test_who_fences_a_failed_stop():
    views = {"N1": v(held={0}), "N2": v(), "N3": v()}
    sf = {"N1": {0}}
    assert fence_for_stop_failure("N2", views, sf, set(), True) == [("N1", 0)]
    assert fence_for_stop_failure("N3", views, sf, set(), True) == []          # N2 does it
    assert fence_for_stop_failure("N2", views, sf, set(), False) == []         # no device: blocked
    assert fence_for_stop_failure("N2", views, sf, {"N1"}, True) == []         # already reset
    assert fence_for_stop_failure("N1", views, sf, set(), True) == []          # never itself
    dead = {"N1": v(alive=False, held={0}), "N2": v()}
    assert fence_for_stop_failure("N2", dead, sf, set(), True) == []          # dead: fence_targets' job


def test_find_group_by_number_line_or_resource():
    groups = [("N1", ["IPaddr2::10.0.0.100", "ldirectord::ldirectord.cf"]), ("N2", ["IPaddr2::10.0.0.101/24"])]
    assert find_group("1", groups) == 0 and find_group("2", groups) == 1
    assert find_group("N1 IPaddr2::10.0.0.100 ldirectord::ldirectord.cf", groups) == 0
    assert find_group("10.0.0.100", groups) == 0 and find_group("10.0.0.101", groups) == 1
    assert find_group("ldirectord", groups) == 0 and find_group("IPaddr2::10.0.0.101/24", groups) == 1
    assert find_group("IPaddr2", groups) is None and find_group("3", groups) is None
    assert find_group("nope", groups) is None


def test_a_gone_peer_with_a_failed_stop_blocks_the_group_without_stonith():
    from halb.heartbeat.recovery import blocked_by_failed_stop

    gone = {"N1": v(alive=False, held={0}), "N2": v()}
    sf = {"N1": {0}}
    assert blocked_by_failed_stop(gone, sf, False, set()) == {0: "N1"}
    assert blocked_by_failed_stop(gone, sf, True, set()) == {}                 # fence_targets resets it first
    assert blocked_by_failed_stop(gone, sf, False, {("N1", 0)}) == {}          # cleaned up here
    alive = {"N1": v(held={0}), "N2": v()}
    assert blocked_by_failed_stop(alive, sf, False, set()) == {}               # still there: it holds it
