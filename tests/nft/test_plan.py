"""The pure parts of the nft engine: scheduler slot tables and nft text."""
from __future__ import annotations

from collections import Counter

from halb.model import Dest, Service, ServiceKey, Timeouts
from halb.nft import ruleset as rs
from halb.nft.plan import MAX_PERIOD, slot_table
from halb.sched import Packet, make_scheduler

KEY = ServiceKey("tcp", "10.0.0.10", 80)


def _svc(sched, weights, **kw):
    return Service(KEY, scheduler=sched, dests=[Dest(f"10.0.0.{i + 1}", 80, "gate", w)
                                                  for i, w in enumerate(weights)], **kw)


def _names(svc, slots):
    return [svc.dests[i].addr for _, i in slots]


def test_rr_and_wrr_repeat_the_exact_ipvs_period():
    for sched, weights in (("rr", (1, 1, 1)), ("wrr", (3, 1)), ("wrr", (4, 2, 6)), ("rr", (1, 0, 1))):
        svc = _svc(sched, weights)
        expr, size, slots = slot_table(svc)
        assert expr == "" and size == len(slots)
        ref = make_scheduler(svc)
        ref.update(svc.dests)
        pkt = Packet("1.2.3.4", 1000, KEY.addr, 80)
        want = [ref.schedule(svc.dests, pkt).addr for _ in range(size * 3)]
        assert _names(svc, slots) * 3 == want, (sched, weights)
    # weight 0 never scheduled; wrr 3:1 has a period of 4
    assert "10.0.0.2" not in _names(_svc("rr", (1, 0, 1)), slot_table(_svc("rr", (1, 0, 1)))[2])
    assert Counter(_names(_svc("wrr", (3, 1)), slot_table(_svc("wrr", (3, 1)))[2])) == \
        Counter({"10.0.0.1": 3, "10.0.0.2": 1})


def test_huge_weights_are_scaled_to_a_bounded_period():
    svc = _svc("wrr", (100000, 30000, 1))
    _, size, slots = slot_table(svc)
    assert size <= MAX_PERIOD
    c = Counter(_names(svc, slots))
    assert c["10.0.0.3"] >= 1 and 3.0 < c["10.0.0.1"] / c["10.0.0.2"] < 3.7


def test_hash_tables_cover_every_bucket_with_available_servers():
    for sched, size in (("sh", 256), ("dh", 256), ("mh", 4093)):
        svc = _svc(sched, (1, 1, 2))
        expr, n, slots = slot_table(svc)
        assert n == size and len(slots) == size and expr.startswith("ip ")
    # a quiesced server has no bucket; without fallback its buckets drop, with
    # fallback they go to the others
    svc = _svc("sh", (1, 0))
    _, _, slots = slot_table(svc)
    assert set(_names(svc, slots)) == {"10.0.0.1"} and len(slots) < 256
    svc = _svc("sh", (1, 0), flags=("sh-fallback",))
    _, _, slots = slot_table(svc)
    assert set(_names(svc, slots)) == {"10.0.0.1"} and len(slots) == 256
    assert slot_table(_svc("sh", (1, 1), flags=("sh-port",)))[0] == "ip saddr . th sport"


def test_count_based_sequence_starts_from_live_counts():
    svc = _svc("wlc", (1, 1))
    _, _, slots = slot_table(svc, {("10.0.0.1", 80): (2, 0), ("10.0.0.2", 80): (0, 0)})
    # the idle server takes new connections until it has as many as the other
    assert _names(svc, slots)[:2] == ["10.0.0.2", "10.0.0.2"]
    assert Counter(_names(svc, slots)) == Counter({"10.0.0.1": 31, "10.0.0.2": 33})
    # fo: always the highest weight
    svc = _svc("fo", (1, 5, 2))
    assert set(_names(svc, slot_table(svc)[2])) == {"10.0.0.2"}


def test_rules_text():
    svc = _svc("rr", (1, 1))
    plan = rs.ServicePlan(7, svc, [rs.DestPlan(1, "10.0.0.1", 80, "local"),
                                   rs.DestPlan(2, "10.0.0.2", 80, "gate", ridx=3)])
    plan.sequence, plan.slots = [(0, 2), (1, 1)], 2
    text = "\n".join(rs.service_rules(plan, Timeouts(), fresh=True))
    assert "numgen inc mod 2 offset 28672 map @q goto t_tcp" in text and "@p7" not in text
    assert "add element inet halb q { 28672 : 0x4a000002, 28673 : 0x4a000001 }" in text
    svc.persistent, svc.timeout, svc.netmask = True, 60, "255.255.255.0"
    text = "\n".join(rs.service_rules(plan, Timeouts(), fresh=True))
    assert "ip saddr & 255.255.255.0 map @p7 meta mark @live goto t7" in text
    assert "update @p7 { ip saddr & 255.255.255.0 timeout 60s : meta mark }" in text
    fwd = rs.dest_forward_add(plan.dests[1])
    assert fwd == ["add element inet halb rtm { 0x4a000002 : 0x4b000003 }"]
    assert rs.dest_forward_add(plan.dests[0]) == []  # Local: delivered here
    shared = "\n".join(rs.shared_rules(Timeouts(900, 120, 300), fresh=True))
    assert "timeout 120s" in shared and "timeout 900s" in shared and "timeout 300s" in shared


def test_merge_elements_keeps_deletes_before_adds():
    cmds = ["delete element inet halb rtm { 0x4a000001 }", "add element inet halb rtm { 0x4a000001 : 0x4b000002 }",
            "flush chain inet halb s1", "add element inet halb live { 0x4a000003 }",
            "add element inet halb rtm { 0x4a000004 : 0x4b000002 }", "add element inet halb q1 { 0 : 1 }"]
    out = rs.merge_elements(cmds)
    assert out[0].startswith("delete element") and "add element inet halb q1 { 0 : 1 }" in out
    assert "add element inet halb rtm { 0x4a000001 : 0x4b000002, 0x4a000004 : 0x4b000002 }" in out
    assert out.index("add element inet halb rtm { 0x4a000001 : 0x4b000002, 0x4a000004 : 0x4b000002 }") > 0


def test_flow_rules_never_delete_on_the_way():
    """FIN/RST shortens the flow's timeout and marks it closing; only a new
    SYN on a closing flow deletes (steady deletions make the kernel's hash
    tables resize over and over)."""
    rules = rs.shared_rules(Timeouts(900, 120, 300), fresh=True)
    k = [r for r in rules if " k_tcp " in r]
    fin = next(r for r in k if "fin|rst" in r)
    assert "delete" not in fin
    assert "update @flows" in fin and "timeout 120s" in fin and "update @closing" in fin
    assert not any("delete" in r for r in rules if " kc_tcp" not in r)
    syn = next(r for r in rules if " kc_tcp " in r and "delete" in r)
    assert "(syn|ack) == syn" in syn and syn.endswith("return")
    assert "add set inet halb closing" in "\n".join(rs.globals_create())
