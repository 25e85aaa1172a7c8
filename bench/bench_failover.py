#!/usr/bin/env python3
"""Failover gap seen by a client, halb heartbeat vs keepalived (VRRP) and Debian's heartbeat 3,
same lab, same run.

A client in the lab starts GET http://VIP/testcluster.html every 10 ms
without waiting for the previous one. After 1 s the active node N1 is
killed as a machine dies: its processes frozen, its cable cut, then all
killed. The failover gap is the time between the starts of the last prompt
success (answered in < 0.5 s) before the first one N2 answers and that
first one; "errors after" counts requests started after it that failed or
were slow; "worst gap after" is the longest pause between prompt successes
after the failover (probe and machine jitter, not the failover). For halb,
the takeover path is read from N2's log: fault -> "is dead" -> VIP up
(netlink) -> gratuitous ARP -> the client's first answer from N2; for every system, the
first gratuitous ARP from N2 as the client's tcpdump stamps it ("garp_wire_ms"), and whether N2
holds the VIP at the end (`ip addr` inside N2).

With --debian-heartbeat (needs `apt-get install -y heartbeat`; see debian_heartbeat.py),
Debian's heartbeat 3 runs the article's ha.cf, md5 authkeys and haresources (`N1 IPaddr2::VIP`)
at the article's timers (2 s / 10 s / 6 s, unless --skip-slow) and at --hb-floor (10/30/20 ms);
its takeover steps (dead, mach_down, IPaddr2 start, address added, send_arp) are read from its
log, each line stamped as it reaches the file.

Also measured: CPU (% of one core, from the scheduler's run time of every
thread) and RSS of a halb daemon at 100 beats/s (keepalive 10 ms), the
daemon counted whole: its process and the resource-agent helper, next to
two bare loops doing the same sends/receives (uvloop; a plain select loop
with one wake-up per beat); and a bounded soak at the fastest timers with
both cores loaded by busy loops, counting false failovers (deaths seen by
either node, VIP seen on the wrong node or on both: `ip -o addr` in both nodes
every 0.1 s) and the longest silence seen; with --soak-keepalived ADVERT the
same soak (same load, same length, same VIP sampling) of keepalived, its false
failovers also read from its logs (N2 entering MASTER, N1 leaving it).

    sudo python3 bench/bench_failover.py [--trials 3] [--soak 60] [--skip-slow]
    sudo python3 bench/bench_failover.py --trials 5 --soak 600 --skip-slow   # every target, 10-min soak
    sudo python3 bench/bench_failover.py --trials 3 --skip-slow --cpu-seconds 0 --soak 600 --soak-keepalived 0.01
    sudo python3 bench/bench_failover.py --trials 3 --slow-trials 3 --soak 0 --cpu-seconds 0 --debian-heartbeat
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
# the daemons started in the lab (python -m halb) run this checkout's halb too, whatever
# halb the interpreter has installed (an editable install may point at another tree)
os.environ["PYTHONPATH"] = os.pathsep.join([str(HERE.parent / "src")] + [x for x in [os.environ.get("PYTHONPATH")] if x])

from hb_cluster import Cluster, wait_for  # noqa: E402
from halb.lab import Lab, article  # noqa: E402
from halb.lab.netns import stop_popen  # noqa: E402
import debian_heartbeat  # noqa: E402

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


def analyse(results, fault_t, new="N2"):
    res = [r for r in results if r[0] >= fault_t - 1.0]
    prompt = [r for r in res if r[2] and r[1] < PROMPT]
    first = next((i for i, r in enumerate(prompt) if r[3] == new and r[0] >= fault_t - 0.05), None)
    if first is None or first == 0:
        return {"gap": None, "errors_after": None, "requests": len(res)}
    gap_start, gap_end = prompt[first - 1][0], prompt[first][0]
    after = [r for r in res if r[0] > gap_end]
    errors_after = sum(1 for r in after if not (r[2] and r[1] < PROMPT))
    served_by = sorted({r[3] for r in after if r[2]})
    worst_after = max((b[0] - a[0] for a, b in zip(prompt[first:], prompt[first + 1:])), default=0.0)
    return {"gap": round(gap_end - gap_start, 4), "errors_after": errors_after, "requests": len(res),
            "after": len(after), "served_after": served_by,
            "first_answer_from_fault": round(gap_end - fault_t, 4), "worst_gap_after": round(worst_after, 4)}


def run_probe(lab, duration):
    return lab.popen("client0", [sys.executable, str(HERE / "probe_vip.py"), lab.vip, str(duration), "0.01", "3"],
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


class ArpWatch:
    """tcpdump in the client: kernel stamps of the ARP packets it sees, to place the new
    holder's first gratuitous ARP (ARP naming the VIP as sender, from the new holder's MAC)
    after the fault, the same way for every system."""

    def __init__(self, lab, client="client0"):
        self.lab, self.client = lab, client
        self.p = None
        if shutil.which("tcpdump"):
            self.p = lab.popen(client, ["tcpdump", "-i", lab.client(0).iface, "-n", "-e", "-tt", "-l", "arp"],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)

    def stop(self):
        if self.p is None:
            return ""
        self.p.send_signal(signal.SIGINT)
        try:
            out, _ = self.p.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            self.p.kill()
            out, _ = self.p.communicate()
        return out

    def first_garp_ms(self, out, fault_wall, node="N2"):
        mac, vip = self.lab.node(node).mac.lower(), self.lab.vip
        for line in out.splitlines():
            f = line.split()
            try:
                t = float(f[0])
            except (IndexError, ValueError):
                continue
            if t >= fault_wall and f[1].lower() == mac and (f"tell {vip}," in line or f"Reply {vip} is-at" in line):
                return round((t - fault_wall) * 1000, 1)
        return None


def trial(lab, sysm, post):
    """One failover of `sysm` seen by the client. Whatever happens, the system is stopped
    (its processes on both nodes ended) before returning or raising."""
    reset_lab(lab)
    arp = None
    try:
        sysm.start()
        wait_for(lambda: vip_on(lab, "N1", lab.vip) and not vip_on(lab, "N2", lab.vip), 90, 0.05, "N1 to hold the VIP")
        wait_for(lambda: lab.http_get("client0", "http://VIP/testcluster.html")[1] == "N1\n", 20, 0.1, "VIP answers")
        arp = ArpWatch(lab)
        if hasattr(sysm, "arm"):
            sysm.arm()
        time.sleep(0.3)
        probe = run_probe(lab, 1.0 + post)
        time.sleep(1.0)
        fault_wall, fault_t = time.time(), time.monotonic()
        lab.freeze("N1")
        lab.cut_link("N1")
        lab.kill_node("N1")
        out, err = probe.communicate(timeout=post + 30)
        try:
            results = json.loads(out)["results"]
        except ValueError:
            raise RuntimeError(f"probe failed: {err.strip()[-400:]}") from None
        r = analyse(results, fault_t)
        r["N2_holds_vip_after"] = vip_on(lab, "N2", lab.vip)       # ip addr inside N2
        r["garp_wire_ms"] = arp.first_garp_ms(arp.stop(), fault_wall)
        arp = None
        if hasattr(sysm, "timeline"):
            r.update(sysm.timeline(fault_wall, r))
        return r
    finally:
        if arp is not None:
            arp.stop()
        sysm.stop()


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
        if self.c is None:
            return
        p = self.c.procs.get("N1")
        if p is not None and p.poll() is not None:      # killed with its node
            self.c.procs.pop("N1")
        self.c.close()
        self.c = None

    def timeline(self, fault_wall, r):
        """ms from the fault to each step of N2's takeover, from N2's log."""
        marks = {"dead_ms": "N1: is dead", "vip_up_ms": " is up on ", "garp_ms": "sent gratuitous ARP"}
        out = {}
        for line in self.c.log("N2").splitlines():
            for k, m in marks.items():
                if k not in out and m in line:
                    try:
                        stamp = line.split(": ", 1)[1].split(" ", 1)[0]       # 2026/11/29_22:22:56.575
                        t = time.mktime(time.strptime(stamp[:19], "%Y/%m/%d_%H:%M:%S")) + int(stamp[20:23]) / 1000
                    except (IndexError, ValueError):
                        continue
                    if t >= fault_wall - 1:
                        out[k] = round((t - fault_wall) * 1000, 1)
        if r.get("first_answer_from_fault") is not None:
            out["first_answer_ms"] = round(r["first_answer_from_fault"] * 1000, 1)
        return out


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
                stop_popen(p, 10)
        self.procs = []


# ------------------------------------------------------------------ cpu / soak

def _run_ns(pid):
    """CPU time (ns) every thread of a process has run, from the scheduler (exact,
    where /proc/PID/stat's user/system are sampled at the clock tick)."""
    total = 0
    for t in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{t}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError):
            pass
    return total


def _tree(pid):
    import psutil

    p = psutil.Process(pid)
    return [p] + p.children(recursive=True)


def _measure(procs_by_name, seconds):
    """{name: cpu % of one core over `seconds`, RSS and PSS in MB} for lists of processes."""
    t0 = {n: sum(_run_ns(p.pid) for p in ps) for n, ps in procs_by_name.items()}
    w0 = time.monotonic()
    time.sleep(seconds)
    w1 = time.monotonic()
    out = {}
    for n, ps in procs_by_name.items():
        ns = sum(_run_ns(p.pid) for p in ps) - t0[n]
        rss = pss = 0
        for p in ps:
            try:
                mi = p.memory_full_info()
                rss, pss = rss + mi.rss, pss + mi.pss
            except Exception:
                rss += p.memory_info().rss
        out[n] = {"cpu_pct": round(100 * ns / 1e9 / (w1 - w0), 2), "rss_mb": round(rss / 2**20, 1),
                  "pss_mb": round(pss / 2**20, 1), "processes": len(ps)}
    return out


def cpu_rss(lab, base, seconds):
    """halb at 100 beats/s (keepalive 10 ms) next to two bare loops, same lab, same rate."""
    s = HalbSystem(lab, base, "cpu", keepalive="10ms", deadtime="50ms", warntime="30ms", initdead="1s")
    reset_lab(lab)
    s.start()
    wait_for(lambda: vip_on(lab, "N1", lab.vip), 20, 0.05, "N1 holds")
    time.sleep(1.0)
    trees = {n: _tree(s.c.status(n)["pid"]) for n in ("N1", "N2")}
    st0 = s.c.status("N2")
    out = _measure(trees, seconds)
    st = s.c.status("N2")
    out["beats_rx_per_s_N2"] = round((st["counters"]["rx"] - st0["counters"]["rx"]) / (st["uptime"] - st0["uptime"]), 1)
    s.c.close()
    exe = base / "beat_baseline"
    built = subprocess.run(["cc", "-O2", "-o", str(exe), str(HERE / "beat_baseline.c")],
                           capture_output=True, text=True).returncode == 0
    modes = ("uvloop", "select", "c") if built else ("uvloop", "select")
    for mode in modes:      # c: the same loop in C (bench/beat_baseline.c), the floor of any implementation
        bare = [lab.popen(n, [str(exe), lab.node(n).iface, "0.01"] if mode == "c" else
                          [sys.executable, str(HERE / "beat_baseline.py"), lab.node(n).iface, "0.01", mode])
                for n in ("N1", "N2")]
        time.sleep(2.0)
        m = _measure({i: _tree(b.pid)[-1:] for i, b in enumerate(bare)}, seconds)
        for b in bare:
            b.kill()
            b.wait()
        out[f"bare_{mode}_cpu_pct"] = round((m[0]["cpu_pct"] + m[1]["cpu_pct"]) / 2, 2)
        out[f"bare_{mode}_rss_mb"] = m[0]["rss_mb"]
    halb_avg = (out["N1"]["cpu_pct"] + out["N2"]["cpu_pct"]) / 2
    for mode in modes:
        if out[f"bare_{mode}_cpu_pct"] > 0:
            out[f"ratio_halb_vs_bare_{mode}"] = round(halb_avg / out[f"bare_{mode}_cpu_pct"], 2)
    out["targets"] = {"cpu_below_1pct": max(out["N1"]["cpu_pct"], out["N2"]["cpu_pct"]) < 1.0,
                      "rss_below_60mb": max(out["N1"]["rss_mb"], out["N2"]["rss_mb"]) < 60}
    return out


class VipSampler:
    """Who holds the VIP, as a user would see it: `ip -o -4 addr` run inside both nodes at
    once, every `interval` s (on a fixed grid; a late round is counted, never made up).
    A sample is wrong unless `expect` alone holds the VIP; consecutive wrong samples
    are one episode (what a user notices as one false failover)."""

    def __init__(self, lab, expect="N1", interval=0.1, nodes=("N1", "N2")):
        self.lab, self.expect, self.interval, self.nodes = lab, expect, interval, nodes
        self.samples = self.wrong = self.both = self.none = self.episodes = 0
        self.on_other = 0
        self.longest_interval = 0.0
        self.first_wrong = []          # (seconds into the soak, holders) of the first few wrong samples

    def holders(self):
        procs = {n: subprocess.Popen(self.lab.nsenter_prefix(n) + ["ip", "-o", "-4", "addr", "show", "dev",
                                                                   self.lab.node(n).iface],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
                 for n in self.nodes}
        held = []
        for n, p in procs.items():
            out, _ = p.communicate(timeout=30)
            if any(f" {self.lab.vip}/" in line for line in out.splitlines()):
                held.append(n)
        return held

    def run(self, seconds):
        t0 = time.monotonic()
        t_end, nxt, last, was_wrong = t0 + seconds, t0, None, False
        while True:
            now = time.monotonic()
            if now >= t_end:
                break
            if now < nxt:
                time.sleep(nxt - now)
            t = time.monotonic()
            held = self.holders()
            if last is not None:
                self.longest_interval = max(self.longest_interval, t - last)
            last = t
            self.samples += 1
            wrong = held != [self.expect]
            if wrong:
                self.wrong += 1
                self.both += len(held) > 1
                self.none += not held
                self.on_other += any(n != self.expect for n in held)
                self.episodes += not was_wrong
                if len(self.first_wrong) < 10:
                    self.first_wrong.append((round(t - t0, 2), held))
            was_wrong = wrong
            nxt += self.interval
            if nxt < time.monotonic():     # fell behind (loaded machine): next round now, grid kept
                nxt += self.interval * int((time.monotonic() - nxt) / self.interval + 1)
        return self.result()

    def result(self):
        return {"vip_samples": self.samples, "vip_sample_interval_s": self.interval,
                "longest_sample_interval_ms": round(1000 * self.longest_interval, 1),
                "samples_with_wrong_holder": self.wrong, "wrong_holder_episodes": self.episodes,
                "samples_vip_on_both": self.both, "samples_vip_on_other_node": self.on_other,
                "samples_vip_nowhere": self.none, "first_wrong_samples": self.first_wrong}


def _cpu_ticks():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return v[7], sum(v[:8])          # steal, total (user..steal)


def _steal_pct(t0):
    s1, tot1 = _cpu_ticks()
    return round(100 * (s1 - t0[0]) / max(1, tot1 - t0[1]), 2)


def _busy_loops():
    """One busy loop per core, normal priority (the same load for every soak)."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 2)]


def _stop(procs):
    for p in procs:
        p.kill()
        p.wait()


def soak(lab, base, seconds, timers, interval=0.1):
    """`seconds` at the given timers with a busy loop per core (normal priority); stops by itself."""
    reset_lab(lab)
    s = HalbSystem(lab, base, "soak", **timers)
    s.start()
    wait_for(lambda: vip_on(lab, "N1", lab.vip) and not vip_on(lab, "N2", lab.vip), 20, 0.05, "N1 alone holds")
    time.sleep(1.0)
    load = _busy_loops()
    ticks = _cpu_ticks()
    try:
        vip = VipSampler(lab, "N1", interval).run(seconds)
    finally:
        _stop(load)
    vip["steal_pct"] = _steal_pct(ticks)     # the VM's steal time over the soak, % of all CPU time
    st1, st2 = s.c.status("N1"), s.c.status("N2")
    res = {"system": "halb", "seconds": seconds, "timers": timers,
           "deaths_seen_by_N1": st1["nodes"]["N2"]["deaths"], "deaths_seen_by_N2": st2["nodes"]["N1"]["deaths"],
           "late_beats": st1["nodes"]["N2"]["late"] + st2["nodes"]["N1"]["late"],
           "longest_silence_ms": round(1000 * max(st1["nodes"]["N2"].get("max_interval", 0),
                                                  st2["nodes"]["N1"].get("max_interval", 0)), 1),
           "own_stalls": st1["stalls"] + st2["stalls"], **vip}
    res["false_failovers"] = res["deaths_seen_by_N1"] + res["deaths_seen_by_N2"]
    s.c.close()
    return res


def _sched_policy(pid):
    try:
        pol = os.sched_getscheduler(pid)
        prio = os.sched_getparam(pid).sched_priority
    except OSError:
        return None
    names = {os.SCHED_OTHER: "other", os.SCHED_FIFO: "fifo", os.SCHED_RR: "rr"}
    return f"{names.get(pol, pol)}/{prio}"


def _node_keepalived_pids(lab, node):
    out = []
    for pid in lab.pids(node):
        try:
            with open(f"/proc/{pid}/comm") as f:
                if f.read().strip() == "keepalived":
                    out.append(pid)
        except OSError:
            pass
    return out


def soak_keepalived(lab, base, seconds, advert, interval=0.1):
    """keepalived (VRRP only, default scheduling) at `advert` for `seconds`, same load and the
    same VIP sampling as soak(); false failovers from the VIP seen on the wrong node or on
    both, and from keepalived's own state changes in its logs (N2 entering MASTER, N1
    leaving it). Stops by itself; leaves no keepalived process and no VIP behind."""
    reset_lab(lab)
    s = KeepalivedSystem(lab, base, f"soak-keepalived-{advert}", advert)
    logs = {n: s.base / n / "keepalived.log" for n in ("N1", "N2")}
    for f in logs.values():
        f.unlink(missing_ok=True)
    res = {"system": "keepalived", "seconds": seconds, "advert_int": advert}
    try:
        s.start()
        wait_for(lambda: "Entering BACKUP STATE" in logs["N2"].read_text(errors="replace")
                 and vip_on(lab, "N1", lab.vip) and not vip_on(lab, "N2", lab.vip), 30, 0.05,
                 "keepalived N1 master, N2 backup")
        time.sleep(1.0)
        res["sched"] = {n: sorted({_sched_policy(p) for p in _node_keepalived_pids(lab, n)} - {None})
                        for n in ("N1", "N2")}
        offset = {n: len(f.read_bytes()) for n, f in logs.items()}
        load = _busy_loops()
        ticks = _cpu_ticks()
        try:
            res.update(VipSampler(lab, "N1", interval).run(seconds))
        finally:
            _stop(load)
        res["steal_pct"] = _steal_pct(ticks)
        time.sleep(0.2)
        new = {n: f.read_bytes()[offset[n]:].decode(errors="replace").splitlines() for n, f in logs.items()}
        n2_master = [ln for ln in new["N2"] if "Entering MASTER STATE" in ln]
        n1_left = [ln for ln in new["N1"] if "Entering BACKUP STATE" in ln or "Entering FAULT STATE" in ln]
        res.update({"N2_entered_master": len(n2_master), "N1_left_master": len(n1_left),
                    "state_lines": (n2_master + n1_left)[:10],
                    "log_during_soak": {n: v[:20] for n, v in new.items()},
                    "log_lines_during_soak": {n: len(v) for n, v in new.items()}})
        res["false_failovers"] = len(n2_master) + len(n1_left)
    finally:
        s.stop()
        left = {n: _node_keepalived_pids(lab, n) for n in ("N1", "N2")}
        for n, pids in left.items():
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        reset_lab(lab)      # removes the VIP from both nodes
        res["cleanup"] = {"keepalived_left_after_sigterm": sum(map(len, left.values())),
                          "vip_left": [n for n in ("N1", "N2") if vip_on(lab, n, lab.vip)]}
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--soak", type=float, default=60)
    ap.add_argument("--soak-keepalived", metavar="ADVERT_INT",
                    help="after halb's soak, the same soak (same load, same length) of keepalived at this "
                         "advert_int, e.g. 0.01")
    ap.add_argument("--soak-interval", type=float, default=0.1, help="VIP sampling interval in the soaks (s)")
    ap.add_argument("--cpu-seconds", type=float, default=20)
    ap.add_argument("--skip-slow", action="store_true",
                    help="skip the 1 s / article-timer systems (halb-article, keepalived-1, "
                         "debian-heartbeat-article)")
    ap.add_argument("--slow-trials", type=int, default=1,
                    help="trials for each 1 s / article-timer system (≈ 20-40 s each)")
    ap.add_argument("--debian-heartbeat", action="store_true",
                    help="also Debian's heartbeat 3 (apt-get install heartbeat) with the article's ha.cf and "
                         "haresources (IPaddr2 VIP): at the article's timers 2 s/10 s/6 s (a slow system) and "
                         "at the timers of --hb-floor")
    ap.add_argument("--hb-floor", default="10ms,30ms,20ms",
                    help="Debian heartbeat's fast timers keepalive,deadtime,warntime ('none': skip)")
    ap.add_argument("--keep", action="store_true", help="keep the configs and logs of every system (path printed)")
    ap.add_argument("--only", help="comma-separated system names to run (e.g. debian-heartbeat-article)")
    ap.add_argument("--fast", default="5ms,25ms,15ms", help="halb's fastest timers: keepalive,deadtime,warntime")
    ap.add_argument("--also", default="",
                    help="more halb timers measured in the same run, ';'-separated keepalive,deadtime,warntime "
                         "sets (e.g. '10ms,50ms,30ms'): system halb-KA-DT each")
    ap.add_argument("--soak-timers", default="",
                    help="keepalive,deadtime,warntime of the soak (default: --fast)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench_failover needs root (network namespaces)")
    if args.debian_heartbeat and debian_heartbeat.missing():
        raise SystemExit(debian_heartbeat.INSTALL_HINT.format(missing=", ".join(debian_heartbeat.missing())))
    # a SIGTERM (timeout, kill) unwinds like ^C: every system stopped, the lab torn down
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    ka, dt, wt = args.fast.split(",")
    base = Path(tempfile.mkdtemp(prefix="hbbench"))
    report = {"probe": "GET every 10 ms, no waiting; gap = last prompt (<0.5 s) success before N2's first "
                       "answer -> that answer (request start times)",
              "started_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()), "argv": sys.argv[1:]}
    with Lab(nodes=2, clients=1, apache=True) as lab:
        systems = [
            (HalbSystem(lab, base, "halb-fast", keepalive=ka, deadtime=dt, warntime=wt, initdead="2s"), args.trials, 3),
            (KeepalivedSystem(lab, base, "keepalived-0.01", "0.01"), args.trials, 3),
        ]
        for spec in filter(None, args.also.split(";")):
            aka, adt, awt = spec.split(",")
            systems.insert(1, (HalbSystem(lab, base, f"halb-{aka}-{adt}", keepalive=aka, deadtime=adt, warntime=awt,
                                          initdead="2s"), args.trials, 3))
        if args.debian_heartbeat and args.hb_floor != "none":
            hka, hdt, hwt = args.hb_floor.split(",")
            systems.append((debian_heartbeat.DebianHeartbeatSystem(
                lab, base, "debian-heartbeat-floor", keepalive=hka, deadtime=hdt, warntime=hwt, initdead="60"),
                args.trials, 6))
        if not args.skip_slow:
            systems += [
                (HalbSystem(lab, base, "halb-article", keepalive="2", deadtime="10", warntime="6", initdead="60"),
                 args.slow_trials, 15),
                (KeepalivedSystem(lab, base, "keepalived-1", "1"), args.slow_trials, 8),
            ]
            if args.debian_heartbeat:
                systems.append((debian_heartbeat.DebianHeartbeatSystem(lab, base, "debian-heartbeat-article"),
                                args.slow_trials, 15))
        if args.only:
            keep = set(args.only.split(","))
            systems = [x for x in systems if x[0].name in keep]
        for sysm, trials, post in systems:
            runs, excluded = [], []
            for i in range(2 * trials):
                if len(runs) == trials:
                    break
                try:
                    r = trial(lab, sysm, post)
                except Exception as e:          # recorded, the run goes on (the system was stopped)
                    r = {"gap": None, "errors_after": None, "failed": f"{type(e).__name__}: {e}"}
                print(f"{sysm.name} trial {i + 1}: {r}", flush=True)
                if r.get("deaths_before_fault"):
                    # a node declared dead between the start and the fault (Debian heartbeat at
                    # short deadtimes): N2 may already hold the VIP, the gap measures nothing
                    excluded.append(r)
                    continue
                runs.append(r)
            gaps = [r["gap"] for r in runs if r["gap"] is not None]
            entry = {"median_gap_s": statistics.median(gaps) if gaps else None,
                     "gaps": gaps, "errors_after": [r["errors_after"] for r in runs],
                     "worst_gap_after_s": max((r.get("worst_gap_after", 0) for r in runs), default=None),
                     "N2_held_vip_after": [r.get("N2_holds_vip_after") for r in runs],
                     "failed_trials": [r["failed"] for r in runs if "failed" in r]}
            for k in ("dead_ms", "takeover_ms", "rsc_start_ms", "vip_up_ms", "send_arp_ms", "garp_ms", "garp_wire_ms",
                      "first_answer_ms"):
                vals = [r[k] for r in runs if r.get(k) is not None]
                if vals:
                    entry[f"median_{k}"] = statistics.median(vals)
            if any("false_starts_so_far" in r for r in runs):       # Debian heartbeat
                entry["false_failovers_at_start"] = getattr(sysm, "false_starts", 0)
                entry["starts"] = getattr(sysm, "starts", 0)
                entry["trials_excluded_death_before_fault"] = len(excluded)
            report[sysm.name] = entry
        also = [x[0].name for x in systems if x[0].name.startswith("halb-") and x[0].name not in
                ("halb-fast", "halb-article")]
        for name, ref in (("halb-fast", "keepalived-0.01"), *((a, "keepalived-0.01") for a in also),
                          ("halb-article", "keepalived-1"),
                          ("halb-article", "debian-heartbeat-article"), ("halb-fast", "debian-heartbeat-floor")):
            g = report.get(name, {}).get("median_gap_s")
            base_gap = report.get(ref, {}).get("median_gap_s")
            if base_gap and g:
                report[f"ratio_{name}_vs_{ref}"] = round(g / base_gap, 3)
                print(f"{name} / {ref}: {g * 1000:.1f} ms / {base_gap * 1000:.1f} ms = {g / base_gap:.3f}", flush=True)
        print("\nsystem | median gap ms (range) | errors after | N2 held VIP | median ms after fault: "
              "dead / VIP up / GARP on the wire / first answer", flush=True)
        for sysm, _, _ in systems:
            e = report[sysm.name]
            g = e["gaps"]
            rng = f"{1000 * min(g):.1f}-{1000 * max(g):.1f}" if g else "-"
            med = f"{1000 * e['median_gap_s']:.1f}" if e["median_gap_s"] is not None else "-"
            steps = " / ".join(str(e.get(f"median_{k}", "-")) for k in ("dead_ms", "vip_up_ms", "garp_wire_ms",
                                                                         "first_answer_ms"))
            print(f"{sysm.name} | {med} ({rng}), {len(g)} trials | {e['errors_after']} | {e['N2_held_vip_after']} | "
                  f"{steps}" + (f" | FAILED: {e['failed_trials']}" if e["failed_trials"] else "")
                  + (f" | false failovers at start-up: {e['false_failovers_at_start']} of {e['starts']} starts; "
                     f"trials excluded for a death declared before the fault: "
                     f"{e['trials_excluded_death_before_fault']}" if "false_failovers_at_start" in e else ""),
                  flush=True)
        fast = report.get("halb-fast")
        if fast and fast.get("median_gap_s") is not None:
            report["targets"] = {"gap_le_30ms": fast["median_gap_s"] <= 0.030,
                                 "zero_errors_after_gap": all(e == 0 for e in fast["errors_after"])}
        if args.cpu_seconds > 0:
            report["cpu_rss_100_beats_per_s"] = cpu_rss(lab, base, args.cpu_seconds)
            print("cpu/rss:", report["cpu_rss_100_beats_per_s"], flush=True)
        if args.soak_timers:
            ka, dt, wt = args.soak_timers.split(",")
        if args.soak > 0:
            soak_s = min(args.soak, 900)       # bounded: the soak stops by itself
            report["soak_fast_timers_cores_loaded"] = soak(lab, base, soak_s,
                                                           dict(keepalive=ka, deadtime=dt, warntime=wt, initdead="2s"),
                                                           args.soak_interval)
            print("soak:", report["soak_fast_timers_cores_loaded"], flush=True)
            report.setdefault("targets", {})["zero_false_failovers_in_soak"] = (
                report["soak_fast_timers_cores_loaded"]["false_failovers"] == 0
                and report["soak_fast_timers_cores_loaded"]["samples_with_wrong_holder"] == 0)
            if args.soak_keepalived:
                k = soak_keepalived(lab, base, soak_s, args.soak_keepalived, args.soak_interval)
                report[f"soak_keepalived_{args.soak_keepalived}_cores_loaded"] = k
                print(f"soak keepalived {args.soak_keepalived}:", k, flush=True)
                h = report["soak_fast_timers_cores_loaded"]
                print(f"soak {soak_s:.0f} s, both cores loaded, VIP sampled every {args.soak_interval} s:\n"
                      f"  halb {ka}/{dt}: {h['false_failovers']} false node deaths, "
                      f"{h['wrong_holder_episodes']} wrong-holder episodes ({h['samples_with_wrong_holder']} of "
                      f"{h['vip_samples']} samples), longest silence {h['longest_silence_ms']} ms, "
                      f"steal {h['steal_pct']} %\n"
                      f"  keepalived {args.soak_keepalived}: {k.get('false_failovers')} state changes "
                      f"(N2 to MASTER {k.get('N2_entered_master')}, N1 out of MASTER {k.get('N1_left_master')}), "
                      f"{k.get('wrong_holder_episodes')} wrong-holder episodes ({k.get('samples_with_wrong_holder')} "
                      f"of {k.get('vip_samples')} samples), steal {k.get('steal_pct')} %", flush=True)
    if args.keep:
        print(f"configs and logs kept in {base}", flush=True)
    else:
        shutil.rmtree(base, ignore_errors=True)
    if args.debian_heartbeat:            # after the lab is gone: none of heartbeat's processes may be left
        left = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if f.read().startswith(b"heartbeat:"):
                        left.append(int(pid))
            except OSError:
                pass
        report["debian_heartbeat_processes_left"] = left
        print(f"Debian heartbeat processes left after the run: {left or 'none'}", flush=True)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
