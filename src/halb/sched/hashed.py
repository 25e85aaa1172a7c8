"""Hashing schedulers: dh, sh (ip_vs_dh.c, ip_vs_sh.c) and mh (ip_vs_mh.c).

Tables are built from the destination list in the kernel's order (newest
first) with the kernel's hash functions and sizes, so for the same list and
the same packet the same real server is chosen as by IPVS.  Table slots hold
indexes into the `dests` list last given to `update()`.
"""
from __future__ import annotations

from functools import lru_cache

from halb.model import Dest
from halb.sched import Packet, Scheduler, gcd_max, need_packet, register
from halb.sched.hashing import GOLDEN_RATIO_PRIME_32, addr_fold, hsiphash_u32

DH_TAB_BITS = 8  # CONFIG_IP_VS_DH_TAB_BITS default
SH_TAB_BITS = 8  # CONFIG_IP_VS_SH_TAB_BITS default
MH_PRIMES = (251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521, 131071)
MH_TAB_INDEX = 12  # CONFIG_IP_VS_MH_TAB_INDEX default -> primes[12 - 8] = 4093
# generate_hash_secret() in ip_vs_mh.c: fixed keys
MH_HASH1 = (2654435761, 2654435761)
MH_HASH2 = (2654446892, 2654446892)
# ip_vs_sh/mh_get_port(): only these carry ports (others hash with port 0)
PORT_PROTOS = frozenset(("tcp", "udp", "sctp"))


@lru_cache(maxsize=65536)
def _mh_hash(v: int, key: tuple[int, int]) -> int:
    return hsiphash_u32(v, key[0], key[1])


def _unavailable(d: Dest) -> bool:
    return d.weight <= 0 or d.overloaded


# --------------------------------------------------------------------------
@register
class DestinationHashing(Scheduler):
    """ip_vs_dh.c: 256 buckets filled round-robin over the list (one bucket
    per server, weights ignored); bucket = (daddr * 2654435761) & 255.  The
    bucket's server is used unless weight <= 0 or overloaded (then none)."""

    name = "dh"
    bits = DH_TAB_BITS

    def __init__(self, service=None):
        super().__init__(service)
        self.size = 1 << self.bits
        self.table: list[int] = []  # bucket -> table-order index, or empty

    def update(self, dests: list[Dest]) -> None:
        n = len(dests)
        if n == 0:
            self.table = []
            return
        # kernel order k -> table index n-1-k
        self.table = [n - 1 - (i % n) for i in range(self.size)]

    def schedule(self, dests, pkt=None, now=None):
        pkt = need_packet(pkt, self.name)
        if not self.table:
            return None
        h = (addr_fold(pkt.dst) * GOLDEN_RATIO_PRIME_32) & (self.size - 1)
        idx = self.table[h]
        if idx >= len(dests):
            return None
        d = dests[idx]
        return None if _unavailable(d) else d


# --------------------------------------------------------------------------
@register
class SourceHashing(Scheduler):
    """ip_vs_sh.c: 256 buckets; walking the list, each server takes `weight`
    consecutive buckets (at least one), cycling until full.  bucket =
    (offset + (sport + saddr) * 2654435761) & 255, sport only with sh-port.
    An unavailable server (weight <= 0 or overloaded) gives none, unless
    sh-fallback: then offsets ihash, ihash+1, ... are tried in turn."""

    name = "sh"
    bits = SH_TAB_BITS
    fallback_flag = "sh-fallback"
    port_flag = "sh-port"

    def __init__(self, service=None):
        super().__init__(service)
        self.size = 1 << self.bits
        self.table: list[int] = []
        self.fallback = self.fallback_flag in self.flags
        self.use_port = self.port_flag in self.flags

    def update(self, dests: list[Dest]) -> None:
        n = len(dests)
        if n == 0:
            self.table = []
            return
        table = []
        k = 0
        count = 0
        for _ in range(self.size):
            idx = n - 1 - k
            table.append(idx)
            count += 1
            if count >= dests[idx].weight:
                k = (k + 1) % n
                count = 0
        self.table = table

    def _key(self, pkt: Packet) -> int:
        port = pkt.sport if self.use_port and pkt.proto in PORT_PROTOS else 0
        return (port + addr_fold(pkt.src)) & 0xFFFFFFFF

    def schedule(self, dests, pkt=None, now=None):
        pkt = need_packet(pkt, self.name)
        table = self.table
        if not table:
            return None
        mask = self.size - 1
        key = self._key(pkt) * GOLDEN_RATIO_PRIME_32
        ihash = key & mask
        n = len(dests)
        idx = table[ihash]
        if idx >= n:
            return None
        d = dests[idx]
        if not _unavailable(d):
            return d
        if not self.fallback:
            return None
        size = self.size
        for offset in range(size):
            roffset = (offset + ihash) % size
            idx = table[(roffset + key) & mask]
            if idx < n:
                d = dests[idx]
                if not _unavailable(d):
                    return d
        return None


# --------------------------------------------------------------------------
@register
class MaglevHashing(Scheduler):
    """ip_vs_mh.c: Maglev lookup table of a prime size (kernel default 4093).
    Each server's permutation starts at offset = hsiphash(addr+port, key1) %
    M and steps by skip = hsiphash(addr+port, key2) % (M-1) + 1; servers take
    turns filling their next free preferred slot, each taking
    (last_weight/gcd) >> rshift turns per round.  last_weight is the latest
    non-zero weight, so quiescing a server (weight 0) leaves the table as it
    is: its keys get no server, or with mh-fallback move to other servers.
    The hash is the kernel's hsiphash (SipHash-1-3 on 64-bit) with the
    kernel's fixed keys, so lookups match IPVS for the same destination list.
    """

    name = "mh"
    fallback_flag = "mh-fallback"
    port_flag = "mh-port"

    def __init__(self, service=None, tab_index: int = MH_TAB_INDEX):
        super().__init__(service)
        self.size = MH_PRIMES[tab_index - 8]
        self.tab_bits = tab_index // 2  # IP_VS_MH_TAB_BITS
        self.table: list[int] | None = None  # slot -> table-order index
        self.fallback = self.fallback_flag in self.flags
        self.use_port = self.port_flag in self.flags
        self.last_weight: dict[tuple[str, int], int] = {}

    @staticmethod
    def _hash(addr: str, port: int, key: tuple[int, int], offset: int = 0) -> int:
        """ip_vs_mh_hashkey(): hsiphash of (offset + port + folded addr)."""
        return _mh_hash((offset + port + addr_fold(addr)) & 0xFFFFFFFF, key)

    def update(self, dests: list[Dest]) -> None:
        old = self.last_weight
        lw: dict[tuple[str, int], int] = {}
        for d in dests:
            ident = d.ident
            if ident not in old or d.weight != 0:
                lw[ident] = d.weight
            else:
                lw[ident] = old[ident]
        self.last_weight = lw
        n = len(dests)
        if n > self.size:  # the kernel refuses (-EINVAL); keep the old table
            return
        korder = list(range(n - 1, -1, -1))  # kernel order -> table index
        g, mx = gcd_max(lw.values())
        if g < 1:
            self.table = None
            return
        shift = max((mx // g).bit_length() - self.tab_bits, 0)
        M = self.size
        setup = []  # (table index, offset/perm, skip, turns)
        for idx in korder:
            d = dests[idx]
            off = self._hash(d.addr, d.port, MH_HASH1) % M
            skip = self._hash(d.addr, d.port, MH_HASH2) % (M - 1) + 1
            w = lw[d.ident]
            turns = ((w // g) >> shift) or (1 if w != 0 else 0)
            setup.append([idx, off, skip, turns])
        table = [-1] * M
        filled = 0
        while filled < M:
            for ds in setup:
                turns = ds[3]
                if turns < 1:
                    continue
                for _ in range(turns):
                    c = ds[1]
                    while table[c] >= 0:
                        c += ds[2]
                        if c >= M:
                            c -= M
                    ds[1] = c
                    table[c] = ds[0]
                    filled += 1
                    if filled == M:
                        break
                if filled == M:
                    break
        self.table = table

    def schedule(self, dests, pkt=None, now=None):
        pkt = need_packet(pkt, self.name)
        table = self.table
        if table is None:
            return None
        port = pkt.sport if self.use_port and pkt.proto in PORT_PROTOS else 0
        M = self.size
        ihash = self._hash(pkt.src, port, MH_HASH1) % M
        idx = table[ihash]
        if idx >= len(dests):
            return None
        d = dests[idx]
        if not _unavailable(d):
            return d
        if not self.fallback:
            return None
        n = len(dests)
        for offset in range(M):
            roffset = (offset + ihash) % M
            idx = table[self._hash(pkt.src, port, MH_HASH1, roffset) % M]
            if idx < n and not _unavailable(dests[idx]):
                return dests[idx]
        return None
