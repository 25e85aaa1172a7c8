"""The sync datagram format: round trips (hypothesis), the decoder against
random and mutated bytes (never anything but Drop), signatures."""
from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from halb.sync import codec
from halb.sync.codec import CLOSING, ESTABLISHED, NONE, TCP, TEMPLATE, UDP, Drop, Entry

KEY = b"a shared secret"

addr = st.ip_addresses(v=4).map(str).filter(lambda a: a != "0.0.0.0")
port = st.integers(1, 65535)


@st.composite
def entries(draw):
    kind = draw(st.sampled_from([TCP, UDP, TEMPLATE]))
    fwm = draw(st.booleans())
    if fwm:
        proto, mark, saddr, sport = "fwm", draw(st.integers(1, 2 ** 32 - 1)), "0.0.0.0", 0
    else:
        proto = draw(st.sampled_from(["tcp", "udp"])) if kind == TEMPLATE else ("tcp" if kind == TCP else "udp")
        mark, saddr, sport = 0, draw(addr), draw(st.integers(0, 65535))
    state = draw(st.sampled_from([ESTABLISHED, CLOSING])) if kind == TCP else NONE
    if kind == TEMPLATE:
        vaddr, vport, cport = "0.0.0.0", 0, 0
    else:
        vaddr, vport, cport = draw(addr), draw(port), draw(port)
    return Entry(kind, state, proto, mark, saddr, sport, vaddr, vport, draw(addr), cport, draw(addr), draw(port),
                 draw(st.integers(0, 2 ** 32 - 1)))


@given(st.lists(entries(), max_size=40), st.integers(0, 255), st.integers(0, 2 ** 64 - 1),
       st.integers(0, 2 ** 32 - 1), st.booleans())
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_round_trip(items, syncid, epoch, seq, signed):
    key = KEY if signed else None
    data = codec.encode_packet(items, syncid=syncid, epoch=epoch, seq=seq, key=key)
    assert len(data) == codec.HEADER_LEN + len(items) * codec.ENTRY_LEN + (codec.MAC_LEN if signed else 0)
    pkt, bad = codec.decode_packet(data, key)
    assert bad == []
    assert pkt == codec.Packet(syncid, epoch, seq, signed, items)


@given(st.binary(max_size=2000))
@settings(max_examples=2000)
def test_random_bytes_only_ever_drop(data):
    for key in (None, KEY):
        try:
            pkt, bad = codec.decode_packet(data, key)
        except Drop as d:
            assert d.reason in ("malformed", "unsigned", "bad_mac", "no_key")
        else:  # an unsigned datagram can be well-formed by chance: its entries are checked one by one
            assert key is None
            for e in pkt.entries:
                codec.check_entry(e)


@given(st.lists(entries(), min_size=1, max_size=10), st.data())
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_mutated_datagrams(items, data):
    good = codec.encode_packet(items, syncid=1, epoch=5, seq=9)
    pos = data.draw(st.integers(0, len(good) - 1))
    val = data.draw(st.integers(0, 255))
    bad = good[:pos] + bytes([val]) + good[pos + 1:]
    cut = data.draw(st.integers(0, len(good)))
    for blob in (bad, good[:cut], good + b"x" * data.draw(st.integers(1, 40))):
        try:
            pkt, refused = codec.decode_packet(blob, None)
        except Drop:
            continue
        for e in pkt.entries:
            codec.check_entry(e)
        assert all(isinstance(r, Drop) and r.reason == "bad_entry" for r in refused)


@given(st.lists(entries(), min_size=1, max_size=10), st.data())
@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
def test_any_change_to_a_signed_datagram_is_refused(items, data):
    good = codec.encode_packet(items, syncid=1, epoch=5, seq=9, key=KEY)
    pos = data.draw(st.integers(0, len(good) - 1))
    flip = data.draw(st.integers(1, 255))
    forged = good[:pos] + bytes([good[pos] ^ flip]) + good[pos + 1:]
    with pytest.raises(Drop) as e:
        codec.decode_packet(forged, KEY)
    assert e.value.reason in ("malformed", "bad_mac", "unsigned")


def test_signature_rules():
    e = Entry(TCP, ESTABLISHED, "tcp", 0, "10.0.0.10", 80, "10.0.0.10", 80, "10.0.0.100", 40000,
              "10.0.0.3", 80, 900000)
    signed = codec.encode_packet([e], syncid=1, epoch=1, seq=1, key=KEY)
    plain = codec.encode_packet([e], syncid=1, epoch=1, seq=1)
    assert codec.decode_packet(signed, KEY)[0].entries == [e]
    for data, key, reason in ((plain, KEY, "unsigned"), (signed, None, "no_key"),
                              (signed, b"another key", "bad_mac"), (b"HLBS", None, "malformed"),
                              (b"XXXX" + plain[4:], None, "malformed")):
        with pytest.raises(Drop) as exc:
            codec.decode_packet(data, key)
        assert exc.value.reason == reason


def test_bad_entries_are_refused_one_by_one():
    good = Entry(UDP, NONE, "udp", 0, "10.0.0.10", 53, "10.0.0.10", 53, "10.0.0.100", 4000, "10.0.0.3", 53, 1000)
    bad = [good._replace(state=ESTABLISHED), good._replace(kind=TCP), good._replace(daddr="0.0.0.0"),
           good._replace(cport=0), good._replace(svc_proto="fwm", fwmark=0, svc_addr="0.0.0.0"),
           good._replace(fwmark=3)]
    raw = codec.encode_packet([good], syncid=0, epoch=1, seq=1)
    blob = bytearray(raw)
    for b in bad:
        blob += codec.ENTRY.pack(b.kind, b.state, codec.PROTO_NUM[b.svc_proto], 0, b.fwmark,
                                 codec._aton(b.svc_addr), b.svc_port, b.vport, codec._aton(b.vaddr),
                                 codec._aton(b.caddr), b.cport, b.dport, codec._aton(b.daddr), b.timeout_ms)
    blob[7] = 1 + len(bad)
    pkt, refused = codec.decode_packet(bytes(blob))
    assert pkt.entries == [good]
    assert [r.reason for r in refused] == ["bad_entry"] * len(bad)


def test_entries_per_datagram():
    assert codec.per_packet(1472, False) == 40
    assert codec.per_packet(1472, True) == 39
    assert codec.per_packet(65507, False) == 255
    data = codec.encode_packet([], syncid=0, epoch=0, seq=0)
    assert len(data) == 32 and codec.decode_packet(data)[0].entries == []
    with pytest.raises(ValueError):
        codec.encode_packet([None] * 256, syncid=0, epoch=0, seq=0)


def test_fuzz_with_os_random_is_bounded():
    for _ in range(3000):
        data = os.urandom(int.from_bytes(os.urandom(2), "big") % 1600)
        try:
            codec.decode_packet(data, KEY)
        except Drop:
            pass
