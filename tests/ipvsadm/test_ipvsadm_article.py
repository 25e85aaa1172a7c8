"""`halb ipvsadm` driven exactly as the article drives ipvsadm, against a
running `halb proxy` on loopback with two real HTTP back ends answering
"N1" and "N2". Every `halb` is a subprocess with its own --run-dir."""
from __future__ import annotations

import http.client
import os
import random
import socket
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.timeout(120)

# per-run random ports and 127.x.y.z addresses: other test runs share the machine
VPORT = random.randint(20000, 29999)
RPORT = random.randint(30000, 39999)
UPORT = random.randint(40000, 49999)


def _wait_port(host, port, deadline=20.0):
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"{host}:{port} never answered")


class Lab:
    def __init__(self, tmp_path):
        net = f"127.{random.randint(1, 254)}.{random.randint(1, 254)}"
        self.vip = f"{net}.10"
        self.rip1 = f"{net}.2"
        self.rip2 = f"{net}.3"
        self.client1 = f"{net}.50"
        self.client2 = f"{net}.51"
        self.svc = f"{self.vip}:{VPORT}"
        self.run_dir = tmp_path / "run"
        self.tmp = tmp_path
        self.procs = []

    def halb(self, *args, stdin=None, env=None, engine=True, check=True):
        argv = [sys.executable, "-m", "halb", "--node", "ipvsadmtest", "--run-dir", str(self.run_dir)]
        if engine:
            argv += ["--engine", "proxy"]
        e = dict(os.environ)
        e.pop("HALB_ENGINE", None)
        e.update(env or {})
        r = subprocess.run(argv + list(args), input=stdin, capture_output=True, text=True, env=e, timeout=60)
        if check:
            assert r.returncode == 0, f"halb {' '.join(args)} -> {r.returncode}: {r.stderr}"
        return r

    def ipvsadm(self, line, **kw):
        return self.halb("ipvsadm", *line.split(), **kw)

    def start_backend(self, addr, text):
        d = self.tmp / text
        d.mkdir()
        (d / "index.html").write_text(text + "\n")
        p = subprocess.Popen([sys.executable, "-m", "http.server", str(RPORT), "--bind", addr,
                              "--directory", str(d)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.procs.append(p)
        _wait_port(addr, RPORT)

    def get(self, source=None):
        """One request on a new connection, as curl would; returns the body."""
        c = http.client.HTTPConnection(self.vip, VPORT, timeout=10,
                                       source_address=(source or self.client1, 0))
        try:
            c.request("GET", "/", headers={"Connection": "close"})
            r = c.getresponse()
            body = r.read().decode().strip()
            assert r.status == 200
            return body
        finally:
            c.close()

    def close(self):
        self.halb("proxy", "stop", check=False)
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


@pytest.fixture
def lab(tmp_path):
    lab = Lab(tmp_path)
    try:
        lab.start_backend(lab.rip1, "N1")
        lab.start_backend(lab.rip2, "N2")
        lab.halb("proxy", "start")
        yield lab
    finally:
        lab.close()


def test_article_round_robin_listing_connections_stats_clear(lab):
    lab.ipvsadm(f"-A -t {lab.svc} -s rr")
    lab.ipvsadm(f"-a -t {lab.svc} -r {lab.rip1}:{RPORT} -m")
    lab.ipvsadm(f"-a -t {lab.svc} -r {lab.rip2}:{RPORT}")  # no method: the proxy's masq

    out = lab.ipvsadm("-L -n").stdout
    assert out == ("IP Virtual Server version 1.2.1 (size=4096)\n"
                   "Prot LocalAddress:Port Scheduler Flags\n"
                   "  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\n"
                   f"TCP  {lab.svc} rr\n"
                   + "  -> %-28s %-7s %-6d %-10u %-10u\n" % (f"{lab.rip1}:{RPORT}", "Masq", 1, 0, 0)
                   + "  -> %-28s %-7s %-6d %-10u %-10u\n" % (f"{lab.rip2}:{RPORT}", "Masq", 1, 0, 0))
    # without -n the port names come from /etc/services
    try:
        pname = socket.getservbyport(VPORT, "tcp")
    except OSError:
        pname = str(VPORT)
    assert f"TCP  {lab.vip}:{pname} rr\n" in lab.ipvsadm("-L").stdout

    bodies = [lab.get() for _ in range(6)]
    assert set(bodies) == {"N1", "N2"}
    assert all(a != b for a, b in zip(bodies, bodies[1:])), bodies  # strict alternation

    # the connection table shows the six connections of this client
    conns = lab.ipvsadm("-L -c -n").stdout.splitlines()
    assert conns[0] == "IPVS connection entries"
    assert conns[1] == "pro expire %-11s %-18s %-18s %s" % ("state", "source", "virtual", "destination")
    mine = [ln.split() for ln in conns[2:] if ln.split()[3].startswith(lab.client1 + ":")]
    assert len(mine) == 6, conns
    assert all(f[0] == "TCP" and f[4] == lab.svc for f in mine)
    assert sorted(f[5] for f in mine) == [f"{lab.rip1}:{RPORT}"] * 3 + [f"{lab.rip2}:{RPORT}"] * 3

    # the article's `ipvsadm -l --stats`: six connections, three per server
    stats = lab.ipvsadm("-l --stats -n").stdout.splitlines()
    assert stats[1].split() == ["Prot", "LocalAddress:Port", "Conns", "InPkts", "OutPkts", "InBytes", "OutBytes"]
    row = {ln.split()[-6] if ln.startswith("  ->") else ln.split()[1]: ln.split()[-5:] for ln in stats[3:]}
    assert row[lab.svc][0] == "6"
    assert row[f"{lab.rip1}:{RPORT}"][0] == "3" and row[f"{lab.rip2}:{RPORT}"][0] == "3"
    assert int(row[lab.svc][3]) > 0 and int(row[lab.svc][4]) >= 6 * len("N1\n")
    # InActConn counts the finished connections
    listing = lab.ipvsadm("-L -n").stdout
    inact = [int(ln.split()[-1]) for ln in listing.splitlines() if ln.startswith("  -> ") and "Masq" in ln]
    assert sum(inact) == 6

    # -Z zeroes the counters
    lab.ipvsadm("-Z")
    assert lab.ipvsadm("-l --stats -n").stdout.splitlines()[3].split()[2] == "0"

    lab.ipvsadm("-C")
    assert lab.ipvsadm("-L -n").stdout.count("\n") == 3
    with pytest.raises(OSError):
        lab.get()


def test_weighted_round_robin_follows_weights(lab):
    lab.ipvsadm(f"-A -t {lab.svc} -s wrr")
    lab.ipvsadm(f"-a -t {lab.svc} -r {lab.rip1}:{RPORT} -m -w 3")
    lab.ipvsadm(f"-a -t {lab.svc} -r {lab.rip2}:{RPORT} -m -w 1")
    bodies = [lab.get() for _ in range(8)]  # two full wrr cycles
    assert bodies.count("N1") == 6 and bodies.count("N2") == 2, bodies
    # -e changes the weight live
    lab.ipvsadm(f"-e -t {lab.svc} -r {lab.rip1}:{RPORT} -m -w 0")
    assert {lab.get() for _ in range(4)} == {"N2"}


def test_persistence_sticks_a_client_to_its_server(lab):
    lab.ipvsadm(f"-A -t {lab.svc} -s rr -p 60")
    lab.ipvsadm(f"-a -t {lab.svc} -r {lab.rip1}:{RPORT} -m")
    lab.ipvsadm(f"-a -t {lab.svc} -r {lab.rip2}:{RPORT} -m")
    assert f"TCP  {lab.svc} rr persistent 60\n" in lab.ipvsadm("-L -n").stdout
    first = [lab.get(lab.client1) for _ in range(5)]
    second = [lab.get(lab.client2) for _ in range(5)]
    assert len(set(first)) == 1 and len(set(second)) == 1, (first, second)
    assert first[0] != second[0]  # rr placed the two clients on different servers
    pc = lab.ipvsadm("-L -n --persistent-conn").stdout
    assert "PersistConn" in pc.splitlines()[1]


def test_save_restore_and_engine_selection(lab):
    lab.ipvsadm(f"-A -t {lab.svc} -s wrr -p 120 -M 255.255.255.0")
    lab.ipvsadm(f"-a -t {lab.svc} -r {lab.rip1}:{RPORT} -m -w 2 -x 100 -y 50")
    lab.ipvsadm(f"-a -t {lab.svc} -r {lab.rip2}:{RPORT} -m -w 1")
    saved = lab.ipvsadm("-S -n").stdout
    assert saved.splitlines()[0] == f"-A -t {lab.svc} -s wrr -p 120 -M 255.255.255.0"
    lab.ipvsadm("-C")
    assert lab.ipvsadm("-S -n").stdout == ""
    lab.halb("ipvsadm", "-R", stdin=saved)
    assert lab.ipvsadm("-S -n").stdout == saved
    assert lab.get() in ("N1", "N2")

    # a restore with a bad line: the line is named and nothing changes
    bad = f"-C\n-A -t {lab.vip}:9999 -s rr\n-a -t {lab.vip}:9999 -r {lab.rip1}:{RPORT} -m\n" \
          f"-a -t {lab.vip}:9999 -r {lab.rip1}:{RPORT} -m\n"
    r = lab.halb("ipvsadm", "-R", stdin=bad, check=False)
    assert r.returncode != 0 and "line 4: Destination already exists" in r.stderr
    assert "Traceback" not in r.stderr
    assert lab.ipvsadm("-S -n").stdout == saved

    # HALB_ENGINE selects the engine as --engine does
    r = lab.halb("ipvsadm", "-S", "-n", engine=False, env={"HALB_ENGINE": "proxy"})
    assert r.stdout == saved
    # another node's run dir has no proxy: a clear one-line error
    r = subprocess.run([sys.executable, "-m", "halb", "--run-dir", str(lab.tmp / "elsewhere"),
                        "--engine", "proxy", "ipvsadm", "-L"], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "no halb proxy running" in r.stderr and r.stderr.count("\n") == 1


def test_gate_is_refused_by_the_proxy_engine(lab):
    lab.ipvsadm(f"-A -t {lab.svc} -s rr")
    before = lab.ipvsadm("-S -n").stdout
    r = lab.ipvsadm(f"-a -t {lab.svc} -r {lab.rip1} -g", check=False)
    assert r.returncode != 0
    assert "gate" in r.stderr and "--engine nft" in r.stderr and r.stderr.count("\n") == 1
    r = lab.ipvsadm(f"-a -t {lab.svc} -r {lab.rip1} -w nine", check=False)
    assert r.returncode != 0 and "illegal weight specified" in r.stderr
    r = lab.ipvsadm(f"-A -t {lab.svc} -s rr", check=False)
    assert r.returncode != 0 and "Service already exists" in r.stderr
    assert lab.ipvsadm("-S -n").stdout == before


UDP_ECHO = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
while True:
    data, peer = s.recvfrom(2048)
    s.sendto(sys.argv[3].encode(), peer)
"""


def test_udp_service_round_robin_and_thresholds(lab):
    for addr, name in ((lab.rip1, "N1"), (lab.rip2, "N2")):
        lab.procs.append(subprocess.Popen([sys.executable, "-c", UDP_ECHO, addr, str(RPORT), name]))
    lab.ipvsadm(f"-A -u {lab.vip}:{UPORT} -s rr")
    lab.ipvsadm(f"-a -u {lab.vip}:{UPORT} -r {lab.rip1}:{RPORT} -m -x 100 -y 50")
    lab.ipvsadm(f"-a -u {lab.vip}:{UPORT} -r {lab.rip2}:{RPORT} -m")
    thr = lab.ipvsadm("-L -n --thresholds").stdout
    assert "  -> %-28s %-10u %-10u" % (f"{lab.rip1}:{RPORT}", 100, 50) in thr

    def ask(src_port_sock):
        end = time.monotonic() + 20
        while time.monotonic() < end:  # the echo servers may still be starting
            src_port_sock.sendto(b"who?", (lab.vip, UPORT))
            try:
                return src_port_sock.recvfrom(100)[0].decode()
            except socket.timeout:
                continue
        raise AssertionError("no UDP answer through the proxy")

    answers = []
    for _ in range(4):  # a new client socket (source port) is a new connection
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(0.5)
        s.bind((lab.client1, 0))
        answers.append(ask(s))
        s.close()
    assert sorted(answers) == ["N1", "N1", "N2", "N2"], answers
    conns = [ln.split() for ln in lab.ipvsadm("-L -c -n").stdout.splitlines()[2:]]
    assert any(f[0] == "UDP" and f[4] == f"{lab.vip}:{UPORT}" for f in conns), conns


def test_rate_shows_traffic_while_it_flows(lab):
    import threading

    lab.ipvsadm(f"-A -t {lab.svc} -s rr")
    lab.ipvsadm(f"-a -t {lab.svc} -r {lab.rip1}:{RPORT} -m")
    stop = threading.Event()

    def load():
        while not stop.is_set():
            lab.get()
            time.sleep(0.05)

    t = threading.Thread(target=load, daemon=True)
    t.start()
    try:
        end = time.monotonic() + 30
        cps = 0
        while time.monotonic() < end and cps == 0:
            rate = lab.ipvsadm("-L -n --rate").stdout.splitlines()
            assert rate[1].split() == ["Prot", "LocalAddress:Port", "CPS", "InPPS", "OutPPS", "InBPS", "OutBPS"]
            cps = int(rate[3].split()[2])
            time.sleep(0.5)
        assert cps > 0, rate
    finally:
        stop.set()
        t.join(15)
