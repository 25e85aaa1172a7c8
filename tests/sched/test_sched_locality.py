"""lblc and lblcr (ip_vs_lblc.c, ip_vs_lblcr.c), time passed in.

All servers weight 10; kernel list C, B, A.  "Locality overload" = more
active connections than the weight while some server is under half its
weight.  The kernel's GC timer ticks every 60 s from the first call; every
30th tick is a full check dropping entries unused for 24 h, so full checks
run at t = 1800, 3600, ... 86400, 88200 ..."""
from __future__ import annotations

from halb.sched import Packet


def to(dst_last):
    return Packet("198.51.100.9", 40000, f"192.0.2.{dst_last}", 80)


# ---------------------------------------------------------------- lblc
def test_lblc_sticks_to_the_server_of_a_destination(rig):
    r = rig("lblc", [10, 10, 10])
    assert r.pick(to(1), now=0) == "C"  # wlc over an idle service: first in list
    r.load(C=(5, 0))
    assert r.pick(to(1), now=1) == "C"  # cached, although wlc would say B
    assert r.pick(to(2), now=2) == "B"  # another destination: wlc


def test_lblc_leaves_a_locality_overloaded_server(rig):
    r = rig("lblc", [10, 10, 10])
    assert r.pick(to(1), now=0) == "C"
    r.load(C=(11, 0), B=(5, 0), A=(5, 0))  # 11 > 10 but nobody under half: stay
    assert r.pick(to(1), now=1) == "C"
    r.load(A=(4, 0))  # 4 * 2 < 10: C is overloaded for lblc; wlc picks A
    assert r.pick(to(1), now=2) == "A"
    r.load(C=(0, 0))
    assert r.pick(to(1), now=3) == "A"  # the entry now points to A


def test_lblc_weight_zero_or_removed_server_is_replaced(rig):
    r = rig("lblc", [10, 10, 10])
    assert r.pick(to(1), now=0) == "C"
    r.edit("C", weight=0)
    assert r.pick(to(1), now=1) == "B"
    r.remove("B")
    assert r.pick(to(1), now=2) == "A"


def test_lblc_server_readded_before_use_is_found_again(rig):
    r = rig("lblc", [10, 10, 10])
    assert r.pick(to(1), now=0) == "C"
    d = r["C"]
    r.remove("C")
    r.dests.append(d)  # same address:port back (the kernel's trash)
    r.sched.update(r.dests)
    r.load(B=(0, 0), A=(0, 0), C=(3, 0))
    assert r.pick(to(1), now=1) == "C"


def test_lblc_ignores_the_threshold_flag_for_a_cached_server(rig):
    # ip_vs_lblc_schedule checks weight and its own overload rule only
    r = rig("lblc", [10, 10, 10])
    assert r.pick(to(1), now=0) == "C"
    r["C"].overloaded = True
    assert r.pick(to(1), now=1) == "C"
    assert r.pick(to(2), now=2) == "B"  # a new pick skips it


def test_lblc_entry_expires_at_the_full_check_after_24h(rig):
    def scenario(last_call):
        r = rig("lblc", [10, 10, 10])
        assert r.pick(to(1), now=0) == "C"
        assert r.pick(to(1), now=100) == "C"  # last use: t = 100
        r.load(C=(5, 0))
        return r.pick(to(1), now=last_call)

    assert scenario(88199) == "C"  # checks at 86400 (< 100 + 86400): kept
    assert scenario(88200) == "B"  # full check at 88200 dropped it


def test_lblc_expiration_is_configurable():
    from halb.model import Dest, Service, ServiceKey
    from halb.sched.locality import LocalityLeastConnection

    s = LocalityLeastConnection(Service(ServiceKey("tcp", "192.0.2.1", 80), scheduler="lblc"),
                                expiration=60)
    dests = [Dest("10.0.0.1", 80, weight=10), Dest("10.0.0.2", 80, weight=10)]
    s.update(dests)
    assert s.schedule(dests, to(1), now=0).addr == "10.0.0.2"
    dests[1].activeconns = 5
    assert s.schedule(dests, to(1), now=1700).addr == "10.0.0.2"
    assert s.schedule(dests, to(1), now=3700).addr == "10.0.0.1"  # 1800 + 60 < 3600


# ---------------------------------------------------------------- lblcr
def test_lblcr_grows_a_set_and_uses_its_least_loaded(rig):
    r = rig("lblcr", [10, 10, 10])
    assert r.pick(to(1), now=0) == "C"
    r.load(C=(11, 0), A=(4, 0))
    assert r.pick(to(1), now=10) == "B"  # C overloaded: wlc pick joins the set
    r.load(C=(0, 0), B=(3, 0))
    assert r.pick(to(1), now=20) == "C"  # least loaded member of {B, C}
    r.load(C=(8, 0), B=(0, 0), A=(0, 0))
    assert r.pick(to(1), now=30) == "B"  # A is idle but not in the set


def test_lblcr_drops_the_most_loaded_member_after_expiration(rig):
    r = rig("lblcr", [10, 10, 10])
    assert r.pick(to(1), now=0) == "C"
    r.load(C=(11, 0), A=(4, 0))
    assert r.pick(to(1), now=10) == "B"  # set {B, C}, modified at t = 10
    r.load(C=(0, 0), B=(3, 0), A=(0, 0))
    assert r.pick(to(1), now=20) == "C"
    assert r.pick(to(1), now=86410) == "C"  # not yet after lastmod + 24 h
    assert r.pick(to(1), now=86411) == "C"  # B (most loaded) dropped now
    r.load(C=(8, 0), B=(0, 0))
    assert r.pick(to(1), now=86412) == "C"  # B is no longer in the set


def test_lblcr_removed_member_is_not_used(rig):
    r = rig("lblcr", [10, 10, 10])
    assert r.pick(to(1), now=0) == "C"
    r.load(C=(11, 0), A=(4, 0))
    assert r.pick(to(1), now=1) == "B"
    r.load(C=(0, 0), B=(0, 0), A=(9, 0))
    r.remove("C")
    assert r.pick(to(1), now=2) == "B"
    r.remove("B")
    assert r.pick(to(1), now=3) == "A"  # set empty of usable servers: wlc


def test_lblcr_no_server(rig):
    r = rig("lblcr", [0, 0])
    assert r.pick(to(1), now=0) is None
