"""The sync daemons' pure core: kernel elements -> entries, the master's
diff, the rate budget, the backup's validation (syncid, replay, forged,
stale generations) and its mapping onto its own marks."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from halb.sync import codec, core
from halb.sync.codec import CLOSING, ESTABLISHED, NONE, TCP, TEMPLATE, UDP, Entry
from halb.sync.core import Receiver, Sender, SvcView, TableView, Tracker

VIP = "10.0.0.10"
KEY = b"secret key"


def master_view():
    # master's marks: 5, 6 for the web service; 9 for DNS; 12 for a persistent one
    return TableView({
        ("tcp", VIP, 80): SvcView(("tcp", VIP, 80), 1, dests={("10.0.0.3", 80): 5, ("10.0.0.4", 80): 6}),
        ("udp", VIP, 53): SvcView(("udp", VIP, 53), 2, dests={("10.0.0.3", 53): 9}),
        ("tcp", VIP, 443): SvcView(("tcp", VIP, 443), 3, True, 300, dests={("10.0.0.4", 443): 12}),
        ("fwm", 7): SvcView(("fwm", 7), 4, dests={("10.0.0.3", 0): 20}),
    })


def backup_view():
    # the same services and servers, other marks and ids (another node's history)
    return TableView({
        ("tcp", VIP, 80): SvcView(("tcp", VIP, 80), 11, dests={("10.0.0.3", 80): 105, ("10.0.0.4", 80): 106}),
        ("udp", VIP, 53): SvcView(("udp", VIP, 53), 12, dests={("10.0.0.3", 53): 109}),
        ("tcp", VIP, 443): SvcView(("tcp", VIP, 443), 13, True, 300, dests={("10.0.0.4", 443): 112}),
    }, tcp=900, tcpfin=120, udp=300)


def M(mid):
    return 0x4A000000 | mid


def kernel():
    flows = [((VIP, 80, "10.0.0.100", 40000), 890, 900, M(5)),
             ((VIP, 80, "10.0.0.101", 40001), 100, 120, M(6)),
             ((VIP, 443, "10.0.0.102", 40002), 800, 900, M(12)),
             ((VIP, 80, "10.0.0.103", 40003), 800, 900, M(99)),   # a mark of no server: skipped
             ((VIP, 25, "10.0.0.104", 40004), 800, 900, M(20))]   # fwmark service
    uflows = [((VIP, 53, "10.0.0.100", 5353), 290, 300, M(9))]
    closing = [((VIP, 80, "10.0.0.101", 40001), 100, 120, None)]
    templates = {3: [("10.0.0.102", 250, 300, M(12))]}
    return flows, uflows, closing, templates


def test_kernel_elements_to_entries():
    items = core.to_entries(master_view(), *kernel())
    got = {e.flow_key: (e, full) for e, full in items}
    assert len(items) == 6
    e, full = got[(TCP, VIP, 80, "10.0.0.100", 40000)]
    assert e == Entry(TCP, ESTABLISHED, "tcp", 0, VIP, 80, VIP, 80, "10.0.0.100", 40000, "10.0.0.3", 80, 890000)
    assert full == 900
    assert got[(TCP, VIP, 80, "10.0.0.101", 40001)][0].state == CLOSING
    assert got[(UDP, VIP, 53, "10.0.0.100", 5353)][0].state == NONE
    fw = got[(TCP, VIP, 25, "10.0.0.104", 40004)][0]
    assert (fw.svc_proto, fw.fwmark, fw.daddr, fw.dport) == ("fwm", 7, "10.0.0.3", 0)
    t = next(e for e, _ in items if e.kind == TEMPLATE)
    assert (t.svc_ident, t.caddr, t.daddr, t.dport, t.timeout_ms) == (("tcp", VIP, 443), "10.0.0.102", "10.0.0.4",
                                                                      443, 250000)


def test_backup_maps_entries_to_its_own_marks():
    items = [e for e, _ in core.to_entries(master_view(), *kernel())]
    adds, refused = core.plan_apply(items, backup_view())
    assert refused == {"unknown_service": 1}   # the fwmark service is not on the backup
    by = {(a.map, a.key): a for a in adds}
    a = by[("flows", f"{VIP} . 80 . 10.0.0.100 . 40000")]
    assert (a.mark, a.timeout, a.expires_ms, a.closing) == (M(105), 900, 890000, False)
    c = by[("flows", f"{VIP} . 80 . 10.0.0.101 . 40001")]
    assert (c.mark, c.timeout, c.expires_ms, c.closing) == (M(106), 120, 100000, True)
    assert by[("uflows", f"{VIP} . 53 . 10.0.0.100 . 5353")].mark == M(109)
    assert by[("p13", "10.0.0.102")].mark == M(112)
    cmds = core.render(adds)
    assert any(c.startswith("add element inet halb closing { 10.0.0.10 . 80 . 10.0.0.101 . 40001 timeout 120s "
                            "expires 100000ms }") for c in cmds), cmds
    assert f"{VIP} . 80 . 10.0.0.100 . 40000 timeout 900s expires 890000ms : 0x4a000069" in cmds[0]


def test_backup_refuses_unknown_servers_and_clamps_timeouts():
    e = Entry(TCP, ESTABLISHED, "tcp", 0, VIP, 80, VIP, 80, "10.0.0.100", 1, "10.0.0.9", 80, 5000)
    long = e._replace(daddr="10.0.0.3", timeout_ms=10 ** 7)
    gone = e._replace(daddr="10.0.0.3", timeout_ms=50)
    tmpl = Entry(TEMPLATE, NONE, "tcp", 0, VIP, 80, "0.0.0.0", 0, "10.0.0.100", 0, "10.0.0.3", 80, 9000)
    adds, refused = core.plan_apply([e, long, gone, tmpl], backup_view())
    assert refused == {"unknown_server": 1, "expired": 1, "not_persistent": 1}
    assert [(a.timeout, a.expires_ms) for a in adds] == [(900, 900000)]


def test_clashes_are_replaced_in_the_same_transaction():
    e = Entry(TCP, ESTABLISHED, "tcp", 0, VIP, 80, VIP, 80, "10.0.0.100", 1, "10.0.0.3", 80, 5000)
    f = e._replace(cport=2)
    adds, _ = core.plan_apply([e, f], backup_view())
    existing = {"flows": {(VIP, 80, "10.0.0.100", 1): M(106), (VIP, 80, "10.0.0.100", 2): M(105)}}
    rep = core.clashes(adds, existing)
    assert rep == {("flows", (VIP, 80, "10.0.0.100", 1))}
    cmds = core.render(adds, rep)
    assert cmds[0] == f"delete element inet halb flows {{ {VIP} . 80 . 10.0.0.100 . 1 }}"
    assert cmds[1].startswith("add element inet halb flows {")


def test_tracker_sends_new_and_changed_entries_only():
    tr = Tracker(resend=60)
    items = core.to_entries(master_view(), *kernel())
    assert tr.observe(items, 100.0) == 6
    sent = tr.take(100, 100.5)
    assert len(sent) == 6 and not tr.dirty
    assert sent[0].timeout_ms == 889500           # its time left when it leaves
    # the same snapshot a little later (traffic refreshed the expiries a bit): nothing to send
    assert tr.observe(items, 101.0) == 0
    # FIN seen on a flow: its state changed
    flows, uflows, closing, tmpl = kernel()
    closing = closing + [((VIP, 80, "10.0.0.100", 40000), 120, 120, None)]
    assert tr.observe(core.to_entries(master_view(), flows, uflows, closing, tmpl), 102.0) == 1
    assert tr.take(100, 102.0)[0].state == CLOSING
    # another server for the same key (port reuse after close)
    flows2 = [(k, x, t, M(6) if k[3] == 40000 else m) for k, x, t, m in flows]
    assert tr.observe(core.to_entries(master_view(), flows2, uflows, closing, tmpl), 103.0) == 1
    assert tr.take(100, 103.0)[0].daddr == "10.0.0.4"
    # not sent for `resend` seconds: sent again (a backup started late gets it)
    assert tr.observe(core.to_entries(master_view(), flows2, uflows, closing, tmpl), 161.0) == 5
    # flows that expired on the master are forgotten
    tr.take(100, 161.0)
    assert tr.observe([], 162.0) == 0 and tr.sent == {} and tr.live == 0


def test_tracker_resends_when_the_expiry_moved_by_half_a_timeout():
    e = Entry(UDP, NONE, "udp", 0, VIP, 53, VIP, 53, "10.0.0.100", 1, "10.0.0.3", 53, 10000)
    tr = Tracker(resend=600)
    tr.observe([(e, 20)], 0.0)
    tr.take(10, 0.0)
    assert tr.observe([(e._replace(timeout_ms=10000), 20)], 5.0) == 0     # expiry moved 5 s
    assert tr.observe([(e._replace(timeout_ms=20000), 20)], 5.0) == 1     # moved 15 s > 10 s


def test_sender_respects_its_rate_and_keeps_alive():
    tr = Tracker()
    e = Entry(TCP, ESTABLISHED, "tcp", 0, VIP, 80, VIP, 80, "10.0.0.100", 1, "10.0.0.3", 80, 900000)
    tr.observe([(e._replace(cport=p), 900) for p in range(1, 1001)], 0.0)
    s = Sender(syncid=3, epoch=77, key=KEY, maxlen=1472, rate=10, burst=5)
    out = s.poll(tr, 0.0)
    assert len(out) == 5                         # the burst
    assert all(len(d) <= 1472 for d in out)
    assert sum(len(codec.decode_packet(d, KEY)[0].entries) for d in out) == 5 * 39
    assert len(s.poll(tr, 0.05)) == 0            # half a token
    assert len(s.poll(tr, 0.3)) == 3             # 10 per second: 0.5 + 2.5 tokens
    seqs = [codec.decode_packet(d, KEY)[0].seq for d in out]
    assert seqs == [1, 2, 3, 4, 5]
    tr2 = Tracker()
    s2 = Sender(syncid=3, epoch=77, key=None, rate=10, burst=5)
    ka = s2.poll(tr2, 10.0)
    assert len(ka) == 1 and codec.decode_packet(ka[0])[0].entries == []
    assert s2.poll(tr2, 10.5) == [] and len(s2.poll(tr2, 11.0)) == 1


def pkt(seq, epoch=1000, syncid=3, key=KEY, n=1, sender=1, stamp=0):
    e = Entry(TCP, ESTABLISHED, "tcp", 0, VIP, 80, VIP, 80, "10.0.0.100", 1, "10.0.0.3", 80, 900000)
    return codec.encode_packet([e] * n, syncid=syncid, epoch=epoch, seq=seq, key=key, sender=sender,
                               stamp_ms=stamp)


def test_receiver_drops_replays_forgeries_and_other_syncids():
    r = Receiver(key=KEY, syncid=3)
    assert len(r.receive(pkt(1), "10.0.0.1", 0)) == 1
    assert r.receive(pkt(1), "10.0.0.1", 0) == []               # replayed
    assert len(r.receive(pkt(3), "10.0.0.1", 0)) == 1
    assert len(r.receive(pkt(2), "10.0.0.1", 0)) == 1           # late but never seen: taken
    assert r.receive(pkt(2), "10.0.0.1", 0) == []
    assert len(r.receive(pkt(200), "10.0.0.1", 0)) == 1
    assert r.receive(pkt(100), "10.0.0.1", 0) == []             # older than the window
    assert r.receive(pkt(201, epoch=999), "10.0.0.1", 0) == []  # an older sender generation
    assert r.receive(pkt(5, syncid=4), "10.0.0.1", 0) == []
    assert r.receive(pkt(6, key=b"wrong"), "10.0.0.1", 0) == []
    assert r.receive(pkt(7, key=None), "10.0.0.1", 0) == []
    assert r.receive(b"\x00" * 7, "10.0.0.1", 0) == []
    assert len(r.receive(pkt(1, epoch=2000), "10.0.0.1", 0)) == 1   # a restarted master
    assert r.drops == {"packet_replay": 3, "packet_stale_epoch": 1, "packet_syncid": 1, "packet_bad_mac": 1,
                       "packet_unsigned": 1, "packet_malformed": 1}
    assert r.peers[1].epoch == 2000 and r.peers[1].packets == 5 and r.peers[1].addr == "10.0.0.1"
    # syncid 0 on the backup takes every syncid, as IPVS's backup does
    r0 = Receiver(key=None, syncid=0)
    assert len(r0.receive(pkt(1, syncid=9, key=None), "10.0.0.2", 0)) == 1


@given(st.lists(st.integers(0, 300), max_size=200))
@settings(max_examples=300)
def test_receiver_accepts_each_sequence_number_at_most_once(seqs):
    r = Receiver(key=None)
    accepted = [s for s in seqs if r.receive(pkt(s, key=None), "10.0.0.1", 0)]
    assert len(accepted) == len(set(accepted))
    # everything not accepted was counted
    assert sum(r.drops.values()) == len(seqs) - len(accepted)


def test_receiver_bounds_its_peers():
    r = Receiver(key=None, max_peers=4)
    for i in range(10):
        r.receive(pkt(1, key=None, sender=i), f"10.0.0.{i}", float(i))
    assert len(r.peers) == 4 and 9 in r.peers and r.peers[9].addr == "10.0.0.9"


def test_a_signed_datagram_replayed_from_another_address_is_a_replay():
    """Replay state follows the signed sender identity, not the source address."""
    r = Receiver(key=KEY, syncid=3)
    data = pkt(5)
    assert len(r.receive(data, "10.0.0.1", 0)) == 1
    assert r.receive(data, "10.0.0.66", 0) == []
    assert r.receive(data, "10.0.0.67", 0) == []
    assert r.drops == {"packet_replay": 2} and list(r.peers) == [1]
    # the identity is signed: changing it breaks the signature
    forged = bytearray(data)
    forged[20:24] = (2).to_bytes(4, "big")
    assert r.receive(bytes(forged), "10.0.0.66", 0) == [] and r.drops["packet_bad_mac"] == 1


def test_a_datagram_stamped_far_from_the_backups_clock_is_refused():
    """A datagram recorded earlier cannot be played to a backup that restarted
    since (no replay state left): its signed time stamp is too old."""
    wall = 1.8e9
    old = pkt(1, stamp=int((wall - 3600) * 1000))
    fresh = pkt(2, stamp=int((wall - 1) * 1000))
    r = Receiver(key=KEY, syncid=3)
    assert r.receive(old, "10.0.0.1", 0, wall) == [] and r.drops == {"packet_stale_time": 1}
    assert len(r.receive(fresh, "10.0.0.1", 0, wall)) == 1
    future = pkt(3, stamp=int((wall + core.MAX_SKEW + 5) * 1000))
    assert r.receive(future, "10.0.0.1", 0, wall) == []
    # the master stamps what it sends with its clock
    s = Sender(syncid=3, epoch=1, key=KEY, sender=codec.sender_id("N1"), clock=lambda: wall)
    data = s.poll(Tracker(), 0.0)[0]
    p = codec.decode_packet(data, KEY)[0]
    assert p.stamp_ms == int(wall * 1000) and p.sender == codec.sender_id("N1") != codec.sender_id("N2")
    assert Receiver(key=KEY).receive(data, "10.0.0.1", 0, wall) == []  # a keepalive: no entries, accepted
    assert Receiver(key=KEY).drops == {}


def test_held_entries_are_stored_compactly():
    """A full store of held entries stays small (262,144 Entry tuples took 111 MB)."""
    import tracemalloc

    h = core.Held()
    es = [Entry(TCP, ESTABLISHED, "tcp", 0, VIP, 80, VIP, 80, f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}",
                1024 + i % 60000, "10.0.0.3", 80, 900000) for i in range(20000)]
    tracemalloc.start()
    try:
        h.add(es, 0.0)
        size, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(h) == 20000
    per = size / 20000
    assert per < 250, f"{per:.0f} bytes per held entry"
    assert h.limit * per < 40e6
    # the store is bounded: beyond its limit new ones are counted and dropped
    small = core.Held(limit=100)
    small.add(es[:150], 0.0)
    assert len(small) == 100 and small.overflow == 50
    assert small.alive(1.0)[0] == es[0]._replace(timeout_ms=899000)


def test_end_to_end_without_sockets():
    """Master's kernel elements -> datagrams -> backup's nft commands."""
    tr = Tracker()
    tr.observe(core.to_entries(master_view(), *kernel()), 0.0)
    s = Sender(syncid=1, epoch=core.new_epoch(1.7e9, 5), key=KEY, maxlen=200)
    r = Receiver(key=KEY, syncid=1)
    got = []
    for data in s.poll(tr, 0.0):
        assert len(data) <= 200
        got += r.receive(data, "10.0.0.1", 0.0)
    adds, refused = core.plan_apply(got, backup_view())
    assert len(adds) == 5 and refused == {"unknown_service": 1}


def test_held_entries_wait_for_their_service_and_expire():
    from halb.sync.core import Held

    h = Held(limit=3)
    e = Entry(TCP, ESTABLISHED, "tcp", 0, VIP, 80, VIP, 80, "10.0.0.100", 1, "10.0.0.3", 80, 10000)
    other = e._replace(svc_port=81, vport=81, cport=2, timeout_ms=100000)
    h.add([e, other, e._replace(cport=3, timeout_ms=1000), e._replace(cport=4)], 1000.0)
    assert len(h) == 3 and h.overflow == 1
    adds, refused = h.place(TableView({}), 1000.0)         # no table yet: all stay
    assert adds == [] and len(h) == 3
    adds, refused = h.place(backup_view(), 1002.0)         # the table appears 2 s later
    assert [(a.key, a.expires_ms) for a in adds] == [(f"{VIP} . 80 . 10.0.0.100 . 1", 8000)]
    assert refused == {"unknown_service": 1}             # port 81: still held; cport 3 expired
    assert [x.flow_key for x in h.alive(1002.0)] == [other.flow_key]
    # handed over through a file, the time left counted from the wall clock
    h2 = Held()
    assert h2.load(h.dump(1010.0), 1050.0) == 1
    assert h2.alive(1050.0)[0].timeout_ms == 50000        # it expires at 1100
    assert h2.load(b"junk", 0) == 0 and h2.load(h.dump(1010.0)[:-5], 1050.0) == 0


@st.composite
def snapshots(draw):
    """A sequence of kernel snapshots: flows appear, change server or state, vanish."""
    out = []
    for _ in range(draw(st.integers(1, 6))):
        snap = {}
        for cport in draw(st.sets(st.integers(1, 12), max_size=12)):
            snap[cport] = (draw(st.sampled_from(["10.0.0.3", "10.0.0.4"])),
                           draw(st.sampled_from([ESTABLISHED, CLOSING])), draw(st.integers(1, 900)))
        out.append((draw(st.floats(0.0, 100.0)), snap))
    return out


@given(snapshots(), st.integers(1, 5))
@settings(max_examples=300)
def test_tracker_property_backup_ends_with_the_masters_view(seq, per_take):
    """Whatever the snapshots, once the dirty set is drained after the last
    one, every live flow's current server and state has been sent, and
    nothing is sent for a flow that is not live."""
    tr = Tracker(resend=1e9)
    backup = {}
    now = 0.0
    for dt, snap in seq:
        now += dt
        items = [(Entry(TCP, state, "tcp", 0, VIP, 80, VIP, 80, "10.0.0.100", cport, rip, 80, left * 1000), 900)
                 for cport, (rip, state, left) in snap.items()]
        tr.observe(items, now)
        while tr.dirty:
            for e in tr.take(per_take, now):
                assert e.cport in snap
                backup[e.cport] = (e.daddr, e.state)
    last = seq[-1][1]
    for cport, (rip, state, left) in last.items():
        assert backup[cport] == (rip, state)
    assert tr.live == len(last) and set(k[4] for k in tr.sent) == set(last)
