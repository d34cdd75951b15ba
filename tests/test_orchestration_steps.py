"""The orchestration steps' own logic, without Airflow: which window a run reloads, and how
dbt's run results become the per-node view."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from central.orchestration.steps import NODE_OK, node_results, reload_window

NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
P = timedelta(minutes=15)


def test_a_current_run_loads_by_watermark_a_past_one_reloads_its_interval() -> None:
    assert reload_window(NOW - P, NOW, NOW, P) is None  # the scheduled run that just ended
    assert reload_window(NOW - 2 * P, NOW - P, NOW, P) is None  # one late: still current
    past = datetime(2026, 11, 1, 6, tzinfo=UTC)
    assert reload_window(past, past + P, NOW, P) == (past, past + P)  # a backfill interval
    # a manual run at a past date has an empty interval: the period before it
    assert reload_window(past, past, NOW, P) == (past - P, past)
    assert reload_window(None, None, NOW, P) is None


def test_run_results_become_one_named_entry_per_node(tmp_path: Path) -> None:
    results = [
        ("model.eiot.mart_energy_balance", "success", "OK"),
        ("test.eiot.not_null_mart_x_meter_id.2d05fea695", "fail", "Got 3 results"),
        ("unit_test.eiot.mart_x.flags_a_drop", "pass", None),
        ("model.eiot.mart_after", "skipped", "SKIP"),
    ]
    path = tmp_path / "run_results.json"
    path.write_text(
        json.dumps(
            {
                "results": [
                    {"unique_id": u, "status": s, "message": m, "execution_time": 1.23456}
                    for u, s, m in results
                ]
            }
        )
    )
    nodes = node_results(path)
    assert [(n["kind"], n["name"], n["status"]) for n in nodes] == [
        ("model", "mart_energy_balance", "success"),
        ("test", "not_null_mart_x_meter_id", "fail"),
        ("unit_test", "mart_x.flags_a_drop", "pass"),
        ("model", "mart_after", "skipped"),
    ]
    assert nodes[1]["message"] == "Got 3 results" and nodes[2]["message"] == ""
    assert nodes[0]["seconds"] == 1.235
    assert [n["status"] in NODE_OK for n in nodes] == [True, False, True, False]
