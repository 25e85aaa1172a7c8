"""Membership: who is up, late or dead, per node and per link (sans-I/O).

Fed with `beat(node, link, now)`, `ping_reply(target, now)` and
`tick(now)`; every call returns the events it caused, in order. Time is a
float in seconds from any monotonic origin, passed in by the caller.

- A peer never heard is "init" until `initdead` after start, then "dead".
- A peer is "dead" once `deadtime` passed since its last beat on any link.
- A beat arriving more than `warntime` after the previous one is "late".
- A link (peer, interface) is dead once `deadtime` passed without a beat
  on it; the peer stays up while any link carries its beats.
- A link whose socket overflowed (the kernel dropped datagrams: a flood
  of junk, `overflow(link, n, now)`) may have lost the peer's beats with
  the junk: a peer silent since before the overflow is reported behind a
  flooded link ("node_flooded"), not dead, until the flood has been over
  for deadtime, and at most `flood_grace` (default max(10 x deadtime,
  10 s)) after its last beat.
- If our own loop ran late (a tick came much later than expected: CPU
  starvation, SIGSTOP, a VM pause), the silence is ours, not theirs: every
  peer's and ping node's clock is moved forward by the stall so nobody is
  declared dead on that evidence.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Event:
    kind: str        # node_up node_dead node_late link_up link_dead ping_up ping_dead loop_late
    #                  link_flooded node_flooded
    node: str | None = None
    link: str | None = None
    value: float = 0.0   # interval (late), stall length (loop_late)

    def __str__(self):
        if self.kind == "node_up":
            return f"node {self.node}: status up"
        if self.kind == "node_dead":
            return f"node {self.node}: is dead"
        if self.kind == "node_late":
            return f"Late heartbeat: Node {self.node}: interval {self.value * 1000:.0f} ms"
        if self.kind == "link_up":
            return f"Link {self.node}:{self.link} up."
        if self.kind == "link_dead":
            return f"Link {self.node}:{self.link} dead."
        if self.kind == "ping_up":
            return f"ping node {self.node}: status up"
        if self.kind == "ping_dead":
            return f"ping node {self.node}: is dead"
        if self.kind == "link_flooded":
            return (f"Link {self.link} flooded: {self.value:.0f} datagrams dropped by the kernel "
                    "(receive queue full)")
        if self.kind == "node_flooded":
            return (f"node {self.node}: no beat for {self.value * 1000:.0f} ms, but its link {self.link} is "
                    "flooded: not declaring it dead on that silence")
        if self.kind == "loop_late":
            return (f"our own loop ran {self.value * 1000:.0f} ms late (CPU starvation or pause): "
                    "not judging peers on that silence")
        return f"{self.kind} {self.node or ''} {self.link or ''}".strip()


class Membership:
    def __init__(self, me: str, nodes, *, keepalive: float, deadtime: float, warntime: float | None = None,
                 initdead: float | None = None, ping_targets: dict | None = None, deadping: float | None = None,
                 tick_interval: float | None = None, flood_grace: float | None = None, now: float = 0.0):
        self.me = me
        self.peers = [n for n in nodes if n != me]
        self.keepalive = keepalive
        self.deadtime = deadtime
        self.warntime = warntime if warntime is not None else deadtime * 0.75
        self.initdead = initdead if initdead is not None else deadtime
        self.deadping = deadping if deadping is not None else deadtime
        self.tick_interval = tick_interval if tick_interval is not None else keepalive / 2
        # a tick later than this is our own stall
        self.stall_bound = max(2 * self.tick_interval, keepalive, 0.005)
        self.start = now
        self.last_tick = now
        self.state = {n: "init" for n in self.peers}
        self.last_seen: dict[str, float] = {}
        self.links: dict[tuple[str, str], float] = {}      # (node, link) -> last beat
        self.link_state: dict[tuple[str, str], str] = {}
        self.deaths = {n: 0 for n in self.peers}
        self.late_count = {n: 0 for n in self.peers}
        self.max_interval = {n: 0.0 for n in self.peers}   # longest silence between two beats of each peer
        self.stalls = 0
        self.ping_members = dict(ping_targets or {})          # target -> addresses
        self.ping_of = {a: t for t, addrs in self.ping_members.items() for a in addrs}
        self.ping_seen: dict[str, float] = {}
        self.ping_state = {t: "init" for t in self.ping_members}
        self.flood_grace = flood_grace if flood_grace is not None else max(10 * deadtime, 10.0)
        self.flood_last: dict[str, float] = {}      # link -> last overflow seen
        self.flood_drops: dict[str, int] = {}
        self.flooded_peer: dict[str, str] = {}      # peer -> flooded link it is waited for on

    # ------------------------------------------------------------- inputs
    def beat(self, node: str, link: str, now: float) -> list[Event]:
        if node not in self.state:
            return []
        ev: list[Event] = []
        prev = self.last_seen.get(node)
        if prev is not None and now < prev:
            now = prev           # arrival times may come slightly out of order between links
        if prev is not None:
            if now - prev > self.max_interval[node]:
                self.max_interval[node] = now - prev
        if self.state[node] == "up" and prev is not None:
            if now - prev > self.warntime:
                self.late_count[node] += 1
                ev.append(Event("node_late", node, value=now - prev))
        self.last_seen[node] = now
        key = (node, link)
        self.links[key] = now
        if self.link_state.get(key) != "up":
            self.link_state[key] = "up"
            ev.append(Event("link_up", node, link))
        if self.state[node] != "up":
            self.state[node] = "up"
            ev.append(Event("node_up", node))
        self.flooded_peer.pop(node, None)
        return ev

    def ping_reply(self, addr: str, now: float) -> list[Event]:
        target = self.ping_of.get(addr)
        if target is None:
            return []
        self.ping_seen[target] = now
        if self.ping_state[target] != "up":
            self.ping_state[target] = "up"
            return [Event("ping_up", target)]
        return []

    def overflow(self, link: str, dropped: int, now: float) -> list[Event]:
        """The kernel dropped `dropped` datagrams on `link` (receive queue full)."""
        if dropped <= 0:
            return []
        prev = self.flood_last.get(link)
        self.flood_last[link] = now
        self.flood_drops[link] = self.flood_drops.get(link, 0) + dropped
        if prev is None or now - prev > self.deadtime:
            return [Event("link_flooded", link=link, value=dropped)]
        return []

    def _flood_excuse(self, node: str, now: float) -> str | None:
        """A flooded link that may have eaten `node`'s beats: it overflowed since the
        node's last beat (or within deadtime before it), and the grace is not over."""
        last = self.last_seen.get(node)
        if last is None or now - last > self.flood_grace:
            return None
        for (n, link) in self.links:
            f = self.flood_last.get(link)
            if n == node and f is not None and f >= last - self.deadtime and now - f <= self.deadtime:
                return link
        return None

    def leave(self, node: str, now: float) -> list[Event]:
        """A peer said it is shutting down: dead now, no need to wait deadtime."""
        if self.state.get(node) in (None, "dead"):
            return []
        self.state[node] = "dead"
        self.deaths[node] += 1
        for key in self.link_state:
            if key[0] == node:
                self.link_state[key] = "dead"
        return [Event("node_dead", node)]

    def tick(self, now: float) -> list[Event]:
        ev: list[Event] = []
        gap = now - self.last_tick
        self.last_tick = now
        if gap > self.stall_bound:
            shift = gap - self.tick_interval
            self.stalls += 1
            ev.append(Event("loop_late", value=shift))
            # the silence during the stall does not count; what was heard since is kept as is
            for n in self.last_seen:
                self.last_seen[n] = min(self.last_seen[n] + shift, max(self.last_seen[n], now))
            for k in self.links:
                self.links[k] = min(self.links[k] + shift, max(self.links[k], now))
            for t in self.ping_seen:
                self.ping_seen[t] = min(self.ping_seen[t] + shift, max(self.ping_seen[t], now))
            self.start = min(self.start + shift, now)
        for n in self.peers:
            st = self.state[n]
            if st == "init":
                if now - self.start >= self.initdead:
                    self.state[n] = "dead"
                    self.deaths[n] += 1
                    ev.append(Event("node_dead", n))
                continue
            for (ln_node, link), t in self.links.items():
                if ln_node == n and self.link_state[(ln_node, link)] == "up" and now - t > self.deadtime:
                    if self.flood_last.get(link, -1e18) >= t - self.deadtime and \
                            now - self.flood_last[link] <= self.deadtime and now - t <= self.flood_grace:
                        continue          # flooded, not (yet) dead
                    self.link_state[(ln_node, link)] = "dead"
                    ev.append(Event("link_dead", n, link))
            if st == "up" and now - self.last_seen[n] > self.deadtime:
                excuse = self._flood_excuse(n, now)
                if excuse is not None:
                    if self.flooded_peer.get(n) != excuse:
                        self.flooded_peer[n] = excuse
                        ev.append(Event("node_flooded", n, excuse, now - self.last_seen[n]))
                    continue
                self.flooded_peer.pop(n, None)
                self.state[n] = "dead"
                self.deaths[n] += 1
                ev.append(Event("node_dead", n))
        for t in self.ping_members:
            seen = self.ping_seen.get(t)
            base = seen if seen is not None else self.start
            if self.ping_state[t] != "dead" and now - base > self.deadping:
                self.ping_state[t] = "dead"
                ev.append(Event("ping_dead", t))
        return ev

    def next_deadline(self) -> float:
        """The earliest time at which `tick` may declare something dead (inf: nothing pending).
        A caller that sleeps until then, or until its next beat, misses no deadline."""
        t = float("inf")
        for n in self.peers:
            st = self.state[n]
            if st == "init":
                t = min(t, self.start + self.initdead)
            elif st == "up":
                d = self.last_seen[n] + self.deadtime
                if n in self.flooded_peer:         # waited for behind a flooded link
                    d = min(self.last_seen[n] + self.flood_grace,
                            self.flood_last.get(self.flooded_peer[n], 0.0) + self.deadtime)
                t = min(t, d)
        for key, last in self.links.items():
            if self.link_state[key] == "up":
                d = last + self.deadtime
                f = self.flood_last.get(key[1])
                if f is not None and f >= last - self.deadtime:
                    d = max(d, min(f + self.deadtime, last + self.flood_grace))
                t = min(t, d)
        for tg in self.ping_members:
            if self.ping_state[tg] != "dead":
                t = min(t, self.ping_seen.get(tg, self.start) + self.deadping)
        return t

    # ------------------------------------------------------------- views
    def alive(self, node: str) -> bool:
        return node == self.me or self.state.get(node) == "up"

    def settled(self) -> bool:
        """True once every peer's state is known (up or dead): decisions may be made."""
        return all(s != "init" for s in self.state.values())

    def ping_score(self) -> int:
        """Ping nodes reachable; before deadping, a ping node not yet heard counts as reachable."""
        return sum(1 for s in self.ping_state.values() if s != "dead")

    def snapshot(self, now: float) -> dict:
        return {
            "nodes": {n: {"status": self.state[n],
                          "last_beat_ago": (round(now - self.last_seen[n], 4) if n in self.last_seen else None),
                          "deaths": self.deaths[n], "late": self.late_count[n],
                          "max_interval": round(self.max_interval[n], 4)} for n in self.peers},
            "links": {f"{n}:{l}": ("flooded" if s == "up" and l in self.flood_last
                                   and now - self.flood_last[l] <= self.deadtime else s)
                      for (n, l), s in sorted(self.link_state.items())},
            "flooded_links": {l: {"dropped": self.flood_drops[l], "last_ago": round(now - t, 3)}
                              for l, t in self.flood_last.items()},
            "ping": dict(self.ping_state),
            "stalls": self.stalls,
        }
