"""The virtual-server table: pure data, shared by every engine and tool.

A `Table` holds the configured part (services, their real servers, timeouts)
and applies `Op`s with IPVS's semantics and libipvs's error wording. Engines
keep live numbers (counters, rates, connection counts) beside it and report
them in the same dataclasses. Nothing here does I/O.
"""
from __future__ import annotations

import copy
import functools
import ipaddress
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Iterable

from halb.errors import IpvsError

PROTOCOLS = ("tcp", "udp", "fwm")
FWD_METHODS = ("gate", "masq", "ipip")
# ipvsadm's names for forwarding methods in -L output
FWD_LABELS = {"gate": "Route", "masq": "Masq", "ipip": "Tunnel", "local": "Local"}
SCHEDULERS = ("rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "fo", "ovf", "mh")
SCHED_FLAGS = ("sh-fallback", "sh-port", "mh-fallback", "mh-port")
DEFAULT_SCHEDULER = "wlc"
DEFAULT_PERSISTENCE = 300
MAX_WEIGHT = 2147483647


@functools.lru_cache(maxsize=65536)  # tables of 10,000s of real servers re-parse the same few addresses
def parse_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    text = text.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    return ipaddress.ip_address(text)


def fmt_hostport(addr: str, port: int) -> str:
    """`1.2.3.4:80` or `[::1]:80` as ipvsadm prints numeric addresses."""
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


@dataclass(frozen=True, order=True)
class ServiceKey:
    """Identity of a virtual service: (tcp|udp, VIP, port) or (fwm, mark)."""

    proto: str
    addr: str = ""
    port: int = 0
    fwmark: int = 0
    af: int = 4  # address family of the service (fwmark services: -6 selects 6)

    def __post_init__(self):
        if self.proto not in PROTOCOLS:
            raise IpvsError(f"invalid protocol {self.proto!r}")
        if self.proto == "fwm":
            if not (0 < self.fwmark < 2**32):
                raise IpvsError(f"invalid fwmark {self.fwmark}")
        else:
            try:
                ip = parse_ip(self.addr)
            except ValueError:
                raise IpvsError(f"invalid address {self.addr!r}") from None
            object.__setattr__(self, "addr", str(ip))
            object.__setattr__(self, "af", ip.version)
            if not (0 <= self.port <= 65535):
                raise IpvsError(f"invalid port {self.port}")

    def __str__(self) -> str:
        if self.proto == "fwm":
            return f"FWM {self.fwmark}"
        return f"{self.proto.upper()} {fmt_hostport(self.addr, self.port)}"


@dataclass
class Stats:
    conns: int = 0
    inpkts: int = 0
    outpkts: int = 0
    inbytes: int = 0
    outbytes: int = 0

    def add(self, other: "Stats") -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


@dataclass
class Rates:
    cps: int = 0
    inpps: int = 0
    outpps: int = 0
    inbps: int = 0
    outbps: int = 0


def fill_rates(obj, old: dict | None, dt: float) -> None:
    """Set `obj.rates` (a Service or Dest) from its counters now and a sample `old`
    of them (conns, inpkts, outpkts, inbytes, outbytes) taken `dt` seconds ago;
    nothing without a sample. The kernel-table engines (nft, xdp) share it."""
    if not old:
        return
    s = obj.stats
    obj.rates = Rates(cps=max(0, round((s.conns - old["conns"]) / dt)),
                      inpps=max(0, round((s.inpkts - old["inpkts"]) / dt)),
                      outpps=max(0, round((s.outpkts - old["outpkts"]) / dt)),
                      inbps=max(0, round((s.inbytes - old["inbytes"]) / dt)),
                      outbps=max(0, round((s.outbytes - old["outbytes"]) / dt)))


@dataclass
class Dest:
    """A real server of a virtual service."""

    addr: str
    port: int = 0
    fwd: str | None = None  # gate|masq|ipip; None = the engine's default
    weight: int = 1
    u_threshold: int = 0
    l_threshold: int = 0
    # live values, filled in by engines when reading the table back
    activeconns: int = 0
    inactconns: int = 0
    persistconns: int = 0
    local: bool = False  # the real server is this node (ipvsadm shows "Local")
    overloaded: bool = False
    stats: Stats = field(default_factory=Stats)
    rates: Rates = field(default_factory=Rates)

    def __post_init__(self):
        try:
            self.addr = str(parse_ip(self.addr))
        except ValueError:
            raise IpvsError(f"invalid address {self.addr!r}") from None
        if self.fwd is not None and self.fwd not in FWD_METHODS:
            raise IpvsError(f"invalid forwarding method {self.fwd!r}")
        if not (0 <= self.port <= 65535):
            raise IpvsError(f"invalid port {self.port}")
        if not (0 <= self.weight <= MAX_WEIGHT):
            raise IpvsError(f"illegal weight specified: {self.weight}")
        for t in (self.u_threshold, self.l_threshold):
            if not (0 <= t <= MAX_WEIGHT):
                raise IpvsError(f"illegal threshold specified: {t}")

    @property
    def ident(self) -> tuple[str, int]:
        return (self.addr, self.port)

    def config(self) -> "Dest":
        """The configured part only (live numbers reset)."""
        return Dest(self.addr, self.port, self.fwd, self.weight, self.u_threshold, self.l_threshold)


@dataclass
class Service:
    key: ServiceKey
    scheduler: str = DEFAULT_SCHEDULER
    persistent: bool = False
    timeout: int = 0  # persistence timeout in seconds (0 when not persistent)
    netmask: str = "255.255.255.255"  # persistence granularity (-M); /128 style for v6
    flags: tuple[str, ...] = ()  # scheduler flags (-b), sorted
    ops: bool = False  # one-packet scheduling (-o, UDP only)
    pe: str = ""  # persistence engine name (--pe), e.g. "sip"
    dests: list[Dest] = field(default_factory=list)
    stats: Stats = field(default_factory=Stats)
    rates: Rates = field(default_factory=Rates)

    def __post_init__(self):
        if self.scheduler not in SCHEDULERS:
            raise IpvsError("Scheduler or persistence engine not found")
        for f in self.flags:
            if f not in SCHED_FLAGS:
                raise IpvsError(f"invalid scheduler flag {f!r}")
        self.flags = tuple(sorted(set(self.flags)))
        if self.persistent and self.timeout <= 0:
            self.timeout = DEFAULT_PERSISTENCE
        if not self.persistent:
            self.timeout = 0
        if self.ops and self.key.proto == "tcp":
            raise IpvsError("One-Packet Scheduling is only for UDP virtual services")

    def find_dest(self, addr: str, port: int) -> Dest | None:
        for d in self.dests:
            if d.addr == addr and d.port == port:
                return d
        return None

    def config(self) -> "Service":
        return Service(self.key, self.scheduler, self.persistent, self.timeout, self.netmask,
                       self.flags, self.ops, self.pe, [d.config() for d in self.dests])


@dataclass
class Timeouts:
    """Connection timeouts (--set tcp tcpfin udp), in seconds; kernel defaults."""

    tcp: int = 900
    tcpfin: int = 120
    udp: int = 300


@dataclass
class Conn:
    """One entry of the connection table (`ipvsadm -L -c`)."""

    proto: str  # TCP | UDP (upper case, as ipvsadm prints)
    expires: float  # seconds left
    state: str  # ESTABLISHED, FIN_WAIT, SYN_RECV, TIME_WAIT, CLOSE, NONE (persistence templates), UDP...
    caddr: str
    cport: int
    vaddr: str
    vport: int
    daddr: str
    dport: int
    fwd: str = "masq"
    template: bool = False  # a persistence entry (shown with proto "TCP"/state "NONE")


# --------------------------------------------------------------------------
# Operations and the table that applies them


@dataclass
class Op:
    """One table edit, as ipvsadm's commands express them.

    kind: add-service, edit-service, del-service, add-dest, edit-dest,
          del-dest, clear, zero, set-timeouts
    """

    kind: str
    service: Service | None = None  # add/edit-service (full), else just .key used
    key: ServiceKey | None = None
    dest: Dest | None = None
    timeouts: Timeouts | None = None

    KINDS = ("add-service", "edit-service", "del-service", "add-dest", "edit-dest",
             "del-dest", "clear", "zero", "set-timeouts")

    def __post_init__(self):
        if self.kind not in self.KINDS:
            raise ValueError(f"unknown op {self.kind}")
        if self.service is not None and self.key is None:
            self.key = self.service.key


class Table:
    """The configured virtual-server table with IPVS's edit semantics.

    `apply(ops)` is all-or-nothing: every op is checked against a working copy
    and the table changes only when all succeed. Engines call it, then push
    the resulting configuration to their data plane in one transaction.
    """

    def __init__(self, services: Iterable[Service] = (), timeouts: Timeouts | None = None,
                 default_fwd: str = "gate"):
        self.services: dict[ServiceKey, Service] = {}
        for s in services:
            self.services[s.key] = s
        self.timeouts = timeouts or Timeouts()
        self.default_fwd = default_fwd
        self.allowed_fwd: tuple[str, ...] = FWD_METHODS
        self.engine_name = "engine"

    def copy(self) -> "Table":
        t = Table(timeouts=replace(self.timeouts), default_fwd=self.default_fwd)
        t.services = {k: copy.deepcopy(v) for k, v in self.services.items()}
        t.allowed_fwd = self.allowed_fwd
        t.engine_name = self.engine_name
        return t

    def get(self, key: ServiceKey) -> Service:
        svc = self.services.get(key)
        if svc is None:
            raise IpvsError("No such service")
        return svc

    def apply(self, ops: Iterable[Op]) -> "Table":
        """Apply ops to a copy; return it (self is untouched). Raises IpvsError
        (with .index = position of the failing op) on the first failure."""
        work = self.copy()
        for i, op in enumerate(ops):
            try:
                work._apply_one(op)
            except IpvsError as e:
                e.index = i
                raise
        return work

    def _check_fwd(self, dest: Dest) -> Dest:
        if dest.fwd is None:
            dest = replace(dest, fwd=self.default_fwd)
        if dest.fwd not in self.allowed_fwd:
            hint = {"gate": " (Direct Return needs the kernel engine: --engine nft)",
                    "masq": " (use --engine proxy or --engine nft)"}.get(dest.fwd, "")
            raise IpvsError(f"forwarding method '{dest.fwd}' is not supported by the "
                            f"{self.engine_name} engine{hint}")
        return dest

    def _apply_one(self, op: Op) -> None:
        k = op.kind
        if k == "clear":
            self.services.clear()
        elif k == "set-timeouts":
            t = op.timeouts
            # ipvsadm --set: 0 means "leave unchanged"
            self.timeouts = Timeouts(t.tcp or self.timeouts.tcp, t.tcpfin or self.timeouts.tcpfin,
                                     t.udp or self.timeouts.udp)
        elif k == "add-service":
            if op.key in self.services:
                raise IpvsError("Service already exists")
            svc = op.service.config()
            svc.dests = []
            self.services[op.key] = svc
        elif k == "edit-service":
            old = self.services.get(op.key)
            if old is None:
                raise IpvsError("No such service")
            new = op.service.config()
            new.dests = old.dests
            new.stats, new.rates = old.stats, old.rates
            self.services[op.key] = new
        elif k == "del-service":
            if self.services.pop(op.key, None) is None:
                raise IpvsError("No such service")
        elif k == "zero":
            if op.key is None:
                for s in self.services.values():
                    _zero(s)
            else:
                svc = self.services.get(op.key)
                if svc is None:
                    raise IpvsError("No such service")
                _zero(svc)
        elif k in ("add-dest", "edit-dest", "del-dest"):
            svc = self.services.get(op.key)
            if svc is None:
                raise IpvsError("Service not defined")
            d = op.dest
            existing = svc.find_dest(d.addr, d.port)
            if k == "add-dest":
                if existing is not None:
                    raise IpvsError("Destination already exists")
                d = self._check_fwd(d.config())
                _check_dest_family(svc, d)
                svc.dests.append(d)
            elif existing is None:
                raise IpvsError("No such destination")
            elif k == "edit-dest":
                d = self._check_fwd(d.config())
                idx = svc.dests.index(existing)
                d.stats, d.rates = existing.stats, existing.rates
                svc.dests[idx] = d
            else:
                svc.dests.remove(existing)
        else:  # pragma: no cover - Op validates kinds
            raise IpvsError(f"unknown operation {k}")

    def config_services(self) -> list[Service]:
        return [s.config() for s in self.sorted_services()]

    def sorted_services(self) -> list[Service]:
        return list(self.services.values())


def _zero(svc: Service) -> None:
    svc.stats = Stats()
    svc.rates = Rates()
    for d in svc.dests:
        d.stats = Stats()
        d.rates = Rates()


def _check_dest_family(svc: Service, d: Dest) -> None:
    if svc.key.proto == "fwm":
        return
    if parse_ip(d.addr).version != svc.key.af and d.fwd != "ipip":
        raise IpvsError("Operation not supported with specified address family")


# --------------------------------------------------------------------------
# JSON-friendly conversion (control sockets, state files, sync)


def to_dict(obj) -> dict:
    return asdict(obj)


def service_from_dict(d: dict) -> Service:
    d = dict(d)
    key = ServiceKey(**d.pop("key"))
    dests = [dest_from_dict(x) for x in d.pop("dests", [])]
    stats = Stats(**d.pop("stats", {}))
    rates = Rates(**d.pop("rates", {}))
    d["flags"] = tuple(d.get("flags", ()))
    svc = Service(key=key, **d)
    svc.dests, svc.stats, svc.rates = dests, stats, rates
    return svc


def dest_from_dict(d: dict) -> Dest:
    d = dict(d)
    stats = Stats(**d.pop("stats", {}))
    rates = Rates(**d.pop("rates", {}))
    dest = Dest(**d)
    dest.stats, dest.rates = stats, rates
    return dest


def op_to_dict(op: Op) -> dict:
    return {
        "kind": op.kind,
        "service": to_dict(op.service) if op.service else None,
        "key": to_dict(op.key) if op.key else None,
        "dest": to_dict(op.dest) if op.dest else None,
        "timeouts": to_dict(op.timeouts) if op.timeouts else None,
    }


def op_from_dict(d: dict) -> Op:
    return Op(
        kind=d["kind"],
        service=service_from_dict(d["service"]) if d.get("service") else None,
        key=ServiceKey(**d["key"]) if d.get("key") else None,
        dest=dest_from_dict(d["dest"]) if d.get("dest") else None,
        timeouts=Timeouts(**d["timeouts"]) if d.get("timeouts") else None,
    )


def conn_from_dict(d: dict) -> Conn:
    return Conn(**d)
