"""The heartbeat daemon: a thin asyncio shell around the pure cores.

The beat path (send, receive, `Membership` ticks) runs on its own thread
(beatloop.BeatLoop) and hands what happened to the event loop; there,
after every change `ownership.decide` says which groups to acquire or
release, and the resource agents run in a helper process so the beat path
never waits for them. State and commands (status, nodes, standby,
takeover) are served on a unix socket in the node's run dir.
"""
from __future__ import annotations

import asyncio
import gc
import threading
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from halb import events, logs, sdnotify
from halb.errors import ConfigError, HalbError
from halb.heartbeat import generation, recovery, stonith
from halb.heartbeat.beatloop import BeatLoop
from halb.heartbeat.lane import Lanes, lock_memory, usable_cpus, wanted
from halb.heartbeat.membership import Membership
from halb.heartbeat.ownership import NodeView, decide, fence_targets
from halb.heartbeat.packet import encode_body
from halb.heartbeat.transport import open_links, open_ping_socket
from halb.heartbeat.worker import AgentWorker
from halb.procs import ask, hold_pid_file
from halb.resources import ResourceError, make_agent

SOCKET_NAME = "heartbeat.sock"
PID_NAME = "heartbeat.pid"


def socket_path(run_dir) -> Path:
    return Path(run_dir) / SOCKET_NAME


class Logger:
    """heartbeat-style log lines to stderr and the ha.cf log files.

    The beat loop only queues lines; a writer thread does the I/O, because a
    write can block for hundreds of ms when the disk is busy (dirty-page
    throttling) and a blocked loop is a node its peers declare dead."""

    def __init__(self, logfile=None, debugfile=None, stream=sys.stderr, debug=False, facility=None):
        import queue

        self.stream = stream
        self.debug_on = debug
        self.problems = []
        self.files = self._open(logfile, debugfile, self.problems)    # (file, takes debug lines)
        # under systemd stderr is the journal: lines carry their priority, and syslog
        # (logfacility) would put each one there a second time
        self.journal = stream is sys.stderr and sdnotify.under_journal()
        self.syslog = None
        if facility and facility.lower() != "none" and not self.journal:
            import syslog

            fac = getattr(syslog, "LOG_" + facility.upper(), None)
            if fac is None:
                self.problems.append(f"logfacility {facility}: unknown syslog facility; not logging to syslog")
            else:
                syslog.openlog("heartbeat", syslog.LOG_PID, fac)
                self.syslog = syslog
        self.q = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._writer, name="halb-heartbeat-log", daemon=True)
        self.thread.start()

    @staticmethod
    def _open(logfile, debugfile, problems) -> list:
        files = []
        for f, dbg in ((logfile, False), (debugfile, True)):
            if not f:
                continue
            try:
                Path(f).parent.mkdir(parents=True, exist_ok=True)
                files.append((open(f, "a", buffering=1), dbg))
            except OSError as e:
                problems.append(f"cannot open log file {f}: {e.strerror}; logging to stderr only")
        return files

    def reopen(self, logfile, debugfile) -> list:
        """SIGHUP: open the log files again (logrotate moved them away); the writer
        thread swaps them after the lines queued before. The problems met, if any."""
        problems: list = []
        files = self._open(logfile, debugfile, problems)
        self.q.put(("reopen", files, None))
        return problems

    def __call__(self, level: str, msg: str, t: float | None = None):
        """Queue one line; `t` (wall clock) when it happened earlier, in the agent helper."""
        if level == "debug" and not self.debug_on:
            return
        if t is None:
            t = time.time()
        self.q.put((level, msg, f"heartbeat[{os.getpid()}]: {logs.stamp(t)} {level}: {msg}\n"))

    _PRIO = {"debug": 7, "info": 6, "warn": 4, "error": 3}

    def _writer(self):
        while True:
            item = self.q.get()
            if item is None:
                return
            level, msg, line = item
            if level == "reopen":
                old, self.files = self.files, msg
                for fh, _ in old:
                    try:
                        fh.close()
                    except OSError:
                        pass
                continue
            if self.journal:
                line = f"<{logs.LEVEL_WORD.get(level, 6)}>{level}: {msg}\n"
            try:
                self.stream.write(line)
                self.stream.flush()
            except (OSError, ValueError):
                pass
            for fh, dbg in self.files:
                if level == "debug" and not dbg:
                    continue      # debug lines go to the debugfile only
                try:
                    fh.write(line)
                except OSError:
                    pass
            if self.syslog is not None and level != "debug":
                try:
                    self.syslog.syslog(self._PRIO.get(level, 6), f"{level}: {msg}")
                except OSError:
                    pass

    def close(self):
        self.q.put(None)
        self.thread.join(10)
        for fh, _ in self.files:
            fh.close()


class GroupState:
    def __init__(self, index, group, agents):
        self.index = index
        self.group = group
        self.agents = agents
        self.state = "idle"          # idle acquiring held releasing failed (a stop failed: still held)
        self.retry_at = 0.0
        self.task = None
        self.failcount = 0           # failed monitors / starts on this node since the last cleanup
        self.monitor = None          # last monitor: {"ok": bool, "at": wall clock, "error": str}
        self.failed_op = None        # what failed last, for status

    def describe(self):
        return " ".join([self.group.node] + [str(r) for r in self.group.resources])


class Daemon:
    def __init__(self, ha, node: str, run_dir, *, engine=None, log=None, debug=False):
        self.ha = ha
        self.cfg = ha.hacf
        self.me = node
        self.run_dir = Path(run_dir)
        self.engine = engine
        self.log = log or Logger(self.cfg.logfile, self.cfg.debugfile, debug=debug, facility=self.cfg.logfacility)
        self.nodes = list(self.cfg.nodes)
        self.generation = 0              # taken from the state dir's counter at start (generation.py)
        self.peer_gens: dict[str, int] = {}
        self.claim = 0
        self.counters = {"tx": 0, "tx_errors": 0, "rx": 0, "own": 0, "unknown_node": 0,
                         "groups_acquired": 0, "groups_released": 0, "fencing_ok": 0, "fencing_failed": 0}
        self.payloads: dict[str, dict] = {}
        self.last_held: dict[str, set] = {}
        self.fenced: set = set()
        self.fencing: set = set()        # peers being reset for a failed stop
        self.banned: set = set()         # groups this node may not run until cleanup
        self.cleared: set = set()        # (node, group): a gone peer's failed stop, cleaned up here
        self.blocked: dict = {}          # group -> gone peer whose stop of it failed (no STONITH)
        self.peer_busy: dict[str, bool] = {}
        self.stopping = False
        self.realtime = False
        self.keepalive = self.cfg.keepalive
        self.tick_interval = max(0.002, min(self.cfg.keepalive, 0.1))     # set again in run()
        stonith.check_devices(self.cfg)
        self.fence_devices = stonith.devices_for(self.cfg, node)
        self.groups = []
        for i, g in enumerate(ha.groups):
            agents = []
            for r in g.resources:
                try:
                    agents.append(make_agent(r, ha_dir=ha.dir, node=node, run_dir=self.run_dir,
                                             engine=engine, log=self.log))
                except (ResourceError, ValueError) as e:
                    raise ConfigError(ha.dir / "haresources", r.line, str(e)) from None
            self.groups.append(GroupState(i, g, agents))
        self.channels = []
        self.ping_sock = None
        self.ping_ident = os.getpid() & 0xFFFF
        self.beats = None
        self.respawned: dict[int, subprocess.Popen] = {}
        self._wake = None
        self.started_at = time.monotonic()
        self._last_payload = None
        self.body_v = 0
        self.lanes = None
        self.worker = None
        self.watchdog = None

    # ------------------------------------------------------------ helpers
    def now(self) -> float:
        return time.monotonic()

    def held(self) -> frozenset:
        return frozenset(g.index for g in self.groups if g.state != "idle")

    def busy(self) -> bool:
        return any(g.state in ("acquiring", "releasing") for g in self.groups)

    def payload(self, st="up") -> dict:
        return {"st": st, "held": sorted(self.held()), "claim": self.claim,
                "ping": self.mem.ping_score(), "busy": self.busy(), "banned": sorted(self.banned),
                "stopfail": sorted(g.index for g in self.groups if g.state == "failed"),
                "seen": dict(self.peer_gens)}

    def send_beat(self, now=True):
        """Our state changed (held groups, claim, ping score): beats say it from now on,
        and one goes out at once unless `now` is False."""
        p = self.payload()
        if p != self._last_payload:
            self._last_payload = p
            self.beats.set_body(self.body(p))
        if now:
            self.beats.send_now()

    def body(self, p: dict) -> bytes:
        """A payload as our beats carry it, numbered: receivers drop a body older than
        the newest they took (a beat lane may still send the previous one)."""
        self.body_v += 1
        return encode_body({**p, "v": self.body_v})

    def views(self) -> dict:
        v = {self.me: NodeView(True, self.held(), self.claim, self.mem.ping_score(), True)}
        for n in self.mem.peers:
            p = self.payloads.get(n)
            v[n] = NodeView(self.mem.alive(n), frozenset(self.last_held.get(n, ())),
                            int(p.get("claim", 0)) if p else 0, int(p.get("ping", 0)) if p else 0, p is not None)
        return v

    def log_at(self, level: str, msg: str, t: float | None = None) -> None:
        """Log a line that happened at wall-clock time `t` (earlier, or in the agent helper);
        a logger given by the caller (tests) that takes no time gets the line now."""
        if t is not None and isinstance(self.log, Logger):
            self.log(level, msg, t)
        else:
            self.log(level, msg)

    # ------------------------------------------------------------ inputs
    def from_beats(self, items):
        """What the beat thread saw, in order (runs on the event loop)."""
        for item in items:
            kind = item[0]
            if kind == "events":
                self.handle_events(item[1])
            elif kind == "payload":
                self.on_payload(*item[1:])
            elif kind == "generation":
                self.peer_gens[item[1]] = item[2]
                self.send_beat()          # echo it: the peer takes our beats as fresh from now on
            elif kind == "failed":
                self.log("error", "no more beats: stopping")
                self.request_stop()

    def on_payload(self, node: str, p: dict, events):
        """A peer's beat said something new (held groups, claim, ping score, busy, shutdown)."""
        held = {int(x) for x in p.get("held", ())}
        if p.get("st") == "shutdown":
            self.payloads[node] = p
            self.last_held[node] = held
            if events:
                self.log("info", f"Received shutdown notice from '{node}'.")
                self.handle_events(events)
            self.evaluate()
            return
        prev = self.payloads.get(node)
        self.payloads[node] = p
        self.last_held[node] = held
        self.handle_events(events)
        busy = bool(p.get("busy"))
        # the peer finished taking or giving up resources (or, first heard, already holds some)
        if not busy and (self.peer_busy.get(node) or (node not in self.peer_busy and held)):
            self.log("info", "remote resource transition completed.")
        self.peer_busy[node] = busy
        if p.get("stopfail") and (prev is None or prev.get("stopfail") != p.get("stopfail")):
            self.log("error", f"node {node} failed to stop resource group(s) "
                              f"{', '.join(self.groups[i].describe() for i in p['stopfail'] if i < len(self.groups))}"
                              ": they stay there until it is fenced or cleaned up")
        if prev is None or prev.get("held") != p.get("held") or prev.get("claim") != p.get("claim") \
                or prev.get("banned") != p.get("banned") or prev.get("stopfail") != p.get("stopfail") \
                or prev.get("ping") != p.get("ping") or prev.get("busy") != busy:
            self.evaluate()

    def handle_events(self, events):
        changed = False
        for e in events:
            k = e.kind
            if k == "loop_late":
                lvl = "warn" if e.value >= self.cfg.deadtime / 2 else "debug"
                self.log(lvl, str(e))
                continue
            if k == "node_late":
                self.log("warn", str(e))
                continue
            if k == "node_dead":
                self.log("warn" if self.mem.deaths[e.node] > 1 or self.payloads.get(e.node) else "info", str(e))
                self.event("node_dead", e.node, str(e))
                changed = True
            elif k == "node_up":
                self.log("info", f"Status update for node {e.node}: status active")
                self.event("node_up", e.node, f"Status update for node {e.node}: status active")
                self.fenced.discard(e.node)
                self.cleared = {(n, gi) for n, gi in self.cleared if n != e.node}
                changed = True
            elif k in ("link_up", "link_dead"):
                self.log("info", str(e))
                self.event(k, e.node, str(e))
            elif k in ("link_flooded", "node_flooded"):
                self.log("warn", str(e))
            elif k in ("ping_up", "ping_dead"):
                self.log("info" if k == "ping_up" else "warn", str(e))
                self.send_beat(now=False)    # our ping score is in our beats
                changed = True
        if changed:
            self.evaluate()

    # ------------------------------------------------------------ decisions
    def evaluate(self):
        if self.stopping:
            return
        with self.beats.lock:
            if not self.mem.settled():
                return
            views = self.views()
        if any(v.alive and not v.known for v in views.values()):
            return      # a live peer whose beat is not read yet may hold anything: its payload comes next
        banned = {n: {int(x) for x in p.get("banned", ())} for n, p in self.payloads.items()
                  if views.get(n) is not None and views[n].alive}
        banned[self.me] = set(self.banned)
        d = recovery.decide_groups(self.me, self.nodes, [g.group.node for g in self.groups], views,
                                   self.cfg.auto_failback, banned)
        stop_failed = {n: {int(x) for x in p.get("stopfail", ())} for n, p in self.payloads.items()
                       if p.get("stopfail")}
        for node, gi in recovery.fence_for_stop_failure(self.me, views, stop_failed, self.fenced,
                                                        bool(self.fence_devices)):
            if node not in self.fencing:
                self.fencing.add(node)
                asyncio.get_running_loop().create_task(self.fence_stop_failure(node, gi))
        blocked = recovery.blocked_by_failed_stop(views, stop_failed, bool(self.fence_devices), self.cleared)
        for gi, node in blocked.items():
            if self.blocked.get(gi) != node and gi in d.acquire:
                self.log("error", f"not taking resource group '{self.groups[gi].describe()}': node {node} is gone "
                                  "with its stop failed and no STONITH device can make sure it is off: "
                                  f"'halb heartbeat cleanup {gi + 1}' here once {node} is known to be down")
        self.blocked = blocked
        now = self.now()
        for gi in d.acquire:
            if gi in blocked:
                continue
            g = self.groups[gi]
            if g.state == "idle" and now >= g.retry_at:
                g.state = "acquiring"
                g.task = asyncio.get_running_loop().create_task(self.acquire(g, views))
        for gi in d.release:
            g = self.groups[gi]
            if g.state == "held" and g.task is None:
                g.state = "releasing"
                g.task = asyncio.get_running_loop().create_task(self.release(g))
        if d.acquire or d.release:
            self.send_beat(now=False)

    def retry_later(self, g: GroupState) -> None:
        """A takeover that could not be done: the group is idle again, tried later."""
        g.state = "idle"
        delay = max(1.0, self.cfg.deadtime)
        g.retry_at = self.now() + delay
        self.send_beat()
        # tried again then, even if nothing else happens in between
        asyncio.get_running_loop().call_later(delay + 0.01, self.evaluate)

    def transition_done(self, g: GroupState, state: str) -> None:
        g.state = state
        self.log("info", "local resource transition completed.")
        self.send_beat()

    def task_done(self, g: GroupState) -> None:
        g.task = None
        if not self.stopping:
            self.evaluate()

    async def acquire(self, g: GroupState, views):
        try:
            targets = fence_targets(g.index, self.nodes, views, self.last_held, self.fenced)
            for t in targets:
                if not self.fence_devices:
                    self.log("warn", f"no STONITH device configured: node {t} held '{g.describe()}' when last "
                                     "heard and may still hold it: split brain possible")
                    continue
                ok, msg = False, "no device"
                for dev in self.fence_devices:
                    self.log("info", f"STONITH: resetting node {t} with {dev.kind} before taking its resources")
                    ok, msg = await asyncio.to_thread(stonith.reset, dev, t)
                    if ok:
                        break
                if not ok:
                    self.log("error", f"STONITH of node {t} failed ({msg}): not taking '{g.describe()}'")
                    self.counters["fencing_failed"] += 1
                    self.event("fencing_failed", t, f"STONITH of node {t} failed ({msg}): not taking '{g.describe()}'")
                    self.retry_later(g)
                    return
                self.fenced.add(t)
                self.log("info", f"STONITH: node {t} has been reset ({msg})")
                self.counters["fencing_ok"] += 1
                self.event("fencing", t, f"STONITH: node {t} has been reset ({msg})")
            def announce(t):
                # logged (and peers told) once the first start request is on its way: the
                # clients are waiting for the VIP, the log can wait a few microseconds
                self.log_at("info", f"Acquiring resource group: {g.describe()}", t)
                self.send_beat()   # tell peers at once that the group is being taken
                if g.agents:
                    self.log_at("info", f"Running {g.agents[0]} start", t)
            if not g.agents:
                announce(time.time())
            started = []
            for ri, a in enumerate(g.agents):
                if ri:
                    self.log("info", f"Running {a} start")
                ok, res = await self.agent(g, ri, "start", then=announce if ri == 0 else None)
                if not ok:
                    self.log("error", f"{a} start failed: {res}")
                    g.failed_op = f"{a} start: {res}"
                    for rj in reversed(started):
                        ok2, res2 = await self.agent(g, rj, "stop")
                        if not ok2:
                            self.stop_failed(g, g.agents[rj], res2)
                            return
                    self.event("group_failed", g.describe(), f"{a} start failed: {res}")
                    v = recovery.on_monitor_failure(g.failcount)
                    g.failcount = v.failcount
                    if v.action == "move":
                        self.ban(g)
                    self.retry_later(g)
                    return
                started.append(ri)
            self.counters["groups_acquired"] += 1
            self.event("group_acquired", g.describe(), f"Acquiring resource group: {g.describe()}")
            self.transition_done(g, "held")
        finally:
            self.task_done(g)

    async def release(self, g: GroupState):
        try:
            self.log("info", f"Releasing resource group: {g.describe()}")
            self.counters["groups_released"] += 1
            self.event("group_released", g.describe(), f"Releasing resource group: {g.describe()}")
            for ri in reversed(range(len(g.agents))):
                a = g.agents[ri]
                self.log("info", f"Running {a} stop")
                ok, res = await self.agent(g, ri, "stop")
                if not ok:
                    self.stop_failed(g, a, res)
                    return
            self.transition_done(g, "idle")
        finally:
            self.task_done(g)

    # ------------------------------------------------------------ failures
    def stop_failed(self, g: GroupState, a, err) -> None:
        """A stop that failed is not a stop: the group stays held here, failed, and
        no other node starts it until this node is fenced or cleaned up."""
        g.state = "failed"
        g.failed_op = f"{a} stop: {err}"
        live = [n for n in self.mem.peers if self.mem.alive(n)]
        what = recovery.on_stop_failure(bool(self.cfg.stonith), live)
        if what == "fence":
            self.log("error", f"Resource {a} stop failed ({err}): resource group '{g.describe()}' stays held "
                              "here, failed: node will be fenced (STONITH by a peer)")
        else:
            why = "no STONITH device" if not self.cfg.stonith else "no live peer to fence this node"
            self.log("error", f"Resource {a} stop failed ({err}): resource group '{g.describe()}' stays held "
                              f"here, blocked ({why}): it moves to no other node until "
                              f"'halb heartbeat cleanup {g.index + 1}' finds it stopped")
        self.send_beat()

    def ban(self, g: GroupState) -> None:
        self.banned.add(g.index)
        self.log("error", f"resource group '{g.describe()}' failed {g.failcount} times on this node "
                          f"(migration-threshold {recovery.MIGRATION_THRESHOLD}): giving it up to another node; "
                          f"not running it here until 'halb heartbeat cleanup {g.index + 1}'")

    async def fence_stop_failure(self, node: str, gi: int) -> None:
        g = self.groups[gi]
        try:
            for dev in self.fence_devices:
                self.log("warn", f"STONITH: node {node} failed to stop '{g.describe()}': resetting it "
                                 f"with {dev.kind} before taking its resources")
                ok, msg = await asyncio.to_thread(stonith.reset, dev, node)
                if ok:
                    self.fenced.add(node)
                    self.log("info", f"STONITH: node {node} has been reset ({msg})")
                    return
                self.log("error", f"STONITH of node {node} failed ({msg})")
        finally:
            self.fencing.discard(node)
            if not self.stopping:
                self.evaluate()

    async def monitor_loop(self):
        """Every halb_monitor_interval: the status of every resource of every group held here."""
        while not self.stopping:
            if self.cfg.monitor_interval <= 0:     # turned off by a reload
                self.monitor_task = None
                return
            await asyncio.sleep(self.cfg.monitor_interval)
            for g in self.groups:
                if self.stopping or g.state != "held" or g.task is not None:
                    continue
                g.task = asyncio.get_running_loop().create_task(self.monitor(g))

    async def monitor(self, g: GroupState) -> None:
        try:
            for ri, a in enumerate(g.agents):
                ok, running = await self.agent(g, ri, "status")
                if self.stopping or g.state != "held":
                    return
                if ok and running:
                    continue
                err = f"{a} is not running" if ok else f"{a} status failed: {running}"
                v = recovery.on_monitor_failure(g.failcount)
                g.failcount = v.failcount
                g.monitor = {"ok": False, "at": time.time(), "error": err}
                g.failed_op = f"{a} monitor: {err}"
                self.log("error", f"Resource monitor failed: {err} (group '{g.describe()}', failure "
                                  f"{v.failcount} of {recovery.MIGRATION_THRESHOLD} on this node)")
                if v.action == "restart":
                    await self.restart_from(g, ri)
                else:
                    self.ban(g)
                    g.state = "releasing"
                    self.send_beat(now=False)
                    await self.release(g)     # ends the task itself (task_done)
                    g.task = None
                return
            g.monitor = {"ok": True, "at": time.time(), "error": None}
        finally:
            if g.task is not None:
                self.task_done(g)

    async def restart_from(self, g: GroupState, ri: int) -> None:
        """Restart the failed resource and those after it in the group (they depend on it)."""
        self.log("info", f"Restarting resource {g.agents[ri]} (and what follows it in '{g.describe()}')")
        for rj in reversed(range(ri, len(g.agents))):
            ok, res = await self.agent(g, rj, "stop")
            if not ok:
                self.stop_failed(g, g.agents[rj], res)
                return
        for rj in range(ri, len(g.agents)):
            self.log("info", f"Running {g.agents[rj]} start")
            ok, res = await self.agent(g, rj, "start")
            if not ok:
                self.log("error", f"{g.agents[rj]} start failed: {res}")
                g.failed_op = f"{g.agents[rj]} start: {res}"
                v = recovery.on_monitor_failure(g.failcount)
                g.failcount = v.failcount
                if v.action == "move":
                    self.ban(g)
                g.state = "releasing"
                self.send_beat(now=False)
                g.task = None
                await self.release(g)
                return
        g.monitor = {"ok": True, "at": time.time(), "error": None}
        self.log("info", f"resource {g.agents[ri]} restarted: '{g.describe()}' held here")

    async def cleanup(self, gi: int) -> dict:
        """`halb heartbeat cleanup GROUP`: forget the group's failures here; a group whose
        stop failed is stopped again (every resource probed) and, once stopped, released."""
        g = self.groups[gi]
        if g.task is not None:
            return {"ok": False, "error": f"resource group '{g.describe()}' is busy ({g.state}); try again"}
        if gi in self.blocked:
            node = self.blocked[gi]
            self.cleared.add((node, gi))
            self.log("warn", f"cleanup of '{g.describe()}': the failed stop on node {node} (gone) is cleared "
                             "by the administrator: the group may run here")
            self.evaluate()
            return {"ok": True, "message": f"'{g.describe()}': node {node}'s failed stop cleared; it may run here"}
        was_banned = gi in self.banned
        self.banned.discard(gi)
        g.failcount = 0
        if g.state != "failed":
            g.failed_op = None
            self.log("info", f"cleanup of '{g.describe()}': fail count reset"
                             + ("; this node may run it again" if was_banned else ""))
            self.send_beat()
            self.evaluate()
            return {"ok": True, "message": f"'{g.describe()}': failures cleared ({g.state} here)"}
        self.log("info", f"cleanup of '{g.describe()}': stopping its resources again")
        for ri in reversed(range(len(g.agents))):
            a = g.agents[ri]
            ok, res = await self.agent(g, ri, "stop")
            if ok:
                ok, running = await self.agent(g, ri, "status")
                res = running if not ok else "still running after stop"
                ok = ok and not running
            if not ok:
                g.failed_op = f"{a} stop: {res}"
                self.log("error", f"cleanup of '{g.describe()}': {a} still not stopped ({res}): the group "
                                  "stays blocked here")
                return {"ok": False, "error": f"{a} still not stopped ({res}); the group stays blocked here"}
        g.failed_op = None
        self.transition_done(g, "idle")
        self.log("info", f"cleanup of '{g.describe()}': every resource stopped here; the group may run again")
        self.evaluate()
        return {"ok": True, "message": f"'{g.describe()}': stopped here; it may run again"}

    def event(self, kind: str, subject: str, text: str) -> None:
        events.record(kind, subject, text, run_dir=self.run_dir, node=self.me)

    # ------------------------------------------------------------ control
    def status(self) -> dict:
        now = self.now()
        with self.beats.lock:
            snap = self.mem.snapshot(now)
            views = self.views()
            settled = self.mem.settled()
            ping_score = self.mem.ping_score()
        holders = {}
        for g in self.groups:
            holders[g.index] = sorted(n for n, v in views.items() if v.alive and g.index in v.held)
        return {
            "node": self.me, "pid": os.getpid(), "generation": self.generation,
            "status": "active" if self.settled_active() else ("standby" if self.claim < 0 else "up"),
            "claim": self.claim, "realtime": self.realtime,
            "keepalive": self.cfg.keepalive, "deadtime": self.cfg.deadtime,
            "uptime": round(now - self.started_at, 3), "settled": settled,
            "nodes": {self.me: {"status": "up (this node)"}, **snap["nodes"]},
            "links": snap["links"], "flooded_links": snap["flooded_links"],
            "ping": snap["ping"], "ping_score": ping_score,
            "stalls": snap["stalls"],
            "groups": [{"group": g.describe(), "number": g.index + 1, "preferred": g.group.node,
                        "state": g.state, "holders": holders[g.index], "failcount": g.failcount,
                        "banned_here": g.index in self.banned, "failed": g.failed_op,
                        "monitor": g.monitor} for g in self.groups],
            "monitor_interval": self.cfg.monitor_interval,
            "failed_resources": [{"group": g.describe(), "number": g.index + 1, "node": self.me,
                                  "state": g.state, "error": g.failed_op}
                                 for g in self.groups if g.state == "failed" or g.index in self.banned]
                                + [{"group": self.groups[i].describe(), "number": i + 1, "node": n,
                                    "state": "failed" if i in p.get("stopfail", ()) else "banned", "error": None}
                                   for n, p in self.payloads.items() if views.get(n) and views[n].alive
                                   for i in sorted(set(p.get("stopfail", ())) | set(p.get("banned", ())))
                                   if i < len(self.groups)]
                                + [{"group": self.groups[i].describe(), "number": i + 1, "node": n,
                                    "state": "failed (node gone: blocked here until cleanup)", "error": None}
                                   for i, n in sorted(self.blocked.items())],
            "counters": dict(self.counters),
            "lanes": ([{"lane": 0, "cpu": self.lanes.cpu_of(0), "thread": "halb-heartbeat-beat"},
                       *self.lanes.status()] if self.lanes is not None else []),
            "fencing": [f"{d.kind} {' '.join(d.args)}" for d in self.fence_devices],
            "watchdog": self.watchdog.describe() if self.watchdog is not None else None,
            "fencing_state": {"devices": [f"{d.kind} {' '.join(d.args)}" for d in self.fence_devices],
                              "fenced": sorted(self.fenced), "in_progress": sorted(self.fencing),
                              "stonith_configured": bool(self.cfg.stonith)},
            "threads": {t.name: t.native_id for t in threading.enumerate()},
        }

    def settled_active(self):
        return any(g.state == "held" for g in self.groups)

    async def handle_client(self, reader, writer):
        try:
            line = await asyncio.wait_for(reader.readline(), 5)
            try:
                req = json.loads(line or b"{}")
                cmd = req.get("cmd")
            except (ValueError, AttributeError):
                req, cmd = {}, None
            if cmd in ("status", "nodes"):
                resp = {"ok": True, **self.status()}
            elif cmd == "standby":
                claims = [self.claim] + [int(p.get("claim", 0)) for p in self.payloads.values()]
                self.claim = min(claims) - 1
                self.log("info", "standby requested: giving up resources to the other node(s)")
                self.send_beat()
                self.evaluate()
                resp = {"ok": True, "message": "standby: resources go to the other node(s)"}
            elif cmd == "takeover":
                claims = [self.claim] + [int(p.get("claim", 0)) for p in self.payloads.values()]
                self.claim = max(claims) + 1
                self.log("info", "takeover requested: taking all resources")
                self.send_beat()
                self.evaluate()
                resp = {"ok": True, "message": "takeover: this node takes all resources"}
            elif cmd == "cleanup":
                gi = recovery.find_group(str(req.get("group", "")),
                                         [(g.group.node, [str(r) for r in g.group.resources]) for g in self.groups])
                if gi is None:
                    resp = {"ok": False, "error": f"no resource group {req.get('group')!r} (give its number "
                                                  "in 'halb heartbeat status', or one of its resources)"}
                else:
                    resp = await self.cleanup(gi)
            else:
                resp = {"ok": False, "error": f"unknown request {cmd!r}"}
            writer.write(json.dumps(resp).encode() + b"\n")
            await writer.drain()
        except (asyncio.TimeoutError, OSError):
            pass
        except Exception as e:  # a bad client must never hurt the daemon
            self.log("debug", f"control connection dropped: {type(e).__name__}")
        finally:
            writer.close()

    # ------------------------------------------------------------ loops
    def set_realtime(self):
        if not self.cfg.realtime:
            return
        try:
            prio = min(50, os.sched_get_priority_max(os.SCHED_FIFO))
            # no SCHED_RESET_ON_FORK: the kernel applies it to new threads too, and every
            # thread of ours takes the interpreter lock: one preempted by an ordinary
            # process while holding it would stall the beat loop (priority inversion).
            # So all our threads run real-time; child processes are started at normal
            # priority explicitly (normal_priority()).
            policy = os.SCHED_FIFO
            os.sched_setscheduler(0, policy, os.sched_param(prio))
            import threading
            for t in threading.enumerate():
                if t.native_id and t.native_id != threading.get_native_id():
                    try:
                        os.sched_setscheduler(t.native_id, policy, os.sched_param(prio))
                    except OSError:
                        pass
            self.realtime = True
            self.log("info", f"beat loop runs at real-time priority (SCHED_FIFO {prio})")
            lock_memory(self.log)
        except (OSError, AttributeError) as e:
            self.log("warn", f"realtime on, but real-time priority is not allowed here "
                             f"({getattr(e, 'strerror', e)}): running at normal priority")

    async def lanes_watch(self):
        while not self.stopping:
            await asyncio.sleep(1.0)
            if not self.stopping:
                self.lanes.watch()

    async def respawn_loop(self):
        while not self.stopping:
            for i, (user, argv) in enumerate(self.cfg.respawn):
                p = self.respawned.get(i)
                if p is None or p.poll() is not None:
                    if p is not None:
                        self.log("warn", f"respawn: {' '.join(argv)} exited {p.returncode}; restarting")
                    try:
                        kw = {"user": user} if os.geteuid() == 0 else {}
                        self.respawned[i] = subprocess.Popen(normal_priority(argv), **kw)
                    except (OSError, KeyError, ValueError) as e:
                        self.log("error", f"respawn: cannot start {' '.join(argv)} as {user}: {e}")
                        self.respawned[i] = None
            await asyncio.sleep(1.0)

    # ------------------------------------------------------------ SIGHUP
    # what a reload may change while the resources stay up; the rest needs a restart
    RELOAD_REFUSED = ("nodes", "links", "udpport", "realtime", "beat_lanes", "watchdog", "respawn",
                      "logfacility", "use_logd")

    def on_sighup(self) -> None:
        if self.beats is None:
            self.log("info", "Signal SIGHUP received during start-up: ignored (send it again once started)")
        elif not self.stopping:
            asyncio.get_running_loop().create_task(self.reload())

    async def reload(self) -> None:
        """SIGHUP, as heartbeat: re-read ha.cf, authkeys and haresources; a bad file keeps
        the running configuration (logged with its file:line); what can change without
        releasing a resource is applied, the rest is refused in one log line. One reload
        at a time (a second SIGHUP waits for the first)."""
        if getattr(self, "_reload_lock", None) is None:
            self._reload_lock = asyncio.Lock()
        async with self._reload_lock:
            sdnotify.reloading()
            try:
                await self._reload()
            except Exception as e:  # noqa: BLE001 - a reload must never take the daemon down
                self.log("error", f"reload failed: {type(e).__name__}: {e}: the daemon goes on")
            finally:
                sdnotify.ready()

    async def _reload(self) -> None:
        from dataclasses import fields

        from halb.heartbeat.config import load_ha_dir

        self.log("info", f"Signal SIGHUP received: re-reading the configuration in {self.ha.dir}")
        try:
            new = load_ha_dir(self.ha.dir, self.me)
            stonith.check_devices(new.hacf)
        except HalbError as e:
            self.log("error", f"reload: {e}: keeping the running configuration")
            return
        old = self.cfg
        cfg = new.hacf
        refused = [f for f in self.RELOAD_REFUSED if getattr(cfg, f) != getattr(old, f)]
        for f in refused:
            setattr(cfg, f, getattr(old, f))
        if [(g.node, [str(r) for r in g.resources]) for g in new.groups] != \
                [(g.node, [str(r) for r in g.resources]) for g in self.ha.groups]:
            refused.append("haresources")
        keys_changed = new.auth != self.ha.auth
        changed = [f.name for f in fields(cfg) if f.name not in ("warnings", "path")
                   and f.name not in refused and getattr(cfg, f.name) != getattr(old, f.name)]
        for w in cfg.warnings:
            self.log("warn", w)
        # timers (the beat thread reads them at its next wake-up)
        timers_changed = any(f in changed for f in ("keepalive", "deadtime", "warntime", "deadping", "initdead"))
        with self.beats.lock:
            m = self.mem
            m.keepalive, m.deadtime = cfg.keepalive, cfg.deadtime
            m.warntime, m.deadping = cfg.effective_warntime, cfg.effective_deadping
            n_lanes = self.lanes.n if self.lanes is not None else 1
            self.tick_interval = max(0.002, min(cfg.keepalive * n_lanes, 0.1))
            m.tick_interval = self.beats.tick_interval = self.tick_interval
            m.stall_bound = max(2 * self.tick_interval, cfg.keepalive, 0.005)
            self.beats.keepalive = cfg.keepalive
            self.beats.ping_interval = max(cfg.keepalive, 0.05)
            self.beats.accept_crc = cfg.allow_crc
            if keys_changed:
                self.beats.auth = new.auth
                self.beats.encoder = type(self.beats.encoder)(self.me, self.generation, new.auth)
            if "ping" in changed or "ping_groups" in changed:
                self._apply_ping_targets(cfg.ping_targets)
        if self.lanes is not None and (timers_changed or keys_changed):
            # the lanes were given the key and the period at spawn: start them again
            self.lanes.auth, self.lanes.keepalive = new.auth, cfg.keepalive
            from halb.heartbeat.lane import lease_for
            self.lanes.lease = lease_for(cfg.deadtime)
            await asyncio.to_thread(self.lanes.stop)
            self.lanes.start(self.beats.body)
        if keys_changed:
            self.ha.auth = new.auth
            changed.append("authkeys")
        if "logfile" in changed or "debugfile" in changed or isinstance(self.log, Logger):
            if isinstance(self.log, Logger):
                for p in self.log.reopen(cfg.logfile, cfg.debugfile):
                    self.log("warn", p)
        if "stonith" in changed:
            self.fence_devices = stonith.devices_for(cfg, self.me)
        if self.worker is not None:
            self.worker.timeout = cfg.agent_timeout
        self.cfg = self.ha.hacf = cfg
        if "monitor_interval" in changed and cfg.monitor_interval > 0 and getattr(self, "monitor_task", None) is None:
            self.monitor_task = asyncio.get_running_loop().create_task(self.monitor_loop())
        self.log("info", "reload: log files reopened; " + (f"applied: {', '.join(changed)}" if changed
                                                           else "nothing else changed"))
        self.event("reload", "heartbeat", "configuration reloaded; " + (f"applied: {', '.join(changed)}" if changed
                                                                        else "nothing else changed"))
        if refused:
            self.log("warn", f"reload: {', '.join(refused)} changed: that needs a restart of heartbeat (the "
                             "resources would be released): keeping the running value(s)")
        self.send_beat()
        self.evaluate()

    def _apply_ping_targets(self, targets: dict) -> None:
        """New ping nodes (under the beat lock): known ones keep their state."""
        m = self.mem
        m.ping_members = dict(targets)
        m.ping_of = {a: t for t, addrs in targets.items() for a in addrs}
        m.ping_state = {t: m.ping_state.get(t, "init") for t in targets}
        m.ping_seen = {t: v for t, v in m.ping_seen.items() if t in targets}
        now = self.now()
        for t in targets:
            m.ping_seen.setdefault(t, now)      # a new ping node gets deadping to answer
        self.beats.ping_addrs = [a for addrs in targets.values() for a in addrs]
        if targets and self.ping_sock is None:
            self.ping_sock = open_ping_socket()
        self.beats.ping_sock = self.ping_sock if targets else None

    def start_watchdog(self) -> None:
        """`watchdog DEVICE`: the device when it exists (softdog), else a death-watch process."""
        from halb.heartbeat import watchdog

        dev = self.cfg.watchdog
        if os.path.exists(dev):
            try:
                self.watchdog = watchdog.Device(dev)
                self.log("info", f"watchdog: {self.watchdog.describe()}")
                return
            except OSError as e:
                self.log("warn", f"watchdog {dev}: cannot open ({e.strerror}): using a death-watch process")
        else:
            self.log("info", f"watchdog {dev}: no such device (no softdog here): using a death-watch process")
        self.wd_timeout = max(2 * self.cfg.deadtime, 1.0)
        self.watchdog = self._death_watch()
        self.log("info", f"watchdog: {self.watchdog.describe()}")

    def _death_watch(self):
        from halb.heartbeat.watchdog import DeathWatch

        argv = [sys.executable, "-m", "halb", "--node", self.me, "--run-dir", str(self.run_dir)]
        if self.engine:
            argv += ["--engine", self.engine]
        argv += ["heartbeat", "-c", str(self.ha.dir), "release"]
        return DeathWatch(daemon_pid=os.getpid(), timeout=self.wd_timeout, release_argv=argv,
                          logfile=self.cfg.logfile,
                          why=f"heartbeat (pid {os.getpid()}) is gone: the watchdog releases node {self.me}'s resources")

    async def watchdog_loop(self):
        """Kick the watchdog from the event loop: if the loop stops, the kicks stop."""
        from halb.heartbeat.watchdog import DeathWatch

        timeout = getattr(self, "wd_timeout", 60.0)
        every = min(max(self.cfg.keepalive, 0.1), timeout / 4)
        while True:      # also while shutting down (releasing takes a while): cancelled at the very end
            if not self.watchdog.kick() and isinstance(self.watchdog, DeathWatch):
                self.log("error", f"watchdog: the death-watch process died (exit {self.watchdog.proc.poll()}): "
                                  "starting a new one")
                try:
                    self.watchdog.close()
                except OSError:
                    pass
                self.watchdog = self._death_watch()
            await asyncio.sleep(every)

    async def clean_leftovers(self):
        """A node that crashed may still carry its resources (the VIP on its
        interface): stop whatever says it runs before joining, so it cannot
        answer for a VIP another node now holds."""
        for g in reversed(self.groups):
            for ri in reversed(range(len(g.agents))):
                a = g.agents[ri]
                ok, res = await self.agent(g, ri, "prepare")
                if not ok:
                    self.log("warn", f"{a}: {res}")
                ok, running = await self.agent(g, ri, "status")
                if ok and running:
                    self.log("warn", f"{a} is running but this node holds no resources yet: stopping it")
                    ok, res = await self.agent(g, ri, "stop")
                    if not ok:
                        self.log("error", f"{a} stop failed: {res}")

    def _new_worker(self):
        return AgentWorker([list(g.group.resources) for g in self.groups], ha_dir=self.ha.dir, node=self.me,
                           run_dir=self.run_dir, engine=self.engine, rt_prio=self._rt_prio,
                           timeout=self.cfg.agent_timeout)

    async def agent(self, g, ri, op, then=None):
        """Run one agent operation in the helper process; (ok, result or error).
        The request leaves from this thread at once; `then(t)` (logging, a beat) runs
        after it is on its way, with `t` the wall-clock time just before it was sent."""
        if not self.worker.alive():
            self.log("error", f"the resource agent helper died (exit {self.worker.proc.returncode}): restarting it")
            old = self.worker
            self.worker = self._new_worker()
            await asyncio.to_thread(old.close)
        t = time.time()
        sent = self.worker.begin(op, g.index, ri)
        if then is not None:
            then(t)
        if sent is None:
            ok, res, logs = await asyncio.to_thread(self.worker.finish)
        elif sent is False:      # the helper is busy with another group's request: queue behind it
            ok, res, logs = await asyncio.to_thread(self.worker.call, op, g.index, ri)
        else:
            ok, res, logs = sent
        for level, msg, *when in logs:
            self.log_at(level, msg, *when)
        return ok, res

    async def run(self):
        # the pid file first: a second `heartbeat run` must not touch a resource the
        # first one holds (clean_leftovers would stop them: VIP on no node)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        pid_path = self.run_dir / PID_NAME
        try:
            pid_fd = hold_pid_file(pid_path, f"heartbeat is already running on node {self.me}")
        except HalbError as e:
            if isinstance(self.log, Logger):
                self.log.close()
            raise HalbError(f"{e}: this one exits, resources left alone") from None
        try:
            # SIGHUP must never kill heartbeat, not even while it starts
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self.on_sighup)
            if self.cfg.watchdog:
                self.start_watchdog()
            await self._run()
        finally:
            if getattr(self, "wd_task", None) is not None:
                self.wd_task.cancel()
            if self.watchdog is not None:
                if getattr(self, "clean_shutdown", False):
                    self.watchdog.close()     # magic close: a clean stop, nothing for it to do
                else:
                    if not hasattr(self, "clean_shutdown"):     # the log is still open
                        self.log("error", "heartbeat is ending without having released its resources: "
                                          "the watchdog releases them")
                    self.watchdog.abandon()
            try:
                pid_path.unlink()
            except OSError:
                pass
            os.close(pid_fd)

    async def _run(self):
        loop = asyncio.get_running_loop()
        cfg = self.cfg
        for p in self.log.problems if isinstance(self.log, Logger) else ():
            self.log("warn", p)
        for w in cfg.warnings:
            self.log("warn", w)
        self.log("info", f"halb heartbeat starting on node {self.me}: keepalive {cfg.keepalive * 1000:g} ms, "
                         f"deadtime {cfg.deadtime * 1000:g} ms, warntime {cfg.effective_warntime * 1000:g} ms, "
                         f"initdead {cfg.effective_initdead * 1000:g} ms, auto_failback {cfg.auto_failback}, "
                         f"auth {self.ha.auth.method}")
        self.event("daemon", "heartbeat", f"halb heartbeat starting on node {self.me}")
        if not self.fence_devices:
            self.log("warn", "no STONITH device configured: if the heartbeat links fail while both nodes "
                             "run, both take the resources: split brain possible")
        gdir = generation.state_dir(self.run_dir, self.me)
        self.generation, problems = generation.take(gdir, time.time_ns())
        for p in problems:
            self.log("warn", p)
        self.log("info", f"generation {self.generation} ({gdir / generation.FILE})")
        self.channels = open_links(cfg.links)
        self.set_realtime()
        rt_prio = 0
        if cfg.realtime:
            try:
                rt_prio = max(1, min(49, os.sched_get_priority_max(os.SCHED_FIFO) - 1))
            except (OSError, AttributeError):
                rt_prio = 0
        self._rt_prio = rt_prio if os.geteuid() == 0 else 0
        self.worker = self._new_worker()
        await self.clean_leftovers()
        for ln in cfg.links:
            where = f"{ln.addr}:{ln.port}" if ln.addr else f"port {ln.port}"
            self.log("info", f"{ln.kind} heartbeat started on {ln.dev} ({where})")
        cpus = usable_cpus()
        n_lanes = wanted(cfg.beat_lanes, self.realtime, cfg.keepalive, len(cpus))
        # the beat thread wakes when it sends (every lanes x keepalive) and at the deadlines
        # the membership core names; arrival stamps make more wake-ups useless
        self.tick_interval = max(0.002, min(cfg.keepalive * n_lanes, 0.1))
        now = self.now()
        self.mem = Membership(self.me, self.nodes, keepalive=cfg.keepalive, deadtime=cfg.deadtime,
                              warntime=cfg.effective_warntime, initdead=cfg.effective_initdead,
                              ping_targets=cfg.ping_targets, deadping=cfg.effective_deadping,
                              tick_interval=self.tick_interval, now=now)
        if cfg.ping_targets:
            self.ping_sock = open_ping_socket()
        self._settled = False

        def deliver(items):
            loop.call_soon_threadsafe(self._delivered, items)
        beat_prio = 0
        if self.realtime:
            beat_prio = min(os.sched_get_priority_max(os.SCHED_FIFO), os.sched_getparam(0).sched_priority + 1)
        if n_lanes > 1:
            self.lanes = Lanes(n_lanes, me=self.me, auth=self.ha.auth, generation=self.generation,
                               channels=self.channels, keepalive=cfg.keepalive, deadtime=cfg.deadtime,
                               prio=beat_prio, cpus=cpus, log=self.log)
        self.beats = BeatLoop(me=self.me, auth=self.ha.auth, generation=self.generation, channels=self.channels,
                              mem=self.mem, keepalive=cfg.keepalive, tick_interval=self.tick_interval,
                              accept_crc=cfg.allow_crc, deliver=deliver, counters=self.counters,
                              ping_sock=self.ping_sock, ping_targets=cfg.ping_targets, ping_ident=self.ping_ident,
                              rt_prio=beat_prio, log=self.log, lanes=self.lanes)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        spath = socket_path(self.run_dir)
        if spath.exists():
            if _socket_alive(spath):
                raise HalbError(f"a heartbeat daemon already runs for node {self.me} ({spath})")
            spath.unlink()
        server = await asyncio.start_unix_server(self.handle_client, path=str(spath))
        os.chmod(spath, 0o600)
        self._stop_ev = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        loop.add_signal_handler(signal.SIGUSR1, self.reopen_logs)
        # a full garbage collection over the start-up heap can stall a thread for tens of
        # ms: freeze what exists now so collections only scan new objects
        gc.collect()
        gc.freeze()
        # the beat thread waits at most this long for the interpreter lock
        sys.setswitchinterval(0.0005)
        respawn = loop.create_task(self.respawn_loop()) if cfg.respawn else None
        self.monitor_task = loop.create_task(self.monitor_loop()) if cfg.monitor_interval > 0 else None
        self.wd_task = loop.create_task(self.watchdog_loop()) if self.watchdog is not None else None
        self.log("info", f"waiting up to {cfg.effective_initdead * 1000:g} ms (initdead) for the other nodes")
        self.send_beat(now=False)
        self.beats.start()
        watch = None
        if self.lanes is not None:
            self.lanes.start(self.beats.body)
            watch = loop.create_task(self.lanes_watch())
        sdnotify.ready(f"node {self.me}: beating on {len(self.channels)} link(s)")
        dog = loop.create_task(self.sd_watchdog_loop()) if sdnotify.watchdog_interval() else None
        try:
            await self._stop_ev.wait()
        finally:
            sdnotify.stopping()
            if watch is not None:
                watch.cancel()
            if dog is not None:
                dog.cancel()
            await self.shutdown(server, respawn)

    def _delivered(self, items):
        self.from_beats(items)
        if not self._settled and self.mem.settled():
            self._settled = True
            self.evaluate()

    def request_stop(self):
        self._stop_ev.set()

    async def sd_watchdog_loop(self):
        """systemd's watchdog (WatchdogSec=): pinged from the event loop, so a loop
        stuck for longer than WatchdogSec gets the daemon restarted."""
        await sdnotify.watchdog_loop()

    def reopen_logs(self):
        """SIGUSR1 (logrotate): reopen the log files, nothing else."""
        if isinstance(self.log, Logger):
            for p in self.log.reopen(self.cfg.logfile, self.cfg.debugfile):
                self.log("warn", p)

    async def shutdown(self, server, respawn):
        self.stopping = True
        if getattr(self, "monitor_task", None) is not None:
            self.monitor_task.cancel()
        self.log("info", "shutting down: releasing resources")
        for g in self.groups:
            if g.task is not None:
                try:
                    await asyncio.wait_for(asyncio.shield(g.task), 30)
                except Exception:
                    pass
        for g in reversed(self.groups):
            if g.state != "idle":
                await self.release(g)
        self.beats.stop(self.body(self.payload("shutdown")), 3)
        if self.lanes is not None:
            self.lanes.close()
        if respawn:
            respawn.cancel()
        for p in self.respawned.values():
            if p is not None and p.poll() is None:
                p.terminate()
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    p.kill()
        server.close()
        try:
            socket_path(self.run_dir).unlink()
        except OSError:
            pass
        for ch in self.channels:
            ch.close()
        if self.worker is not None:
            await asyncio.to_thread(self.worker.close)
        if self.ping_sock:
            self.ping_sock.close()
        # a group whose stop failed still runs here: the watchdog (if any) gets to try again
        self.clean_shutdown = all(g.state == "idle" for g in self.groups)
        if not self.clean_shutdown and self.watchdog is not None:
            self.log("error", "some resources could not be stopped: the watchdog tries again once heartbeat is gone")
        self.log("info", "heartbeat shutdown complete.")
        self.event("daemon", "heartbeat", "heartbeat shutdown complete.")
        if isinstance(self.log, Logger):
            self.log.close()


def normal_priority(argv: list) -> list:
    """Run a child at normal priority even though we are real-time."""
    import shutil

    if os.sched_getscheduler(0) != os.SCHED_OTHER and shutil.which("chrt"):
        return ["chrt", "--other", "0", *argv]
    return list(argv)


def _socket_alive(path) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.settimeout(1)
        s.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        s.close()


def request(run_dir, cmd: str, timeout: float = 5.0, **args) -> dict:
    """Send one command to the node's running daemon."""
    path = socket_path(run_dir)
    try:
        buf = ask(path, {"cmd": cmd, **args}, timeout)
    except (FileNotFoundError, ConnectionRefusedError):
        raise HalbError(f"no heartbeat daemon running for this node (no {path}); "
                        "start it with 'halb heartbeat -c HA_DIR run'") from None
    except socket.timeout:
        raise HalbError(f"the heartbeat daemon did not answer in {timeout:g}s ({path})") from None
    try:
        return json.loads(buf)
    except ValueError:
        raise HalbError("the heartbeat daemon sent an unreadable answer") from None


def release_all(ha, node: str, run_dir, *, engine=None, why: str | None = None) -> int:
    """Stop every haresources resource running on this node, in reverse order (what
    `halb heartbeat release` and the watchdog's death-watch run once the daemon is
    gone). Refused while a daemon holds the pid file: it owns the resources. 0 when
    everything is stopped."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    pid_path = run_dir / PID_NAME
    fd = hold_pid_file(pid_path, f"heartbeat is running on node {node}; it owns the resources: not releasing")
    log = Logger(ha.hacf.logfile, None, facility=ha.hacf.logfacility)
    bad = 0
    try:
        if why:
            log("warn", why)
        for gi in reversed(range(len(ha.groups))):
            for r in reversed(ha.groups[gi].resources):
                try:
                    a = make_agent(r, ha_dir=ha.dir, node=node, run_dir=run_dir, engine=engine, log=log)
                    if not a.status():
                        continue
                    log("info", f"Running {a} stop")
                    a.stop()
                    log("info", f"{a} stopped")
                except Exception as e:  # noqa: BLE001 - report each, go on with the others
                    bad += 1
                    log("error", f"{r} stop failed: {e}")
        log("info" if not bad else "error", "every resource stopped on this node" if not bad
            else f"{bad} resource(s) could not be stopped on this node")
    finally:
        log.close()
        try:
            pid_path.unlink()
        except OSError:
            pass
        os.close(fd)
    return 1 if bad else 0
