"""`halb exporter`: the node's state for Prometheus and the dashboard."""
from __future__ import annotations

import argparse
import asyncio
import sys

from halb.context import Context
from halb.errors import UsageError

DEFAULT_PORT = 9643

USAGE = f"""usage: halb exporter [--listen [HOST]:PORT] [--interval S] [--once]

Serves this node's whole state: the engine's table under node_exporter's
IPVS metric names and labels, heartbeat, director, sync and proxy figures as
halb_* metrics (/metrics), the state as JSON (/api/state) and the node's
events (/api/events). Runs in the foreground; logs to stderr; stops on
SIGTERM or Ctrl-C.

  --listen ADDR   [HOST]:PORT to listen on (default :{DEFAULT_PORT}, every address)
  --interval S    seconds between two readings of the node (default 5; longer
                  when one reading costs more than a tenth of it)
  --once          print one scrape (Prometheus text) on stdout and exit
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(f"exporter: {message}")


def parse_listen(s: str) -> tuple[str, int]:
    host, sep, port = s.rpartition(":")
    if not sep:
        host, port = "", s
    host = host.strip("[]")
    if not port.isdigit() or not (0 < int(port) < 65536):
        raise UsageError(f"exporter: --listen {s!r}: expected [HOST]:PORT with a port from 1 to 65535")
    return host, int(port)


def main(ctx: Context, argv: list[str]) -> int:
    p = _Parser(prog="halb exporter", add_help=False)
    p.add_argument("--listen", default=f":{DEFAULT_PORT}")
    p.add_argument("--interval", type=float, default=5.0)
    p.add_argument("--once", action="store_true")
    p.add_argument("-h", "--help", action="store_true")
    a = p.parse_args(argv)
    if a.help:
        sys.stdout.write(USAGE)
        return 0
    if not 0.2 <= a.interval <= 3600:
        raise UsageError(f"exporter: --interval {a.interval:g}: expected 0.2 to 3600 seconds")
    host, port = parse_listen(a.listen)
    if a.once:
        from halb.exporter.gather import gather
        from halb.exporter.metrics import render

        snap = gather(ctx)
        sys.stdout.write(render(snap))
        for src, err in snap["errors"].items():
            print(f"halb exporter: {src}: {err}", file=sys.stderr)
        return 0
    from halb.exporter.server import serve

    from halb import logs

    logs.setup("halb-exporter")
    asyncio.run(serve(ctx, host, port, a.interval))
    return 0
