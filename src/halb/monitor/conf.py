"""gmetad.conf, as Ganglia's gmetad reads it (pure).

    data_source "Mon Cluster" N1 N2            # the article's file
    data_source "Web" 30 web1:8649 10.0.0.2    # polling step 30 s, then addresses
    gridname "MyGrid"
    rrd_rootdir "/var/lib/ganglia/rrds"
    RRAs "RRA:AVERAGE:0.5:1:244" "RRA:AVERAGE:0.5:24:244"
    exporters "Web" 10.0.0.1:9643 10.0.0.2:9643   # halb: the nodes' `halb exporter`
    trusted_hosts 10.0.0.5 admin.example.com   # who may use the web front end and API
    all_trusted off                            #   (besides this host); on: anyone
    host_dmax 86400     # halb (gmond.conf's name): forget a host silent this long (0: never)
    max_hosts 1000      # halb: at most this many hosts per data source

Without an `exporters` line, gmetad asks each host of the data source at the
IP its gmond reports, port 9643; `exporters "NAME" off` asks none.

Other gmetad directives are known and reported as not supported (ignored);
an unknown word, a bad address or a bad step is an error naming file and line.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from halb.errors import ConfigError

DEFAULT_STEP = 15.0
DEFAULT_PORT = 8649
EXPORTER_PORT = 9643
MIN_STEP = 0.2
MAX_STEP = 86400.0

HOST_DMAX = 86400      # s: a host silent this long is forgotten even when its gmond says DMAX 0
MAX_HOSTS = 1000       # hosts per data source
MAX_SECONDS = 10 * 365 * 86400

# gmetad directives halb gmetad reads the line of but does not act on
UNSUPPORTED = {
    "authority", "setuid", "setuid_username", "xml_port",
    "interactive_port", "server_threads", "umask", "case_sensitive_hostnames", "carbon_server",
    "carbon_port", "carbon_protocol", "carbon_timeout", "graphite_prefix", "graphite_path",
    "memcached_parameters", "riemann_server", "riemann_port", "riemann_protocol", "riemann_attributes",
    "unsummarized_metrics", "unsummarized_sflow_vm_metrics", "debug_level", "scalable",
}

_HOST_RE = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass(frozen=True)
class Address:
    host: str
    port: int = DEFAULT_PORT

    def __str__(self):
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass
class DataSource:
    name: str
    step: float
    addresses: list[Address]
    line: int = 0
    exporters: list[Address] | None = None   # None: each host's IP, port EXPORTER_PORT


@dataclass(frozen=True)
class RRA:
    cf: str      # AVERAGE | MIN | MAX | LAST
    xff: float   # fraction of a row that may be unknown
    steps: int   # steps consolidated into one row
    rows: int


@dataclass
class GmetadConf:
    path: str = "<input>"
    sources: list[DataSource] = field(default_factory=list)
    gridname: str = "unspecified"
    rrd_rootdir: str | None = None
    rras: list[RRA] | None = None
    warnings: list[str] = field(default_factory=list)
    trusted_hosts: list[str] | None = None   # None: no line (anyone may use the web front end)
    all_trusted: bool = False
    host_dmax: int = HOST_DMAX
    max_hosts: int = MAX_HOSTS

    def source(self, name: str) -> DataSource | None:
        return next((s for s in self.sources if s.name == name), None)


def tokenize(line: str, path, lineno) -> list[str]:
    """Words and "quoted strings" (quotes removed); a # outside quotes starts a comment."""
    out: list[str] = []
    i, n = 0, len(line)
    while i < n:
        c = line[i]
        if c.isspace():
            i += 1
        elif c == "#":
            break
        elif c == '"':
            j = line.find('"', i + 1)
            if j < 0:
                raise ConfigError(path, lineno, "unterminated quoted string")
            out.append(line[i + 1:j])
            i = j + 1
        else:
            j = i
            while j < n and not line[j].isspace() and line[j] not in '"#':
                j += 1
            out.append(line[i:j])
            i = j
    return out


def parse_address(tok: str, path, lineno, default_port: int = DEFAULT_PORT) -> Address:
    host, port = tok, default_port
    if tok.startswith("["):
        end = tok.find("]")
        if end < 0:
            raise ConfigError(path, lineno, f"bad address '{tok}' (unclosed '[')")
        host, rest = tok[1:end], tok[end + 1:]
        if rest:
            if not rest.startswith(":"):
                raise ConfigError(path, lineno, f"bad address '{tok}'")
            port = _port(rest[1:], tok, path, lineno)
        if not host or not re.fullmatch(r"[0-9A-Fa-f:.]+", host):
            raise ConfigError(path, lineno, f"bad address '{tok}'")
        return Address(host, port)
    if tok.count(":") == 1:
        host, p = tok.split(":")
        port = _port(p, tok, path, lineno)
    elif tok.count(":") > 1:  # bare IPv6 address, default port
        if not re.fullmatch(r"[0-9A-Fa-f:.]+", tok):
            raise ConfigError(path, lineno, f"bad address '{tok}'")
        return Address(tok, default_port)
    if not host or not _HOST_RE.match(host):
        raise ConfigError(path, lineno, f"bad address '{tok}' (expected host or host:port)")
    return Address(host, port)


def _port(s: str, tok, path, lineno) -> int:
    if not s.isdigit() or len(s) > 5 or not (0 < int(s) < 65536):
        raise ConfigError(path, lineno, f"bad port in address '{tok}' (1-65535)")
    return int(s)


def _step(tok: str) -> float | None:
    """The polling step when this token is a number, else None (it is an address)."""
    if not re.fullmatch(r"[0-9]+(\.[0-9]+)?", tok):
        return None
    return float(tok) if len(tok) <= 20 else float("inf")  # too long: refused as out of range


def parse_rra(tok: str, path, lineno) -> RRA:
    parts = tok.split(":")
    if len(parts) != 5 or parts[0] != "RRA":
        raise ConfigError(path, lineno, f"bad RRA '{tok}' (expected RRA:CF:xff:steps:rows)")
    _, cf, xff, steps, rows = parts
    if cf not in ("AVERAGE", "MIN", "MAX", "LAST"):
        raise ConfigError(path, lineno, f"bad RRA '{tok}': consolidation function {cf!r} "
                                        "(AVERAGE, MIN, MAX or LAST)")
    try:
        x = float(xff)
    except ValueError:
        x = -1.0
    if not (0.0 <= x < 1.0) or math.isnan(x):
        raise ConfigError(path, lineno, f"bad RRA '{tok}': xff {xff!r} (0 <= xff < 1)")
    if not steps.isdigit() or len(steps) > 9 or int(steps) < 1 or not rows.isdigit() or len(rows) > 9 \
            or not (1 <= int(rows) <= 100000):
        raise ConfigError(path, lineno, f"bad RRA '{tok}': steps and rows must be positive integers "
                                        "(rows at most 100000)")
    return RRA(cf, x, int(steps), int(rows))


def parse(text: str, path: str = "<input>") -> GmetadConf:
    conf = GmetadConf(path=str(path))
    for lineno, raw in enumerate(text.splitlines(), 1):
        toks = tokenize(raw, path, lineno)
        if not toks:
            continue
        word, args = toks[0], toks[1:]
        if word == "data_source":
            if not args:
                raise ConfigError(path, lineno, "data_source needs a name and at least one address")
            name, rest = args[0], args[1:]
            if not name.strip():
                raise ConfigError(path, lineno, "data_source: empty name")
            if len(name) > 200 or any(c in name for c in "/\0\n"):
                raise ConfigError(path, lineno, f"data_source: bad name {name!r} (no '/', at most 200 characters)")
            if conf.source(name):
                raise ConfigError(path, lineno, f"data_source \"{name}\" is defined twice "
                                                f"(first at line {conf.source(name).line})")
            step = DEFAULT_STEP
            if rest and _step(rest[0]) is not None:
                step = _step(rest[0])
                if step < MIN_STEP:
                    raise ConfigError(path, lineno, f"data_source \"{name}\": polling step {rest[0]} is too short "
                                                    f"(at least {MIN_STEP:g} s)")
                if step > MAX_STEP:
                    raise ConfigError(path, lineno, f"data_source \"{name}\": polling step {rest[0][:20]} is too "
                                                    f"long (at most {MAX_STEP:g} s)")
                rest = rest[1:]
            if not rest:
                raise ConfigError(path, lineno, f"data_source \"{name}\" has no address")
            conf.sources.append(DataSource(name, step, [parse_address(t, path, lineno) for t in rest], lineno))
        elif word == "exporters":
            if len(args) < 2:
                raise ConfigError(path, lineno, 'exporters needs a data source name and addresses (or "off")')
            src = conf.source(args[0])
            if src is None:
                raise ConfigError(path, lineno, f"exporters: no data_source \"{args[0]}\" above this line")
            if src.exporters is not None:
                raise ConfigError(path, lineno, f"exporters: \"{args[0]}\" has an exporters line already")
            src.exporters = [] if args[1:] == ["off"] else \
                [parse_address(t, path, lineno, EXPORTER_PORT) for t in args[1:]]
        elif word == "gridname":
            if len(args) != 1:
                raise ConfigError(path, lineno, "gridname takes one (quoted) name")
            conf.gridname = args[0]
        elif word == "rrd_rootdir":
            if len(args) != 1 or not args[0]:
                raise ConfigError(path, lineno, "rrd_rootdir takes one directory")
            conf.rrd_rootdir = args[0]
        elif word == "RRAs":
            if not args:
                raise ConfigError(path, lineno, "RRAs needs at least one \"RRA:CF:xff:steps:rows\"")
            conf.rras = [parse_rra(t, path, lineno) for t in args]
        elif word == "trusted_hosts":
            if not args:
                raise ConfigError(path, lineno, "trusted_hosts needs at least one address or host name")
            for a in args:
                if not _HOST_RE.match(a.replace("/", "", 1)) and ":" not in a:
                    raise ConfigError(path, lineno, f"trusted_hosts: bad address or host name {a!r}")
            conf.trusted_hosts = (conf.trusted_hosts or []) + args
        elif word == "all_trusted":
            if len(args) != 1 or args[0].lower() not in ("on", "off", "yes", "no", "true", "false", "1", "0"):
                raise ConfigError(path, lineno, "all_trusted takes on or off")
            conf.all_trusted = args[0].lower() in ("on", "yes", "true", "1")
        elif word in ("host_dmax", "max_hosts"):
            low, high = (0, MAX_SECONDS) if word == "host_dmax" else (1, 1_000_000)
            if len(args) != 1 or not args[0].isdigit() or len(args[0]) > 10 or not low <= int(args[0]) <= high:
                raise ConfigError(path, lineno, f"{word} takes a whole number from {low} to {high}"
                                                + (" (seconds; 0: never)" if word == "host_dmax" else ""))
            setattr(conf, word, int(args[0]))
        elif word in UNSUPPORTED:
            conf.warnings.append(f"{path}:{lineno}: '{word}' is not supported by halb gmetad (ignored)")
        else:
            raise ConfigError(path, lineno, f"unknown directive '{word}'")
    if not conf.sources:
        raise ConfigError(path, None, "no data_source line: nothing to poll")
    return conf


def load(path) -> GmetadConf:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(path, None, f"cannot read: {e.strerror}") from None
    return parse(text, str(path))
