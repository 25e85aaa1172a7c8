"""Parsers for heartbeat's three files: ha.cf, authkeys, haresources.

Pure functions over text (plus a thin `load_*` that reads a file and, for
authkeys, checks its mode). Every problem is a ConfigError naming the file
and line; things halb deliberately does not do (serial links...) are
warnings with the same location, kept in the result for the daemon to log.

ha.cf is read in order, as heartbeat reads it: a link line (bcast, ucast,
mcast) uses the udpport in force at that point, so `udpport` must come
before the links it is meant for (a later one is a warning).
"""
from __future__ import annotations

import ipaddress
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

from halb.errors import ConfigError

DEFAULT_UDPPORT = 694

def _isnum(s: str) -> bool:
    # at most 9 digits: every whole number of these files is small, and int()
    # of 4,300+ digits raises (an internal error instead of file:line)
    return bool(re.fullmatch(r"[0-9]{1,9}", s))


_TRUE = {"true", "on", "yes", "y", "1"}
_FALSE = {"false", "off", "no", "n", "0"}


def parse_bool(value: str, path, line, what: str) -> bool:
    v = value.strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise ConfigError(path, line, f"{what}: '{value}' is not a boolean (use on/off, yes/no, true/false, y/n, 1/0)")


_TIME_RE = re.compile(r"^([0-9]{1,12}(?:\.[0-9]{0,9})?|\.[0-9]{1,9})(ms|us|s)?$")
TIME_MIN, TIME_MAX = 0.001, 7 * 86400.0   # any time of ha.cf (0 where a directive allows it)


def parse_time(value: str, path, line, what: str) -> float:
    """heartbeat's time syntax: seconds (`2`, `0.5`, `2s`), or `Nms` / `Nus`."""
    m = _TIME_RE.match(value.strip().lower())
    if not m:
        raise ConfigError(path, line, f"{what}: '{value}' is not a time (seconds, or e.g. 500ms)")
    n = float(m.group(1))
    unit = m.group(2) or "s"
    t = n / 1000.0 if unit == "ms" else n / 1e6 if unit == "us" else n
    if t != 0 and not TIME_MIN <= t <= TIME_MAX:
        raise ConfigError(path, line, f"{what}: '{value}' is out of range (1ms to 7 days)")
    return t


def _port(value: str, path, line, what: str) -> int:
    if not _isnum(value) or not 0 < int(value) < 65536:
        raise ConfigError(path, line, f"{what}: '{value}' is not a UDP port (1-65535)")
    return int(value)


def _ipv4(value: str, path, line, what: str) -> str:
    try:
        return str(ipaddress.IPv4Address(value))
    except ValueError:
        raise ConfigError(path, line, f"{what}: '{value}' is not an IPv4 address") from None


_IFNAME_RE = re.compile(r"^[A-Za-z0-9_.:@-]{1,15}$")


def _ifname(value: str, path, line, what: str) -> str:
    if not _IFNAME_RE.match(value):
        raise ConfigError(path, line, f"{what}: '{value}' is not an interface name")
    return value


# ---------------------------------------------------------------- ha.cf

@dataclass(frozen=True)
class Link:
    kind: str            # bcast | mcast | ucast
    dev: str
    port: int
    addr: str | None = None   # mcast group or ucast peer
    ttl: int = 1
    loop: bool = False
    line: int = 0

    @property
    def name(self) -> str:
        return self.dev


@dataclass(frozen=True)
class Stonith:
    hosts: str            # "*" or a node name: which node(s) this device may run from
    kind: str             # external | labpower | ...
    args: tuple = ()
    line: int = 0


@dataclass
class HaConfig:
    path: str = "ha.cf"
    keepalive: float = 2.0
    deadtime: float = 30.0
    warntime: float | None = None
    initdead: float | None = None
    udpport: int = DEFAULT_UDPPORT
    links: list = field(default_factory=list)
    nodes: list = field(default_factory=list)
    auto_failback: str = "legacy"
    ping: list = field(default_factory=list)          # ping node addresses
    ping_groups: dict = field(default_factory=dict)    # name -> [addresses]
    deadping: float | None = None
    respawn: list = field(default_factory=list)       # (user, command)
    stonith: list = field(default_factory=list)       # Stonith
    realtime: bool = True
    beat_lanes: int | None = None   # halb_beat_lanes: None = auto (see BeatLanes.wanted)
    logfile: str | None = None
    debugfile: str | None = None
    logfacility: str | None = None
    use_logd: bool = False
    allow_crc: bool = False                           # halb: accept crc on UDP
    watchdog: str | None = None                       # watchdog DEVICE (/dev/watchdog)
    monitor_interval: float = 5.0                     # halb_monitor_interval (0: resources not monitored)
    agent_timeout: float = 120.0                      # halb_agent_timeout: one agent operation at most
    warnings: list = field(default_factory=list)      # "file:line: text"

    @property
    def effective_warntime(self) -> float:
        return self.warntime if self.warntime is not None else min(self.deadtime * 0.75, self.deadtime)

    @property
    def effective_initdead(self) -> float:
        return self.initdead if self.initdead is not None else self.deadtime

    @property
    def effective_deadping(self) -> float:
        return self.deadping if self.deadping is not None else self.deadtime

    @property
    def ping_targets(self) -> dict:
        """Every ping "node": name -> list of addresses (one for a plain ping node)."""
        out = {a: [a] for a in self.ping}
        out.update(self.ping_groups)
        return out

    def check_node(self, me: str) -> None:
        """heartbeat refuses to run on a node that is not in its own config."""
        if me not in self.nodes:
            raise ConfigError(self.path, None,
                              f"this node's name '{me}' (uname -n, or --node) is not one of the nodes "
                              f"declared with 'node' ({', '.join(self.nodes) or 'none'})")


# Directives heartbeat knows but halb does not implement: name -> (is_error, why)
_UNSUPPORTED = {
    "serial": (False, "halb ignores serial links; use bcast, mcast or ucast"),
    "baud": (False, "halb ignores serial links (baud applies to them only)"),
    "crm": (True, "halb has no CRM (heartbeat v2/pacemaker); use haresources"),
    "pacemaker": (True, "halb has no CRM (pacemaker); use haresources"),
    "autojoin": (True, "halb does not support autojoin; list every node with 'node'"),
    "hopfudge": (False, "hopfudge applies to serial rings, which halb ignores"),
    "compression": (False, "halb does not compress packets; directive ignored"),
    "compression_threshold": (False, "halb does not compress packets; directive ignored"),
    "traditional_compression": (False, "halb does not compress packets; directive ignored"),
    "coredumps": (False, "directive ignored by halb"),
    "apiauth": (False, "halb has no client API library; directive ignored"),
    "msgfmt": (False, "halb has its own packet format; directive ignored"),
    "conn_logd_time": (False, "halb does not use ha_logd; directive ignored"),
    "max_rexmit_delay": (False, "halb does not retransmit; directive ignored"),
    "uuidfrom": (False, "halb identifies nodes by name; directive ignored"),
    "memreserve": (False, "directive ignored by halb"),
    "debug": (False, "use 'debugfile' (and halb's --debug); directive ignored"),
    "record_config_changes": (False, "directive ignored by halb"),
    "record_pengine_inputs": (False, "directive ignored by halb"),
    "enable_config_writes": (False, "directive ignored by halb"),
    "gshutdown": (False, "directive ignored by halb"),
}

_KNOWN = {"keepalive", "deadtime", "warntime", "initdead", "udpport", "bcast", "mcast", "ucast",
          "node", "auto_failback", "nice_failback", "ping", "ping_group", "deadping", "respawn",
          "stonith_host", "stonith", "realtime", "logfile", "debugfile", "logfacility", "use_logd",
          "halb_allow_crc", "halb_beat_lanes", "watchdog", "halb_monitor_interval", "halb_agent_timeout"}

_AUTO_FAILBACK = {"on": "on", "off": "off", "legacy": "legacy"}


def _words(line: str) -> list[str]:
    return line.split()


def _strip_comment(line: str) -> str:
    i = line.find("#")
    return line if i < 0 else line[:i]


def parse_hacf(text: str, path="ha.cf") -> HaConfig:
    cfg = HaConfig(path=str(path))
    port_used_at = None   # line of the first link that took the port in force
    seen_nodes: dict[str, int] = {}

    def warn(ln, msg):
        cfg.warnings.append(f"{path}:{ln}: {msg}")

    for ln, raw in enumerate(text.splitlines(), 1):
        words = _words(_strip_comment(raw))
        if not words:
            continue
        key = words[0].lower()
        args = words[1:]

        if key in _UNSUPPORTED:
            is_err, why = _UNSUPPORTED[key]
            if is_err:
                raise ConfigError(path, ln, f"'{words[0]}' is not supported: {why}")
            warn(ln, f"'{words[0]}': {why}")
            continue
        if key not in _KNOWN:
            raise ConfigError(path, ln, f"unknown directive '{words[0]}'")

        def need(n_min, n_max=None, usage=""):
            n_max = n_min if n_max is None else n_max
            if not (n_min <= len(args) <= (n_max if n_max >= 0 else 1 << 30)):
                raise ConfigError(path, ln, f"'{key}' expects {usage}")

        if key in ("keepalive", "deadtime", "warntime", "initdead", "deadping"):
            need(1, 1, "one time value (seconds, or e.g. 500ms)")
            t = parse_time(args[0], path, ln, key)
            if t <= 0:
                raise ConfigError(path, ln, f"{key}: must be greater than zero")
            setattr(cfg, key, t)
        elif key == "udpport":
            need(1, 1, "a port number")
            cfg.udpport = _port(args[0], path, ln, "udpport")
            if port_used_at is not None:
                warn(ln, f"udpport comes after the link on line {port_used_at[0]}, which keeps "
                         f"port {port_used_at[1]}; put udpport before the links")
        elif key == "bcast":
            need(1, -1, "one or more interface names")
            for dev in args:
                cfg.links.append(Link("bcast", _ifname(dev, path, ln, "bcast"), cfg.udpport, line=ln))
            port_used_at = port_used_at or (ln, cfg.udpport)
        elif key == "ucast":
            need(2, 2, "an interface and a peer address: ucast DEV PEER-IP")
            cfg.links.append(Link("ucast", _ifname(args[0], path, ln, "ucast"), cfg.udpport,
                                  addr=_ipv4(args[1], path, ln, "ucast peer"), line=ln))
            port_used_at = port_used_at or (ln, cfg.udpport)
        elif key == "mcast":
            need(5, 5, "mcast DEV GROUP PORT TTL LOOP (e.g. mcast eth0 225.0.0.7 694 1 0)")
            dev = _ifname(args[0], path, ln, "mcast")
            group = _ipv4(args[1], path, ln, "mcast group")
            if not ipaddress.IPv4Address(group).is_multicast:
                raise ConfigError(path, ln, f"mcast group: '{group}' is not a multicast address (224.0.0.0/4)")
            port = _port(args[2], path, ln, "mcast port")
            if not _isnum(args[3]) or not 1 <= int(args[3]) <= 255:
                raise ConfigError(path, ln, f"mcast ttl: '{args[3]}' is not 1-255")
            if args[4] not in ("0", "1"):
                raise ConfigError(path, ln, f"mcast loop: '{args[4]}' must be 0 or 1")
            cfg.links.append(Link("mcast", dev, port, addr=group, ttl=int(args[3]),
                                  loop=args[4] == "1", line=ln))
        elif key == "node":
            need(1, -1, "one or more node names")
            for n in args:
                if n in seen_nodes:
                    raise ConfigError(path, ln, f"node '{n}' already declared on line {seen_nodes[n]}")
                seen_nodes[n] = ln
                cfg.nodes.append(n)
        elif key == "auto_failback":
            need(1, 1, "on, off or legacy")
            v = args[0].lower()
            if v in _AUTO_FAILBACK:
                cfg.auto_failback = v
            else:
                try:
                    cfg.auto_failback = "on" if parse_bool(v, path, ln, key) else "off"
                except ConfigError:
                    raise ConfigError(path, ln, f"auto_failback: '{args[0]}' must be on, off or legacy") from None
        elif key == "nice_failback":
            need(1, 1, "on or off")
            # old spelling: nice_failback on == auto_failback off
            cfg.auto_failback = "off" if parse_bool(args[0], path, ln, key) else "on"
            warn(ln, "nice_failback is obsolete; read as auto_failback "
                     f"{cfg.auto_failback}")
        elif key == "ping":
            need(1, -1, "one or more ping node addresses")
            for a in args:
                a = _ipv4(a, path, ln, "ping node")
                if a in cfg.ping:
                    raise ConfigError(path, ln, f"ping node {a} already declared")
                cfg.ping.append(a)
        elif key == "ping_group":
            need(2, -1, "a group name and one or more addresses")
            name = args[0]
            if name in cfg.ping_groups:
                raise ConfigError(path, ln, f"ping_group '{name}' already declared")
            cfg.ping_groups[name] = [_ipv4(a, path, ln, "ping_group member") for a in args[1:]]
        elif key == "respawn":
            need(2, -1, "a user and a command: respawn USER /path/cmd [args]")
            cfg.respawn.append((args[0], args[1:]))
        elif key == "stonith_host":
            need(2, -1, "stonith_host HOST|* TYPE [params...]")
            cfg.stonith.append(Stonith(args[0], args[1], tuple(args[2:]), ln))
        elif key == "stonith":
            need(2, 2, "stonith TYPE CONFIG-FILE")
            cfg.stonith.append(Stonith("*", args[0], (args[1],), ln))
        elif key == "realtime":
            need(1, 1, "on or off")
            cfg.realtime = parse_bool(args[0], path, ln, key)
        elif key == "use_logd":
            need(1, 1, "on or off")
            cfg.use_logd = parse_bool(args[0], path, ln, key)
            if cfg.use_logd:
                warn(ln, "use_logd: halb logs itself (logfile/debugfile/logfacility); no ha_logd")
        elif key == "halb_allow_crc":
            need(1, 1, "on or off")
            cfg.allow_crc = parse_bool(args[0], path, ln, key)
        elif key == "halb_beat_lanes":
            need(1, 1, "auto, or a number of beat senders from 1 to 4")
            if args[0] == "auto":
                cfg.beat_lanes = None
            elif args[0] in ("1", "2", "3", "4"):
                cfg.beat_lanes = int(args[0])
            else:
                raise ConfigError(path, ln, f"halb_beat_lanes: {args[0]!r} is not auto or a number from 1 to 4")
        elif key == "watchdog":
            need(1, 1, "a watchdog device (e.g. /dev/watchdog)")
            cfg.watchdog = args[0]
        elif key in ("halb_monitor_interval", "halb_agent_timeout"):
            need(1, 1, "one time value (seconds, or e.g. 500ms)" + (", or 0 for no monitoring"
                                                                     if key == "halb_monitor_interval" else ""))
            t = parse_time(args[0], path, ln, key)
            if t <= 0 and key == "halb_agent_timeout":
                raise ConfigError(path, ln, f"{key}: must be greater than zero")
            setattr(cfg, key[5:], t)
        elif key in ("logfile", "debugfile", "logfacility"):
            need(1, 1, f"one value")
            setattr(cfg, key, args[0])

    _check(cfg, path)
    return cfg


def _check(cfg: HaConfig, path) -> None:
    if not cfg.nodes:
        raise ConfigError(path, None, "no 'node' line: declare every cluster node (node N1, node N2)")
    if not cfg.links:
        raise ConfigError(path, None, "no heartbeat link: add a bcast, mcast or ucast line")
    if cfg.deadtime <= cfg.keepalive:
        raise ConfigError(path, None, f"deadtime ({_fmt(cfg.deadtime)}) must be longer than "
                                      f"keepalive ({_fmt(cfg.keepalive)})")
    if cfg.deadtime < 2 * cfg.keepalive:
        cfg.warnings.append(f"{path}: deadtime {_fmt(cfg.deadtime)} is less than twice keepalive "
                            f"{_fmt(cfg.keepalive)}: one lost beat will declare a node dead")
    if cfg.warntime is not None:
        if cfg.warntime >= cfg.deadtime:
            raise ConfigError(path, None, f"warntime ({_fmt(cfg.warntime)}) must be shorter than "
                                          f"deadtime ({_fmt(cfg.deadtime)})")
        if cfg.warntime <= cfg.keepalive:
            cfg.warnings.append(f"{path}: warntime {_fmt(cfg.warntime)} is not longer than keepalive; "
                                "every beat would be late")
    if cfg.initdead is not None and cfg.initdead < 2 * cfg.deadtime:
        cfg.warnings.append(f"{path}: initdead {_fmt(cfg.initdead)} should be at least twice deadtime "
                            f"({_fmt(2 * cfg.deadtime)})")
    if cfg.deadping is not None and not (cfg.ping or cfg.ping_groups):
        cfg.warnings.append(f"{path}: deadping set but no ping or ping_group node")


def _fmt(t: float) -> str:
    return f"{t:g}s" if t >= 1 else f"{t * 1000:g}ms"


def load_hacf(path) -> HaConfig:
    return parse_hacf(_read(path), path)


def _read(path) -> str:
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        raise ConfigError(path, None, "no such file") from None
    except OSError as e:
        raise ConfigError(path, None, f"cannot read: {e.strerror}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise ConfigError(path, line, "not valid UTF-8 text") from None


# ---------------------------------------------------------------- authkeys

from halb.heartbeat.packet import AUTH_METHODS  # noqa: E402  (method -> MAC length)


@dataclass(frozen=True)
class AuthKeys:
    active: int
    keys: dict        # number -> (method, secret bytes)
    path: str = "authkeys"

    @property
    def method(self) -> str:
        return self.keys[self.active][0]


def parse_authkeys(text: str, path="authkeys") -> AuthKeys:
    active = None
    active_line = None
    keys: dict[int, tuple[str, bytes]] = {}
    for ln, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        words = line.split(None, 2)
        if words[0] == "auth":
            if len(words) != 2 or not _isnum(words[1]):
                raise ConfigError(path, ln, "expected 'auth N' (N: the number of the key to sign with)")
            if active is not None:
                raise ConfigError(path, ln, f"second 'auth' line (first on line {active_line})")
            active, active_line = int(words[1]), ln
            continue
        if not _isnum(words[0]):
            raise ConfigError(path, ln, f"expected 'auth N' or 'N METHOD [KEY]', got '{words[0]}'")
        num = int(words[0])
        if not 1 <= num <= 15:
            raise ConfigError(path, ln, f"key number {num} out of range 1-15")
        if num in keys:
            raise ConfigError(path, ln, f"key {num} defined twice")
        if len(words) < 2:
            raise ConfigError(path, ln, f"key {num}: no method (crc, md5, sha1 or sha256)")
        method = words[1].lower()
        if method not in AUTH_METHODS:
            raise ConfigError(path, ln, f"key {num}: unknown method '{words[1]}' (crc, md5, sha1 or sha256)")
        secret = words[2].strip() if len(words) > 2 else ""
        if len(secret) >= 2 and secret[0] == secret[-1] and secret[0] in "\"'":
            secret = secret[1:-1]
        if method == "crc":
            if secret:
                raise ConfigError(path, ln, f"key {num}: crc takes no key")
        elif not secret:
            raise ConfigError(path, ln, f"key {num}: {method} needs a secret key")
        keys[num] = (method, secret.encode("utf-8"))
    if active is None:
        raise ConfigError(path, None, "no 'auth N' line saying which key signs packets")
    if active not in keys:
        raise ConfigError(path, active_line, f"auth {active}: key {active} is not defined")
    return AuthKeys(active, keys, str(path))


def load_authkeys(path, *, check_mode: bool = True) -> AuthKeys:
    if check_mode:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise ConfigError(path, None, "no such file") from None
        except OSError as e:
            raise ConfigError(path, None, f"cannot read: {e.strerror}") from None
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            raise ConfigError(path, None, f"mode is {mode:04o}: the keys must be readable by their owner "
                                          "only, refusing to start (chmod 600 it)")
    return parse_authkeys(_read(path), path)


def check_auth_for_links(auth: AuthKeys, cfg: HaConfig) -> None:
    """crc authenticates nothing; refuse it on UDP links unless forced."""
    if auth.method == "crc" and cfg.links and not cfg.allow_crc:
        raise ConfigError(auth.path, None, "the active key uses crc, which anyone on the network can forge; "
                                           "refused on UDP links (use sha256, or 'halb_allow_crc on' in ha.cf)")


# ---------------------------------------------------------------- haresources

@dataclass(frozen=True)
class Resource:
    agent: str          # canonical agent name (IPaddr2, IPaddr, ldirectord, script name)
    args: tuple = ()
    line: int = 0
    text: str = ""      # as written

    def __str__(self):
        return self.text or "::".join((self.agent,) + tuple(self.args))


@dataclass(frozen=True)
class Group:
    node: str           # preferred owner
    resources: tuple
    line: int = 0

    @property
    def name(self) -> str:
        return str(self.resources[0]) if self.resources else self.node


_AGENT_ALIASES = {"ipaddr2": "IPaddr2", "ipaddr": "IPaddr"}
_AGENT_NAME_RE = re.compile(r"^[A-Za-z0-9_.+-]+(?::[A-Za-z0-9_.+-]+){0,2}$")


def _ip_resource_args(agent: str, args: list[str], path, ln) -> tuple:
    if not args:
        raise ConfigError(path, ln, f"{agent}: needs the address (e.g. {agent}::192.168.1.10)")
    spec = args[0]
    parts = spec.split("/")
    addr = parts[0]
    try:
        ipaddress.IPv4Address(addr)
    except ValueError:
        hint = " (replace the article's placeholder with the address)" if addr.startswith("$") else ""
        raise ConfigError(path, ln, f"{agent}: '{addr}' is not an IPv4 address{hint}") from None
    if len(parts) > 1 and parts[1] != "":
        if not _isnum(parts[1]) or not 1 <= int(parts[1]) <= 32:
            raise ConfigError(path, ln, f"{agent}: '/{parts[1]}' is not a prefix length 1-32")
    if len(parts) > 2 and parts[2]:
        _ifname(parts[2], path, ln, agent)
    if len(parts) > 4:
        raise ConfigError(path, ln, f"{agent}: '{spec}' has too many '/' fields (IP/bits/iface/broadcast)")
    return tuple(args)


def parse_resource(word: str, path, ln) -> Resource:
    if not word:
        raise ConfigError(path, ln, f"'{word}' is not a resource")
    parts = word.split("::")
    name, args = parts[0], parts[1:]
    if not name:
        raise ConfigError(path, ln, f"'{word}': no resource name before '::'")
    first = name.split("/")[0]
    if re.match(r"^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$", first) or first.startswith("$"):
        # a bare address means IPaddr, as in heartbeat
        return Resource("IPaddr", _ip_resource_args("IPaddr", [name] + args, path, ln), ln, word)
    if not _AGENT_NAME_RE.match(name):
        raise ConfigError(path, ln, f"'{name}' is not a resource name")
    agent = _AGENT_ALIASES.get(name.lower(), name)
    if agent in ("IPaddr", "IPaddr2"):
        args = list(_ip_resource_args(agent, args, path, ln))
    for a in args:
        if a == "":
            raise ConfigError(path, ln, f"'{word}': empty argument between '::'")
    return Resource(agent, tuple(args), ln, word)


def parse_haresources(text: str, path="haresources", nodes=None) -> list[Group]:
    groups: list[Group] = []
    logical: list[tuple[int, str]] = []
    buf, start = "", None
    lines = text.splitlines()
    for ln, raw in enumerate(lines, 1):
        line = _strip_comment(raw).rstrip()
        if start is None:
            start = ln
        if line.endswith("\\"):
            buf += line[:-1] + " "
            if ln == len(lines):
                raise ConfigError(path, ln, "line continuation '\\' at the end of the file")
            continue
        buf += line
        if buf.strip():
            logical.append((start, buf))
        buf, start = "", None
    seen_res: dict[str, int] = {}
    for ln, line in logical:
        words = line.split()
        node = words[0]
        if nodes is not None and node not in nodes:
            raise ConfigError(path, ln, f"node '{node}' is not declared in ha.cf ({', '.join(nodes)})")
        if not re.match(r"^[A-Za-z0-9_.-]+$", node):
            raise ConfigError(path, ln, f"'{node}' is not a node name")
        if len(words) < 2:
            raise ConfigError(path, ln, f"node '{node}' has no resources")
        res = tuple(parse_resource(w, path, ln) for w in words[1:])
        for r in res:
            key = str(r)
            if key in seen_res:
                raise ConfigError(path, ln, f"resource '{key}' already in the group on line {seen_res[key]}")
            seen_res[key] = ln
        groups.append(Group(node, res, ln))
    return groups


def load_haresources(path, nodes=None) -> list[Group]:
    return parse_haresources(_read(path), path, nodes)


@dataclass
class HaDir:
    dir: Path
    hacf: HaConfig
    auth: AuthKeys
    groups: list


def load_ha_dir(ha_dir, me: str | None = None, *, check_mode: bool = True) -> HaDir:
    d = Path(ha_dir)
    if not d.is_dir():
        raise ConfigError(d, None, "not a directory (expected HA_DIR with ha.cf, authkeys, haresources)")
    hacf = load_hacf(d / "ha.cf")
    auth = load_authkeys(d / "authkeys", check_mode=check_mode)
    check_auth_for_links(auth, hacf)
    groups = load_haresources(d / "haresources", hacf.nodes) if (d / "haresources").exists() else []
    if me is not None:
        hacf.check_node(me)
    return HaDir(d, hacf, auth, groups)
