"""The resource-agent helper (worker.py) without root: numbered requests, a timed-out
operation counts as failed and restarts the helper, a late reply is never taken for a
later request (issue 11, item 10)."""
from __future__ import annotations

import time
from pathlib import Path

from halb.heartbeat.config import Resource
from halb.heartbeat.worker import AgentWorker

# state in a file; `stop` sleeps as long as the file "slow" says (a stuck agent)
SLOW = """#!/bin/sh
d=$(dirname "$1")
case "$2" in
  start) echo on > "$1" ;;
  stop) [ -f "$d/slow" ] && sleep "$(cat "$d/slow")"; rm -f "$1" ;;
  status) if [ -f "$1" ]; then echo running; else echo stopped; fi ;;
esac
"""


def make(tmp_path: Path, timeout: float) -> AgentWorker:
    rd = tmp_path / "ha.d" / "resource.d"
    rd.mkdir(parents=True)
    (rd / "slowres").write_text(SLOW)
    (rd / "slowres").chmod(0o755)
    res = Resource("slowres", (str(tmp_path / "state"),), 1)
    return AgentWorker([[res]], ha_dir=tmp_path / "ha.d", node="N1", run_dir=tmp_path / "run",
                       engine=None, timeout=timeout)


def test_timeout_fails_the_operation_and_restarts_the_helper(tmp_path):
    w = make(tmp_path, timeout=0.5)
    try:
        assert w.call("start", 0, 0)[:2] == (True, True)
        assert w.call("status", 0, 0)[:2] == (True, True)
        (tmp_path / "slow").write_text("3")
        first = w.proc.pid
        t0 = time.monotonic()
        ok, err, _ = w.call("stop", 0, 0)
        assert not ok and "no answer in 0.5s" in err and "counted as failed" in err
        assert time.monotonic() - t0 < 2.0
        assert w.restarts == 1 and w.proc.pid != first and w.alive()
        # the stuck stop never finished: the resource still runs, and the next request is
        # answered for itself (before numbering, it read the late "stop: ok")
        (tmp_path / "slow").unlink()
        assert w.call("status", 0, 0)[:2] == (True, True)
        assert w.call("stop", 0, 0)[:2] == (True, True)
        assert w.call("status", 0, 0)[:2] == (True, False)
    finally:
        w.close()


def test_a_late_reply_is_never_taken_for_a_later_request(tmp_path):
    w = make(tmp_path, timeout=5)
    try:
        assert w.call("start", 0, 0)[:2] == (True, True)
        # a request whose answer nobody read (as after a lost wake-up): its reply arrives first
        w.seq += 1
        w.conn.send((w.seq, "stop", 0, 0))
        ok, running, _ = w.call("status", 0, 0)
        assert (ok, running) == (True, False) and w.stale == 1
        assert w.call("start", 0, 0)[:2] == (True, True)
        assert w.call("status", 0, 0)[:2] == (True, True) and w.stale == 1
    finally:
        w.close()
