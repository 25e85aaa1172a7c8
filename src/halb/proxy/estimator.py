"""Rate estimation as the kernel's ip_vs_est.c does it, without the fixed point.

Every ~2 s the kernel takes the difference of each counter since the last
sample, turns it into a per-second rate and folds it into a moving average
with weight 1/4 (``avg += (rate - avg) >> 2``); readers see the average
rounded to an integer. Pure code: time is passed in.
"""
from __future__ import annotations

from halb.model import Rates, Stats

INTERVAL = 2.0  # seconds between samples, as the kernel
_FIELDS = (("conns", "cps"), ("inpkts", "inpps"), ("outpkts", "outpps"),
           ("inbytes", "inbps"), ("outbytes", "outbps"))


class Estimator:
    __slots__ = ("last", "avg", "last_time")

    def __init__(self, stats: Stats | None = None, now: float = 0.0):
        self.reset(stats or Stats(), now)

    def reset(self, stats: Stats, now: float) -> None:
        self.last = [getattr(stats, f) for f, _ in _FIELDS]
        self.avg = [0.0] * len(_FIELDS)
        self.last_time = now

    def sample(self, stats: Stats, now: float) -> Rates:
        """Fold the counters' progress since the previous sample in; return the rates.
        Counters that went down (a zero, -Z) restart the estimator, as the kernel's
        ip_vs_zero_estimator does."""
        elapsed = now - self.last_time
        cur = [getattr(stats, f) for f, _ in _FIELDS]
        if any(c < p for c, p in zip(cur, self.last)):
            self.reset(stats, now)
            return Rates()
        if elapsed > 0:
            for i, (c, p) in enumerate(zip(cur, self.last)):
                rate = (c - p) / elapsed
                self.avg[i] += (rate - self.avg[i]) / 4.0
            self.last = cur
            self.last_time = now
        return self.rates()

    def rates(self) -> Rates:
        r = Rates()
        for (_, name), v in zip(_FIELDS, self.avg):
            setattr(r, name, int(v + 0.5))
        return r
