"""The events timeline: every decision an operator cares about (a node dead or
back, a resource group acquired or released, fencing, a real server removed,
restored or quiesced, a table restored after a loss, a sync role change, a
reload) is also an event: time, node, kind, subject, text.

Events are kept per node in an append-only journal of JSON lines, bounded
(rotated to one previous file past MAX_BYTES) and kept across restarts: in
HALB_STATE_DIR, else /var/lib/halb/NODE when the run dir is the default
/run/halb/NODE, else the node's run dir (the lab gives each node its own).
Several daemons of a node append to the same file: each event is one write
of one line under an exclusive lock, so lines never interleave.

The pure part (make, encode, decode, fmt, select) has no clock and no I/O;
`Journal` reads and writes a file; `record()` is what the daemons call next
to their log lines: it hands the event to a writer thread, so a daemon's
event loop never waits for a disk.
"""
from __future__ import annotations

import atexit
import fcntl
import json
import os
import queue
import threading
import time
from pathlib import Path

FILE_NAME = "events.jsonl"
MAX_BYTES = 1 << 20          # the journal rotates past this (one previous file kept)
MAX_TEXT = 1000              # characters of text kept per event

# kind -> what it means (the dashboard and `halb events --kind` use these names)
KINDS = {
    "node_dead": "a cluster node stopped beating",
    "node_up": "a cluster node beats again",
    "link_dead": "a heartbeat link stopped carrying beats",
    "link_up": "a heartbeat link carries beats again",
    "group_acquired": "this node took a resource group (a VIP)",
    "group_released": "this node gave up a resource group",
    "group_failed": "taking a resource group failed",
    "fencing": "STONITH reset of a node",
    "fencing_failed": "a STONITH reset failed",
    "real_added": "a real server went into its virtual service",
    "real_removed": "a real server left its virtual service (check failed)",
    "real_restored": "a real server came back in its virtual service",
    "real_quiesced": "a real server's weight set to 0 (check failed, quiescent)",
    "fallback": "a virtual service switched to or from its fallback server",
    "service_added": "a virtual service went into the table",
    "service_removed": "a virtual service left the table",
    "table_restored": "a virtual service missing from the table was put back",
    "sync_role": "a connection sync daemon started or stopped (master/backup)",
    "reload": "a daemon reloaded its configuration",
    "daemon": "a daemon started or stopped",
}


# ------------------------------------------------------------------ pure
def make(kind: str, subject: str, text: str, node: str, t: float) -> dict:
    return {"t": round(float(t), 6), "node": str(node), "kind": str(kind), "subject": str(subject),
            "text": str(text)[:MAX_TEXT]}


def encode(ev: dict) -> bytes:
    return json.dumps(ev, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def decode(line: bytes | str) -> dict | None:
    """One journal line as an event; None for a line that is not one (a torn
    last line after a crash, garbage): readers skip it."""
    try:
        ev = json.loads(line)
    except ValueError:
        return None
    if not isinstance(ev, dict) or not isinstance(ev.get("t"), (int, float)) or not isinstance(ev.get("kind"), str):
        return None
    for k in ("node", "subject", "text"):
        ev[k] = str(ev.get(k, ""))
    return ev


def fmt_time(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) + f".{int(t % 1 * 1000):03d}"


def fmt(ev: dict) -> str:
    """One event as a line for a terminal: time, node, kind, subject: text."""
    subj = f" {ev['subject']}" if ev.get("subject") else ""
    return f"{fmt_time(ev['t'])} {ev['node']} {ev['kind']}{subj}: {ev['text']}"


def select(events, since: float | None = None, kinds=None, limit: int | None = None) -> list[dict]:
    """Events at or after `since`, of the given kinds, oldest first; the last `limit`."""
    out = [e for e in events if (since is None or e["t"] >= since) and (not kinds or e["kind"] in kinds)]
    out.sort(key=lambda e: e["t"])
    if limit is not None and limit >= 0:
        out = out[-limit:] if limit else []
    return out


def merge(*lists) -> list[dict]:
    """Events of several nodes as one timeline (duplicates dropped)."""
    seen, out = set(), []
    for lst in lists:
        for e in lst:
            key = (e["t"], e["node"], e["kind"], e["subject"])
            if key not in seen:
                seen.add(key)
                out.append(e)
    out.sort(key=lambda e: e["t"])
    return out


_DIRECTOR = (("Deleted real server: ", "real_removed"), ("Quiescent real server: ", "real_quiesced"),
             ("Readd Quiescent real server: ", "real_quiesced"), ("Restored real server: ", "real_restored"),
             ("Added real server: ", "real_added"), ("Added fallback server: ", "fallback"),
             ("Restored fallback server: ", "fallback"), ("Deleted fallback server: ", "fallback"),
             ("Added virtual server: ", "service_added"), ("Purged virtual server ", "service_removed"))


def director_event(msg: str) -> tuple[str, str] | None:
    """(kind, subject) of a director's table-edit log line (ldirectord's
    wording), None for one that is no event (a weight changed by a reload...)."""
    if msg.startswith("Virtual server ") and msg.endswith("missing from the table: re-created"):
        return "table_restored", msg[len("Virtual server "):].split(" ", 1)[0]
    for prefix, kind in _DIRECTOR:
        if msg.startswith(prefix):
            rest = msg[len(prefix):]
            if rest.startswith("(") and "): " in rest:      # "Purged virtual server (stop): V"
                rest = rest.split("): ", 1)[1]
            return kind, rest.split(" (Weight", 1)[0]
    return None


# ------------------------------------------------------------------ where
def state_dir(run_dir, node: str) -> Path:
    env = os.environ.get("HALB_STATE_DIR")
    if env:
        return Path(env)
    run_dir = Path(run_dir)
    if run_dir == Path("/run/halb") / node:
        return Path("/var/lib/halb") / node
    return run_dir


def journal_path(run_dir, node: str) -> Path:
    return state_dir(run_dir, node) / FILE_NAME


# ------------------------------------------------------------------ file
class Journal:
    """A node's journal file (append with rotation; read both files)."""

    def __init__(self, path, max_bytes: int = MAX_BYTES):
        self.path = Path(path)
        self.old = self.path.with_name(self.path.name + ".1")
        self.max_bytes = max_bytes

    def append(self, ev: dict) -> None:
        self.append_many([ev])

    def append_many(self, evs: list[dict]) -> None:
        data = b"".join(encode(e) for e in evs)
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                if os.fstat(fd).st_nlink == 0:       # rotated away by another writer meanwhile
                    os.close(fd)
                    fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
                    fcntl.flock(fd, fcntl.LOCK_EX)
                size = os.fstat(fd).st_size
                if size and size + len(data) > self.max_bytes:
                    os.replace(self.path, self.old)
                    os.close(fd)
                    fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
                    fcntl.flock(fd, fcntl.LOCK_EX)
                os.write(fd, data)
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def read(self, since: float | None = None, kinds=None, limit: int | None = None) -> list[dict]:
        evs = []
        for p in (self.old, self.path):
            try:
                with open(p, "rb") as f:
                    for line in f:
                        ev = decode(line)
                        if ev is not None:
                            evs.append(ev)
            except FileNotFoundError:
                continue
        return select(evs, since, kinds, limit)


# ------------------------------------------------------------------ the daemons' call
_lock = threading.Lock()
_where: dict = {}            # run_dir, node set by configure()
_q: "queue.SimpleQueue | None" = None
_thread: threading.Thread | None = None


def configure(run_dir, node: str) -> Path:
    """Where this process records (called by a daemon when it starts); the journal's path."""
    _where.update(run_dir=Path(run_dir), node=node)
    return journal_path(run_dir, node)


def _writer() -> None:
    while True:
        item = _q.get()
        if item is None:
            return
        batch = [item]
        while True:           # what queued meanwhile goes in the same write
            try:
                nxt = _q.get_nowait()
            except queue.Empty:
                break
            if nxt is None:
                _q.put(None)
                break
            batch.append(nxt)
        by_path: dict = {}
        for path, ev in batch:
            by_path.setdefault(path, []).append(ev)
        for path, evs in by_path.items():
            try:
                Journal(path).append_many(evs)
            except OSError:
                pass          # the timeline is best effort: never hurt the daemon


def _flush_at_exit() -> None:
    t = _thread
    if t is not None and t.is_alive():
        _q.put(None)
        t.join(2.0)


def record(kind: str, subject: str, text: str, *, run_dir=None, node: str | None = None,
           t: float | None = None) -> None:
    """Record an event in this node's journal (asynchronously; never raises)."""
    global _q, _thread
    try:
        if run_dir is None or node is None:
            if "node" not in _where:
                from halb.context import Context
                ctx = Context()
                _where.update(run_dir=ctx.run_dir, node=ctx.node)
            run_dir = run_dir if run_dir is not None else _where["run_dir"]
            node = node or _where["node"]
        ev = make(kind, subject, text, node, time.time() if t is None else t)
        with _lock:
            if _thread is None or not _thread.is_alive():
                _q = queue.SimpleQueue()
                _thread = threading.Thread(target=_writer, name="halb-events", daemon=True)
                _thread.start()
                atexit.register(_flush_at_exit)
        _q.put((journal_path(run_dir, node), ev))
    except Exception:  # noqa: BLE001 - the timeline must never break a daemon
        pass


def flush(timeout: float = 2.0) -> None:
    """Wait until what was recorded so far is written (tests, short-lived commands)."""
    global _thread
    with _lock:
        t = _thread
        if t is None:
            return
        _q.put(None)
        _thread = None
    t.join(timeout)
