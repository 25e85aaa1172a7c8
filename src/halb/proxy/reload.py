"""What a reload of the proxy's rules file (`halb proxy run --config FILE`,
SIGHUP) changes in the live table, as a pure function.

The file owns the services and real servers it names: a reload adds what it
gained, edits what changed (scheduler, persistence, weight, thresholds) and
deletes what the previous version of the file had and this one has not.
Services and real servers added at run time (ipvsadm, a director) are left as
they are, and so are the connections of everything that stays: nothing is
closed that the new file still wants."""
from __future__ import annotations

from halb.model import Op, Service, Table


def _svc_conf(s: Service) -> tuple:
    return (s.scheduler, s.persistent, s.timeout, s.netmask, tuple(s.flags), s.ops, s.pe)


def _dest_conf(d) -> tuple:
    return (d.fwd, d.weight, d.u_threshold, d.l_threshold)


def reload_ops(live: Table, old_file: Table | None, new_file: Table) -> list[Op]:
    ops: list[Op] = []
    old = old_file.services if old_file is not None else {}
    for key, svc in old.items():
        if key not in new_file.services and key in live.services:
            ops.append(Op("del-service", key=key))
    for key, want in new_file.services.items():
        have = live.services.get(key)
        if have is None:
            ops.append(Op("add-service", service=want.config()))
            ops += [Op("add-dest", key=key, dest=d.config()) for d in want.dests]
            continue
        if _svc_conf(have) != _svc_conf(want):
            ops.append(Op("edit-service", service=want.config()))
        before = old.get(key)
        for d in want.dests:
            cur = have.find_dest(d.addr, d.port)
            if cur is None:
                ops.append(Op("add-dest", key=key, dest=d.config()))
            elif _dest_conf(cur) != _dest_conf(d):
                ops.append(Op("edit-dest", key=key, dest=d.config()))
        if before is not None:
            for d in before.dests:
                if want.find_dest(d.addr, d.port) is None and have.find_dest(d.addr, d.port) is not None:
                    ops.append(Op("del-dest", key=key, dest=d.config()))
    return ops
