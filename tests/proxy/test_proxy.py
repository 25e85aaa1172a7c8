"""The user-space engine end to end: a real `halb proxy` daemon, real HTTP and
UDP back ends on loopback, real clients; the table driven through the Engine API."""
from __future__ import annotations

import hashlib
import http.client
import json
import os
import socket
import stat
import time

import pytest

from proxy_helpers import Proxy, free_port, halb, read_to_end, wait_for
from halb.errors import EngineUnavailable, IpvsError
from halb.model import Dest, Op, Service, ServiceKey, Timeouts

pytestmark = pytest.mark.timeout(120)


def fetch(addr, port, path="/", source="127.0.0.1"):
    """One HTTP request on a new connection: (body, client port, bytes sent, bytes received)."""
    s = socket.create_connection((addr, port), timeout=15, source_address=(source, 0))
    req = f"GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n".encode()
    s.sendall(req)
    cport = s.getsockname()[1]
    data = read_to_end(s)
    s.close()
    return data.split(b"\r\n\r\n", 1)[1], cport, len(req), len(data)


def setup_http(eng, vip, web, scheduler="rr", weights=(1, 1), **kw):
    k = ServiceKey("tcp", *vip)
    eng.add_service(Service(k, scheduler=scheduler, **kw))
    for name, w in zip(("N1", "N2"), weights):
        eng.add_dest(k, Dest(*web[name], weight=w))
    return k


def names(bodies):
    return [b.decode().strip() for b in bodies]


def svc_of(eng, k):
    s = eng.get_service(k)
    assert s is not None
    return s


def test_rr_alternates(proxy, web, vip):
    setup_http(proxy.engine, vip, web, "rr")
    got = names(fetch(*vip)[0] for _ in range(6))
    assert sorted(set(got)) == ["N1", "N2"]
    assert all(a != b for a, b in zip(got, got[1:])), got
    assert "added virtual service TCP" in proxy.log() and "added real server" in proxy.log()


def test_wrr_follows_weights(proxy, web, vip):
    setup_http(proxy.engine, vip, web, "wrr", weights=(3, 1))
    got = names(fetch(*vip)[0] for _ in range(8))
    assert got.count("N1") == 6 and got.count("N2") == 2, got
    # one N2 in every cycle of 4
    assert got[:4].count("N2") == 1 and got[4:].count("N2") == 1, got


def test_persistence_sticks_per_client_and_netmask_groups(proxy, web, vip):
    eng = proxy.engine
    k = setup_http(eng, vip, web, "rr", persistent=True, timeout=300)
    clients = [f"127.0.0.{i}" for i in (31, 32, 33, 34)]
    seen = {}
    for _ in range(3):
        for c in clients:
            seen.setdefault(c, []).append(names([fetch(*vip, source=c)[0]])[0])
    for c, got in seen.items():
        assert len(set(got)) == 1, (c, got)          # each client sticks
    assert {g[0] for g in seen.values()} == {"N1", "N2"}  # new clients still spread (rr)
    tpls = [c for c in eng.connections() if c.template]
    assert sorted(t.caddr for t in tpls) == clients
    assert all(t.state == "NONE" and t.cport == 0 and 290 < t.expires <= 300 for t in tpls)
    assert sum(d.persistconns for d in svc_of(eng, k).dests) == 4

    # removing a client's server re-schedules it to a live one, which then sticks
    gone = seen[clients[0]][0]
    other = "N2" if gone == "N1" else "N1"
    eng.del_dest(k, *web[gone])
    assert names(fetch(*vip, source=clients[0])[0] for _ in range(3)) == [other] * 3

    # -M 255.255.255.0: a whole client network keeps one server
    eng.edit_service(Service(k, scheduler="rr", persistent=True, timeout=300, netmask="255.255.255.0"))
    eng.add_dest(k, Dest(*web[gone]))
    eng.clear()
    k2 = setup_http(eng, vip, web, "rr", persistent=True, timeout=60, netmask="255.255.255.0")
    got = names(fetch(*vip, source=c)[0] for c in clients * 2)
    assert len(set(got)) == 1, got
    tpls = [c for c in eng.connections() if c.template]
    assert [(t.caddr, t.vport) for t in tpls] == [("127.0.0.0", k2.port)]


def test_counters_and_connection_table_match_the_client(proxy, web, vip):
    eng = proxy.engine
    k = setup_http(eng, vip, web, "rr")
    port_of = {"N1": web["N1"][1], "N2": web["N2"][1]}
    sent = recv = 0
    expect = {}
    for _ in range(5):
        body, cport, ns, nr = fetch(*vip)
        sent += ns
        recv += nr
        expect[cport] = port_of[names([body])[0]]

    def settled():
        s = svc_of(eng, k)
        return s if s.stats.conns == 5 and s.stats.outbytes == recv and \
            sum(d.activeconns for d in s.dests) == 0 else None
    s = wait_for(settled, what="counters to settle")
    assert s.stats.inbytes == sent
    assert sorted(d.stats.conns for d in s.dests) == [2, 3]
    assert sum(d.stats.inbytes for d in s.dests) == sent
    assert s.stats.inpkts >= 5 * 2 and s.stats.outpkts >= 5 * 2
    assert [d.inactconns for d in s.dests] == [d.stats.conns for d in s.dests]
    conns = [c for c in eng.connections() if not c.template]
    assert {c.cport: c.dport for c in conns} == expect
    assert all(c.state == "TIME_WAIT" and c.proto == "TCP" and c.vaddr == vip[0] for c in conns)
    assert all(100 < c.expires <= 120 for c in conns)

    # an open keep-alive connection is ESTABLISHED and active
    hc = http.client.HTTPConnection(*vip, timeout=15)
    hc.request("GET", "/")
    hc.getresponse().read()
    cport = hc.sock.getsockname()[1]
    est = wait_for(lambda: [c for c in eng.connections() if c.cport == cport and c.state == "ESTABLISHED"])
    assert 880 < est[0].expires <= 900
    assert sum(d.activeconns for d in svc_of(eng, k).dests) == 1
    hc.close()
    wait_for(lambda: sum(d.activeconns for d in svc_of(eng, k).dests) == 0, what="active count to drop")

    # rates, estimated every 2 s like the kernel (enough connections that any
    # 2 s window holds several: the smoothed rate rounds to >= 1/s)
    for _ in range(20):
        fetch(*vip)
    r = wait_for(lambda: svc_of(eng, k).rates.cps > 0 and svc_of(eng, k).rates, timeout=10, what="rates")
    assert r.inbps > 0 and r.outbps > 0

    # edit-service keeps the counters, zero clears them
    eng.edit_service(Service(k, scheduler="wlc"))
    s = svc_of(eng, k)
    assert s.scheduler == "wlc" and s.stats.conns == 26
    eng.zero(k)
    s = svc_of(eng, k)
    assert s.stats.conns == 0 and all(d.stats.conns == 0 for d in s.dests)


def test_removed_server_keeps_its_established_connection(proxy, web, vip):
    eng = proxy.engine
    k = setup_http(eng, vip, web, "rr")
    hc = http.client.HTTPConnection(*vip, timeout=15)
    hc.request("GET", "/")
    first = hc.getresponse().read().decode().strip()
    eng.del_dest(k, *web[first])
    assert [d.addr for d in svc_of(eng, k).dests] == ["127.0.0.1"]
    other = "N2" if first == "N1" else "N1"
    assert names(fetch(*vip)[0] for _ in range(3)) == [other] * 3  # new connections avoid it
    for _ in range(3):  # the old connection still reaches the removed server
        hc.request("GET", "/")
        assert hc.getresponse().read().decode().strip() == first
    hc.close()
    assert f"removed real server 127.0.0.1:{web[first][1]}" in proxy.log()


def test_bulk_transfer_is_intact(proxy, web, vip):
    setup_http(proxy.engine, vip, web, "rr")
    n = 20 * 1024 * 1024
    pattern = bytes(range(256)) * 256
    want = hashlib.sha256(pattern * (n // len(pattern))).hexdigest()
    for _ in range(2):
        body, *_ = fetch(*vip, path=f"/big?n={n}")
        assert len(body) == n and hashlib.sha256(body).hexdigest() == want
    # the bulk of it never went through Python buffers
    st = wait_for(lambda: (lambda st: st["bytes_spliced"] >= 2 * (n - (1 << 20)) and st)(proxy.engine.status()),
                  what="both transfers accounted")
    assert st["splice"] is True and st["bytes_copied"] < 2 * (1 << 20), st
    s = wait_for(lambda: (lambda s: s.stats.outbytes > 2 * n and s)(svc_of(proxy.engine, ServiceKey("tcp", *vip))))
    assert s.stats.outpkts > 0


def test_buffered_mode_relays_too(tmp_path, web, vip):
    p = Proxy(tmp_path / "run", extra=["--no-splice"]).start()
    try:
        setup_http(p.engine, vip, web, "rr")
        assert p.engine.status()["splice"] is False
        n = 5 * 1024 * 1024
        body, *_ = fetch(*vip, path=f"/big?n={n}")
        assert len(body) == n
        assert sorted(names(fetch(*vip)[0] for _ in range(2))) == ["N1", "N2"]
        st = wait_for(lambda: (lambda st: st["bytes_copied"] > n and st)(p.engine.status()), what="accounting")
        assert st["bytes_spliced"] == 0
    finally:
        p.cleanup()


def test_udp_relay(proxy, udp_echo, vip):
    eng = proxy.engine
    addr = vip[0]
    port = free_port(addr, socket.SOCK_DGRAM)
    k = ServiceKey("udp", addr, port)
    eng.add_service(Service(k, scheduler="rr"))
    for name in ("U1", "U2"):
        eng.add_dest(k, Dest(*udp_echo[name]))
    answers = {}
    socks = []
    for i in range(2):
        c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        c.settimeout(10)
        c.bind(("127.0.0.1", 0))
        socks.append(c)
        for j in range(2):
            c.sendto(f"hello{i}{j}".encode(), (addr, port))
            data, src = c.recvfrom(100)
            assert src == (addr, port)  # replies come from the VIP
            who, text = data.decode().split(":")
            assert text == f"hello{i}{j}"
            answers.setdefault(i, set()).add(who)
    assert answers[0] | answers[1] == {"U1", "U2"} and all(len(v) == 1 for v in answers.values())
    flows = [c for c in eng.connections() if c.proto == "UDP"]
    assert sorted(c.cport for c in flows) == sorted(s.getsockname()[1] for s in socks)
    assert all(c.state == "UDP" and 290 < c.expires <= 300 for c in flows)
    s = svc_of(eng, k)
    assert (s.stats.conns, s.stats.inpkts, s.stats.outpkts) == (2, 4, 4)
    assert s.stats.inbytes == 4 * 7 and s.stats.outbytes == 4 * 10
    assert [d.inactconns for d in s.dests] == [1, 1]  # IPVS counts UDP entries as inactive

    # flows expire after the udp timeout of silence
    eng.set_timeouts(Timeouts(udp=1))
    wait_for(lambda: not [c for c in eng.connections() if c.proto == "UDP"], what="UDP flows to expire")
    assert [d.inactconns for d in svc_of(eng, k).dests] == [0, 0]
    for c in socks:
        c.close()


def test_idle_tcp_connection_expires_after_tcp_timeout(proxy, web, vip):
    eng = proxy.engine
    setup_http(eng, vip, web, "rr")
    eng.set_timeouts(Timeouts(tcp=2))
    assert eng.timeouts().tcp == 2 and eng.timeouts().udp == 300
    s = socket.create_connection(vip, timeout=30)
    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    buf = b""
    while not (b"\r\n\r\n" in buf and len(buf.split(b"\r\n\r\n", 1)[1]) == 3):  # headers + "Nx\n"
        buf += s.recv(1000)
    assert b"200 OK" in buf
    t0 = time.monotonic()
    try:
        assert s.recv(1000) == b""  # closed by the proxy (reset or FIN)
    except ConnectionResetError:
        pass
    assert time.monotonic() - t0 >= 1.5
    s.close()


def test_what_only_the_kernel_engine_does_is_refused(proxy, web, vip):
    eng = proxy.engine
    k = setup_http(eng, vip, web, "rr")
    before = eng.services()
    for fwd in ("gate", "ipip"):
        with pytest.raises(IpvsError, match=f"'{fwd}' is not supported by the proxy engine.*--engine nft"):
            eng.add_dest(k, Dest("127.0.0.1", 9, fwd=fwd))
    with pytest.raises(IpvsError, match="fwmark services .* need the nft engine"):
        eng.add_service(Service(ServiceKey("fwm", fwmark=7), scheduler="rr"))
    k2 = ServiceKey("tcp", vip[0], free_port(vip[0]))
    with pytest.raises(IpvsError) as ei:  # all or nothing: the service of the batch is not added
        eng.execute([Op("add-service", service=Service(k2)), Op("add-dest", key=k2, dest=Dest("127.0.0.1", 9, fwd="gate"))])
    assert ei.value.index == 1
    assert eng.services() == before
    # IPVS's own wording for table errors
    with pytest.raises(IpvsError, match="Service already exists"):
        eng.add_service(Service(k))
    with pytest.raises(IpvsError, match="Destination already exists"):
        eng.add_dest(k, Dest(*web["N1"]))
    # masq, explicit or implied, is what it does
    eng.add_dest(k, Dest("127.0.0.1", 9, fwd="masq"))
    assert {d.fwd for d in svc_of(eng, k).dests} == {"masq"}


def test_bind_failure_applies_nothing(proxy, vip):
    eng = proxy.engine
    busy = socket.socket()
    busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    busy.bind(vip)
    busy.listen()
    free = (vip[0], free_port(vip[0]))
    try:
        with pytest.raises(IpvsError, match=f"cannot bind TCP {vip[0]}:{vip[1]}: Address already in use"):
            eng.execute([Op("add-service", service=Service(ServiceKey("tcp", *free))),
                         Op("add-service", service=Service(ServiceKey("tcp", *vip)))])
        assert eng.services() == []
        s = socket.socket()  # the first service's listener was closed again
        s.bind(free)
        s.close()
    finally:
        busy.close()


def test_no_server_or_dead_server_resets_the_client(proxy, vip):
    eng = proxy.engine
    k = ServiceKey("tcp", *vip)
    eng.add_service(Service(k, scheduler="rr"))
    with pytest.raises((ConnectionResetError, IndexError)):
        fetch(*vip)  # no real server: reset
    wait_for(lambda: "no destination available" in proxy.log(), what="log line")
    eng.add_dest(k, Dest("127.0.0.1", free_port()))  # nothing listens there
    with pytest.raises((ConnectionResetError, IndexError)):
        fetch(*vip)
    conns = wait_for(lambda: [c for c in eng.connections() if c.state == "CLOSE"], what="CLOSE entry")
    assert len(conns) == 1 and svc_of(eng, k).stats.conns == 1


def test_control_socket_is_private_and_survives_garbage(proxy):
    path = proxy.ctx.run_dir / "proxy.sock"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    s = socket.socket(socket.AF_UNIX)
    s.connect(str(path))
    f = s.makefile("rwb")
    for bad in (b"not json\n", b"[1, 2]\n", b'{"cmd": "frob"}\n', b'{"cmd": "execute", "ops": [{"kind": "nope"}]}\n',
                b'{"cmd": "execute", "ops": [{"kind": "add-service", "service": {"key": {"proto": "tcp", "addr": "300.1.1.1", "port": 80}}}]}\n'):
        f.write(bad)
        f.flush()
        reply = json.loads(f.readline())
        assert reply["ok"] is False and reply["error"]
    f.write(b'{"cmd": "status"}\n')
    f.flush()
    assert json.loads(f.readline())["status"]["pid"] == proxy.pid
    s.close()


def test_life_cycle_start_twice_status_stop_leaves_nothing(tmp_path, web, vip):
    p = Proxy(tmp_path / "run").start()
    try:
        r = halb("proxy", "start", ctx=p.ctx)
        assert r.returncode != 0 and "already running" in r.stderr and "Traceback" not in r.stderr
        r = halb("proxy", "run", ctx=p.ctx)
        assert r.returncode != 0 and "already running" in r.stderr and len(r.stderr.strip().splitlines()) == 1
        r = halb("proxy", "status", ctx=p.ctx)
        assert r.returncode == 0 and f"running (pid {p.pid}" in r.stdout
        setup_http(p.engine, vip, web, "rr")
        hc = http.client.HTTPConnection(*vip, timeout=15)  # a relay in progress
        hc.request("GET", "/")
        hc.getresponse().read()
        p.engine.close()
        p.engine = None
        r = halb("proxy", "stop", ctx=p.ctx)
        assert r.returncode == 0 and "stopped" in r.stdout
        from proxy_helpers import alive

        assert not alive(p.pid)
        assert not (p.ctx.run_dir / "proxy.sock").exists()
        assert not (p.ctx.run_dir / "proxy.pid").exists()
        b = socket.socket()  # the VIP:port is free again
        b.bind(vip)
        b.close()
        with pytest.raises((ConnectionError, http.client.HTTPException, OSError)):  # the relay was ended
            hc.request("GET", "/")
            hc.getresponse().read()
        hc.close()
        r = halb("proxy", "status", ctx=p.ctx)
        assert r.returncode == 3 and "not running" in r.stdout
        from halb.proxy.client import connect

        with pytest.raises(EngineUnavailable, match=f"no halb proxy running for node {p.ctx.node} "
                                                    r"\(start it with: halb proxy start\)"):
            connect(p.ctx)
        assert "halb proxy for node" in p.log() and "stopped" in p.log()
        assert "Traceback" not in p.log() and "Task was destroyed" not in p.log()
    finally:
        p.cleanup()


def test_sigterm_stops_cleanly(tmp_path):
    import signal

    p = Proxy(tmp_path / "run").start()
    try:
        os.kill(p.pid, signal.SIGTERM)
        from proxy_helpers import alive

        wait_for(lambda: not alive(p.pid), what="daemon to exit")
        assert not (p.ctx.run_dir / "proxy.sock").exists() and not (p.ctx.run_dir / "proxy.pid").exists()
    finally:
        p.cleanup()


def test_cli_usage_errors_are_one_line(tmp_path):
    from halb.context import Context

    ctx = Context(node="x", run_dir=tmp_path / "run", engine="proxy")
    r = halb("proxy", "frob", ctx=ctx)
    assert r.returncode == 2 and "unknown action 'frob'" in r.stderr and "Traceback" not in r.stderr
    r = halb("proxy", "stop", ctx=ctx)
    assert r.returncode == 0 and "not running" in r.stdout
    r = halb("proxy", "stop", "--wait", "x", ctx=ctx)
    assert r.returncode == 2 and "--wait" in r.stderr and "Traceback" not in r.stderr


def test_live_counts_drive_lc_and_thresholds(proxy, web, vip):
    """lc sees the proxy's live active/inactive counts; an upper threshold
    takes a server out of scheduling while it holds that many connections."""
    eng = proxy.engine
    k = setup_http(eng, vip, web, "lc")
    hc = http.client.HTTPConnection(*vip, timeout=15)  # a long-lived connection on X
    hc.request("GET", "/")
    busy = hc.getresponse().read().decode().strip()
    other = "N2" if busy == "N1" else "N1"
    assert names(fetch(*vip)[0] for _ in range(3)) == [other] * 3  # 1 active > 3 inactive (x256)
    s = svc_of(eng, k)
    counts = {("N1" if d.port == web["N1"][1] else "N2"): (d.activeconns, d.inactconns) for d in s.dests}
    assert counts[busy] == (1, 0) and counts[other] == (0, 3)
    hc.close()

    eng.clear()
    k = setup_http(eng, vip, web, "rr")
    eng.edit_dest(k, Dest(*web["N1"], u_threshold=1))
    hold, conns = [], []
    for _ in range(4):  # keep connections open: N1 takes one, then is overloaded
        c = http.client.HTTPConnection(*vip, timeout=15)
        c.request("GET", "/")
        hold.append(c.getresponse().read().decode().strip())
        conns.append(c)
    assert hold.count("N1") == 1 and hold.count("N2") == 3, hold
    n1 = [d for d in svc_of(eng, k).dests if d.port == web["N1"][1]][0]
    assert n1.overloaded and n1.activeconns == 1
    for c in conns:
        c.close()


def test_runs_without_any_privilege(tmp_path, web, vip):
    """No capability at all (as a plain user): loopback VIPs on high ports work,
    a privileged port is refused with the reason."""
    import shutil

    pre = []
    if os.geteuid() == 0:
        if not shutil.which("setpriv"):
            pytest.skip("needs setpriv to drop root's capabilities")
        pre = ["setpriv", "--bounding-set=-all", "--inh-caps=-all"]
    with Proxy(tmp_path / "run").foreground(pre) as (proc, eng):
        with open(f"/proc/{proc.pid}/status") as f:
            assert "CapEff:\t0000000000000000" in f.read()
        setup_http(eng, vip, web, "rr")
        assert sorted(names(fetch(*vip)[0] for _ in range(2))) == ["N1", "N2"]
        try:
            with open("/proc/sys/net/ipv4/ip_unprivileged_port_start") as f:
                unpriv = int(f.read())
        except OSError:
            unpriv = 1024
        if unpriv > 81:
            with pytest.raises(IpvsError, match="Permission denied .ports below 1024 need root"):
                eng.add_service(Service(ServiceKey("tcp", vip[0], 81)))
            assert eng.services()[0].key.port == vip[1] and len(eng.services()) == 1
        eng.stop()
        eng.close()
        assert proc.wait(15) == 0


def test_half_close_is_relayed(proxy, web, vip):
    """A client that shuts down its sending side still gets the whole answer
    (the FIN is passed on, the entry shows FIN_WAIT meanwhile)."""
    setup_http(proxy.engine, vip, web, "rr")
    s = socket.create_connection(vip, timeout=15)
    s.sendall(f"GET /big?n={1 << 20} HTTP/1.0\r\n\r\n".encode())
    s.shutdown(socket.SHUT_WR)
    got = b""
    while True:
        b = s.recv(1 << 16)
        if not b:
            break
        got += b
    s.close()
    assert got.startswith(b"HTTP/1.1 200") and len(got.split(b"\r\n\r\n", 1)[1]) == 1 << 20


def test_restart_after_a_crash(tmp_path, web, vip):
    """SIGKILL leaves a stale socket and pid file: `start` takes over cleanly."""
    import signal

    from proxy_helpers import alive

    p = Proxy(tmp_path / "run").start()
    try:
        os.kill(p.pid, signal.SIGKILL)
        wait_for(lambda: not alive(p.pid), what="daemon to die")
        assert (p.ctx.run_dir / "proxy.sock").exists()
        r = halb("proxy", "status", ctx=p.ctx)
        assert r.returncode == 3 and "not running" in r.stdout
        p.engine.close()
        p.start()
        setup_http(p.engine, vip, web, "rr")
        assert sorted(names(fetch(*vip)[0] for _ in range(2))) == ["N1", "N2"]
    finally:
        p.cleanup()


def test_ipv6_service(proxy, tmp_path):
    try:
        socket.socket(socket.AF_INET6).bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 on loopback")
    from proxy_helpers import Backends

    b = Backends()
    try:
        h1, p1 = b.start("http", "V1", host="::1")
        h2, p2 = b.start("http", "V2", host="::1")
        eng = proxy.engine
        k = ServiceKey("tcp", "::1", free_port("::1"))
        eng.add_service(Service(k, scheduler="rr"))
        eng.add_dest(k, Dest(h1, p1))
        eng.add_dest(k, Dest(h2, p2))
        got = []
        for _ in range(2):
            c = http.client.HTTPConnection("::1", k.port, timeout=15)
            c.request("GET", "/")
            got.append(c.getresponse().read().decode().strip())
            c.close()
        assert sorted(got) == ["V1", "V2"]
        assert {c.vaddr for c in eng.connections()} == {"::1"}
        with pytest.raises(IpvsError, match="address family"):
            eng.add_dest(k, Dest("127.0.0.1", 80))
    finally:
        b.stop()


def test_out_of_descriptors_degrades_without_breaking(tmp_path, web, vip):
    """With a tiny descriptor limit the daemon refuses or copies, never dies:
    once connections end it serves normally again."""
    p = Proxy(tmp_path / "run")
    held = []
    with p.foreground(["prlimit", "--nofile=40"], ["--maxconn-per-source", "0"]) as (proc, eng):
        setup_http(eng, vip, web, "rr")
        hung = 0
        for _ in range(24):  # each relay takes 2 sockets (and 2 pipes when splicing): past the limit
            try:
                c = http.client.HTTPConnection(*vip, timeout=10)
                c.request("GET", "/")
                c.getresponse().read()
                held.append(c)
            except TimeoutError:
                hung += 1
            except (OSError, http.client.HTTPException):
                pass  # refused at once (reset)
        assert 1 <= len(held) < 24 and hung == 0
        assert "reached the" in p.log()  # the limit, logged (maxconn or descriptors)
        for c in held:
            c.close()
        wait_for(lambda: eng.status()["tcp_relays"] == 0, what="relays to end")
        assert sorted(names(fetch(*vip)[0] for _ in range(2))) == ["N1", "N2"]
        assert proc.poll() is None
        eng.stop()
        eng.close()
        assert proc.wait(15) == 0
    assert "Traceback" not in p.log()


def test_client_closing_at_once_ends_cleanly(proxy, web, vip):
    """Connections opened and closed with no data (port scanners, health
    checks) leave no relay behind and end as TIME_WAIT entries."""
    eng = proxy.engine
    k = setup_http(eng, vip, web, "rr")
    for _ in range(5):
        socket.create_connection(vip, timeout=15).close()
    wait_for(lambda: eng.status()["tcp_relays"] == 0 and
             sum(d.activeconns for d in svc_of(eng, k).dests) == 0, what="relays to end")
    conns = [c for c in eng.connections() if not c.template]
    assert len(conns) == 5 and {c.state for c in conns} == {"TIME_WAIT"}
    assert svc_of(eng, k).stats.conns == 5


def test_stop_a_daemon_that_does_not_answer(tmp_path):
    """A frozen daemon is signalled, then killed, and its files removed."""
    import signal

    from proxy_helpers import alive

    p = Proxy(tmp_path / "run").start()
    try:
        p.engine.close()
        p.engine = None
        os.kill(p.pid, signal.SIGSTOP)
        r = halb("proxy", "stop", "--wait", "1", ctx=p.ctx)
        assert r.returncode == 0 and "killed" in r.stdout, r.stderr
        assert not alive(p.pid)
        assert not (p.ctx.run_dir / "proxy.sock").exists() and not (p.ctx.run_dir / "proxy.pid").exists()
    finally:
        if alive(p.pid):
            os.kill(p.pid, signal.SIGKILL)
        p.cleanup()


def test_binds_a_vip_that_is_not_configured_yet(proxy):
    """IP_FREEBIND: the service is set up before its VIP is on any interface
    (heartbeat adds the VIP later); nothing is sent anywhere."""
    addr = "198.51.100.77"  # TEST-NET-2: not on this machine
    probe = socket.socket()
    try:  # a plain bind fails (unless net.ipv4.ip_nonlocal_bind is set)
        probe.bind((addr, 0))
    except OSError as e:
        assert e.errno == 99  # EADDRNOTAVAIL
    finally:
        probe.close()
    k = ServiceKey("tcp", addr, free_port())
    proxy.engine.add_service(Service(k, scheduler="rr"))
    proxy.engine.add_service(Service(ServiceKey("udp", addr, k.port), scheduler="rr"))
    assert [s.key for s in proxy.engine.services()] == [k, ServiceKey("udp", addr, k.port)]


def test_start_with_a_rules_file(tmp_path, web, vip):
    """--config: ipvsadm -S lines applied before the control socket opens; a
    bad line or a refused rule is reported with file and line, nothing runs."""
    from halb.context import Context

    ctx = Context(node="cfg", run_dir=tmp_path / "run", engine="proxy")
    good = tmp_path / "rules"
    good.write_text(f"# the article's service, weighted\n-A -t {vip[0]}:{vip[1]} -s wrr\n"
                    f"-a -t {vip[0]}:{vip[1]} -r {web['N1'][0]}:{web['N1'][1]} -m\n"
                    f"ipvsadm -a -t {vip[0]}:{vip[1]} -r {web['N2'][0]}:{web['N2'][1]} -m -w 2\n")
    bad_syntax = tmp_path / "bad1"
    bad_syntax.write_text(f"-A -t {vip[0]}:{vip[1]} -s rr\n\n-a -t {vip[0]}:{vip[1]} -r 127.0.0.1:80 -w lots\n")
    refused = tmp_path / "bad2"
    refused.write_text(f"-A -t {vip[0]}:{vip[1]} -s rr\n-a -t {vip[0]}:{vip[1]} -r 127.0.0.1:80 -g\n")
    for path, line, words in ((bad_syntax, 3, "weight"), (refused, 2, "nft")):
        r = halb("proxy", "start", "--config", str(path), ctx=ctx)
        assert r.returncode != 0 and f"{path}:{line}: " in r.stderr and words in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
        assert not (ctx.run_dir / "proxy.sock").exists() and not (ctx.run_dir / "proxy.pid").exists()
    s = socket.socket()  # the first, valid line of the refused file left nothing bound
    s.bind(vip)
    s.close()
    r = halb("proxy", "start", "--config", str(good), ctx=ctx)
    assert r.returncode == 0, r.stderr
    try:
        got = names(fetch(*vip)[0] for _ in range(3))
        assert sorted(got) == ["N1", "N2", "N2"]
        assert "applied 3 rules from" in (ctx.run_dir / "proxy.log").read_text()
    finally:
        assert halb("proxy", "stop", ctx=ctx).returncode == 0
