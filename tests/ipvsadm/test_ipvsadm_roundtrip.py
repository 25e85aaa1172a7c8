"""Property: any table -> `-S` text -> `-R` parse -> the same table."""
from __future__ import annotations

import ipaddress

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from halb.ipvsadm.fmt import Names, format_save
from halb.ipvsadm.parse import MAX_TIMEOUT, NumericResolver, parse_restore
from halb.model import MAX_WEIGHT, SCHEDULERS, Dest, Op, Service, ServiceKey, Table

v4 = st.integers(1, 2**32 - 2).map(lambda i: str(ipaddress.IPv4Address(i)))
v6 = st.integers(1, 2**128 - 2).map(lambda i: str(ipaddress.IPv6Address(i)))
masks = st.integers(0, 32).map(lambda n: str(ipaddress.IPv4Network(f"0.0.0.0/{n}").netmask))


@st.composite
def services(draw):
    proto = draw(st.sampled_from(["tcp", "udp", "fwm"]))
    six = draw(st.booleans())
    if proto == "fwm":
        key = ServiceKey("fwm", fwmark=draw(st.integers(1, 2**32 - 1)), af=6 if six else 4)
    else:
        key = ServiceKey(proto, draw(v6 if six else v4), draw(st.integers(1, 65535)))
    sched = draw(st.sampled_from(SCHEDULERS))
    flags = ()
    if sched in ("sh", "mh"):
        flags = tuple(draw(st.sets(st.sampled_from([f"{sched}-fallback", f"{sched}-port"]))))
    persistent = draw(st.booleans())
    timeout = draw(st.integers(1, MAX_TIMEOUT)) if persistent else 0
    if six:
        netmask = str(draw(st.integers(1, 128))) if persistent else "128"
    else:
        netmask = draw(masks.filter(lambda m: m != "0.0.0.0")) if persistent else "255.255.255.255"
    svc = Service(key, sched, persistent, timeout, netmask, flags,
                  ops=proto != "tcp" and draw(st.booleans()),
                  pe=draw(st.sampled_from(["", "sip"])))
    dests = {}
    for _ in range(draw(st.integers(0, 4))):
        fwd = draw(st.sampled_from(["gate", "masq", "ipip"]))
        other_family = fwd == "ipip" and draw(st.booleans())
        addr = draw((v4 if six else v6) if other_family else (v6 if six else v4))
        port = draw(st.integers(0, 65535))
        if proto != "fwm" and fwd in ("gate", "ipip"):
            port = key.port
        d = Dest(addr, port, fwd, draw(st.integers(0, MAX_WEIGHT)),
                 draw(st.integers(0, 100000)), draw(st.integers(0, 100000)))
        dests[d.ident] = d
    return svc, list(dests.values())


def build(items) -> Table:
    ops = []
    seen = set()
    for svc, dests in items:
        if svc.key in seen:
            continue
        seen.add(svc.key)
        ops.append(Op("add-service", service=svc))
        ops += [Op("add-dest", key=svc.key, dest=d) for d in dests]
    return Table().apply(ops)


def canon(t: Table):
    return sorted((repr(s.key), s.scheduler, s.persistent, s.timeout, s.netmask, s.flags, s.ops, s.pe,
                   sorted((d.addr, d.port, d.fwd, d.weight, d.u_threshold, d.l_threshold) for d in s.dests))
                  for s in t.config_services())


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(services(), max_size=5))
def test_save_restore_round_trip(items):
    table = build(items)
    text = format_save(table.config_services(), Names(numeric=True))
    plan = parse_restore(text, NumericResolver())
    again = Table().apply(plan.ops)
    assert canon(again) == canon(table)
    # and the restored table saves to the same text
    assert format_save(again.config_services(), Names(numeric=True)) == text
