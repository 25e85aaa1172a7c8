"""The engine interface: one per data plane (nft in the kernel, proxy in user space).

Every tool (ipvsadm CLI, director, heartbeat resources, sync) edits the
virtual-server table only through this interface. `execute(ops)` is atomic:
either every op applies (and the data plane follows in one transaction) or
none does and IpvsError is raised (with `.index` = the failing op).
"""
from __future__ import annotations

import abc

from halb.model import Conn, Dest, Op, Service, ServiceKey, Timeouts


class Engine(abc.ABC):
    name = "engine"
    # forwarding methods this engine can do, and the one used when none is given
    fwd_methods: tuple[str, ...] = ()
    default_fwd = "masq"

    # -- the one primitive -------------------------------------------------
    @abc.abstractmethod
    def execute(self, ops: list[Op]) -> None:
        """Apply ops atomically (all or nothing)."""

    @abc.abstractmethod
    def services(self) -> list[Service]:
        """Services with their real servers, live counters, rates and
        active/inactive connection counts, in insertion order."""

    @abc.abstractmethod
    def connections(self) -> list[Conn]:
        """The connection table, persistence templates included."""

    @abc.abstractmethod
    def timeouts(self) -> Timeouts:
        ...

    def close(self) -> None:
        """Release client resources (not the data plane)."""

    # -- conveniences built on execute() ------------------------------------
    def add_service(self, svc: Service) -> None:
        self.execute([Op("add-service", service=svc)])

    def edit_service(self, svc: Service) -> None:
        self.execute([Op("edit-service", service=svc)])

    def del_service(self, key: ServiceKey) -> None:
        self.execute([Op("del-service", key=key)])

    def add_dest(self, key: ServiceKey, dest: Dest) -> None:
        self.execute([Op("add-dest", key=key, dest=dest)])

    def edit_dest(self, key: ServiceKey, dest: Dest) -> None:
        self.execute([Op("edit-dest", key=key, dest=dest)])

    def del_dest(self, key: ServiceKey, addr: str, port: int) -> None:
        self.execute([Op("del-dest", key=key, dest=Dest(addr, port))])

    def clear(self) -> None:
        self.execute([Op("clear")])

    def zero(self, key: ServiceKey | None = None) -> None:
        self.execute([Op("zero", key=key)])

    def set_timeouts(self, t: Timeouts) -> None:
        self.execute([Op("set-timeouts", timeouts=t)])

    def get_service(self, key: ServiceKey) -> Service | None:
        for s in self.services():
            if s.key == key:
                return s
        return None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
