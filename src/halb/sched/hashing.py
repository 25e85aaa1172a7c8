"""The kernel's hash functions, bit for bit, for the hashing schedulers.

- `addr_fold`: ntohl() of an IPv4 address, or of the XOR of an IPv6
  address's four 32-bit words (ip_vs_sh/dh/mh/lblc hashkey).
- `hash_32`: include/linux/hash.h (GOLDEN_RATIO_32 multiply, top bits).
- `siphash`: lib/siphash.c SipHash-c-d over bytes with a 128-bit key given
  as two 64-bit words (the kernel's siphash_key_t / hsiphash_key_t layout).
- `hsiphash_u32`: hsiphash() of a 4-byte little-endian value as a 64-bit
  kernel computes it (SipHash-1-3, result truncated to 32 bits), which is
  what ip_vs_mh.c feeds it.
"""
from __future__ import annotations

import socket
from functools import lru_cache

M64 = (1 << 64) - 1
GOLDEN_RATIO_32 = 0x61C88647
GOLDEN_RATIO_PRIME_32 = 2654435761  # the constant in ip_vs_sh/dh hashkey


@lru_cache(maxsize=65536)
def addr_fold(addr: str) -> int:
    """Host-order 32-bit key of an address as the IPVS hashkeys compute it."""
    if ":" in addr:
        raw = socket.inet_pton(socket.AF_INET6, addr.strip("[]"))
        w = int.from_bytes(raw, "big")
        return ((w >> 96) ^ (w >> 64) ^ (w >> 32) ^ w) & 0xFFFFFFFF
    return int.from_bytes(socket.inet_aton(addr), "big")


def hash_32(val: int, bits: int) -> int:
    return ((val * GOLDEN_RATIO_32) & 0xFFFFFFFF) >> (32 - bits)


def _rotl(x: int, b: int) -> int:
    return ((x << b) | (x >> (64 - b))) & M64


def _sipround(v0, v1, v2, v3):
    v0 = (v0 + v1) & M64
    v1 = _rotl(v1, 13) ^ v0
    v0 = _rotl(v0, 32)
    v2 = (v2 + v3) & M64
    v3 = _rotl(v3, 16) ^ v2
    v0 = (v0 + v3) & M64
    v3 = _rotl(v3, 21) ^ v0
    v2 = (v2 + v1) & M64
    v1 = _rotl(v1, 17) ^ v2
    v2 = _rotl(v2, 32)
    return v0, v1, v2, v3


def siphash(data: bytes, k0: int, k1: int, c: int = 2, d: int = 4) -> int:
    """SipHash-c-d (64-bit result) as lib/siphash.c computes it."""
    v0 = 0x736F6D6570736575 ^ k0
    v1 = 0x646F72616E646F6D ^ k1
    v2 = 0x6C7967656E657261 ^ k0
    v3 = 0x7465646279746573 ^ k1
    n = len(data)
    end = n - (n % 8)
    for i in range(0, end, 8):
        m = int.from_bytes(data[i:i + 8], "little")
        v3 ^= m
        for _ in range(c):
            v0, v1, v2, v3 = _sipround(v0, v1, v2, v3)
        v0 ^= m
    b = ((n & 0xFF) << 56) | int.from_bytes(data[end:], "little")
    v3 ^= b
    for _ in range(c):
        v0, v1, v2, v3 = _sipround(v0, v1, v2, v3)
    v0 ^= b
    v2 ^= 0xFF
    for _ in range(d):
        v0, v1, v2, v3 = _sipround(v0, v1, v2, v3)
    return v0 ^ v1 ^ v2 ^ v3


def hsiphash_u32(value: int, k0: int, k1: int) -> int:
    """hsiphash(&v, sizeof(u32), key) on a 64-bit little-endian kernel:
    SipHash-1-3 of the 4 bytes, truncated to 32 bits (unrolled form of
    `siphash(value.to_bytes(4, "little"), k0, k1, 1, 3) & 0xFFFFFFFF`)."""
    v0 = 0x736F6D6570736575 ^ k0
    v1 = 0x646F72616E646F6D ^ k1
    v2 = 0x6C7967656E657261 ^ k0
    v3 = 0x7465646279746573 ^ k1
    b = (4 << 56) | (value & 0xFFFFFFFF)
    v3 ^= b
    v0, v1, v2, v3 = _sipround(v0, v1, v2, v3)
    v0 ^= b
    v2 ^= 0xFF
    v0, v1, v2, v3 = _sipround(v0, v1, v2, v3)
    v0, v1, v2, v3 = _sipround(v0, v1, v2, v3)
    v0, v1, v2, v3 = _sipround(v0, v1, v2, v3)
    return (v0 ^ v1 ^ v2 ^ v3) & 0xFFFFFFFF
