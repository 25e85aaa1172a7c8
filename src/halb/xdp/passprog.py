"""An XDP program that passes every frame, attached to an interface (run
inside the interface's namespace): what the peer of a veth needs so that
frames sent out of the veth with XDP_TX are received (the lab's switch ports).

    python3 -m halb.xdp.passprog attach|detach IFNAME
"""
from __future__ import annotations

import os
import socket
import sys

from halb.xdp import libbpf


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("attach", "detach"):
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 2
    try:
        ix = socket.if_nametoindex(argv[1])
        if argv[0] == "attach":
            fd = libbpf.load_pass_program()
            libbpf.attach(ix, fd, "drv")
            os.close(fd)
        else:
            libbpf.detach(ix, "drv")
    except (OSError, libbpf.XdpError) as e:
        print(f"halb xdp passprog: {argv[1]}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
