"""dbt on a simulated fleet with known theft, through the owner server; GX on the marts.

One warehouse is built for the module: a fleet of 120 customer meters under 6 transformers,
two of which have meters bypassed half-way through 14 days, plus a hand-made feeder whose
SAIFI/SAIDI/CAIDI are worked out below by hand.
"""

from __future__ import annotations

import difflib
import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from central.warehouse.client import connect
from central.warehouse.dbt import dbt_env, run_dbt
from central.warehouse.loader import load
from central.warehouse.quality import run_quality
from central.warehouse.settings import WarehouseSettings
from simulator.raw_db import scratch_database, write_warehouse_fleet
from simulator.warehouse_fleet import WarehouseFleet
from tests.support.warehouse import built_warehouse, marts_fleet

pytestmark = [pytest.mark.services]  # real PostgreSQL; dbt from .venv-dbt (`make install`)

# The hand-made feeder FH: 4 customers, readings on 2026-03-02 only (ts = end of interval).
#   H1: off at 10:30 and 11:00                → one interruption, 10:00-11:00, 60 min
#   H2: off at 10:30; off at 18:30..19:30      → two interruptions, 30 + 90 min
#   H3: always on                              → none
#   H4: off at 23:30 and 00:00 (next day)      → one interruption, 60 min
# SAIFI = 4 interruptions / 4 customers = 1.0; SAIDI = 240 min / 4 = 60 min; CAIDI = 60 min.
HAND_OFF = {
    "H1": ["10:30", "11:00"],
    "H2": ["10:30", "18:30", "19:00", "19:30"],
    "H3": [],
    "H4": ["23:30", "24:00"],
}


def write_hand_feeder(pg: psycopg.Connection) -> None:
    pg.execute(
        "insert into raw.grid_assets (asset_id, asset_type, parent_id, rated_kva) values "
        "('FH', 'feeder', 'R1', null), ('TH', 'transformer', 'FH', 50)"
    )
    for meter in HAND_OFF:
        pg.execute(
            "insert into raw.meters (meter_id, meter_role, customer_class, tariff, "
            "transformer_id, feeder_id, region, gateway_id) "
            "values (%s, 'customer', 'residential', 'prepaid', 'TH', 'FH', 'R1', 'GW-FH')",
            (meter,),
        )
    day = datetime(2026, 3, 2, tzinfo=UTC)
    with pg.cursor() as cur:
        for meter, off in HAND_OFF.items():
            off_ts = {day + timedelta(hours=int(t[:2]), minutes=int(t[3:])) for t in off}
            for i in range(1, 49):
                ts = day + timedelta(minutes=30 * i)
                is_off = ts in off_ts
                cur.execute(
                    "insert into raw.readings (meter_id, ts, interval_s, kwh, supply, "
                    "gateway_id, batch_id) values (%s, %s, 1800, %s, %s, 'GW-FH', 'hand')",
                    (meter, ts, 0.0 if is_off else 0.125, "off" if is_off else "on"),
                )


# A few customer meters pinned intermittent (raw.meters.load_shape); the rest are not pinned.
PIN_INTERMITTENT = (
    "update raw.meters set load_shape = 'intermittent' where meter_id in "
    "(select meter_id from raw.meters where meter_role = 'customer' order by meter_id limit 5)"
)


@dataclass
class Built:
    fleet: WarehouseFleet
    pg_dsn: str
    url: str
    settings: WarehouseSettings
    build_output: str
    dbt_env: dict[str, str]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Built]:
    fleet = marts_fleet()
    work = tmp_path_factory.mktemp("marts")
    with scratch_database("wh_test") as pg_dsn:
        with psycopg.connect(pg_dsn, autocommit=True) as pg:
            write_warehouse_fleet(pg, fleet)
            write_hand_feeder(pg)
            pg.execute(PIN_INTERMITTENT)
        with built_warehouse(pg_dsn, work) as b:
            yield Built(fleet, pg_dsn, b.url, b.settings, b.build_output, b.dbt_env)


def test_dbt_build_runs_every_model_test_and_unit_test(built: Built) -> None:
    summary = built.build_output.strip().splitlines()
    assert any("ERROR=0" in line and "PASS=" in line for line in summary)
    declared = [
        t["name"]
        for path in (Path(built.settings.dbt_project_dir) / "models").rglob("*.yml")
        for t in yaml.safe_load(path.read_text()).get("unit_tests", [])
    ]
    assert len(declared) >= 3
    for name in declared:  # every unit test ran (and passed: ERROR=0 above)
        assert name in built.build_output, name


def _dbt_models(built: Built) -> list[dict[str, Any]]:
    """The model nodes of the manifest the build wrote (their database and YAML file)."""
    manifest = Path(built.dbt_env["DBT_TARGET_PATH"], "manifest.json")
    nodes = json.loads(manifest.read_text())["nodes"].values()
    return sorted((n for n in nodes if n["resource_type"] == "model"), key=lambda n: n["unique_id"])


def _declared_columns(built: Built, node: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    """The model's YAML file (relative to the dbt project) and its ``columns`` list, read from
    the file itself (as the data dictionary does), duplicates and order included."""
    patch_path = node.get("patch_path")
    if not patch_path:
        return "(no YAML)", []
    relative = patch_path.split("://", 1)[-1]
    doc = yaml.safe_load((built.settings.dbt_project_dir / relative).read_text())
    entries = [m for m in doc.get("models", []) if m["name"] == node["name"]]
    assert len(entries) == 1, f"{node['name']} is declared {len(entries)} times in {relative}"
    return relative, entries[0].get("columns") or []


def _column_difference(declared: list[tuple[str, str]], built: list[tuple[str, str]]) -> str:
    lines = []
    declared_types, built_types = dict(declared), dict(built)
    for name, data_type in declared:
        if name not in built_types:
            lines.append(f"  declared but not built: {name} {data_type}")
        elif built_types[name] != data_type:
            lines.append(f"  {name}: declared data_type {data_type!r}, built {built_types[name]!r}")
    lines += [f"  built but not declared: {n} {t}" for n, t in built if n not in declared_types]
    if len(set(declared_types)) != len(declared):
        lines.append("  a column is declared more than once")
    if not lines:
        lines.append("  same columns, other order")
    diff = difflib.unified_diff(
        [f"{n} {t}" for n, t in declared],
        [f"{n} {t}" for n, t in built],
        "declared (YAML)",
        "built (system.columns)",
        lineterm="",
    )
    return "\n".join(lines + ["  " + line for line in diff])


def test_yaml_declares_every_column_of_every_model_with_its_built_type(built: Built) -> None:
    """Each model's YAML lists its columns in the order the built relation has them, with the
    type ``system.columns`` reports (the data dictionary is generated from that YAML)."""
    models = _dbt_models(built)
    # Models land in the database named by their folder (macros/generate_schema_name.sql).
    assert {n["schema"] for n in models} == {"staging", "intermediate", "marts"}
    client = connect(built.url)
    try:
        rows = client.query(
            "select database, table, name, type from system.columns "
            "where database in {databases:Array(String)} order by database, table, position",
            parameters={"databases": sorted({n["schema"] for n in models})},
        ).result_rows
    finally:
        client.close()
    columns: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for database, table, name, ctype in rows:
        columns.setdefault((database, table), []).append((name, ctype))

    problems = []
    undescribed = []
    for node in models:
        relation = (node["schema"], node["alias"])
        yml, declared_columns = _declared_columns(built, node)
        declared = [(c["name"], str(c.get("data_type", ""))) for c in declared_columns]
        undescribed += [
            f"{node['name']}.{c['name']}"
            for c in declared_columns
            if not str(c.get("description") or "").strip()
        ]
        actual = columns.get(relation)
        if actual is None:
            problems.append(f"{node['name']}: no relation {'.'.join(relation)} was built")
        elif declared != actual:
            problems.append(
                f"{node['name']} ({'.'.join(relation)}, dbt/{yml}):\n"
                + _column_difference(declared, actual)
            )
    assert not problems, "YAML columns differ from the built models:\n" + "\n".join(problems)
    assert not undescribed, f"columns without a description: {undescribed}"


def test_energy_balance_flags_exactly_the_transformers_with_bypass(built: Built) -> None:
    client = connect(built.url)
    try:
        rows = client.query(
            """
            select asset_id, countIf(is_loss_anomalous) as flagged, count() as days
            from marts.mart_energy_balance
            where asset_level = 'transformer' and is_complete
              and balance_date >= toDate('2026-03-01') + {onset:UInt32}
            group by asset_id
            """,
            parameters={"onset": built.fleet.onset_day},
        ).result_rows
        before = client.command(
            "select countIf(is_loss_anomalous) from marts.mart_energy_balance "
            "where asset_level = 'transformer' and balance_date < toDate('2026-03-01') + "
            f"{built.fleet.onset_day}"
        )
    finally:
        client.close()
    flagged = {asset for asset, n, days in rows if n >= 0.8 * days}
    assert len(built.fleet.theft_transformers) == 2
    assert flagged == built.fleet.theft_transformers
    assert all(n == 0 for asset, n, _ in rows if asset not in built.fleet.theft_transformers)
    assert before == 0, "no transformer is flagged before the theft starts"


def test_inspection_list_ranks_the_thieves_first(built: Built) -> None:
    client = connect(built.url)
    try:
        ranked = client.query(
            "select meter_id, reasons from marts.mart_inspection_list order by inspection_rank"
        ).result_rows
    finally:
        client.close()
    thieves = built.fleet.thieves
    top = [meter for meter, _ in ranked[: len(thieves)]]
    assert set(top) == thieves, f"top {len(thieves)}: {top}, thieves: {sorted(thieves)}"
    reasons = dict(ranked)
    for meter in thieves:
        assert any("unexplained" in r for r in reasons[meter])
        assert any("consumption dropped" in r for r in reasons[meter])


def test_the_inspection_sheet_shows_each_meters_load_shape(built: Built) -> None:
    """The sheet carries the registry's load shape, continuous where none is pinned."""
    with psycopg.connect(built.pg_dsn) as pg:
        pinned = dict(pg.execute("select meter_id, load_shape from raw.meters").fetchall())
    client = connect(built.url)
    try:
        sheet = dict(
            client.query("select meter_id, load_shape from marts.mart_inspection_sheet").result_rows
        )
    finally:
        client.close()
    assert sheet and "intermittent" in sheet.values()
    assert sheet == {meter: pinned[meter] or "continuous" for meter in sheet}


def test_reliability_indices_equal_the_hand_computed_values(built: Built) -> None:
    client = connect(built.url)
    try:
        row = client.query(
            "select customers_served, customer_interruptions, customer_minutes_interrupted, "
            "saifi, saidi_min, caidi_min from marts.mart_supply_reliability "
            "where feeder_id = 'FH' and month_start = '2026-03-01'"
        ).result_rows
    finally:
        client.close()
    assert row == [(4, 4, 240.0, 1.0, 60.0, 60.0)]


def _rows(built: Built, query: str) -> list[tuple[Any, ...]]:
    client = connect(built.url)
    try:
        return list(client.query(query).result_rows)
    finally:
        client.close()


def test_hourly_energy_adds_up_to_the_daily_balance(built: Built) -> None:
    """mart_energy_hourly's supplied and billed energy, summed per day and feeder, are the
    feeder balance's supplied and billed energy (the same readings, another grain)."""
    hourly = _rows(
        built,
        "select reading_date, feeder_id, sum(supplied_kwh), sum(billed_kwh) "
        "from marts.mart_energy_hourly where feeder_id like 'F0%' group by all order by all",
    )
    balance = _rows(
        built,
        "select balance_date, asset_id, supplied_kwh, billed_kwh from marts.mart_energy_balance "
        "where asset_level = 'feeder' and asset_id like 'F0%' order by all",
    )
    assert len(hourly) == len(balance) == built.fleet.days * built.fleet.n_feeders
    for h, b in zip(hourly, balance, strict=True):
        assert h[:2] == b[:2] and h[2] == pytest.approx(b[2]) and h[3] == pytest.approx(b[3])


def test_supply_hours_follow_the_fleets_load_shedding(built: Built) -> None:
    fleet = built.fleet
    off_hours: dict[tuple[str, str], float] = {}
    for outage in fleet.outages:
        day = datetime.fromtimestamp(outage.start_s, UTC).date().isoformat()
        key = (day, outage.feeder_id)
        off_hours[key] = off_hours.get(key, 0.0) + outage.intervals * fleet.interval_s / 3600
    rows = _rows(
        built,
        "select toString(supply_date), feeder_id, load_shedding_hours, meets_promise "
        "from marts.mart_supply_daily where feeder_id like 'F0%'",
    )
    assert len(rows) == fleet.days * fleet.n_feeders and off_hours
    for day, feeder, shed, meets in rows:
        # a missing reading is not an outage: scaled to the intervals received
        assert shed == pytest.approx(off_hours.get((day, feeder), 0.0), abs=0.1), (day, feeder)
        assert meets == (24 - shed >= 20)


def test_quarantine_rates_by_reason_are_exact(built: Built) -> None:
    """Every (gateway, reason) the fleet quarantined is counted, the mart is dense over
    reasons, and the rate grouped by reason is quarantined / everything delivered."""
    expected = {(gw, reason.split(":")[0]): n for gw, reason, n in built.fleet.quarantine()}
    rows = _rows(
        built,
        "select gateway_id, reason_kind, quarantined_rows, received_rows "
        "from marts.mart_quarantine_daily where gateway_id like 'GW-F0%'",
    )
    got = {(gw, kind): q for gw, kind, q, _ in rows if q}
    assert got == expected
    gateways = {gw for gw, *_ in rows}
    kinds = {kind for _, kind, *_ in rows}
    assert "validation" in kinds  # write_warehouse_fleet's row without a gateway: 0 here
    assert len(rows) == len(gateways) * len(kinds)
    delivered = dict(
        _rows(
            built,
            "select gateway_id, count() from raw.readings final "
            "where gateway_id like 'GW-F0%' group by gateway_id",
        )
    )
    for gw, _, _, received in rows:
        quarantined = sum(n for (g, _), n in expected.items() if g == gw)
        assert received == delivered[gw] + quarantined
    for kind in {kind for _, kind in expected}:
        (rate,) = _rows(
            built,
            "select sum(quarantined_rows) / sum(received_rows) from marts.mart_quarantine_daily "
            f"where gateway_id like 'GW-F0%' and reason_kind = '{kind}'",
        )
        of_kind = sum(n for (_, k), n in expected.items() if k == kind)
        everything = sum(delivered.values()) + sum(expected.values())
        assert rate[0] == pytest.approx(of_kind / everything), kind


def test_data_completeness_counts_missing_days(built: Built) -> None:
    client = connect(built.url)
    try:
        h1 = client.query(
            "select reading_date, expected_intervals, received_intervals, completeness_ratio "
            "from marts.mart_data_completeness where meter_id = 'H1' order by reading_date"
        ).result_rows
    finally:
        client.close()
    # H1 has no installation date: it owes data from its first reading (03-02) to the end of
    # the data (03-14), a row for every day, also those it sent nothing on.
    assert [d.isoformat() for d, *_ in h1] == [f"2026-03-{d:02d}" for d in range(2, 15)]
    by_day = {d.isoformat(): (e, r, c) for d, e, r, c in h1}
    assert by_day["2026-03-02"] == (48, 48, 1.0)
    assert by_day["2026-03-05"] == (48, 0, 0.0)


def test_models_compile_against_the_server_profile(built: Built) -> None:
    settings = built.settings.model_copy(update={"dbt_target": "server"})
    args = ["compile", "--target", "server"]
    done = run_dbt(settings, args, capture=True, extra_env=built.dbt_env)
    assert done.returncode == 0, done.stdout[-4000:]
    compiled = Path(built.dbt_env["DBT_TARGET_PATH"], "compiled", "eiot", "models")
    sql = "\n".join(p.read_text() for p in compiled.rglob("*.sql"))
    assert "mart_energy_balance" in "".join(str(p) for p in compiled.rglob("*.sql"))
    for embedded_only in ("chdb", "Python(", "file("):
        assert embedded_only not in sql


def test_incremental_run_picks_up_late_readings(built: Built) -> None:
    with psycopg.connect(built.pg_dsn, autocommit=True) as pg:
        pg.execute(
            "insert into raw.readings (meter_id, ts, interval_s, kwh, gateway_id, batch_id) "
            "values ('LATE1', '2026-03-03T00:30Z', 1800, 7.5, 'GW-X', 'late'), "
            "('LATE1', '2026-03-03T01:00Z', 1800, 2.5, 'GW-X', 'late')"
        )
    load(built.settings)
    done = run_dbt(
        built.settings,
        [
            "run",
            "--select",
            "int_readings_daily",
            "int_readings_hourly",
            "mart_consumption_metrics",
        ],
        capture=True,
        extra_env=built.dbt_env,
    )
    assert done.returncode == 0, done.stdout[-4000:]
    client = connect(built.url)
    try:
        assert client.query(
            "select energy_kwh, meter_role from marts.mart_consumption_metrics "
            "where meter_id = 'LATE1'"
        ).result_rows == [(10.0, "unregistered")]
        duplicates = client.command(
            "select count() - uniqExact(meter_id, reading_date) from marts.mart_consumption_metrics"
        )
    finally:
        client.close()
    assert duplicates == 0


def test_quality_passes_on_the_marts_and_fails_on_a_corrupted_row(
    built: Built, tmp_path: Path
) -> None:
    marts = [
        "mart_energy_balance",
        "mart_supply_reliability",
        "mart_data_completeness",
        "mart_inspection_list",
    ]
    good = run_quality(built.settings, suites=marts, docs_dir=tmp_path / "docs")
    assert good.success, good.failures
    assert good.docs_index is not None and good.docs_index.exists()

    client = connect(built.url)
    try:
        client.command(
            "insert into marts.mart_energy_balance (balance_date, asset_level, asset_id, "
            "supplied_kwh, billed_kwh, technical_loss_kwh, unexplained_loss_kwh, "
            "total_loss_pct, is_complete, data_completeness) "
            "values ('2026-03-20', 'transformer', 'T-CORRUPT', 100, 10, 5, 50, 90, 1, 1)"
        )
        bad = run_quality(built.settings, suites=["mart_energy_balance"], docs_dir=tmp_path)
    finally:
        client.command("delete from marts.mart_energy_balance where asset_id = 'T-CORRUPT'")
        client.close()
    assert not bad.success
    reasons = {f.reason for f in bad.failures}
    assert any("supplied = billed" in r for r in reasons)
    assert any("plausible" in r for r in reasons)
    assert all(any("T-CORRUPT" in str(row) for row in f.rows) for f in bad.failures)


def test_models_are_sqlfluff_clean(built: Built) -> None:
    """SQLFluff (templater dbt, dialect clickhouse) finds nothing to say about the models."""
    project = built.settings.dbt_project_dir
    sqlfluff = Path(built.settings.dbt_executable).with_name("sqlfluff")
    env = {
        **os.environ,
        **dbt_env(built.url, "embedded"),
        **built.dbt_env,
        "DBT_PROFILES_DIR": str(project),
        "DBT_SEND_ANONYMOUS_USAGE_STATS": "false",
    }
    done = subprocess.run(
        [str(sqlfluff), "lint", "models", "--nocolor"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
