"""The exporter's web server (aiohttp).

    /metrics      Prometheus text (gzip when the scraper accepts it)
    /api/state    the snapshot as JSON (what gmetad's dashboard shows)
    /api/events   the node's events (?since=UNIX_TIME&limit=N&kind=K...)
    /             a short index

Reading the table costs what the engine costs (the nft engine runs `nft -j
list`: ~0.5 s at 1,000 services x 10 servers), so collections run in a
thread, every --interval seconds (less often when one costs more than a
tenth of that: the exporter never takes more than ~10 % of a core), and a
scrape serves the last body, rendered and compressed once per collection.
Nobody asking for two minutes: collections pause; the next request then
waits for a fresh one. halb_exporter_last_collect_timestamp_seconds says
how old the state is.
"""
from __future__ import annotations

import asyncio
import gzip
import json
import logging
import signal
import time

from aiohttp import web

from halb import events
from halb.exporter import gather as gmod
from halb.exporter.metrics import render

log = logging.getLogger("halb.exporter")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
IDLE_AFTER = 120.0
COST_SHARE = 10.0      # wait at least 10 x the last collection's duration between two


class Exporter:
    def __init__(self, ctx, interval: float = 5.0, gather=None):
        self.ctx = ctx
        self.interval = interval
        self.gather = gather or (lambda: gmod.gather(self.ctx))
        self.snap: dict | None = None
        self.body = b""
        self.gz = b""
        self.state_json: bytes | None = None
        self.last_request = time.monotonic()
        self.collections = 0
        self._lock: asyncio.Lock | None = None
        self.journal = events.Journal(events.journal_path(ctx.run_dir, ctx.node))

    def _collect(self) -> None:
        snap = self.gather()
        body = render(snap).encode()
        gz = gzip.compress(body, compresslevel=1)
        self.snap, self.body, self.gz, self.state_json = snap, body, gz, None
        self.collections += 1

    async def collect(self) -> None:
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            await asyncio.to_thread(self._collect)

    def _stale(self) -> bool:
        return self.snap is None or time.time() - self.snap["t"] > max(3 * self.interval, 30.0) \
            or time.monotonic() - self.last_request > IDLE_AFTER

    async def fresh(self) -> None:
        stale = self._stale()
        self.last_request = time.monotonic()
        if stale:
            await self.collect()

    async def loop(self) -> None:
        while True:
            if time.monotonic() - self.last_request <= IDLE_AFTER:
                try:
                    await self.collect()
                except Exception as e:  # noqa: BLE001 - the next collection may work
                    log.error("collection failed: %s: %s", type(e).__name__, e)
            cost = (self.snap or {}).get("collect_seconds", 0.0)
            await asyncio.sleep(max(self.interval, COST_SHARE * cost))

    # ------------------------------------------------------------ web
    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/", self.h_index)
        app.router.add_get("/metrics", self.h_metrics)
        app.router.add_get("/api/state", self.h_state)
        app.router.add_get("/api/events", self.h_events)
        return app

    async def h_index(self, req):
        return web.Response(text=f"halb exporter for node {self.ctx.node}: /metrics /api/state /api/events\n")

    async def h_metrics(self, req):
        await self.fresh()
        if "gzip" in req.headers.get("Accept-Encoding", ""):
            return web.Response(body=self.gz, headers={"Content-Type": CONTENT_TYPE, "Content-Encoding": "gzip"})
        return web.Response(body=self.body, headers={"Content-Type": CONTENT_TYPE})

    async def h_state(self, req):
        await self.fresh()
        if self.state_json is None:
            self.state_json = json.dumps(self.snap, separators=(",", ":")).encode()
        return web.Response(body=self.state_json, content_type="application/json")

    async def h_events(self, req):
        q = req.query
        try:
            since = float(q["since"]) if "since" in q else None
            limit = int(q.get("limit", "1000"))
        except ValueError:
            raise web.HTTPBadRequest(text="since is a Unix time, limit a number\n") from None
        kinds = q.getall("kind", [])
        evs = await asyncio.to_thread(self.journal.read, since, kinds, max(0, min(limit, 100000)))
        return web.json_response({"node": self.ctx.node, "events": evs})


async def serve(ctx, host: str, port: int, interval: float) -> None:
    from halb.errors import HalbError

    ex = Exporter(ctx, interval)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    runner = web.AppRunner(ex.app(), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host or None, port, reuse_address=True)
    try:
        await site.start()
    except OSError as e:
        await runner.cleanup()
        raise HalbError(f"exporter: cannot listen on {host or '*'}:{port}: {e.strerror}") from None
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    from halb import logs, sdnotify

    def sighup():       # systemctl reload: the settings are options; log files reopened
        sdnotify.reloading()
        logs.reopen()
        log.info("reload: log files reopened (the exporter's settings are its options)")
        sdnotify.ready()
    loop.add_signal_handler(signal.SIGHUP, sighup)
    loop.add_signal_handler(signal.SIGUSR1, logs.reopen)
    log.info("halb exporter for node %s on http://%s:%d/metrics (engine %s, run dir %s, events %s)",
             ctx.node, host or "*", port, ctx.engine, ctx.run_dir, ex.journal.path)
    task = loop.create_task(ex.loop())
    dog = loop.create_task(sdnotify.watchdog_loop()) if sdnotify.watchdog_interval() else None
    sdnotify.ready(f"serving http://{host or '*'}:{port}/metrics")
    try:
        await stop.wait()
    finally:
        sdnotify.stopping()
        if dog is not None:
            dog.cancel()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await runner.cleanup()
        log.info("halb exporter stopped")
