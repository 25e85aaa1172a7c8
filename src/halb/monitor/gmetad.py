"""`halb gmetad -c gmetad.conf`: polls every data source each step, keeps
the series in round-robin stores (one file per data source in the data
dir, written atomically, reloaded on restart) and serves the web front end:

    /                       grid overview (clusters, hosts up/down, load, CPU)
    /host/CLUSTER/HOST      a host's graphs (?r=hour|day|week|month, ?m=metric ...)
    /graph.svg?c=&h=&m=&r=  one graph
    /api/state              clusters, sources, hosts, current values (JSON)
    /api/series?c=&h=&m=&r= one series (JSON); h=* for the whole cluster
    /metrics                Prometheus text format
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from halb import logs, sdnotify
from halb.errors import HalbError
from halb.monitor import gxml, lbview, pages, svg
from halb.monitor.conf import EXPORTER_PORT, Address, GmetadConf
from halb.monitor.rrd import PERIODS, Store, StoreError, aggregate, default_layout, layout_from_rras
from halb.monitor.state import SourceView, end_round, keep_polling, merge_answer, record_failure

log = logging.getLogger("halb.gmetad")

SAVE_EVERY = 60.0
# events drawn as markers on the graphs
MARKED = {"node_dead", "node_up", "group_acquired", "group_released", "fencing", "fencing_failed", "group_failed",
          "real_removed", "real_restored", "real_quiesced", "table_restored"}


def store_file(data_dir: Path, source: str) -> Path:
    """The data source's file: its name made safe, plus a short hash when that
    changed it (so "a b" and "a_b" never share a file)."""
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in source).lstrip(".") or "_"
    if safe != source:
        safe += "-" + hashlib.sha1(source.encode()).hexdigest()[:8]
    return data_dir / f"{safe}.rrd"


def write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    try:
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


@dataclass
class GmetadOptions:
    data_dir: Path
    host: str = "0.0.0.0"
    port: int = 8080
    save_every: float = SAVE_EVERY


class Gmetad:
    def __init__(self, conf: GmetadConf, opts: GmetadOptions):
        self.conf, self.opts = conf, opts
        self.sources = [SourceView.of(ds, getattr(conf, "host_dmax", 86400), getattr(conf, "max_hosts", 1000))
                        for ds in conf.sources]
        self.stores: dict[str, Store] = {}
        for ds in conf.sources:
            lay = layout_from_rras(ds.step, conf.rras) if conf.rras else default_layout(ds.step)
            self.stores[ds.name] = Store(ds.step, lay)
        self.started = time.time()
        self.http = None           # aiohttp session for the nodes' exporters
        self.saves = 0
        self.save_errors = 0
        self._stop: asyncio.Event | None = None

    def source(self, name: str) -> SourceView | None:
        return next((s for s in self.sources if s.name == name), None)

    # ------------------------------------------------------------ persistence
    def load(self) -> None:
        for name, st in self.stores.items():
            path = store_file(self.opts.data_dir, name)
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                continue
            except OSError as e:
                log.error("%s: cannot read (%s); starting with empty series", path, e.strerror)
                continue
            try:
                loaded, reset = st.loads(data)
            except StoreError as e:
                bad = path.with_name(path.name + f".corrupt-{int(time.time())}")
                log.error("%s: %s; kept as %s, starting with empty series", path, e, bad.name)
                st.series.clear()
                try:
                    os.replace(path, bad)
                except OSError:
                    pass
                continue
            log.info("data source \"%s\": %d series reloaded from %s%s", name, loaded, path,
                     f" ({reset} started again: their archive layout changed)" if reset else "")

    def snapshot(self) -> list:
        """Every store's consistent copy, taken on the event loop's thread (the
        pollers add series there: a save reading the live dicts from another
        thread would die of 'dictionary changed size during iteration')."""
        out = []
        for name, st in self.stores.items():
            try:
                out.append((name, st.snapshot()))
            except Exception as e:  # noqa: BLE001 - counted and logged; the others are still saved
                self.save_errors += 1
                log.error("data source \"%s\": cannot take a copy of its series to save (%s)", name, e)
        return out

    def write_snapshot(self, snap: list) -> None:
        """Write the copies (any thread). Every failure is counted and logged;
        the other stores are written all the same and the next save tries again."""
        from halb.monitor.rrd import dumps_snapshot

        for name, s in snap:
            path = store_file(self.opts.data_dir, name)
            try:
                write_atomic(path, dumps_snapshot(s))
            except OSError as e:
                self.save_errors += 1
                log.error("%s: cannot write (%s)", path, e.strerror)
            except Exception as e:  # noqa: BLE001 - a bug must not end the saving
                self.save_errors += 1
                log.error("%s: cannot save (%s: %s)", path, type(e).__name__, e)
        self.saves += 1

    def save(self) -> None:
        """Save from the event loop's thread (the start and tests)."""
        self.write_snapshot(self.snapshot())

    async def save_now(self) -> None:
        snap = self.snapshot()                          # on the loop: consistent
        await asyncio.to_thread(self.write_snapshot, snap)  # serialising and writing: off the loop

    async def save_loop(self):
        while True:
            await asyncio.sleep(self.opts.save_every)
            try:
                await self.save_now()
            except Exception as e:  # noqa: BLE001 - never stop saving
                self.save_errors += 1
                log.error("saving the series failed (%s: %s); trying again in %g s", type(e).__name__, e,
                          self.opts.save_every)

    # ------------------------------------------------------------ polling
    @staticmethod
    async def fetch(addr, timeout: float) -> bytes:
        async def go():
            reader, writer = await asyncio.open_connection(addr.host, addr.port)
            try:
                chunks, size = [], 0
                while True:
                    c = await reader.read(65536)
                    if not c:
                        break
                    chunks.append(c)
                    size += len(c)
                    if size > gxml.MAX_XML_BYTES:
                        raise gxml.XmlError(f"the dump is larger than {gxml.MAX_XML_BYTES} bytes")
                return b"".join(chunks)
            finally:
                writer.close()

        return await asyncio.wait_for(go(), timeout)

    def log_events(self, src: SourceView, events) -> None:
        for kind, what in events:
            if kind == "addr_down":
                log.warning("data_thread() for [%s] failed to contact node %s", src.name, what)
            elif kind == "addr_up":
                log.info("data_thread() for [%s]: node %s answers", src.name, what)
            elif kind == "source_down":
                log.warning("data_thread() got no answer from any [%s] datasource", src.name)
            elif kind == "source_up":
                log.info("data source [%s] is up", src.name)
            elif kind == "host_down":
                log.warning("[%s] host %s is down", src.name, what)
            elif kind == "host_up":
                log.info("[%s] host %s is up", src.name, what)
            elif kind == "host_expired":
                log.info("[%s] host %s removed (older than its DMAX)", src.name, what)
            elif kind == "hosts_full":
                log.warning("[%s] new host %s not kept", src.name, what)

    async def poll_once(self, src: SourceView, t: float) -> None:
        store = self.stores[src.name]
        begun = time.monotonic()
        timeout = min(10.0, max(0.5, src.step * 0.8))
        answered = False
        events = []
        for st in src.addrs:
            try:
                data = await self.fetch(st.addr, timeout)
                _, clusters = gxml.parse(data)
            except gxml.XmlError as e:
                events += record_failure(src, st.addr, f"bad XML: {e}", t, xml=True)
                continue
            except asyncio.TimeoutError:
                events += record_failure(src, st.addr, f"no answer within {timeout:g} s", t)
                continue
            except OSError as e:
                events += record_failure(src, st.addr, e.strerror or str(e), t)
                continue
            ev, fresh = merge_answer(src, st.addr, clusters, t)
            events += ev
            answered = True
            full = store.refused_full
            for hname, h in fresh:
                for m in h.metrics.values():
                    v = m.number()
                    if v is not None:
                        store.update((src.name, hname, m.name), t, v, m.units, m.type)
            if store.refused_full > full and full == 0:
                log.warning("data source [%s]: %d series kept, the most it may keep; new metrics are not stored",
                            src.name, store.max_series)
            if not keep_polling(clusters):
                break
        events += end_round(src, answered, t + (time.monotonic() - begun))  # now, on t's clock
        self.log_events(src, events)
        await self.poll_exporters(src, t, timeout)

    # ------------------------------------------------------------ the nodes' exporters
    def exporter_addrs(self, src: SourceView) -> list[Address]:
        if src.exporters is not None:
            return list(src.exporters)
        ips = sorted({h.ip for h in src.hosts.values() if h.ip})
        return [Address(ip, EXPORTER_PORT) for ip in ips]

    async def _get_json(self, url: str, timeout: float):
        import aiohttp

        if self.http is None:
            self.http = aiohttp.ClientSession()
        async with self.http.get(url, timeout=aiohttp.ClientTimeout(total=timeout)) as r:
            if r.status != 200:
                raise OSError(f"HTTP {r.status}")
            return await r.json(content_type=None)

    async def poll_exporter(self, src: SourceView, addr: Address, t: float, timeout: float) -> None:
        lb = src.lb
        base = f"http://{addr}"
        key = str(addr)
        nl = next((n for n in lb.nodes.values() if n.addr == key), None)
        if nl is None:
            nl = lb.nodes[key] = lbview.NodeLB(node=key, addr=key)
        nl.polls += 1
        try:
            snap = await self._get_json(base + "/api/state", timeout)
            q = "" if nl.events_since is None else f"?since={nl.events_since!r}"
            evs = await self._get_json(base + "/api/events" + q, timeout)
            # what a node answers is network input: its shape is checked before use
            if not isinstance(snap, dict) or not isinstance(evs, dict):
                raise ValueError("not a halb exporter answer (JSON objects expected)")
            evs = evs.get("events", [])
            if not isinstance(evs, list) or not all(isinstance(e, dict) and isinstance(e.get("t"), (int, float))
                                                    and not isinstance(e.get("t"), bool) for e in evs):
                raise ValueError("malformed events from the exporter")
        except Exception as e:  # noqa: BLE001 - refused, timeout, bad JSON: the node is shown unreachable
            if nl.snap is not None or not nl.error:
                log.warning("[%s] exporter %s does not answer: %s", src.name, key,
                            str(e) or type(e).__name__)
            nl.failures += 1
            nl.error = str(e) or type(e).__name__
            nl.snap = None
            return
        if nl.error or nl.last_ok is None:
            log.info("[%s] exporter %s (node %s) answers", src.name, key, snap.get("node", "?"))
        name = str(snap.get("node") or key)
        if nl.node != name:
            lb.nodes.pop(nl.node, None)
            nl.node = name
            lb.nodes[name] = nl
        nl.snap, nl.error, nl.last_ok = snap, "", t
        if evs:
            try:
                lb.add_events(evs)
            except TypeError as e:  # unhashable fields: malformed events
                log.warning("[%s] exporter %s: malformed events (%s)", src.name, key, e)
            nl.events_since = max(e["t"] for e in evs)
        store = self.stores[src.name]
        try:
            points = list(lbview.series_points(name, snap))
        except Exception as e:  # noqa: BLE001 - a malformed snapshot: no series this round
            log.warning("[%s] exporter %s: malformed state (%s: %s)", src.name, key, type(e).__name__, e)
            points = []
        for metric, v, units in points:
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                store.update((src.name, name, str(metric)), t, float(v), str(units), "float")

    async def poll_exporters(self, src: SourceView, t: float, timeout: float) -> None:
        addrs = self.exporter_addrs(src)
        if addrs:
            await asyncio.gather(*(self.poll_exporter(src, a, t, timeout) for a in addrs))

    async def poll_loop(self, src: SourceView) -> None:
        step = src.step
        while True:
            now = time.time()
            # polls on the step's grid, so every poll has its own row in the finest archive
            tick = (math.floor(now / step) + 1) * step
            await asyncio.sleep(max(0.0, tick - now))
            try:
                await self.poll_once(src, tick)
            except Exception as e:  # noqa: BLE001 - a bug in one round must not stop polling
                log.error("polling [%s] failed: %s: %s", src.name, type(e).__name__, e)

    # ------------------------------------------------------------ views
    def series(self, cluster: str, host: str, metric: str, period: str):
        """(resolution, units, type, points) of a host's metric, or of the whole
        cluster for host "*" (sum; mean for percentages); None when unknown."""
        now = time.time()
        span = PERIODS.get(period, 3600)
        st = self.stores.get(cluster)
        if st is None:
            return None
        if host == "*":
            found = [st.get((cluster, h, metric)) for h in sorted({k[1] for k in st.keys() if k[0] == cluster})]
            found = [s for s in found if s is not None]
            if not found:
                return None
            units = found[0].units.strip()
            res, pts = aggregate(found, span, now, "mean" if units == "%" else "sum")
            return res, units, found[0].type, pts
        s = st.get((cluster, host, metric))
        if s is None:
            return None
        res, pts = s.fetch(span, now)
        return res, s.units.strip(), s.type, pts

    def graph(self, cluster: str, host: str, metric: str, period: str) -> str:
        now = time.time()
        span = PERIODS.get(period, 3600)
        got = self.series(cluster, host, metric, period)
        _, units, _, pts = got if got else (0, "", "", [])
        who = f"{cluster} (all hosts)" if host == "*" else host
        src = self.source(cluster)
        markers = [] if src is None else [(e["t"], e["kind"], f"{e['node']} {e['kind']} {e['subject']}: {e['text']}")
                                          for e in src.lb.events if e["kind"] in MARKED and e["t"] >= now - span]
        return svg.render(pts, now - span, now, f"{who} {metric} (last {period})", units,
                          graph_id=f"g-{host}-{metric}".replace("*", "all"), markers=markers)

    def lb_metrics(self, src: SourceView) -> list[str]:
        """The per real server series kept for the data source (any node)."""
        st = self.stores.get(src.name)
        if st is None:
            return []
        names = sorted({k[2] for k in st.keys() if k[0] == src.name and k[2].startswith("lb ")})
        # a real server's connections next to its check latency
        return sorted(names, key=lambda m: (m.split()[-2] if m.endswith(" check") else m.split()[-2], m))

    def lb_state(self, src: SourceView) -> dict:
        lb = src.lb
        return {"nodes": {n.node: {"address": n.addr, "up": n.snap is not None, "error": n.error,
                                   "polls": n.polls, "failures": n.failures} for n in lb.nodes.values()},
                "groups": lbview.groups(lb.nodes), "services": lbview.services(lb.nodes),
                "events": lb.events[-200:]}

    def state(self) -> dict:
        now = time.time()
        out = []
        for src in self.sources:
            hosts = []
            for h in sorted(src.hosts.values(), key=lambda h: h.name):
                hosts.append({"name": h.name, "ip": h.ip, "up": h.alive(now), "age": round(h.age(now), 3),
                              "tmax": h.tmax, "dmax": h.dmax, "reported": h.reported,
                              "gmond_started": h.gmond_started,
                              "metrics": {m.name: {"val": m.val, "type": m.type, "units": m.units.strip(),
                                                   "tn": m.tn} for m in h.metrics.values()}})
            st = self.stores[src.name]
            out.append({"name": src.name, "step": src.step, "up": src.up, "xml_errors": src.xml_errors,
                        "hosts_up": src.hosts_up(now), "hosts_down": len(src.hosts) - src.hosts_up(now),
                        "sources": [{"address": str(a.addr), "up": a.up, "polls": a.polls, "failures": a.failures,
                                     "last_error": a.last_error} for a in src.addrs],
                        "series": len(st.series), "rows": st.memory_rows(), "hosts": hosts,
                        "lb": self.lb_state(src)})
        return {"grid": self.conf.gridname, "config": self.conf.path, "data_dir": str(self.opts.data_dir),
                "uptime": round(now - self.started, 3), "saves": self.saves, "save_errors": self.save_errors,
                "clusters": out}

    # ------------------------------------------------------------ web
    def app(self) -> web.Application:
        from halb.monitor.access import Access

        trusted = getattr(self.conf, "trusted_hosts", None)
        self.access = Access(None if getattr(self.conf, "all_trusted", False) else trusted)
        self.refused_clients = 0
        gm = self

        @web.middleware
        async def trusted_only(req, handler):
            if not gm.access.allows(req.remote):
                gm.refused_clients += 1
                if gm.refused_clients == 1 or gm.refused_clients % 1000 == 0:
                    log.warning("refused %s %s (not in trusted_hosts; %d refused so far)", req.remote,
                                req.path[:100], gm.refused_clients)
                raise web.HTTPForbidden(text="not a trusted host (gmetad.conf trusted_hosts)\n")
            return await handler(req)

        app = web.Application(middlewares=[trusted_only])
        app.router.add_get("/", self.h_index)
        app.router.add_get("/host/{cluster}/{host}", self.h_host)
        app.router.add_get("/graph.svg", self.h_graph)
        app.router.add_get("/api/state", self.h_state)
        app.router.add_get("/api/series", self.h_series)
        app.router.add_get("/metrics", self.h_metrics)
        return app

    @staticmethod
    def _period(req) -> str:
        p = req.query.get("r", "hour")
        if p not in PERIODS:
            raise web.HTTPBadRequest(text=f"unknown period {p!r} (hour, day, week or month)\n")
        return p

    def _refresh(self) -> float:
        return max(5.0, min(s.step for s in self.sources))

    async def h_index(self, req):
        html = pages.overview(self.conf.gridname, self.sources, time.time(), self._period(req), self.graph,
                              self._refresh(), self.lb_metrics)
        return web.Response(text=html, content_type="text/html")

    async def h_host(self, req):
        cluster, host = req.match_info["cluster"], req.match_info["host"]
        src = self.source(cluster)
        period = self._period(req)
        st = self.stores.get(cluster)
        if src is None or (host not in src.hosts and not (st and st.metrics_of(cluster, host))):
            return web.Response(status=404, text=pages.not_found(f"no host {host} in cluster {cluster}"),
                                content_type="text/html")
        chosen = req.query.getall("m", [])
        html = pages.host_page(src, host, time.time(), period, chosen, st.metrics_of(cluster, host), self.graph,
                               self._refresh())
        return web.Response(text=html, content_type="text/html")

    def _series_args(self, req):
        c, h, m = req.query.get("c"), req.query.get("h"), req.query.get("m")
        if not c or not h or not m:
            raise web.HTTPBadRequest(text="give c (cluster), h (host) and m (metric)\n")
        return c, h, m, self._period(req)

    async def h_graph(self, req):
        c, h, m, p = self._series_args(req)
        return web.Response(text=self.graph(c, h, m, p), content_type="image/svg+xml")

    async def h_state(self, req):
        return web.json_response(self.state())

    async def h_series(self, req):
        c, h, m, p = self._series_args(req)
        got = self.series(c, h, m, p)
        if got is None:
            raise web.HTTPNotFound(text=f"no series {m} for host {h} in cluster {c}\n")
        res, units, typ, pts = got
        return web.json_response({"cluster": c, "host": h, "metric": m, "period": p, "resolution": res,
                                  "units": units, "type": typ,
                                  "points": [[t, None if math.isnan(v) else v] for t, v in pts]})

    async def h_metrics(self, req):
        from halb.monitor.prom import exposition

        body, ctype = exposition(self)
        return web.Response(body=body, headers={"Content-Type": ctype})

    # ------------------------------------------------------------ reload
    def reload(self) -> None:
        """SIGHUP (systemctl reload): reopen the log files, re-read gmetad.conf; a bad
        file is logged (file:line) and the running configuration kept. Data sources
        that are new or changed are polled anew (a changed step starts new series),
        removed ones stop being polled (their file stays); the others go on untouched."""
        from halb.monitor import conf as gconf

        sdnotify.reloading()
        logs.reopen()
        try:
            try:
                new = gconf.load(self.conf.path)
            except HalbError as e:
                log.error("reload: %s; keeping the running configuration", e)
                return
            for w in new.warnings:
                log.warning("%s", w)
            loop = asyncio.get_running_loop()
            old = {ds.name: ds for ds in self.conf.sources}
            key = lambda ds: (ds.step, [str(a) for a in ds.addresses])  # noqa: E731
            changed = 0
            for name in set(old) - {ds.name for ds in new.sources}:
                t = self._polls.pop(name, None)
                if t is not None:
                    t.cancel()
                self.sources = [s for s in self.sources if s.name != name]
                changed += 1
            for ds in new.sources:
                prev = old.get(ds.name)
                if prev is not None and key(prev) == key(ds) and new.rras == self.conf.rras:
                    continue
                t = self._polls.pop(ds.name, None)
                if t is not None:
                    t.cancel()
                if prev is None or prev.step != ds.step or new.rras != self.conf.rras:
                    lay = layout_from_rras(ds.step, new.rras) if new.rras else default_layout(ds.step)
                    self.stores[ds.name] = Store(ds.step, lay)
                view = SourceView.of(ds, getattr(new, "host_dmax", 86400), getattr(new, "max_hosts", 1000))
                self.sources = [s for s in self.sources if s.name != ds.name] + [view]
                self._polls[ds.name] = loop.create_task(self.poll_loop(view))
                changed += 1
            if (getattr(new, "trusted_hosts", None), getattr(new, "all_trusted", False)) != \
                    (getattr(self.conf, "trusted_hosts", None), getattr(self.conf, "all_trusted", False)):
                from halb.monitor.access import Access
                self.access = Access(None if getattr(new, "all_trusted", False) else new.trusted_hosts)
                changed += 1
                log.info("reload: web front end now for %s", self.access.describe())
            self.conf = new
            log.info("reload: %s applied (%d data source(s) new, changed or removed)", new.path, changed)
        finally:
            sdnotify.ready()

    # ------------------------------------------------------------ run
    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        for w in self.conf.warnings:
            log.warning("%s", w)
        try:
            self.opts.data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise HalbError(f"gmetad: cannot use data dir {self.opts.data_dir}: {e.strerror}") from None
        self.load()
        runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, self.opts.host, self.opts.port, reuse_address=True)
        try:
            await site.start()
        except OSError as e:
            await runner.cleanup()
            raise HalbError(f"gmetad: cannot listen on {self.opts.host}:{self.opts.port}: {e.strerror}") from None
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        loop.add_signal_handler(signal.SIGUSR1, logs.reopen)
        for src in self.sources:
            log.info("data source \"%s\": polling %s every %g s", src.name,
                     " ".join(str(a.addr) for a in src.addrs), src.step)
        log.info("web front end on http://%s:%d/ (data in %s), for %s", self.opts.host, self.opts.port,
                 self.opts.data_dir, self.access.describe() if self.access.open else
                 "localhost and trusted_hosts " + self.access.describe())
        for name in self.access.unresolved:
            log.warning("trusted_hosts %s: no such host (ignored)", name)
        self._polls = {s.name: loop.create_task(self.poll_loop(s)) for s in self.sources}
        tasks = [loop.create_task(self.save_loop())]
        if sdnotify.watchdog_interval():
            tasks.append(loop.create_task(sdnotify.watchdog_loop()))
        sdnotify.ready(f"{len(self.sources)} data source(s)")
        try:
            await self._stop.wait()
        finally:
            sdnotify.stopping()
            log.info("shutting down: saving the series")
            tasks += list(self._polls.values())
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await runner.cleanup()
            if self.http is not None:
                await self.http.close()
            await self.save_now()
            log.info("gmetad shutdown complete")
