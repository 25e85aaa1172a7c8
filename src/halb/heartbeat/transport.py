"""UDP links for beats: bcast, mcast and ucast, as ha.cf declares them.

One socket per (interface, port) for bcast/ucast and one per multicast
group; every socket is bound to its interface (SO_BINDTODEVICE) so the
link a beat came in on is known.
"""
from __future__ import annotations

import ipaddress
import socket
import struct

from halb.errors import HalbError

SO_BINDTODEVICE = getattr(socket, "SO_BINDTODEVICE", 25)


class LinkError(HalbError):
    pass


def iface_ipv4(dev: str) -> tuple[str, int, str]:
    """(address, prefixlen, broadcast) of the interface's primary IPv4 address (ioctl)."""
    import fcntl

    def ioctl(req):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            return fcntl.ioctl(s.fileno(), req, struct.pack("256s", dev.encode()[:15]))
        finally:
            s.close()
    try:
        addr = socket.inet_ntoa(ioctl(0x8915)[20:24])        # SIOCGIFADDR
        mask = socket.inet_ntoa(ioctl(0x891B)[20:24])        # SIOCGIFNETMASK
    except OSError as e:
        if e.errno == 19:
            raise LinkError(f"interface {dev} does not exist on this node") from None
        raise LinkError(f"interface {dev} has no IPv4 address") from None
    net = ipaddress.ip_network(f"{addr}/{mask}", strict=False)
    try:
        brd = socket.inet_ntoa(ioctl(0x8919)[20:24])         # SIOCGIFBRDADDR
    except OSError:
        brd = "0.0.0.0"
    if brd == "0.0.0.0":
        brd = str(net.broadcast_address)
    return addr, net.prefixlen, brd


SO_RCVBUFFORCE = 33
SO_RXQ_OVFL = 40                 # each datagram carries the socket's count of datagrams dropped so far
RCVBUF = 8 << 20                 # room for a burst while the beat thread is held (a junk flood, a stall)


class Channel:
    """A socket plus where beats sent on it go.

    `sources`: for ucast, the peers' configured addresses: a datagram from any
    other source is dropped before its MAC is computed (a flood of forged
    datagrams costs a recvmsg each, not an HMAC)."""

    kind = "udp"

    def __init__(self, name: str, sock: socket.socket, dests: list, sources: set | None = None):
        self.name = name          # the interface: links are named after it
        self.sock = sock
        self.dests = dests
        self.sources = sources    # None: any source (bcast, mcast)
        self.dropped = 0          # the kernel's overflow count (SO_RXQ_OVFL) last seen
        self.rcvbuf = 0

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, data: bytes) -> int:
        errors = 0
        for d in self.dests:
            try:
                self.sock.sendto(data, d)
            except OSError:
                errors += 1
        return errors

    def close(self):
        self.sock.close()


def _udp(dev: str) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:        # past net.core.rmem_max as root; else as much as rmem_max allows
        s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF)
    except OSError:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
    try:
        s.setsockopt(socket.SOL_SOCKET, SO_RXQ_OVFL, 1)
    except OSError:
        pass
    try:
        s.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, dev.encode() + b"\0")
    except OSError as e:
        s.close()
        raise LinkError(f"cannot bind a socket to interface {dev}: {e.strerror}") from None
    s.setblocking(False)
    return s


def open_links(links) -> list[Channel]:
    """Open every link of ha.cf; LinkError names the first that fails."""
    chans: dict[tuple, Channel] = {}
    try:
        for ln in links:
            if ln.kind == "mcast":
                key = ("mcast", ln.dev, ln.addr, ln.port)
                if key in chans:
                    continue
                idx = socket.if_nametoindex(ln.dev) if _exists(ln.dev) else None
                if idx is None:
                    raise LinkError(f"mcast: interface {ln.dev} does not exist on this node")
                s = _udp(ln.dev)
                try:
                    s.bind((ln.addr, ln.port))
                    mreqn = socket.inet_aton(ln.addr) + socket.inet_aton("0.0.0.0") + struct.pack("@i", idx)
                    s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreqn)
                    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, mreqn)
                    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, ln.ttl)
                    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1 if ln.loop else 0)
                except OSError as e:
                    s.close()
                    raise LinkError(f"mcast {ln.dev} {ln.addr}:{ln.port}: {e.strerror}") from None
                chans[key] = Channel(ln.dev, s, [(ln.addr, ln.port)])
            else:
                key = ("udp", ln.dev, ln.port)
                if key not in chans:
                    if not _exists(ln.dev):
                        raise LinkError(f"{ln.kind}: interface {ln.dev} does not exist on this node")
                    s = _udp(ln.dev)
                    try:
                        s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
                        s.bind(("0.0.0.0", ln.port))
                    except OSError as e:
                        s.close()
                        raise LinkError(f"{ln.kind} {ln.dev} port {ln.port}: {e.strerror}") from None
                    chans[key] = Channel(ln.dev, s, [], set() if ln.kind == "ucast" else None)
                ch = chans[key]
                dest = (iface_ipv4(ln.dev)[2] if ln.kind == "bcast" else ln.addr, ln.port)
                if dest not in ch.dests:
                    ch.dests.append(dest)
                if ln.kind == "bcast":
                    ch.sources = None             # a bcast link on the same socket hears anyone
                elif ch.sources is not None:
                    ch.sources.add(ln.addr)
    except BaseException:
        for c in chans.values():
            c.close()
        raise
    for c in chans.values():
        c.rcvbuf = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    return list(chans.values())


def _exists(dev: str) -> bool:
    try:
        socket.if_nametoindex(dev)
        return True
    except OSError:
        return False


# ---------------------------------------------------------------- ping nodes

def icmp_checksum(b: bytes) -> int:
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack(f"!{len(b) // 2}H", b))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


def echo_request(ident: int, seq: int) -> bytes:
    hdr = struct.pack("!BBHHH", 8, 0, 0, ident, seq & 0xFFFF)
    payload = b"halb-ping"
    return struct.pack("!BBHHH", 8, 0, icmp_checksum(hdr + payload), ident, seq & 0xFFFF) + payload


def parse_echo_reply(data: bytes, ident: int) -> bool:
    """True when `data` (IP packet from a raw ICMP socket) is our echo reply."""
    if len(data) < 20:
        return False
    ihl = (data[0] & 0x0F) * 4
    if len(data) < ihl + 8:
        return False
    typ, _code, _ck, rid, _seq = struct.unpack_from("!BBHHH", data, ihl)
    return typ == 0 and rid == ident


def open_ping_socket() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    s.setblocking(False)
    return s
