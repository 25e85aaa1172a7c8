#!/usr/bin/env python3
"""Benchmark of the user-space engine (halb proxy) against a direct path and HAProxy.

One run, everything on loopback, bounded (~2 min):
  (a) wrk -> nginx                        (the back end alone)
  (b) wrk -> halb proxy -> nginx          (splice data path; and with --no-splice)
  (c) wrk -> HAProxy mode tcp, nbthread 1 -> nginx
for keep-alive requests, one connection per request (Connection: close) and a
bulk transfer (curl downloading a 100 MiB file several times), then the
latency at half load: bench/ratelat.c (built with cc) sends requests on a
fixed clock at half of halb's keep-alive maximum measured in the same run,
over --lat-conns keep-alive connections, and times each answer from the
moment its request was due (open loop: a stalled path is charged for every
request it delays). Many short slices, interleaved between the paths; the
medians and the spread are printed. Latency-only extra paths: halb with the
kernel's default scheduler slice (HALB_PROXY_SLICE_US=0) and HAProxy given
the same short slice as halb, to show what the slice does to each.
The previous method (wrk connections pacing requests with a Lua delay(),
a closed loop whose connections fire in step) is printed too, for comparison.
Prints req/s, p99 latency, MB/s and the ratios b/a and b/c.

    python3 bench/bench_proxy.py [--duration 3] [--rounds 2] [--conns 50] [--bulk-mib 100] [--bulk-n 3]
                                 [--lat-slices 9] [--lat-secs 1.5] [--lat-conns 100]
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_port(port: int, timeout=10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


def halb(*args, run_dir, env=None):
    return subprocess.run([sys.executable, "-m", "halb", "--node", "bench", "--run-dir", str(run_dir),
                           "--engine", "proxy", *args], capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, PYTHONPATH=str(ROOT / "src"), **(env or {})))


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def wrk(url: str, conns: int, threads: int, duration: float, close: bool = False, script: str = "") -> dict:
    cmd = ["wrk", f"-t{threads}", f"-c{conns}", f"-d{duration:g}s", "--latency", url]
    if close:
        cmd[1:1] = ["-H", "Connection: close"]
    if script:
        cmd[1:1] = ["-s", script]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 30).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    lat = {}
    for pct in ("50", "99"):
        m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        lat[pct] = float(m.group(1)) * _UNITS[m.group(2)] if m else float("nan")
    errs = re.search(r"Socket errors: (.*)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": rps, "p50": lat["50"], "p99": lat["99"], "errors": (errs.group(1) if errs else "") +
            (f" non-2xx {non2xx.group(1)}" if non2xx else "")}


def build_ratelat(tmp: Path) -> str:
    exe = tmp / "ratelat"
    r = subprocess.run(["cc", "-O2", "-o", str(exe), str(ROOT / "bench" / "ratelat.c")], capture_output=True,
                       text=True)
    if r.returncode:
        raise RuntimeError(f"cannot build bench/ratelat.c: {r.stderr.strip()}")
    return str(exe)


def ratelat(exe: str, port: int, rate: float, conns: int, secs: float, warmup: float = 0.3) -> dict:
    """Fixed-rate latency slice: {"rate", "p50", "p99", "errors", ...} (ms)."""
    out = subprocess.run([exe, "127.0.0.1", str(port), "/index.html", f"{rate:.0f}", str(conns), f"{secs:g}",
                          f"{warmup:g}"], capture_output=True, text=True, timeout=secs + 30).stdout.split()
    return {k: float(v) for k, v in zip(out[0::2], out[1::2])}


def bulk(url: str, n: int) -> float:
    """MB/s (10^6 bytes) downloading url n times in a row with curl."""
    cmd = ["curl", "-s", "-o", "/dev/null", "-w", "%{size_download} %{time_total}\n"]
    for _ in range(n):
        cmd += [url, "-o", "/dev/null"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300).stdout.split()
    size = sum(float(x) for x in out[0::2])
    secs = sum(float(x) for x in out[1::2])
    return size / secs / 1e6


class Stack:
    def __init__(self, tmp: Path, bulk_mib: int):
        self.tmp = tmp
        self.procs: list[subprocess.Popen] = []
        self.bulk_mib = bulk_mib
        self.run_dirs: list[Path] = []

    def nginx(self) -> int:
        port = free_port()
        www = self.tmp / "www"
        www.mkdir()
        (www / "index.html").write_bytes(b"<html>" + b"x" * 600 + b"</html>\n")
        with open(www / "big.bin", "wb") as f:
            f.truncate(self.bulk_mib << 20)
        conf = self.tmp / "nginx.conf"
        user = "user root;\n" if os.geteuid() == 0 else ""
        conf.write_text(f"""{user}worker_processes 1;
pid {self.tmp}/nginx.pid;
error_log {self.tmp}/nginx.err;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 1000000;
  client_body_temp_path {self.tmp}/nb; proxy_temp_path {self.tmp}/np; fastcgi_temp_path {self.tmp}/nf;
  uwsgi_temp_path {self.tmp}/nu; scgi_temp_path {self.tmp}/ns;
  server {{ listen 127.0.0.1:{port} backlog=4096; root {www}; }}
}}
""")
        self.procs.append(subprocess.Popen(["nginx", "-c", str(conf), "-p", str(self.tmp), "-g", "daemon off;"],
                                           stderr=subprocess.DEVNULL))
        wait_port(port)
        return port

    def haproxy(self, backend: int, slice_us: int = 0) -> int:
        """HAProxy mode tcp, nbthread 1; slice_us: give it that scheduler slice (as halb asks for)."""
        port = free_port()
        cfg = self.tmp / f"haproxy-{port}.cfg"
        cfg.write_text(f"""global
  nbthread 1
  maxconn 4000
defaults
  mode tcp
  timeout connect 5s
  timeout client 60s
  timeout server 60s
listen bench
  bind 127.0.0.1:{port}
  server s1 127.0.0.1:{backend}
""")
        p = subprocess.Popen(["haproxy", "-f", str(cfg), "-db"], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        self.procs.append(p)
        wait_port(port)
        if slice_us:
            from halb.proxy.tuning import set_slice

            if not set_slice(slice_us, p.pid):
                raise RuntimeError("cannot set HAProxy's scheduler slice")
        return port

    def halb_proxy(self, backend: int, splice: bool, slice_us: int | None = None) -> int:
        """slice_us: HALB_PROXY_SLICE_US for the daemon (None: its default)."""
        from halb.context import Context
        from halb.model import Dest, Service, ServiceKey
        from halb.proxy.client import connect

        run_dir = self.tmp / f"run-{'splice' if splice else 'copy'}-{slice_us}"
        env = None if slice_us is None else {"HALB_PROXY_SLICE_US": str(slice_us)}
        r = halb("proxy", "start", *([] if splice else ["--no-splice"]), run_dir=run_dir, env=env)
        if r.returncode:
            raise RuntimeError(r.stderr)
        self.run_dirs.append(run_dir)
        port = free_port()
        with connect(Context(node="bench", run_dir=run_dir, engine="proxy")) as eng:
            k = ServiceKey("tcp", "127.0.0.1", port)
            eng.add_service(Service(k, scheduler="rr"))
            eng.add_dest(k, Dest("127.0.0.1", backend))
        wait_port(port)
        return port

    def stop(self):
        for d in self.run_dirs:
            halb("proxy", "stop", run_dir=d)
        for p in self.procs:
            p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def _spread(xs: list) -> str:
    """min / quartiles / max of a path's per-slice figures."""
    q = statistics.quantiles(xs, n=4, method="inclusive") if len(xs) > 1 else [xs[0]] * 3
    return f"{min(xs):.2f} [{q[0]:.2f} {q[2]:.2f}] {max(xs):.2f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=3.0, help="seconds per wrk run (default 3)")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds, best kept (default 2)")
    ap.add_argument("--lat-slices", type=int, default=9, help="fixed-rate latency slices per path (default 9)")
    ap.add_argument("--lat-secs", type=float, default=1.5, help="seconds per latency slice (default 1.5)")
    ap.add_argument("--lat-conns", type=int, default=100, help="connections of the latency probe (default 100)")
    ap.add_argument("--conns", type=int, default=50, help="wrk connections (default 50)")
    ap.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    ap.add_argument("--bulk-mib", type=int, default=100, help="size of the bulk file in MiB (default 100)")
    ap.add_argument("--bulk-n", type=int, default=3, help="downloads per path (default 3)")
    ap.add_argument("--host-slice-us", type=int, default=0,
                    help="give every process of the bench (probe, nginx, HAProxy, halb: they inherit it) this "
                         "scheduler slice, as on a host tuned for latency (default 0: the kernel's)")
    a = ap.parse_args()
    for tool in ("wrk", "nginx", "haproxy", "curl", "cc"):
        if not shutil.which(tool):
            print(f"bench_proxy: {tool} is not installed", file=sys.stderr)
            return 2

    from halb.proxy.tuning import DEFAULT_SLICE_US

    if a.host_slice_us:
        from halb.proxy.tuning import set_slice

        if not set_slice(a.host_slice_us):
            print("bench_proxy: this kernel cannot set a scheduler slice (--host-slice-us)", file=sys.stderr)
            return 2
    tmp = Path(tempfile.mkdtemp(prefix="halb-bench-"))
    os.chmod(tmp, 0o755)
    st = Stack(tmp, a.bulk_mib)
    t0 = time.monotonic()
    try:
        probe = build_ratelat(tmp)
        ng = st.nginx()
        paths = {"a direct": ng, "b halb": st.halb_proxy(ng, True), "c haproxy": st.haproxy(ng),
                 "b' halb no-splice": st.halb_proxy(ng, False)}
        # latency only: what the scheduler slice does, to halb and to HAProxy
        lat_extra = {"b0 halb default slice": st.halb_proxy(ng, True, slice_us=0),
                     "c1 haproxy short slice": st.haproxy(ng, slice_us=DEFAULT_SLICE_US)}
        res: dict[str, dict] = {p: {} for p in [*paths, *lat_extra]}

        def keep(name, what, val, better):
            old = res[name].get(what)
            res[name][what] = val if old is None else better(old, val)

        best_rps = lambda o, n: n if n["rps"] > o["rps"] else o  # noqa: E731
        # the paths are measured interleaved, `rounds` times, keeping each one's best
        # figure: other work on the machine then hurts no path more than another
        for rnd in range(a.rounds):
            for name, port in paths.items():
                url = f"http://127.0.0.1:{port}/index.html"
                ka = wrk(url, a.conns, a.threads, a.duration)
                cl = wrk(url, a.conns, a.threads, a.duration, close=True)
                mb = bulk(f"http://127.0.0.1:{port}/big.bin", a.bulk_n)
                keep(name, "ka", ka, best_rps)
                keep(name, "cl", cl, best_rps)
                keep(name, "mb", mb, max)
                print(f"  round {rnd + 1} {name:<18} keep-alive {ka['rps']:9.0f} req/s  conn/req {cl['rps']:8.0f} "
                      f"req/s  bulk {mb:7.0f} MB/s"
                      + (f"  errors: {ka['errors']} {cl['errors']}" if (ka['errors'] or cl['errors']) else ""),
                      flush=True)
        # latency at half of halb's keep-alive maximum, fixed rate (open loop):
        # many short slices, interleaved, median of each path's slices: a burst of
        # other work on the machine then moves no path's figure much
        half = res["b halb"]["ka"]["rps"] / 2
        lpaths = {**paths, **lat_extra}
        slices: dict[str, list] = {n: [] for n in lpaths}
        for rnd in range(a.lat_slices):
            for name, port in lpaths.items():
                slices[name].append(ratelat(probe, port, half, a.lat_conns, a.lat_secs))
        for name, runs in slices.items():
            med = {k: statistics.median(r[k] for r in runs) for k in ("rate", "p50", "p99", "p999")}
            med["spread"] = _spread([r["p99"] for r in runs])
            med["errors"] = sum(r["errors"] for r in runs)
            res[name]["fixed"] = med
            print(f"  {name:<22} {half:.0f} req/s fixed rate ({a.lat_slices} x {a.lat_secs:g} s, medians): "
                  f"p50 {med['p50']:.3f} ms, p99 {med['p99']:.3f} ms (slices: min [quartiles] max "
                  f"{med['spread']}), p99.9 {med['p999']:.3f} ms"
                  + (f", errors {med['errors']:.0f}" if med["errors"] else ""), flush=True)
        # the previous method, for comparison: wrk connections pacing their requests
        # with a Lua delay() (a closed loop: they start together and stay in step,
        # so every 20 ms a burst of all of them arrives at once)
        delay_ms = 20
        script = tmp / "delay.lua"
        script.write_text(f"function delay()\n  return {delay_ms}\nend\n")
        lconns = max(2, min(1000, round(half * delay_ms / 1000)))
        slices = {n: [] for n in paths}
        for rnd in range(7):
            for name, port in paths.items():
                slices[name].append(wrk(f"http://127.0.0.1:{port}/index.html", lconns, a.threads, 1.0,
                                        script=str(script)))
        for name, runs in slices.items():
            res[name]["lo"] = {k: statistics.median(r[k] for r in runs) for k in ("rps", "p50", "p99")}
        # the bare round trip: one connection, one request at a time
        slices = {n: [] for n in paths}
        for rnd in range(7):
            for name, port in paths.items():
                slices[name].append(wrk(f"http://127.0.0.1:{port}/index.html", 1, 1, 1.0))
        for name, runs in slices.items():
            res[name]["rt"] = {k: statistics.median(r[k] for r in runs) for k in ("rps", "p50", "p99")}
    finally:
        st.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    A, B, C, B2 = (res[k] for k in paths)
    rows = [
        ("keep-alive req/s", lambda r: r["ka"]["rps"], "{:.0f}"),
        ("keep-alive p99 ms", lambda r: r["ka"]["p99"], "{:.2f}"),
        ("conn-per-request req/s", lambda r: r["cl"]["rps"], "{:.0f}"),
        ("conn-per-request p99 ms", lambda r: r["cl"]["p99"], "{:.2f}"),
        ("bulk MB/s", lambda r: r["mb"], "{:.0f}"),
        ("half load, fixed rate p50", lambda r: r["fixed"]["p50"], "{:.3f}"),
        ("half load, fixed rate p99", lambda r: r["fixed"]["p99"], "{:.3f}"),
        ("half load, fixed p99.9", lambda r: r["fixed"]["p999"], "{:.3f}"),
        ("wrk paced req/s", lambda r: r["lo"]["rps"], "{:.0f}"),
        ("wrk paced p50 ms", lambda r: r["lo"]["p50"], "{:.3f}"),
        ("wrk paced p99 ms", lambda r: r["lo"]["p99"], "{:.3f}"),
        ("1 connection p50 ms", lambda r: r["rt"]["p50"], "{:.3f}"),
        ("1 connection p99 ms", lambda r: r["rt"]["p99"], "{:.3f}"),
    ]
    print()
    print(f"best of {a.rounds} interleaved rounds; wrk -t{a.threads} -c{a.conns} -d{a.duration:g}s; bulk = curl {a.bulk_n} x {a.bulk_mib} MiB; "
          f"nginx 1 worker; HAProxy mode tcp nbthread 1; {os.cpu_count()} CPUs; half load = {half:.0f} req/s "
          f"fixed rate over {a.lat_conns} connections, {a.lat_slices} slices of {a.lat_secs:g} s (ms)")
    hdr = f"{'':<26}{'(a) direct':>12}{'(b) halb':>12}{'(c) haproxy':>13}{'halb copy':>11}{'b/a':>7}{'b/c':>7}"
    print(hdr)
    print("-" * len(hdr))
    for label, get, fmt in rows:
        va, vb, vc, vb2 = get(A), get(B), get(C), get(B2)
        print(f"{label:<26}{fmt.format(va):>12}{fmt.format(vb):>12}{fmt.format(vc):>13}{fmt.format(vb2):>11}"
              f"{vb / va if va else float('nan'):>7.2f}{vb / vc if vc else float('nan'):>7.2f}")
    print()
    fa = A["fixed"]
    print(f"latency added at half load ({half:.0f} req/s fixed rate), median of {a.lat_slices} slices:")
    for name in ("b halb", "b' halb no-splice", "b0 halb default slice", "c haproxy", "c1 haproxy short slice"):
        f = res[name]["fixed"]
        print(f"  {name:<24} p50 {f['p50'] - fa['p50']:+.3f} ms  p99 {f['p99'] - fa['p99']:+.3f} ms  "
              f"(p99 slices {f['spread']}; direct {fa['spread']})")
    added = B["fixed"]["p99"] - fa["p99"]
    print(f"wrk paced (previous method, {lconns} connections x 1 request / {delay_ms} ms): halb adds p50 "
          f"{B['lo']['p50'] - A['lo']['p50']:+.3f} ms, p99 {B['lo']['p99'] - A['lo']['p99']:+.3f} ms; HAProxy p50 "
          f"{C['lo']['p50'] - A['lo']['p50']:+.3f} ms, p99 {C['lo']['p99'] - A['lo']['p99']:+.3f} ms")
    print(f"round trip added with 1 connection: halb p50 {B['rt']['p50'] - A['rt']['p50']:.3f} ms, "
          f"p99 {B['rt']['p99'] - A['rt']['p99']:.3f} ms; HAProxy p50 {C['rt']['p50'] - A['rt']['p50']:.3f} ms, "
          f"p99 {C['rt']['p99'] - A['rt']['p99']:.3f} ms")
    targets = [("keep-alive >= 0.5 x HAProxy", B["ka"]["rps"] >= 0.5 * C["ka"]["rps"]),
               ("conn-per-request >= 0.3 x HAProxy", B["cl"]["rps"] >= 0.3 * C["cl"]["rps"]),
               ("bulk >= 0.5 x HAProxy", B["mb"] >= 0.5 * C["mb"]),
               ("p99 added < 1 ms at half load (fixed rate)", added < 1.0)]
    for what, ok in targets:
        print(f"  target {what:<44} {'met' if ok else 'NOT met'}")
    print(f"(bench took {time.monotonic() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
