"""The user-space engine: `halb proxy`, a TCP/UDP relay holding the
virtual-server table (masq forwarding only), driven over a JSON-lines control
socket in the node's run dir. See daemon.py (the table, periodic work,
control socket, life cycle), tcp.py and udp.py (the relays), runtime.py
(live service and real-server objects, listening sockets), tuning.py
(scheduler slice, GC), client.py (the Engine talking to the daemon),
estimator.py and persist.py (pure cores: rate estimation and persistence
templates)."""
