"""halb's kernel data plane: nftables + policy routing (see engine.py)."""
