"""The scale-out lab: N active directors behind an ECMP router (BGP + BFD).

    `halb lab up --topology ecmp --directors 3 --reals 4 [--clients 1]`
    EcmpLab(directors=3, reals=4, clients=1, scheduler="mh").build()

Built on halb.lab.Lab's NAT variant (two bridges, the gateway node routes):

    clients (public LAN, default via the router)
       |
    router = N1: ip_forward, fib_multipath_hash_policy=1 (L4 hash), BIRD:
       |          one BGP session + BFD per director, kernel protocol with
       |          `merge paths` -> one multipath route VIP/32 via the
       |          directors that announce it
    server LAN: directors D1..Dn (N2..N(n+1)) and real servers R1..Rm
       |        each director: nft engine (-s mh, Direct Return), `halb director`
       |        (ldirectord.cf, connect checks), `halb bgp` (BIRD, health-gated)
       |        each real server: Apache, `halb realserver start --vip VIP` (lvsdr)

The VIP is an address of a third /24 (on no LAN): only the router's BGP
routes lead to it. Every director's files (ldirectord.cf, bgp.conf, logs)
are in its node dir; the router's BIRD files in the router's. Roles are
recorded in <lab dir>/ecmp.json, so `EcmpLab.attach(name)` and `halb lab
status` find them again; `halb lab down` removes everything (it is a Lab).
"""
from __future__ import annotations

import ipaddress
import json
import random
import sys
import time
from pathlib import Path

from halb.bgp.birdconf import router_conf
from halb.lab.lab import Lab, LabError, _sysctl_ns

ROUTER_AS = 65000
DIRECTOR_AS = 65001


class EcmpLab:
    def __init__(self, directors: int = 3, reals: int = 4, clients: int = 1, name: str | None = None,
                 scheduler: str = "mh", schedflags: str = "mh-port", bfd: tuple[int, int] | None = (20_000, 3),
                 hold: int = 3, persistent: bool = False, start_directors: bool = True,
                 checkinterval: float = 0.5, bgp_interval: float = 0.1):
        if not 1 <= directors <= 16 or not 1 <= reals <= 32:
            raise LabError("the ecmp lab takes 1..16 directors and 1..32 real servers")
        self.n_dir, self.n_real = directors, reals
        self.scheduler, self.schedflags = scheduler, schedflags
        self.bfd, self.hold = bfd, hold
        self.checkinterval, self.bgp_interval = checkinterval, bgp_interval
        self.start_directors = start_directors
        self.lab = Lab(nodes=1 + directors + reals, clients=clients, apache=False, name=name,
                       gateway="N1", persistent=persistent)
        while True:
            vnet = ipaddress.ip_network(f"10.{random.randint(64, 250)}.{random.randint(0, 255)}.0/24")
            if not vnet.overlaps(self.lab.net) and not vnet.overlaps(self.lab.pub_net):
                break
        self.vip = str(vnet.network_address + 100)

    # roles ------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.lab.name

    @property
    def router(self) -> str:
        return "N1"

    @property
    def directors(self) -> list[str]:
        return [f"N{i}" for i in range(2, 2 + self.n_dir)]

    @property
    def reals(self) -> list[str]:
        return [f"N{i}" for i in range(2 + self.n_dir, 2 + self.n_dir + self.n_real)]

    @property
    def clients(self) -> list[str]:
        return [c.name for c in self.lab.clients]

    def director(self, i: int) -> str:
        """Director number i (1-based) -> its node name."""
        return self.directors[i - 1]

    def real(self, i: int) -> str:
        return self.reals[i - 1]

    def _roles_file(self) -> Path:
        return self.lab.dir / "ecmp.json"

    def _save_roles(self) -> None:
        self._roles_file().write_text(json.dumps({
            "directors": self.n_dir, "reals": self.n_real, "vip": self.vip, "scheduler": self.scheduler,
            "schedflags": self.schedflags, "bfd": self.bfd, "hold": self.hold,
            "checkinterval": self.checkinterval, "bgp_interval": self.bgp_interval}, indent=2) + "\n")

    @classmethod
    def attach(cls, name: str) -> "EcmpLab":
        lab = Lab.attach(name)
        f = lab.dir / "ecmp.json"
        try:
            d = json.loads(f.read_text())
        except (OSError, ValueError):
            raise LabError(f"lab {name} is not an ecmp lab (no {f})") from None
        self = cls.__new__(cls)
        self.lab = lab
        self.n_dir, self.n_real, self.vip = d["directors"], d["reals"], d["vip"]
        self.scheduler, self.schedflags = d["scheduler"], d["schedflags"]
        self.bfd = tuple(d["bfd"]) if d["bfd"] else None
        self.hold, self.checkinterval, self.bgp_interval = d["hold"], d["checkinterval"], d["bgp_interval"]
        self.start_directors = True
        return self

    # life cycle -------------------------------------------------------------------------
    def __enter__(self) -> "EcmpLab":
        return self.build()

    def __exit__(self, *exc) -> None:
        self.down()

    def build(self) -> "EcmpLab":
        self.lab.build()
        try:
            self._save_roles()
            self._router()
            for c in self.clients:
                self.lab.run(c, ["ip", "route", "add", "default", "via", self.lab.node("N1").pub_ip], check=True)
            for r in self.reals:
                self.lab.apache_start(r, wait=False)
            for r in self.reals:
                self.lab.apache_start(r)  # waits
                self.halb(r, "realserver", "start", "--vip", self.vip)
            if self.start_directors:
                for d in self.directors:
                    self.start_director(d)
                self.wait_routes(self.n_dir, timeout=30)
        except BaseException:
            self.lab.down()
            raise
        return self

    def down(self) -> list[str]:
        return self.lab.down()

    def halb(self, node: str, *args, check: bool = True, timeout: float = 60):
        r = self.lab.run(node, [sys.executable, "-m", "halb", "--engine", "nft", *args], timeout=timeout)
        if check and r.returncode != 0:
            raise LabError(f"{node}: halb {' '.join(args)} exited {r.returncode}: "
                           f"{(r.stderr or r.stdout).strip()[-300:]}")
        return r

    # the router -------------------------------------------------------------------------
    def _router(self) -> None:
        lab = self.lab
        r = lab.node("N1")
        _sysctl_ns(r.netns, {"net.ipv4.ip_forward": "1", "net.ipv4.fib_multipath_hash_policy": "1",
                             "net.ipv4.conf.all.rp_filter": "0", "net.ipv4.conf.default.rp_filter": "0"})
        d = Path(r.dir) / "bird"
        d.mkdir(parents=True, exist_ok=True)
        peers = [(lab.node(n).ip, DIRECTOR_AS) for n in self.directors]
        (d / "bird.conf").write_text(router_conf(r.ip, ROUTER_AS, peers, bfd=self.bfd, hold=self.hold,
                                                 source=f"halb lab {lab.name}"))
        log = open(d / "bird.log", "ab")
        lab.popen("N1", ["bird", "-f", "-c", d / "bird.conf", "-s", d / "bird.ctl", "-P", d / "bird.pid"],
                  stdin=open("/dev/null", "rb"), stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + 10
        while not (d / "bird.ctl").exists():
            if time.monotonic() > deadline:
                raise LabError(f"the router's BIRD did not start (see {d / 'bird.log'})")
            time.sleep(0.05)

    def birdc(self, *words: str) -> str:
        ctl = Path(self.lab.node("N1").dir) / "bird" / "bird.ctl"
        return self.lab.run("N1", ["birdc", "-s", ctl, *words], timeout=10).stdout

    def nexthops(self) -> list[str]:
        """The directors (node names) the router's kernel sends VIP traffic to."""
        r = self.lab.run("N1", ["ip", "-j", "route", "show", f"{self.vip}/32"], timeout=10)
        try:
            routes = json.loads(r.stdout or "[]")
        except ValueError:
            return []
        by_ip = {self.lab.node(n).ip: n for n in self.directors}
        out = []
        for rt in routes:
            hops = rt.get("nexthops") or ([{"gateway": rt["gateway"]}] if rt.get("gateway") else [])
            out += [by_ip.get(h.get("gateway"), h.get("gateway")) for h in hops]
        return sorted(out)

    def wait_routes(self, n: int, timeout: float = 20, exact: bool = True) -> float:
        """Wait until the router has `n` next hops for the VIP; seconds it took."""
        t0 = time.monotonic()
        while True:
            hops = self.nexthops()
            if (len(hops) == n) if exact else (len(hops) >= n):
                return time.monotonic() - t0
            if time.monotonic() - t0 > timeout:
                raise LabError(f"the router has {len(hops)} next hop(s) for {self.vip} ({hops}), "
                               f"not {n}, after {timeout:g} s")
            time.sleep(0.02)

    # directors --------------------------------------------------------------------------
    def ldirectord_cf(self) -> str:
        reals = "".join(f"\treal={self.lab.node(r).ip}:80 gate 1\n" for r in self.reals)
        flags = f"\tschedflags={self.schedflags}\n" if self.schedflags else ""
        return (f"checkinterval={self.checkinterval}\ncheckcount=1\nchecktimeout=1\nquiescent=no\n"
                "cleanstop=yes\nsmtp=127.0.0.1\nemailalertstatus=none\n"
                f"virtual={self.vip}:80\n\tchecktype=connect\n{reals}\tprotocol=tcp\n"
                f"\tscheduler={self.scheduler}\n{flags}")

    def bgp_conf(self, node: str) -> str:
        n = self.lab.node(node)
        bfd = "off" if self.bfd is None else f"{self.bfd[0]}us {self.bfd[1]}"
        return (f"router_id={n.ip}\nlocal_as={DIRECTOR_AS}\nneighbor={self.lab.node('N1').ip} as {ROUTER_AS}\n"
                f"bfd={bfd}\nhold={self.hold}\nannounce={self.vip}\n"
                f"director={self.files(node)['ldirectord']}\ncheckinterval={self.bgp_interval}\n")

    def files(self, node: str) -> dict[str, Path]:
        d = Path(self.lab.node(node).dir)
        return {"ldirectord": d / "ldirectord.cf", "bgp": d / "bgp.conf", "bgplog": d / "bgp.log"}

    def start_director(self, node: str, bgp: bool = True) -> None:
        """nft engine + halb director + halb bgp on the node."""
        f = self.files(node)
        f["ldirectord"].write_text(self.ldirectord_cf())
        f["bgp"].write_text(self.bgp_conf(node))
        self.halb(node, "director", str(f["ldirectord"]), "start")
        if bgp:
            self.start_bgp(node)

    def start_bgp(self, node: str) -> None:
        f = self.files(node)
        log = open(f["bgplog"], "ab")
        self.lab.popen(node, [sys.executable, "-m", "halb", "--engine", "nft", "bgp", "run", "-c", f["bgp"]],
                       stdin=open("/dev/null", "rb"), stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + 15
        while self.halb(node, "bgp", "status", check=False).returncode != 0:
            if time.monotonic() > deadline:
                raise LabError(f"{node}: halb bgp did not come up (see {f['bgplog']})")
            time.sleep(0.1)

    def stop_bgp(self, node: str) -> None:
        self.halb(node, "bgp", "stop")

    def stop_director(self, node: str) -> None:
        """The graceful order: withdraw (halb bgp stop), then the director and the table."""
        if self.halb(node, "bgp", "status", check=False).returncode == 0:
            self.stop_bgp(node)
        self.halb(node, "director", str(self.files(node)["ldirectord"]), "stop", check=False)
        self.halb(node, "nft", "flush", check=False)

    def describe(self) -> dict:
        return {"topology": "ecmp", "vip": self.vip, "router": "N1", "directors": self.directors,
                "reals": self.reals, "clients": self.clients, "scheduler": self.scheduler,
                "schedflags": self.schedflags, "bfd": list(self.bfd) if self.bfd else None,
                "router_nexthops": self.nexthops()}
