"""ha.cf, authkeys and haresources parsers: the article's files, errors located by file:line, fuzz."""
import os

import pytest
from hypothesis import given, settings, strategies as st

from halb.errors import ConfigError
from halb.heartbeat import config as C

SEED = "/work/shared/seed/configs"
ARTICLE_HACF = """\
mcast      eth0 225.0.0.7 694 1 0
baud       19200
serial     /dev/ttyS0
debugfile  /var/log/ha.debug
logfile    /var/log/ha.log
logfacility local0
keepalive  2
deadtime   10
warntime   6
initdead   60
node       N1
node       N2
auto_failback off
"""


def test_articles_hacf_reads_with_serial_warnings():
    c = C.parse_hacf(ARTICLE_HACF, "ha.cf")
    assert (c.keepalive, c.deadtime, c.warntime, c.initdead) == (2, 10, 6, 60)
    assert c.nodes == ["N1", "N2"] and c.auto_failback == "off"
    (link,) = c.links
    assert (link.kind, link.dev, link.addr, link.port, link.ttl, link.loop) == ("mcast", "eth0", "225.0.0.7", 694, 1, False)
    assert any(w.startswith("ha.cf:2:") and "serial" in w for w in c.warnings)
    assert any(w.startswith("ha.cf:3:") and "serial" in w for w in c.warnings)
    assert (c.logfile, c.debugfile, c.logfacility) == ("/var/log/ha.log", "/var/log/ha.debug", "local0")


@pytest.mark.skipif(not os.path.exists(SEED), reason="seed configs not present")
def test_seed_files():
    c = C.load_hacf(f"{SEED}/ha.cf")
    assert c.nodes == ["N1", "N2"]
    a = C.parse_authkeys(open(f"{SEED}/authkeys").read())
    assert a.active == 1 and a.keys[1] == ("md5", b"secret") and a.keys[3] == ("sha1", b"autre secret")


def test_times_booleans_and_links():
    c = C.parse_hacf("keepalive 50ms\ndeadtime 0.3\nwarntime 200ms\ninitdead 1s\nudpport 7000\n"
                     "bcast eth0 eth1\nucast eth0 10.0.0.2\nnode a b c\nrealtime no\nauto_failback yes\n"
                     "ping 10.0.0.254\nping_group g 10.0.0.1 10.0.0.3\ndeadping 500ms\n"
                     "respawn hacluster /usr/lib/heartbeat/ipfail\nstonith_host * external /bin/true x\n")
    assert c.keepalive == 0.05 and c.deadtime == 0.3 and c.warntime == 0.2 and c.initdead == 1
    assert [(l.kind, l.dev, l.port) for l in c.links] == [("bcast", "eth0", 7000), ("bcast", "eth1", 7000), ("ucast", "eth0", 7000)]
    assert c.links[2].addr == "10.0.0.2"
    assert c.nodes == ["a", "b", "c"] and c.realtime is False and c.auto_failback == "on"
    assert c.ping_targets == {"10.0.0.254": ["10.0.0.254"], "g": ["10.0.0.1", "10.0.0.3"]}
    assert c.deadping == 0.5 and c.respawn == [("hacluster", ["/usr/lib/heartbeat/ipfail"])]
    assert c.stonith[0].kind == "external" and c.stonith[0].args == ("/bin/true", "x")


def test_udpport_is_read_in_order():
    c = C.parse_hacf("bcast eth0\nudpport 7000\nbcast eth1\nnode a b\nkeepalive 1\ndeadtime 5\n", "h")
    assert [l.port for l in c.links] == [694, 7000]
    assert any(w.startswith("h:2:") and "udpport comes after" in w for w in c.warnings)


@pytest.mark.parametrize("text,where,words", [
    ("bogus 1\n", "f:1", "unknown directive 'bogus'"),
    ("node a\nkeepalive two\n", "f:2", "not a time"),
    ("crm respawn\n", "f:1", "not supported"),
    ("mcast eth0 10.0.0.1 694 1 0\n", "f:1", "not a multicast"),
    ("mcast eth0 225.0.0.7 694 1\n", "f:1", "mcast DEV GROUP PORT TTL LOOP"),
    ("ucast eth0 nothere\n", "f:1", "not an IPv4 address"),
    ("udpport 70000\n", "f:1", "not a UDP port"),
    ("auto_failback maybe\n", "f:1", "on, off or legacy"),
    ("realtime sometimes\n", "f:1", "not a boolean"),
    ("node a\nnode a\n", "f:2", "already declared on line 1"),
    ("node a b\nbcast eth0\nkeepalive 2\ndeadtime 1\n", "f", "must be longer than keepalive"),
    ("node a b\n", "f", "no heartbeat link"),
    ("bcast eth0\n", "f", "no 'node' line"),
])
def test_hacf_errors_are_located(text, where, words):
    with pytest.raises(ConfigError) as e:
        C.parse_hacf(text, "f")
    assert str(e.value).startswith(where + ":") and words in str(e.value)


def test_node_name_checked_against_own_name():
    c = C.parse_hacf("node N1 N2\nbcast eth0\n", "ha.cf")
    c.check_node("N1")
    with pytest.raises(ConfigError, match="'N3'.*not one of the nodes"):
        c.check_node("N3")


def test_authkeys():
    a = C.parse_authkeys("# c\nauth 4\n1 md5 \"secret\"\n2 crc\n4 sha256 long secret with spaces\n")
    assert a.active == 4 and a.method == "sha256" and a.keys[4][1] == b"long secret with spaces"
    for text, line, words in [("1 md5 x\n", None, "no 'auth N'"), ("auth 2\n1 md5 x\n", 1, "key 2 is not defined"),
                              ("auth 1\n1 rot13 x\n", 2, "unknown method"), ("auth 1\n1 md5\n", 2, "needs a secret"),
                              ("auth 1\n1 md5 a\n1 sha1 b\n", 3, "defined twice"), ("auth x\n", 1, "auth N")]:
        with pytest.raises(ConfigError) as e:
            C.parse_authkeys(text, "ak")
        assert words in str(e.value) and str(e.value).startswith(f"ak:{line}:" if line else "ak:")


def test_authkeys_mode_and_crc(tmp_path):
    p = tmp_path / "authkeys"
    p.write_text("auth 2\n2 crc\n")
    p.chmod(0o644)
    with pytest.raises(ConfigError, match="mode is 0644.*chmod 600"):
        C.load_authkeys(p)
    p.chmod(0o600)
    a = C.load_authkeys(p)
    cfg = C.parse_hacf("node a b\nbcast eth0\n")
    with pytest.raises(ConfigError, match="crc.*refused on UDP"):
        C.check_auth_for_links(a, cfg)
    cfg.allow_crc = True
    C.check_auth_for_links(a, cfg)


def test_haresources():
    g = C.parse_haresources("# article\nN1 IPAddr2::10.0.0.100 ldirectord\n"
                            "N2 10.0.0.101/24/eth1 \\\n   Filesystem::/dev/sda1::/data::ext4 httpd\n", "hr", ["N1", "N2"])
    assert [x.node for x in g] == ["N1", "N2"]
    assert [(r.agent, r.args) for r in g[0].resources] == [("IPaddr2", ("10.0.0.100",)), ("ldirectord", ())]
    assert [(r.agent, r.args) for r in g[1].resources] == [
        ("IPaddr", ("10.0.0.101/24/eth1",)), ("Filesystem", ("/dev/sda1", "/data", "ext4")), ("httpd", ())]
    assert g[1].line == 3


@pytest.mark.parametrize("text,where,words", [
    ("N1 IPAddr2::$VIP ldirectord\n", "hr:1", "placeholder"),
    ("N3 httpd\n", "hr:1", "not declared in ha.cf"),
    ("N1\n", "hr:1", "no resources"),
    ("N1 IPaddr2::10.0.0.1/40\n", "hr:1", "prefix length"),
    ("N1 httpd \\\n", "hr:1", "continuation"),
    ("N1 httpd\nN2 httpd\n", "hr:2", "already in the group on line 1"),
    ("N1 ::x\n", "hr:1", "no resource name"),
])
def test_haresources_errors(text, where, words):
    with pytest.raises(ConfigError) as e:
        C.parse_haresources(text, "hr", ["N1", "N2"])
    assert str(e.value).startswith(where + ":") and words in str(e.value)


def test_load_ha_dir(tmp_path):
    (tmp_path / "ha.cf").write_text("node N1 N2\nmcast eth0 225.0.0.7 694 1 0\nkeepalive 50ms\ndeadtime 300ms\n")
    (tmp_path / "authkeys").write_text("auth 1\n1 md5 \"secret\"\n")
    (tmp_path / "authkeys").chmod(0o600)
    (tmp_path / "haresources").write_text("N1 IPAddr2::10.0.0.100\n")
    d = C.load_ha_dir(tmp_path, "N2")
    assert d.groups[0].resources[0].agent == "IPaddr2" and d.auth.method == "md5"


TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=300)
LINES = st.lists(st.sampled_from(["node N1 N2", "bcast eth0", "keepalive 1", "deadtime 5", "mcast eth0 225.0.0.7 694 1 0",
                                  "udpport 700", "auto_failback off", "ucast eth0 10.0.0.1", "ping 10.0.0.9",
                                  "serial /dev/ttyS0", "\\", "#", "1 md5 k", "auth 1", "2 crc", "N1 10.0.0.1 httpd",
                                  "N2 IPaddr2::1.2.3.4/24/eth0", "warntime 500ms"]) | TEXT, max_size=12).map("\n".join)


@settings(max_examples=300, deadline=None)
@given(LINES)
def test_fuzz_parsers_raise_only_config_errors(text):
    for fn in (C.parse_hacf, C.parse_authkeys, lambda t, p: C.parse_haresources(t, p, ["N1", "N2"])):
        try:
            fn(text, "fz")
        except ConfigError as e:
            assert str(e).startswith("fz") and "\n" not in str(e)
