"""halb bgp's pure cores: bgp.conf parsing (errors name file:line and the
range), the BIRD configuration text (accepted by the real `bird -p`), and
the announce/withdraw decision as a function of what was observed and time."""
from __future__ import annotations

import shutil
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from halb.bgp.birdconf import director_conf, router_conf, vip_proto
from halb.bgp.config import load, parse_text
from halb.bgp.decide import Decision, Observation, VipState, decide, log_line
from halb.errors import ConfigError

GOOD = """# a director
router_id=10.81.2.11
local_as=65001
neighbor=10.81.2.1 as 65000     # the leaf
neighbor=10.81.2.2 as 65000 port 1179
bfd=20ms 3
hold=3
announce=10.81.9.100
announce=10.81.9.101/32
director=ldirectord.cf
checkinterval=0.1
"""


def err(text: str) -> str:
    with pytest.raises(ConfigError) as ei:
        parse_text(text, "bgp.conf")
    return str(ei.value)


def test_good_file():
    c = parse_text(GOOD, "bgp.conf")
    assert c.router_id == "10.81.2.11" and c.local_as == 65001
    assert [(n.addr, n.asn, n.port) for n in c.neighbors] == [("10.81.2.1", 65000, 179), ("10.81.2.2", 65000, 1179)]
    assert c.bfd == (20_000, 3) and c.hold == 3 and c.keepalive == 1
    assert c.announce == ["10.81.9.100", "10.81.9.101"]
    assert c.checkinterval == 0.1 and c.selftest == "builtin"


@pytest.mark.parametrize("line, want", [
    ("router_id=10.81.2", "bgp.conf:1: router_id: '10.81.2' is not an IPv4 address"),
    ("local_as=0", "bgp.conf:2: local_as: '0' is not an AS number (1..4294967295)"),
    ("local_as=4294967296", "is not an AS number (1..4294967295)"),
    ("bfd=0.5ms 3", "bgp.conf:2: bfd: interval 0.5ms must be from 1ms to 10s"),
    ("bfd=20ms 0", "bfd: multiplier 0 must be from 1 to 255"),
    ("bfd=fast", "bfd: expected 'INTERVAL MULTIPLIER' (e.g. 20ms 3) or off, got 'fast'"),
    ("hold=2", "bgp.conf:2: hold: a BGP hold time is 0 (none) or from 3 to 65535 s"),
    ("hold=70000", "hold: '70000' must be an integer from 0 to 65535"),
    ("checkinterval=0.001", "checkinterval: '0.001' must be a number from 0.02 to 60"),
    ("neighbor=10.0.0.1 65000", "neighbor: expected 'ADDRESS as ASN"),
    ("neighbor=10.0.0.1 as 65000 port 0", "neighbor port: '0' must be an integer from 1 to 65535"),
    ("neighbor=10.0.0.1 as 65000 color red", "neighbor: unknown option 'color' (port, multihop, password)"),
    ("announce=224.0.0.1", "announce: 224.0.0.1 cannot be used"),
    ("selftest=ping", "selftest: 'ping' must be builtin, off or an absolute command path"),
    ("frobnicate=1", 'bgp.conf:2: Unknown command "frobnicate"'),
    ("just words", 'Unknown command "just words" (expected name=value)'),
    ("hold=", "bgp.conf:2: hold: missing value"),
])
def test_bad_lines_name_file_line_and_range(line, want):
    text = "router_id=10.0.0.2\n" + line + "\nlocal_as=65001\nneighbor=10.0.0.1 as 65000\nannounce=10.9.9.9\n"
    if line.startswith(("router_id", "local_as")):
        text = line + "\n" + "\n".join(ln for ln in text.splitlines()[1:]
                                      if not ln.startswith(line.split("=")[0])) + "\n"
        if line.startswith("local_as"):
            text = "router_id=10.0.0.2\n" + line + "\nneighbor=10.0.0.1 as 65000\nannounce=10.9.9.9\n"
    assert want in err(text)


def test_missing_and_duplicates():
    assert err("local_as=1\nneighbor=10.0.0.1 as 2\nannounce=10.1.1.1\n") == "bgp.conf: router_id is missing"
    assert err("router_id=10.0.0.2\nlocal_as=1\nannounce=10.1.1.1\n").endswith("no neighbor (neighbor=ADDRESS as ASN)")
    assert err("router_id=10.0.0.2\nlocal_as=1\nneighbor=10.0.0.1 as 2\n").endswith("nothing to announce (announce=VIP)")
    assert "bgp.conf:3: hold given twice (first at line 2)" in err("router_id=10.0.0.2\nhold=3\nhold=4\n")
    assert "bgp.conf:4: announce 10.1.1.1 given twice (first at line 3)" in err(
        "router_id=10.0.0.2\nlocal_as=1\nannounce=10.1.1.1\nannounce=10.1.1.1/32\n")
    assert "neighbor 10.0.0.2 is this director's own address" in err(
        "router_id=10.0.0.2\nlocal_as=1\nneighbor=10.0.0.2 as 2\nannounce=10.1.1.1\n")


def test_load_errors(tmp_path):
    with pytest.raises(ConfigError, match="nope.conf: Config file not found"):
        load(tmp_path / "nope.conf")
    f = tmp_path / "bin.conf"
    f.write_bytes(b"router_id=10.0.0.2\n\xff\xfe\n")
    with pytest.raises(ConfigError, match=r"bin.conf:2: not UTF-8 text"):
        load(f)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_any_input_is_a_config_or_a_config_error(text):
    try:
        parse_text(GOOD + text, "f")
    except ConfigError as e:
        assert str(e).startswith("f")


needs_bird = pytest.mark.skipif(not shutil.which("bird"), reason="needs bird (Debian bird2)")


def bird_accepts(tmp_path, text: str) -> None:
    f = tmp_path / "bird.conf"
    f.write_text(text)
    r = subprocess.run(["bird", "-p", "-c", str(f)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr + text


@needs_bird
@pytest.mark.parametrize("extra", ["", "bfd=off\nhold=0\n", "bfd=100ms 3\nhold=9\n",
                                   "neighbor=10.99.0.1 as 65002 multihop 3 password \"s3 cret\"\n"])
def test_bird_accepts_the_director_config(tmp_path, extra):
    text = GOOD.replace("bfd=20ms 3\nhold=3\n", "") + extra if extra.startswith(("bfd", "hold")) else GOOD + extra
    c = parse_text(text, "bgp.conf")
    conf = director_conf(c)
    bird_accepts(tmp_path, conf)
    # every VIP has its own static protocol, disabled until halb bgp enables it
    for v in c.announce:
        assert f"protocol static {vip_proto(v)} {{\n  disabled yes;" in conf
    assert "export filter halb_vips;" in conf and "import none;" in conf


@needs_bird
def test_bird_accepts_the_router_config(tmp_path):
    conf = router_conf("10.0.0.1", 65000, [("10.0.0.2", 65001), ("10.0.0.3", 65001)])
    assert "merge paths on" in conf and "bfd on;" in conf
    bird_accepts(tmp_path, conf)


# -- decisions --------------------------------------------------------------------------
V = "10.81.9.100"


def obs(live=2, total=2, director=True, selftest=(True, ""), stopping=False):
    return Observation(director_ok=director, director_why="" if director else "the director is not running",
                       services={V: [("tcp/10.81.9.100:80", live, total)]} if live is not None else {},
                       selftest={V: selftest}, stopping=stopping)


def test_fit_director_announces_at_once_and_withdraws_at_once():
    s = {V: VipState()}
    d = decide(s, obs(), now=0.0)
    assert d == [Decision(V, "announce", "2 of 2 real servers live, self-test passed")]
    assert decide(s, obs(), now=0.1) == []                       # no repeated announcement
    d = decide(s, obs(live=0), now=0.2)
    assert d == [Decision(V, "withdraw", "no live real server for tcp/10.81.9.100:80")]
    assert log_line(d[0]) == "Withdrew virtual IP: 10.81.9.100/32 (no live real server for tcp/10.81.9.100:80)"
    assert not s[V].announced


@pytest.mark.parametrize("o, why", [
    (obs(director=False), "the director is not running"),
    (obs(live=None), "no virtual service for this VIP in the table"),
    (obs(selftest=(False, "IPv4 forwarding is off")), "self-test failed: IPv4 forwarding is off"),
    (obs(stopping=True), "halb bgp is stopping"),
])
def test_each_unfitness_withdraws_with_its_reason(o, why):
    s = {V: VipState()}
    decide(s, obs(), now=0)
    assert decide(s, o, now=1) == [Decision(V, "withdraw", why)]
    assert s[V].reason == why


def test_rise_delays_announcement_and_a_break_restarts_it():
    s = {V: VipState()}
    assert decide(s, obs(), 0.0, rise=2) == []
    assert decide(s, obs(), 1.5, rise=2) == [] and "rise" in s[V].reason
    assert decide(s, obs(live=0), 1.8, rise=2) == []             # a break: the clock restarts
    assert decide(s, obs(), 2.5, rise=2) == []
    assert decide(s, obs(), 4.4, rise=2) == []
    assert decide(s, obs(), 4.5, rise=2)[0].action == "announce"


def test_one_dead_service_of_two_withdraws_the_vip():
    s = {V: VipState()}
    o = Observation(services={V: [("tcp/v:80", 1, 2), ("tcp/v:443", 0, 2)]})
    assert decide(s, o, 0) == []
    assert s[V].reason == "no live real server for tcp/v:443"
