"""Connection sync in the namespace lab: N1 directs (Direct Return, rr over
N3 and N4, which run a line echo server saying who they are), N2 has the same
table; client0 holds several long-lived TCP connections through the VIP; the
VIP moves from N1 to N2 (removed on N1, added on N2 with gratuitous ARP).

With the sync daemons (master on N1, backup on N2) every connection keeps
its real server; without them N2 schedules the next packet of each one
afresh and rr sends some to the other server, which resets them."""
from __future__ import annotations

import json
import os
import socket
import sys
import time

import pytest

pytestmark = [pytest.mark.root, pytest.mark.timeout(90)]

PORT = 8000
NCONN = 6
ECHO = r"""
import socket, sys, threading
name = socket.gethostname()
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", int(sys.argv[1]))); srv.listen(64)
def serve(c):
    f = c.makefile("rb")
    for line in f:
        c.sendall(name.encode() + b" " + line)
    c.close()
while True:
    c, _ = srv.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""


def halb(lab, node, *args, check=True, timeout=30):
    r = lab.run(node, [sys.executable, "-m", "halb", "--engine", "nft", *args], timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"{node}: halb {' '.join(args)} -> {r.returncode}: {r.stderr.strip()}")
    return r


def _wait_port(lab, node, port, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s = lab.socket(node)
        s.settimeout(0.5)
        try:
            s.connect((lab.node(node).ip, port))
            return
        except OSError:
            time.sleep(0.05)
        finally:
            s.close()
    raise AssertionError(f"echo server on {node} not up")


@pytest.fixture
def sync_lab(make_lab, tmp_path):
    lab = make_lab(nodes=4, clients=1, apache=False)
    vip = lab.vip
    script = tmp_path / "echo.py"
    script.write_text(ECHO)
    os.chmod(tmp_path, 0o755)
    os.chmod(script, 0o644)
    for rs in ("N3", "N4"):
        lab.run(rs, [sys.executable, "-m", "halb", "realserver", "start", "--vip", vip], check=True)
        lab.popen(rs, [sys.executable, str(script), PORT], stdout=open(os.devnull, "wb"),
                  stderr=open(os.devnull, "wb"))
    for rs in ("N3", "N4"):
        _wait_port(lab, rs, PORT)
    for d in ("N1", "N2"):  # both directors: the same table (as from one ldirectord.cf)
        halb(lab, d, "ipvsadm", "-A", "-t", f"{vip}:{PORT}", "-s", "rr")
        for rs in ("N3", "N4"):
            halb(lab, d, "ipvsadm", "-a", "-t", f"{vip}:{PORT}", "-r", f"{lab.node(rs).ip}:{PORT}", "-g")
    lab.run("N1", ["ip", "addr", "add", f"{vip}/{lab.prefixlen}", "dev", lab.node("N1").iface], check=True)
    key = tmp_path / "sync.key"
    key.write_text("a shared secret for the lab\n")
    os.chmod(key, 0o600)
    started = []
    try:
        yield lab, key, started
    finally:
        for node, role in started:
            halb(lab, node, "ipvsadm", "--stop-daemon", role, check=False)
        for d in ("N1", "N2"):
            halb(lab, d, "nft", "flush", check=False)


def _connect_all(lab):
    conns = []
    for i in range(NCONN):
        s = lab.socket("client0")
        s.settimeout(3)
        s.connect((lab.vip, PORT))
        conns.append((s, s.makefile("rb")))
    servers = [_roundtrip(c, f"hello {i}") for i, c in enumerate(conns)]
    assert set(servers) == {"N3", "N4"}, servers
    return conns, servers


def _roundtrip(conn, text):
    s, f = conn
    s.sendall(text.encode() + b"\n")
    line = f.readline().decode()
    if not line.endswith(text + "\n"):
        raise ConnectionError(f"unexpected answer {line!r}")
    return line.split()[0]


def _move_vip(lab):
    vip = lab.vip
    lab.run("N1", ["ip", "addr", "del", f"{vip}/{lab.prefixlen}", "dev", lab.node("N1").iface], check=True)
    n2 = lab.node("N2")
    lab.run("N2", ["ip", "addr", "add", f"{vip}/{lab.prefixlen}", "dev", n2.iface], check=True)
    lab.run("N2", [sys.executable, "-c", "import sys; from halb.resources.ipaddr import send_garp; "
                   "send_garp(sys.argv[1], sys.argv[2], 3)", n2.iface, vip], check=True)


def _after_move(conns, servers):
    """Round trips on every connection, in an order where N2's rr (which
    starts where N1's did) disagrees with N1 for each one when nothing was
    synced: (1, 0, 3, 2, ...)."""
    results = {}
    order = [i ^ 1 for i in range(len(conns))]
    for i in order:
        try:
            got = [_roundtrip(conns[i], f"again {i} {k}") for k in range(3)]
            results[i] = "ok" if set(got) == {servers[i]} else f"moved to {got}"
        except (OSError, ConnectionError) as e:
            results[i] = type(e).__name__
    return results


def _flows(lab, node):
    out = lab.run(node, ["nft", "-j", "list", "map", "inet", "halb", "flows"]).stdout
    try:
        objs = json.loads(out)["nftables"]
    except (ValueError, KeyError):
        return []
    return [e for o in objs if "map" in o for e in o["map"].get("elem", [])]


def test_connections_survive_failover_with_sync(sync_lab):
    lab, key, started = sync_lab
    n1if, n2if = lab.node("N1").iface, lab.node("N2").iface
    halb(lab, "N2", "ipvsadm", "--start-daemon", "backup", "--mcast-interface", n2if, "--syncid", "7",
         "--sync-key-file", key)
    started.append(("N2", "backup"))
    halb(lab, "N1", "ipvsadm", "--start-daemon", "master", "--mcast-interface", n1if, "--syncid", "7",
         "--sync-key-file", key)
    started.append(("N1", "master"))
    assert halb(lab, "N1", "ipvsadm", "-L", "--daemon").stdout == (
        f"master sync daemon (mcast={n1if}, syncid=7, maxlen=1472, group=224.0.0.81, port=8848, ttl=1)\n")
    assert halb(lab, "N2", "ipvsadm", "-L", "--daemon").stdout == (
        f"backup sync daemon (mcast={n2if}, syncid=7, maxlen=1472, group=224.0.0.81, port=8848, ttl=1)\n")
    t0 = time.monotonic()
    conns, servers = _connect_all(lab)
    deadline = time.monotonic() + 10
    while len(_flows(lab, "N2")) < NCONN and time.monotonic() < deadline:
        time.sleep(0.05)
    delay = time.monotonic() - t0
    assert len(_flows(lab, "N2")) == NCONN, halb(lab, "N2", "sync", "status").stdout
    print(f"\n{NCONN} connections on the backup {delay * 1000:.0f} ms after the first was opened")
    # the backup's listing shows them, on the same real servers
    listing = halb(lab, "N2", "ipvsadm", "-L", "-n", "-c").stdout
    for (s, _), srv in zip(conns, servers):
        cport = s.getsockname()[1]
        line = next(ln for ln in listing.splitlines() if f"{lab.client().ip}:{cport} " in ln)
        assert line.split()[5] == f"{lab.node(srv).ip}:{PORT}", listing
    _move_vip(lab)
    results = _after_move(conns, servers)
    assert all(v == "ok" for v in results.values()), results
    st = json.loads(halb(lab, "N2", "sync", "status", "backup", "--json").stdout)["backup"]
    assert st["counters"]["entries_applied"] >= NCONN and st["signed"], st
    assert st["counters"]["entries_dropped"] == 0, st
    for s, f in conns:
        s.close()


def test_without_sync_the_same_move_breaks_connections(sync_lab):
    lab, key, started = sync_lab
    conns, servers = _connect_all(lab)
    _move_vip(lab)
    results = _after_move(conns, servers)
    assert any(v != "ok" for v in results.values()), results
    for s, f in conns:
        s.close()
