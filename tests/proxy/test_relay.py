"""What a user of `halb proxy` sees of the TCP relay itself: every byte arrives,
in both directions, for transfers from one byte to several MiB (copied or
spliced); a half-close is passed on; the counters show exactly the bytes the
client sent and received, also while a connection is still open; the daemon
asks the kernel for a short scheduler slice (and leaves it when told not to)."""
from __future__ import annotations

import hashlib
import os
import socket
import threading

import pytest

from proxy_helpers import Proxy, read_to_end, wait_for
from halb.model import Dest, Service, ServiceKey

pytestmark = pytest.mark.timeout(120)


def pattern(n: int, seed: int) -> bytes:
    out = bytearray()
    i = 0
    while len(out) < n:
        out += hashlib.sha256(f"{seed}:{i}".encode()).digest()
        i += 1
    return bytes(out[:n])


def echo_through(vip, payload: bytes, chunk: int = 1 << 16) -> bytes:
    """Send payload, shut down the sending side, read everything back until EOF."""
    s = socket.create_connection(vip, timeout=30)
    got = []
    t = threading.Thread(target=lambda: got.append(read_to_end(s)))
    t.start()
    for i in range(0, len(payload), chunk):
        s.sendall(payload[i:i + chunk])
    s.shutdown(socket.SHUT_WR)  # the half-close must reach the back end for it to finish
    t.join(60)
    assert not t.is_alive(), "the answer never ended: the FIN was not passed on"
    s.close()
    return b"".join(got)


def echo_service(eng, vip, echo):
    k = ServiceKey("tcp", *vip)
    eng.add_service(Service(k, scheduler="rr"))
    eng.add_dest(k, Dest(*echo))
    return k


@pytest.mark.parametrize("size", [1, 700, 16383, 16384, (1 << 16) + 1, 5 << 20])
def test_every_byte_arrives_both_ways_and_is_counted(proxy, tcp_echo, vip, size):
    eng = proxy.engine
    k = echo_service(eng, vip, tcp_echo)
    data = pattern(size, size)
    back = echo_through(vip, data)
    assert len(back) == size and back == data
    s = wait_for(lambda: (lambda s: s.stats.outbytes == size and s)(eng.get_service(k)),
                 what="the connection's bytes in the counters")
    assert s.stats.inbytes == size and s.stats.conns == 1
    assert s.dests[0].stats.inbytes == size and s.dests[0].stats.outbytes == size


def test_many_small_exchanges_on_one_connection(proxy, tcp_echo, vip):
    """Request/answer ping-pong as keep-alive clients do: each answer comes
    whole and in order, and the total is counted exactly."""
    eng = proxy.engine
    k = echo_service(eng, vip, tcp_echo)
    s = socket.create_connection(vip, timeout=30)
    total = 0
    for i in range(300):
        msg = pattern(1 + (i * 37) % 1500, i)
        s.sendall(msg)
        got = b""
        while len(got) < len(msg):
            got += s.recv(len(msg) - len(got))
        assert got == msg
        total += len(msg)
    s.close()
    st = wait_for(lambda: (lambda s: s.stats.outbytes == total and s)(eng.get_service(k)), what="counters")
    assert st.stats.inbytes == total


def test_counters_of_an_open_connection_are_updated_while_it_lasts(proxy, tcp_echo, vip):
    """ipvsadm -L --stats shows the bytes of a long connection before it ends
    (folded in by the periodic sweep, within about 2 s)."""
    eng = proxy.engine
    k = echo_service(eng, vip, tcp_echo)
    s = socket.create_connection(vip, timeout=30)
    msg = pattern(100_000, 7)
    s.sendall(msg)
    got = 0
    while got < len(msg):
        got += len(s.recv(1 << 16))
    st = wait_for(lambda: (lambda s: s.stats.inbytes == len(msg) and s)(eng.get_service(k)), timeout=10,
                  what="bytes of the open connection in the counters")
    assert st.stats.outbytes == len(msg) and st.stats.inpkts > 0 and st.stats.outpkts > 0
    assert sum(d.activeconns for d in st.dests) == 1
    s.close()
    wait_for(lambda: sum(d.activeconns for d in eng.get_service(k).dests) == 0, what="the connection to end")


def test_the_back_end_closing_first_is_passed_on(proxy, web, vip):
    """An HTTP/1.0 answer ends with the server's FIN: the client sees EOF after the
    whole body, and the entry goes to TIME_WAIT."""
    eng = proxy.engine
    k = ServiceKey("tcp", *vip)
    eng.add_service(Service(k, scheduler="rr"))
    eng.add_dest(k, Dest(*web["N1"]))
    s = socket.create_connection(vip, timeout=30)
    n = 3 << 20
    s.sendall(f"GET /big?n={n} HTTP/1.0\r\n\r\n".encode())
    data = read_to_end(s)
    s.close()
    body = data.split(b"\r\n\r\n", 1)[1]
    assert body == (bytes(range(256)) * 256 * (n // 65536 + 1))[:n]
    wait_for(lambda: [c.state for c in eng.connections() if not c.template] == ["TIME_WAIT"],
             what="the entry to be TIME_WAIT")


def _default_slice_ns() -> int | None:
    """The kernel's default slice, None if tasks cannot ask for their own."""
    from halb.proxy import tuning

    try:
        default = tuning.get_slice_ns()
        if not tuning.set_slice(300):
            return None
        ok = tuning.get_slice_ns() == 300_000
        tuning.set_slice(0)  # back to the default
        return default if ok else None
    except OSError:
        return None


def test_the_daemon_asks_for_a_short_scheduler_slice(proxy, tmp_path):
    from halb.proxy import tuning

    default = _default_slice_ns()
    if default is None:
        pytest.skip("this kernel has no per-task scheduler slice (EEVDF custom slices, Linux 6.12+)")
    assert proxy.engine.status()["sched_slice_us"] == tuning.DEFAULT_SLICE_US
    assert tuning.get_slice_ns(proxy.pid) == tuning.DEFAULT_SLICE_US * 1000
    assert "scheduler slice" in proxy.log()
    # HALB_PROXY_SLICE_US=0 leaves the kernel's default
    os.environ["HALB_PROXY_SLICE_US"] = "0"
    try:
        p = Proxy(tmp_path / "run0").start()
    finally:
        del os.environ["HALB_PROXY_SLICE_US"]
    try:
        assert p.engine.status()["sched_slice_us"] == 0
        assert tuning.get_slice_ns(p.pid) == default
    finally:
        p.cleanup()
