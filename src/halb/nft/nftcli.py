"""Running `nft` (one process per transaction; `nft -f -` is atomic) and
reading its JSON output."""
from __future__ import annotations

import json
import shutil
import subprocess

from halb.errors import EngineUnavailable, HalbError

NFT = "nft"


class NftError(HalbError):
    """nft refused a transaction (nothing was changed)."""


def available() -> str | None:
    """None when nft can be used here, else the reason."""
    if not shutil.which(NFT):
        return "nftables' nft command is not installed"
    try:
        r = subprocess.run([NFT, "list", "tables"], capture_output=True, text=True, timeout=20)
    except OSError as e:
        return f"nft cannot run: {e}"
    if r.returncode != 0:
        msg = (r.stderr.strip().splitlines() or ["unknown error"])[0]
        return f"nft cannot read the ruleset ({msg})"
    return None


def run_script(script: str, timeout: float = 120) -> None:
    """Apply a batch atomically; raise NftError with nft's first error line."""
    r = subprocess.run([NFT, "-f", "-"], input=script, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        first = next((ln for ln in lines if "Error" in ln), lines[0] if lines else "unknown error")
        raise NftError(f"nft refused the change: {first.strip()}")


def list_json(*what: str) -> list[dict]:
    """`nft -j list ...` as the list of objects (metainfo dropped); [] if absent."""
    r = subprocess.run([NFT, "-j", "list", *what], capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        if "No such file" in r.stderr or "does not exist" in r.stderr:
            return []
        raise NftError(f"nft list {' '.join(what)}: {(r.stderr.strip().splitlines() or ['error'])[0]}")
    data = json.loads(r.stdout or "{}")
    return [o for o in data.get("nftables", []) if "metainfo" not in o]


def table_exists(family: str, name: str) -> bool:
    # `nft list table` and its exit status, not `nft -j list tables`: nft
    # 1.0.6 prints invalid JSON for a table with `flags owner` (halb.nft.guard)
    r = subprocess.run([NFT, "list", "table", family, name], capture_output=True, text=True, timeout=60)
    if r.returncode == 0:
        return True
    if "No such file" in r.stderr or "does not exist" in r.stderr:
        return False
    raise NftError(f"nft list table {family} {name}: {(r.stderr.strip().splitlines() or ['error'])[0]}")


def elem_parts(e) -> tuple[object, int | None, int | None, object]:
    """(key, expires, timeout, value) of a set/map element from nft JSON.

    key is a tuple for concatenations; value is None for set elements."""
    value = None
    if isinstance(e, list) and len(e) == 2:
        e, value = e
    expires = timeout = None
    if isinstance(e, dict) and "elem" in e:
        inner = e["elem"]
        expires = inner.get("expires")
        timeout = inner.get("timeout")
        e = inner.get("val")
    if isinstance(e, dict) and "concat" in e:
        e = tuple(e["concat"])
    return e, expires, timeout, value


def unavailable(reason: str) -> EngineUnavailable:
    return EngineUnavailable(f"the nft engine cannot run here: {reason}; use --engine proxy "
                             f"(the user-space engine) instead")
