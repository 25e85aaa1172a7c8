"""List-walking schedulers: rr, wrr, lc, wlc, sed, nq, fo, ovf.

Each follows its kernel module (net/netfilter/ipvs/ip_vs_<name>.c) and walks
the destination list in the kernel's order, newest first (see the package
docstring): index k of the kernel list is dests[n-1-k].
"""
from __future__ import annotations

from halb.model import Dest
from halb.sched import NO_DEST, Scheduler, gcd_max, register


OVERLOADED = NO_DEST + ": all destinations are overloaded"


def _ident_list(dests: list[Dest]) -> list[tuple[str, int]]:
    """Identities in kernel order (newest first)."""
    return [d.ident for d in reversed(dests)]


def conn_overhead(d: Dest) -> int:
    """ip_vs_dest_conn_overhead(): activeconns*256 + inactconns."""
    return (d.activeconns << 8) + d.inactconns


def wlc_pick(dests: list[Dest]) -> Dest | None:
    """Weighted least-connection over the list in kernel order: least
    overhead/weight, compared as loh*w_d > doh*w_least so the earlier server
    keeps ties; overloaded and weight 0 servers are never chosen
    (ip_vs_wlc_schedule; lblc and lblcr fall back to the same walk)."""
    least = None
    loh = lw = 0
    for d in reversed(dests):
        if d.overloaded:
            continue
        if least is None:
            if d.weight > 0:
                least, loh, lw = d, (d.activeconns << 8) + d.inactconns, d.weight
            continue
        doh = (d.activeconns << 8) + d.inactconns
        if loh * d.weight > doh * lw:
            least, loh, lw = d, doh, d.weight
    return least


# --------------------------------------------------------------------------
@register
class RoundRobin(Scheduler):
    """ip_vs_rr.c: a pointer to the last chosen server in the list; the next
    available (not overloaded, weight > 0) server after it wins.  When the
    pointed-to server is removed the pointer moves to its predecessor, so the
    cycle continues with the server that followed the removed one.  New
    servers join at the head of the list.  When one update() both removes and
    adds servers, the removals are taken to have happened first."""

    name = "rr"

    def __init__(self, service=None):
        super().__init__(service)
        self._klist: list[tuple[str, int]] = []  # kernel order at last update
        self._pos = -1  # kernel-list index of the last chosen dest; -1 = list head

    def update(self, dests: list[Dest]) -> None:
        new = _ident_list(dests)
        pos = -1
        if self._pos >= 0:
            index = {ident: i for i, ident in enumerate(new)}
            # the last chosen server, or (if it was removed) the nearest
            # surviving predecessor, as ip_vs_rr_del_dest leaves it
            for i in range(self._pos, -1, -1):
                j = index.get(self._klist[i])
                if j is not None:
                    pos = j
                    break
        self._klist = new
        self._pos = pos

    def schedule(self, dests, pkt=None, now=None):
        n = len(dests)
        last = self._pos
        if last >= n:  # defensive: list shrank without update()
            last = -1
        k = last + 1
        for _ in range(n):
            if k >= n:
                k = 0
            d = dests[n - 1 - k]
            if d.weight > 0 and not d.overloaded:
                self._pos = k
                return d
            k += 1
        return None


# --------------------------------------------------------------------------
@register
class WeightedRoundRobin(Scheduler):
    """ip_vs_wrr.c: current weight cw steps down by the weights' gcd from
    mw = max - (gcd - 1); each pass over the list picks servers with
    weight >= cw.  Any destination change resets the position to the head and
    adjusts cw as ip_vs_wrr_dest_changed() does."""

    name = "wrr"

    def __init__(self, service=None):
        super().__init__(service)
        self.cl = -1  # kernel-list index of the current dest; -1 = head
        self.cw = 0
        self.mw = 0
        self.di = 1
        self._started = False

    def update(self, dests: list[Dest]) -> None:
        g, mx = gcd_max(d.weight for d in dests)
        di = g or 1
        self.cl = -1
        self.di = di
        self.mw = mx - (di - 1)
        if not self._started:  # ip_vs_wrr_init_svc
            self.cw = self.mw
            self._started = True
        elif self.cw > self.mw or not self.cw:
            self.cw = self.mw
        elif di > 1:
            self.cw = (self.cw // di) * di + 1

    def schedule(self, dests, pkt=None, now=None):
        n = len(dests)
        i = self.cl
        if i >= n:
            i = self.cl = -1
        if self.mw == 0:
            self.error = NO_DEST
            return None
        last = i
        stop = None
        last_pass = restarted = False
        di, mw = self.di, self.mw
        cw = self.cw
        while True:
            j = i + 1
            while j < n:
                d = dests[n - 1 - j]
                if d.weight >= cw and not d.overloaded:
                    self.cl = j
                    self.cw = cw
                    return d
                if j == stop:
                    self.cl = j
                    self.cw = cw
                    self.error = OVERLOADED
                    return None
                j += 1
            i = -1
            cw -= di
            if cw <= 0:
                cw = mw
                if last_pass or last == -1:
                    self.cl = -1
                    self.cw = cw
                    self.error = OVERLOADED
                    return None
                restarted = True
            last_pass = cw <= di
            if last_pass and restarted and last != -1:
                stop = last


# --------------------------------------------------------------------------
@register
class LeastConnection(Scheduler):
    """ip_vs_lc.c: least activeconns*256 + inactconns; the first in list
    order wins ties; weight 0 and overloaded servers are skipped."""

    name = "lc"

    def schedule(self, dests, pkt=None, now=None):
        least = None
        loh = 0
        for d in reversed(dests):
            if d.overloaded or d.weight == 0:
                continue
            doh = (d.activeconns << 8) + d.inactconns
            if least is None or doh < loh:
                least, loh = d, doh
        return least


@register
class WeightedLeastConnection(Scheduler):
    """ip_vs_wlc.c: least overhead/weight (compared as loh*w_d > doh*w_least,
    so the earlier server keeps ties)."""

    name = "wlc"

    def schedule(self, dests, pkt=None, now=None):
        return wlc_pick(dests)


@register
class ShortestExpectedDelay(Scheduler):
    """ip_vs_sed.c: least (activeconns + 1) / weight, ties to the earlier."""

    name = "sed"

    def schedule(self, dests, pkt=None, now=None):
        least = None
        loh = lw = 0
        for d in reversed(dests):
            if d.overloaded:
                continue
            if least is None:
                if d.weight > 0:
                    least, loh, lw = d, d.activeconns + 1, d.weight
                continue
            doh = d.activeconns + 1
            if loh * d.weight > doh * lw:
                least, loh, lw = d, doh, d.weight
        return least


@register
class NeverQueue(Scheduler):
    """ip_vs_nq.c: the first idle server (activeconns == 0) in list order,
    else as sed."""

    name = "nq"

    def schedule(self, dests, pkt=None, now=None):
        least = None
        loh = lw = 0
        for d in reversed(dests):
            w = d.weight
            if d.overloaded or not w:
                continue
            if d.activeconns == 0:
                return d
            doh = d.activeconns + 1
            if least is None or loh * w > doh * lw:
                least, loh, lw = d, doh, w
        return least


@register
class WeightedFailover(Scheduler):
    """ip_vs_fo.c: the available server with the highest weight; the first in
    list order among equals."""

    name = "fo"

    def schedule(self, dests, pkt=None, now=None):
        best = None
        bw = 0
        for d in reversed(dests):
            w = d.weight
            if w > bw and not d.overloaded:
                best, bw = d, w
        return best


@register
class WeightedOverflow(Scheduler):
    """ip_vs_ovf.c: the highest-weight server whose activeconns does not
    exceed its weight (first in list order among equals)."""

    name = "ovf"

    def schedule(self, dests, pkt=None, now=None):
        best = None
        bw = 0
        for d in reversed(dests):
            w = d.weight
            if d.overloaded or w == 0 or d.activeconns > w:
                continue
            if w > bw:
                best, bw = d, w
        return best
