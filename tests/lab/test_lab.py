"""The namespace lab: topology, hostnames, Apache, faults, clean-up."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from halb.lab import Lab, LabError, lab_root

pytestmark = pytest.mark.root

HALB = [sys.executable, "-m", "halb"]


def _halb(*args, timeout=60, **kw):
    return subprocess.run(HALB + list(args), capture_output=True, text=True, timeout=timeout, **kw)


def _leftovers(name: str, lab_dir: Path) -> list[str]:
    """Everything of lab `name` still present on the machine."""
    left = []
    r = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    left += [ln.split()[0] for ln in r.stdout.splitlines() if ln.startswith(f"halb-{name}-")]
    with open("/proc/mounts") as fh:
        left += [ln.split()[1] for ln in fh if str(lab_dir) in ln]
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if str(lab_dir) in cmd or f"halb-{name}-" in cmd:
            left.append(f"pid {pid}: {cmd}")
    if lab_dir.exists():
        left.append(str(lab_dir))
    return left


def _wait(pred, timeout=15.0, interval=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(interval)
    return pred()


def test_topology_hostnames_and_addresses(lab):
    n1, n2, c0 = lab.node("N1"), lab.node("N2"), lab.client(0)
    assert lab.node(1) is n1
    # the article's plan: RIP1=.1, RIP2=.2, VIP=.10, clients from .100
    base = lab.subnet.rsplit(".", 1)[0]
    assert (n1.rip, n2.rip, lab.vip, c0.ip) == (f"{base}.1", f"{base}.2", f"{base}.10", f"{base}.100")
    for n in (n1, n2, c0):
        assert lab.run(n.name, ["uname", "-n"], check=True).stdout.strip() == n.name
        addrs = json.loads(lab.run(n.name, ["ip", "-j", "addr", "show", "dev", n.iface], check=True).stdout)
        assert addrs[0]["address"] == n.mac
        assert [(a["local"], a["prefixlen"]) for a in addrs[0]["addr_info"] if a["family"] == "inet"] == [(n.ip, 24)]
        # no route out of the lab
        routes = lab.run(n.name, ["ip", "route", "show", "default"], check=True).stdout
        assert routes.strip() == ""
    # the VIP is free: nobody answers for it yet
    assert lab.run("client0", ["ping", "-c1", "-W1", lab.vip]).returncode != 0
    assert lab.run("client0", ["ping", "-c1", "-W2", n2.ip]).returncode == 0
    # the host keeps its own hostname and sees none of the lab's links
    assert os.uname().nodename not in ("N1", "N2")
    host_links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert n1.iface not in host_links and n1.port not in host_links and lab.bridge not in host_links


def test_apache_answers_and_skips_health_checks_in_log(lab):
    for name in ("N1", "N2"):
        ip = lab.node(name).ip
        assert lab.http_get("client0", f"http://{ip}/testcluster.html") == (200, f"{name}\n")
        status, body = lab.http_get("client0", f"http://{ip}/index.html")
        assert status == 200 and name in body
        assert lab.http_get("client0", f"http://{ip}/missing.html")[0] == 404
    # the real curl, too
    assert lab.curl("client0", f"http://{lab.node('N2').ip}/testcluster.html").stdout == "N2\n"
    log = lab.apache_log("N1")
    text = _wait(lambda: log.read_text() if log.exists() and "missing.html" in log.read_text() else "")
    assert "GET /index.html HTTP/1.0" in text and "GET /missing.html" in text
    assert lab.client(0).ip in text
    assert "testcluster" not in text  # §5.4: the director's checks are not logged


def test_apache_stop_start(lab):
    url = f"http://{lab.node('N2').ip}/testcluster.html"
    lab.apache_stop("N2")
    assert not lab.apache_running("N2")
    with pytest.raises(LabError, match="refused"):
        lab.http_get("client0", url)
    assert lab.http_get("client0", f"http://{lab.node('N1').ip}/testcluster.html")[1] == "N1\n"
    lab.apache_start("N2")
    assert lab.apache_running("N2")
    assert lab.http_get("client0", url) == (200, "N2\n")


@pytest.mark.timeout(120)
def test_faults_cut_freeze_kill(lab):
    url = f"http://{lab.node('N1').ip}/testcluster.html"
    lab.cut_link("N1")
    with pytest.raises(LabError):
        lab.http_get("client0", url, timeout=1)
    lab.restore_link("N1")
    assert _wait(lambda: _try(lab, url), timeout=20) == "N1\n"

    frozen = lab.freeze("N1")
    assert frozen and _wait(lambda: all(_proc_state(p) == "T" for p in frozen))
    with pytest.raises(LabError, match="timed out"):
        lab.http_get("client0", url, timeout=1)
    lab.thaw("N1")
    assert _wait(lambda: _try(lab, url), timeout=20) == "N1\n"

    sleeper = lab.popen("N1", ["sleep", "600"])
    assert _wait(lambda: sleeper.pid in lab.pids("N1"))
    killed = lab.kill_node("N1")
    assert sleeper.pid in killed and lab.pids("N1") == []
    assert sleeper.wait(timeout=10) == -signal.SIGKILL
    with pytest.raises(LabError, match="refused"):
        lab.http_get("client0", url)
    lab.apache_start("N1")
    assert lab.http_get("client0", url)[1] == "N1\n"


def _try(lab, url):
    try:
        return lab.http_get("client0", url, timeout=1)[1]
    except LabError:
        return None


def _proc_state(pid):
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def test_two_labs_coexist_and_down_removes_everything(make_lab):
    a = make_lab(nodes=3, clients=2, apache=True)
    b = make_lab(nodes=1, clients=1, apache=True, nginx=True)
    assert a.name != b.name and a.node("N1").netns != b.node("N1").netns
    assert [n.name for n in a.nodes] == ["N1", "N2", "N3"] and a.client(1).ip.endswith(".101")
    assert a.http_get("client1", f"http://{a.node('N3').ip}/testcluster.html")[1] == "N3\n"
    assert b.http_get("client0", f"http://{b.node('N1').ip}/testcluster.html")[1] == "N1\n"
    assert b.http_get("client0", f"http://{b.node('N1').ip}:{b.nginx_port}/testcluster.html")[1] == "N1\n"
    sleeper = a.popen("N2", ["sleep", "600"])
    a.freeze("N1")          # even a hung machine goes away
    a.down()
    assert _leftovers(a.name, a.dir) == []
    assert sleeper.poll() is not None
    # b is untouched
    assert b.http_get("client0", f"http://{b.node('N1').ip}/testcluster.html")[1] == "N1\n"
    nginx = b.nginx_pid("N1")
    assert nginx in b.pids("N1")
    b.nginx_stop("N1")
    assert b.nginx_pid("N1") is None and nginx not in b.pids("N1")
    with pytest.raises(LabError, match="refused"):
        b.http_get("client0", f"http://{b.node('N1').ip}:{b.nginx_port}/testcluster.html")
    assert b.http_get("client0", f"http://{b.node('N1').ip}/testcluster.html")[1] == "N1\n"
    b.down()
    assert _leftovers(b.name, b.dir) == []


@pytest.mark.timeout(120)
def test_cli_up_status_exec_down():
    name = "t%05x" % random.getrandbits(20)
    lab_dir = lab_root() / name
    try:
        r = _halb("lab", "up", "--name", name, "--nodes", "2")
        assert r.returncode == 0, r.stderr
        assert "N1" in r.stdout and "VIP" in r.stdout
        r = _halb("lab", "exec", "--name", name, "N2", "--", "uname", "-n")
        assert (r.returncode, r.stdout) == (0, "N2\n")
        assert _halb("lab", "exec", "--name", name, "N1", "--", "sh", "-c", "exit 7").returncode == 7
        st = json.loads(_halb("lab", "status", "--name", name, "--json").stdout)
        assert [n["name"] for n in st["nodes"]] == ["N1", "N2", "client0"]
        assert all(n["apache"] for n in st["nodes"] if n["kind"] == "node")
        # the lab outlives the CLI: Attach and use it from Python
        lab = Lab.attach(name)
        assert lab.http_get("client0", "http://N1/testcluster.html")[1] == "N1\n"
        r = _halb("lab", "apache", "--name", name, "N2", "stop")
        assert r.returncode == 0 and "stopped" in r.stdout
        with pytest.raises(LabError):
            lab.http_get("client0", "http://N2/testcluster.html")
        # a second lab with the same name is refused, the first one kept
        r = _halb("lab", "up", "--name", name)
        assert r.returncode == 1 and "already exists" in r.stderr and "\n" == r.stderr[-1] and r.stderr.count("\n") == 1
        assert lab.http_get("client0", "http://N1/testcluster.html")[1] == "N1\n"
        r = _halb("lab", "down", "--name", name)
        assert r.returncode == 0 and f"netns halb-{name}-N1" in r.stdout
        assert _leftovers(name, lab_dir) == []
    finally:
        _halb("lab", "down", "--name", name)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("when", ["midway", "after"])
def test_down_after_creator_sigkill(when):
    name = "k%05x" % random.getrandbits(20)
    lab_dir = lab_root() / name
    try:
        p = subprocess.Popen(HALB + ["lab", "up", "--name", name, "--nodes", "3", "--clients", "2"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if when == "midway":
            # kill it while it builds: some namespaces exist, others not yet
            assert _wait(lambda: os.path.exists(f"/run/netns/halb-{name}-N1"), timeout=30)
        else:
            assert p.wait(timeout=60) == 0
            # a stray long-running process inside a node
            subprocess.Popen(["nsenter", f"--net=/run/netns/halb-{name}-N2", "sleep", "600"],
                             start_new_session=True)
            assert _wait(lambda: any("sleep 600" in c for c in _cmds_in(f"halb-{name}-N2")))
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=10)
        r = _halb("lab", "down", "--name", name)
        assert r.returncode == 0, r.stderr
        assert _wait(lambda: _leftovers(name, lab_dir) == [], timeout=10), _leftovers(name, lab_dir)
    finally:
        _halb("lab", "down", "--name", name)


def _cmds_in(ns):
    from halb.lab.netns import pids_in
    out = []
    for pid in pids_in(f"/run/netns/{ns}"):
        try:
            out.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode())
        except OSError:
            pass
    return out


def test_cli_bad_input_one_line_errors():
    name = "b%05x" % random.getrandbits(20)
    cases = [
        (["lab", "up", "--name", "bad name!"], "must be 1-12 letters or digits"),
        (["lab", "up", "--name", name, "--subnet", "10.1.2.3/24"], "host bits set"),
        (["lab", "up", "--name", name, "--nodes", "0"], "1..50 nodes"),
        (["lab", "exec", "--name", name, "N1", "--", "true"], f"no lab named '{name}'"),
        (["lab", "frobnicate"], "invalid choice"),
    ]
    for args, msg in cases:
        r = _halb(*args)
        assert r.returncode != 0, args
        assert r.stderr.startswith("halb: ") and msg in r.stderr and r.stderr.count("\n") == 1, (args, r.stderr)
    assert not (lab_root() / name).exists()
    assert not os.path.exists(f"/run/netns/halb-{name}-sw")


def test_exec_unknown_node_is_one_line(lab):
    name = lab.name
    r = _halb("lab", "exec", "--name", name, "N9", "--", "true")
    assert r.returncode == 1 and r.stderr == f"halb: lab {name} has no node 'N9'\n"


def test_nat_variant_gateway_topology(make_lab):
    lab = make_lab(nodes=3, clients=1, apache=True, gateway="N1")
    n1, n2, c0 = lab.node("N1"), lab.node("N2"), lab.client(0)
    pub = lab.public_subnet.rsplit(".", 1)[0]
    assert lab.public_subnet != lab.subnet
    assert (n1.pub_ip, lab.vip, c0.ip) == (f"{pub}.1", f"{pub}.10", f"{pub}.100")
    assert lab.run("N1", ["cat", "/proc/sys/net/ipv4/ip_forward"], check=True).stdout.strip() == "1"
    # the real servers answer through the gateway...
    for name in ("N2", "N3"):
        route = lab.run(name, ["ip", "route", "get", c0.ip], check=True).stdout
        assert f"via {n1.ip}" in route
    assert lab.run("N2", ["ping", "-c1", "-W2", n1.pub_ip]).returncode == 0
    # ...the clients reach the gateway's public leg, never the real servers directly
    assert lab.http_get("client0", f"http://{n1.pub_ip}/testcluster.html")[1] == "N1\n"
    with pytest.raises(LabError, match="unreachable"):
        lab.http_get("client0", f"http://{n2.ip}/testcluster.html")
    lab.down()
    assert _leftovers(lab.name, lab.dir) == []


@pytest.mark.timeout(120)
def test_down_stale_removes_only_labs_of_dead_creators():
    alive = "s%05x" % random.getrandbits(20)
    dead = "d%05x" % random.getrandbits(20)
    code = ("import sys, time; from halb.lab import Lab; "
            "Lab(nodes=1, clients=0, apache=False, name=sys.argv[1]).up(); print('up', flush=True); time.sleep(600)")
    p = subprocess.Popen([sys.executable, "-c", code, dead], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "up"
        assert _halb("lab", "up", "--name", alive, "--nodes", "1", "--clients", "0", "--no-apache").returncode == 0
        r = _halb("lab", "down", "--stale")
        assert f"lab {dead}" not in r.stdout            # its creator still runs
        p.kill()
        p.wait(timeout=10)
        r = _halb("lab", "down", "--stale")
        assert r.returncode == 0 and f"lab {dead}: removed" in r.stdout and alive not in r.stdout
        assert _leftovers(dead, lab_root() / dead) == []
        assert os.path.exists(f"/run/netns/halb-{alive}-N1")   # `halb lab up` labs are kept
    finally:
        p.kill()
        _halb("lab", "down", "--name", dead)
        _halb("lab", "down", "--name", alive)
