"""The proxy's pure cores: the rate estimator and persistence templates."""
from halb.model import Stats
from halb.proxy.estimator import Estimator
from halb.proxy.persist import PersistTable, client_network


def test_estimator_converges_to_the_steady_rate_and_restarts_on_zero():
    st = Stats()
    est = Estimator(st, 0.0)
    t = 0.0
    for _ in range(30):  # 100 conn/s, 1000 bytes/s in, sampled every 2 s
        t += 2.0
        st.conns += 200
        st.inbytes += 2000
        r = est.sample(st, t)
    assert r.cps == 100 and r.inbps == 1000 and r.outbps == 0
    first = Estimator(Stats(), 0.0)
    r1 = first.sample(Stats(conns=200), 2.0)
    assert r1.cps == 25  # smoothed: a quarter of the first 100/s sample, as the kernel
    r = est.sample(Stats(), t + 2.0)  # counters zeroed (-Z)
    assert r.cps == 0 and est.sample(Stats(conns=20), t + 4.0).cps == 3


def test_client_network_masks():
    assert client_network("192.168.7.42", "255.255.255.255") == "192.168.7.42"
    assert client_network("192.168.7.42", "255.255.255.0") == "192.168.7.0"
    assert client_network("2001:db8::1:2", "64") == "2001:db8::"


def test_templates_expire_after_timeout_unless_they_control_connections():
    pt = PersistTable()
    t = pt.create("svc", "10.0.0.0", "D1", now=0.0)
    pt.use(t, 0.0)
    assert pt.expire(400.0, lambda k: 300) == [] and t.last_use == 400.0  # re-armed: a conn is open
    pt.release(t, 410.0)
    assert pt.lookup("svc", "10.0.0.0", 600.0, 300) is t and t.expires(600.0, 300) == 110.0
    assert pt.expire(709.0, lambda k: 300) == []
    assert pt.expire(710.0, lambda k: 300) == [t] and len(pt) == 0
    t2 = pt.create("svc", "10.0.0.0", "D2", now=0.0)
    assert pt.lookup("svc", "10.0.0.0", 300.0, 300) is None and len(pt) == 0  # expired, unused
    pt.create("gone", "x", "D", 0.0)
    assert [x.key for x in pt.expire(1.0, lambda k: None)] == ["gone"]  # its service was deleted
    assert t2 is not None


from hypothesis import given, settings
from hypothesis import strategies as st


@given(rate=st.integers(min_value=0, max_value=10**9), interval=st.floats(min_value=1.5, max_value=2.5))
def test_estimator_settles_on_any_constant_rate(rate, interval):
    s = Stats()
    est = Estimator(s, 0.0)
    t = 0.0
    for _ in range(80):  # (3/4)^80: the start-up transient is gone
        t += interval
        s.inbytes += round(rate * interval)
        r = est.sample(s, t)
    assert abs(r.inbps - rate) <= max(1, rate * 1e-6)


@settings(max_examples=200)
@given(st.lists(st.tuples(st.sampled_from(["use", "release", "tick"]), st.floats(min_value=0, max_value=50)),
                max_size=60))
def test_a_template_never_expires_while_it_controls_connections(steps):
    pt = PersistTable()
    now = 0.0
    t = pt.create("svc", "net", "D", now)
    open_conns = 0
    for what, dt in steps:
        now += dt
        live = pt.lookup("svc", "net", now, 30)
        if what == "use":
            if live is None:
                t = pt.create("svc", "net", "D", now)
                open_conns = 0
            pt.use(t, now)
            open_conns += 1
        elif what == "release" and open_conns and live is not None:
            pt.release(t, now)
            open_conns -= 1
        else:
            gone = pt.expire(now, lambda k: 30)
            if open_conns:
                assert gone == [] and len(pt) == 1
            elif gone:
                assert now - gone[0].last_use >= 30
