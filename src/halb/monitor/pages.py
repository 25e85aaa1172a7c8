"""The dashboard's HTML (pure): the grid overview (every cluster, its hosts
up and down, load and CPU, a load graph per host) and a host page (the
chosen metrics' graphs over the chosen period, every current value).
Graphs come from a `graph(cluster, host, metric, period) -> svg` callable."""
from __future__ import annotations

import time
from html import escape
from typing import Callable
from urllib.parse import quote, urlencode

from halb import events
from halb.monitor import lbview
from halb.monitor.rrd import PERIODS
from halb.monitor.state import DEFAULT_GRAPHS, SourceView

Graph = Callable[[str, str, str, str], str]

CSS = """
body{font-family:sans-serif;margin:1em 2em;color:#222;background:#fafafa}
h1{font-size:1.4em} h2{font-size:1.2em;margin-top:1.4em}
table{border-collapse:collapse;margin:.5em 0} td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}
th{background:#eee} .up{color:#070;font-weight:bold} .down{color:#b00;font-weight:bold}
.periods a{margin-right:.8em} .periods a.on{font-weight:bold;text-decoration:none;color:#000}
.graphs{display:flex;flex-wrap:wrap;gap:8px} .graphs svg{border:1px solid #ccc}
.small{color:#666;font-size:.85em} .metrics label{display:inline-block;width:16em}
.source-down{background:#fdd;border:1px solid #b00;padding:4px 8px;color:#b00;font-weight:bold}
.check-up{color:#070} .check-down{color:#b00;font-weight:bold} tr.removed td{color:#999}
table.service th.svc{background:#dde7f7} td.num{text-align:right}
.ev-node_dead td,.ev-real_removed td,.ev-fencing td,.ev-group_failed td{color:#b00}
.ev-node_up td,.ev-real_restored td,.ev-real_added td,.ev-group_acquired td{color:#070}
"""

# the page refreshes itself without a reload (vanilla JS, no framework): it
# fetches itself and swaps every element of class "live" (tables, graphs) by
# its new version; the form and the scroll position stay as they are
JS = """
(function(){
  var every = %d * 1000;
  function refresh(){
    fetch(location.href, {cache: 'no-store'}).then(function(r){ return r.ok ? r.text() : null; })
      .then(function(t){
        if (!t) return;
        var doc = new DOMParser().parseFromString(t, 'text/html');
        document.querySelectorAll('.live[id]').forEach(function(el){
          var n = doc.getElementById(el.id);
          if (n) el.innerHTML = n.innerHTML;
        });
        document.body.setAttribute('data-refreshed', String(Date.now()));
      }).catch(function(){});
  }
  setInterval(refresh, every);
})();
"""


def host_url(cluster: str, host: str, period: str, metrics: list[str] | None = None) -> str:
    q = [("r", period)] + [("m", m) for m in (metrics or [])]
    return f"/host/{quote(cluster, safe='')}/{quote(host, safe='')}?{urlencode(q)}"


def graph_url(cluster: str, host: str, metric: str, period: str) -> str:
    return "/graph.svg?" + urlencode({"c": cluster, "h": host, "m": metric, "r": period})


def _page(title: str, body: str, refresh: float) -> str:
    return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
            f"<title>{escape(title)}</title><style>{CSS}</style></head><body>\n{body}\n"
            f"<script>{JS % max(5, int(refresh))}</script></body></html>\n")


def _periods(period: str, url_of: Callable[[str], str]) -> str:
    links = [f'<a class="{"on" if p == period else ""}" href="{escape(url_of(p))}">{p}</a>' for p in PERIODS]
    return f'<p class="periods">last: {"".join(links)}</p>'


def _val(h, name: str, fmt: str = "{:.2f}") -> str:
    m = h.metrics.get(name)
    if m is None:
        return "-"
    v = m.number()
    return escape(m.val) if v is None else fmt.format(v)


def _cpu(h) -> str:
    u, s = h.metrics.get("cpu_user"), h.metrics.get("cpu_system")
    if u is None or s is None or u.number() is None or s.number() is None:
        return "-"
    return f"{u.number() + s.number():.1f} %"


def _mem(h) -> str:
    t, f = h.metrics.get("mem_total"), h.metrics.get("mem_free")
    if t is None or f is None or not t.number():
        return "-"
    return f"{100.0 * (1 - (f.number() or 0) / t.number()):.0f} %"


def overview(gridname: str, sources: list[SourceView], now: float, period: str, graph: Graph,
             refresh: float = 15, lb_metrics: Callable[[SourceView], list[str]] | None = None) -> str:
    out = [f"<h1>{escape(gridname if gridname != 'unspecified' else 'halb')} Grid Report</h1>",
           _periods(period, lambda p: "/?" + urlencode({"r": p}))]
    for i, src in enumerate(sources):
        up = src.hosts_up(now)
        down = len(src.hosts) - up
        state = ("never answered" if src.up is None else "answering" if src.up else "not answering")
        out.append(f'<h2 class="cluster" data-cluster="{escape(src.name)}">{escape(src.name)}</h2>')
        out.append(f'<div class="live" id="src-{i}">')
        if not src.up:
            errs = "; ".join(f"{a.addr}: {a.last_error}" for a in src.addrs if a.last_error)
            since = (f" since {time.strftime('%H:%M:%S', time.localtime(src.last_ok))}" if src.last_ok else "")
            out.append(f'<p class="source-down" data-source-state="{"never" if src.up is None else "down"}">'
                       f'data source {escape(state)}{escape(since)}: what follows is its last known state'
                       f'{" (" + escape(errs) + ")" if errs else ""}</p>')
        else:
            out.append(f'<p>Hosts up: <span class="up hosts-up">{up}</span> &nbsp; '
                       f'Hosts down: <span class="down hosts-down">{down}</span> &nbsp; '
                       f'<span class="small">data source {escape(state)}; polled every {src.step:g} s from '
                       f'{escape(", ".join(str(a.addr) for a in src.addrs))}</span></p>')
        out.append('<div class="graphs cluster-graphs">')
        for m in ("load_one", "cpu_user", "mem_free", "bytes_in"):
            u = graph_url(src.name, "*", m, period)
            out.append(f'<div data-graph="{escape(u)}">{graph(src.name, "*", m, period)}</div>')
        out.append("</div>")
        out.append('<table class="hosts"><tr><th>host</th><th>state</th><th>load_one</th><th>CPU used</th>'
                   '<th>memory used</th><th>last report</th></tr>')
        for h in sorted(src.hosts.values(), key=lambda h: h.name):
            alive = h.alive(now)
            out.append(f'<tr class="host" data-host="{escape(h.name)}">'
                       f'<td><a class="hostlink" href="{escape(host_url(src.name, h.name, period))}">'
                       f'{escape(h.name)}</a></td>'
                       f'<td class="{"up" if alive else "down"}">{"up" if alive else "down"}</td>'
                       f'<td>{_val(h, "load_one")}</td><td>{_cpu(h)}</td><td>{_mem(h)}</td>'
                       f'<td>{h.age(now):.0f} s ago</td></tr>')
        out.append("</table>")
        out.append('<div class="graphs host-graphs">')
        for h in sorted(src.hosts.values(), key=lambda h: h.name):
            u = graph_url(src.name, h.name, "load_one", period)
            out.append(f'<div data-graph="{escape(u)}">{graph(src.name, h.name, "load_one", period)}</div>')
        out.append("</div>")
        out.append(lb_section(src, now, period, graph, lb_metrics(src) if lb_metrics else []))
        out.append("</div>")
    return _page(f"{gridname} Grid Report", "\n".join(out), refresh)


def _rate(v) -> str:
    from halb.monitor.svg import fmt_value
    return fmt_value(float(v or 0))


def lb_section(src: SourceView, now: float, period: str, graph: Graph, metrics: list[str],
               max_graphs: int = 40, max_events: int = 30) -> str:
    """The load balancer of a data source: VIP holders, virtual services with
    their real servers, the nodes' exporters, the events, per real server graphs."""
    lb = src.lb
    if not lb.nodes:
        return ('<p class="small lb-none">no halb exporter answered for this data source '
                '(run <code>halb exporter</code> on the nodes)</p>')
    out = ['<div class="lb">', '<h3>Virtual IPs</h3>',
           '<table class="vips"><tr><th>resource group</th><th>VIP</th><th>held by</th><th>preferred</th></tr>']
    groups = lbview.groups(lb.nodes)
    for g in groups:
        if g["held_by"]:
            held = f'<span class="up">{escape(", ".join(g["held_by"]))}</span>'
        elif g.get("seen_holders"):
            held = f'{escape(", ".join(g["seen_holders"]))} <span class="small">(as its peers see it)</span>'
        else:
            held = '<span class="down">no node</span>'
        out.append(f'<tr class="vip" data-group="{escape(g["group"])}" data-holders="{escape(" ".join(g["held_by"]))}">'
                   f'<td>{escape(g["group"])}</td><td>{escape(", ".join(g["vips"]) or "-")}</td>'
                   f'<td class="holder">{held}</td><td>{escape(g["preferred"])}</td></tr>')
    if not groups:
        out.append('<tr><td colspan="4" class="small">no heartbeat answered</td></tr>')
    out.append("</table>")
    out.append("<h3>Virtual services</h3>")
    svcs = lbview.services(lb.nodes)
    if not svcs:
        out.append('<p class="small">no virtual service in any table</p>')
    for s in svcs:
        pers = f", persistent {s['persistent']} s" if s["persistent"] else ""
        out.append(f'<table class="service" data-service="{escape(s["service"])}" data-node="{escape(s["node"])}">'
                   f'<tr><th class="svc" colspan="9">{escape(s["service"])} {escape(s["scheduler"])}{escape(pers)} '
                   f'on {escape(s["node"])} &mdash; {_rate(s["cps"])} conn/s, in {_rate(s["inbps"])} B/s, '
                   f'out {_rate(s["outbps"])} B/s</th></tr>'
                   '<tr><th>real server</th><th>forward</th><th>weight</th><th>check</th><th>active</th>'
                   '<th>inactive</th><th>conn/s</th><th>in B/s</th><th>out B/s</th></tr>')
        for r in s["reals"]:
            chk = r["check"]
            detail = ""
            if r.get("failcount"):
                detail = f' ({r["failcount"]} failed)'
            lat = f' {1000 * r["check_seconds"]:.1f} ms' if r.get("check_seconds") is not None and chk == "up" else ""
            cls = ' class="real removed"' if r.get("removed") else ' class="real"'
            out.append(f'<tr{cls} data-real="{escape(r["real"])}" data-check="{escape(chk)}">'
                       f'<td>{escape(r["real"])}{" (not in the table)" if r.get("removed") else ""}</td>'
                       f'<td>{escape(r["fwd"])}</td><td class="num weight">{"-" if r["weight"] is None else r["weight"]}</td>'
                       f'<td class="check-{escape(chk)}" title="{escape(r.get("check_msg") or "")}">'
                       f'{escape(chk)}{escape(detail)}{escape(lat)}</td>'
                       f'<td class="num active">{r["active"]}</td><td class="num inactive">{r["inactive"]}</td>'
                       f'<td class="num">{_rate(r["cps"])}</td><td class="num">{_rate(r["inbps"])}</td>'
                       f'<td class="num">{_rate(r["outbps"])}</td></tr>')
        out.append("</table>")
    out.append('<p class="small exporters">exporters: ' + "; ".join(
        f'<span class="exporter" data-node="{escape(n.node)}" data-up="{1 if n.snap else 0}">{escape(n.node)} '
        f'({escape(n.addr)}) {"answering" if n.snap else "<b class=down>not answering</b>: " + escape(n.error)}</span>'
        for n in sorted(lb.nodes.values(), key=lambda n: n.node)) + "</p>")
    out.append("<h3>Events</h3>")
    evs = lb.events[-max_events:][::-1]
    if not evs:
        out.append('<p class="small">no event yet</p>')
    else:
        out.append('<table class="events"><tr><th>time</th><th>node</th><th>event</th><th>subject</th><th>what</th></tr>')
        for e in evs:
            out.append(f'<tr class="event ev-{escape(e["kind"])}" data-kind="{escape(e["kind"])}" '
                       f'data-node="{escape(e["node"])}"><td>{escape(events.fmt_time(e["t"]))}</td>'
                       f'<td>{escape(e["node"])}</td><td>{escape(e["kind"])}</td><td>{escape(e["subject"])}</td>'
                       f'<td>{escape(e["text"])}</td></tr>')
        out.append("</table>")
    if metrics:
        out.append('<h3>Real servers</h3><div class="graphs lb-graphs">')
        for m in metrics[:max_graphs]:
            u = graph_url(src.name, "*", m, period)
            out.append(f'<div data-graph="{escape(u)}" data-metric="{escape(m)}">{graph(src.name, "*", m, period)}</div>')
        out.append("</div>")
    out.append("</div>")
    return "\n".join(out)


def host_page(src: SourceView, host: str, now: float, period: str, chosen: list[str], available: list[str],
              graph: Graph, refresh: float = 15) -> str:
    h = src.hosts.get(host)
    alive = h is not None and h.alive(now)
    chosen = [m for m in chosen if m in available] or [m for m in DEFAULT_GRAPHS if m in available]
    out = [f'<p><a href="/?{urlencode({"r": period})}">&larr; grid</a> / {escape(src.name)}</p>',
           f'<h1 class="hostname">{escape(host)} <span class="{"up" if alive else "down"}">'
           f'{"up" if alive else "down"}</span></h1>']
    if h is not None:
        out.append(f'<p class="small">cluster {escape(src.name)}; IP {escape(h.ip)}; last report '
                   f'{h.age(now):.0f} s ago (TMAX {h.tmax} s); gmond started '
                   f'{time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(h.gmond_started))}</p>')
    out.append(_periods(period, lambda p: host_url(src.name, host, p, chosen)))
    out.append('<div class="graphs live" id="host-graphs">')
    for m in chosen:
        u = graph_url(src.name, host, m, period)
        out.append(f'<div data-graph="{escape(u)}">{graph(src.name, host, m, period)}</div>')
    out.append("</div>")
    out.append(f'<form class="metrics" method="get" action="{escape(host_url(src.name, host, period)).split("?")[0]}">'
               f'<input type="hidden" name="r" value="{escape(period)}"><p>graphs:</p>')
    for m in available:
        on = " checked" if m in chosen else ""
        out.append(f'<label><input type="checkbox" name="m" value="{escape(m)}"{on}> {escape(m)}</label>')
    out.append('<p><button type="submit">show</button></p></form>')
    if h is not None:
        out.append('<h2>current values</h2><div class="live" id="host-values">'
                   '<table class="values"><tr><th>metric</th><th>value</th><th>units</th><th>age</th></tr>')
        for name in sorted(h.metrics):
            m = h.metrics[name]
            out.append(f"<tr><td>{escape(name)}</td><td>{escape(m.val)}</td><td>{escape(m.units.strip())}</td>"
                       f"<td>{m.tn} s</td></tr>")
        out.append("</table></div>")
    return _page(f"{host} - {src.name}", "\n".join(out), refresh)


def not_found(what: str) -> str:
    return _page("not found", f"<h1>not found</h1><p>{escape(what)}</p><p><a href=\"/\">grid</a></p>", 3600)
