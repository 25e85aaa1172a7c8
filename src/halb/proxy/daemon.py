"""`halb proxy`: the user-space engine.

One asyncio (uvloop) process holding the virtual-server table and relaying
TCP and UDP for every virtual service. It binds each VIP:port itself
(IP_FREEBIND: it may bind before the VIP is configured; SO_REUSEADDR), picks
the real server of every new connection with the service's scheduler
(halb.sched), honours persistence (-p/-M), and keeps what `ipvsadm` shows:
a connection table with IPVS's TCP states and countdowns, per-service and
per-server counters and rates, active/inactive connection counts.

Data path (TCP, tcp.py): the relayed sockets live in the daemon's own epoll
set (Poller), watched by the uvloop loop as one descriptor, so a connection
costs one epoll_ctl per registration rather than a libuv handle. Small reads
(requests, short answers) are copied with one read and one write, cheaper
than two splices for a few hundred bytes; once a read brings 16 KiB or more
the direction switches to splice(2), socket -> pipe -> socket with
SPLICE_F_MOVE|SPLICE_F_NONBLOCK, and the bytes of a large transfer never
enter Python (its pipe grows to 1 MiB). It returns to copying when reads stay
small (8 in a row under 4 KiB). --no-splice copies everything (to measure the
difference); a socket where splice fails (EINVAL) is copied too. The real
server is connected without waiting for its handshake: early client bytes
wait in the copy path until the socket is writable. UDP: udp.py. Latency
settings of the process (scheduler slice, GC): tuning.py.

Counters: bytes are the payload bytes relayed (exact, from splice's return
values; IPVS counts IP packet lengths, headers included); packets are the
client-side socket's TCP_INFO tcpi_segs_in / tcpi_segs_out (what the client
sent / received, handshake and ACKs included). They are folded into the
service and server counters when a connection ends and, while it lasts, once
every 2 s by a sweep spread over the 0.1 s ticks (never a pass over all
connections at once, which would stall every relay behind it).

Connection states follow IPVS's names: SYN_RECV while the real server is
being connected, ESTABLISHED, FIN_WAIT once one side has closed (expires
after --set tcpfin), TIME_WAIT after both sides closed (kept 120 s like the
kernel, counted as inactive), CLOSE after a reset or refused connect (10 s).
ESTABLISHED connections idle for longer than --set tcp are reset, as the
kernel drops their entry. UDP flows are connected per client address:port,
expire after --set udp of silence and are counted inactive (as IPVS does).

Control: JSON lines on a unix socket (run dir / proxy.sock, mode 0600):
{"cmd": "execute", "ops": [...]}, "services", "connections", "timeouts",
"status", "stop"; replies {"ok": true, ...} or {"ok": false, "error": "..."}.
"""
from __future__ import annotations

import asyncio
import collections
import copy
import errno
import fcntl
import json
import logging
import os
import signal
import socket
import time

from halb import logs, sdnotify
from halb.errors import ConfigError, HalbError, IpvsError
from halb.model import Conn, Op, Stats, Table, fmt_hostport, op_from_dict, to_dict
from halb.proxy import tuning
from halb.proxy.limits import Limits, open_fds, raise_nofile
from halb.proxy.estimator import INTERVAL
from halb.proxy.persist import PersistTable, client_network
from halb.proxy.runtime import DestRT, SvcRT, bind_socket, conn_inactive, inactive_gone
from halb.proxy.tcp import (CLOSE_TIMEOUT, LINGER_MAX, PIPE_POOL_MAX, SPLICE, SYN_RECV_TIMEOUT,
                            TIME_WAIT_TIMEOUT, Poller, TcpConn, TcpListener, set_rst)
from halb.proxy.udp import UdpFlow, UdpListener
from halb.sched import Packet, carry_overload, make_scheduler

log = logging.getLogger("halb.proxy")

TICK = 0.1             # seconds between two rounds of periodic work
HOUSEKEEP_TICKS = 5    # UDP flows and persistence templates expire every 0.5 s
SWEEP_TICKS = 10       # a round of TCP accounting and timeouts is spread over 1 s (of every INTERVAL)


def _supported_check(ops: list[Op]) -> None:
    """Refuse what only the kernel engine can do, naming it."""
    for i, op in enumerate(ops):
        err = None
        if op.kind in ("add-dest", "edit-dest") and op.dest is not None and op.dest.fwd in ("gate", "ipip"):
            what = "Direct Return (gate, -g)" if op.dest.fwd == "gate" else "IP tunnelling (ipip, -i)"
            err = (f"forwarding method '{op.dest.fwd}' is not supported by the proxy engine: "
                   f"{what} needs the kernel engine (--engine nft); the proxy relays with masq (-m)")
        elif op.kind in ("add-service", "edit-service") and op.service is not None:
            k = op.service.key
            if k.proto == "fwm":
                err = (f"fwmark services ({k}) need the nft engine (--engine nft): the proxy engine "
                       f"relays only TCP/UDP VIP:port services")
            elif k.port == 0:
                err = (f"{k}: port 0 (all ports) services need the nft engine (--engine nft): the proxy "
                       f"engine binds one VIP:port per service")
            elif op.service.ops:
                err = "one-packet scheduling (-o) is not supported by the proxy engine (use --engine nft)"
        if err:
            e = IpvsError(err)
            e.index = i
            raise e


# --------------------------------------------------------------------------
# the daemon


class ProxyDaemon:
    def __init__(self, node: str, run_dir, splice: bool = True, maxconn: int | None = None,
                 maxconn_per_source: int | None = None):
        self.node = node
        self.maxconn_arg = (maxconn, maxconn_per_source)
        self.limits = Limits(1 << 30, 0)  # replaced in serve(), once the loop's descriptors are open
        self.udp_lru: collections.OrderedDict = collections.OrderedDict()  # every UDP flow, least recent first
        self.src_udp: dict[str, dict] = {}  # client address -> its UDP flows, oldest first
        self.run_dir = run_dir
        self.splice = bool(splice and SPLICE is not None)
        self.table = Table(default_fwd="masq")
        self.table.allowed_fwd = ("masq",)
        self.table.engine_name = "proxy"
        self.svcs: dict = {}
        self.tcp_conns: set[TcpConn] = set()
        self.persist = PersistTable()
        self.lingering = {"TIME_WAIT": collections.deque(), "CLOSE": collections.deque()}
        self.pipes: list = []
        self.grown = 0
        self.spare_fd = -1  # kept to refuse clients cleanly when out of descriptors
        self.take_spare_fd()
        self.bytes_spliced = 0  # relayed bytes of ended connections, by data path
        self.bytes_copied = 0
        self.loop: asyncio.AbstractEventLoop | None = None
        self.started = time.time()
        self.stopping: asyncio.Event | None = None
        self._limited: dict[str, float] = {}
        self._last_est = 0.0
        self._ticks = 0
        self._sweep: list[TcpConn] = []  # connections left to visit in this round
        self._sweep_next = 0.0
        self._sweep_step = 1
        self._clients: dict = {}
        self.sched_slice_us = 0  # set by run_daemon (tuning.apply)

    # -- helpers -------------------------------------------------------------
    def log_limited(self, what: str, msg: str) -> None:
        now = time.monotonic()
        if now - self._limited.get(what, -1e9) >= 1.0:
            self._limited[what] = now
            log.warning(msg)

    def take_spare_fd(self) -> None:
        try:
            self.spare_fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            self.spare_fd = -1

    def get_pipe(self):
        if self.pipes:
            return self.pipes.pop()
        if not self.limits.fit(2):  # pipes never eat into the control socket's reserve
            raise OSError(errno.EMFILE, "descriptor budget reached")
        pipe = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.limits.fds += 2
        return pipe

    def put_pipe(self, pipe, clean: bool) -> None:
        if clean and len(self.pipes) < PIPE_POOL_MAX:
            self.pipes.append(pipe)
        else:
            os.close(pipe[0])
            os.close(pipe[1])
            self.limits.fds -= 2

    def refuse(self, why: str, addr: str, svc) -> None:
        self.limits.count_refusal(why)
        self.log_limited("limit-" + why, f"{svc.key}: {self.limits.message(why, addr)}")

    def linger(self, conn: TcpConn, state: str) -> None:
        q = self.lingering[state]
        timeout = TIME_WAIT_TIMEOUT if state == "TIME_WAIT" else CLOSE_TIMEOUT
        q.append((self.loop.time() + timeout, conn.svc.key, conn.caddr, conn.cport, conn.daddr,
                  conn.dport, conn.drt))
        if len(q) > LINGER_MAX:
            inactive_gone(q.popleft()[-1])

    # -- scheduling ----------------------------------------------------------
    def choose(self, svc: SvcRT, caddr: str, cport: int, proto: str, now: float):
        """(DestRT, template or None) for a new connection, or (None, None)."""
        cfg = svc.cfg
        tpl = None
        if cfg.persistent:
            cnet = client_network(caddr, cfg.netmask)
            tpl = self.persist.lookup(svc.key, cnet, now, cfg.timeout)
            if tpl is not None and (tpl.dest.removed or tpl.dest.svc is not svc):
                self._drop_template(tpl)
                tpl = None
            if tpl is None:
                drt = self._schedule(svc, caddr, cport, proto)
                if drt is None:
                    return None, None
                tpl = self.persist.create(svc.key, cnet, drt, now)
                drt.dest.persistconns += 1
            self.persist.use(tpl, now)
            drt = tpl.dest
        else:
            drt = self._schedule(svc, caddr, cport, proto)
            if drt is None:
                return None, None
        svc.stats.conns += 1
        drt.dest.stats.conns += 1
        return drt, tpl

    def _schedule(self, svc: SvcRT, caddr: str, cport: int, proto: str) -> DestRT | None:
        """The scheduler's pick, or None (logged at most once a second per service)."""
        d = svc.sched.schedule(svc.dlist, Packet(caddr, cport, svc.key.addr, svc.key.port, proto))
        if d is not None:
            return svc.by_dest(d)
        now = time.monotonic()
        if now - svc.nodest_logged >= 1.0:
            svc.nodest_logged = now
            log.warning("%s: %s - no destination available", svc.cfg.scheduler, svc.key)
        return None

    def _drop_template(self, tpl) -> None:
        self.persist.drop(tpl)
        tpl.dest.dest.persistconns -= 1

    def new_tcp(self, svc: SvcRT, csock, caddr) -> None:
        why = self.limits.check(caddr[0], 2)
        if why == "maxconn" or why == "fds":
            # an idle UDP flow gives its place before a TCP client is refused
            if self.udp_lru and self._evict(next(iter(self.udp_lru))) and self.limits.check(caddr[0], 2) is None:
                why = None
        if why is not None:
            self.refuse(why, caddr[0], svc)
            set_rst(csock)
            csock.close()
            return
        drt, tpl = self.choose(svc, caddr[0], caddr[1], "tcp", self.loop.time())
        if drt is None:
            set_rst(csock)
            csock.close()
            return
        conn = TcpConn(self, svc, drt, csock, caddr, tpl)
        self.tcp_conns.add(conn)
        self.limits.opened(conn.caddr, 2)
        conn.start()

    def tcp_gone(self, conn) -> None:
        """A relay ended (TcpConn.finish): its descriptors and its place are free."""
        if conn in self.tcp_conns:
            self.tcp_conns.discard(conn)
            self.limits.closed(conn.caddr, 2)

    def _evict(self, flow) -> bool:
        self.limits.evicted += 1
        self.log_limited("udp-evict", f"{flow.svc.key}: UDP flow table full (maxconn {self.limits.maxconn}, "
                                      f"per source {self.limits.per_source}): least recently used flows evicted")
        self.close_flow(flow, self.loop.time())
        return True

    def _udp_room(self, svc, addr: str) -> bool:
        """Make room for a new UDP flow from addr (evicting least recently used
        flows: that client's own at its per-source cap); False if none can be made."""
        lim = self.limits
        for _ in range(3):
            why = lim.check(addr, 1)
            if why is None:
                return True
            if why == "source":
                mine = self.src_udp.get(addr)
                if not mine:
                    break
                self._evict(next(iter(mine)))
            elif self.udp_lru:
                self._evict(next(iter(self.udp_lru)))
            else:
                break
        why = lim.check(addr, 1)
        if why is None:
            return True
        self.refuse(why, addr, svc)
        return False

    def new_udp_flow(self, svc: SvcRT, caddr, now: float):
        if not self._udp_room(svc, caddr[0]):
            return None
        drt, tpl = self.choose(svc, caddr[0], caddr[1], "udp", now)
        if drt is None:
            return None
        d = drt.dest
        fam = socket.AF_INET6 if ":" in d.addr else socket.AF_INET
        s = None
        try:
            s = socket.socket(fam, socket.SOCK_DGRAM)
            s.setblocking(False)
            s.connect((d.addr, d.port))
        except OSError as e:
            if s is not None:
                s.close()
            self.log_limited("udp", f"{svc.key}: cannot reach {fmt_hostport(d.addr, d.port)}: {e.strerror}")
            if tpl is not None:
                self.persist.release(tpl, now)
            return None
        flow = UdpFlow(svc, drt, caddr, s, now, tpl)
        svc.flows[caddr] = flow
        self.udp_lru[flow] = None
        self.src_udp.setdefault(caddr[0], {})[flow] = None
        self.limits.opened(caddr[0], 1)
        conn_inactive(drt)  # IPVS counts UDP entries as inactive
        listener = svc.listener
        self.loop.add_reader(flow.fd, listener.on_reply, flow)
        return flow

    def close_flow(self, flow: UdpFlow, now: float) -> None:
        self.loop.remove_reader(flow.fd)
        flow.sock.close()
        flow.svc.flows.pop(flow.caddr, None)
        if self.udp_lru.pop(flow, False) is None:
            self.limits.closed(flow.caddr[0], 1)
            mine = self.src_udp.get(flow.caddr[0])
            if mine is not None:
                mine.pop(flow, None)
                if not mine:
                    del self.src_udp[flow.caddr[0]]
        inactive_gone(flow.drt)
        if flow.tpl is not None:
            self.persist.release(flow.tpl, now)

    # -- the table -----------------------------------------------------------
    def execute(self, ops: list[Op]) -> None:
        _supported_check(ops)
        new = self.table.apply(ops)
        old_keys = set(self.table.services)
        new_keys = set(new.services)
        added = [k for k in new.services if k not in old_keys]
        removed = [k for k in self.table.services if k not in new_keys]
        opened = {}
        try:
            for k in added:
                try:
                    opened[k] = bind_socket(k)
                except OSError as e:
                    hint = " (ports below 1024 need root or CAP_NET_BIND_SERVICE)" \
                        if e.errno == errno.EACCES and k.port < 1024 else ""
                    raise IpvsError(f"cannot bind {k}: {e.strerror}{hint}") from None
            scheds = {}
            for k, cfg in new.services.items():
                svc = self.svcs.get(k)
                if svc is None or svc.sig is None or svc.sig[0] != (cfg.scheduler, cfg.flags):
                    scheds[k] = make_scheduler(cfg)
        except IpvsError:
            for s in opened.values():
                s.close()
            raise
        # -- from here on nothing fails: swap
        now = self.loop.time() if self.loop else time.monotonic()
        self.table = new
        for k in removed:
            self._remove_service(k)
        self.limits.listeners = len(new.services)
        for k, cfg in new.services.items():
            svc = self.svcs.get(k)
            if svc is None:
                svc = SvcRT(cfg, now)
                self.svcs[k] = svc
                sock = opened[k]
                svc.listener = (TcpListener if k.proto == "tcp" else UdpListener)(self, svc, sock)
                log.info("added virtual service %s (scheduler %s%s)", k, cfg.scheduler, _persist_text(cfg))
                svc.listener.start()
            else:
                old = svc.cfg
                svc.cfg = cfg
                if (old.scheduler, old.persistent, old.timeout, old.netmask, old.flags) != \
                        (cfg.scheduler, cfg.persistent, cfg.timeout, cfg.netmask, cfg.flags):
                    log.info("edited virtual service %s (scheduler %s%s)", k, cfg.scheduler, _persist_text(cfg))
                if not cfg.persistent and old.persistent:
                    for t in self.persist.drop_key(k):
                        t.dest.dest.persistconns -= 1
            self._sync_dests(svc, cfg, now, scheds.get(k))
        for op in ops:
            if op.kind == "zero":
                for k, svc in self.svcs.items():
                    if op.key is None or op.key == k:
                        self._zero(svc, now)
                log.info("zeroed counters of %s", op.key or "all virtual services")
            elif op.kind == "set-timeouts":
                t = new.timeouts
                log.info("timeouts set: tcp %d tcpfin %d udp %d", t.tcp, t.tcpfin, t.udp)

    def _sync_dests(self, svc: SvcRT, cfg, now: float, sched) -> None:
        sched_changed = sched is not None
        if sched_changed:
            svc.sched = sched
        new_map = {}
        dlist = []
        for d in cfg.dests:
            drt = svc.dests.get(d.ident)
            if drt is None:
                live = d.config()
                drt = DestRT(live, svc, now)
                log.info("added real server %s to %s (%s, weight %d)", fmt_hostport(d.addr, d.port),
                         svc.key, live.fwd, live.weight)
            else:
                live = drt.dest
                if (live.fwd, live.weight, live.u_threshold, live.l_threshold) != \
                        (d.fwd, d.weight, d.u_threshold, d.l_threshold):
                    before = copy.copy(live)
                    live.fwd, live.weight = d.fwd, d.weight
                    live.u_threshold, live.l_threshold = d.u_threshold, d.l_threshold
                    carry_overload(before, live)
                    log.info("edited real server %s of %s (%s, weight %d)", fmt_hostport(d.addr, d.port),
                             svc.key, live.fwd, live.weight)
            new_map[d.ident] = drt
            dlist.append(drt.dest)
        for ident, drt in svc.dests.items():
            if ident not in new_map:
                drt.removed = True
                log.info("removed real server %s from %s (%d active connections left to finish)",
                         fmt_hostport(*ident), svc.key, drt.dest.activeconns)
        svc.dests = new_map
        sig = ((cfg.scheduler, cfg.flags),
               tuple((d.addr, d.port, d.weight, d.u_threshold, d.l_threshold) for d in dlist))
        if sched_changed or sig != svc.sig:
            svc.dlist = dlist
            svc.sched.update(dlist)
        svc.sig = sig

    def _remove_service(self, k) -> None:
        svc = self.svcs.pop(k)
        svc.listener.close()
        now = self.loop.time()
        for flow in list(svc.flows.values()):
            self.close_flow(flow, now)
        for t in self.persist.drop_key(k):
            t.dest.dest.persistconns -= 1
        for drt in svc.dests.values():
            drt.removed = True
        log.info("removed virtual service %s (%d real servers)", k, len(svc.dests))

    def _zero(self, svc: SvcRT, now: float) -> None:
        svc.stats = Stats()
        svc.est.reset(svc.stats, now)
        svc.rates = svc.est.rates()
        for drt in svc.dests.values():
            drt.dest.stats = Stats()
            drt.est.reset(drt.dest.stats, now)
            drt.dest.rates = drt.est.rates()

    # -- reading back --------------------------------------------------------
    def services(self) -> list[dict]:
        out = []
        for k, cfg in self.table.services.items():
            svc = self.svcs[k]
            d = to_dict(cfg.config())
            d["stats"] = to_dict(svc.stats)
            d["rates"] = to_dict(svc.rates)
            d["dests"] = [to_dict(x) for x in svc.dlist]
            out.append(d)
        return out

    def connections(self) -> list[Conn]:
        now = self.loop.time()
        t = self.table.timeouts
        out = []
        for c in self.tcp_conns:
            if c.state == "ESTABLISHED":
                exp = t.tcp - c.idle()
            elif c.state == "FIN_WAIT":
                exp = t.tcpfin - (now - c.since)
            else:
                exp = SYN_RECV_TIMEOUT - (now - c.since)
            k = c.svc.key
            out.append(Conn("TCP", min(max(0.0, exp), t.tcp), c.state, c.caddr, c.cport, k.addr, k.port,
                            c.daddr, c.dport))
        for state, q in self.lingering.items():
            for exp, k, caddr, cport, daddr, dport, _ in q:
                if exp > now:
                    out.append(Conn("TCP", min(exp - now, TIME_WAIT_TIMEOUT), state, caddr, cport, k.addr, k.port, daddr, dport))
        for svc in self.svcs.values():
            for f in svc.flows.values():
                out.append(Conn("UDP", min(t.udp, max(0.0, t.udp - (now - f.last))), "UDP", f.caddr[0], f.caddr[1],
                                svc.key.addr, svc.key.port, f.drt.dest.addr, f.drt.dest.port))
        for tpl in self.persist.entries.values():
            svc = self.svcs.get(tpl.key)
            if svc is None:
                continue
            d = tpl.dest.dest
            out.append(Conn(tpl.key.proto.upper(), tpl.expires(now, svc.cfg.timeout), "NONE", tpl.cnet, 0,
                            tpl.key.addr, tpl.key.port, d.addr, d.port, template=True))
        return out

    def status(self) -> dict:
        active = sum(d.activeconns for s in self.svcs.values() for d in s.dlist)
        inact = sum(d.inactconns for s in self.svcs.values() for d in s.dlist)
        return {"node": self.node, "pid": os.getpid(), "started": self.started,
                "uptime": time.time() - self.started, "services": len(self.table.services),
                "dests": sum(len(s.dests) for s in self.table.services.values()),
                "tcp_relays": len(self.tcp_conns), "udp_flows": sum(len(s.flows) for s in self.svcs.values()),
                "activeconns": active, "inactconns": inact, "templates": len(self.persist),
                "splice": self.splice, "bytes_spliced": self.bytes_spliced,
                "bytes_copied": self.bytes_copied, "sched_slice_us": self.sched_slice_us,
                "limits": self.limits.as_dict()}

    # -- periodic work ----------------------------------------------------------
    def tick(self) -> None:
        now = self.loop.time()
        t = self.table.timeouts
        self._ticks += 1
        for state, q in self.lingering.items():
            while q and q[0][0] <= now:
                inactive_gone(q.popleft()[-1])
        if self._ticks % HOUSEKEEP_TICKS == 0:
            for svc in list(self.svcs.values()):
                for f in [f for f in svc.flows.values() if now - f.last >= t.udp]:
                    self.close_flow(f, now)
            for tpl in self.persist.expire(now, self._tpl_timeout):
                tpl.dest.dest.persistconns -= 1
        self._sweep_some(now, t)
        if now - self._last_est >= INTERVAL:
            self._last_est = now
            for svc in self.svcs.values():
                svc.rates = svc.est.sample(svc.stats, now)
                for drt in svc.dests.values():
                    drt.dest.rates = drt.est.sample(drt.dest.stats, now)

    def _sweep_some(self, now: float, t) -> None:
        """Visit a share of the TCP connections (counters, timeouts): every one of
        them once per INTERVAL, spread over SWEEP_TICKS ticks so that the relays
        never stop for a pass over all connections at once."""
        if not self._sweep:
            if now < self._sweep_next:
                return
            self._sweep = list(self.tcp_conns)
            self._sweep_next = now + INTERVAL
            self._sweep_step = max(1, -(-len(self._sweep) // SWEEP_TICKS))
        batch = self._sweep[-self._sweep_step:]
        del self._sweep[-self._sweep_step:]
        for c in batch:
            if not c.closed:
                c.sweep(now, t)

    def _tpl_timeout(self, key):
        svc = self.svcs.get(key)
        return svc.cfg.timeout if svc is not None else None

    async def _ticker(self):
        while True:
            await asyncio.sleep(TICK)
            try:
                self.tick()
            except Exception:  # never let the data plane die of a bookkeeping bug
                log.exception("internal error in periodic work")

    # -- control socket -----------------------------------------------------------
    def handle(self, req) -> dict:
        if not isinstance(req, dict) or not isinstance(req.get("cmd"), str):
            return {"ok": False, "error": "bad request: expected an object with a \"cmd\""}
        cmd = req["cmd"]
        if cmd == "execute":
            raw = req.get("ops")
            if not isinstance(raw, list):
                return {"ok": False, "error": "bad request: \"ops\" must be a list"}
            try:
                ops = [op_from_dict(d) for d in raw]
            except IpvsError as e:
                return {"ok": False, "error": str(e), "type": "IpvsError"}
            except (TypeError, KeyError, ValueError, AttributeError) as e:
                return {"ok": False, "error": f"bad request: malformed operation ({e})"}
            try:
                self.execute(ops)
            except IpvsError as e:
                return {"ok": False, "error": str(e), "type": "IpvsError", "index": getattr(e, "index", None)}
            return {"ok": True}
        if cmd == "services":
            return {"ok": True, "services": self.services()}
        if cmd == "connections":
            return {"ok": True, "connections": [to_dict(c) for c in self.connections()]}
        if cmd == "timeouts":
            return {"ok": True, "timeouts": to_dict(self.table.timeouts)}
        if cmd == "status":
            return {"ok": True, "status": self.status()}
        if cmd == "stop":
            log.info("stop requested over the control socket")
            self.loop.call_soon(self.stopping.set)
            return {"ok": True}
        return {"ok": False, "error": f"bad request: unknown command {cmd!r}"}

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        task = asyncio.current_task()
        self._clients[task] = writer
        try:
            while True:
                try:
                    line = await reader.readline()
                except (ValueError, asyncio.LimitOverrunError):
                    writer.write(b'{"ok": false, "error": "bad request: line too long"}\n')
                    break
                if not line:
                    break
                try:
                    req = json.loads(line)
                except ValueError as e:
                    reply = {"ok": False, "error": f"bad request: not JSON ({e})"}
                else:
                    try:
                        reply = self.handle(req)
                    except Exception as e:
                        log.exception("internal error handling %r", req.get("cmd") if isinstance(req, dict) else req)
                        reply = {"ok": False, "error": f"internal error: {e}"}
                writer.write(json.dumps(reply).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self._clients.pop(task, None)
            writer.close()

    # -- life cycle --------------------------------------------------------------
    async def serve(self, sock_path, initial=None) -> None:
        """Serve until stopped. initial: (path, ops, line_of) rules applied, all
        or nothing, before the control socket opens (ConfigError if refused)."""
        self.loop = asyncio.get_running_loop()
        self.poller = Poller(self.loop)
        self.stopping = asyncio.Event()
        self._setup_limits()
        self.rules_path, self.rules_table = None, None
        if initial is not None:
            path, ops, line_of = initial
            try:
                self.execute(ops)
            except IpvsError as e:
                self.shutdown()
                raise ConfigError(path, line_of(getattr(e, "index", None)), str(e)) from None
            log.info("applied %d rules from %s", len(ops), path)
            self.rules_path = path
            self.rules_table = self._file_table(ops)
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(sig, self.stopping.set)
        self.loop.add_signal_handler(signal.SIGHUP, self.reload)
        self.loop.add_signal_handler(signal.SIGUSR1, logs.reopen)
        try:
            os.unlink(sock_path)
        except FileNotFoundError:
            pass
        old = os.umask(0o177)
        try:
            server = await asyncio.start_unix_server(self._client, path=str(sock_path), limit=1 << 24)
        finally:
            os.umask(old)
        os.chmod(sock_path, 0o600)
        ticker = asyncio.ensure_future(self._ticker())
        log.info("halb proxy for node %s running (pid %d), control socket %s, data path: %s",
                 self.node, os.getpid(), sock_path, "splice" if self.splice else "buffered copy")
        sdnotify.ready(f"{len(self.table.services)} virtual service(s)")
        dog = asyncio.ensure_future(sdnotify.watchdog_loop()) if sdnotify.watchdog_interval() else None
        try:
            await self.stopping.wait()
        finally:
            sdnotify.stopping()
            if dog is not None:
                dog.cancel()
            ticker.cancel()
            server.close()
            self.shutdown()
            try:
                os.unlink(sock_path)
            except FileNotFoundError:
                pass
            clients = list(self._clients)
            for w in self._clients.values():
                w.close()  # the handler sees end of file and returns
            if clients:
                await asyncio.wait(clients, timeout=2)
            log.info("halb proxy for node %s stopped", self.node)

    def _setup_limits(self) -> None:
        import resource

        nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if nofile == resource.RLIM_INFINITY:
            nofile = 1 << 20
        want, per = self.maxconn_arg
        lim = Limits(nofile, open_fds() + 1, want, per)  # +1: the control socket's listener
        if lim.budget() < 2:
            raise HalbError(f"descriptor limit too low to relay anything (ulimit -n {nofile}, "
                            f"{lim.base} open, {lim.budget()} left after the reserve)")
        fit = max(1, lim.budget() // 2)
        if want is not None and want > fit:
            log.warning("maxconn %d needs more descriptors than ulimit -n %d allows: "
                        "TCP relays are refused beyond about %d", want, nofile, fit)
        self.limits = lim
        log.info("descriptor limit %d; maxconn %d%s, per source %s", nofile, lim.maxconn,
                 " (from the descriptor limit)" if lim.auto else "", lim.per_source or "no cap")

    def _file_table(self, ops) -> Table:
        t = Table(default_fwd=self.table.default_fwd)
        t.allowed_fwd, t.engine_name = self.table.allowed_fwd, self.table.engine_name
        return t.apply(ops)

    def reload(self) -> None:
        """SIGHUP (systemctl reload): reopen the log files; re-read the rules file given
        at start and apply what changed (proxy/reload.py), all or nothing; a bad file
        or a refused rule is logged with file:line and the running table kept."""
        sdnotify.reloading()
        logs.reopen()
        try:
            if self.rules_path is None:
                log.info("reload: log files reopened (no rules file: the table is edited with ipvsadm)")
                return
            from halb.cli.proxy import load_rules
            from halb.proxy.reload import reload_ops

            path, ops, line_of = None, None, None
            try:
                path, ops, line_of = load_rules(self.rules_path)
                new_file = self._file_table(ops)
            except ConfigError as e:
                log.error("reload: %s; keeping the running configuration", e)
                return
            except IpvsError as e:
                log.error("reload: %s:%s: %s; keeping the running configuration", self.rules_path,
                          line_of(getattr(e, "index", None)) or "?", e)
                return
            todo = reload_ops(self.table, self.rules_table, new_file)
            try:
                self.execute(todo)
            except IpvsError as e:
                log.error("reload: %s: %s; keeping the running configuration", self.rules_path, e)
                return
            self.rules_table = new_file
            log.info("reload: %s applied (%d change(s))", self.rules_path, len(todo))
        finally:
            sdnotify.ready()

    def shutdown(self) -> None:
        """Close listeners, end relays and flows."""
        n = len(self.tcp_conns)
        for k in list(self.svcs):
            svc = self.svcs.pop(k)
            svc.listener.close()
            for f in list(svc.flows.values()):
                self.close_flow(f, self.loop.time())
        for c in list(self.tcp_conns):
            c.abort()
        for r, w in self.pipes:
            os.close(r)
            os.close(w)
        self.pipes.clear()
        self.poller.close()
        if self.spare_fd >= 0:
            os.close(self.spare_fd)
            self.spare_fd = -1
        if n:
            log.info("ended %d relayed connections", n)


def _persist_text(cfg) -> str:
    if not cfg.persistent:
        return ""
    mask = "" if cfg.netmask in ("255.255.255.255", "128", "/128") else f" netmask {cfg.netmask}"
    return f", persistent {cfg.timeout}s{mask}"


# --------------------------------------------------------------------------
# process-level entry (used by `halb proxy run`)


class PidLock:
    """The pid file, held locked for the daemon's lifetime (refuses a second daemon)."""

    def __init__(self, path):
        self.path = path
        self.fd = -1

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            try:
                other = os.read(fd, 32).decode().strip()
            finally:
                os.close(fd)
            raise HalbError(f"halb proxy is already running (pid {other or '?'}, pid file {self.path})") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd

    def release(self) -> None:
        if self.fd >= 0:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
            os.close(self.fd)
            self.fd = -1


def run_daemon(node: str, run_dir, splice: bool = True, initial=None, maxconn: int | None = None,
               maxconn_per_source: int | None = None) -> int:
    from pathlib import Path

    run_dir = Path(run_dir)
    sock_path = run_dir / "proxy.sock"
    if len(str(sock_path).encode()) > 107:
        raise HalbError(f"run dir path too long for a unix socket: {sock_path}")
    lock = PidLock(run_dir / "proxy.pid")
    try:
        run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        lock.acquire()
    except OSError as e:
        raise HalbError(f"cannot use run dir {run_dir}: {e.strerror}") from None
    try:
        try:
            import uvloop
            loop = uvloop.new_event_loop()
        except ImportError:  # pragma: no cover
            loop = asyncio.new_event_loop()
        before, after = raise_nofile()
        if after > before:
            log.info("descriptor limit raised from %d to %d", before, after)
        daemon = ProxyDaemon(node, run_dir, splice=splice, maxconn=maxconn,
                             maxconn_per_source=maxconn_per_source)
        daemon.sched_slice_us = tuning.apply()
        try:
            loop.run_until_complete(daemon.serve(sock_path, initial))
        except OSError as e:
            raise HalbError(f"cannot serve the control socket {sock_path}: {e.strerror}") from None
        finally:
            loop.close()
    finally:
        lock.release()
    return 0

