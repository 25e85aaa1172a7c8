"""Who may read the monitoring: gmetad.conf's `trusted_hosts` / `all_trusted`
(Ganglia: those hosts besides localhost) for halb gmetad's web front end and
API, and `halb gmond --allow` for gmond's XML dump (gmond.conf's
tcp_accept_channel acl). Entries are addresses, networks (10.0.0.0/24) or
host names (resolved once, at start). Pure apart from that resolution."""
from __future__ import annotations

import ipaddress
import socket

LOCALHOST = ("127.0.0.1", "::1")


class Access:
    """allow None: anyone. Otherwise the listed entries (plus localhost when
    `localhost` is True, as Ganglia's gmetad always trusts it)."""

    def __init__(self, allow: list[str] | None, *, localhost: bool = True, resolve=None):
        self.open = allow is None
        self.entries = list(allow or [])
        self.nets: list = []
        self.unresolved: list[str] = []
        if localhost and not self.open:
            self.nets += [ipaddress.ip_network(a) for a in LOCALHOST]
        resolve = resolve or _resolve
        for e in self.entries:
            try:
                self.nets.append(ipaddress.ip_network(e, strict=False))
                continue
            except ValueError:
                pass
            addrs = resolve(e)
            if not addrs:
                self.unresolved.append(e)
            self.nets += [ipaddress.ip_network(a) for a in addrs]

    def allows(self, peer: str | None) -> bool:
        if self.open:
            return True
        if not peer:
            return False
        try:
            ip = ipaddress.ip_address(peer.split("%", 1)[0])
        except ValueError:
            return False
        if ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip.version == n.version and ip in n for n in self.nets)

    def describe(self) -> str:
        return "anyone" if self.open else ", ".join(self.entries) or "localhost only"


def _resolve(name: str) -> list[str]:
    try:
        return sorted({ai[4][0].split("%", 1)[0] for ai in socket.getaddrinfo(name, None)})
    except (OSError, UnicodeError):
        return []
