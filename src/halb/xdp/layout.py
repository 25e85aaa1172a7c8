"""The XDP program's map layout, as bytes (pure; mirrors bpf/halb_xdp.c),
and a service's slot table (the nft engine's planner, halb.nft.plan, gives
the exact IPVS decisions; here they become map entries)."""
from __future__ import annotations

import socket
import struct

from halb.model import Service
from halb.nft.plan import slot_table

LAYOUT_VERSION = 1
MODE_SEQ, MODE_SADDR, MODE_DADDR, MODE_HASH = 0, 1, 2, 3
SF_PORT = 1
PROTO = {"tcp": 6, "udp": 17}
PROTO_NAME = {6: "TCP", 17: "UDP"}
MAX_SERVICES = 4096
MAX_DESTS = 65536
MAP_NAMES = ("services", "slots", "seqs", "dests", "flows", "templates", "stats", "drops", "config")


def ip4(addr: str) -> bytes:
    return socket.inet_aton(addr)


def ip4str(raw: bytes) -> str:
    return socket.inet_ntoa(raw)


def svc_key(addr: str, port: int, proto: str) -> bytes:
    return ip4(addr) + port.to_bytes(2, "big") + bytes([PROTO[proto], 0])


def parse_svc_key(raw: bytes) -> tuple[str, int, int]:
    return ip4str(raw[:4]), int.from_bytes(raw[4:6], "big"), raw[6]


def svc_val(sid: int, nslots: int, gen: int, mode: int, ptimeout: int, pmask: str, flags: int) -> bytes:
    return struct.pack("<5I", sid, nslots, gen, mode, ptimeout) + ip4(pmask) + struct.pack("<2I", flags, 0)


def parse_svc_val(raw: bytes) -> dict:
    sid, n, gen, mode, pt = struct.unpack_from("<5I", raw)
    return {"sid": sid, "nslots": n, "gen": gen, "mode": mode, "ptimeout": pt,
            "pmask": ip4str(raw[20:24]), "flags": struct.unpack_from("<I", raw, 24)[0]}


def slot_key(sid: int, gen: int, slot: int) -> bytes:
    return struct.pack("<II", sid, (gen << 31) | slot)


def u32(v: int) -> bytes:
    return struct.pack("<I", v)


def u64(v: int) -> bytes:
    return struct.pack("<Q", v)


def mac_bytes(mac: str | None) -> bytes:
    return bytes.fromhex(mac.replace(":", "")) if mac else bytes(6)


def dest_val(addr: str, ifindex: int, sid: int, mac: str | None, smac: str | None, local: bool,
             live: bool) -> bytes:
    return (ip4(addr) + u32(ifindex) + u32(sid) + mac_bytes(mac) + mac_bytes(smac)
            + bytes([int(local), int(live), int(bool(mac)), 0]))


def parse_dest_val(raw: bytes) -> dict:
    return {"addr": ip4str(raw[:4]), "ifindex": struct.unpack_from("<I", raw, 4)[0],
            "sid": struct.unpack_from("<I", raw, 8)[0], "mac": raw[12:18].hex(":"),
            "local": bool(raw[24]), "live": bool(raw[25]), "has_mac": bool(raw[26])}


def parse_flow(key: bytes, val: bytes) -> dict:
    saddr, daddr = ip4str(key[:4]), ip4str(key[4:8])
    sport, dport = int.from_bytes(key[8:10], "big"), int.from_bytes(key[10:12], "big")
    did, closing, seen = struct.unpack_from("<IIQ", val)
    return {"caddr": saddr, "cport": sport, "vaddr": daddr, "vport": dport, "proto": key[12],
            "did": did, "closing": bool(closing), "seen": seen}


def flow_key(caddr: str, cport: int, vaddr: str, vport: int, proto: str) -> bytes:
    return ip4(caddr) + ip4(vaddr) + cport.to_bytes(2, "big") + vport.to_bytes(2, "big") + bytes(
        [PROTO[proto], 0, 0, 0])


def flow_val(did: int, closing: bool, seen_ns: int) -> bytes:
    return struct.pack("<IIQ", did, int(closing), seen_ns)


def tmpl_key(sid: int, net: str) -> bytes:
    return u32(sid) + ip4(net)


def parse_tmpl(key: bytes, val: bytes) -> dict:
    sid = struct.unpack_from("<I", key)[0]
    did, _, seen = struct.unpack_from("<IIQ", val)
    return {"sid": sid, "net": ip4str(key[4:8]), "did": did, "seen": seen}


def parse_counters(per_cpu: list[bytes]) -> tuple[int, int, int]:
    c = p = b = 0
    for raw in per_cpu:
        x, y, z = struct.unpack_from("<3Q", raw)
        c, p, b = c + x, p + y, b + z
    return c, p, b


def config_val(tcp: int, tcpfin: int, udp: int) -> bytes:
    return struct.pack("<3Q", tcp * 10**9, tcpfin * 10**9, udp * 10**9)


def mode_of(svc: Service) -> tuple[int, int]:
    """(mode, flags) of the program's slot choice for the service."""
    s = svc.scheduler
    if s == "sh":
        return MODE_SADDR, SF_PORT if "sh-port" in svc.flags else 0
    if s == "dh":
        return MODE_DADDR, 0
    if s == "mh":
        return MODE_HASH, SF_PORT if "mh-port" in svc.flags else 0
    return MODE_SEQ, 0


def slots_for(svc: Service, dids: list[int], counts: dict | None = None,
              keep: dict | None = None) -> tuple[int, list[tuple[int, int]]]:
    """(number of slots, [(slot, dest id)]) for the service, whose dests are
    given their ids in order (dids[i] is svc.dests[i]'s id)."""
    _, size, slots = slot_table(svc, counts, keep)
    out = [(slot, dids[idx]) for slot, idx in slots if 0 <= idx < len(dids)]
    if not out:
        return 0, []
    return size, out
