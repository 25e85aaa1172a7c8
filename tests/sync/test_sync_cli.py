"""The sync daemon's command line without root: refusals are one line and a
non-zero exit; the key file rules."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from halb.errors import ConfigError
from halb.sync.daemon import load_key


def halb(tmp_path, *args, engine="proxy"):
    env = dict(os.environ, HALB_NODE="t1")
    r = subprocess.run([sys.executable, "-m", "halb", "--run-dir", str(tmp_path / "run"), "--engine", engine,
                        *args], capture_output=True, text=True, timeout=30, env=env)
    return r.returncode, r.stdout, r.stderr


@pytest.mark.parametrize("args,rc,msg", [
    (["ipvsadm", "--start-daemon", "master"], 1, "the connection-sync daemon works with the nft engine"),
    (["ipvsadm", "--start-daemon", "standby"], 2, "illegal start-daemon parameter specified"),
    (["ipvsadm", "--stop-daemon", "standby"], 2, "illegal start_daemon specified"),
    (["ipvsadm", "--start-daemon", "master", "--syncid", "256"], 2, "illegal syncid specified"),
    (["ipvsadm", "--start-daemon", "master", "--mcast-ttl", "0"], 2, "illegal mcast-ttl specified"),
    (["ipvsadm", "--start-daemon", "master", "--mcast-interface", "a" * 16], 2, "illegal mcast-interface"),
    (["ipvsadm", "--start-daemon", "master", "extra"], 2, "unexpected argument extra"),
    (["ipvsadm", "-L", "--sync-key-file", "x"], 2, "Illegal 'sync-key-file' option with the 'list' command"),
    (["sync", "run"], 2, "give the role first"),
    (["sync", "run", "backup", "--mcast-port", "x"], 2, "illegal mcast-port specified"),
    (["sync", "stop"], 2, "give the role to stop"),
    (["sync", "frobnicate"], 2, "unknown action 'frobnicate'"),
    (["sync", "status", "primary"], 2, "unknown argument 'primary'"),
])
def test_refusals(tmp_path, args, rc, msg):
    code, out, err = halb(tmp_path, *args)
    assert code == rc and msg in err, (code, err)
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_nothing_running(tmp_path):
    assert halb(tmp_path, "ipvsadm", "-L", "--daemon") == (0, "", "")
    code, out, _ = halb(tmp_path, "sync", "status")
    assert code == 3 and out == "no sync daemon is running on node t1\n"
    code, out, _ = halb(tmp_path, "sync", "status", "--json")
    assert code == 3 and out.strip() == "{}"


def test_key_files(tmp_path):
    k = tmp_path / "key"
    k.write_text("  a long enough key \n")
    k.chmod(0o600)
    assert load_key(str(k)) == b"a long enough key"
    k.chmod(0o640)
    with pytest.raises(ConfigError, match="readable by its owner only"):
        load_key(str(k))
    k.write_text("short")
    k.chmod(0o600)
    with pytest.raises(ConfigError, match="shorter than 8 bytes"):
        load_key(str(k))
    a = tmp_path / "authkeys"
    a.write_text("auth 3\n1 crc\n3 sha1 \"the cluster's secret\"\n")
    a.chmod(0o600)
    assert load_key(str(a)) == b"the cluster's secret"
    a.write_text("auth 1\n1 crc\n")
    with pytest.raises(ConfigError, match="no secret to sign with"):
        load_key(str(a))
    with pytest.raises(ConfigError, match="cannot read the sync key"):
        load_key(str(tmp_path / "missing"))


def test_sync_signs_by_default_and_unsigned_needs_an_explicit_opt_in(tmp_path, monkeypatch):
    """No --sync-key-file: the node's heartbeat authkeys signs; none there: a
    refusal naming the way out, unless --sync-unsigned is given."""
    from halb.errors import ConfigError
    from halb.ipvsadm.parse import parse_argv
    from halb.sync.daemon import find_key_file, load_key

    missing = tmp_path / "authkeys"
    monkeypatch.setenv("HALB_SYNC_KEY_FILE", str(missing))
    with pytest.raises(ConfigError, match="no key to sign the sync datagrams with.*--sync-unsigned"):
        find_key_file("", False)
    assert find_key_file("", True) == ""
    missing.write_text("auth 1\n1 sha1 s3cret-for-sync\n")
    missing.chmod(0o600)
    assert find_key_file("", False) == str(missing) and load_key(str(missing)) == b"s3cret-for-sync"
    assert find_key_file("/other/key", False) == "/other/key"
    d = parse_argv(["--start-daemon", "backup", "--sync-unsigned"]).daemon
    assert d["unsigned"] is True and d["key_file"] == ""
    assert parse_argv(["--start-daemon", "backup"]).daemon["unsigned"] is False
