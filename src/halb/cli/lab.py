"""`halb lab`: the article's network in namespaces.

    halb lab up [--name NAME] [--nodes N] [--clients N] [--no-apache] [--nginx] [--subnet CIDR]
                [--gateway N1]
    halb lab up --topology ecmp [--directors N] [--reals M] [--clients N] [--name NAME]
                [--scheduler mh|wlc|...] [--sync]
                (N active directors behind an ECMP router with BIRD, BGP + BFD: halb.lab.ecmp)
    halb lab down [--name NAME | --stale | --all]
    halb lab status [--name NAME] [--json]
    halb lab exec [--name NAME] NODE -- CMD [ARGS...]
    halb lab apache [--name NAME] NODE start|stop|status
    halb lab link [--name NAME] NODE cut|restore

A lab's state lives in $HALB_LAB_DIR/NAME (default /run/halb-lab/NAME);
`down` removes every namespace, link, process and file recorded there, also
after the creating process was killed. The default lab name is "lab".
`down --stale` removes the labs left by killed Python/pytest runs (their
creator is gone; labs from `halb lab up` are kept); `--all` removes every lab.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

from halb.errors import UsageError, HalbError
from halb.lab import Lab, LabError, LabState, destroy, is_stale, lab_root, list_labs

DEFAULT_NAME = "lab"


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(f"lab: {message}")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="halb lab", description="the article's network in namespaces")
    sub = p.add_subparsers(dest="cmd", metavar="up|down|status|exec|apache|link")
    up = sub.add_parser("up", help="build the lab")
    up.add_argument("--name", default=DEFAULT_NAME)
    up.add_argument("--nodes", type=int, default=2)
    up.add_argument("--clients", type=int, default=1)
    up.add_argument("--no-apache", action="store_true")
    up.add_argument("--nginx", action="store_true")
    up.add_argument("--subnet")
    up.add_argument("--gateway", metavar="NODE", help="NAT variant: clients and VIP on a public LAN, NODE routes")
    up.add_argument("--json", action="store_true")
    up.add_argument("--topology", choices=["article", "ecmp"], default="article")
    up.add_argument("--directors", type=int, default=3, help="ecmp: active directors")
    up.add_argument("--reals", type=int, default=4, help="ecmp: real servers")
    up.add_argument("--scheduler", default="mh", help="ecmp: the directors' scheduler (default mh)")
    up.add_argument("--sync", action="store_true", help="ecmp: multi-master connection sync between directors")
    down = sub.add_parser("down", help="remove the lab and everything it created")
    down.add_argument("--name")
    down.add_argument("--all", action="store_true")
    down.add_argument("--stale", action="store_true")
    st = sub.add_parser("status", help="nodes, addresses, processes")
    st.add_argument("--name")
    st.add_argument("--json", action="store_true")
    ex = sub.add_parser("exec", help="run a command in a node")
    ex.add_argument("--name")
    ex.add_argument("node")
    ex.add_argument("argv", nargs=argparse.REMAINDER)
    ap = sub.add_parser("apache", help="start/stop a node's Apache")
    ap.add_argument("--name")
    ap.add_argument("node")
    ap.add_argument("action", choices=["start", "stop", "status"])
    lk = sub.add_parser("link", help="cut or restore a node's cable")
    lk.add_argument("--name")
    lk.add_argument("node")
    lk.add_argument("action", choices=["cut", "restore"])
    return p


def _state_path(name: str):
    return lab_root() / name / "state.json"


def _attach(name: str | None) -> Lab:
    name = name or DEFAULT_NAME
    if not _state_path(name).exists():
        known = ", ".join(s.name for s in list_labs()) or "none"
        raise LabError(f"no lab named '{name}' in {lab_root()} (labs: {known}); run 'halb lab up --name {name}'")
    return Lab.attach(name)


def main(ctx, argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        sys.stdout.write(__doc__.split("\n\n", 1)[1])
        return 0 if argv else 2
    args = _parser().parse_args(argv)
    if args.cmd == "up" and args.topology == "ecmp":
        from halb.lab.ecmp import EcmpLab

        ecmp = EcmpLab(directors=args.directors, reals=args.reals, clients=args.clients, name=args.name,
                       scheduler=args.scheduler, schedflags="mh-port" if args.scheduler == "mh" else "",
                       sync=args.sync, persistent=True).build()
        _print_status(ecmp.lab, args.json, ecmp.describe())
        return 0
    if args.cmd == "up":
        lab = Lab(nodes=args.nodes, clients=args.clients, apache=not args.no_apache,
                  nginx=args.nginx, name=args.name, subnet=args.subnet,
                  gateway=args.gateway, persistent=True)
        _print_status(lab.build(), args.json)
        return 0
    if args.cmd == "down":
        if args.all:
            states = list_labs()
        elif args.stale:
            states = [s for s in list_labs() if is_stale(s)]
            if not states:
                print("no stale lab")
        else:
            name = args.name or DEFAULT_NAME
            path = _state_path(name)
            if not path.exists():
                print(f"lab {name}: nothing to remove")
                return 0
            states = [LabState.load(path)]
        for st in states:
            removed = destroy(st)
            print(f"lab {st.name}: removed " + (", ".join(removed) or "nothing"))
        return 0
    if args.cmd == "status":
        lab = _attach(args.name)
        extra = None
        if (lab.dir / "ecmp.json").exists():
            from halb.lab.ecmp import EcmpLab

            extra = EcmpLab.attach(lab.name).describe()
        _print_status(lab, args.json, extra)
        return 0
    if args.cmd == "exec":
        lab = _attach(args.name)
        cmd = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
        if not cmd:
            raise UsageError("lab exec: missing command (halb lab exec NODE -- CMD ...)")
        node = lab.node(args.node)
        try:
            return subprocess.run(lab.nsenter_prefix(node) + cmd, env=lab.node_env(node)).returncode
        except OSError as e:
            raise HalbError(f"lab exec: {e}") from None
    if args.cmd == "apache":
        lab = _attach(args.name)
        node = lab.node(args.node)
        if node.kind != "node":
            raise LabError(f"{node.name} is a client: it runs no Apache")
        if args.action == "start":
            lab.apache_start(node.name)
        elif args.action == "stop":
            lab.apache_stop(node.name)
        pid = lab.apache_pid(node.name)
        print(f"{node.name}: apache " + (f"running (pid {pid})" if pid else "stopped"))
        return 0 if pid or args.action != "status" else 3
    if args.cmd == "link":
        lab = _attach(args.name)
        node = lab.node(args.node)
        (lab.cut_link if args.action == "cut" else lab.restore_link)(node.name)
        print(f"{node.name}: link {'cut' if args.action == 'cut' else 'restored'}")
        return 0
    raise UsageError("lab: missing sub-command (up|down|status|exec|apache|link)")


def _print_status(lab: Lab, as_json: bool = False, ecmp: dict | None = None) -> None:
    d = lab.describe()
    if ecmp:
        d["ecmp"] = ecmp
        d["vip"] = ecmp["vip"]  # the VIP the directors announce (on no LAN)
    if as_json:
        print(json.dumps(d, indent=2))
        return
    print(f"lab {d['name']}: subnet {d['subnet']}  VIP {d['vip']}  switch {d['switch']} ({d['bridge']})  dir {d['dir']}")
    if d.get("gateway"):
        print(f"  NAT variant: clients and VIP on public LAN {d['public_subnet']} ({d['public_bridge']}), "
              f"gateway {d['gateway']}")
    print(f"  {'node':<9} {'address':<16} {'netns':<24} {'iface':<12} {'mac':<18} {'link':<7} {'apache':<8} pids")
    for n in d["nodes"]:
        apache = "-" if n["kind"] != "node" else (str(n["apache"]) if n["apache"] else "stopped")
        pids = " ".join(map(str, n["pids"])) or "-"
        print(f"  {n['name']:<9} {n['ip']:<16} {n['netns']:<24} {n['iface']:<12} {n['mac']:<18} {n['link']:<7} {apache:<8} {pids}")
        if n.get("pub_ip"):
            print(f"  {'':<9} {n['pub_ip']:<16} {'(public leg)':<24} {n['pub_iface']:<12} {n['pub_mac']:<18}")
    if ecmp:
        print(f"  ecmp: VIP {ecmp['vip']} (-s {ecmp['scheduler']} {ecmp['schedflags']}), router N1, "
              f"directors {' '.join(ecmp['directors'])}, real servers {' '.join(ecmp['reals'])}; "
              f"router's next hops for the VIP: {' '.join(ecmp['router_nexthops']) or 'none'}")
