"""Client probe for bench_failover: start a GET every INTERVAL seconds (never
waiting for the previous one) to http://HOST/testcluster.html for DURATION
seconds; print one JSON list of [start, duration, ok, body] (monotonic s)."""
import asyncio
import json
import sys
import time


async def one(host, out, timeout):
    t0 = time.monotonic()
    ok, body = False, ""
    try:
        r, w = await asyncio.wait_for(asyncio.open_connection(host, 80), timeout)
        w.write(b"GET /testcluster.html HTTP/1.0\r\nHost: vip\r\n\r\n")
        data = await asyncio.wait_for(r.read(), timeout)
        w.close()
        head, _, b = data.partition(b"\r\n\r\n")
        ok = head.startswith(b"HTTP/1.1 200") or head.startswith(b"HTTP/1.0 200")
        body = b.decode(errors="replace").strip()
    except (OSError, asyncio.TimeoutError):
        pass
    out.append([t0, time.monotonic() - t0, ok, body])


async def main(host, duration, interval, timeout):
    out, tasks = [], []
    start = time.monotonic()
    n = 0
    while True:
        target = start + n * interval
        now = time.monotonic()
        if target - start > duration:
            break
        if target > now:
            await asyncio.sleep(target - now)
        tasks.append(asyncio.ensure_future(one(host, out, timeout)))
        n += 1
    await asyncio.gather(*tasks)
    out.sort()
    print(json.dumps({"clock_now": time.monotonic(), "results": out}))


if __name__ == "__main__":
    host, duration = sys.argv[1], float(sys.argv[2])
    interval = float(sys.argv[3]) if len(sys.argv) > 3 else 0.01
    timeout = float(sys.argv[4]) if len(sys.argv) > 4 else 3.0
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    asyncio.run(main(host, duration, interval, timeout))
