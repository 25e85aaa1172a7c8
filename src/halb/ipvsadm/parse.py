"""ipvsadm's command line, parsed without I/O into a `Command`.

Follows ipvsadm 1.31 (ipvsadm.c, popt): the same options and long names,
short-option clusters (`-Ln`, `-At 10.0.0.1:80`), `-p` with an optional
timeout, the commands-versus-options table and the same error wording
("illegal weight specified", "You need to supply the 'real-server' option for
the 'add-server' command", "Zero port specified for non-persistent
service"...). Differences, on purpose:
- the command may appear anywhere on the line (ipvsadm wants it first);
- with no forwarding option the destination keeps fwd=None: the engine
  picks its own default (proxy: masq, nft: gate);
- options whose meaning depends on order in ipvsadm (-M before/after -t,
  -r without port before -t) are resolved after the whole line is read;
- non-ipip tunnels are refused clearly;
- --start-daemon/--stop-daemon (the connection-sync daemon, halb.sync) take
  one more option, halb's own: --sync-key-file FILE (sign the datagrams).

Host and service names go through a `Resolver` (ipvsadm's gethostbyname /
getservbyname), so the parser stays pure when given `NumericResolver()`.
"""
from __future__ import annotations

import ipaddress
import re
import shlex
import socket
import threading
from dataclasses import dataclass, field

from halb.errors import HalbError, IpvsError, UsageError
from halb.ipvsadm.fmt import ListFormat
from halb.model import (DEFAULT_PERSISTENCE, DEFAULT_SCHEDULER, MAX_WEIGHT, Dest, Op, Service,
                        ServiceKey, Timeouts)

MAX_TIMEOUT = 86400 * 31
INT_MAX = 2147483647
PE_NAMES = ("sip",)

# ---------------------------------------------------------------------------
# option table: (short, long, argument: "none" | "req" | "opt", tag)

_OPTIONS = [
    ("A", "add-service", "none", "A"), ("E", "edit-service", "none", "E"),
    ("D", "delete-service", "none", "D"), ("C", "clear", "none", "C"),
    ("L", "list", "none", "L"), ("l", None, "none", "L"), ("Z", "zero", "none", "Z"),
    ("a", "add-server", "none", "a"), ("e", "edit-server", "none", "e"),
    ("d", "delete-server", "none", "d"), (None, "set", "none", "set"),
    ("h", "help", "none", "h"), ("v", "version", "none", "v"),
    ("R", "restore", "none", "R"), ("S", "save", "none", "S"),
    (None, "start-daemon", "req", "start-daemon"), (None, "stop-daemon", "req", "stop-daemon"),
    ("t", "tcp-service", "req", "t"), ("u", "udp-service", "req", "u"),
    (None, "sctp-service", "req", "sctp"), ("f", "fwmark-service", "req", "f"),
    ("s", "scheduler", "req", "s"), ("p", "persistent", "opt", "p"),
    ("M", "netmask", "req", "M"), ("r", "real-server", "req", "r"),
    ("m", "masquerading", "none", "m"), ("i", "ipip", "none", "i"),
    ("g", "gatewaying", "none", "g"), ("w", "weight", "req", "w"),
    ("x", "u-threshold", "req", "x"), ("y", "l-threshold", "req", "y"),
    ("n", "numeric", "none", "n"), ("c", "connection", "none", "c"),
    (None, "mcast-interface", "req", "mcast-interface"), (None, "syncid", "req", "syncid"),
    (None, "timeout", "none", "timeout"), (None, "daemon", "none", "daemon"),
    (None, "stats", "none", "stats"), (None, "rate", "none", "rate"),
    (None, "thresholds", "none", "thresholds"), (None, "persistent-conn", "none", "persistent-conn"),
    (None, "nosort", "none", "nosort"), (None, "sort", "none", "sort"),
    ("X", "exact", "none", "X"), ("6", "ipv6", "none", "6"), ("o", "ops", "none", "o"),
    (None, "pe", "req", "pe"), ("b", "sched-flags", "req", "b"),
    (None, "mcast-group", "req", "mcast-group"), (None, "mcast-port", "req", "mcast-port"),
    (None, "mcast-ttl", "req", "mcast-ttl"), (None, "sync-maxlen", "req", "sync-maxlen"),
    (None, "tun-info", "none", "tun-info"), (None, "tun-type", "req", "tun-type"),
    (None, "tun-port", "req", "tun-port"), (None, "tun-nocsum", "none", "tun-nocsum"),
    (None, "tun-csum", "none", "tun-csum"), (None, "tun-remcsum", "none", "tun-remcsum"),
    (None, "sync-key-file", "req", "sync-key-file"), (None, "sync-unsigned", "none", "sync-unsigned"),
]
_SHORT = {o[0]: o for o in _OPTIONS if o[0]}
_LONG = {o[1]: o for o in _OPTIONS if o[1]}

# command tag -> ipvsadm's command name (cmdnames[] order matters for the table)
COMMANDS = {"A": "add-service", "E": "edit-service", "D": "delete-service", "C": "flush",
            "L": "list", "a": "add-server", "d": "delete-server", "e": "edit-server",
            "set": "set", "R": "restore", "S": "save", "Z": "zero",
            "h": "help", "v": "version", "start-daemon": "start-daemon",
            "stop-daemon": "stop-daemon"}

# ipvsadm's optnames[], in bit order
OPTNAMES = ["numeric", "connection", "service-address", "scheduler", "persistent", "netmask",
            "real-server", "forwarding-method", "weight", "u-threshold", "l-threshold",
            "mcast-interface", "timeout", "daemon", "stats", "rate", "thresholds",
            "persistent-conn", "nosort", "syncid", "exact", "ops", "pe", "sched-flags",
            "mcast-group", "mcast-port", "mcast-ttl", "sync-maxlen", "tun-info", "tun-type",
            "tun-port", "tun-nocsum", "tun-csum", "tun-remcsum", "sync-key-file", "sync-unsigned"]

# commands_v_options[]: '+' compulsory, 'x' illegal, '1' exclusive, ' ' optional
_TABLE = {
    "add-service":    "xx+   xxxxxxxxxxxxxxx   xxxxxxxxxx",
    "edit-service":   "xx+   xxxxxxxxxxxxxxx   xxxxxxxxxx",
    "delete-service": "xx+" + "x" * 31,
    "flush":          "x" * 34,
    "list":           " 11xxxxxxxxx11       xxxxxxx xxxxx",
    "add-server":     "xx+xxx+    " + "x" * 18 + "     ",
    "delete-server":  "xx+xxx+" + "x" * 27,
    "edit-server":    "xx+xxx+    " + "x" * 18 + "     ",
    "set":            "x" * 34,
    "restore":        "x" * 34,
    "save":           " " + "x" * 33,
    "zero":           "xx " + "x" * 31,
}
_TABLE = {k: v + "xx" for k, v in _TABLE.items()}  # sync-key-file, sync-unsigned: only for the daemon


def _daemon_row(allowed) -> str:
    return "".join(" " if OPTNAMES[j] in allowed else "x" for j in range(len(OPTNAMES)))


_TABLE["start-daemon"] = _daemon_row({"mcast-interface", "syncid", "mcast-group", "mcast-port", "mcast-ttl",
                                      "sync-maxlen", "sync-key-file", "sync-unsigned"})
_TABLE["stop-daemon"] = _daemon_row({"syncid"})
for _row in _TABLE.values():
    assert len(_row) == len(OPTNAMES)

# option tag -> index in OPTNAMES
_OPT_OF_TAG = {
    "n": 0, "c": 1, "t": 2, "u": 2, "sctp": 2, "f": 2, "s": 3, "p": 4, "M": 5, "r": 6,
    "m": 7, "i": 7, "g": 7, "w": 8, "x": 9, "y": 10, "mcast-interface": 11, "timeout": 12,
    "daemon": 13, "stats": 14, "rate": 15, "thresholds": 16, "persistent-conn": 17,
    "nosort": 18, "syncid": 19, "X": 20, "o": 21, "pe": 22, "b": 23, "mcast-group": 24,
    "mcast-port": 25, "mcast-ttl": 26, "sync-maxlen": 27, "tun-info": 28, "tun-type": 29,
    "tun-port": 30, "tun-nocsum": 31, "tun-csum": 32, "tun-remcsum": 33, "sync-key-file": 34,
    "sync-unsigned": 35,
}

EDIT_COMMANDS = ("add-service", "edit-service", "delete-service", "flush", "add-server",
                 "delete-server", "edit-server", "set", "zero")


# ---------------------------------------------------------------------------
# name look-ups


class Resolver:
    """ipvsadm's host_to_addr (IPv4, gethostbyname) and service_to_port
    (getservbyname), each bounded in time so a dead DNS cannot hang the CLI."""

    timeout = 3.0

    def _bounded(self, fn, *args):
        box: list = []

        def run():
            try:
                box.append(fn(*args))
            except (OSError, UnicodeError, ValueError):
                pass

        t = threading.Thread(target=run, daemon=True)
        t.start()
        t.join(self.timeout)
        return box[0] if box else None

    def host_to_addr(self, name: str) -> str | None:
        return self._bounded(socket.gethostbyname, name)

    def service_to_port(self, name: str, proto: str) -> int | None:
        if proto not in ("tcp", "udp"):
            return None
        return self._bounded(socket.getservbyname, name, proto)


class NumericResolver(Resolver):
    """No look-ups: only numeric addresses and ports are understood."""

    def host_to_addr(self, name):
        return None

    def service_to_port(self, name, proto):
        return None


# ---------------------------------------------------------------------------
# small parsers with ipvsadm's rules

_NUM = re.compile(r"\s*[+-]?[0-9]+")


def string_to_number(s: str | None, lo: int, hi: int) -> int | None:
    """strtol(s, 10) that must consume the whole string, within [lo, hi]."""
    if s is None or not _NUM.fullmatch(s):
        return None
    t = s.strip()
    digits = t.lstrip("+-").lstrip("0") or "0"
    if len(digits) > 20:  # out of every range (and int() refuses 4,300+ digits)
        return None
    n = -int(digits) if t.startswith("-") else int(digits)
    return n if lo <= n <= hi else None


def inet_aton(s: str) -> str | None:
    if not s or s != s.strip():
        return None
    try:
        return socket.inet_ntoa(socket.inet_aton(s))
    except (OSError, ValueError):
        return None


def _inet6(s: str) -> str | None:
    try:
        socket.inet_pton(socket.AF_INET6, s)
    except (OSError, ValueError):
        return None
    return str(ipaddress.IPv6Address(s.split("%")[0]))


@dataclass
class Addr:
    af: int  # 4 or 6
    addr: str
    port: int | None  # None: not given


def parse_service(buf: str | None, proto: str, resolver: Resolver) -> Addr | None:
    """host[:port] | [v6]:port | v6 -> Addr, or None (ipvsadm's SERVICE_NONE)."""
    if buf is None or buf == "" or all("0" <= ch <= "9" for ch in buf):
        return None
    portstr = None
    if buf.startswith("["):
        end = buf.find("]", 1)
        if end < 0 or buf[end + 1:end + 2] != ":":
            return None
        portstr = buf[end + 2:]
        buf = buf[1:end]
    v6 = _inet6(buf)
    if v6 is not None:
        af, addr = 6, v6
    else:
        if portstr is None and ":" in buf:
            buf, portstr = buf.rsplit(":", 1)
        addr = inet_aton(buf) or (resolver.host_to_addr(buf) if buf else None)
        if addr is None:
            return None
        af = 4
    port = None
    if portstr is not None:
        port = string_to_number(portstr, 0, 65535)
        if port is None and portstr:
            port = resolver.service_to_port(portstr, proto)
        if port is None:
            return None
    return Addr(af, addr, port)


def parse_netmask(buf: str, resolver: Resolver) -> str | None:
    mask = inet_aton(buf) or resolver.host_to_addr(buf)
    if mask is None:
        return None
    bits = int(ipaddress.IPv4Address(mask))
    inv = (~bits) & 0xFFFFFFFF
    if inv & (inv + 1):  # not a contiguous netmask
        return None
    return mask


def parse_timeout(buf: str | None, lo: int, hi: int) -> int:
    if buf is None:
        return DEFAULT_PERSISTENCE
    n = string_to_number(buf, lo, hi)
    if n is None:
        raise UsageError(f"invalid timeout value `{buf}' specified")
    return n


def parse_fwmark(buf: str) -> int:
    n = string_to_number(buf, 1, 2**32 - 1)
    if n is None or buf != buf.strip():
        raise UsageError(f"invalid fwmark value `{buf}' specified")
    return n


def parse_sched_flags(sched: str, arg: str) -> tuple[str, ...]:
    flags = []
    tokens = [t for t in arg.split(",") if t]
    if not tokens:
        raise UsageError(f"invalid scheduler flag `{arg}'")
    for flag in tokens:
        if flag in ("flag-1", "flag-2", "flag-3"):
            raise UsageError(f"scheduler flag `{flag}' is not supported by halb "
                             "(only sh-fallback, sh-port, mh-fallback, mh-port)")
        if flag in ("sh-fallback", "sh-port", "mh-fallback", "mh-port"):
            if sched != flag[:2]:
                raise UsageError(f"incompatible scheduler flag `{flag}'")
            flags.append(flag)
        else:
            raise UsageError(f"invalid scheduler flag `{flag}'")
    return tuple(flags)


# ---------------------------------------------------------------------------
# tokenising (popt-like)


def _next_word(argv: list[str], i: int, kind: str, spelling: str) -> tuple[str | None, int]:
    """The argument of an option with none attached, and the index after it:
    argv[i] when required ("req"); when optional, argv[i] unless it is an
    option (then None)."""
    if kind == "req":
        if i >= len(argv):
            raise UsageError(f"{spelling}: missing argument")
        return argv[i], i + 1
    if i < len(argv) and not argv[i].startswith("-"):
        return argv[i], i + 1
    return None, i


def _tokens(argv: list[str]):
    """Yield (tag, value, spelling) for options and ("arg", value, value)
    for positional arguments."""
    i = 0
    n = len(argv)
    while i < n:
        a = argv[i]
        i += 1
        if a == "--":
            for rest in argv[i:]:
                yield ("arg", rest, rest)
            return
        if a.startswith("--"):
            name, eq, val = a[2:].partition("=")
            spec = _LONG.get(name)
            if spec is None:
                raise UsageError(f"{a}: unknown option")
            kind, tag, spelling = spec[2], spec[3], "--" + name
            if kind == "none":
                if eq:
                    raise UsageError(f"{spelling}: option does not take an argument")
                yield (tag, None, spelling)
            elif eq:
                yield (tag, val, spelling)
            else:
                val, i = _next_word(argv, i, kind, spelling)
                yield (tag, val, spelling)
        elif a.startswith("-") and len(a) > 1:
            j = 1
            while j < len(a):
                ch = a[j]
                spec = _SHORT.get(ch)
                if spec is None:
                    raise UsageError(f"-{ch}: unknown option")
                kind, tag, spelling = spec[2], spec[3], "-" + ch
                if kind == "none":
                    yield (tag, None, spelling)
                    j += 1
                    continue
                rest = a[j + 1:]
                if rest:
                    yield (tag, rest, spelling)
                else:
                    val, i = _next_word(argv, i, kind, spelling)
                    yield (tag, val, spelling)
                break
        else:
            yield ("arg", a, a)


# ---------------------------------------------------------------------------
# the command


@dataclass
class Command:
    cmd: str  # ipvsadm command name: add-service ... list, save, restore, help, version
    options: set[str] = field(default_factory=set)  # OPTNAMES given
    key: ServiceKey | None = None
    service: Service | None = None  # add/edit-service
    dest: Dest | None = None  # add/edit/delete-server
    timeouts: Timeouts | None = None  # set
    daemon: dict | None = None  # start-daemon / stop-daemon: role and options

    @property
    def fmt(self) -> ListFormat:
        """The listing options given (-n, --stats, --rate, --nosort...)."""
        return ListFormat.from_options(self.options)

    @property
    def list_kind(self) -> str:
        """For `list`: conn | service | timeout | daemon | all."""
        if "connection" in self.options:
            return "conn"
        if "service-address" in self.options:
            return "service"
        if "timeout" in self.options:
            return "timeout"
        if "daemon" in self.options:
            return "daemon"
        return "all"

    def ops(self) -> list[Op]:
        c = self.cmd
        if c == "add-service":
            return [Op("add-service", service=self.service)]
        if c == "edit-service":
            return [Op("edit-service", service=self.service)]
        if c == "delete-service":
            return [Op("del-service", key=self.key)]
        if c == "add-server":
            return [Op("add-dest", key=self.key, dest=self.dest)]
        if c == "edit-server":
            return [Op("edit-dest", key=self.key, dest=self.dest)]
        if c == "delete-server":
            return [Op("del-dest", key=self.key, dest=self.dest)]
        if c == "flush":
            return [Op("clear")]
        if c == "zero":
            return [Op("zero", key=self.key)]
        if c == "set":
            return [Op("set-timeouts", timeouts=self.timeouts)]
        return []


def _generic_opt_check(cmd: str, given: set[int]) -> None:
    row = _TABLE[cmd]
    last = None
    for j, rule in enumerate(row):
        if j not in given:
            if rule == "+":
                raise UsageError(f"You need to supply the '{OPTNAMES[j]}' option for the '{cmd}' command")
            continue
        if rule == "x":
            raise UsageError(f"Illegal '{OPTNAMES[j]}' option with the '{cmd}' command")
        if rule == "1":
            if last is None:
                last = j
                continue
            raise UsageError(f"The option '{OPTNAMES[j]}' conflicts with the "
                             f"'{OPTNAMES[last]}' option in the '{cmd}' command")


def parse_argv(argv: list[str], resolver: Resolver | None = None) -> Command:
    """Parse one ipvsadm command line (without the program name). An error
    quoting a word with control characters (a newline...) shows them escaped,
    so that it stays one line."""
    try:
        return _parse_argv(argv, resolver)
    except HalbError as e:
        msg = str(e)
        if msg.isprintable():
            raise
        raise type(e)("".join(c if c.isprintable() else repr(c)[1:-1] for c in msg)) from None


def _parse_argv(argv: list[str], resolver: Resolver | None) -> Command:
    resolver = resolver or Resolver()
    if not argv:
        return Command("list")
    cmd = None
    given: set[int] = set()
    vals: dict[str, str | None] = {}
    positional: list[str] = []
    proto = None  # tcp | udp | fwm
    fwd = None
    ipv6_flag = False
    role = None

    for tag, val, spelling in _tokens(argv):
        if tag == "arg":
            positional.append(val)
            continue
        if tag in COMMANDS:
            if cmd is not None:
                raise UsageError("multiple commands specified")
            cmd = COMMANDS[tag]
            if tag == "start-daemon" or tag == "stop-daemon":
                if val not in ("master", "backup"):
                    raise UsageError("illegal start-daemon parameter specified" if tag == "start-daemon"
                                     else "illegal start_daemon specified")
                role = val
            continue
        if tag == "sort":
            continue  # a no-op kept for compatibility, as in ipvsadm
        if tag == "6":
            ipv6_flag = True
            continue
        idx = _OPT_OF_TAG[tag]
        if idx in given:
            raise UsageError(f"multiple '{OPTNAMES[idx]}' options specified")
        given.add(idx)
        if tag in ("t", "u", "sctp", "f"):
            proto = {"t": "tcp", "u": "udp", "sctp": "sctp", "f": "fwm"}[tag]
            vals["svc"] = val
        elif tag in ("m", "i", "g"):
            fwd = {"m": "masq", "i": "ipip", "g": "gate"}[tag]
        else:
            vals[tag] = val
        # values ipvsadm checks as it reads them
        if tag == "w" and string_to_number(val, 0, MAX_WEIGHT) is None:
            raise UsageError("illegal weight specified")
        if tag == "x" and string_to_number(val, 0, INT_MAX) is None:
            raise UsageError("illegal u_threshold specified")
        if tag == "y" and string_to_number(val, 0, INT_MAX) is None:
            raise UsageError("illegal l_threshold specified")
        if tag == "p":
            parse_timeout(val, 1, MAX_TIMEOUT)
        if tag == "f":
            parse_fwmark(val)
        if tag == "tun-type" and val not in ("ipip", "gue", "gre"):
            raise UsageError("illegal tunnel type specified")
        if tag == "tun-port" and string_to_number(val, 1, 65535) is None:
            raise UsageError("illegal tunnel port specified")
        if tag == "syncid" and string_to_number(val, 0, 255) is None:
            raise UsageError("illegal syncid specified")
        if tag == "mcast-group" and not _is_mcast4(val):
            raise UsageError(f"invalid IPv4 mcast-group `{val}' (halb's sync daemon takes an IPv4 "
                             f"multicast address, 224.0.0.0/4)")
        if tag == "mcast-port" and string_to_number(val, 1, 65535) is None:
            raise UsageError("illegal mcast-port specified")
        if tag == "mcast-ttl" and string_to_number(val, 1, 255) is None:
            raise UsageError("illegal mcast-ttl specified")
        if tag == "sync-maxlen" and string_to_number(val, 1, 65535 - 20 - 8) is None:
            raise UsageError("illegal sync-maxlen specified")
        if tag == "mcast-interface" and not _ifname_ok(val):
            raise UsageError(f"illegal mcast-interface `{val}' (an interface name, at most 15 characters)")
        if tag == "sync-key-file" and not val:
            raise UsageError("--sync-key-file needs a file name")

    if cmd is None:
        raise UsageError("no command given (one of -A -E -D -C -R -S -a -e -d -L -Z --set); "
                         "Try `halb ipvsadm -h' for more information.")
    if cmd in ("help", "version"):
        return Command(cmd)
    if cmd in ("start-daemon", "stop-daemon"):
        if positional:
            raise UsageError(f"unexpected argument {positional[0]}")
        _generic_opt_check(cmd, given)
        return Command(cmd, options={OPTNAMES[j] for j in given}, daemon=_daemon_args(role, vals))

    if cmd == "set":
        if len(positional) < 3:
            raise UsageError("--set option requires 3 timeout values")
        t = [parse_timeout(v, 0, MAX_TIMEOUT) for v in positional[:3]]
        positional = positional[3:]
        timeouts = Timeouts(*t)
    else:
        timeouts = None
    if positional:
        raise UsageError(f"unexpected argument {positional[0]}")

    # -- the virtual service --------------------------------------------------
    key = None
    svc_af = 4
    svc_port = 0
    if proto == "sctp":
        raise UsageError("--sctp-service: SCTP virtual services are not supported by halb")
    if ipv6_flag and proto != "fwm":
        raise UsageError("-6 used before -f")
    if proto == "fwm":
        svc_af = 6 if ipv6_flag else 4
        key = ServiceKey("fwm", fwmark=parse_fwmark(vals["svc"]), af=svc_af)
    elif proto is not None:
        a = parse_service(vals["svc"], proto, resolver)
        if a is None:
            raise UsageError("illegal virtual server address[:port] specified")
        svc_af, svc_port = a.af, a.port or 0
        key = ServiceKey(proto, a.addr, svc_port)

    sched = vals.get("s")
    if sched is not None and not sched:
        raise UsageError("illegal scheduler specified")
    netmask = None
    if "M" in vals:
        if svc_af == 6:
            m = string_to_number(vals["M"], 1, 128)
            if m is None:
                raise UsageError("illegal ipv6 netmask specified")
            netmask = str(m)
        else:
            netmask = parse_netmask(vals["M"], resolver)
            if netmask is None:
                raise UsageError("illegal virtual server persistent mask specified")
    flags: tuple[str, ...] = ()
    if "b" in vals:
        flags = parse_sched_flags(sched or DEFAULT_SCHEDULER, vals["b"])

    # -- the real server ------------------------------------------------------
    dest_addr = None
    if "r" in vals:
        a = parse_service(vals["r"], proto if proto in ("tcp", "udp") else "tcp", resolver)
        if a is None:
            raise UsageError("illegal real server address[:port] specified")
        dest_addr = a

    _generic_opt_check(cmd, given)

    out = Command(cmd, options={OPTNAMES[j] for j in given}, key=key, timeouts=timeouts)

    if cmd in ("add-service", "edit-service"):
        persistent = "p" in vals
        if proto != "fwm" and svc_port == 0 and not persistent:
            raise UsageError("Zero port specified for non-persistent service")
        if "o" in vals and proto != "fwm" and proto != "udp":
            raise UsageError("One-Packet Scheduling is only for UDP virtual services")
        pe = vals.get("pe") or ""
        if pe and pe not in PE_NAMES:
            raise IpvsError("Scheduler or persistence engine not found")
        if netmask is None:
            netmask = "128" if svc_af == 6 else "255.255.255.255"
        out.service = Service(key, sched or DEFAULT_SCHEDULER, persistent=persistent,
                              timeout=parse_timeout(vals["p"], 1, MAX_TIMEOUT) if persistent else 0,
                              netmask=netmask, flags=flags, ops="o" in vals, pe=pe)

    if cmd in ("add-server", "edit-server", "delete-server"):
        port = dest_addr.port if dest_addr.port is not None else svc_port
        if cmd != "delete-server":
            if proto != "fwm" and fwd in ("gate", "ipip"):
                port = svc_port  # DR and tunnels cannot change the port
            if dest_addr.af != svc_af and fwd != "ipip":
                raise UsageError("Different address family is allowed only for tunneling servers")
            tun = {"tun-type", "tun-port", "tun-nocsum", "tun-csum", "tun-remcsum"} & set(vals)
            if tun and fwd != "ipip":
                raise UsageError("Tunnel options conflict with forward method")
            ttype = vals.get("tun-type") or "ipip"
            if ttype != "ipip":
                raise UsageError(f"tunnel type '{ttype}' is not supported by halb (only ipip)")
            for opt in ("tun-port", "tun-nocsum", "tun-csum", "tun-remcsum"):
                if opt in vals:
                    raise UsageError(f"Illegal '{opt}' option with the 'ipip' tunnel type")
            out.dest = Dest(dest_addr.addr, port, fwd,
                            weight=int(vals["w"]) if "w" in vals else 1,
                            u_threshold=int(vals["x"]) if "x" in vals else 0,
                            l_threshold=int(vals["y"]) if "y" in vals else 0)
        else:
            out.dest = Dest(dest_addr.addr, port)

    if cmd == "list":
        conflict_a = given & {1, 12, 13}
        if (conflict_a and given & {14, 15, 16}) or (given & {12, 13} and 17 in given):
            raise UsageError("options conflicts in the list command")
    return out


def _is_mcast4(s: str | None) -> bool:
    a = inet_aton(s or "")
    return a is not None and a == s and ipaddress.IPv4Address(a).is_multicast


def _ifname_ok(s: str | None) -> bool:
    return bool(s) and len(s) < 16 and "/" not in s and not any(c.isspace() for c in s) and s not in (".", "..")


DEFAULT_MCAST_IFN = "eth0"   # ipvsadm's default
SYNC_MAXLEN_MIN = 32 + 36 + 16  # header, one halb sync entry, signature (halb.sync.codec)


def _daemon_args(role: str, vals: dict) -> dict:
    """--start-daemon/--stop-daemon's role and options, with IPVS's defaults."""
    maxlen = int(vals["sync-maxlen"]) if vals.get("sync-maxlen") else 1472
    if maxlen < SYNC_MAXLEN_MIN:
        raise UsageError(f"illegal sync-maxlen specified (halb needs at least {SYNC_MAXLEN_MIN} bytes: "
                         f"one entry and its signature)")
    return {"role": role, "ifname": vals.get("mcast-interface") or DEFAULT_MCAST_IFN,
            "syncid": int(vals.get("syncid") or 0), "group": vals.get("mcast-group") or "224.0.0.81",
            "port": int(vals.get("mcast-port") or 8848), "ttl": int(vals.get("mcast-ttl") or 1),
            "maxlen": maxlen, "key_file": vals.get("sync-key-file") or "",
            "unsigned": "sync-unsigned" in vals}


# ---------------------------------------------------------------------------
# -R: every line parsed first, then one batch


@dataclass
class RestorePlan:
    ops: list[Op]
    lines: list[int]  # line number of each op

    def line_of(self, index: int | None) -> int | None:
        if index is None or not (0 <= index < len(self.lines)):
            return None
        return self.lines[index]


def parse_restore(text: str, resolver: Resolver | None = None) -> RestorePlan:
    """Parse ipvsadm rule lines (as -S writes them; a leading "ipvsadm" word,
    blank lines and # comments allowed). Raises the first problem as
    "line N: ..." before anything is applied."""
    resolver = resolver or Resolver()
    ops: list[Op] = []
    lines: list[int] = []
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            words = shlex.split(line, comments=True)
        except ValueError as e:
            raise UsageError(f"line {n}: {e}") from None
        if words and (words[0] == "ipvsadm" or words[0].endswith("/ipvsadm")):
            words = words[1:]
        if not words:
            continue
        try:
            cmd = parse_argv(words, resolver)
            if cmd.cmd not in EDIT_COMMANDS:
                raise UsageError(f"only table edits may appear in restore input, not '{cmd.cmd}'")
        except HalbError as e:
            raise type(e)(f"line {n}: {e}") from None
        for op in cmd.ops():
            ops.append(op)
            lines.append(n)
    return RestorePlan(ops, lines)
