"""`halb proxy`: the user-space engine.

One asyncio (uvloop) process holding the virtual-server table and relaying
TCP and UDP for every virtual service. It binds each VIP:port itself
(IP_FREEBIND: it may bind before the VIP is configured; SO_REUSEADDR), picks
the real server of every new connection with the service's scheduler
(halb.sched), honours persistence (-p/-M), and keeps what `ipvsadm` shows:
a connection table with IPVS's TCP states and countdowns, per-service and
per-server counters and rates, active/inactive connection counts.

Data path (TCP): the relayed sockets live in the daemon's own epoll set
(Poller), watched by the uvloop loop as one descriptor, so a connection costs
one epoll_ctl per registration rather than a libuv handle. Small reads
(requests, short answers) are copied with one read and one write, cheaper
than two splices for a few hundred bytes; once a read brings 16 KiB or more
the direction switches to splice(2), socket -> pipe -> socket with
SPLICE_F_MOVE|SPLICE_F_NONBLOCK, and the bytes of a large transfer never
enter Python (its pipe grows to 1 MiB). It returns to copying when reads stay
small (8 in a row under 4 KiB). --no-splice copies everything (to measure the
difference); a socket where splice fails (EINVAL) is copied too. The real
server is connected without waiting for its handshake: early client bytes
wait in the copy path until the socket is writable.

Counters: bytes are the payload bytes relayed (exact, from splice's return
values; IPVS counts IP packet lengths, headers included); packets are the
client-side socket's TCP_INFO tcpi_segs_in / tcpi_segs_out (what the client
sent / received, handshake and ACKs included). They are folded into the
service and server counters every 2 s and when a connection ends.

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
import gc
import json
import logging
import os
import select
import signal
import socket
import _socket  # the C socket type: no Python-level wrapper on the per-connection path
import struct
import time

from halb.errors import ConfigError, HalbError, IpvsError
from halb.model import (Conn, Dest, Op, Stats, Table, fmt_hostport, op_from_dict,
                        to_dict)
from halb.proxy.estimator import INTERVAL, Estimator
from halb.proxy.persist import PersistTable, client_network
from halb.sched import Packet, carry_overload, make_scheduler, update_overload

log = logging.getLogger("halb.proxy")

IP_FREEBIND = getattr(socket, "IP_FREEBIND", 15)
SPLICE = getattr(os, "splice", None)
SPLICE_FLAGS = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)
# A relay direction starts with a default pipe (64 KiB). When a splice fills it
# (a bulk transfer), the pipe grows to BULK_PIPE (fewer splice calls and
# wake-ups per MB: bulk throughput about doubles). Grown pipes are not pooled,
# and at most MAX_GROWN exist at once: unprivileged users share a 64 MiB
# budget of pipe buffers (/proc/sys/fs/pipe-user-pages-soft).
CHUNK = 1 << 16
COPY_READ = 1 << 16        # copy mode read size
SPLICE_MIN = 16384         # a read this large switches a direction to splice
COPY_BACK = 4096           # splices smaller than this, COPY_BACK_AFTER times in a row,
COPY_BACK_AFTER = 8        # switch it back to copy
BULK_PIPE = int(os.environ.get("HALB_PROXY_BULK_PIPE", str(1 << 20)))
MAX_GROWN = 32
TIME_WAIT_TIMEOUT = 120.0  # the kernel's IP_VS_TCP_S_TIME_WAIT
CLOSE_TIMEOUT = 10.0       # IP_VS_TCP_S_CLOSE
SYN_RECV_TIMEOUT = 60.0    # IP_VS_TCP_S_SYN_RECV
LINGER_MAX = 100_000       # closed entries kept for -L -c (oldest dropped beyond this)
PIPE_POOL_MAX = 512
TCP_INFO_LEN = 144
_TCPI = struct.Struct("<QQII")  # bytes_acked, bytes_received, segs_out, segs_in @ offset 120
_LAST_RECV = struct.Struct("<I")  # tcpi_last_data_recv @ offset 52 (ms)
_SO_LINGER_RST = struct.pack("ii", 1, 0)

SYN_RECV = "SYN_RECV"


def _set_rst(sock) -> None:
    """Make close() reset the connection (SO_LINGER 0) rather than end it."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _SO_LINGER_RST)
    except OSError:
        pass


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
# runtime objects


class DestRT:
    """A real server's live object (persists across table edits)."""

    __slots__ = ("dest", "svc", "est", "removed")

    def __init__(self, dest: Dest, svc: "SvcRT", now: float):
        self.dest = dest
        self.svc = svc
        self.est = Estimator(dest.stats, now)
        self.removed = False


class SvcRT:
    __slots__ = ("key", "cfg", "sched", "dests", "dlist", "stats", "rates", "est", "listener",
                 "flows", "nodest_logged", "sig")

    def __init__(self, cfg, now: float):
        self.key = cfg.key
        self.cfg = cfg
        self.sched = None
        self.dests: dict[tuple, DestRT] = {}
        self.dlist: list[Dest] = []
        self.stats = copy.deepcopy(cfg.stats)
        self.rates = cfg.rates
        self.est = Estimator(self.stats, now)
        self.listener = None
        self.flows: dict[tuple, "UdpFlow"] = {}
        self.nodest_logged = 0.0
        self.sig = None

    def by_dest(self, d: Dest) -> DestRT:
        return self.dests[(d.addr, d.port)]


def _conn_inactive(drt: DestRT) -> None:
    d = drt.dest
    d.inactconns += 1
    update_overload(d)


def _active_to_inactive(drt: DestRT) -> None:
    d = drt.dest
    d.activeconns -= 1
    d.inactconns += 1
    update_overload(d)


def _inactive_to_active(drt: DestRT) -> None:
    d = drt.dest
    d.inactconns -= 1
    d.activeconns += 1
    update_overload(d)


def _inactive_gone(drt: DestRT) -> None:
    d = drt.dest
    d.inactconns -= 1
    update_overload(d)


# --------------------------------------------------------------------------
# TCP relay


class Poller:
    """The relays' own epoll set, watched by the event loop as one descriptor.

    Registering a relayed socket with the loop itself (uvloop's add_reader)
    creates and later destroys a libuv poll handle per descriptor; with
    thousands of short connections per second that bookkeeping cost more than
    the relaying. Here a registration is one epoll_ctl and a dict entry.
    Level-triggered; an event for a descriptor closed and reused within the
    same batch reaches its new owner as a spurious wake-up, which every relay
    callback tolerates (EAGAIN)."""

    RD = select.EPOLLIN | select.EPOLLERR | select.EPOLLHUP
    WR = select.EPOLLOUT | select.EPOLLERR | select.EPOLLHUP

    def __init__(self, loop):
        self.ep = select.epoll()
        self.loop = loop
        self.readers: dict[int, object] = {}
        self.writers: dict[int, object] = {}
        self.masks: dict[int, int] = {}
        loop.add_reader(self.ep.fileno(), self.dispatch)

    def _update(self, fd: int) -> None:
        m = (select.EPOLLIN if fd in self.readers else 0) | (select.EPOLLOUT if fd in self.writers else 0)
        old = self.masks.get(fd, 0)
        if m == old:
            return
        try:
            if not m:
                del self.masks[fd]
                self.ep.unregister(fd)
            elif not old:
                self.ep.register(fd, m)
                self.masks[fd] = m
            else:
                self.ep.modify(fd, m)
                self.masks[fd] = m
        except OSError:  # closed behind our back: forget it
            self.masks.pop(fd, None)

    def add_reader(self, fd: int, cb) -> None:
        new = fd not in self.readers
        self.readers[fd] = cb
        if new:
            self._update(fd)

    def remove_reader(self, fd: int) -> None:
        if self.readers.pop(fd, None) is not None:
            self._update(fd)

    def add_writer(self, fd: int, cb) -> None:
        new = fd not in self.writers
        self.writers[fd] = cb
        if new:
            self._update(fd)

    def remove_writer(self, fd: int) -> None:
        if self.writers.pop(fd, None) is not None:
            self._update(fd)

    def dispatch(self) -> None:
        try:
            events = self.ep.poll(0, 1024)
        except InterruptedError:
            return
        readers, writers = self.readers, self.writers
        RD, WR = self.RD, self.WR
        for fd, ev in events:
            try:
                if ev & RD:
                    cb = readers.get(fd)
                    if cb is not None:
                        cb()
                if ev & WR:
                    cb = writers.get(fd)
                    if cb is not None:
                        cb()
            except Exception:  # a relay bug must not stop the others
                log.exception("internal error in a relay callback")

    def close(self) -> None:
        self.loop.remove_reader(self.ep.fileno())
        self.ep.close()


class Half:
    """One direction of a relayed TCP connection, src -> dst.

    Small reads (requests, short answers) are copied: one read and one write,
    cheaper than the two splices through a pipe for a few hundred bytes. As
    soon as one read brings SPLICE_MIN bytes or more, the direction switches
    to splice (socket -> pipe -> socket, nothing enters Python) and stays so
    while reads stay larger than COPY_BACK bytes. With --no-splice every read
    is copied."""

    __slots__ = ("conn", "src", "dst", "rp", "wp", "pending", "nbytes", "done", "buf", "loop", "cap",
                 "can_splice", "splicing", "spliced", "rd", "wr", "small")

    def __init__(self, conn: "TcpConn", src: int, dst: int, can_splice: bool):
        self.conn = conn
        self.loop = conn.px.poller
        self.src = src
        self.dst = dst
        self.rp = self.wp = -1
        self.pending = 0  # splice mode: bytes in the pipe not yet sent
        self.buf = None   # copy mode: bytes read, not yet sent
        self.nbytes = 0
        self.done = False
        self.cap = CHUNK  # the pipe's capacity (grown for bulk transfers)
        self.can_splice = can_splice
        self.splicing = False
        self.spliced = 0  # of nbytes, how many went through the pipe
        self.rd = self.wr = False
        self.small = 0  # consecutive small splices

    # registrations are tracked so that ending a connection only undoes what is set
    def _read(self, cb):
        self.loop.add_reader(self.src, cb)
        self.rd = True

    def _unread(self):
        self.loop.remove_reader(self.src)
        self.rd = False

    def _write(self, cb):
        self.loop.add_writer(self.dst, cb)
        self.wr = True

    def _unwrite(self):
        self.loop.remove_writer(self.dst)
        self.wr = False

    def start(self):
        self._read(self.on_read_copy)

    def _resume(self):
        self._read(self.on_read_splice if self.splicing else self.on_read_copy)

    # -- copy mode -----------------------------------------------------------
    def on_read_copy(self):
        if self.conn.closed:  # ended earlier in this loop iteration
            return
        try:
            data = os.read(self.src, COPY_READ)
        except BlockingIOError:
            return
        except OSError:
            self.conn.abort()
            return
        n = len(data)
        if not n:
            self._unread()
            self._eof()
            return
        try:
            m = os.write(self.dst, data)
        except BlockingIOError:
            m = 0
        except OSError:
            self.conn.abort()
            return
        self.nbytes += m
        if self.conn.state is SYN_RECV and (m or self.src == self.conn.bfd):
            self.conn.established()
        if n >= SPLICE_MIN and self.can_splice:
            self._to_splice()
        if m < n:
            self.buf = data[m:]
            self._unread()
            self._write(self.on_write_copy)
        elif self.splicing and n >= SPLICE_MIN:
            self._read(self.on_read_splice)

    def on_write_copy(self):
        if self.conn.closed:
            return
        try:
            m = os.write(self.dst, self.buf)
        except BlockingIOError:
            return
        except OSError:
            self.conn.abort()
            return
        self.nbytes += m
        if self.conn.state is SYN_RECV and m:
            self.conn.established()
        self.buf = self.buf[m:]
        if not self.buf:
            self.buf = None
            self._unwrite()
            self._resume()

    def _to_splice(self):
        if self.rp < 0:
            try:
                self.rp, self.wp = self.conn.px.get_pipe()
            except OSError as e:  # out of descriptors: keep copying
                self.conn.px.log_limited("pipe", f"no pipe for splice ({e.strerror}): buffered copy")
                return
        self.splicing = True

    # -- splice mode ---------------------------------------------------------
    def on_read_splice(self):
        if self.conn.closed:
            return
        try:
            n = SPLICE(self.src, self.wp, self.cap, None, None, SPLICE_FLAGS)
        except BlockingIOError:
            return
        except OSError as e:
            if e.errno in (errno.EINVAL, errno.ENOSYS):  # splice can't work here: copy
                log.info("splice not possible on this connection: buffered copy")
                self.can_splice = self.splicing = False
                self._read(self.on_read_copy)
                return
            self.conn.abort()
            return
        if n == 0:
            self._unread()
            self._eof()
            return
        try:
            m = SPLICE(self.rp, self.dst, n, None, None, SPLICE_FLAGS)
        except BlockingIOError:
            m = 0
        except OSError:
            self.conn.abort()
            return
        self.nbytes += m
        self.spliced += m
        if m < n:
            self.pending = n - m
            self._unread()
            self._write(self.on_write_splice)
        elif n < COPY_BACK:
            # a bulk sender momentarily behind also gives small reads: go back
            # to copying only after several in a row
            self.small += 1
            if self.small >= COPY_BACK_AFTER:
                self.small = 0
                self.splicing = False
                self._read(self.on_read_copy)
        else:
            self.small = 0
            if n == self.cap == CHUNK:
                self._grow()

    def _grow(self):
        px = self.conn.px
        if px.grown < MAX_GROWN and BULK_PIPE > CHUNK:
            try:
                self.cap = fcntl.fcntl(self.wp, fcntl.F_SETPIPE_SZ, BULK_PIPE)
            except OSError:
                self.cap = CHUNK + 1  # don't try again
                return
            px.grown += 1

    def on_write_splice(self):
        if self.conn.closed:
            return
        while self.pending:
            try:
                m = SPLICE(self.rp, self.dst, self.pending, None, None, SPLICE_FLAGS)
            except BlockingIOError:
                return
            except OSError:
                self.conn.abort()
                return
            self.pending -= m
            self.nbytes += m
            self.spliced += m
        self._unwrite()
        self._resume()

    # ----------------------------------------------------------------------
    def _eof(self):
        c = self.conn
        try:
            (c.bsock if self.dst == c.bfd else c.csock).shutdown(socket.SHUT_WR)
        except OSError as e:
            if e.errno == errno.ENOTCONN and self.dst == c.bfd:
                # the client closed before the real server's handshake completed:
                # pass the FIN on once it has
                self._write(self._late_shutdown)
        self.done = True
        c.half_closed()

    def _late_shutdown(self):
        c = self.conn
        if c.closed:
            return
        self._unwrite()
        try:
            c.bsock.shutdown(socket.SHUT_WR)
        except OSError:
            c.abort()


class TcpConn:
    __slots__ = ("px", "svc", "drt", "csock", "bsock", "cfd", "bfd", "caddr", "cport", "daddr",
                 "dport", "state", "since", "tpl", "up", "down", "acc", "closed")

    def __init__(self, px: "ProxyDaemon", svc: SvcRT, drt: DestRT, csock, caddr, tpl):
        self.px = px
        self.svc = svc
        self.drt = drt
        self.csock = csock
        self.cfd = csock.fileno()
        self.caddr, self.cport = caddr[0], caddr[1]
        d = drt.dest
        self.daddr, self.dport = d.addr, d.port
        self.tpl = tpl
        self.state = SYN_RECV
        self.since = px.loop.time()
        self.bsock = None
        self.bfd = -1
        self.up = self.down = None
        self.acc = [0, 0, 0, 0]  # inbytes, outbytes, inpkts, outpkts already counted
        self.closed = False

    def start(self):
        px = self.px
        _conn_inactive(self.drt)
        fam = socket.AF_INET6 if ":" in self.daddr else socket.AF_INET
        try:
            b = _socket.socket(fam, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        except OSError as e:
            px.log_limited("socket", f"cannot create a socket to {self.daddr}: {e.strerror}")
            self.abort()
            return
        self.bsock = b
        self.bfd = b.fileno()
        b.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        err = b.connect_ex((self.daddr, self.dport))
        if err not in (0, errno.EINPROGRESS):
            self.abort()
            return
        # relay at once: what the client sends before the real server's
        # handshake completes waits in copy mode (write -> EAGAIN -> writable);
        # a refused connect shows up as an error on either side and resets both
        self.up = Half(self, self.cfd, self.bfd, px.splice)
        self.down = Half(self, self.bfd, self.cfd, px.splice)
        self.up.start()
        self.down.start()
        if err == 0:
            self.established()

    def established(self):
        """Data went through to or came from the real server: it is connected."""
        self.state = "ESTABLISHED"
        _inactive_to_active(self.drt)

    def half_closed(self):
        if self.up.done and self.down.done:
            self.finish("TIME_WAIT")
        elif self.state == "ESTABLISHED":
            self.state = "FIN_WAIT"
            self.since = self.px.loop.time()
            _active_to_inactive(self.drt)
        elif self.state is SYN_RECV:  # closed before any data: inactive either way
            self.state = "FIN_WAIT"
            self.since = self.px.loop.time()

    def abort(self):
        """A reset, an error or a refused connect: reset both sides."""
        if self.closed:
            return
        for s in (self.csock, self.bsock):
            if s is not None:
                _set_rst(s)
        self.finish("CLOSE")

    def account(self):
        """Fold the bytes and packets since the last call into the counters."""
        if self.up is None:
            return
        inb, outb = self.up.nbytes, self.down.nbytes
        try:
            info = self.csock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TCP_INFO_LEN)
            _, _, segs_out, segs_in = _TCPI.unpack_from(info, 120)
        except (OSError, struct.error):
            segs_in, segs_out = self.acc[2], self.acc[3]
        acc = self.acc
        d_inb, d_outb, d_inp, d_outp = inb - acc[0], outb - acc[1], segs_in - acc[2], segs_out - acc[3]
        self.acc = [inb, outb, segs_in, segs_out]
        for st in (self.svc.stats, self.drt.dest.stats):
            st.inbytes += d_inb
            st.outbytes += d_outb
            st.inpkts += d_inp
            st.outpkts += d_outp

    def idle(self) -> float:
        """Seconds since data last moved in either direction (from TCP_INFO)."""
        best = None
        for s in (self.csock, self.bsock):
            if s is None:
                continue
            try:
                ms = _LAST_RECV.unpack_from(s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 64), 52)[0]
            except (OSError, struct.error):
                continue
            best = ms if best is None else min(best, ms)
        if best is None:
            return self.px.loop.time() - self.since
        return best / 1000.0

    def finish(self, state: str):
        if self.closed:
            return
        self.closed = True
        px = self.px
        loop = px.poller
        self.account()
        for h in (self.up, self.down):
            if h is not None:
                if h.rd:
                    loop.remove_reader(h.src)
                if h.wr:
                    loop.remove_writer(h.dst)
        self.csock.close()
        if self.bsock is not None:
            self.bsock.close()
        for h in (self.up, self.down):
            if h is None:
                continue
            px.bytes_spliced += h.spliced
            px.bytes_copied += h.nbytes - h.spliced
            if h.rp >= 0:
                grown = h.cap > CHUNK + 1
                if grown:
                    px.grown -= 1
                px.put_pipe((h.rp, h.wp), h.pending == 0 and h.cap <= CHUNK + 1)
        self.up = self.down = None  # no reference cycle left: freed at once, not by the GC
        px.tcp_conns.discard(self)
        if self.state == "ESTABLISHED":
            _active_to_inactive(self.drt)
        if self.tpl is not None:
            px.persist.release(self.tpl, px.loop.time())
        px.linger(self, state)


# --------------------------------------------------------------------------
# UDP relay


class UdpFlow:
    __slots__ = ("svc", "drt", "caddr", "sock", "fd", "last", "tpl")

    def __init__(self, svc: SvcRT, drt: DestRT, caddr, sock, now: float, tpl):
        self.svc = svc
        self.drt = drt
        self.caddr = caddr
        self.sock = sock
        self.fd = sock.fileno()
        self.last = now
        self.tpl = tpl


class _Listener:
    """A virtual service's bound socket, read by the event loop."""

    def __init__(self, px: "ProxyDaemon", svc: SvcRT, sock):
        self.px = px
        self.svc = svc
        self.sock = sock
        self.fd = sock.fileno()

    def close(self):
        self.px.loop.remove_reader(self.fd)
        self.sock.close()


class UdpListener(_Listener):
    def start(self):
        self.px.loop.add_reader(self.fd, self.on_readable)

    def on_readable(self):
        px = self.px
        svc = self.svc
        now = px.loop.time()
        for _ in range(64):
            try:
                data, caddr = self.sock.recvfrom(65535)
            except BlockingIOError:
                return
            except OSError:
                return
            flow = svc.flows.get(caddr)
            if flow is None:
                flow = px.new_udp_flow(svc, caddr, now)
                if flow is None:
                    continue
            flow.last = now
            try:
                flow.sock.send(data)
            except OSError:
                continue
            n = len(data)
            for st in (svc.stats, flow.drt.dest.stats):
                st.inpkts += 1
                st.inbytes += n

    def on_reply(self, flow: UdpFlow):
        px = self.px
        now = px.loop.time()
        for _ in range(64):
            try:
                data = flow.sock.recv(65535)
            except BlockingIOError:
                return
            except OSError:
                return  # e.g. ECONNREFUSED from an ICMP port unreachable
            flow.last = now
            try:
                self.sock.sendto(data, flow.caddr)
            except OSError:
                continue
            n = len(data)
            for st in (self.svc.stats, flow.drt.dest.stats):
                st.outpkts += 1
                st.outbytes += n


class TcpListener(_Listener):
    def __init__(self, px: "ProxyDaemon", svc: SvcRT, sock):
        super().__init__(px, svc, sock)
        self.family = int(sock.family)

    def start(self):
        self.px.loop.add_reader(self.fd, self.on_accept)

    def on_accept(self):
        px = self.px
        for _ in range(64):
            try:
                fd, caddr = self.sock._accept()
            except BlockingIOError:
                return
            except OSError as e:
                px.log_limited("accept", f"{self.svc.key}: accept failed: {e.strerror}")
                if e.errno in (errno.EMFILE, errno.ENFILE) and px.spare_fd >= 0:
                    # out of descriptors: use the spare one to take the waiting
                    # client and reset it at once, rather than let it hang
                    os.close(px.spare_fd)
                    px.spare_fd = -1
                    try:
                        fd, _ = self.sock._accept()
                        c = _socket.socket(self.family, socket.SOCK_STREAM, 0, fd)
                        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _SO_LINGER_RST)
                        c.close()
                    except OSError:
                        pass
                    px.take_spare_fd()
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    # pause accepting instead of spinning
                    px.loop.remove_reader(self.fd)
                    px.loop.call_later(0.1, self._resume)
                return
            csock = _socket.socket(self.family, socket.SOCK_STREAM, 0, fd)
            csock.setblocking(False)
            px.new_tcp(self.svc, csock, caddr)

    def _resume(self):
        if self.sock.fileno() >= 0:
            self.px.loop.add_reader(self.fd, self.on_accept)


def bind_socket(key) -> socket.socket:
    fam = socket.AF_INET6 if key.af == 6 else socket.AF_INET
    typ = socket.SOCK_STREAM if key.proto == "tcp" else socket.SOCK_DGRAM
    s = socket.socket(fam, typ)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_IP, IP_FREEBIND, 1)
        s.bind((key.addr, key.port))
        if typ == socket.SOCK_STREAM:
            # inherited by every accepted socket: no Nagle delay on relayed segments
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.listen(4096)
        s.setblocking(False)
    except OSError:
        s.close()
        raise
    return s


# --------------------------------------------------------------------------
# the daemon


class ProxyDaemon:
    def __init__(self, node: str, run_dir, splice: bool = True):
        self.node = node
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
        self._clients: dict = {}

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
        return os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def put_pipe(self, pipe, clean: bool) -> None:
        if clean and len(self.pipes) < PIPE_POOL_MAX:
            self.pipes.append(pipe)
        else:
            os.close(pipe[0])
            os.close(pipe[1])

    def linger(self, conn: TcpConn, state: str) -> None:
        q = self.lingering[state]
        timeout = TIME_WAIT_TIMEOUT if state == "TIME_WAIT" else CLOSE_TIMEOUT
        q.append((self.loop.time() + timeout, conn.svc.key, conn.caddr, conn.cport, conn.daddr,
                  conn.dport, conn.drt))
        if len(q) > LINGER_MAX:
            _inactive_gone(q.popleft()[-1])

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
        drt, tpl = self.choose(svc, caddr[0], caddr[1], "tcp", self.loop.time())
        if drt is None:
            _set_rst(csock)
            csock.close()
            return
        conn = TcpConn(self, svc, drt, csock, caddr, tpl)
        self.tcp_conns.add(conn)
        conn.start()

    def new_udp_flow(self, svc: SvcRT, caddr, now: float):
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
        _conn_inactive(drt)  # IPVS counts UDP entries as inactive
        listener = svc.listener
        self.loop.add_reader(flow.fd, listener.on_reply, flow)
        return flow

    def close_flow(self, flow: UdpFlow, now: float) -> None:
        self.loop.remove_reader(flow.fd)
        flow.sock.close()
        flow.svc.flows.pop(flow.caddr, None)
        _inactive_gone(flow.drt)
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
                "bytes_copied": self.bytes_copied}

    # -- periodic work ----------------------------------------------------------
    def tick(self) -> None:
        now = self.loop.time()
        t = self.table.timeouts
        for state, q in self.lingering.items():
            while q and q[0][0] <= now:
                _inactive_gone(q.popleft()[-1])
        for svc in list(self.svcs.values()):
            for f in [f for f in svc.flows.values() if now - f.last >= t.udp]:
                self.close_flow(f, now)
        for tpl in self.persist.expire(now, self._tpl_timeout):
            tpl.dest.dest.persistconns -= 1
        if now - self._last_est >= INTERVAL:
            self._last_est = now
            for c in list(self.tcp_conns):
                c.account()
                if c.state == "ESTABLISHED" and c.idle() >= t.tcp:
                    log.info("TCP %s:%d -> %s:%d idle for more than %d s: dropped", c.caddr, c.cport,
                             c.daddr, c.dport, t.tcp)
                    c.abort()
                elif c.state == "FIN_WAIT" and now - c.since >= t.tcpfin:
                    c.abort()
                elif c.state == "SYN_RECV" and now - c.since >= SYN_RECV_TIMEOUT:
                    c.abort()
            for svc in self.svcs.values():
                svc.rates = svc.est.sample(svc.stats, now)
                for drt in svc.dests.values():
                    drt.dest.rates = drt.est.sample(drt.dest.stats, now)

    def _tpl_timeout(self, key):
        svc = self.svcs.get(key)
        return svc.cfg.timeout if svc is not None else None

    async def _ticker(self):
        while True:
            await asyncio.sleep(0.5)
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
        if initial is not None:
            path, ops, line_of = initial
            try:
                self.execute(ops)
            except IpvsError as e:
                self.shutdown()
                raise ConfigError(path, line_of(getattr(e, "index", None)), str(e)) from None
            log.info("applied %d rules from %s", len(ops), path)
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(sig, self.stopping.set)
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
        try:
            await self.stopping.wait()
        finally:
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


def run_daemon(node: str, run_dir, splice: bool = True, initial=None) -> int:
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
        daemon = ProxyDaemon(node, run_dir, splice=splice)
        # the relay path leaves no reference cycles: make the cyclic GC rare,
        # and keep what exists at start-up out of its scans (no pauses)
        gc.collect()
        gc.freeze()
        gc.set_threshold(50_000, 50, 100)
        try:
            loop.run_until_complete(daemon.serve(sock_path, initial))
        except OSError as e:
            raise HalbError(f"cannot serve the control socket {sock_path}: {e.strerror}") from None
        finally:
            loop.close()
    finally:
        lock.release()
    return 0
