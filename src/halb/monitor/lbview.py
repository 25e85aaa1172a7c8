"""The load balancer as the dashboard shows it (pure): what the exporters of
a data source's nodes said (`halb exporter`'s /api/state), turned into
who holds each VIP, each virtual service with its real servers (forward
method, weight, check state, connections, rates) and the series gmetad
keeps per real server (connections, check latency).

`nodes` is {node name: NodeLB}; a node whose exporter did not answer has
`snap` None and an error, and counts for nothing but is shown as such.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from halb.model import FWD_LABELS

MAX_EVENTS = 2000     # events kept per data source


@dataclass
class NodeLB:
    node: str
    addr: str
    snap: dict | None = None
    error: str = ""
    last_ok: float | None = None
    polls: int = 0
    failures: int = 0
    events_since: float | None = None


@dataclass
class SourceLB:
    nodes: dict[str, NodeLB] = field(default_factory=dict)
    events: list[dict] = field(default_factory=list)
    seen: set = field(default_factory=set)

    def add_events(self, evs: list[dict]) -> int:
        new = 0
        for e in evs:
            key = (e.get("t"), e.get("node"), e.get("kind"), e.get("subject"))
            if key in self.seen:
                continue
            self.seen.add(key)
            self.events.append(e)
            new += 1
        if new:
            self.events.sort(key=lambda e: e["t"])
            if len(self.events) > MAX_EVENTS:
                for e in self.events[:-MAX_EVENTS]:
                    self.seen.discard((e.get("t"), e.get("node"), e.get("kind"), e.get("subject")))
                del self.events[:-MAX_EVENTS]
        return new


def vkey(s: dict) -> str:
    """A virtual service as ipvsadm names it: TCP 10.0.0.10:80, FWM 1."""
    if s["proto"] == "fwm":
        return f"FWM {s['fwmark']}"
    a = f"[{s['addr']}]" if ":" in s["addr"] else s["addr"]
    return f"{s['proto'].upper()} {a}:{s['port']}"


def hp(addr: str, port: int) -> str:
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def groups(nodes: dict[str, NodeLB]) -> list[dict]:
    """Each resource group (VIP) and the nodes that hold it now: a node holds a
    group when its own heartbeat says so (state "held"); the peers' view of it
    is kept too, for a node whose exporter does not answer."""
    out: dict[str, dict] = {}
    for n in sorted(nodes):
        snap = nodes[n].snap
        hb = (snap or {}).get("heartbeat") or {}
        for g in hb.get("groups") or []:
            name = g.get("group", "")
            row = out.setdefault(name, {"group": name, "preferred": g.get("preferred") or "", "held_by": [],
                                        "seen_by": {}, "states": {}})
            row["states"][n] = g.get("state", "")
            if g.get("state") == "held":
                row["held_by"].append(n)
            row["seen_by"][n] = list(g.get("holders") or [])
    for row in out.values():
        row["vips"] = [w.split("::", 1)[1].split("/")[0] for w in row["group"].split()
                       if w.lower().startswith(("ipaddr2::", "ipaddr::"))]
        if not row["held_by"]:    # nobody answering holds it: what the others see
            seen = sorted({h for hs in row["seen_by"].values() for h in hs})
            row["seen_holders"] = seen
    return sorted(out.values(), key=lambda r: r["group"])


def _checks(snap: dict) -> dict:
    """(virtual ip:port or fwmark, real ip:port) -> the director's view of that real server."""
    out = {}
    for d in snap.get("directors") or []:
        durations = d.get("check_seconds") or {}
        for v in d.get("virtuals") or []:
            for r in v.get("reals") or []:
                info = dict(r)
                info["check_seconds"] = durations.get(f"{v.get('protocol', '')}:{v.get('virtual', '')} {r.get('real')}")
                info["checktype"] = v.get("checktype", "")
                out[(str(v.get("virtual", "")), str(r.get("real", "")))] = info
    return out


def services(nodes: dict[str, NodeLB]) -> list[dict]:
    """Every virtual service in a node's table, with its real servers and
    what the director of that node says about them (nodes with an empty
    table, the backups, add nothing)."""
    out = []
    for n in sorted(nodes):
        snap = nodes[n].snap
        if not snap or not snap.get("services"):
            continue
        checks = _checks(snap)
        for s in snap["services"]:
            vid = str(s["fwmark"]) if s["proto"] == "fwm" else hp(s["addr"], s["port"])
            reals = []
            for d in s["dests"]:
                rid = hp(d["addr"], d["port"])
                c = checks.get((vid, rid))
                reals.append({
                    "real": rid, "fwd": FWD_LABELS.get(d.get("fwd") or "", d.get("fwd") or "-"),
                    "weight": d["weight"], "active": d["activeconns"], "inactive": d["inactconns"],
                    "cps": d["rates"]["cps"], "inbps": d["rates"]["inbps"], "outbps": d["rates"]["outbps"],
                    "conns": d["stats"]["conns"],
                    "check": ("-" if c is None else ("up" if c.get("up") else "down")),
                    "failcount": (c or {}).get("failcount"), "check_msg": (c or {}).get("last_msg", ""),
                    "check_seconds": (c or {}).get("check_seconds"),
                })
            # real servers the director knows but took out of the table
            in_table = {r["real"] for r in reals}
            for (v, rid), c in sorted(checks.items()):
                if v == vid and rid not in in_table:
                    reals.append({"real": rid, "fwd": "-", "weight": None, "active": 0, "inactive": 0, "cps": 0,
                                  "inbps": 0, "outbps": 0, "conns": 0,
                                  "check": "up" if c.get("up") else "down", "failcount": c.get("failcount"),
                                  "check_msg": c.get("last_msg", ""), "check_seconds": c.get("check_seconds"),
                                  "removed": True})
            out.append({"node": n, "service": vkey(s), "vid": vid, "scheduler": s["scheduler"],
                        "persistent": s["timeout"] if s.get("persistent") else 0, "cps": s["rates"]["cps"],
                        "inbps": s["rates"]["inbps"], "outbps": s["rates"]["outbps"], "reals": reals})
    return out


def series_points(node: str, snap: dict) -> list[tuple[str, float, str]]:
    """(metric, value, units) gmetad keeps for this node: per real server of
    its table the active connections and new connections per second, per
    real server its director checks the check latency; the names start with
    "lb " so they never meet gmond's."""
    out = []
    if not snap:
        return out
    for s in snap.get("services") or []:
        for d in s["dests"]:
            base = f"lb {vkey(s)} {hp(d['addr'], d['port'])}"
            out.append((f"{base} active", float(d["activeconns"]), "connections"))
            out.append((f"{base} conn/s", float(d["rates"]["cps"]), "conn/s"))
    for (_, rid), c in sorted(_checks(snap).items()):
        if c.get("check_seconds") is not None:
            out.append((f"lb {rid} check", 1000.0 * c["check_seconds"], "ms"))
    return out
