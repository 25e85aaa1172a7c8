"""Scheduler decisions turned into the contents of a service's q map (pure).

The kernel side picks a slot with `numgen inc mod L` (rr, wrr and the
connection-count schedulers) or `jhash ... mod L` (sh, dh, mh); the q map
gives each slot's real server. The slot tables come from halb.sched, the
exact IPVS algorithms:

- rr / wrr: one full period of the IPVS sequence (L = sum of weights / gcd,
  capped at MAX_PERIOD by scaling the weights down), so the kernel repeats
  exactly IPVS's order.
- sh / dh / mh: IPVS's bucket tables (256 buckets, Maglev 4093 slots); the
  bucket of a packet is chosen by jhash instead of the kernel's hash, so the
  mapping client -> server is stable but not the same as IPVS's.
- lc, wlc, sed, nq, fo, ovf, lblc, lblcr (need live connection counts):
  APPROXIMATION. The exact scheduler is run forward LOOKAHEAD steps from the
  live counts read from the kernel (established flows = active, closing =
  inactive), assuming each new connection stays open; the kernel then walks
  that precomputed sequence. It is refreshed on every table change and by
  `halb nft refresh` / the controller loop (controller.py). Between two
  refreshes, connections that close are not seen: the deviation from the
  exact scheduler is measured in tests/nft/test_sched_kernel.py.
"""
from __future__ import annotations

from copy import copy, deepcopy
from functools import reduce
from math import gcd

from halb.model import Dest, Service, parse_ip
from halb.sched import Packet, make_scheduler, update_overload

MAX_PERIOD = 1024
LOOKAHEAD = 64
COUNT_BASED = ("lc", "wlc", "sed", "nq", "fo", "ovf", "lblc", "lblcr")


def _scaled(dests: list[Dest]) -> list[Dest]:
    ws = [d.weight for d in dests if d.weight > 0]
    if not ws:
        return dests
    g = reduce(gcd, ws)
    total = sum(w // g for w in ws)
    if total <= MAX_PERIOD:
        return dests
    out = []
    for d in dests:
        c = copy(d)
        if c.weight > 0:
            c.weight = max(1, c.weight * MAX_PERIOD // (total * g))
        out.append(c)
    return out


STATEFUL = ("lblc", "lblcr")


def slot_table(svc: Service, counts: dict[tuple[str, int], tuple[int, int]] | None = None,
               keep: dict | None = None) -> tuple[str, int, list[tuple[int, int]]]:
    """(hash_expr, L, [(slot, dest index)]) for the service.

    hash_expr "" means numgen inc; dest index refers to svc.dests. counts
    gives (active, inactive) per dest ident for the count-based schedulers.
    keep (lblc, lblcr): {"sched": scheduler or None}; the locality table is
    carried from one refresh to the next, advanced by the first decision only
    (the one the kernel takes next)."""
    dests = [copy(d) for d in svc.dests]  # only ints change: a shallow copy is enough
    for d in dests:
        a, i = (counts or {}).get(d.ident, (0, 0))
        d.activeconns, d.inactconns = a, i
        d.overloaded = False
        update_overload(d)
    name = svc.scheduler
    if not dests:
        return "", 1, []
    if name in ("sh", "dh", "mh"):
        # the table is built from the real servers in address order, not in
        # the order they were added: every director that has the same real
        # servers has the same table (active-active behind ECMP, halb bgp),
        # and a flow that the router moves to another director reaches the
        # same real server
        order = sorted(range(len(dests)), key=lambda i: (parse_ip(dests[i].addr).packed, dests[i].port))
        sch = make_scheduler(svc)
        sch.update([dests[i] for i in order])
        table = [order[i] if 0 <= i < len(order) else i for i in sch.table] if sch.table else sch.table
        if table is None or not table:
            return "ip saddr", 1, []
        size = len(table)
        if name == "dh":
            expr = "ip daddr"
        else:
            port_flag = f"{name}-port"
            expr = "ip saddr . th sport" if port_flag in svc.flags else "ip saddr"
        fallback = f"{name}-fallback" in svc.flags
        avail = [not (dests[i].weight <= 0 or dests[i].overloaded) for i in range(len(dests))]
        slots = []
        for b in range(size):
            idx = table[b]
            if 0 <= idx < len(dests) and avail[idx]:
                slots.append((b, idx))
            elif fallback:
                for off in range(1, size):
                    j = table[(b + off) % size]
                    if 0 <= j < len(dests) and avail[j]:
                        slots.append((b, j))
                        break
        return expr, size, slots
    sch = make_scheduler(svc)
    if keep is not None and name in STATEFUL:
        prev = keep.get("sched")
        if prev is not None and type(prev) is type(sch):
            sch = prev
    sch.update(dests)
    index = {id(d): i for i, d in enumerate(dests)}
    if name in COUNT_BASED or any(d.u_threshold for d in dests):
        steps = LOOKAHEAD
        simulate = True
    else:
        dests = _scaled(dests)
        index = {id(d): i for i, d in enumerate(dests)}
        sch = make_scheduler(svc)
        sch.update(dests)
        ws = [d.weight for d in dests if d.weight > 0]
        if not ws:
            return "", 1, []
        steps = len(ws) if name == "rr" else sum(w // reduce(gcd, ws) for w in ws)
        simulate = False
    k = svc.key
    pkt = Packet("0.0.0.0", 0, k.addr or "0.0.0.0", k.port, k.proto if k.proto != "fwm" else "tcp")
    seq = []
    live = sch
    for i in range(steps):
        if i == 1 and keep is not None and name in STATEFUL:
            keep["sched"] = live
            live_state = deepcopy((sch, dests))
            sch, dests = live_state
            index = {id(d): j for j, d in enumerate(dests)}
        d = sch.schedule(dests, pkt, now=0.0)
        if d is None:
            break
        seq.append((i, index[id(d)]))
        if simulate:
            d.activeconns += 1
            update_overload(d)
    if keep is not None and name in STATEFUL and steps == 1:
        keep["sched"] = live
    if not seq:
        return "", 1, []
    return "", len(seq), seq
