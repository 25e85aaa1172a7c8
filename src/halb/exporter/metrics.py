"""A node's snapshot as Prometheus text (pure: no socket, no clock).

The virtual-server table is exported under node_exporter's IPVS collector
names and labels, so existing IPVS dashboards and alerts work unchanged:

  node_ipvs_connections_total, node_ipvs_{incoming,outgoing}_{packets,bytes}_total
      counters without labels: the whole table (node_exporter reads them
      from /proc/net/ip_vs_stats, the kernel's totals over every service)
  node_ipvs_backend_connections_active, node_ipvs_backend_connections_inactive,
  node_ipvs_backend_weight
      gauges per (virtual service, real server) with node_exporter's labels
      local_address, local_port, remote_address, remote_port, proto,
      local_mark, valued as procfs parses /proc/net/ip_vs: proto TCP, UDP or
      FWM; a fwmark service has local_address "" and local_port "0" and its
      mark as local_mark in 8 upper-case hex digits ("%08X"), else
      local_mark is ""; rows with equal labels are summed.

Everything else is halb_* (Prometheus naming: base units, counters end in
_total); METRICS lists every family with its type and help, and is what the
alert-rule test checks expressions against.

The text is written here rather than by prometheus-client's generate_latest:
a table of 1,000 services x 10 servers is 40,000 samples, which
generate_latest takes ~300 ms to write and this ~30 ms; the tests parse the
output with prometheus-client's parser.
"""
from __future__ import annotations

import math

IPVS_LABELS = ("local_address", "local_port", "remote_address", "remote_port", "proto", "local_mark")

# name -> (type, help)
METRICS: dict[str, tuple[str, str]] = {
    # node_exporter's IPVS collector (same names, help and labels)
    "node_ipvs_connections_total": ("counter", "The total number of connections made."),
    "node_ipvs_incoming_packets_total": ("counter", "The total number of incoming packets."),
    "node_ipvs_outgoing_packets_total": ("counter", "The total number of outgoing packets."),
    "node_ipvs_incoming_bytes_total": ("counter", "The total amount of incoming data."),
    "node_ipvs_outgoing_bytes_total": ("counter", "The total amount of outgoing data."),
    "node_ipvs_backend_connections_active": ("gauge", "The current active connections by local and remote address."),
    "node_ipvs_backend_connections_inactive": ("gauge",
                                               "The current inactive connections by local and remote address."),
    "node_ipvs_backend_weight": ("gauge", "The current backend weight by local and remote address."),
    # halb's own view of the table
    "halb_ipvs_backend_connections_total": ("counter", "Connections scheduled to this real server (IPVS labels)."),
    "halb_ipvs_service_info": ("gauge", "A virtual service of the table (value 1) with its scheduler."),
    "halb_ipvs_services": ("gauge", "Virtual services in the table."),
    "halb_ipvs_backends": ("gauge", "Real servers in the table."),
    # the exporter
    "halb_exporter_source_up": ("gauge", "1 when the source (engine or a daemon's control socket) answered the "
                                         "last collection, 0 when it should have and did not."),
    "halb_exporter_collect_duration_seconds": ("gauge", "Time the last collection took."),
    "halb_exporter_last_collect_timestamp_seconds": ("gauge", "When the state this scrape shows was read "
                                                               "(Unix time; its age: time() - this)."),
    "halb_engine_info": ("gauge", "The node's data plane (value 1)."),
    # heartbeat
    "halb_heartbeat_active": ("gauge", "1 when this node holds at least one resource group."),
    "halb_heartbeat_node_up": ("gauge", "1 while the cluster node beats (as this node sees it), else 0."),
    "halb_heartbeat_nodes": ("gauge", "Cluster nodes by state, as this node sees them."),
    "halb_heartbeat_link_up": ("gauge", "1 while beats arrive from the node over the link, else 0."),
    "halb_heartbeat_group_held": ("gauge", "1 when this node holds the resource group (its VIP), else 0."),
    "halb_heartbeat_group_holders": ("gauge", "Live nodes holding the resource group, as this node sees them."),
    "halb_heartbeat_failovers_total": ("counter", "Resource groups this node acquired."),
    "halb_heartbeat_group_releases_total": ("counter", "Resource groups this node released."),
    "halb_heartbeat_fencing_operations_total": ("counter", "STONITH resets this node ran, by result."),
    "halb_heartbeat_late_beats_total": ("counter", "Beats from the node that came later than warntime."),
    "halb_heartbeat_node_deaths_total": ("counter", "Times the node was declared dead."),
    "halb_heartbeat_last_beat_age_seconds": ("gauge", "Seconds since the node's last beat."),
    "halb_heartbeat_beats_sent_total": ("counter", "Heartbeat packets sent."),
    "halb_heartbeat_beats_received_total": ("counter", "Heartbeat packets received."),
    "halb_heartbeat_send_errors_total": ("counter", "Heartbeat packets that could not be sent."),
    # director
    "halb_director_real_server_up": ("gauge", "1 when the real server's last check passed, else 0."),
    "halb_director_real_server_weight": ("gauge", "The real server's weight in the table (absent when removed)."),
    "halb_director_real_server_quiescent": ("gauge", "1 when the real server is down and kept at weight 0."),
    "halb_director_check_failures": ("gauge", "Consecutive failed checks of the real server."),
    "halb_director_check_duration_seconds": ("gauge", "Time the real server's last check took."),
    "halb_director_reloads_total": ("counter", "Configuration reloads that succeeded."),
    "halb_director_table_edits_total": ("counter", "Table edits the director applied."),
    "halb_director_table_edit_errors_total": ("counter", "Table edits the engine refused."),
    # sync
    "halb_sync_sent_entries_total": ("counter", "Connection entries the master sync daemon sent."),
    "halb_sync_sent_packets_total": ("counter", "Sync datagrams the master sync daemon sent."),
    "halb_sync_received_entries_total": ("counter", "Connection entries the backup sync daemon received."),
    "halb_sync_applied_entries_total": ("counter", "Connection entries the backup sync daemon put in the table."),
    "halb_sync_dropped_total": ("counter", "Sync datagrams or entries dropped, by reason."),
    "halb_sync_lag_seconds": ("gauge", "Backup: seconds since the last datagram from a master (the master "
                                       "sends at least a keepalive every few seconds)."),
    "halb_sync_backlog_entries": ("gauge", "Master: changed entries not sent yet."),
    "halb_sync_held_entries": ("gauge", "Entries held until the table has their service."),
    # proxy engine
    "halb_proxy_connections": ("gauge", "Connections the user-space engine relays now, by protocol."),
    "halb_proxy_refused_total": ("counter", "Client connections the proxy engine refused, by reason."),
    "halb_proxy_maxconn": ("gauge", "The proxy engine's connection limit (maxconn)."),
    "halb_proxy_udp_evicted_total": ("counter", "UDP flows the proxy engine evicted to make room."),
    "halb_proxy_relayed_bytes_total": ("counter", "Bytes the proxy engine relayed, by path (splice, copy)."),
}


def escape(v) -> str:
    s = str(v)
    if "\\" in s or '"' in s or "\n" in s:
        s = s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return s


def labels(**kw) -> str:
    return "{" + ",".join(f'{k}="{escape(v)}"' for k, v in kw.items()) + "}"


def value(v) -> str:
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, int):
        return str(v)
    if v is None:
        return "NaN"
    f = float(v)
    if math.isnan(f):
        return "NaN"
    if math.isinf(f):
        return "+Inf" if f > 0 else "-Inf"
    return repr(f)


class Text:
    """Families written in order; each family's HELP/TYPE once, before its samples."""

    def __init__(self):
        self.fams: dict[str, list[str]] = {}

    def add(self, name: str, labelstr: str, v) -> None:
        self.fams.setdefault(name, []).append(f"{name}{labelstr} {value(v)}\n")

    def lines(self, name: str) -> list[str]:
        return self.fams.setdefault(name, [])

    def render(self) -> str:
        out = []
        for name, samples in self.fams.items():
            typ, help_ = METRICS[name]
            out.append(f"# HELP {name} {help_}\n# TYPE {name} {typ}\n")
            out.extend(samples)
        return "".join(out)


def ipvs_labels(svc: dict, dest: dict) -> str:
    """node_exporter's label string of a (service, real server) row."""
    if svc["proto"] == "fwm":
        la, lp, proto, mark = "", "0", "FWM", f"{svc['fwmark']:08X}"
    else:
        la, lp, proto, mark = svc["addr"], str(svc["port"]), svc["proto"].upper(), ""
    return (f'{{local_address="{la}",local_port="{lp}",remote_address="{dest["addr"]}",'
            f'remote_port="{dest["port"]}",proto="{proto}",local_mark="{mark}"}}')


def table_metrics(t: Text, services: list[dict]) -> None:
    tot = [0, 0, 0, 0, 0]
    rows: dict[str, list[int]] = {}
    sinfo = t.lines("halb_ipvs_service_info")
    ndest = 0
    for s in services:
        st = s["stats"]
        tot[0] += st["conns"]
        tot[1] += st["inpkts"]
        tot[2] += st["outpkts"]
        tot[3] += st["inbytes"]
        tot[4] += st["outbytes"]
        if s["proto"] == "fwm":
            sl = f'local_address="",local_port="0",proto="FWM",local_mark="{s["fwmark"]:08X}"'
        else:
            sl = f'local_address="{s["addr"]}",local_port="{s["port"]}",proto="{s["proto"].upper()}",local_mark=""'
        sinfo.append(f'halb_ipvs_service_info{{{sl},scheduler="{s["scheduler"]}",'
                     f'persistent="{s["timeout"] if s["persistent"] else 0}"}} 1\n')
        for d in s["dests"]:
            ndest += 1
            key = ipvs_labels(s, d)
            r = rows.get(key)
            if r is None:
                rows[key] = [d["activeconns"], d["inactconns"], d["weight"], d["stats"]["conns"]]
            else:  # node_exporter sums rows whose labels are equal
                r[0] += d["activeconns"]
                r[1] += d["inactconns"]
                r[2] += d["weight"]
                r[3] += d["stats"]["conns"]
    for name, v in zip(("node_ipvs_connections_total", "node_ipvs_incoming_packets_total",
                        "node_ipvs_outgoing_packets_total", "node_ipvs_incoming_bytes_total",
                        "node_ipvs_outgoing_bytes_total"), tot):
        t.add(name, "", v)
    act = t.lines("node_ipvs_backend_connections_active")
    ina = t.lines("node_ipvs_backend_connections_inactive")
    wei = t.lines("node_ipvs_backend_weight")
    con = t.lines("halb_ipvs_backend_connections_total")
    for key, (a, i, w, c) in rows.items():
        act.append(f"node_ipvs_backend_connections_active{key} {a}\n")
        ina.append(f"node_ipvs_backend_connections_inactive{key} {i}\n")
        wei.append(f"node_ipvs_backend_weight{key} {w}\n")
        con.append(f"halb_ipvs_backend_connections_total{key} {c}\n")
    t.add("halb_ipvs_services", "", len(services))
    t.add("halb_ipvs_backends", "", ndest)
    # families present with no sample are still declared (dashboards find them)


def _node_alive(status: str) -> bool:
    s = str(status).lower()
    return s.startswith("up") or s == "active"


def heartbeat_metrics(t: Text, hb: dict) -> None:
    t.add("halb_heartbeat_active", "", hb.get("status") == "active")
    counts: dict[str, int] = {"up": 0, "dead": 0}
    me = hb.get("node")
    for n, st in (hb.get("nodes") or {}).items():
        alive = _node_alive(st.get("status", ""))
        counts["up" if alive else "dead"] += 1
        t.add("halb_heartbeat_node_up", labels(node=n), alive)
        if n == me:
            continue
        t.add("halb_heartbeat_late_beats_total", labels(node=n), int(st.get("late", 0) or 0))
        t.add("halb_heartbeat_node_deaths_total", labels(node=n), int(st.get("deaths", 0) or 0))
        if st.get("last_beat_ago") is not None:
            t.add("halb_heartbeat_last_beat_age_seconds", labels(node=n), st["last_beat_ago"])
    for state, c in counts.items():
        t.add("halb_heartbeat_nodes", labels(state=state), c)
    for nl, st in (hb.get("links") or {}).items():
        n, _, link = nl.partition(":")
        t.add("halb_heartbeat_link_up", labels(node=n, link=link), _node_alive(st))
    for g in hb.get("groups") or []:
        lb = labels(group=g.get("group", ""), preferred=g.get("preferred") or "")
        t.add("halb_heartbeat_group_held", lb, g.get("state") == "held")
        t.add("halb_heartbeat_group_holders", lb, len(g.get("holders") or []))
    c = hb.get("counters") or {}
    t.add("halb_heartbeat_failovers_total", "", int(c.get("groups_acquired", 0)))
    t.add("halb_heartbeat_group_releases_total", "", int(c.get("groups_released", 0)))
    t.add("halb_heartbeat_fencing_operations_total", labels(result="ok"), int(c.get("fencing_ok", 0)))
    t.add("halb_heartbeat_fencing_operations_total", labels(result="failed"), int(c.get("fencing_failed", 0)))
    t.add("halb_heartbeat_beats_sent_total", "", int(c.get("tx", 0)))
    t.add("halb_heartbeat_beats_received_total", "", int(c.get("rx", 0)))
    t.add("halb_heartbeat_send_errors_total", "", int(c.get("tx_errors", 0)))


def director_metrics(t: Text, d: dict) -> None:
    cfg = d.get("name") or d.get("config") or ""
    checks = d.get("check_seconds") or {}
    for v in d.get("virtuals") or []:
        vid = v.get("virtual", "")
        for r in v.get("reals") or []:
            lb = labels(config=cfg, virtual=vid, protocol=v.get("protocol", ""), real=r.get("real", ""))
            up = bool(r.get("up"))
            w = r.get("weight")
            t.add("halb_director_real_server_up", lb, up)
            if w is not None:
                t.add("halb_director_real_server_weight", lb, int(w))
            t.add("halb_director_real_server_quiescent", lb, (not up) and w == 0)
            t.add("halb_director_check_failures", lb, int(r.get("failcount") or 0))
            dur = r.get("check_seconds", checks.get(f"{v.get('protocol', '')}:{vid} {r.get('real', '')}"))
            if dur is not None:
                t.add("halb_director_check_duration_seconds", lb, dur)
    lb = labels(config=cfg)
    t.add("halb_director_reloads_total", lb, int(d.get("reloads", 0) or 0))
    t.add("halb_director_table_edits_total", lb, int(d.get("edits_applied", 0) or 0))
    t.add("halb_director_table_edit_errors_total", lb, int(d.get("edit_errors", 0) or 0))


def sync_metrics(t: Text, role: str, s: dict, now: float) -> None:
    c = s.get("counters") or {}
    lb = labels(role=role)
    if role == "master":
        t.add("halb_sync_sent_entries_total", lb, int(c.get("entries_sent", 0)))
        t.add("halb_sync_sent_packets_total", lb, int(c.get("packets_sent", 0)))
        t.add("halb_sync_backlog_entries", lb, int(s.get("dirty", 0) or 0))
    else:
        t.add("halb_sync_received_entries_total", lb, int(c.get("entries_received", 0)))
        t.add("halb_sync_applied_entries_total", lb, int(c.get("entries_applied", 0)))
        ages = [p.get("last_seen_s_ago") for p in (s.get("peers") or {}).values()
                if p.get("last_seen_s_ago") is not None]
        t.add("halb_sync_lag_seconds", lb, min(ages) if ages else float("nan"))
    for reason, n in sorted((s.get("drops") or {}).items()):
        t.add("halb_sync_dropped_total", labels(role=role, reason=reason), int(n))
    t.add("halb_sync_held_entries", lb, int(s.get("held", 0) or 0))


def proxy_metrics(t: Text, p: dict) -> None:
    t.add("halb_proxy_connections", labels(proto="tcp"), int(p.get("tcp_relays", 0) or 0))
    t.add("halb_proxy_connections", labels(proto="udp"), int(p.get("udp_flows", 0) or 0))
    lim = p.get("limits") or {}
    for reason, key in (("maxconn", "refused_maxconn"), ("maxconn_per_source", "refused_source"),
                        ("descriptors", "refused_fds")):
        t.add("halb_proxy_refused_total", labels(reason=reason), int(lim.get(key, 0) or 0))
    if lim.get("maxconn"):
        t.add("halb_proxy_maxconn", "", int(lim["maxconn"]))
    t.add("halb_proxy_udp_evicted_total", "", int(lim.get("udp_evicted", 0) or 0))
    t.add("halb_proxy_relayed_bytes_total", labels(path="splice"), int(p.get("bytes_spliced", 0) or 0))
    t.add("halb_proxy_relayed_bytes_total", labels(path="copy"), int(p.get("bytes_copied", 0) or 0))


def render(snap: dict) -> str:
    """The snapshot as Prometheus text."""
    t = Text()
    errors = snap.get("errors") or {}
    t.add("halb_engine_info", labels(engine=snap.get("engine", "")), 1)
    up = t.lines("halb_exporter_source_up")
    up.append(f"halb_exporter_source_up{labels(source='engine')} {value(snap.get('services') is not None)}\n")
    for src, present in (("heartbeat", snap.get("heartbeat") is not None),
                         ("proxy", snap.get("proxy") is not None)):
        if present or src in errors:
            up.append(f"halb_exporter_source_up{labels(source=src)} {value(present)}\n")
    for d in snap.get("directors") or []:
        up.append(f"halb_exporter_source_up{labels(source='director ' + str(d.get('name', '')))} 1\n")
    for role in (snap.get("sync") or {}):
        up.append(f"halb_exporter_source_up{labels(source='sync ' + role)} 1\n")
    for src in errors:
        if src.startswith(("director ", "sync ")):
            up.append(f"halb_exporter_source_up{labels(source=src)} 0\n")
    t.add("halb_exporter_collect_duration_seconds", "", snap.get("collect_seconds", 0.0))
    t.add("halb_exporter_last_collect_timestamp_seconds", "", round(float(snap.get("t", 0.0)), 3))
    for name in ("node_ipvs_connections_total", "node_ipvs_incoming_packets_total", "node_ipvs_outgoing_packets_total",
                 "node_ipvs_incoming_bytes_total", "node_ipvs_outgoing_bytes_total"):
        t.lines(name)
    if snap.get("services") is not None:
        table_metrics(t, snap["services"])
    else:  # no table: families declared, no samples (a counter must not drop to 0)
        for name in METRICS:
            if name.startswith(("node_ipvs_", "halb_ipvs_")):
                t.lines(name)
    if snap.get("heartbeat"):
        heartbeat_metrics(t, snap["heartbeat"])
    for d in snap.get("directors") or []:
        director_metrics(t, d)
    for role, s in sorted((snap.get("sync") or {}).items()):
        sync_metrics(t, role, s, snap.get("t", 0.0))
    if snap.get("proxy"):
        proxy_metrics(t, snap["proxy"])
    return t.render()

