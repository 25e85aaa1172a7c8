"""Resource limits of the proxy engine (issue 13): one client cannot starve
the daemon of descriptors. A real daemon under a low descriptor limit
(prlimit: soft = hard, so the raise at start cannot help), real back ends,
real clients on loopback; no root needed."""
from __future__ import annotations

import http.client
import socket
import time

import pytest

from proxy_helpers import Proxy, free_port, halb, wait_for
from halb.model import Dest, Service, ServiceKey
from halb.proxy.limits import CONTROL_RESERVE, Limits

pytestmark = pytest.mark.timeout(120)


def get(vip, source="127.0.0.1"):
    c = http.client.HTTPConnection(*vip, timeout=10, source_address=(source, 0))
    try:
        c.request("GET", "/")
        return c.getresponse().read().decode().strip()
    finally:
        c.close()


def listing(p):
    r = halb("ipvsadm", "-L", "-n", ctx=p.ctx, timeout=20)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_idle_tcp_flood_from_one_client_leaves_others_and_the_control_socket_served(tmp_path, web, vip):
    """150 idle connections from one client under ulimit -n 200 (they would
    need 300 descriptors): that client is capped, another client is served,
    `ipvsadm -L` answers and shows the caps, the log says which was reached."""
    p = Proxy(tmp_path / "run")
    held = []
    with p.foreground(["prlimit", "--nofile=200"]) as (proc, eng):
        k = ServiceKey("tcp", *vip)
        eng.add_service(Service(k, scheduler="rr"))
        eng.add_dest(k, Dest(*web["N1"]))
        assert listing(p).splitlines()[0] == "IP Virtual Server version 1.2.1 (size=4096)"  # nothing reached yet
        refused = 0
        for _ in range(150):
            try:
                held.append(socket.create_connection(vip, timeout=10, source_address=("127.0.0.1", 0)))
            except ConnectionResetError:
                refused += 1  # refused at once
        # the refused ones are reset at once; the kept ones stay open and idle
        time.sleep(0.5)
        for s in held:
            s.setblocking(False)
            try:
                if s.recv(1) == b"":
                    refused += 1
            except BlockingIOError:
                pass
            except ConnectionResetError:
                refused += 1
        st = eng.status()
        lim = st["limits"]
        assert lim["nofile"] == 200 and lim["maxconn_per_source"] == lim["maxconn"] // 4
        assert st["tcp_relays"] == lim["maxconn_per_source"]
        assert refused == 150 - lim["maxconn_per_source"]
        assert get(vip, source="127.0.0.2") == "N1"  # another client is served
        out = listing(p)  # the control socket answers
        assert f"maxconn {lim['maxconn']} (per source {lim['maxconn_per_source']})" in out.splitlines()[0]
        assert f"{refused} refused" in out.splitlines()[0]
        assert "client 127.0.0.1 reached its connection limit (maxconn-per-source" in p.log()
        for s in held:
            s.close()
        wait_for(lambda: eng.status()["tcp_relays"] == 0, what="relays to end")
        assert get(vip) == "N1"  # the capped client is served again once it lets go
        eng.stop()
        eng.close()
        assert proc.wait(15) == 0
    assert "Traceback" not in p.log() and "Too many open files" not in p.log()


def test_global_maxconn_and_descriptor_reserve(tmp_path, web, vip):
    """--maxconn caps every client together; more connections than the
    descriptors allow never take the control socket's reserve."""
    p = Proxy(tmp_path / "run")
    held = []
    with p.foreground(["prlimit", "--nofile=120"], ["--maxconn", "5000", "--maxconn-per-source", "0"]) \
            as (proc, eng):
        k = ServiceKey("tcp", *vip)
        eng.add_service(Service(k, scheduler="rr"))
        eng.add_dest(k, Dest(*web["N1"]))
        for i in range(120):
            try:
                held.append(socket.create_connection(vip, timeout=10,
                                                     source_address=(f"127.0.1.{i % 50 + 1}", 0)))
            except ConnectionResetError:
                pass  # refused at once
        st = wait_for(lambda: (lambda s: s["limits"]["refused_fds"] > 0 and s)(eng.status()), what="refusals")
        lim = st["limits"]
        assert lim["maxconn"] == 5000 and lim["fds"] <= lim["fd_budget"]
        assert st["tcp_relays"] * 2 <= 120 - CONTROL_RESERVE
        assert "maxconn 5000 needs more descriptors than ulimit -n 120 allows" in p.log()
        assert "reached the process descriptor limit (ulimit -n 120" in p.log()
        for _ in range(5):  # the control socket always answers, a new connection each time
            assert "halb proxy: maxconn 5000 (per source no cap)" in listing(p)
        for s in held:
            s.close()
        wait_for(lambda: eng.status()["tcp_relays"] == 0, what="relays to end")
        assert get(vip) == "N1"
    assert "Traceback" not in p.log() and "Too many open files" not in p.log()


def test_udp_flood_from_many_ports_evicts_least_recently_used_flows(tmp_path, web, udp_echo, vip):
    """400 UDP flows (one descriptor each) under ulimit -n 200: the flow table
    keeps the most recent ones, a new client is answered, TCP still works."""
    p = Proxy(tmp_path / "run")
    socks = []
    with p.foreground(["prlimit", "--nofile=200"], ["--maxconn-per-source", "0"]) as (proc, eng):
        addr = vip[0]
        uport = free_port(addr, socket.SOCK_DGRAM)
        ku = ServiceKey("udp", addr, uport)
        eng.add_service(Service(ku, scheduler="rr"))
        eng.add_dest(ku, Dest(*udp_echo["U1"]))
        kt = ServiceKey("tcp", *vip)
        eng.add_service(Service(kt, scheduler="rr"))
        eng.add_dest(kt, Dest(*web["N1"]))
        for _ in range(400):
            c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            c.bind(("127.0.0.1", 0))
            c.sendto(b"x", (addr, uport))
            socks.append(c)
            if len(socks) % 50 == 0:
                time.sleep(0.05)  # not more than the listener's receive buffer holds
        lim = wait_for(lambda: (lambda s: s["udp_evicted"] > 0 and s)(eng.status()["limits"]), what="evictions")
        maxconn = lim["maxconn"]
        wait_for(lambda: eng.status()["udp_flows"] == maxconn, what="a full flow table")
        # the most recent senders got their answer
        socks[-1].settimeout(10)
        assert socks[-1].recvfrom(100)[0] == b"U1:x"
        fresh = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        fresh.settimeout(10)
        fresh.bind(("127.0.0.3", 0))
        fresh.sendto(b"hello", (addr, uport))
        assert fresh.recvfrom(100)[0] == b"U1:hello"
        fresh.close()
        assert get(vip) == "N1"  # TCP takes the place of an idle flow
        assert "UDP flow table full" in p.log()
        assert "UDP flows evicted" in listing(p).splitlines()[0]
        assert eng.status()["limits"]["fds"] <= eng.status()["limits"]["fd_budget"]
    for c in socks:
        c.close()
    assert "Traceback" not in p.log()


def test_limits_accounting_is_pure():
    lim = Limits(nofile=100, base=20, maxconn=None, per_source=None)
    assert lim.budget() == 100 - 20 - CONTROL_RESERVE
    assert lim.maxconn == lim.budget() // 2 and lim.per_source == lim.maxconn // 4
    for _ in range(lim.per_source):
        assert lim.check("a", 2) is None
        lim.opened("a", 2)
    assert lim.check("a", 2) == "source" and lim.check("b", 2) is None
    while lim.check("b", 2) is None and lim.conns < 1000:
        lim.opened(f"b{lim.conns}", 2)
    assert lim.check("c", 2) in ("maxconn", "fds")
    for _ in range(lim.per_source):
        lim.closed("a", 2)
    assert "a" not in lim.by_source and lim.check("a", 2) is None


def test_absurd_numbers_on_the_command_line_are_refused(tmp_path):
    from halb.context import Context

    ctx = Context(node="x", run_dir=tmp_path / "run", engine="proxy")
    for args in (["stop", "--wait", "nan"], ["stop", "--wait", "inf"], ["stop", "--wait", "1e9"],
                 ["run", "--maxconn", "9" * 5000], ["run", "--maxconn", "0"], ["run", "--maxconn-per-source", "-1"]):
        r = halb("proxy", *args, ctx=ctx)
        assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, \
            (args, r.stderr)
