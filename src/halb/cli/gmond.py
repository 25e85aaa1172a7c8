"""`halb gmond`: Ganglia's per-node monitoring agent (foreground)."""
from __future__ import annotations

import argparse
import asyncio
import sys

from halb.context import Context
from halb.errors import UsageError

USAGE = """usage: halb gmond [--bind ADDR] [--port N] [--cluster NAME] [--interval SECS]
                  [--tmax SECS] [--dmax SECS] [--owner NAME] [--location TEXT] [--no-halb-metrics]
                  [--allow ADDR[,ADDR...]]...

Collects this node's metrics (Ganglia's names: load_one, cpu_user, mem_free,
bytes_in, ...; plus halb's virtual services and heartbeat state when they run
here) and writes Ganglia's XML dump to every TCP client (a gmetad). Runs in the
foreground; logs to stderr; stops cleanly on SIGTERM or Ctrl-C.

  --bind ADDR       address to listen on (default 0.0.0.0)
  --port N          TCP port (default 8649, gmond's)
  --cluster NAME    the cluster name in the XML (default "unspecified", as gmond)
  --interval SECS   seconds between collections (default 10)
  --tmax SECS       host TMAX: gmetad shows the host down after 4 x TMAX without
                    a report (default 20, gmond's host_tmax)
  --dmax SECS       host DMAX: gmetad forgets the host after this (default 0: never)
  --no-halb-metrics only the system metrics
  --allow ADDRS     only these may read the XML dump: addresses, networks
                    (10.0.0.0/24) or host names, comma-separated, repeatable
                    (gmond.conf's tcp_accept_channel acl); others are closed
                    at once and logged. Default: anyone (list your gmetads!)
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(f"gmond: {message}")


def parse(argv):
    p = _Parser(prog="halb gmond", add_help=False)
    p.add_argument("--bind", default="0.0.0.0")
    p.add_argument("--port", type=int, default=8649)
    p.add_argument("--cluster", default="unspecified")
    p.add_argument("--owner", default="unspecified")
    p.add_argument("--location", default="unspecified")
    p.add_argument("--interval", type=float, default=10.0)
    p.add_argument("--tmax", type=int, default=20)
    p.add_argument("--dmax", type=int, default=0)
    p.add_argument("--no-halb-metrics", action="store_true")
    p.add_argument("--allow", action="append")
    p.add_argument("-h", "--help", action="store_true")
    a = p.parse_args(argv)
    if a.help:
        return None
    if not (0 < a.port < 65536):
        raise UsageError(f"gmond: --port {a.port}: give a port from 1 to 65535")
    if not (0.1 <= a.interval <= 3600):
        raise UsageError(f"gmond: --interval {a.interval:g}: give 0.1 to 3600 seconds")
    if a.tmax < 1 or a.dmax < 0:
        raise UsageError("gmond: --tmax must be at least 1 and --dmax at least 0")
    if not a.cluster:
        raise UsageError("gmond: --cluster needs a name")
    if a.allow is not None:
        a.allow = [x.strip() for v in a.allow for x in v.split(",") if x.strip()]
        for x in a.allow:
            if x.startswith("-") or len(x) > 253 or any(c.isspace() for c in x):
                raise UsageError(f"gmond: --allow {x[:40]!r}: give addresses, networks or host names")
    return a


def main(ctx: Context, argv: list[str]) -> int:
    a = parse(argv)
    if a is None:
        sys.stdout.write(USAGE)
        return 0
    from halb.monitor.gmond import Gmond, GmondConfig

    from halb import logs

    logs.setup("gmond")
    cfg = GmondConfig(node=ctx.node, bind=a.bind, port=a.port, cluster=a.cluster, owner=a.owner,
                      location=a.location, interval=a.interval, tmax=a.tmax, dmax=a.dmax,
                      halb_metrics=not a.no_halb_metrics, allow=a.allow)
    asyncio.run(Gmond(cfg, ctx).run())
    return 0
