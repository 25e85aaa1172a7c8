"""The article's `lvsdr` (§6.3.7): a Direct Return real server accepts
packets for the VIP (the VIP on `lo` as /32) but never answers ARP for it
(`arp_ignore=1`, `arp_announce=2` on its LAN interface, set BEFORE the VIP
appears on `lo`).

Sans-I/O core: `plan_start` / `plan_stop` turn (wanted VIPs, the system as
observed, the recorded state) into an ordered list of `Action`s. The shell
(`System` + `RealServer`) observes the system with pyroute2 and /proc/sys,
records each change in the state file BEFORE making it, and applies the
actions in order. A failure in the middle undoes what this run did. `stop`
reverts exactly what `start` changed: addresses it added, sysctls to the
values they had before; nothing it found already in place is touched.
Everything happens in the network namespace of the calling process.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from halb.errors import HalbError
from halb.realserver.haresources import VipSpec, check_vip

ARP = (("arp_ignore", "1"), ("arp_announce", "2"))
STATE_NAME = "realserver.json"


class RealServerError(HalbError):
    pass


@dataclass(frozen=True)
class Action:
    kind: str                 # "sysctl" or "addr-add" / "addr-del"
    target: str               # interface (sysctl) or VIP (addr)
    key: str = ""             # sysctl name
    value: str = ""           # sysctl value to write
    before: str = ""          # sysctl value found (for the log and the revert)

    def describe(self) -> str:
        if self.kind == "sysctl":
            return f"{self.target}: {self.key} {self.before} -> {self.value}"
        verb = "add" if self.kind == "addr-add" else "del"
        return f"lo: {verb} {self.target}/32"


@dataclass
class Observed:
    """What the shell saw: sysctl values per interface, addresses on lo."""
    sysctls: dict = field(default_factory=dict)     # {(iface, key): "0"}
    lo_addrs: set = field(default_factory=set)      # {"10.0.0.10"} (/32 only)
    held: dict = field(default_factory=dict)        # {vip: iface}: VIP up on another interface


def empty_state() -> dict:
    return {"version": 1, "netns": None, "interfaces": {}, "vips": {}}


def plan_start(wanted: list[tuple[str, str]], seen: Observed, state: dict) -> list[Action]:
    """Actions to reach: ARP sysctls set on each VIP's interface, then each VIP
    on lo. `wanted` is [(vip, iface)]. Already-true facts give no action."""
    actions: list[Action] = []
    ifaces = []
    for _, iface in wanted:
        if iface not in ifaces:
            ifaces.append(iface)
    for iface in ifaces:                     # 1. ARP behaviour first ...
        for key, value in ARP:
            cur = seen.sysctls.get((iface, key))
            if cur is None:
                raise RealServerError(f"interface {iface} has no {key} setting (does it exist?)")
            if cur != value:
                actions.append(Action("sysctl", iface, key, value, cur))
    for vip, _ in wanted:                    # 2. ... then the hidden VIPs
        # a VIP this node holds on its LAN interface (it is the director,
        # heartbeat's IPaddr2 moved it there) is not hidden on lo as well
        if vip not in seen.lo_addrs and vip not in seen.held:
            actions.append(Action("addr-add", vip))
    return actions


def plan_stop(seen: Observed, state: dict) -> list[Action]:
    """Revert what the state says start changed: VIPs first, then sysctls."""
    actions: list[Action] = []
    for vip, rec in state.get("vips", {}).items():
        if rec.get("added") and vip in seen.lo_addrs:
            actions.append(Action("addr-del", vip))
    for iface, keys in state.get("interfaces", {}).items():
        for key, rec in keys.items():
            cur = seen.sysctls.get((iface, key))
            # only a value still as start set it is reverted; one changed since
            # by someone else is theirs now
            if cur is not None and cur == rec["set"] and cur != rec["before"]:
                actions.append(Action("sysctl", iface, key, rec["before"], cur))
    return actions


def record(state: dict, action: Action, iface_of: dict) -> None:
    """Note in the state what a start action is about to change."""
    if action.kind == "sysctl":
        keys = state["interfaces"].setdefault(action.target, {})
        keys.setdefault(action.key, {"before": action.before, "set": action.value})
    elif action.kind == "addr-add":
        state["vips"][action.target] = {"iface": iface_of.get(action.target), "added": True}


# ---- the shell ----------------------------------------------------------

class System:
    """This network namespace, seen through pyroute2 and /proc/sys."""

    def __init__(self):
        from pyroute2 import IPRoute
        self.ipr = IPRoute()

    def close(self):
        self.ipr.close()

    def netns_id(self) -> int:
        return os.stat("/proc/self/ns/net").st_ino

    def iface_exists(self, name: str) -> bool:
        return bool(self.ipr.link_lookup(ifname=name))

    def sysctl_path(self, iface, key) -> Path:
        return Path("/proc/sys/net/ipv4/conf") / iface / key

    def read_sysctl(self, iface, key) -> str | None:
        try:
            return self.sysctl_path(iface, key).read_text().strip()
        except OSError:
            return None

    def write_sysctl(self, iface, key, value) -> None:
        try:
            self.sysctl_path(iface, key).write_text(value + "\n")
        except OSError as e:
            raise RealServerError(f"cannot set {iface} {key}={value}: {e.strerror}") from None

    def lo_index(self) -> int:
        return self.ipr.link_lookup(ifname="lo")[0]

    def lo_addrs(self) -> set[str]:
        out = set()
        for a in self.ipr.get_addr(index=self.lo_index(), family=2):
            if a["prefixlen"] == 32:
                out.add(a.get("IFA_ADDRESS"))
        return out

    def addr(self, op, vip) -> None:
        from pyroute2.netlink.exceptions import NetlinkError
        try:
            if op == "add":
                self.ipr.addr("add", index=self.lo_index(), address=vip, prefixlen=32,
                              broadcast="255.255.255.255")
            else:
                self.ipr.addr("del", index=self.lo_index(), address=vip, prefixlen=32)
        except NetlinkError as e:
            if (op == "add" and e.code == 17) or (op == "del" and e.code == 99):
                return
            raise RealServerError(f"cannot {op} {vip}/32 on lo: {_nl_text(e)}") from None

    def _ifnames(self) -> dict:
        """{interface index: name}."""
        return {l["index"]: l.get("IFLA_IFNAME") for l in self.ipr.get_links()}

    def lan_iface(self, vip: str) -> str:
        """The interface that reaches `vip`: the one whose subnet holds it,
        else the route to it (the VIP may already sit on lo)."""
        import ipaddress
        ip = ipaddress.IPv4Address(vip)
        names = self._ifnames()
        for a in self.ipr.get_addr(family=2):
            name = names.get(a["index"])
            if name in (None, "lo") or a["prefixlen"] == 32:
                continue
            net = ipaddress.IPv4Network(f"{a.get('IFA_ADDRESS')}/{a['prefixlen']}", strict=False)
            if ip in net:
                return name
        from pyroute2.netlink.exceptions import NetlinkError
        try:
            routes = self.ipr.route("get", dst=vip)
        except NetlinkError as e:
            raise RealServerError(f"no route to VIP {vip} ({_nl_text(e)}): "
                                  f"cannot find the LAN interface, use --interface") from None
        oif = routes[0].get("RTA_OIF") if routes else None
        name = names.get(oif)
        if not name or name == "lo":
            raise RealServerError(f"no LAN route to VIP {vip}: cannot find the LAN interface, use --interface")
        return name

    def held(self) -> dict:
        """Addresses up on interfaces other than lo: {ip: iface}."""
        names = self._ifnames()
        out = {}
        for a in self.ipr.get_addr(family=2):
            name = names.get(a["index"])
            if name and name != "lo":
                out[a.get("IFA_ADDRESS")] = name
        return out

    def observe(self, ifaces) -> Observed:
        seen = Observed(lo_addrs=self.lo_addrs(), held=self.held())
        for iface in ifaces:
            for key, _ in ARP:
                v = self.read_sysctl(iface, key)
                if v is not None:
                    seen.sysctls[(iface, key)] = v
        return seen

    def effective(self, iface, key) -> str | None:
        """The kernel uses the larger of conf/all/<key> and conf/<iface>/<key>."""
        a, b = self.read_sysctl("all", key), self.read_sysctl(iface, key)
        if a is None or b is None:
            return b
        return str(max(int(a), int(b)))


class RealServer:
    """start / stop / status of the lvsdr set-up, state kept in `state_path`."""

    def __init__(self, state_path, log=print, system: System | None = None):
        self.state_path = Path(state_path)
        self.log = log
        self.sys = system or System()

    def close(self):
        self.sys.close()

    # -- state file
    def load(self) -> dict | None:
        try:
            st = json.loads(self.state_path.read_text())
        except FileNotFoundError:
            return None
        except ValueError as e:
            raise RealServerError(f"{self.state_path}: corrupt state file ({e}); "
                                  f"remove it after checking lo and the ARP sysctls") from None
        if st.get("netns") not in (None, self.sys.netns_id()):
            raise RealServerError(f"{self.state_path} belongs to another network namespace: "
                                  f"use a per-node --run-dir")
        return st

    def save(self, st: dict) -> None:
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_name(self.state_path.name + ".tmp")
        tmp.write_text(json.dumps(st, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, self.state_path)

    # -- operations
    def resolve(self, specs: list[VipSpec], interface: str | None) -> list[tuple[str, str]]:
        out = []
        for s in specs:
            vip = check_vip_or_error(s.vip)
            iface = interface or s.iface or self.sys.lan_iface(vip)
            if iface == "lo":
                raise RealServerError(f"VIP {vip}: the LAN interface cannot be lo")
            if not self.sys.iface_exists(iface):
                raise RealServerError(f"interface {iface} does not exist (VIP {vip})")
            out.append((vip, iface))
        return out

    def start(self, specs: list[VipSpec], interface: str | None = None) -> list[Action]:
        if not specs:
            raise RealServerError("no VIP given (use --vip VIP or --haresources FILE)")
        wanted = self.resolve(specs, interface)
        st = self.load() or empty_state()
        st["netns"] = self.sys.netns_id()
        seen = self.sys.observe({i for _, i in wanted})
        actions = plan_start(wanted, seen, st)
        iface_of = dict(wanted)
        # VIPs present before us stay someone else's: remember them as not ours
        for vip, iface in wanted:
            if vip in seen.held and vip not in seen.lo_addrs:
                self.log(f"{vip} is up on {seen.held[vip]} (this node holds the VIP): not hidden on lo")
            if vip not in st["vips"]:
                if vip in seen.lo_addrs:
                    st["vips"][vip] = {"iface": iface, "added": False}
                    self.log(f"lo: {vip}/32 already present (left alone by stop)")
                elif vip in seen.held:
                    st["vips"][vip] = {"iface": iface, "added": False}
            else:
                st["vips"][vip]["iface"] = iface
        done: list[Action] = []
        try:
            for a in actions:
                record(st, a, iface_of)
                self.save(st)              # intent recorded before the change
                self.apply(a)
                done.append(a)
                self.log(a.describe())
        except BaseException:
            self._undo(done, st)
            raise
        st.setdefault("started", time.time())
        self.save(st)
        if not actions:
            self.log("already set up: nothing to change")
        from halb.nft import guard  # stray packets of other servers' connections: dropped, not reset
        why = guard.install(list(st["vips"]))
        if why:
            self.log(f"no guard against stray packets for the VIP ({why})")
        return actions

    def _undo(self, done: list[Action], st: dict) -> None:
        for a in reversed(done):
            try:
                if a.kind == "sysctl":
                    self.sys.write_sysctl(a.target, a.key, a.before)
                    st["interfaces"].get(a.target, {}).pop(a.key, None)
                    if not st["interfaces"].get(a.target):
                        st["interfaces"].pop(a.target, None)
                elif a.kind == "addr-add":
                    self.sys.addr("del", a.target)
                    st["vips"].pop(a.target, None)
                self.log(f"undone: {a.describe()}")
            except HalbError:
                pass
        if st["vips"] or st["interfaces"]:
            self.save(st)
        else:
            self.state_path.unlink(missing_ok=True)

    def apply(self, a: Action) -> None:
        if a.kind == "sysctl":
            self.sys.write_sysctl(a.target, a.key, a.value)
        elif a.kind == "addr-add":
            self.sys.addr("add", a.target)
        elif a.kind == "addr-del":
            self.sys.addr("del", a.target)

    def stop(self) -> list[Action] | None:
        st = self.load()
        if st is None:
            self.log("not started: nothing to revert")
            return None
        seen = self.sys.observe(list(st.get("interfaces", {})))
        actions = plan_stop(seen, st)
        from halb.nft import guard
        guard.remove()
        for a in actions:
            self.apply(a)
            self.log(a.describe())
        self.state_path.unlink(missing_ok=True)
        if not actions:
            self.log("nothing left to revert")
        return actions

    def status(self) -> dict:
        """{'state': 'running'|'stopped'|'degraded', 'vips': [...], 'interfaces': [...]}"""
        st = self.load()
        if st is None:
            return {"state": "stopped", "vips": [], "interfaces": [], "problems": []}
        lo = self.sys.lo_addrs()
        held = self.sys.held()
        vips, ifaces, problems = [], [], []
        for vip, rec in st["vips"].items():
            present = vip in lo
            vips.append({"vip": vip, "iface": rec.get("iface"), "on_lo": present,
                         "held_on": held.get(vip), "ours": rec.get("added", False)})
            if not present and vip not in held:
                problems.append(f"{vip} is not on lo")
        used = sorted({rec.get("iface") for rec in st["vips"].values() if rec.get("iface")} | set(st["interfaces"]))
        for iface in used:
            row = {"iface": iface}
            for key, want in ARP:
                eff = self.sys.effective(iface, key)
                row[key] = eff
                rec = st["interfaces"].get(iface, {}).get(key)
                row[key + "_before"] = rec["before"] if rec else None
                if eff is None:
                    problems.append(f"interface {iface} is gone")
                    break
                if eff != want:
                    problems.append(f"{iface}: {key} is {eff}, not {want}")
            ifaces.append(row)
        return {"state": "degraded" if problems else "running", "vips": vips,
                "interfaces": ifaces, "problems": problems, "state_file": str(self.state_path)}


def _nl_text(e) -> str:
    """The kernel's words of a NetlinkError."""
    return e.args[1] if len(e.args) > 1 else str(e)


def check_vip_or_error(vip: str) -> str:
    try:
        return check_vip(vip)
    except ValueError as e:
        raise RealServerError(f"bad VIP: {e}") from None
