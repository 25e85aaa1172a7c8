"""`halb xdp build|check|flush|status|refresh|controller`: the xdp engine's commands.

    halb xdp build [--force]     compile the XDP program (clang; done by
                                 scripts/install-deps); one line on error
    halb xdp check               load the built program into the kernel once
                                 (the verifier's verdict), attach nothing
    halb xdp flush               detach the program and forget the table (the
                                 nft engine's too when it held the table)
    halb xdp status [--json]     program, interfaces, flows, templates, drops
    halb xdp refresh             one controller tick (connection-count
                                 schedulers from the live flows; removed servers
                                 no flow uses any more)
    halb xdp controller [--interval S]
                                 `refresh` every S seconds (default 1)
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time

from halb.errors import UsageError


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(f"xdp: {message}")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="halb xdp", description="the xdp engine's own commands")
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build")
    b.add_argument("--force", action="store_true")
    sub.add_parser("check")
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
    if args.cmd == "build":
        from halb.xdp.build import build
        obj = build(force=args.force)
        print(f"halb xdp: built {obj}")
        return 0
    if args.cmd == "check":
        from halb.xdp import libbpf
        from halb.xdp.build import ensure_object
        path = os.environ.get("HALB_XDP_OBJ") or str(ensure_object())
        fd, _, obj = libbpf.load_object(path)
        os.close(os.dup(fd))
        libbpf.close_object(obj)
        print(f"halb xdp: {path} passes the kernel's verifier")
        return 0
    from halb.xdp.engine import XdpEngine, check_namespace
    eng = XdpEngine(ctx)
    if args.cmd == "flush":
        eng.flush()
        print("halb xdp: program detached, table forgotten")
        return 0
    if args.cmd == "status":
        st = eng.status()
        if args.json:
            print(json.dumps(st))
        else:
            print(f"services: {st['services']}")
            print(f"engine: {st['engine']}")
            print(f"program: {st['program_id'] or 'none'} ({st['mode']})")
            for name, ok in st["interfaces"]:
                print(f"interface {name}: {'attached' if ok else 'NOT attached'}")
            print(f"flows: {st['flows']}  templates: {st['templates']}")
            print(f"drops: no server {st['drops'][0]}, no MAC {st['drops'][1]}")
        return 0
    check_namespace()
    if args.cmd == "refresh":
        n = eng.refresh()
        print(f"halb xdp: {n} service(s) refreshed")
        return 0
    if args.interval <= 0:
        raise UsageError("xdp: --interval must be > 0")
    stop = []
    signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
    print(f"halb xdp controller: refreshing every {args.interval}s", flush=True)
    try:
        while not stop:
            eng.refresh()
            t_end = time.monotonic() + args.interval
            while not stop and time.monotonic() < t_end:
                time.sleep(min(0.1, args.interval))
    except KeyboardInterrupt:
        pass
    print("halb xdp controller: stopped", flush=True)
    return 0
