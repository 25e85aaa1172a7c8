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
import marshal
import os
import pickle
import time
from contextlib import contextmanager
from dataclasses import asdict

from halb.context import Context, has_net_admin
from halb.engine.base import Engine
from halb.errors import EngineUnavailable, HalbError, IpvsError
from halb.model import Conn, Dest, Op, Service, ServiceKey, Stats, Table, Timeouts, fill_rates
from halb.nft import nftcli, routing
from halb.nft import ruleset as rs
from halb.nft.plan import COUNT_BASED, slot_table

STATE_FILE = "nft-state.bin"
STATE_FORMAT = 1
LOCK_FILE = "nft.lock"
SAMPLES_FILE = "nft-samples.json"
MID_BITS = rs.MID_LIMIT - 1  # a dest mark's id


def _skey(svc_or_key) -> str:
    key = getattr(svc_or_key, "key", svc_or_key)
    return str(key)


def _pack(svc: Service) -> tuple:
    """A service as primitives (the state file holds 10,000s of these)."""
    k = svc.key
    return (str(k), (k.proto, k.addr, k.port, k.fwmark, k.af),
            (svc.scheduler, svc.persistent, svc.timeout, svc.netmask, tuple(svc.flags), svc.ops, svc.pe),
            tuple((d.addr, d.port, d.fwd, d.weight, d.u_threshold, d.l_threshold) for d in svc.dests))


def _unpack(rec: tuple) -> Service:
    _, kt, p, ds = rec
    svc = Service(ServiceKey(*kt), *p)
    svc.dests = [Dest(*d) for d in ds]
    return svc


def _kstr(x) -> str:
    return x[0] if isinstance(x, tuple) else str(x.key)


class State:
    """The engine's persistent state: the configured table (packed) and the
    ids of halb's kernel objects. Services are unpacked only when touched."""

    def __init__(self):
        self.recs: list[tuple] = []
        self.timeouts = Timeouts()
        self.sids: dict[str, int] = {}
        self.next_sid = 1
        self.dtuples: dict[str, list[tuple]] = {}  # service -> packed DestPlans
        self.next_mid = 1
        self.rips: dict[str, int] = {}
        self.next_ridx = 1
        self.snat: list[str] = []
        self.local_moved = False
        self.sysctls: dict[str, str] = {}
        self.zero: dict[str, list[int]] = {}
        self.kernel = False
        self.layout = 0  # rs.VERSION of the kernel objects halb made
        self.sched_state: dict[str, str] = {}
        self.gc_at: dict[str, float] = {}  # service -> when to look for its retired servers' flows
        self.slots: dict[str, tuple] = {}  # service -> its slot numbers in the global q map
        self._cache: dict[str, Service] = {}

    def __getstate__(self):
        d = dict(self.__dict__)
        d.pop("_cache", None)
        d.pop("_index", None)
        return d

    def __setstate__(self, d):
        self.__init__()
        known = set(self.__dict__)
        self.__dict__.update({k: v for k, v in d.items() if k in known})
        self._cache = {}

    # services
    @property
    def services(self) -> list[Service]:
        return [self.service(r[0]) for r in self.recs]

    def keys(self) -> list[str]:
        return [r[0] for r in self.recs]

    def service(self, k: str) -> Service | None:
        svc = self._cache.get(k)
        if svc is None:
            if "_index" not in self.__dict__ or len(self._index) != len(self.recs):
                self._index = {r[0]: r for r in self.recs}
            rec = self._index.get(k)
            if rec is None:
                return None
            svc = self._cache[k] = _unpack(rec)
        return svc

    def set_services(self, items: list) -> None:
        self.recs = [x if isinstance(x, tuple) else _pack(x) for x in items]
        self._cache = {_kstr(x): x for x in items if not isinstance(x, tuple)}
        self._index = {r[0]: r for r in self.recs}

    def table(self) -> Table:
        t = Table([s.config() for s in self.services], timeouts=Timeouts(**asdict(self.timeouts)),
                  default_fwd="gate")
        t.allowed_fwd = ("gate", "masq")
        t.engine_name = "nft"
        return t

    # real servers as the data plane knows them
    def dplans(self, k: str) -> list[rs.DestPlan]:
        return [rs.DestPlan(*t) for t in self.dtuples.get(k, ())]

    def set_dplans(self, k: str, plans: list[rs.DestPlan]) -> None:
        self.dtuples[k] = [(d.mid, d.addr, d.port, d.fwd, d.ridx, d.live) for d in plans]

    def plan(self, svc: Service) -> rs.ServicePlan:
        k = _skey(svc)
        return rs.ServicePlan(self.sids[k], svc, self.dplans(k))


class NftEngine(Engine):
    name = "nft"
    fwd_methods = ("gate", "masq")
    default_fwd = "gate"

    def __init__(self, ctx: Context):
        self.ctx = ctx
        # truth=True: services() lists what the kernel has (halb ipvsadm -L),
        # and drift says how it differs from the configured table
        self.truth = False
        self.drift: list[str] = []
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
        # marshal of plain values: the engine's private file in the root-only
        # run dir; loading 10,000 real servers must cost milliseconds
        try:
            with open(self.state_path, "rb") as fh:
                d = marshal.loads(fh.read())
        except FileNotFoundError:
            return State()
        except Exception as e:  # noqa: BLE001 - any unreadable file
            raise HalbError(f"{self.state_path}: corrupt nft engine state ({type(e).__name__}); "
                            f"run 'halb nft flush' to start again") from None
        if not isinstance(d, dict) or d.get("format") != STATE_FORMAT:
            raise HalbError(f"{self.state_path}: not an nft engine state; run 'halb nft flush'")
        st = State()
        st.__setstate__(d)
        st.timeouts = Timeouts(*d["timeouts"])
        return st

    def _save(self, st: State) -> None:
        d = st.__getstate__()
        d["timeouts"] = (st.timeouts.tcp, st.timeouts.tcpfin, st.timeouts.udp)
        d["format"] = STATE_FORMAT
        tmp = self.state_path.with_suffix(".tmp")
        with open(tmp, "wb") as fh:
            fh.write(marshal.dumps(d))
        os.replace(tmp, self.state_path)

    # -- Engine interface --------------------------------------------------
    def execute(self, ops: list[Op]) -> None:
        ops = list(ops)
        check_namespace()
        for i, op in enumerate(ops):
            _precheck(op, i)
        with self._locked():
            st = self._load()
            if any(op.kind in ("clear", "set-timeouts") for op in ops):
                new = st.table().apply(ops)
                new_services, changed = list(new.services.values()), None
            else:
                # only the services the ops name are copied and checked: an
                # edit costs the same whatever the table size
                keys = [op.key for op in ops if op.key is not None]
                touched = [st.service(str(k)) for k in dict.fromkeys(keys)]
                sub = Table([s.config() for s in touched if s is not None],
                            timeouts=Timeouts(**asdict(st.timeouts)), default_fwd="gate")
                sub.allowed_fwd, sub.engine_name = ("gate", "masq"), "nft"
                new = sub.apply(ops)
                by_str = {str(k): v for k, v in new.services.items()}
                before = {str(k) for k in sub.services}
                new_services = []
                for rec in st.recs:
                    if rec[0] not in before:
                        new_services.append(rec)
                    elif rec[0] in by_str:
                        new_services.append(by_str[rec[0]])
                new_services += [v for k, v in by_str.items() if k not in before]
                changed = {str(k) for k in keys}
            zero_keys = [op for op in ops if op.kind == "zero"]
            self._sync(st, new_services, new.timeouts, changed)
            if zero_keys:
                self._zero(st, zero_keys)
            self._save(st)

    def timeouts(self) -> Timeouts:
        return self._load().timeouts

    def services(self) -> list[Service]:
        st = self._load()
        if not st.recs:
            return []
        kern = _Kernel.read()
        now = time.monotonic()
        out = []
        samples = {}
        self.drift = kern.drift(st) if st.kernel else []
        for svc in st.services:
            s = svc.config()
            plan = st.plan(svc)
            if self.truth and not kern.dispatched(plan):
                continue
            flows = kern.flow_counts(plan)
            persist = kern.persist_counts(plan)
            by_ident = {(d.addr, d.port): d for d in plan.dests if d.live}
            s.stats = Stats()
            if self.truth:
                s.dests = [d for d in s.dests if by_ident.get(d.ident) is not None
                           and kern.live_mark(by_ident[d.ident].mid)]
            for d in s.dests:
                dp = by_ident.get(d.ident)
                if dp is None:
                    continue
                d.local = dp.fwd == "local"
                pk = kern.counter(f"d{dp.mid}", st.zero)
                nk = kern.counter(f"n{dp.mid}", st.zero)
                ok = kern.counter(f"o{dp.mid}", st.zero)
                d.stats = Stats(conns=nk[0], inpkts=pk[0], inbytes=pk[1], outpkts=ok[0], outbytes=ok[1])
                s.stats.add(Stats(inpkts=pk[0], inbytes=pk[1], outpkts=ok[0], outbytes=ok[1]))
                a, i = flows.get(dp.mid, (0, 0))
                d.activeconns, d.inactconns = a, i
                d.persistconns = persist.get(dp.mid, 0)
                s.stats.conns += d.stats.conns
                samples[f"d{dp.mid}"] = asdict(d.stats)
            samples[f"s{plan.sid}"] = asdict(s.stats)
            out.append(s)
        self._rates(out, st, samples, now)
        return out

    def connections(self) -> list[Conn]:
        st = self._load()
        if not st.recs:
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
            try:
                st = self._load()
            except HalbError:  # unreadable state: still remove what is in the kernel
                st = State()
            self._teardown(st)
            st.set_services([])
            self._save(st)

    def refresh(self) -> int:
        """Recompute the count-based schedulers' sequences from live counts and
        drop removed servers no flow uses any more (the controller's tick).
        Returns the number of services refreshed."""
        check_namespace()
        with self._locked():
            st = self._load()
            now = time.time()
            changed = {r[0] for r in st.recs if r[2][0] in COUNT_BASED or any(d[4] for d in r[3])}
            changed |= {k for k, t in st.gc_at.items() if t <= now}
            if not changed:
                return 0
            n = self._sync(st, list(st.recs), st.timeouts, changed, refresh_only=True)
            self._save(st)
            return n

    def status(self) -> dict:
        st = self._load()
        missing = self._missing(st) if st.recs and st.kernel else []
        return {"services": len(st.recs), "table": nftcli.table_exists(rs.FAMILY, rs.TABLE),
                "rules": routing.halb_rules(), "local_rule_moved": st.local_moved,
                "sysctls_changed": dict(st.sysctls), "missing": missing}

    # -- self-healing (halb.nft.heal watches; this puts things back) -----------
    def _missing(self, st: State) -> list[str]:
        """What the configured table needs in the kernel and is not there."""
        out = []
        if not nftcli.table_exists(rs.FAMILY, rs.TABLE):
            out.append(f"nftables table {rs.T}")
        needed = {t[4] for ts in st.dtuples.values() for t in ts if t[3] == "gate"}
        if needed:
            have = {(mark, table) for _, mark, table in routing.halb_rules()}
            gone = [r for r in sorted(needed) if (rs.rmark(r), routing.table_for(r)) not in have]
            if gone:
                out.append(f"{len(gone)} policy routing rule(s) for Direct Return")
            if st.local_moved and routing.local_rule_at_zero_now():
                out.append("the moved `lookup local` rule")
            if routing.sysctl_read("ip_forward") != "1":
                out.append("net.ipv4.ip_forward=1")
        return out

    def heal(self) -> tuple[list[str], int] | None:
        """Put back what the configured table needs and someone removed (`nft
        flush ruleset`, a firewall reload, `ip rule flush`): the nft table with
        the same dest marks (so the sync daemon's flows still match), the
        routing rules, the moved local rule, ip_forward. Returns (what was
        missing, ms it took) or None when nothing was missing."""
        check_namespace()
        t0 = time.monotonic()
        with self._locked():
            st = self._load()
            if not st.recs or not st.kernel:
                return None
            missing = self._missing(st)
            if not missing:
                return None
            if missing[0].startswith("nftables table"):
                self._rebuild(st)
                self._guard_again()
            needed = {t[4] for ts in st.dtuples.values() for t in ts if t[3] == "gate"}
            rip_of = {v: k for k, v in st.rips.items()}
            for ridx in sorted(needed):
                routing.add_route(ridx, rs.rmark(ridx), rip_of[ridx])
            if needed:
                if routing.move_local_rule():
                    st.local_moved = True
                if routing.sysctl_read("ip_forward") != "1":
                    ifaces = sorted({routing.route_to(rip_of[r])[1] for r in needed})
                    routing.apply_sysctls(routing.dr_sysctls(ifaces), st.sysctls)
            self._save(st)
        try:  # the master sync daemon puts the flows back (halb.sync.daemon.restore): now
            from halb.sync import daemon as syncd
            syncd.query(self.ctx.run_dir, "master", "poll", timeout=1.0)
        except Exception:  # noqa: BLE001 - no sync daemon here
            pass
        return missing, round((time.monotonic() - t0) * 1000)

    def _held_flows(self, st: State, services: list[Service], timeouts: Timeouts) -> list[str]:
        """The table is created here (a takeover): the connections the backup
        sync daemon received and could not place (no table until now) go in
        the same transaction, so no packet of them is ever scheduled anew."""
        from halb.sync import core as sc
        from halb.sync.daemon import HELD_LIVE, paths

        held = sc.Held()
        now = time.time()
        for p in (self.ctx.path(HELD_LIVE), paths(self.ctx.run_dir, "backup")["held"]):
            try:
                held.load(p.read_bytes(), now)
            except OSError:
                pass
        if not len(held):
            return []
        views = {}
        for svc in services:
            k = _skey(svc)
            if k not in st.sids or svc.key.af != 4:
                continue
            ident = sc.svc_ident(svc.key)
            dests = {(d.addr, d.port): d.mid for d in st.dplans(k)}
            views[ident] = sc.SvcView(ident, st.sids[k], svc.persistent, svc.timeout, dests)
        adds, _ = held.place(sc.TableView(views, timeouts.tcp, timeouts.tcpfin, timeouts.udp), now)
        return sc.render(adds)

    def guard_vips(self) -> list[str]:
        """The VIPs `halb realserver start` set up on this node."""
        try:
            return list(json.loads(self.ctx.path("realserver.json").read_text()).get("vips", {}))
        except (OSError, ValueError, AttributeError):
            return []

    def _guard_again(self) -> None:
        """A ruleset flush took the real server's guard (halb.nft.guard) too."""
        from halb.nft import guard
        vips = self.guard_vips()
        if vips and not guard.present():
            guard.install(vips)

    def _rebuild(self, st: State) -> None:
        """The whole table again from the state, every dest keeping its mark."""
        cmds = [f"add table {rs.T}", f"delete table {rs.T}"] + rs.globals_create()
        cmds += rs.shared_create() + rs.shared_rules(st.timeouts, fresh=True)
        for k in st.keys():
            plan = st.plan(st.service(k))
            _fill_sequence(plan, None, st)
            cmds += rs.service_create(plan)
            for d in plan.dests:
                cmds += rs.dest_create(plan, d) if d.live else rs.dest_forward_add(d)
            cmds += rs.service_rules(plan, st.timeouts, fresh=True)
            st.slots[k] = tuple(i for i, _ in plan.sequence)
            cmds += rs.service_dispatch_add(plan)
        cmds += rs.snat_update([], st.snat)
        st.zero = {}
        nftcli.run_script("\n".join(rs.merge_elements(cmds)) + "\n")

    # -- the work --------------------------------------------------------------
    def _sync(self, st: State, new_services: list[Service], timeouts: Timeouts,
              changed: set[str] | None = None, refresh_only: bool = False,
              force_full: bool = False) -> int:
        """Make the kernel follow new_services; changed = the keys that may
        differ from st (None: any)."""
        if not new_services:
            self._teardown(st)
            st.set_services([])
            st.timeouts = timeouts
            return 0
        routes_before = set(st.rips.values()) if st.kernel else set()
        # trust the state (a `nft list` costs as much as the edit); when the
        # table vanished behind halb's back the batch fails and is redone in full
        full = force_full or not st.kernel or st.layout != rs.VERSION
        locals_ = _LocalAddrs()
        old_keys = set(st.keys())
        timeouts_changed = asdict(timeouts) != asdict(st.timeouts)
        if timeouts_changed:
            changed = None
        cmds: list[str] = []
        if full:
            cmds += [f"add table {rs.T}", f"delete table {rs.T}"] + rs.globals_create()
            cmds += rs.shared_create() + rs.shared_rules(timeouts, fresh=True)
            old_keys = set()
            changed = None
            st.dtuples = {}
            st.slots = {}
            st.snat = []
            st.zero = {}
        elif timeouts_changed:
            cmds += rs.shared_rules(timeouts, fresh=False)
        # services removed
        new_keys = {_kstr(s) for s in new_services}
        for k in sorted(old_keys if changed is None else old_keys & changed):
            if k not in new_keys:
                plan = st.plan(st.service(k))
                cmds += rs.service_dispatch_del(plan, rs.in_notrack(plan))
                cmds += rs.service_delete(plan, st.slots.pop(k, ()))
                for d in plan.dests:
                    _drop_zero(st, d.mid)
                st.dtuples.pop(k, None)
                st.sids.pop(k, None)
                st.sched_state.pop(k, None)
                st.gc_at.pop(k, None)
        todo = [s if not isinstance(s, tuple) else st.service(s[0]) for s in new_services
                if changed is None or _kstr(s) in changed]
        counts_needed = [s for s in todo
                         if s.scheduler in COUNT_BASED or any(d.u_threshold for d in s.dests)]
        kern = _Kernel.read_flows(st, counts_needed) if (counts_needed and not full) else None
        now = time.time()
        gc = {k for k in (_skey(s) for s in todo) if any(not t[5] for t in st.dtuples.get(k, ()))
              and now >= st.gc_at.get(k, 0)}
        in_use = _Kernel.read_marks_in_use() if gc and not full else set()
        refreshed = 0
        used_sids = None
        for svc in todo:
            k = _skey(svc)
            old = st.service(k) if k in old_keys else None
            if old is None:
                if k not in st.sids:
                    if used_sids is None:
                        used_sids = set(st.sids.values())
                    st.sids[k] = _new_sid(st, used_sids)
                plan = rs.ServicePlan(st.sids[k], svc, [])
                plan.dests = [self._new_dest(st, svc, d, locals_) for d in svc.dests]
                _fill_sequence(plan, None, st)
                cmds += rs.service_create(plan)
                for d in plan.dests:
                    cmds += rs.dest_create(plan, d)
                cmds += rs.service_rules(plan, timeouts, fresh=True)
                st.slots[k] = tuple(i for i, _ in plan.sequence)
                cmds += rs.service_dispatch_add(plan)
                st.set_dplans(k, plan.dests)
                continue
            if (not refresh_only and not timeouts_changed and _same(old, svc)
                    and not (k in gc and _trash_to_drop(st, k, in_use))):
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
                if dp.live and (dp.fwd == "local" or d.fwd == dp.fwd):
                    want = rs.DestPlan(dp.mid, dp.addr, dp.port, dp.fwd, dp.ridx)  # unchanged
                else:
                    want = self._dest_plan(st, svc, d, locals_, dp.mid)
                if not dp.live:  # re-added while its old flows lived on
                    cmds += rs.dest_create(old_plan, rs.DestPlan(**{**asdict(want), "fwd": "none"}))
                if (dp.fwd, dp.ridx, dp.addr, dp.port) != (want.fwd, want.ridx, want.addr, want.port) \
                        or not dp.live:
                    cmds += rs.dest_forward_del(dp)
                    cmds += rs.dest_forward_add(want)
                dests.append(want)
            # real servers no longer in the table: retire them now (no new
            # connections), keep their forwarding while flows may use them; the
            # flow maps are read later (GC_DELAY), not in the edit itself
            for dp in existing.values():
                if dp.live:
                    cmds += rs.dest_retire(old_plan, dp)
                    _drop_zero(st, dp.mid)
                    dp.live = False
                    dests.append(dp)
                    st.gc_at[k] = now + GC_DELAY
                elif k not in gc or dp.mid in in_use:
                    dests.append(dp)
                else:
                    cmds += rs.dest_forward_del(dp)
            if k in gc and any(not d.live for d in dests):
                st.gc_at[k] = now + GC_DELAY
            elif not any(not d.live for d in dests):
                st.gc_at.pop(k, None)
            plan = rs.ServicePlan(old_plan.sid, svc, dests)
            counts = kern.counts_for(plan) if kern else None
            _fill_sequence(plan, counts, st)
            if svc.persistent and not old.persistent:
                cmds += rs.persist_create(plan)
            elif svc.persistent and (old.timeout, old.netmask) != (svc.timeout, svc.netmask):
                cmds.append(f"flush map {rs.T} p{plan.sid}")
            now_notrack = rs.in_notrack(plan)
            if was_notrack != now_notrack:
                elem = f"{svc.key.addr} . {svc.key.proto} . {svc.key.port}"
                cmds.append(f"{'add' if now_notrack else 'delete'} element {rs.T} nt4 {{ {elem} }}")
            cmds += rs.service_rules(plan, timeouts, fresh=False, had_t=old.persistent,
                                     old_slots=st.slots.get(k, ()))
            st.slots[k] = tuple(i for i, _ in plan.sequence)
            if old.persistent and not svc.persistent:
                cmds += rs.persist_delete(plan.sid)
            st.set_dplans(k, dests)
            refreshed += 1
        # masquerading of clients on the real servers' own networks
        masq_addrs = {t[1] for ts in st.dtuples.values() for t in ts if t[3] == "masq"}
        masq_nets = routing.connected_nets(masq_addrs) if masq_addrs else []
        masq_nets = rs.collapse_nets(masq_nets) if masq_nets else []
        if masq_nets != st.snat:
            cmds += rs.snat_update(st.snat, masq_nets)
            st.snat = masq_nets
        held_cmds: list[str] = []
        if full and not refresh_only:
            try:
                held_cmds = self._held_flows(st, todo, timeouts)
            except Exception:  # noqa: BLE001 - a damaged file must never stop the table
                held_cmds = []
        # routes for Direct Return: add before the transaction, remove after
        needed = {t[4] for ts in st.dtuples.values() for t in ts if t[3] == "gate"}
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
            if needed - routes_before or masq_addrs:
                ifaces = sorted({routing.route_to(rip_of[r])[1] for r in needed - routes_before})
                routing.apply_sysctls(routing.dr_sysctls(ifaces), st.sysctls)
            try:
                try:
                    nftcli.run_script("\n".join(rs.merge_elements(cmds + held_cmds)) + "\n")
                except nftcli.NftError:
                    if not held_cmds:
                        raise
                    nftcli.run_script("\n".join(rs.merge_elements(cmds)) + "\n")
            except nftcli.NftError:
                if full or nftcli.table_exists(rs.FAMILY, rs.TABLE):
                    raise
                retry = True
            else:
                retry = False
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
        if retry:  # halb's table was removed by someone else (or the namespace is
            # new): rebuild it all, routing included
            st.kernel = False
            st.local_moved = False
            return self._sync(st, new_services, timeouts, None, refresh_only, force_full=True)
        st.kernel = True
        st.layout = rs.VERSION
        for ridx in list(rip_of):
            if ridx not in needed:
                routing.del_route(ridx, rs.rmark(ridx))
                st.rips.pop(rip_of[ridx], None)
        st.set_services(new_services)
        st.timeouts = timeouts
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
        if st.next_mid >= rs.MID_LIMIT:
            st.next_mid = 1
        return self._dest_plan(st, svc, d, locals_, mid)

    def _teardown(self, st: State) -> None:
        errors = []
        try:
            nftcli.run_script(f"delete table {rs.T}\n")
        except HalbError as e:
            if "No such file" not in str(e):
                errors.append(str(e))
        try:
            routing.remove_all({r: rs.rmark(r) for r in st.rips.values()})
            routing.restore_local_rule(only_if_moved=not st.local_moved)
            routing.restore_sysctls(st.sysctls)
        except OSError as e:
            errors.append(str(e))
        st.local_moved = False
        st.rips = {}
        st.dtuples = {}
        st.sids = {}
        st.snat = []
        st.zero = {}
        st.sched_state = {}
        st.gc_at = {}
        st.slots = {}
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
        for k in st.keys():
            if keys is not None and k not in keys:
                continue
            names = [f"{p}{d.mid}" for d in st.dplans(k) if d.live
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
                fill_rates(s, old.get(f"s{st.sids[_skey(s)]}"), dt)
                for d in s.dests:
                    dp = next((x for x in st.dplans(_skey(s)) if x.live and (x.addr, x.port) == d.ident), None)
                    if dp:
                        fill_rates(d, old.get(f"d{dp.mid}"), dt)
        if not prev or now - prev.get("t", now) >= 1.0 or now < prev.get("t", 0):
            tmp = self.samples_path.with_suffix(".tmp")
            try:
                tmp.write_text(json.dumps({"t": now, "s": samples}))
                os.replace(tmp, self.samples_path)
            except OSError:
                pass



def _drop_zero(st: State, mid: int) -> None:
    st.zero.pop(f"d{mid}", None)
    st.zero.pop(f"n{mid}", None)
    st.zero.pop(f"o{mid}", None)


def _sig(s: Service) -> tuple:
    return (s.key, s.scheduler, s.persistent, s.timeout, s.netmask, tuple(s.flags), s.ops, s.pe,
            tuple((d.addr, d.port, d.fwd, d.weight, d.u_threshold, d.l_threshold) for d in s.dests))


def _same(a: Service, b: Service) -> bool:
    return _sig(a) == _sig(b)


def _new_sid(st: State, used: set[int]) -> int:
    """A service id not in use (ids are reused: each owns a slot range)."""
    sid = st.next_sid
    while sid in used or sid > rs.MAX_SID:
        sid = 1 if sid > rs.MAX_SID else sid + 1
    st.next_sid = sid + 1
    used.add(sid)
    return sid


GC_DELAY = float(os.environ.get("HALB_NFT_GC_DELAY", "30"))


def _trash_to_drop(st: State, k: str, in_use: set) -> bool:
    return any(not t[5] and t[0] not in in_use for t in st.dtuples.get(k, ()))


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


class _LocalAddrs:
    """This node's addresses, read once and only when a decision needs them."""

    def __init__(self):
        self._addrs = None

    def __contains__(self, addr) -> bool:
        if self._addrs is None:
            self._addrs = routing.local_addrs()
        return addr in self._addrs


class _Kernel:
    """One read of halb's table (or of its flow maps only)."""

    def __init__(self, objs: list[dict]):
        self.counters: dict[str, tuple[int, int]] = {}
        self.maps: dict[str, list] = {}
        self.present = bool(objs)
        self.dispatch: dict[str, set[str]] = {}
        self.live: set[int] = set()
        stats = {"dstats": "d", "nstats": "n", "ostats": "o"}
        for o in objs:
            for kind in ("map", "set"):
                if kind in o:
                    m = o[kind]
                    if m["name"] in stats:
                        prefix = stats[m["name"]]
                        for e in m.get("elem", []):
                            if isinstance(e, dict) and "elem" in e:
                                c = e["elem"].get("counter") or {}
                                mid = int(e["elem"]["val"]) & MID_BITS
                                self.counters[f"{prefix}{mid}"] = (c.get("packets", 0), c.get("bytes", 0))
                        continue
                    self.maps[m["name"]] = [nftcli.elem_parts(e) for e in m.get("elem", [])]
                    if m["name"] in ("svc4", "svc4any", "svcfw"):
                        self.dispatch[m["name"]] = {_elem_text(p[0]) for p in self.maps[m["name"]]}
                    elif m["name"] == "live":
                        self.live = {int(p[0]) & MID_BITS for p in self.maps["live"]
                                     if isinstance(p[0], int)}
        self._by_mark: dict[int, list] | None = None

    @classmethod
    def read(cls) -> "_Kernel":
        return cls(nftcli.list_json("table", rs.FAMILY, rs.TABLE))

    @classmethod
    def read_flows(cls, st: State | None = None, services=None) -> "_Kernel":
        objs = []
        for kind, name in (("map", "flows"), ("map", "uflows"), ("set", "closing")):
            objs += nftcli.list_json(kind, rs.FAMILY, rs.TABLE, name)
        return cls(objs)

    @classmethod
    def read_marks_in_use(cls) -> set[int]:
        """Dest mark ids that live flows still use."""
        marks = set()
        for o in (nftcli.list_json("map", rs.FAMILY, rs.TABLE, "flows")
                  + nftcli.list_json("map", rs.FAMILY, rs.TABLE, "uflows")):
            for e in o.get("map", {}).get("elem", []):
                _, _, _, v = nftcli.elem_parts(e)
                if isinstance(v, int):
                    marks.add(v & MID_BITS)
        return marks

    def dispatched(self, plan: rs.ServicePlan) -> bool:
        """The kernel sends the service's packets to its chain."""
        m, elem = rs._dispatch_elem(plan)
        return elem in self.dispatch.get(m, set())

    def live_mark(self, mid: int) -> bool:
        return mid in self.live

    def drift(self, st: State) -> list[str]:
        """How the kernel differs from the configured table (empty: it does not)."""
        if not self.present:
            return [f"the kernel has no nftables table {rs.T} (removed by `nft flush ruleset` or a "
                    f"firewall reload?): {len(st.recs)} configured virtual service(s) are not in force"]
        out = []
        for k in st.keys():
            plan = st.plan(st.service(k))
            if not self.dispatched(plan):
                out.append(f"virtual service {k} is configured but not in the kernel")
            else:
                n = sum(1 for d in plan.dests if d.live and not self.live_mark(d.mid))
                if n:
                    out.append(f"virtual service {k}: {n} real server(s) configured but not in the kernel")
        return out

    def raw_counter(self, name: str) -> tuple[int, int]:
        return self.counters.get(name, (0, 0))

    def counter(self, name: str, zero: dict) -> tuple[int, int]:
        p, b = self.counters.get(name, (0, 0))
        zp, zb = zero.get(name, (0, 0))
        if p < zp or b < zb:  # counter re-created since the zero
            return p, b
        return p - zp, b - zb

    def by_mark(self) -> dict[int, list]:
        """mid -> [(key, state, expires)] of live flows."""
        if self._by_mark is None:
            closing = {e[0]: e[1] for e in self.maps.get("closing", [])}
            out: dict[int, list] = {}
            for key, expires, timeout, mark in self.maps.get("flows", []) + self.maps.get("uflows", []):
                if not isinstance(mark, int):
                    continue
                item = (key, "FIN_WAIT", closing[key]) if key in closing else (key, "ESTABLISHED", expires)
                out.setdefault(mark & MID_BITS, []).append(item)
            self._by_mark = out
        return self._by_mark

    def flow_counts(self, plan: rs.ServicePlan) -> dict[int, tuple[int, int]]:
        udp = plan.svc.key.proto == "udp"
        flows = self.by_mark()
        out = {}
        for d in plan.dests:
            items = flows.get(d.mid, ())
            active = 0 if udp else sum(1 for it in items if it[1] == "ESTABLISHED")
            out[d.mid] = (active, len(items) - active)
        return out

    def counts_for(self, plan: rs.ServicePlan) -> dict[int, tuple[int, int]]:
        return self.flow_counts(plan)

    def persist_counts(self, plan: rs.ServicePlan) -> dict[int, int]:
        out: dict[int, int] = {}
        if not plan.svc.persistent:
            return out
        for _, _, _, mark in self.maps.get(f"p{plan.sid}", []):
            if isinstance(mark, int):
                out[mark & MID_BITS] = out.get(mark & MID_BITS, 0) + 1
        return out

    def conns(self, plan: rs.ServicePlan) -> list[Conn]:
        svc = plan.svc
        k = svc.key
        flows = self.by_mark()
        out = []
        for d in plan.dests:
            for key, state, expires in flows.get(d.mid, ()):
                vaddr, vport, caddr, cport = key
                proto = "UDP" if k.proto == "udp" else "TCP"
                if proto == "UDP":
                    state = "UDP"
                out.append(Conn(proto, float(expires or 0), state, str(caddr), int(cport), str(vaddr),
                                int(vport), d.addr, d.port, fwd=d.fwd))
        if svc.persistent:
            by_mid = {d.mid: d for d in plan.dests}
            proto = "UDP" if k.proto == "udp" else "TCP"
            for key, expires, timeout, mark in self.maps.get(f"p{plan.sid}", []):
                d = by_mid.get((mark or 0) & MID_BITS)
                if d is None:
                    continue
                out.append(Conn(proto, float(expires or 0), "NONE", str(key), 0,
                                k.addr if k.proto != "fwm" else str(k.fwmark), k.port,
                                d.addr, d.port, fwd=d.fwd, template=True))
        return out


def _elem_text(key) -> str:
    """A dispatch map key as rs._dispatch_elem writes it."""
    if isinstance(key, int):
        return f"0x{key:x}"
    if isinstance(key, tuple):
        return " . ".join(str(x) for x in key)
    return str(key)


# the initial network namespace's fixed inode number (include/linux/proc_ns.h,
# PROC_NET_INIT_INO, recent kernels); older kernels: compared with pid 1's
PROC_NET_INIT_INO = 0xEFFFFFF9


def in_initial_netns() -> bool:
    """True in the machine's (or container's) own network namespace, the one
    of pid 1; False inside a namespace such as the lab's nodes."""
    try:
        mine = os.stat("/proc/self/ns/net").st_ino
    except OSError:
        return False
    if mine == PROC_NET_INIT_INO:
        return True
    try:
        return mine == os.stat("/proc/1/ns/net").st_ino
    except OSError:  # pid 1 hidden (sandboxes): the fixed inode above decides
        return False


def check_namespace() -> None:
    """With HALB_NFT_HOST_GUARD=1 (set by halb's test suite, and by anyone who
    wants the same protection on a shared machine), refuse to change this
    machine's own network namespace unless HALB_NFT_HOST=1: there the kernel
    engine belongs in a namespace (halb lab). A real director, where the
    guard is not set, is changed as ipvsadm changes IPVS."""
    if (os.environ.get("HALB_NFT_HOST_GUARD") == "1" and os.environ.get("HALB_NFT_HOST") != "1"
            and in_initial_netns()):
        raise EngineUnavailable(
            "the nft engine would change this machine's own network namespace (nftables table, "
            "ip rules, sysctls) and HALB_NFT_HOST_GUARD=1 forbids it; run it inside a network "
            "namespace (halb lab exec NODE -- ...), set HALB_NFT_HOST=1 to allow it, "
            "or use --engine proxy")


def connect(ctx: Context) -> Engine:
    if not has_net_admin():
        raise nftcli.unavailable("it needs CAP_NET_ADMIN (run as root)")
    reason = nftcli.available()
    if reason:
        raise nftcli.unavailable(reason)
    return NftEngine(ctx)
