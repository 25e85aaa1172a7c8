"""Fuzzing what gmetad reads from the nodes' exporters (network input, issue
13): any JSON answer leaves gmetad polling, the node shown answering or
unreachable, never an exception out of the poller."""
from __future__ import annotations

import asyncio
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from halb.monitor.conf import Address, parse
from halb.monitor.gmetad import Gmetad, GmetadOptions

pytestmark = pytest.mark.timeout(120)

JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False)
                    | st.text(max_size=8),
                    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
                    max_leaves=20)
SNAP = st.one_of(JSON, st.fixed_dictionaries({"node": JSON, "services": st.lists(st.fixed_dictionaries({
    "dests": st.lists(st.dictionaries(st.sampled_from(["addr", "port", "activeconns", "rates"]), JSON),
                      max_size=3)}), max_size=3)}))
EVENTS = st.one_of(JSON, st.fixed_dictionaries({"events": st.lists(st.one_of(
    JSON, st.fixed_dictionaries({"t": st.one_of(st.floats(allow_nan=False), st.integers(), JSON),
                                 "node": JSON, "kind": JSON})), max_size=4)}))


@pytest.fixture(scope="module")
def exporter():
    from aiohttp import web

    loop = asyncio.new_event_loop()
    answers = {"state": b"{}", "events": b"{}"}

    async def state(req):
        return web.Response(body=answers["state"], content_type="application/json")

    async def events(req):
        return web.Response(body=answers["events"], content_type="application/json")

    app = web.Application()
    app.router.add_get("/api/state", state)
    app.router.add_get("/api/events", events)
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = site._server.sockets[0].getsockname()[1]
    try:
        yield loop, answers, port
    finally:
        loop.run_until_complete(runner.cleanup())
        loop.close()


@given(snap=SNAP, evs=EVENTS)
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_any_exporter_answer_is_taken_or_refused_cleanly(tmp_path, exporter, snap, evs):
    loop, answers, port = exporter
    answers["state"] = json.dumps(snap).encode()
    answers["events"] = json.dumps(evs).encode()
    g = Gmetad(parse(f'data_source "s" 127.0.0.1:1\nexporters "s" 127.0.0.1:{port}\n'),
               GmetadOptions(data_dir=tmp_path))

    async def poll():
        try:
            await g.poll_exporter(g.sources[0], Address("127.0.0.1", port), 1000.0, 5.0)
            await g.poll_exporter(g.sources[0], Address("127.0.0.1", port), 1001.0, 5.0)
        finally:
            if g.http is not None:
                await g.http.close()
    loop.run_until_complete(poll())
    nodes = list(g.sources[0].lb.nodes.values())
    assert len(nodes) == 1 and nodes[0].polls == 2
    assert (nodes[0].snap is None) == bool(nodes[0].error)
    g.save()
    assert g.save_errors == 0
