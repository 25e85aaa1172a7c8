"""The sans-I/O lvsdr core: order of the steps and exactness of the revert."""
from halb.realserver.lvsdr import Action, Observed, empty_state, plan_start, plan_stop, record


def _seen(ignore="0", announce="0", lo=()):
    return Observed({("eth0", "arp_ignore"): ignore, ("eth0", "arp_announce"): announce}, set(lo))


def test_arp_sysctls_come_before_the_vips():
    acts = plan_start([("10.0.0.10", "eth0"), ("10.0.0.11", "eth0")], _seen(), empty_state())
    assert acts == [Action("sysctl", "eth0", "arp_ignore", "1", "0"),
                    Action("sysctl", "eth0", "arp_announce", "2", "0"),
                    Action("addr-add", "10.0.0.10"), Action("addr-add", "10.0.0.11")]


def test_nothing_to_do_when_already_set_up():
    assert plan_start([("10.0.0.10", "eth0")], _seen("1", "2", ["10.0.0.10"]), empty_state()) == []


def test_stop_reverts_only_what_start_changed():
    st = empty_state()
    acts = plan_start([("10.0.0.10", "eth0"), ("10.0.0.11", "eth0")],
                      _seen("1", "0", ["10.0.0.11"]), st)
    for a in acts:
        record(st, a, {"10.0.0.10": "eth0"})
    st["vips"]["10.0.0.11"] = {"iface": "eth0", "added": False}   # was there before
    after = _seen("1", "2", ["10.0.0.10", "10.0.0.11"])
    assert plan_stop(after, st) == [Action("addr-del", "10.0.0.10"),
                                    Action("sysctl", "eth0", "arp_announce", "0", "2")]
    # a value someone changed since start is theirs: left alone
    assert plan_stop(_seen("1", "8", ["10.0.0.10"]), st) == [Action("addr-del", "10.0.0.10")]
