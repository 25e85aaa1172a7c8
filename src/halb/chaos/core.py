"""`halb chaos`'s decisions, pure: the fault schedule (same seed = same
schedule) and the verdict (what failed inside a fault's window, outside any
window, broken downloads, persistence violations, VIP on two nodes or none,
leftovers). No clock, no socket: times are numbers the shell recorded.
"""
from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field

# name -> (what it does, budget in seconds: fault + recovery, as planned)
FAULTS: dict[str, tuple[str, float]] = {
    "crash": ("the active director crashes (frozen, cable cut, killed), then reboots", 12.0),
    "standby": ("graceful standby of the active director (hb_standby)", 5.0),
    "apache": ("Apache stopped on a real server, restarted 3 s later", 7.0),
    "hb-kill": ("heartbeat SIGKILLed on the active director, then started again", 12.0),
    "hb-hup": ("SIGHUP to heartbeat on the active director", 3.0),
    "hb-restart": ("heartbeat stopped and started again on the active director", 7.0),
    "director-kill": ("the director daemon SIGKILLed on the active node", 8.0),
    "nft-flush": ("`nft flush ruleset` on the active director (a firewall reload)", 3.0),
    "loss": ("5-30 % packet loss on the LAN for 3 s (nft numgen random)", 6.0),
    "partition": ("heartbeat link cut between the directors, STONITH configured", 14.0),
    "junk": ("a flood of junk datagrams on UDP 694 for 3 s", 5.0),
}
SETTLE_S = 1.0          # quiet time between a recovery and the next fault
REAL_SERVERS = ("N1", "N2", "N3", "N4")


@dataclass
class Step:
    index: int
    fault: str
    at: float            # planned start, seconds after the traffic started
    target: str = "active"   # a node name, or "active" (the node that holds the VIP then)
    params: dict = field(default_factory=dict)


def parse_faults(text: str | None) -> list[str]:
    """`--faults a,b,c` (or all when empty); ValueError names the unknown one."""
    if not text or text == "all":
        return list(FAULTS)
    out = []
    for name in (x.strip() for x in text.split(",")):
        if not name:
            continue
        if name not in FAULTS:
            raise ValueError(f"unknown fault '{name}' (known: {', '.join(FAULTS)})")
        if name not in out:
            out.append(name)
    if not out:
        raise ValueError("--faults names no fault")
    return out


def schedule(seed: int, duration: float, faults: list[str]) -> list[Step]:
    """Faults one at a time, in an order and with parameters drawn from the
    seed: rounds of every fault (shuffled) until the duration's budget is
    used; a fault that does not fit what is left is skipped, a shorter one
    may still fit. Always at least one fault."""
    rnd = random.Random(seed)
    steps: list[Step] = []
    t = SETTLE_S
    while True:
        order = list(faults)
        rnd.shuffle(order)
        added = False
        for f in order:
            cost = FAULTS[f][1]
            if steps and t + cost > duration:
                continue
            params: dict = {}
            target = "active"
            if f == "apache":
                target = rnd.choice(REAL_SERVERS)
            elif f == "loss":
                params["percent"] = rnd.randint(5, 30)
                params["hold"] = 3.0
            elif f == "junk":
                params["rate"] = rnd.choice((2000, 5000, 10000))
                params["hold"] = 3.0
            elif f == "crash":
                params["down"] = round(rnd.uniform(1.0, 3.0), 1)
            steps.append(Step(len(steps) + 1, f, round(t, 1), target, params))
            t += cost + SETTLE_S
            added = True
        if not added:
            return steps


# ---------------------------------------------------------------------------
# the verdict

@dataclass
class Window:
    """One fault as it happened: injected at t0, cluster healthy again at t1."""
    index: int
    fault: str
    target: str
    t0: float
    t1: float
    recovered: bool = True
    note: str = ""


@dataclass
class Request:
    t0: float
    t1: float
    ok: bool
    kind: str = "http"      # http | persist
    detail: str = ""


@dataclass
class Download:
    t0: float
    t1: float
    ok: bool
    detail: str = ""


@dataclass
class PersistAnswer:
    t: float
    client: str
    server: str | None       # None: the request failed


def _overlaps(a0, a1, b0, b1) -> bool:
    return a0 <= b1 and b0 <= a1


def window_of(t0: float, t1: float, windows: list[Window]) -> Window | None:
    for w in windows:
        if _overlaps(t0, t1, w.t0, w.t1):
            return w
    return None


def persistence_violations(answers: list[PersistAnswer], excused: dict[str, list[tuple[float, float]]],
                           ) -> list[dict]:
    """A persistent client must keep its real server while that server is
    alive: a change of server is a violation unless the previous server was
    down (an interval of excused[server]) between the two answers."""
    out = []
    last: dict[str, tuple[float, str]] = {}
    for a in sorted(answers, key=lambda a: a.t):
        if a.server is None:
            continue
        prev = last.get(a.client)
        if prev is not None and prev[1] != a.server:
            t_prev, s_prev = prev
            if not any(_overlaps(t_prev, a.t, x0, x1) for x0, x1 in excused.get(s_prev, ())):
                out.append({"t": round(a.t, 3), "client": a.client, "from": s_prev, "to": a.server})
        last[a.client] = (a.t, a.server)
    return out


GRID_S = 0.01


def vip_timeline(samples: dict[str, list[tuple[float, bool]]], t_start: float, t_end: float,
                 stale: float = 0.03) -> list[tuple[float, float, int]]:
    """(from, to, number of nodes holding the VIP) on a 10 ms grid over
    [t_start, t_end], runs of equal count merged. A node's sample holds
    until its next one; past `stale` seconds without a sample (a frozen or
    killed node, whose sampler is gone with it) it counts as not holding."""
    import bisect

    series = {n: sorted(ss) for n, ss in samples.items()}
    times = {n: [t for t, _ in ss] for n, ss in series.items()}
    out: list[list] = []
    k = 0
    while True:
        t = t_start + k * GRID_S
        if t >= t_end:
            break
        n = 0
        for node, ss in series.items():
            i = bisect.bisect_right(times[node], t) - 1
            if i >= 0 and t - ss[i][0] <= stale and ss[i][1]:
                n += 1
        t1 = min(t + GRID_S, t_end)
        if out and out[-1][2] == n:
            out[-1][1] = t1
        else:
            out.append([t, t1, n])
        k += 1
    return [tuple(x) for x in out]


def _time_with(timeline, n_pred, w0=None, w1=None) -> float:
    tot = 0.0
    for a, b, n in timeline:
        if not n_pred(n):
            continue
        if w0 is not None:
            a, b = max(a, w0), min(b, w1)
        if b > a:
            tot += b - a
    return tot


def verdict(windows: list[Window], requests: list[Request], downloads: list[Download],
            persist: list[dict], timeline: list[tuple[float, float, int]], leftovers: list[str],
            skipped: list[str] | None = None) -> dict:
    """Per fault and in total; `clean` when nothing failed outside a window,
    no download broke, persistence held, the VIP was never on two nodes,
    every fault recovered and nothing was left behind."""
    rows = []
    outside = [r for r in requests if not r.ok and window_of(r.t0, r.t1, windows) is None]
    for w in windows:
        failed = [r for r in requests if not r.ok and _overlaps(r.t0, r.t1, w.t0, w.t1)]
        total = [r for r in requests if _overlaps(r.t0, r.t1, w.t0, w.t1)]
        gap = (max(r.t1 for r in failed) - min(r.t0 for r in failed)) if failed else 0.0
        broken = [d for d in downloads if not d.ok and _overlaps(d.t0, d.t1, w.t0, w.t1)]
        viol = [p for p in persist if w.t0 <= p["t"] <= w.t1]
        rows.append({
            "index": w.index, "fault": w.fault, "target": w.target, "t0": round(w.t0, 3), "t1": round(w.t1, 3),
            "duration_s": round(w.t1 - w.t0, 3), "recovered": w.recovered, "note": w.note,
            "requests": len(total), "failed": len(failed), "window_ms": round(gap * 1000),
            "downloads_broken": len(broken), "persistence_violations": len(viol),
            "double_vip_ms": round(_time_with(timeline, lambda n: n >= 2, w.t0, w.t1) * 1000),
            "no_vip_ms": round(_time_with(timeline, lambda n: n == 0, w.t0, w.t1) * 1000),
        })
    totals = {
        "faults": len(windows),
        "requests": len(requests),
        "failed_inside_windows": sum(1 for r in requests if not r.ok) - len(outside),
        "failed_outside_windows": len(outside),
        "downloads": len(downloads),
        "downloads_broken": sum(1 for d in downloads if not d.ok),
        "persistence_violations": len(persist),
        "double_vip_ms": round(_time_with(timeline, lambda n: n >= 2) * 1000),
        "no_vip_ms": round(_time_with(timeline, lambda n: n == 0) * 1000),
        "unrecovered": sum(1 for w in windows if not w.recovered),
        "leftovers": len(leftovers),
    }
    clean = (totals["failed_outside_windows"] == 0 and totals["downloads_broken"] == 0
             and totals["persistence_violations"] == 0 and totals["double_vip_ms"] == 0
             and totals["unrecovered"] == 0 and not leftovers and len(windows) > 0)
    return {
        "clean": clean, "faults": rows, "totals": totals,
        "outside_failures": [asdict(r) for r in outside[:50]],
        "broken_downloads": [asdict(d) for d in downloads if not d.ok][:50],
        "persistence": persist[:50], "leftovers": leftovers, "skipped": skipped or [],
    }


def table(v: dict) -> str:
    """The verdict as a sysadmin reads it."""
    hdr = (f"{'#':>2} {'fault':<13} {'target':<6} {'took':>6} {'reqs':>5} {'failed':>6} "
           f"{'window':>8} {'dl-broken':>9} {'persist':>7} {'2-VIP':>6} {'no-VIP':>7}  ok")
    lines = [hdr, "-" * len(hdr)]
    for r in v["faults"]:
        ok = "yes" if (r["recovered"] and not r["downloads_broken"] and not r["persistence_violations"]
                       and not r["double_vip_ms"]) else "NO"
        lines.append(f"{r['index']:>2} {r['fault']:<13} {r['target']:<6} {r['duration_s']:>5.1f}s "
                     f"{r['requests']:>5} {r['failed']:>6} {r['window_ms']:>6}ms {r['downloads_broken']:>9} "
                     f"{r['persistence_violations']:>7} {r['double_vip_ms']:>4}ms {r['no_vip_ms']:>5}ms  {ok}"
                     + (f"  ({r['note']})" if r["note"] else ""))
    t = v["totals"]
    lines.append("-" * len(hdr))
    lines.append(f"requests {t['requests']}: failed inside fault windows {t['failed_inside_windows']}, "
                 f"OUTSIDE any window {t['failed_outside_windows']}")
    lines.append(f"downloads {t['downloads']} (SHA-256 checked): broken {t['downloads_broken']}; "
                 f"persistence violations {t['persistence_violations']}")
    lines.append(f"VIP on two nodes {t['double_vip_ms']} ms, on none {t['no_vip_ms']} ms; "
                 f"unrecovered faults {t['unrecovered']}; leftovers {t['leftovers']}"
                 + (f" ({'; '.join(v['leftovers'][:5])})" if v["leftovers"] else ""))
    lines.append("verdict: CLEAN" if v["clean"] else "verdict: NOT CLEAN")
    return "\n".join(lines) + "\n"
