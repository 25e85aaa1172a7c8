"""Resource agents for haresources: IPaddr2/IPaddr, the director
(ldirectord), LSB-style scripts and OCF agents.

Every agent has start(), stop() (idempotent; raise ResourceError on
failure) and status() -> bool. `make_agent` resolves a haresources entry
the way heartbeat does: a script in HA_DIR/resource.d/ first, then the
built-in agents, then /etc/init.d/NAME, then an OCF agent.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from halb.errors import HalbError


class ResourceError(HalbError):
    pass

OCF_ROOT_DEFAULT = "/usr/lib/ocf"
SCRIPT_TIMEOUT = 60.0

# OCF exit codes
OCF_SUCCESS, OCF_ERR_GENERIC, OCF_ERR_ARGS, OCF_ERR_UNIMPLEMENTED = 0, 1, 2, 3
OCF_ERR_PERM, OCF_ERR_INSTALLED, OCF_ERR_CONFIGURED, OCF_NOT_RUNNING = 4, 5, 6, 7
OCF_CODES = {0: "success", 1: "generic error", 2: "invalid arguments", 3: "unimplemented",
             4: "insufficient privileges", 5: "not installed", 6: "not configured", 7: "not running"}


def _run(argv, env=None, timeout=SCRIPT_TIMEOUT):
    try:
        return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise ResourceError(f"{' '.join(argv)}: no answer after {timeout:g}s") from None
    except OSError as e:
        raise ResourceError(f"{argv[0]}: {e.strerror}") from None


def _last_line(r) -> str:
    out = (r.stderr or r.stdout or "").strip()
    return out.splitlines()[-1] if out else ""


class LSBScript:
    """heartbeat-style script: `script arg1 arg2 start|stop|status`."""

    def __init__(self, path, args, log=None):
        self.path, self.args = str(path), list(args)
        self.log = log or (lambda level, msg: None)

    def __str__(self):
        return "::".join([os.path.basename(self.path)] + self.args)

    def _call(self, op):
        return _run([self.path, *self.args, op])

    def start(self):
        r = self._call("start")
        if r.returncode != 0:
            raise ResourceError(f"{self} start: exit {r.returncode} {_last_line(r)}".rstrip())

    def stop(self):
        r = self._call("stop")
        if r.returncode != 0:
            raise ResourceError(f"{self} stop: exit {r.returncode} {_last_line(r)}".rstrip())

    def status(self) -> bool:
        """As heartbeat judges it: the output says running (or OK); no output: the exit code."""
        r = self._call("status")
        out = (r.stdout or "") + (r.stderr or "")
        if re.search(r"\b(not running|stopped|dead)\b", out, re.I):
            return False
        if re.search(r"\b(running|ok)\b", out, re.I):
            return True
        return not out.strip() and r.returncode == 0


class OCFAgent:
    """OCF agent: OCF_ROOT, OCF_RESKEY_<name>=value from `name=value` args, exit codes 0-7."""

    def __init__(self, path, provider, type_, args, ocf_root, log=None):
        self.path, self.provider, self.type = str(path), provider, type_
        self.ocf_root = ocf_root
        self.log = log or (lambda level, msg: None)
        self.params = {}
        for i, a in enumerate(args, 1):
            k, sep, v = a.partition("=")
            if sep and re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", k):
                self.params[k] = v
            else:
                self.params[str(i)] = a   # positional, as heartbeat's wrapper passes them

    def __str__(self):
        return f"ocf:{self.provider}:{self.type}"

    def env(self):
        e = dict(os.environ)
        e.update({"OCF_ROOT": self.ocf_root, "OCF_RA_VERSION_MAJOR": "1", "OCF_RA_VERSION_MINOR": "0",
                  "OCF_RESOURCE_INSTANCE": f"{self.type}_{abs(hash(tuple(self.params.items()))) % 10**6}",
                  "OCF_RESOURCE_TYPE": self.type, "OCF_RESOURCE_PROVIDER": self.provider,
                  "OCF_FUNCTIONS_DIR": f"{self.ocf_root}/lib/heartbeat"})
        for k, v in self.params.items():
            e[f"OCF_RESKEY_{k}"] = v
        return e

    def call(self, op) -> int:
        r = _run([self.path, op], env=self.env())
        if r.returncode not in OCF_CODES:
            self.log("warn", f"{self} {op}: exit {r.returncode} is not an OCF code")
        return r.returncode, _last_line(r)

    def start(self):
        rc, msg = self.call("start")
        if rc != OCF_SUCCESS:
            raise ResourceError(f"{self} start: {OCF_CODES.get(rc, f'exit {rc}')} {msg}".rstrip())

    def stop(self):
        rc, msg = self.call("stop")
        if rc != OCF_SUCCESS:
            raise ResourceError(f"{self} stop: {OCF_CODES.get(rc, f'exit {rc}')} {msg}".rstrip())

    def status(self) -> bool:
        rc, _ = self.call("monitor")
        return rc == OCF_SUCCESS

    def meta_data(self) -> str:
        r = _run([self.path, "meta-data"], env=self.env())
        return r.stdout


class Director:
    """ldirectord / director: `halb director CONFIG start|stop|status` for this node.

    Connection sync (the article's §6.3.8): when a backup sync daemon runs on
    this node (`halb ipvsadm --start-daemon backup`, as the article's lvsdr
    start does), start() turns it into the master before the director starts
    and stop() turns the master back into a backup after, with the options it
    was given: what the article's edited resource.d/ldirectord script does, with
    no script to edit. A failed swap is logged; it never fails the resource."""

    def __init__(self, args, *, ha_dir, node, run_dir, engine=None, log=None):
        cfg = args[0] if args else "ldirectord.cf"
        p = Path(cfg)
        if not p.is_absolute():
            p = Path(ha_dir) / p
        self.config = str(p)
        self.node, self.run_dir, self.engine = node, str(run_dir), engine
        self.log = log or (lambda level, msg: None)

    def __str__(self):
        return f"ldirectord::{self.config}"

    def _halb(self, engine=None) -> list:
        argv = [sys.executable, "-m", "halb", "--node", self.node, "--run-dir", self.run_dir]
        engine = engine or self.engine
        return argv + (["--engine", engine] if engine else [])

    def _call(self, op, timeout=SCRIPT_TIMEOUT):
        return _run(self._halb() + ["director", self.config, op], timeout=timeout)

    def _swap_sync(self, old: str, new: str) -> None:
        from halb.sync.daemon import query

        try:
            running = query(Path(self.run_dir), old, timeout=2.0)
        except Exception:  # noqa: BLE001 - no daemon, or one that does not answer: nothing to swap
            running = None
        if running is None:
            return
        c = running["status"]["config"]
        ipvsadm = self._halb("nft") + ["ipvsadm"]
        r = _run(ipvsadm + ["--stop-daemon", old])
        if r.returncode != 0:
            self.log("warn", f"sync: cannot stop the {old} sync daemon: {_last_line(r)}")
            return
        opts = ["--mcast-interface", c["ifname"], "--syncid", str(c["syncid"]), "--mcast-group", c["group"],
                "--mcast-port", str(c["port"]), "--mcast-ttl", str(c["ttl"]), "--sync-maxlen", str(c["maxlen"])]
        if c.get("key_file"):
            opts += ["--sync-key-file", c["key_file"]]
        elif c.get("unsigned"):
            opts += ["--sync-unsigned"]  # the explicit opt-out carries over (sync signs by default)
        r = _run(ipvsadm + ["--start-daemon", new] + opts)
        if r.returncode != 0:
            self.log("warn", f"sync: cannot start the {new} sync daemon: {_last_line(r)}")
        else:
            self.log("info", f"sync: {old} sync daemon replaced by a {new} one "
                             f"(mcast={c['ifname']}, syncid={c['syncid']})")

    def start(self):
        self._swap_sync("backup", "master")
        r = self._call("start")
        if r.returncode != 0:
            raise ResourceError(f"{self} start: {_last_line(r) or f'exit {r.returncode}'}")

    def stop(self):
        r = self._call("stop")
        if r.returncode != 0:
            raise ResourceError(f"{self} stop: {_last_line(r) or f'exit {r.returncode}'}")
        self._swap_sync("master", "backup")

    def status(self) -> bool:
        return self._call("status").returncode == 0


def make_agent(resource, *, ha_dir, node, run_dir, engine=None, log=None):
    """The agent for one haresources entry (halb.heartbeat.config.Resource)."""
    name, args = resource.agent, list(resource.args)
    ha_dir = Path(ha_dir)
    if name.lower().startswith("ocf:"):
        parts = name.split(":")
        if len(parts) != 3:
            raise ResourceError(f"{resource}: OCF agents are written ocf:PROVIDER:TYPE")
        return _ocf(parts[1], parts[2], args, log, required=True)
    script = ha_dir / "resource.d" / name
    if script.is_file() and os.access(script, os.X_OK):
        return LSBScript(script, args, log)
    if name in ("IPaddr2", "IPaddr"):
        from halb.resources.ipaddr import IPaddr, IPaddr2
        cls = IPaddr2 if name == "IPaddr2" else IPaddr
        return cls(args, state_dir=run_dir, log=log, name=name)
    if name in ("ldirectord", "director"):
        return Director(args, ha_dir=ha_dir, node=node, run_dir=run_dir, engine=engine, log=log)
    init = Path("/etc/init.d") / name
    if init.is_file() and os.access(init, os.X_OK):
        return LSBScript(init, args, log)
    agent = _ocf("heartbeat", name, args, log, required=False)
    if agent is not None:
        return agent
    raise ResourceError(f"resource '{resource}': no agent named {name} "
                        f"(looked in {script.parent}, /etc/init.d and the OCF heartbeat provider)")


def _ocf(provider, type_, args, log, required):
    root = os.environ.get("OCF_ROOT", OCF_ROOT_DEFAULT)
    path = Path(root) / "resource.d" / provider / type_
    if path.is_file() and os.access(path, os.X_OK):
        return OCFAgent(path, provider, type_, args, root, log)
    if required:
        raise ResourceError(f"ocf:{provider}:{type_}: no agent at {path}")
    return None


__all__ = ["LSBScript", "OCFAgent", "Director", "ResourceError", "make_agent"]
