"""IPaddr2 / IPaddr: the VIP follows the resource group.

start: find the interface of the VIP's subnet (or use the given one); if
the VIP sits on the hidden `lo` (a Direct Return real server, see lvsdr),
remove it there first and remember it in a state file; add it to the
interface; send a gratuitous ARP at once (`who-has VIP tell VIP`, to the
broadcast MAC) and repeat it a few times in the background.
stop: remove it from the interface; put it back on `lo` /32 if it was there.
status: is the VIP on the interface.

Spec: `IP[/bits[/iface[/broadcast]]]` as heartbeat's IPaddr2 takes it.
"""
from __future__ import annotations

import ipaddress
import json
import os
import socket
import struct
import threading
import time
from pathlib import Path


from halb.resources import ResourceError
from halb.resources.rtnl import NetlinkError, RtNetlink, link_index, link_names

ARP_REPEAT = 5          # announcements after the first one
ARP_INTERVAL = 0.2      # seconds between them


def parse_spec(spec: str) -> tuple[str, int | None, str | None]:
    parts = spec.split("/")
    ip = str(ipaddress.IPv4Address(parts[0]))
    bits = int(parts[1]) if len(parts) > 1 and parts[1] else None
    dev = parts[2] if len(parts) > 2 and parts[2] else None
    return ip, bits, dev


def garp_frame(mac: bytes, ip: str) -> bytes:
    """Ethernet broadcast ARP request `who-has IP tell IP` (gratuitous ARP)."""
    ipb = socket.inet_aton(ip)
    eth = b"\xff" * 6 + mac + struct.pack("!H", 0x0806)
    arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + mac + ipb + b"\x00" * 6 + ipb
    return eth + arp


def send_garp(dev: str, ip: str, count: int = 1) -> int:
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0806))
    try:
        s.bind((dev, 0x0806))
        mac = s.getsockname()[4][:6]
        frame = garp_frame(mac, ip)
        sent = 0
        for _ in range(count):
            s.send(frame)
            sent += 1
        return sent
    finally:
        s.close()


class IPaddr2:
    hidden_lo = True

    def __init__(self, args, *, state_dir, log=None, name="IPaddr2"):
        if not args:
            raise ResourceError(f"{name}: needs the address")
        self.name = name
        self.ip, self.bits, self.dev = parse_spec(args[0])
        self.state_file = Path(state_dir) / f"{name}-{self.ip}.state"
        self.log = log or (lambda level, msg: None)
        self._stop_arp = threading.Event()
        self._nl = None          # a netlink socket kept open: a failover must not wait for a new one
        self._lock = threading.Lock()

    def _ipr(self):
        if self._nl is None:
            self._nl = RtNetlink()
        return self._nl

    def _with_ipr(self, fn):
        """Run fn(ipr) on the kept socket; on a socket problem retry once with a fresh one."""
        with self._lock:
            try:
                return fn(self._ipr())
            except OSError as e:
                if isinstance(e, NetlinkError):
                    raise
                self.close()
                return fn(self._ipr())

    def close(self):
        if self._arp is not None:
            self._arp[1].close()
            self._arp = None
        if self._nl is not None:
            try:
                self._nl.close()
            except Exception:
                pass
            self._nl = None

    def prepare(self):
        """Open the netlink socket, find the interface and open the ARP socket
        once, at daemon start: a failover then costs two netlink requests and
        one frame."""
        def work(ipr):
            self._loc = self._locate(ipr)
            self._lo = link_index("lo")
        self._with_ipr(work)
        self._garp_sock(self._loc[1])

    _loc = None
    _lo = None
    _arp = None

    def _garp_sock(self, dev):
        if self._arp is None or self._arp[0] != dev:
            s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0806))
            s.bind((dev, 0x0806))
            self._arp = (dev, s, garp_frame(s.getsockname()[4][:6], self.ip))
        return self._arp

    def _announce(self, dev):
        try:
            _, s, frame = self._garp_sock(dev)
            s.send(frame)
        except OSError:
            if self._arp:
                self._arp[1].close()
            self._arp = None
            send_garp(dev, self.ip)

    def __str__(self):
        return f"{self.name}::{self.ip}"

    # -- helpers
    def _locate(self, ipr) -> tuple[int, str, int]:
        """(ifindex, ifname, prefixlen) for the VIP."""
        vip = ipaddress.IPv4Address(self.ip)
        names = link_names()
        if self.dev:
            idx = next((i for i, n in names.items() if n == self.dev), None)
            if idx is None:
                raise ResourceError(f"{self}: interface {self.dev} does not exist")
            bits = self.bits
            if bits is None:
                for _i, addr, plen in ipr.addresses(idx):
                    if vip in ipaddress.ip_network(f"{addr}/{plen}", strict=False):
                        bits = plen
                        break
            return idx, self.dev, bits if bits is not None else 32
        best = None
        for idx, addr, plen in ipr.addresses():
            name = names.get(idx)
            if name == "lo" or addr == self.ip:
                continue
            if vip in ipaddress.ip_network(f"{addr}/{plen}", strict=False) and (best is None or plen > best[2]):
                best = (idx, name, plen)
        if best is None:
            raise ResourceError(f"{self}: no interface has a subnet containing {self.ip}; "
                                f"give one: {self.name}::{self.ip}/BITS/IFACE")
        return best[0], best[1], self.bits if self.bits is not None else best[2]

    def _has(self, ipr, idx) -> int | None:
        for _i, addr, plen in ipr.addresses(idx):
            if addr == self.ip:
                return plen
        return None

    # -- agent interface
    def start(self) -> None:
        self._with_ipr(self._start)

    def _start(self, ipr) -> None:
        idx, dev, bits = self._loc or self._locate(ipr)
        lo = self._lo if self._lo is not None else link_index("lo")
        lo_bits = self._has(ipr, lo) if self.hidden_lo else None
        if lo_bits is not None:
            self.state_file.parent.mkdir(parents=True, exist_ok=True)
            self.state_file.write_text(json.dumps({"ip": self.ip, "lo_prefixlen": lo_bits}))
            ipr.del_address(lo, self.ip, lo_bits)
            self.log("info", f"{self}: removed {self.ip}/{lo_bits} from the hidden lo (remembered in {self.state_file})")
        try:
            ipr.add_address(idx, self.ip, bits)
        except NetlinkError as e:
            if self._loc is not None and e.code == 19:     # the interface changed since prepare
                self._loc = None
                return self._start(ipr)
            if e.code != 17:   # EEXIST: already there
                raise ResourceError(f"{self}: cannot add {self.ip}/{bits} to {dev}: {e.strerror}") from None
        try:
            self._announce(dev)     # announce first, log after: the clients are waiting
        except OSError as e:
            self.log("info", f"{self}: {self.ip}/{bits} is up on {dev}")
            self.log("warn", f"{self}: gratuitous ARP on {dev} failed: {e.strerror}")
            return
        self.log("info", f"{self}: {self.ip}/{bits} is up on {dev}")
        self.log("info", f"{self}: sent gratuitous ARP for {self.ip} on {dev} (x{ARP_REPEAT + 1})")
        self._stop_arp.clear()
        threading.Thread(target=self._repeat_arp, args=(dev,), daemon=True).start()

    def _repeat_arp(self, dev):
        for _ in range(ARP_REPEAT):
            if self._stop_arp.wait(ARP_INTERVAL):
                return
            try:
                self._announce(dev)
            except OSError:
                return

    def stop(self) -> None:
        self._stop_arp.set()
        self._with_ipr(self._stop)

    def _stop(self, ipr) -> None:
        try:
            idx, dev, _bits = self._locate(ipr)
        except ResourceError:
            idx, dev = None, None
        if idx is not None:
            have = self._has(ipr, idx)
            if have is not None:
                ipr.del_address(idx, self.ip, have)
                self.log("info", f"{self}: {self.ip} removed from {dev}")
        if self.state_file.exists():
            try:
                st = json.loads(self.state_file.read_text())
                bits = int(st.get("lo_prefixlen", 32))
            except (ValueError, OSError):
                bits = 32
            lo = link_index("lo")
            if self._has(ipr, lo) is None:
                ipr.add_address(lo, self.ip, bits)
            self.state_file.unlink()
            self.log("info", f"{self}: {self.ip}/{bits} back on the hidden lo (a real server again)")

    def status(self) -> bool:
        return self._with_ipr(self._status)

    def _status(self, ipr) -> bool:
        try:
            idx, _dev, _ = self._locate(ipr)
        except ResourceError:
            return False
        return self._has(ipr, idx) is not None


class IPaddr(IPaddr2):
    """heartbeat's older IPaddr: same behaviour here (an address, not an alias label)."""

