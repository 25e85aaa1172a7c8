"""The beat packet: encoding, HMAC signature, and replay protection (sans-I/O).

Layout (network byte order):

    magic "HALB" | version u8 | type u8 | key u8 | flags u8
    generation u64 | sequence u64
    node-name length u8 | node name (UTF-8)
    payload length u16 | payload (compact JSON object)
    MAC over everything before it: HMAC-MD5/SHA1/SHA256 with key `key`
    of authkeys (16/20/32 bytes) or CRC32 (4 bytes, forgeable).

The generation is fixed per daemon start (a boot counter: wall-clock
nanoseconds at start), the sequence grows by one per packet. A receiver
keeps, per node, the newest (generation, sequence) it accepted: anything
not newer is a replay or arrived out of order and is dropped.

`decode` never raises anything but DecodeError, whatever the bytes.
"""
from __future__ import annotations

import functools
import hmac
import json
import struct
import zlib
from dataclasses import dataclass, field

from halb.heartbeat.config import AUTH_METHODS, AuthKeys

MAGIC = b"HALB"
VERSION = 1
T_BEAT = 1
_HEAD = struct.Struct("!4sBBBBQQ")     # 24 bytes
MAX_PAYLOAD = 1200


class DecodeError(Exception):
    """A packet refused; `reason` is the counter it goes to."""

    def __init__(self, reason: str, detail: str = ""):
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


@dataclass
class Packet:
    node: str
    generation: int
    seq: int
    payload: dict = field(default_factory=dict)
    type: int = T_BEAT
    key: int = 0


_TEMPLATES: dict = {}


def _mac(method: str, secret: bytes, data: bytes) -> bytes:
    if method == "crc":
        return struct.pack("!I", zlib.crc32(data) & 0xFFFFFFFF)
    # keyed HMAC state made once per key and copied per packet: looking the digest up by
    # name on every packet costs more than the HMAC itself with OpenSSL 3
    t = _TEMPLATES.get((method, secret))
    if t is None:
        t = _TEMPLATES[(method, secret)] = hmac.new(secret, digestmod=method)
    h = t.copy()
    h.update(data)
    return h.digest()


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
    magic, version, ptype, key, _flags, gen, seq = _HEAD.unpack_from(data, 0)
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
    if not hmac.compare_digest(_mac(method, secret, signed), data[off + plen:]):
        raise DecodeError("bad_auth", "signature mismatch")
    # authenticated from here on: a peer with the key; still parse defensively
    try:
        name = name_b.decode("utf-8")
        payload = _parse_body(data[off:off + plen]) if plen else {}
    except (UnicodeDecodeError, ValueError):
        raise DecodeError("malformed", "payload") from None
    if not isinstance(payload, dict) or not name:
        raise DecodeError("malformed", "payload")
    return Packet(name, gen, seq, payload, ptype, key)


@functools.lru_cache(maxsize=64)
def _parse_body(body: bytes):
    """Beats repeat the same body while nothing changes: parse each distinct one once.
    The dict returned is shared: callers must not modify it."""
    return json.loads(body.decode("utf-8"))


class ReplayGuard:
    """Per-node newest (generation, sequence): older or equal is refused."""

    def __init__(self):
        self.last: dict[str, tuple[int, int]] = {}

    def check(self, node: str, gen: int, seq: int) -> str | None:
        """None when (gen, seq) is new (and record it), else the drop reason."""
        prev = self.last.get(node)
        if prev is not None:
            pgen, pseq = prev
            if gen < pgen:
                return "old_generation"
            if gen == pgen:
                if seq == pseq:
                    return "replayed"
                if seq < pseq:
                    return "reordered"
        self.last[node] = (gen, seq)
        return None
