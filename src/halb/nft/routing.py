"""Policy routing and sysctls for Direct Return (pyroute2, current netns).

For each real server reached by Direct Return, halb owns:
- a rule `fwmark <route mark> lookup <table>` at RULE_PREF, and
- table <table> with `default via RIP dev IFACE`,
so a packet the nft table marked for that server leaves on the LAN with the
server's MAC and its destination (the VIP) unchanged. The `local` rule
(pref 0) is moved to LOCAL_PREF, after halb's rules, otherwise the director
would deliver the VIP packets to itself. Forwarding is enabled and ICMP
redirects are turned off (the packet leaves by the interface it came in);
the previous values are recorded and restored when halb's table goes away.
"""
from __future__ import annotations

import ipaddress
import socket
from pathlib import Path

import functools


def IPRoute():  # noqa: N802 - pyroute2 is imported only when routing is needed (CLI start-up)
    from pyroute2 import IPRoute as _IPRoute
    return _IPRoute()


def NetlinkError():  # noqa: N802 - the class, for `except NetlinkError():`
    from pyroute2.netlink.exceptions import NetlinkError as _E
    return _E


def _os_errors(fn):
    """Netlink failures surface as OSError with the kernel's message."""
    @functools.wraps(fn)
    def wrapper(*a, **kw):
        try:
            return fn(*a, **kw)
        except NetlinkError() as e:
            msg = e.args[-1] if e.args else str(e)
            raise OSError(f"{fn.__name__.replace('_', ' ')}: {msg}") from None
    return wrapper

RULE_PREF = 100
LOCAL_PREF = 150
TABLE_BASE = 4242000
RT_TABLE_LOCAL = 255
SYSCTL = Path("/proc/sys/net/ipv4")


def table_for(ridx: int) -> int:
    return TABLE_BASE + ridx


@_os_errors
def local_addrs() -> set[str]:
    with IPRoute() as ip:
        return {a.get_attr("IFA_ADDRESS") for a in ip.get_addr(family=socket.AF_INET)} | \
               {a.get_attr("IFA_LOCAL") for a in ip.get_addr(family=socket.AF_INET) if a.get_attr("IFA_LOCAL")}


@_os_errors
def route_to(addr: str) -> tuple[int, str, str | None]:
    """(ifindex, ifname, gateway or None) of the route to addr."""
    with IPRoute() as ip:
        try:
            r = ip.route("get", dst=addr)[0]
        except NetlinkError() as e:
            raise OSError(f"no route to real server {addr} ({e.args[-1] if e.args else e})") from None
        oif = r.get_attr("RTA_OIF")
        gw = r.get_attr("RTA_GATEWAY")
        name = ip.get_links(oif)[0].get_attr("IFLA_IFNAME")
    return oif, name, gw


@_os_errors
def connected_net(addr: str) -> str | None:
    """The prefix of a local interface address that contains addr."""
    target = ipaddress.ip_address(addr)
    with IPRoute() as ip:
        for a in ip.get_addr(family=socket.AF_INET):
            net = ipaddress.ip_network(f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}", strict=False)
            if net.prefixlen < 32 and target in net:
                return str(net)
    return None


@_os_errors
def connected_nets(addrs) -> list[str]:
    """The connected prefixes containing any of addrs (one netlink dump)."""
    targets = [ipaddress.ip_address(a) for a in addrs]
    out = set()
    with IPRoute() as ip:
        for a in ip.get_addr(family=socket.AF_INET):
            net = ipaddress.ip_network(f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}", strict=False)
            if net.prefixlen < 32 and any(t in net for t in targets):
                out.add(str(net))
    return sorted(out)


def _rules(ip) -> list:
    return list(ip.get_rules(family=socket.AF_INET))


def _rule_table(r) -> int:
    return r.get_attr("FRA_TABLE") or r["table"]


def local_rule_at_zero(ip) -> bool:
    return any((r.get_attr("FRA_PRIORITY") or 0) == 0 and _rule_table(r) == RT_TABLE_LOCAL
               and not r.get_attr("FRA_FWMARK") for r in _rules(ip))


@_os_errors
def local_rule_at_zero_now() -> bool:
    with IPRoute() as ip:
        return local_rule_at_zero(ip)


@_os_errors
def move_local_rule() -> bool:
    """Move `0: lookup local` to LOCAL_PREF; True when it was moved now."""
    with IPRoute() as ip:
        if not local_rule_at_zero(ip):
            return False
        ip.rule("add", table=RT_TABLE_LOCAL, priority=LOCAL_PREF)
        ip.rule("del", table=RT_TABLE_LOCAL, priority=0)
        return True


@_os_errors
def restore_local_rule(only_if_moved: bool = False) -> None:
    """Put `lookup local` back at pref 0 (only_if_moved: only when halb's
    LOCAL_PREF copy is there, e.g. after a lost state file)."""
    with IPRoute() as ip:
        if only_if_moved and not any((r.get_attr("FRA_PRIORITY") or 0) == LOCAL_PREF
                                     and _rule_table(r) == RT_TABLE_LOCAL for r in _rules(ip)):
            return
        if not local_rule_at_zero(ip):
            ip.rule("add", table=RT_TABLE_LOCAL, priority=0)
        try:
            ip.rule("del", table=RT_TABLE_LOCAL, priority=LOCAL_PREF)
        except NetlinkError():
            pass


@_os_errors
def add_route(ridx: int, mark: int, rip: str) -> None:
    """Rule + table sending packets with `mark` to rip's MAC."""
    oif, _, gw = route_to(rip)
    table = table_for(ridx)
    with IPRoute() as ip:
        if gw:  # not on a connected network: Direct Return needs the same link
            raise OSError(f"real server {rip} is not on a directly connected network "
                          f"(reached via {gw}): Direct Return needs the same link")
        ip.route("replace", dst="0.0.0.0/0", gateway=rip, oif=oif, table=table)
        for r in _rules(ip):
            if r.get_attr("FRA_FWMARK") == mark and _rule_table(r) == table:
                return
        ip.rule("add", table=table, priority=RULE_PREF, fwmark=mark, fwmask=0xFFFFFFFF)


@_os_errors
def del_route(ridx: int, mark: int) -> None:
    table = table_for(ridx)
    with IPRoute() as ip:
        for r in _rules(ip):
            if r.get_attr("FRA_FWMARK") == mark and _rule_table(r) == table:
                _del_rule(ip, table, r.get_attr("FRA_PRIORITY") or 0, mark)
        _flush_table(ip, table)


def _del_rule(ip, table: int, pref: int, mark: int) -> None:
    """Remove one fwmark rule; one already gone is no error."""
    try:
        ip.rule("del", table=table, priority=pref, fwmark=mark, fwmask=0xFFFFFFFF)
    except NetlinkError():
        pass


def _flush_table(ip, table: int) -> None:
    """Remove every route of a table; an empty or missing one is no error."""
    try:
        ip.flush_routes(table=table)
    except NetlinkError():
        pass


@_os_errors
def halb_rules() -> list[tuple[int, int, int]]:
    """(pref, fwmark, table) of every rule pointing at a halb table."""
    out = []
    with IPRoute() as ip:
        for r in _rules(ip):
            t = _rule_table(r)
            if TABLE_BASE <= t < TABLE_BASE + 1_000_000:
                out.append((r.get_attr("FRA_PRIORITY") or 0, r.get_attr("FRA_FWMARK") or 0, t))
    return out


@_os_errors
def remove_all(route_marks: dict[int, int]) -> None:
    """Every halb rule and table (those in route_marks and any stray one)."""
    for ridx, mark in route_marks.items():
        del_route(ridx, mark)
    with IPRoute() as ip:
        for pref, mark, table in halb_rules():
            _del_rule(ip, table, pref, mark)
            _flush_table(ip, table)


# -- sysctls -----------------------------------------------------------------
def sysctl_read(name: str) -> str:
    return (SYSCTL / name).read_text().strip()


def sysctl_write(name: str, value: str) -> None:
    (SYSCTL / name).write_text(value + "\n")


def apply_sysctls(wanted: dict[str, str], saved: dict[str, str]) -> None:
    """Set wanted values, remembering the first-seen old value in saved."""
    if wanted.get("ip_forward") and sysctl_read("ip_forward") != wanted["ip_forward"]:
        # writing ip_forward also rewrites conf/all/accept_redirects
        saved.setdefault("conf/all/accept_redirects", sysctl_read("conf/all/accept_redirects"))
    for name, value in sorted(wanted.items(), key=lambda kv: kv[0] != "ip_forward"):
        old = sysctl_read(name)
        if old != value:
            saved.setdefault(name, old)
            sysctl_write(name, value)


def restore_sysctls(saved: dict[str, str]) -> None:
    # ip_forward first: writing it resets other values, restored after it
    for name in sorted(saved, key=lambda n: n != "ip_forward"):
        try:
            sysctl_write(name, saved[name])
        except OSError:
            pass
    saved.clear()


def dr_sysctls(ifaces: list[str]) -> dict[str, str]:
    out = {"ip_forward": "1", "conf/all/send_redirects": "0"}
    for i in ifaces:
        out[f"conf/{i}/send_redirects"] = "0"
    return out
