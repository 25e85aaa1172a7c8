"""Active-active directors behind an ECMP router, in namespaces (issue 17).

One lab (halb.lab.ecmp): a router running BIRD (BGP + BFD 20 ms x 3, merge
paths, L4 multipath hash), 3 directors (nft engine -s mh with mh-port, halb
director, halb bgp), 4 real servers (Apache, halb realserver), a client with
64 long-lived keep-alive flows (a request every 0.1 s each) and a steady
stream of new connections (20/s). Each event is judged by what the client
sees: broken flows (reset, no answer, or answered by another real server)
and failed new connections."""
from __future__ import annotations

import os
import signal
import time

import pytest

pytestmark = [pytest.mark.root, pytest.mark.timeout(400)]


@pytest.fixture(scope="module")
def ecmp():
    from halb.lab.ecmp import EcmpLab, FlowLoad, RouteWatch

    e = EcmpLab(directors=3, reals=4, clients=1)
    e.build()
    watch = load = None
    try:
        watch = RouteWatch(e)
        load = FlowLoad(e.lab, "client0", e.vip, flows=64, period=0.1, new_rate=20).start()
        time.sleep(1.0)
        yield e, load, watch
    finally:
        if load is not None:
            load.stop()
        if watch is not None:
            watch.close()
        for d in e.directors:
            try:
                e.stop_director(d)
            except Exception:
                pass
        e.down()


def settle(load, m, seconds=1.5):
    time.sleep(seconds)
    return load.since(m)


def assert_clean(got, what):
    assert got["broken"] == [], f"{what}: broken flows {got['broken']}"
    assert got["new_failed"] == [], f"{what}: failed new connections {got['new_failed']}"
    assert got["requests"] > 0 and got["new_ok"] > 0, f"{what}: no traffic went through ({got})"


def test_flows_spread_over_directors_and_servers(ecmp):
    e, load, _ = ecmp
    assert e.nexthops() == sorted(e.directors)
    assert load.alive() == 64
    assert len(load.servers()) == 4, load.servers()       # mh-port spreads one client's flows
    for d in e.directors:
        r = e.halb(d, "bgp", "status")
        assert "announced" in r.stdout and "Established" in r.stdout, r.stdout


def test_graceful_stop_then_director_added(ecmp):
    e, load, watch = ecmp
    d3 = e.director(3)
    m, t0 = load.mark(), time.monotonic()
    e.stop_bgp(d3)
    assert watch.first_after(t0) is not None
    assert e.nexthops() == sorted(e.directors[:2])
    assert "Withdrew virtual IP" in e.files(d3)["bgplog"].read_text()
    assert_clean(settle(load, m), "director stopped gracefully")
    # nothing left behind: no BIRD, no socket, no pid file
    assert not [p for p in e.lab.pids(d3) if _comm(p) == "bird"]
    run = e.lab.node_run_dir(d3)
    assert not any((run / f).exists() for f in ("bgp.sock", "bgp.pid", "bird.ctl", "bird.pid"))
    assert e.halb(d3, "bgp", "status", check=False).returncode == 3
    # added back: the router moves a third of the flows to it; it has no
    # flow entry for them and schedules their packets by the same Maglev table
    m = load.mark()
    e.start_bgp(d3)
    e.wait_routes(3, timeout=20)
    assert_clean(settle(load, m, 2.0), "director added")
    assert load.alive() == 64


@pytest.mark.parametrize("fault", ["freeze", "cut"])
def test_crashed_director_withdrawn_fast_flows_continue(ecmp, fault):
    e, load, watch = ecmp
    d = e.director(2 if fault == "freeze" else 1)
    m, t0 = load.mark(), time.monotonic()
    (e.lab.freeze if fault == "freeze" else e.lab.cut_link)(d)
    try:
        took = watch.first_after(t0, timeout=5)
        assert took is not None and took < 0.1, f"{fault}: route withdrawn after {took} s (BFD 20 ms x 3)"
        assert d not in e.nexthops()
        assert_clean(settle(load, m), f"director {fault}")
    finally:
        (e.lab.thaw if fault == "freeze" else e.lab.restore_link)(d)
    m = load.mark()
    e.wait_routes(3, timeout=30)
    assert_clean(settle(load, m), f"director back after {fault}")
    assert load.alive() == 64


def test_director_that_loses_every_real_server_withdraws(ecmp):
    e, load, watch = ecmp
    d = e.director(3)
    rips = ", ".join(e.lab.node(r).ip for r in e.reals)
    # its checks (its own traffic to the real servers) fail; forwarded
    # client packets are not touched (they go to the VIP)
    e.lab.run(d, ["nft", f"add table ip bgptest; add chain ip bgptest out {{ type filter hook output priority 0; }}; "
                         f"add rule ip bgptest out ip daddr {{ {rips} }} tcp dport 80 drop"], check=True)
    m, t0 = load.mark(), time.monotonic()
    try:
        e.wait_routes(2, timeout=15)
        assert d not in e.nexthops()
        log = e.files(d)["bgplog"].read_text()
        # whichever sees it first: the self-test's probe or the director's checks
        assert "Withdrew virtual IP" in log and ("unreachable from this director" in log
                                                 or "no live real server" in log), log[-500:]
        assert_clean(settle(load, m), "director lost its real servers")
    finally:
        e.lab.run(d, ["nft", "delete table ip bgptest"])
    m = load.mark()
    e.wait_routes(3, timeout=20)
    assert_clean(settle(load, m), "director's real servers back")


def test_real_server_removed_only_its_flows_move(ecmp):
    e, load, _ = ecmp
    r1 = e.real(1)
    before = load.servers()
    on_r1 = before.get(r1, 0)
    assert on_r1 > 0, before
    m = load.mark()
    e.lab.apache_stop(r1)
    # every director's check removes it (checkinterval 0.5 s, timeout 1 s)
    time.sleep(3.0)
    m2 = load.mark()
    got = settle(load, m2, 2.0)
    lost = load.since(m)["broken"]
    assert {b["server"] for b in lost} <= {r1}, lost     # nobody else's flow broke
    assert len(lost) == on_r1                            # its own flows ended with Apache
    assert got["new_failed"] == [] and got["new_ok"] > 0, got
    assert r1 not in load.servers() and sum(load.servers().values()) == 64 - on_r1


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def test_killed_announcer_takes_its_bird_along(ecmp):
    """kill -9 of halb bgp: its BIRD gets SIGTERM (parent-death signal) and
    closes its sessions, so no orphan keeps announcing a VIP nobody judges;
    a second `halb bgp run` is refused while one runs."""
    e, load, watch = ecmp
    d = e.director(3)
    r = e.halb(d, "bgp", "run", "-c", str(e.files(d)["bgp"]), check=False, timeout=20)
    assert r.returncode == 1 and "already running" in r.stderr, r.stderr
    pid = int((e.lab.node_run_dir(d) / "bgp.pid").read_text())
    m = load.mark()
    os.kill(pid, signal.SIGKILL)
    e.wait_routes(2, timeout=5)
    assert not [p for p in e.lab.pids(d) if _comm(p) == "bird"]
    assert_clean(settle(load, m), "announcer killed")
    m = load.mark()
    e.start_bgp(d)
    e.wait_routes(3, timeout=20)
    assert_clean(settle(load, m), "announcer back")


def test_wlc_with_multi_master_sync_keeps_moved_flows():
    """wlc is not consistent: a flow the router moves finds its server only
    because every director runs a sync master and a sync backup (multi-master)
    and the new director already has the flow's entry. Graceful stop, added,
    crash: 0 broken flows, 0 failed new connections."""
    from halb.lab.ecmp import EcmpLab, FlowLoad, RouteWatch

    e = EcmpLab(directors=3, reals=4, clients=1, scheduler="wlc", schedflags="", sync=True)
    e.build()
    watch = None
    try:
        watch = RouteWatch(e)
        d = e.director(3)
        for ev in ("graceful", "added", "freeze"):
            load = FlowLoad(e.lab, "client0", e.vip, flows=64, period=0.1, new_rate=20).start()
            try:
                time.sleep(1.5)           # the masters' polls have sent the new flows
                m, t0 = load.mark(), time.monotonic()
                if ev == "graceful":
                    e.stop_bgp(d)
                    e.wait_routes(2, timeout=10)
                elif ev == "added":
                    e.start_bgp(d)
                    e.wait_routes(3, timeout=20)
                else:
                    e.lab.freeze(d)
                    took = watch.first_after(t0, timeout=5)
                    assert took is not None and took < 0.1, took
                assert_clean(settle(load, m, 2.0), f"wlc + sync, {ev}")
            finally:
                load.stop()
                if ev == "freeze":
                    e.lab.thaw(d)
        st = e.halb(e.director(1), "sync", "status").stdout
        assert "backup sync daemon: running" in st and "master sync daemon: running" in st, st
    finally:
        if watch is not None:
            watch.close()
        for n in e.directors:
            try:
                e.stop_director(n)
            except Exception:
                pass
        e.down()
