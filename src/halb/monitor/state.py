"""gmetad's view of its data sources (pure: `now` comes in as an argument).

Polling, as gmetad does: the addresses of a data source are tried in
order. Ganglia's gmonds share their state over multicast, so the first
one that answers reports the whole cluster and gmetad stops there. halb's
gmond reports its own node only; so when an answer holds a single host the
next address is asked too, and the hosts are merged by name (the freshest
report wins). With real gmonds sharing state this is gmetad's behaviour.

Host state, as gmetad and its web front end judge it: a host is up while
the age of its last report (TN, kept growing here while nobody reports it)
is at most 4 x its TMAX; it is then shown down, and forgotten after DMAX
seconds when DMAX is not 0, else after the data source's host_dmax (gmond's
setting of that name, default a day: a gmond reporting ever new host names
cannot grow gmetad for ever). At most max_hosts hosts per data source: a new
one past that takes the place of the longest silent host that is down, or is
refused (counted in `refused_hosts`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from halb.monitor.conf import HOST_DMAX, MAX_HOSTS, Address, DataSource
from halb.monitor.gxml import Cluster, Host, Metric
from halb.monitor.lbview import SourceLB

DOWN_FACTOR = 4


@dataclass
class HostView:
    name: str
    ip: str = ""
    heard: float = 0.0        # when it last reported, on gmetad's clock
    tmax: int = 20
    dmax: int = 0
    reported: int = 0         # REPORTED as its gmond said
    gmond_started: int = 0
    location: str = "unspecified"
    metrics: dict[str, Metric] = field(default_factory=dict)
    up: bool = True

    def age(self, now: float) -> float:
        return max(0.0, now - self.heard)

    def alive(self, now: float) -> bool:
        return self.age(now) <= DOWN_FACTOR * max(1, self.tmax)


@dataclass
class AddrState:
    addr: Address
    up: bool | None = None    # None: never tried
    last_ok: float | None = None
    last_error: str = ""
    polls: int = 0
    failures: int = 0


@dataclass
class SourceView:
    name: str
    step: float
    addrs: list[AddrState]
    hosts: dict[str, HostView] = field(default_factory=dict)
    up: bool | None = None
    last_ok: float | None = None
    xml_errors: int = 0
    owner: str = "unspecified"
    url: str = "unspecified"
    exporters: list[Address] | None = None     # None: each host's IP at the exporter port
    lb: SourceLB = field(default_factory=SourceLB)
    host_dmax: int = HOST_DMAX
    max_hosts: int = MAX_HOSTS
    refused_hosts: int = 0

    @classmethod
    def of(cls, ds: DataSource, host_dmax: int = HOST_DMAX, max_hosts: int = MAX_HOSTS) -> SourceView:
        return cls(ds.name, ds.step, [AddrState(a) for a in ds.addresses],
                   exporters=getattr(ds, "exporters", None), host_dmax=host_dmax, max_hosts=max_hosts)

    def make_room(self, now: float) -> bool:
        """Room for one more host: True when under max_hosts or when the longest
        silent host that is down was dropped for it."""
        if len(self.hosts) < self.max_hosts:
            return True
        down = [h for h in self.hosts.values() if not h.alive(now)]
        if not down:
            return False
        del self.hosts[min(down, key=lambda h: h.heard).name]
        return True

    def hosts_up(self, now: float) -> int:
        return sum(1 for h in self.hosts.values() if h.alive(now))

    def addr(self, a: Address) -> AddrState:
        return next(s for s in self.addrs if s.addr == a)


def keep_polling(clusters: list[Cluster]) -> bool:
    """After an answer: ask the next address too? Yes unless the answer
    already holds more than one host (a gmond that knows the whole cluster)."""
    return sum(len(c.hosts) for c in clusters) <= 1


def merge_answer(src: SourceView, addr: Address, clusters: list[Cluster], now: float
                 ) -> tuple[list[tuple[str, str]], list[tuple[str, Host]]]:
    """Apply one address's answer. Returns (events, fresh hosts): the hosts whose
    report is newer than what was known (their numeric metrics are to be stored)."""
    events: list[tuple[str, str]] = []
    st = src.addr(addr)
    st.polls += 1
    if st.up is not True:
        events.append(("addr_up", f"{addr}"))
    st.up, st.last_ok, st.last_error = True, now, ""
    fresh: list[tuple[str, Host]] = []
    for c in clusters:
        if c.owner and c.owner != "unspecified":
            src.owner = c.owner
        if c.url and c.url != "unspecified":
            src.url = c.url
        for h in c.hosts.values():
            heard = now - max(0, h.tn)
            view = src.hosts.get(h.name)
            if view is not None and view.heard > heard + 1e-6:
                continue  # another address reported it more recently
            if view is None:
                if not src.make_room(now):
                    src.refused_hosts += 1
                    if src.refused_hosts == 1 or src.refused_hosts % 1000 == 0:
                        events.append(("hosts_full", f"{h.name} ({src.max_hosts} hosts kept, the most; "
                                                     f"{src.refused_hosts} refused so far)"))
                    continue
                view = src.hosts[h.name] = HostView(h.name, up=False)
            newer = heard > view.heard + 1e-6 or h.reported != view.reported
            view.ip, view.heard, view.tmax, view.dmax = h.ip, heard, h.tmax, h.dmax
            view.reported, view.gmond_started, view.location = h.reported, h.gmond_started, h.location
            view.metrics = dict(h.metrics)
            if newer and view.alive(now):
                fresh.append((h.name, h))
    return events, fresh


def record_failure(src: SourceView, addr: Address, error: str, now: float, xml: bool = False) -> list[tuple[str, str]]:
    st = src.addr(addr)
    st.polls += 1
    st.failures += 1
    if xml:
        src.xml_errors += 1
    events = []
    if st.up is not False or st.last_error != error:
        events.append(("addr_down", f"{addr}: {error}"))
    st.up, st.last_error = False, error
    return events


def end_round(src: SourceView, answered: bool, now: float) -> list[tuple[str, str]]:
    """After a polling round: the source's state, then every host's (up/down, expiry)."""
    events: list[tuple[str, str]] = []
    if answered:
        if src.up is not True:
            events.append(("source_up", src.name))
        src.up, src.last_ok = True, now
    else:
        if src.up is not False:
            events.append(("source_down", src.name))
        src.up = False
    for name in list(src.hosts):
        h = src.hosts[name]
        alive = h.alive(now)
        dmax = h.dmax or src.host_dmax
        if dmax and h.age(now) > dmax:
            del src.hosts[name]
            events.append(("host_expired", name))
            continue
        if alive and not h.up:
            events.append(("host_up", name))
        elif not alive and h.up:
            events.append(("host_down", f"{name} (last report {h.age(now):.0f} s ago, TMAX {h.tmax} s)"))
        h.up = alive
    return events


# the host metrics the overview shows, and the graphs of a host page by default
OVERVIEW = ("load_one", "cpu_user", "cpu_system", "cpu_idle", "mem_free", "mem_total", "bytes_in", "bytes_out")
DEFAULT_GRAPHS = ("load_one", "cpu_user", "cpu_system", "mem_free", "bytes_in", "bytes_out", "pkts_in",
                  "proc_run")
