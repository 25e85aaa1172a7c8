"""UDP relay: one connected socket per client address:port (a flow), read by
the event loop; counters are updated per datagram."""
from __future__ import annotations

from halb.proxy.runtime import DestRT, SvcRT, Listener


class UdpFlow:
    __slots__ = ("svc", "drt", "caddr", "sock", "fd", "last", "tpl")

    def __init__(self, svc: SvcRT, drt: DestRT, caddr, sock, now: float, tpl):
        self.svc = svc
        self.drt = drt
        self.caddr = caddr
        self.sock = sock
        self.fd = sock.fileno()
        self.last = now
        self.tpl = tpl


class UdpListener(Listener):
    def start(self):
        self.px.loop.add_reader(self.fd, self.on_readable)

    def on_readable(self):
        px = self.px
        svc = self.svc
        now = px.loop.time()
        lru = px.udp_lru
        for _ in range(64):
            try:
                data, caddr = self.sock.recvfrom(65535)
            except BlockingIOError:
                return
            except OSError:
                return
            flow = svc.flows.get(caddr)
            if flow is None:
                flow = px.new_udp_flow(svc, caddr, now)
                if flow is None:
                    continue
            flow.last = now
            lru.move_to_end(flow)
            try:
                flow.sock.send(data)
            except OSError:
                continue
            n = len(data)
            for st in (svc.stats, flow.drt.dest.stats):
                st.inpkts += 1
                st.inbytes += n

    def on_reply(self, flow: UdpFlow):
        px = self.px
        now = px.loop.time()
        for _ in range(64):
            try:
                data = flow.sock.recv(65535)
            except BlockingIOError:
                return
            except OSError:
                return  # e.g. ECONNREFUSED from an ICMP port unreachable
            flow.last = now
            try:
                self.sock.sendto(data, flow.caddr)
            except OSError:
                continue
            n = len(data)
            for st in (self.svc.stats, flow.drt.dest.stats):
                st.outpkts += 1
                st.outbytes += n

