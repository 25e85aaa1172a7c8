"""ipvsadm's listings, byte for byte (ipvsadm 1.31 format strings).

Pure functions of the table (halb.model dataclasses) and a `Names` object
that turns addresses and ports into text: numeric with -n, otherwise the
host name (reverse look-up) and /etc/services name, as ipvsadm does.
"""
from __future__ import annotations

import ipaddress
import queue
import socket
import threading
import time
from dataclasses import dataclass, fields

from halb.model import Conn, Dest, Service, Timeouts

VERSION_LINE = "IP Virtual Server version 1.2.1 (size=4096)"
_PROTO_NUM = {"tcp": 6, "udp": 17, "fwm": 6}  # ipvsadm stores TCP for fwmark services


class Names:
    """Address/port to text. numeric=True is -n. Reverse look-ups run in
    parallel with one overall deadline; whatever does not answer in time is
    shown numerically (ipvsadm would wait for each one)."""

    def __init__(self, numeric: bool = False, deadline: float = 1.0):
        self.numeric = numeric
        self.deadline = deadline
        self._hosts: dict[str, str] = {}
        self._ports: dict[tuple[int, str], str] = {}

    def prefetch(self, addrs) -> None:
        """Reverse-resolve addrs with a few daemon threads (a stuck resolver
        never delays the exit) and one overall deadline."""
        if self.numeric:
            return
        todo = [a for a in dict.fromkeys(addrs) if a not in self._hosts]
        if not todo:
            return
        results: dict[str, str] = {}
        work = queue.SimpleQueue()
        for a in todo:
            work.put(a)
        done = threading.Semaphore(0)

        def worker():
            while True:
                try:
                    a = work.get_nowait()
                except queue.Empty:
                    return
                try:
                    results[a] = socket.gethostbyaddr(a)[0]
                except (OSError, UnicodeError, ValueError):
                    results[a] = a
                done.release()

        for _ in range(min(16, len(todo))):
            threading.Thread(target=worker, daemon=True).start()
        end = time.monotonic() + self.deadline
        for _ in todo:
            if not done.acquire(timeout=max(0.0, end - time.monotonic())):
                break
        for a in todo:
            self._hosts[a] = results.get(a, a)

    def host(self, addr: str) -> str:
        if self.numeric:
            return addr
        if addr not in self._hosts:
            self.prefetch([addr])
        return self._hosts[addr]

    def port(self, port: int, proto: str | None) -> str:
        if self.numeric or proto not in ("tcp", "udp"):
            return str(port)
        k = (port, proto)
        if k not in self._ports:
            try:
                self._ports[k] = socket.getservbyport(port, proto)
            except (OSError, OverflowError):
                self._ports[k] = str(port)
        return self._ports[k]

    def addrport(self, addr: str, port: int, proto: str | None) -> str:
        """ipvsadm's addrport_to_anyname."""
        v6 = ":" in addr
        h = self.host(addr)
        return f"[{h}]:{self.port(port, proto)}" if v6 else f"{h}:{self.port(port, proto)}"


@dataclass
class ListFormat:
    """The listing options; each field is the ipvsadm option of the same
    name (-n is numeric, --persistent-conn persistent_conn...)."""

    numeric: bool = False
    stats: bool = False
    rate: bool = False
    thresholds: bool = False
    persistent_conn: bool = False
    nosort: bool = False
    exact: bool = False
    tun_info: bool = False

    @classmethod
    def from_options(cls, options) -> "ListFormat":
        """From the set of ipvsadm option names given (parse.OPTNAMES)."""
        return cls(*(f.name.replace("_", "-") in options for f in fields(cls)))


# ---------------------------------------------------------------------------
# ordering (libipvs ipvs_cmp_services / ipvs_cmp_dests)


def _addr_int(addr: str) -> int:
    try:
        return int(ipaddress.ip_address(addr))
    except ValueError:
        return 0


def service_sort_key(s: Service):
    k = s.key
    af = 10 if k.af == 6 else 2
    return (k.fwmark, af, _PROTO_NUM.get(k.proto, 0), _addr_int(k.addr) if k.addr else 0, k.port)


def dest_sort_key(d: Dest):
    return (_addr_int(d.addr), d.port)


def _sorted_services(services, nosort):
    return list(services) if nosort else sorted(services, key=service_sort_key)


def _sorted_dests(dests, nosort):
    return list(dests) if nosort else sorted(dests, key=dest_sort_key)


# ---------------------------------------------------------------------------
# pieces


def largenum(i: int, exact: bool = False) -> str:
    """ipvsadm's print_largenum: 9 columns, K/M/G/T scaling unless --exact."""
    i = int(i)
    if exact:
        s = str(i)
        return f"{i:>{9 if len(s) <= 8 else len(s) + 1}}"
    if i < 100_000_000:
        return f"{i:9d}"
    if i < 1_000_000_000:
        return f"{i // 1000:8d}K"
    if i < 100_000_000_000:
        return f"{i // 1_000_000:8d}M"
    if i < 100_000_000_000_000:
        return f"{i // 1_000_000_000:8d}G"
    return f"{i // 1_000_000_000_000:8d}T"


def _stats_cols(st, exact: bool) -> str:
    """The --stats columns: Conns InPkts OutPkts InBytes OutBytes."""
    return "".join(largenum(v, exact) for v in (st.conns, st.inpkts, st.outpkts, st.inbytes, st.outbytes))


def _proto_of(svc: Service) -> str:
    return "tcp" if svc.key.proto == "fwm" else svc.key.proto


def _fwd(d: Dest, default_fwd: str) -> str:
    if d.local:
        return "local"
    return d.fwd or default_fwd


_FWD_NAME = {"masq": "Masq", "local": "Local", "ipip": "Tunnel", "gate": "Route"}
_FWD_SWITCH = {"masq": "-m", "ipip": "-i", "local": "-g", "gate": "-g"}


def sched_flags_text(svc: Service) -> str:
    order = {"sh": ("sh-fallback", "sh-port"), "mh": ("mh-fallback", "mh-port")}.get(svc.scheduler, ())
    return ",".join(f for f in order if f in svc.flags)


def _v6_prefix(netmask: str) -> int:
    if "." in netmask:
        return 128
    try:
        return int(netmask.lstrip("/"))
    except ValueError:
        return 128


def _mask_text(svc: Service) -> str | None:
    """The -M value to show, or None when it is the default."""
    if svc.key.af == 6:
        p = _v6_prefix(svc.netmask)
        return None if p == 128 else str(p)
    if not svc.netmask or svc.netmask == "255.255.255.255" or "." not in svc.netmask:
        return None
    return svc.netmask


def _svc_name(svc: Service, names: Names, rule: bool) -> str:
    k = svc.key
    if k.proto == "fwm":
        if rule:
            return f"-f {k.fwmark} -6" if k.af == 6 else f"-f {k.fwmark}"
        return f"FWM  {k.fwmark} IPv6" if k.af == 6 else f"FWM  {k.fwmark}"
    vname = names.addrport(k.addr, k.port, k.proto)
    if rule:
        return f"{'-t' if k.proto == 'tcp' else '-u'} {vname}"
    name = f"{k.proto.upper():<4} {vname}"
    return name if k.af == 6 else name[:33]


def _title(f: ListFormat) -> str:
    sub = "  -> RemoteAddress:Port\n"
    if f.stats:
        return "%-33s %8s %8s %8s %8s %8s\n" % ("Prot LocalAddress:Port", "Conns", "InPkts",
                                                "OutPkts", "InBytes", "OutBytes") + sub
    if f.rate:
        return "%-33s %8s %8s %8s %8s %8s\n" % ("Prot LocalAddress:Port", "CPS", "InPPS",
                                                "OutPPS", "InBPS", "OutBPS") + sub
    if f.thresholds:
        return "%-33s %-10s %-10s %-10s %-10s\n" % ("Prot LocalAddress:Port", "Uthreshold",
                                                    "Lthreshold", "ActiveConn", "InActConn") + sub
    if f.persistent_conn:
        return "%-33s %-9s %-11s %-10s %-10s\n" % ("Prot LocalAddress:Port", "Weight",
                                                   "PersistConn", "ActiveConn", "InActConn") + sub
    if f.tun_info:
        return ("Prot LocalAddress:Port Scheduler Flags\n"
                "  -> RemoteAddress:Port           Forward TunnelInfo    Weight ActiveConn InActConn\n")
    return ("Prot LocalAddress:Port Scheduler Flags\n"
            "  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\n")


def _service_entry(svc: Service, f: ListFormat, names: Names, default_fwd: str) -> str:
    out = []
    name = _svc_name(svc, names, rule=False)
    if f.stats:
        out.append("%-33s" % name + _stats_cols(svc.stats, f.exact))
    elif f.rate:
        r = svc.rates
        out.append("%-33s" % name + "".join(largenum(v, f.exact) for v in
                   (r.cps, r.inpps, r.outpps, r.inbps, r.outbps)))
    else:
        line = f"{name} {svc.scheduler}"
        fl = sched_flags_text(svc)
        if fl:
            line += f" ({fl})"
        if svc.persistent:
            line += f" persistent {svc.timeout}"
            m = _mask_text(svc)
            if m:
                line += f" mask {m}"
            if svc.pe:
                line += f" pe {svc.pe}"
        if svc.ops:
            line += " ops"
        out.append(line)
    proto = _proto_of(svc)
    for d in _sorted_dests(svc.dests, f.nosort):
        dname = names.addrport(d.addr, d.port, proto)
        if ":" not in d.addr:
            dname = dname[:28]
        fwd = _fwd(d, default_fwd)
        if f.stats:
            out.append("  -> %-28s" % dname + _stats_cols(d.stats, f.exact))
        elif f.rate:
            r = d.rates
            out.append("  -> %-28s %8d %8d %8d" % (dname, r.cps, r.inpps, r.outpps)
                       + largenum(r.inbps, f.exact) + largenum(r.outbps, f.exact))
        elif f.thresholds:
            out.append("  -> %-28s %-10d %-10d %-10d %-10d" % (dname, d.u_threshold, d.l_threshold,
                                                           d.activeconns, d.inactconns))
        elif f.persistent_conn:
            out.append("  -> %-28s %-9d %-11d %-10d %-10d" % (dname, d.weight, d.persistconns,
                                                          d.activeconns, d.inactconns))
        elif f.tun_info:
            ti = "ipip" if fwd == "ipip" else "n/a"
            out.append("  -> %-28s %-7s %-13s %-6d %-10d %-10d" % (
                dname, _FWD_NAME[fwd], ti, d.weight, d.activeconns, d.inactconns))
        else:
            out.append("  -> %-28s %-7s %-6d %-10d %-10d" % (dname, _FWD_NAME[fwd], d.weight,
                                                          d.activeconns, d.inactconns))
    return "".join(line + "\n" for line in out)


def _all_addrs(services):
    for s in services:
        if s.key.addr:
            yield s.key.addr
        for d in s.dests:
            yield d.addr


# ---------------------------------------------------------------------------
# public formatters


def format_list(services: list[Service], f: ListFormat, names: Names | None = None,
                default_fwd: str = "masq", header: bool = True, note: str = "") -> str:
    """`ipvsadm -L` and its variants. header=False is `-L -t svc` (one
    service, no version line)."""
    names = names or Names(f.numeric)
    names.prefetch(_all_addrs(services))
    out = [VERSION_LINE + note + "\n"] if header else []
    out.append(_title(f))
    for svc in _sorted_services(services, f.nosort):
        out.append(_service_entry(svc, f, names, default_fwd))
    return "".join(out)


def format_save(services: list[Service], names: Names | None = None, default_fwd: str = "masq",
                nosort: bool = False) -> str:
    """`ipvsadm -S`: rules that `-R` reads back. Thresholds, which ipvsadm's
    -S forgets, are appended as -x/-y only when set so the table round-trips."""
    names = names or Names(True)
    names.prefetch(_all_addrs(services))
    out = []
    for svc in _sorted_services(services, nosort):
        name = _svc_name(svc, names, rule=True)
        line = f"-A {name} -s {svc.scheduler}"
        if svc.persistent:
            line += f" -p {svc.timeout}"
            m = _mask_text(svc)
            if m:
                line += f" -M {m}"
        if svc.pe:
            line += f" --pe {svc.pe}"
        if svc.ops:
            line += " -o"
        fl = sched_flags_text(svc)
        if fl:
            line += f" -b {fl}"
        out.append(line)
        proto = _proto_of(svc)
        for d in _sorted_dests(svc.dests, nosort):
            fwd = _fwd(d, default_fwd)
            dline = f"-a {name} -r {names.addrport(d.addr, d.port, proto)} {_FWD_SWITCH[fwd]} -w {d.weight}"
            if fwd == "ipip":
                dline += " --tun-type ipip"
            if d.u_threshold:
                dline += f" -x {d.u_threshold}"
            if d.l_threshold:
                dline += f" -y {d.l_threshold}"
            out.append(dline)
    return "".join(line + "\n" for line in out)


def format_conns(conns: list[Conn], names: Names | None = None, persistent_conn: bool = False) -> str:
    """`ipvsadm -L -c` (the kernel's /proc/net/ip_vs_conn, as ipvsadm prints it)."""
    names = names or Names(True)
    addrs = []
    for c in conns:
        addrs += [c.caddr, c.vaddr, c.daddr]
    names.prefetch(addrs)
    out = ["IPVS connection entries\n"]
    if persistent_conn:
        out.append("pro expire %-11s %-18s %-18s %-18s %-16s %s\n" % (
            "state", "source", "virtual", "destination", "pe name", "pe_data"))
    else:
        out.append("pro expire %-11s %-18s %-18s %s\n" % ("state", "source", "virtual", "destination"))
    for c in conns:
        proto = c.proto.lower() if c.proto.lower() in ("tcp", "udp") else None
        secs = max(0, int(c.expires))
        expire = "%02d:%02d" % (secs // 60, secs % 60)
        out.append("%-3s %-6s %-11s %-18s %-18s %s\n" % (
            c.proto, expire, c.state, names.addrport(c.caddr, c.cport, proto),
            names.addrport(c.vaddr, c.vport, proto), names.addrport(c.daddr, c.dport, proto)))
    return "".join(out)


def format_timeout(t: Timeouts) -> str:
    return "Timeout (tcp tcpfin udp): %d %d %d\n" % (t.tcp, t.tcpfin, t.udp)
