"""The sync datagram: pure encoding and decoding, no I/O.

    header (32 bytes, network order)
      magic  b"HLBS"
      version u8 (2)
      flags   u8 (bit 0: signed: a 16-byte HMAC-SHA256 follows the entries)
      syncid  u8
      count   u8 (entries in this datagram, 0 = a keepalive)
      epoch   u64 (the sender's generation: its start time in ms, plus a
                   random low part; a new sender process, a higher epoch)
      seq     u32 (per epoch, +1 per datagram)
      sender  u32 (the sender's identity: from its node name, sender_id())
      stamp   u64 (the sender's wall clock when it sent, ms since 1970)
    entries (count x 36 bytes), see ENTRY
    [mac 16 bytes: HMAC-SHA256(key, header + entries), truncated]

The signature covers the sender identity, epoch, sequence number and time
stamp: a backup keys its replay state by (sender, epoch), never by the
datagram's source address, so a signed datagram replayed from another
address is still a replay; and it refuses datagrams stamped too far from
its own clock, so one recorded earlier cannot be played to a backup that
restarted since (and forgot what it had seen).

An entry names a connection by what both directors agree on, never by the
master's dest marks (they differ between nodes): the virtual service
(protocol + VIP + port, or fwmark), the flow (VIP . port . client . client
port), the real server (RIP, port), the time left before it expires (ms)
and its state. A persistence template is an entry of kind TEMPLATE whose
client field holds the client network and whose flow ports are 0.

decode_packet() raises Drop(reason) for anything that is not a well-formed,
authentic datagram of this protocol; it never raises anything else
(property-tested and fuzzed in tests/sync).
"""
from __future__ import annotations

import hashlib
import hmac
import socket
import struct
from typing import NamedTuple

MAGIC = b"HLBS"
VERSION = 2
F_SIGNED = 0x01
HEADER = struct.Struct("!4sBBBBQIIQ")
ENTRY = struct.Struct("!BBBBI4sHH4s4sHH4sI")
MAC_LEN = 16
HEADER_LEN = HEADER.size      # 32
ENTRY_LEN = ENTRY.size        # 36
MAX_COUNT = 255
DEFAULT_MAXLEN = 1472         # 1500-byte MTU - IP - UDP headers (IPVS's default)
MIN_MAXLEN = HEADER_LEN + ENTRY_LEN + MAC_LEN
MAX_TIMEOUT_MS = 0xFFFFFFFF

# kinds
TCP = 1        # a TCP flow (flows map)
UDP = 2        # a UDP flow (uflows map)
TEMPLATE = 3   # a persistence template (p<sid> map)
KINDS = (TCP, UDP, TEMPLATE)
# states
NONE = 0
ESTABLISHED = 1
CLOSING = 2    # FIN/RST seen (IPVS's FIN_WAIT)
STATE_NAMES = {NONE: "NONE", ESTABLISHED: "ESTABLISHED", CLOSING: "FIN_WAIT"}
# service protocols
P_FWM, P_TCP, P_UDP = 0, 6, 17
SVC_PROTOS = {P_FWM: "fwm", P_TCP: "tcp", P_UDP: "udp"}
PROTO_NUM = {v: k for k, v in SVC_PROTOS.items()}


class Drop(Exception):
    """A datagram (or an entry) refused; .reason is a short counter name."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class Entry(NamedTuple):
    kind: int          # TCP | UDP | TEMPLATE
    state: int         # NONE | ESTABLISHED | CLOSING
    svc_proto: str     # tcp | udp | fwm
    fwmark: int        # fwm services, else 0
    svc_addr: str      # VIP of the service ("0.0.0.0" for fwm)
    svc_port: int
    vaddr: str         # the flow's destination (VIP); template: "0.0.0.0"
    vport: int
    caddr: str         # client (template: client network)
    cport: int
    daddr: str         # real server
    dport: int
    timeout_ms: int    # time left before it expires

    @property
    def flow_key(self) -> tuple:
        """What the backup's maps are keyed by."""
        if self.kind == TEMPLATE:
            return (TEMPLATE, self.svc_proto, self.fwmark, self.svc_addr, self.svc_port, self.caddr)
        return (self.kind, self.vaddr, self.vport, self.caddr, self.cport)

    @property
    def svc_ident(self) -> tuple:
        if self.svc_proto == "fwm":
            return ("fwm", self.fwmark)
        return (self.svc_proto, self.svc_addr, self.svc_port)


class Packet(NamedTuple):
    syncid: int
    epoch: int
    seq: int
    signed: bool
    entries: list
    sender: int = 0
    stamp_ms: int = 0


def sender_id(node: str) -> int:
    """A sender's identity on the wire: 32 bits of SHA-256 of its node name."""
    return int.from_bytes(hashlib.sha256(node.encode()).digest()[:4], "big")


def _aton(s: str) -> bytes:
    return socket.inet_aton(s)


def _ntoa(b: bytes) -> str:
    return socket.inet_ntoa(b)


def check_entry(e: Entry) -> None:
    """Raise Drop('bad_entry') when an entry cannot describe a connection."""
    if e.kind not in KINDS:
        raise Drop("bad_entry", f"kind {e.kind}")
    if e.svc_proto not in PROTO_NUM:
        raise Drop("bad_entry", f"service protocol {e.svc_proto!r}")
    if e.kind == TEMPLATE:
        if e.state != NONE:
            raise Drop("bad_entry", "a template has no state")
    elif e.kind == TCP:
        if e.state not in (ESTABLISHED, CLOSING):
            raise Drop("bad_entry", f"TCP state {e.state}")
    elif e.state != NONE:
        raise Drop("bad_entry", "a UDP flow has no state")
    if e.svc_proto == "fwm":
        if not 0 < e.fwmark < 2 ** 32:
            raise Drop("bad_entry", "fwmark service without a mark")
    else:
        if e.fwmark:
            raise Drop("bad_entry", "a mark on a non-fwmark service")
        if e.svc_addr == "0.0.0.0":
            raise Drop("bad_entry", "service without an address")
        if e.kind != TEMPLATE and e.kind != (TCP if e.svc_proto == "tcp" else UDP):
            raise Drop("bad_entry", f"a {e.svc_proto} service with a flow of kind {e.kind}")
    if e.kind != TEMPLATE:
        if e.vaddr == "0.0.0.0" or e.caddr == "0.0.0.0" or not e.vport or not e.cport:
            raise Drop("bad_entry", "flow with an empty address or port")
    if e.daddr == "0.0.0.0" or not (0 if e.svc_proto == "fwm" else 1) <= e.dport < 65536:
        raise Drop("bad_entry", "no real server")
    if not 0 <= e.timeout_ms <= MAX_TIMEOUT_MS:
        raise Drop("bad_entry", "timeout out of range")


def pack_entry(e: Entry) -> bytes:
    return ENTRY.pack(e.kind, e.state, PROTO_NUM[e.svc_proto], 0, e.fwmark, _aton(e.svc_addr), e.svc_port,
                      e.vport, _aton(e.vaddr), _aton(e.caddr), e.cport, e.dport, _aton(e.daddr),
                      min(max(int(e.timeout_ms), 0), MAX_TIMEOUT_MS))


def unpack_entry(b: bytes, off: int = 0) -> Entry:
    (kind, state, proto, flags, fwmark, saddr, sport, vport, vaddr, caddr, cport, dport, daddr,
     tmo) = ENTRY.unpack_from(b, off)
    if flags:
        raise Drop("bad_entry", "reserved flags set")
    if proto not in SVC_PROTOS:
        raise Drop("bad_entry", f"protocol {proto}")
    e = Entry(kind, state, SVC_PROTOS[proto], fwmark, _ntoa(saddr), sport, _ntoa(vaddr), vport,
              _ntoa(caddr), cport, _ntoa(daddr), dport, tmo)
    check_entry(e)
    return e


def per_packet(maxlen: int, signed: bool) -> int:
    """Entries that fit a datagram of maxlen bytes (at least 1)."""
    room = maxlen - HEADER_LEN - (MAC_LEN if signed else 0)
    return max(1, min(MAX_COUNT, room // ENTRY_LEN))


def mac_of(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()[:MAC_LEN]


def encode_packet(entries, *, syncid: int, epoch: int, seq: int, key: bytes | None = None,
                  sender: int = 0, stamp_ms: int = 0) -> bytes:
    """One datagram. entries must already be valid (check_entry)."""
    entries = list(entries)
    if len(entries) > MAX_COUNT:
        raise ValueError(f"{len(entries)} entries in one datagram (at most {MAX_COUNT})")
    body = HEADER.pack(MAGIC, VERSION, F_SIGNED if key else 0, syncid & 0xFF, len(entries),
                       epoch & 0xFFFFFFFFFFFFFFFF, seq & 0xFFFFFFFF, sender & 0xFFFFFFFF,
                       stamp_ms & 0xFFFFFFFFFFFFFFFF)
    body += b"".join(pack_entry(e) for e in entries)
    if key:
        body += mac_of(key, body)
    return body


def decode_packet(data: bytes, key: bytes | None = None) -> tuple[Packet, list[Drop]]:
    """(packet with its valid entries, the entries refused) or Drop for the
    whole datagram. With a key, unsigned or badly signed datagrams are
    refused; without one, signed datagrams are refused too (they cannot be
    checked here: the two ends are configured differently)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise Drop("malformed", "not bytes")
    data = bytes(data)
    if len(data) < HEADER_LEN:
        raise Drop("malformed", f"{len(data)} bytes, shorter than a header")
    magic, version, flags, syncid, count, epoch, seq, sender, stamp_ms = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise Drop("malformed", "not a halb sync datagram")
    if version != VERSION:
        raise Drop("malformed", f"version {version}")
    if flags & ~F_SIGNED:
        raise Drop("malformed", "unknown flags")
    signed = bool(flags & F_SIGNED)
    want = HEADER_LEN + count * ENTRY_LEN + (MAC_LEN if signed else 0)
    if len(data) != want:
        raise Drop("malformed", f"{len(data)} bytes for {count} entries (expected {want})")
    if key:
        if not signed:
            raise Drop("unsigned", "a key is configured here and the datagram is not signed")
        if not hmac.compare_digest(mac_of(key, data[:-MAC_LEN]), data[-MAC_LEN:]):
            raise Drop("bad_mac", "signature does not match (another key, or forged)")
    elif signed:
        raise Drop("no_key", "signed datagram but no key is configured here")
    entries, bad = [], []
    for i in range(count):
        try:
            entries.append(unpack_entry(data, HEADER_LEN + i * ENTRY_LEN))
        except Drop as d:
            bad.append(d)
    return Packet(syncid, epoch, seq, signed, entries, sender, stamp_ms), bad
