"""What `halb gmond` measures on its node: Ganglia's standard metrics (same
names, types, units and slopes as gmond's) from psutil and /proc, and
halb's own when it runs here (virtual services from the engine, heartbeat
state from its control socket), best effort and cheap."""
from __future__ import annotations

import logging
import os
import platform
import socket
import time

import psutil

from halb.monitor.gxml import Metric

log = logging.getLogger("halb.gmond")

# name: (TYPE, UNITS, SLOPE, TMAX, GROUP, DESC)
DEFS = {
    "load_one": ("float", " ", "both", 70, "load", "One minute load average"),
    "load_five": ("float", " ", "both", 325, "load", "Five minute load average"),
    "load_fifteen": ("float", " ", "both", 950, "load", "Fifteen minute load average"),
    "cpu_user": ("float", "%", "both", 90, "cpu", "Percentage of CPU utilization that occurred while executing at the user level"),
    "cpu_nice": ("float", "%", "both", 90, "cpu", "Percentage of CPU utilization that occurred while executing at the nice level"),
    "cpu_system": ("float", "%", "both", 90, "cpu", "Percentage of CPU utilization that occurred while executing at the system level"),
    "cpu_idle": ("float", "%", "both", 90, "cpu", "Percentage of time that the CPU or CPUs were idle"),
    "cpu_wio": ("float", "%", "both", 90, "cpu", "Percentage of time that the CPU or CPUs were idle during an outstanding disk I/O request"),
    "cpu_steal": ("float", "%", "both", 90, "cpu", "Percentage of time a virtual CPU waited for the hypervisor"),
    "cpu_num": ("uint16", "CPUs", "zero", 1200, "cpu", "Total number of CPUs"),
    "cpu_speed": ("uint32", "MHz", "zero", 1200, "cpu", "CPU Speed in terms of MHz"),
    "mem_total": ("float", "KB", "zero", 1200, "memory", "Total amount of memory displayed in KBs"),
    "mem_free": ("float", "KB", "both", 180, "memory", "Amount of available memory"),
    "mem_shared": ("float", "KB", "both", 180, "memory", "Amount of shared memory"),
    "mem_buffers": ("float", "KB", "both", 180, "memory", "Amount of buffered memory"),
    "mem_cached": ("float", "KB", "both", 180, "memory", "Amount of cached memory"),
    "swap_total": ("float", "KB", "zero", 1200, "memory", "Total amount of swap space displayed in KBs"),
    "swap_free": ("float", "KB", "both", 180, "memory", "Amount of available swap memory"),
    "bytes_in": ("float", "bytes/sec", "both", 300, "network", "Number of bytes in per second"),
    "bytes_out": ("float", "bytes/sec", "both", 300, "network", "Number of bytes out per second"),
    "pkts_in": ("float", "packets/sec", "both", 300, "network", "Packets in per second"),
    "pkts_out": ("float", "packets/sec", "both", 300, "network", "Packets out per second"),
    "proc_run": ("uint32", " ", "both", 950, "process", "Total number of running processes"),
    "proc_total": ("uint32", " ", "both", 950, "process", "Total number of processes"),
    "disk_total": ("double", "GB", "both", 1200, "disk", "Total available disk space"),
    "disk_free": ("double", "GB", "both", 180, "disk", "Total free disk space"),
    "part_max_used": ("float", "%", "both", 180, "disk", "Maximum percent used for all partitions"),
    "boottime": ("uint32", "s", "zero", 1200, "system", "The last time that the system was started"),
    "sys_clock": ("timestamp", "s", "zero", 1200, "system", "Time as reported by the system clock"),
    "machine_type": ("string", "", "zero", 1200, "system", "System architecture"),
    "os_name": ("string", "", "zero", 1200, "system", "Operating system name"),
    "os_release": ("string", "", "zero", 1200, "system", "Operating system release date"),
    "heartbeat": ("uint32", "", "unspecified", 20, "core", "Last heartbeat"),
}

HALB_TMAX = 60


def metric(name: str, val, defs=None) -> Metric:
    typ, units, slope, tmax, group, desc = (defs or DEFS)[name]
    if typ in ("float", "double"):
        sval = f"{float(val):.2f}" if not name.startswith("cpu_") else f"{float(val):.1f}"
    elif typ == "string":
        sval = str(val)
    else:
        sval = str(int(val))
    return Metric(name=name, val=sval, type=typ, units=units, tmax=tmax, slope=slope,
                  extra={"GROUP": group, "DESC": desc, "TITLE": desc})


def halb_metric(name: str, val, typ="float", units=" ", desc="") -> Metric:
    sval = str(val) if typ == "string" else (f"{float(val):.2f}" if typ in ("float", "double") else str(int(val)))
    return Metric(name=name, val=sval, type=typ, units=units, tmax=HALB_TMAX, slope="both" if typ != "string" else "zero",
                  extra={"GROUP": "halb", "DESC": desc or name, "TITLE": desc or name})


# ------------------------------------------------------------------ pure helpers
CPU_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


def cpu_percents(prev, cur) -> dict[str, float]:
    """Ganglia's cpu_* percentages between two psutil.cpu_times() readings."""
    d = {f: max(0.0, getattr(cur, f, 0.0) - getattr(prev, f, 0.0)) for f in CPU_FIELDS}
    total = sum(d.values())
    if total <= 0:
        return {"cpu_user": 0.0, "cpu_nice": 0.0, "cpu_system": 0.0, "cpu_idle": 100.0, "cpu_wio": 0.0,
                "cpu_steal": 0.0}
    pct = {k: 100.0 * v / total for k, v in d.items()}
    return {"cpu_user": pct["user"], "cpu_nice": pct["nice"],
            "cpu_system": pct["system"] + pct["irq"] + pct["softirq"], "cpu_idle": pct["idle"],
            "cpu_wio": pct["iowait"], "cpu_steal": pct["steal"]}


def rate(prev: float, cur: float, dt: float) -> float:
    """A counter's rate per second (0 after a counter reset or with no time)."""
    if dt <= 0 or cur < prev:
        return 0.0
    return (cur - prev) / dt


def safe_name(s: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in s)


# ------------------------------------------------------------------ collector
class Collector:
    def __init__(self, ctx=None, with_halb: bool = True):
        self.ctx = ctx
        self.with_halb = with_halb and ctx is not None
        self.prev_cpu = psutil.cpu_times()
        self.prev_net = self._net()
        self.prev_t = time.monotonic()
        self.started = int(time.time())
        self.halb_errors = 0

    @staticmethod
    def _net():
        tot = [0, 0, 0, 0]
        try:
            for nic, c in psutil.net_io_counters(pernic=True).items():
                if nic == "lo":
                    continue
                tot[0] += c.bytes_recv
                tot[1] += c.bytes_sent
                tot[2] += c.packets_recv
                tot[3] += c.packets_sent
        except OSError:
            pass
        return tot

    def system(self) -> dict[str, Metric]:
        now_m = time.monotonic()
        dt = now_m - self.prev_t
        out: dict[str, Metric] = {}

        def put(name, val):
            out[name] = metric(name, val)

        la = os.getloadavg()
        put("load_one", la[0])
        put("load_five", la[1])
        put("load_fifteen", la[2])
        cpu = psutil.cpu_times()
        for k, v in cpu_percents(self.prev_cpu, cpu).items():
            put(k, v)
        self.prev_cpu = cpu
        put("cpu_num", psutil.cpu_count() or 1)
        try:
            freq = psutil.cpu_freq()
            put("cpu_speed", freq.current if freq else 0)
        except (OSError, NotImplementedError, AttributeError):
            put("cpu_speed", 0)
        vm = psutil.virtual_memory()
        put("mem_total", vm.total / 1024)
        put("mem_free", vm.available / 1024)
        put("mem_shared", getattr(vm, "shared", 0) / 1024)
        put("mem_buffers", getattr(vm, "buffers", 0) / 1024)
        put("mem_cached", getattr(vm, "cached", 0) / 1024)
        sw = psutil.swap_memory()
        put("swap_total", sw.total / 1024)
        put("swap_free", sw.free / 1024)
        net = self._net()
        for i, name in enumerate(("bytes_in", "bytes_out", "pkts_in", "pkts_out")):
            put(name, rate(self.prev_net[i], net[i], dt))
        self.prev_net, self.prev_t = net, now_m
        run, total = self._procs()
        put("proc_run", run)
        put("proc_total", total)
        try:
            du = psutil.disk_usage("/")
            put("disk_total", du.total / 1e9)
            put("disk_free", du.free / 1e9)
            put("part_max_used", du.percent)
        except OSError:
            pass
        put("boottime", psutil.boot_time())
        put("sys_clock", time.time())
        put("machine_type", platform.machine())
        put("os_name", platform.system())
        put("os_release", platform.release())
        put("heartbeat", self.started)
        return out

    @staticmethod
    def _procs() -> tuple[int, int]:
        try:
            with open("/proc/loadavg") as f:
                run, total = f.read().split()[3].split("/")
            return max(0, int(run) - 1), int(total)  # gmond does not count itself
        except (OSError, ValueError, IndexError):
            return 0, len(psutil.pids())

    # -------------------------------------------------------------- halb's own
    def halb(self) -> dict[str, Metric]:
        """Heartbeat and virtual-service metrics when those daemons run on this node;
        nothing (and no error) when they do not. Runs in a thread."""
        out: dict[str, Metric] = {}
        if not self.with_halb:
            return out
        rd = self.ctx.run_dir
        if (rd / "heartbeat.sock").exists():
            try:
                from halb.heartbeat.daemon import request

                st = request(rd, "status", timeout=1.0)
                if st.get("ok"):
                    nodes = st.get("nodes", {})
                    up = sum(1 for v in nodes.values() if str(v.get("status", "")).startswith(("up", "active")))
                    out["halb_hb_status"] = halb_metric("halb_hb_status", st.get("status", "?"), "string",
                                                        desc="heartbeat state of this node")
                    out["halb_hb_nodes_up"] = halb_metric("halb_hb_nodes_up", up, "uint32", "nodes",
                                                          "cluster nodes up, as heartbeat sees them")
                    out["halb_hb_nodes"] = halb_metric("halb_hb_nodes", len(nodes), "uint32", "nodes",
                                                       "cluster nodes heartbeat knows")
            except Exception as e:  # noqa: BLE001 - best effort
                self.halb_errors += 1
                log.debug("heartbeat status: %s", e)
        engine_here = ((rd / "proxy.sock").exists() if self.ctx.engine == "proxy"
                       else (rd / "nft-state.bin").exists())
        if engine_here:
            try:
                from halb.engine import open_engine

                eng = open_engine(self.ctx)
                try:
                    services = eng.services()
                finally:
                    close = getattr(eng, "close", None)
                    if close:
                        close()
                out.update(self.service_metrics(services))
            except Exception as e:  # noqa: BLE001 - best effort
                self.halb_errors += 1
                log.debug("engine services: %s", e)
        return out

    @staticmethod
    def service_metrics(services) -> dict[str, Metric]:
        out: dict[str, Metric] = {}
        act = inact = cps = inbps = outbps = 0
        for s in services[:64]:
            k = s.key
            base = "halb_vs_" + safe_name(f"fwm_{k.fwmark}" if k.proto == "fwm" else f"{k.proto}_{k.addr}_{k.port}")
            a = sum(d.activeconns for d in s.dests)
            i = sum(d.inactconns for d in s.dests)
            act, inact, cps = act + a, inact + i, cps + s.rates.cps
            inbps, outbps = inbps + s.rates.inbps, outbps + s.rates.outbps
            out[base + "_activeconns"] = halb_metric(base + "_activeconns", a, "uint32", "conns",
                                                     f"active connections of {k}")
            out[base + "_inactconns"] = halb_metric(base + "_inactconns", i, "uint32", "conns",
                                                    f"inactive connections of {k}")
            out[base + "_cps"] = halb_metric(base + "_cps", s.rates.cps, "float", "conns/sec",
                                             f"new connections per second of {k}")
            out[base + "_inbps"] = halb_metric(base + "_inbps", s.rates.inbps, "float", "bytes/sec",
                                               f"bytes in per second of {k}")
            out[base + "_outbps"] = halb_metric(base + "_outbps", s.rates.outbps, "float", "bytes/sec",
                                                f"bytes out per second of {k}")
        out["halb_vs_count"] = halb_metric("halb_vs_count", len(services), "uint32", "services", "virtual services")
        out["halb_activeconns"] = halb_metric("halb_activeconns", act, "uint32", "conns",
                                              "active connections, all virtual services")
        out["halb_inactconns"] = halb_metric("halb_inactconns", inact, "uint32", "conns",
                                             "inactive connections, all virtual services")
        out["halb_cps"] = halb_metric("halb_cps", cps, "float", "conns/sec", "new connections per second, all services")
        out["halb_inbps"] = halb_metric("halb_inbps", inbps, "float", "bytes/sec", "bytes in per second, all services")
        out["halb_outbps"] = halb_metric("halb_outbps", outbps, "float", "bytes/sec", "bytes out per second, all services")
        return out


service_metrics_safe_names = Collector.service_metrics


def host_ip(bind: str) -> str:
    """The address gmond reports for its host."""
    if bind and bind not in ("0.0.0.0", "::", ""):
        return bind
    try:
        for nic, addrs in sorted(psutil.net_if_addrs().items()):
            if nic == "lo":
                continue
            for a in addrs:
                if a.family == socket.AF_INET:
                    return a.address
    except OSError:
        pass
    return "127.0.0.1"
