"""`halb dsh`: dancer's dsh on ClusterShell (see halb.dsh.options.USAGE)."""
from __future__ import annotations

import signal
import sys

from halb.dsh.options import Plan, parse
from halb.dsh.run import Runner, describe_failure, exit_status


def main(ctx, argv: list[str]) -> int:
    plan = parse(list(argv))
    if isinstance(plan, str):  # --help / --version
        sys.stdout.write(plan)
        return 0
    assert isinstance(plan, Plan)
    if plan.verbose:
        for n in plan.notes:
            print(f"halb dsh: {n}", file=sys.stderr)
        mode = "one after the other" if plan.wait else f"{plan.fanout} at a time"
        print(f"halb dsh: {len(plan.hosts)} machines ({mode}): {' '.join(plan.hosts)}", file=sys.stderr)
    for w in plan.warnings:
        if not plan.quiet:
            print(f"halb dsh: warning: {w}", file=sys.stderr)
    def stop(signum, frame):  # unwind so the runner kills every remote shell it started
        raise SystemExit(128 + signum)

    old = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        results = Runner(plan).run()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    failed = [r for r in results if not r.ok]
    if failed and not plan.quiet:
        for r in failed:
            print(f"halb dsh: {r.host}: {describe_failure(r, plan)}", file=sys.stderr)
        print(f"halb dsh: {len(failed)} of {len(results)} machines failed", file=sys.stderr)
    sys.stdout.flush()
    return exit_status(results)
