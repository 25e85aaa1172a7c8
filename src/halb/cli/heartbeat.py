"""`halb heartbeat`: the article's heartbeat, cl_status, hb_standby, hb_takeover.

    halb [--node N] heartbeat [-c HA_DIR] [-d] run     foreground daemon
    halb [--node N] heartbeat status [--json]          this node's view (cl_status)
    halb [--node N] heartbeat nodes                    one line per node
    halb [--node N] heartbeat standby                  give resources to the peer (hb_standby)
    halb [--node N] heartbeat takeover                 take every resource (hb_takeover)
"""
from __future__ import annotations

import json
import sys

from halb.errors import HalbError, UsageError

USAGE = """usage: halb heartbeat [-c HA_DIR] [-d] run
       halb heartbeat status [--json] | nodes | standby | takeover

  -c HA_DIR   directory with ha.cf, authkeys (mode 600) and haresources (default /etc/ha.d)
  -d          debug log (every dropped packet)
"""


def main(ctx, argv) -> int:
    ha_dir = "/etc/ha.d"
    debug = False
    as_json = False
    rest = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in ("-h", "--help"):
            sys.stdout.write(USAGE)
            return 0
        if a == "-c":
            if i + 1 >= len(argv):
                raise UsageError("heartbeat: -c needs a directory")
            ha_dir = argv[i + 1]
            i += 2
            continue
        if a.startswith("-c") and len(a) > 2:
            ha_dir = a[2:]
        elif a == "-d":
            debug = True
        elif a == "--json":
            as_json = True
        elif a.startswith("-"):
            raise UsageError(f"heartbeat: unknown option '{a}'")
        else:
            rest.append(a)
        i += 1
    if len(rest) != 1:
        raise UsageError("heartbeat: expected one of run, status, nodes, standby, takeover (see --help)")
    cmd = rest[0]
    if cmd == "run":
        return run(ctx, ha_dir, debug)
    from halb.heartbeat.daemon import request

    if cmd not in ("status", "nodes", "standby", "takeover"):
        raise UsageError(f"heartbeat: unknown command '{cmd}' (run, status, nodes, standby, takeover)")
    try:
        resp = request(ctx.run_dir, cmd)
    except HalbError as e:
        if cmd != "status":
            raise
        # LSB: status exits 3 when the program is not running, 4 when its state is unknown
        from halb.heartbeat.daemon import PID_NAME
        from halb.procs import locked_pid

        pid = locked_pid(ctx.run_dir / PID_NAME)
        print(f"halb: heartbeat: {e}" + (f" (pid {pid} holds the pid file)" if pid else ""), file=sys.stderr)
        return 4 if pid else 3
    if not resp.get("ok"):
        print(f"halb: heartbeat: {resp.get('error')}", file=sys.stderr)
        return 1
    if as_json:
        print(json.dumps(resp, indent=2, sort_keys=True))
    elif cmd == "status":
        print_status(resp)
    elif cmd == "nodes":
        for n, st in resp["nodes"].items():
            print(f"{n} {st['status']}")
    else:
        print(resp.get("message", "ok"))
    return 0


def print_status(s):
    print(f"node {s['node']}: {s['status']} (keepalive {s['keepalive'] * 1000:g} ms, deadtime "
          f"{s['deadtime'] * 1000:g} ms, realtime {'yes' if s['realtime'] else 'no'})")
    for n, st in s["nodes"].items():
        extra = ""
        if st.get("last_beat_ago") is not None:
            extra = f" (last beat {st['last_beat_ago'] * 1000:.0f} ms ago, {st['deaths']} deaths, {st['late']} late)"
        print(f"  node {n}: {st['status']}{extra}")
    for l, st in s["links"].items():
        print(f"  link {l}: {st}")
    for p, st in s["ping"].items():
        print(f"  ping node {p}: {st}")
    for g in s["groups"]:
        print(f"  group [{g['group']}]: {g['state']} here; held by {', '.join(g['holders']) or 'nobody'}")
    for ln in s.get("lanes", []):
        if ln["lane"] == 0:
            print(f"  beat lane 0: the beat thread, CPU {ln['cpu']}")
        else:
            print(f"  beat lane {ln['lane']}: pid {ln['pid']}, CPU {ln['cpu']}, "
                  f"{'running' if ln['alive'] else 'DEAD'}, {ln['tx']} beats sent, "
                  f"{ln['held_back']} held back (beat thread silent past the lease)")
    c = s["counters"]
    print("  packets: " + ", ".join(f"{k} {v}" for k, v in sorted(c.items())))


def run(ctx, ha_dir, debug) -> int:
    from halb.heartbeat.config import load_ha_dir
    from halb.heartbeat.daemon import Daemon

    ha = load_ha_dir(ha_dir, ctx.node)
    d = Daemon(ha, ctx.node, ctx.ensure_run_dir(), engine=ctx.engine, debug=debug)
    try:
        import uvloop
        runner = uvloop.run
    except ImportError:  # pragma: no cover
        import asyncio
        runner = asyncio.run
    runner(d.run())
    return 0
