"""Debian's heartbeat 3 (the Linux-HA daemon of the article) on the nodes of a halb lab,
for bench_failover: the same cluster, the same client probe, beside halb and keepalived.

Per node, heartbeat runs in a private mount namespace (inside the node's network and UTS
namespaces, so `uname -n` is N1 or N2) where private copies of /etc/ha.d and
/var/lib/heartbeat are bind-mounted (each node generates its own hb_uuid) and /run is a
fresh tmpfs with the directories heartbeat and the resource agents expect. The ha.cf is the
article's (mcast on the node's LAN interface, md5 authkeys, auto_failback off) with the
timers asked for; haresources is the article's line for the VIP, `N1 IPaddr2::VIP` (the
article spells it IPAddr2, a name heartbeat has no script for; the ldirectord resource is
left out, as it is for halb and keepalived in this bench: the VIP alone is measured).

heartbeat daemonizes; its processes are found again as the node's processes living in
another mount namespace than ours (only heartbeat and what it runs), and stop() kills them
on both nodes. Its log has 1 s stamps: LogStamper stamps every line as it lands in the file
(polled every 2 ms) to place heartbeat's takeover steps after the fault.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

from halb.lab import article
from halb.lab import netns as nsu

BIN = "/usr/libexec/heartbeat/heartbeat"
HA_D = "/etc/ha.d"
LIB = "/var/lib/heartbeat"
OCF_IPADDR2 = "/usr/lib/ocf/resource.d/heartbeat/IPaddr2"

INSTALL_HINT = ("Debian's heartbeat is not installed here (missing: {missing}).\n"
                "Install it as root with:\n"
                "    apt-get install -y heartbeat\n"
                "(it pulls in cluster-glue, resource-agents, pacemaker and corosync; none of them is "
                "started: the bench runs heartbeat itself, inside the lab's namespaces only),\n"
                "or run the bench without --debian-heartbeat.")


def missing() -> list[str]:
    """What the bench needs from the heartbeat package and its dependencies and is not there."""
    need = [BIN, f"{HA_D}/resource.d/IPaddr2", f"{HA_D}/shellfuncs", LIB, OCF_IPADDR2]
    out = [p for p in need if not os.path.exists(p)]
    if shutil.which("unshare") is None:
        out.append("unshare (util-linux)")
    return out


def _mnt_ns(pid) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/mnt").st_ino
    except OSError:
        return None


class LogStamper:
    """Stamp each line appended to `path` with the wall clock when it is seen (the file is
    read every `step` s from its current end): heartbeat's own stamps have 1 s resolution."""

    def __init__(self, path, step=0.002):
        self.path, self.step = Path(path), step
        self.lines: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = None

    def start(self):
        self._offset = self.path.stat().st_size if self.path.exists() else 0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        buf = b""
        while not self._stop.is_set():
            try:
                with open(self.path, "rb") as f:
                    f.seek(self._offset)
                    data = f.read()
            except OSError:
                data = b""
            if data:
                now = time.time()
                self._offset += len(data)
                buf += data
                *done, buf = buf.split(b"\n")
                self.lines += [(now, ln.decode(errors="replace")) for ln in done]
            time.sleep(self.step)

    def stop(self):
        self._stop.set()
        if self._thread:
            self._thread.join(5)


class DebianHeartbeatSystem:
    """Debian's heartbeat 3 with the article's ha.cf, authkeys and haresources (VIP only)."""

    # heartbeat's log lines for the steps of a takeover, in order (first match after the fault)
    MARKS = (("dead_ms", ": is dead"),
             ("takeover_ms", "Taking over resource group"),  # mach_down (shell) starts the takeover
             ("rsc_start_ms", "resource.d/IPaddr2"),          # ResourceManager runs the script (... start)
             ("vip_up_ms", "Adding inet address"),
             ("send_arp_ms", "send_arp"))

    def __init__(self, lab, base, name, keepalive="2", deadtime="10", warntime="6", initdead="60"):
        self.lab, self.name = lab, name
        self.base = Path(base) / name
        self.timers = dict(keepalive=keepalive, deadtime=deadtime, warntime=warntime, initdead=initdead)
        self.stamper = None

    @classmethod
    def available(cls):
        return not missing()

    def log(self, node):
        return self.base / node / "ha.log"

    def _write(self, node):
        d = self.base / node
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
        shutil.copytree(HA_D, d / "ha.d", symlinks=True)
        shutil.copytree(LIB, d / "lib", symlinks=True)
        for f in ("hb_uuid", "hostcache", "delhostcache", "hb_generation", "fifo"):
            try:
                (d / "lib" / f).unlink()
            except FileNotFoundError:
                pass
        iface = self.lab.node(node).iface
        # the article's ha.cf; syslog off (no syslog in the lab), no logging daemon, no CRM
        # (haresources mode, as in the article)
        (d / "ha.d" / "ha.cf").write_text(article.ha_cf(
            iface, self.log(node), debugfile="/dev/null", logfacility=None,
            head=f"# the article's ha.cf for Debian's heartbeat in lab node {node}\n",
            tail="use_logd   no\ncrm        no\n", **self.timers))
        (d / "ha.d" / "authkeys").write_text('auth 1\n1 md5 "secret"\n')
        (d / "ha.d" / "authkeys").chmod(0o600)
        (d / "ha.d" / "haresources").write_text(f"N1 IPaddr2::{self.lab.vip}\n")
        return d

    def start(self, attempts=20, timeout=60):
        """Both nodes started together, until N1 alone holds the VIP with neither node having
        declared the other dead: at very short deadtimes heartbeat may declare its peer dead
        in the burst of start-up work (forks of its status scripts), and then N2 may take the
        VIP (auto_failback off keeps it there). Such a start is a false failover: counted, its
        logs kept (false-starts/), heartbeat killed and started again, `attempts` times at most.
        The logs are watched (file reads, every 0.1 s); `ip addr` runs in the nodes only to
        confirm, so that the watching adds little load while heartbeat starts."""
        self.false_starts = getattr(self, "false_starts", 0)
        self.starts = getattr(self, "starts", 0)
        for k in range(attempts):
            self._start_once()
            self.starts += 1
            deadline = time.monotonic() + timeout
            next_ip = time.monotonic() + 2.0
            while time.monotonic() < deadline:
                text = {n: self.log(n).read_text(errors="replace") if self.log(n).exists() else "" for n in ("N1", "N2")}
                if any(": is dead" in t for t in text.values()) or "Adding inet address" in text["N2"]:
                    break
                if "Adding inet address" in text["N1"] or time.monotonic() >= next_ip:
                    next_ip = time.monotonic() + 2.0
                    holders = article.vip_holders(self.lab)
                    if "N2" in holders:
                        break
                    if holders == ["N1"]:
                        return
                time.sleep(0.1)
            else:
                self.stop()
                raise RuntimeError(f"Debian heartbeat: N1 did not take the VIP in {timeout} s")
            self.false_starts += 1
            keep = self.base / "false-starts"
            keep.mkdir(exist_ok=True)
            for n in ("N1", "N2"):
                if self.log(n).exists():
                    shutil.copy(self.log(n), keep / f"{self.false_starts}-{n}.log")
            self.stop()
            self.lab.run("N2", ["ip", "addr", "del", f"{self.lab.vip}/{self.lab.prefixlen}", "dev",
                                self.lab.node("N2").iface])
        raise RuntimeError(f"Debian heartbeat: {attempts} starts in a row with a false failover "
                           f"(a node declared dead at start-up); logs in {self.base / 'false-starts'}")

    def _start_once(self):
        starters = []
        for node in ("N1", "N2"):
            d = self._write(node)
            # /run/heartbeat/* as tmpfiles.d creates them; rsctmp and /run/resource-agents for the
            # agents (send_arp's pid file); hacluster owns ccm/crm/dopd as in the package
            script = (f"set -e; mount --bind {d}/ha.d {HA_D}; mount --bind {d}/lib {LIB}; "
                      "mount -t tmpfs -o mode=0755 tmpfs /run; "
                      "mkdir -p /run/heartbeat/ccm /run/heartbeat/crm /run/heartbeat/dopd "
                      "/run/heartbeat/rsctmp /run/resource-agents /run/lock /run/crm; "
                      "chmod 1777 /run/heartbeat/rsctmp; "
                      "chown hacluster:haclient /run/heartbeat/ccm /run/heartbeat/crm /run/heartbeat/dopd "
                      "/run/crm 2>/dev/null || true; "
                      f"exec {BIN} >{d}/stdout.log 2>&1")
            starters.append((node, d, self.lab.popen(node, ["unshare", "--mount", "--propagation", "private",
                                                            "sh", "-c", script])))
        for node, d, p in starters:          # heartbeat's parent exits once the daemon is up
            try:
                rc = p.wait(30)
            except subprocess.TimeoutExpired:
                rc = "still running after 30 s"
            if rc != 0:
                out = (d / "stdout.log").read_text(errors="replace") if (d / "stdout.log").exists() else ""
                self.stop()
                raise RuntimeError(f"Debian heartbeat did not start on {node} (exit {rc}): {out.strip()[-600:]}")

    def pids(self, node):
        """The node's processes in another mount namespace than ours: heartbeat and its children."""
        mine = _mnt_ns("self")
        return [p for p in self.lab.pids(node) if _mnt_ns(p) not in (None, mine)]

    def stop(self):
        if self.stamper:
            self.stamper.stop()
            self.stamper = None
        left = []
        for node in ("N1", "N2"):
            pids = self.pids(node)
            nsu.signal_pids(pids, signal.SIGCONT)
            nsu.signal_pids(pids, signal.SIGKILL)
            if not nsu.wait_gone(pids, 5):
                left += pids
        if left:
            raise RuntimeError(f"Debian heartbeat processes left after SIGKILL: {left}")

    def arm(self):
        """Before the fault: stamp N2's log lines as they come."""
        self.n2_dead_before_arm = self.log("N2").read_text(errors="replace").count(": is dead")
        self.stamper = LogStamper(self.log("N2")).start()

    def timeline(self, fault_wall, r):
        """ms from the fault to each takeover step of N2's heartbeat (its log lines, stamped
        when they reached the file)."""
        out = {}
        if self.stamper is None:
            return out
        self.stamper.stop()
        # false start-up failovers before this trial (start() retried), and deaths N2 declared
        # between the checks of start() and the fault (the trial then measured nothing clean)
        out["false_starts_so_far"] = getattr(self, "false_starts", 0)
        out["deaths_before_fault"] = (self.log("N1").read_text(errors="replace").count(": is dead")
                                      + self.n2_dead_before_arm
                                      + sum(1 for t, line in self.stamper.lines
                                            if t < fault_wall and ": is dead" in line))
        for t, line in self.stamper.lines:
            if t < fault_wall:
                continue
            for k, m in self.MARKS:
                if k not in out and m in line and (k != "rsc_start_ms" or line.rstrip().endswith(" start")):
                    out[k] = round((t - fault_wall) * 1000, 1)
        if r.get("first_answer_from_fault") is not None:
            out["first_answer_ms"] = round(r["first_answer_from_fault"] * 1000, 1)
        return out
