"""The director daemon against a real engine (halb proxy) and real back ends
(nginx): removal within checkinterval + checktimeout, re-add, quiescent,
reload (good and bad file), maintenance, e-mail alerts through exim, clean stop."""
from __future__ import annotations

import os
import signal
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import director_servers as servers
from halb.context import Context
from halb.director import daemon as dmod

pytestmark = [pytest.mark.timeout(180)]

if not shutil.which("nginx"):
    pytest.skip("nginx not installed", allow_module_level=True)


def halb(ctx: Context, *args, check=True, timeout=60) -> subprocess.CompletedProcess:
    p = subprocess.run([sys.executable, "-m", "halb", "--node", ctx.node, "--run-dir", str(ctx.run_dir),
                        "--engine", "proxy", *args], capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"halb {' '.join(args)} -> {p.returncode}\n{p.stdout}\n{p.stderr}")
    return p


wait_for = servers.wait_for


@pytest.fixture
def proxy(tmp_path):
    ctx = Context(node="dirtest", run_dir=tmp_path / "run", engine="proxy")
    halb(ctx, "proxy", "start")
    try:
        yield ctx
    finally:
        for f in ctx.run_dir.glob("director.*.pid"):
            cfg = f.name[len("director."):-len(".pid")].rsplit(".", 1)[0]  # base name . hash of full path
            halb(ctx, "director", str(tmp_path / cfg), "stop", check=False)
        halb(ctx, "proxy", "stop", check=False)


def dests(ctx: Context, port: int) -> dict | None:
    from halb.proxy.client import connect
    with connect(ctx) as eng:
        for s in eng.services():
            if s.key.port == port:
                return {(d.addr, d.port): d.weight for d in s.dests}
    return None


def get(port: int, timeout=3.0) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
        data = servers.read_to_end(s)
    return data.decode("latin-1")


def write_cfg(path: Path, vport: int, p1: int, p2: int, extra_global: str = "", extra_virtual: str = "",
              w2: int = 1) -> Path:
    path.write_text(f"checkinterval=1\nchecktimeout=2\n{extra_global}\n"
                    f"virtual=127.0.0.1:{vport}\n"
                    f"\treal=127.0.0.1:{p1} masq 1 \"/\", \"N1\"\n"
                    f"\treal=127.0.0.1:{p2} masq {w2} \"/\", \"N2\"\n"
                    f"\tservice=http\n\tscheduler=rr\n{extra_virtual}")
    return path


def test_remove_readd_reload_maintenance_and_stop(proxy, tmp_path):
    ctx = proxy
    vport = servers.free_port()
    with servers.NginxSite(tmp_path / "n1", "N1") as n1, servers.NginxSite(tmp_path / "n2", "N2") as n2:
        maint = tmp_path / "maint"
        maint.mkdir()
        cfg = write_cfg(tmp_path / "ld.cf", vport, n1.port, n2.port, extra_global=f"maintenancedir={maint}")
        halb(ctx, "director", str(cfg), "start")
        both = {("127.0.0.1", n1.port): 1, ("127.0.0.1", n2.port): 1}
        wait_for(lambda: dests(ctx, vport) == both, what="both real servers in the table")
        st = halb(ctx, "director", str(cfg), "status")
        assert "is running with pid" in st.stdout and "up" in st.stdout
        assert {get(vport).split()[-1] for _ in range(4)} == {"N1", "N2"}

        # a back end dies: out within checkinterval + checktimeout (1 + 2 s; slack for a loaded CI box)
        n2.stop()
        t0 = time.monotonic()
        wait_for(lambda: dests(ctx, vport) == {("127.0.0.1", n1.port): 1}, timeout=15, what="N2 removal")
        assert time.monotonic() - t0 < 3 + 4
        assert all(get(vport).split()[-1] == "N1" for _ in range(10))  # no failed request after removal

        n2.start()
        wait_for(lambda: dests(ctx, vport) == both, timeout=15, what="N2 re-added")

        # reload: new weight applied in place, N1 never leaves the table
        write_cfg(cfg, vport, n1.port, n2.port, extra_global=f"maintenancedir={maint}", w2=3)
        halb(ctx, "director", str(cfg), "reload")
        assert dests(ctx, vport) == {("127.0.0.1", n1.port): 1, ("127.0.0.1", n2.port): 3}

        # a bad file: refused, the running configuration stays
        good = cfg.read_text()
        cfg.write_text(good + "\tcheckinterval=abc\n")
        r = halb(ctx, "director", str(cfg), "reload", check=False)
        assert r.returncode == 1
        assert f"{cfg}:" in r.stderr and "invalid checkinterval" in r.stderr and "Traceback" not in r.stderr
        assert dests(ctx, vport) == {("127.0.0.1", n1.port): 1, ("127.0.0.1", n2.port): 3}
        assert "last reload failed" in halb(ctx, "director", str(cfg), "status").stdout
        cfg.write_text(good)

        # maintenance file takes N1 out by hand
        (maint / f"127.0.0.1:{n1.port}").touch()
        wait_for(lambda: dests(ctx, vport) == {("127.0.0.1", n2.port): 3}, timeout=15, what="maintenance")
        (maint / f"127.0.0.1:{n1.port}").unlink()
        wait_for(lambda: len(dests(ctx, vport)) == 2, timeout=15, what="back from maintenance")

        log = (ctx.run_dir / "director.ld.cf.log").read_text()
        assert f"Deleted real server: 127.0.0.1:{n2.port} (127.0.0.1:{vport})" in log
        assert f"Added real server: 127.0.0.1:{n2.port} (127.0.0.1:{vport}) (Weight set to 1)" in log

        halb(ctx, "director", str(cfg), "stop")
        assert dests(ctx, vport) is None  # cleanstop: the virtual service is gone
        left = sorted(f.name for f in ctx.run_dir.glob("director.ld.cf.*"))
        assert left == ["director.ld.cf.log"], left  # no pid file, no socket; the log stays
        assert halb(ctx, "director", str(cfg), "status", check=False).returncode == 3


def test_quiescent_weight_zero_and_established_connection_finishes(proxy, tmp_path):
    ctx = proxy
    vport = servers.free_port()
    with servers.NginxSite(tmp_path / "n1", "N1") as n1, servers.NginxSite(tmp_path / "n2", "N2") as n2:
        cfg = write_cfg(tmp_path / "q.cf", vport, n1.port, n2.port, extra_global="quiescent=yes\ncleanstop=no")
        halb(ctx, "director", str(cfg), "start")
        both = {("127.0.0.1", n1.port): 1, ("127.0.0.1", n2.port): 1}
        wait_for(lambda: dests(ctx, vport) == both, what="both real servers in the table")
        n2.stop()
        wait_for(lambda: dests(ctx, vport) == {("127.0.0.1", n1.port): 1, ("127.0.0.1", n2.port): 0},
                 timeout=15, what="N2 quiescent (weight 0)")
        assert all(get(vport).split()[-1] == "N1" for _ in range(6))
        n2.start()
        wait_for(lambda: dests(ctx, vport) == both, timeout=15, what="N2 weight restored")
        halb(ctx, "director", str(cfg), "stop")
        assert dests(ctx, vport) == both  # cleanstop=no leaves the table as it is


@pytest.mark.root
def test_email_alert_received_by_exim(proxy, tmp_path):
    if not shutil.which("exim4"):
        pytest.skip("exim4 not installed")
    ctx = proxy
    vport = servers.free_port()
    with servers.exim() as mx, servers.NginxSite(tmp_path / "n1", "N1") as n1, \
            servers.NginxSite(tmp_path / "n2", "N2") as n2:
        cfg = write_cfg(tmp_path / "mail.cf", vport, n1.port, n2.port,
                        extra_global=f'emailalert="root@halb-test"\nsmtp=127.0.0.1:{mx.port}\n'
                                     f'emailalertstatus=running,stopping\nemailalertfrom="halb <director@halb-test>"')
        halb(ctx, "director", str(cfg), "start")
        wait_for(lambda: dests(ctx, vport) and len(dests(ctx, vport)) == 2, what="both up")
        n2.stop()
        want = f"Subject: Deleted real server: 127.0.0.1:{n2.port} (127.0.0.1:{vport})"
        text = wait_for(lambda: mx.inbox.exists() and want in mx.inbox.read_text() and mx.inbox.read_text(),
                        timeout=30, what="the alert in exim's mailbox")
        assert "From: halb <director@halb-test>" in text and "Daemon-Status: running" in text
        halb(ctx, "director", str(cfg), "stop")
        want = f"Purged real server (stop): 127.0.0.1:{n1.port}"
        wait_for(lambda: want in mx.inbox.read_text(), timeout=30, what="the stop alert")


def test_cli_errors_are_one_line(proxy, tmp_path):
    ctx = proxy
    bad = tmp_path / "bad.cf"
    bad.write_text("checkinterval=1\nvirtual=127.0.0.1:80\n\treal=127.0.0.1:81 sideways\n")
    r = halb(ctx, "director", str(bad), "start", check=False)
    assert r.returncode != 0 and r.stderr.strip() == \
        f"halb: {bad}:3: forward method must be gate, masq or ipip"
    assert not list(ctx.run_dir.glob("director.bad.cf*.pid"))
    r = halb(ctx, "director", str(tmp_path / "absent.cf"), "start", check=False)
    assert r.returncode != 0 and "Config file not found" in r.stderr and len(r.stderr.splitlines()) == 1
    r = halb(ctx, "director", str(bad), "dance", check=False)
    assert r.returncode == 2 and "unknown command 'dance'" in r.stderr


def test_autoreload_fallback_and_fallbackcommand(proxy, tmp_path):
    """autoreload=yes picks up an edited file by itself; with every real
    server down the fallback server is in the table and fallbackcommand ran
    with start, then stop once a real server is back."""
    ctx = proxy
    vport = servers.free_port()
    marks = tmp_path / "fallback.log"
    cmd = tmp_path / "fb.sh"
    cmd.write_text(f"#!/bin/sh\necho \"$@\" >> {marks}\n")
    cmd.chmod(0o755)
    with servers.NginxSite(tmp_path / "n1", "N1") as n1, servers.NginxSite(tmp_path / "n2", "N2") as n2, \
            servers.NginxSite(tmp_path / "fb", "sorry") as fb:
        cb_out = tmp_path / "callback.log"
        cb = tmp_path / "cb.sh"
        cb.write_text(f"#!/bin/sh\necho \"$@\" >> {cb_out}\n")
        cb.chmod(0o755)
        extra = (f"autoreload=yes\nfallback=127.0.0.1:{fb.port} masq\nfallbackcommand=\"{cmd}\"\n"
                 f"callback=\"{cb}\"\n")
        cfg = write_cfg(tmp_path / "auto.cf", vport, n1.port, n2.port, extra_global=extra)
        halb(ctx, "director", str(cfg), "start")
        both = {("127.0.0.1", n1.port): 1, ("127.0.0.1", n2.port): 1}
        wait_for(lambda: dests(ctx, vport) == both, what="both up")
        n1.stop()
        n2.stop()
        wait_for(lambda: dests(ctx, vport) == {("127.0.0.1", fb.port): 1}, timeout=15, what="fallback only")
        assert get(vport).split()[-1] == "sorry"
        n1.start()
        wait_for(lambda: dests(ctx, vport) == {("127.0.0.1", n1.port): 1}, timeout=15, what="N1 back")
        # as ldirectord: "start" at start-up (nothing up yet), "stop" at the first
        # server up, "start" when all were down, "stop" when N1 came back
        want = [f"{w} 127.0.0.1:{vport} tcp" for w in ("start", "stop", "start", "stop")]
        wait_for(lambda: marks.exists() and marks.read_text().splitlines() == want, timeout=10,
                 what="fallbackcommand")
        # edit the file: weight 4 for N1, applied without `reload`
        cfg.write_text(cfg.read_text().replace(f"127.0.0.1:{n1.port} masq 1", f"127.0.0.1:{n1.port} masq 4"))
        wait_for(lambda: dests(ctx, vport) == {("127.0.0.1", n1.port): 4}, timeout=15, what="autoreload")
        log = (ctx.run_dir / "director.auto.cf.log").read_text()
        assert f"Configuration file '{cfg}' has changed on disk" in log
        # callback= runs with the configuration file as its argument
        wait_for(lambda: cb_out.exists() and cb_out.read_text().split() == [str(cfg)], timeout=10, what="callback")
        halb(ctx, "director", str(cfg), "stop")


def test_engine_restart_and_sighup_reload(proxy, tmp_path):
    """The engine restarts with an empty table: the director puts its virtual
    service back (healthy servers included) by itself. SIGHUP reloads."""
    ctx = proxy
    vport = servers.free_port()
    with servers.NginxSite(tmp_path / "n1", "N1") as n1, servers.NginxSite(tmp_path / "n2", "N2") as n2:
        cfg = write_cfg(tmp_path / "eng.cf", vport, n1.port, n2.port)
        halb(ctx, "director", str(cfg), "start")
        both = {("127.0.0.1", n1.port): 1, ("127.0.0.1", n2.port): 1}
        wait_for(lambda: dests(ctx, vport) == both, what="both up")
        halb(ctx, "proxy", "stop")
        halb(ctx, "proxy", "start")
        assert dests(ctx, vport) is None
        wait_for(lambda: dests(ctx, vport) == both, timeout=20, what="service re-created after the engine restart")
        assert get(vport).split()[-1] in ("N1", "N2")
        pid = int(dmod.pid_path(ctx, cfg).read_text().split()[0])
        cfg.write_text(cfg.read_text().replace(f"127.0.0.1:{n2.port} masq 1", f"127.0.0.1:{n2.port} masq 7"))
        os.kill(pid, signal.SIGHUP)
        wait_for(lambda: dests(ctx, vport) == {("127.0.0.1", n1.port): 1, ("127.0.0.1", n2.port): 7},
                 timeout=15, what="SIGHUP reload")
        halb(ctx, "director", str(cfg), "stop")


def test_execute_starts_and_stops_other_instances(proxy, tmp_path):
    ctx = proxy
    vport, vport2 = servers.free_port(), servers.free_port()
    with servers.NginxSite(tmp_path / "n1", "N1") as n1, servers.NginxSite(tmp_path / "n2", "N2") as n2:
        child = write_cfg(tmp_path / "child.cf", vport2, n1.port, n2.port)
        parent = write_cfg(tmp_path / "parent.cf", vport, n1.port, n2.port, extra_global="execute=child.cf")
        halb(ctx, "director", str(parent), "start")
        both = {("127.0.0.1", n1.port): 1, ("127.0.0.1", n2.port): 1}
        wait_for(lambda: dests(ctx, vport2) == both, timeout=30, what="the child instance's table")
        assert halb(ctx, "director", str(child), "status", check=False).returncode == 0
        halb(ctx, "director", str(parent), "stop")
        assert halb(ctx, "director", str(child), "status", check=False).returncode == 3
        assert dests(ctx, vport2) is None and dests(ctx, vport) is None


def test_debug_mode_logs_checks_and_table_edits_then_stale_pid(proxy, tmp_path):
    ctx = proxy
    vport = servers.free_port()
    with servers.NginxSite(tmp_path / "n1", "N1") as n1, servers.NginxSite(tmp_path / "n2", "N2") as n2:
        cfg = write_cfg(tmp_path / "dbg.cf", vport, n1.port, n2.port)
        p = subprocess.Popen([sys.executable, "-m", "halb", "--node", ctx.node, "--run-dir", str(ctx.run_dir),
                              "--engine", "proxy", "director", "-d", str(cfg), "start"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            wait_for(lambda: dests(ctx, vport) and len(dests(ctx, vport)) == 2, what="both up")
            time.sleep(1.5)  # a few more checks
        finally:
            p.send_signal(signal.SIGINT)
            _, err = p.communicate(timeout=30)
        assert p.returncode == 0, err
        assert f"DEBUG2: Checking negotiate: real server=127.0.0.1:{n2.port} (virtual=tcp:127.0.0.1:{vport})" in err
        assert f"DEBUG2: engine proxy: ipvsadm -a -t 127.0.0.1:{vport} -r 127.0.0.1:{n1.port} -m -w 1" in err
        assert f"Added real server: 127.0.0.1:{n1.port} (127.0.0.1:{vport}) (Weight set to 1)" in err
        assert f"Purged virtual server (stop): 127.0.0.1:{vport}" in err
        assert dests(ctx, vport) is None
        # a pid file left by a killed director: status says stale (exit 1), start works
        dmod.pid_path(ctx, cfg).write_text("999999\n")
        r = halb(ctx, "director", str(cfg), "status", check=False)
        assert r.returncode == 1 and "stale pid file" in r.stderr
        halb(ctx, "director", str(cfg), "start")
        wait_for(lambda: dests(ctx, vport) and len(dests(ctx, vport)) == 2, what="both up again")
        halb(ctx, "director", str(cfg), "stop")


def test_forwarding_method_the_engine_cannot_do_is_refused_with_its_line(proxy, tmp_path):
    ctx = proxy
    cfg = tmp_path / "gate.cf"
    cfg.write_text("checkinterval=1\nvirtual=127.0.0.1:9\n\treal=127.0.0.1:10 masq\n\treal=127.0.0.1:11 gate\n")
    r = halb(ctx, "director", str(cfg), "start", check=False)
    assert r.returncode == 1
    assert r.stderr.strip() == (f"halb: {cfg}:4: forwarding method 'gate' is not supported by the proxy engine "
                                "(Direct Return needs the kernel engine: --engine nft)")
    assert dests(ctx, 9) is None  # nothing half-applied


def _directors(cfg: Path) -> list[int]:
    import psutil

    out = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        cl = p.info["cmdline"] or []
        if "--foreground" in cl and str(cfg) in cl:
            out.append(p.info["pid"])
    return out


def test_started_twice_at_once_runs_one_director_and_stop_leaves_none(proxy, tmp_path):
    """Two `start` at the same moment (one naming the file through another
    path): one director runs; after `stop` none is left to re-create the
    service, and status says stopped."""
    ctx = proxy
    vport = servers.free_port()
    silent = socket.socket()  # accepts connections, never answers: the first check round lasts checktimeout
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    with silent, servers.NginxSite(tmp_path / "n1", "N1") as n1:
        cfg = write_cfg(tmp_path / "twice.cf", vport, n1.port, silent.getsockname()[1])
        cfg.write_text(cfg.read_text().replace("checktimeout=2", "checktimeout=3"))
        (tmp_path / "sub").mkdir()
        other_name = tmp_path / "sub" / ".." / "twice.cf"
        argv = [sys.executable, "-m", "halb", "--node", ctx.node, "--run-dir", str(ctx.run_dir),
                "--engine", "proxy", "director"]
        ps = [subprocess.Popen(argv + [str(c), "start"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True) for c in (cfg, other_name)]
        outs = [p.communicate(timeout=60) for p in ps]
        assert all(p.returncode == 0 for p in ps) or \
            any("already running" in err for _, err in outs), outs
        wait_for(lambda: dests(ctx, vport), what="the service")
        time.sleep(1)
        assert len(_directors(cfg)) == 1, _directors(cfg)
        halb(ctx, "director", str(other_name), "stop")
        assert _directors(cfg) == []
        r = halb(ctx, "director", str(cfg), "status", check=False)
        assert r.returncode == 3 and "stopped" in r.stdout
        time.sleep(2.5)  # more than a reconcile period of an orphan: nothing re-creates the service
        assert dests(ctx, vport) is None


def test_two_configs_with_one_base_name_are_two_directors(proxy, tmp_path):
    """The pid file is named by the config's full path, not its base name."""
    ctx = proxy
    v1, v2 = servers.free_port(), servers.free_port()
    with servers.NginxSite(tmp_path / "n1", "N1") as n1, servers.NginxSite(tmp_path / "n2", "N2") as n2:
        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        c1 = write_cfg(tmp_path / "a" / "ld.cf", v1, n1.port, n2.port)
        c2 = write_cfg(tmp_path / "b" / "ld.cf", v2, n1.port, n2.port)
        try:
            halb(ctx, "director", str(c1), "start")
            r = halb(ctx, "director", str(c2), "start")
            assert "already running" not in r.stderr + r.stdout
            wait_for(lambda: dests(ctx, v1) and dests(ctx, v2), what="both services")
            assert dmod.pid_path(ctx, c1) != dmod.pid_path(ctx, c2)
            halb(ctx, "director", str(c1), "stop")
            assert dests(ctx, v1) is None and dests(ctx, v2)
            assert halb(ctx, "director", str(c2), "status", check=False).returncode == 0
        finally:
            for c in (c1, c2):
                halb(ctx, "director", str(c), "stop", check=False)
