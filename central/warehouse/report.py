"""What ``make demo`` shows at the end: who to visit first, and where the energy goes."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from central.warehouse.client import connect
from central.warehouse.settings import WarehouseSettings

INSPECTION_SQL = """
    select inspection_rank, meter_id, transformer_id, round(inspection_score, 3) as score,
           arrayStringConcat(reasons, '; ') as why
    from marts.mart_inspection_list
    order by inspection_rank
    limit {limit:UInt32}
"""

WORST_TRANSFORMERS_SQL = """
    select asset_id as transformer_id, any(feeder_id) as feeder_id,
           round(sum(supplied_kwh), 1) as supplied_kwh_total,
           round(sum(billed_kwh), 1) as billed_kwh_total,
           round(sum(unexplained_loss_kwh), 1) as unexplained_kwh_total,
           round(100 * sum(unexplained_loss_kwh) / nullIf(sum(supplied_kwh), 0), 1)
               as unexplained_pct,
           countIf(is_loss_anomalous) as flagged_days
    from marts.mart_energy_balance
    where asset_level = 'transformer' and is_complete
    group by asset_id
    order by unexplained_kwh_total desc
    limit {limit:UInt32}
"""


def print_report(
    settings: WarehouseSettings, limit: int = 10, console: Console | None = None
) -> None:
    console = console or Console()
    client = connect(settings.clickhouse_dsn)
    try:
        if not client.command("exists table marts.mart_inspection_list"):
            console.print(
                "No marts yet: run `central warehouse load` then `central warehouse dbt`."
            )
            return
        for title, sql in (
            ("Inspection list: meters to visit first", INSPECTION_SQL),
            ("Transformers losing the most energy (unexplained)", WORST_TRANSFORMERS_SQL),
        ):
            result = client.query(sql, parameters={"limit": limit})
            table = Table(title=title, title_justify="left")
            for name in result.column_names:
                table.add_column(name, overflow="fold")
            for row in result.result_rows:
                table.add_row(*(str(v) for v in row))
            console.print(table)
    finally:
        client.close()
