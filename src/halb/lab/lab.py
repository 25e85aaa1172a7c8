"""The article's network in network namespaces (see halb.lab for the API)."""
from __future__ import annotations

import ipaddress
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field, asdict
from pathlib import Path

from halb.errors import HalbError
from halb.lab import netns as nsu
from halb.lab.webconf import apache_conf, nginx_conf, index_html
from halb.procs import pid_alive

NETNS_DIR = "/run/netns"
NAME_RE = re.compile(r"^[A-Za-z0-9]{1,12}$")


class LabError(HalbError):
    """The lab could not be built, reached or removed."""


def lab_root() -> Path:
    """Directory holding every lab's state dir (HALB_LAB_DIR, /run/halb-lab)."""
    return Path(os.environ.get("HALB_LAB_DIR") or "/run/halb-lab")


@dataclass
class Node:
    """One machine of the lab: a real server (N1, N2...) or a client."""

    name: str            # "N1", "client0": also its hostname (uname -n)
    kind: str            # "node" or "client"
    index: int           # 1-based for nodes, 0-based for clients
    ip: str              # its address on the LAN (RIP for nodes)
    netns: str           # network namespace name (ip netns)
    uts: str             # file the UTS namespace is bound to
    iface: str           # its LAN interface (inside its namespace)
    port: str            # the switch-side end of its cable
    dir: str             # its private directory (web roots, logs)
    mac: str = ""
    # the gateway node of a NAT lab (Lab(gateway="N1")) has a second leg on
    # the public LAN, where the clients and the VIP are
    pub_ip: str = ""
    pub_iface: str = ""
    pub_port: str = ""
    pub_mac: str = ""

    @property
    def rip(self) -> str:
        return self.ip

    @property
    def netns_path(self) -> str:
        return f"{NETNS_DIR}/{self.netns}"

    @property
    def hostname(self) -> str:
        return self.name


@dataclass
class LabState:
    name: str
    dir: str
    subnet: str
    vip: str
    switch_ns: str
    bridge: str
    nodes: list = field(default_factory=list)
    creator_pid: int = 0
    creator_start: float = 0.0   # the creator's start time (pid reuse guard)
    persistent: bool = False     # built by `halb lab up`: outlives its creator
    created: float = 0.0
    complete: bool = False
    gateway: str = ""            # NAT lab: the node routing between the LANs
    public_subnet: str = ""
    public_bridge: str = ""

    @classmethod
    def load(cls, path) -> "LabState":
        try:
            d = json.loads(Path(path).read_text())
            d["nodes"] = [Node(**n) for n in d.get("nodes", [])]
            return cls(**d)
        except FileNotFoundError:
            raise LabError(f"{path}: no such lab state file") from None
        except (ValueError, TypeError) as e:
            raise LabError(f"{path}: unreadable lab state ({e})") from None

    def save(self, path) -> None:
        d = asdict(self)
        tmp = Path(str(path) + ".tmp")
        tmp.write_text(json.dumps(d, indent=2) + "\n")
        os.replace(tmp, path)


def _ip(args: list[str], ns: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    argv = ["ip"] + (["-n", ns] if ns else []) + args
    r = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if check and r.returncode != 0:
        raise LabError(f"'{' '.join(argv)}' failed: {r.stderr.strip() or r.returncode}")
    return r


def _ip_batch(ns: str, lines: list[str]) -> None:
    r = subprocess.run(["ip", "-n", ns, "-batch", "-"], input="\n".join(lines) + "\n",
                       capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        raise LabError(f"ip -n {ns} -batch failed: {r.stderr.strip()}")


def _sysctl_ns(ns: str, settings: dict[str, str]) -> None:
    """Write sysctls inside namespace `ns` (never in the root namespace)."""
    script = "".join(f"echo {v} > /proc/sys/{k.replace('.', '/')} 2>/dev/null;" for k, v in settings.items())
    subprocess.run(["ip", "netns", "exec", ns, "sh", "-c", script + " true"],
                   capture_output=True, timeout=30)


def destroy(state: LabState, grace: float = 2.0) -> list[str]:
    """Remove every process, namespace, bind file and directory of a lab.

    Works from the state file alone (also after the creator was killed), is
    idempotent and tolerant of half-built labs. Returns what was removed."""
    removed: list[str] = []
    all_ns = [n.netns for n in state.nodes] + [state.switch_ns]
    killed: set[int] = set()
    # a process may still be forking (a daemon starting when its creator
    # died): sweep until a pass finds nobody left
    for _ in range(10):
        pids: set[int] = set()
        for n in state.nodes:
            pids.update(nsu.pids_in(f"{NETNS_DIR}/{n.netns}", "net"))
            pids.update(nsu.pids_in(n.uts, "uts"))
        pids.update(nsu.pids_in(f"{NETNS_DIR}/{state.switch_ns}", "net"))
        pids = {p for p in pids if pid_alive(p)}
        if not pids:
            break
        nsu.kill_pids(sorted(pids), grace=grace)
        killed |= pids
        time.sleep(0.05)
    if killed:
        removed.append(f"{len(killed)} processes")
    for n in state.nodes:
        if os.path.exists(n.uts):
            subprocess.run(["umount", n.uts], capture_output=True)
            if os.path.ismount(n.uts):
                subprocess.run(["umount", "-l", n.uts], capture_output=True)
    for ns in all_ns:
        if os.path.exists(f"{NETNS_DIR}/{ns}"):
            r = _ip(["netns", "del", ns], check=False)
            if r.returncode == 0:
                removed.append(f"netns {ns}")
    if state.dir and os.path.isdir(state.dir) and Path(state.dir).name == state.name:
        shutil.rmtree(state.dir, ignore_errors=True)
        removed.append(f"dir {state.dir}")
    return removed


def is_stale(state: LabState) -> bool:
    """A lab built from Python whose creating process is gone (a crashed or
    killed test run). Labs from `halb lab up` are never stale."""
    if state.persistent or not state.creator_pid:
        return False
    import psutil
    try:
        proc = psutil.Process(state.creator_pid)
        return bool(state.creator_start) and abs(proc.create_time() - state.creator_start) > 1
    except psutil.NoSuchProcess:
        return True


def list_labs(root: Path | None = None) -> list[LabState]:
    root = root or lab_root()
    out = []
    if root.is_dir():
        for d in sorted(root.iterdir()):
            f = d / "state.json"
            if f.is_file():
                try:
                    out.append(LabState.load(f))
                except LabError:
                    continue
    return out


class Lab:
    """The article's cluster on one machine. See the halb.lab docstring."""

    def __init__(self, nodes: int = 2, clients: int = 1, apache: bool = True,
                 name: str | None = None, nginx: bool = False,
                 state_dir: str | os.PathLike | None = None, subnet: str | None = None,
                 nginx_port: int = 8080, gateway: str | None = None, persistent: bool = False):
        if os.geteuid() != 0:
            raise LabError("the lab needs root (network namespaces)")
        if not 1 <= nodes <= 50 or not 0 <= clients <= 50:
            raise LabError("the lab takes 1..50 nodes and 0..50 clients")
        if name is None:
            name = "%06x" % random.getrandbits(24)
        if not NAME_RE.match(name):
            raise LabError(f"lab name '{name}' must be 1-12 letters or digits")
        self.name = name
        self.want_apache, self.want_nginx, self.nginx_port = apache, nginx, nginx_port
        base = Path(state_dir) if state_dir else lab_root() / name
        self.dir = base
        if subnet is None:
            r = random.Random()
            subnet = f"10.{r.randint(64, 250)}.{r.randint(0, 255)}.0/24"
        try:
            net = ipaddress.ip_network(subnet, strict=True)
        except ValueError as e:
            raise LabError(f"bad lab subnet: {e}") from None
        if net.prefixlen > 24 or net.version != 4:
            raise LabError(f"lab subnet {subnet} must be an IPv4 /24 or larger")
        self.net = net
        self.gateway = gateway or ""
        self.pub_net = None
        if gateway:
            if not re.match(r"^N\d+$", gateway) or not 1 <= int(gateway[1:]) <= nodes:
                raise LabError(f"gateway '{gateway}' is not one of the lab's nodes N1..N{nodes}")
            while True:
                pub = ipaddress.ip_network(f"10.{random.randint(64, 250)}.{random.randint(0, 255)}.0/24")
                if not pub.overlaps(net):
                    break
            self.pub_net = pub
        self.vip = self.addr(10, public=bool(gateway))
        self._popens: list[subprocess.Popen] = []
        nodes_l = []
        for i in range(1, nodes + 1):
            nodes_l.append(self._mk_node(f"N{i}", "node", i, self.addr(i), f"n{i}"))
        for i in range(clients):
            nodes_l.append(self._mk_node(f"client{i}", "client", i,
                                         self.addr(100 + i, public=bool(gateway)), f"c{i}"))
        if gateway:
            g = next(n for n in nodes_l if n.name == gateway)
            short = f"n{g.index}"
            g.pub_ip, g.pub_iface, g.pub_port = self.addr(1, public=True), f"f{self.sid}{short}", f"q{self.sid}{short}"
        self.state = LabState(name=name, dir=str(base), subnet=str(net), vip=self.vip,
                              switch_ns=f"halb-{name}-sw", bridge=f"br{self.sid}",
                              nodes=nodes_l, creator_pid=os.getpid(), gateway=self.gateway,
                              public_subnet=str(self.pub_net) if gateway else "",
                              public_bridge=f"pb{self.sid}" if gateway else "",
                              persistent=persistent)
        self._up = False

    # ---- addressing ------------------------------------------------------
    def addr(self, host: int, public: bool = False) -> str:
        """The subnet's address number `host` (1 = RIP1, 10 = VIP...);
        public=True: on the public LAN of a NAT lab."""
        net = self.pub_net if public else self.net
        if net is None:
            raise LabError("this lab has no public LAN (build it with gateway='N1')")
        return str(net.network_address + host)

    @property
    def sid(self) -> str:
        """Short id used in interface and bridge names."""
        return self.name[-6:].lower()

    @property
    def subnet(self) -> str:
        return str(self.net)

    @property
    def prefixlen(self) -> int:
        return self.net.prefixlen

    @property
    def public_subnet(self) -> str:
        return str(self.pub_net) if self.pub_net else ""

    def _mk_node(self, name, kind, index, ip, short) -> Node:
        return Node(name=name, kind=kind, index=index, ip=ip,
                    netns=f"halb-{self.name}-{name}",
                    uts=str(self.dir / name / "uts"),
                    iface=f"e{self.sid}{short}", port=f"s{self.sid}{short}",
                    dir=str(self.dir / name))

    @property
    def nodes(self) -> list[Node]:
        return [n for n in self.state.nodes if n.kind == "node"]

    @property
    def clients(self) -> list[Node]:
        return [n for n in self.state.nodes if n.kind == "client"]

    @property
    def switch_ns(self) -> str:
        return self.state.switch_ns

    @property
    def bridge(self) -> str:
        return self.state.bridge

    def node(self, name: str | int) -> Node:
        """A node by name ("N1", "client0") or by number (1 -> N1)."""
        if isinstance(name, int):
            name = f"N{name}"
        for n in self.state.nodes:
            if n.name == name:
                return n
        raise LabError(f"lab {self.name} has no node '{name}'")

    def client(self, i: int = 0) -> Node:
        return self.node(f"client{i}")

    # ---- life cycle ------------------------------------------------------
    def __enter__(self) -> "Lab":
        return self.build()

    def build(self) -> "Lab":
        """up(); if that fails, down() before the error goes on: nothing
        half-built is left behind."""
        try:
            self.up()
        except BaseException:
            self.down()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.down()

    @property
    def state_file(self) -> Path:
        return self.dir / "state.json"

    def up(self) -> "Lab":
        """Build the switch, the nodes, their cables and web servers."""
        st = self.state
        if self.dir.exists() and self.state_file.exists():
            raise LabError(f"lab {self.name} already exists ({self.state_file}); run 'halb lab down --name {self.name}'")
        for ns in [st.switch_ns] + [n.netns for n in st.nodes]:
            if os.path.exists(f"{NETNS_DIR}/{ns}"):
                raise LabError(f"network namespace {ns} already exists")
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o755)
        if self.dir.parent == lab_root():
            os.chmod(self.dir.parent, 0o755)
        st.created = time.time()
        try:
            import psutil
            st.creator_start = psutil.Process(st.creator_pid).create_time()
        except Exception:
            pass
        st.save(self.state_file)          # intent first: down works after any crash
        self._up = True
        # the switch: a bridge in its own namespace, no uplink, no route out
        _ip(["netns", "add", st.switch_ns])
        # a switch forwards frames: no IP firewalling of bridged traffic
        # (br_netfilter, when the kernel has it, would pass every frame
        # through the IP hooks: a per-packet cost no real switch has)
        _sysctl_ns(st.switch_ns, {"net.ipv6.conf.all.disable_ipv6": "1",
                                  "net.ipv6.conf.default.disable_ipv6": "1",
                                  "net.bridge.bridge-nf-call-iptables": "0",
                                  "net.bridge.bridge-nf-call-ip6tables": "0",
                                  "net.bridge.bridge-nf-call-arptables": "0"})
        sw = ["link set lo up",
              f"link add {st.bridge} type bridge stp_state 0 forward_delay 0 mcast_snooping 0",
              f"link set {st.bridge} up"]
        if st.public_bridge:
            sw += [f"link add {st.public_bridge} type bridge stp_state 0 forward_delay 0 mcast_snooping 0",
                   f"link set {st.public_bridge} up"]
        _ip_batch(st.switch_ns, sw)
        for n in st.nodes:
            Path(n.dir).mkdir(parents=True, exist_ok=True)
            os.chmod(n.dir, 0o755)
            _ip(["netns", "add", n.netns])
            # the node's own hostname: a UTS namespace bound to a file
            Path(n.uts).touch()
            r = subprocess.run(["unshare", f"--uts={n.uts}", "hostname", n.name],
                               capture_output=True, text=True, timeout=30)
            if r.returncode != 0:
                raise LabError(f"cannot create the UTS namespace of {n.name}: {r.stderr.strip()}")
            _sysctl_ns(n.netns, {"net.ipv6.conf.all.disable_ipv6": "1",
                                 "net.ipv6.conf.default.disable_ipv6": "1"})
            on_public = n.kind == "client" and bool(st.gateway)
            _ip_batch(st.switch_ns, [
                f"link add {n.port} type veth peer name {n.iface}",
                f"link set {n.iface} netns {n.netns}",
                f"link set {n.port} master {st.public_bridge if on_public else st.bridge}",
                f"link set {n.port} up"])
            _ip_batch(n.netns, [
                "link set lo up",
                f"addr add {n.ip}/{self.pub_net.prefixlen if on_public else self.prefixlen} dev {n.iface}",
                f"link set {n.iface} up"])
            n.mac = self._read_mac(n)
            if n.pub_iface:
                # the gateway's public leg; it forwards between the two LANs
                _ip_batch(st.switch_ns, [
                    f"link add {n.pub_port} type veth peer name {n.pub_iface}",
                    f"link set {n.pub_iface} netns {n.netns}",
                    f"link set {n.pub_port} master {st.public_bridge}",
                    f"link set {n.pub_port} up"])
                _ip_batch(n.netns, [
                    f"addr add {n.pub_ip}/{self.pub_net.prefixlen} dev {n.pub_iface}",
                    f"link set {n.pub_iface} up"])
                _sysctl_ns(n.netns, {"net.ipv4.ip_forward": "1"})
                n.pub_mac = self._read_mac(n, n.pub_iface)
        if st.gateway:
            # the real servers answer through the gateway (LVS-NAT's topology)
            gw = self.node(st.gateway)
            for n in self.nodes:
                if n is not gw:
                    _ip(["route", "add", "default", "via", gw.ip, "dev", n.iface], ns=n.netns)
        st.save(self.state_file)
        if self.want_apache:
            for n in self.nodes:
                self.apache_start(n.name, wait=False)
        if self.want_nginx:
            for n in self.nodes:
                self.nginx_start(n.name, wait=False)
        if self.want_apache:
            for n in self.nodes:
                self._wait_apache(n)
        if self.want_nginx:
            for n in self.nodes:
                self._wait_port(n, self.nginx_port)
        st.complete = True
        st.save(self.state_file)
        return self

    def down(self) -> list[str]:
        """Remove everything this lab created (idempotent)."""
        if not self._up:
            return []
        for p in self._popens:
            if p.poll() is None:
                try:
                    p.kill()
                except OSError:
                    pass
        removed = destroy(self.state)
        for p in self._popens:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        self._popens.clear()
        self._up = False
        return removed

    @classmethod
    def attach(cls, name: str, root: Path | None = None) -> "Lab":
        """A Lab object for an existing lab (built by `halb lab up`)."""
        st = LabState.load((root or lab_root()) / name / "state.json")
        lab = cls.__new__(cls)
        lab.name = st.name
        lab.state = st
        lab.dir = Path(st.dir)
        lab.net = ipaddress.ip_network(st.subnet)
        lab.gateway = st.gateway
        lab.pub_net = ipaddress.ip_network(st.public_subnet) if st.public_subnet else None
        lab.vip = st.vip
        lab.want_apache, lab.want_nginx, lab.nginx_port = True, False, 8080
        lab._popens = []
        lab._up = True
        return lab

    # ---- running things in nodes ------------------------------------------
    def _read_mac(self, n: Node, iface: str | None = None) -> str:
        r = _ip(["-j", "link", "show", "dev", iface or n.iface], ns=n.netns)
        return json.loads(r.stdout)[0]["address"]

    def nsenter_prefix(self, node: str | Node) -> list[str]:
        """argv prefix that runs a command inside the node (net + uts)."""
        n = node if isinstance(node, Node) else self.node(node)
        return ["nsenter", f"--net={n.netns_path}", f"--uts={n.uts}", "--"]

    def node_run_dir(self, node) -> Path:
        """The node's halb run dir (HALB_RUN_DIR of what runs in the node)."""
        return Path(self.node(self._name(node)).dir) / "halb"

    def node_env(self, node, env: dict | None = None) -> dict:
        """Environment for a process in the node: `env` (default: ours) plus
        HALB_NODE=<node> and HALB_RUN_DIR=<lab dir>/<node>/halb unless set, so
        halb tools of several nodes and several labs never share state."""
        n = self.node(self._name(node))
        e = dict(os.environ if env is None else env)
        e.setdefault("HALB_NODE", n.name)
        e.setdefault("HALB_RUN_DIR", str(self.node_run_dir(n)))
        return e

    def run(self, node, argv, check: bool = False, timeout: float = 30, **kw) -> subprocess.CompletedProcess:
        """Run argv inside the node; output captured as text by default."""
        kw["env"] = self.node_env(node, kw.get("env"))
        kw.setdefault("capture_output", not ("stdout" in kw or "stderr" in kw))
        kw.setdefault("text", True)
        argv = [str(a) for a in argv]
        try:
            return subprocess.run(self.nsenter_prefix(node) + argv, check=check, timeout=timeout, **kw)
        except subprocess.CalledProcessError as e:
            err = (e.stderr or "").strip() if isinstance(e.stderr, str) else ""
            raise LabError(f"{self._name(node)}: '{' '.join(argv)}' exited {e.returncode}"
                           + (f": {err.splitlines()[-1]}" if err else "")) from None

    def popen(self, node, argv, **kw) -> subprocess.Popen:
        """Start a long-running process in the node; it is killed at down()."""
        kw["env"] = self.node_env(node, kw.get("env"))
        p = subprocess.Popen(self.nsenter_prefix(node) + [str(a) for a in argv], **kw)
        self._popens.append(p)
        return p

    def pids(self, node) -> list[int]:
        """Every process living in the node (its network namespace)."""
        n = node if isinstance(node, Node) else self.node(node)
        return sorted(set(nsu.pids_in(n.netns_path, "net")) | set(nsu.pids_in(n.uts, "uts")))

    def socket(self, node, family=socket.AF_INET, type=socket.SOCK_STREAM) -> socket.socket:
        """A socket created inside the node's network namespace."""
        n = node if isinstance(node, Node) else self.node(node)
        return nsu.socket_in(n.netns_path, family, type)

    def _name(self, node) -> str:
        return node.name if isinstance(node, Node) else str(node)

    # ---- web servers -----------------------------------------------------
    def _web_root(self, n: Node) -> Path:
        root = self._www(n)
        for d in (root, root / "htdocs", root / "logs", root / "run"):
            d.mkdir(parents=True, exist_ok=True)
            os.chmod(d, 0o755)
        (root / "htdocs" / "testcluster.html").write_text(f"{n.name}\n")
        (root / "htdocs" / "index.html").write_text(index_html(n.name))
        return root

    def _www(self, node) -> Path:
        """The node's web root (configs, htdocs, logs, pid files)."""
        return Path(self.node(self._name(node)).dir) / "www"

    def _server_pid(self, node, pid_file: str) -> int | None:
        """The live process named by the node's www/run/<pid_file>, or None."""
        try:
            pid = int((self._www(node) / "run" / pid_file).read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if pid_alive(pid) else None

    def _server_stop(self, node, pid: int | None, timeout: float) -> None:
        """SIGTERM a web server's main process and wait for it and its
        children to be gone (SIGKILL after `timeout`)."""
        if pid is None:
            return
        kids = [p for p in self.pids(node) if _ppid(p) == pid]
        os.kill(pid, signal.SIGTERM)
        if not nsu.wait_gone([pid] + kids, timeout):
            nsu.kill_pids([pid] + kids, grace=0)

    def apache_conf_path(self, node) -> Path:
        return self._www(node) / "httpd.conf"

    def apache_log(self, node, which: str = "access_log") -> Path:
        return self._www(node) / "logs" / which

    def apache_pid(self, node) -> int | None:
        return self._server_pid(node, "httpd.pid")

    def apache_running(self, node) -> bool:
        return self.apache_pid(node) is not None

    def apache_start(self, node, wait: bool = True) -> None:
        """Start Apache on the node (no-op when already running)."""
        n = self.node(self._name(node))
        if self.apache_running(n.name):
            return
        root = self._web_root(n)
        conf = root / "httpd.conf"
        conf.write_text(apache_conf(node=n.name, root=str(root)))
        try:
            (root / "run" / "httpd.pid").unlink()
        except FileNotFoundError:
            pass
        r = self.run(n, ["apache2", "-f", str(conf), "-k", "start"], timeout=30)
        if r.returncode != 0:
            raise LabError(f"{n.name}: apache2 failed to start: {(r.stderr or r.stdout).strip()}")
        if wait:
            self._wait_apache(n)

    def _wait_apache(self, n: Node, timeout: float = 30) -> None:
        """Wait until Apache listens and its pid file names a live process."""
        self._wait_port(n, 80, timeout)
        deadline = time.monotonic() + timeout
        while self.apache_pid(n.name) is None:
            if time.monotonic() > deadline:
                raise LabError(f"{n.name}: apache2 wrote no pid file within {timeout:g}s")
            time.sleep(0.02)

    def apache_stop(self, node, timeout: float = 10) -> None:
        """Stop Apache on the node and wait until it is gone."""
        n = self.node(self._name(node))
        self._server_stop(n, self.apache_pid(n), timeout)

    def nginx_start(self, node, wait: bool = True) -> None:
        n = self.node(self._name(node))
        if self.nginx_pid(n.name):
            return
        root = self._web_root(n)
        conf = root / "nginx.conf"
        conf.write_text(nginx_conf(node=n.name, root=str(root), listen=str(self.nginx_port)))
        r = self.run(n, ["nginx", "-c", str(conf), "-p", str(root), "-e", str(root / "logs" / "nginx_error.log")],
                     timeout=30)
        if r.returncode != 0:
            raise LabError(f"{n.name}: nginx failed to start: {(r.stderr or r.stdout).strip()}")
        if wait:
            self._wait_port(n, self.nginx_port)
            deadline = time.monotonic() + 20
            while self.nginx_pid(n.name) is None and time.monotonic() < deadline:
                time.sleep(0.02)

    def nginx_pid(self, node) -> int | None:
        return self._server_pid(node, "nginx.pid")

    def nginx_stop(self, node, timeout: float = 10) -> None:
        n = self.node(self._name(node))
        self._server_stop(n, self.nginx_pid(n), timeout)

    def _wait_port(self, n: Node, port: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            s = self.socket(n)
            s.settimeout(1)
            try:
                s.connect((n.ip, port))
                return
            except OSError as e:
                last = e
            finally:
                s.close()
            time.sleep(0.05)
        raise LabError(f"{n.name}: nothing listens on {n.ip}:{port} after {timeout:g}s ({last})")

    # ---- faults ----------------------------------------------------------
    def cut_link(self, node) -> None:
        """Unplug the node's cable (its switch port goes down)."""
        n = self.node(self._name(node))
        _ip(["link", "set", n.port, "down"], ns=self.switch_ns)

    def restore_link(self, node) -> None:
        n = self.node(self._name(node))
        _ip(["link", "set", n.port, "up"], ns=self.switch_ns)

    def freeze(self, node) -> list[int]:
        """SIGSTOP every process of the node (a hung machine)."""
        pids = self.pids(node)
        nsu.signal_pids(pids, signal.SIGSTOP)
        return pids

    def thaw(self, node) -> list[int]:
        pids = self.pids(node)
        nsu.signal_pids(pids, signal.SIGCONT)
        return pids

    def kill_node(self, node) -> list[int]:
        """SIGKILL every process of the node (a crashed machine)."""
        pids = self.pids(node)
        nsu.signal_pids(pids, signal.SIGKILL)
        nsu.wait_gone(pids, 5)
        return pids

    # ---- XDP -------------------------------------------------------------
    def xdp_tx_ready(self, node) -> None:
        """Let a node send frames back out of its LAN interface with XDP_TX
        (the xdp engine): on veth the other end must run an XDP program to
        receive them (its switch port gets one that passes every frame), and
        a frame sent that way keeps no checksum offload, so the clients'
        interfaces compute their checksums themselves (ethtool -K tx off)."""
        import sys
        n = self.node(self._name(node))
        r = subprocess.run(["nsenter", f"--net={NETNS_DIR}/{self.switch_ns}", "--", sys.executable,
                            "-m", "halb.xdp.passprog", "attach", n.port], capture_output=True, text=True,
                           timeout=30)
        if r.returncode != 0:
            raise LabError(f"cannot attach XDP to the switch port of {n.name}: {r.stderr.strip()}")
        for c in self.clients:
            self.run(c, ["ethtool", "-K", c.iface, "tx", "off"], check=True)

    # ---- clients ---------------------------------------------------------
    def http_get(self, node, url: str, timeout: float = 5) -> tuple[int, str]:
        """GET `url` from inside `node` (HTTP/1.0, new connection each time).

        The host may be "VIP" (the lab's VIP) or a node name. Returns
        (status, body); raises LabError on connection failure or timeout."""
        m = re.match(r"^http://([^/:]+)(?::(\d+))?(/.*)?$", url)
        if not m:
            raise LabError(f"unsupported URL '{url}' (http://HOST[:PORT]/PATH)")
        host, port, path = m.group(1), int(m.group(2) or 80), m.group(3) or "/"
        if host == "VIP":
            host = self.vip
        elif any(n.name == host for n in self.state.nodes):
            host = self.node(host).ip
        s = self.socket(node)
        s.settimeout(timeout)
        deadline = time.monotonic() + timeout
        try:
            s.connect((host, port))
            s.sendall(f"GET {path} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: halb-lab\r\n\r\n".encode())
            chunks = []
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise socket.timeout("timed out")
                s.settimeout(left)
                b = s.recv(65536)
                if not b:
                    break
                chunks.append(b)
        except OSError as e:
            raise LabError(f"GET {url} from {self._name(node)}: {e or type(e).__name__}") from None
        finally:
            s.close()
        data = b"".join(chunks)
        head, _, body = data.partition(b"\r\n\r\n")
        try:
            status = int(head.split(b" ", 2)[1])
        except (IndexError, ValueError):
            raise LabError(f"GET {url} from {self._name(node)}: bad HTTP response {head[:60]!r}") from None
        return status, body.decode("utf-8", "replace")

    def curl(self, node, url: str, timeout: float = 2, args=()) -> subprocess.CompletedProcess:
        """Run the real curl inside `node` (as the article's reader would)."""
        url = url.replace("//VIP", f"//{self.vip}")
        return self.run(node, ["curl", "-sS", "-m", str(timeout), *args, url], timeout=timeout + 10)

    def describe(self) -> dict:
        """A JSON-friendly summary (used by `halb lab status`)."""
        out = {"name": self.name, "dir": str(self.dir), "subnet": self.subnet, "vip": self.vip,
               "switch": self.switch_ns, "bridge": self.bridge, "nodes": []}
        if self.gateway:
            out.update(gateway=self.gateway, public_subnet=self.public_subnet,
                       public_bridge=self.state.public_bridge)
        for n in self.state.nodes:
            up = os.path.exists(n.netns_path)
            out["nodes"].append({
                "name": n.name, "kind": n.kind, "ip": n.ip, "netns": n.netns, "iface": n.iface,
                "mac": n.mac, "exists": up,
                **({"pub_ip": n.pub_ip, "pub_iface": n.pub_iface, "pub_mac": n.pub_mac} if n.pub_iface else {}),
                "link": self._link_state(n) if up else "absent",
                "apache": self.apache_pid(n.name) if n.kind == "node" else None,
                "pids": self.pids(n) if up else []})
        return out

    def _link_state(self, n: Node) -> str:
        r = _ip(["-j", "link", "show", "dev", n.port], ns=self.switch_ns, check=False)
        try:
            return "up" if "UP" in json.loads(r.stdout)[0]["flags"] else "cut"
        except (ValueError, IndexError, KeyError):
            return "absent"


def _ppid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return int(fh.read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None
