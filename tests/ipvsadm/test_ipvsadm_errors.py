"""Malformed command lines and refused edits through the real `halb` entry
point (in-process, engine = the in-memory table): every one gives one clear
line on stderr, a non-zero exit, no traceback, and leaves the table as it was."""
from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest

import halb.cli.ipvsadm as cli_ipvsadm
from halb.cli.main import main as halb_main
from halb.ipvsadm.fmt import Names, format_save

sys.path.insert(0, str(Path(__file__).parent))
from ipvsadm_memengine import MemEngine  # noqa: E402

SETUP = [
    "-A -t 10.0.0.1:80 -s rr",
    "-a -t 10.0.0.1:80 -r 10.0.0.2 -m",
    "-a -t 10.0.0.1:80 -r 10.0.0.3 -m -w 2",
]


@pytest.fixture
def eng(monkeypatch, tmp_path):
    e = MemEngine()
    monkeypatch.setattr(cli_ipvsadm, "open_engine", lambda ctx: e)
    e.run_dir = tmp_path
    for line in SETUP:
        assert run(e, line.split())[0] == 0
    return e


def run(e, argv, stdin=""):
    old_in, old_out, old_err = sys.stdin, sys.stdout, sys.stderr
    sys.stdin, sys.stdout, sys.stderr = io.StringIO(stdin), io.StringIO(), io.StringIO()
    try:
        rc = halb_main(["--run-dir", str(getattr(e, "run_dir", "/nonexistent")), "ipvsadm", *argv])
        return rc, sys.stdout.getvalue(), sys.stderr.getvalue()
    finally:
        sys.stdin, sys.stdout, sys.stderr = old_in, old_out, old_err


def snapshot(e):
    return format_save(e.services(), Names(True)) + str(e.timeouts())


BAD = [
    # usage errors, worded as ipvsadm words them
    ("-A", "You need to supply the 'service-address' option for the 'add-service' command"),
    ("-A -t 10.0.0.9", "Zero port specified for non-persistent service"),
    ("-A -t 10.0.0.9:80 -s nosuch", "Scheduler or persistence engine not found"),
    ("-A -t 10.0.0.300:80", "illegal virtual server address[:port] specified"),
    ("-A -t 10.0.0.9:99999", "illegal virtual server address[:port] specified"),
    ("-A -t 10.0.0.9:nosuchport", "illegal virtual server address[:port] specified"),
    ("-A -t 80", "illegal virtual server address[:port] specified"),
    ("-A -t [::1:80", "illegal virtual server address[:port] specified"),
    ("-A -t", "-t: missing argument"),
    ("-A -t 10.0.0.9:80 -r 10.0.0.2", "Illegal 'real-server' option with the 'add-service' command"),
    ("-a -t 10.0.0.1:80", "You need to supply the 'real-server' option for the 'add-server' command"),
    ("-a -t 10.0.0.1:80 -r 10.0.0.4 -w -1", "illegal weight specified"),
    ("-a -t 10.0.0.1:80 -r 10.0.0.4 -w 2147483648", "illegal weight specified"),
    ("-a -t 10.0.0.1:80 -r 10.0.0.4 -w abc", "illegal weight specified"),
    ("-a -t 10.0.0.1:80 -r 10.0.0.4 -x z", "illegal u_threshold specified"),
    ("-a -t 10.0.0.1:80 -r 10.0.0.4 -y -3", "illegal l_threshold specified"),
    ("-a -t 10.0.0.1:80 -r 10.0.0.999", "illegal real server address[:port] specified"),
    ("-a -t 10.0.0.1:80 -r ::1", "Different address family is allowed only for tunneling servers"),
    ("-a -t 10.0.0.1:80 -r 10.0.0.4 -m --tun-type ipip", "Tunnel options conflict with forward method"),
    ("-a -t 10.0.0.1:80 -r 10.0.0.4 -i --tun-type gue", "not supported"),
    ("-a -t 10.0.0.1:80 -r 10.0.0.4 -i --tun-type vxlan", "illegal tunnel type specified"),
    ("-A -t 10.0.0.9:80 -p 0", "invalid timeout value `0' specified"),
    ("-A -t 10.0.0.9:80 -p 99999999", "invalid timeout value `99999999' specified"),
    ("-A -t 10.0.0.9:80 -p -M 255.0.255.0", "illegal virtual server persistent mask specified"),
    ("-A -u [::1]:53 -p -M 200", "illegal ipv6 netmask specified"),
    ("-A -t 10.0.0.9:80 -s rr -b sh-port", "incompatible scheduler flag `sh-port'"),
    ("-A -t 10.0.0.9:80 -s sh -b bogus", "invalid scheduler flag `bogus'"),
    ("-A -t 10.0.0.9:80 -o", "One-Packet Scheduling is only for UDP virtual services"),
    ("-A -t 10.0.0.9:80 --pe nosuch", "Scheduler or persistence engine not found"),
    ("-A -f 0", "invalid fwmark value `0' specified"),
    ("-A -t 10.0.0.9:80 -6", "-6 used before -f"),
    ("-L -c --stats", "options conflicts in the list command"),
    ("-L -c -t 10.0.0.1:80", "The option 'service-address' conflicts with the 'connection' option in the 'list' command"),
    ("-L -n -n", "multiple 'numeric' options specified"),
    ("-A -L", "multiple commands specified"),
    ("-t 10.0.0.1:80", "no command given"),
    ("--bogus", "--bogus: unknown option"),
    ("-Q", "-Q: unknown option"),
    ("-L --stats=1", "--stats: option does not take an argument"),
    ("--set 1 2", "--set option requires 3 timeout values"),
    ("--set 1 2 x", "invalid timeout value `x' specified"),
    ("-C extra", "unexpected argument extra"),
    ("-C -t 10.0.0.1:80", "Illegal 'service-address' option with the 'flush' command"),
    ("-A --sctp-service 10.0.0.9:80", "SCTP"),
    ("--start-daemon master -n", "Illegal 'numeric' option with the 'start-daemon' command"),
    ("--start-daemon master --mcast-port 0", "illegal mcast-port specified"),
    ("--start-daemon backup --mcast-group 10.0.0.1", "invalid IPv4 mcast-group `10.0.0.1'"),
    ("--stop-daemon master --mcast-ttl 2", "Illegal 'mcast-ttl' option with the 'stop-daemon' command"),
    ("--start-daemon primary", "illegal start-daemon parameter specified"),
    # refused by the table, with libipvs's wording
    ("-A -t 10.0.0.1:80", "Service already exists"),
    ("-a -t 10.0.0.1:80 -r 10.0.0.2", "Destination already exists"),
    ("-a -t 10.0.0.9:80 -r 10.0.0.2", "Service not defined"),
    ("-e -t 10.0.0.9:80 -r 10.0.0.2", "Service not defined"),
    ("-d -t 10.0.0.1:80 -r 10.0.0.7", "No such destination"),
    ("-e -t 10.0.0.1:80 -r 10.0.0.7", "No such destination"),
    ("-D -t 10.0.0.9:80", "No such service"),
    ("-E -t 10.0.0.9:80 -s rr", "No such service"),
    ("-Z -t 10.0.0.9:80", "No such service"),
    ("-L -t 10.0.0.9:80", "No such service"),
    ("-a -t 10.0.0.1:80 -r 10.0.0.4 -g", "--engine nft"),
]


@pytest.mark.parametrize("line,msg", BAD, ids=[b[0] for b in BAD])
def test_bad_command_line(eng, line, msg):
    before = snapshot(eng)
    rc, out, err = run(eng, line.split())
    assert rc != 0
    assert msg in err
    assert err.startswith("halb: ") and err.count("\n") == 1, err
    assert "Traceback" not in err + out
    assert snapshot(eng) == before


def test_good_edits_change_the_table(eng):
    assert run(eng, "-e -t 10.0.0.1:80 -r 10.0.0.3 -m -w 5".split())[0] == 0
    assert run(eng, "-E -t 10.0.0.1:80 -s wrr".split())[0] == 0
    assert run(eng, "-d -t 10.0.0.1:80 -r 10.0.0.2".split())[0] == 0
    rc, out, _ = run(eng, ["-S", "-n"])
    assert rc == 0
    assert out == "-A -t 10.0.0.1:80 -s wrr\n-a -t 10.0.0.1:80 -r 10.0.0.3:80 -m -w 5\n"
    rc, out, _ = run(eng, ["--set", "100", "0", "20"])
    assert run(eng, ["-L", "--timeout"])[1] == "Timeout (tcp tcpfin udp): 100 120 20\n"
    assert run(eng, ["-C"])[0] == 0
    assert run(eng, ["-S"])[1] == ""


RESTORE_BAD = [
    # a syntax problem on line 3: nothing of lines 1-2 applies
    ("-A -t 10.0.0.5:80 -s rr\n-a -t 10.0.0.5:80 -r 10.0.0.6 -m\n-a -t 10.0.0.5:80 -r 10.0.0.7 -w x\n",
     "line 3: illegal weight specified"),
    # a table problem on line 4 (duplicate), found before anything is applied
    ("-A -t 10.0.0.5:80 -s rr\n# comment\n-a -t 10.0.0.5:80 -r 10.0.0.6 -m\n-a -t 10.0.0.5:80 -r 10.0.0.6 -m\n",
     "line 4: Destination already exists"),
    ("-C\n-A -t 10.0.0.5:80 -s nosuch\n", "line 2: Scheduler or persistence engine not found"),
    ("-a -t 10.0.0.8:80 -r 10.0.0.6 -m\n", "line 1: Service not defined"),
]


@pytest.mark.parametrize("text,msg", RESTORE_BAD)
def test_restore_with_a_bad_line_applies_nothing(eng, text, msg):
    before = snapshot(eng)
    calls = eng.calls
    rc, out, err = run(eng, ["-R"], stdin=text)
    assert rc != 0 and msg in err and err.count("\n") == 1
    assert snapshot(eng) == before and eng.calls == calls


def test_save_then_restore_round_trips(eng):
    run(eng, "-A -u 10.0.0.1:53 -s sh -b sh-port -o -p 30 -M 255.255.255.0".split())
    run(eng, "-a -u 10.0.0.1:53 -r 10.0.0.2:5353 -m -w 0 -x 50 -y 10".split())
    saved = run(eng, ["-S"])[1]
    saved_n = run(eng, ["-S", "-n"])[1]
    before = snapshot(eng)
    calls = eng.calls
    assert run(eng, ["-C"])[0] == 0
    rc, _, err = run(eng, ["-R"], stdin=saved)
    assert rc == 0, err
    assert snapshot(eng) == before
    assert eng.calls == calls + 2  # -C, then the whole restore as ONE execute()
    assert run(eng, ["-S", "-n"])[1] == saved_n


def test_engine_default_gate_forces_the_service_port(monkeypatch, tmp_path):
    """No forwarding option: the engine's default applies; with direct
    routing as default the real-server port becomes the service's (ipvsadm's
    rule), while a masq default keeps the given port."""
    gate = MemEngine(fwd_methods=("gate", "masq", "ipip"), default_fwd="gate")
    gate.run_dir = tmp_path
    monkeypatch.setattr(cli_ipvsadm, "open_engine", lambda ctx: gate)
    assert run(gate, "-A -t 10.0.0.1:80 -s rr".split())[0] == 0
    assert run(gate, "-a -t 10.0.0.1:80 -r 10.0.0.2:8080".split())[0] == 0
    assert run(gate, "-a -t 10.0.0.1:80 -r 10.0.0.3:8080 -m".split())[0] == 0
    rc, _, err = run(gate, ["-R"], stdin="-a -t 10.0.0.1:80 -r 10.0.0.4:8080\n")
    assert rc == 0, err
    assert run(gate, ["-S", "-n"])[1] == ("-A -t 10.0.0.1:80 -s rr\n"
                                          "-a -t 10.0.0.1:80 -r 10.0.0.2:80 -g -w 1\n"
                                          "-a -t 10.0.0.1:80 -r 10.0.0.3:8080 -m -w 1\n"
                                          "-a -t 10.0.0.1:80 -r 10.0.0.4:80 -g -w 1\n")
    masq = MemEngine()
    masq.run_dir = tmp_path
    monkeypatch.setattr(cli_ipvsadm, "open_engine", lambda ctx: masq)
    run(masq, "-A -t 10.0.0.1:80 -s rr".split())
    run(masq, "-a -t 10.0.0.1:80 -r 10.0.0.2:8080".split())
    assert "-r 10.0.0.2:8080 -m -w 1" in run(masq, ["-S", "-n"])[1]


def test_listing_variants_through_the_cli(eng):
    rc, out, _ = run(eng, ["-L", "--daemon"])
    assert rc == 0 and out == ""  # no sync daemon runs: ipvsadm prints nothing
    rc, out, _ = run(eng, [])  # bare `ipvsadm` lists the table
    assert rc == 0 and out.startswith("IP Virtual Server version 1.2.1 (size=4096)\n")
    rc, out, _ = run(eng, ["-Ln", "-t", "10.0.0.1:80", "--thresholds"])
    assert rc == 0 and out.splitlines()[0].startswith("Prot LocalAddress:Port            Uthreshold")
    rc, out, _ = run(eng, ["-h"])
    assert rc == 0 and "--tcp-service" in out
    rc, out, _ = run(eng, ["--version"])
    assert rc == 0 and out.startswith("ipvsadm v1.31")
