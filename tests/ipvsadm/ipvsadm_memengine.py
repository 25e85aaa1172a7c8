"""A tiny in-memory Engine for the pure parts of the ipvsadm tests: it holds
a halb.model.Table and applies ops with the model's IPVS semantics."""
from __future__ import annotations

from halb.engine.base import Engine
from halb.model import Table


class MemEngine(Engine):
    name = "mem"

    def __init__(self, fwd_methods=("masq",), default_fwd="masq"):
        self.fwd_methods = tuple(fwd_methods)
        self.default_fwd = default_fwd
        self.table = Table(default_fwd=default_fwd)
        self.table.allowed_fwd = self.fwd_methods
        self.table.engine_name = "proxy"
        self.conns = []
        self.calls = 0

    def execute(self, ops):
        self.calls += 1
        self.table = self.table.apply(list(ops))

    def services(self):
        return [s for s in self.table.copy().services.values()]

    def connections(self):
        return list(self.conns)

    def timeouts(self):
        return self.table.timeouts
