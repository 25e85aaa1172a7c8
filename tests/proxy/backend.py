"""A real back end for the proxy tests, run as its own process.

    python backend.py http NAME HOST PORT   HTTP/1.1 (keep-alive) server:
        GET /        -> "NAME\n"
        GET /big?n=N -> N bytes (a repeating pattern), for bulk transfers
    python backend.py udp NAME HOST PORT    UDP: answers "NAME:" + datagram
    python backend.py echo NAME HOST PORT   TCP: sends back every byte it gets; once
                                            the client has shut down its side (FIN),
                                            finishes sending and shuts down its own

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


def echo(conn: socket.socket) -> None:
    with conn:
        while True:
            data = conn.recv(1 << 16)
            if not data:
                break
            conn.sendall(data)
        conn.shutdown(socket.SHUT_WR)


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
    elif kind == "echo":
        import threading

        s = socket.socket(fam, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, port))
        s.listen(128)
        print("ready", flush=True)
        while True:
            conn, _ = s.accept()
            threading.Thread(target=echo, args=(conn,), daemon=True).start()
    else:
        s = socket.socket(fam, socket.SOCK_DGRAM)
        s.bind((host, port))
        print("ready", flush=True)
        while True:
            data, addr = s.recvfrom(65535)
            s.sendto(name.encode() + b":" + data, addr)


if __name__ == "__main__":
    main()
