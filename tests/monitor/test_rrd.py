"""The round-robin store: consolidation, wrap-around, unknown rows, file round trip."""
from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from halb.monitor.conf import RRA
from halb.monitor.rrd import (Archive, Layout, Series, Store, StoreError, aggregate, default_layout,
                              layout_from_rras)

NAN = float("nan")


def same(a, b):
    return (math.isnan(a) and math.isnan(b)) or a == b


def test_default_layout_gmetad_step():
    lay = default_layout(15)
    assert [(x.res, x.rows) for x in lay] == [(15, 240), (60, 1440), (600, 1008), (3600, 744)]
    assert all(x.cf == "AVERAGE" and x.xff == 0.5 for x in lay)
    # a 1 s step (tests): an hour of 1 s rows
    assert default_layout(1)[0].rows == 3600
    # a step that does not divide 60: rows are whole numbers of steps
    assert all(abs(x.res / 7 - round(x.res / 7)) < 1e-9 for x in default_layout(7))


def test_rras_from_gmetad_conf():
    lay = layout_from_rras(15, [RRA("AVERAGE", 0.5, 1, 244), RRA("MAX", 0.5, 24, 244)])
    assert lay == [Layout("AVERAGE", 0.5, 15, 244), Layout("MAX", 0.5, 360, 244)]


def test_average_consolidation():
    a = Archive(Layout("AVERAGE", 0.5, 60, 10), step=15)
    for i, v in enumerate([1, 2, 3, 4, 10, 20, 30, 40]):
        assert a.update(600 + i * 15, v)
    assert a.points(600, 700) == [(600, 2.5), (660, 25.0)]


@pytest.mark.parametrize("cf,want", [("MIN", 1.0), ("MAX", 4.0), ("LAST", 2.0)])
def test_other_consolidations(cf, want):
    a = Archive(Layout(cf, 0.5, 60, 10), step=15)
    for i, v in enumerate([3, 1, 4, 2]):
        a.update(i * 15, v)
    assert a.points(0, 59) == [(0, want)]


def test_xff_unknown_row_and_gaps():
    a = Archive(Layout("AVERAGE", 0.5, 60, 10), step=15)
    a.update(0, 5.0)           # 1 of 4 samples: under (1 - xff) once the row closes
    a.update(60, 1.0)
    a.update(75, 3.0)          # 2 of 4: kept
    a.update(300, 7.0)         # rows 120..240 skipped: unknown
    pts = dict(a.points(0, 300))
    assert math.isnan(pts[0]) and pts[60] == 2.0
    assert all(math.isnan(pts[t]) for t in (120, 180, 240)) and pts[300] == 7.0


def test_wrap_around_keeps_last_rows():
    a = Archive(Layout("AVERAGE", 0.5, 1, 5), step=1)
    for t in range(12):
        a.update(t, float(t))
    assert a.points(0, 100) == [(t, float(t)) for t in range(7, 12)]
    # a jump longer than the archive: everything before is gone
    a.update(1000, 1.0)
    pts = a.points(0, 2000)
    assert pts[-1] == (1000, 1.0) and all(math.isnan(v) for _, v in pts[:-1]) and len(pts) == 5


def test_out_of_order_refused():
    s = Store(1)
    assert s.update(("c", "h", "m"), 10, 1.0)
    assert not s.update(("c", "h", "m"), 5, 2.0)
    assert s.refused_old == 1


def test_bounded_series_count():
    s = Store(1, max_series=3)
    for i in range(5):
        s.update(("c", "h", f"m{i}"), 1, 1.0)
    assert len(s.series) == 3 and s.refused_full == 2


def test_fetch_picks_archive_for_period():
    s = Series(default_layout(15), 15)
    now = 100 * 86400.0
    for i in range(400):
        s.update(now - (400 - i) * 15, float(i))
    res, pts = s.fetch(3600, now)
    assert res == 15 and len(pts) <= 241
    res, pts = s.fetch(86400, now)
    assert res == 60
    res, _ = s.fetch(7 * 86400, now)
    assert res == 600
    res, _ = s.fetch(31 * 86400, now)
    assert res == 3600
    res, _ = s.fetch(365 * 86400, now)  # longer than any archive: the longest one
    assert res == 3600


def test_persistence_round_trip(tmp_path):
    s = Store(1)
    for t in range(100):
        s.update(("Mon Cluster", "N1", "load_one"), 1000 + t, t / 10)
        s.update(("Mon Cluster", "N2", "cpu_user"), 1000 + t, 100 - t)
    data = s.dumps()
    s2 = Store(1)
    assert s2.loads(data) == (2, 0)
    for key, ser in s.series.items():
        ser2 = s2.series[key]
        for a, b in zip(ser.archives, ser2.archives):
            assert a.cur == b.cur and a.n == b.n and a.acc == b.acc
            assert all(same(x, y) for x, y in zip(a.values, b.values))
    # updates go on where they stopped
    assert s2.update(("Mon Cluster", "N1", "load_one"), 1100, 5.0)
    assert not s2.update(("Mon Cluster", "N1", "load_one"), 1050, 5.0)


def test_layout_change_resets_series():
    s = Store(1)
    s.update(("c", "h", "m"), 1, 1.0)
    s2 = Store(15)
    assert s2.loads(s.dumps()) == (0, 1)
    assert s2.get(("c", "h", "m")).last_t is None


@pytest.mark.parametrize("data", [b"", b"junk", b"HALB-RRD 1\n\x00\x00\x00\x10{}",
                                  b"HALB-RRD 1\n\x00\x00\x00\x02{}", b"HALB-RRD 1\n\x00\x00\x00\x05[1,2]",
                                  b'HALB-RRD 1\n\x00\x00\x00\x1c{"step":1,"byteorder":"x"}'])
def test_corrupt_files_are_errors(data):
    with pytest.raises(StoreError):
        Store(1).loads(data)


def test_truncated_rows_are_an_error():
    s = Store(1)
    s.update(("c", "h", "m"), 1, 1.0)
    data = s.dumps()
    with pytest.raises(StoreError, match="truncated"):
        Store(1).loads(data[:-100])


samples = st.lists(st.tuples(st.integers(0, 3), st.floats(-1e6, 1e6, allow_nan=False)), min_size=1, max_size=300)


@settings(max_examples=150, deadline=None)
@given(samples, st.integers(1, 6), st.integers(1, 30))
def test_property_average_rows_match_a_naive_model(gaps, steps, rows):
    """Every known row equals the mean of the samples in it; rows are within the samples' range;
    the archive holds at most `rows` rows, the newest ones."""
    a = Archive(Layout("AVERAGE", 0.99, steps, rows), step=1)
    t = 0
    buckets: dict[int, list[float]] = {}
    for gap, v in gaps:
        t += gap
        assert a.update(t, v)
        buckets.setdefault(t // steps, []).append(v)
    pts = a.points(-10**9, 10**9)
    assert len(pts) <= rows
    assert pts[-1][0] == (t // steps) * steps
    for start, val in pts:
        got = buckets.get(int(start // steps))
        if got is None:
            assert math.isnan(val)
        elif not math.isnan(val):
            assert val == pytest.approx(sum(got) / len(got), rel=1e-9, abs=1e-6)
            assert min(got) - 1e-6 <= val <= max(got) + 1e-6


@settings(max_examples=60, deadline=None)
@given(samples)
def test_property_dump_load_identity(gaps):
    s = Store(1, layouts=[Layout("AVERAGE", 0.5, 1, 20), Layout("MAX", 0.5, 5, 8)])
    t = 0
    for gap, v in gaps:
        t += gap
        s.update(("c", "h", "m"), t, v)
    s2 = Store(1, layouts=[Layout("AVERAGE", 0.5, 1, 20), Layout("MAX", 0.5, 5, 8)])
    s2.loads(s.dumps())
    for a, b in zip(s.series[("c", "h", "m")].archives, s2.series[("c", "h", "m")].archives):
        assert all(same(x, y) for x, y in zip(a.values, b.values)) and a.cur == b.cur


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=300))
def test_property_garbage_never_crashes(data):
    try:
        Store(1).loads(b"HALB-RRD 1\n" + data)
    except StoreError:
        pass


def test_aggregate_sum_and_mean():
    lay = [Layout("AVERAGE", 0.5, 1, 100)]
    a, b = Series(lay, 1), Series(lay, 1)
    for t in range(10):
        a.update(t, 1.0)
        if t >= 5:
            b.update(t, 3.0)
    res, pts = aggregate([a, b], 100, 9, "sum")
    assert res == 1 and dict(pts)[2] == 1.0 and dict(pts)[7] == 4.0
    _, pts = aggregate([a, b], 100, 9, "mean")
    assert dict(pts)[7] == 2.0
    assert aggregate([], 100, 9) == (0.0, [])
