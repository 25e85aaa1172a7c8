"""Pieces of the heartbeat daemon that need no root: the directives it added to ha.cf
(watchdog, halb_monitor_interval, halb_agent_timeout), log files reopened on SIGHUP,
the status text with failures and fencing, and the death-watch process on its own."""
from __future__ import annotations

import io
import os
import subprocess
import sys
import time

import pytest

from halb.errors import ConfigError
from halb.heartbeat import config as C

BASE = "bcast eth0\nnode a b\nkeepalive 1\ndeadtime 5\n"


def test_new_directives():
    c = C.parse_hacf(BASE, "h")
    assert (c.watchdog, c.monitor_interval, c.agent_timeout) == (None, 5.0, 120.0)
    c = C.parse_hacf(BASE + "watchdog /dev/watchdog\nhalb_monitor_interval 500ms\nhalb_agent_timeout 30\n", "h")
    assert (c.watchdog, c.monitor_interval, c.agent_timeout) == ("/dev/watchdog", 0.5, 30.0)
    assert not any("watchdog" in w for w in c.warnings)
    assert C.parse_hacf(BASE + "halb_monitor_interval 0\n", "h").monitor_interval == 0
    for bad, words in (("halb_monitor_interval often\n", "not a time"), ("halb_agent_timeout 0\n", "greater than zero"),
                       ("watchdog\n", "a watchdog device")):
        with pytest.raises(ConfigError) as e:
            C.parse_hacf(BASE + bad, "h")
        assert str(e.value).startswith("h:5:") and words in str(e.value)


def test_logger_reopens_its_files(tmp_path):
    from halb.heartbeat.daemon import Logger

    log = Logger(tmp_path / "ha.log", None, stream=io.StringIO())
    log("info", "before")
    time.sleep(0.1)
    os.rename(tmp_path / "ha.log", tmp_path / "ha.log.1")
    log("info", "still to the old file")
    assert log.reopen(tmp_path / "ha.log", None) == []
    log("info", "after")
    log.close()
    old, new = (tmp_path / "ha.log.1").read_text(), (tmp_path / "ha.log").read_text()
    assert "before" in old and "still to the old file" in old and "after" not in old
    assert "after" in new and "before" not in new
    assert Logger.reopen(Logger(None, None, stream=io.StringIO()), "/proc/nope/ha.log", None)


def test_status_text_shows_failures_fencing_and_watchdog(capsys):
    from halb.cli.heartbeat import print_status

    s = {"node": "N1", "status": "up", "keepalive": 0.05, "deadtime": 0.3, "realtime": False,
         "nodes": {"N1": {"status": "up (this node)"}}, "links": {"N2:eth0": "up"}, "ping": {},
         "groups": [{"group": "N1 IPaddr2::10.0.0.100", "number": 1, "state": "failed", "holders": ["N1"],
                     "failcount": 2, "banned_here": False, "monitor": {"ok": False, "error": "x is not running"}}],
         "monitor_interval": 5.0,
         "failed_resources": [{"group": "N1 IPaddr2::10.0.0.100", "number": 1, "node": "N1", "state": "failed",
                               "error": "IPaddr2 stop: boom"}],
         "fencing_state": {"devices": ["external /bin/true"], "fenced": ["N2"], "in_progress": [],
                           "stonith_configured": True},
         "watchdog": "death-watch pid 1", "counters": {"rx": 1}}
    print_status(s)
    out = capsys.readouterr().out
    assert "group 1 [N1 IPaddr2::10.0.0.100]: failed here; held by N1; 2 failure(s) here" in out
    assert "monitor FAILED (x is not running)" in out and "resource monitor: every 5000 ms" in out
    assert "FAILED: group 1 [N1 IPaddr2::10.0.0.100] on N1: failed (IPaddr2 stop: boom)" in out
    assert "fencing: STONITH external /bin/true; reset: N2" in out and "watchdog: death-watch pid 1" in out


def _watch(tmp_path, timeout=0.5):
    """A death-watch for a stand-in daemon (`sleep`), whose release command writes a file."""
    from halb.heartbeat.watchdog import DeathWatch

    daemon = subprocess.Popen(["sleep", "60"])
    mark = tmp_path / "released"
    w = DeathWatch(daemon_pid=daemon.pid, timeout=timeout, logfile=str(tmp_path / "ha.log"), why="test",
                   release_argv=[sys.executable, "-c", f"open({str(mark)!r}, 'w').write('yes')"])
    return daemon, w, mark


def test_death_watch_releases_when_its_pipe_closes_without_the_magic_close(tmp_path):
    daemon, w, mark = _watch(tmp_path, timeout=30)
    try:
        assert w.kick()
        os.close(w.fd)       # what the kernel does when the daemon dies
        daemon.kill()
        daemon.wait()
        assert w.proc.wait(10) == 0 and mark.read_text() == "yes"
        assert "died: releasing this node's resources" in (tmp_path / "ha.log").read_text()
    finally:
        daemon.kill()


def test_death_watch_kills_a_silent_daemon_then_releases(tmp_path):
    daemon, w, mark = _watch(tmp_path, timeout=0.5)
    try:
        assert daemon.wait(10) == -9          # no kick for 0.5 s: killed, as softdog would reboot
        assert w.proc.wait(10) == 0 and mark.read_text() == "yes"
        assert "has not kicked the watchdog for 0.5s" in (tmp_path / "ha.log").read_text()
    finally:
        daemon.kill()
        os.close(w.fd)


def test_death_watch_magic_close_does_nothing(tmp_path):
    daemon, w, mark = _watch(tmp_path, timeout=30)
    try:
        w.close()
        assert w.proc.returncode == 0 and not mark.exists() and daemon.poll() is None
    finally:
        daemon.kill()
