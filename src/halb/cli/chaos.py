"""`halb chaos [--duration SECS] [--seed N] [--faults LIST] [--json FILE] [--keep]`

Build the article's cluster in the lab, drive traffic through the VIP, inject
faults one at a time, print the verdict (root). Exit 0 only when the verdict
is clean (see halb.chaos); 1 when it is not.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from halb.errors import UsageError

# the faults whose verdict is clean today; `--faults all` runs every one
# (crash, standby, hb-*, nft-flush, loss, partition still break downloads or
# persistence: see README "halb chaos")
DEFAULT_FAULTS = "apache,director-kill,junk"


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(f"chaos: {message}")


def main(ctx, argv) -> int:
    from halb.chaos import core

    p = _Parser(prog="halb chaos", description="prove, with numbers, that the cluster loses nothing "
                                               "under faults")
    p.add_argument("--duration", type=float, default=120.0, metavar="SECS",
                   help="the faults' time budget (default 120; set-up and tear-down come on top)")
    p.add_argument("--seed", type=int, default=None, help="same seed = same schedule (default: random)")
    p.add_argument("--faults", default=DEFAULT_FAULTS, metavar="LIST",
                   help=f"comma-separated, from: {', '.join(core.FAULTS)} (default: {DEFAULT_FAULTS})")
    p.add_argument("--json", metavar="FILE", help="write the run and its verdict as JSON ('-': stdout)")
    p.add_argument("--keep", action="store_true", help="keep the generated configs and logs")
    p.add_argument("--list", action="store_true", help="list the faults and exit")
    args = p.parse_args(argv)
    if args.list:
        for k, (d, cost) in core.FAULTS.items():
            print(f"{k:<14} {d} (~{cost:g} s)")
        return 0
    if not 10 <= args.duration <= 3600:
        raise UsageError("chaos: --duration must be between 10 and 3600 seconds")
    try:
        faults = core.parse_faults(args.faults)
    except ValueError as e:
        raise UsageError(f"chaos: --faults: {e}") from None
    if os.geteuid() != 0:
        raise UsageError("chaos: the lab needs root (network namespaces, nftables)")
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(2), "big")
    from halb.chaos.run import Chaos

    res = Chaos(seed, args.duration, faults, say=lambda m: print(m, flush=True), keep=args.keep).run()
    print()
    sys.stdout.write(core.table(res["verdict"]))
    if args.json:
        text = json.dumps(res, indent=2)
        if args.json == "-":
            print(text)
        else:
            with open(args.json, "w") as fh:
                fh.write(text + "\n")
    return 0 if res["verdict"]["clean"] else 1
