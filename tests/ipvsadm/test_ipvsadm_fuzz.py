"""Fuzzing the command language: any word salad either parses or fails with a
HalbError (one clear line), never another exception; a refused command
leaves the table exactly as it was."""
from __future__ import annotations

import sys
from pathlib import Path

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from halb.errors import HalbError
from halb.ipvsadm.fmt import Names, format_save
from halb.ipvsadm.parse import NumericResolver, parse_argv, parse_restore

sys.path.insert(0, str(Path(__file__).parent))
from ipvsadm_memengine import MemEngine  # noqa: E402

WORDS = ["-A", "-E", "-D", "-C", "-R", "-S", "-a", "-e", "-d", "-L", "-l", "-Z", "--set", "-t", "-u",
         "-f", "-s", "-p", "-M", "-r", "-g", "-i", "-m", "-w", "-x", "-y", "-n", "-c", "-b", "-o", "-6",
         "--stats", "--rate", "--thresholds", "--persistent-conn", "--exact", "--sort", "--nosort",
         "--timeout", "--daemon", "--pe", "--tun-type", "--tun-port", "-Ln", "-At", "-pM", "--weight=",
         "10.0.0.1:80", "10.0.0.2", "[::1]:80", "::2", "rr", "wrr", "sh", "mh", "sh-port", "mh-port,x",
         "0", "1", "300", "-1", "65536", "2147483648", "255.255.255.0", "64", "ipip", "gue", "sip",
         "", "x", "[", "]:", "1.2.3.4:", ":80", "--", "-", "--bogus", "-Q", "'", "\x00"]

words = st.lists(st.one_of(st.sampled_from(WORDS), st.text(max_size=12)), max_size=9)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(words)
@example(["-A", "\n"])
@example(["--\n"])
def test_parser_never_crashes(argv):
    try:
        cmd = parse_argv(argv, NumericResolver())
    except HalbError as e:
        assert str(e) and "\n" not in str(e)
        return
    cmd.ops()  # a parsed command always turns into valid ops


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(words.map(" ".join), max_size=6))
def test_restore_is_all_or_nothing(lines):
    eng = MemEngine(fwd_methods=("masq", "gate", "ipip"))
    eng.execute(parse_restore("-A -t 10.0.0.1:80 -s rr\n-a -t 10.0.0.1:80 -r 10.0.0.2 -m\n",
                              NumericResolver()).ops)
    before = format_save(eng.services(), Names(True)) + str(eng.timeouts())
    try:
        plan = parse_restore("\n".join(lines), NumericResolver())
        eng.execute(plan.ops)
    except HalbError as e:
        assert "\n" not in str(e)
        assert format_save(eng.services(), Names(True)) + str(eng.timeouts()) == before
