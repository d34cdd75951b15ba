"""The orchestration steps' own logic, without Airflow: which window a run reloads, and how
dbt's run results become the per-model view."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from central.orchestration.steps import NODE_OK, node_results, per_model, reload_window

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
    nodes = node_results(write_results(tmp_path, results, seconds=1.23456))
    assert [(n["kind"], n["name"], n["status"]) for n in nodes] == [
        ("model", "mart_energy_balance", "success"),
        ("test", "not_null_mart_x_meter_id", "fail"),
        ("unit_test", "mart_x.flags_a_drop", "pass"),
        ("model", "mart_after", "skipped"),
    ]
    assert nodes[1]["message"] == "Got 3 results" and nodes[2]["message"] == ""
    assert nodes[0]["seconds"] == 1.235
    assert [n["status"] in NODE_OK for n in nodes] == [True, False, True, False]


def write_build(tmp_path: Path, results: list[tuple[str, str, str | None]]) -> Path:
    """A run_results.json of these (unique id, status, message) and the manifest.json dbt
    writes beside it: which model each test checks; its path."""
    manifest = {
        "nodes": {
            "model.eiot.stg_x": {"depends_on": {"nodes": ["source.eiot.raw.readings"]}},
            "model.eiot.mart_x": {"depends_on": {"nodes": ["model.eiot.stg_x"]}},
            "model.eiot.mart_after": {"depends_on": {"nodes": ["model.eiot.mart_x"]}},
            "test.eiot.source_not_null_raw_readings_ts.ad2ae718da": {
                "attached_node": None,
                "depends_on": {"nodes": ["source.eiot.raw.readings"]},
            },
            "test.eiot.not_null_mart_x_meter_id.2d05fea695": {
                "attached_node": "model.eiot.mart_x",
                "depends_on": {"nodes": ["model.eiot.mart_x"]},
            },
            "test.eiot.relationships_mart_x_meter_id.5a1f": {  # defined on mart_x
                "attached_node": "model.eiot.mart_x",
                "depends_on": {"nodes": ["model.eiot.stg_x", "model.eiot.mart_x"]},
            },
            "test.eiot.rows_match.77aa": {  # singular: attached to no node
                "attached_node": None,
                "depends_on": {"nodes": ["model.eiot.stg_x", "model.eiot.mart_x"]},
            },
        },
        "unit_tests": {
            "unit_test.eiot.mart_x.flags_a_drop": {
                "model": "mart_x",
                "depends_on": {"nodes": ["model.eiot.mart_x"]},
            }
        },
    }
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    return write_results(tmp_path, results)


def write_results(
    folder: Path, results: list[tuple[str, str, str | None]], seconds: float = 0.5
) -> Path:
    """A run_results.json in ``folder`` of these (unique id, status, message), each node having
    taken ``seconds``; its path."""
    path = folder / "run_results.json"
    rows = [
        {"unique_id": u, "status": s, "message": m, "execution_time": seconds}
        for u, s, m in results
    ]
    path.write_text(json.dumps({"results": rows}))
    return path


def test_each_test_belongs_to_the_model_it_checks_and_fails_it(tmp_path: Path) -> None:
    path = write_build(
        tmp_path,
        [
            ("test.eiot.source_not_null_raw_readings_ts.ad2ae718da", "pass", None),
            ("model.eiot.stg_x", "success", "OK"),
            ("unit_test.eiot.mart_x.flags_a_drop", "pass", None),
            ("model.eiot.mart_x", "success", "OK"),
            ("test.eiot.not_null_mart_x_meter_id.2d05fea695", "fail", "Got 3 results"),
            ("test.eiot.relationships_mart_x_meter_id.5a1f", "warn", "Got 1 result"),
            ("test.eiot.rows_match.77aa", "pass", None),
            ("model.eiot.mart_after", "success", "OK"),
        ],
    )
    nodes = node_results(path, path.with_name("manifest.json"))
    assert [n["model"] for n in nodes] == [
        "source raw.readings",
        "model stg_x",
        "model mart_x",
        "model mart_x",
        "model mart_x",
        "model mart_x",
        "model stg_x",  # the first model a singular test depends on
        "model mart_after",
    ]
    view = {m["name"]: m for m in per_model(nodes)}
    assert list(view) == ["source raw.readings", "model stg_x", "model mart_x", "model mart_after"]
    assert {k: m["status"] for k, m in view.items()} == {
        "source raw.readings": "success",
        "model stg_x": "success",
        "model mart_x": "failed",  # built, but one of its tests failed (a warning does not)
        "model mart_after": "success",
    }
    assert view["model mart_x"]["message"] == "test not_null_mart_x_meter_id: fail Got 3 results"
    assert [n["kind"] for n in view["model mart_x"]["nodes"]] == [
        "unit_test",
        "model",
        "test",
        "test",
    ]
    assert view["model mart_x"]["seconds"] == 2.0
    # without the manifest (or with one cut short) each node stands alone
    alone = ["test source_not_null_raw_readings_ts", "model stg_x", "unit_test mart_x.flags_a_drop"]
    assert [m["name"] for m in per_model(node_results(path))][:3] == alone
    broken = tmp_path / "cut" / "manifest.json"
    broken.parent.mkdir()
    broken.write_text('{"nodes": {"test.eiot.')
    assert [m["name"] for m in per_model(node_results(path, broken))][:3] == alone
    assert [m["name"] for m in per_model(node_results(path, tmp_path / "none.json"))][:3] == alone


def test_a_failed_model_fails_its_view_and_what_dbt_skipped_is_skipped(tmp_path: Path) -> None:
    path = write_build(
        tmp_path,
        [
            ("model.eiot.stg_x", "success", "OK"),
            ("unit_test.eiot.mart_x.flags_a_drop", "pass", None),
            ("model.eiot.mart_x", "error", "Code: 47. Unknown identifier"),
            ("test.eiot.not_null_mart_x_meter_id.2d05fea695", "skipped", None),
            ("model.eiot.mart_after", "skipped", "SKIP"),
        ],
    )
    view = {m["name"]: m for m in per_model(node_results(path, path.with_name("manifest.json")))}
    assert view["model mart_x"]["status"] == "failed"
    assert view["model mart_x"]["message"] == "model mart_x: error Code: 47. Unknown identifier"
    assert view["model mart_after"]["status"] == "skipped"
    assert view["model stg_x"]["status"] == "success"
