"""The proxy engine as seen by tools: an Engine talking JSON lines to the
running `halb proxy` over the node's control socket (run dir / proxy.sock)."""
from __future__ import annotations

import json
import socket

from halb.context import Context
from halb.engine.base import Engine
from halb.errors import EngineUnavailable, HalbError, IpvsError
from halb.model import Conn, Op, Service, Timeouts, conn_from_dict, op_to_dict, service_from_dict

TIMEOUT = 30.0


def socket_path(ctx: Context):
    return ctx.run_dir / "proxy.sock"


class ProxyEngine(Engine):
    name = "proxy"
    fwd_methods = ("masq",)
    default_fwd = "masq"

    def __init__(self, ctx: Context, sock: socket.socket):
        self.ctx = ctx
        self.sock = sock
        self.rfile = sock.makefile("rb")

    def call(self, cmd: str, **args) -> dict:
        req = dict(args, cmd=cmd)
        try:
            self.sock.sendall(json.dumps(req).encode() + b"\n")
            line = self.rfile.readline()
        except socket.timeout:
            raise EngineUnavailable(f"halb proxy for node {self.ctx.node} did not answer within {TIMEOUT:.0f} s") from None
        except OSError as e:
            raise EngineUnavailable(f"lost the connection to halb proxy for node {self.ctx.node}: {e.strerror}") from None
        if not line:
            raise EngineUnavailable(f"halb proxy for node {self.ctx.node} closed the control connection")
        reply = json.loads(line)
        if not reply.get("ok"):
            if reply.get("type") == "IpvsError":
                e = IpvsError(reply["error"])
                if reply.get("index") is not None:
                    e.index = reply["index"]
                raise e
            raise HalbError(f"halb proxy: {reply.get('error')}")
        return reply

    def execute(self, ops: list[Op]) -> None:
        self.call("execute", ops=[op_to_dict(op) for op in ops])

    def services(self) -> list[Service]:
        return [service_from_dict(d) for d in self.call("services")["services"]]

    def connections(self) -> list[Conn]:
        return [conn_from_dict(d) for d in self.call("connections")["connections"]]

    def timeouts(self) -> Timeouts:
        return Timeouts(**self.call("timeouts")["timeouts"])

    def status(self) -> dict:
        return self.call("status")["status"]

    def list_note(self) -> str:
        """What `ipvsadm -L` adds to its version line: the connection limits, when
        set on the command line or once one was reached (otherwise the line stays
        ipvsadm's, byte for byte)."""
        from halb.proxy.limits import summary

        lim = self.status().get("limits")
        if not lim or not (lim.get("explicit") or lim["refused_maxconn"] or lim["refused_source"]
                           or lim["refused_fds"] or lim["udp_evicted"]):
            return ""
        return f" halb proxy: {summary(lim)}"

    def stop(self) -> None:
        self.call("stop")

    def close(self) -> None:
        try:
            self.rfile.close()
            self.sock.close()
        except OSError:
            pass


def connect(ctx: Context) -> ProxyEngine:
    """An Engine for the node's running halb proxy, or EngineUnavailable."""
    path = socket_path(ctx)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(TIMEOUT)
    try:
        s.connect(str(path))
    except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError):
        s.close()
        raise EngineUnavailable(f"no halb proxy running for node {ctx.node} "
                                f"(start it with: halb proxy start)") from None
    except OSError as e:
        s.close()
        raise EngineUnavailable(f"cannot reach halb proxy for node {ctx.node} at {path}: {e.strerror}") from None
    return ProxyEngine(ctx, s)
