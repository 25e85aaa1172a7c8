"""halb as a service on real Debian machines: two booted Debian 12 containers
(mmdebstrap + systemd-nspawn -b, real systemd) on a bridge, `scripts/install`
in each, the article's files in /etc/ha.d, then what a sysadmin checks:

- `systemctl enable --now halb-realserver halb-heartbeat` brings the VIP up on
  N1 and the VIP serves both Apaches (Direct Return through N1's director);
- `systemctl reload halb-heartbeat` keeps the MainPID and the VIP;
- killing N1's container moves the VIP to N2, which serves it;
- the journal holds each of heartbeat's lines once (no stderr + syslog copy);
- `man halb-heartbeat` has a page; `scripts/install --uninstall` leaves
  nothing of halb on the machine (file tree compared with before the install).

The Debian root is built with mmdebstrap (stock bookworm, minbase, plus
systemd, python3-venv, apache2 and halb's runtime packages) and kept under
/var/cache/halb-test when that directory exists. The containers have no
uplink: the Python packages come from a wheelhouse made on the host
(`scripts/install --wheels`), cached there too.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import random
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[2]
CACHE = Path("/var/cache/halb-test")
SUITE = "bookworm"
PACKAGES = ["systemd", "systemd-sysv", "dbus", "iproute2", "python3", "python3-venv", "apache2"]


def runtime_packages() -> list[str]:
    out = []
    for line in (REPO / "packaging/debian-packages").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            out.append(line)
    return out


def sh(*argv, check=True, timeout=300, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=timeout, **kw)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, argv))} -> {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r


@contextlib.contextmanager
def cache_lock(name):
    CACHE.mkdir(parents=True, exist_ok=True) if CACHE.exists() else None
    path = (CACHE if CACHE.exists() else Path(tempfile.gettempdir())) / f".{name}.lock"
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def base_root(workdir: Path) -> Path:
    """The stock Debian root: cached under /var/cache/halb-test when present."""
    include = sorted(set(PACKAGES + runtime_packages()))
    key = hashlib.sha1(f"{SUITE} {' '.join(include)}".encode()).hexdigest()[:12]
    where = CACHE if CACHE.is_dir() else workdir
    root = where / f"{SUITE}-{key}"
    with cache_lock("root"):
        if (root / ".halb-test-complete").exists():
            return root
        shutil.rmtree(root, ignore_errors=True)
        tmp = where / f".{root.name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        sh("mmdebstrap", "--variant=minbase", "--include=" + ",".join(include), "--quiet",
           SUITE, tmp, timeout=600)
        (tmp / ".halb-test-complete").write_text("")
        tmp.rename(root)
    return root


def wheelhouse(workdir: Path) -> Path:
    """halb's runtime Python dependencies as wheels (built on this Debian 12 host,
    same Python as the containers), plus the build backend."""
    text = (REPO / "pyproject.toml").read_text()
    key = hashlib.sha1(text.encode()).hexdigest()[:12]
    where = CACHE if CACHE.is_dir() else workdir
    d = where / f"wheels-{key}"
    with cache_lock("wheels"):
        if (d / ".complete").exists():
            return d
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        src = workdir / "wheel-src"
        shutil.rmtree(src, ignore_errors=True)
        src.mkdir()
        shutil.copy(REPO / "pyproject.toml", src)
        shutil.copytree(REPO / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__"))
        sh("python3", "-m", "pip", "wheel", "-q", "--disable-pip-version-check", "-w", d, src, timeout=600)
        sh("python3", "-m", "pip", "download", "-q", "--disable-pip-version-check", "-d", d,
           "setuptools>=64", "wheel", timeout=600)
        for w in d.glob("halb-*.whl"):
            w.unlink()                      # halb itself is built by scripts/install inside
        (d / ".complete").write_text("")
    return d


def checkout_files() -> list[str]:
    r = sh("git", "-C", REPO, "ls-files", "-co", "--exclude-standard")
    return [f for f in r.stdout.splitlines() if f and (REPO / f).is_file()]


class Node:
    def __init__(self, name, root: Path, bridge: str, addr: str, log: Path):
        self.name, self.root, self.bridge, self.addr, self.logpath = name, root, bridge, addr, log
        self.proc = None
        self.leader = None

    def boot(self):
        self.log = open(self.logpath, "w")
        self.proc = subprocess.Popen(
            ["systemd-nspawn", "-q", "-b", "--register=no", "--keep-unit", "-D", str(self.root),
             f"--machine=halbt-{self.name}-{os.getpid()}", f"--hostname={self.name}",
             f"--network-bridge={self.bridge}", "--console=read-only"],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def find_leader(self, timeout=60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"{self.name}: nspawn exited: {self.logpath.read_text()[-2000:]}"
            kids = _children(self.proc.pid)
            for k in kids:
                try:
                    if os.readlink(f"/proc/{k}/ns/pid") != os.readlink("/proc/self/ns/pid"):
                        self.leader = k
                        return k
                except OSError:
                    pass
            time.sleep(0.1)
        raise AssertionError(f"{self.name}: no container init after {timeout}s")

    def run(self, cmd: str, check=True, timeout=300) -> subprocess.CompletedProcess:
        env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
               "HOME": "/root", "TERM": "dumb", "SYSTEMD_PAGER": "", "SYSTEMD_COLORS": "0"}
        return sh("nsenter", "-t", self.leader, "-m", "-u", "-i", "-n", "-p", "--", "/bin/sh", "-c", cmd,
                  check=check, timeout=timeout, env=env)

    def wait_booted(self, timeout=90):
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            state = self.run("systemctl is-system-running", check=False).stdout.strip()
            if state in ("running", "degraded"):
                return state
            time.sleep(0.3)
        raise AssertionError(f"{self.name}: system not up after {timeout}s (state {state!r}); "
                             + self.run("systemctl --failed --no-legend", check=False).stdout)

    def has_addr(self, addr, dev="host0") -> bool:
        r = self.run(f"ip -4 -o addr show dev {dev}", check=False)
        return f" {addr}/" in r.stdout

    def kill(self):
        """A crash: the container's init and everything in it, at once."""
        if self.leader:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.leader, signal.SIGKILL)
        if self.proc is not None:
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)

    def stop(self):
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)       # nspawn: orderly poweroff of the container
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.kill()


def _children(pid) -> list[int]:
    out = []
    with contextlib.suppress(OSError):
        for t in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{t}/children") as fh:
                out += [int(x) for x in fh.read().split()]
    return out


def wait_for(pred, timeout, what, step=0.3):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def http_get(url, timeout=2.0) -> str | None:
    import urllib.request
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))   # straight to the VIP
    try:
        with opener.open(url, timeout=timeout) as r:
            return r.read().decode().strip()
    except OSError:
        return None


SNAPSHOT_SKIP = ("/proc", "/sys", "/dev", "/run", "/tmp", "/var/tmp", "/var/log/journal", "/var/cache",
                 "/var/lib/systemd", "/root/halb-src", "/root/wheels", "/root/.cache", "/var/log/ha.log",
                 "/var/log/ha.debug", "/var/log/apache2", "/var/lib/apt", "/var/lib/dpkg", "/var/log/apt",
                 "/var/log/dpkg.log", "/etc/ld.so.cache", "/var/lib/dbus", "/var/log/alternatives.log",
                 "/etc/ganglia", "/etc/default/halb-sync", "/etc/ha.d/extra.cf")


def snapshot(node: Node) -> set[str]:
    prune = " -o ".join(f"-path {p}" for p in SNAPSHOT_SKIP)
    r = node.run(f"find / -xdev \\( {prune} \\) -prune -o -print", timeout=120)
    return set(r.stdout.splitlines())


def article_files(vip, n1, n2) -> dict[str, str]:
    ex = REPO / "examples"
    sub = lambda s: s.replace("$VIP", vip).replace("$RIP1", n1).replace("$RIP2", n2)  # noqa: E731
    hacf = (ex / "ha.cf").read_text().replace("mcast      eth0", "mcast      host0")
    return {"ha.cf": hacf, "authkeys": (ex / "authkeys").read_text(),
            "haresources": sub((ex / "haresources").read_text()),
            "ldirectord.cf": sub((ex / "ldirectord.cf").read_text())}


def test_two_debian_machines_with_systemd():
    for tool in ("mmdebstrap", "systemd-nspawn", "nsenter"):
        assert shutil.which(tool), f"{tool} is missing (Debian packages mmdebstrap, systemd-container)"
    t0 = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="halb-svc-"))
    tag = f"{os.getpid() % 10000:04d}{random.randrange(100):02d}"
    bridge = f"hbsv{tag}"
    net = f"10.{random.randrange(200, 250)}.{random.randrange(1, 250)}"
    vip, a1, a2, host = f"{net}.100", f"{net}.11", f"{net}.12", f"{net}.1"
    nodes: list[Node] = []
    timings = {}
    try:
        base = base_root(work)
        wheels = wheelhouse(work)
        timings["root+wheels"] = time.monotonic() - t0
        sh("ip", "link", "add", "name", bridge, "type", "bridge")
        sh("ip", "addr", "add", f"{host}/24", "dev", bridge)
        sh("ip", "link", "set", bridge, "up")
        files = checkout_files()
        ha = article_files(vip, a1, a2)
        for name, addr in (("N1", a1), ("N2", a2)):
            root = work / name
            sh("cp", "-a", "--reflink=auto", base, root, timeout=300)
            src = root / "root/halb-src"
            for f in files:
                (src / f).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(REPO / f, src / f)
            shutil.copytree(wheels, root / "root/wheels")
            net_d = root / "etc/systemd/network"
            net_d.mkdir(parents=True, exist_ok=True)
            (net_d / "10-host0.network").write_text(f"[Match]\nName=host0\n\n[Network]\nAddress={addr}/24\n"
                                                    "LinkLocalAddressing=no\nIPv6AcceptRA=no\n")
            wants = root / "etc/systemd/system/multi-user.target.wants"
            wants.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileExistsError):
                (wants / "systemd-networkd.service").symlink_to("/lib/systemd/system/systemd-networkd.service")
            (root / "etc/hostname").write_text(name + "\n")
            (root / "var/www/html/testcluster.html").write_text(name + "\n")
            had = root / "etc/ha.d"
            had.mkdir(parents=True, exist_ok=True)
            for fn, text in ha.items():
                (had / fn).write_text(text)
            (had / "authkeys").chmod(0o600)
            nodes.append(Node(name, root, bridge, addr, work / f"{name}.console"))
        n1, n2 = nodes
        for n in nodes:
            n.boot()
        for n in nodes:
            n.find_leader()
        for n in nodes:
            n.wait_booted()
            wait_for(lambda: n.has_addr(n.addr), 30, f"{n.name}'s address")
        timings["boot"] = time.monotonic() - t0
        before = {n.name: snapshot(n) for n in nodes}

        # ---- install, in both at once
        procs = {n.name: subprocess.Popen(
            ["nsenter", "-t", str(n.leader), "-m", "-u", "-i", "-n", "-p", "--", "/bin/sh", "-c",
             "cd /root/halb-src && ./scripts/install --wheels /root/wheels"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root"})
            for n in nodes}
        for name, p in procs.items():
            out, _ = p.communicate(timeout=400)
            assert p.returncode == 0, f"scripts/install on {name} failed:\n{out}"
        timings["install"] = time.monotonic() - t0
        for n in nodes:
            assert n.run("command -v halb").stdout.strip() == "/usr/local/bin/halb"
            assert "halb 0." in n.run("halb --version").stdout
            assert n.run("halb heartbeat -t").returncode == 0
            assert (n.root / "usr/local/share/man/man8/halb-heartbeat.8.gz").exists()
            assert sorted(p.name for p in (n.root / "usr/share/doc/halb/examples").iterdir()) == \
                sorted(p.name for p in (REPO / "examples").iterdir())
        if shutil.which("man"):
            page = sh("man", "-l", n1.root / "usr/local/share/man/man8/halb-heartbeat.8.gz",
                      env={**os.environ, "MANPAGER": "cat", "PAGER": "cat"}).stdout
            assert "halb heartbeat" in page and "-t" in page

        # ---- the article's two machines
        for n in nodes:
            n.run("systemctl enable --now halb-realserver halb-heartbeat", timeout=200)
        for n in nodes:
            st = n.run("systemctl is-active halb-realserver halb-heartbeat", check=False).stdout.split()
            assert st == ["active", "active"], f"{n.name}: {st}\n" + n.run(
                "journalctl -b --no-pager -n 80 -u halb-heartbeat -u halb-realserver", check=False).stdout
        wait_for(lambda: n1.has_addr(vip), 120, "the VIP on N1")
        assert not n2.has_addr(vip)
        seen = wait_for(lambda: _both_served(vip), 90, "the VIP serving both Apaches")
        timings["vip serves both"] = time.monotonic() - t0

        # ---- reload keeps the daemon and the VIP
        pid = n1.run("systemctl show -p MainPID --value halb-heartbeat").stdout.strip()
        n1.run("systemctl reload halb-heartbeat", timeout=60)
        time.sleep(1)
        assert n1.run("systemctl show -p MainPID --value halb-heartbeat").stdout.strip() == pid
        assert n1.run("systemctl is-active halb-heartbeat", check=False).stdout.strip() == "active"
        assert n1.has_addr(vip)
        jr = n1.run("journalctl -b --no-pager -o cat -u halb-heartbeat").stdout
        assert "reload:" in jr, jr[-2000:]
        # a bad file on reload: logged with file:line, the running configuration kept
        n1.run("cp /etc/ha.d/ha.cf /root/ha.cf.good && echo 'keepalive soon' >> /etc/ha.d/ha.cf")
        n1.run("systemctl reload halb-heartbeat", timeout=60)
        wait_for(lambda: "/etc/ha.d/ha.cf:" in n1.run(
            "journalctl -b --no-pager -o cat -u halb-heartbeat -p err").stdout, 10, "the reload error")
        assert n1.run("systemctl show -p MainPID --value halb-heartbeat").stdout.strip() == pid
        assert n1.has_addr(vip)
        n1.run("cp /root/ha.cf.good /etc/ha.d/ha.cf")

        # ---- journal: heartbeat's lines once each (stderr only: no syslog copy), with priorities
        for n in nodes:
            lines = n.run("journalctl -b --no-pager -o cat -u halb-heartbeat").stdout.splitlines()
            start = [ln for ln in lines if "halb heartbeat starting on node" in ln]
            assert len(start) == 1, f"{n.name}: start line {len(start)} times in the journal:\n" + "\n".join(lines)
            warn = n.run("journalctl -b --no-pager -o cat -u halb-heartbeat -p warning").stdout
            assert "serial" in warn          # the article's serial line: a warning, at warning priority
        # the article's logfile is honoured beside the journal
        assert "halb heartbeat starting on node N1" in (n1.root / "var/log/ha.log").read_text()

        # ---- N1 crashes: the VIP moves to N2, which serves it
        n1.kill()
        t_kill = time.monotonic()
        wait_for(lambda: n2.has_addr(vip), 60, "the VIP on N2 after N1's crash")
        timings["failover"] = time.monotonic() - t_kill
        wait_for(lambda: http_get(f"http://{vip}/testcluster.html") == "N2", 60, "N2 serving the VIP")
        jr = n2.run("journalctl -b --no-pager -o cat -u halb-heartbeat").stdout
        assert "N1" in jr and "dead" in jr.lower(), jr[-3000:]

        # ---- the other units start, are ready, reload with the same MainPID, stop
        # a fatal start-up error reaches the journal, at error priority, with file:line
        n2.run("mkdir -p /etc/ganglia && printf 'data_source \"c\" 127.0.0.1\\nbogus 1\\n' > /etc/ganglia/gmetad.conf")
        assert n2.run("systemctl start halb-gmetad", check=False, timeout=60).returncode != 0
        assert "/etc/ganglia/gmetad.conf:2:" in n2.run("journalctl -b --no-pager -o cat -p err -u halb-gmetad").stdout
        n2.run("systemctl reset-failed halb-gmetad")
        n2.run(f"mkdir -p /etc/ganglia && echo 'data_source \"cluster\" 5 127.0.0.1:8649' > /etc/ganglia/gmetad.conf")
        n2.run("echo 'SYNC_OPTS=\"--mcast-interface host0 --sync-key-file /etc/ha.d/authkeys\"' > /etc/default/halb-sync")
        others = ["halb-gmond", "halb-gmetad", "halb-exporter", "halb-proxy", "halb-sync@backup"]
        n2.run(f"printf 'checkinterval=1\\nvirtual={a2}:8081\\n\\treal={a2}:80 masq\\n\\tchecktype=on\\n' "
               "> /etc/ha.d/extra.cf")
        others.append("halb-director@extra.cf")
        n2.run("systemctl start " + " ".join(others), timeout=120)
        for u in others:
            assert n2.run(f"systemctl is-active {u}", check=False).stdout.strip() == "active", \
                n2.run(f"journalctl -b --no-pager -n 30 -u {u}", check=False).stdout
            pid = n2.run(f"systemctl show -p MainPID --value {u}").stdout.strip()
            n2.run(f"systemctl reload {u}", timeout=60)
            time.sleep(0.3)
            assert n2.run(f"systemctl show -p MainPID --value {u}").stdout.strip() == pid, u
            assert re.search("reload:|Reloading", n2.run(f"journalctl -b --no-pager -o cat -u {u}").stdout), u
        assert "gmetad" in (http_get(f"http://{a2}:8080/") or "").lower() or http_get(f"http://{a2}:8080/api/state")
        assert "node_ipvs" in (http_get(f"http://{a2}:9643/metrics") or "")
        n2.run("systemctl stop " + " ".join(others), timeout=120)

        # ---- uninstall leaves nothing
        n2.run("cd /root/halb-src && ./scripts/install --uninstall", timeout=200)
        after = snapshot(n2)
        left = sorted(after - before["N2"])
        assert not left, f"left behind by install + uninstall: {left[:40]}"
        assert not n2.has_addr(vip)
        assert n2.run("ip -o addr show dev lo").stdout.count(vip) == 0
        assert "halb" not in n2.run("nft list tables", check=False).stdout
        procs_left = [a for a in n2.run("ps -eo args=").stdout.splitlines() if "halb" in a and "ps -eo" not in a]
        assert not procs_left, procs_left
        assert n2.run("systemctl list-units --all --no-legend 'halb-*'", check=False).stdout.strip() == ""
        timings["total"] = time.monotonic() - t0
        print("service test timings (s from start): " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items())
              + f"; seen on the VIP: {sorted(seen)}")
    finally:
        for n in nodes:
            with contextlib.suppress(Exception):
                n.stop()
        subprocess.run(["ip", "link", "del", bridge], capture_output=True)
        for n in nodes:
            if n.proc is not None and n.proc.poll() is None:
                with contextlib.suppress(Exception):
                    os.killpg(n.proc.pid, signal.SIGKILL)
        shutil.rmtree(work, ignore_errors=True)


def _both_served(vip):
    seen = set()
    for _ in range(8):
        body = http_get(f"http://{vip}/testcluster.html")
        if body:
            seen.add(body)
    return seen if seen >= {"N1", "N2"} else None
