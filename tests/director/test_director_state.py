"""The director's state machine (pure): decisions for each check result."""
from __future__ import annotations

from halb.director.config import parse_text
from halb.director.state import Alert, Command, DirectorCore, Edit, Log
from halb.model import ServiceKey, Table

BASE = ("checkinterval=1\n{globals}\nvirtual=10.0.0.100:80\n\tservice=http\n\tscheduler=rr\n"
        "\treal=10.0.0.1:80 masq 3\n\treal=10.0.0.2:80 masq 2\n{extra}")
KEY = ServiceKey("tcp", "10.0.0.100", 80)
VID = "tcp:10.0.0.100:80"
R1, R2 = ("10.0.0.1", 80), ("10.0.0.2", 80)


class Harness:
    def __init__(self, globals_="", extra="", table=None):
        self.cfg = parse_text(BASE.format(globals=globals_, extra=extra), "t.cf", hostname="N1")
        self.core = DirectorCore(self.cfg)
        self.table = table or Table(default_fwd="masq")
        self.logs: list[str] = []
        self.alerts: list[Alert] = []
        self.cmds: list[str] = []
        self.t = 1000.0
        self.feed(self.core.start(self.table.config_services(), self.t))

    def feed(self, actions):
        for a in actions:
            if isinstance(a, Edit):
                self.table = self.table.apply(a.ops)
                self.logs.append(a.msg)
            elif isinstance(a, Log) and not a.debug:
                self.logs.append(a.msg)
            elif isinstance(a, Alert):
                self.alerts.append(a)
            elif isinstance(a, Command):
                self.cmds.append(a.cmd)
        return actions

    def res(self, rkey, ok, force=False):
        self.t += 1
        return self.feed(self.core.result(VID, rkey, ok, self.t, "msg", force=force))

    def dests(self, key=KEY):
        svc = self.table.services.get(key)
        return None if svc is None else {(d.addr, d.port): d.weight for d in svc.dests}


def test_start_creates_service_and_adds_after_first_success():
    h = Harness()
    assert h.table.services[KEY].scheduler == "rr"
    assert h.dests() == {}  # nothing in the table before a check passed
    h.res(R1, True)
    assert h.dests() == {R1: 3}
    assert "Added real server: 10.0.0.1:80 (10.0.0.100:80) (Weight set to 3)" in h.logs
    h.res(R2, True)
    assert h.dests() == {R1: 3, R2: 2}
    # repeated success: no edit
    assert not [a for a in h.res(R1, True) if isinstance(a, Edit)]


def test_failure_removes_and_recovery_readds():
    h = Harness()
    h.res(R1, True), h.res(R2, True)
    h.res(R2, False)
    assert h.dests() == {R1: 3}
    assert h.logs[-1] == "Deleted real server: 10.0.0.2:80 (10.0.0.100:80)"
    # still failing: nothing more
    assert not [a for a in h.res(R2, False) if isinstance(a, Edit)]
    h.res(R2, True)
    assert h.dests() == {R1: 3, R2: 2}


def test_failurecount_soft_failures_then_removal_and_reset():
    h = Harness(globals_="failurecount=3")
    h.res(R1, True)
    h.res(R1, False)
    h.res(R1, False)
    assert h.dests() == {R1: 3}
    assert "Soft failure real server: 10.0.0.1:80 (tcp:10.0.0.100:80) failure 2/3" in h.logs
    h.res(R1, True)  # a success resets the count
    assert "Resetting soft failure count: 10.0.0.1:80 (tcp:10.0.0.100:80)" in h.logs
    h.res(R1, False), h.res(R1, False)
    assert h.dests() == {R1: 3}
    h.res(R1, False)
    assert h.dests() == {}


def test_quiescent_sets_weight_zero_and_restores():
    h = Harness(globals_="quiescent=yes")
    assert h.dests() == {R1: 0, R2: 0}  # quiescent servers wait in the table with weight 0
    h.res(R1, True)
    assert h.dests() == {R1: 3, R2: 0}
    assert "Restored real server: 10.0.0.1:80 (10.0.0.100:80) (Weight set to 3)" in h.logs
    h.res(R1, False)
    assert h.dests() == {R1: 0, R2: 0}
    assert "Quiescent real server: 10.0.0.1:80 (10.0.0.100:80) (Weight set to 0)" in h.logs


def test_fallback_and_fallbackcommand():
    h = Harness(globals_='fallback=127.0.0.1:8080 masq\nfallbackcommand="/usr/local/bin/fb"')
    fb = ("127.0.0.1", 8080)
    assert h.dests() == {fb: 1}
    assert h.cmds == ["/usr/local/bin/fb start 10.0.0.100:80 tcp"]
    h.res(R1, True)
    assert h.dests() == {R1: 3}
    assert h.cmds[-1] == "/usr/local/bin/fb stop 10.0.0.100:80 tcp"
    h.res(R2, True)
    h.res(R1, False)
    assert h.dests() == {R2: 2}
    h.res(R2, False)
    assert h.dests() == {fb: 1}
    assert h.cmds[-1].endswith("start 10.0.0.100:80 tcp") and len(h.cmds) == 3


def test_maintenance_forces_down_even_with_failurecount():
    h = Harness(globals_="failurecount=5")
    h.res(R1, True)
    h.res(R1, False, force=True)
    assert h.dests() == {}


def test_start_keeps_healthy_servers_already_in_table_and_purges_strangers():
    h0 = Harness()
    h0.res(R1, True)
    # a new director starts on a table that already has R1 and a stranger
    from halb.model import Dest, Op
    table = h0.table.apply([Op("add-dest", key=KEY, dest=Dest("10.0.0.9", 80, "masq", 1))])
    h = Harness(table=table)
    assert h.dests() == {R1: 3}
    assert any("Purged real server (start): 10.0.0.9:80" in line for line in h.logs)
    assert h.core.vs[VID].reals[R1].up


def test_email_alerts_status_filter_and_repeat():
    h = Harness(globals_='emailalert="ops@example"\nsmtp=127.0.0.1\nemailalertstatus=running\nemailalertfreq=30')
    h.res(R1, True)
    assert [a.subject for a in h.alerts] == ["Added real server: 10.0.0.1:80 (10.0.0.100:80) (Weight set to 3)"]
    h.res(R1, False)
    assert h.alerts[-1].subject == "Deleted real server: 10.0.0.1:80 (10.0.0.100:80)"
    assert h.alerts[-1].to == "ops@example" and h.alerts[-1].smtp == "127.0.0.1"
    n = len(h.alerts)
    h.feed(h.core.tick(h.t + 10))
    assert len(h.alerts) == n  # not yet
    h.feed(h.core.tick(h.t + 31))
    assert h.alerts[-1].subject == "Inaccessible real server: 10.0.0.1:80 (10.0.0.100:80)"
    h.res(R1, True)  # back: no more repeats
    n = len(h.alerts)
    h.feed(h.core.tick(h.t + 100))
    assert all("Inaccessible" not in a.subject for a in h.alerts[n:])


def test_email_only_when_stopping():
    h = Harness(globals_='emailalert="root"\nemailalertstatus=stopping')
    h.res(R1, True), h.res(R1, False)
    assert h.alerts == []
    h.res(R1, True)
    h.feed(h.core.stop(h.t))
    assert [a.subject for a in h.alerts] == ["Purged real server (stop): 10.0.0.1:80 (10.0.0.100:80)"]
    assert h.alerts[0].status == "stopping"
    assert KEY not in h.table.services


def test_cleanstop_no_leaves_table():
    h = Harness(globals_="cleanstop=no")
    h.res(R1, True)
    h.feed(h.core.stop(h.t))
    assert h.dests() == {R1: 3}


def test_reload_applies_only_differences():
    h = Harness()
    h.res(R1, True), h.res(R2, True)
    new = parse_text("checkinterval=1\nvirtual=10.0.0.100:80\n\tservice=http\n\tscheduler=wrr\n"
                     "\treal=10.0.0.1:80 masq 5\n\treal=10.0.0.3:80 masq 1\n"
                     "virtual=10.0.0.100:443\n\treal=10.0.0.1:443 masq\n", "t.cf")
    acts = h.feed(h.core.reload(new, h.table.config_services(), h.t))
    kinds = [op.kind for a in acts if isinstance(a, Edit) for op in a.ops]
    # R1 stays (weight changed in place), R2 purged, R3 waits for its check, a new service
    assert sorted(kinds) == sorted(["edit-service", "edit-dest", "del-dest", "add-service"])
    assert h.dests() == {R1: 5}
    assert h.table.services[KEY].scheduler == "wrr"
    assert h.core.vs[VID].reals[R1].up
    h.res(("10.0.0.3", 80), True)
    assert h.dests() == {R1: 5, ("10.0.0.3", 80): 1}
    # removing a virtual deletes it
    h.feed(h.core.reload(parse_text("virtual=10.0.0.100:443\n\treal=10.0.0.1:443 masq\n", "t.cf"),
                         h.table.config_services(), h.t))
    assert KEY not in h.table.services


def test_checktype_off_adds_nothing_and_on_adds():
    h = Harness(extra="\tchecktype=off\n")
    assert h.dests() == {}


def test_results_for_unknown_servers_are_ignored():
    h = Harness()
    assert h.core.result("tcp:1.2.3.4:80", R1, True, 1.0) == []
    assert h.core.result(VID, ("9.9.9.9", 80), True, 1.0) == []


def test_reconcile_recreates_a_flushed_service():
    h = Harness(globals_='fallback=127.0.0.1:8080 masq\nquiescent=yes')
    h.res(R1, True)
    assert h.dests() == {R1: 3, R2: 0}
    from halb.model import Op
    h.table = h.table.apply([Op("clear")])  # the engine lost its table
    h.feed(h.core.reconcile(h.table.config_services(), h.t))
    assert h.dests() == {R1: 3, R2: 0}
    assert h.table.services[KEY].scheduler == "rr"
    # nothing to do when the service is there (hand edits inside it are left alone)
    assert h.core.reconcile(h.table.config_services(), h.t) == []


# -- property: whatever the sequence of results, the table is what it should be

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=150, deadline=None)
@given(quiescent=st.booleans(), fallback=st.booleans(), failurecount=st.integers(1, 3),
       events=st.lists(st.tuples(st.sampled_from([R1, R2]), st.booleans(), st.booleans()), max_size=40))
def test_table_always_matches_the_states(quiescent, fallback, failurecount, events):
    g = f"failurecount={failurecount}\n" + ("quiescent=yes\n" if quiescent else "") + \
        ("fallback=127.0.0.1:8080 masq\n" if fallback else "")
    h = Harness(globals_=g)  # every edit goes through Table.apply: a refused op fails the test
    weights = {R1: 3, R2: 2}
    for rkey, ok, maint in events:
        h.res(rkey, ok and not maint, force=maint)
        vs = h.core.vs[VID]
        want = {}
        for k, rs in vs.reals.items():
            if rs.up:
                want[k] = weights[k]
            elif quiescent:
                want[k] = 0
        if fallback and not any(rs.up for rs in vs.reals.values()):
            want[("127.0.0.1", 8080)] = 1
        assert h.dests() == want
        for rs in vs.reals.values():
            assert rs.failcount < failurecount or not rs.up
