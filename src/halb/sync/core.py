"""The sync daemons' decisions, without sockets, clocks or nft: time comes
in as an argument, datagrams and nft commands go out as values.

Master side
    MasterView   dest mark -> (service, real server) of the master's table
    to_entries() the kernel's flow / persistence elements -> Entries
    Tracker      what changed since it was last sent (new, other server,
                 other state, or not sent for `resend` seconds, or its expiry
                 moved by half its timeout): the dirty set, bounded by the
                 number of live flows (nothing queues up beyond it)
    Sender       dirty entries -> datagrams under a packet-rate budget
                 (token bucket), numbered, signed; a keepalive when idle

Backup side
    Receiver     datagram -> accepted entries: decode (codec), syncid,
                 time stamp within MAX_SKEW of this node's clock, replay
                 window per signed sender identity (epoch + 64-datagram
                 window; never per source address), counters for every
                 reason a datagram or entry is dropped
    BackupView   (service, real server) -> this node's dest mark
    plan_apply() accepted entries -> nft element additions in this node's
                 own marks, with the time they have left
"""
from __future__ import annotations

import struct
import time
from dataclasses import dataclass, field

from halb.sync import codec
from halb.sync.codec import CLOSING, ESTABLISHED, NONE, TCP, TEMPLATE, UDP, Drop, Entry

T = "inet halb"
REPLAY_WINDOW = 64
KEEPALIVE = 1.0          # s without a datagram: the master sends an empty one
RESEND = 60.0            # s: an entry is sent again at least this often while it lives
MIN_LEFT_MS = 200        # an entry with less time left is not worth adding
MAX_SKEW = 30.0          # s: a datagram stamped further from the backup's clock is refused


# --------------------------------------------------------------------------
# what both ends know of a table


def svc_ident(key) -> tuple:
    """A ServiceKey (or its fields) as the wire names a service."""
    if key.proto == "fwm":
        return ("fwm", int(key.fwmark))
    return (key.proto, key.addr, int(key.port))


@dataclass
class SvcView:
    ident: tuple
    sid: int
    persistent: bool = False
    timeout: int = 0                                   # persistence timeout (s)
    dests: dict = field(default_factory=dict)          # (addr, port) -> mid


@dataclass
class TableView:
    """One node's table as the sync needs it (built by the I/O shell from the
    nft engine's state; see halb.nft.syncio)."""

    services: dict = field(default_factory=dict)       # ident -> SvcView
    tcp: int = 900
    tcpfin: int = 120
    udp: int = 300

    def __post_init__(self):
        self.by_mid = {}
        self.by_sid = {}
        for sv in self.services.values():
            self.by_sid[sv.sid] = sv
            for (addr, port), mid in sv.dests.items():
                self.by_mid[mid] = (sv, addr, port)


# --------------------------------------------------------------------------
# master


def _ident_fields(ident: tuple) -> tuple:
    if ident[0] == "fwm":
        return "fwm", ident[1], "0.0.0.0", 0
    return ident[0], 0, ident[1], ident[2]


def to_entries(view: TableView, flows, uflows, closing, templates) -> list[tuple[Entry, int]]:
    """Kernel elements -> [(Entry, full timeout s)].

    flows/uflows: [(key tuple (vaddr, vport, caddr, cport), expires s, timeout s, mark)];
    closing: the same without the mark; templates: {sid: [(client net, expires, timeout, mark)]}.
    Elements whose mark is not one of the table's real servers are skipped."""
    mask = 0xFFFFFF
    closing_keys = {c[0] for c in closing}
    out = []
    for kind, elems in ((TCP, flows), (UDP, uflows)):
        for key, expires, timeout, mark in elems:
            if not isinstance(mark, int) or not isinstance(key, tuple) or len(key) != 4:
                continue
            d = view.by_mid.get(mark & mask)
            if d is None:
                continue
            sv, daddr, dport = d
            p, fwmark, saddr, sport = _ident_fields(sv.ident)
            if p != "fwm" and (p == "tcp") != (kind == TCP):
                continue
            state = (CLOSING if key in closing_keys else ESTABLISHED) if kind == TCP else NONE
            e = Entry(kind, state, p, fwmark, saddr, sport, str(key[0]), int(key[1]), str(key[2]),
                      int(key[3]), daddr, int(dport), int((expires or 0) * 1000))
            out.append((e, int(timeout or 0)))
    for sid, elems in templates.items():
        sv = view.by_sid.get(sid)
        if sv is None:
            continue
        p, fwmark, saddr, sport = _ident_fields(sv.ident)
        for key, expires, timeout, mark in elems:
            if not isinstance(mark, int) or not isinstance(key, str):
                continue
            d = view.by_mid.get(mark & mask)
            if d is None or d[0] is not sv:
                continue
            e = Entry(TEMPLATE, NONE, p, fwmark, saddr, sport, "0.0.0.0", 0, key, 0, d[1], int(d[2]),
                      int((expires or 0) * 1000))
            out.append((e, int(timeout or 0)))
    return out


def _sig(e: Entry) -> tuple:
    return (e.svc_proto, e.fwmark, e.svc_addr, e.svc_port, e.daddr, e.dport, e.state)


class Tracker:
    """The master's memory of what it sent: observe() a full snapshot of the
    kernel's elements, take() the entries to send now."""

    def __init__(self, resend: float = RESEND):
        self.resend = resend
        self.sent: dict[tuple, tuple] = {}    # key -> (sig, abs expiry, sent at)
        self.dirty: dict[tuple, tuple] = {}   # key -> (Entry, abs expiry)
        self.live = 0

    def observe(self, items, now: float) -> int:
        """items: [(Entry with its time left at `now`, full timeout s)].
        Returns the number of entries that became dirty."""
        seen = set()
        added = 0
        for e, full in items:
            k = e.flow_key
            seen.add(k)
            exp = now + e.timeout_ms / 1000.0
            s = self.sent.get(k)
            if s is not None:
                sig, sexp, at = s
                if sig == _sig(e) and now - at < self.resend and exp - sexp < max(1.0, 0.5 * full):
                    self.dirty.pop(k, None)   # nothing new (an older version may wait)
                    continue
            if k not in self.dirty:
                added += 1
            self.dirty[k] = (e, exp)
        # forget what expired on the master (the backup's copies expire too)
        for k in [k for k in self.sent if k not in seen]:
            del self.sent[k]
        for k in [k for k in self.dirty if k not in seen]:
            del self.dirty[k]
        self.live = len(seen)
        return added

    def take(self, n: int, now: float) -> list[Entry]:
        """Up to n dirty entries with their time left at `now`, marked sent."""
        out = []
        while self.dirty and len(out) < n:
            k = next(iter(self.dirty))
            e, exp = self.dirty.pop(k)
            left = int((exp - now) * 1000)
            if left < MIN_LEFT_MS:
                continue
            out.append(e._replace(timeout_ms=left))
            self.sent[k] = (_sig(e), exp, now)
        return out


class Sender:
    """Datagrams under a rate budget: `rate` datagrams per second, bursts of
    `burst`; numbered within the sender's epoch and signed with the key."""

    def __init__(self, *, syncid: int, epoch: int, key: bytes | None, maxlen: int = codec.DEFAULT_MAXLEN,
                 rate: float = 2000.0, burst: int = 64, sender: int = 0, clock=time.time):
        self.syncid, self.epoch, self.key = syncid, epoch, key
        self.sender = sender
        self.clock = clock       # the wall clock the datagrams are stamped with
        self.per_packet = codec.per_packet(maxlen, bool(key))
        self.rate, self.burst = float(rate), int(burst)
        self.tokens = float(burst)
        self.last = None
        self.seq = 0
        self.last_sent = -1e18
        self.packets = 0
        self.entries = 0

    def _refill(self, now: float) -> None:
        if self.last is not None:
            self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now

    def poll(self, tracker: Tracker, now: float) -> list[bytes]:
        """The datagrams to send now (dirty entries first; a keepalive when
        nothing was sent for KEEPALIVE seconds)."""
        self._refill(now)
        out = []
        while tracker.dirty and self.tokens >= 1.0:
            batch = tracker.take(self.per_packet, now)
            if not batch:
                break
            out.append(self._packet(batch, now))
        if not out and now - self.last_sent >= KEEPALIVE and self.tokens >= 1.0:
            out.append(self._packet([], now))
        return out

    def _packet(self, batch, now) -> bytes:
        self.tokens -= 1.0
        self.seq = (self.seq + 1) & 0xFFFFFFFF
        self.packets += 1
        self.entries += len(batch)
        self.last_sent = now
        return codec.encode_packet(batch, syncid=self.syncid, epoch=self.epoch, seq=self.seq, key=self.key,
                                   sender=self.sender, stamp_ms=int(self.clock() * 1000))


def new_epoch(now_wall: float, rand: int) -> int:
    """A sender generation: its start time in ms, 16 random low bits."""
    return (int(now_wall * 1000) << 16) | (rand & 0xFFFF)


# --------------------------------------------------------------------------
# backup


@dataclass
class Peer:
    epoch: int
    top: int               # highest sequence number accepted
    window: int = 1        # bit i: top - i accepted
    packets: int = 0
    entries: int = 0
    last_seen: float = 0.0
    sender: int = 0
    addr: str = ""          # where its last accepted datagram came from (for the logs only)


class Receiver:
    """Validates datagrams from masters; counts every drop by reason.

    Replay state is keyed by the sender identity the datagram carries (signed
    with the key), not by its source address. `max_skew`: datagrams stamped
    further than this from `wall` (the backup's clock, given to receive())
    are refused; None turns the check off."""

    def __init__(self, *, key: bytes | None, syncid: int = 0, max_peers: int = 64, on_drop=None,
                 max_skew: float | None = MAX_SKEW):
        self.key = key
        self.max_skew = max_skew
        self.last_peer: Peer | None = None
        self.on_drop = on_drop   # (reason, src, detail) -> None: the shell logs
        self.syncid = syncid
        self.max_peers = max_peers
        self.peers: dict[int, Peer] = {}   # sender identity -> its replay state
        self.counters = {"packets_received": 0, "packets_accepted": 0, "entries_received": 0}
        self.drops: dict[str, int] = {}

    def drop(self, reason: str, n: int = 1, src: str = "", detail: str = "") -> None:
        self.drops[reason] = self.drops.get(reason, 0) + n
        if self.on_drop is not None:
            self.on_drop(reason, src, detail)

    def receive(self, data: bytes, src: str, now: float, wall: float | None = None) -> list[Entry]:
        """Entries of an accepted datagram ([] if refused). now: monotonic s;
        wall: this node's wall clock (s since 1970) for the time-stamp check."""
        self.counters["packets_received"] += 1
        self.last_peer = None
        try:
            pkt, bad = codec.decode_packet(data, self.key)
            if self.syncid and pkt.syncid != self.syncid:
                raise Drop("syncid", f"syncid {pkt.syncid}, this daemon takes {self.syncid}")
            if wall is not None and self.max_skew is not None and \
                    abs(pkt.stamp_ms / 1000.0 - wall) > self.max_skew:
                raise Drop("stale_time", f"stamped {pkt.stamp_ms / 1000.0 - wall:+.0f} s from this node's clock "
                                         f"(more than {self.max_skew:.0f} s: an old datagram replayed, or "
                                         f"unsynchronised clocks)")
            self._replay_check(pkt, src, now)
        except Drop as d:
            self.drop("packet_" + d.reason, 1, src, d.detail)
            return []
        self.counters["packets_accepted"] += 1
        self.counters["entries_received"] += len(pkt.entries) + len(bad)
        for d in bad:
            self.drop("entry_" + d.reason, 1, src, d.detail)
        p = self.peers[pkt.sender]
        p.packets += 1
        p.entries += len(pkt.entries)
        p.addr = src
        self.last_peer = p
        return pkt.entries

    def _replay_check(self, pkt: codec.Packet, src: str, now: float) -> None:
        p = self.peers.get(pkt.sender)
        if p is None or pkt.epoch > p.epoch:
            if p is None and len(self.peers) >= self.max_peers:
                oldest = min(self.peers, key=lambda s: self.peers[s].last_seen)
                del self.peers[oldest]
            old = p
            self.peers[pkt.sender] = Peer(pkt.epoch, pkt.seq, 1, old.packets if old else 0,
                                          old.entries if old else 0, now, pkt.sender, src)
            return
        if pkt.epoch < p.epoch:
            raise Drop("stale_epoch", "a datagram of an older sender generation")
        d = (pkt.seq - p.top) & 0xFFFFFFFF
        if d and d < 0x80000000:     # newer
            p.window = ((p.window << d) | 1) & ((1 << REPLAY_WINDOW) - 1) if d < REPLAY_WINDOW else 1
            p.top = pkt.seq
        else:
            back = (p.top - pkt.seq) & 0xFFFFFFFF
            if back >= REPLAY_WINDOW:
                raise Drop("replay", "sequence number too old")
            if p.window & (1 << back):
                raise Drop("replay", "sequence number already seen")
            p.window |= 1 << back
        p.last_seen = now


@dataclass
class Add:
    """One element to add on the backup."""

    map: str          # flows | uflows | p<sid>
    key: str          # nft key expression
    mark: int
    timeout: int      # s: the element's timeout
    expires_ms: int
    closing: bool = False
    flow: tuple = ()  # the kernel's key tuple, to match a listing


def plan_apply(entries, view: TableView, unplaced: list | None = None) -> tuple[list[Add], dict[str, int]]:
    """Entries -> element additions in this node's marks, and the entries
    refused by reason (unknown_service, unknown_server, expired...). The
    entries refused for want of their service or real server are appended
    to `unplaced` when given (see Held)."""
    adds: list[Add] = []
    refused: dict[str, int] = {}

    def no(reason):
        refused[reason] = refused.get(reason, 0) + 1

    for e in entries:
        sv = view.services.get(e.svc_ident)
        if sv is None:
            no("unknown_service")
            if unplaced is not None:
                unplaced.append(e)
            continue
        mid = sv.dests.get((e.daddr, e.dport))
        if mid is None:
            no("unknown_server")
            if unplaced is not None:
                unplaced.append(e)
            continue
        if e.timeout_ms < MIN_LEFT_MS:
            no("expired")
            continue
        mark = 0x4A000000 | mid
        if e.kind == TEMPLATE:
            if not sv.persistent:
                no("not_persistent")
                continue
            tmo = sv.timeout
            adds.append(Add(f"p{sv.sid}", e.caddr, mark, tmo, min(e.timeout_ms, tmo * 1000), flow=e.caddr))
            continue
        if e.kind == TCP:
            tmo = view.tcpfin if e.state == CLOSING else view.tcp
            m = "flows"
        else:
            tmo = view.udp
            m = "uflows"
        key = f"{e.vaddr} . {e.vport} . {e.caddr} . {e.cport}"
        adds.append(Add(m, key, mark, tmo, min(e.timeout_ms, tmo * 1000), e.state == CLOSING,
                        (e.vaddr, e.vport, e.caddr, e.cport)))
    return adds, refused


def render(adds: list[Add], replace: set | None = None) -> list[str]:
    """nft commands adding the elements (one command per map). Elements in
    `replace` ((map, flow) pairs that exist with another value) are deleted
    first, in the same transaction."""
    by_map: dict[str, list[str]] = {}
    closing: list[str] = []
    dels: dict[str, list[str]] = {}
    last: dict[tuple, Add] = {}
    for a in adds:                      # the last version of a key wins
        last[(a.map, a.key)] = a
    for a in last.values():
        by_map.setdefault(a.map, []).append(
            f"{a.key} timeout {a.timeout}s expires {max(1, a.expires_ms)}ms : 0x{a.mark:x}")
        if a.closing:
            closing.append(f"{a.key} timeout {a.timeout}s expires {max(1, a.expires_ms)}ms")
        if replace and (a.map, a.flow) in replace:
            dels.setdefault(a.map, []).append(a.key)
    cmds = [f"delete element {T} {m} {{ {', '.join(ks)} }}" for m, ks in dels.items()]
    for m, elems in by_map.items():
        for i in range(0, len(elems), 2048):
            cmds.append(f"add element {T} {m} {{ {', '.join(elems[i:i + 2048])} }}")
    for i in range(0, len(closing), 2048):
        cmds.append(f"add element {T} closing {{ {', '.join(closing[i:i + 2048])} }}")
    return cmds


def clashes(adds: list[Add], existing: dict[str, dict]) -> set:
    """(map, flow) of the additions whose key exists here with another mark
    (existing: map -> {flow: mark}); nft refuses to add those."""
    out = set()
    for a in adds:
        cur = existing.get(a.map, {}).get(a.flow)
        if cur is not None and cur != a.mark:
            out.add((a.map, a.flow))
    return out


def monotonic() -> float:
    return time.monotonic()


HELD_MAX = 131072
HELD = struct.Struct("!Q")
HELD_BATCH = 8192        # held entries placed per nft transaction


def _held_key(b: bytes) -> bytes:
    """The flow key of a packed entry (codec.ENTRY layout): kind + flow for a
    connection, kind + service + client network for a template."""
    if b[0] == TEMPLATE:
        return b[0:1] + b[2:3] + b[4:14] + b[20:24]
    return b[0:1] + b[14:26]


class Held:
    """Entries this node could not place yet (its table lacks their service
    or real server: in the article's set-up the backup's table only appears
    when ldirectord starts there, at takeover). Kept until they expire, at
    most `limit` of them (the newest version of a connection wins; beyond
    the limit new ones are counted in `overflow` and dropped); placed when
    the table changes; handed from the stopping backup daemon to the master
    daemon that replaces it through a file (dump/load), as IPVS's synced
    connections outlive its backup thread in the kernel.

    Stored packed (the entry's 36 wire bytes + its expiry in ms: about 160
    bytes an entry in all, not the ~420 of Entry tuples), so that a full
    store stays near 20 MB. place() is pure work on this object: the daemon
    runs it in a thread and adds its result in batches of HELD_BATCH."""

    def __init__(self, limit: int = HELD_MAX):
        self.limit = limit
        self.items: dict[bytes, bytes] = {}   # flow key -> expiry ms (u64) + packed entry
        self.overflow = 0

    def __len__(self):
        return len(self.items)

    def add(self, entries, now: float) -> None:
        items = self.items
        for e in entries:
            b = codec.pack_entry(e)
            k = _held_key(b)
            if k not in items and len(items) >= self.limit:
                self.overflow += 1
                continue
            items[k] = HELD.pack(int(now * 1000) + e.timeout_ms) + b

    def alive(self, now: float) -> list[Entry]:
        """The held entries with their time left at `now` (expired ones go)."""
        out = []
        now_ms = int(now * 1000)
        for k, v in list(self.items.items()):
            left = HELD.unpack_from(v)[0] - now_ms
            if left < MIN_LEFT_MS:
                del self.items[k]
                continue
            out.append(codec.unpack_entry(v, HELD.size)._replace(timeout_ms=left))
        return out

    def place(self, view: TableView, now: float) -> tuple[list[Add], dict[str, int]]:
        """Additions for the held entries this table can now take; those stay
        held that it still cannot."""
        entries = self.alive(now)
        still: list = []
        adds, refused = plan_apply(entries, view, still)
        keep = {_held_key(codec.pack_entry(e)) for e in still}
        for k in [k for k in self.items if k not in keep]:
            del self.items[k]
        return adds, refused

    def dump(self, now: float) -> bytes:
        """The alive entries with their expiry (ms, wall clock), for load()."""
        out = bytearray(b"HLBH")
        for e in self.alive(now):
            out += HELD.pack(int((now * 1000) + e.timeout_ms)) + codec.pack_entry(e)
        return bytes(out)

    def load(self, data: bytes, now: float) -> int:
        """Entries from dump(); a damaged file yields what it holds up to the
        damage. Returns the number taken."""
        if not data.startswith(b"HLBH"):
            return 0
        n = 0
        step = HELD.size + codec.ENTRY_LEN
        for off in range(4, len(data) - step + 1, step):
            (exp_ms,) = HELD.unpack_from(data, off)
            try:
                e = codec.unpack_entry(data, off + HELD.size)
            except (codec.Drop, struct.error):
                break
            left = exp_ms - int(now * 1000)
            if left >= MIN_LEFT_MS:
                self.add([e._replace(timeout_ms=min(left, codec.MAX_TIMEOUT_MS))], now)
                n += 1
        return n
