"""`halb realserver`: the article's lvsdr script (§6.3.7).

    halb realserver start [--vip VIP]... [--haresources FILE] [--interface IF]
    halb realserver stop
    halb realserver status [--json]
    halb realserver restart [--vip VIP]... [--haresources FILE] [--interface IF]

start sets arp_ignore=1 and arp_announce=2 on the LAN interface (the one
that reaches the VIP, or --interface), THEN puts each VIP on lo as /32.
stop reverts exactly what start changed (state in RUN_DIR/realserver.json).
status exits 0 when set up, 3 when not started, 1 when degraded.
Works in the network namespace it runs in (e.g. `halb lab exec N2 -- ...`).
"""
from __future__ import annotations

import argparse
import json
import sys

from halb.errors import UsageError
from halb.realserver.haresources import VipSpec, read_haresources
from halb.realserver.lvsdr import STATE_NAME, RealServer, check_vip_or_error


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(f"realserver: {message}")


def _parser():
    p = _Parser(prog="halb realserver")
    sub = p.add_subparsers(dest="cmd", metavar="start|stop|status|restart")
    for name in ("start", "restart"):
        s = sub.add_parser(name)
        s.add_argument("--vip", action="append", default=[], metavar="VIP")
        s.add_argument("--haresources", metavar="FILE")
        s.add_argument("--interface", metavar="IF")
    sub.add_parser("stop")
    st = sub.add_parser("status")
    st.add_argument("--json", action="store_true")
    return p


def _specs(args) -> list[VipSpec]:
    specs = [VipSpec(check_vip_or_error(v), None, "--vip") for v in args.vip]
    if args.haresources:
        have = {s.vip for s in specs}
        specs += [s for s in read_haresources(args.haresources) if s.vip not in have]
    if not specs:
        raise UsageError("realserver: no VIP given (use --vip VIP or --haresources FILE)")
    return specs


def _log(msg: str) -> None:
    print(f"realserver: {msg}", flush=True)


def main(ctx, argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        sys.stdout.write(__doc__.split("\n\n", 1)[1])
        return 0 if argv else 2
    args = _parser().parse_args(argv)
    if args.cmd is None:
        raise UsageError("realserver: missing sub-command (start|stop|status|restart)")
    specs = _specs(args) if args.cmd in ("start", "restart") else None
    rs = RealServer(ctx.ensure_run_dir() / STATE_NAME, log=_log)
    try:
        if args.cmd == "start":
            rs.start(specs, args.interface)
            return 0
        if args.cmd == "restart":
            rs.stop()
            rs.start(specs, args.interface)
            return 0
        if args.cmd == "stop":
            rs.stop()
            return 0
        st = rs.status()
        if args.json:
            print(json.dumps(st, indent=2))
        else:
            _print_status(st)
        return {"running": 0, "stopped": 3, "degraded": 1}[st["state"]]
    finally:
        rs.close()


def _print_status(st: dict) -> None:
    if st["state"] == "stopped":
        print("realserver is not running")
        return
    print(f"realserver is {st['state']}")
    for v in st["vips"]:
        where = "present" if v["on_lo"] else (f"absent: held on {v['held_on']} (this node is the director)"
                                              if v.get("held_on") else "MISSING")
        print(f"  lo: {v['vip']}/32 {where}"
              + ("" if v["ours"] else " (was there before start)") + f"  LAN interface {v['iface']}")
    for i in st["interfaces"]:
        print(f"  {i['iface']}: arp_ignore={i['arp_ignore']} arp_announce={i['arp_announce']}"
              f" (before start: {i['arp_ignore_before'] or '-'}/{i['arp_announce_before'] or '-'})")
    for p in st["problems"]:
        print(f"  problem: {p}")
