"""`halb bgp run`: the health-gated announcer (I/O shell around halb.bgp.decide).

It writes BIRD's configuration (halb.bgp.birdconf) in the run dir, runs
`bird -f -s <run dir>/bird.ctl -c <run dir>/bird.conf -P <run dir>/bird.pid`
as its child (the child gets SIGTERM if halb bgp dies: no orphan keeps a
VIP announced), and every `checkinterval` seconds:

  observe  the director (pid file + control socket), the engine's services of
           each VIP with their live real servers, the self-test;
  decide   halb.bgp.decide (pure);
  act      `birdc -s <run dir>/bird.ctl enable|disable v_<VIP>`; each
           decision logged ("Announced virtual IP: ...", "Withdrew ...").

A BIRD that exits is started again (its VIPs were withdrawn with its
sessions; they are announced again when fit). On stop (SIGTERM, SIGINT or
`halb bgp stop`) every VIP is withdrawn first, then after `LINGER` seconds
(the router has moved the flows; this director's data path still serves
packets in flight) BIRD is shut down and the run-dir files are removed.
"""
from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from halb.bgp import birdconf
from halb.bgp.config import BgpConfig
from halb.bgp.decide import Decision, Observation, VipState, decide, log_line, undo
from halb.context import Context
from halb.errors import HalbError
from halb.procs import ask, hold_pid_file, locked_pid, pid_alive, serve_commands

log = logging.getLogger("halb.bgp")
LINGER = 0.5
BIRD_START_WAIT = 10.0
PR_SET_PDEATHSIG = 1
RT_PRIORITY = 10


def paths(run_dir: Path) -> dict[str, Path]:
    return {"pid": run_dir / "bgp.pid", "sock": run_dir / "bgp.sock", "ctl": run_dir / "bird.ctl",
            "conf": run_dir / "bird.conf", "birdpid": run_dir / "bird.pid"}


def _bird_preexec(realtime: bool):
    def f() -> None:
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if realtime:
            # BFD at 20 ms x 3 must not miss 60 ms because the CPUs are busy
            try:
                os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(RT_PRIORITY))
            except OSError:
                pass
    return f


def birdc(ctl: Path, *words: str, timeout: float = 5.0) -> tuple[int, str]:
    """One birdc command on BIRD's control socket: (exit code, output)."""
    try:
        r = subprocess.run(["birdc", "-s", str(ctl), *words], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return 124, f"birdc {' '.join(words)}: no answer within {timeout:g} s"
    out = (r.stdout + r.stderr).strip()
    # birdc exits 0 also when BIRD refuses a command: its reply codes say
    if r.returncode == 0 and any(ln[:1] == "8" or ln[:1] == "9" for ln in out.splitlines()):
        return 1, out
    return r.returncode, out


def protocols(ctl: Path) -> list[dict]:
    """`birdc show protocols`: [{name, proto, table, state, since, info}]."""
    rc, out = birdc(ctl, "show", "protocols")
    if rc != 0:
        return []
    rows = []
    for ln in out.splitlines():
        w = ln.split(None, 5)
        if len(w) >= 5 and w[0] not in ("BIRD", "Name") and not ln.startswith(" "):
            rows.append({"name": w[0], "proto": w[1], "table": w[2], "state": w[3], "since": w[4],
                         "info": w[5].strip() if len(w) > 5 else ""})
    return rows


# -- observation ------------------------------------------------------------------------
class Observer:
    """Gathers an Observation: director, engine, self-test (blocking; run in a thread)."""

    RS_PROBE_EVERY = 1.0   # s between two TCP probes of one real server

    def __init__(self, ctx: Context, cfg: BgpConfig):
        self.ctx, self.cfg = ctx, cfg
        self.engine = None
        self.probe_cache: dict[tuple[str, int], tuple[float, bool, str]] = {}

    def director(self) -> tuple[bool, str]:
        if self.cfg.director is None:
            return True, ""
        from halb.cli.director import find_config, read_pid
        from halb.director.daemon import sock_path
        from halb.errors import ConfigError

        try:
            name = find_config(self.cfg.director)
        except ConfigError:
            return False, f"the director's configuration {self.cfg.director} is not found"
        pid, alive = read_pid(self.ctx, name, ready=True)
        if pid is None:
            return False, f"the director ({Path(name).name}) is not running"
        if not alive:
            return False, f"the director ({Path(name).name}, pid {pid}) is gone or still starting"
        try:
            reply = ask(sock_path(self.ctx, name), {"cmd": "status"}, timeout=1.0)
        except (OSError, socket.timeout) as e:
            return False, f"the director (pid {pid}) does not answer on its control socket ({e.__class__.__name__})"
        if b'"ok": true' not in reply:
            return False, f"the director (pid {pid}) answered its control socket with an error"
        return True, ""

    def services(self) -> tuple[dict[str, list[tuple[str, int, int]]], dict[str, list]]:
        from halb.engine import open_engine

        if self.engine is None:
            self.engine = open_engine(self.ctx)
        out: dict[str, list] = {v: [] for v in self.cfg.announce}
        svcs: dict[str, list] = {v: [] for v in self.cfg.announce}
        for s in self.engine.services():
            k = s.key
            if k.proto == "fwm" or k.addr not in out:
                continue
            live = [d for d in s.dests if d.weight > 0]
            out[k.addr].append((f"{k.proto}/{k.addr}:{k.port}", len(live), len(s.dests)))
            svcs[k.addr].append((s, live))
        return out, svcs

    def _probe(self, addr: str, port: int, now: float) -> tuple[bool, str]:
        hit = self.probe_cache.get((addr, port))
        if hit and now - hit[0] < self.RS_PROBE_EVERY:
            return hit[1], hit[2]
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(0.5)
        try:
            s.connect((addr, port))
            ok, why = True, ""
        except OSError as e:
            ok, why = False, f"real server {addr}:{port} unreachable from this director ({e.strerror or e})"
        finally:
            s.close()
        self.probe_cache[(addr, port)] = (now, ok, why)
        return ok, why

    def selftest(self, svcs: dict[str, list]) -> dict[str, tuple[bool, str]]:
        """The builtin data-path self-test of each VIP, or the configured command."""
        if self.cfg.selftest == "off":
            return {}
        out: dict[str, tuple[bool, str]] = {}
        if self.cfg.selftest != "builtin":
            for vip in self.cfg.announce:
                try:
                    r = subprocess.run([self.cfg.selftest, vip], capture_output=True, text=True, timeout=5)
                    out[vip] = (r.returncode == 0, f"{self.cfg.selftest} exited {r.returncode}"
                                + (f": {r.stdout.strip().splitlines()[-1]}" if r.stdout.strip() else ""))
                except (OSError, subprocess.TimeoutExpired) as e:
                    out[vip] = (False, f"{self.cfg.selftest}: {e}")
            return out
        try:
            fwd = Path("/proc/sys/net/ipv4/ip_forward").read_text().strip() == "1"
        except OSError:
            fwd = False
        kernel = self._kernel_services() if self.ctx.engine == "nft" else None
        now = time.monotonic()
        for vip in self.cfg.announce:
            why = ""
            if not fwd:
                why = "IPv4 forwarding is off (net.ipv4.ip_forward=0)"
            for s, live in svcs.get(vip, []):
                if why:
                    break
                k = s.key
                if kernel is not None and (k.addr, k.proto, k.port) not in kernel:
                    why = f"{k.proto}/{k.addr}:{k.port} is not in the kernel's table (inet halb)"
                    break
                if live:
                    # the real server this director would send to, over its own link
                    d = live[int(now) % len(live)]
                    ok, w = self._probe(d.addr, d.port or k.port, now)
                    if not ok:
                        why = w
            out[vip] = (not why, why)
        return out

    @staticmethod
    def _kernel_services() -> set[tuple[str, str, int]]:
        import json

        try:
            r = subprocess.run(["nft", "-j", "list", "map", "inet", "halb", "svc4"], capture_output=True,
                               text=True, timeout=5)
            data = json.loads(r.stdout) if r.returncode == 0 else {}
        except (OSError, subprocess.TimeoutExpired, ValueError):
            return set()
        found = set()
        for item in data.get("nftables", []):
            for e in item.get("map", {}).get("elem", []) or []:
                try:
                    key = e[0]["concat"]
                    found.add((key[0], key[1], int(key[2])))
                except (KeyError, IndexError, TypeError, ValueError):
                    continue
        return found

    def observe(self, stopping: bool) -> Observation:
        ok, why = self.director()
        try:
            services, svcs = self.services()
        except HalbError as e:
            return Observation(director_ok=False, director_why=f"the engine cannot be read: {e}",
                               stopping=stopping)
        return Observation(director_ok=ok, director_why=why, services=services,
                           selftest=self.selftest(svcs) if ok else {}, stopping=stopping)


# -- the daemon -------------------------------------------------------------------------
class BgpDaemon:
    def __init__(self, ctx: Context, cfg: BgpConfig):
        self.ctx, self.cfg = ctx, cfg
        self.p = paths(ctx.run_dir)
        self.states = {v: VipState() for v in cfg.announce}
        self.observer = Observer(ctx, cfg)
        self.bird: subprocess.Popen | None = None
        self.stopping = asyncio.Event()
        self.started = time.time()
        self.rounds = 0
        self.last_round_s = 0.0
        self.decisions: list[dict] = []
        self.bird_starts = 0

    # BIRD -------------------------------------------------------------------------------
    def start_bird(self) -> None:
        """Start BIRD (from the main thread: the death signal follows this thread)."""
        for f in (self.p["ctl"],):
            try:
                f.unlink()
            except FileNotFoundError:
                pass
        self.p["conf"].write_text(birdconf.director_conf(self.cfg))
        self.bird = subprocess.Popen(["bird", "-f", "-s", str(self.p["ctl"]), "-c", str(self.p["conf"]),
                                      "-P", str(self.p["birdpid"])],
                                     stdin=subprocess.DEVNULL, preexec_fn=_bird_preexec(self.cfg.realtime))
        self.bird_starts += 1
        if self.cfg.realtime and self.bird_starts == 1:
            try:
                rt = os.sched_getscheduler(self.bird.pid) == os.SCHED_FIFO
            except OSError:
                rt = True
            if not rt:
                log.warning("BIRD runs without real-time priority (not permitted here): "
                            "a busy machine can make BFD miss its interval")
        deadline = time.monotonic() + BIRD_START_WAIT
        while time.monotonic() < deadline:
            if self.bird.poll() is not None:
                raise HalbError(f"bird exited {self.bird.returncode} at start (see the log above)")
            if self.p["ctl"].exists() and birdc(self.p["ctl"], "show", "status", timeout=2)[0] == 0:
                log.info(f"BIRD started (pid {self.bird.pid}), control socket {self.p['ctl']}")
                return
            time.sleep(0.05)
        raise HalbError(f"bird did not open its control socket {self.p['ctl']} within {BIRD_START_WAIT:g} s")

    def stop_bird(self) -> None:
        if self.bird is None or self.bird.poll() is not None:
            return
        birdc(self.p["ctl"], "down", timeout=3)
        try:
            self.bird.wait(5)
        except subprocess.TimeoutExpired:
            self.bird.kill()
            self.bird.wait(5)

    # one judgement ------------------------------------------------------------------------
    def act(self, d: Decision) -> bool:
        rc, out = birdc(self.p["ctl"], "enable" if d.action == "announce" else "disable",
                        birdconf.vip_proto(d.vip))
        if rc != 0:
            log.error(f"birdc could not {'enable' if d.action == 'announce' else 'disable'} "
                      f"{birdconf.vip_proto(d.vip)}: {out.splitlines()[-1] if out else rc}")
            return False
        return True

    def apply(self, decisions: list[Decision], now: float) -> None:
        for d in decisions:
            if self.act(d):
                log.info(log_line(d))
                self.decisions.append({"time": time.time(), "vip": d.vip, "action": d.action, "reason": d.reason})
                del self.decisions[:-50]
            else:
                undo(self.states, d, "BIRD did not take the change")

    async def round(self) -> None:
        t0 = time.monotonic()
        obs = await asyncio.to_thread(self.observer.observe, self.stopping.is_set())
        now = time.monotonic()
        decisions = decide(self.states, obs, now, self.cfg.rise)
        if decisions:
            await asyncio.to_thread(self.apply, decisions, now)
        self.rounds += 1
        self.last_round_s = time.monotonic() - t0

    def watch_bird(self) -> None:
        if self.bird is not None and self.bird.poll() is not None:
            log.error(f"BIRD (pid {self.bird.pid}) exited {self.bird.returncode}: its sessions and "
                      "announcements are gone; starting it again")
            for vip, st in self.states.items():
                if st.announced:
                    log.info(f"Withdrew virtual IP: {vip}/32 (BIRD exited)")
                st.announced, st.fit_since, st.reason = False, None, "BIRD restarted"
            time.sleep(1.0)
            self.start_bird()

    # control ----------------------------------------------------------------------------
    def status(self) -> dict:
        return {"pid": os.getpid(), "node": self.ctx.node, "config": self.cfg.path,
                "uptime": round(time.time() - self.started, 3),
                "bird_pid": self.bird.pid if self.bird else None, "bird_starts": self.bird_starts,
                "rounds": self.rounds, "last_round_ms": round(self.last_round_s * 1000, 1),
                "vips": {v: {"announced": st.announced, "reason": st.reason} for v, st in self.states.items()},
                "sessions": [r for r in protocols(self.p["ctl"]) if r["proto"] in ("BGP", "BFD")],
                "decisions": self.decisions[-10:]}

    async def command(self, cmd):
        if cmd == "status":
            return {"ok": True, "status": await asyncio.to_thread(self.status)}
        if cmd == "stop":
            self.stopping.set()
            return {"ok": True}
        return {"ok": False, "error": "unknown command (status or stop)"}

    async def handle(self, reader, writer) -> None:
        await serve_commands(reader, writer, self.command)

    async def main(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        try:
            self.p["sock"].unlink()
        except FileNotFoundError:
            pass
        server = await asyncio.start_unix_server(self.handle, path=str(self.p["sock"]))
        os.chmod(self.p["sock"], 0o600)
        log.info(f"Starting halb bgp with pid: {os.getpid()} ({len(self.cfg.announce)} VIP(s), "
                 f"{len(self.cfg.neighbors)} neighbor(s), BFD "
                 + (f"{self.cfg.bfd[0] / 1000:g} ms x {self.cfg.bfd[1]}" if self.cfg.bfd else "off") + ")")
        try:
            while not self.stopping.is_set():
                self.watch_bird()
                await self.round()
                try:
                    await asyncio.wait_for(self.stopping.wait(), self.cfg.checkinterval)
                except asyncio.TimeoutError:
                    pass
            # graceful: withdraw everything, let the router move the flows, then BIRD goes
            await self.round()
            if any(st.changed_at is not None for st in self.states.values()):
                await asyncio.sleep(LINGER)
        finally:
            server.close()
            self.stop_bird()
            for f in (self.p["sock"], self.p["ctl"], self.p["birdpid"]):
                try:
                    f.unlink()
                except FileNotFoundError:
                    pass
        log.info("halb bgp stopped: every VIP withdrawn, BIRD shut down")
        return 0


def run(ctx: Context, cfg: BgpConfig) -> int:
    from halb.nft.engine import check_namespace

    if ctx.engine == "nft":
        check_namespace()
    try:
        ctx.ensure_run_dir()
    except OSError as e:
        raise HalbError(f"cannot use run dir {ctx.run_dir}: {e.strerror}") from None
    p = paths(ctx.run_dir)
    pid_fd = hold_pid_file(p["pid"], "halb bgp is already running on this node")
    other = locked_pid(p["birdpid"])
    if other is not None and pid_alive(other, "bird"):
        raise HalbError(f"a BIRD (pid {other}) still runs on {p['ctl']}; stop it first")
    d = BgpDaemon(ctx, cfg)
    try:
        d.start_bird()
        return asyncio.run(d.main())
    finally:
        d.stop_bird()
        try:
            p["pid"].unlink()
        except FileNotFoundError:
            pass
        os.close(pid_fd)


def query(run_dir: Path, cmd: str = "status", timeout: float = 5.0) -> dict | None:
    import json

    try:
        reply = ask(paths(run_dir)["sock"], {"cmd": cmd}, timeout)
        return json.loads(reply) if reply else None
    except (OSError, socket.timeout, ValueError):
        return None
