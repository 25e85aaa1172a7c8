"""halb's kernel data plane: nftables + policy routing (`--engine nft`).

Use: `halb --engine nft ipvsadm ...` on the director (root, inside its network
namespace, or the machine's own; HALB_NFT_HOST_GUARD=1, which the test
suite sets, forbids the machine's own namespace unless HALB_NFT_HOST=1). No
daemon is needed: each command applies one atomic nft transaction and keeps
the configured table in <run_dir>/nft-state.pickle (flock-protected).

    halb nft flush        remove everything halb put in the kernel (engine shutdown)
    halb nft status       what is there now
    halb nft refresh      one controller tick (count-based schedulers, GC)
    halb nft controller   refresh every --interval seconds (for lc, wlc, sed,
                          nq, fo, ovf, lblc, lblcr with changing loads)

What the kernel does (one table `inet halb`, see ruleset.py):
- gate (Direct Return): the packet keeps its destination VIP; a route mark
  sends it through `ip rule fwmark M lookup T` / `default via RIP` to the real
  server's MAC; the `local` rule moves from pref 0 to 150 behind halb's rules
  (pref 100); ip_forward=1 and send_redirects=0 while halb has services. A
  real server whose address is local is shown `Local` and served here. VIP
  traffic of services without NAT is not tracked by conntrack.
- masq (NAT): DNAT to RIP:port; clients on a real server's own network are
  masqueraded (otherwise the real servers must route back via the director).
  Counters per server in both directions.
- ipip: refused (this kernel has no tunnels). IPv6 services: refused (not done).
- scheduling: a per-service map from `numgen inc` / `jhash` slots to servers,
  filled from halb.sched (exact IPVS rr/wrr order; IPVS's sh/dh/mh tables with
  jhash as the bucket hash); count-based schedulers walk a sequence
  precomputed from the live counts (see plan.py: exact when refreshed before
  each new connection, measured 50 % off for wlc with long-lived connections
  when never refreshed; tests/nft/test_sched_kernel.py).
- flows: every packet refreshes its flow in a dynamic map (5-tuple minus the
  protocol -> server), so a server-set change never moves an established
  connection; FIN/RST shortens its timeout to tcpfin and marks it closing
  (IPVS's FIN_WAIT); a new SYN on a closing flow (port reuse) is scheduled
  as a new connection. A removed server keeps its forwarding
  while flows use it; `refresh` drops it later.
- persistence (-p/-M): a per-service dynamic map (client & netmask -> server)
  refreshed by traffic.
- `-L -c` lists the flow maps (ESTABLISHED / FIN_WAIT / UDP) and persistence
  templates (NONE); counters come from per-element counters of three sets;
  rates from two samples at least one second apart.

Not done / differences from IPVS: IPv6; locally generated traffic to a VIP is
not balanced (only packets arriving on an interface); SYN_RECV / TIME_WAIT
states are not distinguished. As in IPVS, a Local real server is served on
the virtual port whatever port it was given.
"""
