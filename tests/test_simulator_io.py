"""Files, command line, benchmark entry point and the PostgreSQL registry writer."""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest

from simulator import Fleet, FleetConfig
from simulator.cli import build_parser, main
from simulator.writers import write_fleet

ROOT = Path(__file__).resolve().parents[1]
CFG = FleetConfig(meters=150, days=2, gateways=2, seed=17, theft_share=0.3)


def test_csv_parquet_and_labels_hold_what_the_chunks_hold(tmp_path: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    fleet = Fleet(CFG)
    summary = write_fleet(fleet, tmp_path, ("csv", "parquet"), chunk_intervals=10, truth=True)
    chunks = list(fleet.chunks())
    rows = sum(len(c) for c in chunks)
    assert summary["rows"] == rows

    with open(tmp_path / "readings.csv", newline="") as fh:
        records = list(csv.DictReader(fh))
    assert len(records) == rows
    first = chunks[0]
    assert records[0]["meter_id"] == first.meter_id[0]
    assert records[0]["ts"] == "2026-03-01T00:30:00Z"
    assert float(records[0]["kwh"]) == pytest.approx(first.kwh[0], abs=1e-6)
    off = [r for r in records if r["supply"] == "off"]
    assert all(r["voltage_v"] == "" and float(r["kwh"]) == 0 for r in off)

    table = pq.read_table(tmp_path / "readings.parquet")
    assert table.num_rows == rows
    kwh = np.concatenate([c.kwh for c in chunks])
    assert np.allclose(table.column("kwh").to_numpy(), kwh, atol=1e-6)
    flags = table.column("flags").to_pylist()
    expected = [c.flag_list(i) for c in chunks for i in range(len(c))]
    assert flags == expected

    with open(tmp_path / "labels.csv", newline="") as fh:
        labels = list(csv.DictReader(fh))
    labelled = int(sum((c.label_code > 0).sum() for c in chunks))
    assert len(labels) == labelled == summary["labelled_rows"] > 0
    assert {r["category"] for r in labels} <= {"theft", "fault"}
    with_truth = [r for r in records if r["label"]]
    assert len(with_truth) == labelled

    doc = json.loads((tmp_path / "registry.json").read_text())
    assert len(doc["meters"]) == fleet.meter_count()
    assert {t["meter_id"] for t in doc["ground_truth"]} >= {r["meter_id"] for r in labels}
    assert set(doc["gateways"]) == {"gw-01", "gw-02"}


def _walk(parser: argparse.ArgumentParser, path: list[str]):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                assert helps.get(name), f"command {' '.join(path + [name])} has no help"
                yield from _walk(sub, path + [name])


def test_every_command_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    commands = list(_walk(build_parser(), []))
    assert {tuple(p) for p, _ in commands} >= {
        (),
        ("generate",),
        ("info",),
        ("registry",),
        ("seed",),
    }
    for path, parser in commands:
        for action in parser._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, f"{path} {action.option_strings} has no help"
        with pytest.raises(SystemExit) as exit_:
            main([*path, "--help"])
        assert exit_.value.code == 0
    assert "generate" in capsys.readouterr().out


def test_cli_generate_writes_files_and_reports_progress(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "simulator",
            "generate",
            "--meters",
            "80",
            "--days",
            "1",
            "--interval",
            "3600",
            "--gateways",
            "2",
            "--gateway",
            "gw-02",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    summary = json.loads(proc.stdout)
    assert "100%" in proc.stderr
    assert (out / "readings.csv").exists() and (out / "labels.csv").exists()
    fleet = Fleet(FleetConfig(meters=80, days=1, interval_s=3600, gateways=2))
    assert summary["rows"] == 24 * len(fleet.meter_ids_for_gateway(1))
    bad = subprocess.run(
        [sys.executable, "-m", "simulator", "info", "--interval", "1234"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "invalid choice" in bad.stderr


def test_bench_prints_json_last_and_records_it(tmp_path: Path) -> None:
    results = tmp_path / "RESULTS.md"  # not the repository's bench/RESULTS.md
    for _ in range(2):
        proc = subprocess.run(
            [sys.executable, "-m", "bench.simulate", "--meters", "300", "--days", "2"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "EIOT_BENCH_RESULTS": str(results)},
        )
    last = json.loads(proc.stdout.strip().splitlines()[-1])
    assert last["readings"] == last["meters"] * 96
    assert last["readings_per_s"] > 0 and last["peak_rss_mb"] > 0
    rows = [line for line in results.read_text().splitlines() if line.startswith("| 20")]
    assert len(rows) == 2  # one header, a row per run
    assert "`python -m bench.simulate --meters 300 --days 2`" in rows[-1]
    assert rows[-1].endswith(f"`{proc.stdout.strip().splitlines()[-1]}` |")


PG = os.environ.get("EIOT_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


@pytest.mark.services
def test_registry_upserts_into_postgres_idempotently() -> None:
    psycopg = pytest.importorskip("psycopg")
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    from central.db import migrate
    from simulator.registry_db import upsert_registry

    try:
        admin = psycopg.connect(PG, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL not reachable: {exc}")
    name = f"sim_test_{uuid.uuid4().hex[:8]}"
    admin.execute(f'create database "{name}"')
    try:
        dsn = make_conninfo(**{**conninfo_to_dict(PG), "dbname": name})
        migrate(dsn)
        fleet = Fleet(FleetConfig(meters=300, gateways=2, seed=5))
        reg = fleet.registry()
        assert upsert_registry(reg, dsn) == {"assets": len(reg.assets), "meters": len(reg.meters)}
        upsert_registry(reg, dsn)  # again: updates, no duplicates, no errors
        with psycopg.connect(dsn) as conn:
            n_meters = conn.execute("select count(*) from raw.meters").fetchone()[0]
            n_assets = conn.execute("select count(*) from raw.grid_assets").fetchone()[0]
            tx = conn.execute(
                "select count(*) from raw.meters where meter_role = "
                "'transformer' and tariff is null"
            ).fetchone()[0]
        assert (n_meters, n_assets) == (len(reg.meters), len(reg.assets))
        assert tx == sum(1 for m in reg.meters if m["meter_role"] == "transformer")
    finally:
        admin.execute(f'drop database if exists "{name}" with (force)')
        admin.close()
