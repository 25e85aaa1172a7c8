"""STONITH ("shoot the other node in the head") before taking its resources.

Devices, from ha.cf:
  stonith_host HOST|* external /path/to/cmd [args...]
      runs `cmd args... reset NODE`; exit status 0 means NODE is off.
  stonith_host HOST|* labpower LABNAME [LABROOT]
      the lab's "power switch": kills every process of the lab node and
      unplugs its cable (halb.lab), so it can no longer answer for the VIP.
The first word says from which node the device may be used (`*`: any).
"""
from __future__ import annotations

import subprocess

from halb.errors import ConfigError

KINDS = ("external", "labpower")


def check_devices(cfg) -> None:
    for d in cfg.stonith:
        if d.kind not in KINDS:
            raise ConfigError(cfg.path, d.line, f"stonith device type '{d.kind}' is not supported "
                                                f"(halb has: {', '.join(KINDS)})")
        if not d.args:
            raise ConfigError(cfg.path, d.line, f"stonith {d.kind}: missing parameters")


def devices_for(cfg, me: str) -> list:
    return [d for d in cfg.stonith if d.hosts in ("*", me)]


def reset(device, node: str, timeout: float = 30.0) -> tuple[bool, str]:
    """Power-cycle `node` with `device`: (confirmed off, message)."""
    if device.kind == "external":
        from halb.heartbeat.daemon import normal_priority

        argv = normal_priority([*device.args, "reset", node])
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return False, f"{argv[0]} did not answer in {timeout:g}s"
        except OSError as e:
            return False, f"{argv[0]}: {e.strerror}"
        out = (r.stdout + r.stderr).strip().splitlines()
        return r.returncode == 0, (out[-1] if out else f"exit {r.returncode}")
    if device.kind == "labpower":
        from pathlib import Path

        from halb.lab import Lab

        try:
            lab = Lab.attach(device.args[0], Path(device.args[1]) if len(device.args) > 1 else None)
            lab.node(node)
            lab.cut_link(node)
            pids = lab.kill_node(node)
        except Exception as e:  # report, never crash the daemon
            return False, f"lab power switch: {e}"
        return True, f"lab power switch: {node} unplugged, {len(pids)} processes killed"
    return False, f"unsupported device {device.kind}"
