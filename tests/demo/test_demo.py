"""The README's main job: `halb demo` (full cluster, root) and `halb demo --loopback`."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest

HALB = [sys.executable, "-m", "halb"]


def netns_names() -> set[str]:
    r = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    return {line.split()[0] for line in r.stdout.splitlines() if line.strip()}


@pytest.mark.timeout(120)
def test_loopback_demo_balances_and_counts():
    r = subprocess.run(HALB + ["demo", "--loopback"], capture_output=True, text=True, timeout=110)
    assert r.returncode == 0, r.stderr
    answers = re.search(r"x6 -> (.*)", r.stdout).group(1).split()
    assert sorted(answers) == ["N1"] * 3 + ["N2"] * 3
    assert all(a != b for a, b in zip(answers, answers[1:])), answers  # rr alternates
    assert "Masq" in r.stdout and "Conns" in r.stdout


@pytest.mark.root
@pytest.mark.timeout(420)
def test_full_demo_replays_the_articles_acceptance_tests():
    before = netns_names()
    r = subprocess.run(HALB + ["demo"], capture_output=True, text=True, timeout=400)
    out = r.stdout
    assert r.returncode == 0, out[-3000:] + r.stderr
    lab = re.search(r"^lab (\w+):", out, re.M).group(1)
    # step 2: N1 holds the VIP, the director lists both real servers, rr alternates
    assert re.search(r"VIP \S+ held by: N1$", out, re.M)
    first = re.search(r"client: curl \S+ x6 -> (.*)", out).group(1).split()
    assert sorted(first) == ["N1"] * 3 + ["N2"] * 3
    # step 3: without Apache on N2 only N1 answers; N2 comes back
    assert re.search(r"N2 removed from the table after [\d.]+s; client -> (N1 ){5}N1", out)
    assert re.search(r"re-added after [\d.]+s; client -> .*N2", out)
    # connection sync: N1's master feeds N2's backup; after the takeover N2's daemon is the master
    assert re.search(r"connection sync: N1: master sync daemon \(mcast=.*; N2: backup sync daemon", out)
    assert int(re.search(r"N2's backup sync daemon has received (\d+) connection entries", out).group(1)) > 0
    assert re.search(r"connection sync on N2 now: master sync daemon \(mcast=", out)
    # step 4: N2 takes over and serves alone
    m = re.search(r"answers after: (.*)", out)
    assert m and m.group(1).strip() == "N2"
    assert "node N1: is dead" in out
    # step 5: N2 stays director, N1 is a hidden-VIP real server again, no request fails
    assert re.search(r"VIP held by: N2; N1's lo: .*/32", out)
    last = re.findall(r"^client -> (.*)$", out, re.M)[-1].split()
    assert sorted(last) == ["N1"] * 3 + ["N2"] * 3, last
    assert "clean: no namespace, rule or process left" in out
    assert not {n for n in netns_names() - before if lab in n}
