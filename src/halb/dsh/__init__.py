"""halb dsh: dancer's dsh semantics (machine lists, groups, dsh.conf, -a/-g/-m,
-c/-w/-F, -M, -i) on ClusterShell's node sets and parallel engine, plus node
sets, heartbeat's ha.cf node list as group `cluster`, gathered output, a
per-host timeout and an exit status counting the hosts that failed."""
