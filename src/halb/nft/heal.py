"""The nft engine's data plane heals itself while a director runs.

A firewall reload (`nft flush ruleset`, `systemctl restart nftables`) or an
`ip rule flush` removes halb's table or its Direct Return routing behind
halb's back: clients would all go to the director's own server (or nowhere)
until somebody ran the director again. The director of the active node
holds the table, so it runs a Healer: it listens to the kernel's events (the
nftables ones through `nft -j monitor tables`, rtnetlink's rule group
through a pyroute2 socket; no polling) and, when one may concern halb, asks
the engine to put back what is missing (NftEngine.heal: same dest marks, so
flows the sync daemon re-adds still match). A check every SAFETY_S seconds
covers events lost to a full socket buffer.

Decisions are logged as ldirectord logs its own ("Restored ...").
"""
from __future__ import annotations

import json
import logging
import os
import select
import subprocess
import threading
import time
from typing import Callable

from halb.errors import HalbError

log = logging.getLogger("halb.nft.heal")

SAFETY_S = float(os.environ.get("HALB_NFT_HEAL_SAFETY", "5"))


def concerns_halb(event: dict) -> bool:
    """Whether an `nft -j monitor` event may have removed halb's objects."""
    if not isinstance(event, dict):
        return False
    for verb in ("delete", "flush"):
        obj = event.get(verb)
        if isinstance(obj, dict):
            for body in obj.values():
                if isinstance(body, dict) and body.get("family") in ("inet", None) \
                        and body.get("table", body.get("name")) == "halb":
                    return True
    return False


class Healer:
    """Watch the kernel; call `heal()` (returns what it restored or None) when
    halb's table or routing may have gone. `report(missing, ms)` logs."""

    def __init__(self, heal: Callable[[], tuple[list[str], int] | None],
                 report: Callable[[str], None] | None = None, guard_vips: list[str] | None = None):
        self.heal = heal
        self.guard_vips = guard_vips or []
        self.owner: subprocess.Popen | None = None
        self.owner_home: str | None = None
        self.report = report or log.warning
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self.proc: subprocess.Popen | None = None
        self.ipr = None
        self.threads: list[threading.Thread] = []
        self.restored = 0

    def start(self) -> "Healer":
        from halb.nft import guard

        lines = guard.owned_lines(self.guard_vips)
        if lines:
            try:
                # nft -i keeps a command history in $HOME/.nft.history (in / under systemd, where
                # HOME is unset): give it a private home, removed when it ends
                import tempfile

                self.owner_home = tempfile.mkdtemp(prefix="halb-nft-")
                self.owner = subprocess.Popen(["nft", "-i"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                              stderr=subprocess.DEVNULL, text=True,
                                              env={**os.environ, "HOME": self.owner_home})
                self.owner.stdin.write("\n".join(lines) + "\n")
                self.owner.stdin.flush()
            except OSError as e:
                self.report(f"no flush-proof guard for the VIP ({e})")
        try:
            self.proc = subprocess.Popen(["nft", "-j", "monitor", "tables"], stdout=subprocess.PIPE,
                                         stderr=subprocess.DEVNULL, bufsize=0)
        except OSError as e:
            self.report(f"cannot watch nftables events ({e}): checking every {SAFETY_S:g}s")
        else:
            self._thread(self._nft_events, "heal-nft")
        self._thread(self._rule_events, "heal-rtnl")
        self._thread(self._worker, "heal")
        return self

    def _thread(self, fn, name) -> None:
        t = threading.Thread(target=fn, name=name, daemon=True)
        t.start()
        self.threads.append(t)

    def _nft_events(self) -> None:
        out = self.proc.stdout
        buf = b""
        while not self.stopping.is_set():
            chunk = out.read(65536) if hasattr(out, "read") else b""
            if not chunk:
                return
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for ln in lines:
                try:
                    ev = json.loads(ln)
                except ValueError:
                    continue
                if concerns_halb(ev):
                    self.wake.set()

    def _rule_events(self) -> None:
        # the socket is made in this thread: pyroute2 refuses to start inside
        # a thread whose event loop runs (the director's)
        try:
            from pyroute2 import IPRoute
            from pyroute2.netlink.rtnl import RTMGRP_IPV4_RULE

            self.ipr = IPRoute()
            self.ipr.bind(groups=RTMGRP_IPV4_RULE)
        except Exception as e:  # noqa: BLE001 - no rtnetlink: the safety check still runs
            self.ipr = None
            self.report(f"cannot watch routing rule events ({e})")
            return
        fd = self.ipr.fileno()
        while not self.stopping.is_set():
            try:
                r, _, _ = select.select([fd], [], [], 0.5)
                if not r:
                    continue
                msgs = self.ipr.get()
            except Exception:  # noqa: BLE001 - closed on stop, or an overrun: look anyway
                if self.stopping.is_set():
                    return
                self.wake.set()
                continue
            if any(m.get("event") == "RTM_DELRULE" for m in msgs):
                self.wake.set()

    def _worker(self) -> None:
        while not self.stopping.is_set():
            self.wake.wait(SAFETY_S)
            if self.stopping.is_set():
                return
            self.wake.clear()
            try:
                res = self.heal()
            except HalbError as e:
                self.report(f"could not restore halb's data plane: {e}")
                time.sleep(0.2)
                self.wake.set()
                continue
            except Exception as e:  # noqa: BLE001 - the healer must survive anything
                self.report(f"could not restore halb's data plane: {type(e).__name__}: {e}")
                time.sleep(0.5)
                continue
            if res:
                missing, ms = res
                self.restored += 1
                msg = (f"Restored {', '.join(missing)} removed behind halb's back "
                       f"(firewall reload or `nft flush ruleset`?) in {ms} ms")
                self.report(msg)
                from halb import events
                events.record("table_restored", "nft", msg)

    def stop(self) -> None:
        self.stopping.set()
        self.wake.set()
        if self.owner is not None:  # its table goes with it
            try:
                self.owner.stdin.close()
                self.owner.wait(5)
            except (OSError, subprocess.TimeoutExpired):
                self.owner.kill()
                self.owner.wait()
        if self.owner_home is not None:
            import shutil

            shutil.rmtree(self.owner_home, ignore_errors=True)
            self.owner_home = None
        if self.proc is not None:
            try:
                self.proc.terminate()
                self.proc.wait(5)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        if self.ipr is not None:
            try:
                self.ipr.close()
            except Exception:  # noqa: BLE001
                pass
        for t in self.threads:
            t.join(2)
