"""The project's simulator through the warehouse: the energy balance finds its bypass theft.

The simulator's own loss model (base + slope x utilisation per transformer, drawn at random)
differs from the marts' expected technical loss (fixed base and slope), so the unexplained loss
matches the injected theft only within a tolerance; transformers whose theft is near the alert
threshold may go either way, all others must be classified right.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

import simulator  # noqa: E402
from central.warehouse.client import connect
from simulator.raw_db import scratch_database, write_simulated_fleet
from tests.support.warehouse import built_warehouse

pytestmark = [pytest.mark.services]  # real PostgreSQL; dbt from .venv-dbt (`make install`)

THRESHOLD_PCT = 5.0  # dbt var unexplained_loss_alert_pct
TOLERANCE_PCT = 2.0  # how far the technical-loss model may be from the simulator's


@dataclass
class Result:
    truth: dict[tuple[str, int], tuple[float, float]]
    balance: list[tuple[str, dt.date, float, bool, bool]]


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Result]:
    config = simulator.FleetConfig(
        meters=400,
        days=14,
        seed=11,
        gateways=1,
        regions=1,
        theft_share=0.12,
        fault_share=0.0,
        unmetered_share=0.0,
        theft_weights=(("bypass", 1.0),),
    )
    work = tmp_path_factory.mktemp("sim")
    with scratch_database("wh_test") as pg_dsn:
        truth = write_simulated_fleet(pg_dsn, simulator.Fleet(config))
        with built_warehouse(pg_dsn, work) as built:
            client = connect(built.url)
            try:
                balance = client.query(
                    "select asset_id, balance_date, unexplained_loss_pct, is_complete, "
                    "is_loss_anomalous from marts.mart_energy_balance "
                    "where asset_level = 'transformer'"
                ).result_rows
            finally:
                client.close()
        yield Result(truth, balance)


def stolen_pct(result: Result, transformer: str, day: dt.date) -> float | None:
    number = (day - dt.date(1970, 1, 1)).days
    if (transformer, number) not in result.truth:
        return None
    stolen, supplied = result.truth[(transformer, number)]
    return 100 * stolen / supplied


def test_unexplained_loss_tracks_the_injected_bypass(result: Result) -> None:
    compared = 0
    for transformer, day, unexplained_pct, complete, _ in result.balance:
        truth = stolen_pct(result, transformer, day)
        if truth is None or not complete:
            continue
        compared += 1
        assert unexplained_pct == pytest.approx(truth, abs=TOLERANCE_PCT), (transformer, day)
    assert compared >= 100


def test_flags_exactly_the_transformer_days_with_bypass_theft(result: Result) -> None:
    flagged_theft = missed = false_alarms = 0
    for transformer, day, _, complete, flagged in result.balance:
        truth = stolen_pct(result, transformer, day)
        if truth is None or not complete:
            continue
        if truth > THRESHOLD_PCT + TOLERANCE_PCT:
            flagged_theft += flagged
            missed += not flagged
        elif truth < THRESHOLD_PCT - TOLERANCE_PCT:
            false_alarms += flagged
    assert flagged_theft > 0, "the fleet has transformer-days with theft above the threshold"
    assert (missed, false_alarms) == (0, 0)
