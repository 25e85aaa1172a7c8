"""The director daemon: a thin asyncio shell around DirectorCore.

One task per (virtual, real server) runs its check every checkinterval
(bounded by its timeout) and feeds the result to the core; the core's
decisions are applied in order by one worker that batches table edits into
one atomic engine.execute(). Alerts, fallback commands and monitor-file
lines run beside it. A control socket in the run dir answers status, reload
and stop; SIGHUP reloads, SIGTERM/SIGINT stop.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import hashlib
import logging
import os
import signal
import time
from pathlib import Path
from typing import Callable

from halb import events, logs, sdnotify
from halb.context import Context
from halb.director import alerts, checks
from halb.director.config import Config, load
from halb.director.state import Alert, Command, DirectorCore, Edit, Log, Monitor, fmt_hp
from halb.errors import ConfigError, EngineUnavailable, HalbError
from halb.procs import hold_pid_file, serve_commands

log = logging.getLogger("halb.director")
RECONCILE_EVERY = 5  # seconds between checks that our virtual services are still in the table


def cfg_name(config_path: str | Path) -> str:
    """The config's name in run-dir file names: its base name and 8 hex digits
    of its full path (two configs of the same base name in different
    directories are two directors; one config named two ways is one)."""
    import hashlib

    p = Path(config_path)
    full = str(p.resolve()) if p.exists() else os.path.abspath(p)
    return f"{p.name}.{hashlib.sha256(full.encode()).hexdigest()[:8]}"


def pid_path(ctx: Context, config_path) -> Path:
    return ctx.run_dir / f"director.{cfg_name(config_path)}.pid"


SUN_PATH_MAX = 107   # bytes of a unix socket path (sun_path is 108, with its NUL)


def sock_path(ctx: Context, config_path) -> Path:
    """The control socket; when the run dir is deep, the config's base name is
    left out of it (the digest alone still names one config), so a long path
    never stops a director from starting."""
    p = ctx.run_dir / f"director.{cfg_name(config_path)}.sock"
    if len(os.fsencode(str(p))) > SUN_PATH_MAX:
        p = ctx.run_dir / f"d.{cfg_name(config_path).rsplit('.', 1)[1]}.sock"
    if len(os.fsencode(str(p))) > SUN_PATH_MAX:
        raise HalbError(f"run dir {ctx.run_dir} is too long for a control socket "
                        f"(unix socket paths hold {SUN_PATH_MAX} bytes): give a shorter --run-dir")
    return p


def log_path(ctx: Context, config_path) -> Path:
    from halb.logs import default_logfile

    # the name a user looks for; /var/log/halb/ on a real node (the lab: its run dir)
    return default_logfile(ctx.run_dir, f"director.{Path(config_path).name}")


def describe_op(op) -> str:
    """An op in ipvsadm's words (for -d logs)."""
    flag = {"add-service": "-A", "edit-service": "-E", "del-service": "-D", "add-dest": "-a",
            "edit-dest": "-e", "del-dest": "-d", "clear": "-C", "zero": "-Z", "set-timeouts": "--set"}[op.kind]
    if op.key is None:
        return f"ipvsadm {flag}"
    k = op.key
    svc = f"-f {k.fwmark}" if k.proto == "fwm" else f"{'-t' if k.proto == 'tcp' else '-u'} {fmt_hp(k.addr, k.port)}"
    s = f"ipvsadm {flag} {svc}"
    if op.service is not None and op.kind in ("add-service", "edit-service"):
        s += f" -s {op.service.scheduler}"
        if op.service.persistent:
            s += f" -p {op.service.timeout}"
    if op.dest is not None:
        d = op.dest
        s += f" -r {fmt_hp(d.addr, d.port)}"
        if op.kind != "del-dest":
            s += f" {({'gate': '-g', 'masq': '-m', 'ipip': '-i'}).get(d.fwd or '', '')} -w {d.weight}"
    return s


class LatencyStats:
    """Check lateness (actual start - scheduled start), over a sliding window."""

    def __init__(self, size: int = 20000):
        self.size = size
        self.samples: list[float] = []
        self.i = 0
        self.checks = 0

    def add(self, x: float) -> None:
        self.checks += 1
        if len(self.samples) < self.size:
            self.samples.append(x)
        else:
            self.samples[self.i] = x
            self.i = (self.i + 1) % self.size

    def summary(self) -> dict:
        s = sorted(self.samples)
        if not s:
            return {"checks": self.checks}

        def pct(p: float) -> float:
            return s[min(len(s) - 1, int(p * len(s)))]
        return {"checks": self.checks, "lateness_p50": pct(0.5), "lateness_p99": pct(0.99),
                "lateness_max": s[-1], "window": len(s)}


class Director:
    def __init__(self, ctx: Context, config_path: str | Path, debug: bool = False,
                 engine_factory: Callable | None = None):
        self.ctx = ctx
        self.config_path = str(config_path)
        self.debug = debug
        if engine_factory is None:
            from halb.engine import open_engine
            engine_factory = open_engine
        self.engine_factory = engine_factory
        self.engine = None
        self.cfg: Config | None = None
        self.core: DirectorCore | None = None
        self.tasks: dict[tuple[str, tuple[str, int]], tuple[asyncio.Task, checks.CheckSpec, float]] = {}
        self.queue: asyncio.Queue = asyncio.Queue()
        self.executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="engine")
        self.stopping = asyncio.Event()
        self.lateness = LatencyStats()
        self.durations = LatencyStats()
        self.started = time.time()
        self.cfg_digest: str | None = None
        self.cfg_mtime: float | None = None
        self.bg: set[asyncio.Task] = set()
        self.edits_applied = 0
        self.edit_errors = 0
        self.check_sem = asyncio.Semaphore(1024)
        self.engine_refreshes = True  # cleared when the engine has no refresh()
        self.last_reload_error: str | None = None
        self.reloads = 0
        events.configure(ctx.run_dir, ctx.node)   # where events of this process go (the nft healer's too)
        self.check_seconds: dict[tuple[str, tuple[str, int]], float] = {}

    # -- logging ---------------------------------------------------------------
    def info(self, msg: str) -> None:
        log.info(msg)

    def event(self, kind: str, subject: str, text: str) -> None:
        events.record(kind, subject, text, run_dir=self.ctx.run_dir, node=self.ctx.node)

    def dbg(self, msg: str) -> None:
        if self.debug:
            log.debug("DEBUG2: " + msg)

    # -- engine ------------------------------------------------------------------
    def _engine_call(self, fn_name: str, *args):
        """Run in the engine thread; reconnect once if the engine went away."""
        for attempt in (0, 1):
            try:
                if self.engine is None:
                    self.engine = self.engine_factory(self.ctx)
                return getattr(self.engine, fn_name)(*args)
            except EngineUnavailable:
                if self.engine is not None:
                    try:
                        self.engine.close()
                    except Exception:
                        pass
                self.engine = None
                if attempt:
                    raise

    async def engine_call(self, fn_name: str, *args):
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, self._engine_call, fn_name, *args)

    # -- applying decisions ----------------------------------------------------
    async def apply_worker(self) -> None:
        while True:
            batch = [await self.queue.get()]
            while not self.queue.empty():
                batch.append(self.queue.get_nowait())
            try:
                await self._apply(batch)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # never let the worker die
                log.error(f"internal error while applying decisions: {type(e).__name__}: {e}")
            finally:
                for _ in batch:
                    self.queue.task_done()

    async def _apply(self, actions: list) -> None:
        edits = [a for a in actions if isinstance(a, Edit)]
        failed: set[int] = set()
        if edits:
            ops = [op for e in edits for op in e.ops]
            try:
                await self.engine_call("execute", ops)
                self.edits_applied += len(ops)
            except HalbError:
                # one at a time, to apply what can be and report the rest
                for e in edits:
                    try:
                        await self.engine_call("execute", e.ops)
                        self.edits_applied += len(e.ops)
                    except HalbError as err1:
                        self.edit_errors += 1
                        failed.add(id(e))
                        log.error(f"table edit failed: {e.msg}: {err1}")
                try:
                    live = await self.engine_call("services")
                    self.core.resync(live)
                except HalbError as err2:
                    log.error(f"cannot read the table back: {err2}")
        for a in actions:
            if isinstance(a, Edit):
                if id(a) not in failed:
                    self.info(a.msg)
                    ev = events.director_event(a.msg)
                    if ev:
                        self.event(ev[0], ev[1], a.msg)
                    for op in a.ops:
                        self.dbg(f"engine {self.ctx.engine}: {describe_op(op)}")
            elif isinstance(a, Log):
                if a.debug:
                    self.dbg(a.msg)
                else:
                    self.info(a.msg)
            elif isinstance(a, Alert):
                self._spawn(self._send_alert(a))
            elif isinstance(a, Command):
                self._spawn(self._run_command(a.cmd))
            elif isinstance(a, Monitor):
                self._monitor(a)

    def _spawn(self, coro) -> None:
        t = asyncio.get_running_loop().create_task(coro)
        self.bg.add(t)
        t.add_done_callback(self.bg.discard)

    async def _send_alert(self, a: Alert) -> None:
        try:
            await asyncio.to_thread(alerts.send, a.subject, a.to, a.smtp, self.cfg.emailalertfrom, a.status)
            self.dbg(f"emailalert sent to {a.to} via {a.smtp or 'sendmail'}: {a.subject}")
        except Exception as e:
            log.error(f"failed to send SMTP email message to {a.to} via {a.smtp or 'sendmail'}: {e}")

    async def _run_command(self, cmd: str) -> None:
        self.info(f"Running system({cmd})")
        try:
            p = await asyncio.create_subprocess_shell(cmd, stdin=asyncio.subprocess.DEVNULL,
                                                      stdout=asyncio.subprocess.DEVNULL,
                                                      stderr=asyncio.subprocess.DEVNULL)
            rc = await asyncio.wait_for(p.wait(), 60)
            if rc != 0:
                log.error(f"system({cmd}) failed: exit status {rc}")
        except (OSError, asyncio.TimeoutError) as e:
            log.error(f"system({cmd}) failed: {e}")

    def _monitor(self, a: Monitor) -> None:
        try:
            with open(a.path, "a") as fh:
                msg = a.msg.replace("%", "%25").replace("|", "%7c").replace("\r", "%0d").replace("\n", "%0a")
                fh.write(f"[{time.ctime()}] [{os.getpid()}] {a.real.replace(':', ' ')} [{a.state}] {msg}\n")
        except OSError as e:
            log.error(f"Error writing to monitorfile '{a.path}': {e}")

    def submit(self, actions: list) -> None:
        for a in actions:
            if isinstance(a, Log) and a.debug and not self.debug:
                continue
            self.queue.put_nowait(a)

    # -- checks -------------------------------------------------------------------
    def _maintenance(self, addr: str, port: int) -> str | None:
        d = self.cfg.maintenancedir
        if not d:
            return None
        a = f"[{addr}]" if ":" in addr else addr
        for name in (f"{a}:{port}", a):
            if os.path.exists(os.path.join(d, name)):
                return name
        return None

    async def checker(self, vid: str, rkey: tuple[str, int], spec: checks.CheckSpec, interval: float,
                      phase: float) -> None:
        loop = asyncio.get_running_loop()
        num_connects = 10 ** 9  # combined: the first check is a negotiate
        real_id = fmt_hp(*rkey)
        next_t = loop.time() + phase
        first = True
        await asyncio.sleep(phase)
        while True:
            now_mono = loop.time()
            if not first:
                self.lateness.add(max(0.0, now_mono - next_t))
            m = self._maintenance(spec.host, rkey[1])
            if m is not None:
                self.dbg(f"Server maintenance: Found file {m}")
                self.submit(self.core.result(vid, rkey, False, time.time(), "Server in maintenance", force=True))
            elif spec.checktype != "off":
                negotiate = None
                label = spec.checktype
                if spec.checktype == "combined":
                    negotiate = num_connects >= spec.num_connects
                    label = "negotiate" if negotiate else "combined-connect"
                if self.debug:
                    self.dbg(f"Checking {label}: real server={real_id} (virtual={vid})")
                async with self.check_sem:
                    t_chk = loop.time()
                    t_pc = time.perf_counter()   # uvloop's time() is cached per loop turn (ms)
                    res = await checks.run(spec, negotiate)
                    self.durations.add(loop.time() - t_chk)
                    self.check_seconds[(vid, rkey)] = time.perf_counter() - t_pc
                if spec.checktype == "combined":
                    if negotiate:
                        if res.ok:
                            num_connects = 0
                    else:
                        num_connects = num_connects + 1 if res.ok else 10 ** 9
                if self.debug:
                    self.dbg(f"check {label} {real_id} ({vid}): {'up' if res.ok else 'down'}: {res.msg}")
                self.submit(self.core.result(vid, rkey, res.ok, time.time(), res.msg))
            else:
                self.dbg("Checking off: No real or fallback servers to be added")
            # schedule: one check every interval from the start slot (phase:
            # the servers' slots are spread over the interval); a slot
            # missed because a check took too long is skipped
            next_t += interval
            first = False
            now_mono = loop.time()
            if next_t < now_mono:
                next_t += ((now_mono - next_t) // interval + 1) * interval
            await asyncio.sleep(next_t - now_mono)

    async def _first_round(self, budget: float = 1.0) -> dict:
        """Check every real server once, all at once, before the first table
        edit; keep the answers that came within `budget` seconds (the others
        are left to their regular checker). Servers in maintenance, with
        checks off or with a numeric checktype are left to the checkers."""
        jobs = {}
        for v in self.cfg.virtuals:
            for r in v.reals:
                spec = checks.CheckSpec.build(v, r)
                rkey = (r.addr, v.real_port(r))
                if spec.checktype in ("off", "combined") or self._maintenance(spec.host, rkey[1]) is not None:
                    continue
                jobs[(v.id, rkey)] = spec
        if not jobs:
            return {}

        async def one(spec):
            async with self.check_sem:
                return await checks.run(spec, None)

        tasks = {asyncio.ensure_future(one(spec)): k for k, spec in jobs.items()}
        done, pending = await asyncio.wait(tasks, timeout=budget)
        for t in pending:
            t.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        out = {}
        for t in done:
            if not t.cancelled() and t.exception() is None:
                out[tasks[t]] = t.result()
        self.dbg(f"first check round: {len(out)} of {len(jobs)} real servers answered within {budget:g} s")
        return out

    def _sync_checkers(self) -> None:
        wanted: dict[tuple[str, tuple[str, int]], tuple[checks.CheckSpec, float]] = {}
        for v in self.cfg.virtuals:
            for r in v.reals:
                wanted[(v.id, (r.addr, v.real_port(r)))] = (checks.CheckSpec.build(v, r), float(v.checkinterval))
        for k, (task, spec, interval) in list(self.tasks.items()):
            if k not in wanted or wanted[k] != (spec, interval):
                task.cancel()
                del self.tasks[k]
        n = max(1, len(wanted))
        for i, (k, (spec, interval)) in enumerate(wanted.items()):
            if k in self.tasks:
                continue
            # first checks spread over at most 1 s (a burst of thousands of
            # connections overflows listen backlogs), then every interval
            phase = (i / n) * min(interval, 1.0)
            t = asyncio.get_running_loop().create_task(self.checker(k[0], k[1], spec, interval, phase))
            self.tasks[k] = (t, spec, interval)

    # -- config file watching ------------------------------------------------------
    def _digest(self) -> tuple[float | None, str | None]:
        try:
            st = os.stat(self.config_path)
            with open(self.config_path, "rb") as fh:
                return st.st_mtime, hashlib.md5(fh.read()).hexdigest()
        except OSError:
            return None, None

    async def watch_config(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            try:
                mtime = os.stat(self.config_path).st_mtime
            except OSError:
                continue
            if mtime == self.cfg_mtime:
                continue
            self.cfg_mtime, digest = self._digest()
            if digest is None or digest == self.cfg_digest:
                continue
            self.info(f"Configuration file '{self.config_path}' has changed on disk")
            if self.cfg.autoreload:
                self.info(" - reread new configuration")
                await self.reload()
            else:
                self.info(" - ignore new configuration")
                self.cfg_digest = digest
            cb = self.cfg.callback
            if cb and os.access(cb.split()[0], os.X_OK):
                self._spawn(self._run_command(f"{cb} {self.config_path}"))

    async def ticker(self) -> None:
        n = 0
        while True:
            await asyncio.sleep(1.0)
            self.submit(self.core.tick(time.time()))
            n += 1
            await self._refresh_engine()
            if n % RECONCILE_EVERY == 0:
                try:
                    live = await self.engine_call("services")
                except HalbError as e:
                    log.error(f"cannot read the table: {e}")
                    continue
                self.submit(self.core.reconcile(live, time.time()))

    async def _refresh_engine(self) -> None:
        """Engines whose connection-count schedulers (lc, wlc, sed, nq, fo,
        ovf, lblc, lblcr) are precomputed from live counts (nft) are
        refreshed once a second while the director runs: the director is the
        nft engine's controller, so no separate `halb nft controller` is
        needed. Engines without `refresh` (proxy: exact counts) are skipped."""
        if not self.engine_refreshes:
            return
        try:
            n = await self.engine_call("refresh")
        except AttributeError:
            self.engine_refreshes = False
            return
        except HalbError as e:
            log.error(f"engine refresh failed: {e}")
            return
        if n:
            self.dbg(f"engine {self.ctx.engine}: refreshed {n} connection-count scheduled service(s)")

    def _start_healer(self):
        """The nft engine's table and routing put back within a second when a
        firewall reload removes them (halb.nft.heal), while this director runs."""
        heal = getattr(self.engine, "heal", None)
        if heal is None:
            return None
        from halb.nft.heal import Healer
        vips = getattr(self.engine, "guard_vips", lambda: [])()
        return Healer(heal, report=log.warning, guard_vips=vips).start()

    # -- execute= : other director instances ------------------------------------
    def _child_path(self, name: str) -> str:
        if os.path.isabs(name):
            return name
        beside = os.path.join(os.path.dirname(self.config_path), name)
        return beside if os.path.exists(beside) else name

    async def children(self, cmd: str, names) -> None:
        """ldirectord's ld_cmd_children: run `halb director CHILD cmd`."""
        import sys
        for name in names:
            child = self._child_path(name)
            cmds = ["reload", "start"] if cmd == "reload_or_start" else [cmd]
            for c in cmds:
                argv = [sys.executable, "-m", "halb", "--node", self.ctx.node, "--run-dir", str(self.ctx.run_dir),
                        "--engine", self.ctx.engine, "director", child, c]
                self.info(f"Running system(halb director {child} {c})")
                p = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.DEVNULL,
                                                         stdout=asyncio.subprocess.DEVNULL,
                                                         stderr=asyncio.subprocess.PIPE)
                _, err = await p.communicate()
                if p.returncode == 0:
                    break
                msg = err.decode(errors="replace").strip().splitlines()
                log.error(f"system(halb director {child} {c}) failed: {msg[-1] if msg else p.returncode}")

    # -- reload / status / stop ---------------------------------------------------
    async def _sighup(self):
        """SIGHUP (systemctl reload): reopen the log files, then reload."""
        sdnotify.reloading()
        logs.reopen()
        try:
            await self.reload()
        finally:
            sdnotify.ready()

    async def reload(self) -> tuple[bool, str]:
        self.info("Reloading Linux Director Daemon config")
        mtime, digest = self._digest()
        try:
            new = await asyncio.to_thread(load, self.config_path)
        except ConfigError as e:
            msg = f"Reload failed, keeping the running configuration: {e}"
            log.error(msg)
            self.last_reload_error = str(e)
            self.cfg_mtime, self.cfg_digest = mtime, digest
            return False, msg
        self._warn(new)
        try:
            live = await self.engine_call("services")
            self._check_engine(new)
        except ConfigError as e:
            msg = f"Reload failed, keeping the running configuration: {e}"
            log.error(msg)
            self.last_reload_error = str(e)
            return False, msg
        except HalbError as e:
            msg = f"Reload failed, cannot read the table: {e}"
            log.error(msg)
            return False, msg
        old_children = set(self.cfg.execute)
        self.cfg = new
        self.cfg_mtime, self.cfg_digest = mtime, digest
        new_children = set(new.execute)
        self._spawn(self._reload_children(old_children, new_children))
        self.last_reload_error = None
        self.reloads += 1
        self.event("reload", Path(self.config_path).name, f"configuration {self.config_path} reloaded")
        self.submit(self.core.reload(new, live, time.time()))
        self._sync_checkers()
        await self.queue.join()
        return True, f"configuration {self.config_path} reloaded"

    async def _reload_children(self, old: set, new: set) -> None:
        await self.children("stop", sorted(old - new))
        await self.children("reload_or_start", sorted(old & new))
        await self.children("start", sorted(new - old))

    def _check_engine(self, cfg: Config) -> None:
        """Refuse forwarding methods the engine cannot do, naming the line
        (rather than edits refused one by one at run time)."""
        methods = getattr(self.engine, "fwd_methods", ()) or ()
        if not methods:
            return
        for v in cfg.virtuals:
            items = [(r.fwd, r.line) for r in v.reals]
            if v.fallback is not None:
                items.append((v.fallback.fwd, v.line))
            for fwd, line in items:
                if fwd not in methods:
                    hint = " (Direct Return needs the kernel engine: --engine nft)" if fwd == "gate" else ""
                    raise ConfigError(cfg.path, line, f"forwarding method '{fwd}' is not supported by the "
                                                      f"{self.ctx.engine} engine{hint}")

    def _warn(self, cfg: Config) -> None:
        for w in cfg.warnings:
            log.warning(f"Warning: {w}")

    def status(self) -> dict:
        snap = self.core.snapshot()
        snap.update({
            "pid": os.getpid(), "config": self.config_path, "engine": self.ctx.engine,
            "uptime": round(time.time() - self.started, 3), "edits_applied": self.edits_applied,
            "edit_errors": self.edit_errors, "checkers": len(self.tasks),
            "last_reload_error": self.last_reload_error, "reloads": self.reloads,
            "check_seconds": {f"{vid} {fmt_hp(*rk)}": round(s, 6) for (vid, rk), s in self.check_seconds.items()},
        })
        snap.update(self.lateness.summary())
        d = self.durations.summary()
        snap.update({"check_time_p50": d.get("lateness_p50"), "check_time_p99": d.get("lateness_p99")})
        try:
            import psutil
            p = psutil.Process()
            t = p.cpu_times()
            snap["cpu_seconds"] = round(t.user + t.system, 3)
        except Exception:
            pass
        return snap

    async def handle_client(self, reader, writer) -> None:
        await serve_commands(reader, writer, self.command)

    async def command(self, cmd) -> dict:
        if cmd == "status":
            return {"ok": True, "status": self.status()}
        if cmd == "reload":
            ok, msg = await self.reload()
            return {"ok": ok, "message": msg}
        if cmd == "stop":
            self.stopping.set()
            return {"ok": True}
        return {"ok": False, "error": "unknown command (status, reload or stop)"}

    # -- main -------------------------------------------------------------------------
    async def run(self, cfg: Config | None = None) -> int:
        loop = asyncio.get_running_loop()
        self.cfg = cfg or load(self.config_path)
        self.cfg_mtime, self.cfg_digest = self._digest()
        self._warn(self.cfg)
        self.ctx.ensure_run_dir()
        pidf, sockf = pid_path(self.ctx, self.config_path), sock_path(self.ctx, self.config_path)
        # the pid file, locked first: a second director for this config stops
        # here, before it reads or touches the table (it wrote "ready" once up)
        pid_fd = hold_pid_file(pidf, f"halb director for {self.config_path} is already running")
        try:
            return await self._run(loop, pidf, sockf, pid_fd)
        finally:
            try:
                os.unlink(pidf)
            except FileNotFoundError:
                pass
            os.close(pid_fd)

    async def _run(self, loop, pidf, sockf, pid_fd) -> int:
        self.info(f"Starting halb director (Linux Director compatible) with pid: {os.getpid()}")
        live = await self.engine_call("services")
        self._check_engine(self.cfg)
        self.core = DirectorCore(self.cfg)
        self.core.verbose = self.debug
        try:
            sockf.unlink()
        except FileNotFoundError:
            pass
        server = await asyncio.start_unix_server(self.handle_client, path=str(sockf))
        os.chmod(sockf, 0o600)
        worker = loop.create_task(self.apply_worker())
        side: list[asyncio.Task] = []
        healer = None
        try:
            first = await self._first_round()
            # the virtual services and the real servers that already answered
            # go to the engine in ONE transaction: on a takeover the VIP is
            # never served by an empty service while the first checks run
            self.submit(self.core.start(live, time.time()))
            for (vid, rkey), res in first.items():
                self.submit(self.core.result(vid, rkey, res.ok, time.time(), res.msg))
            await self.queue.join()
            self._sync_checkers()
            healer = self._start_healer()
            # long-lived objects (config, state, tasks) out of the collector's
            # way: full collections stay short with thousands of servers
            gc.collect()
            gc.freeze()
            # checks allocate many short-lived objects: collect the young
            # generation less often (CPU), memory stays small
            gc.set_threshold(20000, 20, 50)
            side = [loop.create_task(self.watch_config()), loop.create_task(self.ticker())]
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.stopping.set)
            loop.add_signal_handler(signal.SIGHUP, lambda: self._spawn(self._sighup()))
            loop.add_signal_handler(signal.SIGUSR1, logs.reopen)
            if self.cfg.execute:
                self._spawn(self.children("start", self.cfg.execute))
            os.write(pid_fd, b"ready\n")  # after the pid: `start` returns now
            sdnotify.ready(f"checking {sum(len(v.reals) for v in self.cfg.virtuals)} real server(s)")
            await self.stopping.wait()
            sdnotify.stopping()
            self.info("Linux Director Daemon terminating")
        finally:
            for t, _, _ in self.tasks.values():
                t.cancel()
            for t in side:
                t.cancel()
            pending = [t for t, _, _ in self.tasks.values()] + side
            if pending:
                done, stuck = await asyncio.wait(pending, timeout=10)
                if stuck:
                    log.error(f"{len(stuck)} checks did not stop within 10 s")
            self.tasks.clear()
            if healer is not None:
                await loop.run_in_executor(None, healer.stop)
            if self.cfg.execute:
                try:
                    await asyncio.wait_for(self.children("stop", self.cfg.execute), 120)
                except asyncio.TimeoutError:
                    log.error("the execute= instances did not stop within 120 s")
            if self.core is not None:
                try:
                    self.submit(self.core.stop(time.time()))
                    await asyncio.wait_for(self.queue.join(), 30)
                except (asyncio.TimeoutError, Exception) as e:
                    log.error(f"could not remove the virtual services cleanly: {e}")
            if self.bg:  # let alerts about the stop go out
                await asyncio.wait(list(self.bg), timeout=15)
            worker.cancel()
            await asyncio.gather(worker, return_exceptions=True)
            server.close()
            try:
                sockf.unlink()
            except FileNotFoundError:
                pass
            errf = self.ctx.run_dir / f"director.{cfg_name(self.config_path)}.start.err"
            try:
                if errf.stat().st_size == 0:  # the daemon's stderr: kept only when it says something
                    errf.unlink()
            except OSError:
                pass
            if self.engine is not None:
                await loop.run_in_executor(self.executor, self.engine.close)
            self.executor.shutdown(wait=False)
            self.info("Linux Director Daemon terminated")
        return 0
