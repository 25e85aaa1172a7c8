"""A real back end for the proxy tests, run as its own process.

    python backend.py http NAME HOST PORT   HTTP/1.1 (keep-alive) server:
        GET /        -> "NAME\n"
        GET /big?n=N -> N bytes (a repeating pattern), for bulk transfers
    python backend.py udp NAME HOST PORT    UDP: answers "NAME:" + datagram

Prints "ready" on stdout once listening.
"""
import socket
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

PATTERN = bytes(range(256)) * 256  # 64 KiB


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        url = urlparse(self.path)
        if url.path == "/big":
            n = int(parse_qs(url.query).get("n", ["0"])[0])
            self.send_response(200)
            self.send_header("Content-Length", str(n))
            self.end_headers()
            left = n
            while left:
                chunk = PATTERN[: min(left, len(PATTERN))]
                self.wfile.write(chunk)
                left -= len(chunk)
            return
        body = (self.server.name + "\n").encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def main():
    kind, name, host, port = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    if kind == "http":
        ThreadingHTTPServer.address_family = fam
        ThreadingHTTPServer.allow_reuse_address = True
        ThreadingHTTPServer.daemon_threads = True
        srv = ThreadingHTTPServer((host, port), Handler)
        srv.name = name
        print("ready", flush=True)
        srv.serve_forever()
    else:
        s = socket.socket(fam, socket.SOCK_DGRAM)
        s.bind((host, port))
        print("ready", flush=True)
        while True:
            data, addr = s.recvfrom(65535)
            s.sendto(name.encode() + b":" + data, addr)


if __name__ == "__main__":
    main()
