"""Ganglia's XML dump: what gmond writes, gmetad reads back; malformed input is
one counted XmlError, never a crash."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from halb.monitor.gxml import Cluster, Host, Metric, XmlError, parse, render


def sample() -> Cluster:
    h = Host(name="N1", ip="192.168.1.1", reported=1700000000, tn=2, tmax=20, dmax=0, gmond_started=1699999000)
    h.metrics["load_one"] = Metric("load_one", "0.25", "float", " ", 3, 70, 0, "both",
                                   {"GROUP": "load", "DESC": "One minute load average"})
    h.metrics["os_name"] = Metric("os_name", "Linux", "string", "", 1, 1200, 0, "zero")
    h.metrics["we<ird>&\""] = Metric("we<ird>&\"", "a\"b<c>&d\n\u00e9\u20ac", "string", "", 0, 60, 0, "zero")
    return Cluster(name="Mon Cluster", localtime=1700000001, hosts={"N1": h})


def test_round_trip():
    data = render([sample()])
    assert data.startswith(b'<?xml version="1.0" encoding="ISO-8859-1" standalone="yes"?>')
    assert b'<GANGLIA_XML VERSION="3.1.7" SOURCE="gmond">' in data
    assert b'<METRIC NAME="load_one" VAL="0.25" TYPE="float" UNITS=" " TN="3" TMAX="70" DMAX="0" ' \
           b'SLOPE="both" SOURCE="gmond">' in data
    src, clusters = parse(data)
    assert src == "gmond" and clusters == [sample()]
    m = clusters[0].hosts["N1"].metrics
    assert m["load_one"].number() == 0.25 and m["os_name"].number() is None


def test_gmetad_dump_with_grid_and_summaries():
    data = b"""<?xml version="1.0" encoding="ISO-8859-1" standalone="yes"?>
<GANGLIA_XML VERSION="3.1.7" SOURCE="gmetad">
<GRID NAME="unspecified" AUTHORITY="http://x/ganglia/" LOCALTIME="1700000000">
<CLUSTER NAME="Mon Cluster" LOCALTIME="1700000000" OWNER="unspecified" LATLONG="unspecified" URL="unspecified">
<HOST NAME="N1" IP="10.0.0.1" REPORTED="1700000000" TN="5" TMAX="20" DMAX="0" LOCATION="unspecified" GMOND_STARTED="0">
<METRIC NAME="load_one" VAL="1.5" TYPE="float" UNITS=" " TN="5" TMAX="70" DMAX="0" SLOPE="both"/>
</HOST>
<HOST NAME="N2" IP="10.0.0.2" REPORTED="1700000000" TN="5" TMAX="20" DMAX="0" LOCATION="unspecified" GMOND_STARTED="0"/>
<HOSTS UP="2" DOWN="0" SOURCE="gmetad"/>
<METRICS NAME="load_one" SUM="1.5" NUM="1" TYPE="float" UNITS=" " SLOPE="both" SOURCE="gmond"/>
</CLUSTER>
</GRID>
</GANGLIA_XML>
"""
    src, (c,) = parse(data)
    assert src == "gmetad" and c.name == "Mon Cluster" and sorted(c.hosts) == ["N1", "N2"]
    assert c.hosts["N1"].tn == 5 and c.hosts["N1"].metrics["load_one"].val == "1.5"


@pytest.mark.parametrize("data,msg", [
    (b"", "empty answer"),
    (b"<GANGLIA_XML", "malformed XML"),
    (b"<FOO/>", "not <GANGLIA_XML>"),
    (b'<GANGLIA_XML><CLUSTER LOCALTIME="1"/></GANGLIA_XML>', "CLUSTER has no NAME"),
    (b'<GANGLIA_XML><CLUSTER NAME="c"><HOST NAME="h" REPORTED="x"/></CLUSTER></GANGLIA_XML>', "REPORTED='x'"),
    (b'<GANGLIA_XML><CLUSTER NAME="c"><HOST NAME="h"><METRIC NAME="m" VAL="1" TYPE="bogus"/></HOST>'
     b'</CLUSTER></GANGLIA_XML>', "unknown TYPE"),
    (b'<GANGLIA_XML><CLUSTER NAME="c"><METRIC NAME="m" VAL="1" TYPE="float"/></CLUSTER></GANGLIA_XML>',
     "<METRIC> inside <CLUSTER>"),
    (b'<GANGLIA_XML><CLUSTER NAME="c"/></GANGLIA_XML>trailing', "malformed XML"),
    (b'<?xml version="1.0"?><!DOCTYPE G [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;">]>'
     b'<GANGLIA_XML><CLUSTER NAME="&b;"/></GANGLIA_XML>', "entity declarations are not accepted"),
    (b"<GANGLIA_XML>" + b"<GRID NAME='g' AUTHORITY='a'>" * 40 + b"</GANGLIA_XML>", "nested too deep"),
    (b'<?xml version="1.0" encoding="AISO-8859-1"?><GANGLIA_XML/>', "unknown encoding"),
])
def test_malformed(data, msg):
    with pytest.raises(XmlError, match=msg.replace("(", r"\(").replace("<", "<")):
        parse(data)


_valid = render([sample()])


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000))
def test_fuzz_random_bytes(data):
    try:
        parse(data)
    except XmlError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.integers(0, len(_valid)), st.integers(0, len(_valid)), st.binary(max_size=40))
def test_fuzz_mutated_dump(i, j, insert):
    i, j = min(i, j), max(i, j)
    try:
        parse(_valid[:i] + insert + _valid[j:])
    except XmlError:
        pass


@settings(max_examples=100, deadline=None)
@given(st.text(min_size=1, max_size=30), st.text(max_size=50))
def test_any_text_round_trips(name, val):
    # what XML 1.0 cannot carry is dropped; the rest comes back as it was
    h = Host(name="h", metrics={"m": Metric("m", val, "string")})
    clean = "".join(c for c in val if c in "\t\n\r" or " " <= c <= "\ud7ff" or "\ue000" <= c <= "\ufffd"
                    or c >= "\U00010000")
    _, (c,) = parse(render([Cluster(name=name.strip() or "x", hosts={"h": h})]))
    assert c.hosts["h"].metrics["m"].val == clean


names = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=20)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(names, st.sampled_from(["float", "double", "uint32", "int32", "string", "timestamp"]),
                          st.floats(-1e12, 1e12, allow_nan=False), names, st.integers(0, 10**6),
                          st.sampled_from(["zero", "positive", "negative", "both", "unspecified"])),
                max_size=20), names, st.integers(0, 2**31))
def test_gmetad_reads_what_gmond_writes(metrics, host, reported):
    """Any set of metrics a gmond writes comes back the same to gmetad (numbers as numbers)."""
    h = Host(name=host.strip() or "h", reported=reported)
    for name, typ, num, units, tn, slope in metrics:
        val = units if typ == "string" else (f"{num:.2f}" if typ in ("float", "double") else str(int(num)))
        h.metrics[name] = Metric(name, val, typ, units, tn, 60, 0, slope)
    xml_h = parse(render([Cluster("Mon Cluster", hosts={h.name: h})]))[1][0].hosts
    got = next(iter(xml_h.values()))
    assert got.reported == reported
    for name, m in h.metrics.items():
        g = got.metrics.get(name)
        if g is None:
            continue  # a name with characters XML cannot carry
        assert (g.type, g.tn, g.slope) == (m.type, m.tn, m.slope)
        if m.type != "string":
            assert g.number() == pytest.approx(m.number())
