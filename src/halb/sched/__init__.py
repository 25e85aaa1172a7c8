"""Every IPVS scheduler as pure, deterministic code (no I/O, no clock unless
passed in), following the Linux kernel's net/netfilter/ipvs/ip_vs_*.c.

Interface used by the engines::

    sched = make_scheduler(service)        # by service.scheduler / service.flags
    sched.update(service.dests)            # once, and after every dest change
    dest = sched.schedule(service.dests, Packet(src, sport, dst, dport, "tcp"))
    # dest is one of the Dest objects passed in, or None (no server available)

The hashing schedulers (dh, sh, mh) expose their bucket table as `.table`
(bucket -> index into the `dests` list of the last update(); mh: None when no
server has a weight), for engines that program it into a data plane.

`error_line(service, sched)` gives the kernel's log line for a None result.

Engines keep each Dest's live `activeconns` / `inactconns` current and call
`update_overload(dest)` whenever those counts change (the kernel's
IP_VS_DEST_F_OVERLOAD rule), so `dest.overloaded` is what schedulers skip.

List order.  `dests` is passed in table order (oldest first, as `Table`
appends).  The kernel inserts a new real server at the *head* of
svc->destinations (list_add), so its walk order is newest first; every
scheduler here walks the list in that kernel order, so ties are broken exactly
as the kernel breaks them (e.g. rr starts with the most recently added server,
fo/lc/wlc keep the newest of equal candidates).
"""
from __future__ import annotations

import time
from math import gcd
from dataclasses import dataclass

from halb.errors import IpvsError
from halb.model import Dest, Service, SCHEDULERS

__all__ = ["Packet", "Scheduler", "make_scheduler", "is_overloaded", "update_overload",
           "carry_overload", "error_line", "SCHEDULERS"]

NO_DEST = "no destination available"


@dataclass(frozen=True)
class Packet:
    """What a scheduler may look at for a new connection."""

    src: str
    sport: int
    dst: str
    dport: int
    proto: str = "tcp"


class Scheduler:
    """Base class.  Subclasses implement `schedule` and, when they keep state
    derived from the destination list, `update`."""

    name = ""
    # why the last schedule() returned None, in the kernel's words
    error = NO_DEST

    def __init__(self, service: Service | None = None):
        self.flags: tuple[str, ...] = tuple(service.flags) if service is not None else ()

    def update(self, dests: list[Dest]) -> None:
        """The service's destination list changed (or first use)."""

    def schedule(self, dests: list[Dest], pkt: Packet | None = None, now: float | None = None) -> Dest | None:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


# --------------------------------------------------------------------------
# The overload flag (ip_vs_conn.c: ip_vs_bind_dest / ip_vs_unbind_dest;
# ip_vs_ctl.c: __ip_vs_update_dest)


def is_overloaded(dest: Dest) -> bool:
    return dest.overloaded


def update_overload(dest: Dest) -> None:
    """Apply the kernel's IP_VS_DEST_F_OVERLOAD rule after dest's connection
    counts changed.  total = activeconns + inactconns (ip_vs_dest_totalconns).

    - set when u_threshold != 0 and total >= u_threshold (on bind);
    - once set, cleared (on unbind) when: l_threshold != 0 and total < l_threshold;
      else u_threshold != 0 and total*4 < u_threshold*3 (below 3/4 of upper);
      else (no thresholds at all) immediately.
    Between the two levels the flag keeps its value (hysteresis).
    """
    total = dest.activeconns + dest.inactconns
    u = dest.u_threshold
    if u and total >= u:
        dest.overloaded = True
        return
    if not dest.overloaded:
        return
    low = dest.l_threshold
    if low:
        if total < low:
            dest.overloaded = False
    elif u:
        if total * 4 < u * 3:
            dest.overloaded = False
    else:
        dest.overloaded = False


def carry_overload(old: Dest, new: Dest) -> None:
    """An edit (-e) replaced `old` by `new`: the kernel keeps the flag unless
    the new upper threshold is 0 or higher than the old one."""
    new.overloaded = old.overloaded
    if new.u_threshold == 0 or new.u_threshold > old.u_threshold:
        new.overloaded = False


def error_line(service: Service, sched: Scheduler) -> str:
    """The kernel's log line when a scheduler finds no server
    (ip_vs_scheduler_err), e.g. "rr: TCP 10.0.0.1:80 - no destination available"."""
    k = service.key
    if k.proto == "fwm":
        where = f"FWM {k.fwmark} 0x{k.fwmark:08X}"
    elif ":" in k.addr:
        where = f"{k.proto.upper()} [{k.addr}]:{k.port}"
    else:
        where = f"{k.proto.upper()} {k.addr}:{k.port}"
    return f"{sched.name}: {where} - {sched.error}"


# --------------------------------------------------------------------------

_REGISTRY: dict[str, type[Scheduler]] = {}


def register(cls: type[Scheduler]) -> type[Scheduler]:
    _REGISTRY[cls.name] = cls
    return cls


def make_scheduler(service: Service) -> Scheduler:
    """A fresh scheduler for service.scheduler, honouring service.flags."""
    cls = _REGISTRY.get(service.scheduler)
    if cls is None:
        raise IpvsError("Scheduler or persistence engine not found")
    return cls(service)


def now_default(now: float | None) -> float:
    return time.monotonic() if now is None else now


def need_packet(pkt: Packet | None, name: str) -> Packet:
    """The packet, which the hashing and locality schedulers cannot do without."""
    if pkt is None:
        raise ValueError(f"the {name} scheduler needs the packet's addresses")
    return pkt


def gcd_max(weights) -> tuple[int, int]:
    """(gcd of the positive weights or 0 when none, largest weight), as
    ip_vs_wrr_gcd_weight / ip_vs_mh_gcd_weight and the max-weight walks."""
    g = 0
    mx = 0
    for w in weights:
        if w > 0:
            g = gcd(w, g) if g > 0 else w
        if w > mx:
            mx = w
    return g, mx


# the scheduler modules register themselves (they import the names above)
from halb.sched import hashed, locality, simple  # noqa: E402,F401
