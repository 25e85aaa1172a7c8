"""Engine selection: `--engine proxy|nft|xdp` (or HALB_ENGINE)."""
from __future__ import annotations

import importlib

from halb.context import Context
from halb.engine.base import Engine
from halb.errors import EngineUnavailable

# engine name -> "module:factory"; factory(ctx) returns a connected Engine
ENGINES = {
    "proxy": "halb.proxy.client:connect",
    "nft": "halb.nft.engine:connect",
    "xdp": "halb.xdp.engine:connect",
}


def open_engine(ctx: Context) -> Engine:
    """The engine client for this node, as chosen in ctx.engine."""
    spec = ENGINES.get(ctx.engine)
    if spec is None:
        raise EngineUnavailable(f"unknown engine '{ctx.engine}' (choose one of: {', '.join(ENGINES)})")
    mod_name, factory = spec.split(":")
    try:
        mod = importlib.import_module(mod_name)
    except ModuleNotFoundError as e:
        raise EngineUnavailable(f"engine '{ctx.engine}' is not available in this build ({e})") from None
    return getattr(mod, factory)(ctx)


__all__ = ["Engine", "open_engine"]
