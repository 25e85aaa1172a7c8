"""The lvsdr haresources reader: which VIPs, which interface, clear errors."""
from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from halb.errors import ConfigError
from halb.realserver.haresources import parse_haresources, read_haresources

SEED = Path("/work/shared/seed/configs")
if not SEED.is_dir():
    SEED = Path(__file__).resolve().parents[3] / "shared" / "seed" / "configs"


def vips(text, env=None, **kw):
    return [(s.vip, s.iface) for s in parse_haresources(text, "haresources", env or {}, **kw)]


def test_article_line_with_placeholder_from_environment(tmp_path):
    if not (SEED / "haresources").is_file():
        pytest.skip("seed configs not present")
    # the article's file as-is; its ldirectord.cf sits beside it and has the same VIP
    specs = parse_haresources((SEED / "haresources").read_text(), str(SEED / "haresources"),
                              {"VIP": "10.9.8.10", "RIP1": "10.9.8.1", "RIP2": "10.9.8.2"})
    assert [(s.vip, s.iface) for s in specs] == [("10.9.8.10", None)]
    assert specs[0].source.endswith("haresources:1")


def test_ipaddr_forms_interfaces_continuations_and_comments():
    text = """# groups of the cluster
N1 IPAddr2::10.0.0.10 ldirectord   # the article's spelling
N2 IPaddr2::10.0.0.11/24/eth1/10.0.0.255 \\
   IPaddr::10.0.0.12/255.255.255.0 httpd
node3 10.0.0.13/24/eth2
N1 IPaddr2::10.0.0.10/24/eth0
"""
    assert vips(text) == [("10.0.0.10", None), ("10.0.0.11", "eth1"),
                          ("10.0.0.12", None), ("10.0.0.13", "eth2")]


def test_ldirectord_config_vips(tmp_path):
    (tmp_path / "ld.cf").write_text("checktimeout=10\nvirtual=10.1.1.10:80\n\treal=10.1.1.1:80 gate\n"
                                    "virtual=10.1.1.20:443\nvirtual=7\n")
    hr = tmp_path / "haresources"
    hr.write_text("N1 IPaddr2::10.1.1.10 ldirectord::ld.cf\n")
    assert [(s.vip, s.source) for s in read_haresources(hr, env={})] == [
        ("10.1.1.10", f"{hr}:1"), ("10.1.1.20", f"{tmp_path / 'ld.cf'}:4")]


@pytest.mark.parametrize("text, line, msg", [
    ("N1 IPAddr2::$VIP ldirectord\n", 1, "$VIP is not defined"),
    ("# c\n\nN1 IPaddr2::10.0.0.300\n", 3, "bad VIP in IPaddr2::10.0.0.300"),
    ("N1 IPaddr2::127.0.0.5\n", 1, "cannot be a VIP"),
    ("N1 httpd\nN2 IPaddr2::\n", 2, "IPaddr2 resource without an address"),
    ("N1 IPaddr2::10.0.0.10/40\n", 1, "bad netmask '40'"),
    ("N1\n", 1, "expected 'NODE RESOURCE...'"),
    ("N1 IPaddr2::10.0.0.10 ldirectord::nothere.cf\n", 1, "ldirectord configuration"),
])
def test_errors_name_file_and_line(tmp_path, text, line, msg):
    hr = tmp_path / "haresources"
    hr.write_text(text)
    with pytest.raises(ConfigError) as ei:
        read_haresources(hr, env={})
    assert ei.value.line == line and msg in str(ei.value)
    assert str(ei.value).startswith(f"{hr}:{line}: ")


def test_missing_file_and_no_vip(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        read_haresources(tmp_path / "nope")
    hr = tmp_path / "haresources"
    hr.write_text("N1 httpd\n")
    with pytest.raises(ConfigError, match="no IPaddr/IPaddr2 resource"):
        read_haresources(hr, env={})


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("N1 IPad2r:/.0123456789$\\\n#\tVIPldirecto")), max_size=120))
def test_any_input_gives_vips_or_a_config_error(text):
    try:
        out = parse_haresources(text, "hr", {"VIP": "10.0.0.10"}, base_dir="/nonexistent")
    except ConfigError as e:
        assert e.path == "hr" and e.line
    else:
        assert all(s.vip.count(".") == 3 for s in out)
