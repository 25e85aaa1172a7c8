"""Who should hold each resource group (sans-I/O).

Every node advertises in its beats what it holds, its ping score (how many
ping nodes it reaches) and a "claim" number (0 normally; `takeover` sets it
above every claim seen, `standby` below). Each node runs the same rule on
the same facts, so they agree; a node only ever acquires a group no live
node says it holds, and gives up a group when the rule says someone else
should have it.

Rule for a group whose preferred node (first word in haresources) is P:
 1. candidates = live nodes with the best ping score (ipfail: a node that
    lost its ping nodes is not a candidate while a peer still has them);
 2. among them, keep those with the highest claim (takeover / standby);
 3. auto_failback on (or legacy): P if it is one of them;
 4. else the current holder if it is one of them (auto_failback off keeps
    the group where it is: no second interruption);
 5. else P if it is one of them, else the first of them in `node` order.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class NodeView:
    alive: bool
    held: frozenset = frozenset()    # group indexes held or being acquired/released
    claim: int = 0
    ping: int = 0
    known: bool = True               # we have its beat payload


@dataclass
class Decision:
    desired: dict = field(default_factory=dict)   # group index -> node
    acquire: list = field(default_factory=list)
    release: list = field(default_factory=list)
    waiting: list = field(default_factory=list)    # groups we should hold but a peer still holds


def desired_owner(gi: int, preferred: str, nodes: list, views: dict, auto_failback: str) -> str | None:
    live = [n for n in nodes if views.get(n) is not None and views[n].alive and views[n].known]
    if not live:
        return None
    best_ping = max(views[n].ping for n in live)
    cand = [n for n in live if views[n].ping == best_ping]
    top_claim = max(views[n].claim for n in cand)
    top = [n for n in cand if views[n].claim == top_claim]
    if auto_failback in ("on", "legacy") and preferred in top:
        return preferred
    holders = [n for n in top if gi in views[n].held]
    if holders:
        return preferred if preferred in holders else holders[0]
    if preferred in top:
        return preferred
    return top[0]


def decide(me: str, nodes: list, groups: list, views: dict, auto_failback: str) -> Decision:
    """`groups`: list of preferred node names, by group index; `views` includes me."""
    d = Decision()
    mine = views[me].held
    for gi, preferred in enumerate(groups):
        owner = desired_owner(gi, preferred, nodes, views, auto_failback)
        d.desired[gi] = owner
        if owner == me:
            if gi not in mine:
                others = [n for n in nodes if n != me and views.get(n) is not None
                          and views[n].alive and gi in views[n].held]
                if others:
                    d.waiting.append(gi)
                else:
                    d.acquire.append(gi)
        elif gi in mine:
            d.release.append(gi)
    return d


def fence_targets(gi: int, nodes: list, views: dict, last_held: dict, fenced: set) -> list:
    """Dead nodes that held group `gi` when last heard and are not yet confirmed off."""
    return [n for n in nodes
            if views.get(n) is not None and not views[n].alive
            and gi in last_held.get(n, ()) and n not in fenced]
