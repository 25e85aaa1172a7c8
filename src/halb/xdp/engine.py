"""The xdp engine: Direct Return balanced in the driver (`--engine xdp`).

No daemon, as the nft engine: every `execute()` takes the node's lock, applies
the ops to the configured table (<run_dir>/xdp-state.json, IPVS semantics from
halb.model.Table) and writes the difference into the XDP program's maps. The
program is loaded once (from the object `halb xdp build` made) and attached to
the node's interfaces; later commands find its maps again from the attached
program (ids in the state file), so nothing is pinned and nothing outlives a
detach. The kernel is the truth for counters, flows and templates.

When the table holds what XDP does not do (a NAT real server, a fwmark
service), or XDP cannot load or attach here, the table goes to the nft
engine, with one log line saying why; back on XDP when the reason is gone.
"""
from __future__ import annotations

import base64
import fcntl
import json
import logging
import os
import pickle
import socket
import time
from contextlib import contextmanager
from dataclasses import asdict

from halb.context import Context, has_net_admin
from halb.engine.base import Engine
from halb.errors import EngineUnavailable, HalbError, IpvsError
from halb.model import Conn, Dest, Op, Service, ServiceKey, Stats, Table, Timeouts, fill_rates
from halb.nft.plan import COUNT_BASED
from halb.xdp import layout as lay
from halb.xdp.libbpf import Map, XdpError

log = logging.getLogger("halb.xdp")

STATE_FILE = "xdp-state.json"
STATE_FORMAT = 1
LOCK_FILE = "xdp.lock"
SAMPLES_FILE = "xdp-samples.json"
GC_DELAY = float(os.environ.get("HALB_XDP_GC_DELAY", "30"))
NFT_NOTE = "the nft engine serves this node's table"


class XdpUnusable(XdpError):
    """XDP cannot run here (load or attach refused): the table goes to nft."""


def _pack(svc: Service) -> list:
    k = svc.key
    return [[k.proto, k.addr, k.port, k.fwmark, k.af],
            [svc.scheduler, svc.persistent, svc.timeout, svc.netmask, list(svc.flags), svc.ops, svc.pe],
            [[d.addr, d.port, d.fwd, d.weight, d.u_threshold, d.l_threshold] for d in svc.dests]]


def _unpack(rec: list) -> Service:
    kt, p, ds = rec
    svc = Service(ServiceKey(*kt), p[0], p[1], p[2], p[3], tuple(p[4]), p[5], p[6])
    svc.dests = [Dest(*d) for d in ds]
    return svc


def _ident(d: Dest) -> str:
    return f"{d.addr}:{d.port}"


class State:
    def __init__(self):
        self.services: list = []          # packed, in insertion order
        self.timeouts = [900, 120, 300]
        self.sids: dict[str, int] = {}
        self.dests: dict[str, dict[str, int]] = {}   # service -> {addr:port: did}
        self.retired: dict[str, list] = {}           # did -> [service, addr:port, since]
        self.dinfo: dict[str, list] = {}             # did -> [addr, ifindex, mac, smac, local]
        self.gens: dict[str, list] = {}              # service -> [gen, nslots]
        self.zero: dict[str, list] = {}              # did -> counters at the last -Z
        self.sched_state: dict[str, str] = {}
        self.prog_id = 0
        self.maps: dict[str, int] = {}
        self.ifaces: list = []                        # [name, ifindex]
        self.mode = "drv"
        self.delegate = ""                            # "nft": the table is the nft engine's
        self.delegate_why = ""                        # "table" (NAT, fwmark) or "unusable" (XDP here)
        self.gc_at = 0.0

    def table(self) -> Table:
        t = Table([_unpack(r) for r in self.services], timeouts=Timeouts(*self.timeouts), default_fwd="gate")
        t.allowed_fwd = ("gate", "masq")
        t.engine_name = "xdp"
        return t

    def clear_kernel(self) -> None:
        self.dests, self.retired, self.dinfo, self.gens, self.zero = {}, {}, {}, {}, {}
        self.sched_state, self.sids = {}, {}
        self.prog_id, self.maps, self.ifaces = 0, {}, []

    def did_owner(self) -> dict[int, tuple[str, str, bool]]:
        """did -> (service, addr:port, live)."""
        out = {}
        for k, m in self.dests.items():
            for ident, did in m.items():
                out[did] = (k, ident, True)
        for did, (k, ident, _) in self.retired.items():
            out[int(did)] = (k, ident, False)
        return out


class _Maps:
    """Open fds of the program's maps."""

    def __init__(self, ids: dict[str, int]):
        from halb.xdp import libbpf
        self.m: dict[str, Map] = {}
        try:
            for name, mid in ids.items():
                fd = libbpf.map_fd_by_id(mid)
                m = Map(fd)
                if m.name != name:
                    m.close()
                    raise XdpError(f"XDP map id {mid} is not halb's {name}")
                self.m[name] = m
        except XdpError:
            self.close()
            raise

    def __getattr__(self, name) -> Map:
        try:
            return self.__dict__["m"][name]
        except KeyError:
            raise AttributeError(name) from None

    def close(self) -> None:
        for m in self.m.values():
            m.close()
        self.m = {}


class XdpEngine(Engine):
    name = "xdp"
    fwd_methods = ("gate", "masq")
    default_fwd = "gate"

    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.state_path = ctx.path(STATE_FILE)
        self.lock_path = ctx.path(LOCK_FILE)
        self.samples_path = ctx.path(SAMPLES_FILE)
        self._nft = None

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
        st = State()
        try:
            d = json.loads(self.state_path.read_text())
        except FileNotFoundError:
            return st
        except (OSError, ValueError) as e:
            raise HalbError(f"{self.state_path}: corrupt xdp engine state ({type(e).__name__}); "
                            f"run 'halb xdp flush' to start again") from None
        if not isinstance(d, dict) or d.get("format") != STATE_FORMAT:
            raise HalbError(f"{self.state_path}: not an xdp engine state; run 'halb xdp flush'")
        for k in st.__dict__:
            if k in d:
                setattr(st, k, d[k])
        return st

    def _save(self, st: State) -> None:
        d = dict(st.__dict__)
        d["format"] = STATE_FORMAT
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(d))
        os.replace(tmp, self.state_path)

    def nft(self):
        if self._nft is None:
            from halb.nft.engine import NftEngine
            self._nft = NftEngine(self.ctx)
        return self._nft

    # -- Engine interface --------------------------------------------------
    def execute(self, ops: list[Op]) -> None:
        ops = list(ops)
        check_namespace()
        for i, op in enumerate(ops):
            _precheck(op, i)
        with self._locked():
            st = self._load()
            new = st.table().apply(ops)
            reason = nft_reason(new)
            why = "table"
            if st.delegate == "nft" and st.delegate_why == "unusable":
                # XDP could not run here: nft keeps the table until it is empty
                self.nft().execute(ops)
                if not new.services:
                    st.delegate = st.delegate_why = ""
                reason = None
            elif reason is None and st.delegate != "nft":
                try:
                    self._sync(st, new, _touched(ops))
                except XdpUnusable as e:
                    reason, why = str(e), "unusable"
            elif reason is None:
                try:
                    self._from_nft(st, new)
                except XdpUnusable as e:
                    reason, why = str(e), "unusable"
            if reason is not None:
                self._to_nft(st, new, ops, reason)
                st.delegate_why = why
            st.services = [_pack(s) for s in new.services.values()]
            st.timeouts = [new.timeouts.tcp, new.timeouts.tcpfin, new.timeouts.udp]
            if any(op.kind == "zero" for op in ops) and st.delegate != "nft":
                self._zero(st, ops)
            self._save(st)

    def _to_nft(self, st: State, new: Table, ops: list[Op], reason: str) -> None:
        nft = self.nft()
        if st.delegate == "nft":
            nft.execute(ops)
            return
        full = [Op("clear"), Op("set-timeouts", timeouts=new.timeouts)]
        for svc in new.services.values():
            s = svc.config()
            dests, s.dests = s.dests, []
            full.append(Op("add-service", service=s))
            full += [Op("add-dest", key=s.key, dest=d) for d in dests]
        nft.execute(full)
        log.warning(f"halb xdp: {reason}: {NFT_NOTE}")
        self._teardown(st)
        st.delegate = "nft"

    def _from_nft(self, st: State, new: Table) -> None:
        st.clear_kernel()
        self._sync(st, new, None)  # XdpUnusable here: stays with nft (raised to the caller)
        self.nft().flush()
        st.delegate = st.delegate_why = ""
        if new.services:
            log.warning("halb xdp: the table is Direct Return only again: XDP serves it (nft engine flushed)")

    def timeouts(self) -> Timeouts:
        return Timeouts(*self._load().timeouts)

    def services(self) -> list[Service]:
        st = self._load()
        if st.delegate == "nft":
            return self.nft().services()
        if not st.services:
            return []
        k = self._maps_or_none(st)
        now_ns = time.monotonic_ns()
        counts, persist, counters = {}, {}, {}
        if k is not None:
            try:
                counts = _flow_counts(k, st, now_ns)
                persist = _tmpl_counts(k, st, now_ns)
                counters = {int(d): lay.parse_counters(k.stats.lookup(lay.u32(int(d))) or [])
                            for m in st.dests.values() for d in m.values()}
            finally:
                k.close()
        out, samples = [], {}
        for rec in st.services:
            s = _unpack(rec)
            key = str(s.key)
            s.stats = Stats()
            ids = st.dests.get(key, {})
            for d in s.dests:
                did = ids.get(_ident(d))
                if did is None:
                    continue
                info = st.dinfo.get(str(did))
                d.local = bool(info and info[4])
                c, p, b = _minus(counters.get(did, (0, 0, 0)), st.zero.get(str(did)))
                d.stats = Stats(conns=c, inpkts=p, inbytes=b)
                s.stats.add(d.stats)
                d.activeconns, d.inactconns = counts.get(did, (0, 0))
                d.persistconns = persist.get(did, 0)
                samples[f"d{did}"] = asdict(d.stats)
            samples[f"s{st.sids.get(key, 0)}"] = asdict(s.stats)
            out.append(s)
        self._rates(out, st, samples, time.monotonic())
        return out

    def connections(self) -> list[Conn]:
        st = self._load()
        if st.delegate == "nft":
            return self.nft().connections()
        if not st.services:
            return []
        k = self._maps_or_none(st)
        if k is None:
            return []
        try:
            return _conns(k, st, time.monotonic_ns())
        finally:
            k.close()

    # -- extras --------------------------------------------------------------
    def flush(self) -> None:
        """Detach and forget everything (`halb xdp flush`); the nft engine's
        table too when it held this node's table."""
        with self._locked():
            try:
                st = self._load()
            except HalbError:
                st = State()
            self._teardown(st)
            if st.delegate == "nft":
                self.nft().flush()
            st.delegate = st.delegate_why = ""
            st.services = []
            self._save(st)

    def refresh(self) -> int:
        """The controller's tick: the connection-count schedulers' slots from
        the live flow counts, and removed servers no flow uses any more."""
        check_namespace()
        with self._locked():
            st = self._load()
            if st.delegate == "nft":
                return self.nft().refresh()
            if not st.services:
                return 0
            svcs = [_unpack(r) for r in st.services]
            todo = [s for s in svcs if s.scheduler in COUNT_BASED or any(d.u_threshold for d in s.dests)]
            now = time.time()
            if not todo and not (st.retired and now >= st.gc_at):
                return 0
            k = self._maps_or_none(st)
            if k is None:
                return 0
            try:
                counts = _flow_counts(k, st, time.monotonic_ns()) if todo else {}
                for s in todo:
                    self._put_service(st, k, s, counts, _LocalAddrs())
                if st.retired and now >= st.gc_at:
                    self._gc(st, k)
            finally:
                k.close()
            self._save(st)
            return len(todo)

    def status(self) -> dict:
        st = self._load()
        from halb.xdp import libbpf
        attached = []
        for name, ifindex in st.ifaces:
            attached.append([name, libbpf.query_id(ifindex, st.mode) == st.prog_id and st.prog_id != 0])
        out = {"services": len(st.services), "engine": "nft" if st.delegate == "nft" else "xdp",
               "program_id": st.prog_id, "mode": st.mode, "interfaces": attached,
               "flows": 0, "templates": 0, "drops": [0, 0]}
        k = self._maps_or_none(st)
        if k is not None:
            try:
                out["flows"] = len(k.flows.keys())
                out["templates"] = len(k.templates.keys())
                out["drops"] = [sum(int.from_bytes(v[:8], "little") for v in (k.drops.lookup(lay.u32(i)) or []))
                                for i in (0, 1)]
            finally:
                k.close()
        return out

    # -- the work --------------------------------------------------------------
    def _maps_or_none(self, st: State) -> _Maps | None:
        if not st.prog_id or not st.maps:
            return None
        try:
            return _Maps(st.maps)
        except XdpError:
            return None

    def _kernel(self, st: State) -> tuple[_Maps, bool]:
        """The maps of the attached program; loads and attaches it when it is
        not there (fresh=True: the maps are empty)."""
        from halb.xdp import libbpf
        if st.prog_id and st.ifaces and all(libbpf.query_id(ix, st.mode) == st.prog_id for _, ix in st.ifaces):
            try:
                return _Maps(st.maps), False
            except XdpError:
                pass
        self._teardown(st)
        st.clear_kernel()
        from halb.xdp.build import ensure_object
        try:
            path = os.environ.get("HALB_XDP_OBJ") or str(ensure_object())
            fd, _, obj = libbpf.load_object(path)
        except XdpError as e:
            raise XdpUnusable(str(e)) from None
        try:
            _, ids = libbpf.prog_info(fd)
            info = {}
            for mid in ids:
                mfd = libbpf.map_fd_by_id(mid)
                try:
                    mi = libbpf.map_info(mfd)
                finally:
                    os.close(mfd)
                if mi["name"] in lay.MAP_NAMES:
                    info[mi["name"]] = mid
            missing = [n for n in lay.MAP_NAMES if n not in info]
            if missing:
                raise XdpUnusable(f"the XDP object lacks map(s) {', '.join(missing)} (rebuild: halb xdp build)")
            ifaces = _interfaces()
            if not ifaces:
                raise XdpUnusable("no network interface to attach XDP to (set HALB_XDP_IFACES)")
            mode = os.environ.get("HALB_XDP_MODE", "drv")
            done = []
            for name, ix in ifaces:
                try:
                    libbpf.attach(ix, fd, mode)
                except XdpError as e:
                    for _, dix in done:
                        libbpf.detach(dix, mode)
                    raise XdpUnusable(f"XDP cannot attach to {name} in {'native' if mode == 'drv' else mode} "
                                      f"mode ({e})") from None
                done.append((name, ix))
            buf_id = libbpf.query_id(ifaces[0][1], mode)
        finally:
            libbpf.close_object(obj)
        st.prog_id, st.maps, st.ifaces, st.mode = buf_id, info, [list(x) for x in ifaces], mode
        return _Maps(info), True

    def _sync(self, st: State, new: Table, touched: set[str] | None) -> None:
        if not new.services:
            self._teardown(st)
            st.clear_kernel()
            return
        k, fresh = self._kernel(st)
        try:
            old_to = list(st.timeouts)
            new_to = [new.timeouts.tcp, new.timeouts.tcpfin, new.timeouts.udp]
            if fresh or old_to != new_to:
                k.config.update(lay.u32(0), lay.config_val(*new_to))
            if fresh:
                touched = None
            old = {str(_unpack(r).key): _unpack(r) for r in st.services} if not fresh else {}
            new_keys = {str(s.key) for s in new.services.values()}
            for key in list(old):
                if key not in new_keys and (touched is None or key in touched):
                    self._del_service(st, k, old[key])
            locals_ = _LocalAddrs()
            counts = None
            for svc in new.services.values():
                key = str(svc.key)
                if touched is not None and key not in touched:
                    continue
                if key in old and _pack(old[key]) == _pack(svc) and not fresh:
                    continue
                if counts is None and not fresh and (svc.scheduler in COUNT_BASED
                                                     or any(d.u_threshold for d in svc.dests)):
                    counts = _flow_counts(k, st, time.monotonic_ns())
                self._put_service(st, k, svc, counts or {}, locals_, old.get(key))
        finally:
            k.close()

    def _new_sid(self, st: State) -> int:
        used = set(st.sids.values())
        for sid in range(1, lay.MAX_SERVICES):
            if sid not in used:
                return sid
        raise IpvsError("too many virtual services for the xdp engine (4095)")

    def _new_did(self, st: State, taken: set[int]) -> int:
        used = {d for m in st.dests.values() for d in m.values()} | {int(d) for d in st.retired} | taken
        start = max(used, default=0) + 1
        for did in list(range(start, lay.MAX_DESTS)) + list(range(1, start)):
            if did not in used:
                return did
        raise IpvsError("too many real servers for the xdp engine (65535)")

    def _put_service(self, st: State, k: _Maps, svc: Service, counts: dict, locals_,
                     old: Service | None = None) -> None:
        key = str(svc.key)
        sid = st.sids.get(key)
        if sid is None:
            sid = st.sids[key] = self._new_sid(st)
        cur = dict(st.dests.get(key, {}))
        newmap, dids = {}, []
        now = time.time()
        for d in svc.dests:
            ident = _ident(d)
            did = cur.pop(ident, None)
            if did is None:
                back = [x for x, r in st.retired.items() if r[0] == key and r[1] == ident]
                if back:  # re-added while its old flows lived on: same id, same counters
                    did = int(back[0])
                    del st.retired[back[0]]
                else:
                    did = self._new_did(st, set(newmap.values()) | set(cur.values()))
                    k.stats.update(lay.u32(did), bytes(24))
                    st.zero.pop(str(did), None)
                info = _dest_info(d.addr, locals_)
                st.dinfo[str(did)] = info
            else:
                info = st.dinfo.get(str(did)) or _dest_info(d.addr, locals_)
                st.dinfo[str(did)] = info
            k.dests.update(lay.u32(did), lay.dest_val(info[0], info[1], sid, info[2], info[3], info[4], True))
            newmap[ident] = did
            dids.append(did)
        for ident, did in cur.items():  # removed: its established flows keep it
            info = st.dinfo.get(str(did))
            if info:
                k.dests.update(lay.u32(did), lay.dest_val(info[0], info[1], sid, info[2], info[3], info[4], False))
            st.retired[str(did)] = [key, ident, now]
            st.gc_at = st.gc_at if st.gc_at > now else now + GC_DELAY
        st.dests[key] = newmap
        by_ident = {}
        for d, did in zip(svc.dests, dids):
            by_ident[d.ident] = counts.get(did, (0, 0))
        keep = None
        if svc.scheduler in ("lblc", "lblcr"):
            keep = {"sched": None}
            blob = st.sched_state.get(key)
            if blob:
                try:
                    keep["sched"] = pickle.loads(base64.b64decode(blob))
                except Exception:  # noqa: BLE001 - an older format: a fresh locality table
                    keep["sched"] = None
        n, slots = lay.slots_for(svc, dids, by_ident, keep)
        if keep is not None and keep.get("sched") is not None:
            st.sched_state[key] = base64.b64encode(pickle.dumps(keep["sched"])).decode()
        else:
            st.sched_state.pop(key, None)
        gen_old, n_old = st.gens.get(key, [1, 0])
        gen = 1 - gen_old
        for slot, did in slots:
            k.slots.update(lay.slot_key(sid, gen, slot), lay.u32(did))
        k.seqs.update(lay.u32(sid), lay.u64(0))
        mode, flags = lay.mode_of(svc)
        pt = svc.timeout if svc.persistent else 0
        k.services.update(lay.svc_key(svc.key.addr, svc.key.port, svc.key.proto),
                          lay.svc_val(sid, n, gen, mode, pt, svc.netmask if svc.persistent else "0.0.0.0", flags))
        for slot in range(n_old):
            k.slots.delete(lay.slot_key(sid, gen_old, slot))
        st.gens[key] = [gen, n]
        if old is not None and old.persistent and (not svc.persistent or (old.timeout, old.netmask)
                                                   != (svc.timeout, svc.netmask)):
            _flush_templates(k, sid)

    def _del_service(self, st: State, k: _Maps, svc: Service) -> None:
        key = str(svc.key)
        sid = st.sids.pop(key, None)
        k.services.delete(lay.svc_key(svc.key.addr, svc.key.port, svc.key.proto))
        if sid is None:
            return
        gen, n = st.gens.pop(key, [0, 0])
        for slot in range(n):
            k.slots.delete(lay.slot_key(sid, gen, slot))
        _flush_templates(k, sid)
        dids = list(st.dests.pop(key, {}).values())
        dids += [int(x) for x, r in st.retired.items() if r[0] == key]
        for did in dids:
            k.dests.delete(lay.u32(did))
            st.retired.pop(str(did), None)
            st.dinfo.pop(str(did), None)
            st.zero.pop(str(did), None)
        st.sched_state.pop(key, None)

    def _gc(self, st: State, k: _Maps) -> None:
        now_ns = time.monotonic_ns()
        in_use = set(_flow_counts(k, st, now_ns))
        for did in list(st.retired):
            if int(did) not in in_use:
                k.dests.delete(lay.u32(int(did)))
                del st.retired[did]
                st.dinfo.pop(did, None)
                st.zero.pop(did, None)
        st.gc_at = time.time() + GC_DELAY if st.retired else 0.0

    def _teardown(self, st: State) -> None:
        from halb.xdp import libbpf
        for _name, ix in st.ifaces:
            try:
                if st.prog_id and libbpf.query_id(ix, st.mode) == st.prog_id:
                    libbpf.detach(ix, st.mode)
            except XdpError:
                pass
        st.clear_kernel()
        try:
            self.samples_path.unlink()
        except FileNotFoundError:
            pass

    def _zero(self, st: State, ops: list[Op]) -> None:
        keys = None if any(op.key is None for op in ops if op.kind == "zero") else \
            {str(op.key) for op in ops if op.kind == "zero"}
        k = self._maps_or_none(st)
        if k is None:
            return
        try:
            for key, m in st.dests.items():
                if keys is not None and key not in keys:
                    continue
                for did in m.values():
                    st.zero[str(did)] = list(lay.parse_counters(k.stats.lookup(lay.u32(did)) or []))
        finally:
            k.close()

    def _rates(self, services: list[Service], st: State, samples: dict, now: float) -> None:
        try:
            prev = json.loads(self.samples_path.read_text())
        except (FileNotFoundError, ValueError):
            prev = None
        if prev and now - prev.get("t", now) >= 1.0:
            dt = now - prev["t"]
            old = prev.get("s", {})
            for s in services:
                key = str(s.key)
                fill_rates(s, old.get(f"s{st.sids.get(key, 0)}"), dt)
                for d in s.dests:
                    did = st.dests.get(key, {}).get(_ident(d))
                    if did is not None:
                        fill_rates(d, old.get(f"d{did}"), dt)
        if not prev or now - prev.get("t", now) >= 1.0 or now < prev.get("t", 0):
            tmp = self.samples_path.with_suffix(".tmp")
            try:
                tmp.write_text(json.dumps({"t": now, "s": samples}))
                os.replace(tmp, self.samples_path)
            except OSError:
                pass



def _minus(raw: tuple, zero: list | None) -> tuple[int, int, int]:
    if not zero or any(r < z for r, z in zip(raw, zero)):
        return tuple(raw)
    return tuple(r - z for r, z in zip(raw, zero))


def _touched(ops: list[Op]) -> set[str] | None:
    if any(op.kind in ("clear", "set-timeouts") for op in ops):
        return None
    out = set()
    for op in ops:
        key = op.key or (op.service.key if op.service is not None else None)
        if key is not None:
            out.add(str(key))
    return out


def nft_reason(t: Table) -> str | None:
    """Why the table must go to the nft engine (None: XDP does it all)."""
    for svc in t.services.values():
        if svc.key.proto == "fwm":
            return f"service {svc.key} is a firewall-mark service (XDP matches VIP, port and protocol)"
        for d in svc.dests:
            if d.fwd == "masq":
                return f"service {svc.key} has a NAT real server {d.addr}:{d.port} (-m); XDP does Direct Return only"
    return None


def _timeout_ns(st: State, proto: int, closing: bool) -> int:
    tcp, fin, udp = st.timeouts
    return (udp if proto == 17 else fin if closing else tcp) * 10**9


def _live_flows(k: _Maps, st: State, now_ns: int):
    for kb, vb in k.flows.items():
        f = lay.parse_flow(kb, vb)
        left = _timeout_ns(st, f["proto"], f["closing"]) - (now_ns - f["seen"])
        if left > 0:
            f["left"] = left
            yield f


def _flow_counts(k: _Maps, st: State, now_ns: int) -> dict[int, tuple[int, int]]:
    out: dict[int, list] = {}
    for f in _live_flows(k, st, now_ns):
        a = out.setdefault(f["did"], [0, 0])
        if f["proto"] == 6 and not f["closing"]:
            a[0] += 1
        else:
            a[1] += 1
    return {d: (a, i) for d, (a, i) in out.items()}


def _tmpl_items(k: _Maps, st: State, now_ns: int):
    tmo = {}
    for r in st.services:
        s = _unpack(r)
        if s.persistent and str(s.key) in st.sids:
            tmo[st.sids[str(s.key)]] = (s, s.timeout * 10**9)
    for kb, vb in k.templates.items():
        t = lay.parse_tmpl(kb, vb)
        if t["sid"] in tmo:
            left = tmo[t["sid"]][1] - (now_ns - t["seen"])
            if left > 0:
                t["left"] = left
                t["svc"] = tmo[t["sid"]][0]
                yield t


def _tmpl_counts(k: _Maps, st: State, now_ns: int) -> dict[int, int]:
    out: dict[int, int] = {}
    for t in _tmpl_items(k, st, now_ns):
        out[t["did"]] = out.get(t["did"], 0) + 1
    return out


def _flush_templates(k: _Maps, sid: int) -> None:
    for kb in k.templates.keys():
        if int.from_bytes(kb[:4], "little") == sid:
            k.templates.delete(kb)


def _conns(k: _Maps, st: State, now_ns: int) -> list[Conn]:
    owner = st.did_owner()
    sid_of = {v: key for key, v in st.sids.items()}
    out = []
    for f in _live_flows(k, st, now_ns):
        o = owner.get(f["did"])
        if o is None:
            continue
        proto = lay.PROTO_NAME.get(f["proto"], "TCP")
        svc_key = f"{proto} {f['vaddr']}:{f['vport']}"
        if o[0] != svc_key:
            continue
        addr, port = o[1].rsplit(":", 1)
        state = "UDP" if proto == "UDP" else "FIN_WAIT" if f["closing"] else "ESTABLISHED"
        out.append(Conn(proto, f["left"] / 1e9, state, f["caddr"], f["cport"], f["vaddr"], f["vport"],
                        addr, int(port), fwd="gate"))
    for t in _tmpl_items(k, st, now_ns):
        o = owner.get(t["did"])
        if o is None or sid_of.get(t["sid"]) != o[0]:
            continue
        s = t["svc"]
        addr, port = o[1].rsplit(":", 1)
        out.append(Conn("UDP" if s.key.proto == "udp" else "TCP", t["left"] / 1e9, "NONE", t["net"], 0,
                        s.key.addr, s.key.port, addr, int(port), fwd="gate", template=True))
    return out


class _LocalAddrs:
    def __init__(self):
        self._addrs = None

    def __contains__(self, addr) -> bool:
        if self._addrs is None:
            from halb.nft import routing
            self._addrs = routing.local_addrs()
        return addr in self._addrs


def _dest_info(addr: str, locals_) -> list:
    """[addr, ifindex, mac, source mac, local] of a real server: its
    next hop's MAC resolved now (the program asks bpf_fib_lookup first; this
    is its fallback while the kernel's neighbour entry is missing)."""
    if addr in locals_:
        return [addr, 0, None, None, True]
    from pyroute2 import IPRoute
    try:
        with IPRoute() as ip:
            r = ip.route("get", dst=addr)[0]
            oif = r.get_attr("RTA_OIF")
            hop = r.get_attr("RTA_GATEWAY") or addr
            smac = ip.get_links(oif)[0].get_attr("IFLA_ADDRESS")
            mac = _neigh(ip, hop, oif)
            if mac is None:
                try:  # make the kernel resolve it (ARP), then look again
                    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                        s.sendto(b"", (hop, 9))
                except OSError:
                    pass
                deadline = time.monotonic() + 1.0
                while mac is None and time.monotonic() < deadline:
                    time.sleep(0.02)
                    mac = _neigh(ip, hop, oif)
    except Exception as e:  # noqa: BLE001 - netlink errors: no route
        raise IpvsError(f"no route to real server {addr} ({e})") from None
    return [addr, oif, mac, smac, False]


def _neigh(ip, hop: str, oif: int) -> str | None:
    for n in ip.get_neighbours(dst=hop, ifindex=oif):
        mac = n.get_attr("NDA_LLADDR")
        if mac and n["state"] not in (0x20, 0x01):  # NUD_FAILED, NUD_INCOMPLETE
            return mac
    return None


def _interfaces() -> list[tuple[str, int]]:
    """The interfaces the program is attached to: HALB_XDP_IFACES, or every
    Ethernet interface that is up (not lo, bridges or bonds' slaves)."""
    env = os.environ.get("HALB_XDP_IFACES")
    if env:
        out = []
        for name in [x.strip() for x in env.split(",") if x.strip()]:
            try:
                out.append((name, socket.if_nametoindex(name)))
            except OSError:
                raise XdpUnusable(f"HALB_XDP_IFACES names {name}, which does not exist here") from None
        return out
    from pyroute2 import IPRoute
    out = []
    with IPRoute() as ip:
        for link in ip.get_links():
            name = link.get_attr("IFLA_IFNAME")
            info = link.get_attr("IFLA_LINKINFO")
            kind = info.get_attr("IFLA_INFO_KIND") if info else None
            if name == "lo" or not (link["flags"] & 1) or kind in ("bridge", "bond", "vxlan", "dummy"):
                continue
            if link.get_attr("IFLA_MASTER"):
                continue
            if not link.get_attr("IFLA_ADDRESS") or link["ifi_type"] != 1:
                continue
            out.append((name, link["index"]))
    return out


def _precheck(op: Op, i: int) -> None:
    def fail(msg):
        e = IpvsError(msg)
        e.index = i
        raise e
    if op.dest is not None and op.dest.fwd == "ipip":
        fail("forwarding method 'ipip' is not supported by the xdp engine "
             "(this kernel has no ipip tunnels): use -g (gate)")
    key = op.key or (op.service.key if op.service else None)
    if key is not None and key.proto != "fwm" and key.af == 6:
        fail("IPv6 virtual services are not supported by the xdp engine yet (use --engine proxy)")
    if op.dest is not None and ":" in op.dest.addr:
        fail("IPv6 real servers are not supported by the xdp engine yet (use --engine proxy)")


def check_namespace() -> None:
    """The nft engine's guard (HALB_NFT_HOST_GUARD=1, set by the test suite):
    never attach XDP to this machine's own interfaces from a test."""
    from halb.nft.engine import in_initial_netns
    if (os.environ.get("HALB_NFT_HOST_GUARD") == "1" and os.environ.get("HALB_NFT_HOST") != "1"
            and in_initial_netns()):
        raise EngineUnavailable(
            "the xdp engine would attach to this machine's own interfaces and HALB_NFT_HOST_GUARD=1 "
            "forbids it; run it inside a network namespace (halb lab exec NODE -- ...) or set HALB_NFT_HOST=1")


def connect(ctx: Context) -> Engine:
    """The xdp engine, or the nft engine with one log line when XDP cannot
    run here (no built program and no clang, no libbpf)."""
    if not has_net_admin():
        raise EngineUnavailable("the xdp engine is not available: it needs CAP_NET_ADMIN and CAP_BPF "
                                "(run as root), or use --engine proxy")
    from halb.xdp import libbpf
    from halb.xdp.build import ensure_object
    try:
        libbpf.lib()
        if not os.environ.get("HALB_XDP_OBJ"):
            ensure_object()
    except XdpError as e:
        eng = XdpEngine(ctx)
        try:
            st = eng._load()
        except HalbError:
            st = State()
        if not st.prog_id:  # nothing of ours loaded: the nft engine, said once per command
            log.warning(f"halb xdp: {e}: {NFT_NOTE}")
            from halb.nft.engine import connect as nft_connect
            return nft_connect(ctx)
    return XdpEngine(ctx)
