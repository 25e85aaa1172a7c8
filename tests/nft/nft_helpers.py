"""Helpers for the nft engine's lab tests: everything runs inside lab namespaces."""
from __future__ import annotations

import subprocess
import sys
import time



class Director:
    """halb commands run on one lab node (the director) with the nft engine."""

    def __init__(self, lab, node="N1"):
        self.lab = lab
        self.node = node

    def halb(self, *args, check=True, timeout=60, env=None):
        r = self.lab.run(self.node, [sys.executable, "-m", "halb", "--engine", "nft", *args], timeout=timeout,
                         env=env)
        if check and r.returncode != 0:
            raise AssertionError(f"halb {' '.join(args)} -> {r.returncode}: {r.stderr.strip()}")
        return r

    def ipvsadm(self, *args, check=True):
        return self.halb("ipvsadm", *args, check=check)

    def sh(self, cmd, node=None):
        return self.lab.run(node or self.node, ["sh", "-c", cmd], timeout=30)

    def snapshot(self, node=None):
        """What must be identical before and after halb: ruleset, rules, routes, sysctls."""
        node = node or self.node
        out = {}
        for name, cmd in (("ruleset", "nft list ruleset"), ("rules", "ip rule"),
                          ("routes", "ip route show table all"),
                          ("sysctl", "sysctl net.ipv4.ip_forward net.ipv4.conf.all.send_redirects "
                                     "net.ipv4.conf.all.accept_redirects")):
            out[name] = self.sh(cmd, node).stdout
        return out


def vip_on(lab, node="N1"):
    """Put the VIP on the node's LAN interface, as IPaddr2 does on the director."""
    n = lab.node(node)
    lab.run(node, ["ip", "addr", "add", f"{lab.vip}/{lab.prefixlen}", "dev", n.iface], check=True)


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


