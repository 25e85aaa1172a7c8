"""`halb gmond`: the per-node agent. Collects the node's metrics every
interval and writes Ganglia's XML dump to every TCP client that connects
(port 8649 by default), then closes, as gmond does: a real gmetad can poll it.
"""
from __future__ import annotations

import asyncio
import logging
import signal
import time
from dataclasses import dataclass

from halb import logs, sdnotify
from halb.errors import HalbError
from halb.monitor import gxml
from halb.monitor.collect import Collector, host_ip

log = logging.getLogger("halb.gmond")


@dataclass
class GmondConfig:
    node: str
    bind: str = "0.0.0.0"
    port: int = 8649
    cluster: str = "unspecified"
    owner: str = "unspecified"
    location: str = "unspecified"
    interval: float = 10.0     # seconds between collections
    tmax: int = 20             # host TMAX: gmetad shows the host down after 4 x TMAX without report
    dmax: int = 0
    halb_metrics: bool = True
    allow: list[str] | None = None   # --allow: who may read the XML dump (None: anyone)


class Gmond:
    def __init__(self, cfg: GmondConfig, ctx=None):
        self.cfg = cfg
        self.ctx = ctx
        self.collector = Collector(ctx, with_halb=cfg.halb_metrics)
        self.metrics: dict[str, gxml.Metric] = {}
        self.collected: dict[str, float] = {}  # metric -> time collected
        self.ip = host_ip(cfg.bind)
        self.started = int(time.time())
        self.clients = 0
        self._halb_busy = False
        self._stop: asyncio.Event | None = None
        from halb.monitor.access import Access

        self.access = Access(cfg.allow, localhost=False)
        self.refused = 0

    def collect_system(self, now: float) -> None:
        for name, m in self.collector.system().items():
            self.metrics[name] = m
            self.collected[name] = now

    async def collect_halb(self) -> None:
        if self._halb_busy:
            return  # the last one is still running: never pile up
        self._halb_busy = True
        try:
            got = await asyncio.wait_for(asyncio.to_thread(self.collector.halb), timeout=max(2.0, self.cfg.interval))
        except asyncio.TimeoutError:
            log.info("halb metrics took longer than %.0f s; skipped this round", max(2.0, self.cfg.interval))
            return
        finally:
            self._halb_busy = False
        now = time.time()
        for name in [n for n in self.metrics if n.startswith("halb_") and n not in got]:
            del self.metrics[name]  # a service or daemon that went away
            self.collected.pop(name, None)
        for name, m in got.items():
            self.metrics[name] = m
            self.collected[name] = now

    def dump(self, now: float) -> bytes:
        host = gxml.Host(name=self.cfg.node, ip=self.ip, reported=int(now), tn=0, tmax=self.cfg.tmax,
                         dmax=self.cfg.dmax, location=self.cfg.location, gmond_started=self.started)
        for name, m in self.metrics.items():
            host.metrics[name] = gxml.Metric(m.name, m.val, m.type, m.units, int(max(0, now - self.collected[name])),
                                             m.tmax, m.dmax, m.slope, m.extra)
        cl = gxml.Cluster(name=self.cfg.cluster, localtime=int(now), owner=self.cfg.owner,
                          hosts={host.name: host})
        return gxml.render([cl])

    async def handle(self, reader, writer):
        peer = (writer.get_extra_info("peername") or ("",))[0]
        if not self.access.allows(peer):
            self.refused += 1
            if self.refused == 1 or self.refused % 1000 == 0:
                log.warning("refused the XML dump to %s (not in --allow; %d refused so far)", peer, self.refused)
            writer.close()
            return
        self.clients += 1
        try:
            writer.write(self.dump(time.time()))
            await asyncio.wait_for(writer.drain(), 10)
        except (OSError, asyncio.TimeoutError):
            pass
        finally:
            writer.close()

    async def collect_loop(self):
        while True:
            try:
                self.collect_system(time.time())
            except Exception as e:  # noqa: BLE001 - a failed reading must not stop the agent
                log.warning("collecting system metrics failed: %s", e)
            if self.cfg.halb_metrics:
                await self.collect_halb()
            await asyncio.sleep(self.cfg.interval)

    def reload(self) -> None:
        """SIGHUP: gmond's settings are its options (restart to change them); the log
        files are reopened and the daemon goes on."""
        sdnotify.reloading()
        logs.reopen()
        log.info("reload: log files reopened (gmond's settings are its command-line options)")
        sdnotify.ready()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        # CPU percentages and network rates are differences: the first reading needs some time
        await asyncio.sleep(min(0.5, self.cfg.interval))
        try:
            server = await asyncio.start_server(self.handle, self.cfg.bind, self.cfg.port, reuse_address=True)
        except OSError as e:
            raise HalbError(f"gmond: cannot listen on {self.cfg.bind}:{self.cfg.port}: {e.strerror}") from None
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        loop.add_signal_handler(signal.SIGUSR1, logs.reopen)
        self.collect_system(time.time())
        log.info("gmond for host %s (cluster \"%s\") serving XML on %s:%d to %s, collecting every %g s",
                 self.cfg.node, self.cfg.cluster, self.cfg.bind, self.cfg.port, self.access.describe(),
                 self.cfg.interval)
        for name in self.access.unresolved:
            log.warning("--allow %s: no such host (ignored)", name)
        task = loop.create_task(self.collect_loop())
        dog = loop.create_task(sdnotify.watchdog_loop()) if sdnotify.watchdog_interval() else None
        sdnotify.ready(f"serving XML on {self.cfg.bind}:{self.cfg.port}")
        try:
            await self._stop.wait()
        finally:
            sdnotify.stopping()
            if dog is not None:
                dog.cancel()
            task.cancel()
            server.close()
            await server.wait_closed()
            log.info("gmond shutdown complete (%d clients served)", self.clients)
