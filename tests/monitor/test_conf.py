"""gmetad.conf: the article's line, Ganglia's other forms, and errors naming file and line."""
from __future__ import annotations

from pathlib import Path

import pytest

from halb.errors import ConfigError
from halb.monitor.conf import RRA, Address, load, parse

SEED = Path(__file__).resolve().parents[3] / "shared" / "seed" / "configs" / "gmetad.conf"


def test_article_file():
    text = SEED.read_text() if SEED.exists() else 'data_source "Mon Cluster" N1 N2\n'
    c = parse(text, "gmetad.conf")
    assert len(c.sources) == 1
    s = c.sources[0]
    assert (s.name, s.step, s.addresses) == ("Mon Cluster", 15.0, [Address("N1", 8649), Address("N2", 8649)])


def test_ganglia_forms():
    c = parse("""
# a comment
data_source "my cluster" 10 localhost  my.machine.edu:8649  1.2.3.5:8655
data_source "another source" 1.3.4.7:8655  1.3.4.8   # trailing comment
data_source v6 [::1]:8700 fe80::1
gridname "MyGrid"
rrd_rootdir "/var/lib/ganglia/rrds"
RRAs "RRA:AVERAGE:0.5:1:244" "RRA:MAX:0.5:24:244"
xml_port 8651
trusted_hosts 127.0.0.1 169.229.50.165
""", "g.conf")
    a, b, v6 = c.sources
    assert a.step == 10 and a.addresses == [Address("localhost"), Address("my.machine.edu"), Address("1.2.3.5", 8655)]
    assert b.step == 15 and b.addresses == [Address("1.3.4.7", 8655), Address("1.3.4.8")]
    assert v6.addresses == [Address("::1", 8700), Address("fe80::1", 8649)] and str(v6.addresses[0]) == "[::1]:8700"
    assert c.gridname == "MyGrid" and c.rrd_rootdir == "/var/lib/ganglia/rrds"
    assert c.rras == [RRA("AVERAGE", 0.5, 1, 244), RRA("MAX", 0.5, 24, 244)]
    assert c.trusted_hosts == ["127.0.0.1", "169.229.50.165"] and not c.all_trusted
    assert c.warnings == ["g.conf:9: 'xml_port' is not supported by halb gmetad (ignored)"]
    assert b.line == 4


def test_short_step_for_tests():
    assert parse('data_source "t" 0.5 127.0.0.1:1').sources[0].step == 0.5


@pytest.mark.parametrize("text,line,msg", [
    ('data_source\n', 1, "needs a name"),
    ('\ndata_source "x"\n', 2, 'data_source "x" has no address'),
    ('data_source "x" 10\n', 1, "has no address"),
    ('data_source "x" 0.01 h\n', 1, "too short"),
    ('data_source "x" h:0\n', 1, "bad port"),
    ('data_source "x" h:99999\n', 1, "bad port"),
    ('data_source "x" h:http\n', 1, "bad port"),
    ('data_source "x" ho$t\n', 1, "bad address 'ho$t'"),
    ('data_source "x" [::1\n', 1, "unclosed"),
    ('data_source "x h\n', 1, "unterminated quoted string"),
    ('data_source "" h\n', 1, "empty name"),
    ('data_source "a/b" h\n', 1, "bad name"),
    ('data_source "x" h\ndata_source "x" g\n', 2, "defined twice (first at line 1)"),
    ('data_source "x" h\nfrobnicate 1\n', 2, "unknown directive 'frobnicate'"),
    ('data_source "x" h\nRRAs "RRA:AVG:0.5:1:10"\n', 2, "consolidation function"),
    ('data_source "x" h\nRRAs "RRA:AVERAGE:1.5:1:10"\n', 2, "xff"),
    ('data_source "x" h\nRRAs "RRA:AVERAGE:0.5:0:10"\n', 2, "positive integers"),
    ('data_source "x" h\nRRAs "RRA:AVERAGE:0.5:1"\n', 2, "expected RRA:CF:xff:steps:rows"),
    ('data_source "x" h\ngridname a b\n', 2, "gridname takes one"),
])
def test_bad_lines(text, line, msg):
    with pytest.raises(ConfigError) as e:
        parse(text, "/etc/ganglia/gmetad.conf")
    assert e.value.line == line and msg in str(e.value)
    assert str(e.value).startswith(f"/etc/ganglia/gmetad.conf:{line}: ")


def test_no_source_and_unreadable(tmp_path):
    with pytest.raises(ConfigError, match="no data_source line"):
        parse("# nothing\n", "g.conf")
    with pytest.raises(ConfigError, match="cannot read"):
        load(tmp_path / "missing.conf")
