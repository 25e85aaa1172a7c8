"""Helpers for the xdp engine's lab tests: everything runs inside lab namespaces."""
from __future__ import annotations

import json
import socket
import sys
import time


class Director:
    """halb commands run on one lab node (the director) with the xdp engine."""

    def __init__(self, lab, node="N1"):
        self.lab = lab
        self.node = node

    def halb(self, *args, check=True, timeout=60, env=None, input=None):
        r = self.lab.run(self.node, [sys.executable, "-m", "halb", "--engine", "xdp", *args], timeout=timeout,
                         env=env, input=input)
        if check and r.returncode != 0:
            raise AssertionError(f"halb {' '.join(args)} -> {r.returncode}: {r.stderr.strip()}")
        return r

    def ipvsadm(self, *args, check=True):
        return self.halb("ipvsadm", *args, check=check)

    def sh(self, cmd, node=None):
        return self.lab.run(node or self.node, ["sh", "-c", cmd], timeout=30)

    def xdp_progs(self, node=None) -> list[str]:
        """Names of the XDP programs attached to the node's interfaces."""
        out = json.loads(self.sh("ip -j link show", node).stdout or "[]")
        return [i["xdp"]["prog"]["name"] for i in out if "xdp" in i and "prog" in i.get("xdp", {})]

    def snapshot(self, node=None):
        """What must be identical before and after halb: nft ruleset, rules,
        routes, sysctls, XDP attachments."""
        node = node or self.node
        out = {}
        for name, cmd in (("ruleset", "nft list ruleset"), ("rules", "ip rule"),
                          ("routes", "ip route show table all"), ("links", "ip -d link show"),
                          ("sysctl", "sysctl net.ipv4.ip_forward net.ipv4.conf.all.send_redirects")):
            out[name] = self.sh(cmd, node).stdout
        return out


def xdp_lab(make_lab, clients=1, realserver=True):
    """A lab whose N1 holds the VIP and sends with XDP_TX; N2 is a Direct
    Return real server (VIP on lo)."""
    lab = make_lab(nodes=2, clients=clients, apache=True)
    n1 = lab.node("N1")
    lab.run("N1", ["ip", "addr", "add", f"{lab.vip}/{lab.prefixlen}", "dev", n1.iface], check=True)
    lab.xdp_tx_ready("N1")
    if realserver:
        lab.run("N2", [sys.executable, "-m", "halb", "realserver", "start", "--vip", lab.vip], check=True)
    return lab


def get(lab, url, client="client0", timeout=2.0):
    """Body of GET url from the client, or None on timeout/refusal."""
    from halb.lab.lab import LabError
    try:
        status, body = lab.http_get(client, url, timeout=timeout)
    except LabError:
        return None
    return body.strip()


def wait_for(pred, timeout=15.0, interval=0.1):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            return v
        time.sleep(interval)


def udp_ask(lab, port, client="client0", timeout=2.0, sport=0):
    """One datagram to VIP:port from the client; the answer (or None)."""
    s = lab.socket(client, type=socket.SOCK_DGRAM)
    try:
        s.settimeout(timeout)
        if sport:
            s.bind((lab.client().ip, sport))
        s.connect((lab.vip, port))  # a connected socket takes answers from the VIP only
        s.send(b"who")
        return s.recv(100).decode()
    except OSError:
        return None
    finally:
        s.close()


UDP_SERVER = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
while True:
    data, peer = s.recvfrom(100)
    s.sendto(sys.argv[3].encode(), peer)
"""
