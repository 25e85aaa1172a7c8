"""ldirectord.cf parsing: the article's file, every directive, inheritance,
and bad input (hand-written cases and a fuzzed corpus) -> ConfigError only."""
from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import director_servers as servers
from halb.director.config import (STATUS_ALL, STATUS_RUNNING, STATUS_STARTING, STATUS_STOPPING,
                                  load, parse_text)
from halb.errors import ConfigError

SEED, ARTICLE = servers.SEED, servers.ARTICLE


def subst(text: str) -> str:
    return text.replace("$VIP", "10.0.0.100").replace("$RIP1", "10.0.0.1").replace("$RIP2", "10.0.0.2")


def no_dns(host, af):
    return {"web1.example": "192.0.2.10", "web2.example": "192.0.2.20"}.get(host)


def p(text: str):
    return parse_text(text, "ld.cf", resolver=no_dns, hostname="N1")


def err(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as ei:
        p(text)
    return ei.value


def check_article(cfg):
    assert cfg.checkinterval == 10 and cfg.checktimeout == 10
    assert cfg.emailalert == "root" and cfg.emailalertfreq == 0
    assert cfg.emailalertstatus == STATUS_STOPPING
    (v,) = cfg.virtuals
    assert (v.protocol, v.addr, v.port, v.scheduler, v.service, v.checkport) == \
        ("tcp", "10.0.0.100", 80, "rr", "http", 80)
    assert v.checktype == "negotiate"
    # checktimeout given, negotiatetimeout not: both become 10 (ld_setup)
    assert v.checktimeout == 10 and v.negotiatetimeout == 10
    assert v.failurecount == 1 and v.quiescent is False and v.cleanstop is True
    assert [(r.addr, r.port, r.fwd, r.weight, r.request, r.receive) for r in v.reals] == [
        ("10.0.0.1", 80, "gate", 1, "/testcluster.html", "N1"),
        ("10.0.0.2", 80, "gate", 1, "/testcluster.html", "N2")]


def test_article_config_inline():
    check_article(p(subst(ARTICLE)))


@pytest.mark.skipif(not SEED.exists(), reason="seed configs not present")
def test_article_config_file(tmp_path):
    f = tmp_path / "ldirectord.cf"
    f.write_text(subst(SEED.read_text()))
    check_article(load(f, resolver=no_dns))


def test_defaults_and_timeouts():
    cfg = p("virtual=10.0.0.1:80\n\treal=10.0.0.2 gate\n")
    v = cfg.virtuals[0]
    assert cfg.checkinterval == 10 and v.checktimeout == 5 and v.negotiatetimeout == 30
    assert v.scheduler == "wrr" and v.service == "http" and v.checktype == "negotiate"
    assert v.request == "/" and v.receive == "" and cfg.quiescent is False
    assert cfg.emailalertstatus == STATUS_ALL and cfg.cleanstop
    r = v.reals[0]
    assert (r.port, r.weight) == (0, 1)
    assert v.real_port(r) == 80 and v.check_port(r) == 80
    # negotiatetimeout alone: checktimeout follows it
    v = p("negotiatetimeout=7\nvirtual=10.0.0.1:25\n\treal=10.0.0.2 gate\n").virtuals[0]
    assert v.checktimeout == 7 and v.negotiatetimeout == 7 and v.service == "smtp"


def test_inheritance_and_override():
    cfg = p("checktimeout=3\nfailurecount=4\nquiescent=yes\nemailalert=\"a@x, b@y\"\nsmtp=127.0.0.1:2525\n"
            "cleanstop=no\nemailalertfreq=60\n"
            "virtual=10.0.0.1:443\n\treal=10.0.0.2:443 masq 5\n\tquiescent=no\n\tfailurecount=2\n"
            "\temailalertstatus=starting,running\n\tsmtp=mail.local\n"
            "virtual=10.0.0.1:80\n\treal=10.0.0.3 gate\n")
    a, b = cfg.virtuals
    assert a.service == "https" and a.quiescent is False and a.failurecount == 2
    assert a.emailalert == "a@x, b@y" and a.emailalertfreq == 60 and a.smtp == "mail.local"
    assert a.emailalertstatus == STATUS_STARTING | STATUS_RUNNING
    assert a.checktimeout == 3 and a.negotiatetimeout == 3 and a.cleanstop is False
    assert b.quiescent is True and b.failurecount == 4 and b.smtp == "127.0.0.1:2525"


def test_real_syntax_range_weight_thresholds_hostnames():
    cfg = p('virtual=10.0.0.1:80\n'
            '\treal=10.0.0.10->10.0.0.12:8080 masq 3 "check.php", "ok.*yes" l:10 u:200\n'
            '\treal=web1.example:http ipip\n'
            '\treal=web2.example gate 0\n')
    reals = cfg.virtuals[0].reals
    assert [r.addr for r in reals] == ["10.0.0.10", "10.0.0.11", "10.0.0.12", "192.0.2.10", "192.0.2.20"]
    r = reals[0]
    assert (r.port, r.fwd, r.weight, r.request, r.receive, r.l_threshold, r.u_threshold) == \
        (8080, "masq", 3, "/check.php", "ok.*yes", 10, 200)
    assert (reals[3].port, reals[3].fwd) == (80, "ipip")
    assert reals[4].weight == 0


def test_fwmark_udp_v6_and_service_defaults():
    cfg = p("virtual=42\n\treal=10.0.0.2 gate\n"
            "virtual=10.0.0.1:53\n\treal=10.0.0.2:53 gate\n\trequest=\"www.example\"\n\treceive=\"1.2.3.4\"\n"
            "virtual6=[2001:db8::1]:80\n\treal6=[2001:db8::2]:80 masq\n\tfallback6=[::1]:80\n")
    f, d, six = cfg.virtuals
    assert (f.protocol, f.fwmark, f.service) == ("fwm", 42, "none")
    assert (d.protocol, d.service, d.request) == ("udp", "dns", "/www.example")
    assert (six.af, six.addr, six.reals[0].addr, six.fallback.addr) == (6, "2001:db8::1", "2001:db8::2", "::1")


def test_all_directives_accepted():
    cfg = p('checktimeout=2\nnegotiatetimeout=4\ncheckinterval=0.5\ncheckcount=2\nfailurecount=3\n'
            'autoreload=yes\ncallback="/bin/true"\nfallback=127.0.0.1:81 masq\nfallbackcommand="/bin/echo"\n'
            'logfile="/tmp/ld.log"\nemailalert="root"\nemailalertfreq=0\nemailalertstatus=all\n'
            'emailalertfrom="Alerts <al@x>"\nquiescent=no\nreaddquiescent=yes\ncleanstop=yes\n'
            'maintenancedir=/tmp/maint\nsmtp=127.0.0.1\nexecute=other.cf\nsupervised=no\nfork=no\n'
            'virtual=10.0.0.1:80\n'
            '    real=10.0.0.2:80 masq\n    checktype=3\n    service=http\n    checkport=8080\n'
            '    checkcommand="/bin/true"\n    request="/x"\n    receive="y"\n    httpmethod=head\n'
            '    virtualhost="www.example"\n    login="u"\n    passwd="p"\n    database="d"\n'
            '    secret="s"\n    protocol=tcp\n    scheduler=sh\n    schedflags=sh-port,sh-fallback\n'
            '    persistent=300\n    netmask=255.255.255.0\n    fallback=127.0.0.1:82\n'
            '    fallbackcommand="/bin/echo x"\n    quiescent=yes\n    emailalert="x@y"\n'
            '    emailalertfreq=10\n    emailalertstatus=none\n    cleanstop=no\n    smtp=localhost\n'
            '    checktimeout=1\n    negotiatetimeout=2\n    checkcount=1\n    failurecount=2\n'
            '    checkinterval=1\n    monitorfile="/tmp/mon"\n    sslverify=yes\n    sslcafile="/tmp/ca.pem"\n')
    v = cfg.virtuals[0]
    assert cfg.autoreload and cfg.readdquiescent and cfg.checkinterval == 0.5
    assert cfg.fallback.addr == "127.0.0.1" and cfg.fallback.port == 81 and cfg.fallback.fwd == "masq"
    assert cfg.execute == ["other.cf"] and cfg.emailalertfrom == "Alerts <al@x>"
    assert (v.checktype, v.num_connects, v.httpmethod, v.virtualhost) == ("combined", 3, "HEAD", "www.example")
    assert v.schedflags == ("sh-port", "sh-fallback") and v.persistent == 300
    assert v.fallback.port == 82 and v.emailalertstatus == 0 and v.sslverify
    assert v.checkport == 8080 and v.check_port(v.reals[0]) == 8080


def test_global_fallback_inherited_with_virtual_port():
    cfg = p("fallback=127.0.0.1\nvirtual=10.0.0.1:8080\n\treal=10.0.0.2 masq\n")
    fb = cfg.virtuals[0].fallback
    assert (fb.addr, fb.port, fb.fwd) == ("127.0.0.1", 8080, "gate")


@pytest.mark.parametrize("text,line,pattern", [
    ("checktimeout=0\n", 1, r"invalid check timeout"),
    ("connecttimeout=5\n", 1, r"deprecated in favour of negotiatetimeout"),
    ("timeout=5\n", 1, r"deprecated in favour of checktimeout"),
    ("virtual=10.0.0.1:80\n\tconnecttimeout=3\n", 2, r"deprecated"),
    ("frobnicate=1\n", 1, r"Unknown command"),
    ("quiescent=maybe\n", 1, r"quiescent must be 'yes' or 'no'"),
    ("\treal=10.0.0.1:80 gate\n", 1, r"Unknown command"),
    ("virtual=10.0.0.1:80\n\treal=10.0.0.2:80 tunnel\n", 2, r"forward method must be gate, masq or ipip"),
    ("virtual=10.0.0.1:80\n\treal=10.0.0.2:80 gate 1 \"a\", \"b\" junk\n", 2, r"Invalid real server line"),
    ("virtual=10.0.0.1:80\n\treal=10.0.0.9->10.0.0.2 gate\n", 2, r"Invalid Range"),
    ("virtual=10.0.0.1:80\n\treal=10.0.0.2 gate\n\tchecktype=sometimes\n", 3, r"checktype must be"),
    ("virtual=10.0.0.1:80\n\tservice=gopher\n", 2, r"service must be"),
    ("virtual=10.0.0.1:80\n\tservice=oracle\n", 2, r"oracle checks are not supported"),
    ("virtual=10.0.0.1:80\n\tscheduler=RR\n", 2, r"invalid scheduler"),
    ("virtual=10.0.0.1:80\n\tscheduler=xyz\n", 2, r"unknown scheduler"),
    ("virtual=10.0.0.1:80\n\tprotocol=fwm\n", 2, r"protocol must be tcp or udp"),
    ("virtual=7\n\tprotocol=tcp\n", 2, r"protocol must be fwm"),
    ("virtual=10.0.0.1:80\n\tnetmask=24\n", 2, r"dotted quad"),
    ("virtual=10.0.0.1:80\n\tchecktimeout=abc\n", 2, r"invalid check timeout"),
    ("virtual=10.0.0.1:80\n\treceive=\"(unclosed\"\n", 2, r"invalid receive regular expression"),
    ("virtual=10.0.0.1:80\n\trequest=\"\"\n", 2, r"no request string"),
    ("virtual=10.0.0.1:80\n\trequest=noquotes\n", 2, r"double quotes"),
    ("virtual=10.0.0.1:80\n\thttpmethod=POST\n", 2, r"httpmethod must be GET or HEAD"),
    ("virtual=10.0.0.1:80\n\tcheckport=70000\n", 2, r"checkport must be in range"),
    ("virtual=10.0.0.1:80\n\treal6=[::1]:80 gate\n", 2, r'cannot specify "real6" here'),
    ("virtual=[::1]:80\n", 1, r"virtual6"),
    ("virtual=10.0.0.1:80\n\treal=10.0.0.2 gate\nvirtual=10.0.0.1:80\n\treal=10.0.0.3 gate\n", 3,
     r"duplicate virtual server"),
    ("virtual=10.0.0.1:80\n\treal=10.0.0.2:80 gate\n\treal=10.0.0.2:80 masq\n", 3, r"duplicate real server"),
    ("virtual=nowhere.invalid:80\n", 1, r"could not resolve host"),
    ("virtual=10.0.0.1:80\n\treal=10.0.0.2:nosuchservice gate\n", 2, r"could not resolve port"),
    ("emailalertstatus=none,running\n", 1, r'specified with "none"'),
    ("emailalertstatus=sometimes\n", 1, r"invalid email alert status"),
    ("emailalert=\"\"\n", 1, r"no email address"),
    ("virtual=10.0.0.1:80\n\tops=yes\n", 1, r"only valid for udp"),
    ("virtual=10.0.0.1:80\n  checktype=connect\n", 2, r"indented by at least 4 spaces"),
    ("fallback=10.0.0.1:80 bogus\n", 1, r"forward method"),
    ("checkinterval=-1\n", 1, r"invalid check interval"),
])
def test_bad_configs_name_file_and_line(text, line, pattern):
    e = err(text)
    assert e.path == "ld.cf" and e.line == line, str(e)
    assert re.search(pattern, e.message), e.message
    assert str(e).startswith(f"ld.cf:{line}: ")


def test_missing_and_binary_files(tmp_path):
    with pytest.raises(ConfigError, match="can not open file"):
        load(tmp_path / "absent.cf")
    f = tmp_path / "bin.cf"
    f.write_bytes(b"checkinterval=1\n\xff\xfe\x00garbage\n")
    with pytest.raises(ConfigError) as ei:
        load(f)
    assert ei.value.line == 2


def test_trailing_comments_and_blank_lines_in_section():
    cfg = p("checkinterval=5 # every 5 s\n\nvirtual=10.0.0.1:80 # web\n\treal=10.0.0.2 gate # one\n\n"
            "\treal=10.0.0.3 gate\n# a comment in column 0 does not end the section\n\tscheduler=rr\n")
    v = cfg.virtuals[0]
    assert cfg.checkinterval == 5 and len(v.reals) == 2 and v.scheduler == "rr"


# -- fuzzing: any input gives a Config or a ConfigError, never another exception

LINES = [
    "checktimeout=", "checkinterval=1", "virtual=10.0.0.1:80", "virtual=", "virtual6=[::1]:80", "virtual=5",
    "\treal=10.0.0.2:80 gate 1", '\treal=10.0.0.2->10.0.0.3 masq 2 "a", "b"', "\treal=",
    "\treal=[::1]:80 gate", "\tchecktype=", "\tchecktype=99", "\tservice=http", "\tservice=",
    "\treceive=\"(\"", "\trequest=\"x\"", "\tnetmask=1.2.3.4", "\tprotocol=udp", "\tfallback=1.2.3.4:x gate",
    "fallback=", "emailalertstatus=all,none", "quiescent=yes", "\tquiescent=", "#c", "", "   ", "\t",
    "\tpersistent=", "\tschedflags=sh-port,", "\tvirtualhost=\"\"", "smtp=", "logfile=\"\"",
    "\treal=10.0.0.2 gate l:5 u:1", "\treal=10.0.0.2 gate 99999999999999999999",
    "\tcheckport=0", "maintenancedir=", "supervised", "\tops=yes", "\temailalertfreq=x",
]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(st.sampled_from(LINES), st.text(max_size=40)), max_size=12))
def test_fuzz_never_crashes(lines):
    text = "\n".join(lines)
    try:
        p(text)
    except ConfigError as e:
        assert e.path == "ld.cf"
        assert str(e).startswith("ld.cf")
        assert e.message.isprintable()


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_bytes_file(tmp_path_factory, data):
    f = tmp_path_factory.mktemp("fz") / "f.cf"
    f.write_bytes(data)
    try:
        load(f, resolver=no_dns)
    except ConfigError as e:
        assert str(e).startswith(str(f))
