"""The article's heartbeat/ldirectord config files for a lab's addresses, and
who holds the VIP: shared by `halb demo`, the heartbeat tests and the
failover bench, so that they all run the same cluster."""
from __future__ import annotations

import json

# the article's authkeys (§6.3.2): md5 in use, crc and sha1 listed
AUTHKEYS = 'auth 1\n1 md5 "secret"\n2 crc\n3 sha1 "autre secret"\n'


def ha_cf(iface, logfile, *, keepalive, deadtime, warntime, initdead, auto_failback="off",
          serial=False, debugfile=None, logfacility="local0", head="", tail="") -> str:
    """The article's ha.cf (§6.3.1), in its column layout, on `iface`:
    `serial` (a device, or True for the article's /dev/ttyS0) adds the
    article's serial link lines, `logfacility=None` drops
    syslog; `head` and `tail` are written before and after it as they are."""
    rows = [("mcast", f"{iface} 225.0.0.7 694 1 0")]
    if serial:
        rows += [("baud", "19200"), ("serial", "/dev/ttyS0" if serial is True else str(serial))]
    if debugfile:
        rows.append(("debugfile", debugfile))
    rows.append(("logfile", logfile))
    if logfacility:
        rows.append(("logfacility", logfacility))
    rows += [("keepalive", keepalive), ("deadtime", deadtime), ("warntime", warntime),
             ("initdead", initdead), ("node", "N1"), ("node", "N2"), ("auto_failback", auto_failback)]
    return head + "".join(f"{k:<10} {v}\n" for k, v in rows) + tail


def haresources(vip) -> str:
    """The article's haresources (§6.3.3): N1 prefers the VIP and the director."""
    return f"N1 IPAddr2::{vip} ldirectord::ldirectord.cf\n"


def ldirectord_cf(lab, head: str) -> str:
    """The article's ldirectord.cf (§5.3) virtual service on the lab's VIP
    and N1/N2, after the global settings in `head`."""
    return head + (
        f"virtual={lab.vip}:80\n"
        "\tchecktype=negotiate\n"
        f'\treal={lab.node("N1").rip}:80 gate 1 "testcluster.html", "N1"\n'
        f'\treal={lab.node("N2").rip}:80 gate 1 "testcluster.html", "N2"\n'
        "\tservice=http\n"
        "\tcheckport=80\n"
        "\tscheduler=rr\n")


def vip_on(lab, node, dev=None, vip=None) -> bool:
    """Whether `node` holds the VIP (or `vip`) on `dev` (its LAN interface by default)."""
    vip = vip or lab.vip
    r = lab.run(node, ["ip", "-j", "-4", "addr", "show", "dev", dev or lab.node(node).iface])
    try:
        data = json.loads(r.stdout or "[]")
    except ValueError:
        return False
    return any(a.get("local") == vip for i in data for a in i.get("addr_info", []))


def vip_holders(lab, nodes=("N1", "N2")) -> list[str]:
    """The nodes that hold the VIP on their LAN interface, in order."""
    return [n for n in nodes if vip_on(lab, n)]
