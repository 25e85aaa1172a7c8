"""UDP and firewall-mark services through the kernel path."""
from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest

from nft_helpers import get, wait_for

pytestmark = [pytest.mark.root, pytest.mark.timeout(180)]

UDP_SERVER = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
while True:
    data, peer = s.recvfrom(2048)
    s.sendto(sys.argv[3].encode(), peer)
"""


def _udp_ask(lab, vip, port, timeout=2.0):
    s = lab.socket("client0", type=socket.SOCK_DGRAM)
    s.settimeout(timeout)
    try:
        s.connect((vip, port))  # a connected socket only accepts replies from the VIP
        s.send(b"who?")
        return s.recv(2048).decode()
    except OSError:
        return None
    finally:
        s.close()


def test_udp_service_direct_return(director_lab):
    lab, d = director_lab
    vip = lab.vip
    lab.run("N2", [sys.executable, "-m", "halb", "realserver", "start", "--vip", vip], check=True)
    try:
        for n in ("N1", "N2"):
            lab.popen(n, [sys.executable, "-c", UDP_SERVER, vip, "5353", n])
        d.ipvsadm("-A", "-u", f"{vip}:5353", "-s", "rr")
        d.ipvsadm("-a", "-u", f"{vip}:5353", "-r", f"{lab.node('N1').ip}:5353", "-g")
        d.ipvsadm("-a", "-u", f"{vip}:5353", "-r", f"{lab.node('N2').ip}:5353", "-g")
        assert wait_for(lambda: _udp_ask(lab, vip, 5353, 0.5), timeout=10)  # servers up
        got = [_udp_ask(lab, vip, 5353) for _ in range(4)]
        assert None not in got and set(got) == {"N1", "N2"}, got
        assert all(a != b for a, b in zip(got, got[1:])), got
        # the connection table lists UDP entries
        conns = d.ipvsadm("-L", "-n", "-c").stdout
        assert "UDP" in conns and f"{vip}:5353" in conns, conns
    finally:
        lab.run("N2", [sys.executable, "-m", "halb", "realserver", "stop"])


def test_fwmark_service(director_lab):
    lab, d = director_lab
    vip = lab.vip
    lab.run("N2", [sys.executable, "-m", "halb", "realserver", "start", "--vip", vip], check=True)
    try:
        # the user's own table marks web traffic for the VIP (as iptables -t mangle would)
        d.sh(f"nft add table ip usermangle; nft add chain ip usermangle pre "
             f"'{{ type filter hook prerouting priority mangle; }}'; "
             f"nft add rule ip usermangle pre ip daddr {vip} tcp dport 80 meta mark set 7")
        d.ipvsadm("-A", "-f", "7", "-s", "rr")
        d.ipvsadm("-a", "-f", "7", "-r", f"{lab.node('N1').ip}:0", "-g")
        d.ipvsadm("-a", "-f", "7", "-r", f"{lab.node('N2').ip}:0", "-g")
        got = [get(lab, f"http://{vip}/testcluster.html") for _ in range(4)]
        assert set(got) == {"N1", "N2"} and all(a != b for a, b in zip(got, got[1:])), got
        out = d.ipvsadm("-L", "-n").stdout
        assert "FWM  7 rr" in out, out
        d.halb("nft", "flush")
        # the user's table is still there, untouched
        assert "meta mark set 0x00000007" in d.sh("nft list table ip usermangle").stdout
    finally:
        lab.run("N2", [sys.executable, "-m", "halb", "realserver", "stop"])
