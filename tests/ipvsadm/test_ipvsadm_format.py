"""Listings compared with reference text built from ipvsadm 1.31's own printf
format strings (copied here as test data; Python's % follows printf for these
conversions)."""
from __future__ import annotations

import pytest

from halb.ipvsadm.fmt import ListFormat, Names, format_conns, format_list, format_save, format_timeout, largenum
from halb.model import Conn, Dest, Rates, Service, ServiceKey, Stats, Timeouts

# ipvsadm.c format strings
TITLE = ("Prot LocalAddress:Port Scheduler Flags\n"
         "  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\n")
DEST = "  -> %-28s %-7s %-6d %-10u %-10u\n"
STATS_TITLE = "%-33s %8s %8s %8s %8s %8s\n  -> RemoteAddress:Port\n"
THR_TITLE = "%-33s %-10s %-10s %-10s %-10s\n  -> RemoteAddress:Port\n"
THR_DEST = "  -> %-28s %-10u %-10u %-10u %-10u\n"
PC_TITLE = "%-33s %-9s %-11s %-10s %-10s\n  -> RemoteAddress:Port\n"
PC_DEST = "  -> %-28s %-9u %-11u %-10u %-10u\n"
CONN_TITLE = "pro expire %-11s %-18s %-18s %s\n"
CONN = "%-3s %-6s %-11s %-18s %-18s %s\n"
VERSION = "IP Virtual Server version 1.2.1 (size=4096)\n"


def c_largenum(i):
    # print_largenum without --exact
    if i < 100000000:
        return "%9d" % i
    if i < 1000000000:
        return "%8dK" % (i // 1000)
    if i < 100000000000:
        return "%8dM" % (i // 1000000)
    if i < 100000000000000:
        return "%8dG" % (i // 1000000000)
    return "%8dT" % (i // 1000000000000)


def table():
    web = Service(ServiceKey("tcp", "10.0.0.100", 80), "rr")
    web.dests = [
        Dest("10.0.0.3", 80, "gate", 1, activeconns=2, inactconns=7),
        Dest("10.0.0.2", 80, "gate", 3, activeconns=0, inactconns=1, local=True),
    ]
    web.stats = Stats(12, 340, 0, 123456789, 0)
    web.dests[0].stats = Stats(7, 200, 0, 150_000_000_000, 0)
    web.dests[1].stats = Stats(5, 140, 0, 5000, 0)
    sticky = Service(ServiceKey("tcp", "10.0.0.100", 443), "wlc", persistent=True, timeout=600,
                     netmask="255.255.255.0")
    sticky.dests = [Dest("192.168.10.20", 8443, "masq", 0, u_threshold=100, l_threshold=80,
                         persistconns=4)]
    dns = Service(ServiceKey("udp", "10.0.0.100", 53), "sh", flags=("sh-port", "sh-fallback"), ops=True)
    fwm = Service(ServiceKey("fwm", fwmark=5), "mh", persistent=True, timeout=300, flags=("mh-port",))
    fwm.dests = [Dest("10.0.0.9", 0, "ipip", 2)]
    # inserted out of order: the listing sorts as libipvs does
    return [fwm, dns, sticky, web]


N = Names(numeric=True)


def test_list_numeric_exact_layout():
    got = format_list(table(), ListFormat(numeric=True), N)
    want = (VERSION + TITLE
            + "TCP  10.0.0.100:80 rr\n"
            + DEST % ("10.0.0.2:80", "Local", 3, 0, 1)
            + DEST % ("10.0.0.3:80", "Route", 1, 2, 7)
            + "TCP  10.0.0.100:443 wlc persistent 600 mask 255.255.255.0\n"
            + DEST % ("192.168.10.20:8443", "Masq", 0, 0, 0)
            + "UDP  10.0.0.100:53 sh (sh-fallback,sh-port) ops\n"
            + "FWM  5 mh (mh-port) persistent 300\n"
            + DEST % ("10.0.0.9:0", "Tunnel", 2, 0, 0))
    assert got == want


def test_list_one_service_has_no_version_line():
    got = format_list([table()[3]], ListFormat(numeric=True), N, header=False)
    assert got.startswith(TITLE)
    assert "IP Virtual Server" not in got


def test_nosort_keeps_engine_order():
    got = format_list(table(), ListFormat(numeric=True, nosort=True), N)
    lines = [ln for ln in got.splitlines() if not ln.startswith(" ")][2:]
    assert lines[0].startswith("FWM  5") and lines[-1].startswith("TCP  10.0.0.100:80")


def test_stats_layout_and_scaling():
    got = format_list(table()[3:], ListFormat(numeric=True, stats=True), N)
    web = table()[3]
    want = (VERSION + STATS_TITLE % ("Prot LocalAddress:Port", "Conns", "InPkts", "OutPkts", "InBytes", "OutBytes")
            + "%-33s" % "TCP  10.0.0.100:80" + "".join(c_largenum(v) for v in (12, 340, 0, 123456789, 0)) + "\n"
            + "  -> %-28s" % "10.0.0.2:80" + "".join(c_largenum(v) for v in (5, 140, 0, 5000, 0)) + "\n"
            + "  -> %-28s" % "10.0.0.3:80" + "".join(c_largenum(v) for v in (7, 200, 0, 150_000_000_000, 0)) + "\n")
    assert got == want
    assert "123456K" in got and "150G" in got and web


def test_exact_expands_numbers():
    got = format_list(table()[3:], ListFormat(numeric=True, stats=True, exact=True), N)
    assert " 123456789" in got and " 150000000000" in got
    assert largenum(150_000_000_000, exact=True) == " 150000000000"
    assert largenum(5, exact=True) == "        5"


@pytest.mark.parametrize("n,text", [(0, "        0"), (99_999_999, " 99999999"),
                                    (100_000_000, "  100000K"), (1_000_000_000, "    1000M"),
                                    (100_000_000_000, "     100G"), (10**14, "     100T")])
def test_largenum_matches_print_largenum(n, text):
    assert largenum(n) == text == c_largenum(n)


def test_rate_layout():
    svc = Service(ServiceKey("tcp", "127.0.0.1", 8080), "rr")
    svc.rates = Rates(3, 30, 29, 2000, 150_000_000)
    d = Dest("127.0.0.2", 80, "masq")
    d.rates = Rates(1, 10, 9, 700, 900)
    svc.dests = [d]
    got = format_list([svc], ListFormat(numeric=True, rate=True), N)
    want = (VERSION + STATS_TITLE % ("Prot LocalAddress:Port", "CPS", "InPPS", "OutPPS", "InBPS", "OutBPS")
            + "%-33s" % "TCP  127.0.0.1:8080" + "".join(c_largenum(v) for v in (3, 30, 29, 2000, 150_000_000)) + "\n"
            + "  -> %-28s %8u %8u %8u" % ("127.0.0.2:80", 1, 10, 9) + c_largenum(700) + c_largenum(900) + "\n")
    assert got == want


def test_thresholds_and_persistent_conn_layouts():
    svc = table()[2]
    got = format_list([svc], ListFormat(numeric=True, thresholds=True), N)
    assert got == (VERSION + THR_TITLE % ("Prot LocalAddress:Port", "Uthreshold", "Lthreshold",
                                          "ActiveConn", "InActConn")
                   + "TCP  10.0.0.100:443 wlc persistent 600 mask 255.255.255.0\n"
                   + THR_DEST % ("192.168.10.20:8443", 100, 80, 0, 0))
    got = format_list([svc], ListFormat(numeric=True, persistent_conn=True), N)
    assert got == (VERSION + PC_TITLE % ("Prot LocalAddress:Port", "Weight", "PersistConn",
                                         "ActiveConn", "InActConn")
                   + "TCP  10.0.0.100:443 wlc persistent 600 mask 255.255.255.0\n"
                   + PC_DEST % ("192.168.10.20:8443", 0, 4, 0, 0))


def test_ipv6_and_truncation():
    v6 = Service(ServiceKey("tcp", "2001:db8::1", 80), "rr", persistent=True, netmask="64")
    v6.dests = [Dest("2001:db8::1234:5678:9abc", 8080, "masq")]
    got = format_list([v6], ListFormat(numeric=True), N)
    assert "TCP  [2001:db8::1]:80 rr persistent 300 mask 64\n" in got
    assert DEST % ("[2001:db8::1234:5678:9abc]:8080", "Masq", 1, 0, 0) in got
    # v4 names are cut at 28 (servers) and 33 (services) columns, as ipvsadm does
    long = Service(ServiceKey("tcp", "10.0.0.1", 80), "rr")
    long.dests = [Dest("10.0.0.2", 80, "masq")]

    class LongNames(Names):
        def host(self, addr):
            return "a-very-long-host-name.example.org"

    got = format_list([long], ListFormat(), LongNames(False))
    assert "TCP  a-very-long-host-name.example" + "\n" not in got
    assert ("TCP  a-very-long-host-name.example.org:http"[:33] + " rr\n") in got
    assert ("  -> " + "a-very-long-host-name.example.org:http"[:28] + " Masq") in got


def test_names_without_n_use_services_file():
    svc = Service(ServiceKey("tcp", "127.0.0.1", 80), "rr")
    svc.dests = [Dest("127.0.0.1", 443, "masq")]
    got = format_list([svc], ListFormat(), Names(False))
    assert "TCP  localhost:http rr\n" in got
    assert "  -> localhost:https" in got


def test_save_rules():
    got = format_save(table(), N)
    assert got == (
        "-A -t 10.0.0.100:80 -s rr\n"
        "-a -t 10.0.0.100:80 -r 10.0.0.2:80 -g -w 3\n"
        "-a -t 10.0.0.100:80 -r 10.0.0.3:80 -g -w 1\n"
        "-A -t 10.0.0.100:443 -s wlc -p 600 -M 255.255.255.0\n"
        "-a -t 10.0.0.100:443 -r 192.168.10.20:8443 -m -w 0 -x 100 -y 80\n"
        "-A -u 10.0.0.100:53 -s sh -o -b sh-fallback,sh-port\n"
        "-A -f 5 -s mh -p 300 -b mh-port\n"
        "-a -f 5 -r 10.0.0.9:0 -i -w 2 --tun-type ipip\n")


def test_connection_table_layout():
    conns = [Conn("TCP", 899.7, "ESTABLISHED", "127.0.0.9", 40312, "127.0.0.1", 8080, "127.0.0.2", 80),
             Conn("TCP", 61, "NONE", "127.0.0.9", 0, "127.0.0.1", 8080, "127.0.0.2", 80, template=True),
             Conn("UDP", 5, "UDP", "::1", 5353, "::1", 53, "::2", 53)]
    got = format_conns(conns, N)
    assert got == ("IPVS connection entries\n"
                   + CONN_TITLE % ("state", "source", "virtual", "destination")
                   + CONN % ("TCP", "14:59", "ESTABLISHED", "127.0.0.9:40312", "127.0.0.1:8080", "127.0.0.2:80")
                   + CONN % ("TCP", "01:01", "NONE", "127.0.0.9:0", "127.0.0.1:8080", "127.0.0.2:80")
                   + CONN % ("UDP", "00:05", "UDP", "[::1]:5353", "[::1]:53", "[::2]:53"))
    named = format_conns(conns[:1], Names(False))
    assert "localhost:http-alt" in named


def test_timeout_line():
    assert format_timeout(Timeouts(900, 120, 300)) == "Timeout (tcp tcpfin udp): 900 120 300\n"


def test_slow_reverse_dns_is_bounded_and_falls_back_to_numbers(monkeypatch):
    import time as _time

    import halb.ipvsadm.fmt as fmt

    def slow(addr):
        _time.sleep(30)
        return ("never.example", [], [addr])

    monkeypatch.setattr(fmt.socket, "gethostbyaddr", slow)
    svc = Service(ServiceKey("tcp", "10.9.9.1", 80), "rr")
    svc.dests = [Dest(f"10.9.9.{i}", 80, "masq") for i in range(2, 40)]
    t0 = _time.monotonic()
    got = format_list([svc], ListFormat(), Names(False, deadline=0.5))
    assert _time.monotonic() - t0 < 5
    assert "TCP  10.9.9.1:http rr\n" in got and "  -> 10.9.9.39:http " in got


def test_tun_info_layout():
    got = format_list([table()[0]], ListFormat(numeric=True, tun_info=True), N)
    assert got == (VERSION + "Prot LocalAddress:Port Scheduler Flags\n"
                   "  -> RemoteAddress:Port           Forward TunnelInfo    Weight ActiveConn InActConn\n"
                   "FWM  5 mh (mh-port) persistent 300\n"
                   + "  -> %-28s %-7s %-13s %-6d %-10u %-10u\n" % ("10.0.0.9:0", "Tunnel", "ipip", 2, 0, 0))
