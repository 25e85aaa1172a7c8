"""gmetad's view: polling order, merging lone gmonds, hosts down after 4 x TMAX,
source events; the pages and graphs built from it."""
from __future__ import annotations

import math
import re

from halb.monitor import pages, svg
from halb.monitor.conf import Address, DataSource
from halb.monitor.gxml import Cluster, Host, Metric
from halb.monitor.state import SourceView, end_round, keep_polling, merge_answer, record_failure

A1, A2 = Address("N1"), Address("N2")


def answer(*names, tn=0, tmax=20, load="0.50"):
    hosts = {n: Host(name=n, ip="10.0.0.1", reported=1000, tn=tn, tmax=tmax,
                     metrics={"load_one": Metric("load_one", load, "float", " ")}) for n in names}
    return [Cluster(name="unspecified", hosts=hosts)]


def src():
    return SourceView.of(DataSource("Mon Cluster", 15, [A1, A2]))


def test_keep_polling_rule():
    assert keep_polling(answer("N1"))           # a lone gmond (halb's): ask the next address too
    assert not keep_polling(answer("N1", "N2"))  # a gmond that knows the cluster: gmetad stops there
    assert keep_polling([])


def test_merge_two_lone_gmonds_and_events():
    s = src()
    ev1, fresh1 = merge_answer(s, A1, answer("N1"), 100.0)
    ev2, fresh2 = merge_answer(s, A2, answer("N2"), 100.0)
    assert ev1 == [("addr_up", "N1:8649")] and [n for n, _ in fresh1] == ["N1"] and [n for n, _ in fresh2] == ["N2"]
    ev = end_round(s, True, 100.0)
    assert ev == [("source_up", "Mon Cluster"), ("host_up", "N1"), ("host_up", "N2")]
    assert s.hosts_up(100.0) == 2
    # the same report again is not fresh (nothing new to store)
    _, fresh = merge_answer(s, A1, answer("N1"), 100.0)
    assert fresh == []


def test_host_down_after_four_tmax_and_back():
    s = src()
    merge_answer(s, A1, answer("N1", tmax=20), 100.0)
    merge_answer(s, A2, answer("N2", tmax=20), 100.0)
    end_round(s, True, 100.0)
    # N2's gmond stops answering
    assert record_failure(s, A2, "Connection refused", 115.0) == [("addr_down", "N2:8649: Connection refused")]
    assert record_failure(s, A2, "Connection refused", 130.0) == []  # said once
    merge_answer(s, A1, answer("N1"), 175.0)
    assert end_round(s, True, 175.0) == []                      # 75 s <= 4 x 20
    merge_answer(s, A1, answer("N1"), 181.0)
    ev = end_round(s, True, 181.0)
    assert ev == [("host_down", "N2 (last report 81 s ago, TMAX 20 s)")]
    assert not s.hosts["N2"].alive(181.0) and s.hosts["N1"].alive(181.0)
    merge_answer(s, A2, answer("N2"), 190.0)
    assert end_round(s, True, 190.0) == [("host_up", "N2")]


def test_reported_tn_counts_and_freshest_wins():
    s = src()
    # N1 reports N2 as heard 50 s ago (multicast gmond); N2 itself just reported
    merge_answer(s, A2, answer("N2", tn=0, load="2.00"), 100.0)
    merge_answer(s, A1, answer("N1", "N2", tn=50, load="1.00"), 100.0)
    assert s.hosts["N2"].metrics["load_one"].val == "2.00" and s.hosts["N2"].age(100.0) == 0


def test_all_addresses_down_is_source_down_once():
    s = src()
    record_failure(s, A1, "timeout", 1.0)
    record_failure(s, A2, "timeout", 1.0, xml=False)
    assert end_round(s, False, 1.0) == [("source_down", "Mon Cluster")]
    assert end_round(s, False, 16.0) == []
    record_failure(s, A1, "bad XML: empty answer", 31.0, xml=True)
    assert s.xml_errors == 1 and s.addrs[0].failures == 2


def test_dmax_expires_host():
    s = src()
    a = answer("N1")
    a[0].hosts["N1"].dmax = 60
    merge_answer(s, A1, a, 0.0)
    end_round(s, True, 0.0)
    assert ("host_expired", "N1") in end_round(s, True, 61.0) and "N1" not in s.hosts


def test_svg_graph_has_points_and_gaps():
    pts = [(float(t), float(t % 7)) for t in range(0, 50)] + [(50.0, math.nan)] + \
          [(float(t), 3.0) for t in range(51, 60)]
    out = svg.render(pts, 0, 60, "N1 load_one (last hour)", " ")
    d = re.search(r'<path class="series" d="([^"]+)"', out).group(1)
    assert d.count("M") == 2 and d.count("L") == 49 + 8
    assert 'data-points="59"' in out and "last 3" in out
    empty = svg.render([], 0, 60, "t")
    assert "no data yet" in empty and "<path" not in empty
    assert svg.fmt_value(1536000) == "1.5M" and svg.fmt_value(0.25) == "0.25"


def test_pages_overview_and_host():
    s = src()
    merge_answer(s, A1, answer("N1"), 100.0)
    merge_answer(s, A2, answer("N<2>"), 100.0)
    end_round(s, True, 100.0)
    calls = []

    def graph(c, h, m, p):
        calls.append((c, h, m, p))
        return "<svg/>"

    html = pages.overview("unspecified", [s], 100.0, "day", graph)
    assert "Mon Cluster" in html and 'href="/host/Mon%20Cluster/N1?r=day"' in html
    assert "N&lt;2&gt;" in html and "<2>" not in html
    assert ("Mon Cluster", "N1", "load_one", "day") in calls
    assert ("Mon Cluster", "*", "load_one", "day") in calls and ("Mon Cluster", "*", "cpu_user", "day") in calls
    html = pages.host_page(s, "N1", 100.0, "week", ["load_one", "nope"], ["load_one", "mem_free"], graph)
    assert "N1" in html and 'value="mem_free"' in html and calls[-1] == ("Mon Cluster", "N1", "load_one", "week")
