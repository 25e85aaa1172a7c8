"""`halb nft flush|status|refresh|controller`: the nft engine's own commands.

    halb nft flush               remove everything halb put in the kernel (its
                                 nft table, ip rules, routing tables, moved
                                 `local` rule, changed sysctls) and forget the table
    halb nft status [--json]     what halb currently has in the kernel; exits 1
                                 when the configured table is not all there
                                 (table, routing rules: e.g. after `nft flush
                                 ruleset` and before the director restores it)
    halb nft refresh             recompute the connection-count schedulers
                                 (lc, wlc, sed, nq, fo, ovf, lblc, lblcr) from
                                 the live flow counts, once
    halb nft controller [--interval S]
                                 do `refresh` every S seconds (default 1) until
                                 SIGTERM/SIGINT
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
import time

from halb.errors import UsageError


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(f"nft: {message}")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="halb nft", description="the nft engine's own commands")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("flush")
    st = sub.add_parser("status")
    st.add_argument("--json", action="store_true")
    sub.add_parser("refresh")
    c = sub.add_parser("controller")
    c.add_argument("--interval", type=float, default=1.0)
    return p


def main(ctx, argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        sys.stdout.write(__doc__)
        return 0 if argv else 2
    args = _parser().parse_args(argv)
    from halb.nft.engine import connect
    eng = connect(ctx)
    if args.cmd == "flush":
        from halb.nft.engine import check_namespace; check_namespace()  # noqa: E702 - HALB_NFT_HOST_GUARD
        eng.flush()
        print("halb nft: table, ip rules and routing tables removed")
        return 0
    if args.cmd == "status":
        st = eng.status()
        if args.json:
            print(json.dumps(st))
        else:
            print(f"services: {st['services']}")
            print(f"nft table inet halb: {'present' if st['table'] else 'absent'}")
            for pref, mark, table in st["rules"]:
                print(f"ip rule {pref}: fwmark 0x{mark:x} lookup {table}")
            print(f"local rule moved: {'yes' if st['local_rule_moved'] else 'no'}")
            for k, v in st["sysctls_changed"].items():
                print(f"sysctl {k} (was {v})")
            for m in st["missing"]:
                print(f"MISSING from the kernel: {m}")
        if st["missing"]:
            print(f"halb nft: {st['services']} virtual service(s) configured but the kernel lacks "
                  f"{', '.join(st['missing'])}", file=sys.stderr)
            return 1
        return 0
    if args.cmd == "refresh":
        n = eng.refresh()
        print(f"halb nft: {n} service(s) refreshed")
        return 0
    if args.interval <= 0:
        raise UsageError("nft: --interval must be > 0")
    stop = []
    signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
    print(f"halb nft controller: refreshing count-based schedulers every {args.interval}s", flush=True)
    try:
        while not stop:
            eng.refresh()
            t_end = time.monotonic() + args.interval
            while not stop and time.monotonic() < t_end:
                time.sleep(min(0.1, args.interval))
    except KeyboardInterrupt:
        pass
    print("halb nft controller: stopped", flush=True)
    return 0
