#!/usr/bin/env python3
"""Failover gap seen by a client, halb heartbeat vs keepalived (VRRP), same lab, same run.

A client in the lab starts GET http://VIP/testcluster.html every 10 ms
without waiting for the previous one. After 1 s the active node N1 is
killed as a machine dies: its processes frozen, its cable cut, then all
killed. The gap is the longest time between the starts of two consecutive
prompt successes (answered in < 0.5 s) around the fault; "errors after"
counts requests started after the gap that failed or were slow.

Also measured: CPU (% of one core) and RSS of a halb daemon at 100
beats/s (keepalive 10 ms), and a bounded soak at the fastest timers with
both cores loaded, counting false failovers (deaths seen by either node).

    sudo python3 bench/bench_failover.py [--trials 3] [--soak 60] [--skip-slow]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE.parent / "tests" / "heartbeat"))

from hb_cluster import Cluster, wait_for  # noqa: E402
from halb.lab import Lab, article  # noqa: E402

PROMPT = 0.5   # a request answered slower than this counts as an error


def vip_on(lab, node, vip):
    return article.vip_on(lab, node, vip=vip)


def reset_lab(lab):
    """Both nodes back to a clean state: cable in, no VIP, Apache up."""
    for n in ("N1", "N2"):
        lab.thaw(n)
        lab.restore_link(n)
        lab.run(n, ["ip", "addr", "del", f"{lab.vip}/{lab.prefixlen}", "dev", lab.node(n).iface])
        if not lab.apache_running(n):
            lab.apache_start(n)
    lab.run("client0", ["ip", "neigh", "flush", "all"])


def analyse(results, fault_t):
    res = [r for r in results if r[0] >= fault_t - 1.0]
    prompt = [r for r in res if r[2] and r[1] < PROMPT]
    gap, gap_end, gap_start = 0.0, None, None
    for a, b in zip(prompt, prompt[1:]):
        if b[0] - a[0] > gap and b[0] >= fault_t - 0.05:
            gap, gap_start, gap_end = b[0] - a[0], a[0], b[0]
    if gap_end is None:
        return {"gap": None, "errors_after": None, "requests": len(res)}
    after = [r for r in res if r[0] > gap_end]
    errors_after = sum(1 for r in after if not (r[2] and r[1] < PROMPT))
    served_by = sorted({r[3] for r in after if r[2]})
    return {"gap": round(gap, 4), "errors_after": errors_after, "requests": len(res),
            "after": len(after), "served_after": served_by,
            "detect_from_fault": round(gap_end - fault_t, 4)}


def run_probe(lab, duration):
    return lab.popen("client0", [sys.executable, str(HERE / "probe_vip.py"), lab.vip, str(duration), "0.01", "3"],
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def trial(lab, start_fn, stop_fn, post):
    reset_lab(lab)
    start_fn()
    wait_for(lambda: vip_on(lab, "N1", lab.vip) and not vip_on(lab, "N2", lab.vip), 90, 0.05, "N1 to hold the VIP")
    wait_for(lambda: lab.http_get("client0", "http://VIP/testcluster.html")[1] == "N1\n", 20, 0.1, "VIP answers")
    time.sleep(0.3)
    probe = run_probe(lab, 1.0 + post)
    time.sleep(1.0)
    fault_t = time.monotonic()
    lab.freeze("N1")
    lab.cut_link("N1")
    lab.kill_node("N1")
    out, err = probe.communicate(timeout=post + 30)
    stop_fn()
    try:
        results = json.loads(out)["results"]
    except ValueError:
        raise SystemExit(f"probe failed: {err.strip()[-400:]}")
    return analyse(results, fault_t)


# ------------------------------------------------------------------ systems

class HalbSystem:
    def __init__(self, lab, base, name, **timers):
        self.lab, self.name = lab, name
        self.base = Path(base) / name
        self.timers = timers
        self.c = None

    def start(self):
        if self.base.exists():
            shutil.rmtree(self.base)
        self.c = Cluster(self.lab, self.base, **self.timers)
        self.c.start("N1")
        self.c.start("N2")

    def stop(self):
        self.c.procs.pop("N1", None)
        self.c.close()


KEEPALIVED_CONF = """global_defs {{
  router_id {node}
  vrrp_version {version}
  script_user root
  enable_script_security
}}
vrrp_instance VI_1 {{
  state BACKUP
  interface {iface}
  virtual_router_id 51
  priority {prio}
  advert_int {advert}
  virtual_ipaddress {{
    {vip}/{plen} dev {iface}
  }}
}}
"""


class KeepalivedSystem:
    def __init__(self, lab, base, name, advert):
        self.lab, self.name, self.advert = lab, name, advert
        self.base = Path(base) / name
        self.procs = []

    def start(self):
        self.base.mkdir(parents=True, exist_ok=True)
        for node, prio in (("N1", 150), ("N2", 100)):
            d = self.base / node
            d.mkdir(exist_ok=True)
            conf = d / "keepalived.conf"
            version = 2 if float(self.advert) >= 1 and float(self.advert).is_integer() else 3
            conf.write_text(KEEPALIVED_CONF.format(node=node, version=version, iface=self.lab.node(node).iface,
                                                   prio=prio, advert=self.advert, vip=self.lab.vip,
                                                   plen=self.lab.prefixlen))
            argv = ["keepalived", "-n", "-l", "-P", "-f", str(conf), "-p", str(d / "k.pid"),
                    "-r", str(d / "vrrp.pid"), "-c", str(d / "check.pid")]
            log = open(d / "keepalived.log", "w")
            self.procs.append(self.lab.popen(node, argv, stdout=log, stderr=subprocess.STDOUT))
            if node == "N1":
                wait_for(lambda: vip_on(self.lab, "N1", self.lab.vip), 30, 0.05, "keepalived N1 master")

    def stop(self):
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
        self.procs = []


class DebianHeartbeatSystem:
    """Debian's heartbeat 3 (apt-get install heartbeat) with the article's ha.cf: per node a
    private mount namespace with its own /etc/ha.d, /var/lib/heartbeat and /run."""

    BIN = "/usr/libexec/heartbeat/heartbeat"

    def __init__(self, lab, base, name, keepalive="2", deadtime="10", warntime="6", initdead="60"):
        self.lab, self.name = lab, name
        self.base = Path(base) / name
        self.timers = dict(keepalive=keepalive, deadtime=deadtime, warntime=warntime, initdead=initdead)

    @classmethod
    def available(cls):
        return os.path.exists(cls.BIN) and os.path.isdir("/etc/ha.d/resource.d")

    def start(self):
        for node in ("N1", "N2"):
            d = self.base / node
            if d.exists():
                shutil.rmtree(d)
            shutil.copytree("/etc/ha.d", d / "ha.d", symlinks=True)
            shutil.copytree("/var/lib/heartbeat", d / "lib", symlinks=True)
            for f in ("hb_uuid", "hostcache", "delhostcache"):
                try:
                    (d / "lib" / f).unlink()
                except FileNotFoundError:
                    pass
            iface = self.lab.node(node).iface
            (d / "ha.d" / "ha.cf").write_text(article.ha_cf(iface, d / "ha.log", debugfile="/dev/null",
                                                            logfacility=None, tail="use_logd no\ncrm no\n",
                                                            **self.timers))
            (d / "ha.d" / "authkeys").write_text('auth 1\n1 md5 "secret"\n')
            (d / "ha.d" / "authkeys").chmod(0o600)
            (d / "ha.d" / "haresources").write_text(f"N1 IPaddr2::{self.lab.vip}/{self.lab.prefixlen}/{iface}\n")
            script = (f"set -e; mount --bind {d}/ha.d /etc/ha.d; mount --bind {d}/lib /var/lib/heartbeat; "
                      "mount -t tmpfs tmpfs /run; mkdir -p /run/heartbeat/ccm /run/heartbeat/dopd "
                      "/run/heartbeat/rsctmp /run/resource-agents /run/lock; "
                      f"exec {self.BIN} >{d}/stdout.log 2>&1")
            self.lab.popen(node, ["unshare", "--mount", "--propagation", "private", "sh", "-c", script])

    def stop(self):
        self.lab.kill_node("N2")     # heartbeat daemonizes: end every process of the node


# ------------------------------------------------------------------ cpu / soak

def cpu_rss(lab, base, seconds):
    import psutil

    s = HalbSystem(lab, base, "cpu", keepalive="10ms", deadtime="50ms", warntime="30ms", initdead="1s")
    reset_lab(lab)
    s.start()
    wait_for(lambda: vip_on(lab, "N1", lab.vip), 20, 0.05, "N1 holds")
    time.sleep(1.0)
    procs = [psutil.Process(s.c.status(n)["pid"]) for n in ("N1", "N2")]
    t0 = [p.cpu_times() for p in procs]
    w0 = time.monotonic()
    time.sleep(seconds)
    w1 = time.monotonic()
    out = {}
    for n, p, c0 in zip(("N1", "N2"), procs, t0):
        c1 = p.cpu_times()
        out[n] = {"cpu_pct": round(100 * ((c1.user + c1.system) - (c0.user + c0.system)) / (w1 - w0), 2),
                  "rss_mb": round(p.memory_info().rss / 2**20, 1)}
    st = s.c.status("N2")
    out["beats_rx_per_s_N2"] = round(st["counters"]["rx"] / st["uptime"], 1)
    s.c.close()
    # baseline, same lab, same rate: a bare uvloop process sending/reading one datagram per 10 ms
    bare = [lab.popen(n, [sys.executable, str(HERE / "beat_baseline.py"), lab.node(n).iface, "0.01"])
            for n in ("N1", "N2")]
    time.sleep(2.0)
    kids = []
    for b in bare:
        pp = psutil.Process(b.pid)
        kids.append((pp.children() or [pp])[0])
    t0 = [k.cpu_times() for k in kids]
    w0 = time.monotonic()
    time.sleep(seconds)
    w1 = time.monotonic()
    base = []
    for k, c0 in zip(kids, t0):
        c1 = k.cpu_times()
        base.append(100 * ((c1.user + c1.system) - (c0.user + c0.system)) / (w1 - w0))
    for b in bare:
        b.kill()
        b.wait()
    out["baseline_bare_uvloop_cpu_pct"] = round(sum(base) / len(base), 2)
    halb_avg = (out["N1"]["cpu_pct"] + out["N2"]["cpu_pct"]) / 2
    if out["baseline_bare_uvloop_cpu_pct"] > 0:
        out["ratio_halb_vs_bare"] = round(halb_avg / out["baseline_bare_uvloop_cpu_pct"], 2)
    return out


def soak(lab, base, seconds, timers):
    reset_lab(lab)
    s = HalbSystem(lab, base, "soak", **timers)
    s.start()
    wait_for(lambda: vip_on(lab, "N1", lab.vip), 20, 0.05, "N1 holds")
    load = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 2)]
    try:
        t_end = time.monotonic() + seconds
        holder_changes = 0
        while time.monotonic() < t_end:
            time.sleep(0.5)
            if not vip_on(lab, "N1", lab.vip) or vip_on(lab, "N2", lab.vip):
                holder_changes += 1
    finally:
        for p in load:
            p.kill()
            p.wait()
    st1, st2 = s.c.status("N1"), s.c.status("N2")
    res = {"seconds": seconds, "deaths_seen_by_N1": st1["nodes"]["N2"]["deaths"],
           "deaths_seen_by_N2": st2["nodes"]["N1"]["deaths"], "late_beats": st1["nodes"]["N2"]["late"] + st2["nodes"]["N1"]["late"],
           "own_stalls": st1["stalls"] + st2["stalls"], "samples_with_wrong_holder": holder_changes}
    s.c.close()
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--soak", type=float, default=60)
    ap.add_argument("--cpu-seconds", type=float, default=20)
    ap.add_argument("--skip-slow", action="store_true", help="skip the 1 s / article-timer systems")
    ap.add_argument("--debian-heartbeat", action="store_true",
                    help="also Debian's heartbeat package with the article's timers (apt-get install heartbeat)")
    ap.add_argument("--only", help="comma-separated system names to run (e.g. debian-heartbeat-article)")
    ap.add_argument("--fast", default="5ms,25ms,15ms", help="halb's fastest timers: keepalive,deadtime,warntime")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench_failover needs root (network namespaces)")
    ka, dt, wt = args.fast.split(",")
    base = Path(tempfile.mkdtemp(prefix="hbbench"))
    report = {"probe": "GET every 10 ms, no waiting; gap = longest time between starts of two prompt (<0.5 s) successes"}
    with Lab(nodes=2, clients=1, apache=True) as lab:
        systems = [
            (HalbSystem(lab, base, "halb-fast", keepalive=ka, deadtime=dt, warntime=wt, initdead="2s"), args.trials, 3),
            (KeepalivedSystem(lab, base, "keepalived-0.01", "0.01"), args.trials, 3),
        ]
        if not args.skip_slow and args.debian_heartbeat and DebianHeartbeatSystem.available():
            systems.append((DebianHeartbeatSystem(lab, base, "debian-heartbeat-article"), 1, 15))
        if not args.skip_slow:
            systems += [
                (HalbSystem(lab, base, "halb-article", keepalive="2", deadtime="10", warntime="6", initdead="60"), 1, 15),
                (KeepalivedSystem(lab, base, "keepalived-1", "1"), 1, 8),
            ]
        if args.only:
            keep = set(args.only.split(","))
            systems = [x for x in systems if x[0].name in keep]
        for sysm, trials, post in systems:
            runs = []
            for i in range(trials):
                r = trial(lab, sysm.start, sysm.stop, post)
                runs.append(r)
                print(f"{sysm.name} trial {i + 1}: {r}", flush=True)
            gaps = [r["gap"] for r in runs if r["gap"] is not None]
            report[sysm.name] = {"median_gap_s": statistics.median(gaps) if gaps else None,
                                 "gaps": gaps, "errors_after": [r["errors_after"] for r in runs]}
        base_gap = report.get("keepalived-0.01", {}).get("median_gap_s")
        fast_gap = report.get("halb-fast", {}).get("median_gap_s")
        if base_gap and fast_gap:
            report["ratio_halb_fast_vs_keepalived_0.01"] = round(fast_gap / base_gap, 2)
        if args.cpu_seconds > 0:
            report["cpu_rss_100_beats_per_s"] = cpu_rss(lab, base, args.cpu_seconds)
            print("cpu/rss:", report["cpu_rss_100_beats_per_s"], flush=True)
        if args.soak > 0:
            report["soak_fast_timers_cores_loaded"] = soak(lab, base, args.soak,
                                                           dict(keepalive=ka, deadtime=dt, warntime=wt, initdead="2s"))
            print("soak:", report["soak_fast_timers_cores_loaded"], flush=True)
    shutil.rmtree(base, ignore_errors=True)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
