"""gmond and gmetad as processes on loopback: the article's data_source with two
nodes, polled every second; a stopped gmond shows its host down; the series
survive a gmetad restart; command-line and config errors are one line."""
from __future__ import annotations

import asyncio
import socket
import subprocess
import sys

import pytest

from halb.monitor import gxml
from halb.monitor.conf import parse
from halb.monitor.gmetad import Gmetad, GmetadOptions, store_file

from monitor_helpers import free_port, get_json, http_get, wait_for

pytestmark = pytest.mark.slow


def read_all(port: int) -> bytes:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    data = b""
    while True:
        c = s.recv(65536)
        if not c:
            break
        data += c
    s.close()
    return data


def test_gmond_gmetad_cluster(cluster, tmp_path):
    procs, base, ports = cluster
    # gmond's own dump, as a real gmetad would read it
    src, (c,) = gxml.parse(read_all(ports["N1"]))
    assert src == "gmond" and list(c.hosts) == ["N1"]
    m = c.hosts["N1"].metrics
    for name in ("load_one", "load_five", "load_fifteen", "cpu_user", "cpu_system", "cpu_idle", "mem_total",
                 "mem_free", "bytes_in", "bytes_out", "pkts_in", "pkts_out", "proc_run", "proc_total", "boottime"):
        assert name in m, name
    assert m["load_one"].type == "float" and m["mem_total"].units == "KB" and m["boottime"].slope == "zero"

    st = get_json(base + "/api/state")
    cl = st["clusters"][0]
    assert cl["name"] == "Mon Cluster" and [h["name"] for h in cl["hosts"]] == ["N1", "N2"]
    assert all(h["up"] for h in cl["hosts"]) and all(s["up"] for s in cl["sources"])
    for h in ("N1", "N2"):
        for metric in ("load_one", "cpu_user", "mem_free", "bytes_in"):
            s = get_json(f"{base}/api/series?c=Mon%20Cluster&h={h}&m={metric}&r=hour")
            assert s["resolution"] == 1.0 and any(v is not None for _, v in s["points"]), (h, metric)
    whole = get_json(f"{base}/api/series?c=Mon%20Cluster&h=*&m=mem_total")
    one = get_json(f"{base}/api/series?c=Mon%20Cluster&h=N1&m=mem_total")
    # both gmonds run on this machine: the cluster's memory is twice one's (a row polled from both)
    assert max(v for _, v in whole["points"] if v is not None) == pytest.approx(
        2 * max(v for _, v in one["points"] if v is not None), rel=0.01)
    status, body = http_get(base + "/metrics")
    text = body.decode()
    assert status == 200 and 'ganglia_host_up{cluster="Mon Cluster",host="N2"} 1.0' in text
    assert 'ganglia_metric_value{cluster="Mon Cluster",host="N1",metric="load_one",units=""}' in text
    status, body = http_get(base + "/graph.svg?c=Mon%20Cluster&h=N1&m=load_one&r=day")
    assert status == 200 and b'<path class="series"' in body
    assert http_get(base + "/api/series?c=Mon%20Cluster&h=N9&m=load_one")[0] == 404
    assert http_get(base + "/api/series?c=Mon%20Cluster&h=N1&m=load_one&r=year")[0] == 400
    assert http_get(base + "/host/Mon%20Cluster/N9")[0] == 404

    # N2's gmond stops: N2 is shown down after 4 x TMAX (4 s), N1 stays up
    assert procs.stop("gmond-N2") == 0
    assert "gmond shutdown complete" in procs.log("gmond-N2")

    def n2_down():
        hosts = {h["name"]: h["up"] for h in get_json(base + "/api/state")["clusters"][0]["hosts"]}
        return hosts == {"N1": True, "N2": False}

    wait_for(n2_down, 12, "N2 shown down")
    assert 'ganglia_host_up{cluster="Mon Cluster",host="N2"} 0.0' in http_get(base + "/metrics")[1].decode()
    assert 'class="down">down</td>' in http_get(base + "/")[1].decode()
    log = procs.log("gmetad")
    assert "failed to contact node 127.0.0.1:" in log and "host N2 (last report" in log and "is down" in log

    # a clean stop saves the series; a new gmetad reloads them
    before = get_json(f"{base}/api/series?c=Mon%20Cluster&h=N2&m=load_one")["points"]
    assert procs.stop("gmetad") == 0
    assert "gmetad shutdown complete" in procs.log("gmetad")
    data_dir = tmp_path / "rrds"
    assert store_file(data_dir, "Mon Cluster").exists() and not list(data_dir.glob("*.tmp"))
    web2 = free_port()
    procs.gmetad(ports["conf"], web2, data_dir, name="gmetad2")
    base2 = f"http://127.0.0.1:{web2}"
    after = wait_for(lambda: get_json(f"{base2}/api/series?c=Mon%20Cluster&h=N2&m=load_one")["points"], 10,
                     "reloaded series")
    known_before = {t: v for t, v in before if v is not None}
    known_after = {t: v for t, v in after if v is not None}
    assert known_before and all(known_after.get(t) == v for t, v in known_before.items())
    assert "1 series reloaded" not in procs.log("gmetad2") and "series reloaded from" in procs.log("gmetad2")


def test_store_file_names_never_collide(tmp_path):
    names = ["Mon Cluster", "Mon_Cluster", "Mon/Cluster", "..", "web", "a b", "a_b"]
    files = {store_file(tmp_path, n) for n in names}
    assert len(files) == len(names) and all(f.parent == tmp_path for f in files)
    assert store_file(tmp_path, "web").name == "web.rrd"


def test_bad_answers_are_counted_not_fatal(tmp_path):
    """A data source that sends garbage, one that closes at once, one that never
    answers: counted errors, the poller goes on, the good one is stored."""
    async def scenario():
        async def junk(reader, writer):
            writer.write(b"<GANGLIA_XML><CLUSTER NAME='x'><HOST NAME=")
            writer.close()

        async def empty(reader, writer):
            writer.close()

        async def silent(reader, writer):
            await asyncio.sleep(5)
            writer.close()

        good_xml = gxml.render([gxml.Cluster("c", hosts={"G": gxml.Host("G", metrics={
            "load_one": gxml.Metric("load_one", "0.5", "float")})})])

        async def good(reader, writer):
            writer.write(good_xml)
            writer.close()

        servers = [await asyncio.start_server(h, "127.0.0.1", 0) for h in (junk, empty, silent, good)]
        ports = [s.sockets[0].getsockname()[1] for s in servers]
        conf = parse('data_source "s" 0.5 ' + " ".join(f"127.0.0.1:{p}" for p in ports) + "\n")
        g = Gmetad(conf, GmetadOptions(data_dir=tmp_path))
        await g.poll_once(g.sources[0], 1000.0)
        for s in servers:
            s.close()
        return g

    g = asyncio.run(scenario())
    src = g.sources[0]
    assert src.xml_errors == 2 and [a.up for a in src.addrs] == [False, False, False, True]
    assert "malformed XML" in src.addrs[0].last_error and "empty answer" in src.addrs[1].last_error
    assert "no answer within" in src.addrs[2].last_error
    assert src.up and list(src.hosts) == ["G"]
    assert g.stores["s"].get(("s", "G", "load_one")).last_v == 0.5


def test_corrupt_store_file_is_set_aside(tmp_path):
    conf = parse('data_source "Mon Cluster" 1 127.0.0.1:1\n')
    path = store_file(tmp_path, "Mon Cluster")
    path.write_bytes(b"not a store")
    g = Gmetad(conf, GmetadOptions(data_dir=tmp_path))
    g.load()
    assert not path.exists() and list(tmp_path.glob(path.name + ".corrupt-*"))
    g.stores["Mon Cluster"].update(("Mon Cluster", "h", "m"), 5, 1.0)
    g.save()
    g2 = Gmetad(conf, GmetadOptions(data_dir=tmp_path))
    g2.load()
    assert g2.stores["Mon Cluster"].get(("Mon Cluster", "h", "m")).last_v == 1.0


def halb(tmp_path, *args, timeout=20):
    r = subprocess.run([sys.executable, "-m", "halb", "--node", "t1", "--run-dir", str(tmp_path / "run"), *args],
                       capture_output=True, text=True, timeout=timeout)
    return r.returncode, r.stdout, r.stderr


@pytest.mark.parametrize("args,rc,msg", [
    (["gmond", "--port", "0"], 2, "gmond: --port 0: give a port from 1 to 65535"),
    (["gmond", "--interval", "0"], 2, "--interval 0: give 0.1 to 3600 seconds"),
    (["gmond", "--port", "x"], 2, "argument --port: invalid int value"),
    (["gmond", "--frob"], 2, "unrecognized arguments: --frob"),
    (["gmetad", "-c", "/nonexistent/gmetad.conf"], 1, "/nonexistent/gmetad.conf: cannot read"),
    (["gmetad", "--listen", "a:b"], 2, "--listen 'a:b': expected [HOST:]PORT"),
])
def test_command_line_refusals(tmp_path, args, rc, msg):
    code, out, err = halb(tmp_path, *args)
    assert code == rc and msg in err, (code, err)
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_gmetad_config_errors_and_check(tmp_path):
    conf = tmp_path / "gmetad.conf"
    conf.write_text('data_source "Mon Cluster" N1 N2\nfrobnicate yes\n')
    code, _, err = halb(tmp_path, "gmetad", "-c", str(conf))
    assert code == 1 and err.strip() == f"halb: {conf}:2: unknown directive 'frobnicate'"
    conf.write_text('data_source "Mon Cluster" N1 N2:8650\nxml_port 8651\n')
    code, out, err = halb(tmp_path, "gmetad", "-c", str(conf), "--check", "--data-dir", str(tmp_path / "d"))
    assert code == 0 and f"warning: {conf}:2: 'xml_port' is not supported" in out
    assert 'data_source "Mon Cluster": every 15 s from N1:8649 N2:8650' in out


def test_port_in_use_is_one_line(tmp_path):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    port = s.getsockname()[1]
    try:
        code, _, err = halb(tmp_path, "gmond", "--bind", "127.0.0.1", "--port", str(port))
        assert code == 1 and f"gmond: cannot listen on 127.0.0.1:{port}" in err and "Traceback" not in err
        conf = tmp_path / "g.conf"
        conf.write_text('data_source "x" 127.0.0.1:1\n')
        code, _, err = halb(tmp_path, "gmetad", "-c", str(conf), "--listen", f"127.0.0.1:{port}",
                            "--data-dir", str(tmp_path / "d"))
        assert code == 1 and f"gmetad: cannot listen on 127.0.0.1:{port}" in err and "Traceback" not in err
    finally:
        s.close()
