"""`halb ipvsadm ...`: ipvsadm's commands against the node's engine.

Parse (pure, halb.ipvsadm.parse), open the engine chosen by --engine /
HALB_ENGINE, execute the ops or print the listing (halb.ipvsadm.fmt).
Errors are HalbError subclasses: one line on stderr, non-zero exit, the
table untouched.
"""
from __future__ import annotations

import sys
from dataclasses import replace

from halb import __version__
from halb.engine import open_engine
from halb.errors import IpvsError, UsageError
from halb.ipvsadm.fmt import Names, format_conns, format_list, format_save, format_timeout
from halb.ipvsadm.parse import parse_argv, parse_restore
from halb.model import FWD_METHODS, Op, Table

USAGE = """\
halb ipvsadm -- the virtual-server table, with ipvsadm's syntax (ipvsadm 1.31)

Usage:
  halb ipvsadm -A|-E virtual-service [-s scheduler] [-p [timeout]] [-M netmask] [--pe engine] [-b sched-flags] [-o]
  halb ipvsadm -D virtual-service
  halb ipvsadm -C
  halb ipvsadm -R            (rules on stdin, all applied at once or none)
  halb ipvsadm -S [-n]
  halb ipvsadm -a|-e virtual-service -r server-address [-g|-i|-m] [-w weight] [-x upper] [-y lower]
  halb ipvsadm -d virtual-service -r server-address
  halb ipvsadm -L|-l [virtual-service] [-n] [-c] [--stats|--rate|--thresholds|--persistent-conn|--timeout] [--exact] [--nosort]
  halb ipvsadm -Z [virtual-service]
  halb ipvsadm --set tcp tcpfin udp
  halb ipvsadm --start-daemon master|backup [--mcast-interface IF] [--syncid N] [--mcast-group G]
               [--mcast-port P] [--mcast-ttl T] [--sync-maxlen L] [--sync-key-file FILE | --sync-unsigned]
  halb ipvsadm --stop-daemon master|backup
  halb ipvsadm -L --daemon

virtual-service:
  -t, --tcp-service host[:port]     -u, --udp-service host[:port]
  -f, --fwmark-service mark [-6]    IPv6 addresses as [addr]:port

Options:
  -s, --scheduler NAME    rr|wrr|lc|wlc|lblc|lblcr|dh|sh|sed|nq|fo|ovf|mh (default wlc)
  -p, --persistent [T]    persistent service, timeout T seconds (default 300)
  -M, --netmask MASK      persistence granularity (IPv6: prefix length)
  -b, --sched-flags F,..  sh-fallback, sh-port, mh-fallback, mh-port
  -r, --real-server ADDR  host or host:port (port defaults to the service's)
  -g, --gatewaying        direct routing        -i, --ipip   tunnelling
  -m, --masquerading      NAT                   (none given: the engine's default;
                                                 proxy: masq, nft: gate)
  -w, --weight N          0..2147483647 (default 1; 0 = quiesced)
  -x, --u-threshold N     -y, --l-threshold N
  -n, --numeric           -c, --connection      --stats  --rate  --thresholds
  --persistent-conn       --timeout             --exact  --nosort  --sort
Connection sync (nft engine): --mcast-interface defaults to eth0, the group to
224.0.0.81, port 8848, ttl 1, maxlen 1472; every datagram is signed
(HMAC-SHA256) with the key in --sync-key-file FILE (halb's own; a key or a
heartbeat authkeys file), else with /etc/ha.d/authkeys; with neither the
daemon refuses to start unless --sync-unsigned is given. Both directors must
use the same key.
The engine is chosen with `halb --engine proxy|nft` or HALB_ENGINE.
"""


def _engine_defaults(ops, engine) -> list:
    """No -g/-m/-i given: the engine's default method applies. When that is
    direct routing or a tunnel, the real-server port is the service's, as
    ipvsadm forces it (fwmark services keep theirs)."""
    if engine.default_fwd not in ("gate", "ipip"):
        return ops
    out = []
    for op in ops:
        if op.kind in ("add-dest", "edit-dest") and op.dest.fwd is None and op.key.proto != "fwm" \
                and op.dest.port != op.key.port:
            op = Op(op.kind, key=op.key, dest=replace(op.dest, port=op.key.port))
        out.append(op)
    return out


def _check_restore(engine, plan) -> None:
    """Dry-run the batch on a copy of the current table to name the failing
    line precisely; the engine then applies the same batch atomically."""
    table = Table([s.config() for s in engine.services()], timeouts=engine.timeouts(),
                  default_fwd=engine.default_fwd)
    table.allowed_fwd = tuple(engine.fwd_methods) or FWD_METHODS
    table.engine_name = engine.name
    try:
        table.apply(plan.ops)
    except IpvsError as e:
        line = plan.line_of(getattr(e, "index", None))
        raise IpvsError(f"line {line}: {e} (nothing applied)" if line else f"{e} (nothing applied)") from None


def main(ctx, argv: list[str]) -> int:
    try:
        cmd = parse_argv(list(argv))
        plan = None
        if cmd.cmd == "restore":
            plan = parse_restore(sys.stdin.read())
    except UsageError as e:
        raise UsageError(f"ipvsadm: {e}") from None
    if cmd.cmd == "help":
        sys.stdout.write(USAGE)
        return 0
    if cmd.cmd == "version":
        print(f"ipvsadm v1.31 (halb {__version__}, IPVS v1.2.1 compatible, engine {ctx.engine})")
        return 0
    if cmd.cmd in ("start-daemon", "stop-daemon"):
        from halb.cli import sync

        try:
            if cmd.cmd == "start-daemon":
                sync.start_daemon(ctx, cmd.daemon)
            else:
                sync.stop_daemon(ctx, cmd.daemon["role"])
        except IpvsError:
            raise
        except UsageError as e:
            raise UsageError(f"ipvsadm: {e}") from None
        return 0
    if cmd.cmd == "list" and cmd.list_kind == "daemon":
        from halb.cli import sync

        sys.stdout.write(sync.daemon_lines(ctx))
        return 0

    engine = open_engine(ctx)
    try:
        if cmd.cmd == "restore":
            if plan.ops:
                plan.ops = _engine_defaults(plan.ops, engine)
                _check_restore(engine, plan)
                try:
                    engine.execute(plan.ops)
                except IpvsError as e:
                    line = plan.line_of(getattr(e, "index", None))
                    raise IpvsError(f"line {line}: {e} (nothing applied)" if line else str(e)) from None
            return 0
        fmt = cmd.fmt
        if cmd.cmd == "save":
            sys.stdout.write(format_save(engine.services(), Names(fmt.numeric), engine.default_fwd,
                                         nosort=fmt.nosort))
            return 0
        if cmd.cmd == "list":
            kind = cmd.list_kind
            names = Names(fmt.numeric)
            if kind == "conn":
                sys.stdout.write(format_conns(engine.connections(), names, fmt.persistent_conn))
            elif kind == "timeout":
                sys.stdout.write(format_timeout(engine.timeouts()))
            elif kind == "service":
                svc = engine.get_service(cmd.key)
                if svc is None:
                    raise IpvsError("No such service")
                sys.stdout.write(format_list([svc], fmt, names, engine.default_fwd, header=False))
            else:
                note = engine.list_note() if hasattr(engine, "list_note") else ""
                if hasattr(engine, "truth"):  # nft: list what the kernel has, say where it differs
                    engine.truth = True
                sys.stdout.write(format_list(engine.services(), fmt, names, engine.default_fwd, note=note))
                for d in getattr(engine, "drift", None) or ():
                    print(f"ipvsadm: warning: {d}", file=sys.stderr)
            return 0
        engine.execute(_engine_defaults(cmd.ops(), engine))
        return 0
    finally:
        engine.close()
