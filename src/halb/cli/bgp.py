"""`halb bgp`: announce this director's VIPs over BGP with BIRD 2 while it is fit.

    halb bgp run [-c FILE]       run in the foreground (BIRD is its child)
    halb bgp status [--json]     VIPs (announced or why not), BGP/BFD sessions (exit 3: none runs)
    halb bgp stop                withdraw every VIP, then stop BIRD and the daemon
    halb bgp -t [FILE]           check FILE and the BIRD configuration made from it

FILE defaults to /etc/halb/bgp.conf (see halb.bgp.config for the directives).
"""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import tempfile

from halb.context import Context
from halb.errors import HalbError, UsageError
from halb.procs import locked_pid, wait_gone

USAGE = __doc__.split("\n\n", 1)[1].split("\nFILE", 1)[0].strip("\n") + "\n"
STOP_WAIT = 10.0


def _file(rest: list[str]) -> tuple[str, list[str]]:
    from halb.bgp.config import DEFAULT_PATH

    path, out, i = DEFAULT_PATH, [], 0
    while i < len(rest):
        a = rest[i]
        if a in ("-c", "--config"):
            if i + 1 >= len(rest):
                raise UsageError(f"bgp: {a} needs a file")
            path, i = rest[i + 1], i + 2
            continue
        if a.startswith("--config="):
            path = a.split("=", 1)[1]
        else:
            out.append(a)
        i += 1
    return path, out


def main(ctx: Context, argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        sys.stdout.write("usage:\n" + USAGE)
        return 0 if argv else 2
    action, rest = argv[0], argv[1:]
    if action == "-t":
        path, extra = _file(rest)
        if len(extra) > 1:
            raise UsageError("bgp -t: one file at most")
        return cmd_test(extra[0] if extra else path)
    if action == "run":
        path, extra = _file(rest)
        if extra:
            raise UsageError(f"bgp run: unknown argument '{extra[0]}'")
        return cmd_run(ctx, path)
    if action == "status":
        extra = [a for a in rest if a != "--json"]
        if extra:
            raise UsageError(f"bgp status: unknown argument '{extra[0]}'")
        return cmd_status(ctx, "--json" in rest)
    if action == "stop":
        if rest:
            raise UsageError(f"bgp stop: unknown argument '{rest[0]}'")
        return cmd_stop(ctx)
    raise UsageError(f"bgp: unknown action '{action}' (run, status, stop or -t)")


def cmd_test(path: str) -> int:
    from halb.bgp.birdconf import director_conf
    from halb.bgp.config import load

    cfg = load(path)
    text = director_conf(cfg)
    with tempfile.NamedTemporaryFile("w", suffix=".conf", prefix="halb-bird-") as f:
        f.write(text)
        f.flush()
        try:
            r = subprocess.run(["bird", "-p", "-c", f.name], capture_output=True, text=True, timeout=10)
        except FileNotFoundError:
            raise HalbError("bird is not installed (Debian package bird2)") from None
    if r.returncode != 0:
        msg = (r.stderr or r.stdout).strip().replace(f.name, "generated bird.conf")
        raise HalbError(f"{path}: BIRD refuses the configuration made from it: {msg}")
    print(f"{path}: syntax OK ({len(cfg.neighbors)} neighbor(s), {len(cfg.announce)} VIP(s), "
          + (f"BFD {cfg.bfd[0] / 1000:g} ms x {cfg.bfd[1]}" if cfg.bfd else "BFD off") + f", hold {cfg.hold} s)")
    return 0


def cmd_run(ctx: Context, path: str) -> int:
    from halb.bgp.config import load
    from halb.bgp.daemon import run

    cfg = load(path)
    fmt = logging.Formatter("%(asctime)s halb-bgp[%(process)d]: %(message)s", "%Y-%m-%d %H:%M:%S")
    h: logging.Handler = logging.FileHandler(cfg.logfile) if cfg.logfile else logging.StreamHandler(sys.stderr)
    h.setFormatter(fmt)
    lg = logging.getLogger("halb.bgp")
    lg.handlers[:] = [h]
    lg.setLevel(logging.INFO)
    lg.propagate = False
    return run(ctx, cfg)


def cmd_status(ctx: Context, as_json: bool) -> int:
    from halb.bgp.daemon import paths, query

    r = query(ctx.run_dir)
    if r is None or not r.get("ok"):
        pid = locked_pid(paths(ctx.run_dir)["pid"])
        if as_json:
            print(json.dumps({"running": False, "pid": pid}))
        elif pid:
            print(f"halb bgp (pid {pid}) holds its pid file but does not answer")
            return 4
        else:
            print(f"halb bgp is not running on node {ctx.node}")
        return 4 if pid else 3
    st = r["status"]
    if as_json:
        print(json.dumps(st, indent=2, sort_keys=True))
        return 0
    up = int(st["uptime"])
    print(f"halb bgp: running (pid {st['pid']}, BIRD pid {st['bird_pid']}, up {up // 3600}h{up // 60 % 60:02d}m"
          f"{up % 60:02d}s, {st['rounds']} judgements, last {st['last_round_ms']} ms)")
    for vip, v in sorted(st["vips"].items()):
        print(f"  {vip + '/32':<19} {'announced' if v['announced'] else 'withdrawn':<10} {v['reason']}")
    for s in st["sessions"]:
        print(f"  {s['proto']:<4} {s['name']:<16} {s['state']:<6} since {s['since']:<10} {s['info']}")
    return 0


def cmd_stop(ctx: Context) -> int:
    from halb.bgp.daemon import paths, query

    p = paths(ctx.run_dir)
    pid = locked_pid(p["pid"])
    r = query(ctx.run_dir)
    if pid is None and r is None:
        raise HalbError(f"halb bgp is not running on node {ctx.node}")
    pid = pid or r["status"]["pid"]
    query(ctx.run_dir, "stop")
    if not wait_gone(pid, STOP_WAIT):
        os.kill(pid, signal.SIGTERM)
        if not wait_gone(pid, STOP_WAIT):
            raise HalbError(f"halb bgp (pid {pid}) did not stop within {2 * STOP_WAIT:g} s")
    print("halb bgp stopped (every VIP withdrawn)")
    return 0
