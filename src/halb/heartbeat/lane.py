"""Beat lanes: the node's beats sent from more than one CPU.

Why. On a virtual machine the hypervisor can hold a vCPU for tens of
milliseconds: `bench/bench_stalls.py` saw a C thread at SCHED_FIFO 51,
memory locked, sleeping 4 ms, wake up 53 ms late (13 times more than
10 ms late in 5 minutes with both cores loaded). A node whose one beat
sender sits on that vCPU goes silent although it is alive, and a peer with
a 20 ms deadtime declares it dead: no sender, in any language, fixes that.
What does is a second sender on another CPU, when the two CPUs are not held
at the same moment (the same bench measures how long both pinned tickers
were late at once).

Lane 0 is the daemon's beat thread (beatloop.py): it receives, judges and
sends. Lane k >= 1 is this small process, pinned to its own CPU at the beat
thread's real-time priority, memory locked, that only signs and sends the
node's current beat: n lanes each send every n x keepalive, lane k aimed
k x keepalive after lane 0's last beat, so the peers still get one beat per
keepalive, from whichever lane runs, with no extra datagram.

A lane proves nothing by itself: it sends only while lane 0 lives. Lane 0
stamps a shared page at every wake-up; a lane whose newest stamp is older
than `lease` stops sending (counted) until the stamps come back, so a hung
daemon is still declared dead, `lease` later. The daemon numbers its
bodies (payload "v"); receivers ignore a body older than the newest they
took, since a lane may send the previous body for a moment after a change.
Each lane has its own sequence (packet flags), checked per lane
(packet.ReplayGuard).

Parent side: `Lanes` (spawn, new body, stamps, stop, status). Child side:
`main(["lane", FD])` in a bare interpreter (python -S), configured over the
control socket FD (JSON, then b"B" + body on each change; end of file = stop).
It imports packet.py alone, which loads neither OpenSSL nor dataclasses.
"""
from __future__ import annotations

import json
import mmap
import os
import select
import signal
import socket
import struct
import sys
import time

PAGE = 4096
_HEAD = struct.Struct("=qq")          # lane 0: last wake-up, last beat sent (monotonic ns)
_LANE = struct.Struct("=qqq")         # lane k: beats sent, beats held back (lease expired), last sequence
MAX_LANES = 4


def lock_memory(log) -> None:
    """mlockall, as heartbeat does: no page of ours is swapped out under a beat.
    MCL_ONFAULT locks pages as they are first touched instead of loading every
    mapping at once (the 8 MB stack of each thread, every library page): the
    same guarantee for what the process uses, at the memory it really uses."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.mlockall(1 | 2 | 4) != 0:      # MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT (Linux 4.4)
            if ctypes.get_errno() != 22 or libc.mlockall(1 | 2) != 0:
                log("warn", f"cannot lock ourselves into memory: {os.strerror(ctypes.get_errno())}")
    except (OSError, AttributeError) as e:
        log("warn", f"cannot lock ourselves into memory: {e}")


def usable_cpus() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except (OSError, AttributeError):
        return [0]


def wanted(beat_lanes: int | None, realtime: bool, keepalive: float, cpus: int) -> int:
    """How many lanes: as configured (halb_beat_lanes), capped by the CPUs we may use;
    auto = 2 for sub-second keepalives with `realtime on` on 2 CPUs or more, else 1."""
    if beat_lanes is None:
        beat_lanes = 2 if realtime and keepalive < 1.0 else 1
    return max(1, min(beat_lanes, cpus, MAX_LANES))


def lease_for(deadtime: float) -> float:
    """How long a lane goes on without a sign of lane 0: deadtime, and at least 100 ms
    (the vCPU stalls seen here reach 62 ms). A hung daemon is declared dead after
    lease + deadtime: twice deadtime, or deadtime + 100 ms."""
    return min(max(deadtime, 0.1), 2.0)


class Lanes:
    """The daemon's side: lanes 1..n-1 as child processes, and the shared page."""

    def __init__(self, n: int, *, me: str, auth, generation: int, channels, keepalive: float, deadtime: float,
                 prio: int, cpus: list[int], log):
        self.n = n
        self.me, self.auth, self.generation = me, auth, generation
        self.channels = channels
        self.keepalive = keepalive
        self.lease = lease_for(deadtime)
        self.prio = prio
        self.cpus = cpus
        self.log = log
        self.procs: list = []      # per lane 1.. : subprocess.Popen (imported here only) or None
        self.body = b""
        self.ctls: list[socket.socket] = []
        fd = os.memfd_create("halb-beat-lanes", os.MFD_CLOEXEC)
        os.ftruncate(fd, PAGE)
        self.page_fd = fd
        self.page = mmap.mmap(fd, PAGE)

    def cpu_of(self, lane: int) -> int | None:
        return self.cpus[lane % len(self.cpus)] if self.n > 1 else None

    def start(self, body: bytes) -> None:
        self.body = body
        for lane in range(1, self.n):
            self.procs.append(None)
            self.ctls.append(None)
            self._spawn(lane)

    def _spawn(self, lane: int) -> None:
        import subprocess

        method, secret = self.auth.keys[self.auth.active]
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        fds = [theirs.fileno(), self.page_fd] + [ch.sock.fileno() for ch in self.channels]
        # a restarted lane goes on with the sequence of the one it replaces (peers
        # refuse a lane's sequence going back within one generation)
        last_seq = _LANE.unpack_from(self.page, _HEAD.size + _LANE.size * lane)[2]
        cfg = {"lane": lane, "lanes": self.n, "node": self.me, "generation": self.generation,
               "seq": last_seq + 16 if last_seq else 0,
               "key": self.auth.active, "method": method, "secret": secret.hex(),
               "keepalive": self.keepalive, "lease": self.lease, "prio": self.prio,
               "cpu": self.cpu_of(lane), "page": self.page_fd, "parent": os.getpid(),
               "channels": [[ch.sock.fileno(), [list(d) for d in ch.dests]] for ch in self.channels]}
        try:
            p = subprocess.Popen(_lane_argv(theirs.fileno()), pass_fds=fds, stdin=subprocess.DEVNULL)
        except OSError as e:
            self.log("warn", f"beat lane {lane} not started ({e}): its beats are missing")
            mine.close()
            theirs.close()
            return
        theirs.close()
        mine.send(json.dumps(cfg).encode())
        mine.send(b"B" + self.body)
        mine.setblocking(False)
        self.procs[lane - 1], self.ctls[lane - 1] = p, mine
        self.log("info", f"beat lane {lane} started on CPU {cfg['cpu']} (pid {p.pid}, "
                         f"lease {self.lease * 1000:g} ms)")

    def watch(self) -> None:
        """Restart a lane that died (called about once a second by the daemon)."""
        for i, p in enumerate(self.procs):
            if p is not None and p.poll() is None:
                continue
            if p is not None:
                self.log("warn", f"beat lane {i + 1} (pid {p.pid}) exited with code {p.returncode}: restarting it")
            if self.ctls[i] is not None:
                self.ctls[i].close()
                self.ctls[i] = None
            self._spawn(i + 1)

    # -- from lane 0 (the beat thread): no syscall, a store in the shared page
    def stamp(self, wake: float, sent: float) -> None:
        _HEAD.pack_into(self.page, 0, int(wake * 1e9), int(sent * 1e9))

    # -- from the daemon
    def set_body(self, body: bytes) -> None:
        """A new body: every lane says it from now on, and sends one beat with it at once."""
        self.body = body
        for c in self.ctls:
            if c is None:
                continue
            try:
                c.send(b"B" + body)
            except OSError:
                pass       # a lane that died: watch() restarts it with the body of the day

    def status(self) -> list[dict]:
        out = []
        for i, p in enumerate(self.procs):
            tx, held, _seq = _LANE.unpack_from(self.page, _HEAD.size + _LANE.size * (i + 1))
            out.append({"lane": i + 1, "pid": p.pid if p is not None else None, "cpu": self.cpu_of(i + 1),
                        "alive": p is not None and p.poll() is None, "tx": tx, "held_back": held})
        return out

    def stop(self, timeout: float = 2.0) -> None:
        """Stop every lane (before the shutdown notice: no beat may follow it)."""
        for c in self.ctls:
            if c is not None:
                c.close()
        import subprocess

        end = time.monotonic() + timeout
        for p in self.procs:
            if p is None:
                continue
            try:
                p.wait(max(0.0, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.ctls, self.procs = [], []

    def close(self) -> None:
        self.stop()
        self.page.close()
        os.close(self.page_fd)


def _lane_argv(fd: int) -> list[str]:
    """A bare interpreter (-S: no site, no .pth imports: 12 MB instead of 18) told where
    halb is, running this module."""
    import halb

    top = os.path.dirname(os.path.dirname(os.path.abspath(halb.__file__)))
    code = (f"import sys; sys.path.insert(0, {top!r}); from halb.heartbeat.lane import main; "
            f"sys.exit(main(['lane', {str(fd)!r}]))")
    return [sys.executable, "-S", "-c", code]


# ---------------------------------------------------------------- the lane process
def _setup(cfg: dict) -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)                  # PR_SET_PDEATHSIG: never outlive the daemon
    if os.getppid() != cfg["parent"]:
        sys.exit(0)
    if cfg["cpu"] is not None:
        try:
            os.sched_setaffinity(0, {cfg["cpu"]})
        except OSError:
            pass
    try:
        if cfg["prio"]:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(cfg["prio"]))
        else:
            os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    except OSError:
        pass
    lock_memory(lambda level, msg: print(f"halb beat lane: {msg}", file=sys.stderr))


def run_lane(ctl: socket.socket) -> None:
    from types import SimpleNamespace

    from halb.heartbeat.packet import BeatEncoder

    cfg = json.loads(ctl.recv(65536))
    _setup(cfg)
    lane, n = cfg["lane"], cfg["lanes"]
    auth = SimpleNamespace(active=cfg["key"], keys={cfg["key"]: (cfg["method"], bytes.fromhex(cfg["secret"]))})
    enc = BeatEncoder(cfg["node"], cfg["generation"], auth, lane=lane)
    chans = [(socket.socket(fileno=fd), [tuple(d) for d in dests]) for fd, dests in cfg["channels"]]
    page = mmap.mmap(cfg["page"], PAGE)
    slot = _HEAD.size + _LANE.size * lane
    period = int(cfg["keepalive"] * 1e9) * n
    step = int(cfg["keepalive"] * 1e9) * lane
    lease = int(cfg["lease"] * 1e9)
    ctl_fd = ctl.fileno()
    import gc

    gc.disable()                                   # nothing here makes cycles
    seq = cfg.get("seq", 0)
    tx = held = 0
    body_ready = False
    mono = time.monotonic_ns
    nxt = mono()
    while True:
        now = mono()
        if now >= nxt - 200_000 and body_ready:
            wake0, sent0 = _HEAD.unpack_from(page, 0)
            if now - wake0 <= lease:
                seq += 1
                data = enc.packet(seq)
                for sock, dests in chans:
                    for d in dests:
                        try:
                            sock.sendto(data, d)
                        except OSError:
                            pass
                tx += 1
            else:
                held += 1
            _LANE.pack_into(page, slot, tx, held, seq)
            # aim between lane 0's beats; on our own grid while lane 0 is silent
            nxt = sent0 + step if sent0 else now + period
            while nxt <= now + period // 4:
                nxt += period
        # no body yet: nothing to send, wait for the daemon's first message
        delay = max(0.0, (nxt - mono()) / 1e9) if body_ready else None
        r, _, _ = select.select([ctl_fd], [], [], delay)
        if r:
            msg = ctl.recv(65536)
            if not msg:
                return                              # the daemon closed: stop, send nothing more
            if msg[:1] == b"B":
                enc.set_body(msg[1:])
                body_ready = True
                nxt = 0                             # a change goes out at once


def main(argv: list[str]) -> int:
    if len(argv) != 2 or not argv[1].isdigit():
        print("usage: python -m halb.heartbeat.lane CONTROL-FD (started by halb heartbeat)", file=sys.stderr)
        return 2
    try:
        ctl = socket.socket(fileno=int(argv[1]))
    except OSError as e:
        print(f"halb beat lane: bad control socket: {e}", file=sys.stderr)
        return 2
    try:
        run_lane(ctl)
    except (OSError, ValueError, KeyError) as e:
        print(f"halb beat lane: stopped: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
