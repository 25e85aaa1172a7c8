"""When a VIP is announced (pure: no socket, no clock; time is an argument).

The rule: a VIP is announced only while this director is fit to serve it,
and withdrawn at once when it is not. Fit means all of:

  1. this director's halb director runs (its pid file is held and its
     control socket answers), unless the configuration says director=none;
  2. every virtual service of the VIP in the engine's table has at least one
     live real server (weight > 0), and the VIP has at least one service;
  3. the data-path self-test for the VIP passed (unless selftest=off);
  4. the daemon is not stopping.

Withdrawal is immediate (the first unfit judgement). Announcement waits
until the VIP has been fit for `rise` seconds without a break (0: at the
first fit judgement), so a flapping real server does not make the router
move flows back and forth. Each change is a Decision, logged by the shell in
ldirectord's words ("Announced virtual IP ...", "Withdrew virtual IP ...").
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Observation:
    """What the shell saw at one judgement."""

    director_ok: bool = True
    director_why: str = ""                       # why not, when not ok
    # VIP -> [(service label, live real servers, all real servers)]
    services: dict[str, list[tuple[str, int, int]]] = field(default_factory=dict)
    # VIP -> (passed, why not); a VIP absent here counts as passed (selftest=off)
    selftest: dict[str, tuple[bool, str]] = field(default_factory=dict)
    stopping: bool = False


@dataclass
class VipState:
    announced: bool = False
    fit_since: float | None = None   # start of the current fit stretch
    reason: str = "not judged yet"   # why it is (not) announced
    changed_at: float | None = None


@dataclass(frozen=True)
class Decision:
    vip: str
    action: str        # "announce" | "withdraw"
    reason: str


def fitness(vip: str, obs: Observation) -> tuple[bool, str]:
    """(fit, reason) for one VIP in one observation."""
    if obs.stopping:
        return False, "halb bgp is stopping"
    if not obs.director_ok:
        return False, obs.director_why or "the director is not running"
    svcs = obs.services.get(vip, [])
    if not svcs:
        return False, "no virtual service for this VIP in the table"
    dead = [label for label, live, _ in svcs if live < 1]
    if dead:
        return False, "no live real server for " + ", ".join(dead)
    ok, why = obs.selftest.get(vip, (True, ""))
    if not ok:
        return False, f"self-test failed: {why}"
    live = sum(live for _, live, _ in svcs)
    total = sum(t for _, _, t in svcs)
    return True, f"{live} of {total} real servers live" + ("" if vip not in obs.selftest else ", self-test passed")


def decide(states: dict[str, VipState], obs: Observation, now: float,
           rise: float = 0.0) -> list[Decision]:
    """Judge every VIP of `states` (updated in place); the changes to make."""
    out: list[Decision] = []
    for vip, st in states.items():
        fit, why = fitness(vip, obs)
        if not fit:
            st.fit_since = None
            if st.announced:
                st.announced = False
                st.changed_at = now
                out.append(Decision(vip, "withdraw", why))
            st.reason = why
            continue
        if st.fit_since is None:
            st.fit_since = now
        if not st.announced:
            if now - st.fit_since >= rise:
                st.announced = True
                st.changed_at = now
                st.reason = why
                out.append(Decision(vip, "announce", why))
            else:
                st.reason = f"fit for {now - st.fit_since:.1f} s of the {rise:g} s rise"
        else:
            st.reason = why
    return out


def undo(states: dict[str, VipState], d: Decision, why: str) -> None:
    """The shell could not carry out `d`: the state says what BIRD has."""
    st = states[d.vip]
    st.announced = d.action != "announce"
    st.fit_since = None
    st.reason = why


def log_line(d: Decision) -> str:
    """The decision in ldirectord's words."""
    if d.action == "announce":
        return f"Announced virtual IP: {d.vip}/32 ({d.reason})"
    return f"Withdrew virtual IP: {d.vip}/32 ({d.reason})"
