"""dh, sh, mh and the kernel hash functions.

GOLDEN = 2654435761 = 0x9E3779B1, whose low byte is 177: with the 256-bucket
dh/sh tables, an IPv4 address ending in .x hashes to bucket (177 * x) & 255
(only the low 8 bits of the product matter).  .1 -> 177, .2 -> 98, .7 -> 215.
"""
from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter

import pytest

from halb.sched import Packet
from halb.sched.hashed import MH_HASH1, MaglevHashing
from halb.sched.hashing import addr_fold, hash_32, hsiphash_u32, siphash

from sched_helpers import name_of  # noqa: E402


def pkt(src_last=1, dst_last=1, sport=0):
    return Packet(f"198.51.100.{src_last}", sport, f"192.0.2.{dst_last}", 80)


# ---------------------------------------------------------------- hashes
def test_siphash_2_4_reference_vectors():
    k0 = int.from_bytes(bytes(range(8)), "little")
    k1 = int.from_bytes(bytes(range(8, 16)), "little")
    assert siphash(b"", k0, k1) == 0x726FDB47DD0E0E31
    assert siphash(bytes(range(15)), k0, k1) == 0xA129CA6149BE45E5


def test_siphash_1_3_matches_cpython():
    # CPython hashes bytes with SipHash-1-3; PYTHONHASHSEED=0 zeroes its key
    msgs = [b"abcd", b"\x01\x02\x03\x04", b"0123456789abcdefXYZ"]
    out = subprocess.run(
        [sys.executable, "-c", f"print([hash(m) & (2**64 - 1) for m in {msgs!r}])"],
        env={**os.environ, "PYTHONHASHSEED": "0"}, capture_output=True, text=True, check=True)
    if "siphash13" not in repr(sys.hash_info.algorithm):
        pytest.skip(f"this Python hashes with {sys.hash_info.algorithm}")
    assert eval(out.stdout) == [siphash(m, 0, 0, 1, 3) for m in msgs]


def test_hsiphash_u32_is_siphash13_of_4_le_bytes():
    for v in (0, 1, 0xC0000201, 0xFFFFFFFF):
        assert hsiphash_u32(v, *MH_HASH1) == siphash(v.to_bytes(4, "little"), *MH_HASH1, 1, 3) & 0xFFFFFFFF


def test_addr_fold_and_hash_32():
    assert addr_fold("192.0.2.1") == 0xC0000201
    # IPv6: XOR of the four 32-bit words
    assert addr_fold("2001:db8::1:2") == 0x20010DB8 ^ 0 ^ 0 ^ 0x00010002
    assert hash_32(1, 10) == 0x61C88647 >> 22
    assert hash_32(0, 10) == 0


# ---------------------------------------------------------------- dh
def test_dh_round_robin_buckets_by_destination(rig):
    r = rig("dh", [1, 1])  # kernel list B A: even buckets B, odd A
    assert r.pick(pkt(dst_last=1)) == "A"  # bucket 177
    assert r.pick(pkt(dst_last=2)) == "B"  # bucket 98
    r3 = rig("dh", [1, 1, 1])  # kernel list C B A
    assert r3.pick(pkt(dst_last=1)) == "C"  # 177 % 3 == 0
    assert r3.pick(pkt(dst_last=2)) == "A"  # 98 % 3 == 2


def test_dh_ignores_weights_and_source(rig):
    r = rig("dh", [5, 1])
    assert {r.pick(pkt(src_last=s, dst_last=1, sport=s)) for s in range(1, 50)} == {"A"}


def test_dh_unavailable_server_gives_none(rig):
    r = rig("dh", [1, 1])
    r.edit("A", weight=0)
    assert r.pick(pkt(dst_last=1)) is None
    r.edit("A", weight=1)
    r["A"].overloaded = True
    assert r.pick(pkt(dst_last=1)) is None
    assert r.pick(pkt(dst_last=2)) == "B"


# ---------------------------------------------------------------- sh
def test_sh_buckets_follow_weights(rig):
    r = rig("sh", [4, 1])  # kernel list B(1) A(4): buckets B A A A A B A A A A ...
    assert r.pick(pkt(src_last=1)) == "A"  # 177 % 5 == 2
    assert r.pick(pkt(src_last=7)) == "B"  # 215 % 5 == 0
    counts = Counter(r.sched.table)
    # 256 = 51 * 5 + 1: the last bucket (255, 255 % 5 == 0) is B again;
    # table index 1 is B, 0 is A
    assert counts == {1: 52, 0: 204}


def test_sh_no_fallback_gives_none(rig):
    r = rig("sh", [1, 1])
    r.edit("A", weight=0)
    assert r.pick(pkt(src_last=1)) is None
    assert r.pick(pkt(src_last=2)) == "B"


def test_sh_fallback_probes_the_next_offsets(rig):
    r = rig("sh", [1, 1], flags=["sh-fallback"])
    r.edit("A", weight=0)  # A keeps its buckets (weight 0 still takes one)
    # bucket 177 is A; offset 177 -> (177 + 177) & 255 = 98 -> B
    assert r.pick(pkt(src_last=1)) == "B"
    r["B"].overloaded = True
    assert r.pick(pkt(src_last=1)) is None


def test_sh_port_adds_the_source_port(rig):
    plain = rig("sh", [1, 1])
    port = rig("sh", [1, 1], flags=["sh-port"])
    assert plain.pick(pkt(src_last=1, sport=1)) == "A"  # bucket 177
    assert port.pick(pkt(src_last=1, sport=1)) == "B"  # key .2 -> bucket 98


# ---------------------------------------------------------------- mh
def test_mh_table_is_full_and_balanced(rig):
    r = rig("mh", [1, 1, 1])
    table = r.sched.table
    assert len(table) == 4093 and min(table) >= 0
    c = Counter(table)
    assert max(c.values()) - min(c.values()) <= 1


def test_mh_turns_follow_weights(rig):
    # weights 1, 2, 3: 682 full rounds of 6 slots + 1 slot for C (first in
    # the kernel list, 3 turns)
    r = rig("mh", [1, 2, 3])
    assert Counter(r.sched.table) == {0: 682, 1: 1364, 2: 2047}


def test_mh_large_weights_are_shifted(rig):
    # gcd 1, max 1000: fls(1000) = 10 bits, minus IP_VS_MH_TAB_BITS (6) -> >> 4
    # turns: B 1000 >> 4 = 62, A 1 >> 4 = 0 -> 1 (non-zero weight)
    # 4093 = 64 rounds of 63 + 61 more for B
    r = rig("mh", [1, 1000])
    assert Counter(r.sched.table) == {0: 64, 1: 64 * 62 + 61}


def test_mh_is_deterministic_across_instances(rig):
    a = rig("mh", [1, 2, 1])
    b = rig("mh", [1, 2, 1])
    assert a.sched.table == b.sched.table
    picks = [a.pick(pkt(src_last=i)) for i in range(1, 60)]
    assert picks == [b.pick(pkt(src_last=i)) for i in range(1, 60)]
    assert set(picks) == {"A", "B", "C"}


def test_mh_quiesce_keeps_the_table(rig):
    r = rig("mh", [1, 1, 1])
    before = list(r.sched.table)
    owner = {i: r.pick(pkt(src_last=i)) for i in range(1, 120)}
    r.edit("B", weight=0)  # last_weight stays 1
    assert r.sched.table == before
    for i, o in owner.items():
        assert r.pick(pkt(src_last=i)) == (None if o == "B" else o)


def test_mh_fallback_moves_only_the_unavailable_servers_keys(rig):
    r = rig("mh", [1, 1, 1], flags=["mh-fallback"])
    owner = {i: r.pick(pkt(src_last=i)) for i in range(1, 120)}
    assert "B" in owner.values()
    r.edit("B", weight=0)
    for i, o in owner.items():
        now = r.pick(pkt(src_last=i))
        if o == "B":
            assert now in ("A", "C")
        else:
            assert now == o


def test_mh_port_flag_uses_the_source_port(rig):
    r = rig("mh", [1, 1, 1], flags=["mh-port"])
    picks = {r.pick(pkt(src_last=1, sport=p)) for p in range(1024, 1100)}
    assert picks == {"A", "B", "C"}
    plain = rig("mh", [1, 1, 1])
    assert len({plain.pick(pkt(src_last=1, sport=p)) for p in range(1024, 1100)}) == 1


def test_mh_all_weights_zero_from_the_start(rig):
    r = rig("mh", [0, 0])
    assert r.sched.table is None
    assert r.pick(pkt()) is None


def test_mh_smaller_table_size():
    from halb.model import Dest, Service, ServiceKey

    svc = Service(ServiceKey("tcp", "192.0.2.1", 80), scheduler="mh")
    s = MaglevHashing(svc, tab_index=8)
    dests = [Dest("10.0.0.1", 80), Dest("10.0.0.2", 80)]
    s.update(dests)
    assert len(s.table) == 251
    assert name_of(s.schedule(dests, pkt())) in ("A", "B")


def test_hashing_schedulers_need_a_packet(rig):
    for name in ("dh", "sh", "mh", "lblc", "lblcr"):
        with pytest.raises(ValueError, match="needs the packet"):
            rig(name, [1]).sched.schedule(rig(name, [1]).dests, None)


def test_sh_port_only_for_protocols_with_ports(rig):
    r = rig("sh", [1, 1], flags=["sh-port"])
    p = Packet("198.51.100.1", 1, "192.0.2.1", 80, proto="icmp")
    assert r.pick(p) == "A"  # port ignored: bucket 177


def test_sh_ipv6_source_is_folded(rig):
    # 2001:db8::1 folds to 0x20010db8 ^ 0x00000001 = 0x20010db9; low byte 185
    # bucket (185 * 177) & 255 = 233: odd -> A in the B A B A ... table
    r = rig("sh", [1, 1])
    assert r.pick(Packet("2001:db8::1", 0, "192.0.2.1", 80)) == "A"
    assert r.pick(Packet("2001:db8::2", 0, "192.0.2.1", 80)) == "B"  # 186*177 & 255 = 154
