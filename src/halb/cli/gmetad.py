"""`halb gmetad -c gmetad.conf`: Ganglia's collector with the web front end."""
from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from halb.context import Context
from halb.errors import UsageError

USAGE = """usage: halb gmetad -c gmetad.conf [--listen [HOST:]PORT] [--data-dir DIR] [--check]

Polls every data_source of gmetad.conf (Ganglia's file: data_source "NAME"
[step] host[:port] ...) each step, keeps round-robin series on disk and
serves the dashboard, the graphs, a JSON API and /metrics (Prometheus).
Runs in the foreground; logs to stderr; saves and stops on SIGTERM or Ctrl-C.

  -c, --conf FILE   gmetad.conf (default /etc/ganglia/gmetad.conf)
  --listen ADDR     web front end address (default 0.0.0.0:8080)
  --data-dir DIR    where the series are kept (default: rrd_rootdir of the file,
                    else RUN_DIR/gmetad)
  --check           read the file, say what would be polled, and exit
  -t                test the file: every error, exit 0 or 1
  --version         print halb's version

SIGHUP (systemctl reload) re-reads the file and polls new or changed data
sources; a bad file is logged with file:line and the running one kept.
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(f"gmetad: {message}")


def parse_listen(s: str) -> tuple[str, int]:
    host, sep, port = s.rpartition(":")
    if not sep:
        host, port = "0.0.0.0", s
    host = host.strip("[]") or "0.0.0.0"
    if not port.isdigit() or not (0 < int(port) < 65536):
        raise UsageError(f"gmetad: --listen {s!r}: expected [HOST:]PORT with a port from 1 to 65535")
    return host, int(port)


def main(ctx: Context, argv: list[str]) -> int:
    p = _Parser(prog="halb gmetad", add_help=False)
    p.add_argument("-c", "--conf", default="/etc/ganglia/gmetad.conf")
    p.add_argument("--listen", default="0.0.0.0:8080")
    p.add_argument("--data-dir")
    p.add_argument("--check", action="store_true")
    p.add_argument("-t", "--test", action="store_true")
    p.add_argument("-h", "--help", action="store_true")
    a = p.parse_args(argv)
    if a.help:
        sys.stdout.write(USAGE)
        return 0
    from halb.monitor import conf as gconf

    if a.test:
        from halb.configtest import all_errors, report
        from halb.errors import ConfigError

        try:
            with open(a.conf, encoding="utf-8", errors="replace") as f:
                text = f.read()
        except OSError as e:
            return report([ConfigError(a.conf, None, f"cannot read: {e.strerror}")])
        conf, errors = all_errors(lambda t: gconf.parse(t, a.conf), text)
        return report(errors, conf.warnings if conf else (), [a.conf])

    host, port = parse_listen(a.listen)
    conf = gconf.load(a.conf)
    data_dir = Path(a.data_dir or conf.rrd_rootdir or (ctx.run_dir / "gmetad"))
    if a.check:
        for w in conf.warnings:
            print(f"warning: {w}")
        for s in conf.sources:
            print(f'data_source "{s.name}": every {s.step:g} s from {" ".join(str(x) for x in s.addresses)}')
        print(f"data dir {data_dir}; web front end on {host}:{port}")
        return 0
    from halb.monitor.gmetad import Gmetad, GmetadOptions

    from halb import logs

    logs.setup("gmetad")
    asyncio.run(Gmetad(conf, GmetadOptions(data_dir=data_dir, host=host, port=port)).run())
    return 0
