"""The heartbeat daemon as a sysadmin meets it in the namespace lab: a second start,
SIGHUP, resources lost behind its back (monitoring), a failed stop, a crashed daemon
(the watchdog), a hung agent, and status when nothing runs (issue 11)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from hb_cluster import Cluster, wait_for  # noqa: E402

pytestmark = [pytest.mark.root]
pytest_plugins = ["halb.lab.testing"]


@pytest.fixture
def cluster_factory(make_lab):
    """As conftest's, in a short directory of its own: the director's control socket
    (run dir + config name + hash) must fit a unix socket path (107 bytes)."""
    import shutil
    import tempfile
    from pathlib import Path

    made = []

    def factory(apache=True, clients=1, **kw):
        lab = make_lab(nodes=2, clients=clients, apache=apache)
        c = Cluster(lab, Path(tempfile.mkdtemp(prefix="hbd-")), **kw)
        made.append(c)
        return c

    yield factory
    for c in made:
        c.close()
        shutil.rmtree(c.base, ignore_errors=True)


def halb_on(c, node, *args, timeout=20):
    return c.lab.run(node, [sys.executable, "-m", "halb", "--node", node, "--run-dir", str(c.run_dir(node)),
                            *args], timeout=timeout)


@pytest.mark.timeout(90)
def test_second_instance_leaves_the_running_one_and_its_vip(cluster_factory):
    c = cluster_factory(apache=False)
    c.start("N1")
    c.start("N2")
    wait_for(lambda: c.holders() == ["N1"], 15, what="N1 to hold the VIP")
    pid = c.status("N1")["pid"]
    r = halb_on(c, "N1", "heartbeat", "-c", str(c.dir("N1")), "run")
    assert r.returncode == 1, r.stderr
    assert f"heartbeat is already running on node N1 (pid {pid}" in r.stderr and "Traceback" not in r.stderr
    time.sleep(1.0)      # three deadtimes: nothing moves
    assert c.holders() == ["N1"] and c.status("N1")["pid"] == pid
    assert "is running but this node holds no resources yet" not in c.log("N1")
    assert halb_on(c, "N1", "heartbeat", "status").returncode == 0


def vip_prefix(c, node):
    import json
    r = c.lab.run(node, ["ip", "-j", "-4", "addr", "show", "dev", c.lab.node(node).iface])
    for i in json.loads(r.stdout):
        for a in i["addr_info"]:
            if a["local"] == c.lab.vip:
                return a["prefixlen"]
    return None


def delete_vip_by_hand(c, node):
    c.lab.run(node, ["ip", "addr", "del", f"{c.lab.vip}/{vip_prefix(c, node)}", "dev", c.lab.node(node).iface],
              check=True)


@pytest.mark.timeout(120)
def test_monitor_brings_back_a_vip_deleted_by_hand_then_moves_the_group(cluster_factory):
    c = cluster_factory(apache=False, extra="halb_monitor_interval 200ms\n")
    c.start("N1")
    c.start("N2")
    wait_for(lambda: c.holders() == ["N1"], 15, what="N1 to hold the VIP")
    for n in (1, 2):
        delete_vip_by_hand(c, "N1")
        assert c.holders() == []
        wait_for(lambda: c.holders() == ["N1"], 5, 0.02, what=f"the monitor to bring the VIP back ({n})")
        wait_for(lambda: c.status("N1")["groups"][0]["failcount"] == n, 5, what="the failure counted")
    log = c.log("N1")
    assert "Resource monitor failed: IPaddr2" in log and "is not running" in log
    assert "Restarting resource IPaddr2" in log
    st = c.status("N1")
    assert st["groups"][0]["monitor"]["ok"] and st["monitor_interval"] == 0.2
    # the third failure on N1 (migration-threshold 3) moves the group to N2, and N1 keeps off it
    delete_vip_by_hand(c, "N1")
    wait_for(lambda: c.holders() == ["N2"], 5, 0.02, what="the group to move to N2")
    assert "failed 3 times on this node (migration-threshold 3): giving it up" in c.log("N1")
    st = c.status("N1")
    assert st["groups"][0]["banned_here"]
    assert [(f["node"], f["state"]) for f in st["failed_resources"]] == [("N1", "idle")]
    assert [(f["node"], f["state"]) for f in c.status("N2")["failed_resources"]] == [("N1", "banned")]
    r = halb_on(c, "N1", "heartbeat", "status")
    assert r.returncode == 0 and "banned here until cleanup" in r.stdout and "FAILED: group 1" in r.stdout
    # cleanup on N1 (by the VIP's address): failures forgotten; auto_failback off: N2 keeps it
    r = halb_on(c, "N1", "heartbeat", "cleanup", c.lab.vip)
    assert r.returncode == 0, r.stderr
    st = c.status("N1")
    assert not st["groups"][0]["banned_here"] and st["groups"][0]["failcount"] == 0
    time.sleep(0.6)
    assert c.holders() == ["N2"]
    r = halb_on(c, "N1", "heartbeat", "cleanup", "nosuchgroup")
    assert r.returncode == 1 and "no resource group 'nosuchgroup'" in r.stderr


def director_pid(c, node):
    cfg = c.dir(node) / "ldirectord.cf"
    r = halb_on(c, node, "--engine", "nft", "director", str(cfg), "status")
    for line in r.stdout.splitlines() if r.returncode == 0 else ():
        if "running with pid:" in line:
            return int(line.rsplit(":", 1)[1])
    return None


@pytest.mark.timeout(120)
def test_monitor_restarts_a_killed_director(cluster_factory):
    from halb.lab import article

    c = cluster_factory(apache=False, haresources=None, extra="halb_monitor_interval 300ms\n")
    c.haresources = article.haresources(c.lab.vip)
    for n in ("N1", "N2"):
        c.write(n)
        (c.dir(n) / "ldirectord.cf").write_text(article.ldirectord_cf(c.lab, "checktimeout=1\ncheckinterval=1\n"))
    c.start("N1")
    wait_for(lambda: c.holders() == ["N1"], 15, what="N1 to hold the VIP")
    wait_for(lambda: c.status("N1")["groups"][0]["state"] == "held", 30, what="the group held on N1")
    pid = wait_for(lambda: director_pid(c, "N1"), 30, what="the director on N1")
    os.kill(pid, signal.SIGKILL)
    try:
        new = wait_for(lambda: (p := director_pid(c, "N1")) and p != pid and p, 20, 0.1, what="the director back")
    except AssertionError as e:
        raise AssertionError(f"{e}\n{c.log('N1')[-3000:]}") from None
    assert new != pid
    log = c.log("N1")
    assert "Resource monitor failed: ldirectord::" in log and "Restarting resource ldirectord::" in log
    assert c.holders() == ["N1"]


STUCK = """#!/bin/sh
# a resource whose stop hangs while the file 'stuck' exists next to its state file
d=$(dirname "$1")
case "$2" in
  start) echo on > "$1" ;;
  stop) while [ -f "$d/stuck" ]; do sleep 0.1; done; rm -f "$1" ;;
  status) if [ -f "$1" ]; then echo running; else echo stopped; fi ;;
esac
"""

RECORDING_STONITH = """#!{python}
# external STONITH device: records each call, then powers the lab node off
import sys
from pathlib import Path
from halb.lab import Lab
record, labname, root, op, node = sys.argv[1:6]
with open(record, "a") as f:
    f.write(f"{{op}} {{node}}\\n")
lab = Lab.attach(labname, Path(root))
lab.cut_link(node)
lab.kill_node(node)
"""


def stuck_cluster(cluster_factory, tmp_path, extra=""):
    state = tmp_path / "stuckstate"
    state.mkdir(exist_ok=True)
    c = cluster_factory(apache=False, extra="halb_agent_timeout 1s\nhalb_monitor_interval 0\n" + extra)
    c.haresources = f"N1 IPaddr2::{c.lab.vip} stuckres::{state}/{{node}}\n"
    for n in ("N1", "N2"):
        c.haresources_node = n
        c.write(n)
        (c.dir(n) / "haresources").write_text(c.haresources.replace("{node}", n))
        rd = c.dir(n) / "resource.d"
        rd.mkdir(exist_ok=True)
        (rd / "stuckres").write_text(STUCK)
        (rd / "stuckres").chmod(0o755)
    return c, state


@pytest.mark.timeout(120)
def test_failed_stop_without_stonith_blocks_the_group_until_cleanup(cluster_factory, tmp_path):
    c, state = stuck_cluster(cluster_factory, tmp_path)
    c.start("N1")
    c.start("N2")
    wait_for(lambda: c.holders() == ["N1"], 15, what="N1 to hold the VIP")
    (state / "stuck").write_text("")
    assert halb_on(c, "N1", "heartbeat", "standby").returncode == 0
    wait_for(lambda: "stays held here, blocked (no STONITH device)" in c.log("N1"), 10, what="the failed stop")
    assert "no answer in 1s (operation counted as failed" in c.log("N1")
    time.sleep(1.0)     # more than three deadtimes: the group runs on N1 only, never on N2 too
    assert c.holders() == ["N1"] and (state / "N1").exists() and not (state / "N2").exists()
    assert "node N1 failed to stop resource group" in c.log("N2")
    st = c.status("N1")
    assert st["groups"][0]["state"] == "failed" and "stuckres" in st["failed_resources"][0]["error"]
    assert [(f["node"], f["state"]) for f in c.status("N2")["failed_resources"]] == [("N1", "failed")]
    # still stuck: cleanup refuses to call it stopped
    r = halb_on(c, "N1", "heartbeat", "cleanup", "1", timeout=30)
    assert r.returncode == 1 and "still not stopped" in r.stderr
    assert c.holders() == ["N1"]
    # repaired: cleanup stops it for real, and N2 takes the group
    (state / "stuck").unlink()
    r = halb_on(c, "N1", "heartbeat", "cleanup", "1", timeout=30)
    assert r.returncode == 0, r.stderr
    wait_for(lambda: c.holders() == ["N2"] and (state / "N2").exists(), 10, what="N2 to take the group after cleanup")
    assert not (state / "N1").exists()


@pytest.mark.timeout(120)
def test_failed_stop_with_stonith_the_peer_fences_then_takes_over(cluster_factory, tmp_path):
    record = tmp_path / "stonith-calls"
    dev = tmp_path / "recording-stonith"
    dev.write_text(RECORDING_STONITH.format(python=sys.executable))
    dev.chmod(0o755)
    c, state = stuck_cluster(cluster_factory, tmp_path)
    lab = c.lab
    c.opts["extra"] += f"stonith_host * external {dev} {record} {lab.name} {lab.dir.parent}\n"
    for n in ("N1", "N2"):
        c.write(n)
        (c.dir(n) / "haresources").write_text(c.haresources.replace("{node}", n))
    c.start("N1")
    c.start("N2")
    wait_for(lambda: c.holders() == ["N1"], 15, what="N1 to hold the VIP")
    (state / "stuck").write_text("")
    assert halb_on(c, "N1", "heartbeat", "standby").returncode == 0
    wait_for(lambda: c.vip_on("N2") and (state / "N2").exists(), 15, what="N2 to take the group")
    assert record.read_text() == "reset N1\n"
    log1, log2 = c.log("N1"), c.log("N2")
    assert "node will be fenced (STONITH by a peer)" in log1
    i = log2.index("STONITH: node N1 failed to stop")
    assert log2.index("STONITH: node N1 has been reset") > i
    assert log2.index("Acquiring resource group", i) > i
    assert c.status("N2")["fencing_state"]["fenced"] == ["N1"]
    c.procs.pop("N1", None)


@pytest.mark.timeout(120)
def test_watchdog_releases_the_vip_and_director_of_a_killed_or_hung_daemon(cluster_factory):
    from halb.lab import article

    c = cluster_factory(apache=False, extra="watchdog /dev/watchdog\nhalb_monitor_interval 0\n")
    c.haresources = article.haresources(c.lab.vip)
    for n in ("N1", "N2"):
        c.write(n)
        (c.dir(n) / "ldirectord.cf").write_text(article.ldirectord_cf(c.lab, "checktimeout=1\ncheckinterval=1\n"))
    c.start("N1")
    c.start("N2")
    wait_for(lambda: c.holders() == ["N1"], 15, what="N1 to hold the VIP")
    wait_for(lambda: c.status("N1")["groups"][0]["state"] == "held", 30, what="the group held on N1")
    wait_for(lambda: director_pid(c, "N1"), 30, what="the director on N1")
    st = c.status("N1")
    assert "death-watch pid" in st["watchdog"] and "no such device (no softdog here)" in c.log("N1")
    assert "table inet halb" in c.lab.run("N1", ["nft", "list", "tables"]).stdout
    # kill -9: no VIP, no director (nor its nft table) left on N1; N2 alone holds the VIP
    os.kill(st["pid"], signal.SIGKILL)
    c.procs.pop("N1").wait(5)
    wait_for(lambda: not c.vip_on("N1") and director_pid(c, "N1") is None, 10, 0.05,
             what="the watchdog to release N1's VIP and director")
    wait_for(lambda: c.holders() == ["N2"], 10, what="N2 alone to hold the VIP")
    assert f"heartbeat (pid {st['pid']}) died: releasing this node's resources" in c.log("N1")
    assert "every resource stopped on this node" in c.log("N1")
    r = c.lab.run("N1", ["nft", "list", "tables"])
    assert "halb" not in r.stdout, r.stdout
    wait_for(lambda: c.status("N2")["groups"][0]["state"] == "held", 30, what="the group held on N2")
    wait_for(lambda: director_pid(c, "N2"), 30, what="the director on N2")
    # a hung daemon (SIGSTOP) stops kicking: the watch kills it (as softdog reboots) and releases
    st2 = c.status("N2")
    os.kill(st2["pid"], signal.SIGSTOP)
    wait_for(lambda: not c.vip_on("N2") and director_pid(c, "N2") is None, 10, 0.05,
             what="the watchdog to release N2's VIP and director")
    assert "has not kicked the watchdog for 1s: killing it" in c.log("N2")
    assert c.procs.pop("N2").wait(5) == -signal.SIGKILL


@pytest.mark.timeout(60)
def test_watchdog_clean_stop_leaves_nothing_and_runs_no_release(cluster_factory):
    c = cluster_factory(apache=False, extra="watchdog /dev/watchdog\n")
    c.start("N1")
    wait_for(lambda: c.holders() == ["N1"], 15, what="N1 to hold the VIP")
    import psutil
    st = c.status("N1")
    watch = [p for p in psutil.Process(st["pid"]).children() if "watchdog.py" in " ".join(p.cmdline())]
    assert len(watch) == 1 and "-S" in watch[0].cmdline()
    assert watch[0].memory_info().rss < 15 * 2**20
    c.stop("N1")
    assert not watch[0].is_running() or watch[0].status() == psutil.STATUS_ZOMBIE
    assert c.holders() == [] and "watchdog:" not in c.log("N1").split("shutting down")[1]


@pytest.mark.timeout(120)
def test_sighup_reloads_without_releasing(cluster_factory):
    c = cluster_factory(apache=False)
    lab = c.lab
    c.start("N1")
    c.start("N2")
    wait_for(lambda: c.holders() == ["N1"], 15, what="N1 to hold the VIP")
    pid = c.status("N1")["pid"]

    def hup_and_wait(node, mark):
        n = c.log(node).count(mark)
        r = halb_on(c, node, "heartbeat", "reload")
        assert r.returncode == 0 and "SIGHUP" in r.stdout, r.stderr
        wait_for(lambda: c.log(node).count(mark) > n, 5, what=f"{node}: {mark}")

    # logrotate: the log file moved away, SIGHUP: a new one is written
    c.logfile("N1").rename(str(c.logfile("N1")) + ".1")
    hup_and_wait("N1", "reload: log files reopened; nothing else changed")
    rotated = open(str(c.logfile("N1")) + ".1").read()
    assert "Signal SIGHUP received" in rotated and "Signal SIGHUP received" not in c.log("N1")
    # a bad ha.cf: located error, the running configuration kept
    good = c.dir("N1").joinpath("ha.cf").read_text()
    c.dir("N1").joinpath("ha.cf").write_text(good + "keepalive soon\n")
    bad_line = len(good.splitlines()) + 1
    hup_and_wait("N1", "keeping the running configuration")
    assert f"ha.cf:{bad_line}: keepalive: 'soon' is not a time" in c.log("N1")
    # timers, keys, a ping node: applied; haresources: refused. Keys as a sysadmin rotates
    # them: the new key added on every node first, then made the active one everywhere
    for active in (1, 2):
        auth = f'auth {active}\n1 md5 "secret"\n2 sha1 "rotated secret"\n'
        for n in ("N1", "N2"):
            c.write(n, deadtime="500ms", warntime="400ms", keepalive="40ms",
                    extra=f"ping {lab.client(0).ip}\n" if n == "N1" else "")
            c.dir(n).joinpath("authkeys").write_text(auth)
        c.dir("N1").joinpath("haresources").write_text(c.haresources + f"N2 IPaddr2::{lab.vip[:-1]}9\n")
        hup_and_wait("N1", "reload: log files reopened; applied:")
        hup_and_wait("N2", "reload: log files reopened; applied:")
    log1 = c.log("N1")
    first, second = [a.splitlines()[0] for a in log1.split("applied: ")[-2:]]
    for what in ("keepalive", "deadtime", "warntime", "ping", "authkeys"):
        assert what in first, first
    assert second == "authkeys"
    assert "reload: haresources changed: that needs a restart of heartbeat" in log1
    st = c.status("N1")
    assert st["deadtime"] == 0.5 and st["keepalive"] == 0.04 and len(st["groups"]) == 1
    wait_for(lambda: c.status("N1")["ping"] == {lab.client(0).ip: "up"}, 5, what="the new ping node up")
    time.sleep(1.0)       # both nodes now sign with key 2: nobody died, nothing moved
    assert c.holders() == ["N1"] and c.status("N1")["pid"] == pid
    for n in ("N1", "N2"):
        assert "is dead" not in c.log(n) and c.status(n)["nodes"][{"N1": "N2", "N2": "N1"}[n]]["status"] == "up"
    assert c.status("N2")["counters"]["rx"] > 0
    # and a restart is still clean
    c.stop("N1")
    assert c.procs.get("N1") is None and not c.vip_on("N1")


@pytest.mark.timeout(120)
def test_a_node_gone_with_a_failed_stop_blocks_its_peer_until_cleanup(cluster_factory, tmp_path):
    c, state = stuck_cluster(cluster_factory, tmp_path)
    c.start("N1")
    c.start("N2")
    wait_for(lambda: c.holders() == ["N1"], 15, what="N1 to hold the VIP")
    (state / "stuck").write_text("")
    assert halb_on(c, "N1", "heartbeat", "standby").returncode == 0
    wait_for(lambda: "stays held here, blocked" in c.log("N1"), 10, what="the failed stop")
    c.stop("N1")      # its stop fails again while it shuts down: the resources stay on N1
    wait_for(lambda: "node N1 is gone with its stop failed" in c.log("N2"), 10, what="N2 to refuse the group")
    time.sleep(1.0)
    assert c.holders() == ["N1"] and not (state / "N2").exists()
    assert c.status("N2")["failed_resources"][0]["state"].startswith("failed (node gone")
    # the administrator repairs N1 and stops what runs there, then clears the failure on N2
    (state / "stuck").unlink()
    r = halb_on(c, "N1", "heartbeat", "-c", str(c.dir("N1")), "release")
    assert r.returncode == 0, r.stderr
    assert c.holders() == [] and not (state / "N1").exists()
    r = halb_on(c, "N2", "heartbeat", "cleanup", "1")
    assert r.returncode == 0 and "failed stop cleared" in r.stdout, r.stderr
    wait_for(lambda: c.holders() == ["N2"] and (state / "N2").exists(), 10, what="N2 to take the group")
    # `release` refuses while a daemon runs: it owns the resources
    r = halb_on(c, "N2", "heartbeat", "-c", str(c.dir("N2")), "release")
    assert r.returncode == 1 and "heartbeat is running on node N2" in r.stderr and c.holders() == ["N2"]


FLAKY = """#!/bin/sh
# a resource whose start fails while the file 'broken' exists next to its state file
d=$(dirname "$1")
case "$2" in
  start) [ -f "$d/broken" ] && { echo "cannot start" >&2; exit 1; }; echo on > "$1" ;;
  stop) rm -f "$1" ;;
  status) if [ -f "$1" ]; then echo running; else echo stopped; fi ;;
esac
"""


@pytest.mark.timeout(60)
def test_a_failed_start_is_tried_again_without_any_other_event(cluster_factory, tmp_path):
    c = cluster_factory(apache=False)
    (tmp_path / "broken").write_text("")
    c.haresources = f"N1 IPaddr2::{c.lab.vip} flaky::{tmp_path}/state\n"
    c.write("N1")
    rd = c.dir("N1") / "resource.d"
    rd.mkdir()
    (rd / "flaky").write_text(FLAKY)
    (rd / "flaky").chmod(0o755)
    c.start("N1")      # alone: after initdead nothing else happens
    wait_for(lambda: "flaky" in c.log("N1") and "start failed" in c.log("N1"), 15, what="the failed start")
    assert c.holders() == []
    (tmp_path / "broken").unlink()
    wait_for(lambda: c.holders() == ["N1"] and (tmp_path / "state").exists(), 10, what="the start tried again")
    assert c.status("N1")["groups"][0]["failcount"] in (1, 2)
