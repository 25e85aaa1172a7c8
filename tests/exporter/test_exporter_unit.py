"""The exporter's pure parts: a snapshot as Prometheus text (parsed back with
prometheus-client's parser), node_exporter's IPVS names and labels, the
events journal (rotation, torn lines, several writers) and `halb events`."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from prometheus_client.parser import text_string_to_metric_families

from halb import events
from halb.exporter.metrics import IPVS_LABELS, METRICS, render


def _svc(proto="tcp", addr="10.0.0.10", port=80, fwmark=0, dests=()):
    return {"proto": proto, "addr": addr, "port": port, "fwmark": fwmark, "scheduler": "wlc", "persistent": False,
            "timeout": 0, "stats": {"conns": sum(d["stats"]["conns"] for d in dests), "inpkts": 10, "outpkts": 9,
                                    "inbytes": 1000, "outbytes": 9000},
            "rates": {"cps": 1, "inpps": 0, "outpps": 0, "inbps": 0, "outbps": 0}, "dests": list(dests)}


def _dest(addr, port=80, weight=1, act=0, inact=0, conns=0):
    return {"addr": addr, "port": port, "fwd": "gate", "weight": weight, "activeconns": act, "inactconns": inact,
            "persistconns": 0, "local": False, "stats": {"conns": conns, "inpkts": 0, "outpkts": 0, "inbytes": 0,
                                                         "outbytes": 0},
            "rates": {"cps": 0, "inpps": 0, "outpps": 0, "inbps": 0, "outbps": 0}}


SNAP = {
    "node": "N1", "t": 1000.0, "engine": "nft", "errors": {"sync backup": "sync-backup.sock: timeout"},
    "collect_seconds": 0.01,
    "services": [
        _svc(dests=[_dest("10.0.0.2", act=3, inact=1, conns=7), _dest("10.0.0.3", weight=0, conns=2)]),
        _svc(proto="fwm", addr="", port=0, fwmark=1, dests=[_dest("10.0.0.2", 0, weight=2, act=1)]),
        _svc(proto="udp", addr="2001:db8::10", port=53, dests=[_dest("2001:db8::2", 53)]),
    ],
    "heartbeat": {"node": "N1", "status": "active", "nodes": {"N1": {"status": "up (this node)"},
                                                              "N2": {"status": "dead", "late": 4, "deaths": 1,
                                                                     "last_beat_ago": 3.5}},
                  "links": {"N2:eth0": "dead"},
                  "groups": [{"group": "N1 IPaddr2::10.0.0.10", "preferred": "N1", "state": "held",
                              "holders": ["N1"]}],
                  "counters": {"tx": 100, "rx": 90, "tx_errors": 0, "groups_acquired": 2, "groups_released": 1,
                               "fencing_ok": 1, "fencing_failed": 0}},
    "directors": [{"name": "ldirectord.cf", "reloads": 3, "edits_applied": 12, "edit_errors": 0,
                   "virtuals": [{"virtual": "10.0.0.10:80", "protocol": "tcp",
                                 "reals": [{"real": "10.0.0.2:80", "up": True, "failcount": 0, "weight": 1,
                                            "check_seconds": 0.0021},
                                           {"real": "10.0.0.3:80", "up": False, "failcount": 5, "weight": 0}]}]}],
    "sync": {"master": {"counters": {"entries_sent": 50, "packets_sent": 5}, "drops": {}, "dirty": 2, "held": 0},
             "backup": {"counters": {"entries_received": 40, "entries_applied": 39}, "drops": {"bad_mac": 1},
                        "peers": {"10.0.0.1": {"last_seen_s_ago": 0.4}}, "held": 1}},
    "proxy": None,
}


def _parse(text):
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_ipvs_names_labels_and_types_as_node_exporter():
    fams = _parse(render(SNAP))
    # prometheus-client strips _total from counter family names
    for n in ("connections", "incoming_packets", "outgoing_packets", "incoming_bytes", "outgoing_bytes"):
        f = fams[f"node_ipvs_{n}"]
        assert f.type == "counter" and len(f.samples) == 1 and f.samples[0].name == f"node_ipvs_{n}_total"
    assert fams["node_ipvs_connections"].samples[0].value == 9
    assert fams["node_ipvs_incoming_bytes"].samples[0].value == 3000
    act = fams["node_ipvs_backend_connections_active"]
    assert act.type == "gauge"
    rows = {tuple(s.labels[k] for k in IPVS_LABELS): s.value for s in act.samples}
    for s in act.samples:
        assert tuple(s.labels) == IPVS_LABELS
    assert rows[("10.0.0.10", "80", "10.0.0.2", "80", "TCP", "")] == 3
    # a fwmark service: no local address, port 0, the mark as %08X (procfs of /proc/net/ip_vs)
    assert rows[("", "0", "10.0.0.2", "0", "FWM", "00000001")] == 1
    assert rows[("2001:db8::10", "53", "2001:db8::2", "53", "UDP", "")] == 0
    w = {s.labels["remote_address"] + s.labels["proto"]: s.value for s in fams["node_ipvs_backend_weight"].samples}
    assert w == {"10.0.0.2TCP": 1, "10.0.0.3TCP": 0, "10.0.0.2FWM": 2, "2001:db8::2UDP": 1}
    inact = {s.labels["remote_address"] + s.labels["proto"]: s.value
             for s in fams["node_ipvs_backend_connections_inactive"].samples}
    assert inact["10.0.0.2TCP"] == 1


def test_rows_with_equal_labels_are_summed():
    snap = dict(SNAP, services=[_svc(dests=[_dest("10.0.0.2", act=2, weight=1)]),
                                _svc(dests=[_dest("10.0.0.2", act=5, weight=3)])])
    fams = _parse(render(snap))
    (s,) = fams["node_ipvs_backend_connections_active"].samples
    assert s.value == 7
    assert fams["node_ipvs_backend_weight"].samples[0].value == 4


def test_halb_metrics_of_every_daemon():
    fams = _parse(render(SNAP))
    v = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in fams.values() for s in f.samples}
    assert v[("halb_heartbeat_node_up", (("node", "N2"),))] == 0
    assert v[("halb_heartbeat_node_up", (("node", "N1"),))] == 1
    assert v[("halb_heartbeat_nodes", (("state", "dead"),))] == 1
    assert v[("halb_heartbeat_group_held", (("group", "N1 IPaddr2::10.0.0.10"), ("preferred", "N1")))] == 1
    assert v[("halb_heartbeat_failovers_total", ())] == 2
    assert v[("halb_heartbeat_fencing_operations_total", (("result", "ok"),))] == 1
    assert v[("halb_heartbeat_late_beats_total", (("node", "N2"),))] == 4
    assert v[("halb_heartbeat_link_up", (("link", "eth0"), ("node", "N2")))] == 0
    real = (("config", "ldirectord.cf"), ("protocol", "tcp"), ("real", "10.0.0.3:80"), ("virtual", "10.0.0.10:80"))
    assert v[("halb_director_real_server_up", real)] == 0
    assert v[("halb_director_real_server_quiescent", real)] == 1
    assert v[("halb_director_check_failures", real)] == 5
    up = real[:2] + (("real", "10.0.0.2:80"),) + real[3:]
    assert v[("halb_director_check_duration_seconds", up)] == 0.0021
    assert v[("halb_director_reloads_total", (("config", "ldirectord.cf"),))] == 3
    assert v[("halb_sync_sent_entries_total", (("role", "master"),))] == 50
    assert v[("halb_sync_applied_entries_total", (("role", "backup"),))] == 39
    assert v[("halb_sync_dropped_total", (("reason", "bad_mac"), ("role", "backup")))] == 1
    assert v[("halb_sync_lag_seconds", (("role", "backup"),))] == 0.4
    # a daemon that should answer and did not is a 0, not a failed scrape
    assert v[("halb_exporter_source_up", (("source", "sync backup"),))] == 0
    assert v[("halb_exporter_source_up", (("source", "engine"),))] == 1
    # every family served is declared in METRICS (the alert-rule test relies on it)
    for f in fams.values():
        assert f.name in METRICS or f.name + "_total" in METRICS


def test_no_table_declares_families_without_samples():
    snap = dict(SNAP, services=None, errors={"engine": "no halb proxy running"})
    fams = _parse(render(snap))
    assert fams["node_ipvs_connections"].samples == []
    v = {(s.name, tuple(s.labels.items())): s.value for f in fams.values() for s in f.samples}
    assert v[("halb_exporter_source_up", (("source", "engine"),))] == 0


def test_journal_rotates_and_skips_torn_lines(tmp_path):
    j = events.Journal(tmp_path / "events.jsonl", max_bytes=2000)
    for i in range(60):
        j.append(events.make("real_removed", f"10.0.0.{i}:80", f"Deleted real server {i}", "N1", 100.0 + i))
    assert j.path.stat().st_size <= 2000 and j.old.exists()
    with open(j.path, "ab") as f:
        f.write(b'{"t": 1000, "kind": "node_de')   # a crash in the middle of a line
    evs = j.read()
    assert evs[-1]["subject"] == "10.0.0.59:80" and all(e["kind"] == "real_removed" for e in evs)
    assert [e["t"] for e in evs] == sorted(e["t"] for e in evs)
    assert len(evs) < 60                           # bounded: the oldest went with the rotation
    assert [e["subject"] for e in j.read(since=158.0)] == ["10.0.0.58:80", "10.0.0.59:80"]
    assert len(j.read(limit=5)) == 5


def test_several_writers_never_interleave(tmp_path):
    code = ("import sys; from halb import events\n"
            "j = events.Journal(sys.argv[1], max_bytes=50000)\n"
            "for i in range(300): j.append(events.make('reload', sys.argv[2], 'x' * 200, 'N1', i))\n")
    ps = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "e.jsonl"), f"w{k}"]) for k in range(3)]
    assert all(p.wait(60) == 0 for p in ps)
    lines = [ln for p in (tmp_path / "e.jsonl.1", tmp_path / "e.jsonl") if p.exists()
             for ln in p.read_bytes().splitlines()]
    assert lines and all(events.decode(ln) is not None for ln in lines)


def test_halb_events_command(tmp_path):
    env = dict(os.environ, HALB_RUN_DIR=str(tmp_path), HALB_NODE="N7")
    now = time.time()
    j = events.Journal(events.journal_path(tmp_path, "N7"))
    j.append(events.make("node_dead", "N2", "node N2: is dead", "N7", now - 7200))
    j.append(events.make("group_acquired", "N7 IPaddr2::10.0.0.10", "Acquiring resource group", "N7", now - 5))
    run = lambda *a: subprocess.run([sys.executable, "-m", "halb", "events", *a], env=env, capture_output=True,
                                    text=True, timeout=30)
    r = run()
    assert r.returncode == 0 and "node_dead N2: node N2: is dead" in r.stdout and "group_acquired" in r.stdout
    r = run("--since", "1h")
    assert "node_dead" not in r.stdout and "group_acquired" in r.stdout
    r = run("--json", "--kind", "node_dead")
    assert [json.loads(ln)["subject"] for ln in r.stdout.splitlines()] == ["N2"]
    r = run("--since", "yesterday-ish")
    assert r.returncode != 0 and "--since" in r.stderr and "Traceback" not in r.stderr
    # --follow prints what is recorded afterwards
    p = subprocess.Popen([sys.executable, "-m", "halb", "events", "-f", "-n", "0"], env=env,
                         stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(1.0)
        events.record("reload", "ldirectord.cf", "configuration reloaded", run_dir=tmp_path, node="N7")
        events.flush()
        line = p.stdout.readline()
        assert "reload ldirectord.cf: configuration reloaded" in line
    finally:
        p.kill()
        p.wait(5)


def test_director_log_lines_as_events():
    de = events.director_event
    assert de("Deleted real server: 10.0.0.2:80 (10.0.0.10:80)") == ("real_removed", "10.0.0.2:80 (10.0.0.10:80)")
    assert de("Quiescent real server: 10.0.0.2:80 (10.0.0.10:80) (Weight set to 0)")[0] == "real_quiesced"
    assert de("Restored real server: 10.0.0.2:80 (10.0.0.10:80) (Weight set to 1)")[0] == "real_restored"
    assert de("Purged virtual server (stop): 10.0.0.10:80") == ("service_removed", "10.0.0.10:80")
    assert de("Virtual server 10.0.0.10:80 missing from the table: re-created") == ("table_restored", "10.0.0.10:80")
    assert de("Changed real server: 10.0.0.2:80 (10.0.0.10:80) (Weight set to 3)") is None
    assert all(k in events.KINDS for _, k in events._DIRECTOR)
