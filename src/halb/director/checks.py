"""Asynchronous health checks, each bounded by its timeout.

`CheckSpec.build(virtual, real)` turns the configuration into what one check
needs (as ldirectord's ld_setup computes the URL, the check port and the
request/receive pair). `run(spec, negotiate=...)` performs one check and
returns a `Result(ok, msg)`; it never raises.

checktype: connect (TCP connect; ping for UDP services), negotiate (per
service), ping (ICMP echo), external (checkcommand VIP VPORT RIP RPORT),
external-perl (run as external), on, off, and N (N connects then one
negotiate; the caller alternates using `negotiate=`).
"""
from __future__ import annotations

import asyncio
import functools
import hashlib
import ipaddress
import os
import random
import re
import shlex
import socket
import ssl
import struct
import time
from dataclasses import dataclass
from typing import NamedTuple
from urllib.parse import urljoin, urlsplit

from halb.director.config import Real, Virtual

MAX_BODY = 1 << 20


class Result(NamedTuple):
    ok: bool
    msg: str = ""


@dataclass(frozen=True)
class CheckSpec:
    checktype: str
    service: str
    protocol: str
    host: str  # real server address
    port: int  # check port
    real_port: int
    vaddr: str
    vport: int
    fwmark: int
    url: str
    request: str
    receive: str
    httpmethod: str = "GET"
    virtualhost: str | None = None
    login: str = ""
    passwd: str = ""
    database: str = ""
    secret: str = ""
    checkcommand: str = "/bin/true"
    checktimeout: float = 5.0
    negotiatetimeout: float = 30.0
    checkcount: int = 1
    num_connects: int = 0
    sslverify: bool = False
    sslcafile: str | None = None

    @staticmethod
    def build(v: Virtual, r: Real) -> "CheckSpec":
        port = v.check_port(r)
        schema = "http" if v.service == "http_proxy" else (v.service or "none")
        host = f"[{r.addr}]" if ":" in r.addr else r.addr
        if r.request is not None and r.receive is not None:
            uri = r.request.lstrip("/")
            request, receive = r.request, r.receive
            url = uri if re.search(rf"{re.escape(schema)}://", r.request) else f"{schema}://{host}:{port}/{uri}"
        else:
            uri = v.request.lstrip("/")
            url = uri if v.service == "http_proxy" else f"{schema}://{host}:{port}/{uri}"
            request = r.request if r.request is not None else v.request
            receive = v.receive
        return CheckSpec(
            checktype=v.checktype, service=v.service or "none", protocol=v.protocol,
            host=r.addr, port=port, real_port=v.real_port(r), vaddr=v.addr, vport=v.port,
            fwmark=v.fwmark, url=url, request=request, receive=receive, httpmethod=v.httpmethod,
            virtualhost=v.virtualhost, login=v.login, passwd=v.passwd, database=v.database,
            secret=v.secret, checkcommand=v.checkcommand, checktimeout=float(v.checktimeout),
            negotiatetimeout=float(v.negotiatetimeout), checkcount=int(v.checkcount),
            num_connects=v.num_connects, sslverify=v.sslverify, sslcafile=v.sslcafile)


# --------------------------------------------------------------------------
# entry point


async def run(spec: CheckSpec, negotiate: bool | None = None) -> Result:
    """One check. For checktype=N the caller passes negotiate=True/False."""
    try:
        ct = spec.checktype
        if ct == "on":
            return Result(True, "checktype on")
        if ct == "off":
            return Result(False, "checktype off")
        if ct == "combined":
            ct = "negotiate" if negotiate else "connect"
        if ct == "connect":
            if spec.protocol == "udp":
                return await check_ping(spec)
            return await _timed(check_connect(spec), spec.checktimeout)
        if ct == "ping":
            return await check_ping(spec)
        if ct in ("external", "external-perl"):
            return await check_external(spec)
        fn = NEGOTIATE.get(spec.service, check_none)
        return await _timed(fn(spec), spec.negotiatetimeout)
    except asyncio.CancelledError:
        raise
    except SlowRegex as e:
        return Result(False, str(e))
    except Exception as e:  # a check never takes the daemon down
        return Result(False, _errstr(e) if isinstance(e, ModuleNotFoundError) else f"{type(e).__name__}: {e}")


async def _timed(coro, timeout: float) -> Result:
    try:
        async with asyncio.timeout(timeout):  # no extra task per check (unlike wait_for)
            return await coro
    except asyncio.TimeoutError:
        return Result(False, f"timed out after {timeout:g} s")
    except (OSError, ssl.SSLError, EOFError, asyncio.IncompleteReadError, ValueError, UnicodeError) as e:
        return Result(False, _errstr(e))


# optional check clients: Python module -> halb's extra that installs it
EXTRAS = {"pymysql": "mysql", "pg8000": "pgsql", "ldap3": "ldap", "dns": "dns"}


def _errstr(e: BaseException) -> str:
    if isinstance(e, ModuleNotFoundError) and (e.name or "").split(".")[0] in EXTRAS:
        extra = EXTRAS[e.name.split(".")[0]]
        return (f"check client not installed (Python module {e.name.split('.')[0]}): install halb's "
                f"'{extra}' extra (scripts/install --extras {extra}, or pip install 'halb[{extra}]')")
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


_ssl_cache: dict[tuple, ssl.SSLContext] = {}


def ssl_context(spec: CheckSpec) -> ssl.SSLContext:
    key = (spec.sslverify, spec.sslcafile)
    ctx = _ssl_cache.get(key)
    if ctx is None:
        if spec.sslverify:
            ctx = ssl.create_default_context(cafile=spec.sslcafile)
        else:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        _ssl_cache[key] = ctx
    return ctx


def _sni(spec: CheckSpec, host: str) -> str | None:
    if spec.virtualhost:
        return spec.virtualhost
    try:
        ipaddress.ip_address(host.strip("[]"))
        return None
    except ValueError:
        return host


async def _open(spec: CheckSpec, host: str, port: int, tls: bool = False):
    if tls:
        return await asyncio.open_connection(host.strip("[]"), port, ssl=ssl_context(spec),
                                             server_hostname=_sni(spec, host) or "")
    return await asyncio.open_connection(host.strip("[]"), port)


async def _close(writer) -> None:
    writer.close()
    try:
        await asyncio.wait_for(writer.wait_closed(), 1)
    except Exception:
        pass


RX_TIMEOUT = 0.25          # s: a receive expression that takes longer fails the check
RX_TEXT_MAX = 1 << 20      # characters of an answer searched


class SlowRegex(Exception):
    pass


def receive_search(rx: str, text: str, flags: int = 0) -> bool:
    """re.search, time-bounded: a catastrophic `receive` expression (e.g.
    (a|a)+$ on a long answer) would otherwise hold the director's event loop
    for ever. Uses the regex module (re-compatible syntax, VERSION0) and its
    timeout; SlowRegex when it is exceeded."""
    import regex

    try:
        return regex.search(rx, text[:RX_TEXT_MAX], flags | regex.VERSION0, timeout=RX_TIMEOUT) is not None
    except TimeoutError:
        raise SlowRegex(f"receive string /{rx[:60]}/ took more than {RX_TIMEOUT:g} s to match "
                        f"(catastrophic backtracking?): check failed") from None


def _match(rx: str, text: str) -> bool:
    return receive_search(rx, text, re.M) if rx else True


# --------------------------------------------------------------------------
# connect, ping, external, none


async def check_connect(spec: CheckSpec) -> Result:
    r, w = await _open(spec, spec.host, spec.port)
    await _close(w)
    return Result(True, f"connected to {spec.host}:{spec.port}")


async def check_none(spec: CheckSpec) -> Result:
    return Result(True, "service none")


def _icmp_checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


async def _ping_once(host: str, timeout: float) -> bool:
    ip = ipaddress.ip_address(host)
    v6 = ip.version == 6
    fam = socket.AF_INET6 if v6 else socket.AF_INET
    proto = socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP
    raw = False
    try:
        sock = socket.socket(fam, socket.SOCK_DGRAM, proto)  # unprivileged ICMP
    except OSError:
        sock = socket.socket(fam, socket.SOCK_RAW, proto)
        raw = True
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    try:
        ident = random.randrange(1, 0xFFFF)
        seq = random.randrange(1, 0xFFFF)
        payload = b"halb-director-ping" + struct.pack("!d", time.time())
        typ = 128 if v6 else 8
        hdr = struct.pack("!BBHHH", typ, 0, 0, ident, seq)
        csum = 0 if v6 else _icmp_checksum(hdr + payload)
        pkt = struct.pack("!BBHHH", typ, 0, csum, ident, seq) + payload
        await loop.sock_sendto(sock, pkt, (host, 0))
        deadline = loop.time() + timeout
        while True:
            left = deadline - loop.time()
            if left <= 0:
                return False
            try:
                data = await asyncio.wait_for(loop.sock_recv(sock, 2048), left)
            except asyncio.TimeoutError:
                return False
            if raw and not v6:
                data = data[(data[0] & 0x0F) * 4:]
            if len(data) < 8:
                continue
            rtype, _, _, rid, rseq = struct.unpack("!BBHHH", data[:8])
            if rtype == (129 if v6 else 0) and rseq == seq and (raw is False or rid == ident):
                return True
    finally:
        sock.close()


async def check_ping(spec: CheckSpec) -> Result:
    for attempt in range(max(1, spec.checkcount)):
        if await _ping_once(spec.host, spec.checktimeout):
            return Result(True, f"pong from {spec.host}")
    return Result(False, f"ping to {spec.host} timed out ({max(1, spec.checkcount)} attempts)")


async def check_external(spec: CheckSpec) -> Result:
    argv = shlex.split(spec.checkcommand)
    vserver = spec.vaddr if spec.protocol != "fwm" else str(spec.fwmark)
    argv += [vserver, str(spec.vport), spec.host, str(spec.real_port)]
    try:
        proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.DEVNULL,
                                                    stdout=asyncio.subprocess.DEVNULL,
                                                    stderr=asyncio.subprocess.DEVNULL,
                                                    start_new_session=True)
    except OSError as e:
        return Result(False, f"cannot run {argv[0]}: {_errstr(e)}")
    try:
        rc = await asyncio.wait_for(proc.wait(), spec.checktimeout)
    except (asyncio.TimeoutError, asyncio.CancelledError) as e:
        try:
            os.killpg(proc.pid, 15)
        except ProcessLookupError:
            pass
        try:
            await asyncio.wait_for(proc.wait(), 2)
        except (asyncio.TimeoutError, asyncio.CancelledError):
            try:
                os.killpg(proc.pid, 9)
            except ProcessLookupError:
                pass
        if isinstance(e, asyncio.CancelledError):
            raise
        return Result(False, f"{spec.checkcommand} timed out after {spec.checktimeout:g} s")
    if rc == 0:
        return Result(True, f"{spec.checkcommand} exited 0")
    return Result(False, f"{spec.checkcommand} exited with {rc}")


# --------------------------------------------------------------------------
# HTTP family


_STATUS_RE = re.compile(r"^HTTP/\d(?:\.\d)?\s+(\d{3})\s*(.*)$")


def _parse_http(data: bytes) -> tuple[int, str, dict[str, str], bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    first, _, rest = head.partition(b"\r\n")
    m = _STATUS_RE.match(first.decode("latin-1"))
    if not m:
        raise ValueError(f"not an HTTP response: {first[:60]!r}")
    status = int(m.group(1))
    headers = {}
    # headers matter only for redirects and chunked bodies (rare for checks)
    if 300 <= status < 400 or b"chunked" in rest.lower():
        for h in rest.decode("latin-1").split("\r\n"):
            k, _, val = h.partition(":")
            headers[k.strip().lower()] = val.strip()
        if "chunked" in headers.get("transfer-encoding", "").lower():
            body = _dechunk(body)
    return status, f"{m.group(1)} {m.group(2)}".strip(), headers, body


_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}")


def _dechunk(body: bytes) -> bytes:
    """A chunked body's data. A chunk size that is not hexadecimal digits (a
    negative one sent us backwards for ever: found by tests/director/
    test_checks_fuzz.py) ends it: ValueError."""
    out, i = [], 0
    while i < len(body):
        j = body.find(b"\r\n", i)
        if j < 0:
            break
        text = body[i:j].split(b";")[0].strip() or b"0"
        if not _CHUNK_SIZE.fullmatch(text):
            raise ValueError(f"bad chunk size {text[:20]!r} in a chunked answer")
        size = int(text, 16)
        if size == 0:
            break
        out.append(body[j + 2:j + 2 + size])
        i = j + 2 + size + 2
    return b"".join(out)


async def _read_all(reader, limit: int = MAX_BODY) -> bytes:
    chunks, n = [], 0
    while n < limit:
        try:
            b = await reader.read(65536)
        except ssl.SSLError:
            break  # servers that close TLS without close_notify
        if not b:
            break
        chunks.append(b)
        n += len(b)
    return b"".join(chunks)


class _Collect(asyncio.Protocol):
    """Sends a request, collects the whole answer until the server closes."""

    def __init__(self, request: bytes, fut: asyncio.Future, limit: int = MAX_BODY):
        self.request, self.fut, self.limit = request, fut, limit
        self.buf: list[bytes] = []
        self.size = 0
        self.transport = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.buf.append(data)
        self.size += len(data)
        if self.size >= self.limit:
            self.transport.close()

    def eof_received(self):
        return False

    def connection_lost(self, exc) -> None:
        if not self.fut.done():
            if exc is not None and not self.buf and not isinstance(exc, ssl.SSLError):
                self.fut.set_exception(exc)
            else:
                self.fut.set_result(b"".join(self.buf))


async def _fetch(spec: CheckSpec, host: str, port: int, tls: bool, request: bytes) -> bytes:
    """Connect, send `request`, return everything until the server closes."""
    loop = asyncio.get_running_loop()
    fut = loop.create_future()
    kw = {}
    if tls:
        kw = {"ssl": ssl_context(spec), "server_hostname": _sni(spec, host) or ""}
    transport, _ = await loop.create_connection(lambda: _Collect(request, fut), host.strip("[]"), port, **kw)
    try:
        return await fut
    finally:
        transport.abort()


@functools.lru_cache(maxsize=8192)
def _split(url: str):
    u = urlsplit(url)
    path = (u.path or "/") + (("?" + u.query) if u.query else "")
    return u.scheme, u.hostname, u.port, u.netloc, path


def _same_server(url: str, nxt: str, spec: CheckSpec) -> bool:
    a, b = _split(url), _split(nxt)
    if spec.service == "http_proxy":
        return (a[0], a[1], a[2]) == (b[0], b[1], b[2])
    port_a = a[2] or (443 if a[0] == "https" else 80)
    port_b = b[2] or (443 if b[0] == "https" else 80)
    return b[0] in ("http", "https") and (a[1] or "") == (b[1] or "") and port_a == port_b


async def check_http(spec: CheckSpec) -> Result:
    url = spec.url
    proxy = spec.service == "http_proxy"
    if proxy and not re.match(r"^https?://", url):
        return Result(False, f"http_proxy request must be an absolute URL, got {url!r}")
    status, line, body = 0, "", b""
    for _ in range(8):  # LWP follows up to 7 redirects
        scheme, hostname, uport, netloc, path = _split(url)
        tls = scheme == "https"
        host = hostname or spec.host
        port = uport or (443 if tls else 80)
        if proxy:
            conn_host, conn_port, conn_tls = spec.host, spec.port, False
            target, hosthdr = url, netloc
        else:
            conn_host, conn_port, conn_tls = host, port, tls
            target = path
            hosthdr = spec.virtualhost or (f"[{host}]" if ":" in host else host)
        req = (f"{spec.httpmethod} {target} HTTP/1.0\r\nHost: {hosthdr}\r\n"
               f"User-Agent: halb-director\r\nAccept: */*\r\nConnection: close\r\n\r\n").encode("latin-1")
        data = await _fetch(spec, conn_host, conn_port, conn_tls, req)
        status, line, headers, body = _parse_http(data)
        if status in (301, 302, 303, 307, 308) and headers.get("location"):
            nxt = urljoin(url, headers["location"])
            if not _same_server(url, nxt, spec):
                # ldirectord does not follow at all; halb follows only on the same real server:
                # a redirect elsewhere would check (and trust) another host
                return Result(False, f"{line}: redirect to {nxt[:100]} (another host or port) not followed")
            url = nxt
            continue
        break
    if 200 <= status < 300:
        text = body.decode("latin-1")
        if not spec.receive or receive_search(spec.receive, text):
            return Result(True, line)
        return Result(False, f"{line}: receive string /{spec.receive}/ not found in {text[:80]!r}")
    return Result(False, line)


# --------------------------------------------------------------------------
# line-oriented protocols


async def _readline(r, limit: int = 8192) -> str:
    line = await r.readline()
    if not line:
        raise EOFError("connection closed by the server")
    return line[:limit].decode("latin-1").rstrip("\r\n")


async def _smtp_reply(r) -> tuple[int, str]:
    lines = []
    while True:
        line = await _readline(r)
        lines.append(line)
        if len(line) < 4 or line[3] != "-":
            break
    m = re.match(r"^(\d{3})", lines[-1])
    return (int(m.group(1)) if m else 0), " / ".join(lines)


async def check_smtp(spec: CheckSpec) -> Result:
    r, w = await _open(spec, spec.host, spec.port)
    try:
        code, text = await _smtp_reply(r)
        if code != 220:
            return Result(False, f"bad greeting: {text[:100]}")
        w.write(f"EHLO {socket.gethostname()}\r\n".encode())
        code, text2 = await _smtp_reply(r)
        if code != 250:
            w.write(f"HELO {socket.gethostname()}\r\n".encode())
            code, text2 = await _smtp_reply(r)
            if code != 250:
                return Result(False, f"HELO refused: {text2[:100]}")
        w.write(b"QUIT\r\n")
        return Result(True, text[:100])
    finally:
        await _close(w)


async def check_pop(spec: CheckSpec) -> Result:
    r, w = await _open(spec, spec.host, spec.port, tls=spec.service == "pops")
    try:
        g = await _readline(r)
        if not g.startswith("+OK"):
            return Result(False, f"bad greeting: {g[:100]}")
        if spec.login:
            w.write(f"USER {spec.login}\r\n".encode())
            a = await _readline(r)
            if a.startswith("+OK"):
                w.write(f"PASS {spec.passwd}\r\n".encode())
                a = await _readline(r)
            if not a.startswith("+OK"):
                return Result(False, f"login failed: {a[:100]}")
        w.write(b"QUIT\r\n")
        return Result(True, g[:100])
    finally:
        await _close(w)


async def check_imap(spec: CheckSpec) -> Result:
    r, w = await _open(spec, spec.host, spec.port, tls=spec.service == "imaps")
    try:
        g = await _readline(r)
        if not re.match(r"^\* (OK|PREAUTH)", g):
            return Result(False, f"bad greeting: {g[:100]}")
        if spec.login:
            def q(s: str) -> str:
                return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'
            w.write(f"a1 LOGIN {q(spec.login)} {q(spec.passwd)}\r\n".encode())
            while True:
                a = await _readline(r)
                if a.startswith("a1 "):
                    break
            if not a.startswith("a1 OK"):
                return Result(False, f"login failed: {a[:100]}")
        w.write(b"a2 LOGOUT\r\n")
        return Result(True, g[:100])
    finally:
        await _close(w)


async def check_nntp(spec: CheckSpec) -> Result:
    r, w = await _open(spec, spec.host, spec.port)
    try:
        buf = await r.read(64)
        text = buf.decode("latin-1")
        if text.startswith("2"):
            return Result(True, text.strip()[:100])
        return Result(False, f"bad greeting: {text.strip()[:100]}")
    finally:
        await _close(w)


async def check_simpletcp(spec: CheckSpec) -> Result:
    req = spec.request[1:] if spec.request.startswith("/") else spec.request
    req = req.replace("\\n", "\n")
    r, w = await _open(spec, spec.host, spec.port)
    try:
        w.write(req.encode("latin-1", "replace"))
        await w.drain()
        if w.can_write_eof():
            w.write_eof()
        n = 0
        while n < MAX_BODY:
            line = await r.readline()
            if not line:
                break
            n += len(line)
            text = line.decode("latin-1")
            if receive_search(spec.receive, text):
                return Result(True, text.strip()[:100])
        return Result(False, f"receive string /{spec.receive}/ not found")
    finally:
        await _close(w)


async def check_ftp(spec: CheckSpec) -> Result:
    r, w = await _open(spec, spec.host, spec.port)
    try:
        code, text = await _smtp_reply(r)  # same reply format as SMTP
        if code != 220:
            return Result(False, f"bad greeting: {text[:100]}")

        async def cmd(c: str) -> tuple[int, str]:
            w.write(f"{c}\r\n".encode("latin-1"))
            return await _smtp_reply(r)

        code, t = await cmd(f"USER {spec.login or 'anonymous'}")
        if code == 331:
            code, t = await cmd(f"PASS {spec.passwd}")
        if code not in (230, 202):
            return Result(False, f"login failed: {t[:100]}")
        if not spec.receive:
            await cmd("QUIT")
            return Result(True, "logged in")
        await cmd("CWD /")
        await cmd("TYPE I")
        code, t = await cmd("PASV")
        m = re.search(r"(\d+),(\d+),(\d+),(\d+),(\d+),(\d+)", t)
        if code != 227 or not m:
            return Result(False, f"PASV refused: {t[:100]}")
        dport = int(m.group(5)) * 256 + int(m.group(6))
        dr, dw = await _open(spec, spec.host, dport)
        try:
            w.write(f"RETR {spec.request}\r\n".encode("latin-1"))
            code, t = await _smtp_reply(r)
            if code not in (125, 150):
                return Result(False, f"RETR {spec.request} refused: {t[:100]}")
            data = await _read_all(dr)
        finally:
            await _close(dw)
        await _smtp_reply(r)
        w.write(b"QUIT\r\n")
        text = data.decode("latin-1")
        if receive_search(spec.receive, text):
            return Result(True, f"RETR {spec.request}: receive string found")
        return Result(False, f"RETR {spec.request}: receive string /{spec.receive}/ not found")
    finally:
        await _close(w)


async def check_sip(spec: CheckSpec) -> Result:
    loop = asyncio.get_running_loop()
    callid = os.urandom(8).hex()
    login = spec.login

    def request(laddr: str, lport: int) -> bytes:
        via = "UDP" if spec.protocol == "udp" else "TCP"
        return (f"OPTIONS sip:{login} SIP/2.0\r\n"
                f"Via: SIP/2.0/{via} {laddr}:{lport};branch=z9hG4bK{callid[:10]}\r\n"
                "Max-Forwards: 70\r\n"
                f"To: <sip:{login}>\r\n"
                f"From: <sip:{login}>;tag={callid[:8]}\r\n"
                f"Call-ID: {callid}\r\n"
                "CSeq: 63104 OPTIONS\r\n"
                f"Contact: <sip:{login}>\r\n"
                "Accept: application/sdp\r\n"
                "Content-Length: 0\r\n\r\n").encode()

    if spec.protocol == "udp":
        fam = socket.AF_INET6 if ":" in spec.host else socket.AF_INET
        sock = socket.socket(fam, socket.SOCK_DGRAM)
        sock.setblocking(False)
        try:
            sock.connect((spec.host, spec.port))
            laddr, lport = sock.getsockname()[:2]
            await loop.sock_sendall(sock, request(laddr, lport))
            data = await loop.sock_recv(sock, 65535)
        finally:
            sock.close()
        first = data.decode("latin-1").split("\r\n", 1)[0]
    else:
        r, w = await _open(spec, spec.host, spec.port)
        try:
            laddr, lport = w.get_extra_info("sockname")[:2]
            w.write(request(laddr, lport))
            first = await _readline(r)
        finally:
            await _close(w)
    if re.match(r"^SIP/2\.0 200 OK", first):
        return Result(True, first)
    return Result(False, first[:100] or "no answer")


# --------------------------------------------------------------------------
# RADIUS (RFC 2865 Access-Request; any authentic answer means "up", as
# ldirectord's Authen::Radius check_pwd does)


async def check_radius(spec: CheckSpec) -> Result:
    secret = spec.secret.encode()
    ident = random.randrange(256)
    auth = os.urandom(16)
    attrs = b""
    user = spec.login.encode()
    attrs += bytes([1, len(user) + 2]) + user
    pw = spec.passwd.encode()
    pw = (pw + b"\0" * (-len(pw) % 16)) if pw else b"\0" * 16
    enc, last = b"", auth
    for i in range(0, len(pw), 16):
        b = hashlib.md5(secret + last).digest()
        blk = bytes(x ^ y for x, y in zip(pw[i:i + 16], b))
        enc += blk
        last = blk
    attrs += bytes([2, len(enc) + 2]) + enc
    attrs += bytes([4, 6]) + socket.inet_aton("127.0.0.1")  # NAS-IP-Address
    pkt = struct.pack("!BBH", 1, ident, 20 + len(attrs)) + auth + attrs
    loop = asyncio.get_running_loop()
    fam = socket.AF_INET6 if ":" in spec.host else socket.AF_INET
    sock = socket.socket(fam, socket.SOCK_DGRAM)
    sock.setblocking(False)
    try:
        sock.connect((spec.host, spec.port))
        await loop.sock_sendall(sock, pkt)
        while True:
            data = await loop.sock_recv(sock, 4096)
            if len(data) < 20 or data[1] != ident:
                continue
            code, _, length = struct.unpack("!BBH", data[:4])
            expect = hashlib.md5(data[:4] + auth + data[20:length] + secret).digest()
            if expect != data[4:20]:
                return Result(False, "RADIUS answer with a bad authenticator (wrong secret?)")
            name = {2: "Access-Accept", 3: "Access-Reject", 11: "Access-Challenge"}.get(code, f"code {code}")
            return Result(True, name)
    finally:
        sock.close()


# --------------------------------------------------------------------------
# DNS (dnspython): an A query, or PTR when the request is an address


async def check_dns(spec: CheckSpec) -> Result:
    import dns.asyncquery
    import dns.message
    import dns.rdatatype
    import dns.reversename

    name = spec.request.lstrip("/")
    if not spec.receive:
        return Result(False, "dns check needs a receive string")
    try:
        ipaddress.ip_address(name)
        qname, qtype = dns.reversename.from_address(name), dns.rdatatype.PTR
    except ValueError:
        qname, qtype = name, dns.rdatatype.A
    q = dns.message.make_query(qname, qtype)
    if spec.protocol == "tcp":
        ans = await dns.asyncquery.tcp(q, spec.host, port=spec.port, timeout=spec.negotiatetimeout)
    else:
        ans = await dns.asyncquery.udp(q, spec.host, port=spec.port, timeout=spec.negotiatetimeout)
    seen = []
    for rrset in ans.answer:
        for rd in rrset:
            if rrset.rdtype == dns.rdatatype.A:
                val = rd.address
            elif rrset.rdtype == dns.rdatatype.PTR:
                val = rd.target.to_text()
            else:
                continue
            seen.append(val)
            if receive_search(spec.receive, val):
                return Result(True, f"{name} -> {val}")
    return Result(False, f"Response mismatch: {name} -> {', '.join(seen) or 'no answer'}")


# --------------------------------------------------------------------------
# SQL and LDAP through well-kept client libraries (run in a thread)


def _sql_query(spec: CheckSpec) -> str:
    return spec.request[1:] if spec.request.startswith("/") else spec.request


async def check_mysql(spec: CheckSpec) -> Result:
    if not spec.login or not _sql_query(spec):
        return Result(False, "mysql check needs login and request (a SELECT)")

    def work() -> Result:
        import pymysql
        conn = pymysql.connect(host=spec.host, port=spec.port, user=spec.login, password=spec.passwd,
                               database=spec.database or None, connect_timeout=spec.negotiatetimeout,
                               read_timeout=spec.negotiatetimeout)
        try:
            with conn.cursor() as cur:
                n = cur.execute(_sql_query(spec))
                return Result(n > 0, f"{n} rows")
        finally:
            conn.close()

    try:
        return await asyncio.to_thread(work)
    except Exception as e:
        return Result(False, _errstr(e))


async def check_pgsql(spec: CheckSpec) -> Result:
    if not spec.login or not _sql_query(spec):
        return Result(False, "pgsql check needs login and request (a SELECT)")

    def work() -> Result:
        import pg8000.native
        conn = pg8000.native.Connection(spec.login, host=spec.host, port=spec.port,
                                        password=spec.passwd or None, database=spec.database or None,
                                        timeout=spec.negotiatetimeout)
        try:
            rows = conn.run(_sql_query(spec))
            n = len(rows or [])
            return Result(n > 0, f"{n} rows")
        finally:
            conn.close()

    try:
        return await asyncio.to_thread(work)
    except Exception as e:
        return Result(False, _errstr(e))


async def check_ldap(spec: CheckSpec) -> Result:
    def work() -> Result:
        import math

        import ldap3
        tmo = max(1, math.ceil(spec.negotiatetimeout))  # ldap3 wants whole seconds
        tls = None
        if spec.service == "ldaps":
            tls = ldap3.Tls(validate=ssl.CERT_REQUIRED if spec.sslverify else ssl.CERT_NONE,
                            ca_certs_file=spec.sslcafile)
        server = ldap3.Server(spec.host, port=spec.port, use_ssl=spec.service == "ldaps", tls=tls,
                              connect_timeout=tmo, get_info=ldap3.NONE)
        if spec.login and spec.passwd:
            conn = ldap3.Connection(server, user=spec.login, password=spec.passwd, receive_timeout=tmo)
        else:
            conn = ldap3.Connection(server, receive_timeout=tmo)
        try:
            if not conn.bind():
                return Result(False, f"Bind failed: {conn.result.get('description')}")
            base = spec.request[1:] if spec.request.startswith("/") else spec.request
            conn.search(base, "(objectClass=*)", search_scope=ldap3.BASE)
            if len(conn.entries) != 1:
                return Result(False, f"No answer received ({len(conn.entries)} entries for {base!r})")
            dn = conn.entries[0].entry_dn
            if not spec.receive or receive_search(spec.receive, dn):
                return Result(True, f"Success: {dn}")
            return Result(False, f"Response mismatch: {dn}")
        finally:
            conn.unbind()

    try:
        return await asyncio.to_thread(work)
    except Exception as e:
        return Result(False, _errstr(e))


NEGOTIATE = {
    "http": check_http, "https": check_http, "http_proxy": check_http,
    "smtp": check_smtp, "submission": check_smtp,
    "pop": check_pop, "pops": check_pop, "imap": check_imap, "imaps": check_imap,
    "nntp": check_nntp, "simpletcp": check_simpletcp, "ftp": check_ftp, "sip": check_sip,
    "radius": check_radius, "dns": check_dns, "mysql": check_mysql, "pgsql": check_pgsql,
    "ldap": check_ldap, "ldaps": check_ldap, "none": check_none,
}
