"""`halb chaos --duration 60 --seed 1` in the lab with the default faults:
the run completes, its exit status matches the JSON verdict, nothing is left
behind (namespaces, rules, processes, VIPs), the VIP is never on two nodes.
The verdict itself is not clean yet (downloads and persistence across
faults: see README "halb chaos"); when it is, assert exit 0 here."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest


@pytest.mark.root
@pytest.mark.timeout(300)
def test_chaos_60s_seed_1(tmp_path):
    out = tmp_path / "chaos.json"
    r = subprocess.run([sys.executable, "-m", "halb", "chaos", "--duration", "60", "--seed", "1",
                        "--json", str(out)], capture_output=True, text=True, timeout=280)
    assert "verdict:" in r.stdout, r.stdout[-3000:] + r.stderr[-3000:]
    res = json.loads(out.read_text())
    v = res["verdict"]
    assert r.returncode == (0 if v["clean"] else 1)
    assert [s["fault"] for s in res["schedule"]] == [w["fault"] for w in v["faults"]]
    t = v["totals"]
    assert t["faults"] >= 3 and t["requests"] > 500 and t["downloads"] > 10
    assert t["leftovers"] == 0, v["leftovers"]
    assert t["double_vip_ms"] == 0 and t["unrecovered"] == 0
    print(r.stdout)
