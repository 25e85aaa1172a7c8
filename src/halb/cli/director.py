"""`halb director [-d] [CONFIG] start|stop|restart|try-restart|reload|force-reload|status`

ldirectord's command line. CONFIG is a path, or a name looked up in
/etc/ha.d/ and /etc/ha.d/conf/ (default: ldirectord.cf). -d stays in the
foreground and logs every check and table edit on stderr.
"""
from __future__ import annotations

import asyncio
import json
import logging
import logging.handlers
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from halb.context import Context
from halb.director import daemon as dmod
from halb.director.config import load
from halb.errors import ConfigError, HalbError, UsageError
from halb.procs import pid_alive

USAGE = """usage: halb director [-d] [CONFIG] start|stop|restart|try-restart|reload|force-reload|status
       halb director -t [CONFIG]

  -d, --debug   stay in the foreground, log every check and table edit (DEBUG2 lines)
  -t            test the configuration: every error of the file, exit 0 or 1
  --foreground  start: stay in the foreground (as halb-director@.service runs it)
  CONFIG        ldirectord.cf path or name (looked up in /etc/ha.d and /etc/ha.d/conf)
  --version     print halb's version
"""
COMMANDS = ("start", "stop", "restart", "try-restart", "reload", "force-reload", "status")


def find_config(name: str) -> Path:
    p = Path(name)
    for cand in (Path("/etc/ha.d") / name, Path("/etc/ha.d/conf") / name):
        if not p.is_absolute() and "/" not in name and cand.is_file():
            return cand
    if p.is_file():
        return p.resolve()
    raise ConfigError(name, None, "Config file not found")


def read_pid(ctx: Context, cfg: Path, ready: bool = False) -> tuple[int | None, bool]:
    """(pid, alive) from the pid file (its first line; the daemon adds a line
    "ready" once its first check round is done: with ready=True, a daemon
    still starting counts as not alive)."""
    try:
        lines = dmod.pid_path(ctx, cfg).read_text().split()
        pid = int(lines[0])
    except (OSError, ValueError, IndexError):
        return None, False
    return pid, pid_alive(pid, "director") and (not ready or "ready" in lines[1:])


def control(ctx: Context, cfg: Path, cmd: str, timeout: float = 60) -> dict:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(str(dmod.sock_path(ctx, cfg)))
        s.sendall(json.dumps({"cmd": cmd}).encode() + b"\n")
        data = s.makefile("rb").readline()
    except OSError as e:
        raise HalbError(f"cannot reach the director for {cfg}: {e.strerror or e}") from None
    finally:
        s.close()
    if not data:
        raise HalbError(f"the director for {cfg} closed the control connection")
    return json.loads(data)


def setup_logging(debug: bool, logfile: str | None, cfgname: str, supervised: bool = False) -> None:
    root = logging.getLogger("halb.director")
    root.handlers.clear()
    root.propagate = False
    from halb.sdnotify import under_journal

    if under_journal() and not debug:
        # systemd: the journal once, with priorities (logfile= still writes its file below)
        from halb.logs import JournalFormatter
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(JournalFormatter())
        root.addHandler(h)
        if logfile is None or not logfile.startswith("/"):
            root.setLevel(logging.INFO)
            return
        supervised = False
    if supervised and not debug:
        # as ldirectord under daemontools: "[date] message" on stdout
        h = logging.StreamHandler(sys.stdout)
        h.setFormatter(logging.Formatter("[%(asctime)s] %(message)s", "%a %b %d %H:%M:%S %Y"))
    elif debug or logfile is None:
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter("%(message)s"))
    elif logfile.startswith("/"):
        from halb import logs
        h = logging.handlers.WatchedFileHandler(logfile)     # follows logrotate
        logs._file_handlers.append(h)                        # reopened on SIGHUP/SIGUSR1
        h.setFormatter(logging.Formatter(f"[%(asctime)s|{cfgname}|%(process)d] %(message)s",
                                         "%a %b %d %H:%M:%S %Y"))
    else:
        from logging import handlers as _lh
        try:
            h = _lh.SysLogHandler("/dev/log", facility=logfile)
        except (OSError, KeyError, ValueError):
            h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter("ldirectord: %(message)s"))
    root.addHandler(h)
    root.setLevel(logging.DEBUG if debug else logging.INFO)


def run_foreground(ctx: Context, cfg_path: Path, debug: bool) -> int:
    from halb.sdnotify import under_journal

    cfg = load(cfg_path)
    logfile = cfg.logfile
    if not debug and not cfg.supervised and logfile is None and not under_journal():
        logfile = str(dmod.log_path(ctx, cfg_path))
    setup_logging(debug, None if (debug or cfg.supervised) else logfile, cfg_path.name, cfg.supervised)
    d = dmod.Director(ctx, cfg_path, debug=debug)
    try:
        import uvloop
        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    return runner(d.run(cfg))


def cmd_start(ctx: Context, cfg_path: Path, debug: bool, internal_fg: bool) -> int:
    cfg = load(cfg_path)  # a bad file fails here, before anything starts
    pid, alive = read_pid(ctx, cfg_path)
    if alive:
        print(f"halb director for {cfg_path} is already running with pid: {pid}", file=sys.stderr)
        return 0
    if debug or cfg.supervised or internal_fg:
        return run_foreground(ctx, cfg_path, debug)
    ctx.ensure_run_dir()
    errf = ctx.run_dir / f"director.{dmod.cfg_name(cfg_path)}.start.err"
    argv = [sys.executable, "-m", "halb", "--node", ctx.node, "--run-dir", str(ctx.run_dir),
            "--engine", ctx.engine, "director", "--foreground", str(cfg_path), "start"]
    with open(errf, "wb") as err:
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                             start_new_session=True, close_fds=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        rc = p.poll()
        if rc is not None:
            msg = errf.read_text(errors="replace").strip().splitlines()
            raise HalbError(msg[-1].removeprefix("halb: ") if msg else f"director exited with status {rc}")
        pid, alive = read_pid(ctx, cfg_path, ready=True)
        if alive and pid == p.pid:
            return 0
        time.sleep(0.05)
    raise HalbError(f"the director for {cfg_path} did not come up within 30 s (see {errf})")


def cmd_stop(ctx: Context, cfg_path: Path, timeout: float = 60) -> int:
    pid, alive = read_pid(ctx, cfg_path)
    if not alive:
        return 0
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid, "director") or not dmod.pid_path(ctx, cfg_path).exists():
            # wait for the process itself to be gone
            while pid_alive(pid, "director") and time.monotonic() < deadline:
                time.sleep(0.05)
            return 0
        time.sleep(0.05)
    raise HalbError(f"the director (pid {pid}) did not stop within {timeout:.0f} s")


def cmd_status(ctx: Context, cfg_path: Path) -> int:
    pid, alive = read_pid(ctx, cfg_path)
    if not alive:
        if pid is not None:
            print(f"halb director stale pid file {dmod.pid_path(ctx, cfg_path)} for {cfg_path}", file=sys.stderr)
            print(f"halb director is stopped for {cfg_path}")
            return 1
        print(f"halb director is stopped for {cfg_path}")
        return 3
    print(f"halb director for {cfg_path} is running with pid: {pid}")
    try:
        st = control(ctx, cfg_path, "status", timeout=10)["status"]
    except HalbError:
        return 0
    for v in st["virtuals"]:
        print(f"  {v['protocol'].upper()} {v['virtual']}  checktype={v['checktype']} service={v['service']}"
              + ("  (fallback active)" if v["fallback_up"] else ""))
        for r in v["reals"]:
            w = "-" if r["weight"] is None else r["weight"]
            state = "up" if r["up"] else "down"
            extra = f" soft-failures={r['failcount']}" if r["failcount"] and r["up"] else ""
            print(f"    -> {r['real']:<24} {state:<5} weight={w}{extra}  {r['last_msg'][:60]}")
    if st.get("last_reload_error"):
        print(f"  last reload failed: {st['last_reload_error']}")
    return 0


def cmd_reload(ctx: Context, cfg_path: Path) -> int:
    pid, alive = read_pid(ctx, cfg_path)
    if not alive:
        print(f"halb director is stopped for {cfg_path}", file=sys.stderr)
        return 1
    reply = control(ctx, cfg_path, "reload")
    if not reply.get("ok"):
        raise HalbError(reply.get("message") or reply.get("error") or "reload failed")
    return 0


def test_config(name: str) -> int:
    """`-t`: every error of an ldirectord.cf (names resolved as the daemon would)."""
    from halb.configtest import all_errors, report
    from halb.director.config import parse_text
    from halb.heartbeat.config import _read

    try:
        path = find_config(name)
        text = _read(path)
    except ConfigError as e:
        return report([e])
    def stand_in(ln, line):      # a bad virtual= header: its indented lines are still checked
        if line.startswith("virtual") and "=" in line:
            return f"virtual=192.0.2.1:{ln}\n"
        return "\n"
    cfg, errors = all_errors(lambda t: parse_text(t, str(path)), text, stand_in)
    return report(errors, getattr(cfg, "warnings", ()) if cfg else (), [path])


def main(ctx: Context, argv: list[str]) -> int:
    debug = internal_fg = test = False
    args = []
    for a in argv:
        if a in ("-d", "--debug"):
            debug = True
        elif a == "--foreground":
            internal_fg = True
        elif a == "-t":
            test = True
        elif a in ("-h", "--help"):
            sys.stdout.write(USAGE)
            return 0
        elif a == "--":
            continue
        elif a.startswith("-"):
            raise UsageError(f"director: unknown option '{a}'\n{USAGE.rstrip()}")
        else:
            args.append(a)
    if test:
        if len(args) > 1:
            raise UsageError("director: -t takes one CONFIG (default ldirectord.cf)")
        return test_config(args[0] if args else "ldirectord.cf")
    if len(args) == 1:
        name, cmd = "ldirectord.cf", args[0]
    elif len(args) == 2:
        name, cmd = args
    else:
        raise UsageError(f"director: expected [CONFIG] COMMAND\n{USAGE.rstrip()}")
    if cmd not in COMMANDS:
        raise UsageError(f"director: unknown command '{cmd}' (one of: {', '.join(COMMANDS)})")
    if cmd in ("start", "restart") or (cmd == "try-restart"):
        cfg_path = find_config(name)
    else:
        try:
            cfg_path = find_config(name)
        except ConfigError:
            cfg_path = Path(name).resolve()
    if cmd == "start":
        return cmd_start(ctx, cfg_path, debug, internal_fg)
    if cmd == "stop":
        return cmd_stop(ctx, cfg_path)
    if cmd in ("restart", "try-restart"):
        pid, alive = read_pid(ctx, cfg_path)
        if cmd == "try-restart" and not alive:
            return 0
        load(cfg_path)  # do not stop a running director for a bad file
        cmd_stop(ctx, cfg_path)
        return cmd_start(ctx, cfg_path, debug, internal_fg)
    if cmd in ("reload", "force-reload"):
        return cmd_reload(ctx, cfg_path)
    return cmd_status(ctx, cfg_path)
