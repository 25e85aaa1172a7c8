"""Resource agents (LSB scripts, OCF agents, resolution order) and the CLI's one-line errors."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from halb.heartbeat.config import Resource
from halb.resources import LSBScript, OCFAgent, ResourceError, make_agent

LSB = """#!/bin/sh
# a heartbeat-style resource script: state in a file named by its first argument
state="$1"
case "$2" in
  start) echo on > "$state" ;;
  stop) rm -f "$state" ;;
  status) if [ -f "$state" ]; then echo "$(basename $0) is running"; else echo "$(basename $0) is stopped"; fi ;;
  *) exit 2 ;;
esac
"""

OCF = """#!/bin/sh
# an OCF agent: parameters come as OCF_RESKEY_*, answers with OCF exit codes
: ${OCF_RESKEY_state:?}
case "$1" in
  start) [ -n "$OCF_ROOT" ] || exit 6; echo "$OCF_RESKEY_greeting" > "$OCF_RESKEY_state"; exit 0 ;;
  stop) rm -f "$OCF_RESKEY_state"; exit 0 ;;
  monitor) [ -f "$OCF_RESKEY_state" ] && exit 0 || exit 7 ;;
  meta-data) echo '<resource-agent name="Dummy"/>'; exit 0 ;;
  *) exit 3 ;;
esac
"""


def script(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)
    return path


def test_lsb_script_from_resource_d(tmp_path):
    ha = tmp_path / "ha.d"
    script(ha / "resource.d" / "myservice", LSB)
    state = tmp_path / "state"
    a = make_agent(Resource("myservice", (str(state),)), ha_dir=ha, node="N1", run_dir=tmp_path / "run")
    assert isinstance(a, LSBScript)
    assert a.status() is False          # "is stopped": not running
    a.start()
    assert state.exists() and a.status() is True
    a.stop()
    assert not state.exists() and a.status() is False


def test_lsb_failure_is_a_resource_error(tmp_path):
    ha = tmp_path / "ha.d"
    script(ha / "resource.d" / "broken", "#!/bin/sh\necho 'cannot start: no disk' >&2\nexit 1\n")
    a = make_agent(Resource("broken"), ha_dir=ha, node="N1", run_dir=tmp_path)
    with pytest.raises(ResourceError, match="broken start: exit 1 cannot start: no disk"):
        a.start()


def test_ocf_agent(tmp_path, monkeypatch):
    root = tmp_path / "ocf"
    script(root / "resource.d" / "halbtest" / "Dummy", OCF)
    monkeypatch.setenv("OCF_ROOT", str(root))
    state = tmp_path / "dummy.state"
    a = make_agent(Resource("ocf:halbtest:Dummy", (f"state={state}", "greeting=hello")),
                   ha_dir=tmp_path, node="N1", run_dir=tmp_path)
    assert isinstance(a, OCFAgent)
    assert a.status() is False          # monitor: 7 = not running
    a.start()
    assert state.read_text() == "hello\n" and a.status() is True
    assert "resource-agent" in a.meta_data()
    a.stop()
    assert a.status() is False
    # a plain name falls back to the heartbeat provider
    script(root / "resource.d" / "heartbeat" / "Dummy2", OCF)
    assert isinstance(make_agent(Resource("Dummy2", (f"state={state}",)), ha_dir=tmp_path, node="N1",
                                 run_dir=tmp_path), OCFAgent)
    with pytest.raises(ResourceError, match="no agent named Nothing"):
        make_agent(Resource("Nothing"), ha_dir=tmp_path, node="N1", run_dir=tmp_path)


def halb(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "halb", *args], capture_output=True, text=True, timeout=60, cwd=cwd)


def ha_dir(tmp_path, hacf="node N1 N2\nbcast lo\nkeepalive 1\ndeadtime 5\n", auth='auth 1\n1 md5 "s"\n',
           hares="N1 IPaddr2::10.0.0.1\n", mode=0o600):
    d = tmp_path / "ha.d"
    d.mkdir(exist_ok=True)
    (d / "ha.cf").write_text(hacf)
    (d / "authkeys").write_text(auth)
    (d / "authkeys").chmod(mode)
    (d / "haresources").write_text(hares)
    return d


@pytest.mark.parametrize("kw,node,expect", [
    (dict(mode=0o644), "N1", "authkeys: mode is 0644"),
    ({}, "N3", "'N3' (uname -n, or --node) is not one of the nodes"),
    (dict(hacf="node N1 N2\nbcast lo\nfrobnicate 1\n"), "N1", "ha.cf:3: unknown directive 'frobnicate'"),
    (dict(hares="N1 IPAddr2::$VIP ldirectord\n"), "N1", "haresources:1: IPaddr2: '$VIP' is not an IPv4 address"),
    (dict(auth="auth 2\n2 crc\n"), "N1", "crc, which anyone on the network can forge"),
    (dict(hares="N1 nosuchagent\n"), "N1", "haresources:1: resource 'nosuchagent': no agent named nosuchagent"),
])
def test_run_refuses_bad_config_in_one_line(tmp_path, kw, node, expect):
    d = ha_dir(tmp_path, **kw)
    r = halb("--node", node, "--run-dir", str(tmp_path / "run"), "heartbeat", "-c", str(d), "run")
    assert r.returncode != 0
    assert expect in r.stderr and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def test_cli_usage_and_no_daemon(tmp_path):
    r = halb("--run-dir", str(tmp_path), "heartbeat", "status")
    assert r.returncode == 3 and "no heartbeat daemon running" in r.stderr     # LSB: not running
    r = halb("heartbeat", "frob")
    assert r.returncode == 2 and "unknown command 'frob'" in r.stderr
    r = halb("heartbeat", "--help")
    assert r.returncode == 0 and "standby" in r.stdout


@pytest.mark.root
def test_unknown_interface_is_one_line(tmp_path):
    d = ha_dir(tmp_path, hacf="node N1 N2\nbcast nosuchif0\nkeepalive 1\ndeadtime 5\n", hares="")
    r = halb("--node", "N1", "--run-dir", str(tmp_path / "run"), "heartbeat", "-c", str(d), "run")
    assert r.returncode != 0 and "interface nosuchif0 does not exist" in r.stderr and "Traceback" not in r.stderr


def test_stonith_external_plugin(tmp_path):
    from halb.heartbeat.config import parse_hacf
    from halb.heartbeat import stonith

    marker = tmp_path / "resets"
    cmd = script(tmp_path / "power.sh", f"#!/bin/sh\n# args: OUTLET reset NODE\n"
                                        f"echo \"$1 $2 $3\" >> {marker}\n[ \"$3\" = N2 ] && echo \"$3 is off\" && exit 0\n"
                                        "echo \"no outlet for $3\"; exit 1\n")
    cfg = parse_hacf(f"node N1 N2\nbcast eth0\nstonith_host N1 external {cmd} outlet7\nstonith_host * bogus x\n", "ha.cf")
    with pytest.raises(Exception, match="ha.cf:4: stonith device type 'bogus' is not supported"):
        stonith.check_devices(cfg)
    cfg.stonith.pop()
    stonith.check_devices(cfg)
    (dev,) = stonith.devices_for(cfg, "N1")
    assert stonith.devices_for(cfg, "N2") == []      # this device may only be used from N1
    assert stonith.reset(dev, "N2") == (True, "N2 is off")
    ok, msg = stonith.reset(dev, "N3")
    assert not ok and msg == "no outlet for N3"
    assert marker.read_text() == "outlet7 reset N2\noutlet7 reset N3\n"
