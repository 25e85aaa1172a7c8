"""halb realserver: the article's `lvsdr` — hide the VIP on a Direct Return
real server (see halb.realserver.lvsdr) with VIPs from options or from a
heartbeat haresources file (halb.realserver.haresources)."""
from halb.realserver.haresources import VipSpec, check_vip, parse_haresources, read_haresources
from halb.realserver.lvsdr import Action, Observed, RealServer, RealServerError, plan_start, plan_stop

__all__ = ["VipSpec", "check_vip", "parse_haresources", "read_haresources", "Action", "Observed",
           "RealServer", "RealServerError", "plan_start", "plan_stop"]
