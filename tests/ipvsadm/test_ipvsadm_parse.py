"""The ipvsadm command language: what each command line means (as Ops)."""
from __future__ import annotations

import pytest

from halb.errors import IpvsError, UsageError
from halb.ipvsadm.fmt import ListFormat
from halb.ipvsadm.parse import NumericResolver, Resolver, parse_argv, parse_restore
from halb.model import Timeouts

NUM = NumericResolver()


def p(line, resolver=NUM):
    return parse_argv(line.split(), resolver)


def test_add_service_like_the_article():
    c = p("-A -t 10.0.0.100:80 -s rr")
    (op,) = c.ops()
    assert op.kind == "add-service"
    s = op.service
    assert (s.key.proto, s.key.addr, s.key.port, s.scheduler) == ("tcp", "10.0.0.100", 80, "rr")
    assert not s.persistent and s.timeout == 0 and s.netmask == "255.255.255.255"


def test_default_scheduler_is_wlc_also_on_edit():
    assert p("-A -t 10.0.0.1:80").service.scheduler == "wlc"
    assert p("-E -t 10.0.0.1:80").service.scheduler == "wlc"


def test_short_clusters_long_forms_and_equals():
    a = p("-At 10.0.0.1:80 -srr")
    b = parse_argv(["--add-service", "--tcp-service=10.0.0.1:80", "--scheduler", "rr"], NUM)
    assert a.service == b.service
    c = p("-Ln")
    assert c.cmd == "list" and c.fmt.numeric
    assert parse_argv(["--list", "--numeric", "--stats", "--exact"], NUM).fmt.stats


def test_listing_options_reach_the_format():
    assert p("-L -n --rate --exact --nosort").fmt == ListFormat(numeric=True, rate=True, exact=True,
                                                                 nosort=True)
    assert p("-L --thresholds --tun-info").fmt == ListFormat(thresholds=True, tun_info=True)
    assert p("-L -c --persistent-conn").fmt == ListFormat(persistent_conn=True)
    assert p("-S -n").fmt == ListFormat(numeric=True)
    assert p("-L").fmt == ListFormat()


def test_persistent_optional_timeout():
    assert p("-A -t 10.0.0.1:80 -p").service.timeout == 300
    assert p("-A -t 10.0.0.1:80 -p 60").service.timeout == 60
    s = p("-A -t 10.0.0.1:80 -p -M 255.255.255.0").service
    assert (s.persistent, s.timeout, s.netmask) == (True, 300, "255.255.255.0")
    assert parse_argv(["-A", "-t", "10.0.0.1:80", "--persistent=120"], NUM).service.timeout == 120
    # -M before -t is fine too (ipvsadm's order dependence removed)
    assert p("-A -M 255.255.0.0 -p 10 -t 10.0.0.1:0").service.netmask == "255.255.0.0"


def test_real_server_port_defaults_and_methods():
    d = p("-a -t 10.0.0.1:80 -r 10.0.0.2").dest
    assert (d.addr, d.port, d.fwd, d.weight) == ("10.0.0.2", 80, None, 1)
    d = p("-a -t 10.0.0.1:80 -r 10.0.0.2:8080 -m -w 3 -x 10 -y 5").dest
    assert (d.port, d.fwd, d.weight, d.u_threshold, d.l_threshold) == (8080, "masq", 3, 10, 5)
    # direct routing and tunnels keep the service port, as ipvsadm forces
    assert p("-a -t 10.0.0.1:80 -r 10.0.0.2:8080 -g").dest.port == 80
    assert p("-a -t 10.0.0.1:80 -r 10.0.0.2:8080 -i").dest.fwd == "ipip"
    assert p("-a -t 10.0.0.1:80 -r 10.0.0.2 -w 0").dest.weight == 0
    assert parse_argv(["-a", "-t", "10.0.0.1:80", "--real-server", "10.0.0.2", "--gatewaying",
                       "--weight", "2147483647"], NUM).dest.weight == 2147483647
    # no port on the service: fwmark keeps the request's port (0)
    assert p("-a -f 3 -r 10.0.0.2").dest.port == 0


def test_delete_server_uses_given_or_service_port():
    c = p("-d -t 10.0.0.1:80 -r 10.0.0.2:8080")
    (op,) = c.ops()
    assert op.kind == "del-dest" and op.dest.port == 8080
    assert p("-d -t 10.0.0.1:80 -r 10.0.0.2").dest.port == 80


def test_ipv6_and_fwmark():
    c = p("-a -t [2001:db8::1]:443 -r [2001:db8::2]:8443 -m")
    assert (c.key.addr, c.key.port, c.key.af, c.dest.addr, c.dest.port) == ("2001:db8::1", 443, 6, "2001:db8::2", 8443)
    assert p("-A -u [::1]:53 -p -M 64").service.netmask == "64"
    assert p("-A -t [::1]:80").service.netmask == "128"
    c = p("-A -f 7 -6 -s sh -b sh-port")
    assert (c.key.proto, c.key.fwmark, c.key.af, c.service.flags) == ("fwm", 7, 6, ("sh-port",))
    # a tunnel may cross address families
    assert p("-a -t 10.0.0.1:80 -r 2001:db8::5 -i").dest.addr == "2001:db8::5"


def test_host_and_service_names_resolve():
    c = parse_argv(["-A", "-t", "localhost:http", "-s", "rr"], Resolver())
    assert (c.key.addr, c.key.port) == ("127.0.0.1", 80)
    c = parse_argv(["-a", "-u", "localhost:domain", "-r", "localhost"], Resolver())
    assert (c.key.port, c.dest.addr, c.dest.port) == (53, "127.0.0.1", 53)

    class Fake(NumericResolver):
        def host_to_addr(self, name):
            return {"n1": "10.0.0.11"}.get(name)

    assert parse_argv(["-a", "-t", "10.0.0.1:80", "-r", "n1"], Fake()).dest.addr == "10.0.0.11"


def test_other_commands():
    assert [o.kind for o in p("-C").ops()] == ["clear"]
    assert p("-Z").ops()[0].key is None
    assert p("-Z -t 10.0.0.1:80").ops()[0].key.port == 80
    assert p("-D -t 10.0.0.1:80").ops()[0].kind == "del-service"
    assert p("--set 10 20 30").ops()[0].timeouts == Timeouts(10, 20, 30)
    assert p("-S -n").cmd == "save"
    assert p("-L --sort").cmd == "list"
    assert parse_argv([], NUM).cmd == "list"
    assert p("-l -c").list_kind == "conn"
    assert p("-L -t 10.0.0.1:80").list_kind == "service"
    assert p("-L --timeout").list_kind == "timeout"
    assert p("-h").cmd == "help"


def test_sched_flags_and_ops_and_pe():
    s = p("-A -u 10.0.0.1:53 -s mh -b mh-port,mh-fallback -o --pe sip -p").service
    assert (s.flags, s.ops, s.pe) == (("mh-fallback", "mh-port"), True, "sip")


def test_restore_parses_every_line_and_maps_ops_to_lines():
    text = """# saved by ipvsadm -S
-A -t 10.0.0.1:80 -s rr

ipvsadm -a -t 10.0.0.1:80 -r 10.0.0.2:80 -m -w 1
/sbin/ipvsadm -a -t 10.0.0.1:80 -r 10.0.0.3:80 -m -w 2   # second node
--set 0 0 60
"""
    plan = parse_restore(text, NUM)
    assert [o.kind for o in plan.ops] == ["add-service", "add-dest", "add-dest", "set-timeouts"]
    assert plan.lines == [2, 4, 5, 6]


@pytest.mark.parametrize("text,line,msg", [
    ("-A -t 10.0.0.1:80\n-a -t 10.0.0.1:80 -r 10.0.0.2 -w heavy\n", 2, "illegal weight specified"),
    ("-A -t 10.0.0.1:80 -s nosuch\n", 1, "Scheduler or persistence engine not found"),
    ("-A -t 10.0.0.1:80\n\n-L -n\n", 3, "only table edits"),
    ("-A -t 10.0.0.1:80\n-R\n", 2, "only table edits"),
    ("-A -t 'unbalanced\n", 1, "No closing quotation"),
])
def test_restore_bad_line_names_the_line(text, line, msg):
    with pytest.raises((UsageError, IpvsError)) as ei:
        parse_restore(text, NUM)
    assert str(ei.value).startswith(f"line {line}: ") and msg in str(ei.value)
