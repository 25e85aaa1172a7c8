"""Scheduling, persistence, weights and flow pinning through the xdp engine,
with a real client, compared with the exact IPVS algorithms (halb.sched)."""
from __future__ import annotations

import socket

import pytest

from halb.model import Dest, Service, ServiceKey
from halb.sched import Packet, make_scheduler
from xdp_helpers import Director, get, wait_for, xdp_lab

pytestmark = [pytest.mark.root, pytest.mark.timeout(240)]


def _setup(d, lab, sched, weights=(1, 1), extra=()):
    """-C (forgets the old flows), then the service in one atomic `ipvsadm -R`."""
    vip = lab.vip
    d.ipvsadm("-C")
    lines = [f"-A -t {vip}:80 -s {sched} {' '.join(extra)}"]
    for i, w in enumerate(weights, 1):
        lines.append(f"-a -t {vip}:80 -r {lab.node(i).ip}:80 -g -w {w}")
    r = d.halb("ipvsadm", "-R", input="\n".join(lines) + "\n")
    assert r.returncode == 0, r.stderr


class Reference:
    """The exact IPVS scheduler fed with what IPVS would count: each finished
    short request leaves one inactive connection."""

    def __init__(self, lab, sched, weights):
        self.names = {lab.node(i).ip: f"N{i}" for i in range(1, len(weights) + 1)}
        key = ServiceKey("tcp", lab.vip, 80)
        self.dests = [Dest(lab.node(i).ip, 80, "gate", w) for i, w in enumerate(weights, 1)]
        self.svc = Service(key, scheduler=sched, dests=self.dests)
        self.sched = make_scheduler(self.svc)
        self.sched.update(self.dests)
        self.pkt = Packet(lab.client().ip, 40000, lab.vip, 80)

    def pick(self, active=False):
        d = self.sched.schedule(self.dests, self.pkt, now=0.0)
        if active:
            d.activeconns += 1
        else:
            d.inactconns += 1
        return self.names[d.addr]


def _get(lab, client="client0"):
    return get(lab, f"http://{lab.vip}/testcluster.html", client=client, timeout=3.0)


def _open_partial(lab):
    s = lab.socket("client0")
    s.settimeout(5)
    s.connect((lab.vip, 80))
    s.sendall(b"GET /testcluster.html HTTP/1.0\r\n")
    return s


def _finish(s):
    s.sendall(b"Host: vip\r\n\r\n")
    data = b""
    while True:
        try:
            b = s.recv(65536)
        except socket.timeout:
            return None
        if not b:
            break
        data += b
    s.close()
    return data.partition(b"\r\n\r\n")[2].decode().strip()


def _server_of(d, lab, sock):
    port = sock.getsockname()[1]
    for ln in d.ipvsadm("-L", "-n", "-c").stdout.splitlines():
        if f"{lab.client().ip}:{port} " in ln + " ":
            rip = ln.split()[5].rsplit(":", 1)[0]
            return "N1" if rip == lab.node("N1").ip else "N2"
    return None


def test_every_scheduler_weights_and_pinning(make_lab):
    lab = xdp_lab(make_lab)
    d = Director(lab)
    try:
        for sched, weights in (("rr", (1, 1)), ("wrr", (3, 1)), ("lc", (1, 1)), ("wlc", (1, 2)),
                               ("sed", (1, 3)), ("nq", (1, 1)), ("fo", (1, 2)), ("ovf", (2, 1)),
                               ("lblc", (1, 1)), ("lblcr", (1, 1)), ("sh", (1, 1)), ("dh", (1, 1)),
                               ("mh", (1, 1))):
            _setup(d, lab, sched, weights)
            ref = Reference(lab, sched, weights)
            got, want = [], []
            for _ in range(6):
                if sched not in ("rr", "wrr", "sh", "dh", "mh"):
                    d.halb("xdp", "refresh")  # the controller's tick
                got.append(_get(lab))
                want.append(ref.pick())
            assert None not in got, (sched, got)
            if sched in ("sh", "dh", "mh"):
                assert len(set(got)) == 1, (sched, got)  # same client, same server
            else:
                assert got == want, (sched, got, want)
        # weights, then weight 0 = quiesced
        _setup(d, lab, "wrr", (1, 4))
        got = [_get(lab) for _ in range(10)]
        assert got.count("N2") == 8 and got.count("N1") == 2, got
        d.ipvsadm("-e", "-t", f"{lab.vip}:80", "-r", f"{lab.node('N2').ip}:80", "-g", "-w", "0")
        assert [_get(lab) for _ in range(3)] == ["N1"] * 3
        # flows pinned across server-set changes, also to a removed server
        vip = lab.vip
        _setup(d, lab, "rr", (1, 1))
        a, b = _open_partial(lab), _open_partial(lab)
        sa = wait_for(lambda: _server_of(d, lab, a))
        sb = wait_for(lambda: _server_of(d, lab, b))
        assert {sa, sb} == {"N1", "N2"}
        d.ipvsadm("-d", "-t", f"{vip}:80", "-r", f"{lab.node('N2').ip}:80")
        d.ipvsadm("-e", "-t", f"{vip}:80", "-r", f"{lab.node('N1').ip}:80", "-g", "-w", "5")
        d.ipvsadm("-E", "-t", f"{vip}:80", "-s", "wlc")
        assert [_get(lab) for _ in range(2)] == ["N1", "N1"]
        assert _finish(a) == sa
        assert _finish(b) == sb
        d.ipvsadm("-a", "-t", f"{vip}:80", "-r", f"{lab.node('N2').ip}:80", "-g")
        assert set(_get(lab) for _ in range(4)) == {"N1", "N2"}
    finally:
        d.halb("xdp", "flush", check=False)


def test_persistence_and_netmask(make_lab):
    lab = xdp_lab(make_lab, clients=2)
    d = Director(lab)
    try:
        _setup(d, lab, "rr", (1, 1), extra=("-p", "60"))
        got = [_get(lab) for _ in range(6)]
        assert len(set(got)) == 1 and None not in got, got
        out = d.ipvsadm("-L", "-n", "-c").stdout
        tmpl = [ln for ln in out.splitlines() if "NONE" in ln]
        assert len(tmpl) == 1 and lab.client().ip in tmpl[0], out
        assert "persistent 60" in d.ipvsadm("-L", "-n").stdout
        d.ipvsadm("-E", "-t", f"{lab.vip}:80", "-s", "rr")
        got = [_get(lab) for _ in range(4)]
        assert set(got) == {"N1", "N2"}, got
        # -M: one /24 = one template for both clients
        _setup(d, lab, "rr", (1, 1), extra=("-p", "60", "-M", "255.255.255.0"))
        got = [_get(lab, client=f"client{i % 2}") for i in range(6)]
        assert len(set(got)) == 1 and None not in got, got
        _setup(d, lab, "rr", (1, 1), extra=("-p", "60"))
        got = [_get(lab, client=f"client{i % 2}") for i in range(6)]
        assert got[0] != got[1] and got[0::2] == [got[0]] * 3 and got[1::2] == [got[1]] * 3, got
    finally:
        d.halb("xdp", "flush", check=False)
