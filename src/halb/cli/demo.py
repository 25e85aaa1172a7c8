"""`halb demo [--loopback] [--article-timers] [--hold SECONDS]`

The whole cluster of the article on this machine, in one command (root:
network namespaces, nftables). --loopback runs the no-root variant (halb
proxy on 127.0.0.1). --hold keeps the cluster up for SECONDS (or until
Ctrl-C) before it is taken down.
"""
from __future__ import annotations

import argparse
import os

from halb.errors import UsageError


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(f"demo: {message}")


def main(ctx, argv):
    p = _Parser(prog="halb demo", description=__doc__.split("\n\n")[1])
    p.add_argument("--loopback", action="store_true", help="no-root variant: halb proxy on 127.0.0.1")
    p.add_argument("--article-timers", action="store_true",
                   help="heartbeat with the article's timers (keepalive 2 s, deadtime 10 s) and checks every 10 s")
    p.add_argument("--hold", type=float, default=0.0, metavar="SECONDS",
                   help="keep the cluster up this long before taking it down")
    p.add_argument("--keep", action="store_true", help="keep the generated configs and logs")
    args = p.parse_args(argv)
    from halb import demo

    if args.loopback:
        return demo.loopback_demo(ctx)
    if os.geteuid() != 0:
        raise UsageError("demo: the full cluster needs root (network namespaces, nftables); "
                         "run it as root, or try `halb demo --loopback`")
    return demo.Demo(fast=not args.article_timers, article_timers=args.article_timers,
                     hold=args.hold, keep=args.keep).run()
