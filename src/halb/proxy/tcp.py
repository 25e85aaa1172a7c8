"""TCP relay: the relays' own epoll set (Poller), one relayed connection
(TcpConn) as two directions (Half), and the accepting listener.

Small reads (requests, short answers) are copied with one read and one
write, cheaper than two splices for a few hundred bytes; once a read brings
SPLICE_MIN bytes or more the direction switches to splice(2), socket -> pipe
-> socket, and the bytes of a large transfer never enter Python."""
from __future__ import annotations

import errno
import fcntl
import logging
import os
import select
import socket
import _socket  # the C socket type: no Python-level wrapper on the per-connection path
import struct

from halb.proxy.runtime import (DestRT, SvcRT, Listener, active_to_inactive, conn_inactive,
                               inactive_to_active)

log = logging.getLogger("halb.proxy")

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


def set_rst(sock) -> None:
    """Make close() reset the connection (SO_LINGER 0) rather than end it."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _SO_LINGER_RST)
    except OSError:
        pass


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
        conn_inactive(self.drt)
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
        inactive_to_active(self.drt)

    def half_closed(self):
        if self.up.done and self.down.done:
            self.finish("TIME_WAIT")
        elif self.state == "ESTABLISHED":
            self.state = "FIN_WAIT"
            self.since = self.px.loop.time()
            active_to_inactive(self.drt)
        elif self.state is SYN_RECV:  # closed before any data: inactive either way
            self.state = "FIN_WAIT"
            self.since = self.px.loop.time()

    def abort(self):
        """A reset, an error or a refused connect: reset both sides."""
        if self.closed:
            return
        for s in (self.csock, self.bsock):
            if s is not None:
                set_rst(s)
        self.finish("CLOSE")

    def account(self):
        """Fold the bytes and packets since the last call into the counters.
        Returns the client side's tcpi_last_data_recv (ms), None if unknown."""
        if self.up is None:
            return None
        inb, outb = self.up.nbytes, self.down.nbytes
        try:
            info = self.csock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TCP_INFO_LEN)
            _, _, segs_out, segs_in = _TCPI.unpack_from(info, 120)
            last_recv = _LAST_RECV.unpack_from(info, 52)[0]
        except (OSError, struct.error):
            segs_in, segs_out = self.acc[2], self.acc[3]
            last_recv = None
        acc = self.acc
        d_inb, d_outb, d_inp, d_outp = inb - acc[0], outb - acc[1], segs_in - acc[2], segs_out - acc[3]
        self.acc = [inb, outb, segs_in, segs_out]
        for st in (self.svc.stats, self.drt.dest.stats):
            st.inbytes += d_inb
            st.outbytes += d_outb
            st.inpkts += d_inp
            st.outpkts += d_outp
        return last_recv

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

    def sweep(self, now: float, t) -> None:
        """Periodic visit: fold the counters in, end the connection if it outlived
        its state's timeout (t: the table's Timeouts)."""
        last_recv = self.account()
        state = self.state
        if state == "ESTABLISHED":
            # the client side heard something recently: not idle, no need to ask the other side
            if (last_recv is None or last_recv >= t.tcp * 1000) and self.idle() >= t.tcp:
                log.info("TCP %s:%d -> %s:%d idle for more than %d s: dropped", self.caddr, self.cport,
                         self.daddr, self.dport, t.tcp)
                self.abort()
        elif state == "FIN_WAIT":
            if now - self.since >= t.tcpfin:
                self.abort()
        elif state is SYN_RECV and now - self.since >= SYN_RECV_TIMEOUT:
            self.abort()

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
        px.tcp_gone(self)
        if self.state == "ESTABLISHED":
            active_to_inactive(self.drt)
        if self.tpl is not None:
            px.persist.release(self.tpl, px.loop.time())
        px.linger(self, state)


class TcpListener(Listener):
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

