"""The VIPs a Direct Return real server must hide on `lo`, read from a
heartbeat `haresources` file the way the article's `lvsdr` script does.

This is a small, lvsdr-only reader (the full haresources parser belongs to
halb.heartbeat). It takes:

- every IPaddr / IPaddr2 resource (also spelt `IPAddr2` as in the article),
  `IPaddr2::ip[/netmask[/nic[/broadcast]]]`: the VIP, and its interface when
  the `nic` field is given; a bare address token is heartbeat's shorthand
  for `IPaddr::address`;
- the `virtual=IP:port` lines of ldirectord's configuration when the group
  has an `ldirectord::FILE` resource (FILE relative to the haresources
  directory), or `ldirectord` alone and an `ldirectord.cf` beside it.

`$NAME` / `${NAME}` are replaced from the environment (the article writes
`$VIP`); an undefined one is an error naming the file and line.
Lines: `#` comments, blank lines, `\\` continuations as heartbeat reads them.
"""
from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path

from halb.errors import ConfigError

VAR_RE = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")
IPADDR_AGENTS = {"ipaddr", "ipaddr2"}


@dataclass(frozen=True)
class VipSpec:
    vip: str
    iface: str | None
    source: str          # "file:line" it came from


def check_vip(text: str) -> str:
    """A valid VIP for a real server's `lo` (IPv4 unicast), or ValueError."""
    try:
        ip = ipaddress.IPv4Address(text)
    except ValueError:
        raise ValueError(f"'{text}' is not an IPv4 address") from None
    if ip.is_loopback or ip.is_multicast or ip.is_unspecified or ip == ipaddress.IPv4Address("255.255.255.255"):
        raise ValueError(f"'{text}' cannot be a VIP (loopback, multicast or reserved)")
    return str(ip)


def _expand(token: str, env, path, line) -> str:
    def sub(m):
        name = m.group(1) or m.group(2)
        if name not in env:
            raise ConfigError(path, line, f"${name} is not defined: replace the placeholder "
                                          f"with its value or set {name} in the environment")
        return env[name]
    return VAR_RE.sub(sub, token)


def logical_lines(text: str):
    """(first line number, text) of each logical line: comments stripped,
    backslash continuations joined, blank lines skipped."""
    buf, start = "", None
    for no, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].rstrip()
        if start is None:
            start = no
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        if buf.strip():
            yield start, buf.strip()
        buf, start = "", None
    if buf.strip():
        yield start, buf.strip()


def parse_haresources(text: str, path="haresources", env=None, base_dir=None) -> list[VipSpec]:
    """Every VIP of the file, in order, without duplicates."""
    env = os.environ if env is None else env
    base_dir = Path(base_dir) if base_dir is not None else Path(path).parent
    out: list[VipSpec] = []
    seen = set()

    def add(vip, iface, where):
        if vip not in seen:
            seen.add(vip)
            out.append(VipSpec(vip, iface, where))

    for no, line in logical_lines(text):
        tokens = line.split()
        if len(tokens) < 2:
            raise ConfigError(path, no, f"'{line}': expected 'NODE RESOURCE...'")
        for tok in tokens[1:]:
            tok = _expand(tok, env, path, no)
            parts = tok.split("::")
            agent = parts[0]
            if agent.lower() in IPADDR_AGENTS or _is_ipv4(agent):
                if _is_ipv4(agent):
                    arg = agent
                else:
                    if len(parts) < 2 or not parts[1]:
                        raise ConfigError(path, no, f"{agent} resource without an address (expected {agent}::IP)")
                    arg = parts[1]
                fields = arg.split("/")
                try:
                    vip = check_vip(fields[0])
                except ValueError as e:
                    raise ConfigError(path, no, f"bad VIP in {tok}: {e}") from None
                if len(fields) > 1 and fields[1]:
                    _check_mask(fields[1], tok, path, no)
                iface = fields[2] if len(fields) > 2 and fields[2] else None
                add(vip, iface, f"{path}:{no}")
            elif agent.lower() == "ldirectord":
                if len(parts) > 1 and parts[1]:
                    cf = Path(parts[1])
                    cf = cf if cf.is_absolute() else base_dir / cf
                    if not cf.is_file():
                        raise ConfigError(path, no, f"ldirectord configuration {cf} not found")
                else:
                    cf = base_dir / "ldirectord.cf"
                    if not cf.is_file():
                        continue
                for spec in parse_ldirectord_vips(cf.read_text(), str(cf), env):
                    add(spec.vip, None, spec.source)
    return out


def parse_ldirectord_vips(text: str, path, env) -> list[VipSpec]:
    """VIPs of the `virtual=IP:port` lines of an ldirectord.cf."""
    out = []
    for no, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        m = re.match(r"^virtual\s*=\s*(\S+)", line)
        if not m:
            continue
        val = _expand(m.group(1), env, path, no)
        if val.isdigit():
            continue   # a firewall mark, not an address
        host = val.rsplit(":", 1)[0] if ":" in val else val
        try:
            out.append(VipSpec(check_vip(host), None, f"{path}:{no}"))
        except ValueError as e:
            raise ConfigError(path, no, f"bad virtual address '{val}': {e}") from None
    return out


def read_haresources(path, env=None) -> list[VipSpec]:
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise ConfigError(path, None, "no such file") from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as e:
        raise ConfigError(path, None, f"cannot read: {e.__class__.__name__}") from None
    specs = parse_haresources(text, str(path), env)
    if not specs:
        raise ConfigError(path, None, "no IPaddr/IPaddr2 resource (no VIP to hide on lo)")
    return specs


def _is_ipv4(s: str) -> bool:
    return bool(re.match(r"^\d+\.\d+\.\d+\.\d+(/.*)?$", s))


def _check_mask(m: str, tok, path, no) -> None:
    if m.isdigit() and len(m) <= 2 and 0 <= int(m) <= 32:
        return
    try:
        ipaddress.IPv4Network(f"0.0.0.0/{m}")
    except ValueError:
        raise ConfigError(path, no, f"bad netmask '{m}' in {tok}") from None
