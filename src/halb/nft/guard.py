"""A real server drops stray mid-connection packets for its VIP instead of
resetting them.

During a failover (and for the instant a firewall reload leaves the director
without halb's table) a node may receive packets of a connection another
real server holds: the new director's ARP announcement is on its way, the
old one's cache still points at a node whose table is gone, the new table is
being built. The node's TCP stack finds no connection and answers with a
RST, which kills a download that would have gone on a few hundred
milliseconds later when the packet, retransmitted, reaches the right server.
With the guard such a packet is dropped: a non-SYN, non-RST TCP packet to a
VIP that only a listening (wildcard) socket would take. Packets of this
node's own connections (an established socket bound to the VIP), new
connections (SYN) and ports nothing listens on are untouched.

One nftables table, `inet halb_guard`, in the input hook (after routing:
packets the director forwards never reach it); `halb realserver start` puts
it in with the VIPs it hides on lo, `stop` removes it.
"""
from __future__ import annotations

from halb.nft import nftcli

TABLE = "inet halb_guard"


def script(vips: list[str]) -> str:
    lines = [f"add table {TABLE}", f"delete table {TABLE}", f"add table {TABLE}",
             f"add set {TABLE} vips {{ type ipv4_addr; }}",
             f"add chain {TABLE} input {{ type filter hook input priority 0; policy accept; }}",
             f"add rule {TABLE} input ip daddr @vips tcp flags & (syn|rst) == 0 socket wildcard 1 "
             f"counter drop"]
    if vips:
        lines.append(f"add element {TABLE} vips {{ {', '.join(sorted(set(vips)))} }}")
    return "\n".join(lines) + "\n"


OWNED = "inet halb_guard_owned"


def owned_lines(vips: list[str]) -> list[str]:
    """The same guard in a table owned by the `nft -i` process the director's
    healer keeps open (halb.nft.heal): nftables skips a table with `flags
    owner` in `nft flush ruleset` run by anyone else, so the guard holds
    through a firewall reload, when the director needs it most (its own
    table is gone until the healer puts it back); the kernel removes the
    table when its owner exits."""
    v4 = sorted({v for v in vips if ":" not in v})
    if not v4:
        return []
    return [f"add table {OWNED} {{ flags owner; }}",
            f"add set {OWNED} vips {{ type ipv4_addr; }}",
            f"add chain {OWNED} input {{ type filter hook input priority 0; policy accept; }}",
            f"add rule {OWNED} input ip daddr @vips tcp flags & (syn|rst) == 0 socket wildcard 1 drop",
            f"add element {OWNED} vips {{ {', '.join(v4)} }}"]


def install(vips: list[str]) -> str | None:
    """Put the guard in for vips; None, or why it could not (never fatal:
    without it a failover resets more connections, nothing else)."""
    v4 = [v for v in vips if ":" not in v]
    if not v4:
        return None
    try:
        if nftcli.available():
            return "nft is not usable here"
        nftcli.run_script(script(v4))
    except Exception as e:  # noqa: BLE001
        return str(e)
    return None


def remove() -> None:
    try:
        nftcli.run_script(f"add table {TABLE}\ndelete table {TABLE}\n")
    except Exception:  # noqa: BLE001 - nothing to remove, or no nft
        pass


def present() -> bool:
    try:
        return nftcli.table_exists("inet", "halb_guard")
    except Exception:  # noqa: BLE001
        return False
