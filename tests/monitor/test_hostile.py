"""gmetad and gmond against hostile or careless input (issue 13): the
history survives a save racing new series and absurd values, every failed
save is counted and the saving goes on; hosts are capped and silent ones
expire; gmond and gmetad answer only who they are told to."""
from __future__ import annotations

import asyncio
import logging
import socket
import urllib.error
import urllib.request

import pytest

from halb.monitor import gxml
from halb.monitor.access import Access
from halb.monitor.conf import Address, DataSource, parse
from halb.monitor.gmetad import Gmetad, GmetadOptions, store_file
from halb.monitor.rrd import Store
from halb.monitor.state import SourceView, end_round, merge_answer

pytestmark = pytest.mark.timeout(60)


def _xml(hosts: dict[str, str]) -> bytes:
    return gxml.render([gxml.Cluster("c", hosts={n: gxml.Host(n, metrics={
        "load_one": gxml.Metric("load_one", v, "float")}) for n, v in hosts.items()})])


def test_huge_values_are_stored_and_reloaded(tmp_path):
    """1e308 averaged with itself overflows to inf: the save used to die on it
    (JSON has no inf) and every later save with it."""
    conf = parse('data_source "s" 1 127.0.0.1:1\n')
    g = Gmetad(conf, GmetadOptions(data_dir=tmp_path))
    st = g.stores["s"]
    for t, v in ((1000.0, 1e308), (1000.2, 1e308), (1001.0, float("inf")), (1002.0, 5.0)):
        st.update(("s", "h", "m"), t, v)
    st.update(("s", "h", "x"), 1000.0, 1e308)
    st.update(("s", "h", "x"), 1000.5, 1e308)   # the row's sum is inf now
    g.save()
    assert g.save_errors == 0
    again = Gmetad(conf, GmetadOptions(data_dir=tmp_path))
    again.load()
    s = again.stores["s"].get(("s", "h", "m"))
    assert s is not None and s.last_v == 5.0
    x = again.stores["s"].get(("s", "h", "x"))
    assert x.archives[0].acc == float("inf")


def test_a_save_failure_is_counted_logged_and_saving_goes_on(tmp_path, caplog):
    """One store that cannot be saved: the others are, the error is counted and
    logged each time, and the periodic save keeps running."""
    conf = parse('data_source "bad" 1 127.0.0.1:1\ndata_source "good" 1 127.0.0.1:2\n')
    g = Gmetad(conf, GmetadOptions(data_dir=tmp_path, save_every=0.02))
    g.stores["good"].update(("good", "h", "m"), 1000.0, 1.0)
    g.stores["bad"].update(("bad", "h", "m"), 1000.0, 1.0)

    def broken():
        raise RuntimeError("dictionary changed size during iteration")
    g.stores["bad"].snapshot = broken

    async def run():
        task = asyncio.ensure_future(g.save_loop())
        await asyncio.sleep(0.3)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    with caplog.at_level(logging.ERROR, logger="halb.gmetad"):
        asyncio.run(run())
    assert g.saves >= 3 and g.save_errors >= 3
    assert store_file(tmp_path, "good").exists() and not store_file(tmp_path, "bad").exists()
    assert "cannot take a copy of its series" in caplog.text


def test_series_added_while_saving_never_break_the_save(tmp_path):
    """The pollers add series on the loop while the periodic save runs: the
    copy is taken on the loop, the writing in a thread."""
    conf = parse('data_source "s" 1 127.0.0.1:1\nRRAs "RRA:AVERAGE:0.5:1:10"\n')
    g = Gmetad(conf, GmetadOptions(data_dir=tmp_path, save_every=0.001))
    st = g.stores["s"]
    st.max_series = 100_000

    async def run():
        task = asyncio.ensure_future(g.save_loop())
        for i in range(4000):
            st.update(("s", f"h{i}", "m"), 1000.0, float(i))
            if i % 20 == 0:
                await asyncio.sleep(0)
        for _ in range(200):
            if g.saves >= 3:
                break
            await asyncio.sleep(0.05)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(run())
    assert g.saves >= 2 and g.save_errors == 0


def test_hosts_are_capped_per_data_source_and_silent_ones_expire():
    """A gmond reporting ever new host names (DMAX 0) cannot grow gmetad for
    ever: at most max_hosts; a silent host goes after host_dmax."""
    s = SourceView.of(DataSource("s", 15, [Address("a")]), host_dmax=600, max_hosts=50)
    t = 1000.0
    for r in range(20):
        hosts = {f"fake{r}-{i}": gxml.Host(f"fake{r}-{i}", reported=int(t)) for i in range(30)}
        ev, _ = merge_answer(s, Address("a"), [gxml.Cluster("c", hosts=hosts)], t)
        end_round(s, True, t)
        t += 15
    assert len(s.hosts) == 50 and s.refused_hosts > 0
    # every one of them down by now: a new real host takes the place of the longest silent
    t += 4 * 20 + 1
    ev, fresh = merge_answer(s, Address("a"), [gxml.Cluster("c", hosts={"N1": gxml.Host("N1")})], t)
    assert "N1" in s.hosts and len(s.hosts) == 50
    ev = end_round(s, True, t + 601)
    assert "N1" not in s.hosts and len(s.hosts) == 0
    assert any(k == "host_expired" for k, _ in ev)


def test_conf_limits_and_trusted_hosts_name_file_and_line():
    c = parse('data_source "s" a\nhost_dmax 0\nmax_hosts 10\ntrusted_hosts 10.0.0.0/8 b.example\nall_trusted off\n')
    assert (c.host_dmax, c.max_hosts, c.trusted_hosts, c.all_trusted) == (0, 10, ["10.0.0.0/8", "b.example"], False)
    from halb.errors import ConfigError
    for bad, msg in (("max_hosts 0", "max_hosts takes a whole number from 1"),
                     ("host_dmax " + "9" * 5000, "host_dmax takes a whole number"),
                     ("host_dmax -1", "host_dmax takes"), ("all_trusted maybe", "all_trusted takes on or off"),
                     ("trusted_hosts", "trusted_hosts needs")):
        with pytest.raises(ConfigError) as e:
            parse(f'data_source "s" a\n{bad}\n', "g.conf")
        assert str(e.value).startswith("g.conf:2: ") and msg in str(e.value)


def test_access_lists():
    a = Access(["10.1.0.0/16", "192.0.2.7", "gm.example"], resolve=lambda n: ["198.51.100.9"])
    assert a.allows("10.1.2.3") and a.allows("192.0.2.7") and a.allows("198.51.100.9")
    assert a.allows("127.0.0.1") and a.allows("::ffff:10.1.0.1")
    assert not a.allows("10.2.0.1") and not a.allows("127.0.0.2") and not a.allows("junk") and not a.allows(None)
    assert Access(None).allows("203.0.113.1")
    assert not Access(["10.0.0.1"], localhost=False).allows("127.0.0.1")
    assert Access(["nosuch.invalid"], resolve=lambda n: []).unresolved == ["nosuch.invalid"]


def _get(url, source):
    class Src(urllib.request.HTTPHandler):
        def http_open(self, req):
            import http.client

            return self.do_open(lambda host, **kw: http.client.HTTPConnection(host, source_address=(source, 0),
                                                                                **kw), req)
    return urllib.request.build_opener(Src).open(url, timeout=10)


def test_gmetad_serves_only_trusted_hosts(tmp_path):
    from aiohttp import web

    conf = parse('data_source "s" 127.0.0.1:1\ntrusted_hosts 127.0.0.5\n')
    g = Gmetad(conf, GmetadOptions(data_dir=tmp_path))

    async def run():
        runner = web.AppRunner(g.app())
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        url = f"http://127.0.0.1:{port}/api/state"

        def clients():
            out = {}
            for src in ("127.0.0.1", "127.0.0.5", "127.0.0.9"):
                try:
                    out[src] = _get(url, src).status
                except urllib.error.HTTPError as e:
                    out[src] = e.code
            return out
        try:
            return await asyncio.to_thread(clients)
        finally:
            await runner.cleanup()

    assert asyncio.run(run()) == {"127.0.0.1": 200, "127.0.0.5": 200, "127.0.0.9": 403}
    assert g.refused_clients == 1


def test_gmond_gives_its_dump_only_to_the_allow_list():
    from halb.monitor.gmond import Gmond, GmondConfig

    gm = Gmond(GmondConfig(node="n1", bind="127.0.0.1", port=0, halb_metrics=False, allow=["127.0.0.5"]))

    async def run():
        server = await asyncio.start_server(gm.handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]

        def read(src):
            s = socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(src, 0))
            data = b""
            while chunk := s.recv(65536):
                data += chunk
            s.close()
            return data
        try:
            return await asyncio.to_thread(lambda: (read("127.0.0.5"), read("127.0.0.1")))
        finally:
            server.close()

    allowed, other = asyncio.run(run())
    assert b"<GANGLIA_XML" in allowed and other == b"" and gm.refused == 1
