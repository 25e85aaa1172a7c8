"""rr, wrr, lc, wlc, sed, nq, fo, ovf against sequences computed by hand from
the kernel's ip_vs_<name>.c.  Servers are added A, B, C...; the kernel's list
(list_add at the head) is therefore walked C, B, A."""
from __future__ import annotations

import pytest

from halb.errors import IpvsError
from halb.model import Service, ServiceKey
from halb.sched import SCHEDULERS, make_scheduler


def test_every_ipvs_scheduler_exists():
    for name in SCHEDULERS:
        s = make_scheduler(Service(ServiceKey("tcp", "192.0.2.1", 80), scheduler=name))
        assert s.name == name


def test_unknown_scheduler_is_the_kernel_error():
    svc = Service(ServiceKey("tcp", "192.0.2.1", 80))
    svc.scheduler = "foo"
    with pytest.raises(IpvsError, match="Scheduler or persistence engine not found"):
        make_scheduler(svc)


def test_empty_service_has_no_server(rig):
    for name in SCHEDULERS:
        assert rig(name, []).pick(now=0) is None, name


# ---------------------------------------------------------------- rr
def test_rr_walks_the_kernel_list_newest_first(rig):
    assert rig("rr", [1, 1, 1]).picks(7) == "CBACBAC"


def test_rr_skips_weight_zero_and_overloaded(rig):
    r = rig("rr", [1, 0, 1, 1])
    assert r.picks(6) == "DCADCA"
    r["C"].overloaded = True
    assert r.picks(4) == "DADA"
    r["A"].weight = 0
    r["D"].weight = 0
    assert r.pick() is None


def test_rr_continues_after_removing_the_last_chosen(rig):
    r = rig("rr", [1, 1, 1])
    assert r.picks(2) == "CB"
    # ip_vs_rr_del_dest moves the pointer to B's predecessor (C): A is next
    r.remove("B")
    assert r.picks(3) == "ACA"


def test_rr_removing_another_server_keeps_the_pointer(rig):
    r = rig("rr", [1, 1, 1, 1])  # kernel list D C B A
    assert r.picks(2) == "DC"
    r.remove("A")
    assert r.picks(3) == "BDC"


def test_rr_new_server_joins_at_the_head(rig):
    r = rig("rr", [1, 1, 1])
    assert r.pick() == "C"
    r.add()  # D: kernel list D C B A, pointer still on C
    assert r.picks(5) == "BADCB"


def test_rr_edit_does_not_reset(rig):
    r = rig("rr", [1, 1, 1])
    assert r.picks(2) == "CB"
    r.edit("C", weight=5)
    assert r.picks(2) == "AC"


# ---------------------------------------------------------------- wrr
def test_wrr_4_3_2_kernel_interleaving(rig):
    # added A(4) B(3) C(2): kernel list C B A; cw = 4, 3, 2, 1
    assert rig("wrr", [4, 3, 2]).picks(18) == "ABACBACBA" * 2


def test_wrr_lvs_documentation_sequence(rig):
    # added C(2) B(3) A(4) -> kernel list A B C: the LVS docs' AABABCABC
    r = rig("wrr", [2, 3, 4])  # here A is the first added, weight 2
    seq = r.picks(18)
    # map back: kernel list is C(4) B(3) A(2) in our names
    assert seq == "CCBCBACBA" * 2


def test_wrr_uses_gcd_steps(rig):
    # weights 2 and 4: di = 2, mw = 4 - (2 - 1) = 3, cw = 3, 1
    assert rig("wrr", [2, 4]).picks(9) == "BBABBABBA"


def test_wrr_weight_zero_and_overload(rig):
    r = rig("wrr", [3, 0, 1])
    assert r.picks(8) == "AACA" * 2
    r["A"].overloaded = True
    assert r.picks(3) == "CCC"
    r["C"].overloaded = True
    assert r.pick() is None
    r2 = rig("wrr", [0, 0])
    assert r2.pick() is None


def test_wrr_change_restarts_from_the_head(rig):
    r = rig("wrr", [4, 3, 2])
    assert r.picks(4) == "ABAC"  # now cw = 2, just after C
    # ip_vs_wrr_dest_changed: back to the list head, cw kept (<= mw, di = 1)
    r.edit("B", weight=3)
    assert r.picks(5) == "CBACB"


# ---------------------------------------------------------------- lc
def test_lc_overhead_is_active_times_256_plus_inactive(rig):
    r = rig("lc", [1, 1, 1])
    r.load(A=(1, 0), B=(0, 255), C=(0, 256))
    assert r.pick() == "B"  # 256, 255, 256
    r.load(B=(0, 257))
    assert r.pick() == "C"  # C (256) comes before A (256) in the kernel list


def test_lc_ignores_weight_but_skips_zero_and_overloaded(rig):
    r = rig("lc", [1, 100, 0])
    r.load(A=(0, 0), B=(1, 0), C=(0, 0))
    assert r.pick() == "A"
    r["A"].overloaded = True
    assert r.pick() == "B"


# ---------------------------------------------------------------- wlc
def test_wlc_least_overhead_per_weight(rig):
    r = rig("wlc", [1, 2, 3])
    r.load(A=(1, 0), B=(1, 0), C=(2, 0))  # 256/1, 256/2, 512/3
    assert r.pick() == "B"


def test_wlc_ties_keep_the_newest(rig):
    r = rig("wlc", [1, 2])
    r.load(A=(1, 0), B=(2, 0))  # 256/1 == 512/2
    assert r.pick() == "B"
    r.load(B=(2, 1))
    assert r.pick() == "A"


def test_wlc_weight_zero_never_chosen(rig):
    r = rig("wlc", [1, 0])
    r.load(A=(50, 50), B=(0, 0))
    assert r.pick() == "A"


# ---------------------------------------------------------------- sed / nq
def test_sed_and_nq_differ_on_an_idle_server(rig):
    loads = dict(A=(0, 0), B=(2, 0))
    sed = rig("sed", [1, 3])
    sed.load(**loads)
    # (0+1)/1 == (2+1)/3: the first in the kernel list (B) keeps it
    assert sed.pick() == "B"
    nq = rig("nq", [1, 3])
    nq.load(**loads)
    # nq sends to an idle server at once
    assert nq.pick() == "A"


def test_sed_ignores_inactive_connections(rig):
    r = rig("sed", [1, 1])
    r.load(A=(0, 1000), B=(1, 0))
    assert r.pick() == "A"


def test_nq_first_idle_in_list_order(rig):
    r = rig("nq", [1, 1, 5])
    r.load(A=(0, 0), B=(0, 0), C=(3, 0))
    assert r.pick() == "B"
    r.load(A=(1, 0), B=(1, 0))
    # all busy: (1+1)/1, (1+1)/1, (3+1)/5 -> C
    assert r.pick() == "C"


# ---------------------------------------------------------------- fo / ovf
def test_fo_highest_weight_newest_first(rig):
    r = rig("fo", [5, 5, 3])
    assert r.picks(3) == "BBB"
    r["B"].overloaded = True
    assert r.pick() == "A"
    r["A"].weight = 0
    assert r.pick() == "C"


def test_ovf_overflows_when_active_exceeds_weight(rig):
    r = rig("ovf", [2, 3, 1])
    r.load(A=(2, 0), B=(4, 0), C=(0, 0))
    assert r.pick() == "A"  # B has 4 > 3 active; A has 2 <= 2
    r.load(A=(3, 0))
    assert r.pick() == "C"
    r.load(C=(2, 0))
    assert r.pick() is None


def test_error_lines_read_like_the_kernel_log(rig):
    from halb.sched import error_line

    r = rig("wrr", [1, 1])
    r["A"].overloaded = r["B"].overloaded = True
    assert r.pick() is None
    assert error_line(r.svc, r.sched) == \
        "wrr: TCP 192.0.2.1:80 - no destination available: all destinations are overloaded"
    r2 = rig("rr", [0])
    assert r2.pick() is None
    assert error_line(r2.svc, r2.sched) == "rr: TCP 192.0.2.1:80 - no destination available"
    fwm = Service(ServiceKey("fwm", fwmark=1), scheduler="lc")
    assert error_line(fwm, make_scheduler(fwm)) == \
        "lc: FWM 1 0x00000001 - no destination available"
