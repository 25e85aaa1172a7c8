"""The exporter on the user-space engine (no root needed): a real halb proxy
relaying to two HTTP back ends on loopback, scraped over HTTP (gzip, as
Prometheus asks) and with `halb exporter --once`."""
from __future__ import annotations

import gzip
import http.server
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.slow


def _free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


class _H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"backend {self.server.server_port}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


def _samples(text):
    out = {}
    for f in text_string_to_metric_families(text):
        for s in f.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_exporter_on_the_proxy_engine(tmp_path):
    env = dict(os.environ, HALB_RUN_DIR=str(tmp_path / "run"), HALB_NODE="P1", HALB_ENGINE="proxy")
    halb = lambda *a, **kw: subprocess.run([sys.executable, "-m", "halb", *a], env=env, capture_output=True,
                                           text=True, timeout=60, **kw)
    backends = [http.server.ThreadingHTTPServer(("127.0.0.2", 0), _H) for _ in range(2)]
    for b in backends:
        threading.Thread(target=b.serve_forever, daemon=True).start()
    vport, eport = _free_port(), _free_port()
    exporter = None
    try:
        r = halb("proxy", "start", "--maxconn", "2", "--maxconn-per-source", "0")
        assert r.returncode == 0, r.stderr
        assert halb("ipvsadm", "-A", "-t", f"127.0.0.1:{vport}", "-s", "rr").returncode == 0
        for b in backends:
            r = halb("ipvsadm", "-a", "-t", f"127.0.0.1:{vport}", "-r", f"127.0.0.2:{b.server_port}", "-m", "-w", "2")
            assert r.returncode == 0, r.stderr
        for _ in range(8):
            with urllib.request.urlopen(f"http://127.0.0.1:{vport}/", timeout=5) as resp:
                assert resp.read().startswith(b"backend ")
        # --once: one scrape on stdout
        r = halb("exporter", "--once")
        assert r.returncode == 0, r.stderr
        s = _samples(r.stdout)
        assert s[("halb_engine_info", (("engine", "proxy"),))] == 1
        assert s[("node_ipvs_connections_total", ())] == 8
        for b in backends:
            key = (("local_address", "127.0.0.1"), ("local_mark", ""), ("local_port", str(vport)), ("proto", "TCP"),
                   ("remote_address", "127.0.0.2"), ("remote_port", str(b.server_port)))
            assert s[("node_ipvs_backend_weight", key)] == 2
            assert s[("halb_ipvs_backend_connections_total", key)] == 4     # rr: 4 each
            assert ("node_ipvs_backend_connections_inactive", key) in s
        assert s[("node_ipvs_incoming_bytes_total", ())] > 0 and s[("node_ipvs_outgoing_bytes_total", ())] > 0
        assert s[("halb_exporter_source_up", (("source", "proxy"),))] == 1
        assert ("halb_proxy_connections", (("proto", "tcp"),)) in s
        assert s[("halb_proxy_refused_total", (("reason", "maxconn"),))] == 0
        assert s[("halb_proxy_maxconn", ())] == 2
        # two clients hold their connections: the third is refused at maxconn, and counted
        held = [socket.create_connection(("127.0.0.1", vport), timeout=5) for _ in range(2)]
        time.sleep(0.3)
        with pytest.raises(OSError):
            with urllib.request.urlopen(f"http://127.0.0.1:{vport}/", timeout=5) as resp:
                resp.read()
        for c in held:
            c.close()
        s = _samples(halb("exporter", "--once").stdout)
        assert s[("halb_proxy_refused_total", (("reason", "maxconn"),))] >= 1
        # the server: gzip for Prometheus, and the state as JSON
        exporter = subprocess.Popen([sys.executable, "-m", "halb", "exporter", "--listen", f"127.0.0.1:{eport}",
                                     "--interval", "0.5"], env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while True:
            try:
                req = urllib.request.Request(f"http://127.0.0.1:{eport}/metrics",
                                             headers={"Accept-Encoding": "gzip"})
                with urllib.request.urlopen(req, timeout=5) as resp:
                    assert resp.headers["Content-Encoding"] == "gzip"
                    assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
                    text = gzip.decompress(resp.read()).decode()
                break
            except OSError:
                assert time.monotonic() < deadline, "the exporter did not answer"
                time.sleep(0.2)
        assert _samples(text)[("node_ipvs_connections_total", ())] == 10   # 8 + the 2 held (the refused one is not)
        halb("ipvsadm", "-d", "-t", f"127.0.0.1:{vport}", "-r", f"127.0.0.2:{backends[0].server_port}")
        time.sleep(1.2)   # the next collection
        with urllib.request.urlopen(f"http://127.0.0.1:{eport}/metrics", timeout=5) as resp:
            s = _samples(resp.read().decode())
        assert len([k for k in s if k[0] == "node_ipvs_backend_weight"]) == 1
        import json
        with urllib.request.urlopen(f"http://127.0.0.1:{eport}/api/state", timeout=5) as resp:
            st = json.loads(resp.read())
        assert st["engine"] == "proxy" and [d["port"] for d in st["services"][0]["dests"]] == \
            [backends[1].server_port]
        # the engine stops: the scrape still answers, saying so
        halb("proxy", "stop")
        time.sleep(1.2)
        with urllib.request.urlopen(f"http://127.0.0.1:{eport}/metrics", timeout=5) as resp:
            s = _samples(resp.read().decode())
        assert s[("halb_exporter_source_up", (("source", "engine"),))] == 0
        assert not [k for k in s if k[0] == "node_ipvs_backend_weight"]
    finally:
        if exporter is not None:
            exporter.terminate()
            out = exporter.communicate(timeout=10)[0].decode(errors="replace")
            assert exporter.returncode == 0 and "Traceback" not in out, out
        halb("proxy", "stop")
        for b in backends:
            b.shutdown()
