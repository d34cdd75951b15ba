"""Monitoring files (monitoring/): the Prometheus configuration and alert rules pass promtool,
every rule's unit tests pass, the Alertmanager example passes amtool, every metric a rule names
is one the exporter serves; and a real Prometheus scraping the real exporter during a real run
(agent, secure broker, ingest, PostgreSQL) sees the series and fires the rules."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from central.ingest_metrics import IngestMetrics
from central.local_services import free_port
from central.metrics.collector import FleetCollector
from central.metrics.state import ExporterState
from tests.support.processes import REPO, Proc
from tests.support.prometheus import (
    ALERTMANAGER_CONFIG,
    DASHBOARDS,
    GRAFANA_PROVISIONING,
    PROMETHEUS_CONFIG,
    RULE_TESTS,
    RULES,
    Prometheus,
    rules_without_for,
    tool,
)
from tests.support.rig import Rig


def _run(*args: str) -> str:
    done = subprocess.run(args, capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"{' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


def test_prometheus_config_and_rules_pass_promtool() -> None:
    out = _run(tool("promtool"), "check", "config", str(PROMETHEUS_CONFIG))
    assert "SUCCESS" in out
    out = _run(tool("promtool"), "check", "rules", str(RULES))
    assert "SUCCESS" in out


def test_every_rule_has_a_case_that_fires_and_one_that_does_not() -> None:
    out = _run(tool("promtool"), "test", "rules", str(RULE_TESTS))
    assert "SUCCESS" in out
    rules = {r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]}
    fires: set[str] = set()
    quiet: set[str] = set()
    for group in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for case in group.get("alert_rule_test", []):
            (fires if case.get("exp_alerts") else quiet).add(case["alertname"])
    assert rules - fires == set(), "rules without a case where they fire"
    assert rules - quiet == set(), "rules without a case where they stay quiet"


def test_alertmanager_example_passes_amtool() -> None:
    out = _run(tool("amtool"), "check-config", str(ALERTMANAGER_CONFIG))
    assert "SUCCESS" in out


def exposed_names() -> set[str]:
    """Every sample name central serves: the exporter's and an ingest worker's own."""
    names = set()
    worker = IngestMetrics("1").registry.collect()
    for family in [*FleetCollector(ExporterState(1, 1)).collect(), *worker]:
        suffixes = {
            "counter": ["_total"],
            "histogram": ["_bucket", "_count", "_sum"],
            "info": ["_info"],
        }.get(family.type, [""])
        names |= {family.name + s for s in suffixes}
    return names


def test_every_metric_a_rule_names_is_served() -> None:
    text = RULES.read_text()
    named = set(re.findall(r"\beiot_[a-z0-9_]+", text))
    assert named, "no metric found in the rules"
    assert named - exposed_names() == set()


# --- Grafana provisioning ------------------------------------------------------------------

# Grafana's own PromQL variables, given the values a dashboard would give them over 5 minutes.
GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "$__interval": "15s",
    "$__range": "5m",
    '=~"$gateway"': '=~".*"',
}


def panels() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        doc = json.loads(path.read_text())
        found += [(f"{path.name}: {p['title']}", p) for p in doc["panels"] if p["type"] != "row"]
    return found


def promql(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"a Grafana variable the test does not know: {expr}"
    return expr


def test_grafana_provisioning_files_hold_together() -> None:
    datasources = yaml.safe_load(
        (GRAFANA_PROVISIONING / "datasources" / "prometheus.yml").read_text()
    )
    assert datasources["apiVersion"] == 1
    (source,) = datasources["datasources"]
    assert source["type"] == "prometheus"
    providers = yaml.safe_load((GRAFANA_PROVISIONING / "dashboards" / "eiot.yml").read_text())
    assert providers["apiVersion"] == 1 and providers["providers"][0]["type"] == "file"
    names = {p.stem for p in DASHBOARDS.glob("*.json")}
    assert names == {"fleet-health", "ingest", "warehouse-freshness"}
    uids = set()
    served = exposed_names() | {"ALERTS", "up", "process_resident_memory_bytes"}
    for path in DASHBOARDS.glob("*.json"):
        doc = json.loads(path.read_text())
        assert doc["uid"] not in uids and doc["title"] and doc["schemaVersion"] >= 36
        uids.add(doc["uid"])
        ids = [p["id"] for p in doc["panels"]]
        assert len(ids) == len(set(ids)), f"{path.name}: panel ids repeat"
        for var in doc["templating"]["list"]:
            assert var["datasource"]["uid"] == source["uid"]
        for p in doc["panels"]:
            pos = p["gridPos"]
            assert pos["x"] + pos["w"] <= 24 and pos["h"] > 0, f"{path.name}: {p['title']}"
            if p["type"] == "row":
                continue
            assert p["datasource"]["uid"] == source["uid"], f"{path.name}: {p['title']}"
            assert p["targets"], f"{path.name}: {p['title']} has no query"
            for t in p["targets"]:
                names_used = set(
                    re.findall(r"\b(?:eiot_[a-z0-9_]+|ALERTS|up|process_[a-z_]+)\b", t["expr"])
                )
                assert names_used and names_used <= served, (path.name, p["title"], names_used)


# --- a real Prometheus on a real run -------------------------------------------------------


# Panels that stay empty in the run below, and why (every other panel must show data).
EMPTY_IN_A_CLEAN_RUN = {
    "ingest.json: Quarantine by reason": "nothing is quarantined in a clean run",
    "ingest.json: Quarantine share": "nothing is quarantined in a clean run",
    "fleet-health.json: Oldest pending reading": "every reading is acknowledged",
    "fleet-health.json: Models in use": "the agent runs without a model",
}


@pytest.mark.services
@pytest.mark.slow
def test_prometheus_scrapes_a_real_run_and_fires_rules(rig: Rig, tmp_path: Path) -> None:
    """Agent → secure broker → ingest → PostgreSQL → warehouse load (embedded ClickHouse served by
    its owner), with dbt's and the quality run's result files; the exporter reads them all,
    Prometheus scrapes it with the shipped rules (``for`` set to 0 s), every dashboard panel's
    PromQL runs against it; then the gateway goes offline and the time to the firing alert is
    measured."""
    warehouse_port = free_port()
    warehouse = Proc(
        [
            "-m",
            "central",
            "warehouse",
            "serve",
            "--path",
            str(tmp_path / "warehouse"),
            "--port",
            str(warehouse_port),
        ],
        {},
        tmp_path / "warehouse.log",
    ).start()
    rig.procs.append(warehouse)
    results = _result_files(tmp_path)
    port = free_port()
    exporter = Proc(
        ["-m", "central", "metrics", "serve", "--port", str(port)],
        {
            "EIOT_PG_DSN": rig.pg_dsn,
            "EIOT_METRICS_POLL_S": "0.5",
            "EIOT_METRICS_SETTLE_S": "0.5",
            "EIOT_METRICS_WAREHOUSE_URL": f"http://127.0.0.1:{warehouse_port}/",
            "EIOT_METRICS_WAREHOUSE_POLL_S": "0.5",
            "EIOT_METRICS_DBT_RUN_RESULTS": str(results["dbt"]),
            "EIOT_METRICS_QUALITY_RESULTS": str(results["quality"]),
        },
        tmp_path / "metrics.log",
    ).start()
    rig.procs.append(exporter)
    prom = Prometheus(tmp_path / "prometheus", port, rules_without_for(tmp_path / "rules.yml"))
    try:
        # the exporter's counters start at its first poll: it must have polled before any batch
        rig.wait_until(lambda: _polled(port), 30, "the exporter's first poll")
        prom.start()
        ingest = rig.start_ingest()
        rig.wait_ingest_ready(ingest)
        rig.start_agent("gw-a")
        rig.feed("gw-a", 0, meters=20, intervals=5)
        rig.wait_delivered(60)
        load = subprocess.run(
            [
                sys.executable,
                "-m",
                "central",
                "warehouse",
                "load",
                "--dsn",
                f"http://127.0.0.1:{warehouse_port}/",
                "--pg-dsn",
                rig.pg_dsn,
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert load.returncode == 0, load.stdout + load.stderr

        gw = '{gateway_id="gw-a"}'
        rig.wait_until(
            lambda: prom.value('eiot_ingest_readings_total{outcome="inserted"}') == 100,
            30,
            "Prometheus to see the 100 readings stored",
        )
        rig.wait_until(
            lambda: prom.value(f"eiot_gateway_readings_acked_total{gw}") == 100,
            30,
            "Prometheus to see the gateway's status after delivery",
        )
        rig.wait_until(
            lambda: prom.value('eiot_warehouse_last_load_rows{table="readings"}') == 100,
            30,
            "Prometheus to see the warehouse load",
        )
        assert prom.value(f"eiot_gateway_up{gw}") == 1
        assert prom.value(f"eiot_gateway_readings_accepted_total{gw}") == 100
        assert prom.value(f"eiot_gateway_pending_readings{gw}") == 0
        assert prom.value('eiot_ingest_batches_total{status="stored"}') >= 1  # type: ignore[operator]
        assert prom.value("eiot_ingest_batch_delivery_seconds_count") >= 1  # type: ignore[operator]
        assert prom.value('up{job="eiot-central"}') == 1
        lag = prom.value(
            'time() - eiot_warehouse_load_watermark_timestamp_seconds{table="readings"}'
        )
        assert lag is not None and 0 <= lag < 600
        # the agent runs without a model, the quality run failed: rules fire on both
        rig.wait_until(
            lambda: (
                prom.firing("EiotGatewayScoringNothing") and prom.firing("EiotQualityGateFailed")
            ),
            30,
            "EiotGatewayScoringNothing and EiotQualityGateFailed",
        )
        assert not prom.firing("EiotGatewayOffline")
        assert not prom.firing("EiotWarehouseNotRefreshed")
        assert not prom.firing("EiotDbtBuildFailed")

        # every dashboard panel's PromQL runs, and shows data unless said otherwise (rates need
        # a few scrapes: Prometheus applies its targets up to 5 s after it starts)
        rig.wait_until(
            lambda: (prom.value('count_over_time(up{job="eiot-central"}[1m])') or 0) >= 4,
            30,
            "a few scrapes",
        )
        empty = []
        for name, panel in panels():
            results_of_panel = [prom.query(promql(t["expr"])) for t in panel["targets"]]
            if not any(results_of_panel):
                empty.append(name)
        assert sorted(empty) == sorted(EMPTY_IN_A_CLEAN_RUN), empty

        # condition: the gateway goes offline (a clean stop publishes status offline)
        t0 = time.monotonic()
        rig.agents["gw-a"].stop()
        t_stopped = time.monotonic()
        t_db = None
        labels: list[dict[str, str]] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if t_db is None and _offline_stored(rig.pg_dsn):
                t_db = time.monotonic()
            labels = prom.firing("EiotGatewayOffline")
            if labels:
                break
            time.sleep(0.1)
        t_alert = time.monotonic()
        assert labels and labels[0]["gateway_id"] == "gw-a", rig.logs()
        assert labels[0]["severity"] == "warning"
        assert t_db is not None
        print(
            f"\ncondition → alert firing in Prometheus: {t_alert - t0:.2f} s "
            f"(agent stop {t_stopped - t0:.2f} s, offline status in PostgreSQL "
            f"{t_db - t0:.2f} s, then exporter poll 0.5 s + scrape 1 s + evaluation 1 s)"
        )
        assert t_alert - t0 < 30
        assert not prom.firing("EiotGatewayScoringNothing")  # offline: not scoring is expected
    finally:
        prom.stop()


def _result_files(tmp: Path) -> dict[str, Path]:
    """A dbt run that passed (dbt's own file format) and a quality run that failed (the file
    central quality run --results-file writes)."""
    from central.metrics.poll import quality_results

    dbt = tmp / "run_results.json"
    dbt.write_text(
        json.dumps(
            {
                "metadata": {"generated_at": "2026-03-01T10:00:00.000000Z"},
                "elapsed_time": 4.2,
                "results": [{"status": "success"}, {"status": "pass"}],
            }
        )
    )
    quality = tmp / "quality.json"
    doc = quality_results(
        False, ["raw_readings", "marts"], [("marts", "expect_loss_in_range")], 2.0
    )
    quality.write_text(json.dumps(doc))
    return {"dbt": dbt, "quality": quality}


def _polled(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return False
    return "eiot_metrics_polls_total 0.0" not in text and "eiot_metrics_polls_total" in text


def _offline_stored(dsn: str) -> bool:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "select state from raw.gateway_status where gateway_id = 'gw-a' "
            "order by received_at desc limit 1"
        ).fetchone()
    return row is not None and row[0] == "offline"
