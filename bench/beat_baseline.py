"""CPU baselines for bench_failover: the least a Python process can do at the
same beat rate: every INTERVAL send one multicast datagram on IFACE and read
the peer's, no signing, no logic. Runs until killed.

    beat_baseline.py IFACE INTERVAL [uvloop|select]

uvloop: an asyncio (uvloop) sleep per datagram sent, a reader callback per
datagram received. select: what halb's beat thread does, one select() wake-up
per interval that sends and then reads whatever arrived meanwhile."""
import select
import socket
import struct
import sys
import time


def open_socket(iface):
    idx = socket.if_nametoindex(iface)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, 25, iface.encode() + b"\0")
    s.bind(("225.0.0.9", 6940))
    mreqn = socket.inet_aton("225.0.0.9") + socket.inet_aton("0.0.0.0") + struct.pack("@i", idx)
    s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreqn)
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, mreqn)
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
    s.setblocking(False)
    return s


async def uvloop_main(s, interval):
    import asyncio

    loop = asyncio.get_running_loop()

    def rx():
        try:
            while True:
                s.recv(2048)
        except BlockingIOError:
            pass
    loop.add_reader(s.fileno(), rx)
    payload = b"x" * 90
    while True:
        s.sendto(payload, ("225.0.0.9", 6940))
        await asyncio.sleep(interval)


def select_main(s, interval):
    payload = b"x" * 90
    nxt = time.monotonic()
    while True:
        s.sendto(payload, ("225.0.0.9", 6940))
        try:
            while True:
                s.recv(2048)
        except BlockingIOError:
            pass
        nxt += interval
        delay = nxt - time.monotonic()
        if delay > 0:
            select.select([], [], [], delay)


if __name__ == "__main__":
    sock = open_socket(sys.argv[1])
    mode = sys.argv[3] if len(sys.argv) > 3 else "uvloop"
    if mode == "select":
        select_main(sock, float(sys.argv[2]))
    else:
        import asyncio
        import uvloop
        uvloop.install()
        asyncio.run(uvloop_main(sock, float(sys.argv[2])))
