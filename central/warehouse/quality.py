"""``central quality run``: Great Expectations 1.x checkpoints on Postgres raw and the marts.

The suites are code, in ``gx/suites.py``. Both stores are validated through GX SQL data
sources: Postgres with ``postgresql+psycopg``, ClickHouse with clickhouse-connect's SQLAlchemy
dialect (``clickhousedb://``) over HTTP (an embedded warehouse is served by its owner process
for the run). One checkpoint per suite updates the Data Docs site; a failed
expectation makes the run fail and the report lists the failing rows by their key.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Literal
from urllib.parse import quote, urlencode, urlsplit, urlunsplit

from psycopg.conninfo import conninfo_to_dict
from rich.console import Console
from rich.table import Table

from central.warehouse.client import served
from central.warehouse.settings import WarehouseSettings

SAMPLE_ROWS = 10


@dataclass(frozen=True)
class QualityParams:
    max_kwh: float = 2500.0
    max_age_hours: int = 24
    quarantine_window_hours: int = 24
    max_quarantine_rate: float = 0.05
    min_loss_pct: float = -5.0
    max_loss_pct: float = 60.0


@dataclass
class SuiteSpec:
    """One expectation suite on one table, with the columns that identify a failing row."""

    name: str
    source: Literal["postgres", "clickhouse"]
    schema: str
    table: str
    key: list[str]
    expectations: list[Any] = field(default_factory=list)


@dataclass
class Failure:
    suite: str
    expectation: str
    column: str
    reason: str
    unexpected_count: int | None
    rows: list[dict[str, Any]]


@dataclass
class QualityOutcome:
    success: bool
    failures: list[Failure]
    suites_run: list[str]
    docs_index: Path | None


def load_suites(gx_dir: Path) -> ModuleType:
    path = gx_dir / "suites.py"
    spec = importlib.util.spec_from_file_location("eiot_gx_suites", path)
    if spec is None or spec.loader is None:
        raise FileNotFoundError(path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sqlalchemy_postgres(dsn: str) -> str:
    """A libpq DSN (URL or key=value, as ``central db login`` prints) as a SQLAlchemy URL. User
    and password are percent-encoded: a ``$`` or ``@`` in a password stays a character (GX
    would read ``${...}`` as one of its config variables)."""
    params = conninfo_to_dict(dsn)
    auth = quote(str(params.pop("user", "")), safe="")
    if params.get("password"):
        auth += ":" + quote(str(params.pop("password")), safe="")
    netloc = (auth + "@" if auth else "") + str(params.pop("host", "localhost"))
    if params.get("port"):
        netloc += f":{params.pop('port')}"
    path = "/" + quote(str(params.pop("dbname", "")), safe="")
    query = urlencode({k: str(v) for k, v in params.items() if v is not None})
    return urlunsplit(("postgresql+psycopg", netloc, path, query, ""))


def _sqlalchemy_clickhouse(url: str, database: str) -> str:
    parts = urlsplit(url)
    user = parts.username or "default"
    password = parts.password or ""
    port = parts.port or (8443 if parts.scheme == "https" else 8123)
    netloc = f"{user}:{password}@{parts.hostname}:{port}"
    query = "protocol=https" if parts.scheme == "https" else ""
    return urlunsplit(("clickhousedb", netloc, f"/{database}", query, ""))


def _describe(result: Any, key: list[str]) -> Failure:
    config = result.expectation_config
    kwargs = dict(config.kwargs)
    details = result.result or {}
    column = kwargs.get("column") or ",".join(kwargs.get("column_list") or [])
    bounds = {k: kwargs[k] for k in ("min_value", "max_value", "value_set", "regex") if k in kwargs}
    reason = config.description or config.type
    if bounds:
        reason = f"{config.type} {bounds}"
    rows: list[dict[str, Any]] = []
    if details.get("unexpected_index_list"):
        rows = [dict(r) for r in details["unexpected_index_list"][:SAMPLE_ROWS]]
    elif details.get("details", {}).get("unexpected_rows"):
        rows = [dict(r) for r in details["details"]["unexpected_rows"][:SAMPLE_ROWS]]
    elif details.get("partial_unexpected_list"):
        rows = [{column or "value": v} for v in details["partial_unexpected_list"][:SAMPLE_ROWS]]
    if result.exception_info and result.exception_info.get("raised_exception"):
        reason = f"error: {result.exception_info.get('exception_message')}"
    count = details.get("unexpected_count")
    if count is None and "observed_value" in details:
        count = details["observed_value"]
    return Failure("", config.type, column, reason, count, rows)


def run_quality(
    settings: WarehouseSettings,
    suites: list[str] | None = None,
    docs_dir: Path | None = None,
    params: QualityParams | None = None,
    console: Console | None = None,
    marts_schema: str | None = None,
) -> QualityOutcome:
    """Run the raw and mart checkpoints; print the failures; build Data Docs to ``docs_dir``.
    ``marts_schema`` checks the marts in another database than the served one (the
    orchestrated refresh checks ``marts_build_schema`` before publishing it)."""
    console = console or Console(stderr=True)
    params = params or QualityParams()
    docs_dir = docs_dir or settings.gx_dir / "uncommitted" / "data_docs" / "local_site"
    # GX and its dependencies warn about their own deprecations at import time.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        return _run(settings, suites, docs_dir, params, console, marts_schema)


def _run(
    settings: WarehouseSettings,
    only: list[str] | None,
    docs_dir: Path,
    params: QualityParams,
    console: Console,
    marts_schema: str | None = None,
) -> QualityOutcome:
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    module = load_suites(settings.gx_dir)
    marts = [
        dataclasses.replace(s, schema=marts_schema or settings.marts_schema)
        for s in module.mart_suites(params)
    ]
    specs: list[SuiteSpec] = module.raw_suites(params) + marts
    if only:
        unknown = sorted(set(only) - {s.name for s in specs})
        if unknown:
            raise ValueError(f"unknown suites: {', '.join(unknown)}")
        specs = [s for s in specs if s.name in only]

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    docs_dir.mkdir(parents=True, exist_ok=True)
    context.add_data_docs_site(
        site_name="local",
        site_config={
            "class_name": "SiteBuilder",
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            "store_backend": {
                "class_name": "TupleFilesystemStoreBackend",
                "base_directory": str(docs_dir),
            },
        },
    )
    needs_clickhouse = any(s.source == "clickhouse" for s in specs)
    with served(settings.clickhouse_dsn) if needs_clickhouse else _no_server() as ch_url:
        sources: dict[tuple[str, str], Any] = {}
        try:
            failures, success = _validate(context, specs, sources, settings, str(ch_url))
        finally:
            # Close the data sources' connection pools (GX leaves them to the garbage collector).
            for source in sources.values():
                with contextlib.suppress(Exception):
                    source.get_engine().dispose()
    index = docs_dir / "index.html"
    docs = index if index.exists() else None
    names = [s.name for s in specs]
    _report(console, names, failures, docs)
    return QualityOutcome(success, failures, names, docs)


def _validate(
    context: Any,
    specs: list[SuiteSpec],
    sources: dict[tuple[str, str], Any],
    settings: WarehouseSettings,
    ch_url: str,
) -> tuple[list[Failure], bool]:
    import great_expectations as gx
    from great_expectations.checkpoint.actions import UpdateDataDocsAction

    failures: list[Failure] = []
    success = True
    for spec in specs:
        source_key = (spec.source, spec.schema)
        if source_key not in sources:
            name = f"{spec.source}_{spec.schema}"
            if spec.source == "postgres":
                conn = sqlalchemy_postgres(settings.pg_dsn)
                sources[source_key] = context.data_sources.add_postgres(
                    name, connection_string=conn
                )
            else:
                conn = _sqlalchemy_clickhouse(str(ch_url), spec.schema)
                sources[source_key] = context.data_sources.add_sql(name, connection_string=conn)
        asset = sources[source_key].add_table_asset(
            spec.name, table_name=spec.table, schema_name=spec.schema
        )
        batch = asset.add_batch_definition_whole_table("all")
        suite = context.suites.add(gx.ExpectationSuite(name=spec.name))
        for expectation in spec.expectations:
            suite.add_expectation(expectation)
        definition = context.validation_definitions.add(
            gx.ValidationDefinition(name=spec.name, data=batch, suite=suite)
        )
        # One checkpoint per suite, so that failing rows are reported by the suite's key.
        checkpoint = context.checkpoints.add(
            gx.Checkpoint(
                name=f"{spec.name}_checkpoint",
                validation_definitions=[definition],
                actions=[UpdateDataDocsAction(name="update_docs", site_names=["local"])],
                result_format={
                    "result_format": "COMPLETE",
                    "unexpected_index_column_names": spec.key,
                    "partial_unexpected_count": SAMPLE_ROWS,
                },
            )
        )
        result = checkpoint.run()
        success = success and bool(result.success)
        for suite_result in result.run_results.values():
            for expectation_result in suite_result.results:
                if not expectation_result.success:
                    failure = _describe(expectation_result, spec.key)
                    failure.suite = spec.name
                    failures.append(failure)
    return failures, success


class _no_server:  # noqa: N801 - used as a context manager like `served`
    def __enter__(self) -> str:
        return ""

    def __exit__(self, *exc: object) -> None:
        return None


def _report(
    console: Console, suites: list[str], failures: list[Failure], docs: Path | None
) -> None:
    if not failures:
        console.print(f"[green]quality: all {len(suites)} suites passed[/]: {', '.join(suites)}")
    else:
        table = Table(title="quality: failed expectations", title_justify="left")
        for name in ("suite", "expectation", "column", "why", "count", "failing rows (sample)"):
            table.add_column(name, overflow="fold")
        for f in failures:
            rows = "; ".join(
                ", ".join(f"{k}={v}" for k, v in row.items()) for row in f.rows[:SAMPLE_ROWS]
            )
            table.add_row(f.suite, f.expectation, f.column, f.reason, str(f.unexpected_count), rows)
        console.print(table)
    if docs is not None:
        console.print(f"Data Docs: {docs}")
