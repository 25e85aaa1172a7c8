"""The article's acceptance test (§6.3.6, test 1) in the namespace lab: the
director runs on N1 with the nft engine (Direct Return, N1 Local + N2 Route)
and the article's ldirectord.cf; Apache on N2 stops -> N2 leaves the table
within checkinterval + checktimeout and the client sees no failed request;
Apache starts again -> N2 is back. Then the same with quiescent=yes."""
from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import pytest

import director_servers as servers

pytestmark = [pytest.mark.root, pytest.mark.timeout(240)]


def article_text() -> str:
    return servers.SEED.read_text() if servers.SEED.exists() else servers.ARTICLE


def halb(lab, *args, check=True, timeout=60):
    r = lab.run("N1", [sys.executable, "-m", "halb", "--engine", "nft", *args], timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"halb {' '.join(args)} -> {r.returncode}: {r.stderr.strip()}")
    return r


def table(lab) -> dict[str, tuple[str, int]]:
    out = halb(lab, "ipvsadm", "-L", "-n").stdout
    res = {}
    for ln in out.splitlines():
        m = re.match(r"^\s+->\s+(\d+\.\d+\.\d+\.\d+):(\d+)\s+(\w+)\s+(\d+)", ln)
        if m:
            res[m.group(1)] = (m.group(3), int(m.group(4)))
    return res


def wait_for(pred, timeout, what):
    return servers.wait_for(pred, timeout, 0.1, what)


def client_get(lab, url):
    from halb.lab.lab import LabError
    try:
        status, body = lab.http_get("client0", url, timeout=2)
    except LabError:
        return None
    return body.strip() if status == 200 else None


@pytest.fixture
def cluster(make_lab, tmp_path):
    lab = make_lab(nodes=2, clients=1, apache=True)
    n1 = lab.node("N1")
    lab.run("N1", ["ip", "addr", "add", f"{lab.vip}/{lab.prefixlen}", "dev", n1.iface], check=True)
    lab.run("N2", [sys.executable, "-m", "halb", "realserver", "start", "--vip", lab.vip], check=True)
    cfgs = []
    try:
        yield lab, cfgs
    finally:
        for c in cfgs:
            halb(lab, "director", str(c), "stop", check=False)
        halb(lab, "nft", "flush", check=False)
        lab.run("N2", [sys.executable, "-m", "halb", "realserver", "stop"])


def config(lab, path: Path, extra: str = "") -> Path:
    text = article_text().replace("$VIP", lab.vip).replace("$RIP1", lab.node("N1").ip) \
        .replace("$RIP2", lab.node("N2").ip)
    # alerts go to N1's own SMTP port (nothing listens): nothing leaves the lab
    path.write_text(extra + "smtp=127.0.0.1\n" + text)
    return path


def scenario(lab, cfg: Path, interval: float, timeout: float, quiescent: bool):
    rip1, rip2 = lab.node("N1").ip, lab.node("N2").ip
    halb(lab, "director", str(cfg), "start")
    wait_for(lambda: table(lab).get(rip1, ("", 0))[1] == 1 and table(lab).get(rip2, ("", 0))[1] == 1,
             interval + timeout + 10, "N1 and N2 in the table")
    t = table(lab)
    assert t[rip1][0] == "Local" and t[rip2][0] == "Route", t
    url = f"http://{lab.vip}/testcluster.html"
    assert {client_get(lab, url) for _ in range(4)} == {"N1", "N2"}

    lab.apache_stop("N2")
    t0 = time.monotonic()
    if quiescent:
        wait_for(lambda: table(lab).get(rip2) == ("Route", 0), interval + timeout + 10, "N2 quiescent")
    else:
        wait_for(lambda: rip2 not in table(lab), interval + timeout + 10, "N2 removed")
    took = time.monotonic() - t0
    assert took <= interval + timeout + 3, took  # within checkinterval + checktimeout (+ CI slack)
    got = [client_get(lab, url) for _ in range(10)]
    assert got == ["N1"] * 10, got  # no failed request once N2 is out

    lab.apache_start("N2")
    wait_for(lambda: table(lab).get(rip2) == ("Route", 1), interval + timeout + 10, "N2 back")
    assert {client_get(lab, url) for _ in range(4)} == {"N1", "N2"}
    halb(lab, "director", str(cfg), "stop")
    assert table(lab) == {}  # cleanstop: the director's virtual service is gone
    return took


def test_article_config_removes_and_readds_n2(cluster, tmp_path):
    lab, cfgs = cluster
    cfg = config(lab, tmp_path / "ldirectord.cf")
    cfgs.append(cfg)
    scenario(lab, cfg, interval=10, timeout=10, quiescent=False)
    log = (lab.node_run_dir("N1") / "director.ldirectord.cf.log").read_text()
    assert f"Deleted real server: {lab.node('N2').ip}:80 ({lab.vip}:80)" in log


def half_requests(lab, n=2):
    """n connections from the client to the VIP, each with a request whose
    end is not sent yet (rr spreads them over N1 and N2)."""
    socks = []
    for _ in range(n):
        s = lab.socket("client0")
        s.settimeout(10)
        s.connect((lab.vip, 80))
        s.sendall(b"GET /testcluster.html HTTP/1.0\r\nHost: x\r\n")
        socks.append(s)
    return socks


def finish(s) -> str:
    s.sendall(b"\r\n")
    data = servers.read_to_end(s)
    s.close()
    return data.decode("latin-1").split("\r\n\r\n", 1)[-1].strip()


def test_quiescent_sets_weight_zero(cluster, tmp_path):
    lab, cfgs = cluster
    maint = tmp_path / "maint"
    maint.mkdir()
    cfg = config(lab, tmp_path / "quiescent.cf", extra=f"quiescent=yes\nmaintenancedir={maint}\n")
    text = cfg.read_text().replace("checkinterval=10", "checkinterval=1").replace("checktimeout=10", "checktimeout=2")
    cfg.write_text(text)
    cfgs.append(cfg)
    rip2 = lab.node("N2").ip
    # established connections to a quiesced server finish: N2 taken out by a
    # maintenance file while two requests are half sent
    halb(lab, "director", str(cfg), "start")
    wait_for(lambda: table(lab).get(rip2) == ("Route", 1), 15, "N2 in the table")
    socks = half_requests(lab)
    (maint / rip2).touch()
    wait_for(lambda: table(lab).get(rip2) == ("Route", 0), 15, "N2 quiescent by maintenance")
    assert sorted(finish(s) for s in socks) == ["N1", "N2"]
    url = f"http://{lab.vip}/testcluster.html"
    assert [client_get(lab, url) for _ in range(4)] == ["N1"] * 4  # no new connection goes to N2
    (maint / rip2).unlink()
    wait_for(lambda: table(lab).get(rip2) == ("Route", 1), 15, "N2 back from maintenance")
    halb(lab, "director", str(cfg), "stop")
    scenario(lab, cfg, interval=1, timeout=2, quiescent=True)


def test_director_refreshes_connection_count_schedulers(cluster, tmp_path):
    """With scheduler=wlc on the nft engine, the running director is the
    engine's controller: new connections go to the real server with fewer
    active connections, with no `halb nft controller` running."""
    lab, cfgs = cluster
    cfg = config(lab, tmp_path / "wlc.cf")
    cfg.write_text(cfg.read_text().replace("scheduler=rr", "scheduler=wlc")
                   .replace("checkinterval=10", "checkinterval=1").replace("checktimeout=10", "checktimeout=2"))
    cfgs.append(cfg)
    rip1, rip2 = lab.node("N1").ip, lab.node("N2").ip
    halb(lab, "director", str(cfg), "start")
    wait_for(lambda: table(lab).get(rip1, ("", 0))[1] == 1 and table(lab).get(rip2, ("", 0))[1] == 1,
             20, "N1 and N2 in the table")
    held = half_requests(lab, 3)  # three long-lived connections: two on one server, one on the other
    try:
        out = halb(lab, "ipvsadm", "-L", "-n").stdout
        actives = {ln.split()[1].rsplit(":", 1)[0]: int(ln.split()[4]) for ln in out.splitlines()
                   if ln.strip().startswith("->") and ln.split()[1][0].isdigit()}
        assert sorted(actives.values()) == [1, 2], out
        less = "N1" if actives[rip1] == 1 else "N2"
        url = f"http://{lab.vip}/testcluster.html"
        got = []
        for _ in range(4):
            time.sleep(2.5)  # at least two director ticks after the previous request closed
            got.append(client_get(lab, url))
        assert got == [less] * 4, (got, less, out)
    finally:
        for s in held:
            s.close()
