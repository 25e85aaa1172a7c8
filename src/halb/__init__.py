"""halb: a high-availability load-balancing cluster (LVS, ldirectord, heartbeat)."""

__version__ = "0.2.0"
