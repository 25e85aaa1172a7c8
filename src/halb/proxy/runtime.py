"""The proxy engine's live objects for the table: a service and a real server
as the data path sees them (scheduler, counters, estimators, listener), the
active/inactive count transitions, and the listening socket of a service."""
from __future__ import annotations

import copy
import socket

from halb.model import Dest
from halb.proxy.estimator import Estimator
from halb.sched import update_overload

IP_FREEBIND = getattr(socket, "IP_FREEBIND", 15)


class DestRT:
    """A real server's live object (persists across table edits)."""

    __slots__ = ("dest", "svc", "est", "removed")

    def __init__(self, dest: Dest, svc: "SvcRT", now: float):
        self.dest = dest
        self.svc = svc
        self.est = Estimator(dest.stats, now)
        self.removed = False


class SvcRT:
    __slots__ = ("key", "cfg", "sched", "dests", "dlist", "stats", "rates", "est", "listener",
                 "flows", "nodest_logged", "sig")

    def __init__(self, cfg, now: float):
        self.key = cfg.key
        self.cfg = cfg
        self.sched = None
        self.dests: dict[tuple, DestRT] = {}
        self.dlist: list[Dest] = []
        self.stats = copy.deepcopy(cfg.stats)
        self.rates = cfg.rates
        self.est = Estimator(self.stats, now)
        self.listener = None
        self.flows: dict[tuple, "UdpFlow"] = {}
        self.nodest_logged = 0.0
        self.sig = None

    def by_dest(self, d: Dest) -> DestRT:
        return self.dests[(d.addr, d.port)]


def conn_inactive(drt: DestRT) -> None:
    d = drt.dest
    d.inactconns += 1
    update_overload(d)


def active_to_inactive(drt: DestRT) -> None:
    d = drt.dest
    d.activeconns -= 1
    d.inactconns += 1
    update_overload(d)


def inactive_to_active(drt: DestRT) -> None:
    d = drt.dest
    d.inactconns -= 1
    d.activeconns += 1
    update_overload(d)


def inactive_gone(drt: DestRT) -> None:
    d = drt.dest
    d.inactconns -= 1
    update_overload(d)


class Listener:
    """A virtual service's bound socket, read by the event loop."""

    def __init__(self, px: "ProxyDaemon", svc: SvcRT, sock):
        self.px = px
        self.svc = svc
        self.sock = sock
        self.fd = sock.fileno()

    def close(self):
        self.px.loop.remove_reader(self.fd)
        self.sock.close()


def bind_socket(key) -> socket.socket:
    """The bound (and, for TCP, listening) non-blocking socket of a virtual service."""
    fam = socket.AF_INET6 if key.af == 6 else socket.AF_INET
    typ = socket.SOCK_STREAM if key.proto == "tcp" else socket.SOCK_DGRAM
    s = socket.socket(fam, typ)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_IP, IP_FREEBIND, 1)
        s.bind((key.addr, key.port))
        if typ == socket.SOCK_STREAM:
            # inherited by every accepted socket: no Nagle delay on relayed segments
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.listen(4096)
        s.setblocking(False)
    except OSError:
        s.close()
        raise
    return s
