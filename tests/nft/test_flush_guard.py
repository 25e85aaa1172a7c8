"""`halb nft flush` honours HALB_NFT_HOST_GUARD like every other nft command
(issue 13): in the machine's own namespace it refuses, one line, before it
touches anything."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.root


def test_flush_refuses_the_host_namespace_under_the_guard(tmp_path):
    before = subprocess.run(["ip", "rule", "list"], capture_output=True, text=True).stdout
    env = dict(os.environ, HALB_NFT_HOST_GUARD="1")
    env.pop("HALB_NFT_HOST", None)
    r = subprocess.run([sys.executable, "-m", "halb", "--node", "guardtest", "--run-dir", str(tmp_path / "run"),
                        "--engine", "nft", "nft", "flush"], capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode != 0 and "HALB_NFT_HOST_GUARD=1 forbids it" in r.stderr, (r.stdout, r.stderr)
    assert len(r.stderr.strip().splitlines()) == 1 and "removed" not in r.stdout
    assert subprocess.run(["ip", "rule", "list"], capture_output=True, text=True).stdout == before
