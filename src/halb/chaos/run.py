"""`halb chaos`'s I/O shell: the article's cluster in the lab, traffic all
the time, the faults of halb.chaos.core.schedule one at a time, the
verdict. See halb.chaos for what it proves."""
from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from halb.chaos import core
from halb.errors import HalbError
from halb.lab import article
from halb.lab.netns import stop_popen

HALB = [sys.executable, "-m", "halb"]
DIRECTORS = ("N1", "N2")
NODES = ("N1", "N2", "N3", "N4")
BIG = "big.bin"
BIG_SIZE = 2 * 1024 * 1024
PERSIST_PORT = 8080
HEALTH_TIMEOUT = 45.0

LDIRECTORD_CF = """\
# the article's ldirectord.cf (§5.3) with this lab's four real servers, and a
# persistent service (-p) beside it
checktimeout=1
checkinterval=1
emailalert="root"
emailalertfreq=0
emailalertstatus=stopping
smtp=127.0.0.1

virtual={vip}:80
{reals80}\tchecktype=negotiate
\tservice=http
\trequest="testcluster.html"
\treceive="N"
\tscheduler=rr

virtual={vip}:{pport}
{realsp}\tchecktype=negotiate
\tservice=http
\trequest="testcluster.html"
\treceive="N"
\tscheduler=rr
\tpersistent=600
"""

# faults on the LAN: the switch's own nftables (bridge family, forward hook)
FAULT_TABLE = ("add table bridge halbchaos\n"
               "add chain bridge halbchaos faults { type filter hook forward priority 0; policy accept; }\n")

HA_CF_HEAD = "# the article's ha.cf (§6.3.1), sub-second timers, STONITH by the lab's power switch\n"


class Chaos:
    def __init__(self, seed: int, duration: float, faults: list[str], say=print, keep: bool = False,
                 rate: float = 20.0, downloads: int = 4):
        self.seed, self.duration, self.faults = seed, duration, faults
        self.say, self.keep = say, keep
        self.rate, self.n_downloads = rate, downloads
        self.plan = core.schedule(seed, duration, faults)
        self.lab = None
        self.base: Path | None = None
        self.hb: dict[str, subprocess.Popen] = {}
        self.samplers: dict[str, subprocess.Popen] = {}
        self.samples: dict[str, list[tuple[float, bool]]] = {n: [] for n in DIRECTORS}
        self.lock = threading.Lock()
        self.requests: list[core.Request] = []
        self.dls: list[core.Download] = []
        self.answers: list[core.PersistAnswer] = []
        self.windows: list[core.Window] = []
        self.excused: dict[str, list[tuple[float, float]]] = {}
        self.stop_traffic = threading.Event()
        self.threads: list[threading.Thread] = []
        self.big_sha = ""
        self.t_traffic = 0.0
        self._t_fault = 0.0

    # -- helpers --------------------------------------------------------------
    def halb(self, node, *args, check=False, timeout=30):
        r = self.lab.run(node, HALB + list(args), timeout=timeout)
        if check and r.returncode != 0:
            raise HalbError(f"chaos: on {node}: halb {' '.join(args)}: {(r.stderr or r.stdout).strip()}")
        return r

    def nft_switch(self, script: str) -> None:
        subprocess.run(["ip", "netns", "exec", self.lab.switch_ns, "nft", "-f", "-"], input=script,
                       text=True, capture_output=True, timeout=20, check=True)

    def holders(self) -> list[str]:
        return article.vip_holders(self.lab, DIRECTORS)

    def active(self) -> str:
        h = self.holders()
        return h[0] if h else "N1"

    def other(self, node) -> str:
        return "N2" if node == "N1" else "N1"

    # -- the cluster -------------------------------------------------------------
    def write_configs(self, node) -> Path:
        d = self.base / node / "ha.d"
        d.mkdir(parents=True, exist_ok=True)
        n = self.lab.node(node)
        tail = (f"stonith_host * labpower {self.lab.name} {self.lab.dir.parent}\n"
                "halb_monitor_interval 1\n")
        (d / "ha.cf").write_text(article.ha_cf(n.iface, self.base / node / "ha.log", head=HA_CF_HEAD,
                                               keepalive="50ms", deadtime="300ms", warntime="200ms",
                                               initdead="1", tail=tail))
        (d / "authkeys").write_text(article.AUTHKEYS)
        (d / "authkeys").chmod(0o600)
        (d / "haresources").write_text(article.haresources(self.lab.vip))

        def reals(port):
            return "".join(f"\treal={self.lab.node(x).ip}:{port} gate 1\n" for x in NODES)
        (d / "ldirectord.cf").write_text(LDIRECTORD_CF.format(vip=self.lab.vip, reals80=reals(80),
                                                              realsp=reals(PERSIST_PORT), pport=PERSIST_PORT))
        return d

    def start_sampler(self, node) -> None:
        p = self.lab.popen(node, [sys.executable, "-m", "halb.chaos.sampler", self.lab.vip,
                                  self.lab.node(node).iface], stdout=subprocess.PIPE,
                           stderr=subprocess.DEVNULL)
        self.samplers[node] = p

        def read():
            for line in p.stdout:
                try:
                    t, h = line.split()
                    item = (float(t), h == b"1")
                except ValueError:
                    continue
                with self.lock:
                    self.samples[node].append(item)
        threading.Thread(target=read, daemon=True).start()

    def start_heartbeat(self, node) -> None:
        d = self.base / node / "ha.d"
        log = open(self.base / node / "heartbeat.out", "a")
        self.hb[node] = self.lab.popen(node, HALB + ["heartbeat", "-c", str(d), "run"],
                                       stdout=log, stderr=subprocess.STDOUT)
        log.close()

    def start_node(self, node) -> None:
        """A director node's boot: lvsdr, the backup sync daemon, heartbeat."""
        self.halb(node, "realserver", "start", "--vip", self.lab.vip, check=True)
        if node in DIRECTORS:
            d = self.base / node / "ha.d"
            self.halb(node, "--engine", "nft", "ipvsadm", "--start-daemon", "backup", "--mcast-interface",
                      self.lab.node(node).iface, "--sync-key-file", str(d / "authkeys"), check=True)
            self.start_sampler(node)
            self.start_heartbeat(node)

    def reboot(self, node) -> None:
        """What a power cycle does: every process gone, addresses and kernel
        state of the old boot gone, cable back in, services started again."""
        p = self.hb.pop(node, None)
        self.lab.kill_node(node)
        for q in (p, self.samplers.pop(node, None)):
            if q is not None:
                try:
                    q.wait(5)
                except subprocess.TimeoutExpired:
                    pass
        n = self.lab.node(node)
        for dev in (n.iface, "lo"):
            r = self.lab.run(node, ["ip", "-4", "-o", "addr", "show", "dev", dev])
            for line in r.stdout.splitlines():
                cidr = line.split()[3]
                if cidr.split("/")[0] == self.lab.vip:
                    self.lab.run(node, ["ip", "addr", "del", cidr, "dev", dev])
        self.lab.run(node, ["nft", "flush", "ruleset"])
        self.halb(node, "--engine", "nft", "nft", "flush")
        self.lab.run(node, ["rm", "-rf", str(self.lab.node_run_dir(node))])
        self.lab.restore_link(node)
        self.lab.apache_start(node)
        self.lab.nginx_start(node)
        self.start_node(node)

    def node_dead(self, node) -> bool:
        p = self.hb.get(node)
        return p is None or p.poll() is not None

    def health(self) -> str | None:
        """None when the cluster is whole again, else what is still missing."""
        h = self.holders()
        if len(h) != 1:
            return f"VIP on {len(h)} nodes"
        a = h[0]
        for node in DIRECTORS:
            if self.node_dead(node):
                return f"heartbeat not running on {node}"
        r = self.halb(a, "heartbeat", "status", "--json")
        try:
            st = json.loads(r.stdout)
        except ValueError:
            return f"heartbeat on {a} does not answer"
        peer = st.get("nodes", {}).get(self.other(a), {})
        if peer.get("status") not in ("active", "up"):
            return f"{a} sees {self.other(a)} {peer.get('status')}"
        out = self.halb(a, "--engine", "nft", "ipvsadm", "-L", "-n").stdout
        want80 = {self.lab.node(x).ip for x in NODES if self.lab.apache_running(x)}
        have = {}
        port = None
        for ln in out.splitlines():
            f = ln.split()
            if f and f[0] in ("TCP", "UDP"):
                port = f[1].rsplit(":", 1)[1]
            elif f and f[0] == "->" and f[1] != "RemoteAddress:Port":
                have.setdefault(port, set()).add(f[1].rsplit(":", 1)[0])
        if have.get("80", set()) != want80:
            return f"{a}'s table has {sorted(have.get('80', ()))} on :80"
        if len(have.get(str(PERSIST_PORT), ())) != len(NODES):
            return f"{a}'s table has {len(have.get(str(PERSIST_PORT), ()))} servers on :{PERSIST_PORT}"
        r = self.halb(a, "--engine", "nft", "nft", "status")
        if r.returncode != 0:
            return f"{a}'s nft table incomplete ({(r.stderr or r.stdout).strip()[-120:]})"
        sync = self.halb(a, "--engine", "nft", "ipvsadm", "-L", "--daemon").stdout
        if "master" not in sync:
            return f"no sync master on {a}"
        for node in DIRECTORS:
            if node != a and "backup" not in self.halb(node, "--engine", "nft", "ipvsadm", "-L",
                                                        "--daemon").stdout:
                return f"no sync backup on {node}"
        return None

    def wait_healthy(self, timeout=HEALTH_TIMEOUT) -> tuple[bool, str]:
        deadline = time.monotonic() + timeout
        why = "?"
        while time.monotonic() < deadline:
            for node in DIRECTORS:
                if node in self.hb and self.hb[node].poll() is not None:
                    # heartbeat of this node died (STONITH, a fault): power-cycle it
                    self.excuse(node, self._t_fault, time.monotonic() + 30)
                    self.say(f"       {node} is down (heartbeat exited {self.hb[node].returncode}): rebooting it")
                    self.reboot(node)
            why = self.health()
            if why is None:
                return True, ""
            time.sleep(0.3)
        return False, why

    def excuse(self, node, t0, t1) -> None:
        self.excused.setdefault(node, []).append((t0, t1))

    # -- traffic -------------------------------------------------------------------
    def _get(self, client, port, path, timeout):
        s = self.lab.socket(client)
        s.settimeout(timeout)
        try:
            s.connect((self.lab.vip, port))
            s.sendall(f"GET {path} HTTP/1.0\r\nHost: {self.lab.vip}\r\n\r\n".encode())
            data = b""
            deadline = time.monotonic() + timeout
            while True:
                s.settimeout(max(0.01, deadline - time.monotonic()))
                b = s.recv(65536)
                if not b:
                    break
                data += b
        finally:
            s.close()
        head, _, body = data.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/") else 0
        return status, body

    def _short(self, t0, client="client0") -> None:
        ok, detail = False, ""
        try:
            status, body = self._get(client, 80, "/testcluster.html", 1.0)
            name = body.decode(errors="replace").strip()
            ok = status == 200 and name in NODES
            detail = "" if ok else f"status {status} body {name[:20]!r}"
        except (OSError, ValueError, IndexError) as e:
            detail = f"{type(e).__name__}: {e}"
        with self.lock:
            self.requests.append(core.Request(t0, time.monotonic(), ok, "http", detail))

    def _persist(self, t0, client) -> None:
        server, detail = None, ""
        try:
            status, body = self._get(client, PERSIST_PORT, "/testcluster.html", 1.0)
            name = body.decode(errors="replace").strip()
            if status == 200 and name in NODES:
                server = name
            else:
                detail = f"status {status}"
        except (OSError, ValueError, IndexError) as e:
            detail = f"{type(e).__name__}: {e}"
        t1 = time.monotonic()
        with self.lock:
            self.requests.append(core.Request(t0, t1, server is not None, f"persist {client}", detail))
            self.answers.append(core.PersistAnswer(t0, client, server))

    def _ticker(self, period, fn, *args) -> None:
        nxt = time.monotonic()
        while not self.stop_traffic.is_set():
            t0 = time.monotonic()
            threading.Thread(target=fn, args=(t0, *args), daemon=True).start()
            nxt += period
            time.sleep(max(0.0, nxt - time.monotonic()))

    def _download_loop(self, i) -> None:
        rnd = random.Random(self.seed * 1000 + i)
        while not self.stop_traffic.is_set():
            t0 = time.monotonic()
            ok, detail = False, ""
            h = hashlib.sha256()
            n = 0
            s = None
            try:
                s = self.lab.socket("client1")
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32768)
                s.settimeout(5.0)
                s.connect((self.lab.vip, 80))
                s.sendall(f"GET /{BIG} HTTP/1.0\r\nHost: {self.lab.vip}\r\n\r\n".encode())
                head = b""
                while b"\r\n\r\n" not in head:
                    b = s.recv(4096)
                    if not b:
                        raise OSError("closed before the headers")
                    head += b
                head, _, rest = head.partition(b"\r\n\r\n")
                if not head.startswith(b"HTTP/1.1 200") and not head.startswith(b"HTTP/1.0 200"):
                    raise OSError(f"status line {head.splitlines()[0][:40]!r}")
                h.update(rest)
                n = len(rest)
                took = rnd.uniform(2.0, 4.0)  # seconds per download: a slow reader
                while True:
                    b = s.recv(32768)
                    if not b:
                        break
                    h.update(b)
                    n += len(b)
                    time.sleep(took * len(b) / BIG_SIZE)
                ok = n == BIG_SIZE and h.hexdigest() == self.big_sha
                if not ok:
                    detail = f"{n} bytes, sha256 {'ok' if h.hexdigest() == self.big_sha else 'WRONG'}"
            except OSError as e:
                detail = f"{type(e).__name__}: {e} after {n} bytes"
            finally:
                if s is not None:
                    s.close()
            with self.lock:
                self.dls.append(core.Download(t0, time.monotonic(), ok, detail))

    def start_traffic(self) -> None:
        self.t_traffic = time.monotonic()
        ths = [threading.Thread(target=self._ticker, args=(1.0 / self.rate, self._short), daemon=True),
               threading.Thread(target=self._ticker, args=(0.1, self._persist, "client0"), daemon=True),
               threading.Thread(target=self._ticker, args=(0.1, self._persist, "client2"), daemon=True)]
        ths += [threading.Thread(target=self._download_loop, args=(i,), daemon=True)
                for i in range(self.n_downloads)]
        for t in ths:
            t.start()
        self.threads = ths

    def end_traffic(self) -> None:
        self.stop_traffic.set()
        for t in self.threads:
            t.join(40)
        time.sleep(1.2)  # requests in flight (1 s timeout)

    # -- faults ----------------------------------------------------------------------
    def inject(self, step: core.Step) -> tuple[str, str]:
        """Do the fault; return (target node, note). Returns once the fault is
        over (what a fault holds, it holds here); recovery comes after."""
        f = step.fault
        a = self.active()
        if f == "crash":
            self.excuse(a, time.monotonic(), time.monotonic() + 60)
            p = self.hb.pop(a, None)
            self.lab.freeze(a)
            self.lab.cut_link(a)
            self.lab.kill_node(a)
            if p is not None:
                p.wait(5)
            self.samplers.pop(a, None)
            time.sleep(step.params.get("down", 2.0))
            self.reboot(a)
            return a, ""
        if f == "standby":
            r = self.halb(a, "heartbeat", "standby")
            return a, "" if r.returncode == 0 else f"standby refused: {r.stderr.strip()[:60]}"
        if f == "apache":
            t = step.target
            self.lab.apache_stop(t)
            time.sleep(3.0)
            self.lab.apache_start(t)
            return t, ""
        if f == "hb-kill":
            p = self.hb.get(a)
            if p is not None:
                os.kill(p.pid, signal.SIGKILL)
                p.wait(5)
            time.sleep(1.0)
            if self.lab.pids(a) and a in self.hb:
                self.start_heartbeat(a)
            return a, ""
        if f == "hb-hup":
            p = self.hb.get(a)
            if p is not None:
                os.kill(p.pid, signal.SIGHUP)
            time.sleep(1.0)
            return a, ""
        if f == "hb-restart":
            p = self.hb.pop(a, None)
            if p is not None:
                stop_popen(p, 30)
            self.start_heartbeat(a)
            return a, ""
        if f == "director-kill":
            from halb.director.daemon import cfg_name
            pidf = self.lab.node_run_dir(a) / f"director.{cfg_name(self.base / a / 'ha.d' / 'ldirectord.cf')}.pid"
            try:
                pid = int(pidf.read_text().split()[0])
                os.kill(pid, signal.SIGKILL)
            except (OSError, ValueError, IndexError) as e:
                return a, f"no director to kill ({e})"
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    new = int(pidf.read_text().split()[0])
                    if new != pid and os.path.exists(f"/proc/{new}"):
                        return a, f"director restarted after {10 - (deadline - time.monotonic()):.1f}s"
                except (OSError, ValueError, IndexError):
                    pass
                time.sleep(0.1)
            return a, "director not restarted within 10 s"
        if f == "nft-flush":
            self.lab.run(a, ["nft", "flush", "ruleset"], check=True)
            time.sleep(0.5)
            return a, ""
        if f == "loss":
            pct = step.params["percent"]
            self.nft_switch(FAULT_TABLE + f"add rule bridge halbchaos faults numgen random mod 100 < {pct} drop\n")
            try:
                time.sleep(step.params.get("hold", 3.0))
            finally:
                self.nft_switch("delete table bridge halbchaos\n")
            return "LAN", f"{pct} % loss"
        if f == "partition":
            p1, p2 = self.lab.node("N1").port, self.lab.node("N2").port
            self.nft_switch(FAULT_TABLE
                            + f'add rule bridge halbchaos faults iifname "{p1}" oifname "{p2}" udp dport 694 drop\n'
                            + f'add rule bridge halbchaos faults iifname "{p2}" oifname "{p1}" udp dport 694 drop\n')
            try:
                deadline = time.monotonic() + 5
                while time.monotonic() < deadline and not any(self.node_dead(n) for n in DIRECTORS):
                    time.sleep(0.05)
            finally:
                self.nft_switch("delete table bridge halbchaos\n")
            dead = [n for n in DIRECTORS if self.node_dead(n)]
            return "N1-N2", f"shot: {','.join(dead) or 'none'}"
        if f == "junk":
            rate, hold = step.params["rate"], step.params.get("hold", 3.0)
            rnd = random.Random(self.seed + step.index)
            s = self.lab.socket("client2", type=socket.SOCK_DGRAM)
            try:
                s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF,
                             socket.inet_aton(self.lab.client(2).ip))
                dests = [(self.lab.node(n).ip, 694) for n in DIRECTORS] + [("225.0.0.7", 694)]
                t_end = time.monotonic() + hold
                sent = 0
                nxt = time.monotonic()
                while time.monotonic() < t_end:
                    for _ in range(max(1, rate // 100)):
                        s.sendto(rnd.randbytes(rnd.randint(8, 1400)), dests[sent % len(dests)])
                        sent += 1
                    nxt += 0.01
                    time.sleep(max(0.0, nxt - time.monotonic()))
            finally:
                s.close()
            return "694/udp", f"{sent} datagrams"
        raise HalbError(f"chaos: unknown fault {f}")

    # -- the run -----------------------------------------------------------------------
    def setup(self) -> None:
        from halb.lab import Lab

        self.base = Path(tempfile.mkdtemp(prefix="halb-chaos-"))
        self.lab = Lab(nodes=4, clients=3, apache=True, nginx=True, nginx_port=PERSIST_PORT)
        self.lab.build()
        data = random.Random(self.seed).randbytes(BIG_SIZE)
        self.big_sha = hashlib.sha256(data).hexdigest()
        for node in NODES:
            htdocs = self.lab._www(node) / "htdocs"
            (htdocs / BIG).write_bytes(data)
            os.chmod(htdocs / BIG, 0o644)
        for node in DIRECTORS:
            self.write_configs(node)
        for node in NODES:
            self.start_node(node)
        ok, why = self.wait_healthy(90)
        if not ok:
            raise HalbError(f"chaos: the cluster did not come up: {why}")

    def leftovers(self) -> list[str]:
        """After the cluster stopped: what it left in the nodes."""
        out = []
        for node in NODES:
            n = self.lab.node(node)
            for dev in (n.iface, "lo"):
                r = self.lab.run(node, ["ip", "-4", "-o", "addr", "show", "dev", dev])
                if f" {self.lab.vip}/" in r.stdout:
                    out.append(f"{node}: VIP on {dev}")
            r = self.lab.run(node, ["nft", "list", "tables"])
            if r.stdout.strip():
                out.append(f"{node}: nft tables {' '.join(r.stdout.split())}")
            r = self.lab.run(node, ["ip", "rule"])
            if "4242" in r.stdout or "150:\tfrom all lookup local" in r.stdout:
                out.append(f"{node}: halb ip rules left")
            for pid in self.lab.pids(node):
                try:
                    comm = Path(f"/proc/{pid}/comm").read_text().strip()
                    cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:80]
                except OSError:
                    continue
                if comm not in ("apache2", "nginx"):
                    out.append(f"{node}: process {pid} {cmd}")
        return out

    def teardown(self) -> list[str]:
        left: list[str] = []
        if self.lab is None:
            return left
        try:
            for node in DIRECTORS:
                p = self.hb.pop(node, None)
                if p is not None:
                    stop_popen(p, 30)
            for node in NODES:
                for role in ("master", "backup"):
                    self.halb(node, "--engine", "nft", "ipvsadm", "--stop-daemon", role)
                self.halb(node, "realserver", "stop")
            for node, p in list(self.samplers.items()):
                stop_popen(p, 5)
            self.samplers.clear()
            time.sleep(0.3)
            left = self.leftovers()
            if self.keep:
                for node in NODES:
                    for f in self.lab.node_run_dir(node).glob("*.log"):
                        (self.base / node).mkdir(parents=True, exist_ok=True)
                        shutil.copy(f, self.base / node / f.name)
        finally:
            self.lab.down()
            r = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
            left += [f"namespace {ln.split()[0]}" for ln in r.stdout.splitlines()
                     if ln.startswith(f"halb-{self.lab.name}-")]
        return left

    def run(self) -> dict:
        t_setup = time.monotonic()
        skipped = [f for f in self.faults if f not in {s.fault for s in self.plan}]
        left = []
        try:
            self.say(f"halb chaos: seed {self.seed}, {self.duration:g} s, {len(self.plan)} faults: "
                     + " ".join(s.fault for s in self.plan))
            self.setup()
            self.say(f"lab {self.lab.name}: VIP {self.lab.vip}, N1 N2 directors + Apache, N3 N4 real "
                     f"servers; cluster up in {time.monotonic() - t_setup:.1f}s; traffic starts")
            self.start_traffic()
            time.sleep(core.SETTLE_S)
            for step in self.plan:
                # the plan's times are a budget; a late fault starts as soon as the last one recovered
                wait = self.t_traffic + step.at - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                t0 = time.monotonic()
                self._t_fault = t0
                self.say(f"[{step.index:>2}/{len(self.plan)}] +{t0 - self.t_traffic:6.1f}s {step.fault:<13} ...")
                try:
                    target, note = self.inject(step)
                except Exception as e:  # noqa: BLE001 - a fault that cannot be done is recorded
                    target, note = step.target, f"injection failed: {type(e).__name__}: {e}"
                ok, why = self.wait_healthy()
                t1 = time.monotonic()
                time.sleep(core.SETTLE_S)
                w = core.Window(step.index, step.fault, target, t0, t1, ok,
                                (note + ("; " if note and why else "") + (f"not recovered: {why}" if not ok else "")))
                self.windows.append(w)
                with self.lock:
                    failed = sum(1 for r in self.requests if not r.ok and r.t1 >= t0 and r.t0 <= t1)
                self.say(f"        {'recovered' if ok else 'NOT recovered'} after {t1 - t0:.1f}s; "
                         f"{failed} requests failed" + (f"; {w.note}" if w.note else ""))
                if not ok:
                    break
            self.end_traffic()
        finally:
            self.stop_traffic.set()
            left = self.teardown()
            if not self.keep and self.base is not None:
                shutil.rmtree(self.base, ignore_errors=True)
        t_end = max([r.t1 for r in self.requests] + [self.t_traffic + 0.01])
        with self.lock:
            samples = {n: list(v) for n, v in self.samples.items()}
        timeline = core.vip_timeline(samples, self.t_traffic, t_end)
        persist = core.persistence_violations(self.answers, self.excused)
        v = core.verdict(self.windows, self.requests, self.dls, persist, timeline, left, skipped)
        return {"seed": self.seed, "duration": self.duration, "faults_selected": self.faults,
                "schedule": [{"index": s.index, "fault": s.fault, "at": s.at, "target": s.target,
                              "params": s.params} for s in self.plan],
                "timers": {"keepalive_ms": 50, "deadtime_ms": 300, "checkinterval_s": 1},
                "traffic": {"http_rate": self.rate, "downloads": self.n_downloads, "download_bytes": BIG_SIZE,
                            "persistent_clients": 2},
                "logs": str(self.base) if self.keep else None,
                "verdict": v}
