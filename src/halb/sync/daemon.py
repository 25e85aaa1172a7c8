"""The sync daemons' I/O shell (asyncio): multicast sockets, the kernel's
maps through halb.nft.syncio, a JSON-lines control socket, the pid file.

Run dir files (per role: master, backup):
    sync-<role>.pid   the daemon's pid, flock-held while it runs
    sync-<role>.sock  control socket (0600): {"cmd": "status"} / {"cmd": "stop"}
    sync-<role>.log   its log (when started by `halb ipvsadm --start-daemon`)
"""
from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import random
import signal
import socket
import struct
import time
from dataclasses import asdict, dataclass

from halb import events, procs
from halb.errors import HalbError
from halb.sync import codec, core

log = logging.getLogger("halb.sync")

DEFAULT_GROUP = "224.0.0.81"
DEFAULT_PORT = 8848
DEFAULT_TTL = 1
POLL = float(os.environ.get("HALB_SYNC_POLL", "0.2"))      # s between two reads of the master's maps
FLUSH = 0.05            # s: the backup's idle tick (held entries, table changes); what it
                        # receives is added at once, what arrives meanwhile in the next batch
PENDING_MAX = 262144    # entries waiting on the backup beyond this are dropped (counted)
RATE = float(os.environ.get("HALB_SYNC_RATE", "2000"))     # datagrams per second at most


@dataclass
class SyncConfig:
    role: str                        # master | backup
    ifname: str = "eth0"
    syncid: int = 0
    group: str = DEFAULT_GROUP
    port: int = DEFAULT_PORT
    ttl: int = DEFAULT_TTL
    maxlen: int = codec.DEFAULT_MAXLEN
    key_file: str = ""
    unsigned: bool = False           # --sync-unsigned: the explicit opt-out of signing

    def public(self) -> dict:
        return asdict(self)


# the held entries as they are now, rewritten (at most every FLUSH) while the
# backup runs: the nft engine adds them in the very transaction that creates
# the table at a takeover, before any packet can be scheduled there
HELD_LIVE = "sync-held.live"


def write_atomic(path, data: bytes) -> None:
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def paths(run_dir, role: str) -> dict:
    d = {k: run_dir / f"sync-{role}.{k}" for k in ("pid", "sock", "log")}
    d["held"] = run_dir / "sync-held.bin"   # the backup's unplaced entries, for the next master
    from halb.logs import default_logfile
    d["log"] = default_logfile(run_dir, f"sync-{role}")     # /var/log/halb/ on a real node
    d["live"] = run_dir / HELD_LIVE         # the same, kept current while the backup runs
    return d


DEFAULT_KEY_FILE = "/etc/ha.d/authkeys"


def find_key_file(key_file: str, unsigned: bool, default: str | None = None) -> str:
    """The key file the daemon signs with: --sync-key-file, else the node's
    heartbeat authkeys (HALB_SYNC_KEY_FILE or /etc/ha.d/authkeys) when it
    exists; "" only with the explicit --sync-unsigned. Otherwise a
    ConfigError: unsigned sync lets anyone on the LAN write the flow table."""
    from halb.errors import ConfigError

    if key_file:
        return key_file
    default = default or os.environ.get("HALB_SYNC_KEY_FILE") or DEFAULT_KEY_FILE
    if os.path.exists(default):
        return default
    if unsigned:
        return ""
    raise ConfigError(default, None, "no key to sign the sync datagrams with: give --sync-key-file FILE, "
                                     "install heartbeat's authkeys here, or accept unsigned sync "
                                     "explicitly with --sync-unsigned")


def load_key(path: str) -> bytes:
    """The signing key: a heartbeat authkeys file (the secret of its active
    method) or a file holding the key; readable by its owner only."""
    import stat as st_

    from halb.errors import ConfigError

    try:
        st = os.stat(path)
        with open(path, "rb") as f:
            raw = f.read(65536)
    except OSError as e:
        raise ConfigError(path, None, f"cannot read the sync key: {e.strerror}") from None
    mode = st_.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise ConfigError(path, None, f"mode is {mode:04o}: a key must be readable by its owner only (chmod 600 it)")
    text = raw.decode("utf-8", errors="replace")
    if any(ln.split()[:1] == ["auth"] for ln in text.splitlines()):
        from halb.heartbeat.config import parse_authkeys

        ak = parse_authkeys(text, path)
        method, secret = ak.keys[ak.active]
        if not secret:
            raise ConfigError(path, None, f"the active key ({ak.active} {method}) has no secret to sign with")
        return secret
    key = raw.strip()
    if len(key) < 8:
        raise ConfigError(path, None, "the sync key is shorter than 8 bytes")
    return key


def _mreqn(group: str, ifindex: int) -> bytes:
    return socket.inet_aton(group) + socket.inet_aton("0.0.0.0") + struct.pack("@i", ifindex)


def open_socket(cfg: SyncConfig) -> socket.socket:
    try:
        ifindex = socket.if_nametoindex(cfg.ifname)
    except OSError:
        raise HalbError(f"mcast-interface {cfg.ifname}: no such interface") from None
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        if cfg.role == "master":
            s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, _mreqn("0.0.0.0", ifindex))
            s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, cfg.ttl)
            s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
        else:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, cfg.ifname.encode())
            except OSError:
                pass
            s.bind((cfg.group, cfg.port))
            s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, _mreqn(cfg.group, ifindex))
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    except OSError as e:
        s.close()
        raise HalbError(f"cannot open the {cfg.role} sync socket on {cfg.ifname} "
                        f"({cfg.group}:{cfg.port}): {e.strerror}") from None
    s.setblocking(False)
    return s


class Daemon:
    def __init__(self, ctx, cfg: SyncConfig, key: bytes | None):
        from halb.nft import syncio

        self.ctx, self.cfg, self.key = ctx, cfg, key
        self.syncio = syncio
        self.source = syncio.TableSource(ctx)
        self.paths = paths(ctx.run_dir, cfg.role)
        self.started = time.time()
        self.stopping = asyncio.Event()
        self.counters = {"entries_sent": 0, "packets_sent": 0, "send_errors": 0, "polls": 0,
                         "entries_applied": 0, "entries_dropped": 0, "apply_errors": 0, "batches": 0}
        self.drops: dict[str, int] = {}
        self.logged: dict[str, int] = {}
        self.last_poll_s = 0.0
        self.last_apply_s = 0.0
        self.tracker = core.Tracker()
        self.sender = None
        self.receiver = None
        self.pending: list = []
        self.flush_now = asyncio.Event()
        self.held = core.Held()
        self.held_stamp = None
        self.held_dirty = False
        self.last_entries: list = []     # master: the entries of its last poll
        self.last_handle = None          # master: the kernel table's handle then
        self.poll_now = asyncio.Event()

    # -- bookkeeping ---------------------------------------------------------------
    def drop(self, reason: str, n: int = 1, detail: str = "", entries: bool = True) -> None:
        """Count (and log, the first time and every 1000th) n entries dropped
        for `reason` (entries=False: an event that dropped no entry)."""
        if n <= 0:
            return
        self.drops[reason] = self.drops.get(reason, 0) + n
        if entries:
            self.counters["entries_dropped"] += n
        seen = self.logged.get(reason, 0)
        self.logged[reason] = seen + 1
        if seen == 0 or (seen + 1) % 1000 == 0:
            log.warning("dropped %d (%s)%s%s", n, reason, f": {detail}" if detail else "",
                        "" if seen == 0 else f" [{seen + 1} times so far]")

    def status(self) -> dict:
        d = {"role": self.cfg.role, "pid": os.getpid(), "node": self.ctx.node, "config": self.cfg.public(),
             "signed": bool(self.key), "uptime": round(time.time() - self.started, 1),
             "counters": dict(self.counters), "drops": dict(self.drops)}
        if self.cfg.role == "master":
            d["flows_tracked"] = self.tracker.live
            d["dirty"] = len(self.tracker.dirty)
            d["epoch"] = self.sender.epoch if self.sender else 0
            d["seq"] = self.sender.seq if self.sender else 0
            d["last_poll_s"] = round(self.last_poll_s, 4)
        else:
            r = self.receiver
            drops = dict(self.drops)
            if r:
                for k, v in r.drops.items():
                    drops[k] = drops.get(k, 0) + v
                d["counters"].update(r.counters)
                d["counters"]["entries_dropped"] += sum(v for k, v in r.drops.items() if k.startswith("entry_"))
                d["peers"] = {p.addr: {"epoch": p.epoch, "seq": p.top, "packets": p.packets, "entries": p.entries,
                                       "sender": f"{p.sender:08x}",
                                       "last_seen_s_ago": round(time.monotonic() - p.last_seen, 2)}
                              for p in r.peers.values()}
            d["drops"] = drops
            d["pending"] = len(self.pending)
            d["last_apply_s"] = round(self.last_apply_s, 4)
        d["held"] = len(self.held)
        return d

    # -- master ------------------------------------------------------------------------
    async def master(self, sock):
        dest = (self.cfg.group, self.cfg.port)
        self.sender = core.Sender(syncid=self.cfg.syncid, epoch=core.new_epoch(time.time(), random.getrandbits(16)),
                                  key=self.key, maxlen=self.cfg.maxlen, rate=RATE,
                                  sender=codec.sender_id(self.ctx.node))
        next_poll = 0.0
        while not self.stopping.is_set():
            now = time.monotonic()
            if now >= next_poll:
                t0 = time.monotonic()
                try:
                    view = self.source.view()
                    flows, uflows, closing, templates, handle = await asyncio.to_thread(
                        self.syncio.read_kernel_handle, view)
                except Exception as e:  # noqa: BLE001 - nft refused, hung or printed junk: next poll
                    self.drop("read_errors", 1, str(e) or type(e).__name__, entries=False)
                    flows, uflows, closing, templates = [], [], [], {}
                    view = handle = None
                if view is not None and handle is not None and self.last_handle is not None \
                        and handle != self.last_handle and self.last_entries:
                    await self.restore(view)
                    flows, uflows, closing, templates, handle = await asyncio.to_thread(
                        self.syncio.read_kernel_handle, view)
                if handle is not None or view is not None:
                    self.last_handle = handle
                self.last_poll_s = time.monotonic() - t0
                self.counters["polls"] += 1
                if view is not None and len(self.held) and self.source.stamp != self.held_stamp:
                    await self.place_held()
                if self.held_dirty:
                    self.write_live()
                if view is not None:
                    items = core.to_entries(view, flows, uflows, closing, templates)
                    self.last_entries = [e for e, _ in items]
                    self.last_seen_at = time.monotonic()
                    n = self.tracker.observe(items, time.monotonic())
                    if n:
                        log.debug("%d new or changed entries (%d live)", n, len(items))
                # reading costs: never spend more than a third of the time on it
                next_poll = time.monotonic() + max(POLL, 2 * self.last_poll_s)
            for data in self.sender.poll(self.tracker, time.monotonic()):
                try:
                    sock.sendto(data, dest)
                    self.counters["packets_sent"] += 1
                    self.counters["entries_sent"] += (len(data) - codec.HEADER_LEN
                                                      - (codec.MAC_LEN if self.key else 0)) // codec.ENTRY_LEN
                except BlockingIOError:
                    self.counters["send_errors"] += 1
                    await asyncio.sleep(0.005)
                except OSError as e:
                    self.counters["send_errors"] += 1
                    self.drop("send_errors", 1, e.strerror or str(e), entries=False)
            wait = 0.005 if self.tracker.dirty else max(0.0, min(next_poll - time.monotonic(), core.KEEPALIVE / 2))
            if self.poll_now.is_set():
                self.poll_now.clear()
                next_poll = 0.0
                continue
            try:
                await asyncio.wait_for(self.poll_now.wait(), timeout=wait)
            except asyncio.TimeoutError:
                pass

    async def restore(self, view) -> None:
        """halb's table was rebuilt here (a firewall reload removed it; the
        director's healer put it back, empty of flows): the connections of
        the last poll go back in, with the time they had left, replacing
        any pin a packet made meanwhile."""
        age_ms = int((time.monotonic() - getattr(self, "last_seen_at", time.monotonic())) * 1000)
        entries = [e._replace(timeout_ms=e.timeout_ms - age_ms) for e in self.last_entries
                   if e.timeout_ms - age_ms > core.MIN_LEFT_MS]
        adds, _ = core.plan_apply(entries, view)
        if adds:
            try:
                existing = await asyncio.to_thread(self.syncio.current_marks, {a.map for a in adds})
                await asyncio.to_thread(self.syncio.apply, core.render(adds, core.clashes(adds, existing)))
            except Exception as e:  # noqa: BLE001
                self.drop("restore_failed", len(adds), str(e))
                return
            self.counters["restored"] = self.counters.get("restored", 0) + len(adds)
            log.warning("halb's nft table was rebuilt: %d connection entries put back", len(adds))

    # -- backup ------------------------------------------------------------------------
    async def backup(self, sock):
        loop = asyncio.get_running_loop()
        def on_drop(reason, src, detail):
            seen = self.logged.get(reason, 0)
            self.logged[reason] = seen + 1
            if seen == 0 or (seen + 1) % 1000 == 0:
                log.warning("dropped a datagram%s from %s (%s)%s%s", "'s entry" if reason.startswith("entry_") else "",
                            src, reason, f": {detail}" if detail else "",
                            "" if seen == 0 else f" [{seen + 1} times so far]")

        self.receiver = core.Receiver(key=self.key, syncid=self.cfg.syncid, on_drop=on_drop)
        known_peers = set()

        def readable():
            for _ in range(256):
                try:
                    data, (src, _port) = sock.recvfrom(65535)
                except (BlockingIOError, InterruptedError):
                    return
                except OSError:
                    return
                entries = self.receiver.receive(data, src, time.monotonic(), time.time())
                p = self.receiver.last_peer
                if p is not None and (p.sender, p.epoch) not in known_peers and len(known_peers) < 4096:
                    known_peers.add((p.sender, p.epoch))
                    log.info("master %s (sender %08x, epoch %x) heard", src, p.sender, p.epoch)
                if entries:
                    if len(self.pending) + len(entries) > PENDING_MAX:
                        self.drop("backlog", len(entries), "the backup cannot add entries fast enough")
                        continue
                    self.pending.extend(entries)
                    self.flush_now.set()   # added at once; more arrive while nft runs: batched

        loop.add_reader(sock.fileno(), readable)
        try:
            while not self.stopping.is_set():
                try:
                    await asyncio.wait_for(self.flush_now.wait(), timeout=FLUSH)
                except asyncio.TimeoutError:
                    pass
                self.flush_now.clear()
                if self.pending:
                    batch, self.pending = self.pending, []
                    await self.apply(batch)
                if self.held_dirty:
                    self.write_live()
                if len(self.held):
                    try:
                        self.source.view()
                    except HalbError:
                        continue
                    if self.source.stamp != self.held_stamp:
                        await self.place_held()
        finally:
            loop.remove_reader(sock.fileno())

    def write_live(self) -> None:
        """The held entries to the live file (halb.nft.engine adds them when
        it creates the table); no file when none is held."""
        self.held_dirty = False
        try:
            if len(self.held):
                write_atomic(self.paths["live"], self.held.dump(time.time()))
            else:
                self.paths["live"].unlink(missing_ok=True)
        except OSError as e:
            self.drop("held_file", 1, str(e), entries=False)

    async def place_held(self) -> None:
        """The table changed: add the held entries it can now take."""
        view = self.source.view()
        self.held_stamp = self.source.stamp
        before = len(self.held)
        # off the event loop (a full store is 100,000s of entries), added in batches
        adds, refused = await asyncio.to_thread(self.held.place, view, time.time())
        self.held_dirty = True
        if adds:
            n = 0
            for i in range(0, len(adds), core.HELD_BATCH):
                n += await self.add(adds[i:i + core.HELD_BATCH])
            log.info("%d held entries placed now that the table has their services (%d still held)",
                     n, len(self.held))
        expired = before - len(adds) - len(self.held)
        if expired > 0:
            self.counters["held_expired"] = self.counters.get("held_expired", 0) + expired

    async def apply(self, batch) -> None:
        try:
            view = self.source.view()
        except HalbError as e:
            self.drop("no_table", len(batch), str(e))
            return
        unplaced: list = []
        adds, refused = core.plan_apply(batch, view, unplaced)
        for reason, n in refused.items():
            self.drop(reason, n, "not in this node's table (held until it is, or until it expires)"
                      if reason.startswith("unknown") else "")
        if unplaced:
            self.held.add(unplaced, time.time())
            self.held_stamp = self.source.stamp
            self.held_dirty = True
        if adds:
            await self.add(adds)

    async def add(self, adds) -> int:
        """Add elements in one nft transaction (clashing keys replaced);
        returns how many were added."""
        t0 = time.monotonic()
        try:
            await asyncio.to_thread(self.syncio.apply, core.render(adds))
        except Exception as e:  # noqa: BLE001 - nft refused or hung: counted, never fatal
            if not isinstance(e, HalbError) or "File exists" not in str(e):
                if not await asyncio.to_thread(_safe, self.syncio.table_present):
                    self.drop("no_table", len(adds), "halb's nft table is not there")
                else:
                    self.counters["apply_errors"] += 1
                    self.drop("apply_failed", len(adds), str(e))
                return 0
            # some keys exist here with another server: replace those
            try:
                existing = await asyncio.to_thread(self.syncio.current_marks, {a.map for a in adds})
                await asyncio.to_thread(self.syncio.apply, core.render(adds, core.clashes(adds, existing)))
            except Exception as e2:  # noqa: BLE001
                self.counters["apply_errors"] += 1
                self.drop("apply_failed", len(adds), str(e2))
                return 0
        self.counters["entries_applied"] += len(adds)
        self.counters["batches"] += 1
        self.last_apply_s = time.monotonic() - t0
        return len(adds)

    # -- control -------------------------------------------------------------------------
    async def control(self, reader, writer):
        await procs.serve_commands(reader, writer, self.command)

    def command(self, cmd) -> dict:
        if cmd == "status":
            return {"ok": True, "status": self.status()}
        if cmd == "stop":
            self.stopping.set()
            return {"ok": True}
        if cmd == "poll":  # the table changed (halb.nft.heal): look now
            self.poll_now.set()
            return {"ok": True}
        return {"ok": False, "error": "unknown command (status, stop, poll)"}


def _safe(fn) -> bool:
    try:
        return fn()
    except Exception:  # noqa: BLE001
        return True


def _lock_pid(path) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise HalbError(f"a sync daemon already runs ({path} is locked)") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def run(ctx, cfg: SyncConfig) -> int:
    """Foreground: run until SIGTERM/SIGINT or a "stop" on the control socket."""
    from halb.nft.engine import check_namespace

    check_namespace()
    key_file = find_key_file(cfg.key_file, cfg.unsigned)
    key = load_key(key_file) if key_file else None
    cfg.key_file = key_file
    ctx.ensure_run_dir()
    p = paths(ctx.run_dir, cfg.role)
    pid_fd = _lock_pid(p["pid"])
    sock = open_socket(cfg)
    try:
        return asyncio.run(_main(ctx, cfg, key, sock, p))
    finally:
        sock.close()
        for f in (p["sock"], p["pid"]):
            try:
                f.unlink()
            except FileNotFoundError:
                pass
        os.close(pid_fd)


def _sighup() -> None:
    from halb import logs, sdnotify

    sdnotify.reloading()
    logs.reopen()
    log.info("reload: log files reopened (the sync daemon's settings are its options: restart to change them)")
    sdnotify.ready()


async def _main(ctx, cfg, key, sock, p) -> int:
    d = Daemon(ctx, cfg, key)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, d.stopping.set)
    # SIGHUP (systemctl reload) and SIGUSR1: the settings are the daemon's options; logs reopened
    loop.add_signal_handler(signal.SIGHUP, _sighup)
    loop.add_signal_handler(signal.SIGUSR1, _sighup)
    try:
        p["sock"].unlink()
    except FileNotFoundError:
        pass
    old = os.umask(0o077)
    try:
        server = await asyncio.start_unix_server(d.control, path=str(p["sock"]))
    finally:
        os.umask(old)
    os.chmod(p["sock"], 0o600)
    how = f"signed (HMAC-SHA256, key from {cfg.key_file})" if key else \
        "NOT signed (--sync-unsigned): anyone who can send to the group can write this node's flow table"
    if not key:
        log.warning("sync datagrams are not signed (--sync-unsigned given and no key found)")
    log.info("%s sync daemon started (mcast=%s, syncid=%d, maxlen=%d, group=%s, port=%d, ttl=%d); datagrams %s",
             cfg.role, cfg.ifname, cfg.syncid, cfg.maxlen, cfg.group, cfg.port, cfg.ttl, how)
    events.record("sync_role", cfg.role, f"{cfg.role} sync daemon started (mcast={cfg.ifname}, syncid={cfg.syncid})",
                  run_dir=ctx.run_dir, node=ctx.node)
    if cfg.role == "master":
        try:
            data = p["held"].read_bytes()
            p["held"].unlink()
        except FileNotFoundError:
            data = b""
        if data:
            n = d.held.load(data, time.time())
            d.write_live()
            log.info("%d entries handed over by the backup sync daemon, placed when the table has "
                     "their services", n)
    from halb import sdnotify
    sdnotify.ready(f"{cfg.role} on {cfg.ifname}")
    try:
        await (d.master(sock) if cfg.role == "master" else d.backup(sock))
    finally:
        sdnotify.stopping()
        server.close()
        if cfg.role == "backup" or not len(d.held):
            try:
                p["live"].unlink()
            except FileNotFoundError:
                pass
        if cfg.role == "backup" and len(d.held):
            data = d.held.dump(time.time())
            tmp = p["held"].with_suffix(".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, p["held"])
            log.info("%d entries not placed here handed over to the next master sync daemon (%s)",
                     (len(data) - 4) // (core.HELD.size + codec.ENTRY_LEN), p["held"])
        st = d.status()
        c = st["counters"]
        events.record("sync_role", cfg.role, f"{cfg.role} sync daemon stopping", run_dir=ctx.run_dir, node=ctx.node)
        if cfg.role == "master":
            log.info("master sync daemon stopping: %d entries sent in %d datagrams", c["entries_sent"],
                     c["packets_sent"])
        else:
            log.info("backup sync daemon stopping: %d entries received, %d applied, %d dropped %s",
                     c.get("entries_received", 0), c["entries_applied"], c["entries_dropped"], st["drops"])
    return 0


# -- client side (the CLI) ------------------------------------------------------------


def query(run_dir, role: str, cmd: str = "status", timeout: float = 3.0) -> dict | None:
    """The running daemon's answer, or None when none runs."""
    path = paths(run_dir, role)["sock"]
    try:
        buf = procs.ask(path, {"cmd": cmd}, timeout)
    except (OSError, socket.timeout):
        return None
    try:
        reply = json.loads(buf)
    except ValueError:
        return None
    return reply if reply.get("ok") else None


def locked_pid(run_dir, role: str) -> int | None:
    """The pid of the running daemon of that role (it holds its pid file locked), or None."""
    return procs.locked_pid(paths(run_dir, role)["pid"])
