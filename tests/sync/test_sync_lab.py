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
        raise AssertionError(f"{node}: halb {' '.join(map(str, args))} -> {r.returncode}: {r.stderr.strip()}")
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


def _mcast_sender(lab, node):
    s = lab.socket(node, type=socket.SOCK_DGRAM)
    idx = lab.run(node, [sys.executable, "-c", "import socket,sys; print(socket.if_nametoindex(sys.argv[1]))",
                         lab.node(node).iface]).stdout.strip()
    import struct
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF,
                 socket.inet_aton("0.0.0.0") * 2 + struct.pack("@i", int(idx)))
    return s


def _status(lab, node, role):
    return json.loads(halb(lab, node, "sync", "status", role, "--json").stdout)[role]


def test_backup_drops_bad_datagrams_and_syncs_udp_and_persistence(sync_lab):
    from halb.sync import codec
    from halb.sync.codec import ESTABLISHED, TCP, Entry

    lab, key, started = sync_lab
    vip = lab.vip
    n1if, n2if = lab.node("N1").iface, lab.node("N2").iface
    rip3 = lab.node("N3").ip
    for d in ("N1", "N2"):  # a UDP service and a persistent one, on both directors
        halb(lab, d, "ipvsadm", "-A", "-u", f"{vip}:53", "-s", "rr")
        halb(lab, d, "ipvsadm", "-a", "-u", f"{vip}:53", "-r", f"{rip3}:53", "-g")
        halb(lab, d, "ipvsadm", "-A", "-t", f"{vip}:443", "-s", "rr", "-p", "300")
        halb(lab, d, "ipvsadm", "-a", "-t", f"{vip}:443", "-r", f"{rip3}:443", "-g")
    halb(lab, "N2", "ipvsadm", "--start-daemon", "backup", "--mcast-interface", n2if, "--sync-key-file", key)
    started.append(("N2", "backup"))
    # ipvsadm's refusals: a second daemon of a role, stopping one that does not run
    r = halb(lab, "N2", "ipvsadm", "--start-daemon", "backup", "--mcast-interface", n2if, check=False)
    assert r.returncode == 1 and "a backup sync daemon is already running" in r.stderr, r.stderr
    r = halb(lab, "N2", "ipvsadm", "--stop-daemon", "master", check=False)
    assert r.returncode == 1 and r.stderr.strip() == "halb: no master sync daemon is running", r.stderr
    r = halb(lab, "N2", "ipvsadm", "--start-daemon", "master", "--mcast-interface", "nosuch0", check=False)
    assert r.returncode == 1 and r.stderr.strip() == "halb: mcast-interface nosuch0: no such interface"
    os.chmod(key, 0o644)
    r = halb(lab, "N1", "ipvsadm", "--start-daemon", "master", "--mcast-interface", n1if, "--sync-key-file", key,
             check=False)
    assert r.returncode == 1 and "readable by its owner only" in r.stderr, r.stderr
    os.chmod(key, 0o600)
    # junk, unsigned, forged, replayed and unknown-service datagrams from a client
    s = _mcast_sender(lab, "client0")
    dst = ("224.0.0.81", 8848)
    good = Entry(TCP, ESTABLISHED, "tcp", 0, vip, 9999, vip, 9999, "10.9.9.9", 1234, rip3, 9999, 60000)
    secret = key.read_bytes().strip()
    epoch = 1 << 60
    s.sendto(os.urandom(300), dst)
    s.sendto(b"HLBS" + os.urandom(50), dst)
    s.sendto(codec.encode_packet([good], syncid=0, epoch=epoch, seq=1), dst)
    s.sendto(codec.encode_packet([good], syncid=0, epoch=epoch, seq=1, key=b"not the key"), dst)
    stamp = int(time.time() * 1000)
    signed = codec.encode_packet([good], syncid=0, epoch=epoch, seq=1, key=secret, stamp_ms=stamp)
    s.sendto(signed, dst)
    s.sendto(signed, dst)
    s.close()
    # replayed from another address: still a replay (state keyed by the signed sender)
    s = _mcast_sender(lab, "N3")
    s.sendto(signed, dst)
    # recorded an hour ago (a backup that restarted since has no replay state for it)
    s.sendto(codec.encode_packet([good], syncid=0, epoch=epoch + 1, seq=1, key=secret,
                                 stamp_ms=stamp - 3600_000), dst)
    s.close()

    def drops():
        return _status(lab, "N2", "backup")["drops"]
    want = {"packet_malformed": 2, "packet_unsigned": 1, "packet_bad_mac": 1, "packet_replay": 2,
            "packet_stale_time": 1, "unknown_service": 1}
    deadline = time.monotonic() + 5
    while drops() != want and time.monotonic() < deadline:
        time.sleep(0.05)
    assert drops() == want
    # the master: a UDP flow and a persistent connection reach the backup, in its own marks
    halb(lab, "N1", "ipvsadm", "--start-daemon", "master", "--mcast-interface", n1if, "--sync-key-file", key)
    started.append(("N1", "master"))
    u = lab.socket("client0", type=socket.SOCK_DGRAM)
    u.sendto(b"query", (vip, 53))
    t = lab.socket("client0")
    t.settimeout(1)
    try:
        t.connect((vip, 443))   # nothing listens on N3:443: the flow and template exist all the same
    except OSError:
        pass
    cport = u.getsockname()[1]
    deadline = time.monotonic() + 5
    want_lines = [f"UDP", f"{lab.client().ip}:{cport}", "NONE"]
    while time.monotonic() < deadline:
        listing = halb(lab, "N2", "ipvsadm", "-L", "-n", "-c").stdout
        if all(w in listing for w in want_lines):
            break
        time.sleep(0.1)
    udp = [ln.split() for ln in listing.splitlines() if ln.startswith("UDP")]
    assert [(x[3], x[5]) for x in udp] == [(f"{lab.client().ip}:{cport}", f"{rip3}:53")], listing
    tmpl = [ln.split() for ln in listing.splitlines() if " NONE " in ln]
    assert [(x[3], x[4], x[5]) for x in tmpl] == [(f"{lab.client().ip}:0", f"{vip}:443", f"{rip3}:443")], listing
    st = _status(lab, "N2", "backup")
    assert st["counters"]["entries_applied"] >= 2 and lab.node("N1").ip in st["peers"], st
    text = halb(lab, "N2", "sync", "status").stdout
    assert "backup sync daemon: running" in text and "signed" in text and "packet_replay=2" in text, text
    u.close()
    t.close()
    # stop: nothing left behind, -L --daemon prints nothing
    for node, role in (("N1", "master"), ("N2", "backup")):
        halb(lab, node, "ipvsadm", "--stop-daemon", role)
        started.remove((node, role))
        assert halb(lab, node, "ipvsadm", "-L", "--daemon").stdout == ""
        left = sorted(p.name for p in lab.node_run_dir(node).iterdir() if p.name.startswith("sync-"))
        # the backup hands what it could not place (the unknown service's entry) to the next master
        assert left == [f"sync-{role}.log"] + (["sync-held.bin"] if role == "backup" else []), left
    log = (lab.node_run_dir("N2") / "sync-backup.log").read_text()
    assert "backup sync daemon started" in log and "backup sync daemon stopping" in log, log
    assert "Traceback" not in log and f"from {lab.client().ip} (packet_replay)" in log, log
    assert "1 entries not placed here handed over to the next master sync daemon" in log, log


def test_article_takeover_backup_without_a_table(sync_lab):
    """§6.3.8 of the article: `--start-daemon backup` on both nodes at boot;
    the node taking over stops its backup daemon, starts a master one, then
    ldirectord fills its table. N2's table does not exist while it is the
    backup: the entries wait in its backup daemon, are handed to its master
    daemon and placed when the table appears."""
    lab, key, started = sync_lab
    n1if, n2if = lab.node("N1").iface, lab.node("N2").iface
    halb(lab, "N2", "nft", "flush")
    halb(lab, "N2", "ipvsadm", "--start-daemon", "backup", "--mcast-interface", n2if, "--sync-key-file", key)
    started.append(("N2", "backup"))
    halb(lab, "N1", "ipvsadm", "--start-daemon", "master", "--mcast-interface", n1if, "--sync-key-file", key)
    started.append(("N1", "master"))
    conns, servers = _connect_all(lab)
    deadline = time.monotonic() + 10
    while _status(lab, "N2", "backup")["held"] < NCONN and time.monotonic() < deadline:
        time.sleep(0.05)
    st = _status(lab, "N2", "backup")
    assert st["held"] == NCONN and st["drops"] == {"unknown_service": NCONN}, st
    # takeover on N2 (the ldirectord resource script of the article), N1 steps down
    halb(lab, "N1", "ipvsadm", "--stop-daemon", "master")
    halb(lab, "N1", "ipvsadm", "--start-daemon", "backup", "--mcast-interface", n1if, "--sync-key-file", key)
    started[:] = [("N2", "backup"), ("N1", "backup")]
    halb(lab, "N2", "ipvsadm", "--stop-daemon", "backup")
    halb(lab, "N2", "ipvsadm", "--start-daemon", "master", "--mcast-interface", n2if, "--sync-key-file", key)
    started[:] = [("N2", "master"), ("N1", "backup")]
    _move_vip(lab)
    vip = lab.vip
    halb(lab, "N2", "ipvsadm", "-A", "-t", f"{vip}:{PORT}", "-s", "rr")
    for rs in ("N3", "N4"):
        halb(lab, "N2", "ipvsadm", "-a", "-t", f"{vip}:{PORT}", "-r", f"{lab.node(rs).ip}:{PORT}", "-g")
    deadline = time.monotonic() + 10
    while len(_flows(lab, "N2")) < NCONN and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(_flows(lab, "N2")) == NCONN, _status(lab, "N2", "master")
    results = _after_move(conns, servers)
    assert all(v == "ok" for v in results.values()), results
    log = (lab.node_run_dir("N2") / "sync-master.log").read_text()
    assert f"{NCONN} entries handed over by the backup sync daemon" in log, log
    # placed as the table grows (each real server's entries once it is there)
    assert "held entries placed now that the table has their services (0 still held)" in log, log
    for s, f in conns:
        s.close()
