"""The article's §6.3.6 acceptance tests 1-4, in the namespace lab: real Apache on N1 and N2,
lvsdr (halb realserver) on both, heartbeat with the article's ha.cf (fast timers), authkeys md5,
haresources `N1 IPAddr2::$VIP ldirectord`, ldirectord.cf (fast checks), nft engine."""
from __future__ import annotations

import collections
import sys
import time

import pytest

from halb.lab import article

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from hb_cluster import Cluster, wait_for  # noqa: E402

pytestmark = [pytest.mark.root]
pytest_plugins = ["halb.lab.testing"]

LDIRECTORD_CF_HEAD = "checktimeout=1\ncheckinterval=1\nquiescent=no\n"


def served(lab, n=8, timeout=2):
    """Who answers n fresh requests to the VIP; a timeout or error raises."""
    out = collections.Counter()
    for _ in range(n):
        status, body = lab.http_get("client0", "http://VIP/testcluster.html", timeout=timeout)
        assert status == 200
        out[body.strip()] += 1
    return out


def director_running(c, node):
    cfg = c.dir(node) / "ldirectord.cf"
    r = c.lab.run(node, [sys.executable, "-m", "halb", "--node", node, "--run-dir", str(c.run_dir(node)),
                         "--engine", "nft", "director", str(cfg), "status"])
    return r.returncode == 0


@pytest.mark.timeout(240)
def test_article_acceptance_tests_1_to_4(make_lab, tmp_path):
    lab = make_lab(nodes=2, clients=1, apache=True)
    c = Cluster(lab, tmp_path, haresources=article.haresources(lab.vip))
    try:
        for n in ("N1", "N2"):
            (c.dir(n) / "ldirectord.cf").write_text(article.ldirectord_cf(lab, LDIRECTORD_CF_HEAD))
            r = lab.run(n, [sys.executable, "-m", "halb", "--node", n, "--run-dir", str(c.base / n / "rs"),
                            "realserver", "start", "--haresources", str(c.dir(n) / "haresources")])
            assert r.returncode == 0, r.stderr + r.stdout
        c.start("N1")
        c.start("N2")
        wait_for(lambda: c.holders() == ["N1"], 15, what="N1 to hold the VIP")
        wait_for(lambda: director_running(c, "N1"), 30, what="the director on N1")
        wait_for(lambda: set(served(lab)) == {"N1", "N2"}, 30, 0.2, what="both nodes to serve through the VIP")

        # test 1: Apache stops on N2 -> the director takes N2 out; every request still answered
        lab.apache_stop("N2")
        wait_for(lambda: set(served(lab)) == {"N1"}, 30, 0.2, what="N2 out of the table")
        lab.apache_start("N2")
        wait_for(lambda: set(served(lab)) == {"N1", "N2"}, 30, 0.2, what="N2 back in the table")

        # test 2: heartbeat stops on N2 -> N1 says N2 is dead; service goes on
        c.stop("N2")
        wait_for(lambda: "node N2: is dead" in c.log("N1"), 10, what="N1 to declare N2 dead")
        assert set(served(lab)) == {"N1", "N2"} and c.holders() == ["N1"]
        c.start("N2")
        wait_for(lambda: c.status("N1")["nodes"]["N2"]["status"] == "up", 10, what="N2 back")

        # test 3: Apache and heartbeat stop on N1 -> N2 takes the VIP (off its lo), runs the director,
        # and alone serves
        lab.apache_stop("N1")
        c.stop("N1")
        wait_for(lambda: c.holders() == ["N2"], 10, what="N2 to take the VIP")
        assert not c.vip_on("N2", "lo") and c.vip_on("N1", "lo")
        wait_for(lambda: director_running(c, "N2"), 30, what="the director on N2")
        assert not director_running(c, "N1")
        wait_for(lambda: set(served(lab)) == {"N2"}, 30, 0.2, what="only N2 to serve")

        # test 4: N1 comes back; auto_failback off: N2 stays director and re-adds N1 as a real
        # server; N1 has the VIP on its hidden lo, so no request times out
        lab.apache_start("N1")
        c.start("N1")
        wait_for(lambda: set(served(lab)) == {"N1", "N2"}, 30, 0.2, what="N1 to serve again as a real server")
        assert c.holders() == ["N2"] and c.vip_on("N1", "lo")
        counts = served(lab, 20, timeout=2)   # no request may time out
        assert counts["N1"] >= 5 and counts["N2"] >= 5
    finally:
        c.close()


def sync_daemons(c, node) -> str:
    r = c.lab.run(node, [sys.executable, "-m", "halb", "--node", node, "--run-dir", str(c.run_dir(node)),
                         "--engine", "nft", "ipvsadm", "-L", "--daemon"])
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.mark.timeout(180)
def test_article_sync_daemons_follow_the_director(make_lab, tmp_path):
    """§6.3.8: both nodes run `ipvsadm --start-daemon backup` (lvsdr's start); the
    ldirectord resource turns the holder's backup daemon into the master and back
    when it gives the director up, as the article's edited resource script does."""
    lab = make_lab(nodes=2, clients=1, apache=True)
    c = Cluster(lab, tmp_path, haresources=article.haresources(lab.vip))
    try:
        for n in ("N1", "N2"):
            (c.dir(n) / "ldirectord.cf").write_text(article.ldirectord_cf(lab, LDIRECTORD_CF_HEAD))
            c.run_dir(n).mkdir(parents=True, exist_ok=True)
            r = lab.run(n, [sys.executable, "-m", "halb", "--node", n, "--run-dir", str(c.run_dir(n)),
                            "--engine", "nft", "ipvsadm", "--start-daemon", "backup",
                            "--mcast-interface", lab.node(n).iface, "--syncid", "7",
                            "--sync-key-file", str(c.dir(n) / "authkeys")])
            assert r.returncode == 0, r.stderr
        c.start("N1")
        c.start("N2")
        wait_for(lambda: c.holders() == ["N1"], 15, what="N1 to hold the VIP")
        wait_for(lambda: director_running(c, "N1"), 30, what="the director on N1")
        wait_for(lambda: sync_daemons(c, "N1").startswith("master sync daemon (mcast="), 10,
                 what="N1's backup sync daemon turned master")
        assert "syncid=7" in sync_daemons(c, "N1")
        assert sync_daemons(c, "N2").startswith("backup sync daemon")
        assert "sync: backup sync daemon replaced by a master one" in c.log("N1")

        # N1 hands over (hb_standby): N2's daemon becomes the master, N1's the backup again
        r = lab.run("N1", [sys.executable, "-m", "halb", "--node", "N1", "--run-dir", str(c.run_dir("N1")),
                           "heartbeat", "standby"])
        assert r.returncode == 0, r.stderr
        wait_for(lambda: c.holders() == ["N2"], 15, what="N2 to take the VIP")
        wait_for(lambda: sync_daemons(c, "N2").startswith("master sync daemon"), 30, what="N2's master")
        wait_for(lambda: sync_daemons(c, "N1").startswith("backup sync daemon"), 30, what="N1's backup")
    finally:
        c.close()
        for n in ("N1", "N2"):
            for role in ("master", "backup"):
                lab.run(n, [sys.executable, "-m", "halb", "--node", n, "--run-dir", str(c.run_dir(n)),
                            "--engine", "nft", "ipvsadm", "--stop-daemon", role])
