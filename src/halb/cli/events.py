"""`halb events`: this node's events timeline."""
from __future__ import annotations

import argparse
import json
import re
import sys
import time

from halb import events
from halb.context import Context
from halb.errors import UsageError

USAGE = """usage: halb events [--since WHEN] [--kind KIND ...] [-n N] [--json] [--follow]

This node's events, oldest first: nodes dead or back, resource groups
acquired or released, fencing, real servers removed, quiesced or restored,
tables restored, sync role changes, reloads.

  --since WHEN   only events since WHEN: 90s, 10m, 2h, 3d ago, a Unix time,
                 or a local time "YYYY-MM-DD HH:MM[:SS]" / "HH:MM[:SS]" (today)
  --kind KIND    only events of this kind (repeatable): """ + ", ".join(events.KINDS) + """
  -n N           the last N events (default: all)
  --json         one JSON object per line
  --follow, -f   then print new events as they come (Ctrl-C ends)
"""

_AGO = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|m|h|d)$")


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(f"events: {message}")


def parse_since(s: str, now: float) -> float:
    s = s.strip()
    m = _AGO.match(s)
    if m:
        return now - float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
    try:
        return float(s)
    except ValueError:
        pass
    for fmt in ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M:%S"):
        try:
            return time.mktime(time.strptime(s, fmt))
        except ValueError:
            pass
    for fmt in ("%H:%M:%S", "%H:%M"):
        try:
            t = time.strptime(s, fmt)
        except ValueError:
            continue
        lt = time.localtime(now)
        return time.mktime((lt.tm_year, lt.tm_mon, lt.tm_mday, t.tm_hour, t.tm_min, t.tm_sec, 0, 0, -1))
    raise UsageError(f"events: --since {s!r}: expected 10m, 2h, a Unix time or YYYY-MM-DD HH:MM[:SS]")


def main(ctx: Context, argv: list[str]) -> int:
    p = _Parser(prog="halb events", add_help=False)
    p.add_argument("--since")
    p.add_argument("--kind", action="append", default=[])
    p.add_argument("-n", type=int)
    p.add_argument("--json", action="store_true")
    p.add_argument("-f", "--follow", action="store_true")
    p.add_argument("-h", "--help", action="store_true")
    a = p.parse_args(argv)
    if a.help:
        sys.stdout.write(USAGE)
        return 0
    for k in a.kind:
        if k not in events.KINDS:
            raise UsageError(f"events: unknown kind {k!r} (one of: {', '.join(events.KINDS)})")
    if a.n is not None and a.n < 0:
        raise UsageError("events: -n takes a number >= 0")
    since = parse_since(a.since, time.time()) if a.since else None
    j = events.Journal(events.journal_path(ctx.run_dir, ctx.node))

    def show(evs):
        for e in evs:
            print(json.dumps(e, ensure_ascii=False) if a.json else events.fmt(e), flush=True)

    evs = j.read(since, a.kind, a.n)
    show(evs)
    if not a.follow:
        return 0
    seen = {(e["t"], e["node"], e["kind"], e["subject"]) for e in evs}
    last = max([e["t"] for e in evs], default=since if since is not None else time.time())
    try:
        while True:
            time.sleep(0.5)
            new = [e for e in j.read(last, a.kind) if (e["t"], e["node"], e["kind"], e["subject"]) not in seen]
            for e in new:
                seen.add((e["t"], e["node"], e["kind"], e["subject"]))
                last = max(last, e["t"])
            show(new)
    except KeyboardInterrupt:
        return 0
