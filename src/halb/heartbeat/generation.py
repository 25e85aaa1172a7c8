"""The node's generation: one number per daemon start, always bigger than the last.

Peers refuse beats of an older generation than the newest they took from a
node (a replayed stream of an earlier life), so a generation must never go
back. The wall clock can (NTP step, a dead RTC battery, a VM restored): as
heartbeat does with /var/lib/heartbeat/hb_generation, the last generation is
kept in a file and the next is one more. It is also never below the wall
clock in nanoseconds, so peers that knew an older halb (whose generation was
the wall clock) and a lost state file both still give a bigger number.

Where: `state_dir(run_dir, node)`: HALB_STATE_DIR if set; the default run
dir /run/halb/NODE is a tmpfs that a reboot empties, so there the file goes
to /var/lib/halb/NODE (a disk); a run dir given by hand (--run-dir, the lab)
keeps it itself.
"""
from __future__ import annotations

import os
from pathlib import Path

FILE = "hb_generation"


def next_generation(stored: int | None, wall_ns: int) -> int:
    """Pure: the generation after `stored` (None: no file) with the wall clock at `wall_ns`."""
    return max((stored or 0) + 1, wall_ns)


def state_dir(run_dir, node: str) -> Path:
    env = os.environ.get("HALB_STATE_DIR")
    if env:
        return Path(env)
    run_dir = Path(run_dir)
    if run_dir.is_relative_to("/run") or run_dir.is_relative_to("/var/run"):
        return Path("/var/lib/halb") / node
    return run_dir


def read(path) -> tuple[int | None, str | None]:
    """(stored generation or None, problem to log or None)."""
    try:
        text = Path(path).read_text().strip()
    except FileNotFoundError:
        return None, None
    except OSError as e:
        return None, f"cannot read {path}: {e.strerror}"
    try:
        v = int(text)
        if v < 0:
            raise ValueError
        return v, None
    except ValueError:
        return None, f"{path} is corrupt ({text[:40]!r}): starting from the wall clock"


def take(directory, wall_ns: int) -> tuple[int, list[str]]:
    """Read, bump and durably write the counter (written before the first beat leaves):
    (generation, problems to log). A file that cannot be written is logged, not fatal."""
    d = Path(directory)
    path = d / FILE
    stored, problem = read(path)
    gen = next_generation(stored, wall_ns)
    problems = [problem] if problem else []
    try:
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / (FILE + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, f"{gen}\n".encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        dfd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError as e:
        problems.append(f"cannot write {path}: {e.strerror}: the next start relies on the wall clock")
    return gen, problems
