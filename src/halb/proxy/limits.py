"""The proxy engine's resource limits: file descriptors and connection caps.

Every relayed TCP connection holds two descriptors (client and real-server
sockets, plus a pipe pair per direction while splicing), every UDP flow one.
Left alone, one client holding 600 idle connections (or sending from 1,200
source ports) exhausts a 1,024 descriptor limit and everything stops, the
control socket included. So:

- at start the soft RLIMIT_NOFILE is raised to the hard one (at most 2^20);
- CONTROL_RESERVE descriptors are never given to relays: the control socket,
  its clients, logging and new listeners always have one;
- `maxconn` caps TCP relays + UDP flows together (HAProxy's global maxconn;
  default: what the descriptor budget allows), `maxconn_per_source` caps what
  one client address holds (default a quarter of maxconn; 0 = no cap);
- at a cap a new TCP connection is reset; a new UDP flow takes the place of
  the least recently used one (of the same client when it is that client's
  cap), so an idle flood ages out instead of blocking the service.
Reaching a cap is logged (at most once a second per cause) and counted; the
figures are in `halb proxy status` and on the version line of `ipvsadm -L`.

The class below is the pure accounting (no sockets, no clock), driven by the
daemon."""
from __future__ import annotations

import collections
import os
import resource

CONTROL_RESERVE = 16   # descriptors kept for the control socket, its clients and logging
NOFILE_MAX = 1 << 20   # never raise the soft limit past this (as systemd's default hard limit)
MAXCONN_MAX = 10_000_000


def raise_nofile(cap: int = NOFILE_MAX) -> tuple[int, int]:
    """Raise the soft descriptor limit to the hard one (at most `cap`):
    (before, after)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = cap if hard == resource.RLIM_INFINITY else min(hard, cap)
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            return soft, want
        except (ValueError, OSError):
            pass
    return soft, soft


def open_fds() -> int:
    try:
        return len(os.listdir("/proc/self/fd")) - 1  # the listing's own descriptor
    except OSError:
        return 16


class Limits:
    """Descriptor budget and connection caps (pure accounting).

    nofile: the soft limit; base: descriptors the process held before any
    relay (event loop, pid file, listeners counted separately by `listeners`)."""

    def __init__(self, nofile: int, base: int, maxconn: int | None = None,
                 per_source: int | None = None):
        self.nofile = nofile
        self.base = base
        self.listeners = 0
        self.fds = 0               # held by relays, flows and pipes
        self.conns = 0             # TCP relays + UDP flows
        self.by_source: dict[str, int] = collections.Counter()
        fit = max(1, self.budget() // 2)
        self.auto = maxconn is None
        self.explicit = maxconn is not None or per_source is not None
        self.maxconn = fit if maxconn is None else maxconn
        self.per_source = max(1, self.maxconn // 4) if per_source is None else per_source
        self.refused_maxconn = 0
        self.refused_source = 0
        self.refused_fds = 0
        self.evicted = 0

    def budget(self) -> int:
        """Descriptors relays may hold in all."""
        return self.nofile - self.base - self.listeners - CONTROL_RESERVE

    def fit(self, fds: int) -> bool:
        return self.fds + fds <= self.budget()

    def check(self, addr: str, fds: int) -> str | None:
        """None when a new connection from `addr` needing `fds` descriptors may
        open, else why not: "maxconn", "fds" or "source"."""
        if self.conns >= self.maxconn:
            return "maxconn"
        if not self.fit(fds):
            return "fds"
        if self.per_source and self.by_source.get(addr, 0) >= self.per_source:
            return "source"
        return None

    def count_refusal(self, why: str) -> None:
        if why == "maxconn":
            self.refused_maxconn += 1
        elif why == "fds":
            self.refused_fds += 1
        else:
            self.refused_source += 1

    def opened(self, addr: str, fds: int) -> None:
        self.conns += 1
        self.fds += fds
        self.by_source[addr] = self.by_source.get(addr, 0) + 1

    def closed(self, addr: str, fds: int) -> None:
        self.conns -= 1
        self.fds -= fds
        n = self.by_source.get(addr, 0) - 1
        if n > 0:
            self.by_source[addr] = n
        else:
            self.by_source.pop(addr, None)

    def message(self, why: str, addr: str) -> str:
        if why == "maxconn":
            return (f"reached the maximum connection limit (maxconn {self.maxconn}): "
                    f"new connections refused")
        if why == "fds":
            return (f"reached the process descriptor limit (ulimit -n {self.nofile}, "
                    f"{self.fds} held by relays): new connections refused")
        return (f"client {addr} reached its connection limit (maxconn-per-source "
                f"{self.per_source}): new connections from it refused")

    def as_dict(self) -> dict:
        return {"nofile": self.nofile, "reserve": CONTROL_RESERVE, "maxconn": self.maxconn,
                "maxconn_per_source": self.per_source, "conns": self.conns, "fds": self.fds,
                "fd_budget": self.budget(), "refused_maxconn": self.refused_maxconn,
                "refused_source": self.refused_source, "refused_fds": self.refused_fds,
                "udp_evicted": self.evicted, "explicit": self.explicit}


def summary(lim: dict) -> str:
    """One line for `ipvsadm -L` and `halb proxy status`."""
    per = lim["maxconn_per_source"] or "no cap"
    refused = lim["refused_maxconn"] + lim["refused_source"] + lim["refused_fds"]
    return (f"maxconn {lim['maxconn']} (per source {per}), {lim['conns']} in use, "
            f"{refused} refused, {lim['udp_evicted']} UDP flows evicted")
