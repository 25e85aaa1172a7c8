"""Pure parsers for dsh's files and machine specifications (no I/O).

Semantics follow dancer's dsh (0.25.x):
- machines.list, group/NAME and -f files: one machine per line, leading and
  trailing blanks stripped, empty lines and lines starting with '#' ignored,
  duplicates merged (first occurrence wins, order kept);
- dsh.conf: `key = value` lines, '#' comments; keys remoteshell,
  remoteshellopt (repeatable, appends), forklimit, waitshell,
  showmachinenames, verbose. dsh itself warns about unknown keys and goes on;
  halb does the same, and also reports malformed lines and values with
  file:line instead of guessing (dsh's atoi would read "yes" as 0);
- -m takes a comma-separated list, each item optionally `user@host`.

halb additions: ClusterShell node-set notation (`N[1-16]`, `web[01-04]`) in
any machine item, and heartbeat's ha.cf `node` lines as a machine list.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from halb.dsh.errors import DshUsageError
from halb.errors import ConfigError

@dataclass
class DshConf:
    """Values read from dsh.conf files; None means 'not set'."""

    remoteshell: str | None = None
    remoteshellopt: list[str] = field(default_factory=list)
    forklimit: int | None = None
    waitshell: bool | None = None
    showmachinenames: bool | None = None
    verbose: bool | None = None
    timeout: float | None = None  # halb addition: per-host timeout, seconds


def _int_value(value: str, path, lineno, key) -> int:
    try:
        return int(value, 10)
    except ValueError:
        raise ConfigError(path, lineno, f"{key}: '{value}' is not an integer") from None


def _bool_value(value: str, path, lineno, key) -> bool:
    if value not in ("0", "1"):
        raise ConfigError(path, lineno, f"{key}: '{value}' must be 0 or 1")
    return value == "1"


def parse_dsh_conf(text: str, path=None, conf: DshConf | None = None) -> tuple[DshConf, list[str]]:
    """Apply a dsh.conf text on top of `conf`; return it and warnings.

    Raises ConfigError(path, line, ...) for a line that is not `key=value`
    or a value of the wrong type.
    """
    conf = conf if conf is not None else DshConf()
    warnings: list[str] = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if "=" not in line:
            raise ConfigError(path, lineno, f"expected 'key = value', got '{line}'")
        key, value = (s.strip() for s in line.split("=", 1))
        if not key:
            raise ConfigError(path, lineno, "missing key before '='")
        if key == "remoteshell":
            if not value:
                raise ConfigError(path, lineno, "remoteshell: empty value")
            conf.remoteshell = value
        elif key == "remoteshellopt":
            if value:
                conf.remoteshellopt.append(value)
        elif key == "forklimit":
            n = _int_value(value, path, lineno, key)
            if n < 0:
                raise ConfigError(path, lineno, "forklimit: cannot be less than 0")
            conf.forklimit = n
            conf.waitshell = False  # dsh: forklimit implies concurrent, whatever its value
        elif key == "waitshell":
            conf.waitshell = _bool_value(value, path, lineno, key)
        elif key == "showmachinenames":
            conf.showmachinenames = _bool_value(value, path, lineno, key)
        elif key == "verbose":
            conf.verbose = _bool_value(value, path, lineno, key)
        elif key == "timeout":
            conf.timeout = parse_timeout(value, lambda m: ConfigError(path, lineno, m))
        else:
            where = f"{path}:{lineno}" if path else f"line {lineno}"
            warnings.append(f"{where}: unknown key '{key}' ignored")
    return conf, warnings


def parse_timeout(value: str, error=DshUsageError) -> float:
    try:
        t = float(value)
    except ValueError:
        raise error(f"timeout: '{value}' is not a number of seconds") from None
    if not t > 0 or t != t or t == float("inf"):
        raise error(f"timeout: '{value}' must be a positive number of seconds")
    return t


def parse_machine_list(text: str) -> list[str]:
    """Lines of a machines.list / group file -> machine specs (unexpanded)."""
    out = []
    for raw in text.splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            out.append(line)
    return out


def parse_ha_cf_nodes(text: str, path=None) -> list[str]:
    """Node names from heartbeat ha.cf `node` directives (other lines ignored).

    heartbeat accepts several names on one `node` line and comments after
    '#'. A `node` line with no name is an error.
    """
    nodes: list[str] = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        words = line.split()
        if words[0].lower() != "node":
            continue
        if len(words) == 1:
            raise ConfigError(path, lineno, "'node' directive without a node name")
        nodes.extend(words[1:])
    return nodes


def split_commas(arg: str) -> list[str]:
    """Split a -m argument on commas that are outside node-set brackets."""
    items, depth, cur = [], 0, []
    for ch in arg:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth = max(0, depth - 1)
        if ch == "," and depth == 0:
            items.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    items.append("".join(cur))
    return [i.strip() for i in items if i.strip()]


def expand_spec(spec: str, where: str = "") -> list[str]:
    """One machine spec -> machine names; `user@N[1-3]` -> user@N1.. .

    Only items with brackets go through ClusterShell's NodeSet, so plain
    names (FQDNs, IPv4/IPv6 addresses) are taken literally.
    """
    user, sep, host = spec.rpartition("@")
    prefix = f"{user}@" if sep else ""
    if sep and (not user or not host):
        raise DshUsageError(f"{where}bad machine '{spec}': expected user@host")
    if any(c.isspace() for c in spec):
        raise DshUsageError(f"{where}bad machine '{spec}': blanks inside a machine name")
    _no_option(spec, user, host, where)
    if "[" not in host and "]" not in host:
        return [spec]
    from ClusterShell.NodeSet import RESOLVER_NOGROUP, NodeSet, NodeSetException

    try:
        names = list(NodeSet(host, resolver=RESOLVER_NOGROUP))
    except (NodeSetException, ValueError) as e:
        msg = str(e).strip() or "invalid node set"
        raise DshUsageError(f"{where}bad node set '{host}': {msg}") from None
    for n in names:
        _no_option(spec, user, n, where)
    return [prefix + n for n in names]


def _no_option(spec: str, user: str, host: str, where: str) -> None:
    """A machine or user name starting with '-' would reach ssh as an option
    (`-oProxyCommand=...` runs a local command): refused."""
    if host.startswith("-") or user.startswith("-"):
        raise DshUsageError(f"{where}bad machine '{spec}': a machine or user name cannot start with '-'")


def merge_unique(into: list[str], names) -> list[str]:
    """Append names not already present (dsh merges duplicates)."""
    seen = set(into)
    for n in names:
        if n not in seen:
            into.append(n)
            seen.add(n)
    return into
