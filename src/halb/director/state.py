"""The director's decisions, as a pure state machine (no I/O, time passed in).

It follows ldirectord's service_set/_service_up/_service_down/_remove_service/
_restore_service/fallback_on/fallback_off logic:

- a real server starts "down" (absent, or weight 0 when quiescent) and is
  added with its configured weight after its first successful check;
- a failure while up counts towards failurecount ("Soft failure ... 1/3");
  reaching it takes the server out: deleted, or weight 0 when quiescent;
- any success resets the count and restores the server;
- when no real server of a virtual is up, its fallback server is added
  (weight 1) and fallbackcommand runs with "start"; when one comes back the
  fallback is removed and the command runs with "stop";
- e-mail alerts follow emailalert/emailalertstatus/emailalertfreq.

The core keeps its own view of the dests it manages in the table; it emits
`Edit` actions (engine ops) together with the log lines and alerts that go
with them. The shell executes them and calls `resync` if an edit is refused.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from halb.director.config import (STATUS_NAMES, STATUS_RELOADING, STATUS_RUNNING,
                                  STATUS_STARTING, STATUS_STOPPING, Config, Real, Virtual)
from halb.model import Dest, Op, Service, ServiceKey

# --------------------------------------------------------------------------
# actions


@dataclass
class Edit:
    ops: list[Op]
    msg: str  # logged once the edit is applied


@dataclass
class Log:
    msg: str
    debug: bool = False


@dataclass
class Alert:
    subject: str
    to: str
    smtp: str | None
    status: str  # daemon status name, for the mail body


@dataclass
class Command:
    cmd: str  # a shell command line (fallbackcommand), as ldirectord runs it


@dataclass
class Monitor:
    path: str
    real: str
    state: str
    msg: str


Action = Edit | Log | Alert | Command | Monitor


# --------------------------------------------------------------------------


def service_key(v: Virtual) -> ServiceKey:
    if v.protocol == "fwm":
        return ServiceKey("fwm", fwmark=v.fwmark, af=v.af)
    return ServiceKey(v.protocol, v.addr, v.port)


def service_of(v: Virtual) -> Service:
    persistent = v.persistent is not None
    netmask = v.netmask if v.netmask is not None else ("255.255.255.255" if v.af == 4 else "128")
    return Service(service_key(v), scheduler=v.scheduler, persistent=persistent,
                   timeout=v.persistent or 0, netmask=netmask, flags=v.schedflags, ops=v.ops)


def _svc_sig(s: Service) -> tuple:
    return (s.scheduler, s.persistent, s.timeout, s.netmask if s.persistent else "", tuple(s.flags), s.ops)


def fmt_hp(addr: str, port: int) -> str:
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


@dataclass
class RealState:
    real: Real
    port: int  # port in the table
    up: bool = False
    failcount: int = 0
    num_connects: int = 0  # combined checks: connects since the last negotiate
    last_check: float | None = None
    last_ok: bool | None = None
    last_msg: str = ""
    since: float = 0.0  # time of the last transition

    @property
    def key(self) -> tuple[str, int]:
        return (self.real.addr, self.port)


@dataclass
class VirtualState:
    v: Virtual
    reals: dict[tuple[str, int], RealState] = field(default_factory=dict)
    fallback_up: bool = False
    fbcmd: str | None = None

    @property
    def key(self) -> ServiceKey:
        return service_key(self.v)

    def any_up(self) -> bool:
        return any(r.up for r in self.reals.values())


class DirectorCore:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.status = STATUS_STARTING
        self.vs: dict[str, VirtualState] = {}
        # what the table holds for the services we manage: key -> {(addr, port): weight}
        self.view: dict[ServiceKey, dict[tuple[str, int], int]] = {}
        # pending repeated alerts: id -> (virtual id, last alert time)
        self.email_pending: dict[str, tuple[str, float]] = {}
        # emit the debug lines (Enabled/Disabled) also when nothing changes
        self.verbose = True

    # -- helpers -----------------------------------------------------------
    def _vstr(self, vs: VirtualState) -> str:
        return vs.v.ident

    def _alert(self, out: list, vs: VirtualState, subject: str, rservice: str, when: float) -> None:
        v = vs.v
        eid = f"{rservice} ({v.ident})"
        if when == 0 or not v.emailalertfreq:
            self.email_pending.pop(eid, None)
        else:
            self.email_pending[eid] = (v.id, when)
        if not (self.status & v.emailalertstatus):
            return
        if not v.emailalert:
            return
        out.append(Log(f"emailalert: {subject}"))
        out.append(Alert(subject, v.emailalert, v.smtp, STATUS_NAMES.get(self.status, "unknown")))

    def _dest(self, vs: VirtualState, rs: RealState, weight: int) -> Dest:
        r = rs.real
        return Dest(r.addr, rs.port, r.fwd, weight, r.u_threshold, r.l_threshold)

    def _restore(self, out: list, vs: VirtualState, dest: Dest, tag: str) -> None:
        """_restore_service: add the dest, or restore its weight."""
        view = self.view.setdefault(vs.key, {})
        rserv = fmt_hp(dest.addr, dest.port)
        log_args = f"{tag} server: {rserv} ({vs.v.ident})"
        if dest.ident in view:
            if view[dest.ident] == dest.weight:
                return
            out.append(Edit([Op("edit-dest", key=vs.key, dest=dest)],
                            f"Restored {log_args} (Weight set to {dest.weight})"))
            view[dest.ident] = dest.weight
            self._alert(out, vs, f"Restored {log_args} (Weight set to {dest.weight})", rserv, 0)
        else:
            out.append(Edit([Op("add-dest", key=vs.key, dest=dest)],
                            f"Added {log_args} (Weight set to {dest.weight})"))
            view[dest.ident] = dest.weight
            self._alert(out, vs, f"Added {log_args} (Weight set to {dest.weight})", rserv, 0)

    def _remove(self, out: list, vs: VirtualState, dest: Dest, tag: str, now: float,
                initial: bool = False) -> None:
        """_remove_service: delete the dest, or set its weight to 0 (quiescent)."""
        view = self.view.setdefault(vs.key, {})
        rserv = fmt_hp(dest.addr, dest.port)
        log_args = f"{tag} server: {rserv} ({vs.v.ident})"
        quiescent = tag != "fallback" and vs.v.quiescent
        present = dest.ident in view
        if quiescent:
            if present and view[dest.ident] == 0:
                return
            d0 = Dest(dest.addr, dest.port, dest.fwd, 0, dest.u_threshold, dest.l_threshold)
            if present:
                out.append(Edit([Op("edit-dest", key=vs.key, dest=d0)],
                                f"Quiescent {log_args} (Weight set to 0)"))
                view[dest.ident] = 0
                self._alert(out, vs, f"Quiescent {log_args} (Weight set to 0)", rserv, now)
            elif initial or self.cfg.readdquiescent:
                # at start a quiescent server is put in the table with weight
                # 0; later only readdquiescent=yes re-adds one removed by hand
                out.append(Edit([Op("add-dest", key=vs.key, dest=d0)],
                                f"Readd Quiescent {log_args} (Weight set to 0)"))
                view[dest.ident] = 0
                self._alert(out, vs, f"Quiescent {log_args} (Weight set to 0)", rserv, now)
            return
        if not present:
            return
        out.append(Edit([Op("del-dest", key=vs.key, dest=Dest(dest.addr, dest.port))],
                        f"Deleted {log_args}"))
        del view[dest.ident]
        self._alert(out, vs, f"Deleted {log_args}", rserv, 0 if tag == "fallback" else now)

    def _fallback_dest(self, vs: VirtualState) -> Dest | None:
        fb = vs.v.fallback
        if fb is None:
            return None
        return Dest(fb.addr, fb.port if fb.port is not None else vs.v.port, fb.fwd, 1)

    def _fallback_cmd(self, out: list, vs: VirtualState, status: str) -> None:
        if vs.fbcmd == status:
            return
        vs.fbcmd = status
        if vs.v.fallbackcommand:
            v = vs.v
            out.append(Command(f"{v.fallbackcommand} {status} {v.addr or v.fwmark}:{v.port} {v.protocol}"))

    def _fallback_on(self, out: list, vs: VirtualState) -> None:
        if vs.v.checktype == "off":
            return
        fb = self._fallback_dest(vs)
        if fb is not None and not vs.any_up() and not vs.fallback_up:
            vs.fallback_up = True
            self._restore(out, vs, fb, "fallback")
        if not vs.any_up():
            self._fallback_cmd(out, vs, "start")

    def _fallback_off(self, out: list, vs: VirtualState, now: float) -> None:
        fb = self._fallback_dest(vs)
        if fb is not None and vs.fallback_up and vs.any_up():
            vs.fallback_up = False
            self._remove(out, vs, fb, "fallback", now)
        if vs.any_up():
            self._fallback_cmd(out, vs, "stop")

    def _initial_real(self, out: list, vs: VirtualState, rs: RealState, existing: dict | None, now: float) -> None:
        """ld_start for one real: up if the table already has it with a weight,
        else down (absent, or weight 0 when quiescent)."""
        w = existing.get(rs.key) if existing else None
        if w is not None and w > 0 and vs.v.checktype != "off":
            rs.up = True
            rs.since = now
            self._restore(out, vs, self._dest(vs, rs, rs.real.weight), "real")
        else:
            rs.up = False
            rs.since = now
            if vs.v.checktype != "off" or w is not None:
                self._remove(out, vs, self._dest(vs, rs, rs.real.weight), "real", now, initial=True)

    def _new_vstate(self, v: Virtual) -> VirtualState:
        vs = VirtualState(v)
        for r in v.reals:
            rs = RealState(r, v.real_port(r))
            vs.reals[rs.key] = rs
        return vs

    def _setup_virtual(self, out: list, vs: VirtualState, live: dict[ServiceKey, Service], tag: str,
                       now: float) -> None:
        key = vs.key
        svc = service_of(vs.v)
        existing_dests: dict[tuple[str, int], int] = {}
        if key in live:
            old = live[key]
            existing_dests = {(d.addr, d.port): d.weight for d in old.dests}
            if _svc_sig(old) != _svc_sig(svc):
                out.append(Edit([Op("edit-service", service=svc)], f"Changed virtual server: {vs.v.ident}"))
            self.view[key] = dict(existing_dests)
        else:
            out.append(Edit([Op("add-service", service=svc)], f"Added virtual server: {vs.v.ident}"))
            self.view[key] = {}
        fb = self._fallback_dest(vs)
        for ident in list(existing_dests):
            if ident in vs.reals or (fb is not None and fb.ident == ident):
                continue
            rserv = fmt_hp(*ident)
            msg = f"Purged real server ({tag}): {rserv} ({vs.v.ident})"
            out.append(Edit([Op("del-dest", key=key, dest=Dest(*ident))], msg))
            self.view[key].pop(ident, None)
            self._alert(out, vs, msg, rserv, 0)
        if fb is not None and fb.ident in existing_dests and fb.ident not in vs.reals:
            vs.fallback_up = True
        for rs in vs.reals.values():
            self._initial_real(out, vs, rs, existing_dests, now)
        if vs.any_up():
            self._fallback_off(out, vs, now)
        else:
            self._fallback_on(out, vs)

    # -- events --------------------------------------------------------------
    def start(self, live_services: list[Service], now: float) -> list[Action]:
        """Create/refresh every virtual service (ld_start)."""
        self.status = STATUS_STARTING
        out: list[Action] = []
        live = {s.key: s for s in live_services}
        for v in self.cfg.virtuals:
            vs = self._new_vstate(v)
            self.vs[v.id] = vs
            self._setup_virtual(out, vs, live, "start", now)
        self.status = STATUS_RUNNING
        return out

    def result(self, vid: str, rkey: tuple[str, int], ok: bool, now: float, msg: str = "",
               force: bool = False) -> list[Action]:
        """A check finished (or maintenance forced the state when force=True)."""
        out: list[Action] = []
        vs = self.vs.get(vid)
        if vs is None or rkey not in vs.reals:
            return out  # a result from a check that a reload removed
        rs = vs.reals[rkey]
        rs.last_check, rs.last_ok, rs.last_msg = now, ok, msg
        if not force and not vs.v.monitorfile and not self.verbose:
            # steady state (the common case, thousands per second): no decision
            if ok and rs.up and rs.failcount == 0:
                return out
            if not ok and not rs.up:
                return out
        real_id = f"{fmt_hp(*rkey)}"
        log_str = f"real server={real_id} (virtual={vs.v.id})"
        if vs.v.monitorfile:
            out.append(Monitor(vs.v.monitorfile, real_id, "up" if ok else "down", msg or "-"))
        if ok:
            if rs.failcount > 0:
                out.append(Log(f"Resetting soft failure count: {real_id} ({vs.v.id})"))
            rs.failcount = 0
            if not rs.up or force:
                rs.up = True
                rs.since = now
                self._restore(out, vs, self._dest(vs, rs, rs.real.weight), "real")
                self._fallback_off(out, vs, now)
            out.append(Log(f"Enabled  {log_str}", debug=True))
            return out
        if not rs.up and not force:
            out.append(Log(f"Disabled {log_str}", debug=True))
            return out
        rs.failcount += 1
        if not force and rs.up and rs.failcount < vs.v.failurecount:
            out.append(Log(f"Soft failure real server: {real_id} ({vs.v.id}) failure "
                           f"{rs.failcount}/{vs.v.failurecount}"))
            return out
        was_up = rs.up
        rs.up = False
        if was_up:
            rs.since = now
        self._remove(out, vs, self._dest(vs, rs, rs.real.weight), "real", now)
        self._fallback_on(out, vs)
        out.append(Log(f"Disabled {log_str}", debug=True))
        return out

    def tick(self, now: float) -> list[Action]:
        """Repeat alerts for servers still inaccessible (ld_emailalert_resend)."""
        out: list[Action] = []
        for eid, (vid, when) in list(self.email_pending.items()):
            vs = self.vs.get(vid)
            if vs is None:
                del self.email_pending[eid]
                continue
            if now - when < vs.v.emailalertfreq:
                continue
            rserv = eid.split(" ", 1)[0]
            self._alert(out, vs, f"Inaccessible real server: {eid}", rserv, now)
        return out

    def reload(self, cfg: Config, live_services: list[Service], now: float) -> list[Action]:
        """Apply a new configuration: only the differences; healthy servers stay."""
        self.status = STATUS_RELOADING
        out: list[Action] = []
        live = {s.key: s for s in live_services}
        old = self.vs
        self.vs = {}
        self.cfg = cfg
        new_ids = {v.id for v in cfg.virtuals}
        for vid, vs in old.items():
            if vid not in new_ids:
                out.append(Edit([Op("del-service", key=vs.key)], f"Purged virtual server (reload): {vs.v.ident}"))
                self.view.pop(vs.key, None)
                for rs in vs.reals.values():
                    if rs.up:
                        rserv = fmt_hp(*rs.key)
                        self._alert(out, vs, f"Purged real server (reload): {rserv} ({vs.v.ident})", rserv, 0)
        for v in cfg.virtuals:
            prev = old.get(v.id)
            if prev is None:
                vs = self._new_vstate(v)
                self.vs[v.id] = vs
                self._setup_virtual(out, vs, live, "reload", now)
                continue
            vs = VirtualState(v, fallback_up=prev.fallback_up, fbcmd=prev.fbcmd)
            self.vs[v.id] = vs
            svc = service_of(v)
            if _svc_sig(service_of(prev.v)) != _svc_sig(svc):
                out.append(Edit([Op("edit-service", service=svc)], f"Changed virtual server: {v.ident}"))
            view = self.view.setdefault(vs.key, {})
            # the fallback changed: take the old one out
            old_fb, new_fb = self._fallback_dest(prev), self._fallback_dest(vs)
            if prev.fallback_up and (new_fb is None or old_fb.ident != new_fb.ident or old_fb.fwd != new_fb.fwd):
                if old_fb.ident in view and old_fb.ident not in {(r.addr, v.real_port(r)) for r in v.reals}:
                    out.append(Edit([Op("del-dest", key=vs.key, dest=Dest(*old_fb.ident))],
                                    f"Deleted fallback server: {fmt_hp(*old_fb.ident)} ({v.ident})"))
                    view.pop(old_fb.ident, None)
                vs.fallback_up = False
            new_keys = set()
            for r in v.reals:
                rs = RealState(r, v.real_port(r))
                new_keys.add(rs.key)
                p = prev.reals.get(rs.key)
                vs.reals[rs.key] = rs
                if p is None:
                    self._initial_real(out, vs, rs, None, now)
                    continue
                rs.up, rs.failcount, rs.since = p.up, p.failcount, p.since
                rs.last_check, rs.last_ok, rs.last_msg = p.last_check, p.last_ok, p.last_msg
                if v.checktype == "off":
                    if rs.key in view:
                        self._remove(out, vs, self._dest(vs, rs, r.weight), "real", now)
                    rs.up = False
                    continue
                changed = (p.real.fwd, p.real.weight, p.real.u_threshold, p.real.l_threshold) != \
                    (r.fwd, r.weight, r.u_threshold, r.l_threshold)
                if rs.up:
                    if changed and rs.key in view:
                        d = self._dest(vs, rs, r.weight)
                        out.append(Edit([Op("edit-dest", key=vs.key, dest=d)],
                                        f"Changed real server: {fmt_hp(*rs.key)} ({v.ident}) (Weight set to {r.weight})"))
                        view[rs.key] = r.weight
                    elif rs.key not in view:
                        self._restore(out, vs, self._dest(vs, rs, r.weight), "real")
                else:
                    if rs.key in view and not v.quiescent:
                        self._remove(out, vs, self._dest(vs, rs, r.weight), "real", now)
                    elif v.quiescent:
                        if rs.key in view and changed:
                            d = self._dest(vs, rs, 0)
                            out.append(Edit([Op("edit-dest", key=vs.key, dest=d)],
                                            f"Changed real server: {fmt_hp(*rs.key)} ({v.ident}) (Weight set to 0)"))
                        elif rs.key not in view:
                            self._remove(out, vs, self._dest(vs, rs, r.weight), "real", now, initial=True)
            for k, p in prev.reals.items():
                if k in new_keys:
                    continue
                if k in view and not (new_fb is not None and new_fb.ident == k and vs.fallback_up):
                    msg = f"Purged real server (reload): {fmt_hp(*k)} ({v.ident})"
                    out.append(Edit([Op("del-dest", key=vs.key, dest=Dest(*k))], msg))
                    view.pop(k, None)
                    self._alert(out, vs, msg, fmt_hp(*k), 0)
            if vs.any_up():
                self._fallback_off(out, vs, now)
            else:
                self._fallback_on(out, vs)
        self.status = STATUS_RUNNING
        return out

    def stop(self, now: float) -> list[Action]:
        """ld_stop: remove every virtual service unless cleanstop=no."""
        self.status = STATUS_STOPPING
        out: list[Action] = []
        for vs in self.vs.values():
            if not vs.v.cleanstop:
                out.append(Log(f"Leaving virtual server {vs.v.ident} in place (cleanstop=no)"))
                continue
            for rs in vs.reals.values():
                if rs.up:
                    rserv = fmt_hp(*rs.key)
                    self._alert(out, vs, f"Purged real server (stop): {rserv} ({vs.v.ident})", rserv, 0)
            out.append(Edit([Op("del-service", key=vs.key)], f"Purged virtual server (stop): {vs.v.ident}"))
            self.view.pop(vs.key, None)
        return out

    def resync(self, live_services: list[Service]) -> None:
        """After a refused edit: take the engine's table as the truth."""
        live = {s.key: s for s in live_services}
        for vs in self.vs.values():
            svc = live.get(vs.key)
            self.view[vs.key] = {(d.addr, d.port): d.weight for d in svc.dests} if svc else {}

    def reconcile(self, live_services: list[Service], now: float) -> list[Action]:
        """Re-create any of our virtual services missing from the table (the
        engine restarted, or its table was flushed) with what should be in it:
        the servers that are up, quiescent ones at weight 0, the fallback.
        Real servers edited by hand inside a present service are left alone."""
        out: list[Action] = []
        live = {s.key for s in live_services}
        for vs in self.vs.values():
            if vs.key in live:
                continue
            out.append(Edit([Op("add-service", service=service_of(vs.v))],
                            f"Virtual server {vs.v.ident} missing from the table: re-created"))
            view = self.view[vs.key] = {}
            for rs in vs.reals.values():
                if vs.v.checktype == "off":
                    continue
                w = rs.real.weight if rs.up else (0 if vs.v.quiescent else None)
                if w is None:
                    continue
                d = self._dest(vs, rs, w)
                out.append(Edit([Op("add-dest", key=vs.key, dest=d)],
                                f"Re-added real server: {fmt_hp(*rs.key)} ({vs.v.ident}) (Weight set to {w})"))
                view[rs.key] = w
            fb = self._fallback_dest(vs)
            if fb is not None and vs.fallback_up and fb.ident not in view:
                out.append(Edit([Op("add-dest", key=vs.key, dest=fb)],
                                f"Re-added fallback server: {fmt_hp(*fb.ident)} ({vs.v.ident}) (Weight set to 1)"))
                view[fb.ident] = 1
        return out

    # -- state for `status` ---------------------------------------------------
    def snapshot(self) -> dict:
        return {
            "status": STATUS_NAMES.get(self.status, "unknown"),
            "virtuals": [
                {
                    "virtual": vs.v.ident, "protocol": vs.v.protocol, "checktype": vs.v.checktype,
                    "service": vs.v.service, "fallback_up": vs.fallback_up,
                    "reals": [
                        {"real": fmt_hp(*rs.key), "up": rs.up, "failcount": rs.failcount,
                         "weight": self.view.get(vs.key, {}).get(rs.key),
                         "last_check": rs.last_check, "last_ok": rs.last_ok, "last_msg": rs.last_msg}
                        for rs in vs.reals.values()
                    ],
                }
                for vs in self.vs.values()
            ],
        }
