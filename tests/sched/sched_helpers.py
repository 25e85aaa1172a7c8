"""Helpers for the scheduler tests.

`mk(name, weights)` builds a service whose real servers are added in table
order A, B, C, ... (10.0.0.1, 10.0.0.2, ...), port 80, with the given weights,
and a scheduler for it.  Remember: the kernel keeps its list newest first, so
IPVS walks C, B, A.
"""
from __future__ import annotations

import pytest

from halb.model import Dest, Service, ServiceKey
from halb.sched import Packet, make_scheduler

NAMES = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def addr_of(i: int) -> str:
    return f"10.0.{i // 250}.{i % 250 + 1}"


def name_of(d) -> str | None:
    if d is None:
        return None
    _, b, c = (int(x) for x in d.addr.split(".")[1:])
    return NAMES[b * 250 + c - 1]


class Rig:
    def __init__(self, scheduler: str, weights, flags=()):
        self.svc = Service(ServiceKey("tcp", "192.0.2.1", 80), scheduler=scheduler, flags=tuple(flags))
        self.dests = [Dest(addr_of(i), 80, weight=w) for i, w in enumerate(weights)]
        self.sched = make_scheduler(self.svc)
        self.sched.update(self.dests)

    def __getitem__(self, name: str) -> Dest:
        for d in self.dests:
            if name_of(d) == name:
                return d
        raise KeyError(name)

    def pick(self, pkt=None, now=None) -> str | None:
        if pkt is None:
            pkt = Packet("198.51.100.7", 40000, "192.0.2.1", 80)
        return name_of(self.sched.schedule(self.dests, pkt, now=now))

    def picks(self, n: int, **kw) -> str:
        return "".join(self.pick(**kw) or "-" for _ in range(n))

    def add(self, weight=1) -> Dest:
        # the lowest address never used in this service
        used = {x.addr for x in self.dests} | getattr(self, "_removed", set())
        i = 0
        while addr_of(i) in used:
            i += 1
        d = Dest(addr_of(i), 80, weight=weight)
        self.dests.append(d)
        self.sched.update(self.dests)
        return d

    def remove(self, name: str) -> None:
        d = self[name]
        self.dests.remove(d)
        self._removed = getattr(self, "_removed", set()) | {d.addr}
        self.sched.update(self.dests)

    def edit(self, name: str, **changes) -> None:
        d = self[name]
        for k, v in changes.items():
            setattr(d, k, v)
        self.sched.update(self.dests)

    def load(self, **conns) -> None:
        """load(A=(active, inactive), ...)"""
        for name, (act, inact) in conns.items():
            self[name].activeconns = act
            self[name].inactconns = inact


@pytest.fixture
def rig():
    return Rig
