"""Persistence templates (ipvsadm -p / -M), as IPVS keeps them. Pure: time is
passed in, destinations are opaque objects supplied by the caller.

A template maps (service, client network) to the real server chosen for the
first connection of that network. Like the kernel's template connection it
lives `timeout` seconds after its last use; when it would expire while
connections it controls are still open, it is re-armed (ip_vs_conn_expire:
"n_control" keeps a template alive).
"""
from __future__ import annotations

import ipaddress
from functools import lru_cache


@lru_cache(maxsize=64)
def _mask_int(netmask: str, version: int) -> int:
    if version == 6:
        text = netmask.lstrip("/")
        bits = int(text) if text.isdigit() else 128
        return ((1 << 128) - 1) ^ ((1 << (128 - bits)) - 1)
    return int(ipaddress.IPv4Address(netmask))


def client_network(caddr: str, netmask: str) -> str:
    """The client's address masked with the service's -M netmask."""
    ip = ipaddress.ip_address(caddr)
    masked = int(ip) & _mask_int(netmask, ip.version)
    return str(ipaddress.ip_address(masked) if ip.version == 4 else ipaddress.IPv6Address(masked))


class Template:
    __slots__ = ("key", "cnet", "dest", "last_use", "nconns")

    def __init__(self, key, cnet: str, dest, now: float):
        self.key = key
        self.cnet = cnet
        self.dest = dest
        self.last_use = now
        self.nconns = 0

    def expires(self, now: float, timeout: float) -> float:
        return min(float(timeout), max(0.0, timeout - (now - self.last_use)))


class PersistTable:
    def __init__(self):
        self.entries: dict[tuple, Template] = {}

    def __len__(self) -> int:
        return len(self.entries)

    def lookup(self, key, cnet: str, now: float, timeout: float) -> Template | None:
        """The live template for this client network, or None (an expired one
        with no controlled connection is dropped)."""
        t = self.entries.get((key, cnet))
        if t is None:
            return None
        if now - t.last_use >= timeout and t.nconns == 0:
            del self.entries[(key, cnet)]
            return None
        return t

    def create(self, key, cnet: str, dest, now: float) -> Template:
        t = Template(key, cnet, dest, now)
        self.entries[(key, cnet)] = t
        return t

    def drop(self, t: Template) -> None:
        if self.entries.get((t.key, t.cnet)) is t:
            del self.entries[(t.key, t.cnet)]

    def use(self, t: Template, now: float) -> None:
        """A connection starts under t: refresh it."""
        t.last_use = now
        t.nconns += 1

    def release(self, t: Template, now: float) -> None:
        """A connection under t ended: activity refreshes the template."""
        t.nconns = max(0, t.nconns - 1)
        t.last_use = now

    def expire(self, now: float, timeout_of) -> list[Template]:
        """Remove and return the templates whose time is up. timeout_of(key)
        gives the service's current timeout (None: the service is gone)."""
        gone = []
        for k, t in list(self.entries.items()):
            timeout = timeout_of(t.key)
            if timeout is None and t.nconns == 0:
                gone.append(t)
            elif timeout is not None and now - t.last_use >= timeout:
                if t.nconns:
                    t.last_use = now  # re-armed: it still controls connections
                else:
                    gone.append(t)
        for t in gone:
            del self.entries[(t.key, t.cnet)]
        return gone

    def drop_key(self, key) -> list[Template]:
        gone = [t for t in self.entries.values() if t.key == key]
        for t in gone:
            del self.entries[(t.key, t.cnet)]
        return gone
