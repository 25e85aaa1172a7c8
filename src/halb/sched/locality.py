"""Locality-based schedulers: lblc and lblcr (ip_vs_lblc.c, ip_vs_lblcr.c).

Both keep a table keyed by the packet's destination address (IPVS's
iph->daddr) with "last use" times; time is passed in (`now`, seconds,
default time.monotonic()).  The kernel's garbage-collection timer (every 60 s:
a full expiry check every 30th tick, else a partial one when the table holds
more than 16 x 1024 entries) is replayed from `now` on each call.

Servers removed from the service stay referenced by the table as
"unavailable" (the kernel keeps them in its trash), and become usable again
if the same address:port is added back.
"""
from __future__ import annotations

from halb.model import Dest
from halb.sched import Scheduler, need_packet, now_default, register
from halb.sched.hashing import addr_fold, hash_32
from halb.sched.simple import conn_overhead, wlc_pick

TAB_BITS = 10  # CONFIG_IP_VS_LBLC_TAB_BITS / CONFIG_IP_VS_LBLCR_TAB_BITS default
CHECK_EXPIRE_INTERVAL = 60.0
ENTRY_TIMEOUT = 6 * 60.0
DEFAULT_EXPIRATION = 24 * 60 * 60.0  # net.ipv4.vs.lblc_expiration / lblcr_expiration
COUNT_FOR_FULL_EXPIRATION = 30
MAX_CATCHUP_TICKS = 10000


def locality_overloaded(dest: Dest, dests: list[Dest]) -> bool:
    """is_overloaded() of lblc/lblcr: more active connections than its weight
    while some server of the service is below half of its weight."""
    if dest.activeconns > dest.weight:
        for d in dests:
            if d.activeconns * 2 < d.weight:
                return True
    return False


class _LocalityBase(Scheduler):
    expiration = DEFAULT_EXPIRATION
    bits = TAB_BITS

    def __init__(self, service=None, expiration: float | None = None):
        super().__init__(service)
        if expiration is not None:
            self.expiration = float(expiration)
        self.max_size = (1 << self.bits) * 16
        self.entries: dict[str, object] = {}  # daddr -> entry
        self.rover = 0
        self.counter = 1
        self._next_tick: float | None = None
        self.current: dict[tuple[str, int], Dest] = {}  # ident -> Dest in the service
        self.known: dict[tuple[str, int], Dest] = {}  # ident -> last Dest object seen

    def update(self, dests: list[Dest]) -> None:
        self.current = {d.ident: d for d in dests}
        self.known.update(self.current)
        self._forget_unreferenced()

    def _forget_unreferenced(self) -> None:
        """Drop `known` entries that neither the service nor the table use."""
        if len(self.known) <= 2 * len(self.current) + 64:
            return
        used = set(self.current)
        for en in self.entries.values():
            used.update(self._entry_idents(en))
        self.known = {k: v for k, v in self.known.items() if k in used}

    def _entry_idents(self, en) -> list:
        raise NotImplementedError

    # -- garbage collection (ip_vs_lblc(r)_check_expire) --------------------
    def _timers(self, now: float) -> None:
        if self._next_tick is None:
            self._next_tick = now + CHECK_EXPIRE_INTERVAL
            return
        ticks = 0
        while now >= self._next_tick:
            ticks += 1
            if ticks > MAX_CATCHUP_TICKS:  # a very long gap: one full check now
                self._full_check(now)
                self.counter = 1
                self._next_tick = now + CHECK_EXPIRE_INTERVAL
                return
            self._check_expire(self._next_tick)
            self._next_tick += CHECK_EXPIRE_INTERVAL

    def _check_expire(self, t: float) -> None:
        if self.counter % COUNT_FOR_FULL_EXPIRATION == 0:
            self._full_check(t)
            self.counter = 1
            return
        if len(self.entries) <= self.max_size:
            self.counter += 1
            return
        goal = (len(self.entries) - self.max_size) * 4 // 3
        goal = min(goal, self.max_size // 2)
        size = 1 << self.bits
        buckets: dict[int, list[str]] = {}
        for addr in self.entries:
            buckets.setdefault(hash_32(addr_fold(addr), self.bits), []).append(addr)
        j = self.rover
        for _ in range(size):
            j = (j + 1) & (size - 1)
            for addr in buckets.get(j, ()):
                if t < self.entries[addr].lastuse + ENTRY_TIMEOUT:
                    continue
                del self.entries[addr]
                goal -= 1
            if goal <= 0:
                break
        self.rover = j

    def _full_check(self, t: float) -> None:
        exp = self.expiration
        stale = [a for a, en in self.entries.items() if en.lastuse + exp <= t]
        for a in stale:
            del self.entries[a]

    def _available(self, d: Dest) -> Dest | None:
        """The service's current Dest for d's identity (None: removed)."""
        return self.current.get(d.ident)


class _LblcEntry:
    __slots__ = ("dest", "lastuse")

    def __init__(self, dest: Dest, lastuse: float):
        self.dest = dest
        self.lastuse = lastuse


@register
class LocalityLeastConnection(_LocalityBase):
    """ip_vs_lblc.c: the server last used for this destination address, unless
    it was removed, has weight 0, or is "overloaded" (more active connections
    than its weight while another server is under half its weight); then a
    weighted-least-connection pick, which replaces the table entry."""

    name = "lblc"

    def _entry_idents(self, en) -> list:
        return [en.dest.ident]

    def schedule(self, dests, pkt=None, now=None):
        daddr = need_packet(pkt, self.name).dst
        now = now_default(now)
        self._timers(now)
        en = self.entries.get(daddr)
        if en is not None:
            en.lastuse = now
            d = self._available(en.dest)
            if d is not None and d.weight > 0 and not locality_overloaded(d, dests):
                return d
        d = wlc_pick(dests)
        if d is None:
            return None
        if en is None or en.dest.ident != d.ident:
            self.entries.pop(daddr, None)
            self.entries[daddr] = _LblcEntry(d, now)
            self.known[d.ident] = d
        return d


class _DestSet:
    __slots__ = ("idents", "lastmod", "lastuse")

    def __init__(self, now: float):
        self.idents: list[tuple[str, int]] = []  # newest first (list_add_rcu)
        self.lastmod = now
        self.lastuse = now

    def insert(self, ident, now: float, check: bool) -> None:
        if check and ident in self.idents:
            return
        self.idents.insert(0, ident)
        self.lastmod = now

    def erase(self, ident, now: float) -> None:
        if ident in self.idents:
            self.idents.remove(ident)
            self.lastmod = now


@register
class LocalityLeastConnectionReplicated(_LocalityBase):
    """ip_vs_lblcr.c: each destination address maps to a set of servers; the
    weighted-least-connection available member is used unless missing or
    "overloaded", then a service-wide weighted-least-connection pick is added
    to the set.  When the set has more than one member and was not modified
    for `expiration` seconds, its weighted-most-loaded member is dropped."""

    name = "lblcr"

    def _entry_idents(self, en) -> list:
        return list(en.idents)

    def _set_min(self, s: _DestSet) -> Dest | None:
        least = None
        loh = lw = 0
        for ident in s.idents:
            cur = self.current.get(ident)
            d = cur if cur is not None else self.known.get(ident)
            if d is None or d.overloaded:
                continue
            if least is None:
                if d.weight > 0 and cur is not None:
                    least, loh, lw = d, conn_overhead(d), d.weight
                continue
            doh = conn_overhead(d)
            if loh * d.weight > doh * lw and cur is not None:
                least, loh, lw = d, doh, d.weight
        return least

    def _set_max(self, s: _DestSet):
        most = None
        moh = mw = 0
        for ident in s.idents:
            d = self.current.get(ident) or self.known.get(ident)
            if d is None:
                continue
            if most is None:
                if d.weight > 0:
                    most, moh, mw = ident, conn_overhead(d), d.weight
                continue
            doh = conn_overhead(d)
            if moh * d.weight < doh * mw and d.weight > 0:
                most, moh, mw = ident, doh, d.weight
        return most

    def schedule(self, dests, pkt=None, now=None):
        daddr = need_packet(pkt, self.name).dst
        now = now_default(now)
        self._timers(now)
        s = self.entries.get(daddr)
        if s is not None:
            s.lastuse = now
            d = self._set_min(s)
            if len(s.idents) > 1 and now > s.lastmod + self.expiration:
                m = self._set_max(s)
                if m is not None:
                    s.erase(m, now)
            if d is not None and not locality_overloaded(d, dests):
                return d
            d = wlc_pick(dests)
            if d is None:
                return None
            s.insert(d.ident, now, True)
            self.known[d.ident] = d
            return d
        d = wlc_pick(dests)
        if d is None:
            return None
        s = _DestSet(now)
        s.insert(d.ident, now, False)
        self.entries[daddr] = s
        self.known[d.ident] = d
        return d
