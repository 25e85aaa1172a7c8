"""`halb` entry point: global options, then a sub-command named after the
article's tools. Each sub-command lives in `halb.cli.<name>` and exposes
`main(ctx, argv) -> int`; errors meant for the user are HalbError and are
printed as one line, never as a traceback."""
from __future__ import annotations

import importlib
import os
import sys
import traceback

from halb import __version__
from halb.context import Context
from halb.errors import HalbError

COMMANDS = {
    "ipvsadm": "the virtual-server table, with ipvsadm's syntax",
    "proxy": "the user-space engine daemon (relays TCP/UDP for the table)",
    "nft": "the kernel engine's own commands (flush, status, controller)",
    "xdp": "the XDP engine's own commands (build, check, flush, status, controller)",
    "realserver": "Direct Return real-server set-up (the article's lvsdr)",
    "lab": "the article's network in namespaces (N1, N2, clients, Apache)",
    "director": "ldirectord-compatible health checking",
    "sync": "connection-state sync daemons (ipvsadm --start-daemon)",
    "bgp": "announce this director's VIPs over BGP (BIRD 2) while it is fit",
    "heartbeat": "membership and failover of the VIP and the director",
    "dsh": "run a command on every node, in parallel",
    "demo": "the whole cluster on this machine, in one command",
    "chaos": "faults under traffic in the lab, and a verdict (exit 0 = nothing lost)",
    "gmond": "Ganglia-style monitoring agent (per node, XML on port 8649)",
    "gmetad": "Ganglia-style collector with web dashboard and graphs",
    "exporter": "this node's state for Prometheus (IPVS names) and the dashboard",
    "events": "this node's events timeline (failovers, real servers, reloads)",
}

USAGE = """usage: halb [--node NAME] [--run-dir DIR] [--engine proxy|nft|xdp] COMMAND [ARGS...]

global options (also HALB_NODE, HALB_RUN_DIR, HALB_ENGINE):
  --node NAME      this node's name (default: uname -n)
  --run-dir DIR    runtime directory (default: /run/halb/NODE, or a user dir when not root)
  --engine NAME    data plane: nft (kernel, needs CAP_NET_ADMIN), xdp (Direct Return in the
                   driver; NAT tables go to nft) or proxy (user space)

commands:
""" + "".join(f"  {k:<11} {v}\n" for k, v in COMMANDS.items())


def parse_globals(argv: list[str]) -> tuple[Context, str | None, list[str]]:
    opts: dict[str, str] = {}
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in ("-h", "--help"):
            return Context.__new__(Context), None, []
        if a == "--version":
            print(f"halb {__version__}")
            raise SystemExit(0)
        name = None
        for opt in ("--node", "--run-dir", "--engine"):
            if a == opt:
                if i + 1 >= len(argv):
                    raise HalbError(f"option {opt} needs a value")
                name, val = opt, argv[i + 1]
                i += 2
                break
            if a.startswith(opt + "="):
                name, val = opt, a[len(opt) + 1:]
                i += 1
                break
        if name is None:
            break
        if not val:
            raise HalbError(f"option {name} needs a non-empty value")
        opts[name] = val
    rest = argv[i:]
    ctx = Context(node=opts.get("--node") or os.environ.get("HALB_NODE") or os.uname().nodename,
                  run_dir=opts.get("--run-dir"), engine=opts.get("--engine"))
    if rest and rest[0].startswith("-"):
        raise HalbError(f"unknown global option '{rest[0]}' (see halb --help)")
    return ctx, (rest[0] if rest else None), rest[1:]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        ctx, cmd, rest = parse_globals(argv)
        if cmd is None:
            sys.stdout.write(USAGE)
            return 0 if argv else 2
        if cmd not in COMMANDS:
            raise HalbError(f"unknown command '{cmd}' (see halb --help)")
        if "--version" in rest[:rest.index("--") if "--" in rest else None] and cmd not in ("ipvsadm", "dsh"):
            print(f"halb {cmd} {__version__}")     # ipvsadm and dsh print their own
            return 0
        try:
            mod = importlib.import_module(f"halb.cli.{cmd.replace('-', '_')}")
        except ModuleNotFoundError as e:
            if e.name and e.name.startswith("halb.cli"):
                raise HalbError(f"command '{cmd}' is not available in this build") from None
            raise
        return int(mod.main(ctx, rest) or 0)
    except HalbError as e:
        from halb.sdnotify import under_journal
        # under systemd stderr is the journal: a fatal start-up error at error priority
        print(f"{'<3>' if under_journal() else ''}halb: {e}", file=sys.stderr)
        return getattr(e, "exit_code", 1)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    except Exception:  # a bug: say so in one line, keep the trace for the report
        if os.environ.get("HALB_DEBUG"):
            raise
        print("halb: internal error (set HALB_DEBUG=1 for the trace):", file=sys.stderr)
        print("  " + traceback.format_exc().strip().splitlines()[-1], file=sys.stderr)
        return 70


def run() -> None:
    sys.exit(main())
