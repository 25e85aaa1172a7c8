"""The ldirectord.cf language, parsed as ldirectord parses it. Pure: no I/O
except reading the file (and, for host names, the resolver passed in).

Global directives start in column 0; a `virtual=` line opens a section whose
directives are indented (at least 4 spaces or one tab). Per-virtual values
left unset inherit the global ones; `finalize` resolves them exactly as
ldirectord's ld_setup does (checktimeout and negotiatetimeout default to each
other, then to 5 s / 30 s).

halb additions (same syntax style): times may be decimal (checkinterval=0.2);
`real=` accepts `l:LOW` / `u:HIGH` thresholds; `schedflags=` (ipvsadm -b);
`sslverify=yes|no` and `sslcafile="..."` for https/ldaps/imaps/pops checks.
Blank lines inside a virtual section do not end it.
"""
from __future__ import annotations

import ipaddress
import re
import shlex
import socket
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from halb.errors import ConfigError
from halb.model import SCHED_FLAGS, SCHEDULERS

STATUS_STARTING, STATUS_RUNNING, STATUS_STOPPING, STATUS_RELOADING = 1, 2, 4, 8
STATUS_ALL = 15
STATUS_NAMES = {STATUS_STARTING: "starting", STATUS_RUNNING: "running",
                STATUS_STOPPING: "stopping", STATUS_RELOADING: "reloading"}

CHECKTYPES = ("connect", "negotiate", "ping", "off", "on", "external", "external-perl")
SERVICES = ("dns", "ftp", "http", "https", "http_proxy", "imap", "imaps", "ldap", "ldaps",
            "nntp", "mysql", "none", "oracle", "pop", "pops", "radius", "pgsql", "sip",
            "smtp", "submission", "simpletcp")
UNSUPPORTED_SERVICES = {"oracle": "oracle checks are not supported by halb (no Oracle client)"}
PORT_SERVICE = {21: "ftp", 25: "smtp", 53: "dns", 80: "http", 110: "pop", 119: "nntp",
                143: "imap", 389: "ldap", 443: "https", 587: "submission", 636: "ldaps",
                993: "imaps", 995: "pops", 1521: "oracle", 1812: "radius", 3128: "http_proxy",
                3306: "mysql", 5060: "sip", 5432: "pgsql"}
SERVICE_PORT = {v: k for k, v in PORT_SERVICE.items()}
DEFAULT_CHECKTIMEOUT = 5.0
DEFAULT_NEGOTIATETIMEOUT = 30.0

Resolver = Callable[[str, int], str | None]


def default_resolver(host: str, af: int) -> str | None:
    """Resolve a host name to one address of family af (4 or 6)."""
    try:
        fam = socket.AF_INET6 if af == 6 else socket.AF_INET
        infos = socket.getaddrinfo(host, None, fam, socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return None
    return infos[0][4][0] if infos else None


@dataclass(frozen=True)
class Fallback:
    addr: str
    port: int | None  # None: the virtual service's port
    fwd: str = "gate"


@dataclass(frozen=True)
class Real:
    addr: str
    port: int  # as written (0 when omitted)
    fwd: str
    weight: int = 1
    request: str | None = None
    receive: str | None = None
    l_threshold: int = 0
    u_threshold: int = 0
    line: int = 0

    @property
    def ident(self) -> str:
        a = f"[{self.addr}]" if ":" in self.addr else self.addr
        return f"{a}:{self.port}"


@dataclass
class Virtual:
    line: int
    af: int  # 4 or 6
    protocol: str  # tcp|udp|fwm
    addr: str = ""  # "" for fwmark services
    port: int = 0
    fwmark: int = 0
    reals: list[Real] = field(default_factory=list)
    checktype: str = "negotiate"
    num_connects: int = 0  # checktype=N: N connect checks then one negotiate
    service: str | None = None
    checkport: int | None = None
    checkcommand: str = "/bin/true"
    request: str = "/"
    receive: str = ""
    httpmethod: str = "GET"
    virtualhost: str | None = None
    login: str = ""
    passwd: str = ""
    database: str = ""
    secret: str = ""
    scheduler: str = "wrr"
    persistent: int | None = None
    netmask: str | None = None
    schedflags: tuple[str, ...] = ()
    ops: bool = False
    fallback: Fallback | None = None
    fallbackcommand: str | None = None
    monitorfile: str | None = None
    sslverify: bool = False
    sslcafile: str | None = None
    # inheritable: None = take the global value in finalize()
    checktimeout: float | None = None
    negotiatetimeout: float | None = None
    checkcount: int | None = None
    failurecount: int | None = None
    checkinterval: float | None = None
    quiescent: bool | None = None
    cleanstop: bool | None = None
    emailalert: str | None = None
    emailalertfreq: float | None = None
    emailalertstatus: int | None = None
    smtp: str | None = None

    @property
    def ident(self) -> str:
        """ldirectord's get_virtual: ip:port, [v6]:port or the fwmark."""
        if self.protocol == "fwm":
            return str(self.fwmark)
        a = f"[{self.addr}]" if self.af == 6 else self.addr
        return f"{a}:{self.port}"

    @property
    def id(self) -> str:
        return f"{self.protocol}:{self.ident}"

    def real_port(self, r: Real) -> int:
        """Port of the real server in the table (ipvsadm uses the virtual's
        port when none is given)."""
        if r.port == 0 and self.protocol != "fwm":
            return self.port
        return r.port

    def check_port(self, r: Real) -> int:
        """ldirectord's ld_checkport."""
        if self.checkport:
            return self.checkport
        if r.port > 0:
            return r.port
        if self.service in SERVICE_PORT:
            return SERVICE_PORT[self.service]
        return self.port


@dataclass
class Config:
    path: str | None = None
    checktimeout: float | None = None
    negotiatetimeout: float | None = None
    checkinterval: float = 10.0
    checkcount: int = 1
    failurecount: int = 1
    autoreload: bool = False
    callback: str | None = None
    fallback: Fallback | None = None
    fallback6: Fallback | None = None
    fallbackcommand: str | None = None
    logfile: str | None = None
    emailalert: str = ""
    emailalertfreq: float = 0
    emailalertstatus: int = STATUS_ALL
    emailalertfrom: str | None = None
    quiescent: bool = False
    readdquiescent: bool = False
    cleanstop: bool = True
    maintenancedir: str | None = None
    smtp: str | None = None
    execute: list[str] = field(default_factory=list)
    supervised: bool = False
    fork: bool = False
    virtuals: list[Virtual] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------

# at most 12 digits before and 9 after the point: int() of 4,300+ digits raises
# (Python's limit), and no setting means anything that large anyway
_NUM = re.compile(r"^\d{1,12}(\.\d{1,9})?$")
_INT = re.compile(r"^\d{1,12}$")
# the range of every number of ldirectord.cf (halb's bounds; ldirectord has none)
TIME_MIN, TIME_MAX = 0.05, 86400.0     # checkinterval, checktimeout, negotiatetimeout (s)
COUNT_MAX = 1000                       # checkcount, failurecount, checktype=N
INT_MAX = 2147483647
_QUOTED = re.compile(r'^"(.*)"$')


class _Parser:
    def __init__(self, path: str | None, resolver: Resolver, hostname: str):
        self.path = path
        self.resolve = resolver
        self.hostname = hostname

    def err(self, line: int, msg: str):
        msg = "".join(c if c.isprintable() else repr(c)[1:-1] for c in msg)
        if len(msg) > 300:  # a 5,000-character value is not echoed whole
            msg = f"{msg[:200]}...[{len(msg) - 280} characters]...{msg[-80:]}"
        raise ConfigError(self.path, line, msg)

    # -- value helpers -----------------------------------------------------
    def positive(self, line: int, val: str, what: str, integer: bool = False,
                 low: float | None = None, high: float | None = None) -> float | int:
        val = val.strip()
        if not (_INT if integer else _NUM).match(val) or float(val) <= 0:
            shown = val if len(val) <= 40 else val[:20] + "..." + f" ({len(val)} characters)"
            self.err(line, f"invalid {what} value '{shown}' (a positive "
                           f"{'integer' if integer else 'number'} is needed)")
        n = int(val) if integer or _INT.match(val) else float(val)
        if (low is not None and n < low) or (high is not None and n > high):
            self.err(line, f"invalid {what} value '{val}' (from {low:g} to {high:g})")
        return n

    def yesno(self, line: int, val: str, name: str) -> bool:
        val = val.strip()
        if val not in ("yes", "no"):
            self.err(line, f"{name} must be 'yes' or 'no'")
        return val == "yes"

    def quoted(self, line: int, val: str, what: str, required_quotes: bool = True) -> str:
        val = val.strip()
        m = _QUOTED.match(val)
        if m:
            val = m.group(1)
        elif required_quotes:
            self.err(line, f"{what} must be given in double quotes")
        if not val:
            self.err(line, f"no {what} specified")
        return val

    def port(self, line: int, text: str, proto: str, what: str) -> int:
        if _INT.match(text):
            p = int(text)
            if not 0 <= p <= 65535:
                self.err(line, f"invalid port ({text}) for {what}")
            return p
        try:
            return socket.getservbyname(text, proto if proto in ("tcp", "udp") else "tcp")
        except (OSError, UnicodeError):
            self.err(line, f"invalid port ({text}) for {what} (could not resolve port)")

    def host(self, line: int, text: str, af: int, what: str) -> str:
        t = text[1:-1] if text.startswith("[") and text.endswith("]") else text
        try:
            ip = ipaddress.ip_address(t)
        except ValueError:
            if not re.match(r"^[A-Za-z0-9][A-Za-z0-9.-]*$", t):
                self.err(line, f"invalid address ({text}) for {what}")
            addr = self.resolve(t, af)
            if addr is None:
                self.err(line, f"invalid address ({text}) for {what} (could not resolve host)")
            return addr
        if ip.version != af:
            self.err(line, f"{what} address {text} is not IPv{af}"
                           + (" (use virtual6/real6/fallback6 for IPv6)" if ip.version == 6 else ""))
        return str(ip)

    def emailstatus(self, line: int, val: str) -> int:
        items = [x for x in re.split(r"\s*,\s*", val.strip())]
        none = "none" in items
        status = 0
        for i in items:
            if i == "none":
                continue
            if i == "all":
                status = STATUS_ALL
            elif i == "starting":
                status |= STATUS_STARTING
            elif i == "running":
                status |= STATUS_RUNNING
            elif i == "stopping":
                status |= STATUS_STOPPING
            elif i == "reloading":
                status |= STATUS_RELOADING
            else:
                self.err(line, f'invalid email alert status at: "{i}"')
            if none:
                self.err(line, f'invalid email alert status: "{i}" specified with "none"')
        return status

    def emailalert(self, line: int, val: str) -> str:
        val = val.strip()
        m = _QUOTED.match(val)
        if m:
            val = m.group(1)
        if not val.strip():
            self.err(line, "no email address specified")
        for a in val.split(","):
            a = a.strip()
            if a.startswith("-") or not a or any(c.isspace() or ord(c) < 32 for c in a):
                # it would reach sendmail's command line as an option
                self.err(line, f'invalid email address "{a}"' + (" (cannot start with '-')" if a.startswith("-") else ""))
        return val.strip()

    def smtp(self, line: int, val: str) -> str:
        m = re.match(r"^([0-9A-Za-z._+:\[\]-]+)$", self.strip_quotes(val))
        if not m:
            self.err(line, "invalid SMTP server address")
        return m.group(1)

    @staticmethod
    def strip_quotes(val: str) -> str:
        val = val.strip()
        m = _QUOTED.match(val)
        return m.group(1) if m else val

    def fallback(self, line: int, val: str, af: int, proto: str) -> Fallback:
        val = val.strip()
        m = re.match(r"^(\S+)(?:\s+(\S+))?$", val)
        if not m:
            self.err(line, f"invalid fallback server: {val}")
        hostport, fwd = m.group(1), m.group(2) or "gate"
        if fwd not in ("gate", "masq", "ipip"):
            self.err(line, "forward method must be gate, masq or ipip")
        if af == 6:
            m2 = re.match(r"^(\[[0-9A-Fa-f:.]+\])(?::([A-Za-z0-9_-]+))?$", hostport)
        else:
            m2 = re.match(r"^([A-Za-z0-9.-]+)(?::([A-Za-z0-9_-]+))?$", hostport)
        if not m2:
            self.err(line, f"invalid fallback server: {val}")
        addr = self.host(line, m2.group(1), af, "fallback server")
        port = self.port(line, m2.group(2), proto, "fallback server") if m2.group(2) else None
        return Fallback(addr, port, fwd)

    # -- the file ------------------------------------------------------------
    def parse(self, text: str) -> Config:
        cfg = Config(path=self.path)
        lines = text.split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        i = 0
        seen: set[str] = set()
        while i < len(lines):
            raw = lines[i]
            n = i + 1
            i += 1
            if "\x00" in raw:
                self.err(n, "binary data (NUL byte) in configuration")
            if not raw.strip() or raw.lstrip().startswith("#"):
                continue
            m = re.match(r"^virtual(6)?\s*=\s*(.*)$", raw)
            if m:
                v, i = self.virtual(cfg, lines, i, n, 6 if m.group(1) else 4, _strip_comment(m.group(2)))
                if v.id in seen:
                    self.err(n, f"duplicate virtual server {v.ident}")
                seen.add(v.id)
                cfg.virtuals.append(v)
                continue
            if raw[0] in " \t":
                self.err(n, f"Unknown command \"{raw.strip()}\" (indented directive outside a virtual section)")
            self.global_directive(cfg, n, _strip_comment(raw))
        return cfg

    def global_directive(self, cfg: Config, n: int, line: str) -> None:
        m = re.match(r"^([A-Za-z_0-9-]+)\s*(=\s*(.*))?$", line)
        if not m:
            self.err(n, f'Unknown command "{line}"')
        name, has_eq, val = m.group(1), m.group(2), (m.group(3) or "").strip()
        if name == "supervised" and not has_eq:
            cfg.supervised = True
            cfg.warnings.append(f"{self.path}:{n}: please update your config not to use a bare supervised directive")
            return
        if not has_eq:
            self.err(n, f'Unknown command "{line}"')
        if self.shared_directive(cfg, cfg, n, name, val, "check interval"):
            return
        if name in ("fallback", "fallback6"):
            af = 6 if name == "fallback6" else 4
            fb = self.fallback(n, val, af, "tcp")
            if af == 6:
                cfg.fallback6 = fb
            else:
                cfg.fallback = fb
        elif name == "autoreload":
            cfg.autoreload = self.yesno(n, val, "autoreload")
        elif name == "callback":
            cfg.callback = self.quoted(n, val, "callback")
        elif name == "logfile":
            cfg.logfile = self.quoted(n, val, "logfile")
        elif name == "execute":
            cfg.execute.append(self.quoted(n, val, "configuration", required_quotes=False))
        elif name == "fork":
            cfg.fork = self.yesno(n, val, "fork")
        elif name == "supervised":
            cfg.supervised = self.yesno(n, val, "supervised")
        elif name == "readdquiescent":
            cfg.readdquiescent = self.yesno(n, val, "readdquiescent")
        elif name == "emailalertfrom":
            cfg.emailalertfrom = self.quoted(n, val, "email from address", required_quotes=False) \
                if val else self.err(n, "no email from address specified")
            if cfg.emailalertfrom.lstrip().lstrip("<").startswith("-"):
                self.err(n, f'invalid email from address "{cfg.emailalertfrom}" (cannot start with \'-\')')
        elif name == "maintenancedir":
            cfg.maintenancedir = self.quoted(n, val, "maintenance directory", required_quotes=False)
        else:
            self.err(n, f'Unknown command "{line}"')

    def shared_directive(self, cfg: Config, target, n: int, name: str, val: str,
                         interval_label: str) -> bool:
        """The directives that stand both globally and in a virtual section,
        with the same words and errors in both: set on ``target`` (the Config
        or a Virtual). False when ``name`` is not one of them."""
        if name == "checktimeout":
            target.checktimeout = self.positive(n, val, "check timeout", low=TIME_MIN, high=TIME_MAX)
        elif name == "connecttimeout":
            self.err(n, "connecttimeout directive deprecated in favour of negotiatetimeout")
        elif name == "timeout":
            self.err(n, "timeout directive deprecated in favour of checktimeout and negotiatetimeout")
        elif name == "negotiatetimeout":
            target.negotiatetimeout = self.positive(n, val, "negotiate timeout", low=TIME_MIN, high=TIME_MAX)
        elif name == "checkinterval":
            # ldirectord words this one differently in the two places
            target.checkinterval = self.positive(n, val, interval_label, low=TIME_MIN, high=TIME_MAX)
        elif name == "checkcount":
            target.checkcount = self.positive(n, val, "check count", integer=True, low=1, high=COUNT_MAX)
            cfg.warnings.append(f"{self.path}:{n}: checkcount option is deprecated and slated for "
                                "removal.  please see 'failurecount'")
        elif name == "failurecount":
            target.failurecount = self.positive(n, val, "failure count", integer=True, low=1, high=COUNT_MAX)
        elif name == "fallbackcommand":
            target.fallbackcommand = self.quoted(n, val, "fallback command", required_quotes=False)
        elif name == "quiescent":
            target.quiescent = self.yesno(n, val, "quiescent")
        elif name == "emailalert":
            target.emailalert = self.emailalert(n, val)
        elif name == "emailalertfreq":
            if not _NUM.match(val) or float(val) > 10 * 365 * 86400:
                self.err(n, "invalid email alert frequency (0 to 315360000 seconds)")
            target.emailalertfreq = float(val)
        elif name == "emailalertstatus":
            target.emailalertstatus = self.emailstatus(n, val)
        elif name == "cleanstop":
            target.cleanstop = self.yesno(n, val, "cleanstop")
        elif name == "smtp":
            target.smtp = self.smtp(n, val)
        else:
            return False
        return True

    def virtual(self, cfg: Config, lines: list[str], i: int, n: int, af: int, vattr: str):
        vattr = vattr.strip()
        v = Virtual(line=n, af=af, protocol="tcp")
        port_text = None
        if af == 4:
            m = re.match(r"^([0-9A-Za-z._+-]+):([0-9A-Za-z_-]+)$", vattr)
            if m and not re.match(r"^\d+$", vattr):
                v.addr = self.host(n, m.group(1), 4, "virtual server")
                port_text = m.group(2)
            elif re.match(r"^\d{1,12}$", vattr):
                v.fwmark = int(vattr)
                if not 0 < v.fwmark < 2**32:
                    self.err(n, f"invalid firewall mark {vattr}")
                v.protocol, v.service = "fwm", "none"
            elif vattr.startswith("["):
                self.err(n, 'cannot specify an IPv6 address here. please use "virtual6" instead.')
            else:
                self.err(n, "invalid address for virtual server")
        else:
            m = re.match(r"^\[([0-9A-Fa-f:.]+)\]:([0-9A-Za-z_-]+)$", vattr)
            if m:
                v.addr = self.host(n, m.group(1), 6, "virtual server")
                port_text = m.group(2)
            elif re.match(r"^\d{1,12}$", vattr):
                v.fwmark = int(vattr)
                if not 0 < v.fwmark < 2**32:
                    self.err(n, f"invalid firewall mark {vattr}")
                v.protocol, v.service = "fwm", "none"
            else:
                self.err(n, "invalid address for virtual server (virtual6 needs [ADDRESS]:PORT)")
        if port_text is not None and re.match(r"^(53|domain)$", port_text):
            v.protocol = "udp"
        explicit_proto = False
        reals_todo: list[tuple[str, int, bool]] = []
        fallback_todo: tuple[str, int] | None = None
        while i < len(lines):
            raw = lines[i]
            ln = i + 1
            if "\x00" in raw:
                self.err(ln, "binary data (NUL byte) in configuration")
            if re.match(r"^\s*#", raw) or not raw.strip():
                # comments and blank lines: skip (a blank line does not end the
                # section unless what follows is not indented)
                i += 1
                continue
            body = raw.replace("\t", "    ")
            mm = re.match(r"^ {4,}(.+)$", body)
            if not mm:
                if raw[0] in " \t":
                    self.err(ln, f'Unknown command "{raw.strip()}" (virtual section directives '
                                 'must be indented by at least 4 spaces or a tab)')
                break
            i += 1
            rcmd = _strip_comment(mm.group(1)).strip()
            dm = re.match(r"^([A-Za-z_0-9-]+)\s*=\s*(.*)$", rcmd)
            if not dm:
                self.err(ln, f'Unknown command "{rcmd}"')
            name, val = dm.group(1), dm.group(2).strip()
            if self.shared_directive(cfg, v, ln, name, val, "checkinterval"):
                continue
            if name in ("real", "real6"):
                if (af == 4) != (name == "real"):
                    self.err(ln, f'cannot specify "{name}" here.  please use "real{"" if af == 4 else "6"}" instead')
                reals_todo.append((val, ln, False))
            elif name == "request":
                s = self.quoted(ln, val, "request string")
                v.request = s if s.startswith("/") else "/" + s
            elif name == "receive":
                v.receive = self.quoted(ln, val, "receive string")
                _check_regex(self, ln, v.receive)
            elif name == "checktype":
                if _INT.match(val):
                    if not 1 <= int(val) <= COUNT_MAX:
                        self.err(ln, f"checktype={val}: the number of connect checks between negotiate "
                                     f"checks must be from 1 to {COUNT_MAX}")
                    v.num_connects = int(val)
                    v.checktype = "combined"
                elif val in CHECKTYPES:
                    v.checktype = val
                else:
                    self.err(ln, 'checktype must be "connect", "negotiate", "on", "off", "ping", '
                                 '"external", "external-perl" or a positive number')
            elif name == "checkcommand":
                v.checkcommand = self.quoted(ln, val, "check command", required_quotes=False)
                try:
                    words = shlex.split(v.checkcommand)
                except ValueError as e:  # unbalanced quotes: the check could never run
                    self.err(ln, f"invalid check command '{v.checkcommand}': {e}")
                if not words:
                    self.err(ln, "no check command specified")
            elif name == "checkport":
                if not _INT.match(val):
                    self.err(ln, "invalid port")
                if not 0 < int(val) < 65536:
                    self.err(ln, "checkport must be in range 1..65535")
                v.checkport = int(val)
            elif name == "login":
                v.login = self.quoted(ln, val, "login string")
            elif name == "passwd":
                v.passwd = self.quoted(ln, val, "password")
            elif name == "database":
                v.database = self.quoted(ln, val, "database")
            elif name == "secret":
                v.secret = self.quoted(ln, val, "secret")
            elif name == "load":
                self.quoted(ln, val, "string for load testing")
            elif name == "scheduler":
                if not re.match(r"^[a-z]+$", val):
                    self.err(ln, "invalid scheduler, should be only lowercase letters (a-z)")
                if val not in SCHEDULERS:
                    self.err(ln, f"unknown scheduler '{val}' (one of: {', '.join(SCHEDULERS)})")
                v.scheduler = val
            elif name == "schedflags":
                flags = tuple(f for f in re.split(r"\s*,\s*", val) if f)
                for f in flags:
                    if f not in SCHED_FLAGS:
                        self.err(ln, f"invalid scheduler flag '{f}' (one of: {', '.join(SCHED_FLAGS)})")
                v.schedflags = flags
            elif name == "persistent":
                if not _INT.match(val) or int(val) > INT_MAX:
                    self.err(ln, f"invalid persistent timeout (0 to {INT_MAX} seconds)")
                v.persistent = int(val)
            elif name == "netmask":
                if af == 6:
                    if not _INT.match(val) or not 1 <= int(val) <= 128:
                        self.err(ln, "invalid netmask: a prefix length between 1 and 128 is required")
                else:
                    if not re.match(r"^\d+\.\d+\.\d+\.\d+$", val):
                        self.err(ln, "invalid netmask: dotted quad notation is required")
                    try:
                        ipaddress.IPv4Network(f"0.0.0.0/{val}")
                    except ValueError:
                        self.err(ln, f"invalid netmask {val}")
                v.netmask = val
            elif name == "protocol":
                if not re.match(r"^\w+$", val):
                    self.err(ln, "invalid protocol")
                if v.protocol == "fwm":
                    if val != "fwm":
                        self.err(ln, "protocol must be fwm if the virtual service is a fwmark (a number)")
                elif val in ("tcp", "udp"):
                    v.protocol = val
                    explicit_proto = True
                else:
                    self.err(ln, "protocol must be tcp or udp if the virtual service is an address and port")
            elif name == "ops":
                v.ops = self.yesno(ln, val, "ops")
            elif name == "service":
                if val not in SERVICES:
                    self.err(ln, "service must be dns, ftp, http, https, http_proxy, imap, imaps, ldap, "
                                 "ldaps, nntp, mysql, none, oracle, pop, pops, radius, pgsql, simpletcp, "
                                 "sip, smtp or submission")
                if val in UNSUPPORTED_SERVICES:
                    self.err(ln, UNSUPPORTED_SERVICES[val])
                v.service = val
                if val == "ftp" and not v.login:
                    v.login = "anonymous"
                elif val == "sip" and not v.login:
                    v.login = f"ldirectord@{self.hostname}"
                if val == "ftp" and not v.passwd:
                    v.passwd = f"ldirectord@{self.hostname}"
            elif name == "httpmethod":
                if val.upper() not in ("GET", "HEAD"):
                    self.err(ln, "httpmethod must be GET or HEAD")
                v.httpmethod = val.upper()
            elif name == "virtualhost":
                vh = self.strip_quotes(val)
                if not vh or '"' in vh or any(c.isspace() for c in vh):
                    self.err(ln, "invalid virtualhost")
                v.virtualhost = vh
            elif name in ("fallback", "fallback6"):
                if (af == 4) != (name == "fallback"):
                    self.err(ln, f'cannot specify "{name}" here.  please use "fallback{"" if af == 4 else "6"}" instead')
                fallback_todo = (val, ln)
            elif name == "monitorfile":
                v.monitorfile = self.quoted(ln, val, "monitorfile", required_quotes=False)
            elif name == "sslverify":
                v.sslverify = self.yesno(ln, val, "sslverify")
            elif name == "sslcafile":
                v.sslcafile = self.quoted(ln, val, "CA file", required_quotes=False)
            else:
                self.err(ln, f'Unknown command "{rcmd}"')
        # resolution needs the final protocol (as ldirectord does)
        if port_text is not None:
            v.port = self.port(n, port_text, v.protocol, "virtual server")
            if v.service is None:
                v.service = PORT_SERVICE.get(v.port, "none")
                if v.service in UNSUPPORTED_SERVICES:
                    v.service = "none"
        if v.ops and v.protocol != "udp":
            self.err(n, "ops=yes is only valid for udp virtual services")
        if fallback_todo is not None:
            v.fallback = self.fallback(fallback_todo[1], fallback_todo[0], af, v.protocol)
        del explicit_proto
        seen_reals: set[tuple[str, int]] = set()
        for text, ln, _ in reals_todo:
            for r in self.reals(ln, text, af, v.protocol):
                key = (r.addr, v.real_port(r))
                if key in seen_reals:
                    self.err(ln, f"duplicate real server {r.ident} in virtual {v.ident}")
                seen_reals.add(key)
                v.reals.append(r)
        return v, i

    def reals(self, ln: int, text: str, af: int, proto: str) -> list[Real]:
        hostre = r"(\d+\.\d+\.\d+\.\d+|[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])"
        m = re.match(rf"^{hostre}(?:->{hostre})?(?::(\d+|[A-Za-z0-9_-]+))?\s+(.*)$", text.strip())
        if not m:
            self.err(ln, "invalid address for real server (wrong format)")
        ip1, ip2, port_text, flags = m.group(1), m.group(2), m.group(3), m.group(4)
        if af == 4 and ip1.startswith("["):
            self.err(ln, 'cannot specify an IPv6 address here.  please use "real6" instead')
        a1 = self.host(ln, ip1, af, "real server")
        port = self.port(ln, port_text, proto, "real server") if port_text else 0
        fm = re.match(r"^(\w+)(.*)$", flags)
        if not fm or fm.group(1) not in ("gate", "masq", "ipip"):
            self.err(ln, "forward method must be gate, masq or ipip")
        fwd, rest = fm.group(1), fm.group(2)
        weight = 1
        wm = re.match(r"^\s+(\d{1,12})(?!\d)(.*)$", rest)
        if wm:
            weight = int(wm.group(1))
            if weight > 65535:
                self.err(ln, f"invalid weight {weight} for real server (0..65535)")
            rest = wm.group(2)
        request = receive = None
        qm = re.match(r'^\s+"(.*)"[, ]\s*"(.*)"(.*)$', rest)
        if qm:
            request = qm.group(1)
            if not request.startswith("/"):
                request = "/" + request
            receive = qm.group(2)
            _check_regex(self, ln, receive)
            rest = qm.group(3)
        lo = hi = 0
        for tok in rest.split():
            tm = re.match(r"^([lu]):(\d{1,12})$", tok)
            if tm and int(tm.group(2)) > INT_MAX:
                self.err(ln, f"threshold {tok} out of range (0..{INT_MAX})")
            if not tm:
                self.err(ln, f'Invalid real server line, around "{rest.strip()}"')
            if tm.group(1) == "l":
                lo = int(tm.group(2))
            else:
                hi = int(tm.group(2))
        if hi and lo > hi:
            self.err(ln, f"lower threshold l:{lo} is above upper threshold u:{hi}")
        addrs = [a1]
        if ip2 is not None:
            if af == 6:
                self.err(ln, "Address range for IPv6 is not supported yet")
            a2 = self.host(ln, ip2, af, "real server")
            i1, i2 = int(ipaddress.IPv4Address(a1)), int(ipaddress.IPv4Address(a2))
            if i1 > i2:
                self.err(ln, f"Invalid Range: {a1}-{a2}: the first address must not be above the second")
            if i2 - i1 >= 65536:
                self.err(ln, f"Invalid Range: {a1}-{a2}: more than 65536 addresses")
            addrs = [str(ipaddress.IPv4Address(x)) for x in range(i1, i2 + 1)]
        return [Real(a, port, fwd, weight, request, receive, lo, hi, ln) for a in addrs]


def _strip_comment(s: str) -> str:
    """Remove a trailing `# comment` that is outside double quotes."""
    out, q = [], False
    for c in s:
        if c == '"':
            q = not q
        elif c == "#" and not q:
            break
        out.append(c)
    return "".join(out).rstrip()


def _check_regex(p: _Parser, ln: int, rx: str) -> None:
    """The receive expression compiles (checks match it with a time bound:
    halb.director.checks.receive_search), and is not absurdly long."""
    if len(rx) > 4096:
        p.err(ln, f"receive regular expression of {len(rx)} characters (at most 4096)")
    try:
        re.compile(rx)
        import regex

        regex.compile(rx, regex.VERSION0)
    except Exception as e:  # re.error, regex.error, RecursionError, OverflowError...
        p.err(ln, f"invalid receive regular expression '{rx}': {e}")


# what a virtual section takes from the global settings when it does not say
_INHERITED = ("checkcount", "failurecount", "checkinterval", "quiescent", "cleanstop", "emailalert",
              "emailalertfreq", "emailalertstatus", "smtp", "fallbackcommand")


def finalize(cfg: Config) -> Config:
    """Resolve inherited values per virtual, as ldirectord's ld_setup does."""
    for v in cfg.virtuals:
        ct = v.checktimeout
        for cand in (v.negotiatetimeout, cfg.checktimeout, cfg.negotiatetimeout, DEFAULT_CHECKTIMEOUT):
            if ct is None:
                ct = cand
        nt = v.negotiatetimeout
        for cand in (v.checktimeout, cfg.negotiatetimeout, cfg.checktimeout, DEFAULT_NEGOTIATETIMEOUT):
            if nt is None:
                nt = cand
        v.checktimeout, v.negotiatetimeout = ct, nt
        for name in _INHERITED:
            if getattr(v, name) is None:
                setattr(v, name, getattr(cfg, name))
        if v.fallback is None and v.protocol != "fwm":
            g = cfg.fallback6 if v.af == 6 else cfg.fallback
            if g is not None:
                v.fallback = g
        if v.fallback is not None and v.fallback.port is None:
            v.fallback = replace(v.fallback, port=v.port)
    return cfg


def parse_text(text: str, path: str | None = None, resolver: Resolver = default_resolver,
               hostname: str | None = None) -> Config:
    """Parse ldirectord.cf text; raise ConfigError(path, line, message)."""
    import os
    hn = hostname or os.environ.get("HOSTNAME") or os.uname().nodename
    try:
        cfg = _Parser(path, resolver, hn).parse(text)
    except ConfigError:
        raise
    except RecursionError:
        raise ConfigError(path, None, "configuration too deeply nested or too complex") from None
    return finalize(cfg)


def load(path: str | Path, resolver: Resolver = default_resolver) -> Config:
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise ConfigError(str(p), None, f"can not open file: {e.strerror or e}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise ConfigError(str(p), line, "not valid UTF-8 text") from None
    return parse_text(text, str(p), resolver)
