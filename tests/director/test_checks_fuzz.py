"""Fuzzing the director's checks: what a real server answers is network input
(issue 13). Whatever bytes come back, a check ends within its timeout with a
Result (a failure saying why), never an exception or a hang."""
from __future__ import annotations

import asyncio
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from halb.director import checks

pytestmark = pytest.mark.timeout(120)

HTTPISH = st.one_of(
    st.binary(max_size=300),
    st.builds(lambda status, hdrs, body: b"HTTP/1.1 %d X\r\n" % status + hdrs + b"\r\n\r\n" + body,
              st.integers(0, 999), st.binary(max_size=120), st.binary(max_size=200)),
    st.builds(lambda chunks: b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks,
              st.lists(st.one_of(st.binary(max_size=20),
                                 st.builds(lambda n, d: b"%s\r\n%s\r\n" % (n, d),
                                           st.sampled_from([b"-1", b"ffffffffffffffffffff", b"0x1", b"zz",
                                                            b"3", b"10", b"-7fffffff"]),
                                           st.binary(max_size=20))), max_size=6).map(b"".join)),
    st.builds(lambda loc: b"HTTP/1.0 302 Found\r\nLocation: " + loc + b"\r\n\r\n", st.binary(max_size=80)),
)


@given(HTTPISH)
@settings(max_examples=300, deadline=None)
def test_http_answers_parse_or_raise_value_error(data):
    try:
        status, line, headers, body = checks._parse_http(data)
    except ValueError:
        return
    assert 0 <= status <= 999 and isinstance(headers, dict) and isinstance(body, bytes)
    assert len(body) <= len(data)


class Answering:
    """One TCP server on loopback whose answer is set per example."""

    def __init__(self):
        self.answer = b""
        self.loop = asyncio.new_event_loop()
        self.server = self.loop.run_until_complete(asyncio.start_server(self.serve, "127.0.0.1", 0))
        self.port = self.server.sockets[0].getsockname()[1]

    async def serve(self, reader, writer):
        try:
            writer.write(self.answer)
            await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    def check(self, service: str, receive: str = "x") -> tuple[checks.Result, float]:
        spec = checks.CheckSpec("negotiate", service, "tcp", "127.0.0.1", self.port, self.port, "127.0.0.1",
                                self.port, 0, f"http://127.0.0.1:{self.port}/", "/", receive,
                                checktimeout=1.0, negotiatetimeout=1.5, login="u", passwd="p")
        t0 = time.monotonic()
        res = self.loop.run_until_complete(checks.run(spec))
        took = time.monotonic() - t0
        self.loop.run_until_complete(asyncio.sleep(0.01))  # let the server's handler finish
        return res, took

    def close(self):
        self.server.close()
        self.loop.run_until_complete(self.server.wait_closed())
        self.loop.close()


@pytest.fixture(scope="module")
def answering():
    a = Answering()
    try:
        yield a
    finally:
        a.close()


@given(service=st.sampled_from(["http", "smtp", "pop", "imap", "nntp", "ftp", "simpletcp", "mysql", "pgsql",
                                "sip"]),
       answer=st.one_of(HTTPISH, st.binary(max_size=200),
                        st.lists(st.sampled_from([b"220 ok", b"+OK", b"* OK", b"200 news", b"331 pass",
                                                  b"230 in", b"227 (127,0,0,1,0,1)", b"227 (999,1,1,1,1,1)",
                                                  b"\xff\xfe", b"", b"500 no", b"SIP/2.0 200 OK"]),
                                 max_size=6).map(lambda ls: b"\r\n".join(ls) + b"\r\n")))
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_any_answer_ends_the_check_with_a_result(answering, service, answer):
    answering.answer = answer
    res, took = answering.check(service)
    assert isinstance(res, checks.Result) and isinstance(res.msg, str)
    assert took < 5, (service, answer, took)
