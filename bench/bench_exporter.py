#!/usr/bin/env python3
"""Benchmark of `halb exporter` at 1,000 virtual services x 10 real servers.

For each engine (proxy: a real `halb proxy` daemon; nft: the kernel table in
a throwaway network namespace, needs root), the table is loaded through the
engine API, then:
  - one collection (engine read + daemons' sockets + rendering + gzip), the
    work the exporter does in the background every --interval,
  - scrapes of a running `halb exporter` over HTTP (one kept-alive
    connection, like Prometheus), plain and gzip: median and p99 wall time
    on the client, and the body sizes.
Rendering alone is compared with prometheus-client's generate_latest on the
same samples (the baseline, measured in the same run), on a synthetic node
that also has a director checking all 10,000 real servers.

    python3 bench/bench_exporter.py [--services 1000] [--servers 10] [--scrapes 50] [--engines proxy,nft]
"""
from __future__ import annotations

import argparse
import gzip
import http.client
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
os.environ["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def build_ops(n_services: int, n_servers: int, fwd: str, vip: str, rip_base: str):
    import ipaddress

    from halb.model import Dest, Op, Service, ServiceKey

    base = ipaddress.ip_address(rip_base)
    ops = []
    for s in range(n_services):
        key = ServiceKey("tcp", vip, 10000 + s)
        ops.append(Op("add-service", service=Service(key, scheduler="wlc")))
        for r in range(n_servers):
            ops.append(Op("add-dest", key=key, dest=Dest(str(base + r), key.port, fwd, 1 + r % 3)))
    return ops


def scrape_times(port: int, n: int, gz: bool) -> tuple[list[float], int]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Accept-Encoding": "gzip"} if gz else {}
    times, size = [], 0
    for _ in range(n):
        t0 = time.perf_counter()
        conn.request("GET", "/metrics", headers=headers)
        r = conn.getresponse()
        body = r.read()
        times.append(time.perf_counter() - t0)
        size = len(body)
        assert r.status == 200
    conn.close()
    return times, size


def measure_engine(engine: str, n_services: int, n_servers: int, scrapes: int) -> dict:
    """Inside the namespace (nft) or here (proxy)."""
    from halb.context import Context
    from halb.engine import open_engine
    from halb.exporter.gather import gather
    from halb.exporter.metrics import render

    run_dir = tempfile.mkdtemp(prefix=f"halb-bexp-{engine}-")
    env = dict(os.environ, HALB_RUN_DIR=run_dir, HALB_NODE="bench", HALB_ENGINE=engine)
    ctx = Context(node="bench", run_dir=run_dir, engine=engine)
    procs = []
    out: dict = {"engine": engine}
    try:
        if engine == "proxy":
            subprocess.run([sys.executable, "-m", "halb", "proxy", "start"], env=env, check=True,
                           capture_output=True)
            ops = build_ops(n_services, n_servers, "masq", "127.0.0.1", "127.0.1.1")
        else:
            ops = build_ops(n_services, n_servers, "gate", "10.99.0.10", "10.99.1.1")
        eng = open_engine(ctx)
        t0 = time.perf_counter()
        eng.execute(ops)
        out["apply_s"] = round(time.perf_counter() - t0, 3)
        t0 = time.perf_counter()
        svcs = eng.services()
        out["engine_read_s"] = round(time.perf_counter() - t0, 3)
        assert len(svcs) == n_services and sum(len(s.dests) for s in svcs) == n_services * n_servers
        eng.close()
        colls = []
        for _ in range(3):
            t0 = time.perf_counter()
            snap = gather(ctx)
            body = render(snap).encode()
            gzip.compress(body, compresslevel=1)
            colls.append(time.perf_counter() - t0)
        assert not snap["errors"], snap["errors"]
        out["collect_s"] = round(statistics.median(colls), 3)
        t0 = time.perf_counter()
        for _ in range(5):
            render(snap)
        out["render_ms"] = round((time.perf_counter() - t0) / 5 * 1000, 1)
        out["samples"] = body.count(b"\n") - body.count(b"\n#")
        port = free_port()
        procs.append(subprocess.Popen([sys.executable, "-m", "halb", "exporter", "--listen", f"127.0.0.1:{port}",
                                       "--interval", "5"], env=env, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL))
        deadline = time.monotonic() + 60
        while True:
            try:
                scrape_times(port, 1, False)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        for gz in (False, True):
            ts, size = scrape_times(port, scrapes, gz)
            ts.sort()
            k = "gzip" if gz else "plain"
            out[f"scrape_{k}_p50_ms"] = round(statistics.median(ts) * 1000, 2)
            out[f"scrape_{k}_p99_ms"] = round(ts[min(len(ts) - 1, int(len(ts) * 0.99))] * 1000, 2)
            out[f"size_{k}_bytes"] = size
        # the background collections a scraped exporter keeps doing (every --interval,
        # or 10 x a collection's cost), nft's own processes included
        import psutil
        p = psutil.Process(procs[0].pid)
        cpu = lambda: sum(p.cpu_times()[:4])
        c0 = cpu()
        time.sleep(30)
        out["exporter_cpu_pct_background"] = round((cpu() - c0) / 30 * 100, 1)
    finally:
        for p in procs:
            p.terminate()
            p.wait(10)
        if engine == "proxy":
            subprocess.run([sys.executable, "-m", "halb", "proxy", "stop"], env=env, capture_output=True)
        else:
            from halb.nft.engine import connect
            try:
                connect(ctx).flush()
            except Exception:  # noqa: BLE001
                pass
        shutil.rmtree(run_dir, ignore_errors=True)
    return out


def baseline_render(n_services: int, n_servers: int) -> dict:
    """render() against prometheus-client's generate_latest on the same
    samples: a synthetic node with the table and a director checking all of it."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
    from prometheus_client.parser import text_string_to_metric_families

    from halb.exporter.metrics import METRICS, render

    def st():
        return {"conns": 12345, "inpkts": 99999, "outpkts": 88888, "inbytes": 123456789, "outbytes": 987654321}

    rates = {"cps": 3, "inpps": 40, "outpps": 30, "inbps": 5000, "outbps": 90000}
    services, reals = [], []
    for s in range(n_services):
        dests = [{"addr": f"10.99.{1 + r // 250}.{1 + r % 250}", "port": 10000 + s, "fwd": "gate", "weight": 1,
                  "activeconns": 7, "inactconns": 3, "persistconns": 0, "local": False, "stats": st(),
                  "rates": rates} for r in range(n_servers)]
        services.append({"proto": "tcp", "addr": "10.99.0.10", "port": 10000 + s, "fwmark": 0, "scheduler": "wlc",
                         "persistent": False, "timeout": 0, "stats": st(), "rates": rates, "dests": dests})
        reals.append({"virtual": f"10.99.0.10:{10000 + s}", "protocol": "tcp",
                      "reals": [{"real": f"{d['addr']}:{d['port']}", "up": True, "failcount": 0, "weight": 1,
                                 "check_seconds": 0.0012} for d in dests]})
    snap = {"node": "bench", "t": time.time(), "engine": "nft", "errors": {}, "collect_seconds": 0.1,
            "services": services, "heartbeat": None, "sync": {}, "proxy": None,
            "directors": [{"name": "ldirectord.cf", "virtuals": reals, "reloads": 0}]}
    ts = []
    for _ in range(5):
        t0 = time.perf_counter()
        text = render(snap)
        ts.append(time.perf_counter() - t0)
    fams = list(text_string_to_metric_families(text))

    class C:
        def collect(self):
            for f in fams:
                typ = METRICS.get(f.name, METRICS.get(f.name + "_total", ("gauge",)))[0]
                cls = CounterMetricFamily if typ == "counter" else GaugeMetricFamily
                labels = list(f.samples[0].labels) if f.samples else []
                m = cls(f.name, f.documentation, labels=labels)
                for s in f.samples:
                    m.add_metric([s.labels[k] for k in labels], s.value)
                yield m

    reg = CollectorRegistry(auto_describe=False)
    reg.register(C())
    bs = []
    for _ in range(3):
        t0 = time.perf_counter()
        generate_latest(reg)
        bs.append(time.perf_counter() - t0)
    samples = sum(len(f.samples) for f in fams)
    return {"samples": samples, "render_ms": round(statistics.median(ts) * 1000, 1),
            "generate_latest_ms": round(statistics.median(bs) * 1000, 1),
            "ratio": round(statistics.median(bs) / statistics.median(ts), 1), "bytes": len(text.encode())}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--services", type=int, default=1000)
    ap.add_argument("--servers", type=int, default=10)
    ap.add_argument("--scrapes", type=int, default=50)
    ap.add_argument("--engines", default="proxy,nft")
    ap.add_argument("--inner", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.inner:
        # inside a fresh network namespace: a route to the real servers
        subprocess.run("ip link set lo up; ip link add b0 type veth peer name b1; ip link set b0 up; "
                       "ip link set b1 up; ip addr add 10.99.0.1/16 dev b0", shell=True, check=True)
        os.environ.pop("HALB_NFT_HOST_GUARD", None)
        print(json.dumps(measure_engine(a.inner, a.services, a.servers, a.scrapes)))
        return 0
    results = {"table": f"{a.services} x {a.servers}", "baseline": baseline_render(a.services, a.servers)}
    for eng in a.engines.split(","):
        if eng == "proxy":
            results["proxy"] = measure_engine("proxy", a.services, a.servers, a.scrapes)
        elif eng == "nft":
            if os.geteuid() != 0:
                results["nft"] = "skipped: needs root"
                continue
            r = subprocess.run(["unshare", "-n", sys.executable, __file__, "--inner", "nft", "--services",
                                str(a.services), "--servers", str(a.servers), "--scrapes", str(a.scrapes)],
                               capture_output=True, text=True, timeout=900)
            if r.returncode != 0:
                results["nft"] = f"failed: {r.stderr.strip().splitlines()[-1:] }"
            else:
                results["nft"] = json.loads(r.stdout.strip().splitlines()[-1])
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
