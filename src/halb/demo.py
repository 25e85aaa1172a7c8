"""`halb demo`: the article's whole cluster on this machine, in one command.

Builds the article's network in namespaces (switch, N1, N2, a client; real
Apache on N1 and N2 serving testcluster.html), writes the article's config
files (ha.cf, authkeys, haresources, ldirectord.cf) with this lab's
addresses, runs `halb realserver start` (lvsdr), a backup connection-sync
daemon (§6.3.8: the director's node turns it into the master) and `halb
heartbeat` on both nodes, and then replays the article's acceptance tests (§6.3.6) while a
client polls the VIP, printing what a reader of the article would look at:
curl answers, `ipvsadm -L -n`, who holds the VIP, failover gaps.

Without root, `halb demo --loopback` runs the first step of the article
(a load-balanced service on 127.0.0.1 with `halb proxy` and two back ends).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from halb.errors import HalbError
from halb.lab.netns import stop_popen
from halb.lab import article

HALB = [sys.executable, "-m", "halb"]


def say(msg: str = "") -> None:
    print(msg, flush=True)


def step(title: str) -> None:
    say()
    say(f"=== {title}")


def wait_for(pred, timeout: float, what: str, step_s: float = 0.1):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = pred()
        except Exception as e:  # keep polling, remember why
            last = e
        if last and not isinstance(last, Exception):
            return last
        time.sleep(step_s)
    raise HalbError(f"demo: timed out after {timeout:g}s waiting for {what} (last: {last!r})")


# ---------------------------------------------------------------------------
# configuration files, as the article writes them, with this lab's addresses

HA_CF_HEAD = """\
# ha.cf as in the article (§6.3.1), on this lab's LAN interface.
# halb accepts the article's values (keepalive 2, deadtime 10...); the demo
# uses sub-second timers to show fast failover.
"""

LDIRECTORD_CF_HEAD = """\
# ldirectord.cf as in the article (§5.3), with this lab's addresses
checktimeout={checktimeout}
checkinterval={checkinterval}
emailalert="root"
emailalertfreq=0
emailalertstatus=stopping

"""


class Probe:
    """A client that starts a request to the VIP every `period` seconds
    (without waiting for the previous one) and records outcomes."""

    def __init__(self, lab, node="client0", period=0.02, timeout=1.0):
        self.lab, self.node, self.period, self.timeout = lab, node, period, timeout
        self.results: list[tuple[float, str | None]] = []  # (start time, body or None)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _one(self, t0: float) -> None:
        try:
            status, body = self.lab.http_get(self.node, "http://VIP/testcluster.html", timeout=self.timeout)
            res = body.strip() if status == 200 else None
        except Exception:
            res = None
        with self._lock:
            self.results.append((t0, res))

    def _run(self) -> None:
        nxt = time.monotonic()
        while not self._stop.is_set():
            t0 = time.monotonic()
            threading.Thread(target=self._one, args=(t0,), daemon=True).start()
            nxt += self.period
            time.sleep(max(0.0, nxt - time.monotonic()))

    def start(self) -> "Probe":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)
        time.sleep(self.timeout + 0.2)  # let requests in flight finish

    def summary(self, since: float) -> dict:
        with self._lock:
            res = sorted(r for r in self.results if r[0] >= since)
        failed = [t for t, b in res if b is None]
        gap = (max(failed) - min(failed) + self.period) if failed else 0.0
        return {"requests": len(res), "failed": len(failed), "gap_s": round(gap, 3),
                "answers": sorted({b for _, b in res if b})}


class Demo:
    def __init__(self, fast: bool = True, article_timers: bool = False, hold: float = 0.0,
                 keep: bool = False):
        self.hold, self.keep = hold, keep
        if article_timers:
            self.timers = dict(keepalive="2", deadtime="10", warntime="6", initdead="20")
        else:
            self.timers = dict(keepalive="50ms", deadtime="300ms", warntime="200ms", initdead="1")
        self.check = dict(checkinterval=1, checktimeout=1) if fast else dict(checkinterval=10, checktimeout=10)
        self.lab = None
        self.procs: dict[str, subprocess.Popen] = {}
        self.base: Path | None = None

    # -- helpers -----------------------------------------------------------
    def halb(self, node, *args, check=True, timeout=30):
        r = self.lab.run(node, HALB + list(args), timeout=timeout)
        if check and r.returncode != 0:
            raise HalbError(f"demo: on {node}: halb {' '.join(args)}: {(r.stderr or r.stdout).strip()}")
        return r

    def curl(self, n=6) -> list[str]:
        out = []
        for _ in range(n):
            try:
                out.append(self.lab.http_get("client0", "http://VIP/testcluster.html", timeout=2)[1].strip())
            except Exception as e:
                out.append(f"ERROR ({e})")
        return out

    def vip_holder(self) -> list[str]:
        return article.vip_holders(self.lab)

    def table(self, node) -> str:
        return self.halb(node, "ipvsadm", "-L", "-n", check=False).stdout

    def reals_in_table(self, node) -> set[str]:
        out = self.table(node)
        return {line.split()[1].rsplit(":", 1)[0] for line in out.splitlines()
                if line.strip().startswith("->") and not line.strip().startswith("-> RemoteAddress")}

    def sync_daemons(self, node) -> str:
        return self.halb(node, "--engine", "nft", "ipvsadm", "-L", "--daemon", check=False).stdout.strip()

    def sync_received(self, node) -> int:
        r = self.halb(node, "--engine", "nft", "sync", "status", "backup", "--json", check=False)
        try:
            return int(json.loads(r.stdout)["backup"]["counters"].get("entries_received", 0))
        except (ValueError, KeyError, TypeError):
            return 0

    def vip_on_lo(self, node) -> bool:
        r = self.lab.run(node, ["ip", "-4", "-o", "addr", "show", "dev", "lo"])
        return f" {self.lab.vip}/32 " in r.stdout

    def reboot_clean(self, node) -> None:
        """What a reboot does to a crashed node: its addresses are gone
        (the VIP it held on its LAN interface, the hidden one on lo)."""
        n = self.lab.node(node)
        for dev in (n.iface, "lo"):
            r = self.lab.run(node, ["ip", "-4", "-o", "addr", "show", "dev", dev])
            for line in r.stdout.splitlines():
                cidr = line.split()[3]
                if cidr.split("/")[0] == self.lab.vip:
                    self.lab.run(node, ["ip", "addr", "del", cidr, "dev", dev], check=True)
        # ...and so is the kernel state its director had (nft table, ip rules)
        self.halb(node, "--engine", "nft", "nft", "flush", check=False)
        self.lab.run(node, ["rm", "-rf", str(self.lab.node_run_dir(node))])

    def write_configs(self, node):
        d = self.base / node / "ha.d"
        d.mkdir(parents=True, exist_ok=True)
        n = self.lab.node(node)
        (d / "ha.cf").write_text(article.ha_cf(n.iface, self.base / node / "ha.log", head=HA_CF_HEAD,
                                               **self.timers))
        (d / "authkeys").write_text(article.AUTHKEYS)
        (d / "authkeys").chmod(0o600)
        (d / "haresources").write_text(article.haresources(self.lab.vip))
        (d / "ldirectord.cf").write_text(article.ldirectord_cf(self.lab, LDIRECTORD_CF_HEAD.format(**self.check)))
        return d

    def start_node(self, node):
        self.halb(node, "realserver", "start", "--vip", self.lab.vip)
        d = self.base / node / "ha.d"
        # the article's lvsdr start also starts the backup sync daemon (§6.3.8); halb's ldirectord
        # resource turns it into the master on the node that runs the director
        self.halb(node, "--engine", "nft", "ipvsadm", "--start-daemon", "backup", "--mcast-interface",
                  self.lab.node(node).iface, "--sync-key-file", str(d / "authkeys"))
        log = open(self.base / node / "heartbeat.out", "a")
        self.procs[node] = self.lab.popen(node, HALB + ["heartbeat", "-c", str(d), "run"],
                                          stdout=log, stderr=subprocess.STDOUT)

    def stop_node(self, node, timeout=30):
        p = self.procs.pop(node, None)
        if p is None:
            return
        stop_popen(p, timeout)
        for role in ("master", "backup"):
            self.halb(node, "--engine", "nft", "ipvsadm", "--stop-daemon", role, check=False)
        self.halb(node, "realserver", "stop", check=False)

    def log_lines(self, node, *needles) -> list[str]:
        try:
            text = (self.base / node / "ha.log").read_text()
        except OSError:
            return []
        return [ln for ln in text.splitlines() if any(x in ln for x in needles)]

    # -- the scenario ------------------------------------------------------
    def run(self) -> int:
        from halb.lab import Lab

        self.base = Path(tempfile.mkdtemp(prefix="halb-demo-"))
        self.lab = Lab(nodes=2, clients=1, apache=True)
        t_start = time.monotonic()
        try:
            step("1. The article's network: a switch, N1 and N2 (Apache), a client")
            self.lab.up()
            for node in ("N1", "N2"):
                self.write_configs(node)
            n1, n2 = self.lab.node("N1"), self.lab.node("N2")
            say(f"lab {self.lab.name}: subnet {self.lab.subnet}  VIP={self.lab.vip}  "
                f"RIP1={n1.rip} ({n1.iface})  RIP2={n2.rip} ({n2.iface})")
            say(f"config files (article syntax): {self.base}/N1/ha.d/{{ha.cf,authkeys,haresources,ldirectord.cf}}")

            step("2. lvsdr on both nodes, then heartbeat on both nodes")
            for node in ("N1", "N2"):
                self.start_node(node)
            holders = wait_for(lambda: self.vip_holder(), 60, "a node to acquire the VIP")
            say(f"VIP {self.lab.vip} held by: {', '.join(holders)}")
            for ln in self.log_lines("N1", "Acquiring resource group", "resource transition completed")[:4]:
                say(f"  N1 log: {ln}")
            wait_for(lambda: len(self.reals_in_table("N1")) == 2, 60, "the director to add N1 and N2")
            say("halb ipvsadm -L -n on N1:")
            say(self.table("N1").rstrip())
            say(f"client: curl http://{self.lab.vip}/testcluster.html x6 -> {' '.join(self.curl())}")

            step("3. Test 1: stop Apache on N2 -> the director removes N2")
            self.lab.apache_stop("N2")
            t0 = time.monotonic()
            wait_for(lambda: self.reals_in_table("N1") == {n1.rip}, 60, "N2 to leave the table")
            say(f"N2 removed from the table after {time.monotonic() - t0:.1f}s; client -> {' '.join(self.curl())}")
            self.lab.apache_start("N2")
            t0 = time.monotonic()
            wait_for(lambda: len(self.reals_in_table("N1")) == 2, 60, "N2 to come back")
            say(f"Apache restarted on N2: re-added after {time.monotonic() - t0:.1f}s; "
                f"client -> {' '.join(self.curl())}")

            say(f"connection sync: N1: {self.sync_daemons('N1')}; N2: {self.sync_daemons('N2')}")
            wait_for(lambda: self.sync_received("N2") > 0, 10, "N2's backup sync daemon to receive entries")
            say(f"N2's backup sync daemon has received {self.sync_received('N2')} connection entries from N1")

            step("4. Test 3: N1 crashes (frozen, cable cut, killed) -> N2 takes the VIP and the director")
            probe = Probe(self.lab).start()
            time.sleep(1.0)
            t_crash = time.monotonic()
            self.procs.pop("N1", None)
            self.lab.freeze("N1")
            self.lab.cut_link("N1")
            self.lab.kill_node("N1")
            # (the dead N1 still has the VIP on its unplugged interface)
            wait_for(lambda: "N2" in self.vip_holder(), 30, "N2 to take the VIP", 0.02)
            wait_for(lambda: self.reals_in_table("N2") == {n2.rip}, 60, "N2's director to list only N2")
            time.sleep(1.0)
            probe.stop()
            s = probe.summary(t_crash)
            say(f"client probe (a request every 20 ms): {s['requests']} requests, {s['failed']} failed, "
                f"failover gap {s['gap_s'] * 1000:.0f} ms; answers after: {', '.join(s['answers'])}")
            for ln in self.log_lines("N2", "is dead", "Acquiring", "split brain")[:4]:
                say(f"  N2 log: {ln}")
            wait_for(lambda: self.sync_daemons("N2").startswith("master"), 30, "N2's sync daemon to be the master")
            say(f"connection sync on N2 now: {self.sync_daemons('N2')}")
            say("halb ipvsadm -L -n on N2:")
            say(self.table("N2").rstrip())

            step("5. Test 4: N1 reboots and comes back (auto_failback off) -> N2 stays director, N1 is a real server again")
            self.reboot_clean("N1")
            self.lab.restore_link("N1")
            self.lab.apache_start("N1")
            self.start_node("N1")
            wait_for(lambda: len(self.reals_in_table("N2")) == 2, 60, "N2's director to re-add N1")
            wait_for(lambda: self.vip_holder() == ["N2"] and self.vip_on_lo("N1"), 30,
                     "N1 to be a hidden-VIP real server again")
            say(f"VIP held by: {', '.join(self.vip_holder())}; N1's lo: "
                + self.lab.run("N1", ["ip", "-4", "-br", "addr", "show", "dev", "lo"]).stdout.strip())
            say(f"client -> {' '.join(self.curl())}")
            say("halb ipvsadm -L -n on N2:")
            say(self.table("N2").rstrip())

            if self.hold:
                step(f"Holding the cluster up for {self.hold:g}s (Ctrl-C to stop). Try:")
                say(f"  halb lab exec --name {self.lab.name} N2 -- halb ipvsadm -L -n")
                say(f"  halb lab exec --name {self.lab.name} client0 -- curl -s http://{self.lab.vip}/testcluster.html")
                try:
                    time.sleep(self.hold)
                except KeyboardInterrupt:
                    pass
            say()
            say(f"demo finished in {time.monotonic() - t_start:.0f}s")
            return 0
        finally:
            step("Shutting down: heartbeat releases the VIP and stops the director; the lab is removed")
            for node in list(self.procs):
                self.stop_node(node)
            self.lab.down()
            if self.keep:
                say(f"configs and logs kept in {self.base}")
            else:
                shutil.rmtree(self.base, ignore_errors=True)
            say("clean: no namespace, rule or process left")


def loopback_demo(ctx) -> int:
    """Without root: `halb proxy` on 127.0.0.1 with two back ends, driven
    with the article's ipvsadm commands."""
    import socket

    def free_port(host):
        s = socket.socket()
        s.bind((host, 0))
        p = s.getsockname()[1]
        s.close()
        return p

    base = Path(tempfile.mkdtemp(prefix="halb-demo-"))
    env = dict(os.environ, HALB_RUN_DIR=str(base / "run"), HALB_NODE="demo", HALB_ENGINE="proxy")
    backs = []
    try:
        vip, vport = "127.0.0.1", free_port("127.0.0.1")
        reals = []
        for i, host in enumerate(("127.0.0.2", "127.0.0.3"), 1):
            root = base / f"N{i}"
            root.mkdir()
            (root / "testcluster.html").write_text(f"N{i}\n")
            port = free_port(host)
            backs.append(subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", host,
                                           "--directory", str(root)], stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL))
            reals.append(f"{host}:{port}")

        def h(*args):
            r = subprocess.run(HALB + list(args), env=env, capture_output=True, text=True, timeout=30)
            say(f"$ halb {' '.join(args)}")
            if r.stdout.strip():
                say(r.stdout.rstrip())
            if r.returncode:
                raise HalbError(f"demo: halb {' '.join(args)}: {r.stderr.strip()}")

        h("proxy", "start")
        h("ipvsadm", "-A", "-t", f"{vip}:{vport}", "-s", "rr")
        for r in reals:
            h("ipvsadm", "-a", "-t", f"{vip}:{vport}", "-r", r, "-m")
        import urllib.request
        time.sleep(0.5)
        answers = []
        for _ in range(6):
            for attempt in range(20):
                try:
                    with urllib.request.urlopen(f"http://{vip}:{vport}/testcluster.html", timeout=2) as resp:
                        answers.append(resp.read().decode().strip())
                    break
                except OSError:
                    time.sleep(0.2)
        say(f"$ curl http://{vip}:{vport}/testcluster.html x6 -> {' '.join(answers)}")
        h("ipvsadm", "-L", "-n")
        h("ipvsadm", "-l", "--stats", "-n")
        h("ipvsadm", "-C")
        return 0
    finally:
        subprocess.run(HALB + ["proxy", "stop"], env=env, capture_output=True, timeout=30)
        for p in backs:
            p.send_signal(signal.SIGTERM)
            p.wait(5)
        shutil.rmtree(base, ignore_errors=True)
