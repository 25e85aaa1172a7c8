"""What the connection-sync daemons (halb.sync) need from the nft engine:
this node's table as a halb.sync.core.TableView (from the engine's state
file, reloaded when it changes), the kernel's flow and persistence elements
with the time they have left, and one nft transaction to add elements."""
from __future__ import annotations

import os

from halb.context import Context
from halb.nft import nftcli
from halb.nft import ruleset as rs
from halb.nft.engine import STATE_FILE, NftEngine


class TableSource:
    """This node's table, re-read only when the engine's state file changed."""

    def __init__(self, ctx: Context):
        self.engine = NftEngine(ctx)
        self.path = ctx.run_dir / STATE_FILE
        self._stamp = None
        self._view = None

    def view(self):
        from halb.sync.core import SvcView, TableView, svc_ident

        try:
            st_ = os.stat(self.path)
            stamp = (st_.st_mtime_ns, st_.st_size, st_.st_ino)
        except FileNotFoundError:
            stamp = None
        if stamp == self._stamp and self._view is not None:
            return self._view
        services = {}
        t = None
        if stamp is not None:
            st = self.engine._load()
            t = st.timeouts
            for svc in st.services:
                k = str(svc.key)
                if k not in st.sids or svc.key.af != 4:
                    continue
                dests = {(d.addr, d.port): d.mid for d in st.dplans(k)}
                ident = svc_ident(svc.key)
                services[ident] = SvcView(ident, st.sids[k], svc.persistent, svc.timeout, dests)
        view = TableView(services) if t is None else TableView(services, t.tcp, t.tcpfin, t.udp)
        self._stamp, self._view = stamp, view
        return view

    @property
    def stamp(self):
        return self._stamp


def _elems(kind: str, name: str) -> list:
    out = []
    for o in nftcli.list_json(kind, rs.FAMILY, rs.TABLE, name):
        m = o.get(kind)
        if m:
            out += [nftcli.elem_parts(e) for e in m.get("elem", [])]
    return out


def read_kernel(view) -> tuple[list, list, list, dict]:
    return read_kernel_handle(view)[:4]


def read_kernel_handle(view) -> tuple[list, list, list, dict, int | None]:
    """(flows, uflows, closing, {sid: templates}) as nftcli.elem_parts tuples;
    empty when halb's table is not there. One `nft -j list table` (one
    process and one ruleset fetch: three listings cost three times as much)."""
    want = {"flows", "uflows", "closing"} | {f"p{sv.sid}" for sv in view.services.values() if sv.persistent}
    got: dict[str, list] = {}
    handle = None
    for o in nftcli.list_json("table", rs.FAMILY, rs.TABLE):
        if "table" in o:
            handle = o["table"].get("handle")
        m = o.get("map") or o.get("set")
        if m and m.get("name") in want:
            got[m["name"]] = [nftcli.elem_parts(e) for e in m.get("elem", [])]
    templates = {sv.sid: got.get(f"p{sv.sid}", []) for sv in view.services.values() if sv.persistent}
    return got.get("flows", []), got.get("uflows", []), got.get("closing", []), templates, handle


def current_marks(maps: set[str]) -> dict[str, dict]:
    """map name -> {key: mark} of this node's elements (to find clashes)."""
    out = {}
    for m in maps:
        out[m] = {e[0]: e[3] for e in _elems("map", m)}
    return out


def apply(cmds: list[str]) -> None:
    """One atomic transaction (NftError when nft refuses it)."""
    if cmds:
        nftcli.run_script("\n".join(cmds) + "\n")


def table_present() -> bool:
    return nftcli.table_exists(rs.FAMILY, rs.TABLE)
