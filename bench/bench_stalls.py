"""How late do real-time beat senders wake up on this machine? (issue 5)

halb's fast heartbeat timers fail in loaded soaks because a sender sometimes
goes silent for longer than deadtime. This bench separates the machine's
floor from halb's own cost: with both cores loaded (one busy loop per core at
normal priority, plus optionally short-lived processes like the soak's VIP
sampler), it runs side by side for the same SECONDS

  c          a C thread at SCHED_FIFO 51, clock_nanosleep to absolute deadlines (bench/ticker.c)
  c0, c1     the same pinned to CPU 0 and to CPU 1: "c0+c1" is how long NEITHER woke up in time,
             what a node sending its beats from one thread on each CPU would lose
  py         a Python thread at SCHED_FIFO 51 sleeping in select() as halb's beat thread does,
             the process's main thread idle
  py-gil     the same, beside a main thread that runs Python code (holds the GIL) half the time
  py-gil-rt  the same with that main thread at SCHED_FIFO 50 (as halb's daemon runs with `realtime on`)

and prints, per ticker, the lateness distribution, the count of wake-ups more
than 10/20/30 ms late, and how many of the Python tickers' stalls over 10 ms
had a C stall over 5 ms within 50 ms (same moment = the machine, not Python).

    flock /tmp/halb-cpu.lock python3 bench/bench_stalls.py --seconds 300 --interval-ms 4
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PY_TICKER = r"""
import os, select, sys, threading, time
interval, seconds, prio, gil = float(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
late = []
def run():
    if prio:
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(prio))
        except OSError as e:
            print("sched_setscheduler:", e, file=sys.stderr)
    mono = time.monotonic
    t0 = mono(); due = t0; end = t0 + seconds
    while True:
        due += interval
        d = due - mono()
        if d > 0:
            select.select([], [], [], d)
        t = mono()
        l = t - due
        late.append(l)
        if l > 0.005:
            print(f"stall {t:.6f} {l * 1e3:.3f}", flush=True)
        if t > due + interval:
            due = t - (t - due) % interval
        if t >= end:
            break
sys.setswitchinterval(0.0005)
th = threading.Thread(target=run, daemon=True)
th.start()
if gil == 2 and prio > 1:
    os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(prio - 1))
if gil:
    while th.is_alive():
        x = 0
        t = time.monotonic() + 0.002
        while time.monotonic() < t:      # 2 ms of Python holding the GIL
            x += 1
        time.sleep(0.002)
th.join()
late.sort()
k = len(late)
over = [sum(1 for v in late if v > lim / 1e3) for lim in (5, 10, 20, 30)]
print(f"ticks {k} p50 {late[k // 2] * 1e3:.3f} p99 {late[k * 99 // 100] * 1e3:.3f} "
      f"p999 {late[k * 999 // 1000] * 1e3:.3f} max {late[-1] * 1e3:.3f} "
      f"over5 {over[0]} over10 {over[1]} over20 {over[2]} over30 {over[3]}")
"""


def build(tmp: Path) -> str:
    exe = tmp / "ticker"
    r = subprocess.run(["cc", "-O2", "-o", str(exe), str(ROOT / "bench" / "ticker.c")],
                       capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"bench_stalls: cannot build bench/ticker.c: {r.stderr.strip()}")
    return str(exe)


def parse(out: str) -> tuple[list[tuple[float, float]], dict]:
    stalls, summary = [], {}
    for line in out.splitlines():
        f = line.split()
        if f and f[0] == "stall":
            stalls.append((float(f[1]), float(f[2])))
        elif f and f[0] == "ticks":
            summary = {f[i]: float(f[i + 1]) for i in range(0, len(f) - 1, 2)}
    return stalls, summary


def steal() -> tuple[int, int]:
    with open("/proc/stat") as fh:
        v = [int(x) for x in fh.readline().split()[1:]]
    return v[7], sum(v)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=300)
    ap.add_argument("--interval-ms", type=float, default=4.0)
    ap.add_argument("--prio", type=int, default=51)
    ap.add_argument("--no-load", action="store_true", help="do not load the cores")
    ap.add_argument("--fork-rate", type=float, default=20.0,
                    help="short-lived processes started per second during the run (the soak's sampler); 0: none")
    a = ap.parse_args()
    if a.prio and os.geteuid() != 0:
        sys.exit("bench_stalls: SCHED_FIFO needs root (or --prio 0)")
    with tempfile.TemporaryDirectory(prefix="halb-stalls-") as tmp:
        exe = build(Path(tmp))
        load = []
        if not a.no_load:
            load = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 2)]
        iv = a.interval_ms / 1000
        tick = [exe, str(int(a.interval_ms * 1000)), str(a.seconds), str(a.prio)]
        procs = {
            "c": subprocess.Popen(tick, stdout=subprocess.PIPE, text=True),
            "c0": subprocess.Popen(tick + ["1", "0"], stdout=subprocess.PIPE, text=True),
            "c1": subprocess.Popen(tick + ["1", str(min(1, (os.cpu_count() or 1) - 1))], stdout=subprocess.PIPE,
                                   text=True),
            "py": subprocess.Popen([sys.executable, "-c", PY_TICKER, str(iv), str(a.seconds), str(a.prio), "0"],
                                   stdout=subprocess.PIPE, text=True),
            "py-gil": subprocess.Popen([sys.executable, "-c", PY_TICKER, str(iv), str(a.seconds), str(a.prio), "1"],
                                       stdout=subprocess.PIPE, text=True),
            "py-gil-rt": subprocess.Popen([sys.executable, "-c", PY_TICKER, str(iv), str(a.seconds), str(a.prio), "2"],
                                          stdout=subprocess.PIPE, text=True),
        }
        s0, t0 = steal()
        forks = 0
        try:
            end = time.monotonic() + a.seconds + 5
            while any(p.poll() is None for p in procs.values()) and time.monotonic() < end + 30:
                if a.fork_rate > 0:
                    subprocess.run(["true"])
                    forks += 1
                    time.sleep(1 / a.fork_rate)
                else:
                    time.sleep(0.5)
            outs = {}
            for name, p in procs.items():
                out, _ = p.communicate(timeout=30)
                outs[name] = parse(out)
        finally:
            for p in list(procs.values()) + load:
                if p.poll() is None:
                    p.kill()
                    p.wait()
        s1, t1 = steal()
    st = 100 * (s1 - s0) / max(1, t1 - t0)
    print(f"# {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())} UTC: {a.seconds:g} s, tick {a.interval_ms:g} ms, "
          f"SCHED_FIFO {a.prio}, load: {'none' if a.no_load else f'{len(load)} busy loops'}, "
          f"{forks} short processes, steal {st:.1f} %")
    print(f"{'ticker':<8} {'ticks':>7} {'p50':>7} {'p99':>7} {'p99.9':>7} {'max':>8} {'>5ms':>5} {'>10ms':>6} "
          f"{'>20ms':>6} {'>30ms':>6}   (lateness, ms)")
    for name, (_stalls, s) in outs.items():
        if not s:
            print(f"{name:<8} (no summary: the ticker failed)")
            continue
        print(f"{name:<8} {s['ticks']:>7.0f} {s['p50']:>7.3f} {s['p99']:>7.3f} {s['p999']:>7.3f} {s['max']:>8.3f} "
              f"{s['over5']:>5.0f} {s['over10']:>6.0f} {s['over20']:>6.0f} {s['over30']:>6.0f}")
    # a stall of a pinned ticker is the interval [woke - lateness, woke]; both late at once = overlap
    iv0 = [(t - lt / 1e3, t) for t, lt in outs["c0"][0]]
    iv1 = [(t - lt / 1e3, t) for t, lt in outs["c1"][0]]
    both = sorted((min(b0, b1) - max(a0, a1)) * 1e3 for a0, b0 in iv0 for a1, b1 in iv1
                  if min(b0, b1) > max(a0, a1))
    print(f"c0+c1: longest time both pinned tickers were late at once {both[-1] if both else 0:.3f} ms; "
          f"overlaps > 5 ms: {sum(1 for x in both if x > 5)}, > 10 ms: {sum(1 for x in both if x > 10)}, "
          f"> 20 ms: {sum(1 for x in both if x > 20)} (single: c0 max {outs['c0'][1].get('max', 0):.1f}, "
          f"c1 max {outs['c1'][1].get('max', 0):.1f} ms)")
    cst = outs["c"][0]
    for name in ("py", "py-gil", "py-gil-rt"):
        big = [(t, l) for t, l in outs[name][0] if l > 10]
        shared = sum(1 for t, l in big if any(abs(ct - t) < 0.05 + l / 1e3 for ct, _ in cst))
        print(f"{name}: {len(big)} stalls over 10 ms, {shared} of them within 50 ms of a C stall over 5 ms")


if __name__ == "__main__":
    main()
