#!/usr/bin/env python3
"""Benchmark of active-active directors over BGP (issue 17). Needs root, ~3 min.

(1) lab (halb.lab.ecmp: router with BIRD, 3 directors, 4 real servers, 64
    keep-alive flows with a request every 0.1 s each + 20 new connections/s):
    - withdrawal time, event -> the router's kernel route for the VIP changes
      (`ip monitor route` in the router): graceful (`halb bgp stop`, process
      start included), crash (every process of the director frozen) with
      BFD 20 ms x 3, BFD 100 ms x 3, and BFD off (hold timer 3 s only);
    - broken flows and failed new connections per event (graceful stop,
      director added, crash), halb (-s mh, address-ordered Maglev, flows
      scheduled mid-flow) beside plain ECMP (-s rr: what any non-consistent
      director does when the router moves a flow to it), in the same run.
(2) simulation with the real table code (halb.sched.hashed.MaglevHashing,
    fed in address order as halb.nft.plan does): N directors x S real
    servers, M = 65,537: build time of one table, the same table on every
    director (checked over shuffled orders), slots that move on a server
    removal / addition beyond the minimum, and the kernel memory of the q map
    with M elements and of the flow map per entry (measured in a namespace).

    python3 bench/bench_bgp.py [--skip-lab] [--skip-sim] [--servers 10000] [--directors 100] [--orders 3] [--lab-runs wlc]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))


# -- (1) lab ------------------------------------------------------------------------------
def lab_run(scheduler: str, bfd, hold: int, events: list[str], sync: bool = False) -> dict:
    from halb.lab.ecmp import EcmpLab, FlowLoad, RouteWatch

    e = EcmpLab(directors=3, reals=4, clients=1, scheduler=scheduler,
                schedflags="mh-port" if scheduler == "mh" else "", bfd=bfd, hold=hold, sync=sync)
    out: dict = {}
    e.build()
    load = watch = None
    try:
        watch = RouteWatch(e)
        for ev in events:
            # fresh flows for every event (new 4-tuples: no director has an
            # entry for them from an earlier event)
            load = FlowLoad(e.lab, "client0", e.vip, flows=64, period=0.1, new_rate=20).start()
            time.sleep(1.5)
            d = e.director(3)
            m, t0 = load.mark(), time.monotonic()
            if ev == "graceful":
                e.stop_bgp(d)
            elif ev == "added":
                e.start_bgp(d)
            elif ev == "freeze":
                e.lab.freeze(d)
            took = watch.first_after(t0, timeout=15)
            if ev == "added":
                e.wait_routes(3, timeout=30)
                took = time.monotonic() - t0
            time.sleep(2.0)
            got = load.since(m)
            out[ev] = {"route_change_s": None if took is None else round(took, 4),
                       "broken_flows": len(got["broken"]), "failed_new": len(got["new_failed"]),
                       "new_ok": got["new_ok"], "flows": 64}
            load.stop()
            load = None
            if ev == "freeze":
                e.lab.thaw(d)
                e.wait_routes(3, timeout=30)
                time.sleep(1.0)
    finally:
        if load:
            load.stop()
        if watch:
            watch.close()
        e.down()
    return out


LAB_RUNS = {
    "halb mh, BFD 20 ms x 3": ("mh", (20_000, 3), 3, ["graceful", "added", "freeze"], False),
    "plain ECMP (rr), BFD 20 ms x 3": ("rr", (20_000, 3), 3, ["graceful", "added", "freeze"], False),
    "halb mh, BFD 100 ms x 3": ("mh", (100_000, 3), 3, ["freeze"], False),
    "halb mh, BFD off, hold 3 s": ("mh", None, 3, ["freeze"], False),
    "wlc, no sync, BFD 20 ms x 3": ("wlc", (20_000, 3), 3, ["graceful", "added", "freeze"], False),
    "wlc + multi-master sync, BFD 20 ms x 3": ("wlc", (20_000, 3), 3, ["graceful", "added", "freeze"], True),
}


def lab_bench(only: str = "") -> dict:
    res = {}
    for name, args in LAB_RUNS.items():
        if only and not any(name.startswith(o) for o in only.split(",")):
            continue
        res[name] = lab_run(*args)
    return res


# -- (2) simulation ---------------------------------------------------------------------
def maglev_table(addrs: list[str], size: int) -> list[str]:
    """The nft engine's mh table for these real servers (address order, as
    halb.nft.plan.slot_table): slot -> real server address."""
    import ipaddress

    from halb.model import Dest, Service, ServiceKey
    from halb.sched.hashed import MaglevHashing

    dests = sorted((Dest(a, 80, "gate", 1) for a in addrs), key=lambda d: ipaddress.ip_address(d.addr).packed)
    sch = MaglevHashing(Service(ServiceKey("tcp", "10.81.9.100", 80), "mh", dests=[]))
    sch.size = size
    sch.update(dests)
    return [dests[i].addr for i in sch.table]


def kernel_map_memory(elements: int, kind: str) -> float:
    """Bytes per element of an nft map in the kernel (Slab + Percpu delta of
    /proc/meminfo, median of 3, in a private namespace)."""
    ns = f"halbbench{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        def mem() -> int:
            d = {}
            for ln in Path("/proc/meminfo").read_text().splitlines():
                k, v = ln.split(":")
                d[k] = int(v.split()[0]) * 1024
            return d["Slab"] + d.get("Percpu", 0)

        if kind == "q":
            decl = "add map inet b m { typeof numgen inc mod 2 : meta mark; }"
            elem = lambda i: f"{i} : 0x4a{i % 65536:06x}"  # noqa: E731
        else:
            decl = ("add map inet b m { type ipv4_addr . inet_service . ipv4_addr . inet_service : mark; "
                    "flags timeout; size 1048576; }")
            elem = lambda i: f"10.81.9.100 . 80 . 10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255} . {1024 + i % 60000} : 0x4a000001"  # noqa: E731
        per = []
        for _ in range(3):
            subprocess.run(["ip", "netns", "exec", ns, "nft", f"add table inet b; {decl}"], check=True)
            time.sleep(0.3)
            m0 = mem()
            batch = []
            for i in range(elements):
                batch.append(elem(i))
            cmds = "".join(f"add element inet b m {{ {', '.join(batch[j:j + 4096])} }}\n"
                           for j in range(0, len(batch), 4096))
            subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=cmds, text=True, check=True)
            time.sleep(0.3)
            per.append((mem() - m0) / elements)
            subprocess.run(["ip", "netns", "exec", ns, "nft", "delete table inet b"], check=True)
            time.sleep(0.3)
        return statistics.median(per)
    finally:
        subprocess.run(["ip", "netns", "del", ns])


def sim_bench(servers: int, directors: int, orders: int, size: int = 65537) -> dict:
    addrs = [f"10.{100 + i // 65536}.{(i >> 8) & 255}.{i & 255}" for i in range(1, servers + 1)]
    t0 = time.perf_counter()
    base = maglev_table(addrs, size)
    build = time.perf_counter() - t0
    same = True
    for k in range(orders):
        sh = addrs[:]
        random.Random(k).shuffle(sh)
        same &= maglev_table(sh, size) == base
    res = {"servers": servers, "M": size, "build_s": round(build, 3), "identical_over_orders": same,
           "orders_checked": orders, "directors": directors}
    # one server removed: the minimum is its own slots
    gone = addrs[servers // 2]
    t1 = time.perf_counter()
    after = maglev_table([a for a in addrs if a != gone], size)
    res["rebuild_s"] = round(time.perf_counter() - t1, 3)
    own = sum(1 for a in base if a == gone)
    moved = sum(1 for b, a in zip(base, after) if a != b)
    res["remove"] = {"slots_of_removed": own, "slots_moved": moved, "beyond_minimum": moved - own,
                     "beyond_minimum_pct_of_M": round(100 * (moved - own) / size, 3)}
    new = f"10.{100 + servers // 65536}.{((servers + 1) >> 8) & 255}.{(servers + 1) & 255}"
    added = maglev_table(addrs + [new], size)
    took = sum(1 for a in added if a == new)
    moved = sum(1 for b, a in zip(base, added) if a != b)
    res["add"] = {"slots_of_added": took, "slots_moved": moved, "beyond_minimum": moved - took,
                  "beyond_minimum_pct_of_M": round(100 * (moved - took) / size, 3)}
    per_q = kernel_map_memory(size, "q")
    per_flow = kernel_map_memory(100_000, "flow")
    res["kernel_memory"] = {"q_map_bytes_per_slot": round(per_q), "q_map_MiB_per_director": round(per_q * size / 2**20, 2),
                            "flow_map_bytes_per_flow": round(per_flow),
                            "flow_map_MiB_per_million_flows": round(per_flow * 1e6 / 2**20, 1),
                            "q_map_MiB_all_directors": round(per_q * size * directors / 2**20, 1)}
    return res


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--skip-lab", action="store_true")
    ap.add_argument("--skip-sim", action="store_true")
    ap.add_argument("--servers", type=int, default=10_000)
    ap.add_argument("--directors", type=int, default=100)
    ap.add_argument("--orders", type=int, default=3, help="shuffled orders checked for an identical table")
    ap.add_argument("--lab-runs", default="", help="comma-separated prefixes of the lab runs to do (default all)")
    a = ap.parse_args()
    out = {}
    if not a.skip_sim:
        out["simulation"] = sim_bench(a.servers, a.directors, a.orders)
        print(json.dumps(out["simulation"], indent=2), flush=True)
    if not a.skip_lab:
        out["lab"] = lab_bench(a.lab_runs)
        print(json.dumps(out["lab"], indent=2), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
