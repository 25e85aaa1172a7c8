"""bgp.conf: `halb bgp`'s configuration, in the style of ldirectord.cf (pure).

    # /etc/halb/bgp.conf
    router_id=10.81.2.11
    local_as=65001
    neighbor=10.81.2.1 as 65000          # repeatable; options: port N, multihop N, password "S"
    bfd=20ms 3                           # interval multiplier (us, ms, s), or off
    hold=3                               # BGP hold time, s (0 = none, else 3..65535)
    announce=10.81.9.100                 # a VIP this director serves; repeatable (IPv4, /32)
    director=ldirectord.cf               # whose health gates the VIPs (name or path; none)
    selftest=builtin                     # builtin | off | "/path/to/command" (VIP as $1)
    checkinterval=0.2                    # s between two judgements of this director's fitness
    rise=0                               # s of continuous fitness before a VIP is announced
    logfile=/var/log/halb-bgp.log        # default: stderr (local0 style lines)
    realtime=yes                         # BIRD at SCHED_FIFO priority 10 (BFD keeps its timing)

One directive a line, `name=value`, `#` starts a comment. Every problem is a
ConfigError naming the file and the line (or the file alone for what is
missing), with the allowed range.
"""
from __future__ import annotations

import ipaddress
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from halb.errors import ConfigError

DEFAULT_PATH = "/etc/halb/bgp.conf"
ASN_MAX = 4294967295
BFD_MIN_US, BFD_MAX_US = 1_000, 10_000_000      # 1 ms .. 10 s (BIRD's range is wider; this is sane)
INTERVAL_MIN, INTERVAL_MAX = 0.02, 60.0
RISE_MAX = 3600.0


@dataclass(frozen=True)
class Neighbor:
    addr: str
    asn: int
    port: int = 179
    multihop: int = 0         # 0: directly connected (the usual ECMP leaf)
    password: str = ""
    line: int = 0

    @property
    def name(self) -> str:
        """The BIRD protocol name of this session."""
        return "n_" + self.addr.replace(".", "_")


@dataclass
class BgpConfig:
    path: str = DEFAULT_PATH
    router_id: str = ""
    local_as: int = 0
    neighbors: list[Neighbor] = field(default_factory=list)
    bfd: tuple[int, int] | None = (100_000, 3)    # (interval in us, multiplier) or None (off)
    hold: int = 3
    announce: list[str] = field(default_factory=list)
    director: str | None = "ldirectord.cf"
    selftest: str = "builtin"                     # builtin | off | a command
    checkinterval: float = 0.2
    rise: float = 0.0
    logfile: str | None = None
    local_address: str = ""                       # source of the sessions (default router_id)
    realtime: bool = True

    @property
    def keepalive(self) -> int:
        return max(1, self.hold // 3) if self.hold else 0

    @property
    def source(self) -> str:
        return self.local_address or self.router_id


def _strip_comment(s: str) -> str:
    out, q = [], None
    for ch in s:
        if q:
            if ch == q:
                q = None
        elif ch in "\"'":
            q = ch
        elif ch == "#":
            break
        out.append(ch)
    return "".join(out).strip()


class _Parser:
    def __init__(self, path: str):
        self.path = path

    def err(self, line: int | None, msg: str):
        raise ConfigError(self.path, line, msg)

    def ipv4(self, n: int, val: str, what: str) -> str:
        try:
            a = ipaddress.IPv4Address(val)
        except ValueError:
            self.err(n, f"{what}: '{val}' is not an IPv4 address")
        if a.is_unspecified or a.is_multicast:
            self.err(n, f"{what}: {val} cannot be used")
        return str(a)

    def asn(self, n: int, val: str, what: str) -> int:
        if not re.fullmatch(r"\d{1,10}", val) or not 1 <= int(val) <= ASN_MAX:
            self.err(n, f"{what}: '{val}' is not an AS number (1..{ASN_MAX})")
        return int(val)

    def number(self, n: int, val: str, what: str, lo: float, hi: float, integer: bool = False) -> float:
        pat = r"\d+" if integer else r"\d+(\.\d+)?"
        if not re.fullmatch(pat, val) or not lo <= float(val) <= hi:
            kind = "an integer" if integer else "a number"
            self.err(n, f"{what}: '{val}' must be {kind} from {lo:g} to {hi:g}")
        return int(val) if integer else float(val)

    def neighbor(self, n: int, val: str) -> Neighbor:
        try:
            words = shlex.split(val)
        except ValueError as e:
            self.err(n, f"neighbor: {e}")
        if len(words) < 3 or words[1] != "as":
            self.err(n, f"neighbor: expected 'ADDRESS as ASN [port N] [multihop N] [password \"S\"]', got '{val}'")
        addr = self.ipv4(n, words[0], "neighbor")
        asn = self.asn(n, words[2], "neighbor as")
        opts = {"port": 179, "multihop": 0, "password": ""}
        rest = words[3:]
        if len(rest) % 2:
            self.err(n, f"neighbor: option '{rest[-1]}' needs a value")
        for k, v in zip(rest[::2], rest[1::2]):
            if k == "port":
                opts["port"] = self.number(n, v, "neighbor port", 1, 65535, integer=True)
            elif k == "multihop":
                opts["multihop"] = self.number(n, v, "neighbor multihop", 1, 255, integer=True)
            elif k == "password":
                if not v or '"' in v or "\\" in v or "\n" in v:
                    self.err(n, "neighbor password: must be non-empty, without quotes or backslashes")
                opts["password"] = v
            else:
                self.err(n, f"neighbor: unknown option '{k}' (port, multihop, password)")
        return Neighbor(addr, asn, line=n, **opts)

    def bfd(self, n: int, val: str) -> tuple[int, int] | None:
        if val.lower() == "off":
            return None
        m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(us|ms|s)\s+(\d+)", val)
        if not m:
            self.err(n, f"bfd: expected 'INTERVAL MULTIPLIER' (e.g. 20ms 3) or off, got '{val}'")
        us = float(m.group(1)) * {"us": 1, "ms": 1000, "s": 1_000_000}[m.group(2)]
        if not BFD_MIN_US <= us <= BFD_MAX_US or us != int(us):
            self.err(n, f"bfd: interval {m.group(1)}{m.group(2)} must be from 1ms to 10s")
        mult = int(m.group(3))
        if not 1 <= mult <= 255:
            self.err(n, f"bfd: multiplier {mult} must be from 1 to 255")
        return int(us), mult

    def parse(self, text: str) -> BgpConfig:
        cfg = BgpConfig(path=self.path)
        seen: dict[str, int] = {}
        vips: dict[str, int] = {}
        peers: dict[str, int] = {}
        single = ("router_id", "local_as", "bfd", "hold", "director", "selftest", "checkinterval",
                  "rise", "logfile", "local_address", "realtime")
        for n, raw in enumerate(text.split("\n"), 1):
            if "\x00" in raw:
                self.err(n, "binary data (NUL byte) in configuration")
            line = _strip_comment(raw)
            if not line:
                continue
            m = re.fullmatch(r"([A-Za-z_]+)\s*=\s*(.*)", line)
            if not m:
                self.err(n, f'Unknown command "{line}" (expected name=value)')
            name, val = m.group(1).lower(), m.group(2).strip()
            if not val:
                self.err(n, f"{name}: missing value")
            if name in single:
                if name in seen:
                    self.err(n, f"{name} given twice (first at line {seen[name]})")
                seen[name] = n
            if name == "router_id":
                cfg.router_id = self.ipv4(n, val, "router_id")
            elif name == "local_address":
                cfg.local_address = self.ipv4(n, val, "local_address")
            elif name == "local_as":
                cfg.local_as = self.asn(n, val, "local_as")
            elif name == "neighbor":
                nb = self.neighbor(n, val)
                if nb.addr in peers:
                    self.err(n, f"neighbor {nb.addr} given twice (first at line {peers[nb.addr]})")
                peers[nb.addr] = n
                cfg.neighbors.append(nb)
            elif name == "bfd":
                cfg.bfd = self.bfd(n, val)
            elif name == "hold":
                h = self.number(n, val, "hold", 0, 65535, integer=True)
                if h in (1, 2):
                    self.err(n, "hold: a BGP hold time is 0 (none) or from 3 to 65535 s")
                cfg.hold = h
            elif name == "announce":
                v = val[:-3] if val.endswith("/32") else val
                vip = self.ipv4(n, v, "announce")
                if vip in vips:
                    self.err(n, f"announce {vip} given twice (first at line {vips[vip]})")
                vips[vip] = n
                cfg.announce.append(vip)
            elif name == "director":
                cfg.director = None if val.lower() == "none" else val.strip("\"'")
            elif name == "selftest":
                v = val.strip("\"'")
                if v not in ("builtin", "off") and not v.startswith("/"):
                    self.err(n, f"selftest: '{v}' must be builtin, off or an absolute command path")
                cfg.selftest = v
            elif name == "checkinterval":
                cfg.checkinterval = self.number(n, val, "checkinterval", INTERVAL_MIN, INTERVAL_MAX)
            elif name == "rise":
                cfg.rise = self.number(n, val, "rise", 0, RISE_MAX)
            elif name == "logfile":
                cfg.logfile = val.strip("\"'")
            elif name == "realtime":
                if val.lower() not in ("yes", "no"):
                    self.err(n, f"realtime: '{val}' must be yes or no")
                cfg.realtime = val.lower() == "yes"
            else:
                self.err(n, f'Unknown command "{name}" (router_id, local_as, neighbor, bfd, hold, announce, '
                            "director, selftest, checkinterval, rise, logfile, local_address, realtime)")
        for req in ("router_id", "local_as"):
            if req not in seen:
                self.err(None, f"{req} is missing")
        if not cfg.neighbors:
            self.err(None, "no neighbor (neighbor=ADDRESS as ASN)")
        if not cfg.announce:
            self.err(None, "nothing to announce (announce=VIP)")
        for nb in cfg.neighbors:
            if nb.asn == cfg.local_as and nb.multihop:
                pass  # iBGP over several hops: allowed
            if nb.addr == cfg.source:
                self.err(nb.line, f"neighbor {nb.addr} is this director's own address")
        return cfg


def parse_text(text: str, path: str = "<input>") -> BgpConfig:
    return _Parser(path).parse(text)


def load(path: str | Path) -> BgpConfig:
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise ConfigError(str(p), None, "Config file not found") from None
    except IsADirectoryError:
        raise ConfigError(str(p), None, "is a directory") from None
    except OSError as e:
        raise ConfigError(str(p), None, f"cannot read: {e.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise ConfigError(str(p), line, "not UTF-8 text") from None
    return parse_text(text, str(p))
