"""contrib/: the example Prometheus alert rules and the Grafana dashboard
name only metrics `halb exporter` serves; the rules are valid for promtool
and fire on what the exporter serves when the VIP is on no node, a real
server is down and sync lags (promtool test rules on series made from the
exporter's own output)."""
from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from halb.exporter.metrics import METRICS, render

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "contrib" / "prometheus" / "halb-alerts.yml"
DASHBOARD = ROOT / "contrib" / "grafana" / "halb.json"

PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset",
    "inf", "nan", "atan2",
}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (functions, keywords, label
    matchers, grouping labels, strings and durations left out)."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    e = re.sub(r"\{[^}]*\}", "", e)                        # label matchers
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", e)
    e = re.sub(r"\[[^\]]*\]", "", e)                       # ranges, subqueries
    e = re.sub(r"\$\{?\w+\}?", "", e)                      # Grafana variables ($__rate_interval)
    names = set()
    for m in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", e):
        word = m.group(0)
        rest = e[m.end():].lstrip()
        if rest.startswith("(") or word.lower() in PROMQL_WORDS:
            continue
        if re.fullmatch(r"\d+[smhdwy]", word) or (m.start() > 0 and e[m.start() - 1].isdigit()):
            continue
        names.add(word)
    return names


def test_metric_names_parser():
    assert metric_names('sum by (group) (halb_heartbeat_group_held) == 0') == {"halb_heartbeat_group_held"}
    assert metric_names('increase(x_total{result="failed", a=~"b(c)"}[15m]) > 0 and on (i) y') == {"x_total", "y"}
    assert metric_names("time() - t_seconds > 120") == {"t_seconds"}


def _rules():
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def test_rules_name_only_exported_metrics():
    rules = _rules()
    names = {r["alert"] for r in rules}
    assert {"HalbVipOnNoNode", "HalbRealServerDown", "HalbSyncLag"} <= names
    for r in rules:
        used = metric_names(r["expr"])
        assert used, r["alert"]
        assert used <= set(METRICS), f"{r['alert']}: {used - set(METRICS)} not served by halb exporter"


def test_grafana_dashboard_names_only_exported_metrics():
    d = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in d["panels"] for t in p.get("targets", [])]
    exprs += [a["expr"] for a in d.get("annotations", {}).get("list", []) if a.get("expr")]
    assert len(exprs) >= 10
    used = set().union(*(metric_names(e) for e in exprs))
    assert used <= set(METRICS), used - set(METRICS)
    # the IPVS panels work on node_exporter's names: an existing IPVS dashboard would too
    assert {"node_ipvs_backend_connections_active", "node_ipvs_backend_weight", "node_ipvs_incoming_bytes_total"} <= used
    assert {p["title"] for p in d["panels"]} >= {"VIP holder", "Real servers: check state"}


def _needs_promtool():
    if shutil.which("promtool") is None:
        import os
        if os.environ.get("CI") == "true":
            pytest.fail("CI must check the rules with promtool (apt-get install prometheus)", pytrace=False)
        pytest.skip("needs promtool (apt-get install prometheus)")


def test_promtool_accepts_the_rules():
    _needs_promtool()
    r = subprocess.run(["promtool", "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def _series(text: str, instance: str) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for f in text_string_to_metric_families(text):
        for s in f.samples:
            labels = dict(s.labels, instance=instance, job="halb")
            lab = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
            out[f"{s.name}{{{lab}}}"] = s.value
    return out


def test_rules_fire_on_what_the_exporter_serves(tmp_path):
    """Series made from render() of two nodes: first all well (N1 holds the
    VIP, both real servers up, sync fresh), then from 1 min on N1 holds
    nothing (the VIP on no node), a real server is down and the backup's
    sync lags 30 s; promtool evaluates the rules (without their annotations)."""
    _needs_promtool()
    from test_exporter_unit import SNAP

    def snaps(bad: bool):
        n1 = copy.deepcopy(SNAP)
        n1["errors"] = {}
        n2 = copy.deepcopy(SNAP)
        n2.update(node="N2", services=[], directors=[], errors={})
        n2["heartbeat"]["groups"][0]["state"] = "idle"
        n2["heartbeat"]["node"] = "N2"
        n1["directors"][0]["virtuals"][0]["reals"][1].update(up=True, failcount=0, weight=1)
        n1["heartbeat"]["nodes"]["N2"]["status"] = "up"
        n2["heartbeat"]["nodes"] = {"N2": {"status": "up (this node)"}, "N1": {"status": "up"}}
        n1["heartbeat"]["links"] = n2["heartbeat"]["links"] = {}
        n2["sync"] = {"backup": n1["sync"].pop("backup")}
        n2["sync"]["backup"]["drops"] = {}
        if bad:
            n1["heartbeat"]["groups"][0]["state"] = "idle"
            n1["directors"][0]["virtuals"][0]["reals"][1].update(up=False, failcount=9, weight=None)
            n2["sync"]["backup"]["peers"]["10.0.0.1"]["last_seen_s_ago"] = 30.0
        return {**_series(render(n1), "n1:9643"), **_series(render(n2), "n2:9643")}

    good, bad = snaps(False), snaps(True)
    fmt = lambda v: "_" if v is None else ("NaN" if v != v else repr(float(v)))
    series = [{"series": k, "values": " ".join([fmt(good.get(k))] * 4 + [fmt(bad.get(k))] * 8)}
              for k in sorted(set(good) | set(bad)) if not k.startswith("halb_exporter_last_collect")]
    rules = yaml.safe_load(RULES.read_text())
    for g in rules["groups"]:
        for r in g["rules"]:
            r.pop("annotations", None)
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(rules))
    group = SNAP["heartbeat"]["groups"][0]["group"]
    test = {
        "rule_files": ["rules.yml"], "evaluation_interval": "15s",
        "tests": [{
            "interval": "15s", "input_series": series,
            "alert_rule_test": [
                {"eval_time": "45s", "alertname": "HalbVipOnNoNode", "exp_alerts": []},
                {"eval_time": "45s", "alertname": "HalbRealServerDown", "exp_alerts": []},
                {"eval_time": "45s", "alertname": "HalbSyncLag", "exp_alerts": []},
                {"eval_time": "165s", "alertname": "HalbVipOnNoNode",
                 "exp_alerts": [{"exp_labels": {"severity": "critical", "group": group}}]},
                {"eval_time": "165s", "alertname": "HalbRealServerDown",
                 "exp_alerts": [{"exp_labels": {"severity": "warning", "config": "ldirectord.cf", "protocol": "tcp",
                                                "virtual": "10.0.0.10:80", "real": "10.0.0.3:80",
                                                "instance": "n1:9643", "job": "halb"}}]},
                {"eval_time": "165s", "alertname": "HalbSyncLag",
                 "exp_alerts": [{"exp_labels": {"severity": "warning", "role": "backup", "instance": "n2:9643",
                                                "job": "halb"}}]},
                {"eval_time": "165s", "alertname": "HalbVipOnSeveralNodes", "exp_alerts": []},
            ],
        }],
    }
    (tmp_path / "test.yml").write_text(yaml.safe_dump(test))
    r = subprocess.run(["promtool", "test", "rules", "test.yml"], cwd=tmp_path, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def test_promtool_accepts_the_exposition():
    _needs_promtool()
    from test_exporter_unit import SNAP

    r = subprocess.run(["promtool", "check", "metrics"], input=render(SNAP), capture_output=True, text=True,
                       timeout=60)
    # promtool lints names too; halb's follow the conventions: nothing to report
    assert r.returncode == 0, r.stdout + r.stderr
