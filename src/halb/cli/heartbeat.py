"""`halb heartbeat`: the article's heartbeat, cl_status, hb_standby, hb_takeover.

    halb [--node N] heartbeat [-c HA_DIR] [-d] run     foreground daemon
    halb [--node N] heartbeat status [--json]          this node's view (cl_status)
    halb [--node N] heartbeat nodes                    one line per node
    halb [--node N] heartbeat standby                  give resources to the peer (hb_standby)
    halb [--node N] heartbeat takeover                 take every resource (hb_takeover)
    halb [--node N] heartbeat cleanup GROUP            forget GROUP's failures here (crm_resource --cleanup)
    halb [--node N] heartbeat [-c HA_DIR] release      stop every haresources resource here (no daemon may run)
    halb [--node N] heartbeat reload                   SIGHUP to the running daemon: re-read its files

status exits 0 when the daemon runs, 3 when it does not (LSB), 4 when it does not answer.
"""
from __future__ import annotations

import json
import sys

from halb.errors import HalbError, UsageError

USAGE = """usage: halb heartbeat [-c HA_DIR] [-d] run
       halb heartbeat status [--json] | nodes | standby | takeover | reload
       halb heartbeat cleanup GROUP      (GROUP: its number in status, or one of its resources)
       halb heartbeat [-c HA_DIR] release
       halb heartbeat [-c HA_DIR] -t

  status exits 0 when the daemon runs, 3 when it does not (LSB), 4 when it does not answer

  -c HA_DIR   directory with ha.cf, authkeys (mode 600) and haresources (default /etc/ha.d)
  -d          debug log (every dropped packet)
  -t          test the configuration: every error of the three files, exit 0 or 1
  --version   print halb's version

Under systemd (halb-heartbeat.service) the daemon logs to the journal and
tells systemd when it is ready; `systemctl reload` (SIGHUP) re-reads and
checks the files and reopens the log files, SIGUSR1 reopens the log files.
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
        elif a == "-t":
            rest.append("-t")
        elif a == "--json":
            as_json = True
        elif a.startswith("-"):
            raise UsageError(f"heartbeat: unknown option '{a}'")
        else:
            rest.append(a)
        i += 1
    cmds = "run, status, nodes, standby, takeover, cleanup, release, reload"
    if not rest:
        raise UsageError(f"heartbeat: expected one of {cmds} (see --help)")
    cmd = rest[0]
    if cmd == "-t":
        return test_config(ctx, ha_dir)
    if cmd == "cleanup":
        if len(rest) != 2:
            raise UsageError("heartbeat: cleanup GROUP (its number in 'halb heartbeat status', or one of its resources)")
    elif len(rest) != 1:
        raise UsageError(f"heartbeat: expected one of {cmds} (see --help)")
    if cmd == "run":
        return run(ctx, ha_dir, debug)
    if cmd == "release":
        return release(ctx, ha_dir)
    if cmd == "reload":
        return reload(ctx)
    from halb.heartbeat.daemon import request

    if cmd not in ("status", "nodes", "standby", "takeover", "cleanup"):
        raise UsageError(f"heartbeat: unknown command '{cmd}' ({cmds})")
    try:
        if cmd == "cleanup":
            resp = request(ctx.run_dir, cmd, timeout=300, group=rest[1])
        else:
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
        extra = ""
        if g.get("failcount"):
            extra += f"; {g['failcount']} failure(s) here"
        if g.get("banned_here"):
            extra += "; banned here until cleanup"
        mon = g.get("monitor")
        if mon:
            extra += "; monitor " + ("ok" if mon["ok"] else f"FAILED ({mon['error']})")
        print(f"  group {g.get('number', '?')} [{g['group']}]: {g['state']} here; held by "
              f"{', '.join(g['holders']) or 'nobody'}{extra}")
    if "monitor_interval" in s:
        iv = s["monitor_interval"]
        print(f"  resource monitor: {'every ' + format(iv * 1000, 'g') + ' ms' if iv > 0 else 'off'}")
    for f in s.get("failed_resources", []):
        where = (f"here once {f['node']} is known to be down" if f["state"].startswith("failed (node gone")
                 else f"on {f['node']} once repaired")
        print(f"  FAILED: group {f['number']} [{f['group']}] on {f['node']}: {f['state']}"
              + (f" ({f['error']})" if f.get("error") else "")
              + f"; 'halb heartbeat cleanup {f['number']}' {where}")
    fs = s.get("fencing_state")
    if fs:
        devs = ", ".join(fs["devices"]) or ("none usable from this node" if fs["stonith_configured"] else "none")
        line = f"  fencing: STONITH {devs}"
        if fs["fenced"]:
            line += f"; reset: {', '.join(fs['fenced'])}"
        if fs["in_progress"]:
            line += f"; resetting: {', '.join(fs['in_progress'])}"
        print(line)
    wd = s.get("watchdog")
    if wd:
        print(f"  watchdog: {wd}")
    for ln in s.get("lanes", []):
        if ln["lane"] == 0:
            print(f"  beat lane 0: the beat thread, CPU {ln['cpu']}")
        else:
            print(f"  beat lane {ln['lane']}: pid {ln['pid']}, CPU {ln['cpu']}, "
                  f"{'running' if ln['alive'] else 'DEAD'}, {ln['tx']} beats sent, "
                  f"{ln['held_back']} held back (beat thread silent past the lease)")
    c = s["counters"]
    print("  packets: " + ", ".join(f"{k} {v}" for k, v in sorted(c.items())))


def reload(ctx) -> int:
    """SIGHUP to the daemon that holds this node's pid file."""
    import os
    import signal

    from halb.heartbeat.daemon import PID_NAME
    from halb.procs import locked_pid

    pid = locked_pid(ctx.run_dir / PID_NAME)
    if pid is None:
        print("halb: heartbeat: no heartbeat daemon running for this node", file=sys.stderr)
        return 3
    os.kill(pid, signal.SIGHUP)
    print(f"reload requested (SIGHUP to pid {pid}); the daemon logs what it applied")
    return 0


def release(ctx, ha_dir) -> int:
    """Stop every haresources resource on this node, as the watchdog does after a crash:
    refused while a daemon runs (it owns them)."""
    from halb.heartbeat.config import load_ha_dir
    from halb.heartbeat.daemon import release_all

    import os

    ha = load_ha_dir(ha_dir, ctx.node)
    return release_all(ha, ctx.node, ctx.ensure_run_dir(), engine=ctx.engine,
                       why=os.environ.get("HALB_RELEASE_WHY"))


def test_config(ctx, ha_dir) -> int:
    """`-t`: every error of ha.cf, authkeys and haresources (heartbeat -t)."""
    from pathlib import Path

    from halb.configtest import all_errors, report
    from halb.errors import ConfigError
    from halb.heartbeat import config as hc

    d = Path(ha_dir)
    if not d.is_dir():
        return report([ConfigError(d, None, "not a directory (expected HA_DIR with ha.cf, authkeys, haresources)")])
    errors, warnings, checked = [], [], []

    def one(name, parse):
        path = d / name
        try:
            text = hc._read(path)
        except ConfigError as e:
            errors.append(e)
            return None
        res, errs = all_errors(lambda t: parse(t, path), text)
        errors.extend(errs)
        checked.append(str(path))
        return res

    hacf = one("ha.cf", hc.parse_hacf)
    if hacf is not None:
        warnings.extend(hacf.warnings)
        try:
            hacf.check_node(ctx.node)
        except ConfigError as e:
            errors.append(e)
    auth = one("authkeys", hc.parse_authkeys)
    if auth is not None:
        try:
            hc.load_authkeys(d / "authkeys")        # its mode
            if hacf is not None:
                hc.check_auth_for_links(auth, hacf)
        except ConfigError as e:
            errors.append(e)
    if (d / "haresources").exists():
        one("haresources", lambda t, p: hc.parse_haresources(t, p, hacf.nodes if hacf else None))
    return report(errors, warnings, checked)


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
