"""The user-space engine: `halb proxy`, a TCP/UDP relay holding the
virtual-server table (masq forwarding only), driven over a JSON-lines control
socket in the node's run dir. See daemon.py (data plane and control),
client.py (the Engine talking to it), estimator.py and persist.py (pure
cores: rate estimation and persistence templates)."""
