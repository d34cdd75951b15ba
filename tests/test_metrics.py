"""The central exporter against the real PostgreSQL: what it reads from raw.gateway_status, the
ledger and the quarantine, and what it serves (names, values, bounded labels)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from psycopg.types.json import Jsonb

from central.local_services import free_port
from central.metrics import Exporter, MetricsSettings
from tests.support.processes import REPO

pytestmark = pytest.mark.services


def _status(gw: str, sent_at: str, state: str = "online", **extra: object) -> dict[str, object]:
    doc: dict[str, object] = {
        "schema": "status.v1",
        "gateway_id": gw,
        "state": state,
        "sent_at": sent_at,
        "agent_version": "0.1.0",
        "counters": {},
    }
    doc.update(extra)
    return doc


def _insert_status(pg: psycopg.Connection, doc: dict[str, object], received: str = "now()") -> None:
    pg.execute(
        "insert into raw.gateway_status (gateway_id, sent_at, state, status, received_at) "
        f"values (%s, %s, %s, %s, {received})",
        (doc["gateway_id"], doc["sent_at"], doc["state"], Jsonb(doc)),
    )


def _batch(
    pg: psycopg.Connection,
    gw: str,
    n: int,
    readings: int,
    inserted: int,
    duplicates: int = 0,
    status: str = "stored",
    age_s: int = 30,
) -> None:
    pg.execute(
        "insert into raw.ingest_batches (gateway_id, batch_id, batch_seq, sent_at, stored_at, "
        "readings, inserted, duplicates, conflicts, quarantined, status, ack) values "
        "(%s, %s, %s, now() - make_interval(secs => %s), now(), %s, %s, %s, 0, 0, %s, '{}')",
        (gw, f"b-{n}", n, age_s, readings, inserted, duplicates, status),
    )


def _quarantine(pg: psycopg.Connection, reason: str, n: int = 1) -> None:
    for _ in range(n):
        pg.execute(
            "insert into raw.quarantine (raw, reason, received_at, source) "
            "values ('x', %s, now(), 'test')",
            (reason,),
        )


def _samples(exporter: Exporter) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(exporter.registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


@pytest.fixture
def exporters() -> Iterator[list[Exporter]]:
    made: list[Exporter] = []
    yield made
    for e in made:
        e.poller.close()


def _settings(pg_dsn: str, **kw: object) -> MetricsSettings:
    return MetricsSettings(pg_dsn=pg_dsn, metrics_settle_s=0, **kw)  # type: ignore[arg-type]


def test_fleet_and_ingest_series_from_the_database(
    pg_dsn: str, pg: psycopg.Connection, exporters: list[Exporter]
) -> None:
    _insert_status(
        pg,
        _status(
            "gw-a",
            "2026-03-01T00:00:00Z",
            buffer={
                "pending_readings": 120,
                "inflight_batches": 2,
                "total_readings": 500,
                "oldest_pending_ts": "2026-03-01T00:00:00Z",
                "full": False,
                "intake": "open",
                "disk_free_bytes": 1000000,
            },
            counters={
                "readings_accepted": 500,
                "quarantined": 3,
                "readings_acked": 380,
                "batches_sent": 9,
                "meter-m1-secret": 7,
            },
            models=[
                {"name": "iforest", "version": "2026.03.01", "loaded_at": "2026-03-01T00:00:00Z"}
            ],
            clock_suspect=True,
        ),
        "now() - interval '1 minute'",
    )
    _insert_status(
        pg,
        _status(
            "gw-b",
            "2026-03-01T00:00:00Z",
            buffer={
                "pending_readings": 5,
                "inflight_batches": 0,
                "total_readings": 5,
                "full": True,
                "intake": "disk_full",
            },
        ),
    )
    exporter = Exporter(_settings(pg_dsn))
    exporters.append(exporter)
    exporter.poller.poll()  # the start: current statuses; counters from now on
    _batch(pg, "gw-a", 1, readings=10, inserted=7, duplicates=2, age_s=30)
    _batch(pg, "gw-a", 2, readings=4, inserted=0, status="rejected")
    _quarantine(pg, "conflict: m-1 at 2026-03-01T00:30:00Z", 2)
    _quarantine(pg, "Not A Code!", 1)
    # gw-a goes offline (its last will: no figures), received last
    _insert_status(pg, _status("gw-a", "2026-03-01T00:05:00Z", state="offline"))
    exporter.poller.poll()
    s = _samples(exporter)
    a, b = (("gateway_id", "gw-a"),), (("gateway_id", "gw-b"),)
    assert s[("eiot_gateway_up", a)] == 0  # offline now...
    assert s[("eiot_gateway_pending_readings", a)] == 120  # ...with the figures heard before
    assert s[("eiot_gateway_inflight_batches", a)] == 2
    assert s[("eiot_gateway_readings_accepted_total", a)] == 500
    assert s[("eiot_gateway_readings_quarantined_total", a)] == 3
    assert s[("eiot_gateway_readings_acked_total", a)] == 380
    assert s[("eiot_gateway_clock_suspect", a)] == 1
    assert s[("eiot_gateway_scoring", a)] == 1
    assert s[("eiot_gateway_disk_free_bytes", a)] == 1000000
    assert (
        s[
            (
                "eiot_gateway_model_info",
                (("gateway_id", "gw-a"), ("model", "iforest"), ("version", "2026.03.01")),
            )
        ]
        == 1
    )
    assert s[("eiot_gateway_intake_paused", b)] == 1
    assert s[("eiot_gateway_scoring", b)] == 0
    assert s[("eiot_gateway_up", b)] == 1
    assert s[("eiot_fleet_gateways", (("state", "offline"),))] == 1
    assert s[("eiot_ingest_batches_total", (("status", "stored"),))] == 1
    assert s[("eiot_ingest_batches_total", (("status", "rejected"),))] == 1
    assert s[("eiot_ingest_readings_total", (("outcome", "inserted"),))] == 7
    assert s[("eiot_ingest_readings_total", (("outcome", "duplicate"),))] == 2
    assert s[("eiot_ingest_readings_total", (("outcome", "invalid"),))] == 1
    assert s[("eiot_ingest_quarantined_rows_total", (("reason", "conflict"),))] == 2
    assert s[("eiot_ingest_quarantined_rows_total", (("reason", "other"),))] == 1
    assert s[("eiot_ingest_batch_delivery_seconds_count", ())] == 1
    assert s[("eiot_ingest_batch_delivery_seconds_bucket", (("le", "15.0"),))] == 0
    assert s[("eiot_ingest_batch_delivery_seconds_bucket", (("le", "60.0"),))] == 1
    # no label or series from what a gateway wrote freely
    assert not any("secret" in name or "secret" in str(labels) for name, labels in s)
    # each row counted once, however many polls
    exporter.poller.poll()
    assert _samples(exporter)[("eiot_ingest_readings_total", (("outcome", "inserted"),))] == 7


def test_memory_and_labels_stay_bounded(
    pg_dsn: str, pg: psycopg.Connection, exporters: list[Exporter]
) -> None:
    for i in range(30):
        _insert_status(pg, _status(f"gw-{i:02d}", "2026-03-01T00:00:00Z"))
    exporter = Exporter(_settings(pg_dsn, metrics_max_gateways=20, metrics_max_reasons=3))
    exporters.append(exporter)
    exporter.poller.poll()
    for code in ("bad_topic", "conflict", "empty", "invalid", "oversize", "not_a_kind"):
        _quarantine(pg, f"{code}: detail")
    exporter.poller.poll()
    s = _samples(exporter)
    assert sum(1 for name, _ in s if name == "eiot_gateway_up") == 20
    assert s[("eiot_metrics_gateways_dropped_total", ())] >= 10  # statuses, re-read ones too
    reasons = {
        dict(lbl)["reason"] for name, lbl in s if name == "eiot_ingest_quarantined_rows_total"
    }
    assert len(reasons) == 4 and "other" in reasons  # three kinds, then the rest
    assert reasons - {"other"} <= {"bad_topic", "conflict", "empty", "invalid", "oversize"}
    # a gateway silent past metrics_forget_after_s is forgotten
    exporter.poller.s = _settings(pg_dsn, metrics_forget_after_s=0.001)
    time.sleep(0.01)
    exporter.poller.poll()
    assert not exporter.state.gateways


def test_dbt_and_quality_result_files(
    pg_dsn: str, tmp_path: Path, exporters: list[Exporter]
) -> None:
    dbt = tmp_path / "run_results.json"
    dbt.write_text(
        json.dumps(
            {
                "metadata": {"generated_at": "2026-03-01T10:00:00.000000Z"},
                "elapsed_time": 12.5,
                "results": [
                    {"status": "success"},
                    {"status": "success"},
                    {"status": "error"},
                    {"status": "pass"},
                ],
            }
        )
    )
    quality = tmp_path / "quality.json"
    from central.metrics.poll import quality_results

    quality.write_text(
        json.dumps(quality_results(False, ["raw_readings", "marts"], [("marts", "expect_x")], 3.0))
    )
    exporter = Exporter(
        _settings(pg_dsn, metrics_dbt_run_results=dbt, metrics_quality_results=quality)
    )
    exporters.append(exporter)
    exporter.poller.poll()
    s = _samples(exporter)
    assert s[("eiot_dbt_last_run_success", ())] == 0
    assert s[("eiot_dbt_last_run_nodes", (("status", "success"),))] == 2
    assert s[("eiot_dbt_last_run_timestamp_seconds", ())] == 1772359200.0
    assert s[("eiot_dbt_last_run_duration_seconds", ())] == 12.5
    assert s[("eiot_quality_last_run_success", ())] == 0
    assert s[("eiot_quality_failed_expectations", (("suite", "marts"),))] == 1
    assert s[("eiot_quality_failed_expectations", (("suite", "raw_readings"),))] == 0


def test_metrics_serve_command_serves_and_survives_a_database_away(pg_dsn: str) -> None:
    """The real command; a database that cannot be reached is counted, not fatal."""
    port = free_port()
    env = {
        "EIOT_PG_DSN": pg_dsn.replace(":5432/", f":{free_port()}/"),
        "EIOT_METRICS_POLL_S": "0.2",
        "PATH": "/usr/bin:/bin",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "central", "metrics", "serve", "--port", str(port)],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        text = ""
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                    text = r.read().decode()
                if "eiot_metrics_poll_errors_total 0.0" not in text and "poll_errors_total" in text:
                    break
            except OSError:
                pass
            time.sleep(0.2)
        assert "eiot_metrics_poll_errors_total" in text and "poll_errors_total 0.0" not in text
        assert "process_resident_memory_bytes" in text
        assert proc.poll() is None
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.slow
def test_a_failed_quality_run_reaches_the_exporter(
    pg_dsn: str, pg: psycopg.Connection, tmp_path: Path, exporters: list[Exporter]
) -> None:
    """``central quality run --results-file`` (real Great Expectations on the real database)
    leaves the file the exporter reads."""
    pg.execute(
        "insert into raw.readings (meter_id, ts, interval_s, kwh, voltage_v, gateway_id, "
        "batch_id) values ('BAD1', '2026-03-01T00:30Z', 1800, 99999, 230, 'gw', 'x')"
    )
    results = tmp_path / "quality.json"
    done = subprocess.run(
        [sys.executable, "-m", "central", "quality", "run", "--suite", "raw_readings",
         "--docs-dir", str(tmp_path / "docs"), "--results-file", str(results)],
        env={**os.environ, "EIOT_PG_DSN": pg_dsn}, cwd=REPO, capture_output=True, text=True,
        timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr[-2000:]
    exporter = Exporter(_settings(pg_dsn, metrics_quality_results=results))
    exporters.append(exporter)
    exporter.poller.poll()
    s = _samples(exporter)
    assert s[("eiot_quality_last_run_success", ())] == 0
    assert s[("eiot_quality_failed_expectations", (("suite", "raw_readings"),))] >= 1
    assert abs(s[("eiot_quality_last_run_timestamp_seconds", ())] - time.time()) < 300
