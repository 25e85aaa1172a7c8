"""Per-invocation context: node identity, run directory, engine choice.

Node identity follows the article (`uname -n`) but can be overridden with
--node / HALB_NODE so several nodes can run on one machine. Every runtime
path (sockets, pid files, state files) lives in the node's run dir.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path


def default_node() -> str:
    return os.environ.get("HALB_NODE") or os.uname().nodename


def default_run_dir(node: str) -> Path:
    env = os.environ.get("HALB_RUN_DIR")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/run/halb") / node
    base = os.environ.get("XDG_RUNTIME_DIR") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "halb" / node


def has_net_admin() -> bool:
    """True when this process holds CAP_NET_ADMIN (bit 12 of CapEff)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) & (1 << 12))
    except OSError:
        pass
    return os.geteuid() == 0


def default_engine() -> str:
    env = os.environ.get("HALB_ENGINE")
    if env:
        return env
    if has_net_admin() and shutil.which("nft"):
        return "nft"
    return "proxy"


@dataclass
class Context:
    node: str = field(default_factory=default_node)
    run_dir: Path | None = None
    engine: str | None = None

    def __post_init__(self):
        if self.run_dir is None:
            self.run_dir = default_run_dir(self.node)
        self.run_dir = Path(self.run_dir)
        if self.engine is None:
            self.engine = default_engine()

    def ensure_run_dir(self) -> Path:
        self.run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        return self.run_dir

    def path(self, name: str) -> Path:
        """A file in the node's run dir (created on demand)."""
        return self.ensure_run_dir() / name
