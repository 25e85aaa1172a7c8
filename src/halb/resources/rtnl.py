"""The few rtnetlink requests IPaddr2 needs, on one plain netlink socket.

IPv4 addresses only: list them (RTM_GETADDR dump), add one, delete one.
Interface names come from if_nameindex(). Written by hand instead of
pyroute2 because a takeover needs two small requests, and pyroute2 costs
about 25 MB of memory and milliseconds per request in the process that
holds the VIP's agents.
"""
from __future__ import annotations

import errno
import os
import socket
import struct

NETLINK_ROUTE = 0
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK = 0x1, 0x2, 0x4
NLM_F_DUMP = 0x300
NLM_F_EXCL, NLM_F_CREATE = 0x200, 0x400
IFA_ADDRESS, IFA_LOCAL = 1, 2

_NLMSG = struct.Struct("=IHHII")     # len, type, flags, seq, pid
_IFADDR = struct.Struct("=BBBBI")    # family, prefixlen, flags, scope, index
_RTA = struct.Struct("=HH")          # len, type


class NetlinkError(OSError):
    """A request the kernel refused; `code` is the errno (EEXIST, ENODEV...)."""

    def __init__(self, code: int, what: str = ""):
        self.code = code
        super().__init__(code, f"{what}: {os.strerror(code)}" if what else os.strerror(code))


def _rta(kind: int, data: bytes) -> bytes:
    n = _RTA.size + len(data)
    return _RTA.pack(n, kind) + data + b"\0" * ((4 - n % 4) % 4)


def link_names() -> dict[int, str]:
    """{ifindex: name} of this network namespace's interfaces."""
    return dict(socket.if_nameindex())


def link_index(name: str) -> int | None:
    try:
        return socket.if_nametoindex(name)
    except OSError:
        return None


class RtNetlink:
    """One NETLINK_ROUTE socket; requests are synchronous and numbered."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
        self.sock.bind((0, 0))
        self.seq = 0

    def close(self):
        self.sock.close()

    def _request(self, mtype: int, flags: int, body: bytes) -> list[tuple[int, bytes]]:
        """Send one request; return [(type, payload)] of the answer (a dump: every part)."""
        self.seq += 1
        seq = self.seq
        self.sock.send(_NLMSG.pack(_NLMSG.size + len(body), mtype, flags | NLM_F_REQUEST, seq, 0) + body)
        out = []
        while True:
            data = self.sock.recv(65536)
            off = 0
            while off + _NLMSG.size <= len(data):
                ln, typ, fl, mseq, _pid = _NLMSG.unpack_from(data, off)
                if ln < _NLMSG.size:
                    raise NetlinkError(errno.EPROTO, "bad netlink message")
                payload = data[off + _NLMSG.size:off + ln]
                off += (ln + 3) & ~3
                if mseq != seq:
                    continue            # an answer to an earlier, abandoned request
                if typ == NLMSG_ERROR:
                    (code,) = struct.unpack_from("=i", payload, 0)
                    if code:
                        raise NetlinkError(-code)
                    return out          # an ACK
                if typ == NLMSG_DONE:
                    return out
                out.append((typ, payload))
                if not fl & NLM_F_MULTI:
                    return out

    def addresses(self, index: int | None = None) -> list[tuple[int, str, int]]:
        """IPv4 addresses as (ifindex, address, prefixlen), of one interface or all."""
        res = []
        for typ, p in self._request(RTM_GETADDR, NLM_F_DUMP, _IFADDR.pack(socket.AF_INET, 0, 0, 0, 0)):
            if typ != RTM_NEWADDR or len(p) < _IFADDR.size:
                continue
            _fam, plen, _fl, _scope, idx = _IFADDR.unpack_from(p, 0)
            if index is not None and idx != index:
                continue
            attrs = {}
            off = _IFADDR.size
            while off + _RTA.size <= len(p):
                alen, atype = _RTA.unpack_from(p, off)
                if alen < _RTA.size:
                    break
                attrs[atype] = p[off + _RTA.size:off + alen]
                off += (alen + 3) & ~3
            raw = attrs.get(IFA_LOCAL) or attrs.get(IFA_ADDRESS)
            if raw is not None and len(raw) == 4:
                res.append((idx, socket.inet_ntoa(raw), plen))
        return res

    def _addr(self, mtype, flags, index, address, prefixlen):
        ip = socket.inet_aton(address)
        body = _IFADDR.pack(socket.AF_INET, prefixlen, 0, 0, index) + _rta(IFA_LOCAL, ip) + _rta(IFA_ADDRESS, ip)
        self._request(mtype, flags | NLM_F_ACK, body)

    def add_address(self, index: int, address: str, prefixlen: int) -> None:
        """`ip addr add ADDRESS/PREFIXLEN dev INDEX`; NetlinkError(EEXIST) if it is there."""
        self._addr(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, index, address, prefixlen)

    def del_address(self, index: int, address: str, prefixlen: int) -> None:
        self._addr(RTM_DELADDR, 0, index, address, prefixlen)
