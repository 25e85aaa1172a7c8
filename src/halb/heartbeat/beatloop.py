"""The beat path: one thread, plain sockets, one wake-up per tick.

It sends our beats, reads the peers' (and the ping nodes' replies) and
ticks the membership core; it never waits for the event loop, a resource
agent, a log write or a control client. It sleeps in select() on a wake
pipe until the earliest of: the next beat, the next tick, the next
deadline the membership core could judge. Datagrams are not a reason to
wake up: they wait in the socket with the kernel's arrival time stamp
(SO_TIMESTAMPNS) and are read at the next wake-up, so a peer is judged on
when its beat arrived, not on when we read it, at one wake-up per tick
instead of one per datagram.

What the daemon must act on (membership events, a peer's new payload)
goes to `deliver(items)` in the order it happened, from this thread: the
daemon hands it to its event loop. The membership core is shared with
the daemon under `lock`.

With beat lanes (lane.py) this thread is lane 0, pinned to the first CPU:
it sends every lanes x keepalive, the lanes in between, and it stamps the
lanes' shared page at every wake-up (their lease). A peer's body older
than the newest taken (payload "v") only counts as a beat.
"""
from __future__ import annotations

import os
import select
import struct
import threading
import time

from halb.heartbeat.packet import BeatEncoder, DecodeError, ReplayGuard, decode, fresh, peek_node
from halb.heartbeat.transport import echo_request, parse_echo_reply

SO_TIMESTAMPNS = 35          # SCM_TIMESTAMPNS too (Linux)
SOL_SOCKET = 1
_TS = struct.Struct("=qq")
SO_RXQ_OVFL = 40
_U32 = struct.Struct("=I")
_ANC = 128                   # room for a timespec and an overflow count


class BeatLoop:
    def __init__(self, *, me, auth, generation, channels, mem, keepalive, tick_interval, accept_crc,
                 deliver, counters, ping_sock=None, ping_targets=None, ping_ident=0, rt_prio=0,
                 log=None, lanes=None):
        self.me, self.auth, self.generation = me, auth, generation
        self.channels = channels
        self.mem = mem
        self.keepalive = keepalive
        self.tick_interval = tick_interval
        self.accept_crc = accept_crc
        self.deliver = deliver
        self.counters = counters
        self.ping_sock = ping_sock
        self.ping_addrs = [a for addrs in (ping_targets or {}).values() for a in addrs]
        self.ping_ident = ping_ident
        self.ping_interval = max(keepalive, 0.05)
        self.rt_prio = rt_prio
        self.log = log or (lambda level, msg: None)
        self.lock = threading.Lock()
        self.replay = ReplayGuard()
        self.encoder = BeatEncoder(me, generation, auth)
        self.seq = 0
        self.ping_seq = 0
        self.body = b"{}"
        self.last_payload: dict = {}
        self.body_v: dict = {}      # node -> (generation, "v") of the newest body taken
        self.peer_gen: dict = {}    # node -> its generation we took last (echoed in our beats: "seen")
        self.src_of: dict = {}      # node name (bytes) -> source addresses it sent authenticated beats from
        self.me_b = me.encode()
        self.peer_names = {n.encode() for n in mem.state}
        self._foreign = 0
        self.lanes = lanes
        self.sent_at = 0.0
        self._rfd, self._wfd = os.pipe()
        os.set_blocking(self._rfd, False)
        os.set_blocking(self._wfd, False)
        self._stop = False
        self._final = None
        self.thread = None
        for ch in channels:
            ch.sock.setsockopt(SOL_SOCKET, SO_TIMESTAMPNS, 1)

    # ------------------------------------------------------------ from the daemon's thread
    def set_body(self, body: bytes) -> None:
        """What our beats say from now on (the encoded payload); the lanes send it at once."""
        self.body = body
        if self.lanes is not None:
            self.lanes.set_body(body)

    def send_now(self) -> None:
        """Send a beat at once (a transition started or ended: peers should know now)."""
        self._poke(b"s")

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, name="halb-heartbeat-beat", daemon=True)
        self.thread.start()

    def stop(self, final_body: bytes | None = None, count: int = 3, timeout: float = 5.0) -> None:
        """Stop the lanes, then the thread; it sends `final_body` (the shutdown notice)
        `count` times first: no lane's beat can follow it."""
        if self.lanes is not None:
            self.lanes.stop()
        self._final = (final_body, count) if final_body is not None else None
        self._stop = True
        self._poke(b"q")
        if self.thread is not None:
            self.thread.join(timeout)
        for fd in (self._rfd, self._wfd):
            try:
                os.close(fd)
            except OSError:
                pass

    def _poke(self, b: bytes) -> None:
        try:
            os.write(self._wfd, b)
        except (BlockingIOError, OSError):
            pass            # the pipe is full of wake-ups already, or closed

    # ------------------------------------------------------------ the thread
    def _send(self, body: bytes) -> None:
        self.seq += 1
        enc = self.encoder
        enc.set_body(body)
        data = enc.packet(self.seq)
        c = self.counters
        self.sent_at = time.monotonic()
        for ch in self.channels:
            c["tx"] += len(ch.dests)
            errors = ch.send(data)
            if errors:
                c["tx_errors"] += errors

    def _send_pings(self) -> None:
        self.ping_seq += 1
        pkt = echo_request(self.ping_ident, self.ping_seq)
        for a in self.ping_addrs:
            try:
                self.ping_sock.sendto(pkt, (a, 0))
            except OSError:
                pass

    def _count(self, reason: str) -> None:
        self.counters[reason] = self.counters.get(reason, 0) + 1

    def _drain(self, ch, now: float, offset: float, floor: float, items: list, budget: float = 1.0) -> bool:
        """Read what waits on one link until it is empty (True) or `budget` seconds
        are spent (False: more waits); judge each beat on its arrival time. What
        cannot be ours is dropped before the MAC: a source that is not a configured
        ucast peer, or a name claimed from a source it never sent from (some such
        datagrams are still checked, so a peer with a new address is heard)."""
        if ch.kind != "udp":
            return self._drain_stream(ch, now, items)
        sock, link, mem = ch.sock, ch.name, self.mem
        counters = self.counters
        sources = ch.sources
        src_of = self.src_of
        peers, me = self.peer_names, self.me_b
        end = time.monotonic() + budget
        n = 0
        while True:
            n += 1
            if not n & 63 and time.monotonic() > end:
                return False
            try:
                data, anc, _flags, addr = sock.recvmsg(2048, _ANC)
            except (BlockingIOError, InterruptedError):
                return True
            except OSError:
                return True
            t = now
            for level, kind, raw in anc:
                if level != SOL_SOCKET:
                    continue
                if kind == SO_TIMESTAMPNS and len(raw) >= 16:
                    sec, nsec = _TS.unpack_from(raw)
                    # wall clock of arrival -> our monotonic clock; a wall-clock step cannot
                    # place it before our previous wake-up or after now
                    t = sec + nsec * 1e-9 - offset
                    t = now if t > now else floor if t < floor else t
                elif kind == SO_RXQ_OVFL and len(raw) >= 4:
                    total = _U32.unpack_from(raw)[0]
                    if total != ch.dropped:
                        lost = (total - ch.dropped) & 0xFFFFFFFF
                        ch.dropped = total
                        counters["rx_overflow"] = counters.get("rx_overflow", 0) + lost
                        ev = mem.overflow(link, lost, now)
                        if ev:
                            items.append(("events", ev))
            src = addr[0] if addr else None
            if sources is not None and src not in sources:
                counters["foreign_source"] = counters.get("foreign_source", 0) + 1
                continue
            claimed = peek_node(data)
            if claimed is None:
                pass                # not shaped like a beat: decode says why, cheaply (no MAC)
            elif claimed not in peers:
                # our own name (multicast loop, or forged) or no node of ours: no MAC to compute
                counters["own" if claimed == me else "unknown_node"] += 1
                continue
            known = src_of.get(claimed) if claimed is not None else None
            if known and src not in known:
                # a source this node never sent from: check one such datagram in 64
                self._foreign += 1
                if self._foreign & 63:
                    counters["foreign_source"] = counters.get("foreign_source", 0) + 1
                    continue
            pkt = self._accept(data, link, counters)
            if pkt is None:
                continue
            if self._take(pkt, pkt.node, link, t, items) and src is not None \
                    and (known is None or src not in known):
                src_of.setdefault(claimed, set()).add(src)

    def _accept(self, data, link, counters):
        """The authenticated packet of a peer, new (not a replay), or None (counted)."""
        try:
            pkt = decode(data, self.auth, accept_crc=self.accept_crc)
        except DecodeError as e:
            self._count(e.reason)
            self.log("debug", f"dropped a packet on {link}: {e}")
            return None
        node = pkt.node
        if node == self.me:
            counters["own"] += 1
            return None
        if node not in self.mem.state:
            counters["unknown_node"] += 1
            return None
        why = self.replay.check(node, pkt.generation, pkt.seq, pkt.lane)
        if why:
            self._count(why)
            return None
        return pkt

    def _drain_stream(self, ch, now: float, items: list) -> bool:
        """A serial link: whole frames read so far (arrival = now: no kernel stamp)."""
        for data in ch.read_frames():
            pkt = self._accept(data, ch.name, self.counters)
            if pkt is not None:
                self._take(pkt, pkt.node, ch.name, now, items)
        return True

    def _take(self, pkt, node, link, t, items) -> bool:
        """An authenticated new packet of `node`: True when taken as a (fresh) beat."""
        mem = self.mem
        if pkt.generation != self.peer_gen.get(node):
            # a new life of the node (or a replay of an old one): our beats echo it from now
            # on, and the node's next beats, echoing ours, prove they are not a recording
            self.peer_gen[node] = pkt.generation
            items.append(("generation", node, pkt.generation))
        p = pkt.payload
        if p is not self.last_payload.get(node):    # bodies are parsed once: same body, same dict
            if not fresh(p, self.me, self.generation):
                # signed by the node, but not naming our current generation: sent before
                # it heard this life of ours (or recorded before we started): no sign of life
                self._count("stale")
                return False
            try:
                {int(x) for x in p.get("held", ())}
                int(p.get("claim", 0)), int(p.get("ping", 0))
                ver = (pkt.generation, int(p.get("v", 0)))
            except (TypeError, ValueError):
                self._count("malformed")
                return False
            if ver < self.body_v.get(node, ver):
                # a lane's beat with the body before the newest: alive, nothing new to say
                self.counters["rx"] += 1
                self.counters["old_body"] = self.counters.get("old_body", 0) + 1
                ev = mem.beat(node, link, t)
                if ev:
                    items.append(("events", ev))
                return True
            self.body_v[node] = ver
        self.counters["rx"] += 1
        if p.get("st") == "shutdown":
            self.last_payload[node] = p
            items.append(("payload", node, p, mem.leave(node, t)))
            return True
        ev = mem.beat(node, link, t)
        if p is not self.last_payload.get(node):
            self.last_payload[node] = p
            items.append(("payload", node, p, ev))
        elif ev:
            items.append(("events", ev))
        return True

    def _drain_pings(self, now: float, items: list) -> None:
        while True:
            try:
                data, addr = self.ping_sock.recvfrom(2048)
            except (BlockingIOError, InterruptedError, OSError):
                return
            if parse_echo_reply(data, self.ping_ident):
                ev = self.mem.ping_reply(addr[0], now)
                if ev:
                    items.append(("events", ev))

    def _run(self) -> None:
        lanes = self.lanes
        period = self.keepalive
        if lanes is not None:
            period = self.keepalive * lanes.n
            cpu = lanes.cpu_of(0)
            if cpu is not None:
                try:
                    os.sched_setaffinity(0, {cpu})      # this thread only
                except OSError:
                    pass
        if self.rt_prio:
            try:
                os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(self.rt_prio))
            except OSError:
                pass
        mono, wall = time.monotonic, time.time
        rfd = self._rfd
        watch = [rfd] + [ch.fileno() for ch in self.channels]
        if self.ping_sock is not None:
            watch.append(self.ping_sock.fileno())
        # one link's queue is read for at most this long before beats go out and lanes
        # are stamped again
        budget = max(0.001, min(self.keepalive / 4, 0.005))
        now = mono()
        next_beat = now
        next_ping = now
        floor = now
        last_tick = now
        send_now = False
        try:
            while not self._stop:
                period = self.keepalive * (lanes.n if lanes is not None else 1)    # a SIGHUP may change it
                now = mono()
                if send_now or now >= next_beat - 0.0002:
                    self._send(self.body)
                    if now >= next_beat - 0.0002:
                        next_beat += period
                        if next_beat < now:
                            next_beat = now + period
                    send_now = False
                if lanes is not None:
                    lanes.stamp(now, self.sent_at)
                if self.ping_sock is not None and now >= next_ping:
                    self._send_pings()
                    next_ping = now + self.ping_interval
                items: list = []
                offset = wall() - mono()
                now = mono()
                with self.lock:
                    drained = True
                    for ch in self.channels:
                        drained &= self._drain(ch, now, offset, floor, items, budget)
                    if self.ping_sock is not None:
                        self._drain_pings(now, items)
                    if drained or now - last_tick >= self.tick_interval:
                        # judged with every queue read (a beat still queued is no silence),
                        # or at least once a tick under a backlog (overflows excuse the silence)
                        last_tick = now
                        ev = self.mem.tick(now)
                        if ev:
                            items.append(("events", ev))
                    else:
                        self.counters["rx_backlog"] = self.counters.get("rx_backlog", 0) + 1
                    deadline = self.mem.next_deadline()
                floor = now
                if items:
                    self.deliver(items)
                wake = min(next_beat, now + self.tick_interval, deadline + 0.0002)
                if self.ping_sock is not None:
                    wake = min(wake, next_ping)
                delay = wake - mono()
                if not drained:
                    delay = 0
                if delay > 0:
                    # woken by data too: a beat is judged (and a flood drained) when it comes
                    r, _, _ = select.select(watch, [], [], delay)
                    if rfd in r:
                        try:
                            got = os.read(rfd, 512)
                        except BlockingIOError:
                            got = b""
                        if b"s" in got:
                            send_now = True
            if self._final is not None:
                body, count = self._final
                for _ in range(count):
                    self._send(body)
        except Exception as e:  # noqa: BLE001 - say why the beats stopped, then stop the daemon
            self.log("error", f"the beat thread failed: {type(e).__name__}: {e}")
            self.deliver([("failed", str(e))])
