"""gmetad's /metrics in Prometheus text format (prometheus-client), built at
scrape time from gmetad's state."""
from __future__ import annotations

import time

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily


class _Collector:
    def __init__(self, gmetad):
        self.g = gmetad

    def collect(self):
        now = time.time()
        val = GaugeMetricFamily("ganglia_metric_value", "last value of a Ganglia metric",
                                labels=["cluster", "host", "metric", "units"])
        up = GaugeMetricFamily("ganglia_host_up", "1 while the host reports within 4 x TMAX", labels=["cluster", "host"])
        age = GaugeMetricFamily("ganglia_host_report_age_seconds", "seconds since the host last reported",
                                labels=["cluster", "host"])
        src_up = GaugeMetricFamily("halb_gmetad_source_up", "1 when an address of the data source answered "
                                   "the last poll", labels=["source"])
        polls = CounterMetricFamily("halb_gmetad_polls", "polls of a data source address", labels=["source", "address"])
        fails = CounterMetricFamily("halb_gmetad_poll_failures", "failed polls of a data source address",
                                    labels=["source", "address"])
        xml = CounterMetricFamily("halb_gmetad_xml_errors", "answers that were not a usable Ganglia XML dump",
                                  labels=["source"])
        series = GaugeMetricFamily("halb_gmetad_series", "series kept for the data source", labels=["source"])
        for src in self.g.sources:
            src_up.add_metric([src.name], 1.0 if src.up else 0.0)
            xml.add_metric([src.name], src.xml_errors)
            series.add_metric([src.name], len(self.g.stores[src.name].series))
            for a in src.addrs:
                polls.add_metric([src.name, str(a.addr)], a.polls)
                fails.add_metric([src.name, str(a.addr)], a.failures)
            for h in src.hosts.values():
                up.add_metric([src.name, h.name], 1.0 if h.alive(now) else 0.0)
                age.add_metric([src.name, h.name], h.age(now))
                for m in h.metrics.values():
                    v = m.number()
                    if v is not None:
                        val.add_metric([src.name, h.name, m.name, m.units.strip()], v)
        yield from (val, up, age, src_up, polls, fails, xml, series)


def exposition(gmetad) -> tuple[bytes, str]:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(_Collector(gmetad))
    return generate_latest(reg), CONTENT_TYPE_LATEST
