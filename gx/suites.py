"""Expectation suites, as code: what the data must look like before anyone reads a dashboard.

Loaded by ``central quality run`` (``central/warehouse/quality.py``). Two families:

* ``raw_suites``: Postgres ``raw`` as the ingest service stored it (ranges, keys, freshness,
  quarantine rate);
* ``mart_suites``: the ClickHouse marts dbt built (balance identity, plausible losses,
  reliability indices, completeness ratios).

Each suite names its table and the key columns that identify a failing row in the report.
``UnexpectedRowsExpectation`` queries return the offending rows themselves; ``{batch}`` is the
suite's table.
"""

from __future__ import annotations

import great_expectations.expectations as gxe

from central.warehouse.quality import QualityParams, SuiteSpec
from edge_agent.vocabulary import ID_PATTERN, SUPPLY_STATES


def raw_suites(p: QualityParams) -> list[SuiteSpec]:
    window = f"interval '{p.quarantine_window_hours} hours'"
    readings = SuiteSpec(
        name="raw_readings",
        source="postgres",
        schema="raw",
        table="readings",
        key=["meter_id", "ts"],
        expectations=[
            gxe.ExpectColumnValuesToNotBeNull(column="meter_id"),
            gxe.ExpectColumnValuesToMatchRegex(column="meter_id", regex=ID_PATTERN),
            gxe.ExpectCompoundColumnsToBeUnique(column_list=["meter_id", "ts"]),
            gxe.ExpectColumnValuesToBeBetween(column="interval_s", min_value=300, max_value=86400),
            # 5 MW for 30 minutes: the wire contract's ceiling for any single meter.
            gxe.ExpectColumnValuesToBeBetween(column="kwh", min_value=0, max_value=p.max_kwh),
            gxe.ExpectColumnValuesToBeBetween(column="voltage_v", min_value=0, max_value=300),
            gxe.ExpectColumnValuesToBeBetween(column="power_factor", min_value=-1, max_value=1),
            gxe.ExpectColumnValuesToBeBetween(column="humidity_pct", min_value=0, max_value=100),
            gxe.ExpectColumnValuesToBeInSet(column="supply", value_set=list(SUPPLY_STATES)),
            gxe.UnexpectedRowsExpectation(
                description="No reading ends more than 5 minutes after it was received.",
                unexpected_rows_query=(
                    "select meter_id, ts, received_at from {batch} "
                    "where ts > received_at + interval '5 minutes'"
                ),
            ),
            gxe.UnexpectedRowsExpectation(
                description=f"Readings keep arriving: newest within {p.max_age_hours} h.",
                unexpected_rows_query=(
                    "select max(received_at) as newest_received_at from {batch} "
                    f"having max(received_at) < now() - interval '{p.max_age_hours} hours'"
                ),
            ),
            gxe.UnexpectedRowsExpectation(
                description=(
                    f"Quarantined input stays under {100 * p.max_quarantine_rate:g}% of what "
                    f"arrived in the last {p.quarantine_window_hours} h."
                ),
                unexpected_rows_query=f"""
                    select q.n as quarantined, r.n as readings,
                           q.n::float8 / (q.n + r.n) as quarantine_rate
                    from (select count(*) as n from raw.quarantine
                          where stored_at > now() - {window}) q,
                         (select count(*) as n from {{batch}}
                          where received_at > now() - {window}) r
                    where q.n + r.n > 0
                      and q.n::float8 / (q.n + r.n) > {p.max_quarantine_rate}
                """,
            ),
        ],
    )
    meters = SuiteSpec(
        name="raw_meters",
        source="postgres",
        schema="raw",
        table="meters",
        key=["meter_id"],
        expectations=[
            gxe.ExpectColumnValuesToBeUnique(column="meter_id"),
            gxe.ExpectColumnValuesToMatchRegex(column="meter_id", regex=ID_PATTERN),
            gxe.ExpectColumnValuesToBeInSet(
                column="meter_role", value_set=["customer", "transformer"]
            ),
            gxe.ExpectColumnValuesToBeInSet(column="tariff", value_set=["prepaid", "postpaid"]),
            gxe.UnexpectedRowsExpectation(
                description="Every transformer supply meter names its transformer.",
                unexpected_rows_query=(
                    "select meter_id from {batch} "
                    "where meter_role = 'transformer' and transformer_id is null"
                ),
            ),
        ],
    )
    return [readings, meters]


def mart_suites(p: QualityParams) -> list[SuiteSpec]:
    balance = SuiteSpec(
        name="mart_energy_balance",
        source="clickhouse",
        schema="marts",
        table="mart_energy_balance",
        key=["balance_date", "asset_level", "asset_id"],
        expectations=[
            gxe.ExpectCompoundColumnsToBeUnique(
                column_list=["balance_date", "asset_level", "asset_id"]
            ),
            gxe.ExpectColumnValuesToBeBetween(column="data_completeness", min_value=0, max_value=1),
            gxe.ExpectColumnValuesToBeBetween(column="supplied_kwh", min_value=0),
            gxe.UnexpectedRowsExpectation(
                description="supplied = billed + technical loss + unexplained loss.",
                unexpected_rows_query=(
                    "select balance_date, asset_level, asset_id, supplied_kwh, billed_kwh, "
                    "technical_loss_kwh, unexplained_loss_kwh from {batch} "
                    "where abs(supplied_kwh - billed_kwh - technical_loss_kwh "
                    "- unexplained_loss_kwh) > 1e-6 * greatest(1, supplied_kwh)"
                ),
            ),
            gxe.UnexpectedRowsExpectation(
                description=(
                    f"On complete days, total loss is plausible: between {p.min_loss_pct:g}% "
                    f"and {p.max_loss_pct:g}% of supply."
                ),
                unexpected_rows_query=(
                    "select balance_date, asset_level, asset_id, total_loss_pct from {batch} "
                    f"where is_complete and (total_loss_pct < {p.min_loss_pct} "
                    f"or total_loss_pct > {p.max_loss_pct})"
                ),
            ),
        ],
    )
    reliability = SuiteSpec(
        name="mart_supply_reliability",
        source="clickhouse",
        schema="marts",
        table="mart_supply_reliability",
        key=["feeder_id", "month_start"],
        expectations=[
            gxe.ExpectCompoundColumnsToBeUnique(column_list=["feeder_id", "month_start"]),
            gxe.ExpectColumnValuesToBeBetween(column="saidi_min", min_value=0),
            gxe.ExpectColumnValuesToBeBetween(column="saifi", min_value=0),
            gxe.ExpectColumnValuesToBeBetween(column="caidi_min", min_value=0),
            gxe.ExpectColumnValuesToBeBetween(column="customers_served", min_value=1),
        ],
    )
    completeness = SuiteSpec(
        name="mart_data_completeness",
        source="clickhouse",
        schema="marts",
        table="mart_data_completeness",
        key=["meter_id", "reading_date"],
        expectations=[
            gxe.ExpectColumnValuesToNotBeNull(column="completeness_ratio"),
            gxe.ExpectColumnValuesToBeBetween(
                column="completeness_ratio", min_value=0, max_value=1
            ),
        ],
    )
    inspection = SuiteSpec(
        name="mart_inspection_list",
        source="clickhouse",
        schema="marts",
        table="mart_inspection_list",
        key=["inspection_rank", "meter_id"],
        expectations=[
            gxe.ExpectColumnValuesToBeUnique(column="meter_id"),
            gxe.ExpectColumnValuesToBeBetween(column="inspection_score", min_value=0, max_value=1),
        ],
    )
    return [balance, reliability, completeness, inspection]
