"""The beat packet: encoding, HMAC signature, and replay protection (sans-I/O).

Layout (network byte order):

    magic "HALB" | version u8 | type u8 | key u8 | flags u8 (low 2 bits: the lane)
    generation u64 | sequence u64
    node-name length u8 | node name (UTF-8)
    payload length u16 | payload (compact JSON object)
    MAC over everything before it: HMAC-MD5/SHA1/SHA256 with key `key`
    of authkeys (16/20/32 bytes) or CRC32 (4 bytes, forgeable).

The generation is fixed per daemon start (a counter kept on disk, never
below the wall clock: generation.py), the sequence grows by one per packet and per lane
(a node may send its beats from several processes, "lanes", each with its
own sequence; see lane.py). A receiver keeps, per node, the newest
generation and, per lane, the newest sequence it accepted: anything not
newer is a replay or arrived out of order and is dropped.

Freshness: the signed payload carries `seen`, the generation the sender last
took from each peer. A receiver counts a beat as a sign of life only when
it names the receiver's own current generation (`fresh`): a beat recorded
before the receiver's last start, replayed after the sender died, does not
(and one recorded since is refused by the sequence check).

`decode` never raises anything but DecodeError, whatever the bytes.
"""
from __future__ import annotations

import functools
import importlib
import json
import struct
import zlib
from typing import TYPE_CHECKING

try:    # hmac.compare_digest without importing hmac, hashlib and OpenSSL (see _hash)
    from _operator import _compare_digest as _same_mac
except ImportError:  # pragma: no cover - other Pythons
    from hmac import compare_digest as _same_mac

if TYPE_CHECKING:        # this module stays light: the beat lanes (lane.py) import it alone
    from halb.heartbeat.config import AuthKeys

MAGIC = b"HALB"
VERSION = 1
T_BEAT = 1
_HEAD = struct.Struct("!4sBBBBQQ")     # 24 bytes
MAX_PAYLOAD = 1200
AUTH_METHODS = {"crc": 4, "md5": 16, "sha1": 20, "sha256": 32}   # method -> MAC length
LANE_MASK = 0x03


class DecodeError(Exception):
    """A packet refused; `reason` is the counter it goes to."""

    def __init__(self, reason: str, detail: str = ""):
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


class Packet:
    __slots__ = ("node", "generation", "seq", "payload", "type", "key", "lane")

    def __init__(self, node: str, generation: int, seq: int, payload: dict | None = None, type: int = T_BEAT,
                 key: int = 0, lane: int = 0):
        self.node, self.generation, self.seq = node, generation, seq
        self.payload = payload if payload is not None else {}
        self.type, self.key, self.lane = type, key, lane

    def _t(self):
        return (self.node, self.generation, self.seq, self.payload, self.type, self.key, self.lane)

    def __eq__(self, other):
        return isinstance(other, Packet) and self._t() == other._t()

    def __repr__(self):
        return "Packet(" + ", ".join(f"{k}={v!r}" for k, v in zip(self.__slots__, self._t())) + ")"


_KEYED: dict = {}


def _hash(method: str):
    """The hash constructor for an HMAC: CPython's built-in one (_md5, _sha1, _sha256),
    so that a process that only signs beats (a beat lane) does not load OpenSSL
    (3.5 MB of its memory); hashlib's where there is none."""
    try:
        return getattr(importlib.import_module({"md5": "_md5", "sha1": "_sha1", "sha256": "_sha256"}[method]),
                       method)
    except (ImportError, AttributeError):
        import hashlib

        return getattr(hashlib, method)


def _keyed(method: str, secret: bytes):
    """The HMAC's inner and outer hash states after the padded key (RFC 2104), made
    once per key: a MAC is then two copies and two updates, no digest looked up by
    name and no HMAC object set up per packet."""
    k = _KEYED.get((method, secret))
    if k is None:
        new = _hash(method)
        key = secret if len(secret) <= 64 else new(secret).digest()   # md5, sha1, sha256: 64-byte blocks
        key = key.ljust(64, b"\0")
        k = _KEYED[(method, secret)] = (new(bytes(b ^ 0x36 for b in key)), new(bytes(b ^ 0x5C for b in key)))
    return k


def _mac(method: str, secret: bytes, data) -> bytes:
    if method == "crc":
        return struct.pack("!I", zlib.crc32(data) & 0xFFFFFFFF)
    inner, outer = _keyed(method, secret)
    i = inner.copy()
    i.update(data)
    o = outer.copy()
    o.update(i.digest())
    return o.digest()


def encode_body(payload: dict) -> bytes:
    return json.dumps(payload, separators=(",", ":"), sort_keys=True).encode("utf-8")


def encode(pkt: Packet, auth: AuthKeys, body: bytes | None = None) -> bytes:
    """The signed datagram; `body` may be given pre-encoded (encode_body) to save work per beat."""
    key = auth.active
    method, secret = auth.keys[key]
    name = pkt.node.encode("utf-8")
    if body is None:
        body = encode_body(pkt.payload)
    if len(name) > 255 or len(body) > MAX_PAYLOAD:
        raise ValueError("node name or payload too long for a beat")
    data = (_HEAD.pack(MAGIC, VERSION, pkt.type, key, 0, pkt.generation, pkt.seq)
            + bytes([len(name)]) + name + struct.pack("!H", len(body)) + body)
    return data + _mac(method, secret, data)


class BeatEncoder:
    """Our beats, made fast: the header, node name and body are packed once per body;
    per beat only the sequence number goes in and the MAC is computed."""

    def __init__(self, node: str, generation: int, auth: AuthKeys, ptype: int = T_BEAT, lane: int = 0):
        self.node, self.generation, self.auth, self.ptype = node, generation, auth, ptype
        self.lane = lane
        self.method, self.secret = auth.keys[auth.active]
        self.buf = bytearray()
        self.body = None

    def set_body(self, body: bytes) -> None:
        if body is not self.body and body != self.body:
            buf = bytearray(encode(Packet(self.node, self.generation, 0, type=self.ptype), self.auth, body))
            del buf[len(buf) - AUTH_METHODS[self.method]:]
            buf[7] = self.lane & LANE_MASK
            self.buf, self.body = buf, body

    def packet(self, seq: int) -> bytes:
        buf = self.buf
        _SEQ.pack_into(buf, 16, seq)
        return bytes(buf) + _mac(self.method, self.secret, buf)


_SEQ = struct.Struct("!Q")


def decode(data: bytes, auth: AuthKeys, *, accept_crc: bool = False) -> Packet:
    """Parse and verify one datagram, or raise DecodeError(reason).

    reasons: truncated, malformed, bad_version, unknown_key, weak_auth, bad_auth.
    """
    try:
        return _decode(bytes(data), auth, accept_crc)
    except DecodeError:
        raise
    except Exception as e:  # any slip on garbage becomes a counted drop, never a crash
        raise DecodeError("malformed", type(e).__name__) from None


def _decode(data: bytes, auth: AuthKeys, accept_crc: bool) -> Packet:
    if len(data) < _HEAD.size + 1 + 2:
        raise DecodeError("truncated", f"{len(data)} bytes")
    magic, version, ptype, key, flags, gen, seq = _HEAD.unpack_from(data, 0)
    if magic != MAGIC:
        raise DecodeError("malformed", "bad magic")
    if version != VERSION:
        raise DecodeError("bad_version", str(version))
    off = _HEAD.size
    nlen = data[off]
    off += 1
    if off + nlen + 2 > len(data):
        raise DecodeError("truncated", "node name")
    name_b = data[off:off + nlen]
    off += nlen
    (plen,) = struct.unpack_from("!H", data, off)
    off += 2
    if key not in auth.keys:
        raise DecodeError("unknown_key", f"key {key}")
    method, secret = auth.keys[key]
    maclen = AUTH_METHODS[method]
    if off + plen + maclen > len(data):
        raise DecodeError("truncated", "payload or signature")
    if off + plen + maclen < len(data):
        raise DecodeError("malformed", "trailing bytes")
    if method == "crc" and not accept_crc:
        raise DecodeError("weak_auth", "crc-signed packet refused on UDP")
    signed = data[:off + plen]
    if not _same_mac(_mac(method, secret, signed), data[off + plen:]):
        raise DecodeError("bad_auth", "signature mismatch")
    # authenticated from here on: a peer with the key; still parse defensively
    try:
        name = name_b.decode("utf-8")
        payload = _parse_body(data[off:off + plen]) if plen else {}
    except (UnicodeDecodeError, ValueError):
        raise DecodeError("malformed", "payload") from None
    if not isinstance(payload, dict) or not name:
        raise DecodeError("malformed", "payload")
    return Packet(name, gen, seq, payload, ptype, key, flags & LANE_MASK)


@functools.lru_cache(maxsize=64)
def _parse_body(body: bytes):
    """Beats repeat the same body while nothing changes: parse each distinct one once.
    The dict returned is shared: callers must not modify it."""
    return json.loads(body.decode("utf-8"))


def peek_node(data: bytes) -> bytes | None:
    """The node name a datagram claims, read without checking anything else (before
    the MAC, to drop cheaply what comes from a source that node never sent from);
    None when it is not shaped like a beat."""
    if len(data) < _HEAD.size + 3 or data[:4] != MAGIC:
        return None
    n = data[_HEAD.size]
    return data[_HEAD.size + 1:_HEAD.size + 1 + n]


def fresh(payload: dict, me: str, generation: int) -> bool:
    """Whether a peer's (authenticated) payload echoes our current generation."""
    seen = payload.get("seen")
    return isinstance(seen, dict) and seen.get(me) == generation


class ReplayGuard:
    """Per node the newest generation, per (node, lane) the newest sequence:
    an older generation, or a sequence not above the lane's newest, is refused."""

    def __init__(self):
        self.gen: dict[str, int] = {}
        self.last: dict[tuple[str, int], int] = {}

    def check(self, node: str, gen: int, seq: int, lane: int = 0) -> str | None:
        """None when (gen, lane, seq) is new (and record it), else the drop reason."""
        pgen = self.gen.get(node)
        if pgen is not None:
            if gen < pgen:
                return "old_generation"
            if gen == pgen:
                pseq = self.last.get((node, lane))
                if pseq is not None:
                    if seq == pseq:
                        return "replayed"
                    if seq < pseq:
                        return "reordered"
            else:       # the node restarted: its lanes start afresh
                for k in [k for k in self.last if k[0] == node]:
                    del self.last[k]
        self.gen[node] = gen
        self.last[(node, lane)] = seq
        return None
