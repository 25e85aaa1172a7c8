"""halb lab: the article's network on one machine, in network namespaces.

Topology (one private /24 chosen at random per lab, e.g. 10.77.3.0/24)::

    switch namespace "halb-<name>-sw": bridge br<id> (no uplink, no route out)
      |-- N1       RIP1 = .1    hostname N1 (own UTS namespace), Apache on :80
      |-- N2       RIP2 = .2    hostname N2, Apache on :80
      |-- ...      Nk   = .k
      |-- client0  .100         hostname client0
      |-- client1  .101
    VIP = .10 (free: nobody holds it until a director/realserver puts it up)

NAT variant, `Lab(gateway="N1")` / `halb lab up --gateway N1`: a second
bridge (the public LAN, another random /24) holds the clients (.100...) and
the gateway's second leg (`node.pub_iface`, `node.pub_ip` = .1, `pub_mac`);
`lab.vip` is then public .10 and `lab.public_subnet` / `lab.addr(n,
public=True)` give its addresses. The gateway forwards (ip_forward=1 in its
namespace); every other node has `default via <gateway RIP>`; clients have
no route to the real servers' LAN, so only NAT through the gateway works.

Every node is a network namespace "halb-<name>-<Node>" plus a UTS namespace
bound to a file in the lab's directory (so `uname -n` prints N1 inside N1).
Its LAN interface is `lab.node("N1").iface` (e<id>n1), the switch-side end of
the cable is `.port` (s<id>n1); names are unique per lab so many labs (from
concurrent tests) coexist. The root namespace is never changed. Everything
lives in the lab's directory `$HALB_LAB_DIR/<name>` (default /run/halb-lab):
state.json (written BEFORE anything is created), per-node web roots, logs,
Apache/nginx configs. `destroy()` / `halb lab down` removes every process,
namespace and file from that state file alone, also after the creator died.

Apache (Debian apache2, mpm_event, few workers) serves on each node:
/testcluster.html = "N1\\n" (resp. "N2\\n"), /index.html; the access log
(`lab.apache_log("N1")`) skips /testcluster.html as in the article (§5.4).

API (stable; used by the tests and benches of nft, director, heartbeat, dsh)::

    from halb.lab import Lab
    with Lab(nodes=2, clients=1, apache=True, name=None, nginx=False, gateway=None) as lab:
        lab.vip, lab.subnet, lab.prefixlen, lab.addr(20)      # addresses
        n1 = lab.node("N1")        # also lab.node(1); lab.client(0) == lab.node("client0")
        n1.rip, n1.ip, n1.netns, n1.netns_path, n1.iface, n1.mac, n1.port, n1.uts
        lab.run("N1", ["ip", "addr"], check=True, timeout=10)  # CompletedProcess (text)
            # run/popen/`halb lab exec` set HALB_NODE=N1 and HALB_RUN_DIR=lab.node_run_dir("N1")
            # (unless already in env) so halb tools in different nodes/labs never share state
        lab.popen("N1", [...], **kw)     # long-running, tracked, killed at down
        lab.nsenter_prefix("N1")         # ["nsenter", "--net=...", "--uts=...", "--"]
        lab.pids("N1")                   # every process living in the node
        lab.socket("client0")            # a socket created in the node's netns
        lab.apache_stop("N2"); lab.apache_start("N2"); lab.apache_running("N2")
        lab.nginx_start("N1") / lab.nginx_stop("N1")   # nginx on lab.nginx_port (8080)
        lab.cut_link("N1"); lab.restore_link("N1")     # unplug / replug the cable
        lab.freeze("N1"); lab.thaw("N1"); lab.kill_node("N1")  # SIGSTOP/SIGCONT/SIGKILL all
        lab.http_get("client0", "http://VIP/testcluster.html", timeout=5) -> (200, "N1\\n")
        lab.curl("client0", "http://VIP/testcluster.html")     # the real curl
    Lab(...).build()  # up() that removes what it built when it fails (as `with` does)
    Lab.attach(name)  # an existing lab (from `halb lab up`)
    Lab(..., persistent=True)  # a lab meant to outlive its creating process
                               # (as `halb lab up` does); others count as stale
                               # once their creator is gone: `halb lab down --stale`

Errors are LabError (a HalbError): one clear line.
Pytest fixtures: halb.lab.testing (`lab`: 2 nodes, 1 client, Apache).
"""
from halb.lab.lab import Lab, LabError, LabState, Node, destroy, is_stale, lab_root, list_labs

__all__ = ["Lab", "LabError", "LabState", "Node", "destroy", "is_stale", "lab_root", "list_labs"]
