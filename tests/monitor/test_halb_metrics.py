"""gmond's halb metrics: the virtual services of a running `halb proxy`
(user-space engine, no root) appear in the dump; nothing when no daemon runs."""
from __future__ import annotations

import subprocess
import sys

import pytest
from monitor_helpers import free_port

from halb.context import Context
from halb.model import Dest, Rates, Service, ServiceKey
from halb.monitor.collect import Collector, cpu_percents, rate, service_metrics_safe_names


def halb(ctx, *args):
    return subprocess.run([sys.executable, "-m", "halb", "--node", ctx.node, "--run-dir", str(ctx.run_dir),
                           "--engine", "proxy", *args], capture_output=True, text=True, timeout=60)


def test_nothing_running_means_no_halb_metrics(tmp_path):
    ctx = Context(node="t", run_dir=tmp_path / "run", engine="proxy")
    c = Collector(ctx)
    assert c.halb() == {} and c.halb_errors == 0
    m = c.system()
    assert {"load_one", "cpu_idle", "mem_free", "bytes_in", "proc_total"} <= set(m)


@pytest.mark.slow
def test_proxy_services_in_gmond(tmp_path):
    ctx = Context(node="t", run_dir=tmp_path / "run", engine="proxy")
    vport, rport = free_port(), free_port()
    rules = tmp_path / "rules"
    rules.write_text(f"-A -t 127.0.0.1:{vport} -s rr\n-a -t 127.0.0.1:{vport} -r 127.0.0.1:{rport} -m -w 1\n")
    r = halb(ctx, "proxy", "start", "--config", str(rules))
    assert r.returncode == 0, r.stderr
    try:
        got = Collector(ctx).halb()
    finally:
        halb(ctx, "proxy", "stop")
    base = f"halb_vs_tcp_127.0.0.1_{vport}"
    assert got["halb_vs_count"].val == "1"
    for suffix in ("_activeconns", "_inactconns", "_cps", "_inbps", "_outbps"):
        assert base + suffix in got, sorted(got)
    assert got["halb_activeconns"].type == "uint32" and got["halb_cps"].units == "conns/sec"


def test_service_metric_names_and_sums():
    k = ServiceKey("tcp", "2001:db8::1", 80)
    s = Service(k, dests=[Dest("2001:db8::10", 80, activeconns=3, inactconns=1),
                          Dest("2001:db8::11", 80, activeconns=2)], rates=Rates(cps=7, inbps=100, outbps=900))
    f = Service(ServiceKey("fwm", fwmark=5), rates=Rates(cps=1))
    m = service_metrics_safe_names([s, f])
    assert m["halb_vs_tcp_2001_db8__1_80_activeconns"].val == "5"
    assert m["halb_vs_fwm_5_cps"].val == "1.00"
    assert m["halb_activeconns"].val == "5" and m["halb_inactconns"].val == "1" and m["halb_cps"].val == "8.00"


def test_cpu_and_rates():
    from collections import namedtuple

    T = namedtuple("T", "user nice system idle iowait irq softirq steal")
    p = cpu_percents(T(100, 0, 50, 800, 0, 0, 0, 0), T(130, 0, 60, 850, 10, 0, 0, 0))
    assert p["cpu_user"] == pytest.approx(30.0) and p["cpu_system"] == pytest.approx(10.0)
    assert p["cpu_idle"] == pytest.approx(50.0) and p["cpu_wio"] == pytest.approx(10.0)
    assert cpu_percents(T(1, 0, 0, 0, 0, 0, 0, 0), T(1, 0, 0, 0, 0, 0, 0, 0))["cpu_idle"] == 100.0
    assert rate(100, 300, 2) == 100 and rate(300, 100, 2) == 0 and rate(1, 2, 0) == 0


def test_heartbeat_state_from_its_control_socket(tmp_path):
    import json
    import socket
    import threading

    ctx = Context(node="N1", run_dir=tmp_path / "run", engine="proxy")
    ctx.ensure_run_dir()
    path = str(ctx.run_dir / "heartbeat.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen()

    def serve():
        conn, _ = srv.accept()
        conn.makefile("rb").readline()
        conn.sendall(json.dumps({"ok": True, "status": "active", "nodes": {
            "N1": {"status": "up (this node)"}, "N2": {"status": "dead"}}}).encode() + b"\n")
        conn.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        got = Collector(ctx).halb()
    finally:
        srv.close()
    assert got["halb_hb_status"].val == "active" and got["halb_hb_status"].type == "string"
    assert got["halb_hb_nodes_up"].val == "1" and got["halb_hb_nodes"].val == "2"


def test_dead_sockets_are_skipped(tmp_path):
    import socket

    ctx = Context(node="N1", run_dir=tmp_path / "run", engine="proxy")
    ctx.ensure_run_dir()
    for name in ("heartbeat.sock", "proxy.sock"):  # left behind by daemons that died
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(str(ctx.run_dir / name))
        s.close()
    c = Collector(ctx)
    assert c.halb() == {} and c.halb_errors == 2
