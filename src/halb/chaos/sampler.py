"""Runs inside a lab node (`python -m halb.chaos.sampler VIP IFACE`): every
10 ms, does this node hold the VIP on its LAN interface? One line per
sample, `<CLOCK_MONOTONIC> <0|1>`, flushed in blocks (the chaos run reads
them). It lives in the node, so it dies, or freezes, with the node."""
from __future__ import annotations

import sys
import time

from halb.resources.rtnl import RtNetlink, link_index


def main(argv: list[str]) -> int:
    vip, index = argv[0], link_index(argv[1])
    period = float(argv[2]) if len(argv) > 2 else 0.01
    nl = RtNetlink()
    out = sys.stdout
    buf = []
    nxt = time.monotonic()
    last_flush = nxt
    try:
        while True:
            t = time.monotonic()
            try:
                held = any(a == vip for _, a, _ in nl.addresses(index))
            except OSError:
                held = False
            buf.append(f"{t:.4f} {1 if held else 0}\n")
            if t - last_flush >= 0.05:
                out.write("".join(buf))
                out.flush()
                buf.clear()
                last_flush = t
            nxt += period
            time.sleep(max(0.0, nxt - time.monotonic()))
    except (KeyboardInterrupt, BrokenPipeError):
        return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
