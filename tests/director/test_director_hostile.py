"""ldirectord.cf and the director's checks against hostile or careless input
(issue 13): no option injection into sendmail, every number in range with its
file and line, no catastrophic regular expression, no redirect to another host."""
from __future__ import annotations

import os
import re
import stat

import pytest

from halb.director import alerts
from halb.director.config import parse_text
from halb.errors import ConfigError


def err(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as e:
        parse_text(text, "ld.cf", resolver=lambda h, af: None, hostname="N1")
    return e.value


@pytest.mark.parametrize("text,line,pattern", [
    ('emailalert="-oQ/tmp/x"\n', 1, r"cannot start with '-'"),
    ('emailalert="root@example.org, -Cevil.cf"\n', 1, r"cannot start with '-'"),
    ('emailalertfrom="-oQ/tmp"\n', 1, r"cannot start with '-'"),
])
def test_email_addresses_cannot_be_sendmail_options(text, line, pattern):
    e = err(text)
    assert str(e).startswith(f"ld.cf:{line}: ") and re.search(pattern, e.message), str(e)


def test_sendmail_options_end_before_the_recipients(tmp_path, monkeypatch):
    """A fake sendmail records its argv: recipients come after `--`."""
    log = tmp_path / "argv"
    fake = tmp_path / "sendmail"
    fake.write_text(f"#!/bin/sh\nprintf '%s\\n' \"$@\" > {log}\ncat > /dev/null\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    alerts.send("test", "root@example.org", None, "root@n1", "running")
    argv = log.read_text().split("\n")[:-1]
    assert argv[-2:] == ["--", "root@example.org"] and argv[:3] == ["-oi", "-f", "root@n1"]
    with pytest.raises(ValueError):
        alerts.send("test", "-oQ/tmp", None, None, "running")


@pytest.mark.parametrize("text,line,pattern", [
    ("checkinterval=" + "9" * 5000 + "\n", 1, r"invalid check interval"),
    ("checkinterval=0.0000001\n", 1, r"from 0.05 to 86400"),
    ("checktimeout=100000\n", 1, r"from 0.05 to 86400"),
    ("failurecount=" + "1" * 4400 + "\n", 1, r"invalid failure count"),
    ("virtual=10.0.0.1:80\n\tnegotiatetimeout=0.001\n", 2, r"negotiate timeout"),
    ("virtual=10.0.0.1:80\n\tchecktype=" + "7" * 4400 + "\n", 2, r"checktype must be"),
    ("virtual=10.0.0.1:80\n\tchecktype=5000\n", 2, r"from 1 to 1000"),
    ("virtual=10.0.0.1:80\n\tpersistent=" + "3" * 4400 + "\n", 2, r"invalid persistent timeout"),
    ("virtual=10.0.0.1:80\n\tcheckport=" + "8" * 4400 + "\n", 2, r"invalid port"),
    ("virtual=10.0.0.1:80\n\treal=10.0.0.2:80 gate " + "5" * 4400 + "\n", 2, r"Invalid real server line"),
    ("virtual=10.0.0.1:80\n\treal=10.0.0.2:80 gate 1 u:" + "5" * 30 + "\n", 2, r"Invalid real server line"),
    ("virtual=10.0.0.1:80\n\treal=10.0.0.2:80 gate 1 u:99999999999\n", 2, r"out of range"),
    ("virtual=" + "4" * 4400 + "\n", 1, r"invalid address"),
    ("emailalertfreq=" + "1" * 4400 + "\n", 1, r"invalid email alert frequency"),
    ('virtual=10.0.0.1:80\n\tchecktype=external\n\tcheckcommand="/bin/check \'unbalanced"\n', 3,
     r"invalid check command.*quotation"),
    ('virtual=10.0.0.1:80\n\treceive="' + "a" * 5000 + '"\n', 2, r"at most 4096"),
], ids=lambda v: v[:40] if isinstance(v, str) else str(v))
def test_every_number_has_a_range_and_errors_name_file_and_line(text, line, pattern):
    e = err(text)
    assert str(e).startswith(f"ld.cf:{line}: ") and re.search(pattern, e.message), str(e)
    assert len(str(e)) < 400  # a 4,400-digit value is not echoed whole


def test_huge_numbers_on_ipvsadm_and_gmetad_lines_are_clean_errors():
    from halb.errors import UsageError
    from halb.ipvsadm.parse import parse_argv, parse_restore
    from halb.monitor.conf import parse as gparse

    big = "9" * 5000
    for argv in (["-A", "-t", f"10.0.0.1:{big}"], ["-A", "-t", "10.0.0.1:80", "-p", big],
                 ["-a", "-t", "10.0.0.1:80", "-r", "10.0.0.2", "-w", big], ["-A", "-f", big],
                 ["--set", big, "1", "1"], ["-A", "-t", "10.0.0.1:80", "-p", "000" * 2000 + "300"]):
        try:
            parse_argv(argv)
        except UsageError as e:
            assert "internal" not in str(e)
        else:
            assert argv[-1].endswith("300")  # leading zeros: strtol's 300
    with pytest.raises(Exception) as e:
        parse_restore(f"-A -t 10.0.0.1:80 -s rr\n-a -t 10.0.0.1:80 -r 10.0.0.2 -w {big}\n")
    assert "line 2" in str(e.value) and "internal" not in str(e.value)
    for text in (f'data_source "s" {big} a\n', f'data_source "s" a:{big}\n',
                 f'data_source "s" a\nRRAs "RRA:AVERAGE:0.5:1:{big}"\n', 'data_source "s" 100000 a\n'):
        with pytest.raises(ConfigError) as e:
            gparse(text, "g.conf")
        assert str(e.value).startswith("g.conf:")


def test_a_catastrophic_receive_expression_fails_its_check_quickly():
    """`(a|a)+$` against a long answer backtracks for ages: the check fails in
    about RX_TIMEOUT instead of freezing the director's event loop."""
    import asyncio
    import time

    from halb.director import checks

    async def scenario():
        body = b"a" * 40 + b"!"

        async def serve(reader, writer):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        spec = checks.CheckSpec("negotiate", "http", "tcp", "127.0.0.1", port, port, "127.0.0.1", port, 0,
                                f"http://127.0.0.1:{port}/", "/", r"(a|a)+$", negotiatetimeout=30)
        t0 = time.monotonic()
        res = await checks.run(spec)
        server.close()
        return res, time.monotonic() - t0

    res, took = asyncio.run(scenario())
    assert not res.ok and "catastrophic backtracking" in res.msg and took < 5, (res, took)


def test_http_checks_follow_redirects_only_on_the_same_real_server():
    """ldirectord does not follow redirects; halb follows them only to the same
    host and port: a redirect to another host is a failed check."""
    import asyncio

    from halb.director import checks

    async def scenario():
        async def elsewhere(reader, writer):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.0 200 OK\r\nContent-Length: 8\r\n\r\nhijacked")
            await writer.drain()
            writer.close()
        other = await asyncio.start_server(elsewhere, "127.0.0.2", 0)
        oport = other.sockets[0].getsockname()[1]

        async def real(reader, writer):
            head = await reader.readuntil(b"\r\n\r\n")
            if head.startswith(b"GET /moved"):
                writer.write(b"HTTP/1.0 302 Found\r\nLocation: /here\r\nContent-Length: 0\r\n\r\n")
            elif head.startswith(b"GET /here"):
                writer.write(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")
            else:
                writer.write(b"HTTP/1.0 302 Found\r\nLocation: http://127.0.0.2:%d/\r\n"
                             b"Content-Length: 0\r\n\r\n" % oport)
            await writer.drain()
            writer.close()
        server = await asyncio.start_server(real, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]

        def spec(path, receive):
            return checks.CheckSpec("negotiate", "http", "tcp", "127.0.0.1", port, port, "127.0.0.1", port, 0,
                                    f"http://127.0.0.1:{port}{path}", path, receive)
        out = (await checks.run(spec("/away", "hijacked")), await checks.run(spec("/moved", "ok")))
        server.close()
        other.close()
        return out

    away, moved = asyncio.run(scenario())
    assert not away.ok and "not followed" in away.msg, away
    assert moved.ok, moved


@pytest.mark.parametrize("text,pattern", [
    ("keepalive 1us\n", r"out of range \(1ms to 7 days\)"),
    ("keepalive " + "9" * 5000 + "\n", r"is not a time"),
    ("udpport " + "9" * 5000 + "\n", r"is not a UDP port"),
    ("deadtime 1e400\n", r"is not a time"),
    ("initdead 999999999\n", r"out of range"),
], ids=lambda v: v[:20])
def test_ha_cf_times_and_numbers_have_ranges(text, pattern):
    from halb.heartbeat.config import parse_hacf

    with pytest.raises(ConfigError) as e:
        parse_hacf(text + "node a\nnode b\nbcast eth0\n", "ha.cf")
    assert str(e.value).startswith("ha.cf:1: ") and re.search(pattern, e.value.message), str(e.value)
    assert len(str(e.value)) < 500


def test_authkeys_and_haresources_huge_numbers_are_file_line_errors():
    from halb.heartbeat.config import parse_authkeys, parse_haresources
    from halb.realserver.haresources import parse_haresources as rs_parse

    big = "9" * 5000
    for fn, text, name in ((parse_authkeys, f"auth {big}\n{big} sha1 x\n", "authkeys"),
                           (parse_haresources, f"a 10.0.0.1/{big}\n", "haresources"),
                           (rs_parse, f"a IPaddr2::10.0.0.1/{big}/eth0\n", "haresources")):
        with pytest.raises(ConfigError) as e:
            fn(text, name)
        assert str(e.value).startswith(f"{name}:"), str(e.value)
