"""The control-room dashboards: a real Superset (``.venv-superset``, made by ``make test``) over
a warehouse built by dbt from a simulated fleet, driven in a real headless Chromium.

Every dashboard of ``dashboards/`` opens with every chart drawn and none failed or empty; a
native filter changes the charts it scopes; importing twice leaves one copy of everything;
exporting what was imported gives back the repository's files; the warehouse password travels
at import only.
"""

from __future__ import annotations

import contextlib
import difflib
import io
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.parse
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from central.dashboards import bundle
from central.dashboards.__main__ import client, import_bundle, running
from central.dashboards.__main__ import main as dashboards_main
from central.dashboards.server import ADMIN_USER, SupersetHome
from central.dashboards.settings import get_settings as dashboard_settings
from central.local_services import free_port
from simulator.raw_db import scratch_database, write_warehouse_fleet
from tests.support.browser import chromium, screenshot_path
from tests.support.processes import REPO, wait_until
from tests.support.superset import DashboardBrowser
from tests.support.warehouse import built_warehouse, marts_fleet

BUNDLE = REPO / "dashboards"
pytestmark = pytest.mark.timeout(900)


@dataclass(frozen=True)
class Site:
    home: SupersetHome
    warehouse_url: str
    work: Path


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    if not (REPO / ".venv-superset" / "bin" / "superset").exists():
        pytest.fail("no .venv-superset: `make test` makes it (make superset-venv)")
    work = tmp_path_factory.mktemp("dashboards")
    with scratch_database("dash_test") as pg_dsn:
        with psycopg.connect(pg_dsn, autocommit=True) as pg:
            write_warehouse_fleet(pg, marts_fleet())
        with built_warehouse(pg_dsn, work) as built:
            settings = dashboard_settings(
                clickhouse_dsn=f"chdb://{work / 'warehouse'}",  # the embedded path, as make demo
                superset_home=work / "superset",
                superset_port=free_port(),
            )
            with running(settings) as (home, warehouse_url):
                assert warehouse_url == built.url  # the running owner, found by its data dir
                yield Site(home, warehouse_url, work)


def test_the_bundle_has_the_four_dashboards_with_their_filters() -> None:
    found = {d.title: d for d in bundle.dashboards(BUNDLE)}
    assert set(found) == {
        "Grid overview",
        "Revenue protection",
        "Supply reliability",
        "Fleet and data health",
    }
    for d in found.values():
        assert "Date range" in d.filters and d.charts >= 7, d


def test_every_dashboard_draws_every_chart_with_data(site: Site) -> None:
    with chromium(1600, 2400) as browser:
        page = DashboardBrowser(browser, site.home.url)
        page.login(ADMIN_USER, site.home.admin_password())
        for d in bundle.dashboards(BUNDLE):
            opened = page.open(d.slug, d.charts, timeout_s=120)
            page.settled()  # line charts animate in after their first frame
            browser.save_screenshot(str(screenshot_path(f"dashboard_{d.slug}")))
            states = {c.title: (c.state, c.error) for c in opened.charts}
            assert len(opened.charts) == d.charts, (d.slug, states)
            if not all(state == "drawn" for state, _ in states.values()):
                # pytest.fail, not an assert message: pytest shortens those, tracebacks included
                undrawn = {t: s for t, s in states.items() if s[0] != "drawn"}
                tracebacks = "\n".join(last_tracebacks(site.home.home / "superset.log"))
                pytest.fail(f"{d.slug}: charts not drawn {undrawn}\n{tracebacks}")
            for chart in opened.charts:
                assert chart.canvases or chart.text.strip(), (d.slug, chart.title, "draws nothing")
            # nothing from elsewhere (Superset's menu asks for a telemetry pixel; our policy
            # refuses it), but for the map's tiles
            own = urllib.parse.urlsplit(site.home.url).netloc
            assert page.hosts_loaded() <= {own, "tile.openstreetmap.org"}, page.hosts_loaded()
            assert page.refused <= {"apachesuperset.gateway.scarf.sh"}, "the policy blocks more"
    # who opened what is in Superset's log, one JSON line per event, and not in its database
    ids = {d["id"] for d in client(site.home).get("/api/v1/dashboard/?q=(page_size:100)")["result"]}
    charts = sum(d.charts for d in bundle.dashboards(BUNDLE))

    def audit() -> list[dict[str, Any]]:
        return [
            json.loads(line.split("eiot.audit:", 1)[1])
            for line in (site.home.home / "superset.log").read_text().splitlines()
            if "eiot.audit:" in line
        ]

    def charts_loaded() -> set[int]:
        return {e["slice_id"] for e in audit() if e["event"] == "load_chart"}

    # the browser sends its own events in batches, a moment after they happen: one line each
    wait_until(lambda: len(charts_loaded()) == charts, 30, "every chart's load_chart event")
    events = audit()
    assert ids <= {e["dashboard_id"] for e in events if e["action"] == "dashboard"}
    assert ids <= {e["dashboard_id"] for e in events if e["event"] == "mount_dashboard"}
    with contextlib.closing(sqlite3.connect(site.home.home / "superset.db")) as metadata:
        assert metadata.execute("select count(*) from logs").fetchone() == (0,)


def last_tracebacks(log: Path, count: int = 2) -> list[str]:
    """The last tracebacks in Superset's log: a chart's error names the SQL it could not parse,
    or the query that failed, but not where or which statement."""
    chunks = log.read_text(errors="replace").split("Traceback (most recent call last):")[1:]
    ends = []
    for chunk in chunks[-count:]:
        lines = chunk.strip("\n").splitlines()
        raised = next((i for i, line in enumerate(lines) if not line.startswith(" ")), len(lines))
        ends.append("\n".join(lines[max(0, raised - 6) : raised + 15]))  # last frames, message
    return ends


def test_a_filter_changes_the_charts_it_scopes(site: Site) -> None:
    """On the grid overview, choosing one feeder of the two changes every chart (all of them
    have a feeder), and the energy supplied falls to that feeder's share."""
    grid = next(d for d in bundle.dashboards(BUNDLE) if d.slug == "grid-overview")
    with chromium(1600, 2400) as browser:
        page = DashboardBrowser(browser, site.home.url)
        page.login(ADMIN_USER, site.home.admin_password())
        page.open(grid.slug, grid.charts)
        before = {c.title: c for c in page.settled()}
        page.choose("Feeder", "F000")
        page.wait_finished(grid.charts)
        # charts are queried and drawn again one after another: give the last ones time
        deadline = time.monotonic() + 30
        while True:
            after = {c.title: c for c in page.settled()}
            unchanged = [t for t in before if before[t].fingerprint == after[t].fingerprint]
            if not unchanged or time.monotonic() > deadline:
                break
        browser.save_screenshot(str(screenshot_path("dashboard_grid-overview_feeder_F000")))
    assert unchanged == [], unchanged
    assert all(c.state == "drawn" for c in after.values()), {t: c.error for t, c in after.items()}
    supplied_before = float(before["Energy supplied"].text.split()[0].replace(",", "").rstrip("k"))
    supplied_after = float(after["Energy supplied"].text.split()[0].replace(",", "").rstrip("k"))
    assert 0 < supplied_after < supplied_before


def _counts(site: Site) -> dict[str, int]:
    api = client(site.home)
    return {
        kind: api.get(f"/api/v1/{kind}/?q=(page_size:100)")["count"]
        for kind in ("database", "dataset", "chart", "dashboard")
    }


def test_importing_again_is_idempotent(site: Site) -> None:
    first = _counts(site)
    import_bundle(site.home, site.warehouse_url)
    assert _counts(site) == first
    charts = len(list((BUNDLE / "charts").glob("*.yaml")))
    datasets = len(list((BUNDLE / "datasets").rglob("*.yaml")))
    assert first == {"database": 1, "dataset": datasets, "chart": charts, "dashboard": 4}


def test_import_reaches_a_superset_named_by_url_as_compose_runs_it(
    site: Site, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """docker-compose.yml's one-shot `dashboards-import` runs `python -m central.dashboards
    import` with EIOT_SUPERSET_URL and the admin password, no Superset home: it imports
    (idempotent); a wrong password or none is a clear error, not a traceback."""
    first = _counts(site)
    for name in list(os.environ):
        if name.startswith("EIOT_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(site.work)  # no eiot.toml here
    monkeypatch.setenv("EIOT_SUPERSET_HOME", str(site.work / "no-home"))
    monkeypatch.setenv("EIOT_SUPERSET_URL", site.home.url + "/")
    monkeypatch.setenv("EIOT_CLICKHOUSE_DSN", site.warehouse_url)
    assert dashboards_main(["import"]) == 2
    assert "EIOT_SUPERSET_ADMIN_PASSWORD" in capsys.readouterr().err

    monkeypatch.setenv("EIOT_SUPERSET_ADMIN_PASSWORD", site.home.admin_password() + "x")
    assert dashboards_main(["import"]) == 1
    assert "import failed" in capsys.readouterr().err

    monkeypatch.setenv("EIOT_SUPERSET_ADMIN_PASSWORD", site.home.admin_password())
    assert dashboards_main(["import"]) == 0, capsys.readouterr().err
    assert f"into {site.home.url}/" in capsys.readouterr().out
    assert _counts(site) == first


def test_export_gives_back_the_repository_files(site: Site, tmp_path: Path) -> None:
    """What the repository holds is what Superset exports, normalized: an analyst's edit in the
    UI comes back as a diff of the files it touched and nothing else."""
    out = tmp_path / "exported"
    bundle.write_export(client(site.home).export_assets(), out)
    assert bundle.files(out) == bundle.files(BUNDLE)


def test_an_edit_in_superset_comes_back_as_a_small_diff(site: Site, tmp_path: Path) -> None:
    """Renaming a chart: the export renames its file and changes one line in it; nothing else
    moves (the dashboard's layout names charts by UUID)."""
    api = client(site.home)
    charts = api.get("/api/v1/chart/?q=(page_size:100)")["result"]
    chart = next(c for c in charts if c["slice_name"] == "Inspection list")
    api.put(f"/api/v1/chart/{chart['id']}", {"slice_name": "Meters to inspect first"})
    try:
        out = tmp_path / "exported"
        bundle.write_export(api.export_assets(), out)
        before, after = bundle.files(BUNDLE), bundle.files(out)
    finally:
        api.put(f"/api/v1/chart/{chart['id']}", {"slice_name": "Inspection list"})
    (old,) = set(before) - set(after)
    (new,) = set(after) - set(before)
    assert old.startswith("charts/Inspection_list_") and new.startswith("charts/Meters_to_")
    changed = sorted(n for n in before if n in after and before[n] != after[n])
    assert changed == [], changed
    lines = [d for d in difflib.ndiff(before[old].splitlines(), after[new].splitlines())]
    edits = [d for d in lines if d[:1] in "+-"]
    assert edits == ["- slice_name: Inspection list", "+ slice_name: Meters to inspect first"]


def test_a_server_dsn_with_a_password_reaches_superset_but_not_the_files(
    site: Site, tmp_path: Path
) -> None:
    """A ClickHouse server DSN (here the owner server, which ignores logins) with a user and a
    password: Superset gets both, the bundle and its export get neither the password."""
    parts = urllib.parse.urlsplit(site.warehouse_url)
    dsn = f"http://analyst:{urllib.parse.quote('s3cr/et@', safe='')}@{parts.hostname}:{parts.port}"
    import_bundle(site.home, dsn)
    try:
        api = client(site.home)
        db = api.get("/api/v1/database/?q=(page_size:10)")["result"][0]
        detail = api.get(f"/api/v1/database/{db['id']}/connection")["result"]
        assert detail["sqlalchemy_uri"].startswith(
            f"clickhousedb://analyst:XXXXXXXXXX@{parts.hostname}"
        )
        # the masked URI: Superset tests with the password it stored at import
        test = api.post(
            "/api/v1/database/test_connection/",
            {"database_name": db["database_name"], "sqlalchemy_uri": detail["sqlalchemy_uri"]},
        )
        assert test.get("message") == "OK", test
        assert _stored_password(site.home) == "s3cr/et@"
        out = tmp_path / "exported"
        bundle.write_export(api.export_assets(), out)
        assert "s3cr" not in json.dumps(bundle.files(out))
        assert bundle.files(out) == bundle.files(BUNDLE)
    finally:
        import_bundle(site.home, site.warehouse_url)


def _stored_password(home: SupersetHome) -> str:
    """The warehouse password as Superset keeps it (encrypted with its secret key), read
    through Superset's own models."""
    code = (
        "from superset.app import create_app\n"
        "app = create_app()\n"
        "with app.app_context():\n"
        "    from superset.extensions import db\n"
        "    from superset.models.core import Database\n"
        "    print(db.session.query(Database).one().password)\n"
    )
    return _superset_python(home, code).strip().splitlines()[-1]


def _superset_python(home: SupersetHome, code: str) -> str:
    """What ``code`` prints, run by Superset's Python with the home's environment."""
    done = subprocess.run(
        [home.bin("python"), "-c", code], env=home.env(), capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-1000:]
    return done.stdout


def test_the_config_builds_the_sql_dialect_before_a_worker_serves(tmp_path: Path) -> None:
    """Superset's imports leave sqlglot's ClickHouse dialect unloaded, and sqlglot registers a
    dialect before it has built it: the first charts of a fresh worker, parsed on several threads,
    could take it half-built and fail on a backquote. The shared config loads it first."""
    home = SupersetHome(dashboard_settings(superset_home=tmp_path / "home"))
    code = (
        "import os, runpy, superset.utils.core\n"
        "from sqlglot.dialects.dialect import Dialect\n"
        "before = 'clickhouse' in Dialect._classes\n"
        "runpy.run_path(os.environ['SUPERSET_CONFIG_PATH'])\n"
        "print(before, Dialect._classes['clickhouse'].tokenizer_class.__module__)\n"
    )
    assert _superset_python(home, code).split() == ["False", "sqlglot.dialects.clickhouse"]


def test_a_home_keeps_its_secret_key_and_superset_reads_the_shared_config(tmp_path: Path) -> None:
    """The secret key encrypts the stored warehouse password: made once, kept, and taken over
    from a home made by an earlier version (a generated superset_config.py holding it). Superset
    reads deploy/superset/superset_config.py, compose's too, and a site's own settings last."""
    old = SupersetHome(dashboard_settings(superset_home=tmp_path / "old"))
    old.home.mkdir()
    (old.home / "superset_config.py").write_text("SECRET_KEY = 'old-key_1'\nROW_LIMIT = 3\n")
    (old.home / "cache").mkdir()
    (old.home / "cache" / "0123abcd").write_text("a chart result of the old flat cache")
    assert old.secret_key() == "old-key_1" and old.env()["SUPERSET_SECRET_KEY"] == "old-key_1"
    assert not (old.home / "superset_config.py").exists(), "the old config would mislead"
    assert (old.home / "superset_config.py.migrated").exists()  # an older checkout's key
    assert list((old.home / "cache").iterdir()) == [], "nothing prunes the old flat cache"
    assert old.secret_path.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in old.home.iterdir()) == [
        "cache", "secret_key", "superset_config.py.migrated"
    ]  # fmt: skip
    fresh = SupersetHome(dashboard_settings(superset_home=tmp_path / "fresh"))
    key = fresh.secret_key()
    assert len(key) >= 40 and key != "old-key_1" and fresh.secret_key() == key
    assert fresh.env()["SUPERSET_CONFIG_PATH"] == str(REPO / "deploy/superset/superset_config.py")
    (fresh.home / "superset_config_local.py").write_text("ROW_LIMIT = 7\n")
    # Superset's own Python reads it, in the environment Superset is started with
    code = (
        "import os, runpy\n"
        "c = runpy.run_path(os.environ['SUPERSET_CONFIG_PATH'])\n"
        "print(c['SECRET_KEY'] == os.environ['SUPERSET_SECRET_KEY'], c['ROW_LIMIT'],\n"
        "      c['TALISMAN_ENABLED'], type(c['EVENT_LOGGER']).__name__,\n"
        "      c['SQLALCHEMY_DATABASE_URI'], c['DATA_CACHE_CONFIG']['CACHE_TYPE'],\n"
        "      c['DATA_CACHE_CONFIG'].get('CACHE_DEFAULT_TIMEOUT'),\n"
        "      c['FILTER_STATE_CACHE_CONFIG']['CACHE_DEFAULT_TIMEOUT'])\n"
    )

    def config(cache_s: str) -> list[str]:
        done = subprocess.run(
            [fresh.bin("python"), "-c", code],
            env={**fresh.env(), "EIOT_SUPERSET_CACHE_S": cache_s},
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stderr[-1000:]
        return done.stdout.split()

    metadata = f"sqlite:///{fresh.home / 'superset.db'}?check_same_thread=false"
    kept = str(90 * 24 * 3600)  # an analyst's filters outlive the chart cache
    assert config("60") == [
        "True", "7", "True", "AuditLogger", metadata, "FileSystemCache", "60", kept
    ]  # fmt: skip
    # no chart cache at all (to Flask-Caching a timeout of 0 means "never expires")
    assert config("0")[5:] == ["NullCache", "None", kept]
    # an old config whose key cannot be found is not given a new one
    broken = SupersetHome(dashboard_settings(superset_home=tmp_path / "broken"))
    broken.home.mkdir()
    (broken.home / "superset_config.py").write_text('SECRET_KEY = "double-quoted"\n')
    with pytest.raises(RuntimeError, match="SECRET_KEY"):
        broken.secret_key()
    assert not broken.secret_path.exists() and (broken.home / "superset_config.py").exists()
    # nor is an emptied key file
    fresh.secret_path.write_text("")
    with pytest.raises(RuntimeError, match="empty"):
        fresh.secret_key()


LENDING_PROBE = """
import json, os, runpy, sys
from sqlalchemy import create_engine, text
from sqlalchemy.engine.url import make_url
from sqlalchemy.pool import NullPool
from superset.utils.core import QuerySource

mutate = runpy.run_path(os.environ["SUPERSET_CONFIG_PATH"])["DB_CONNECTION_MUTATOR"]
uri = make_url(sys.argv[1])


def engine(source):
    # as Superset's Database._get_sqla_engine: NullPool, then the mutator
    url, params = mutate(uri, {"poolclass": NullPool, "connect_args": {}}, None, None, source)
    return create_engine(url, **params)


every = []  # every client seen stays referenced, so no two share an id()


def clients(source, n):
    # n connections held at once, as n threads of one worker; the clients they ran on
    conns = [engine(source).connect() for _ in range(n)]
    dbs = {c.execute(text("SELECT currentDatabase()")).scalar() for c in conns}
    seen = [c.connection.dbapi_connection.client for c in conns]
    for c in conns:
        c.close()
    assert dbs == {uri.database}, dbs
    every.extend(seen)
    return [id(client) for client in seen]


chart = QuerySource.CHART
first = clients(chart, 1)
again = clients(QuerySource.DASHBOARD, 1) + clients(chart, 1)
wide = clients(chart, 12)
after = clients(chart, 12)
lent = list(every)
lab = clients(QuerySource.SQL_LAB, 1) + clients(QuerySource.SQL_LAB, 1)
lab_clients = every[len(lent):]
mutate.__globals__["_CLIENT_LIFE_S"] = 0.0
old = clients(chart, 1)
print(json.dumps({
    "reused": again == first * 2,
    "wide_distinct": len(set(wide)),
    "kept": len(set(after) & set(wide)),
    "lab_fresh": len(set(lab) | set(first + wide)) == len(set(first + wide)) + 2,
    "renewed": old[0] not in set(first + wide + after),
    "lent_in_a_session": any(c.get_client_setting("session_id") for c in lent),
    "lab_in_a_session": all(c.get_client_setting("session_id") for c in lab_clients),
}))
"""


def test_charts_borrow_warehouse_clients_and_sql_lab_gets_its_own(site: Site) -> None:
    """Superset makes a new engine per query; our configuration lends charts and dashboards
    the clients of a small shelf per connection instead, each to one request at a time, kept
    at most 8 idle and renewed after a while, in no ClickHouse session. SQL Lab gets a new client
    and session per query. Run with Superset's SQLAlchemy against the running warehouse owner."""
    uri, password = bundle.database_uri(site.warehouse_url, "marts")
    assert password is None
    done = subprocess.run(
        [site.home.bin("python"), "-c", LENDING_PROBE, uri],
        env=site.home.env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    probed = json.loads(done.stdout.splitlines()[-1])
    # and Superset itself lends them: a dashboard's chart requests make few new clients
    log = site.home.home / "superset.log"
    made_before = log.read_text().count("new warehouse client")
    grid = next(d for d in bundle.dashboards(BUNDLE) if d.slug == "grid-overview")
    with chromium(1600, 2400) as browser:
        page = DashboardBrowser(browser, site.home.url)
        page.login(ADMIN_USER, site.home.admin_password())
        requests = len(page.open(grid.slug, grid.charts).chart_queries)
        requests += len(page.open(grid.slug, grid.charts).chart_queries)
    made_in_all = log.read_text().count("new warehouse client")
    made = made_in_all - made_before
    workers = site.home.settings.superset_workers
    assert requests >= 2 * grid.charts, requests
    assert made_in_all >= 1, "Superset's chart requests never borrowed a client"
    assert made <= workers * 6, (requests, made)  # the browser asks 6 at a time
    assert probed == {
        "reused": True,  # one client, lent again and again
        "wide_distinct": 12,  # never one client to two requests at once
        "kept": 8,  # what waits idle is bounded
        "lab_fresh": True,
        "renewed": True,  # an old client is closed, a new one made
        "lent_in_a_session": False,  # nothing one request SETs reaches the next
        "lab_in_a_session": True,
    }


def test_database_uri_keeps_the_password_apart() -> None:
    assert bundle.database_uri("http://127.0.0.1:8124", "marts") == (
        "clickhousedb://127.0.0.1:8124/marts",
        None,
    )
    assert bundle.database_uri("https://ro%40x:p%3Aw@ch.example:8443/raw", "marts_v2") == (
        "clickhousedb://ro%40x:XXXXXXXXXX@ch.example:8443/marts_v2?secure=true",
        "p:w",
    )
    with pytest.raises(ValueError):
        bundle.database_uri("chdb:///var/warehouse", "marts")


def test_the_bundle_in_the_repository_names_no_instance_and_no_secret() -> None:
    files = bundle.files(BUNDLE)
    db = yaml.safe_load(files[bundle.WAREHOUSE_DB_FILE])
    assert db["sqlalchemy_uri"] == bundle.PLACEHOLDER_URI and "password" not in db
    assert not db["allow_dml"] and not db["allow_csv_upload"]
    for name, text in files.items():
        doc = yaml.safe_load(text)
        if name.startswith("charts/"):
            assert doc["query_context"] is None
            assert not set(bundle.INSTANCE_PARAMS) & set(doc["params"]), name


def _metric_names(params: dict[str, object]) -> set[str]:
    names = set(params.get("metrics") or [])  # type: ignore[arg-type]
    names |= {
        params[k] for k in ("metric", "timeseries_limit_metric", "x_axis_sort") if params.get(k)
    }  # type: ignore[misc]
    return {n for n in names if isinstance(n, str)}


def _column_names(params: dict[str, object]) -> set[str]:
    names: set[str] = set()
    for key in ("groupby", "all_columns", "tooltip_columns"):
        names |= set(params.get(key) or [])  # type: ignore[arg-type]
    for key in ("x_axis", "start_time", "end_time", "y_axis", "series", "dimension"):
        if isinstance(params.get(key), str):
            names.add(params[key])  # type: ignore[arg-type]
    spatial = params.get("spatial") or {}
    names |= {spatial.get("latCol"), spatial.get("lonCol")} - {None}  # type: ignore[union-attr]
    names |= {f["subject"] for f in params.get("adhoc_filters") or []}  # type: ignore[union-attr]
    return names


def test_charts_datasets_and_marts_agree() -> None:
    """Every metric and column a chart names is its dataset's; every physical dataset has the
    columns its mart declares (dbt/models/marts/_marts.yml), with their types unwrapped."""
    files = {n: yaml.safe_load(t) for n, t in bundle.files(BUNDLE).items()}
    datasets = {d["uuid"]: d for n, d in files.items() if n.startswith("datasets/")}
    marts = yaml.safe_load((REPO / "dbt" / "models" / "marts" / "_marts.yml").read_text())
    declared = {m["name"]: m["columns"] for m in marts["models"]}
    for dataset in datasets.values():
        if dataset["sql"] is None:
            built = {c["name"]: c["data_type"] for c in declared[dataset["table_name"]]}
            listed = {c["column_name"]: c["type"] for c in dataset["columns"]}
            assert set(listed) == set(built), (dataset["table_name"], set(listed) ^ set(built))
            for name, listed_type in listed.items():
                assert listed_type in built[name] and "Nullable" not in listed_type, name
        else:
            refs = {
                t.removeprefix("from ") for t in dataset["sql"].split() if t.startswith("mart_")
            }
            assert refs <= set(declared), dataset["table_name"]
    for name, chart in files.items():
        if not name.startswith("charts/"):
            continue
        dataset = datasets[chart["dataset_uuid"]]
        metrics = {m["metric_name"] for m in dataset["metrics"]}
        columns = {c["column_name"] for c in dataset["columns"]}
        assert _metric_names(chart["params"]) <= metrics, (
            name,
            _metric_names(chart["params"]) - metrics,
        )
        assert _column_names(chart["params"]) <= columns, (
            name,
            _column_names(chart["params"]) - columns,
        )


def test_an_export_writes_only_the_bundles_files_inside_the_bundle(tmp_path: Path) -> None:
    """A hostile or foreign ZIP cannot write outside the bundle folder: names are rebuilt from
    sanitized titles, unknown kinds are dropped."""
    chart = {"slice_name": "../../escape", "uuid": "../../../x", "params": {}, "viz_type": "x"}
    data = io.BytesIO()
    with zipfile.ZipFile(data, "w") as zf:
        zf.writestr("x/metadata.yaml", "version: 1.0.0\ntype: assets\n")
        zf.writestr("x/charts/../../evil.yaml", yaml.safe_dump(chart))
        zf.writestr("x//etc/evil.yaml", "a: 1\n")
        zf.writestr("x/queries/saved.yaml", "sql: select 1\n")
    out = tmp_path / "bundle" / "dashboards"
    names = bundle.write_export(data.getvalue(), out)
    assert names == ["charts/escape_x.yaml", "metadata.yaml"]
    written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.yaml"))
    assert written == ["bundle/dashboards/charts/escape_x.yaml", "bundle/dashboards/metadata.yaml"]
    with pytest.raises(ValueError):
        bundle.write_export(b"PK\x05\x06" + bytes(18), tmp_path / "empty")


def test_serve_prints_the_password_once_refuses_a_taken_port_and_leaves_nothing_behind(
    site: Site, tmp_path: Path
) -> None:
    """`make dashboards` as an operator runs it: the first start prints the generated admin
    password; a second server on the same port refuses to start (a stale Superset would
    otherwise answer for it); SIGTERM stops Superset with it (no orphaned gunicorn)."""
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("EIOT_")},
        "EIOT_CLICKHOUSE_DSN": f"chdb://{site.work / 'warehouse'}",
        "EIOT_SUPERSET_HOME": str(tmp_path / "superset"),
        "EIOT_SUPERSET_PORT": str(port),
    }
    command = [sys.executable, "-m", "central.dashboards", "serve"]
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        serve = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
    try:
        wait_until(lambda: "Ctrl-C stops." in log.read_text(), timeout=240, what="serve")
        text = log.read_text()
        password = (tmp_path / "superset" / "admin.password").read_text().strip()
        assert text.count(password) == 1 and "superset/dashboard/grid-overview/" in text
        second = subprocess.run(command, env=env, capture_output=True, text=True, cwd=REPO)
        assert second.returncode != 0 and "is taken" in second.stderr
    finally:
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(timeout=60) == 0, log.read_text()[-3000:]
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
