"""The nft engine: halb's kernel data plane (nftables + policy routing).

No daemon: every `execute()` takes the node's lock, applies the ops to the
configured table (kept in <run_dir>/nft-state.json, IPVS semantics from
halb.model.Table), turns the difference into ONE nft transaction touching
only the changed services' objects, adjusts policy routing, and saves the
state. The kernel is the truth for counters, flows and persistence entries
(read back with `nft -j list table inet halb`).

When the table becomes empty (`-C`, or `halb nft flush`) everything halb put
in the kernel goes: the nft table, its ip rules and routing tables, the moved
`local` rule and the sysctls it changed.
"""
from __future__ import annotations

import base64
import fcntl
import json
import pickle
import os
import time
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

from halb.context import Context, has_net_admin
from halb.engine.base import Engine
from halb.errors import HalbError, IpvsError
from halb.model import (Conn, Dest, Op, Rates, Service, Stats, Table, Timeouts, service_from_dict,
                        to_dict)
from halb.nft import nftcli, routing
from halb.nft import ruleset as rs
from halb.nft.plan import COUNT_BASED, slot_table

STATE_FILE = "nft-state.json"
LOCK_FILE = "nft.lock"
SAMPLES_FILE = "nft-samples.json"


def _skey(svc_or_key) -> str:
    key = getattr(svc_or_key, "key", svc_or_key)
    return str(key)


class State:
    """The engine's persistent state (configured table + kernel object ids)."""

    def __init__(self, d: dict | None = None):
        d = d or {}
        self.services: list[Service] = [service_from_dict(s) for s in d.get("services", [])]
        self.timeouts = Timeouts(**d.get("timeouts", {}))
        self.sids: dict[str, int] = d.get("sids", {})
        self.next_sid: int = d.get("next_sid", 1)
        self.dests: dict[str, list[rs.DestPlan]] = {
            k: [rs.DestPlan(**x) for x in v] for k, v in d.get("dests", {}).items()}
        self.next_mid: int = d.get("next_mid", 1)
        self.rips: dict[str, int] = d.get("rips", {})
        self.next_ridx: int = d.get("next_ridx", 1)
        self.snat: list[str] = d.get("snat", [])
        self.local_moved: bool = d.get("local_moved", False)
        self.sysctls: dict[str, str] = d.get("sysctls", {})
        self.zero: dict[str, list[int]] = d.get("zero", {})
        self.kernel: bool = d.get("kernel", False)
        self.sched_state: dict[str, str] = d.get("sched_state", {})

    def to_dict(self) -> dict:
        return {
            "services": [to_dict(s.config()) for s in self.services],
            "timeouts": asdict(self.timeouts),
            "sids": self.sids, "next_sid": self.next_sid,
            "dests": {k: [asdict(x) for x in v] for k, v in self.dests.items()},
            "next_mid": self.next_mid, "rips": self.rips, "next_ridx": self.next_ridx,
            "snat": self.snat, "local_moved": self.local_moved, "sysctls": self.sysctls,
            "zero": self.zero, "kernel": self.kernel, "sched_state": self.sched_state,
        }

    def table(self) -> Table:
        t = Table([s.config() for s in self.services], timeouts=Timeouts(**asdict(self.timeouts)),
                  default_fwd="gate")
        t.allowed_fwd = ("gate", "masq")
        t.engine_name = "nft"
        return t

    def plan(self, svc: Service) -> rs.ServicePlan:
        k = _skey(svc)
        return rs.ServicePlan(self.sids[k], svc, list(self.dests.get(k, [])))


class NftEngine(Engine):
    name = "nft"
    fwd_methods = ("gate", "masq")
    default_fwd = "gate"

    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.state_path = ctx.path(STATE_FILE)
        self.lock_path = ctx.path(LOCK_FILE)
        self.samples_path = ctx.path(SAMPLES_FILE)

    # -- state -----------------------------------------------------------
    @contextmanager
    def _locked(self):
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def _load(self) -> State:
        try:
            text = self.state_path.read_text()
        except FileNotFoundError:
            return State()
        try:
            return State(json.loads(text))
        except (ValueError, TypeError, KeyError) as e:
            raise HalbError(f"{self.state_path}: corrupt nft engine state ({e}); "
                            f"run 'halb nft flush' to start again") from None

    def _save(self, st: State) -> None:
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(st.to_dict()))
        os.replace(tmp, self.state_path)

    # -- Engine interface --------------------------------------------------
    def execute(self, ops: list[Op]) -> None:
        ops = list(ops)
        for i, op in enumerate(ops):
            _precheck(op, i)
        with self._locked():
            st = self._load()
            new = st.table().apply(ops)
            zero_keys = [op for op in ops if op.kind == "zero"]
            self._sync(st, new)
            if zero_keys:
                self._zero(st, zero_keys)
            self._save(st)

    def timeouts(self) -> Timeouts:
        return self._load().timeouts

    def services(self) -> list[Service]:
        st = self._load()
        if not st.services:
            return []
        kern = _Kernel.read()
        now = time.monotonic()
        out = []
        samples = {}
        for svc in st.services:
            s = svc.config()
            plan = st.plan(svc)
            flows = kern.flow_counts(plan)
            persist = kern.persist_counts(plan)
            by_ident = {(d.addr, d.port): d for d in plan.dests if d.live}
            c = kern.counter(f"c{plan.sid}", st.zero)
            s.stats = Stats(inpkts=c[0], inbytes=c[1])
            for d in s.dests:
                dp = by_ident.get(d.ident)
                if dp is None:
                    continue
                d.local = dp.fwd == "local"
                pk = kern.counter(f"d{dp.mid}", st.zero)
                nk = kern.counter(f"n{dp.mid}", st.zero)
                ok = kern.counter(f"o{dp.mid}", st.zero)
                d.stats = Stats(conns=nk[0], inpkts=pk[0], inbytes=pk[1], outpkts=ok[0], outbytes=ok[1])
                s.stats.outpkts += ok[0]
                s.stats.outbytes += ok[1]
                a, i = flows.get(dp.mid, (0, 0))
                d.activeconns, d.inactconns = a, i
                d.persistconns = persist.get(dp.mid, 0)
                s.stats.conns += d.stats.conns
                samples[f"d{dp.mid}"] = asdict(d.stats)
            samples[f"c{plan.sid}"] = asdict(s.stats)
            out.append(s)
        self._rates(out, st, samples, now)
        return out

    def connections(self) -> list[Conn]:
        st = self._load()
        if not st.services:
            return []
        kern = _Kernel.read()
        out: list[Conn] = []
        for svc in st.services:
            plan = st.plan(svc)
            out.extend(kern.conns(plan))
        return out

    # -- extras -------------------------------------------------------------
    def flush(self) -> None:
        """Remove everything halb put in the kernel (`halb nft flush`)."""
        with self._locked():
            st = self._load()
            self._teardown(st)
            st.services = []
            self._save(st)

    def refresh(self) -> int:
        """Recompute the count-based schedulers' sequences from live counts
        (the controller's tick). Returns the number of services refreshed."""
        with self._locked():
            st = self._load()
            if not any(s.scheduler in COUNT_BASED or any(d.u_threshold for d in s.dests)
                       for s in st.services):
                return 0
            table = st.table()
            return self._sync(st, table, refresh_only=True)

    def status(self) -> dict:
        st = self._load()
        return {"services": len(st.services), "table": nftcli.table_exists(rs.FAMILY, rs.TABLE),
                "rules": routing.halb_rules(), "local_rule_moved": st.local_moved,
                "sysctls_changed": dict(st.sysctls)}

    # -- the work --------------------------------------------------------------
    def _sync(self, st: State, new: Table, refresh_only: bool = False) -> int:
        new_services = list(new.services.values())
        if not new_services:
            self._teardown(st)
            st.services = []
            st.timeouts = new.timeouts
            return 0
        routes_before = set(st.rips.values()) if st.kernel else set()
        present = nftcli.table_exists(rs.FAMILY, rs.TABLE)
        full = not (present and st.kernel)
        locals_ = routing.local_addrs()
        old_by_key = {_skey(s): s for s in st.services}
        timeouts_changed = asdict(new.timeouts) != asdict(st.timeouts)
        cmds: list[str] = []
        if full:
            cmds += [f"add table {rs.T}", f"delete table {rs.T}"] + rs.globals_create()
            old_by_key = {}
            st.dests = {}
            st.snat = []
            st.zero = {}
        # services removed
        new_keys = {_skey(s) for s in new_services}
        for k, old in old_by_key.items():
            if k not in new_keys:
                plan = st.plan(old)
                cmds += rs.service_dispatch_del(plan, rs.in_notrack(plan))
                cmds += rs.service_delete(plan)
                for d in plan.dests:
                    _drop_zero(st, d.mid)
                st.dests.pop(k, None)
                st.sids.pop(k, None)
                st.sched_state.pop(k, None)
        counts_needed = [s for s in new_services
                         if s.scheduler in COUNT_BASED or any(d.u_threshold for d in s.dests)]
        kern = _Kernel.read_flows(st, counts_needed) if (counts_needed and not full) else None
        in_use = _Kernel.read_marks_in_use(st, old_by_key, new.services) if not full else {}
        refreshed = 0
        for svc in new_services:
            k = _skey(svc)
            old = old_by_key.get(k)
            if old is None:
                if k not in st.sids or full:
                    st.sids.setdefault(k, st.next_sid)
                    if st.sids[k] == st.next_sid:
                        st.next_sid += 1
                plan = rs.ServicePlan(st.sids[k], svc, [])
                plan.dests = [self._new_dest(st, svc, d, locals_) for d in svc.dests]
                _fill_sequence(plan, None, st)
                cmds += rs.service_create(plan)
                for d in plan.dests:
                    cmds += rs.dest_create(plan, d)
                cmds += rs.service_rules(plan, new.timeouts, fresh=True)
                cmds += rs.service_dispatch_add(plan)
                st.dests[k] = plan.dests
                continue
            if (not refresh_only and not timeouts_changed and _same(old, svc)
                    and not _trash_to_drop(st, k, in_use)):
                continue
            old_plan = st.plan(old)
            was_notrack = rs.in_notrack(old_plan)
            existing = {(d.addr, d.port): d for d in old_plan.dests}
            dests: list[rs.DestPlan] = []
            for d in svc.dests:
                dp = existing.pop(d.ident, None)
                if dp is None:
                    nd = self._new_dest(st, svc, d, locals_)
                    dests.append(nd)
                    cmds += rs.dest_create(old_plan, nd)
                    continue
                want = self._dest_plan(st, svc, d, locals_, dp.mid)
                if not dp.live:  # re-added while its old flows lived on
                    cmds += rs.dest_create(old_plan, rs.DestPlan(**{**asdict(want), "fwd": "none"}))
                if (dp.fwd, dp.ridx, dp.addr, dp.port) != (want.fwd, want.ridx, want.addr, want.port) \
                        or not dp.live:
                    cmds += rs.dest_forward_del(dp)
                    cmds += rs.dest_forward_add(want)
                dests.append(want)
            # real servers no longer in the table: retire, keep while flows use them
            for dp in existing.values():
                if dp.live:
                    cmds += rs.dest_retire(old_plan, dp)
                    _drop_zero(st, dp.mid)
                    dp.live = False
                if dp.mid in in_use.get(k, set()):
                    dests.append(dp)
                else:
                    cmds += rs.dest_forward_del(dp)
            plan = rs.ServicePlan(old_plan.sid, svc, dests)
            counts = kern.counts_for(plan) if kern else None
            _fill_sequence(plan, counts, st)
            if (old.persistent, old.timeout, old.netmask) != (svc.persistent, svc.timeout, svc.netmask):
                cmds.append(f"flush map {rs.T} p{plan.sid}")
            now_notrack = rs.in_notrack(plan)
            if was_notrack != now_notrack:
                elem = f"{svc.key.addr} . {svc.key.proto} . {svc.key.port}"
                cmds.append(f"{'add' if now_notrack else 'delete'} element {rs.T} nt4 {{ {elem} }}")
            cmds += rs.service_rules(plan, new.timeouts, fresh=False)
            st.dests[k] = dests
            refreshed += 1
        # masquerading of clients on the real servers' own networks
        masq_nets = sorted({n for ds in st.dests.values() for d in ds if d.fwd == "masq"
                            for n in [routing.connected_net(d.addr)] if n})
        masq_nets = rs.collapse_nets(masq_nets) if masq_nets else []
        if masq_nets != st.snat:
            cmds += rs.snat_update(st.snat, masq_nets)
            st.snat = masq_nets
        # routes for Direct Return: add before the transaction, remove after
        needed = {d.ridx for ds in st.dests.values() for d in ds if d.fwd == "gate"}
        rip_of = {v: k for k, v in st.rips.items()}
        added = []
        sysctls_before = dict(st.sysctls)
        moved_before = st.local_moved
        try:
            for ridx in sorted(needed - routes_before):
                routing.add_route(ridx, rs.rmark(ridx), rip_of[ridx])
                added.append(ridx)
            if needed and not st.local_moved:
                st.local_moved = routing.move_local_rule() or st.local_moved
            if needed or masq_nets or any(d.fwd == "masq" for ds in st.dests.values() for d in ds):
                ifaces = sorted({routing.route_to(rip_of[r])[1] for r in needed})
                routing.apply_sysctls(routing.dr_sysctls(ifaces), st.sysctls)
            nftcli.run_script("\n".join(cmds) + "\n")
        except (OSError, HalbError) as e:
            # undo what this call changed outside nft (nft itself changed nothing)
            for ridx in added:
                if ridx not in routes_before:
                    routing.del_route(ridx, rs.rmark(ridx))
            if st.local_moved and not moved_before:
                routing.restore_local_rule()
            routing.restore_sysctls({k: v for k, v in st.sysctls.items() if k not in sysctls_before})
            if isinstance(e, HalbError):
                raise IpvsError(str(e)) from None
            raise IpvsError(f"cannot set up Direct Return routing: {e}") from None
        st.kernel = True
        for ridx in list(rip_of):
            if ridx not in needed:
                routing.del_route(ridx, rs.rmark(ridx))
                st.rips.pop(rip_of[ridx], None)
        st.services = [s.config() for s in new_services]
        st.timeouts = new.timeouts
        return refreshed

    def _dest_plan(self, st: State, svc: Service, d: Dest, locals_: set[str], mid: int) -> rs.DestPlan:
        port = d.port or svc.key.port
        if d.addr in locals_:
            return rs.DestPlan(mid, d.addr, port, "local")
        if d.fwd == "gate":
            if d.addr not in st.rips:
                st.rips[d.addr] = st.next_ridx
                st.next_ridx += 1
            return rs.DestPlan(mid, d.addr, port, "gate", st.rips[d.addr])
        return rs.DestPlan(mid, d.addr, port, d.fwd or "gate")

    def _new_dest(self, st: State, svc: Service, d: Dest, locals_: set[str]) -> rs.DestPlan:
        mid = st.next_mid
        st.next_mid += 1
        if st.next_mid >= 1 << 24:
            st.next_mid = 1
        return self._dest_plan(st, svc, d, locals_, mid)

    def _teardown(self, st: State) -> None:
        errors = []
        try:
            if nftcli.table_exists(rs.FAMILY, rs.TABLE):
                nftcli.run_script(f"delete table {rs.T}\n")
        except HalbError as e:
            errors.append(str(e))
        try:
            routing.remove_all({r: rs.rmark(r) for r in st.rips.values()})
            if st.local_moved:
                routing.restore_local_rule()
            routing.restore_sysctls(st.sysctls)
        except OSError as e:
            errors.append(str(e))
        st.local_moved = False
        st.rips = {}
        st.dests = {}
        st.sids = {}
        st.snat = []
        st.zero = {}
        st.sched_state = {}
        st.kernel = False
        try:
            self.samples_path.unlink()
        except FileNotFoundError:
            pass
        if errors:
            raise HalbError("; ".join(errors))

    def _zero(self, st: State, zops: list[Op]) -> None:
        kern = _Kernel.read()
        keys = None if any(op.key is None for op in zops) else {_skey(op.key) for op in zops}
        for svc in st.services:
            k = _skey(svc)
            if keys is not None and k not in keys:
                continue
            names = [f"c{st.sids[k]}"] + [f"{p}{d.mid}" for d in st.dests.get(k, []) if d.live
                                         for p in ("d", "n", "o")]
            for name in names:
                st.zero[name] = list(kern.raw_counter(name))

    def _rates(self, services: list[Service], st: State, samples: dict, now: float) -> None:
        try:
            prev = json.loads(self.samples_path.read_text())
        except (FileNotFoundError, ValueError):
            prev = None
        if prev and now - prev.get("t", now) >= 1.0:
            dt = now - prev["t"]
            old = prev.get("s", {})
            for s in services:
                _fill_rate(s, old.get(f"c{st.sids[_skey(s)]}"), dt)
                for d in s.dests:
                    dp = next((x for x in st.dests.get(_skey(s), []) if x.live and (x.addr, x.port) == d.ident), None)
                    if dp:
                        _fill_rate(d, old.get(f"d{dp.mid}"), dt)
        if not prev or now - prev.get("t", now) >= 1.0 or now < prev.get("t", 0):
            tmp = self.samples_path.with_suffix(".tmp")
            try:
                tmp.write_text(json.dumps({"t": now, "s": samples}))
                os.replace(tmp, self.samples_path)
            except OSError:
                pass


def _fill_rate(obj, old: dict | None, dt: float) -> None:
    if not old:
        return
    s = obj.stats
    obj.rates = Rates(cps=max(0, round((s.conns - old["conns"]) / dt)),
                      inpps=max(0, round((s.inpkts - old["inpkts"]) / dt)),
                      outpps=max(0, round((s.outpkts - old["outpkts"]) / dt)),
                      inbps=max(0, round((s.inbytes - old["inbytes"]) / dt)),
                      outbps=max(0, round((s.outbytes - old["outbytes"]) / dt)))


def _drop_zero(st: State, mid: int) -> None:
    st.zero.pop(f"d{mid}", None)
    st.zero.pop(f"n{mid}", None)
    st.zero.pop(f"o{mid}", None)


def _same(a: Service, b: Service) -> bool:
    return to_dict(a.config()) == to_dict(b.config())


def _trash_to_drop(st: State, k: str, in_use: dict) -> bool:
    return any(not d.live and d.mid not in in_use.get(k, set()) for d in st.dests.get(k, []))


def _fill_sequence(plan: rs.ServicePlan, counts, st: State | None = None) -> None:
    live = [d for d in plan.dests if d.live]
    by_ident = {(d.addr, d.port): d for d in live}
    svc = plan.svc
    c = None
    if counts is not None:
        c = {}
        for d in svc.dests:
            dp = by_ident.get((d.addr, d.port or svc.key.port))
            if dp is not None:
                c[d.ident] = counts.get(dp.mid, (0, 0))
    keep = None
    k = _skey(svc)
    if st is not None and svc.scheduler in ("lblc", "lblcr"):
        keep = {"sched": None}
        blob = st.sched_state.get(k)
        if blob:
            try:
                keep["sched"] = pickle.loads(base64.b64decode(blob))
            except Exception:  # an older format: start a fresh locality table
                keep["sched"] = None
    expr, size, slots = slot_table(svc, c, keep)
    if st is not None:
        if keep is not None and keep.get("sched") is not None:
            st.sched_state[k] = base64.b64encode(pickle.dumps(keep["sched"])).decode()
        else:
            st.sched_state.pop(k, None)
    plan.hash_expr = expr
    plan.slots = max(size, 1)
    seq = []
    for slot, idx in slots:
        d = svc.dests[idx]
        dp = by_ident.get((d.addr, d.port or svc.key.port))
        if dp is not None:
            seq.append((slot, dp.mid))
    plan.sequence = seq


def _precheck(op: Op, i: int) -> None:
    def fail(msg):
        e = IpvsError(msg)
        e.index = i
        raise e
    if op.dest is not None and op.dest.fwd == "ipip":
        fail("forwarding method 'ipip' is not supported by the nft engine "
             "(this kernel has no ipip tunnels): use -g (gate) or -m (masq)")
    key = op.key or (op.service.key if op.service else None)
    if key is not None and key.proto != "fwm" and key.af == 6:
        fail("IPv6 virtual services are not supported by the nft engine yet (use --engine proxy)")
    if op.dest is not None and ":" in op.dest.addr:
        fail("IPv6 real servers are not supported by the nft engine yet (use --engine proxy)")


class _Kernel:
    """One read of halb's table."""

    def __init__(self, objs: list[dict]):
        self.counters: dict[str, tuple[int, int]] = {}
        self.maps: dict[str, list] = {}
        for o in objs:
            if "counter" in o:
                c = o["counter"]
                self.counters[c["name"]] = (c.get("packets", 0), c.get("bytes", 0))
            for kind in ("map", "set"):
                if kind in o:
                    m = o[kind]
                    self.maps[m["name"]] = [nftcli.elem_parts(e) for e in m.get("elem", [])]

    @classmethod
    def read(cls) -> "_Kernel":
        return cls(nftcli.list_json("table", rs.FAMILY, rs.TABLE))

    @classmethod
    def read_flows(cls, st: State, services: list[Service]) -> "_Kernel":
        objs = []
        for s in services:
            sid = st.sids.get(_skey(s))
            if sid is None:
                continue
            for m in (f"f{sid}", f"w{sid}"):
                objs += nftcli.list_json("map", rs.FAMILY, rs.TABLE, m)
            objs += nftcli.list_json("set", rs.FAMILY, rs.TABLE, f"z{sid}")
        k = cls(objs)
        k.sids = {_skey(s): st.sids.get(_skey(s)) for s in services}
        return k

    @classmethod
    def read_marks_in_use(cls, st: State, old_by_key: dict, new_services: dict) -> dict[str, set[int]]:
        """Dest mark ids still used by flows, for services that lose a real
        server now or still keep a retired one."""
        out: dict[str, set[int]] = {}
        new_by_key = {_skey(k): v for k, v in new_services.items()}
        for k, dests in st.dests.items():
            if k not in old_by_key or k not in new_by_key:
                continue
            keep = {(d.addr, d.port or new_by_key[k].key.port) for d in new_by_key[k].dests}
            if all(d.live and (d.addr, d.port) in keep for d in dests):
                continue
            sid = st.sids[k]
            objs = nftcli.list_json("map", rs.FAMILY, rs.TABLE, f"f{sid}")
            marks = set()
            for o in objs:
                for e in o.get("map", {}).get("elem", []):
                    _, _, _, v = nftcli.elem_parts(e)
                    if isinstance(v, int):
                        marks.add(v & 0xFFFFFF)
            out[k] = marks
        return out

    def raw_counter(self, name: str) -> tuple[int, int]:
        return self.counters.get(name, (0, 0))

    def counter(self, name: str, zero: dict) -> tuple[int, int]:
        p, b = self.counters.get(name, (0, 0))
        zp, zb = zero.get(name, (0, 0))
        if p < zp or b < zb:  # counter re-created since the zero
            return p, b
        return p - zp, b - zb

    def _flows(self, sid: int):
        closed = {e[0] for e in self.maps.get(f"z{sid}", [])}
        closing = {e[0]: e for e in self.maps.get(f"w{sid}", [])}
        for key, expires, timeout, mark in self.maps.get(f"f{sid}", []):
            if key in closing:
                _, wexp, _, wmark = closing[key]
                yield key, "FIN_WAIT", wexp, wmark
            elif key in closed:
                continue
            else:
                yield key, "ESTABLISHED", expires, mark

    def flow_counts(self, plan: rs.ServicePlan) -> dict[int, tuple[int, int]]:
        udp = plan.svc.key.proto == "udp"
        out: dict[int, list[int]] = {}
        for key, state, _, mark in self._flows(plan.sid):
            if not isinstance(mark, int):
                continue
            c = out.setdefault(mark & 0xFFFFFF, [0, 0])
            if state == "ESTABLISHED" and not udp:
                c[0] += 1
            else:
                c[1] += 1
        return {k: (v[0], v[1]) for k, v in out.items()}

    def counts_for(self, plan: rs.ServicePlan) -> dict[int, tuple[int, int]]:
        return self.flow_counts(plan)

    def persist_counts(self, plan: rs.ServicePlan) -> dict[int, int]:
        out: dict[int, int] = {}
        if not plan.svc.persistent:
            return out
        for _, _, _, mark in self.maps.get(f"p{plan.sid}", []):
            if isinstance(mark, int):
                out[mark & 0xFFFFFF] = out.get(mark & 0xFFFFFF, 0) + 1
        return out

    def conns(self, plan: rs.ServicePlan) -> list[Conn]:
        svc = plan.svc
        k = svc.key
        by_mid = {d.mid: d for d in plan.dests}
        proto = "UDP" if k.proto == "udp" else "TCP"
        out = []
        for key, state, expires, mark in self._flows(plan.sid):
            d = by_mid.get((mark or 0) & 0xFFFFFF)
            if d is None:
                continue
            if plan.full_key:
                caddr, l4, cport, vaddr, vport = key
                proto = "UDP" if l4 in ("udp", 17) else "TCP"
            else:
                caddr, cport = key
                vaddr, vport = k.addr, k.port
            if proto == "UDP":
                state = "UDP"
            out.append(Conn(proto, float(expires or 0), state, str(caddr), int(cport), vaddr, vport,
                            d.addr, d.port, fwd=d.fwd))
        if svc.persistent:
            for key, expires, timeout, mark in self.maps.get(f"p{plan.sid}", []):
                d = by_mid.get((mark or 0) & 0xFFFFFF)
                if d is None:
                    continue
                out.append(Conn(proto, float(expires or 0), "NONE", str(key), 0,
                                k.addr if k.proto != "fwm" else str(k.fwmark), k.port,
                                d.addr, d.port, fwd=d.fwd, template=True))
        return out


def connect(ctx: Context) -> Engine:
    if not has_net_admin():
        raise nftcli.unavailable("it needs CAP_NET_ADMIN (run as root)")
    reason = nftcli.available()
    if reason:
        raise nftcli.unavailable(reason)
    return NftEngine(ctx)
