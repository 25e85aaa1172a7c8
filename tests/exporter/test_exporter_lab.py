"""The exporter on the demo's cluster (nft engine, heartbeat, director, sync):
what Prometheus scrapes from each node before and after a real server stops
and after the director's node crashes, and the events each node kept."""
from __future__ import annotations

import pytest
from lab_cluster import ObservedCluster, series, value, wait_for

pytestmark = [pytest.mark.root, pytest.mark.slow]


@pytest.fixture(scope="module")
def cl():
    c = ObservedCluster()
    try:
        yield c.up()
    finally:
        if c.lab is not None:
            c.down()


def test_nft_table_heartbeat_director_sync_scraped(cl):
    lab = cl.lab
    vip, rip1, rip2 = lab.vip, lab.node("N1").rip, lab.node("N2").rip
    answers = cl.curl(6)
    assert all(not a.startswith("ERROR") for a in answers), answers

    def counted():
        s = cl.scrape("N1")
        return s if value(s, "node_ipvs_connections_total") >= 6 else None

    s1 = wait_for(counted, 20, "N1's exporter to count the client's 6 connections")
    rows = series(s1, "node_ipvs_backend_weight", local_address=vip, local_port="80", proto="TCP", local_mark="")
    assert {dict(k[1])["remote_address"] for k in rows} == {rip1, rip2}
    assert all(v == 1 for v in rows.values())
    per_real = series(s1, "halb_ipvs_backend_connections_total", local_address=vip)
    assert sum(per_real.values()) >= 6 and all(v >= 1 for v in per_real.values())   # wlc spread them
    assert value(s1, "halb_engine_info", engine="nft") == 1
    assert value(s1, "halb_heartbeat_active") == 1
    (held,) = series(s1, "halb_heartbeat_group_held").values()
    assert held == 1
    assert value(s1, "halb_heartbeat_node_up", node="N2") == 1
    assert value(s1, "halb_heartbeat_failovers_total") == 1
    s1 = wait_for(lambda: (lambda s: s if len(series(s, "halb_director_check_duration_seconds")) == 2 else None)(
        cl.scrape("N1")), 10, "a regular check of both real servers")
    for rip in (rip1, rip2):
        assert value(s1, "halb_director_real_server_up", real=f"{rip}:80") == 1
        assert 0 < value(s1, "halb_director_check_duration_seconds", real=f"{rip}:80") < 1
    assert value(s1, "halb_exporter_source_up", source="sync master") == 1
    assert "halb_sync_sent_entries_total" in {k[0] for k in s1}
    # N2: a backup, no VIP, no director, no table of its own
    s2 = cl.scrape("N2")
    assert series(s2, "halb_heartbeat_group_held") and all(v == 0 for v in series(s2, "halb_heartbeat_group_held").values())
    assert series(s2, "halb_director_real_server_up") == {}
    assert value(s2, "halb_exporter_source_up", source="sync backup") == 1
    lag = value(s2, "halb_sync_lag_seconds", role="backup")
    assert 0 <= lag < 5
    state = cl.get_json("N1", "/api/state")
    (svc,) = state["services"]
    assert svc["addr"] == vip and {d["addr"] for d in svc["dests"]} == {rip1, rip2}
    assert state["heartbeat"]["groups"][0]["holders"] == ["N1"]


def test_real_server_stop_and_failover_seen_in_metrics_and_events(cl):
    lab = cl.lab
    rip2 = lab.node("N2").rip
    lab.apache_stop("N2")
    # the check's verdict and the table edit that follows it may land in two readings: wait for both
    s = wait_for(lambda: (lambda s: s if value(s, "halb_director_real_server_up", real=f"{rip2}:80") == 0
                          and not series(s, "node_ipvs_backend_weight", remote_address=rip2) else None)(
        cl.scrape("N1")), 30, "N1's exporter to show N2's Apache down and removed (quiescent=no)")
    assert value(s, "halb_director_check_failures", real=f"{rip2}:80") >= 1
    evs = cl.get_json("N1", "/api/events")["events"]
    assert any(e["kind"] == "real_removed" and rip2 in e["subject"] and "Deleted real server" in e["text"]
               for e in evs), evs
    lab.apache_start("N2")
    wait_for(lambda: value(cl.scrape("N1"), "halb_director_real_server_up", real=f"{rip2}:80") == 1, 30,
             "N2's Apache back")
    assert any(e["kind"] == "real_restored" or e["kind"] == "real_added"
               for e in cl.get_json("N1", "/api/events")["events"] if rip2 in e["subject"])

    cl.crash("N1")
    def taken():
        s = cl.scrape("N2")
        return s if all(v == 1 for v in series(s, "halb_heartbeat_group_held").values()) \
            and series(s, "node_ipvs_backend_weight") else None

    s2 = wait_for(taken, 30, "N2's exporter to show the VIP and the table taken over")
    assert value(s2, "halb_heartbeat_node_up", node="N1") == 0
    assert value(s2, "halb_heartbeat_nodes", state="dead") == 1
    assert value(s2, "halb_heartbeat_failovers_total") == 1
    assert value(s2, "halb_heartbeat_node_deaths_total", node="N1") >= 1
    wait_for(lambda: value(cl.scrape("N2"), "halb_exporter_source_up", source="sync master") == 1, 30,
             "N2's sync daemon to be the master")
    evs = cl.get_json("N2", "/api/events")["events"]
    kinds = [e["kind"] for e in evs]
    dead = next(e for e in evs if e["kind"] == "node_dead" and e["subject"] == "N1")
    acq = next(e for e in evs if e["kind"] == "group_acquired")
    assert dead["t"] <= acq["t"] and acq["node"] == "N2" and "Acquiring resource group" in acq["text"]
    assert "sync_role" in kinds and "service_added" in kinds
    # on the node itself: `halb events`
    r = lab.run("N2", ["python3", "-m", "halb", "events", "--since", "10m"], env=dict(__import__("os").environ))
    assert r.returncode == 0, r.stderr
    assert "node_dead N1" in r.stdout and "group_acquired" in r.stdout
    # N1's journal outlived the crash: what N1 decided before it died is still there
    r = lab.run("N1", ["python3", "-m", "halb", "events", "--json", "--kind", "group_acquired"])
    assert r.returncode == 0 and '"node": "N1"' in r.stdout, (r.stdout, r.stderr)


def test_reloads_are_events_and_counted(cl):
    """Runs after the failover: N2 holds the VIP and runs the director."""
    lab = cl.lab
    cfg = cl.base / "N2" / "ha.d" / "ldirectord.cf"
    r = lab.run("N2", ["python3", "-m", "halb", "--engine", "nft", "director", str(cfg), "reload"])
    assert r.returncode == 0, r.stdout + r.stderr
    r = lab.run("N2", ["python3", "-m", "halb", "heartbeat", "reload"])
    assert r.returncode == 0, r.stdout + r.stderr
    wait_for(lambda: value(cl.scrape("N2"), "halb_director_reloads_total") == 1, 15, "the reload counted")
    def both():
        evs = [e for e in cl.get_json("N2", "/api/events")["events"] if e["kind"] == "reload"]
        return {e["subject"] for e in evs} >= {"ldirectord.cf", "heartbeat"}
    wait_for(both, 15, "both reloads in N2's events")


def test_table_restored_after_a_loss_is_an_event(cl):
    """A firewall reload wipes halb's table on N2 (the director now): the
    director's healer puts it back, and says so in the events."""
    lab = cl.lab
    r = lab.run("N2", ["nft", "flush", "ruleset"])
    assert r.returncode == 0, r.stderr
    ev = wait_for(lambda: next((e for e in cl.get_json("N2", "/api/events")["events"]
                                if e["kind"] == "table_restored" and e["node"] == "N2"), None), 15,
                  "the restored table in N2's events")
    assert "Restored" in ev["text"] and "behind halb's back" in ev["text"]
    rip2 = lab.node("N2").rip        # N1 crashed earlier: N2 is the one real server left
    wait_for(lambda: series(cl.scrape("N2"), "node_ipvs_backend_weight", remote_address=rip2), 15,
             "N2's real server in N2's table again")
    assert not any(x.startswith("ERROR") for x in cl.curl(2))
