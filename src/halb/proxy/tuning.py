"""Process-level settings that keep the relay's latency tail short.

The relay sits on the path of every request, so any time it is runnable but
not running is added to requests: on a machine whose cores are shared with
the load and the back ends, that wait (not the relay's own work) made most
of halb's p99 at half load.

- Scheduler slice. Linux's EEVDF scheduler (6.6+) gives every task a virtual
  deadline one slice after it becomes eligible, and from 6.12 a task may ask
  for a shorter slice (sched_setattr's sched_runtime for SCHED_OTHER, no
  privilege needed). The CPU share, set by the weight (nice), is unchanged;
  what changes is that a daemon woken by a relay event while its CPU runs
  something else gets the CPU after at most about its own short slice rather
  than the default (0.7 ms x (1 + log2 CPUs)). HALB_PROXY_SLICE_US sets it
  (default 100, the kernel's minimum; 0 leaves the kernel's default). Kernels
  without custom slices keep their behaviour: the call fails or is ignored.
- Garbage collector. The relay path leaves no reference cycles: what exists
  at start-up is frozen out of the collector's scans and collections are made
  rare, so no pause lands on a request.
"""
from __future__ import annotations

import ctypes
import gc
import logging
import os
import platform
import struct

log = logging.getLogger("halb.proxy")

DEFAULT_SLICE_US = 100
_SCHED_SETATTR = {"x86_64": 314, "aarch64": 274, "arm64": 274}
_SCHED_GETATTR = {"x86_64": 315, "aarch64": 275, "arm64": 275}
# struct sched_attr, SCHED_ATTR_SIZE_VER1: size, policy, flags, nice, priority,
# runtime, deadline, period, util_min, util_max
_ATTR = struct.Struct("=IIQiIQQQII")
SCHED_OTHER = 0


def _syscall(table: dict, *args) -> int:
    nr = table.get(platform.machine())
    if nr is None:
        raise OSError(0, f"no sched_setattr number known for {platform.machine()}")
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    r = libc.syscall(ctypes.c_long(nr), *args)
    if r < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return r


def get_slice_ns(pid: int = 0) -> int:
    """A task's scheduler slice in ns (the kernel's default unless it asked for one)."""
    buf = ctypes.create_string_buffer(_ATTR.size)
    _syscall(_SCHED_GETATTR, ctypes.c_int(pid), buf, ctypes.c_uint(_ATTR.size), ctypes.c_uint(0))
    return _ATTR.unpack(buf.raw)[5]


def set_slice(us: int, pid: int = 0) -> bool:
    """Ask for a scheduler slice of `us` microseconds (0: the default). Leaves the
    policy (SCHED_OTHER) and the nice value as they are. False if refused."""
    try:
        nice = os.getpriority(os.PRIO_PROCESS, pid)
        if os.sched_getscheduler(pid) != SCHED_OTHER:
            return False  # real-time or batch: someone chose a policy on purpose
        attr = _ATTR.pack(_ATTR.size, SCHED_OTHER, 0, nice, 0, us * 1000, 0, 0, 0, 0)
        _syscall(_SCHED_SETATTR, ctypes.c_int(pid), ctypes.create_string_buffer(attr, _ATTR.size),
                 ctypes.c_uint(0))
        if us and get_slice_ns(pid) != us * 1000:
            raise OSError(0, "this kernel has no per-task slice")
    except (OSError, AttributeError) as e:
        log.info("scheduler slice not set (%s): the kernel's default applies", e.strerror or e)
        return False
    return True


def slice_from_env() -> int:
    raw = os.environ.get("HALB_PROXY_SLICE_US", "").strip()
    if not raw:
        return DEFAULT_SLICE_US
    try:
        v = int(raw)
    except ValueError:
        log.warning("HALB_PROXY_SLICE_US=%r is not a number of microseconds: using %d", raw, DEFAULT_SLICE_US)
        return DEFAULT_SLICE_US
    return max(0, v)


def apply() -> int:
    """Set the process up for the relay; returns the slice asked for in µs (0: none)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)
    us = slice_from_env()
    if us and set_slice(us):
        log.info("scheduler slice %d us (HALB_PROXY_SLICE_US)", us)
        return us
    return 0
