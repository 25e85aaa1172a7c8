"""Command line of `halb dsh` -> a Plan (what to run where, and how).

Option letters and their interplay are dancer's dsh's (parse_options and
sanity_checking in dsh 0.25): options are read in order, POSIX style (the
first non-option word starts the remote command), machine files are read
when their option is met, a later -c/-w overrides an earlier one, -F
implies -c, and the conflicting combinations are refused with the same
rules. halb's additions are long options plus -t, -G and -e.

File reading goes through a small `Files` object so the decision logic can
be tested on in-memory files.
"""
from __future__ import annotations

import getopt
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from halb.dsh.config import (DshConf, expand_spec, merge_unique, parse_dsh_conf,
                             parse_ha_cf_nodes, parse_timeout, split_commas)
from halb.dsh.errors import DshConfigError, DshUsageError
from halb.errors import ConfigError

DEFAULT_CONFIG_DIR = "/etc/dsh"
DEFAULT_HA_CF = "/etc/ha.d/ha.cf"
DEFAULT_REMOTESHELL = "ssh"  # dsh's compiled-in default is rsh; Debian's dsh.conf sets ssh
CLUSTER_GROUP = "cluster"

SHORT = "vqMHib:m:af:g:r:o:hVwcF:e:t:Gn:N:"
LONG = ["verbose", "quiet", "show-machine-names", "hide-machine-names",
        "duplicate-input", "bufsize=", "machine=", "all", "file=", "group=",
        "remoteshell=", "remoteshellopt=", "help", "version", "wait-shell",
        "concurrent-shell", "forklimit=", "execute=", "timeout=", "gather",
        "num-topology=", "config-dir=", "ha-cf="]

USAGE = """usage: halb dsh [OPTIONS] [--] COMMAND [ARGS...]

machines (read in the order given, duplicates merged):
  -a, --all                  every machine of DIR/machines.list
  -g, --group NAME           machines of DIR/group/NAME; `-g cluster` falls back
                             to the `node` lines of heartbeat's ha.cf
  -m, --machine M[,M...]     machines: name, user@name or a node set (N[1-16])
  -f, --file FILE            machines listed in FILE
remote shell:
  -r, --remoteshell SHELL    ssh (default), rsh, remsh or any rsh-like command
  -o, --remoteshellopt OPT   one more argument for the remote shell (repeatable)
execution:
  -w, --wait-shell           one machine after the other (dsh's default)
  -c, --concurrent-shell     all machines at once
  -F, --forklimit N          concurrently, at most N at a time
  -i, --duplicate-input      copy dsh's standard input to every remote command (with -c)
  -e, --execute SCRIPT       run the local SCRIPT on each machine (sh -s; ARGS are its arguments)
  -t, --timeout SEC          kill a machine's command after SEC seconds (counts as failed)
output:
  -M, --show-machine-names   prefix each output line with "machine: "
  -H, --hide-machine-names   do not prefix (default)
  -G, --gather               print identical outputs once, under the machines that gave them
  -v, --verbose / -q, --quiet
files:
  --config-dir DIR           instead of ~/.dsh then /etc/dsh (machines.list, group/, dsh.conf)
  --ha-cf FILE               heartbeat ha.cf for group `cluster` (default /etc/ha.d/ha.cf)

With ssh, halb adds `-o BatchMode=yes` (no password or host-key question can
hang a run) unless an -o option or the remote shell names BatchMode itself.

exit status: 0 when every machine succeeded, else the number of machines that
failed (non-zero exit, remote shell failure or timeout; at most 254);
255 when nothing was run (bad option, file or machine list).
"""


@dataclass
class Plan:
    hosts: list[str]
    command: list[str]
    remoteshell: list[str]
    rshopts: list[str] = field(default_factory=list)
    wait: bool = True
    forklimit: int = 0            # 0: no limit
    show_names: bool = False
    dup_input: bool = False
    script: bytes | None = None   # -e: fed to `sh -s` on the remote side
    script_path: str | None = None
    timeout: float | None = None
    gather: bool = False
    verbose: bool = False
    quiet: bool = False
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)   # shown with -v

    @property
    def fanout(self) -> int:
        if self.wait:
            return 1
        if self.forklimit:
            return self.forklimit
        return max(1, len(self.hosts))

    def argv_for(self, spec: str) -> list[str]:
        """The local command that runs the remote command on `spec`."""
        user, sep, host = spec.rpartition("@")
        argv = list(self.remoteshell)
        if os.path.basename(argv[0]) == "ssh" and not _mentions(self.rshopts + argv[1:], "batchmode"):
            # never let ssh ask a question nobody will answer
            argv += ["-o", "BatchMode=yes"]
        argv += self.rshopts
        if user.startswith("-") or host.startswith("-"):  # expand_spec refuses these: never an option
            raise ValueError(f"machine name {spec!r} starts with '-'")
        if sep:
            argv += ["-l", user]
        if os.path.basename(argv[0]) == "ssh":
            argv.append("--")  # options end here
        argv.append(host)
        argv += self.command
        return argv


def _mentions(words: list[str], needle: str) -> bool:
    return any(needle in w.lower() for w in words)


class Files:
    """Where dsh's files are: --config-dir DIR only, or ~/.dsh then /etc/dsh."""

    def __init__(self, config_dir: str | None, ha_cf: str | None, home: str | None = None):
        self.explicit = config_dir is not None
        if self.explicit:
            self.dirs = [Path(config_dir)]
        else:
            home = home if home is not None else os.environ.get("HOME")
            self.dirs = ([Path(home) / ".dsh"] if home else []) + [Path(DEFAULT_CONFIG_DIR)]
        self.ha_cf = Path(ha_cf) if ha_cf else Path(DEFAULT_HA_CF)
        self.ha_cf_explicit = ha_cf is not None

    @staticmethod
    def read(path: Path) -> str | None:
        """Text of path, None if it does not exist; other errors are reported."""
        try:
            return path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return None
        except IsADirectoryError:
            raise DshConfigError(path, None, "is a directory, expected a file") from None
        except OSError as e:
            raise DshConfigError(path, None, f"cannot read: {e.strerror}") from None

    def conf_texts(self):
        """dsh.conf files, lowest priority first (dsh: /etc then ~/.dsh)."""
        for d in reversed(self.dirs):
            p = d / "dsh.conf"
            text = self.read(p)
            if text is not None:
                yield p, text

    def first(self, rel: str) -> tuple[Path | None, str | None]:
        for d in self.dirs:
            p = d / rel
            text = self.read(p)
            if text is not None:
                return p, text
        return None, None

    def where(self, rel: str) -> str:
        return " nor ".join(str(d / rel) for d in self.dirs)


def _scan_files_options(argv: list[str]) -> tuple[str | None, str | None]:
    config_dir = ha_cf = None
    try:
        opts, _ = getopt.getopt(argv, SHORT, LONG)
    except getopt.GetoptError:
        return None, None  # reported by the real pass
    for o, v in opts:
        if o == "--config-dir":
            config_dir = v
        elif o == "--ha-cf":
            ha_cf = v
    return config_dir, ha_cf


def ha_cf_nodes(text: str, path, warnings: list[str] | None = None) -> list[str]:
    """Node names of an ha.cf. heartbeat's own parser is used when it is
    there, so dsh and heartbeat read `node` lines alike; a file heartbeat
    would refuse for another reason (no link, bad timing...) still gives
    dsh its node list, with a warning, from dsh's small `node` reader."""
    try:
        from halb.heartbeat.config import parse_hacf
    except ImportError:
        return parse_ha_cf_nodes(text, path)
    try:
        return list(parse_hacf(text, str(path)).nodes)
    except ConfigError as e:
        nodes = parse_ha_cf_nodes(text, path)
        if warnings is not None:
            warnings.append(f"heartbeat would refuse this file: {e}")
        return nodes


def _int_opt(opt: str, value: str, minimum: int) -> int:
    try:
        n = int(value, 10)
    except ValueError:
        raise DshUsageError(f"dsh: option {opt}: '{value}' is not an integer") from None
    if n < minimum:
        raise DshUsageError(f"dsh: option {opt}: must be at least {minimum}")
    return n


def _specs_from_file(path: Path, text: str, hosts: list[str], notes: list[str]):
    """Machines of a list file (dsh: strip, skip blanks and '#' lines), in order."""
    notes.append(f"adding the machines of {path}")
    for lineno, raw in enumerate(text.splitlines(), 1):
        spec = raw.strip()
        if spec and not spec.startswith("#"):
            merge_unique(hosts, expand_spec(spec, where=f"{path}:{lineno}: "))


def parse(argv: list[str], files: Files | None = None) -> Plan | str:
    """argv -> Plan; or a text to print ('help'/'version' requests).

    Raises DshUsageError / DshConfigError (exit 255) on bad input.
    """
    if files is None:
        config_dir, ha_cf = _scan_files_options(argv)
        if config_dir is not None and not Path(config_dir).is_dir():
            raise DshUsageError(f"dsh: --config-dir {config_dir}: no such directory")
        files = Files(config_dir, ha_cf)
    try:
        opts, rest = getopt.getopt(argv, SHORT, LONG)
    except getopt.GetoptError as e:
        raise DshUsageError(f"dsh: {e} (see halb dsh --help)") from None

    conf = DshConf()
    warnings: list[str] = []
    notes: list[str] = []
    for path, text in files.conf_texts():
        notes.append(f"loading config file {path}")
        try:
            conf, w = parse_dsh_conf(text, path, conf)
        except ConfigError as e:
            raise DshConfigError(e.path, e.line, e.message) from None
        warnings += w

    remoteshell = conf.remoteshell or DEFAULT_REMOTESHELL
    rshopts = list(conf.remoteshellopt)
    wait = True if conf.waitshell is None else conf.waitshell
    forklimit = conf.forklimit or 0
    show = bool(conf.showmachinenames)
    verbose = bool(conf.verbose)
    quiet = False
    dup_input = False
    timeout = conf.timeout
    gather = False
    script_path = None
    hosts: list[str] = []
    selected = False

    for o, v in opts:
        if o in ("-h", "--help"):
            return USAGE
        if o in ("-V", "--version"):
            from halb import __version__
            return f"halb dsh {__version__} (dancer's dsh options, ClusterShell engine)\n"
        if o in ("-a", "--all"):
            selected = True
            path, text = files.first("machines.list")
            if text is None:
                raise DshUsageError(f"dsh: file {files.where('machines.list')} could not be opened for read")
            _specs_from_file(path, text, hosts, notes)
        elif o in ("-g", "--group"):
            selected = True
            if not v or "/" in v or v in (".", ".."):
                raise DshUsageError(f"dsh: bad group name '{v}'")
            if v.startswith("@"):
                raise DshUsageError(f"dsh: netgroup '{v}': NIS netgroups are not supported, use DIR/group/NAME")
            path, text = files.first(f"group/{v}")
            if text is not None:
                _specs_from_file(path, text, hosts, notes)
            elif v == CLUSTER_GROUP:
                ha = files.read(files.ha_cf)
                if ha is None:
                    raise DshUsageError(
                        f"dsh: unknown group '{v}': no file {files.where('group/' + v)}"
                        f" and no heartbeat config {files.ha_cf}")
                try:
                    nodes = ha_cf_nodes(ha, files.ha_cf, warnings)
                except ConfigError as e:
                    raise DshConfigError(e.path, e.line, e.message) from None
                if not nodes:
                    raise DshConfigError(files.ha_cf, None, "no 'node' line: group 'cluster' is empty")
                notes.append(f"adding the nodes of {files.ha_cf} as group '{v}'")
                merge_unique(hosts, nodes)
            else:
                raise DshUsageError(f"dsh: unknown group '{v}': no file {files.where('group/' + v)}")
        elif o in ("-m", "--machine"):
            selected = True
            items = split_commas(v)
            if not items:
                raise DshUsageError(f"dsh: option {o}: empty machine name")
            for item in items:
                merge_unique(hosts, expand_spec(item, where=f"dsh: option {o}: "))
        elif o in ("-f", "--file"):
            selected = True
            text = files.read(Path(v))
            if text is None:
                raise DshUsageError(f"dsh: file {v} could not be opened for read")
            _specs_from_file(Path(v), text, hosts, notes)
        elif o in ("-r", "--remoteshell"):
            remoteshell = v
        elif o in ("-o", "--remoteshellopt"):
            rshopts.append(v)
        elif o in ("-w", "--wait-shell"):
            wait = True
        elif o in ("-c", "--concurrent-shell"):
            wait = False
        elif o in ("-F", "--forklimit"):
            forklimit = _int_opt(o, v, 0)
            wait = False
        elif o in ("-M", "--show-machine-names"):
            show = True
        elif o in ("-H", "--hide-machine-names"):
            show = False
        elif o in ("-i", "--duplicate-input"):
            dup_input = True
        elif o in ("-b", "--bufsize"):
            _int_opt(o, v, 1)  # dsh's input-copy buffer size: validated, not needed here
        elif o in ("-v", "--verbose"):
            verbose, quiet = True, False
        elif o in ("-q", "--quiet"):
            verbose, quiet = False, True
        elif o in ("-t", "--timeout"):
            timeout = parse_timeout(v, lambda m: DshUsageError(f"dsh: option {o}: {m}"))
        elif o in ("-G", "--gather"):
            gather = True
        elif o in ("-e", "--execute"):
            script_path = v
        elif o in ("-n", "-N", "--num-topology"):
            raise DshUsageError(f"dsh: option {o} (tree topology) is not supported by halb dsh; use -F N")
        # --config-dir / --ha-cf were taken in the first pass

    # dsh's sanity checks, in dsh's order
    if not selected or not hosts:
        raise DshUsageError("dsh: no machine specified (use -a, -g GROUP, -m MACHINE or -f FILE)")
    if dup_input and wait:
        raise DshUsageError("dsh: input duplication (-i) needs concurrent shell (-c)")
    if dup_input and forklimit > 0:
        raise DshUsageError("dsh: input duplication (-i) needs concurrent shell without fork limit (-F)")
    if wait and forklimit > 0:
        raise DshUsageError("dsh: fork limit (-F) and wait shell (-w) cannot be specified at the same time")

    try:
        rsh = shlex.split(remoteshell)
    except ValueError as e:
        raise DshUsageError(f"dsh: remote shell '{remoteshell}': {e}") from None
    if not rsh:
        raise DshUsageError("dsh: empty remote shell name")
    from shutil import which
    if which(rsh[0]) is None:
        raise DshUsageError(f"dsh: remote shell '{rsh[0]}' not found (not executable or not in PATH)")

    script = None
    command = list(rest)
    if script_path is not None:
        if dup_input:
            raise DshUsageError("dsh: -e (script on standard input) and -i cannot be used together")
        p = Path(script_path)
        try:
            script = p.read_bytes()
        except OSError as e:
            raise DshUsageError(f"dsh: script {script_path}: {e.strerror}") from None
        command = ["sh", "-s", "--"] + [shlex.quote(a) for a in rest]
    elif not command and not dup_input:
        raise DshUsageError("dsh: no command given (see halb dsh --help)")

    return Plan(hosts=hosts, command=command, remoteshell=rsh, rshopts=rshopts,
                wait=wait, forklimit=forklimit, show_names=show, dup_input=dup_input,
                script=script, script_path=script_path, timeout=timeout, gather=gather,
                verbose=verbose, quiet=quiet, warnings=warnings, notes=notes)
