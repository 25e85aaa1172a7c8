"""CPU baseline for bench_failover: the least a Python (uvloop) process can do at
the same beat rate: every INTERVAL send one multicast datagram on IFACE and read
the peer's, no signing, no logic. Runs until killed."""
import asyncio
import socket
import struct
import sys


async def main(iface, interval):
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


if __name__ == "__main__":
    import uvloop
    uvloop.install()
    asyncio.run(main(sys.argv[1], float(sys.argv[2])))
