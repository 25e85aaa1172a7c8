"""`systemctl reload` is SIGHUP: the proxy, gmetad and gmond keep running
(same pid), apply a good file, keep the running configuration on a bad one
and log it with file:line; SIGUSR1 (logrotate) does not kill them either."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(pred, timeout=15.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def start(tmp_path, name, *args):
    log = open(tmp_path / f"{name}.log", "wb")
    env = {**os.environ, "HALB_RUN_DIR": str(tmp_path / "run")}
    env.pop("JOURNAL_STREAM", None)
    p = subprocess.Popen([sys.executable, "-m", "halb", "--node", "t", *args], stdout=log, stderr=log, env=env)
    return p, lambda: (tmp_path / f"{name}.log").read_text()


def stop(p):
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def ipvsadm_L(tmp_path) -> str:
    env = {**os.environ, "HALB_RUN_DIR": str(tmp_path / "run")}
    return subprocess.run([sys.executable, "-m", "halb", "--node", "t", "--engine", "proxy", "ipvsadm", "-L", "-n"],
                          capture_output=True, text=True, env=env, timeout=30).stdout


def test_proxy_reload_applies_the_rules_file_and_keeps_it_on_error(tmp_path):
    p1, p2, p3 = free_port(), free_port(), free_port()
    rules = tmp_path / "proxy.rules"
    rules.write_text(f"-A -t 127.0.0.1:{p1} -s rr\n-a -t 127.0.0.1:{p1} -r 127.0.0.1:{p3} -m\n")
    p, log = start(tmp_path, "proxy", "--engine", "proxy", "proxy", "run", "--config", str(rules))
    try:
        wait_for(lambda: f"127.0.0.1:{p1}" in ipvsadm_L(tmp_path), what="the proxy serving the file's rules")
        # reload with a changed file: a service more, a scheduler changed
        rules.write_text(f"-A -t 127.0.0.1:{p1} -s wrr\n-a -t 127.0.0.1:{p1} -r 127.0.0.1:{p3} -m\n"
                         f"-A -t 127.0.0.1:{p2} -s rr\n")
        p.send_signal(signal.SIGHUP)
        wait_for(lambda: "reload:" in log() and "applied" in log(), what="the reload")
        table = ipvsadm_L(tmp_path)
        assert f"127.0.0.1:{p2}" in table and "wrr" in table
        # a bad file: logged with file:line, the running table kept, the daemon alive
        rules.write_text(f"-A -t 127.0.0.1:{p1} -s rr\n-A -t 127.0.0.1:{p1} -s rr\n")
        p.send_signal(signal.SIGHUP)
        wait_for(lambda: "keeping the running configuration" in log(), what="the refused reload")
        assert f"{rules}:2" in log()
        assert f"127.0.0.1:{p2}" in ipvsadm_L(tmp_path)
        p.send_signal(signal.SIGUSR1)
        time.sleep(0.3)
        assert p.poll() is None, log()
    finally:
        stop(p)


def test_gmetad_and_gmond_survive_reload(tmp_path):
    gport, wport = free_port(), free_port()
    g, glog = start(tmp_path, "gmond", "gmond", "--bind", "127.0.0.1", "--port", str(gport), "--interval", "1")
    conf = tmp_path / "gmetad.conf"
    conf.write_text(f'data_source "one" 1 127.0.0.1:{gport}\n')
    m, mlog = start(tmp_path, "gmetad", "gmetad", "-c", str(conf), "--listen", f"127.0.0.1:{wport}",
                    "--data-dir", str(tmp_path / "data"))
    try:
        wait_for(lambda: "web front end" in mlog(), what="gmetad up")
        wait_for(lambda: "serving XML" in glog(), what="gmond up")
        conf.write_text(f'data_source "one" 1 127.0.0.1:{gport}\nnonsense here\n')
        m.send_signal(signal.SIGHUP)
        wait_for(lambda: "keeping the running configuration" in mlog(), what="gmetad's refused reload")
        assert f"{conf}:2" in mlog()
        conf.write_text(f'data_source "one" 1 127.0.0.1:{gport}\ndata_source "two" 1 127.0.0.1:{gport}\n')
        m.send_signal(signal.SIGHUP)
        wait_for(lambda: "reload:" in mlog() and "applied (1 data source" in mlog(), what="gmetad's reload")
        g.send_signal(signal.SIGHUP)
        wait_for(lambda: "reload:" in glog(), what="gmond's reload")
        for proc in (g, m):
            proc.send_signal(signal.SIGUSR1)
        time.sleep(0.5)
        assert g.poll() is None and m.poll() is None, glog() + mlog()
        import json
        import urllib.request
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

        def two_polled():
            try:
                data = json.loads(opener.open(f"http://127.0.0.1:{wport}/api/state", timeout=2).read())
            except (OSError, ValueError):
                return False
            return "two" in json.dumps(data)
        wait_for(two_polled, 20, "the new data source in gmetad's API")
    finally:
        stop(m)
        stop(g)
