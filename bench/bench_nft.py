#!/usr/bin/env python3
"""Benchmark of the nft engine (kernel data plane) in the namespace lab.

One run, bounded (~6 min), needs root:
  (1) data path, client0 -> nginx on N2 (1 worker), six paths set up at
      once (see paths_up): direct, bare-hop (plain routing through N3),
      naive-dr (hand-written mark rule + policy route on N3), gate (halb,
      Direct Return, N1), masq (halb, NAT, N1), xdp (halb's xdp engine,
      Direct Return balanced in N4's driver). Short slices of every path
      are interleaved in a random order per round, so slow phases of the
      shared 2 cores hit every path alike; figures are medians and ratios
      are paired per round.
        throughput: wrk -t2 -c50, keep-alive and one connection per request;
        CPU time of both cores per request (/proc/stat; the hypervisor's
        steal time is reported, not counted);
        latency: a C probe at a light fixed rate (default 1000 req/s), one
        connection per request and keep-alive; p50/p99 pooled over rounds,
        and the p99 difference to direct per round (median, IQR);
        forwarding time inside the directors (tcpdump on their LAN
        interface: a packet's arrival -> its departure), which the
        machine's millisecond stalls rarely hit.
  (2) table apply, inside N1 (engine API, the path `ipvsadm -R` takes):
        1,000 services x 10 real servers in one transaction, then a single
        weight edit and a single server removal; the same edits on a table of
        1 service x 10 servers are the baseline (an edit must not depend on
        the table size). Also one `halb ipvsadm -e` CLI call, process start
        included.

    python3 bench/bench_nft.py [--rounds 8] [--lat-rounds 12] [--rate 1000] [--services 1000] [--servers 10]
                               [--paths direct,bare-hop,naive-dr,gate,masq,xdp]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

PORT = 8080


# ---------------------------------------------------------------------------
# (2) table apply, run inside the director's namespace
def apply_inner(n_services: int, n_servers: int, vip: str, rip_base: str, run_dir: str) -> dict:
    import ipaddress

    from halb.context import Context
    from halb.model import Dest, Op, Service, ServiceKey
    from halb.nft.engine import connect

    eng = connect(Context(node="bench", run_dir=run_dir, engine="nft"))
    eng.flush()
    base = ipaddress.ip_address(rip_base)
    rips = [str(base + i) for i in range(n_servers)]

    def build(n):
        ops = []
        for s in range(n):
            key = ServiceKey("tcp", vip, 10000 + s)
            ops.append(Op("add-service", service=Service(key, scheduler="wrr")))
            for r in rips:  # Direct Return: the real port is the virtual port (as ipvsadm -g sets it)
                ops.append(Op("add-dest", key=key, dest=Dest(r, key.port, "gate", 1)))
        return ops

    def timed(fn):
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    out = {}
    for label, n in (("small", 1), ("big", n_services)):
        ops = build(n)
        applies = []
        for _ in range(3):
            eng.flush()
            applies.append(timed(lambda: eng.execute(ops)))
        out[f"{label}_apply_s"] = statistics.median(applies)
        edits, removals = [], []
        for i in range(5):
            key = ServiceKey("tcp", vip, 10000 + (n // 2 + i) % n)
            edits.append(timed(lambda: eng.execute([Op("edit-dest", key=key,
                                                       dest=Dest(rips[i], key.port, "gate", 2 + i))])))
            removals.append(timed(lambda: eng.execute([Op("del-dest", key=key,
                                                          dest=Dest(rips[i + 5], key.port))])))
        out[f"{label}_edit_ms"] = statistics.median(edits) * 1000
        out[f"{label}_remove_ms"] = statistics.median(removals) * 1000
        out[f"{label}_services"] = len(eng.services()) if label == "small" else n
    # one CLI call on the big table, process start included
    env = dict(os.environ, HALB_RUN_DIR=run_dir, HALB_NODE="bench")
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "halb", "--engine", "nft", "ipvsadm", "-e", "-t",
                        f"{vip}:{10000 + n_services - 1}", "-r", f"{rips[0]}", "-g", "-w", "7"],
                       capture_output=True, text=True, env=env)
    out["big_cli_edit_ms"] = (time.perf_counter() - t0) * 1000
    if r.returncode != 0:
        out["cli_error"] = r.stderr.strip()
    t0 = time.perf_counter()
    eng.flush()
    out["flush_s"] = time.perf_counter() - t0
    return out


# ---------------------------------------------------------------------------
# (1) data path
PATHS = ("direct", "bare-hop", "naive-dr", "gate", "masq", "xdp")

# A fixed-rate latency probe: requests start on a clock (RATE per second),
# each latency counts from the request's start to the end of its response;
# one connection per request (close) or one kept-alive connection (ka).
# Prints "errors N" then every latency in microseconds.
PROBE_C = r"""#define _GNU_SOURCE
/* fixed-rate HTTP latency probe (see bench_nft.py) */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <errno.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

static long long now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000LL + t.tv_nsec;
}

static int dial(struct sockaddr_in *sa) {
    int s = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    struct timeval tv = {2, 0};
    setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    if (connect(s, (struct sockaddr *)sa, sizeof *sa) < 0) { close(s); return -1; }
    return s;
}

/* one response on a kept-alive connection: headers, then Content-Length bytes */
static int read_response(int s, char *buf, int cap) {
    int got = 0;
    for (;;) {
        int n = recv(s, buf + got, cap - 1 - got, 0);
        if (n <= 0) return -1;
        got += n;
        buf[got] = 0;
        char *end = strstr(buf, "\r\n\r\n");
        if (!end) continue;
        char *cl = strcasestr(buf, "content-length:");
        int want = (int)(end + 4 - buf) + (cl ? atoi(cl + 15) : 0);
        if (got >= want) return 0;
    }
}

int main(int argc, char **argv) {
    if (argc != 7) {
        fprintf(stderr, "usage: probe ADDR PORT PATH RATE SECONDS close|ka\n");
        return 2;
    }
    struct sockaddr_in sa = {0};
    sa.sin_family = AF_INET;
    sa.sin_port = htons(atoi(argv[2]));
    inet_pton(AF_INET, argv[1], &sa.sin_addr);
    double rate = atof(argv[4]);
    long n = (long)(rate * atof(argv[5]));
    int ka = strcmp(argv[6], "ka") == 0;
    char req[512], buf[65536];
    int rl = snprintf(req, sizeof req, ka ? "GET %s HTTP/1.1\r\nHost: %s\r\n\r\n"
                                          : "GET %s HTTP/1.0\r\nHost: %s\r\n\r\n", argv[3], argv[1]);
    long long period = (long long)(1e9 / rate);
    long *lat = calloc(n, sizeof *lat);
    long errors = 0, done = 0;
    int s = -1;
    long long start = now_ns() + 1000000;
    for (long i = 0; i < n; i++) {
        long long due = start + i * period;
        struct timespec ts = {due / 1000000000LL, due % 1000000000LL};
        while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR) {}
        long long t0 = now_ns();
        int ok = 0;
        if (ka) {
            if (s < 0) s = dial(&sa);
            if (s >= 0 && send(s, req, rl, 0) == rl && read_response(s, buf, sizeof buf) == 0) ok = 1;
            else if (s >= 0) { close(s); s = -1; }
        } else {
            int c = dial(&sa);
            if (c >= 0) {
                if (send(c, req, rl, 0) == rl) {
                    int r;
                    while ((r = recv(c, buf, sizeof buf, 0)) > 0) {}
                    ok = r == 0;
                }
                close(c);
            }
        }
        /* from the request's own start: a stall of this (shared, virtual)
           machine then spoils one request, not the ones queued behind it */
        if (ok) lat[done++] = (long)((now_ns() - t0) / 1000);
        else errors++;
    }
    printf("errors %ld\n", errors);
    for (long i = 0; i < done; i++) printf("%ld%c", lat[i], i + 1 == done ? '\n' : ' ');
    return 0;
}
"""


def build_probe(workdir: Path) -> str | None:
    """Compile the probe (C: a Python client's own jitter would hide 0.1 ms)."""
    src, exe = workdir / "probe.c", workdir / "probe"
    src.write_text(PROBE_C)
    r = subprocess.run(["cc", "-O2", "-o", str(exe), str(src)], capture_output=True, text=True)
    if r.returncode != 0:
        print(f"(no C compiler: latency probe skipped: {r.stderr.strip()[:200]})")
        return None
    os.chmod(workdir, 0o755)
    return str(exe)


def cpu_ticks() -> tuple[int, int]:
    """(busy, steal) clock ticks of the whole machine so far (/proc/stat)."""
    with open("/proc/stat") as fh:
        f = [int(x) for x in fh.readline().split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (f + [0] * 8)[:8]
    return user + nice + system + irq + softirq, steal


def wrk(lab, url: str, duration: float, conns: int, threads: int, close: bool) -> float:
    argv = ["wrk", f"-t{threads}", f"-c{conns}", f"-d{max(1, int(duration))}s", "--timeout", "2s"]
    if close:
        argv += ["-H", "Connection: close"]
    r = lab.run("client0", argv + [url], timeout=duration + 30)
    m = re.search(r"Requests/sec:\s+([\d.]+)", r.stdout)
    if not m:
        raise RuntimeError(f"wrk output not understood: {r.stdout} {r.stderr}")
    return float(m.group(1))


def probe(lab, exe: str, addr: str, port: int, rate: int, seconds: float, mode: str) -> tuple[list[int], int]:
    r = lab.run("client0", [exe, addr, str(port), "/testcluster.html", str(rate), str(seconds), mode],
                timeout=seconds + 30)
    lines = r.stdout.splitlines()
    if r.returncode != 0 or not lines or not lines[0].startswith("errors "):
        raise RuntimeError(f"probe failed: {r.stdout[:200]} {r.stderr[:200]}")
    errors = int(lines[0].split()[1])
    return ([int(x) for x in lines[1].split()] if len(lines) > 1 else []), errors


def pct(xs: list, q: float) -> float:
    xs = sorted(xs)
    if not xs:
        return float("nan")
    i = min(len(xs) - 1, max(0, int(round(q / 100 * len(xs) + 0.5)) - 1))
    return xs[i]


def halb(lab, *args, stdin=None):
    r = lab.run("N1", [sys.executable, "-m", "halb", "--engine", "nft", *args], input=stdin)
    if r.returncode != 0:
        raise RuntimeError(f"halb {' '.join(args)}: {r.stderr.strip()}")
    return r.stdout


def main() -> int:
    global PATHS
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=8, help="interleaved throughput rounds (1 s slices)")
    ap.add_argument("--lat-rounds", type=int, default=12, help="interleaved latency rounds")
    ap.add_argument("--rate", type=int, default=1000, help="latency probe: requests per second")
    ap.add_argument("--slice", type=float, default=1.0, help="seconds per slice")
    ap.add_argument("--warmup", type=float, default=2.0, help="seconds of load per path before measuring")
    ap.add_argument("--services", type=int, default=1000)
    ap.add_argument("--servers", type=int, default=10)
    ap.add_argument("--skip-wrk", action="store_true")
    ap.add_argument("--skip-lat", action="store_true")
    ap.add_argument("--skip-apply", action="store_true")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--paths", default=",".join(PATHS), help="paths to measure (comma-separated; direct always)")
    ap.add_argument("--apply-inner", nargs=3, metavar=("VIP", "RIP_BASE", "RUN_DIR"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.apply_inner:
        print(json.dumps(apply_inner(a.services, a.servers, *a.apply_inner)))
        return 0
    if os.geteuid() != 0:
        print("bench_nft: needs root (network namespaces, nftables)", file=sys.stderr)
        return 2
    from halb.lab import Lab

    print(f"load average at start {os.getloadavg()[0]:.2f}")
    want = {p.strip() for p in a.paths.split(",") if p.strip()} | {"direct"}
    unknown = want - set(PATHS)
    if unknown:
        print(f"bench_nft: unknown path(s) {', '.join(sorted(unknown))} (known: {', '.join(PATHS)})", file=sys.stderr)
        return 2
    PATHS = tuple(p for p in PATHS if p in want)
    with Lab(nodes=4, clients=1, apache=False, nginx=False, nginx_port=PORT) as lab:
        lab.nginx_start("N2")
        try:
            urls = paths_up(lab)
            if not (a.skip_wrk and a.skip_lat):
                data_path(lab, a, urls)
            if a.skip_apply:
                return 0
            print(f"\n== table apply (inside N1, engine API); load average {os.getloadavg()[0]:.1f} ==")
            r = lab.run("N1", [sys.executable, str(Path(__file__).resolve()), "--services", str(a.services),
                               "--servers", str(a.servers), "--apply-inner", lab.vip, lab.addr(20),
                               str(Path(lab.dir) / "N1" / "bench-nft")], timeout=600)
            if r.returncode != 0:
                print(r.stderr)
                return 1
            res = json.loads(r.stdout.strip().splitlines()[-1])
            n, m = a.services, a.servers
            print(f"full apply {n} services x {m} servers: {res['big_apply_s']:.2f} s, median of 3  (target < 2 s)")
            print(f"one weight edit:   {res['big_edit_ms']:.1f} ms on {n}x{m}, "
                  f"{res['small_edit_ms']:.1f} ms on 1x{m}  (ratio {res['big_edit_ms'] / res['small_edit_ms']:.2f}; target < 50 ms)")
            print(f"one server removal: {res['big_remove_ms']:.1f} ms on {n}x{m}, "
                  f"{res['small_remove_ms']:.1f} ms on 1x{m}  (ratio {res['big_remove_ms'] / res['small_remove_ms']:.2f})")
            print(f"one `halb ipvsadm -e` CLI call on {n}x{m} (process start included): {res['big_cli_edit_ms']:.0f} ms"
                  + (f"  ERROR {res['cli_error']}" if "cli_error" in res else ""))
            print(f"flush (table, rules, routes removed): {res['flush_s'] * 1000:.0f} ms")
        finally:
            lab.run("N1", [sys.executable, "-m", "halb", "--engine", "nft", "nft", "flush"])
            lab.run("N4", [sys.executable, "-m", "halb", "xdp", "flush"])
            lab.run("N2", [sys.executable, "-m", "halb", "realserver", "stop"])
    print(f"load average at end {os.getloadavg()[0]:.2f}")
    return 0


def paths_up(lab) -> dict[str, tuple[str, int]]:
    """Every path at once, so slices of different paths can be interleaved
    with no reconfiguration in between (nginx, 1 worker, on N2:8080):

      direct    client0 -> N2
      bare-hop  client0 -> N2's second address B, routed via N3 (plain IP
                forwarding, no nftables: the cost of the extra hop itself)
      naive-dr  client0 -> VIP2 on N3: one hand-written mark rule + policy
                route (the floor of any Direct-Return director here)
      gate      client0 -> VIP:8080 on N1, halb's nft engine, Direct Return
      masq      client0 -> VIP:8081 on N1, halb's nft engine, NAT to N2:8080
                (the client is on the real server's LAN: masqueraded)
      xdp       client0 -> VIP3:8080 on N4, halb's xdp engine, Direct Return
                (XDP_TX in N4's driver; its switch port runs an XDP_PASS
                program and client0 computes its own checksums: lab.xdp_tx_ready)
    """
    n1, n2, n3, c = lab.node("N1"), lab.node("N2"), lab.node("N3"), lab.client(0)
    vip, vip2, bare, vip3 = lab.vip, lab.addr(11), lab.addr(50), lab.addr(12)
    n4 = lab.node("N4")
    lab.run("N4", ["ip", "addr", "add", f"{vip3}/{lab.prefixlen}", "dev", n4.iface], check=True)
    lab.run("N1", ["ip", "addr", "add", f"{vip}/{lab.prefixlen}", "dev", n1.iface], check=True)
    lab.run("N3", ["ip", "addr", "add", f"{vip2}/{lab.prefixlen}", "dev", n3.iface], check=True)
    lab.run("N2", ["ip", "addr", "add", f"{bare}/{lab.prefixlen}", "dev", n2.iface], check=True)
    lab.run("N2", [sys.executable, "-m", "halb", "realserver", "start", "--vip", vip, "--vip", vip2,
                   "--vip", vip3], check=True)
    lab.run("client0", ["ip", "route", "add", f"{bare}/32", "via", n3.ip], check=True)
    naive = (f"sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.all.send_redirects=0 "
             f"net.ipv4.conf.{n3.iface}.send_redirects=0"
             f" && nft add table ip naive && nft add chain ip naive pre '{{ type filter hook prerouting priority mangle; }}'"
             f" && nft add rule ip naive pre ip daddr {vip2} tcp dport {PORT} meta mark set 0x77"
             f" && ip rule add fwmark 0x77 lookup 4242777 pref 90 && ip route add default via {n2.ip} dev {n3.iface} table 4242777"
             f" && ip rule add lookup local pref 150 && ip rule del pref 0")
    r = lab.run("N3", ["sh", "-c", naive])
    if r.returncode != 0:
        raise RuntimeError(f"naive DR / bare hop set-up failed: {r.stderr}")
    halb(lab, "ipvsadm", "-R", stdin=f"-A -t {vip}:{PORT} -s rr\n-a -t {vip}:{PORT} -r {n2.ip}:{PORT} -g\n"
                                     f"-A -t {vip}:{PORT + 1} -s rr\n-a -t {vip}:{PORT + 1} -r {n2.ip}:{PORT} -m\n")
    urls = {"direct": (n2.ip, PORT), "bare-hop": (bare, PORT), "naive-dr": (vip2, PORT),
            "gate": (vip, PORT), "masq": (vip, PORT + 1), "xdp": (vip3, PORT)}
    if "xdp" in PATHS:
        lab.xdp_tx_ready("N4")
        r = lab.run("N4", [sys.executable, "-m", "halb", "--engine", "xdp", "ipvsadm", "-R"],
                    input=f"-A -t {vip3}:{PORT} -s rr\n-a -t {vip3}:{PORT} -r {n2.ip}:{PORT} -g\n")
        if r.returncode != 0 or r.stderr.strip():
            raise RuntimeError(f"xdp engine set-up on N4: {r.stderr.strip()}")
    for name, (addr, port) in urls.items():
        if name not in PATHS:
            continue
        body = lab.run("client0", ["curl", "-s", "-m", "3", f"http://{addr}:{port}/testcluster.html"]).stdout.strip()
        if body != "N2":
            raise RuntimeError(f"{name}: {addr}:{port} answered {body!r}")
    return urls


def _iqr(xs: list[float]) -> str:
    if len(xs) < 2:
        return "-"
    q = statistics.quantiles(xs, n=4)
    return f"{q[0]:.2f}-{q[2]:.2f}"


def data_path(lab, a, urls) -> None:
    import random
    rnd = random.Random(a.seed)
    # warm-up: every path once (the flow maps grow to their working size,
    # caches and ARP entries fill) before anything is measured
    for p in PATHS:
        addr, port = urls[p]
        wrk(lab, f"http://{addr}:{port}/testcluster.html", a.warmup, 50, 2, close=True)
    if not a.skip_wrk:
        print(f"== throughput: wrk -t2 -c50 in client0, {a.rounds} rounds of 1 s slices, paths in random order "
              f"per round; load average {os.getloadavg()[0]:.2f} ==")
        res = {p: {"ka": [], "close": []} for p in PATHS}
        cpu = {p: {"ka": [], "close": []} for p in PATHS}
        hz = os.sysconf("SC_CLK_TCK")
        steal0 = cpu_ticks()
        for _ in range(a.rounds):
            for mode in ("ka", "close"):
                for p in rnd.sample(PATHS, len(PATHS)):
                    addr, port = urls[p]
                    b0, _ = cpu_ticks()
                    rate = wrk(lab, f"http://{addr}:{port}/testcluster.html", a.slice, 50, 2,
                               close=mode == "close")
                    b1, _ = cpu_ticks()
                    res[p][mode].append(rate)
                    # CPU time of the whole machine per request (wrk start-up included)
                    cpu[p][mode].append((b1 - b0) / hz / max(1.0, rate * a.slice) * 1e6)
        busy, steal = (y - x for x, y in zip(steal0, cpu_ticks()))
        print(f"(steal time, the hypervisor's: {100 * steal / max(1, busy + steal):.1f} % of busy time)")
        # ratios per round (paired: the same minute of the same machine), then their median
        print(f"{'path':<9} {'keep-alive req/s':>16} {'x direct':>9} {'(IQR)':>10} {'CPU us/req':>10}   "
              f"{'conn/req req/s':>14} {'x direct':>9} {'(IQR)':>10} {'CPU us/req':>10}")
        for p in PATHS:
            cells = []
            for mode in ("ka", "close"):
                ratios = [x / d for x, d in zip(res[p][mode], res["direct"][mode])]
                cells.append(f"{statistics.median(res[p][mode]):>16.0f} {statistics.median(ratios):>9.2f} "
                             f"{_iqr(ratios):>10} {statistics.median(cpu[p][mode]):>10.1f}")
            print(f"{p:<9} {cells[0]}   {cells[1][2:]}")
        for eng in ("gate", "xdp"):
            for base in ("bare-hop", "naive-dr"):
                if eng not in PATHS or base not in PATHS:
                    continue
                g = [statistics.median([x / y for x, y in zip(res[eng][m], res[base][m])]) for m in ("ka", "close")]
                c = [statistics.median([x / y for x, y in zip(cpu[eng][m], cpu[base][m])]) for m in ("ka", "close")]
                print(f"{eng} / {base}: keep-alive {g[0]:.2f}, conn/req {g[1]:.2f} (per-round ratios, median); "
                      f"CPU per request {c[0]:.2f} / {c[1]:.2f}")
        print("target: gate and masq >= 0.9 x direct (median of the per-round ratios, IQR over rounds; "
              "CPU us/req = busy time of both cores per request, median)")
    if a.skip_lat:
        return
    exe = build_probe(Path(lab.dir))
    if not exe:
        return
    print(f"\n== latency at a light fixed rate: {a.rate} req/s for 1 s slices, {a.lat_rounds} rounds, paths in "
          f"random order; load average {os.getloadavg()[0]:.2f} ==")
    lat = {(p, m): [] for p in PATHS for m in ("close", "ka")}
    per_round = {(p, m): [] for p in PATHS for m in ("close", "ka")}
    errors = 0
    steal0 = cpu_ticks()
    caps = {n: (str(Path(lab.dir) / f"fwd-{n}.pcap"), None) for n in ("N1", "N3")}
    for n, (f, _) in caps.items():
        caps[n] = (f, lab.popen(n, ["tcpdump", "-Z", "root", "-i", lab.node(n).iface, "-nn", "-s", "96", "-B", "16384",
                                    "--time-stamp-precision=nano", "-w", f, f"tcp port {PORT} or tcp port {PORT + 1}"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    time.sleep(1.0)
    stats_fd = xdp_stats_on() if "xdp" in PATHS else None
    for _ in range(a.lat_rounds):
        for mode in ("close", "ka"):
            for p in rnd.sample(PATHS, len(PATHS)):
                addr, port = urls[p]
                xs, e = probe(lab, exe, addr, port, a.rate, a.slice, mode)
                errors += e
                lat[(p, mode)] += xs
                per_round[(p, mode)].append(pct(xs, 99))
    for _, proc in caps.values():
        proc.terminate()
        proc.wait(timeout=10)
    busy, steal = (y - x for x, y in zip(steal0, cpu_ticks()))
    print(f"(steal time, the hypervisor's: {100 * steal / max(1, busy + steal):.1f} % of busy time)")
    print(f"{'path':<9} {'mode':<6} {'p50 us':>7} {'p90 us':>7} {'p99 us':>7} {'p99.9 us':>8}   "
          f"{'p99 added, pooled':>17}   {'per round: median [IQR]':>24}")
    for mode in ("close", "ka"):
        d99 = pct(lat[("direct", mode)], 99)
        for p in PATHS:
            xs = lat[(p, mode)]
            diffs = sorted(x - y for x, y in zip(per_round[(p, mode)], per_round[("direct", mode)]))
            q = statistics.quantiles(diffs, n=4) if len(diffs) >= 2 else [diffs[0]] * 3
            print(f"{p:<9} {mode:<6} {pct(xs, 50):>7.0f} {pct(xs, 90):>7.0f} {pct(xs, 99):>7.0f} "
                  f"{pct(xs, 99.9):>8.0f}   {pct(xs, 99) - d99:>+14.0f} us   "
                  f"{statistics.median(diffs):>+8.0f} us [{q[0]:+.0f}, {q[2]:+.0f}]")
    print(f"failed requests: {errors}; target: p99 added < 200 us (xdp: < 50 us) "
          f"(close = one connection per request: the director's new-connection path)")
    # what the director itself adds to every packet, free of the machine's
    # stalls (a stall rarely falls inside a few microseconds): the time
    # between a packet's arrival on the director's LAN interface and its
    # departure to the real server, from the capture's timestamps
    n1, n3 = lab.node("N1"), lab.node("N3")
    fwd = {"gate": [], "masq": [], "naive-dr": [], "bare-hop": []}
    for name, node, pick in (("N1", n1, lambda dst, port: "gate" if port == PORT else "masq"),
                             ("N3", n3, lambda dst, port: "naive-dr" if dst == urls["naive-dr"][0] else "bare-hop")):
        for (dst, port), dt in forwarding_delays(caps[name][0], node.mac):
            fwd[pick(dst, port)].append(dt)
    print(f"\n== forwarding time in the director (capture on its LAN interface: in -> out, every packet "
          f"of the latency slices) ==")
    print(f"{'path':<9} {'packets':>8} {'p50 us':>7} {'p99 us':>7} {'p99.9 us':>8} {'max us':>8}")
    if "xdp" in PATHS:
        print("(xdp: frames sent with XDP_TX never reach the capture taps; the program's own run time instead, "
              "from the kernel's BPF statistics:)")
        xdp_run_time(lab)
        if stats_fd is not None:
            os.close(stats_fd)
    for p, xs in fwd.items():
        if xs:
            print(f"{p:<9} {len(xs):>8} {pct(xs, 50):>7.1f} {pct(xs, 99):>7.1f} {pct(xs, 99.9):>8.1f} {max(xs):>8.1f}")


def xdp_stats_on() -> int | None:
    """Turn on the kernel's BPF run-time statistics while the fd is open
    (BPF_ENABLE_STATS: nothing to restore afterwards)."""
    try:
        from halb.xdp import libbpf
        L = libbpf.lib()
        L.bpf_enable_stats.restype, L.bpf_enable_stats.argtypes = libbpf.ctypes.c_int, [libbpf.ctypes.c_int]
        fd = L.bpf_enable_stats(0)  # BPF_STATS_RUN_TIME
        return fd if fd >= 0 else None
    except Exception:  # noqa: BLE001 - a bench: say nothing, measure without
        return None


def xdp_run_time(lab) -> None:
    r = lab.run("N4", [sys.executable, "-m", "halb", "xdp", "status", "--json"])
    try:
        pid = json.loads(r.stdout)["program_id"]
        info = json.loads(lab.run("N4", ["bpftool", "-j", "prog", "show", "id", str(pid)]).stdout)
    except (ValueError, KeyError):
        print("xdp: program statistics unavailable")
        return
    n, ns = info.get("run_cnt", 0), info.get("run_time_ns", 0)
    if n:
        print(f"{'xdp':<9} {n:>8} packets through halb_xdp, mean {ns / n / 1000:.2f} us in the program per packet")


def forwarding_delays(pcap: str, mac: str):
    """((client-side dst addr, dst port), microseconds) for each packet seen
    entering and then leaving the interface whose MAC is `mac` (pcap with
    nanosecond timestamps; a packet is known by IP id, TCP seq, ack, flags,
    which NAT leaves alone)."""
    import struct
    me = bytes.fromhex(mac.replace(":", ""))
    try:
        data = Path(pcap).read_bytes()
    except FileNotFoundError:
        return
    if len(data) < 24 or data[:4] not in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d"):
        return
    endian = "<" if data[:4] == b"\x4d\x3c\xb2\xa1" else ">"
    pending = {}
    off = 24
    while off + 16 <= len(data):
        sec, nsec, incl, _ = struct.unpack_from(endian + "IIII", data, off)
        pkt = data[off + 16:off + 16 + incl]
        off += 16 + incl
        if len(pkt) < 54 or pkt[12:14] != b"\x08\x00":
            continue
        ihl = (pkt[14] & 0x0F) * 4
        tcp = 14 + ihl
        if len(pkt) < tcp + 14:
            continue
        t = sec * 1_000_000_000 + nsec
        key = (pkt[18:20], pkt[tcp + 4:tcp + 12], pkt[tcp + 13])
        if pkt[0:6] == me:  # arriving
            dst = ".".join(str(b) for b in pkt[30:34])
            pending[key] = (t, (dst, struct.unpack_from(">H", pkt, tcp + 2)[0]))
        elif pkt[6:12] == me and key in pending:  # leaving
            t0, where = pending.pop(key)
            yield where, (t - t0) / 1000


if __name__ == "__main__":
    sys.exit(main())
