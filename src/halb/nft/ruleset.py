"""The nftables text for halb's table: pure functions, no I/O.

One table, `inet halb`, holds everything. Per virtual service N:

    s<N>  chain: entry point (known flow? persistent client? scheduler)
    t<N>  chain: a persistent service's new connection (persistence entry)
    p<N>  map   client addr & netmask -> dest mark (persistence templates, -p/-M;
                only for persistent services)
    q     map   numgen/jhash slot -> dest mark (the scheduler's decisions; one
                map, SLOT_STRIDE slots per service)

The per-packet work after s<N> is shared by all services of a kind, in as
few steps as the semantics allow (a packet of a known flow: one flow-map
lookup, one closing-set lookup, one refresh of its timeout, one counter, one
route-mark lookup):

    t_<kind>  a NEW connection: conns counter, flow entry (a separate rule:
              a full map never stops forwarding), ct mark for NAT, then f
    k_<tcp|udp>[m]  a packet of a known flow: refresh its timeout; FIN/RST
              shortens it to tcpfin and marks the flow closing; then f
    kc_tcp[m] a packet of a closing flow: a new SYN on it (port reuse) drops
              it and is scheduled as a new connection; else tcpfin refresh
    f / fm    packet counter, then Direct Return's route mark (f) or NAT (fm)

Counters live in three global sets with a per-element counter, keyed by dest
mark: `dstats` (packets to the server), `nstats` (new connections), `ostats`
(replies, masq). Named counter objects would make every nft run fetch tens of
thousands of objects; set elements are not fetched.

The dynamic flow maps are shared by all services (a dynamic set costs kernel
memory of its own; one per service would not scale), keyed by VIP . port .
client . client port (TCP and UDP in two maps), value = dest mark. One entry
per connection; a closing one (FIN/RST seen: IPVS's FIN_WAIT, tcpfin
timeout) also has an entry in `closing`. Entries are never deleted on the
way (only expire), except when a new SYN reuses a closing flow's key: the
kernel's hash tables resize over and over under steady deletions.

    flows   map -> dest mark (TCP; timeout tcp, or tcpfin once closing)
    uflows  map -> dest mark (UDP; timeout udp)
    closing set              (TCP flows that saw FIN/RST; timeout tcpfin)

Global objects: `svc4`/`svc4any`/`svcfw` dispatch verdict maps, `nt4` (services
without NAT: not tracked by conntrack), `rtm` (dest mark -> route mark for
Direct Return: policy routing sends the packet to the real server's MAC),
`dnat4` (dest mark -> RIP . port for masq), `snat4` (client networks to
masquerade). Every edit of a service only touches that service's objects and
its elements in the global maps, so an edit costs the same whatever the table
size.

A dest mark is MARK_BASE | id (id unique per (service, real server) while it
exists); a route mark is ROUTE_BASE | index of the real server's address.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from halb.model import Service, Timeouts

TABLE = "halb"
FAMILY = "inet"
T = f"{FAMILY} {TABLE}"
MARK_BASE = 0x4A000000
ROUTE_BASE = 0x4B000000
MARK_MASK = 0xFF000000
MID_LIMIT = 1 << 24        # dest mark ids
VERSION = 3                # of the kernel objects' layout: a state written for
                           # another layout rebuilds the table in full
# a flow lives tcpfin (120 s by default) after its FIN: 1M entries hold
# ~8,700 new connections a second. nft sizes the hash table for `size` when
# the map is created (16 MB of buckets) and shrinks it to the live entries.
FLOW_SIZE = 1048576
PERSIST_SIZE = 65536
STATS_SIZE = 262144
SH_SIZE = 256
PRIO_RAW = -300
PRIO_PRE = -140  # after the usual mangle (-150), so user fwmarks are visible
CLOSED_SYN_RECV = 60


def dmark(mid: int) -> int:
    return MARK_BASE | mid


def rmark(ridx: int) -> int:
    return ROUTE_BASE | ridx


@dataclass
class DestPlan:
    """What the data plane needs to know about one real server of a service."""

    mid: int          # dest mark id
    addr: str
    port: int         # effective port (service port when 0)
    fwd: str          # gate | masq | local
    ridx: int = -1    # route index (gate to a remote server)
    live: bool = True  # False: removed from the table, kept while flows use it


@dataclass
class ServicePlan:
    sid: int
    svc: Service
    dests: list[DestPlan] = field(default_factory=list)
    sequence: list[int] = field(default_factory=list)  # q map: slot -> mid (None slots omitted)
    slots: int = 1     # modulus of numgen/jhash
    hash_expr: str = ""  # "" = numgen inc; else the jhash input expression

    @property
    def full_key(self) -> bool:
        k = self.svc.key
        return k.proto == "fwm" or k.port == 0

    @property
    def has_masq(self) -> bool:
        return any(d.fwd == "masq" for d in self.dests)


# --------------------------------------------------------------------------
# (nft 1.0.6 cannot update a map from a 5-part key: the protocol is left out
# of the key, and UDP services get their own map)
FLOW_TYPE = "ipv4_addr . inet_service . ipv4_addr . inet_service"
FLOW_KEY = "ip daddr . th dport . ip saddr . th sport"


def flow_map(plan: "ServicePlan") -> str:
    return "uflows" if plan.svc.key.proto == "udp" else "flows"


def key_expr(plan: ServicePlan) -> str:
    return FLOW_KEY


def masked_src(plan: ServicePlan) -> str:
    mask = plan.svc.netmask or "255.255.255.255"
    if mask in ("255.255.255.255", "32"):
        return "ip saddr"
    return f"ip saddr & {mask}"


SLOT_STRIDE = 4096  # slots per service in the global q map (mh: 4093, wrr: <= 1024)
MAX_SID = (1 << 32) // SLOT_STRIDE - 1


def slot_base(sid: int) -> int:
    return sid * SLOT_STRIDE


def sched_expr(plan: ServicePlan) -> str:
    base = slot_base(plan.sid)
    if plan.hash_expr:
        return (f"jhash {plan.hash_expr} mod {plan.slots} seed 0x{hash_seed(plan.svc.key):x} "
                f"offset {base}")
    return f"numgen inc mod {plan.slots} offset {base}"


def hash_seed(key) -> int:
    """The jhash seed of a hashing service: from the service's identity (not
    its local id), so every director hashes a client to the same slot."""
    import zlib

    return 0x5eed0000 | (zlib.crc32(f"{key.proto}/{key.addr}:{key.port}/{key.fwmark}".encode()) & 0xFFFF)


def slots_delete(sid: int, slots) -> list[str]:
    if not slots:
        return []
    base = slot_base(sid)
    return [f"delete element {T} q {{ {', '.join(str(base + i) for i in slots)} }}"]


def flow_timeout(plan: ServicePlan, t: Timeouts) -> int:
    return t.udp if plan.svc.key.proto == "udp" else t.tcp


# --------------------------------------------------------------------------
def globals_create() -> list[str]:
    """The table's skeleton (created once, when the first service appears)."""
    return [
        f"add table {T}",
        f"add map {T} svc4 {{ type ipv4_addr . inet_proto . inet_service : verdict; }}",
        f"add map {T} svc4any {{ type ipv4_addr . inet_proto : verdict; }}",
        f"add map {T} svcfw {{ type mark : verdict; }}",
        f"add set {T} nt4 {{ type ipv4_addr . inet_proto . inet_service; }}",
        f"add map {T} rtm {{ type mark : mark; }}",
        f"add map {T} dnat4 {{ type mark : ipv4_addr . inet_service; }}",
        f"add set {T} snat4 {{ type ipv4_addr; flags interval; }}",
        f"add set {T} live {{ type mark; }}",
        f"add map {T} q {{ typeof numgen inc mod 2 : meta mark; }}",
        f"add set {T} dstats {{ type mark; flags dynamic; size {STATS_SIZE}; counter; }}",
        f"add set {T} nstats {{ type mark; flags dynamic; size {STATS_SIZE}; counter; }}",
        f"add set {T} ostats {{ type mark; flags dynamic; size {STATS_SIZE}; counter; }}",
        f"add map {T} flows {{ type {FLOW_TYPE} : mark; flags dynamic,timeout; size {FLOW_SIZE}; }}",
        f"add map {T} uflows {{ type {FLOW_TYPE} : mark; flags dynamic,timeout; size {FLOW_SIZE}; }}",
        f"add set {T} closing {{ type {FLOW_TYPE}; flags dynamic,timeout; size {FLOW_SIZE}; }}",
        f"add chain {T} rawpre {{ type filter hook prerouting priority {PRIO_RAW}; policy accept; }}",
        f"add rule {T} rawpre ip daddr . meta l4proto . th dport @nt4 notrack",
        f"add chain {T} dispatch {{ type filter hook prerouting priority {PRIO_PRE}; policy accept; }}",
        f"add rule {T} dispatch ct direction reply ct mark & 0x{MARK_MASK:x} == 0x{MARK_BASE:x} "
        f"update @ostats {{ ct mark }}",
        f"add rule {T} dispatch ip daddr . meta l4proto . th dport vmap @svc4",
        f"add rule {T} dispatch ip daddr . meta l4proto vmap @svc4any",
        f"add rule {T} dispatch meta mark vmap @svcfw",
        f"add chain {T} natpre {{ type nat hook prerouting priority dstnat; policy accept; }}",
        f"add rule {T} natpre meta mark & 0x{MARK_MASK:x} == 0x{MARK_BASE:x} meta l4proto {{ tcp, udp }} "
        f"dnat ip to meta mark map @dnat4",
        f"add chain {T} natpost {{ type nat hook postrouting priority srcnat; policy accept; }}",
        f"add rule {T} natpost meta mark & 0x{MARK_MASK:x} == 0x{MARK_BASE:x} ip saddr @snat4 masquerade",
    ]


def _dispatch_elem(plan: ServicePlan) -> tuple[str, str]:
    k = plan.svc.key
    if k.proto == "fwm":
        return "svcfw", f"0x{k.fwmark:x}"
    if k.port == 0:
        return "svc4any", f"{k.addr} . {k.proto}"
    return "svc4", f"{k.addr} . {k.proto} . {k.port}"


def service_create(plan: ServicePlan) -> list[str]:
    """Objects of a new service (its rules come from service_rules)."""
    n = plan.sid
    cmds = [f"add chain {T} s{n}"]
    if plan.svc.persistent:
        cmds += persist_create(plan)
    return cmds


def persist_create(plan: ServicePlan) -> list[str]:
    """A persistent service's own objects: its templates and its t chain."""
    return [f"add map {T} p{plan.sid} {{ type ipv4_addr : mark; flags dynamic,timeout; "
            f"size {PERSIST_SIZE}; }}", f"add chain {T} t{plan.sid}"]


def persist_delete(sid: int) -> list[str]:
    return [f"flush chain {T} t{sid}", f"delete chain {T} t{sid}", f"delete map {T} p{sid}"]


def service_dispatch_add(plan: ServicePlan) -> list[str]:
    m, elem = _dispatch_elem(plan)
    cmds = [f"add element {T} {m} {{ {elem} : goto s{plan.sid} }}"]
    if not plan.has_masq and plan.svc.key.proto != "fwm" and plan.svc.key.port != 0:
        cmds.append(f"add element {T} nt4 {{ {plan.svc.key.addr} . {plan.svc.key.proto} . {plan.svc.key.port} }}")
    return cmds


def service_dispatch_del(plan: ServicePlan, tracked_before: bool) -> list[str]:
    """Remove the service's dispatch entries (tracked_before: it was in nt4)."""
    m, elem = _dispatch_elem(plan)
    cmds = [f"delete element {T} {m} {{ {elem} }}"]
    if tracked_before:
        cmds.append(f"delete element {T} nt4 {{ {plan.svc.key.addr} . {plan.svc.key.proto} . {plan.svc.key.port} }}")
    return cmds


def in_notrack(plan: ServicePlan) -> bool:
    return not plan.has_masq and plan.svc.key.proto != "fwm" and plan.svc.key.port != 0


def service_delete(plan: ServicePlan, old_slots=()) -> list[str]:
    """Every object of a service (dispatch entries must be gone first)."""
    n = plan.sid
    cmds = [f"flush chain {T} s{n}", f"delete chain {T} s{n}"]
    if plan.svc.persistent:
        cmds += persist_delete(n)
    cmds += slots_delete(n, old_slots)
    for d in plan.dests:
        cmds.extend(dest_delete(plan, d))
    return cmds


def o_kind(plan: ServicePlan) -> str:
    """Which shared new-connection chain (t_<kind>) a service's flows use."""
    k = plan.svc.key
    base = "fwm" if k.proto == "fwm" else k.proto
    if plan.svc.ops and base == "udp":
        base = "udpops"
    return base + ("m" if plan.has_masq else "")


SHARED_KINDS = ("tcp", "tcpm", "udp", "udpm", "udpops", "udpopsm", "fwm", "fwmm")
MASQ_KINDS = ("tcpm", "udpm", "udpopsm", "fwmm")
KNOWN = ("k_tcp", "k_tcpm", "kc_tcp", "kc_tcpm", "k_udp", "k_udpm")
FORWARD = ("f", "fm")


def shared_create() -> list[str]:
    return [f"add chain {T} {c}" for c in
            FORWARD + KNOWN + tuple(f"t_{kind}" for kind in SHARED_KINDS)]


def shared_rules(t: Timeouts, fresh: bool) -> list[str]:
    """The per-packet chains shared by all services (see the module
    docstring). Timeouts are written in them."""
    key = FLOW_KEY
    cmds = []
    if not fresh:
        cmds += [f"flush chain {T} {c}" for c in
                 FORWARD + KNOWN + tuple(f"t_{kind}" for kind in SHARED_KINDS)]
    # forwarding: the packet counter, then the route mark (gate) or nothing
    # (masq: natpre DNATs the first packet, conntrack the others; Local: the
    # dest mark has no route, the local rule delivers it)
    for f in FORWARD:
        cmds.append(f"add rule {T} {f} update @dstats {{ meta mark }}")
        if f == "f":
            cmds.append(f"add rule {T} {f} meta mark set meta mark map @rtm accept")
        cmds.append(f"add rule {T} {f} accept")
    for m in ("", "m"):
        fwd = f"f{m}"
        k, kc = f"k_tcp{m}", f"kc_tcp{m}"
        cmds += [
            f"add rule {T} {k} {key} @closing goto {kc}",
            # FIN/RST: the flow's entry now expires after tcpfin, and it is
            # marked closing (no entry is deleted: deletions make the
            # kernel's hash table resize over and over)
            f"add rule {T} {k} tcp flags & (fin|rst) != 0 update @flows {{ {key} timeout {t.tcpfin}s : meta mark }} "
            f"update @closing {{ {key} timeout {t.tcpfin}s }} goto {fwd}",
            f"add rule {T} {k} update @flows {{ {key} timeout {t.tcp}s : meta mark }} goto {fwd}",
            f"add rule {T} {k} goto {fwd}",
            # a new SYN on a closing flow: a new connection (the caller schedules it)
            f"add rule {T} {kc} tcp flags & (syn|ack) == syn delete @flows {{ {key} : meta mark }} "
            f"delete @closing {{ {key} }} return",
            f"add rule {T} {kc} update @flows {{ {key} timeout {t.tcpfin}s : meta mark }} "
            f"update @closing {{ {key} timeout {t.tcpfin}s }} goto {fwd}",
            f"add rule {T} {kc} goto {fwd}",
            f"add rule {T} k_udp{m} update @uflows {{ {key} timeout {t.udp}s : meta mark }} goto {fwd}",
            f"add rule {T} k_udp{m} goto {fwd}",
        ]
    for kind in SHARED_KINDS:
        tc = f"t_{kind}"
        masq = kind in MASQ_KINDS
        cmds.append(f"add rule {T} {tc} update @nstats {{ meta mark }}")
        if kind.startswith("tcp"):
            cmds.append(f"add rule {T} {tc} update @flows {{ {key} timeout {t.tcp}s : meta mark }}")
        elif kind.startswith("udpops"):
            pass  # one-packet scheduling: no flow
        elif kind.startswith("udp"):
            cmds.append(f"add rule {T} {tc} update @uflows {{ {key} timeout {t.udp}s : meta mark }}")
        else:  # fwm: TCP or UDP
            cmds.append(f"add rule {T} {tc} meta l4proto tcp update @flows {{ {key} timeout {t.tcp}s : meta mark }}")
            cmds.append(f"add rule {T} {tc} meta l4proto udp update @uflows {{ {key} timeout {t.udp}s : meta mark }}")
        if masq:
            cmds.append(f"add rule {T} {tc} ct mark set meta mark")
        cmds.append(f"add rule {T} {tc} goto f{'m' if masq else ''}")
    return cmds


def service_rules(plan: ServicePlan, t: Timeouts, fresh: bool, had_t: bool = False,
                  old_slots=()) -> list[str]:
    """(Re)write a service's entry chain (and t chain) and its scheduler map."""
    n = plan.sid
    svc = plan.svc
    key = FLOW_KEY
    src = masked_src(plan)
    kind = o_kind(plan)
    tnext = f"t{n}" if svc.persistent else f"t_{kind}"
    cmds = []
    if not fresh:
        cmds += [f"flush chain {T} s{n}"] + slots_delete(n, old_slots)
        if had_t:
            cmds.append(f"flush chain {T} t{n}")
    if plan.sequence:
        base = slot_base(n)
        elems = ", ".join(f"{base + i} : 0x{dmark(mid):x}" for i, mid in plan.sequence)
        cmds.append(f"add element {T} q {{ {elems} }}")
    refresh = f" update @p{n} {{ {src} timeout {svc.timeout}s : meta mark }}" if svc.persistent else ""
    m = "m" if plan.has_masq else ""
    if not svc.ops:
        # a known flow keeps its server (k_* accept it; a new SYN on a
        # closing flow comes back here to be scheduled)
        if svc.key.proto == "fwm":
            cmds.append(f"add rule {T} s{n} meta l4proto tcp meta mark set {key} map @flows{refresh} jump k_tcp{m}")
            cmds.append(f"add rule {T} s{n} meta l4proto udp meta mark set {key} map @uflows{refresh} jump k_udp{m}")
        else:
            k = "k_udp" if svc.key.proto == "udp" else "k_tcp"
            cmds.append(f"add rule {T} s{n} meta mark set {key} map @{flow_map(plan)}{refresh} jump {k}{m}")
    if svc.persistent:
        cmds.append(f"add rule {T} s{n} meta mark set {src} map @p{n} meta mark @live goto t{n}")
    cmds.append(f"add rule {T} s{n} meta mark set {sched_expr(plan)} map @q goto {tnext}")
    cmds.append(f"add rule {T} s{n} reject")
    if svc.persistent:
        cmds.append(f"add rule {T} t{n} update @p{n} {{ {src} timeout {svc.timeout}s : meta mark }}")
        cmds.append(f"add rule {T} t{n} goto t_{kind}")
    return cmds


def dest_create(plan: ServicePlan, d: DestPlan) -> list[str]:
    n = plan.sid
    m = f"0x{dmark(d.mid):x}"
    cmds = [f"add element {T} live {{ {m} }}", f"add element {T} dstats {{ {m} }}",
            f"add element {T} nstats {{ {m} }}"]
    cmds += dest_forward_add(d)
    return cmds


def dest_forward_add(d: DestPlan) -> list[str]:
    m = f"0x{dmark(d.mid):x}"
    if d.fwd == "gate":
        return [f"add element {T} rtm {{ {m} : 0x{rmark(d.ridx):x} }}"]
    if d.fwd == "masq":
        return [f"add element {T} dnat4 {{ {m} : {d.addr} . {d.port} }}",
                f"add element {T} ostats {{ {m} }}"]
    return []


def dest_forward_del(d: DestPlan) -> list[str]:
    m = f"0x{dmark(d.mid):x}"
    if d.fwd == "gate":
        return [f"delete element {T} rtm {{ {m} }}"]
    if d.fwd == "masq":
        return [f"delete element {T} dnat4 {{ {m} }}", f"delete element {T} ostats {{ {m} }}"]
    return []


def dest_retire(plan: ServicePlan, d: DestPlan) -> list[str]:
    """A real server leaves the table: its counters go, its forwarding stays
    (established flows keep their server) until dest_delete."""
    m = f"0x{dmark(d.mid):x}"
    return [f"delete element {T} live {{ {m} }}", f"delete element {T} dstats {{ {m} }}",
            f"delete element {T} nstats {{ {m} }}"]


def dest_delete(plan: ServicePlan, d: DestPlan) -> list[str]:
    cmds = []
    if d.live:
        cmds += dest_retire(plan, d)
    cmds += dest_forward_del(d)
    return cmds


_MERGED = {"live", "dstats", "nstats", "ostats", "rtm", "dnat4", "q"}


def merge_elements(cmds: list[str], chunk: int = 4096) -> list[str]:
    """Additions to the global sets, merged into a few commands at the end of
    the batch (deletions stay where they are, so delete-then-add keeps its
    order); one command per element costs nft a lot on big tables."""
    out, merged = [], {}
    prefix = f"add element {T} "
    n = len(prefix)
    for c in cmds:
        if c.startswith(prefix):
            name = c[n:c.index(" ", n)]
            if name in _MERGED:
                merged.setdefault(name, []).append(c[c.index("{ ") + 2:-2])
                continue
        out.append(c)
    for name, items in merged.items():
        for i in range(0, len(items), chunk):
            out.append(f"add element {T} {name} {{ {', '.join(items[i:i + chunk])} }}")
    return out


def snat_update(old: list[str], new: list[str]) -> list[str]:
    cmds = []
    if old:
        cmds.append(f"flush set {T} snat4")
    if new:
        cmds.append(f"add element {T} snat4 {{ {', '.join(new)} }}")
    return cmds


def collapse_nets(nets: list[str]) -> list[str]:
    """Non-overlapping prefixes (an interval set refuses overlaps)."""
    parsed = [ipaddress.ip_network(n, strict=False) for n in nets]
    return [str(n) for n in ipaddress.collapse_addresses(parsed)]
