"""Monitoring files (monitoring/): the Prometheus configuration and alert rules pass promtool,
every rule's unit tests pass, the Alertmanager example passes amtool, every metric a rule names
is one the exporter serves; and a real Prometheus scraping the real exporter during a real run
(agent, secure broker, ingest, PostgreSQL) sees the series and fires the rules."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import psycopg
import pytest
import yaml

from central.local_services import free_port
from central.metrics.collector import FleetCollector
from central.metrics.state import ExporterState
from tests.support.processes import Proc
from tests.support.prometheus import (
    ALERTMANAGER_CONFIG,
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
    """Every sample name the exporter can serve."""
    names = set()
    for family in FleetCollector(ExporterState(1, 1)).collect():
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


# --- a real Prometheus on a real run -------------------------------------------------------


@pytest.mark.services
@pytest.mark.slow
def test_prometheus_scrapes_a_real_run_and_fires_rules(rig: Rig, tmp_path: Path) -> None:
    port = free_port()
    exporter = Proc(
        ["-m", "central", "metrics", "serve", "--port", str(port)],
        {
            "EIOT_PG_DSN": rig.pg_dsn,
            "EIOT_METRICS_POLL_S": "0.5",
            "EIOT_METRICS_SETTLE_S": "0.5",
        },
        tmp_path / "metrics.log",
    ).start()
    rig.procs.append(exporter)
    prom = Prometheus(tmp_path / "prometheus", port, rules_without_for(tmp_path / "rules.yml"))
    try:
        prom.start()
        ingest = rig.start_ingest()
        rig.wait_ingest_ready(ingest)
        rig.start_agent("gw-a")
        rig.feed("gw-a", 0, meters=20, intervals=5)
        rig.wait_delivered(60)

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
        assert prom.value(f"eiot_gateway_up{gw}") == 1
        assert prom.value(f"eiot_gateway_readings_accepted_total{gw}") == 100
        assert prom.value(f"eiot_gateway_pending_readings{gw}") == 0
        assert prom.value('eiot_ingest_batches_total{status="stored"}') >= 1  # type: ignore[operator]
        assert prom.value("eiot_ingest_batch_delivery_seconds_count") >= 1  # type: ignore[operator]
        assert prom.value('up{job="eiot-central"}') == 1
        # the agent runs without a model: a rule fires on that, through the real path
        rig.wait_until(
            lambda: prom.firing("EiotGatewayScoringNothing"), 30, "EiotGatewayScoringNothing"
        )
        assert not prom.firing("EiotGatewayOffline")

        # condition: the gateway goes offline (a clean stop publishes status offline)
        t0 = time.monotonic()
        rig.agents["gw-a"].stop()
        t_stopped = time.monotonic()
        t_db = None
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


def _offline_stored(dsn: str) -> bool:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "select state from raw.gateway_status where gateway_id = 'gw-a' "
            "order by received_at desc limit 1"
        ).fetchone()
    return row is not None and row[0] == "offline"
