"""Graphs as SVG, drawn on the server (pure): one series over a period,
gaps where the values are unknown, axes with a few labels, last/min/avg/max
under the plot (as Ganglia's graphs show them)."""
from __future__ import annotations

import math
import time
from html import escape

W, H = 520, 190
MARKER_COLORS = {"node_dead": "#c00", "real_removed": "#c00", "real_quiesced": "#e80", "fencing": "#c00",
                 "fencing_failed": "#c00", "group_failed": "#c00", "link_dead": "#e80",
                 "node_up": "#080", "real_restored": "#080", "real_added": "#080", "link_up": "#080",
                 "table_restored": "#080"}
LEFT, RIGHT, TOP, BOTTOM = 56, 26, 24, 44


def fmt_value(v: float) -> str:
    if v is None or math.isnan(v):
        return "nan"
    a = abs(v)
    for div, suf in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if a >= div:
            return f"{v / div:.1f}{suf}"
    if a >= 100 or v == int(v):
        return f"{v:.0f}"
    return f"{v:.2f}"


def _nice_max(v: float) -> float:
    if v <= 0:
        return 1.0
    e = 10 ** math.floor(math.log10(v))
    for m in (1, 2, 2.5, 5, 10):
        if m * e >= v:
            return m * e
    return 10 * e


def _tlabel(t: float, span: float) -> str:
    tm = time.localtime(t)
    if span <= 2 * 86400:
        return time.strftime("%H:%M", tm)
    return time.strftime("%d/%m", tm)


def render(points: list[tuple[float, float]], t0: float, t1: float, title: str, units: str = "",
           width: int = W, height: int = H, graph_id: str = "", markers=()) -> str:
    """`markers`: (time, kind, label) of events, drawn as vertical lines
    (red for a loss: node dead, real server removed; green for a return;
    blue for the rest) with the label as their tooltip."""
    pw, ph = width - LEFT - RIGHT, height - TOP - BOTTOM
    known = [v for _, v in points if not math.isnan(v)]
    lo = min(0.0, min(known)) if known else 0.0
    hi = _nice_max(max(known)) if known else 1.0
    if hi <= lo:
        hi = lo + 1.0
    span = max(t1 - t0, 1e-9)

    def x(t):
        return LEFT + (t - t0) / span * pw

    def y(v):
        return TOP + ph - (v - lo) / (hi - lo) * ph

    segs, cur = [], []
    for t, v in points:
        if math.isnan(v):
            if cur:
                segs.append(cur)
                cur = []
            continue
        cur.append((x(t), y(v)))
    if cur:
        segs.append(cur)
    d_parts, npts = [], 0
    for seg in segs:
        if len(seg) == 1:  # a lone point: a short flat stroke so it shows
            (px, py), = seg
            seg = [(px - 1, py), (px + 1, py)]
        d_parts.append("M" + " L".join(f"{px:.1f},{py:.1f}" for px, py in seg))
        npts += len(seg)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="graph" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" data-points="{len(known)}"'
           + (f' id="{escape(graph_id)}"' if graph_id else "") + ">",
           f'<rect x="0" y="0" width="{width}" height="{height}" fill="#fff"/>',
           f'<text x="{width / 2:.0f}" y="15" text-anchor="middle" font-size="12" font-family="sans-serif">'
           f'{escape(title)}</text>',
           f'<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="#f8f8f8" stroke="#999"/>']
    for i in range(5):
        v = lo + (hi - lo) * i / 4
        yy = y(v)
        out.append(f'<line x1="{LEFT}" y1="{yy:.1f}" x2="{LEFT + pw}" y2="{yy:.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{LEFT - 4}" y="{yy + 4:.1f}" text-anchor="end" font-size="10" '
                   f'font-family="sans-serif">{escape(fmt_value(v))}</text>')
    for i in range(5):
        t = t0 + span * i / 4
        xx = x(t)
        out.append(f'<line x1="{xx:.1f}" y1="{TOP}" x2="{xx:.1f}" y2="{TOP + ph}" stroke="#eee"/>')
        out.append(f'<text x="{xx:.1f}" y="{TOP + ph + 13}" text-anchor="middle" font-size="10" '
                   f'font-family="sans-serif">{_tlabel(t, span)}</text>')
    if units.strip():
        out.append(f'<text x="12" y="{TOP + ph / 2:.0f}" font-size="10" font-family="sans-serif" '
                   f'transform="rotate(-90 12 {TOP + ph / 2:.0f})" text-anchor="middle">{escape(units)}</text>')
    for mt, kind, label in markers:
        if not t0 <= mt <= t1:
            continue
        color = MARKER_COLORS.get(kind, "#36c")
        xx = x(mt)
        out.append(f'<line class="marker" data-kind="{escape(kind)}" x1="{xx:.1f}" y1="{TOP}" x2="{xx:.1f}" '
                   f'y2="{TOP + ph}" stroke="{color}" stroke-width="1.5" stroke-dasharray="4,2">'
                   f'<title>{escape(label)}</title></line>')
    if d_parts:
        out.append(f'<path class="series" d="{" ".join(d_parts)}" fill="none" stroke="#1f5fbf" '
                   f'stroke-width="1.5" data-points="{len(known)}"/>')
    else:
        out.append(f'<text x="{LEFT + pw / 2:.0f}" y="{TOP + ph / 2:.0f}" text-anchor="middle" font-size="11" '
                   f'fill="#999" font-family="sans-serif">no data yet</text>')
    if known:
        stats = (f"last {fmt_value(known[-1])}  min {fmt_value(min(known))}  "
                 f"avg {fmt_value(sum(known) / len(known))}  max {fmt_value(max(known))}")
    else:
        stats = "no data"
    out.append(f'<text x="{LEFT}" y="{height - 8}" font-size="10" font-family="monospace">{escape(stats)}</text>')
    out.append("</svg>")
    return "\n".join(out)
