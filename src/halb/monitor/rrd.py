"""Round-robin time series, as RRDtool keeps them for gmetad (pure: time
comes in as an argument, bytes in and out; the caller writes the file).

A `Series` (one metric of one host) has a few fixed-size `Archive`s; each
archive has `rows` rows of `res` seconds. A sample at time t lands in row
floor(t / res) and is consolidated there (AVERAGE, MIN, MAX or LAST) with
the other samples of that row; when a newer row starts, the rows skipped
are unknown (NaN) and the oldest rows are overwritten (wrap-around). A row
closed with fewer known samples than (1 - xff) of the row is unknown, as in
RRDtool. Memory per series is fixed: the sum of the archives' rows.

Default archives for a polling step S (gmetad's RRAs line replaces them):
S for an hour, 1-minute rows for a day, 10-minute rows for a week, 1-hour
rows for a month (31 days).
"""
from __future__ import annotations

import json
import math
import struct
import sys
from array import array
from dataclasses import dataclass

NAN = float("nan")
MAGIC = b"HALB-RRD 1\n"
DEFAULT_LAYOUT = ((1, 3600), (60, 86400), (600, 7 * 86400), (3600, 31 * 86400))  # (resolution, span) seconds
MAX_ROWS = 200_000

PERIODS = {"hour": 3600, "day": 86400, "week": 7 * 86400, "month": 31 * 86400}


class StoreError(ValueError):
    """A store file that cannot be read (the message says why)."""


@dataclass(frozen=True)
class Layout:
    cf: str
    xff: float
    res: float
    rows: int


def default_layout(step: float) -> list[Layout]:
    out: list[Layout] = []
    for i, (res, span) in enumerate(DEFAULT_LAYOUT):
        if i == 0:
            r = step
        else:
            r = max(1, round(res / step)) * step
            if out and r <= out[-1].res:
                continue
        out.append(Layout("AVERAGE", 0.5, r, min(MAX_ROWS, max(1, math.ceil(span / r)))))
    return out


def layout_from_rras(step: float, rras) -> list[Layout]:
    """gmetad.conf's RRAs (conf.RRA) for this step."""
    return [Layout(r.cf, r.xff, r.steps * step, r.rows) for r in rras]


class Archive:
    __slots__ = ("cf", "xff", "res", "rows", "step", "values", "cur", "n", "acc")

    def __init__(self, layout: Layout, step: float):
        self.cf, self.xff, self.res, self.rows = layout.cf, layout.xff, float(layout.res), int(layout.rows)
        self.step = float(step)
        self.values = array("d", [NAN]) * self.rows
        self.cur: int | None = None  # absolute number of the newest row (floor(t / res))
        self.n = 0                   # samples in the newest row
        self.acc = 0.0               # their sum (AVERAGE) or running MIN/MAX/LAST

    @property
    def layout(self) -> Layout:
        return Layout(self.cf, self.xff, self.res, self.rows)

    def _row(self, t: float) -> int:
        return math.floor(t / self.res + 1e-9)

    def _value(self) -> float:
        if self.n == 0:
            return NAN
        return self.acc / self.n if self.cf == "AVERAGE" else self.acc

    def _close(self) -> None:
        """The newest row is complete: apply xff."""
        expected = max(1.0, self.res / self.step)
        if self.n == 0 or self.n < (1.0 - self.xff) * expected - 1e-9:
            self.values[self.cur % self.rows] = NAN

    def update(self, t: float, v: float) -> bool:
        """Add a sample; False when t is older than the newest row (refused, as rrdtool does)."""
        r = self._row(t)
        if self.cur is None or r > self.cur:
            if self.cur is not None:
                self._close()
                for k in range(self.cur + 1, min(r, self.cur + 1 + self.rows)):
                    self.values[k % self.rows] = NAN
            self.cur, self.n, self.acc = r, 0, 0.0
        elif r < self.cur:
            return False
        if math.isnan(v):
            self.values[r % self.rows] = self._value()
            return True
        if self.n == 0 or self.cf in ("AVERAGE", "LAST"):
            self.acc = (self.acc + v) if self.cf == "AVERAGE" and self.n else v
        elif self.cf == "MIN":
            self.acc = min(self.acc, v)
        else:
            self.acc = max(self.acc, v)
        self.n += 1
        self.values[r % self.rows] = self._value()
        return True

    def points(self, t0: float, t1: float) -> list[tuple[float, float]]:
        """(row start time, value) for the rows held that start in [t0, t1], oldest first."""
        if self.cur is None:
            return []
        first = max(self.cur - self.rows + 1, math.ceil(t0 / self.res - 1e-9))
        last = min(self.cur, math.floor(t1 / self.res + 1e-9))
        return [(k * self.res, self.values[k % self.rows]) for k in range(first, last + 1)]

    @property
    def span(self) -> float:
        return self.res * self.rows


class Series:
    __slots__ = ("archives", "units", "type", "last_t", "last_v")

    def __init__(self, layouts: list[Layout], step: float, units: str = "", typ: str = "float"):
        self.archives = [Archive(lay, step) for lay in layouts]
        self.units, self.type = units, typ
        self.last_t: float | None = None
        self.last_v: float = NAN

    def update(self, t: float, v: float) -> bool:
        if self.last_t is not None and t < self.last_t:
            return False
        ok = False
        for a in self.archives:
            ok = a.update(t, v) or ok
        if ok:
            self.last_t, self.last_v = t, v
        return ok

    def archive_for(self, period: float) -> Archive:
        """The finest archive that covers the period, else the longest one."""
        for a in sorted(self.archives, key=lambda a: a.res):
            if a.span >= period - 1e-9:
                return a
        return max(self.archives, key=lambda a: a.span)

    def fetch(self, period: float, now: float) -> tuple[float, list[tuple[float, float]]]:
        """(resolution, points) covering [now - period, now], from the first known one."""
        a = self.archive_for(period)
        pts = a.points(now - period, now)
        i = 0
        while i < len(pts) and math.isnan(pts[i][1]):
            i += 1
        return a.res, pts[i:]


def _num(x: float):
    """A float for the JSON header: NaN as null, infinities as strings (JSON has neither)."""
    if math.isfinite(x):
        return x
    return None if math.isnan(x) else ("inf" if x > 0 else "-inf")


def _unnum(x) -> float:
    if x is None:
        return NAN
    if isinstance(x, str) and x not in ("inf", "-inf"):
        raise ValueError(f"not a number: {x[:20]!r}")
    return float(x)


def dumps_snapshot(snap: tuple) -> bytes:
    step, snap_series = snap
    body = bytearray()
    series = []
    for key, units, typ, last_t, last_v, archives in snap_series:
        archs = []
        for cf, xff, res, rows, cur, n, acc, values in archives:
            archs.append({"cf": cf, "xff": xff, "res": res, "rows": rows, "cur": cur,
                          "n": n, "acc": _num(acc), "offset": len(body)})
            body += values
        series.append({"key": list(key), "units": units, "type": typ, "last_t": last_t,
                       "last_v": _num(last_v), "archives": archs})
    header = json.dumps({"step": step, "byteorder": sys.byteorder, "series": series},
                        allow_nan=False, separators=(",", ":")).encode()
    return MAGIC + struct.pack(">I", len(header)) + header + bytes(body)


class Store:
    """Every series of a data source, keyed by (cluster, host, metric); at most
    max_series of them (5,000 x 3,432 rows = 137 MB at the 15 s step), new ones
    past that are refused and counted."""

    def __init__(self, step: float, layouts: list[Layout] | None = None, max_series: int = 5000):
        self.step = float(step)
        self.layouts = list(layouts or default_layout(step))
        self.max_series = max_series
        self.series: dict[tuple[str, str, str], Series] = {}
        self.refused_full = 0
        self.refused_old = 0

    def update(self, key: tuple[str, str, str], t: float, v: float, units: str = "", typ: str = "float") -> bool:
        if not math.isfinite(v):  # inf (a value past 1.8e308) is no measure: unknown, as rrdtool's NaN
            v = NAN
        s = self.series.get(key)
        if s is None:
            if len(self.series) >= self.max_series:
                self.refused_full += 1
                return False
            s = self.series[key] = Series(self.layouts, self.step, units, typ)
        s.units, s.type = units, typ
        if not s.update(t, v):
            self.refused_old += 1
            return False
        return True

    def get(self, key) -> Series | None:
        return self.series.get(tuple(key))

    def keys(self):
        return self.series.keys()

    def metrics_of(self, cluster: str, host: str) -> list[str]:
        return sorted(k[2] for k in self.series if k[0] == cluster and k[1] == host)

    def memory_rows(self) -> int:
        return sum(a.rows for s in self.series.values() for a in s.archives)

    # ------------------------------------------------------------ file format
    def snapshot(self) -> tuple:
        """A consistent copy of the store (taken on the thread that updates it,
        in one go: the rows are copied as bytes); dumps_snapshot() turns it into
        the file's bytes anywhere, e.g. in a worker thread."""
        series = []
        for key, s in self.series.items():
            series.append((key, s.units, s.type, s.last_t, s.last_v,
                           [(a.cf, a.xff, a.res, a.rows, a.cur, a.n, a.acc, a.values.tobytes())
                            for a in s.archives]))
        return self.step, series

    def dumps(self) -> bytes:
        """The whole store as bytes: magic, header length, JSON header, the rows (float64)."""
        return dumps_snapshot(self.snapshot())

    def loads(self, data: bytes) -> tuple[int, int]:
        """Fill this (empty) store from dumps() bytes. Series whose archives do not
        match this store's layout start empty. Returns (series loaded, series reset);
        StoreError when the bytes are not a store."""
        if not data.startswith(MAGIC) or len(data) < len(MAGIC) + 4:
            raise StoreError("not a halb gmetad store (bad magic)")
        (hlen,) = struct.unpack(">I", data[len(MAGIC):len(MAGIC) + 4])
        start = len(MAGIC) + 4
        if start + hlen > len(data):
            raise StoreError("truncated header")
        try:
            header = json.loads(data[start:start + hlen])
        except ValueError as e:
            raise StoreError(f"unreadable header ({e})") from None
        body = memoryview(data)[start + hlen:]
        loaded = reset = 0
        try:
            swap = header["byteorder"] != sys.byteorder
            for ent in header["series"]:
                if len(self.series) >= self.max_series:
                    break
                key = tuple(str(x) for x in ent["key"])
                if len(key) != 3:
                    raise StoreError("bad series key")
                s = Series(self.layouts, self.step, str(ent.get("units", "")), str(ent.get("type", "float")))
                saved = ent["archives"]
                if [Layout(a["cf"], float(a["xff"]), float(a["res"]), int(a["rows"])) for a in saved] != \
                        [a.layout for a in s.archives] or float(header["step"]) != self.step:
                    reset += 1
                    self.series[key] = s
                    continue
                for a, d in zip(s.archives, saved):
                    off = int(d["offset"])
                    nbytes = a.rows * 8
                    if off < 0 or off + nbytes > len(body):
                        raise StoreError("truncated rows")
                    vals = array("d")
                    vals.frombytes(body[off:off + nbytes])
                    if swap:
                        vals.byteswap()
                    a.values = vals
                    a.cur = None if d["cur"] is None else int(d["cur"])
                    a.n, a.acc = int(d["n"]), _unnum(d["acc"])
                s.last_t = None if ent.get("last_t") is None else float(ent["last_t"])
                s.last_v = _unnum(ent.get("last_v"))
                self.series[key] = s
                loaded += 1
        except StoreError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise StoreError(f"bad header ({type(e).__name__}: {e})") from None
        return loaded, reset


def aggregate(series: list[Series], period: float, now: float, how: str = "sum"
              ) -> tuple[float, list[tuple[float, float]]]:
    """Several hosts' series of one metric as one (a cluster's graph): the sum
    (or mean) of the values known at each row time; unknown where none is."""
    if not series:
        return 0.0, []
    res = None
    rows: dict[float, list[float]] = {}
    for s in series:
        r, pts = s.fetch(period, now)
        res = r if res is None else max(res, r)
        for t, v in pts:
            bucket = rows.setdefault(t, [])
            if not math.isnan(v):
                bucket.append(v)
    out = []
    for t in sorted(rows):
        vals = rows[t]
        if not vals:
            out.append((t, NAN))
        else:
            out.append((t, sum(vals) if how == "sum" else sum(vals) / len(vals)))
    return res or 0.0, out
