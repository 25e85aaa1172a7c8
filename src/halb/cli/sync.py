"""`halb sync`: the connection-sync daemons (IPVS's sync daemon; see halb.sync).

Usually driven through ipvsadm's own commands:
    halb ipvsadm --start-daemon master|backup [--mcast-interface IF] [--syncid N]
                 [--mcast-group G] [--mcast-port P] [--mcast-ttl T] [--sync-maxlen L]
                 [--sync-key-file FILE]
    halb ipvsadm --stop-daemon master|backup
    halb ipvsadm -L --daemon
"""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time

from halb.context import Context
from halb.errors import HalbError, UsageError
from halb.procs import log_tail, wait_gone

USAGE = """usage: halb sync {run|status|stop} ...

  run ROLE [ipvsadm's daemon options]   run a sync daemon in the foreground (ROLE: master | backup)
  status [ROLE] [--json]                counters of the running daemons (exit 3 when none runs)
  stop ROLE                             stop one (as ipvsadm --stop-daemon ROLE)

Start one in the background with `halb ipvsadm --start-daemon ROLE ...`.
"""

START_WAIT = 10.0
STOP_WAIT = 5.0


def main(ctx: Context, argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        sys.stdout.write(USAGE)
        return 0 if argv else 2
    action, rest = argv[0], argv[1:]
    if action == "run":
        return cmd_run(ctx, rest)
    if action == "status":
        as_json = "--json" in rest
        roles = [a for a in rest if a != "--json"]
        for r in roles:
            if r not in ("master", "backup"):
                raise UsageError(f"sync status: unknown argument '{r}' (master, backup or --json)")
        return cmd_status(ctx, roles or ["master", "backup"], as_json)
    if action == "stop":
        if len(rest) != 1 or rest[0] not in ("master", "backup"):
            raise UsageError("sync stop: give the role to stop (master or backup)")
        stop_daemon(ctx, rest[0])
        return 0
    raise UsageError(f"sync: unknown action '{action}' (run, status or stop)")


def _config(daemon: dict):
    from halb.sync.daemon import SyncConfig

    return SyncConfig(**daemon)


def cmd_run(ctx: Context, rest: list[str]) -> int:
    from halb.ipvsadm.parse import parse_argv
    from halb.sync.daemon import run

    if not rest or rest[0] not in ("master", "backup"):
        raise UsageError("sync run: give the role first (master or backup)")
    try:
        cmd = parse_argv(["--start-daemon", *rest])
    except UsageError as e:
        raise UsageError(f"sync run: {e}") from None
    level = logging.DEBUG if os.environ.get("HALB_SYNC_DEBUG") else logging.INFO
    from halb.sdnotify import under_journal
    if under_journal():                   # systemd: the journal once, with priorities
        from halb import logs
        logs.setup("halb-sync", level=level)
    else:
        logging.basicConfig(level=level, stream=sys.stderr, format="%(asctime)s halb-sync[%(process)d]: %(message)s",
                            datefmt="%Y-%m-%d %H:%M:%S")
    return run(ctx, _config(cmd.daemon))


def check_engine(ctx: Context) -> None:
    if ctx.engine != "nft":
        raise HalbError("the connection-sync daemon works with the nft engine (kernel flow maps); "
                        f"this node's engine is '{ctx.engine}' (use --engine nft)")


def start_daemon(ctx: Context, daemon: dict) -> int:
    """`ipvsadm --start-daemon ROLE ...`: the daemon in the background; returns
    its pid once its control socket answers."""
    import socket

    from halb.sync.daemon import load_key, locked_pid, paths, query

    from halb.nft.engine import check_namespace

    check_engine(ctx)
    check_namespace()
    role = daemon["role"]
    pid = locked_pid(ctx.run_dir, role)
    if pid is not None or query(ctx.run_dir, role) is not None:
        raise HalbError(f"a {role} sync daemon is already running" + (f" (pid {pid})" if pid else ""))
    try:
        socket.if_nametoindex(daemon["ifname"])
    except OSError:
        raise HalbError(f"mcast-interface {daemon['ifname']}: no such interface") from None
    from halb.sync.daemon import find_key_file

    key_file = find_key_file(daemon.get("key_file", ""), daemon.get("unsigned", False))
    if key_file:
        load_key(key_file)  # a bad key file is reported here, before anything starts
        daemon = dict(daemon, key_file=os.path.abspath(key_file))
    try:
        ctx.ensure_run_dir()
    except OSError as e:
        raise HalbError(f"cannot use run dir {ctx.run_dir}: {e.strerror}") from None
    p = paths(ctx.run_dir, role)
    argv = [sys.executable, "-m", "halb", "--node", ctx.node, "--run-dir", str(ctx.run_dir), "--engine", "nft",
            "sync", "run", role, "--mcast-interface", daemon["ifname"], "--syncid", str(daemon["syncid"]),
            "--mcast-group", daemon["group"], "--mcast-port", str(daemon["port"]),
            "--mcast-ttl", str(daemon["ttl"]), "--sync-maxlen", str(daemon["maxlen"])]
    if daemon.get("key_file"):
        argv += ["--sync-key-file", daemon["key_file"]]
    elif daemon.get("unsigned"):
        argv += ["--sync-unsigned"]
    with open(p["log"], "ab") as out, open(os.devnull, "rb") as devnull:
        start_at = out.tell()
        proc = subprocess.Popen(argv, stdin=devnull, stdout=out, stderr=out, start_new_session=True,
                                close_fds=True)
    deadline = time.monotonic() + START_WAIT
    while time.monotonic() < deadline:
        rc = proc.poll()
        if rc is not None:
            raise HalbError(f"the {role} sync daemon did not start (exit {rc}): {log_tail(p['log'], start_at, 'halb-sync[')}")
        if query(ctx.run_dir, role, timeout=1.0) is not None:
            return proc.pid
        time.sleep(0.05)
    proc.terminate()
    raise HalbError(f"the {role} sync daemon did not come up within {START_WAIT:.0f} s (see {p['log']})")


def stop_daemon(ctx: Context, role: str) -> None:
    """`ipvsadm --stop-daemon ROLE`: asks it to stop, then SIGTERM, SIGKILL."""
    from halb.sync.daemon import locked_pid, paths, query

    pid = locked_pid(ctx.run_dir, role)
    st = query(ctx.run_dir, role)
    if st is None and pid is None:
        raise HalbError(f"no {role} sync daemon is running")
    pid = pid or st["status"]["pid"]
    query(ctx.run_dir, role, "stop")
    if not wait_gone(pid, STOP_WAIT):
        os.kill(pid, signal.SIGTERM)
        if not wait_gone(pid, STOP_WAIT):
            os.kill(pid, signal.SIGKILL)
            if not wait_gone(pid, STOP_WAIT):
                raise HalbError(f"the {role} sync daemon (pid {pid}) did not stop")
    for f in (paths(ctx.run_dir, role)["sock"], paths(ctx.run_dir, role)["pid"]):
        try:
            f.unlink()
        except FileNotFoundError:
            pass


def daemon_lines(ctx: Context) -> str:
    """`ipvsadm -L --daemon`: ipvsadm 1.31's lines for the running daemons."""
    from halb.sync.daemon import query

    out = []
    for role in ("master", "backup"):
        r = query(ctx.run_dir, role)
        if r is None:
            continue
        c = r["status"]["config"]
        out.append(f"{role} sync daemon (mcast={c['ifname']}, syncid={c['syncid']}, maxlen={c['maxlen']}, "
                   f"group={c['group']}, port={c['port']}, ttl={c['ttl']})\n")
    return "".join(out)


def cmd_status(ctx: Context, roles: list[str], as_json: bool) -> int:
    from halb.sync.daemon import query

    found = {}
    for role in roles:
        r = query(ctx.run_dir, role)
        if r is not None:
            found[role] = r["status"]
    if as_json:
        print(json.dumps(found, indent=2, sort_keys=True))
        return 0 if found else 3
    if not found:
        print(f"no sync daemon is running on node {ctx.node}")
        return 3
    for role, st in found.items():
        c, k = st["config"], st["counters"]
        up = int(st["uptime"])
        print(f"{role} sync daemon: running (pid {st['pid']}, up {up // 3600}h{up // 60 % 60:02d}m{up % 60:02d}s)")
        print(f"  multicast:  {c['group']}:{c['port']} on {c['ifname']}, ttl {c['ttl']}, syncid {c['syncid']}, "
              f"maxlen {c['maxlen']}, {'signed' if st['signed'] else 'NOT signed'}")
        if role == "master":
            print(f"  sent:       {k['entries_sent']} entries in {k['packets_sent']} datagrams "
                  f"(send errors {k['send_errors']})")
            print(f"  tracked:    {st['flows_tracked']} live entries, {st['dirty']} waiting; "
                  f"{k['polls']} reads of the maps, last {st['last_poll_s'] * 1000:.1f} ms")
        else:
            print(f"  received:   {k.get('entries_received', 0)} entries in {k.get('packets_accepted', 0)} "
                  f"accepted datagrams ({k.get('packets_received', 0)} received)")
            print(f"  applied:    {k['entries_applied']} in {k['batches']} nft transactions "
                  f"(last {st['last_apply_s'] * 1000:.1f} ms); dropped {k['entries_dropped']}; "
                  f"apply errors {k['apply_errors']}")
            for src, p in sorted(st.get("peers", {}).items()):
                print(f"  peer:       {src} epoch {p['epoch']:x} seq {p['seq']}, {p['packets']} datagrams, "
                      f"{p['entries']} entries, last heard {p['last_seen_s_ago']} s ago")
        if st["drops"]:
            print("  drops:      " + ", ".join(f"{k_}={v}" for k_, v in sorted(st["drops"].items())))
    return 0
