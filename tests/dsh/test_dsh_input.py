"""Bad input and file semantics of halb dsh: parsers, option rules, and the
real CLI in a subprocess (one clear line, exit status 255, no traceback)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import halb
from halb.dsh.config import (DshConf, expand_spec, parse_dsh_conf, parse_ha_cf_nodes,
                             parse_machine_list, split_commas)
from halb.dsh.errors import DshUsageError
from halb.dsh.options import Files, Plan, parse
from halb.errors import ConfigError, UsageError

SRC = str(Path(halb.__file__).resolve().parents[1])


def dsh(*args, input=None, timeout=60):
    env = dict(os.environ, PYTHONPATH=SRC, HOME="/nonexistent")
    env.pop("HALB_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "halb", "dsh", *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=timeout, input=input)


@pytest.fixture
def conf(tmp_path):
    d = tmp_path / "dsh"
    (d / "group").mkdir(parents=True)
    (d / "machines.list").write_text("N1\n  N2  \n# N9\n\nN1\nweb[01-02]\n")
    (d / "group" / "web").write_text("N2\nroot@N3\n")
    return d


def one_error_line(r, *needles):
    err = r.stderr.strip().splitlines()
    assert len(err) == 1, r.stderr
    assert "Traceback" not in r.stderr
    for n in needles:
        assert n in err[0], err[0]
    return err[0]


# ---- pure parsers -------------------------------------------------------------

def test_machine_list_rules():
    assert parse_machine_list("a\n  b \n#c\n\n\t# d\ne\n") == ["a", "b", "e"]


def test_split_commas_keeps_nodeset_brackets():
    assert split_commas("N1,root@N[2,4-5],,x") == ["N1", "root@N[2,4-5]", "x"]


def test_expand_spec_nodesets_and_users():
    assert expand_spec("N[1-3]") == ["N1", "N2", "N3"]
    assert expand_spec("root@web[01-02].lan") == ["root@web01.lan", "root@web02.lan"]
    assert expand_spec("10.0.0.1") == ["10.0.0.1"]
    with pytest.raises(UsageError, match=r"bad node set 'N\[1-'"):
        expand_spec("N[1-")
    with pytest.raises(UsageError, match="expected user@host"):
        expand_spec("root@")


def test_dsh_conf_keys_and_errors():
    c, warn = parse_dsh_conf("# c\nremoteshell = ssh\nremoteshellopt=-p2222\nremoteshellopt = -4\n"
                             "forklimit=3\nshowmachinenames = 1\nverbose=0\nwhatever=1\n", "dsh.conf")
    assert (c.remoteshell, c.remoteshellopt, c.forklimit, c.showmachinenames, c.verbose) == \
        ("ssh", ["-p2222", "-4"], 3, True, False)
    assert warn == ["dsh.conf:8: unknown key 'whatever' ignored"]
    with pytest.raises(ConfigError, match=r"^dsh.conf:2: waitshell: 'yes' must be 0 or 1$"):
        parse_dsh_conf("verbose=1\nwaitshell=yes\n", "dsh.conf")
    with pytest.raises(ConfigError, match=r"^f:1: expected 'key = value'"):
        parse_dsh_conf("remoteshell ssh\n", "f")
    with pytest.raises(ConfigError, match=r"^f:1: forklimit: 'x' is not an integer"):
        parse_dsh_conf("forklimit=x\n", "f")
    assert parse_dsh_conf("", None)[0] == DshConf()


def test_ha_cf_node_lines():
    text = "keepalive 2\nnode N1   # first\nnode N2 N3\nnodes x\n#node N9\n"
    assert parse_ha_cf_nodes(text) == ["N1", "N2", "N3"]
    with pytest.raises(ConfigError, match=":2: 'node' directive without"):
        parse_ha_cf_nodes("keepalive 2\nnode\n", "ha.cf")


# ---- option semantics (files on disk, nothing run) ------------------------------

def plan(conf, *argv) -> Plan:
    p = parse(["--config-dir", str(conf), *argv])
    assert isinstance(p, Plan)
    return p


def test_selection_order_and_merging(conf):
    p = plan(conf, "-a", "-g", "web", "-m", "N4,N[5-6]", "-m", "N1", "true")
    assert p.hosts == ["N1", "N2", "web01", "web02", "root@N3", "N4", "N5", "N6"]
    assert p.command == ["true"]


def test_modes_follow_dsh(conf):
    assert plan(conf, "-a", "x").wait is True            # dsh's default: -w
    assert plan(conf, "-a", "-c", "x").fanout == 4       # all at once
    assert plan(conf, "-c", "-w", "-a", "x").wait is True  # last one wins
    assert plan(conf, "-F", "2", "-a", "x").fanout == 2  # -F implies -c
    assert plan(conf, "-M", "-a", "x").show_names is True
    assert plan(conf, "-M", "-H", "-a", "x").show_names is False
    p = plan(conf, "-m", "u@h", "-r", "ssh", "-o", "-p2222", "echo", "a b")
    assert p.argv_for("u@h") == ["ssh", "-o", "BatchMode=yes", "-p2222", "-l", "u", "--", "h", "echo", "a b"]
    p = plan(conf, "-m", "h", "-o", "-oBatchMode=no", "x")
    assert p.argv_for("h") == ["ssh", "-oBatchMode=no", "--", "h", "x"]


def test_posix_option_parsing_stops_at_the_command(conf):
    p = plan(conf, "-a", "ls", "-l", "-a")
    assert p.command == ["ls", "-l", "-a"]


def test_cluster_group_from_ha_cf(conf, tmp_path):
    ha = tmp_path / "ha.cf"
    ha.write_text("# the article's ha.cf\nmcast eth0 225.0.0.7 694 1 0\nkeepalive 2\ndeadtime 10\n"
                  "warntime 6\ninitdead 60\nnode       N1\nnode       N2\nauto_failback off\n")
    assert plan(conf, "--ha-cf", str(ha), "-g", "cluster", "x").hosts == ["N1", "N2"]
    (conf / "group" / "cluster").write_text("N7\n")  # a group file wins, as in dsh
    assert plan(conf, "--ha-cf", str(ha), "-g", "cluster", "x").hosts == ["N7"]


def test_home_dir_then_etc(tmp_path):
    home = tmp_path / "home"
    (home / ".dsh").mkdir(parents=True)
    (home / ".dsh" / "machines.list").write_text("mine\n")
    files = Files(None, None, home=str(home))
    assert files.first("machines.list")[1] == "mine\n"
    assert files.where("group/x") == f"{home}/.dsh/group/x nor /etc/dsh/group/x"


@pytest.mark.parametrize("argv, message", [
    (["-a", "x"], "machines.list could not be opened for read"),
    (["-g", "nope", "x"], "unknown group 'nope'"),
    (["-g", "../../etc/passwd", "x"], "bad group name"),
    (["-Z", "-a", "x"], "option -Z not recognized"),
    (["--frobnicate", "-a", "x"], "option --frobnicate not recognized"),
    (["-m"], "option -m requires argument"),
    (["-m", "N1"], "no command given"),
    (["x"], "no machine specified"),
    (["-m", "N1", "-F", "abc", "x"], "-F: 'abc' is not an integer"),
    (["-m", "N1", "-F", "2", "-w", "x"], "cannot be specified at the same time"),
    (["-m", "N1", "-i", "cat"], "needs concurrent shell"),
    (["-m", "N1", "-t", "0", "x"], "must be a positive number"),
    (["-m", "N1", "-t", "soon", "x"], "is not a number"),
    (["-m", "N[1-", "x"], "bad node set 'N[1-'"),
    (["-m", "N1", "-r", "no-such-rsh", "x"], "remote shell 'no-such-rsh' not found"),
    (["-m", "N1", "-n", "4", "x"], "not supported"),
    (["-m", "N1", "-e", "/nonexistent/script.sh"], "script /nonexistent/script.sh"),
])
def test_bad_invocations(tmp_path, argv, message):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DshUsageError, match=None) as ei:
        parse(["--config-dir", str(empty), *argv])
    assert message in str(ei.value)
    assert ei.value.exit_code == 255


# ---- the real command line -------------------------------------------------------

def test_cli_missing_machines_list(tmp_path):
    r = dsh("--config-dir", tmp_path, "-a", "date")
    assert r.returncode == 255
    one_error_line(r, "halb: dsh: file", "machines.list could not be opened for read")


def test_cli_unknown_group_and_bad_option(conf):
    r = dsh("--config-dir", conf, "-g", "nosuch", "date")
    assert r.returncode == 255
    one_error_line(r, "unknown group 'nosuch'", str(conf / "group" / "nosuch"))
    r = dsh("--config-dir", conf, "-a", "-Q", "date")
    assert r.returncode == 255
    one_error_line(r, "option -Q not recognized")
    r = dsh("--config-dir", conf / "missing", "-a", "date")
    assert r.returncode == 255
    one_error_line(r, "--config-dir", "no such directory")


def test_cli_bad_dsh_conf_names_file_and_line(conf):
    (conf / "dsh.conf").write_text("remoteshell=ssh\n\nforklimit = many\n")
    r = dsh("--config-dir", conf, "-a", "date")
    assert r.returncode == 255
    one_error_line(r, f"{conf / 'dsh.conf'}:3: forklimit: 'many' is not an integer")


def test_cli_bad_machine_in_list_names_file_and_line(conf):
    (conf / "machines.list").write_text("N1\nN[2-\n")
    r = dsh("--config-dir", conf, "-a", "date")
    assert r.returncode == 255
    one_error_line(r, f"{conf / 'machines.list'}:2: bad node set 'N[2-'")


def test_cli_unreachable_host_is_reported(conf, tmp_path):
    # nothing listens on 127.0.0.1:1: ssh fails at once, dsh says so and counts it
    kh = tmp_path / "kh"
    r = dsh("--config-dir", conf, "-c", "-m", "127.0.0.1,127.0.0.1", "-o", "-p1",
            "-o", f"-oUserKnownHostsFile={kh}", "-o", "-oConnectTimeout=5", "true")
    assert r.returncode == 1, r.stderr
    assert "halb dsh: 127.0.0.1: ssh failed (exit 255): ssh: connect to host 127.0.0.1 port 1: " \
           "Connection refused" in r.stderr
    assert "1 of 1 machines failed" in r.stderr
    assert "Traceback" not in r.stderr


def test_cli_help_and_version():
    r = dsh("--help")
    assert r.returncode == 0 and "-g, --group NAME" in r.stdout and "exit status" in r.stdout
    r = dsh("-V")
    assert r.returncode == 0 and r.stdout.startswith("halb dsh ")


def test_dsh_conf_order_matters_like_dsh(tmp_path):
    d = tmp_path / "c"
    d.mkdir()
    (d / "machines.list").write_text("N1\nN2\nN3\n")
    (d / "dsh.conf").write_text("waitshell=1\nforklimit=2\n")
    p = parse(["--config-dir", str(d), "-a", "x"])
    assert (p.wait, p.fanout) == (False, 2)
    (d / "dsh.conf").write_text("forklimit=2\nwaitshell=1\n")
    with pytest.raises(DshUsageError, match="cannot be specified at the same time"):
        parse(["--config-dir", str(d), "-a", "x"])
    (d / "dsh.conf").write_text("forklimit=0\n")  # dsh: concurrent, no limit
    assert parse(["--config-dir", str(d), "-a", "x"]).fanout == 3


def test_cluster_group_from_minimal_ha_cf_warns(conf, tmp_path):
    ha = tmp_path / "ha.cf"
    ha.write_text("node N1 N2\nnode N3\n")  # no link: heartbeat refuses it, dsh only needs the nodes
    p = plan(conf, "--ha-cf", str(ha), "-g", "cluster", "x")
    assert p.hosts == ["N1", "N2", "N3"]
    assert any("heartbeat would refuse this file" in w for w in p.warnings)
    ha.write_text("keepalive 2\nnode\n")
    with pytest.raises(ConfigError, match=r"ha.cf:2: 'node' directive without a node name"):
        plan(conf, "--ha-cf", str(ha), "-g", "cluster", "x")
    r = dsh("--config-dir", conf, "--ha-cf", tmp_path / "missing.cf", "-g", "cluster", "true")
    assert r.returncode == 255
    one_error_line(r, "unknown group 'cluster'", "missing.cf")


def test_machine_names_starting_with_a_dash_never_reach_ssh(tmp_path, conf):
    """`-m -oProxyCommand=...` used to run a local command through ssh: any
    machine or user name starting with '-' is refused (command line and
    files), and ssh's options always end with `--` before the host."""
    pwned = tmp_path / "pwned"
    evil = f"-oProxyCommand=touch {pwned}"
    r = dsh("--config-dir", conf, "-m", evil.replace(" ", ""), "-r", "ssh", "true")
    one_error_line(r, "cannot start with '-'")
    assert r.returncode == 255
    (conf / "group" / "evil").write_text("N1\n-oProxyCommand=true\n")
    r = dsh("--config-dir", conf, "-g", "evil", "true")
    one_error_line(r, "cannot start with '-'")
    for spec in ("-lroot@N1", "-x@N1", "N[1-2],-o"):
        with pytest.raises(DshUsageError, match="cannot start with '-'"):
            for s in split_commas(spec):
                expand_spec(s)
    assert not pwned.exists()
    argv = plan(conf, "-m", "N1", "-r", "ssh", "uname").argv_for("N1")
    assert argv[argv.index("N1") - 1] == "--"
