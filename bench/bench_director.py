#!/usr/bin/env python3
"""Director benchmarks (everything on loopback, bounded in time).

1. Detection: a back end dies (nginx SIGKILLed); time until it leaves the
   table, and client requests that failed meanwhile (a probe starts one
   request every 10 ms without waiting). halb director (proxy engine) at
   checkinterval 1 s and 0.2 s (failurecount 1, ldirectord's default, and 3
   like HAProxy's fall) against HAProxy's own health checks at its defaults
   (inter 2s fall 3) and at inter 200ms, in the same run; median of N trials,
   the back end killed at a random instant of the check period.
2. Capacity: 2,000 real servers (127.1.x.y, one nginx behind all of them)
   checked every second (HTTP negotiate) by one director pinned to one core:
   CPU % of that core and check lateness (actual - scheduled start), against
   HAProxy doing the same 2,000 HTTP checks every second (the baseline).

usage: python3 bench/bench_director.py [--trials 3] [--reals 2000] [--seconds 20] [--skip-detect|--skip-capacity]
                                      [--lab]   (detection also in the namespace lab, nft engine: root)
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE.parent / "tests" / "director"))

import director_servers as servers  # noqa: E402
import psutil  # noqa: E402

from halb.context import Context  # noqa: E402


def halb(ctx: Context, *args, check=True, prefix=(), timeout=120):
    p = subprocess.run([*prefix, sys.executable, "-m", "halb", "--node", ctx.node, "--run-dir", str(ctx.run_dir),
                        "--engine", "proxy", *args], capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise SystemExit(f"halb {' '.join(args)} failed: {p.stderr.strip()}")
    return p


def engine(ctx):
    from halb.proxy.client import connect
    return connect(ctx)


def wait_for(pred, timeout=30.0, step=0.01):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(step)
    raise TimeoutError


# --------------------------------------------------------------------------
# client probe


class Probe:
    """Starts a GET every `period` s without waiting; records (t, ok)."""

    def __init__(self, port: int, period: float = 0.01):
        self.port, self.period = port, period
        self.results: list[tuple[float, bool]] = []
        self._stop = False

    async def one(self, t0: float) -> None:
        try:
            r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", self.port), 1)
            w.write(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
            data = await asyncio.wait_for(r.read(), 1)
            w.close()
            self.results.append((t0, data.startswith(b"HTTP/1.1 200") or data.startswith(b"HTTP/1.0 200")))
        except (OSError, asyncio.TimeoutError):
            self.results.append((t0, False))

    async def run(self) -> None:
        tasks = set()
        nxt = time.monotonic()
        while not self._stop:
            t = asyncio.ensure_future(self.one(time.monotonic()))
            tasks.add(t)
            t.add_done_callback(tasks.discard)
            nxt += self.period
            await asyncio.sleep(max(0, nxt - time.monotonic()))
        if tasks:
            await asyncio.wait(tasks, timeout=3)

    def failures_between(self, a: float, b: float) -> int:
        return sum(1 for t, ok in self.results if a <= t <= b and not ok)


# --------------------------------------------------------------------------
# 1. detection


def kill_site(site) -> None:
    """The fault of a detection trial: the site's nginx dies at once."""
    os.killpg(site.proc.pid, signal.SIGKILL)
    site.proc.wait()
    site.proc = None


async def trial(kill, is_removed, restore, probe_port, jitter: float, probe=None) -> tuple[float, int]:
    probe = probe or Probe(probe_port)
    task = asyncio.ensure_future(probe.run())
    # a random instant within the check period: trials are not phase-locked
    # to the checks (restore() returns right after a check)
    await asyncio.sleep(0.5 + random.uniform(0, jitter))
    t0 = time.monotonic()
    kill()
    while not await asyncio.to_thread(is_removed):
        await asyncio.sleep(0.01)
    t1 = time.monotonic()
    await asyncio.sleep(0.5)
    probe._stop = True
    await task
    fails = probe.failures_between(t0 - 0.05, t1 + 0.5)
    if os.environ.get("BENCH_DEBUG"):
        print("  failures at (s after the kill):",
              [round(t - t0, 3) for t, ok in probe.results if not ok], "removed at", round(t1 - t0, 3))
    await asyncio.to_thread(restore)
    return t1 - t0, fails


def halb_detect(tmp: Path, interval: float, trials: int, failurecount: int = 1) -> list[tuple[float, int]]:
    ctx = Context(node="benchdir", run_dir=tmp / f"run{interval}-{failurecount}", engine="proxy")
    halb(ctx, "proxy", "start")
    vport = servers.free_port()
    out = []
    try:
        with servers.NginxSite(tmp / f"h1-{interval}-{failurecount}", "N1") as n1, \
                servers.NginxSite(tmp / f"h2-{interval}-{failurecount}", "N2") as n2:
            cfg = tmp / f"detect{interval}-{failurecount}.cf"
            cfg.write_text(f"checkinterval={interval}\nchecktimeout=1\nnegotiatetimeout=1\nfailurecount={failurecount}\n"
                           f"virtual=127.0.0.1:{vport}\n\tservice=http\n\treceive=\"N\"\n\tscheduler=rr\n"
                           f"\treal=127.0.0.1:{n1.port} masq\n\treal=127.0.0.1:{n2.port} masq\n")
            halb(ctx, "director", str(cfg), "start")
            eng = engine(ctx)

            def dests():
                s = [s for s in eng.services() if s.key.port == vport]
                return {d.port for d in s[0].dests} if s else set()

            wait_for(lambda: dests() == {n1.port, n2.port})

            def restore():
                n2.start()
                wait_for(lambda: dests() == {n1.port, n2.port})
                time.sleep(0.3)

            for _ in range(trials):
                out.append(asyncio.run(trial(lambda: kill_site(n2), lambda: n2.port not in dests(), restore,
                                             vport, interval)))
            eng.close()
            halb(ctx, "director", str(cfg), "stop")
    finally:
        halb(ctx, "proxy", "stop", check=False)
    return out


def haproxy_detect(tmp: Path, inter: str | None, trials: int) -> list[tuple[float, int]]:
    d = tmp / f"haproxy-{inter or 'default'}"
    d.mkdir()
    fport = servers.free_port()
    sock = d / "stats.sock"
    out = []
    with servers.NginxSite(d / "h1", "N1") as n1, servers.NginxSite(d / "h2", "N2") as n2:
        chk = f"check inter {inter}" if inter else "check"
        conf = d / "haproxy.cfg"
        conf.write_text(f"""global
    stats socket {sock} mode 600 level admin
    maxconn 4000
defaults
    mode http
    timeout connect 1s
    timeout client 5s
    timeout server 5s
frontend fe
    bind 127.0.0.1:{fport}
    default_backend be
backend be
    balance roundrobin
    server n1 127.0.0.1:{n1.port} {chk}
    server n2 127.0.0.1:{n2.port} {chk}
""")
        proc = servers.popen(["haproxy", "-f", str(conf), "-db"], d / "haproxy.out")
        try:
            servers.wait_tcp(fport, proc=proc, log=d / "haproxy.out")

            def status() -> dict:
                s = socket.socket(socket.AF_UNIX)
                try:
                    s.connect(str(sock))
                except OSError:  # the stats socket comes up after the frontend
                    s.close()
                    return {}
                s.sendall(b"show stat\n")
                data = servers.read_to_end(s, 65536)
                s.close()
                res = {}
                for line in data.decode().splitlines():
                    f = line.split(",")
                    if len(f) > 17 and f[0] == "be" and f[1] in ("n1", "n2"):
                        res[f[1]] = f[17]
                return res

            wait_for(lambda: status() == {"n1": "UP", "n2": "UP"}, timeout=30)

            def restore():
                n2.start()
                wait_for(lambda: status().get("n2") == "UP", timeout=60)
                time.sleep(0.3)

            for _ in range(trials):
                out.append(asyncio.run(trial(lambda: kill_site(n2),
                                             lambda: status().get("n2", "").startswith("DOWN"), restore,
                                             fport, 0.2 if inter else 2.0)))
        finally:
            servers.stop(proc)
    return out


# --------------------------------------------------------------------------
# 1b. detection in the namespace lab: the article's cluster, nft engine,
#     Direct Return, Apache on N2 SIGKILLed


class LabProbe(Probe):
    """The probe from inside client0 (sockets created in its namespace)."""

    def __init__(self, lab, period: float = 0.01):
        super().__init__(80, period)
        self.lab = lab

    async def one(self, t0: float) -> None:
        loop = asyncio.get_running_loop()
        s = self.lab.socket("client0")
        s.setblocking(False)
        try:
            async with asyncio.timeout(1):
                await loop.sock_connect(s, (self.lab.vip, 80))
                await loop.sock_sendall(s, b"GET /testcluster.html HTTP/1.0\r\nHost: x\r\n\r\n")
                data = b""
                while True:
                    b = await loop.sock_recv(s, 4096)
                    if not b:
                        break
                    data += b
            self.results.append((t0, data.startswith(b"HTTP/1.1 200")))
        except (OSError, asyncio.TimeoutError):
            self.results.append((t0, False))
        finally:
            s.close()


def lab_detect(interval: float, trials: int) -> list[tuple[float, int]]:
    from halb.cli.director import control
    from halb.lab import Lab

    out = []
    with Lab(nodes=2, clients=1, apache=True) as lab:
        n1, n2 = lab.node("N1"), lab.node("N2")
        lab.run("N1", ["ip", "addr", "add", f"{lab.vip}/{lab.prefixlen}", "dev", n1.iface], check=True)
        lab.run("N2", [sys.executable, "-m", "halb", "realserver", "start", "--vip", lab.vip], check=True)
        cfg = Path(lab.dir) / f"detect{interval}.cf"
        cfg.write_text(f"checkinterval={interval}\nchecktimeout=1\n"
                       f"virtual={lab.vip}:80\n\tchecktype=negotiate\n\tservice=http\n\tscheduler=rr\n"
                       f"\treal={n1.ip}:80 gate 1 \"testcluster.html\", \"N1\"\n"
                       f"\treal={n2.ip}:80 gate 1 \"testcluster.html\", \"N2\"\n")
        halb_n1 = [sys.executable, "-m", "halb", "--engine", "nft", "director", str(cfg)]
        lab.run("N1", halb_n1 + ["start"], check=True, timeout=60)
        ctx = Context(node="N1", run_dir=lab.node_run_dir("N1"), engine="nft")
        try:
            def n2_weight():
                st = control(ctx, cfg, "status")["status"]
                return {r["real"]: r["weight"] for r in st["virtuals"][0]["reals"]}.get(f"{n2.ip}:80")

            wait_for(lambda: n2_weight() == 1, timeout=60, step=0.05)

            def kill():
                apache = [p for p in lab.pids("N2") if "apache2" in " ".join(psutil.Process(p).cmdline())]
                for p in apache:
                    os.kill(p, signal.SIGKILL)

            def restore():
                wait_for(lambda: lab.apache_pid("N2") is None, timeout=10, step=0.05)
                lab.apache_start("N2")
                wait_for(lambda: n2_weight() == 1, timeout=60, step=0.05)
                time.sleep(0.3)

            for _ in range(trials):
                out.append(asyncio.run(trial(kill, lambda: n2_weight() is None, restore, 80, interval,
                                             probe=LabProbe(lab))))
        finally:
            lab.run("N1", halb_n1 + ["stop"], timeout=60)
            lab.run("N1", [sys.executable, "-m", "halb", "--engine", "nft", "nft", "flush"], timeout=60)
            lab.run("N2", [sys.executable, "-m", "halb", "realserver", "stop"], timeout=60)
    return out


# --------------------------------------------------------------------------
# 2. capacity


def reals_addrs(n: int) -> list[str]:
    return [f"127.1.{i // 250}.{i % 250 + 1}" for i in range(n)]


def cpu_of(pid: int) -> float:
    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


def capacity_halb(tmp: Path, n: int, seconds: float, wildcard_port: int) -> dict:
    ctx = Context(node="benchcap", run_dir=tmp / "runcap", engine="proxy")
    halb(ctx, "proxy", "start", prefix=("taskset", "-c", "0"))
    try:
        vport = servers.free_port()
        cfg = tmp / "capacity.cf"
        cfg.write_text(f"checkinterval=1\nchecktimeout=2\nnegotiatetimeout=2\n"
                       f"virtual=127.0.0.1:{vport}\n\tservice=http\n\treceive=\"ok\"\n\tscheduler=rr\n"
                       f"\tcheckport={wildcard_port}\n"
                       + "".join(f"\treal={a}:{wildcard_port} masq\n" for a in reals_addrs(n)))
        t0 = time.monotonic()
        halb(ctx, "director", str(cfg), "start", prefix=("taskset", "-c", "1"))
        eng = engine(ctx)

        def count():
            s = [s for s in eng.services() if s.key.port == vport]
            return len(s[0].dests) if s else 0

        wait_for(lambda: count() == n, timeout=120, step=0.2)
        t_all = time.monotonic() - t0
        pid = int((ctx.run_dir / "director.capacity.cf.pid").read_text())
        time.sleep(3)  # settle: the first follow-up round is spread over the interval

        def status():
            from halb.cli.director import control
            return control(ctx, cfg, "status")["status"]

        c0, s0, w0 = cpu_of(pid), status()["checks"], time.monotonic()
        time.sleep(seconds)
        c1, st, w1 = cpu_of(pid), status(), time.monotonic()
        eng.close()
        halb(ctx, "director", str(cfg), "stop")
        return {"reals": n, "all_up_after_s": round(t_all, 2),
                "cpu_pct_of_one_core": round(100 * (c1 - c0) / (w1 - w0), 1),
                "checks_per_s": round((st["checks"] - s0) / (w1 - w0), 1),
                "lateness_p50_ms": round(1000 * st["lateness_p50"], 2),
                "lateness_p99_ms": round(1000 * st["lateness_p99"], 2),
                "lateness_max_ms": round(1000 * st["lateness_max"], 2),
                "check_time_p50_ms": round(1000 * st["check_time_p50"], 2),
                "check_time_p99_ms": round(1000 * st["check_time_p99"], 2),
                "loadavg_1min": round(os.getloadavg()[0], 2),
                "reals_up": sum(1 for v in st["virtuals"] for r in v["reals"] if r["up"])}
    finally:
        halb(ctx, "proxy", "stop", check=False)


def capacity_haproxy(tmp: Path, n: int, seconds: float, wildcard_port: int) -> dict:
    d = tmp / "haproxy-cap"
    d.mkdir()
    fport = servers.free_port()
    sock = d / "stats.sock"
    conf = d / "haproxy.cfg"
    conf.write_text(f"""global
    stats socket {sock} mode 600 level admin
    maxconn 4000
    nbthread 1
defaults
    mode http
    timeout connect 2s
    timeout client 5s
    timeout server 5s
    timeout check 2s
frontend fe
    bind 127.0.0.1:{fport}
    default_backend be
backend be
    balance roundrobin
    option httpchk GET /
    http-check expect string ok
""" + "".join(f"    server r{i} {a}:{wildcard_port} check inter 1s\n" for i, a in enumerate(reals_addrs(n))))
    proc = servers.popen(["taskset", "-c", "1", "haproxy", "-f", str(conf), "-db"], d / "haproxy.out")
    try:
        servers.wait_tcp(fport, proc=proc, log=d / "haproxy.out")
        time.sleep(4)
        pid = proc.pid
        c0, w0 = cpu_of(pid), time.monotonic()
        time.sleep(seconds)
        c1, w1 = cpu_of(pid), time.monotonic()
        return {"reals": n, "cpu_pct_of_one_core": round(100 * (c1 - c0) / (w1 - w0), 1)}
    finally:
        servers.stop(proc)


def wildcard_nginx(tmp: Path):
    """One nginx (2 workers, not pinned: the real servers must not be the
    bottleneck) on 0.0.0.0:port (only loopback reaches it: 127/8 routes to
    lo) answering "ok" to every real server address."""
    d = tmp / "wild"
    d.mkdir()
    port = servers.free_port()
    conf = d / "nginx.conf"
    conf.write_text(f"""
worker_processes 2;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log;
worker_rlimit_nofile 8192;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    default_type text/plain;
    client_body_temp_path {d}/cb; proxy_temp_path {d}/pt; fastcgi_temp_path {d}/ft;
    uwsgi_temp_path {d}/ut; scgi_temp_path {d}/st;
    server {{ listen {port}; location / {{ return 200 "ok\\n"; }} }}
}}
""")
    proc = servers.popen(["nginx", "-c", str(conf), "-p", str(d)], d / "out")
    servers.wait_tcp(port, proc=proc, log=d / "error.log")
    return proc, port


# --------------------------------------------------------------------------


def summarize(name: str, res: list[tuple[float, int]]) -> dict:
    times = [r[0] for r in res]
    fails = [r[1] for r in res]
    return {"system": name, "trials": len(res), "removal_s_median": round(statistics.median(times), 3),
            "removal_s": [round(t, 3) for t in times], "failed_requests_median": statistics.median(fails),
            "failed_requests": fails}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--reals", type=int, default=2000)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--skip-detect", action="store_true")
    ap.add_argument("--skip-capacity", action="store_true")
    ap.add_argument("--lab", action="store_true",
                    help="also measure detection in the namespace lab (nft engine, Direct Return; needs root)")
    a = ap.parse_args()
    for b in ("nginx", "haproxy", "taskset"):
        if not shutil.which(b):
            raise SystemExit(f"{b} is needed")
    report: dict = {}
    with tempfile.TemporaryDirectory(prefix="halb-bench-director-") as td:
        tmp = Path(td)
        os.chmod(tmp, 0o755)
        if not a.skip_detect:
            det = [
                summarize("halb director checkinterval=1", halb_detect(tmp, 1, a.trials)),
                summarize("halb director checkinterval=0.2", halb_detect(tmp, 0.2, a.trials)),
                summarize("halb director checkinterval=0.2 failurecount=3",
                          halb_detect(tmp, 0.2, a.trials, failurecount=3)),
                summarize("haproxy check (defaults: inter 2s fall 3)", haproxy_detect(tmp, None, a.trials)),
                summarize("haproxy check inter 200ms (fall 3)", haproxy_detect(tmp, "200ms", a.trials)),
            ]
            report["detection"] = det
            print("\n== back end killed -> removed from the table (median of %d) ==" % a.trials)
            base = det[3]["removal_s_median"]
            for r in det:
                print(f"  {r['system']:<45} {r['removal_s_median']:7.3f} s  (x{r['removal_s_median'] / base:5.2f} "
                      f"of haproxy defaults)  failed requests: {r['failed_requests_median']}  trials={r['removal_s']}")
        if a.lab:
            labdet = [summarize("lab, nft engine, DR: halb checkinterval=1", lab_detect(1, a.trials)),
                      summarize("lab, nft engine, DR: halb checkinterval=0.2", lab_detect(0.2, a.trials))]
            report["lab_detection"] = labdet
            print("\n== namespace lab (article's cluster): Apache on N2 SIGKILLed -> N2 out of the table ==")
            for r in labdet:
                print(f"  {r['system']:<45} {r['removal_s_median']:7.3f} s  failed requests: "
                      f"{r['failed_requests_median']}  trials={r['removal_s']}")
        if not a.skip_capacity:
            proc, port = wildcard_nginx(tmp)
            try:
                h = capacity_halb(tmp, a.reals, a.seconds, port)
                hp = capacity_haproxy(tmp, a.reals, a.seconds, port)
            finally:
                servers.stop(proc)
            report["capacity"] = {"halb": h, "haproxy": hp}
            print(f"\n== capacity: {a.reals} real servers, HTTP check every 1 s, one core ==")
            print(f"  halb director: {h['cpu_pct_of_one_core']}% of a core, {h['checks_per_s']} checks/s, "
                  f"lateness p50 {h['lateness_p50_ms']} ms p99 {h['lateness_p99_ms']} ms max "
                  f"{h['lateness_max_ms']} ms; check time p50 {h['check_time_p50_ms']} ms p99 "
                  f"{h['check_time_p99_ms']} ms; all {h['reals']} up after {h['all_up_after_s']} s "
                  f"({h['reals_up']} up at the end)")
            print(f"  machine load average during the run: {h['loadavg_1min']} (2 cores shared with other work)")
            print(f"  haproxy (baseline): {hp['cpu_pct_of_one_core']}% of a core  -> halb/haproxy CPU ratio "
                  f"{h['cpu_pct_of_one_core'] / max(0.1, hp['cpu_pct_of_one_core']):.2f}")
            print(f"  targets: < 50 % of a core: {'met' if h['cpu_pct_of_one_core'] < 50 else 'NOT met'}; "
                  f"p99 lateness < 100 ms: {'met' if h['lateness_p99_ms'] < 100 else 'NOT met'}")
    print("\n" + json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
