"""What a node does when one of its resources fails (sans-I/O).

The rule, for a group held here:
 1. a failed monitor (status says "not running", or the status call failed)
    adds one to the group's fail count on this node; below the threshold
    (MIGRATION_THRESHOLD, Pacemaker's migration-threshold) the failed
    resource and those after it in the group are restarted here; at the
    threshold the group is given up and this node is *banned* for it until
    `halb heartbeat cleanup GROUP`: another node takes it;
 2. a failed stop never counts as stopped: the group stays held here, marked
    failed (beats say so), so no other node starts it while it may still
    run here. With a STONITH device a live peer that sees the failed stop
    resets this node and only then takes the group; without one the group
    stays blocked here until `halb heartbeat cleanup GROUP` finds it stopped;
 3. a banned node is never a candidate for the group (Pacemaker: a node
    whose fail count reached migration-threshold does not run it), but while
    it still holds the group (releasing it) no other node acquires it.
Every node runs the same functions on the same facts (its view of each
node's held, banned and stop-failed groups, carried in beats).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from halb.heartbeat.ownership import Decision, decide

MIGRATION_THRESHOLD = 3


@dataclass(frozen=True)
class MonitorVerdict:
    action: str          # "restart" | "move"
    failcount: int


def on_monitor_failure(failcount: int, threshold: int = MIGRATION_THRESHOLD) -> MonitorVerdict:
    """`failcount`: failures of the group on this node before this one."""
    n = failcount + 1
    return MonitorVerdict("move" if n >= threshold else "restart", n)


def on_stop_failure(have_stonith: bool, live_peers: list) -> str:
    """What follows a failed stop on this node: "fence" (a peer with a STONITH
    device resets this node, then takes the group) or "block" (the group stays
    here, failed, until cleanup)."""
    return "fence" if have_stonith and live_peers else "block"


def decide_groups(me: str, nodes: list, groups: list, views: dict, auto_failback: str,
                  banned: dict) -> Decision:
    """ownership.decide, with each group's banned nodes (node -> set of group
    indexes) out of its candidates but still counted as holders."""
    out = Decision()
    for gi in range(len(groups)):
        vg = {n: (replace(v, known=False) if gi in banned.get(n, ()) else v) for n, v in views.items()}
        d = decide(me, nodes, groups, vg, auto_failback)
        out.desired[gi] = d.desired.get(gi)
        for name in ("acquire", "release", "waiting"):
            if gi in getattr(d, name):
                getattr(out, name).append(gi)
    return out


def fence_for_stop_failure(me: str, views: dict, stop_failed: dict, fenced: set, have_stonith: bool) -> list:
    """Live peers that report a failed stop (node -> set of group indexes) and that
    this node must reset, as (node, group index): only with a STONITH device, and the
    node whose name sorts first among the live nodes does it (one reset, not one per
    peer)."""
    if not have_stonith:
        return []
    live = sorted(n for n, v in views.items() if v.alive)
    out = []
    for n in sorted(stop_failed):
        if n == me or n in fenced or not views.get(n) or not views[n].alive:
            continue
        others = [x for x in live if x != n]
        if others and others[0] == me:
            out.extend((n, gi) for gi in sorted(stop_failed[n]))
    return out


def blocked_by_failed_stop(views: dict, stop_failed: dict, have_stonith: bool, cleared: set) -> dict:
    """Groups this node must not take (group index -> node): a peer that is gone (dead or
    shut down) last said its stop of the group failed, and no STONITH device can make sure
    it is off (with one, fence_targets resets it first). Lifted by `cleanup` here
    (`cleared`: (node, group) pairs) or when the peer comes back and says otherwise."""
    if have_stonith:
        return {}
    out = {}
    for n in sorted(stop_failed):
        v = views.get(n)
        if v is None or v.alive:
            continue
        for gi in sorted(stop_failed[n]):
            if (n, gi) not in cleared:
                out.setdefault(gi, n)
    return out


def find_group(spec: str, groups: list) -> int | None:
    """The group a sysadmin names: its number (1-based, as status prints it), its
    haresources line as status shows it, or one of its resources (e.g. the VIP,
    IPaddr2::10.0.0.100, ldirectord). `groups`: (preferred node, [resource texts])."""
    spec = spec.strip()
    if spec.isdigit() and 1 <= int(spec) <= len(groups):
        return int(spec) - 1
    for i, (node, res) in enumerate(groups):
        if spec == " ".join([node, *res]):
            return i
    hits = [i for i, (node, res) in enumerate(groups)
            if any(spec == r or spec in r.replace("/", "::").split("::") for r in res)]
    return hits[0] if len(hits) == 1 else None
