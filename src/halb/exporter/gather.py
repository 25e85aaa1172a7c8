"""Read one node's whole state into a plain snapshot (I/O shell).

The table comes from the engine (open_engine: nft or proxy), the rest from
the daemons' control sockets in the node's run dir (heartbeat.sock,
director.*.sock, sync-master.sock / sync-backup.sock, proxy.sock). A daemon
that does not run is simply absent; one that does not answer is an entry in
"errors" (and halb_exporter_source_up 0), never a failed scrape.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from halb import procs

ASK_TIMEOUT = 2.0


def _stats(st) -> dict:
    return {"conns": st.conns, "inpkts": st.inpkts, "outpkts": st.outpkts, "inbytes": st.inbytes,
            "outbytes": st.outbytes}


def _rates(r) -> dict:
    return {"cps": r.cps, "inpps": r.inpps, "outpps": r.outpps, "inbps": r.inbps, "outbps": r.outbps}


def service_dict(s) -> dict:
    k = s.key
    return {
        "proto": k.proto, "addr": k.addr, "port": k.port, "fwmark": k.fwmark, "scheduler": s.scheduler,
        "persistent": s.persistent, "timeout": s.timeout, "stats": _stats(s.stats), "rates": _rates(s.rates),
        "dests": [{"addr": d.addr, "port": d.port, "fwd": d.fwd or "", "weight": d.weight,
                   "activeconns": d.activeconns, "inactconns": d.inactconns, "persistconns": d.persistconns,
                   "local": d.local, "stats": _stats(d.stats), "rates": _rates(d.rates)} for d in s.dests],
    }


def read_table(ctx) -> tuple[list[dict] | None, str | None]:
    """The engine's services as dicts, or (None, why not)."""
    from halb.engine import open_engine
    from halb.errors import HalbError

    try:
        eng = open_engine(ctx)
    except HalbError as e:
        return None, str(e)
    try:
        return [service_dict(s) for s in eng.services()], None
    except HalbError as e:
        return None, str(e)
    except OSError as e:
        return None, f"{type(e).__name__}: {e}"
    finally:
        try:
            eng.close()
        except Exception:  # noqa: BLE001
            pass


def ask_status(path: Path, cmd: str = "status") -> tuple[dict | None, str | None]:
    """(status, None) from a daemon's socket; (None, None) when no daemon
    listens there; (None, error) when one should but does not answer."""
    if not path.exists():
        return None, None
    try:
        raw = procs.ask(path, {"cmd": cmd}, ASK_TIMEOUT)
    except (FileNotFoundError, ConnectionRefusedError):
        return None, None
    except (OSError, TimeoutError) as e:
        return None, f"{path.name}: {type(e).__name__}: {e}"
    try:
        rep = json.loads(raw)
    except ValueError:
        return None, f"{path.name}: unreadable answer"
    if not isinstance(rep, dict) or not rep.get("ok"):
        return None, f"{path.name}: {rep.get('error') if isinstance(rep, dict) else 'bad answer'}"
    st = rep.get("status")
    return (st if isinstance(st, dict) else rep), None   # heartbeat answers its status inline


def gather(ctx, table: bool = True) -> dict:
    """The node's snapshot (see the module docstring)."""
    t0 = time.perf_counter()
    run = Path(ctx.run_dir)
    snap: dict = {"node": ctx.node, "t": time.time(), "engine": ctx.engine, "errors": {},
                  "services": None, "heartbeat": None, "directors": [], "sync": {}, "proxy": None}
    if table:
        snap["services"], err = read_table(ctx)
        if err:
            snap["errors"]["engine"] = err
    st, err = ask_status(run / "heartbeat.sock")
    snap["heartbeat"] = st
    if err:
        snap["errors"]["heartbeat"] = err
    # director.NAME.DIGEST.sock, or d.DIGEST.sock when the run dir is deep (director.daemon.sock_path)
    for sock in sorted([*run.glob("director.*.sock"), *run.glob("d.*.sock")]):
        st, err = ask_status(sock)
        name = sock.name.split(".", 1)[1][:-len(".sock")]
        if st is not None:
            st["name"] = str(st.get("config") or name)     # the config's path: one director per config
            snap["directors"].append(st)
        if err:
            snap["errors"][f"director {name}"] = err
    for role in ("master", "backup"):
        st, err = ask_status(run / f"sync-{role}.sock")
        if st is not None:
            snap["sync"][role] = st
        if err:
            snap["errors"][f"sync {role}"] = err
    st, err = ask_status(run / "proxy.sock")
    snap["proxy"] = st
    if err:
        snap["errors"]["proxy"] = err
    snap["collect_seconds"] = round(time.perf_counter() - t0, 6)
    return snap
