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
                 checkinterval: float = 0.5, bgp_interval: float = 0.1, sync: bool = False):
        if not 1 <= directors <= 16 or not 1 <= reals <= 32:
            raise LabError("the ecmp lab takes 1..16 directors and 1..32 real servers")
        from halb.model import SCHEDULERS

        if scheduler not in SCHEDULERS:
            raise LabError(f"unknown scheduler '{scheduler}' (one of: {', '.join(SCHEDULERS)})")
        self.n_dir, self.n_real = directors, reals
        self.scheduler, self.schedflags = scheduler, schedflags
        self.bfd, self.hold = bfd, hold
        self.checkinterval, self.bgp_interval = checkinterval, bgp_interval
        self.start_directors = start_directors
        self.sync = sync
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
            "checkinterval": self.checkinterval, "bgp_interval": self.bgp_interval, "sync": self.sync},
            indent=2) + "\n")

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
        self.sync = d.get("sync", False)
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
        # real-time priority, as a router's BFD has its own CPU: on a busy
        # machine a 60 ms detection time must not fire because BIRD waited
        lab.popen("N1", ["chrt", "-f", "10", "bird", "-f", "-c", d / "bird.conf", "-s", d / "bird.ctl", "-P", d / "bird.pid"],
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
        if self.sync:
            self.start_sync(node)
        if bgp:
            self.start_bgp(node)

    def sync_key(self) -> Path:
        key = self.lab.dir / "sync.key"
        if not key.exists():
            import secrets

            key.write_text(secrets.token_hex(32) + "\n")
            key.chmod(0o600)
        return key

    def start_sync(self, node: str) -> None:
        """Multi-master connection sync: every director runs a master (sends
        its flows) and a backup (adds the others'), signed with the lab's key,
        so a flow the router moves is found in the new director's table."""
        iface = self.lab.node(node).iface
        for role in ("master", "backup"):
            self.halb(node, "ipvsadm", "--start-daemon", role, "--mcast-interface", iface, "--syncid", "17",
                      "--sync-key-file", str(self.sync_key()))

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
        if self.sync:
            for role in ("master", "backup"):
                self.halb(node, "ipvsadm", "--stop-daemon", role, check=False)
        self.halb(node, "nft", "flush", check=False)

    def describe(self) -> dict:
        return {"topology": "ecmp", "vip": self.vip, "router": "N1", "directors": self.directors,
                "reals": self.reals, "clients": self.clients, "scheduler": self.scheduler, "sync": self.sync,
                "schedflags": self.schedflags, "bfd": list(self.bfd) if self.bfd else None,
                "router_nexthops": self.nexthops()}


class FlowLoad:
    """What users of the VIP would notice: `flows` long-lived keep-alive HTTP
    connections from a client (a request every `period` s on each, the
    answering real server recorded), and a steady stream of new connections
    (`new_rate` a second, one request each). A flow is broken when a request
    fails (reset, close, no answer within `timeout`) or is answered by
    another real server than before; a new connection failed when it gets no
    answer. Counters are read between `mark()`s (one per event)."""

    def __init__(self, lab: Lab, client: str, vip: str, flows: int = 64, period: float = 0.1,
                 new_rate: float = 20.0, timeout: float = 3.0, path: str = "/testcluster.html"):
        import threading

        self.lab, self.client, self.vip = lab, client, vip
        self.n, self.period, self.new_rate, self.timeout = flows, period, new_rate, timeout
        self.req = f"GET {path} HTTP/1.1\r\nHost: {vip}\r\nUser-Agent: halb-ecmp\r\n\r\n".encode()
        self.path = path
        self.lock = threading.Lock()
        self.stop_ev = threading.Event()
        self.flows: list[dict] = []
        self.broken: list[dict] = []     # {"flow", "server", "why", "t"}
        self.new_ok = 0
        self.new_failed: list[tuple[float, str]] = []
        self.requests = 0
        self.threads: list = []

    # a flow ----------------------------------------------------------------------------
    def _open(self, i: int) -> dict:
        s = self.lab.socket(self.client)
        s.settimeout(self.timeout)
        s.connect((self.vip, 80))
        f = {"i": i, "sock": s, "server": None, "buf": b"", "alive": True}
        f["server"] = self._ask(f)
        return f

    def _ask(self, f: dict) -> str:
        """One request on the flow's connection; the answering server's name."""
        s = f["sock"]
        s.sendall(self.req)
        buf = f["buf"]
        while True:
            head, sep, rest = buf.partition(b"\r\n\r\n")
            if sep:
                length = 0
                for ln in head.split(b"\r\n")[1:]:
                    k, _, v = ln.partition(b":")
                    if k.strip().lower() == b"content-length":
                        length = int(v)
                if len(rest) >= length:
                    f["buf"] = rest[length:]
                    if not head.startswith(b"HTTP/1.1 200"):
                        raise OSError(f"status {head.split(b' ', 2)[1:2]}")
                    return rest[:length].decode().strip()
            chunk = s.recv(65536)
            if not chunk:
                raise OSError("connection closed by the other end")
            buf += chunk

    def _flow_loop(self, flows: list[dict]) -> None:
        import time as _t

        while not self.stop_ev.is_set():
            t0 = _t.monotonic()
            for f in flows:
                if not f["alive"] or self.stop_ev.is_set():
                    continue
                try:
                    got = self._ask(f)
                    with self.lock:
                        self.requests += 1
                    if got != f["server"]:
                        raise OSError(f"answered by {got} instead of {f['server']}")
                except (OSError, ValueError) as e:
                    f["alive"] = False
                    with self.lock:
                        self.broken.append({"flow": f["i"], "server": f["server"], "why": str(e) or type(e).__name__,
                                            "t": _t.monotonic()})
                    f["sock"].close()
            left = self.period - (_t.monotonic() - t0)
            if left > 0:
                self.stop_ev.wait(left)

    def _new_loop(self) -> None:
        import time as _t

        from halb.lab.lab import LabError as _LE

        gap = 1.0 / self.new_rate
        while not self.stop_ev.is_set():
            t0 = _t.monotonic()
            try:
                status, body = self.lab.http_get(self.client, f"http://{self.vip}{self.path}", timeout=self.timeout)
                if status != 200:
                    raise _LE(f"status {status}")
                with self.lock:
                    self.new_ok += 1
            except _LE as e:
                with self.lock:
                    self.new_failed.append((t0, str(e)))
            left = gap - (_t.monotonic() - t0)
            if left > 0:
                self.stop_ev.wait(left)

    # control ---------------------------------------------------------------------------
    def start(self, threads: int = 4) -> "FlowLoad":
        import threading

        self.flows = [self._open(i) for i in range(self.n)]
        per = (self.n + threads - 1) // threads
        for k in range(threads):
            part = self.flows[k * per:(k + 1) * per]
            if part:
                t = threading.Thread(target=self._flow_loop, args=(part,), daemon=True, name=f"flows{k}")
                t.start()
                self.threads.append(t)
        if self.new_rate > 0:
            t = threading.Thread(target=self._new_loop, daemon=True, name="newconns")
            t.start()
            self.threads.append(t)
        return self

    def stop(self) -> None:
        self.stop_ev.set()
        for t in self.threads:
            t.join(self.timeout + 2)
        for f in self.flows:
            try:
                f["sock"].close()
            except OSError:
                pass

    def mark(self) -> dict:
        with self.lock:
            return {"broken": len(self.broken), "new_ok": self.new_ok, "new_failed": len(self.new_failed),
                    "requests": self.requests}

    def since(self, m: dict) -> dict:
        """What happened since mark `m`: broken flows (list), new connections ok / failed."""
        with self.lock:
            return {"broken": list(self.broken[m["broken"]:]), "new_ok": self.new_ok - m["new_ok"],
                    "new_failed": list(self.new_failed[m["new_failed"]:]), "requests": self.requests - m["requests"]}

    def servers(self) -> dict[str, int]:
        """Live flows per real server."""
        out: dict[str, int] = {}
        for f in self.flows:
            if f["alive"]:
                out[f["server"]] = out.get(f["server"], 0) + 1
        return out

    def alive(self) -> int:
        return sum(1 for f in self.flows if f["alive"])


class RouteWatch:
    """`ip monitor route` in the router: when the VIP's route changed, on our clock."""

    def __init__(self, ecmp: "EcmpLab"):
        import subprocess
        import threading

        self.ecmp = ecmp
        self.events: list[tuple[float, str]] = []
        self.p = ecmp.lab.popen("N1", ["ip", "monitor", "route"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                text=True, bufsize=1)
        self.t = threading.Thread(target=self._read, daemon=True)
        self.t.start()
        time.sleep(0.2)

    def _read(self) -> None:
        for line in self.p.stdout:
            if self.ecmp.vip in line:
                self.events.append((time.monotonic(), line.strip()))

    def first_after(self, t0: float, timeout: float = 10) -> float | None:
        """Seconds from t0 to the first change of the VIP's route after t0."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for t, _ in list(self.events):
                if t >= t0:
                    return t - t0
            time.sleep(0.005)
        return None

    def close(self) -> None:
        self.p.terminate()
        try:
            self.p.wait(3)
        except Exception:
            self.p.kill()
