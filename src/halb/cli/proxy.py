"""`halb proxy start|stop|status|run`: the user-space engine daemon."""
from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import time

from halb.context import Context
from halb.procs import locked_pid, log_tail, wait_gone
from halb.errors import ConfigError, EngineUnavailable, HalbError, UsageError

USAGE = """usage: halb proxy {run|start|stop|status} [--config FILE] [--no-splice] [--wait SECS]

  run      run the daemon in the foreground (logs to stderr; under systemd to the
           journal); SIGHUP re-reads --config and applies what changed
  start    start the daemon in the background (pid file and log in the run dir)
  stop     stop it cleanly (listeners closed, relays ended, socket and pid file removed)
  status   print its state (exit 3 when not running)

  --config FILE run/start: apply these rules (ipvsadm -S lines) before serving;
                a bad line or a refused rule stops the start, nothing applied
  --no-splice   relay with buffered copies instead of splice(2) (for measurements)
  --maxconn N   run/start: at most N TCP relays + UDP flows at once (default: what the
                descriptor limit allows, raised to the hard limit at start); beyond it new
                TCP connections are reset and UDP flows replace the least recently used
  --maxconn-per-source N
                run/start: at most N of them per client address (default maxconn / 4;
                0 = no cap)
  -t            test the rules file of --config: every error, exit 0 or 1
  --wait SECS   stop: how long to wait for the daemon to exit before SIGTERM, then
                SIGKILL (default 5)
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(f"proxy: {message}")


def _count(opt, low):
    from halb.proxy.limits import MAXCONN_MAX

    def conv(text):
        if not text.isdigit() or len(text) > 9 or not low <= int(text) <= MAXCONN_MAX:
            raise argparse.ArgumentTypeError(f"{opt} needs a whole number from {low} to {MAXCONN_MAX}, "
                                             f"not {text[:20]!r}")
        return int(text)
    return conv


def _parse(argv):
    p = _Parser(prog="halb proxy", add_help=False, usage=USAGE)
    p.add_argument("action", nargs="?")
    p.add_argument("--no-splice", action="store_true")
    p.add_argument("--config")
    p.add_argument("--wait", type=float, default=STOP_WAIT)
    p.add_argument("--maxconn", type=_count("--maxconn", 1))
    p.add_argument("--maxconn-per-source", type=_count("--maxconn-per-source", 0))
    p.add_argument("-h", "--help", action="store_true")
    p.add_argument("-t", "--test", action="store_true")
    a = p.parse_args(argv)
    if a.test:
        a.action = "test"
        return a
    if a.help or a.action is None:
        return None
    if not 0 < a.wait <= 3600:  # also refuses nan and inf
        raise UsageError("proxy: --wait needs a number of seconds from 0 to 3600")
    if a.action not in ("run", "start", "stop", "status"):
        raise UsageError(f"proxy: unknown action '{a.action}' (run, start, stop or status)")
    return a


def main(ctx: Context, argv: list[str]) -> int:
    a = _parse(argv)
    if a is None:
        sys.stdout.write(USAGE)
        return 0 if argv else 2
    if a.action == "test":
        return cmd_test(a)
    return {"run": cmd_run, "start": cmd_start, "stop": cmd_stop, "status": cmd_status}[a.action](ctx, a)


STOP_ANSWER_TIMEOUT = 3.0  # s for the daemon to answer "stop"
STOP_WAIT = 5.0            # s for it to exit, then after SIGTERM, then after SIGKILL


def _pid_path(ctx):
    return ctx.run_dir / "proxy.pid"


def _log_path(ctx):
    from halb.logs import default_logfile

    return default_logfile(ctx.run_dir, "proxy")      # /var/log/halb/proxy.log on a real node


def load_rules(path: str):
    """(path, ops, line_of) from a file of ipvsadm rule lines (`ipvsadm -S`
    output); ConfigError naming file and line on a bad one."""
    from halb.ipvsadm.parse import parse_restore

    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(path, None, f"cannot read: {e.strerror}") from None
    try:
        plan = parse_restore(text)
    except HalbError as e:
        m = re.match(r"line (\d+): (.*)", str(e), re.S)
        if m:
            raise ConfigError(path, int(m.group(1)), m.group(2)) from None
        raise ConfigError(path, None, str(e)) from None
    return path, plan.ops, plan.line_of


def cmd_run(ctx: Context, a) -> int:
    from halb.proxy.daemon import run_daemon

    from halb import logs

    logs.setup("halb-proxy")
    initial = load_rules(a.config) if a.config else None
    return run_daemon(ctx.node, ctx.run_dir, splice=not a.no_splice, initial=initial,
                      maxconn=a.maxconn, maxconn_per_source=a.maxconn_per_source)


def cmd_test(a) -> int:
    """`-t`: every error of the rules file (ipvsadm -S lines), exit 0 or 1."""
    from halb.configtest import all_errors, report

    if not a.config:
        return report([], (), ["no rules file (--config): nothing to check"])
    path = a.config
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError as e:
        return report([ConfigError(path, None, f"cannot read: {e.strerror}")])

    def parse(t):
        from halb.ipvsadm.parse import parse_restore
        from halb.model import Table
        try:
            plan = parse_restore(t)
        except HalbError as e:
            m = re.match(r"line (\d+): (.*)", str(e), re.S)
            if m:
                raise ConfigError(path, int(m.group(1)), m.group(2)) from None
            raise ConfigError(path, None, str(e)) from None
        table = Table(default_fwd="masq")
        table.allowed_fwd, table.engine_name = ("masq",), "proxy"
        try:
            table.apply(plan.ops)          # what the daemon would refuse (a duplicate, gate...)
        except HalbError as e:
            raise ConfigError(path, plan.line_of(getattr(e, "index", None)), str(e)) from None
        return plan
    _, errors = all_errors(parse, text)
    return report(errors, (), [path])


def _running(ctx):
    from halb.proxy.client import connect

    try:
        return connect(ctx)
    except EngineUnavailable:
        return None


def cmd_start(ctx: Context, a) -> int:
    eng = _running(ctx)
    if eng is not None:
        pid = eng.status()["pid"]
        eng.close()
        raise HalbError(f"halb proxy for node {ctx.node} is already running (pid {pid})")
    try:
        ctx.ensure_run_dir()
    except OSError as e:
        raise HalbError(f"cannot use run dir {ctx.run_dir}: {e.strerror}") from None
    logf = _log_path(ctx)
    if a.config:
        load_rules(a.config)  # a bad line is reported here, before anything starts
    cmd = [sys.executable, "-m", "halb", "--node", ctx.node, "--run-dir", str(ctx.run_dir),
           "--engine", "proxy", "proxy", "run"] + (["--no-splice"] if a.no_splice else []) + \
        (["--config", os.path.abspath(a.config)] if a.config else []) + \
        (["--maxconn", str(a.maxconn)] if a.maxconn is not None else []) + \
        (["--maxconn-per-source", str(a.maxconn_per_source)] if a.maxconn_per_source is not None else [])
    with open(logf, "ab") as out, open(os.devnull, "rb") as devnull:
        start_at = out.tell()
        proc = subprocess.Popen(cmd, stdin=devnull, stdout=out, stderr=out, start_new_session=True,
                                close_fds=True)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        rc = proc.poll()
        if rc is not None:
            msg = log_tail(logf, start_at)
            raise HalbError(f"halb proxy for node {ctx.node} did not start (exit {rc}): {msg}")
        eng = _running(ctx)
        if eng is not None:
            eng.close()
            print(f"halb proxy for node {ctx.node} started (pid {proc.pid}, log {logf})")
            return 0
        time.sleep(0.05)
    proc.terminate()
    raise HalbError(f"halb proxy for node {ctx.node} did not come up within 20 s (see {logf})")


def _locked_pid(ctx) -> int | None:
    """The pid of the daemon holding the node's pid file locked, or None."""
    return locked_pid(_pid_path(ctx))


def cmd_stop(ctx: Context, a) -> int:
    pid = _locked_pid(ctx)
    eng = _running(ctx)
    if eng is None and pid is None:
        print(f"halb proxy for node {ctx.node} is not running")
        return 0
    if eng is not None:
        eng.sock.settimeout(STOP_ANSWER_TIMEOUT)
        try:
            pid = pid or eng.status()["pid"]
            eng.stop()
        except HalbError:
            pass  # not answering: signals below
        finally:
            eng.close()
    if pid is None:
        raise HalbError(f"halb proxy for node {ctx.node} did not stop (no pid known)")
    how = "stopped"
    if not wait_gone(pid, a.wait):
        os.kill(pid, signal.SIGTERM)
        if not wait_gone(pid, a.wait):
            os.kill(pid, signal.SIGKILL)
            how = "killed (it did not stop when asked)"
            if not wait_gone(pid, a.wait):
                raise HalbError(f"halb proxy for node {ctx.node} (pid {pid}) did not stop")
    from halb.proxy.client import socket_path

    for leftover in (socket_path(ctx), _pid_path(ctx)):  # after a kill
        try:
            leftover.unlink()
        except FileNotFoundError:
            pass
    print(f"halb proxy for node {ctx.node} {how}")
    return 0


def cmd_status(ctx: Context, a) -> int:
    eng = _running(ctx)
    if eng is None:
        print(f"halb proxy for node {ctx.node}: not running")
        return 3
    try:
        st = eng.status()
        t = eng.timeouts()
    finally:
        eng.close()
    up = int(st["uptime"])
    print(f"halb proxy for node {st['node']}: running (pid {st['pid']}, up {up // 3600}h{up // 60 % 60:02d}m{up % 60:02d}s)")
    from halb.proxy.client import socket_path

    print(f"  control socket: {socket_path(ctx)}")
    print(f"  data path:      {'splice for large transfers' if st['splice'] else 'buffered copy'} "
          f"({st['bytes_spliced']} bytes spliced, {st['bytes_copied']} copied by ended connections)")
    print(f"  services:       {st['services']} ({st['dests']} real servers)")
    print(f"  connections:    {st['activeconns']} active, {st['inactconns']} inactive "
          f"({st['tcp_relays']} TCP relays open, {st['udp_flows']} UDP flows)")
    print(f"  persistence:    {st['templates']} templates")
    print(f"  timeouts:       tcp {t.tcp} tcpfin {t.tcpfin} udp {t.udp}")
    lim = st.get("limits")
    if lim:
        from halb.proxy.limits import summary

        print(f"  limits:         {summary(lim)}; descriptors: ulimit -n {lim['nofile']}, "
              f"{lim['fds']} of {lim['fd_budget']} held by relays, {lim['reserve']} reserved")
    return 0
