"""``python -m central.dashboards``: Superset over the warehouse marts, dashboards as code.

* ``serve`` (``make dashboards``): make or migrate Superset's home, start Superset on
  127.0.0.1, import ``dashboards/`` with the warehouse connection from settings, and serve until
  Ctrl-C. An embedded warehouse is served by its owner process for the duration.
* ``import``: import ``dashboards/`` into the running Superset (idempotent: same UUIDs,
  overwritten in place).
* ``export``: write what the running Superset holds back into ``dashboards/``, normalized, for
  review (``git diff dashboards/``).

``import`` and ``export`` reach the Superset ``serve`` started, or the one ``EIOT_SUPERSET_URL``
names (docker-compose.yml's) with ``EIOT_SUPERSET_ADMIN_PASSWORD``.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

from central.dashboards import bundle
from central.dashboards.server import ADMIN_USER, SupersetHome
from central.dashboards.settings import DashboardSettings, get_settings
from central.dashboards.superset_api import SupersetClient, SupersetError, wait_healthy
from central.warehouse.client import chdb_path, served


def client(home: SupersetHome) -> SupersetClient:
    return SupersetClient(home.url, ADMIN_USER, home.admin_password())


def import_bundle(home: SupersetHome, warehouse_url: str) -> None:
    """Import the repository's dashboards into ``home``'s Superset, the warehouse at
    ``warehouse_url``."""
    import_into(client(home), home.settings, warehouse_url)


def import_into(api: SupersetClient, settings: DashboardSettings, warehouse_url: str) -> None:
    uri, password = bundle.database_uri(warehouse_url, settings.marts_schema)
    passwords = {bundle.WAREHOUSE_DB_FILE: password} if password else {}
    api.import_assets(bundle.to_zip(settings.bundle_dir, uri), passwords)


def target(settings: DashboardSettings) -> SupersetClient | str:
    """The Superset ``import`` and ``export`` work on: the one ``superset_url`` names, else the
    one ``serve`` keeps in its home; or why there is none."""
    if settings.superset_url:
        if settings.superset_admin_password is None:
            return "EIOT_SUPERSET_URL is set: EIOT_SUPERSET_ADMIN_PASSWORD must be too"
        password = settings.superset_admin_password.get_secret_value()
        return SupersetClient(settings.superset_url.rstrip("/"), ADMIN_USER, password)
    home = SupersetHome(settings)
    if not home.password_path.exists():
        return f"no Superset home in {home.home}: start one with `make dashboards`"
    return client(home)


@contextlib.contextmanager
def running(settings: DashboardSettings) -> Iterator[tuple[SupersetHome, str]]:
    """Superset started over the warehouse, the bundle imported; (home, warehouse URL)."""
    home = SupersetHome(settings)
    if home.port_in_use():
        raise SystemExit(
            f"{home.url} is taken (another Superset?): stop it or set EIOT_SUPERSET_PORT"
        )
    new_password = home.initialise()
    if new_password:
        print(f"Superset admin password (printed once; kept in {home.password_path}):")
        print(f"  {ADMIN_USER} / {new_password}")
    with served(settings.clickhouse_dsn) as warehouse_url:
        proc = home.start()
        try:
            wait_healthy(home.url, proc_alive=lambda: proc.poll() is None)
            import_bundle(home, warehouse_url)
            yield home, warehouse_url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:  # a stuck worker
                proc.kill()


def _stop_on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # unwinds `running`, which stops Superset and the owner


def cmd_serve(settings: DashboardSettings) -> int:
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    path = chdb_path(settings.clickhouse_dsn)
    if path is not None and not path.exists():
        print(f"no warehouse in {path}: run `make demo` first", file=sys.stderr)
        return 2
    with running(settings) as (home, warehouse_url):
        uri, _ = bundle.database_uri(warehouse_url, settings.marts_schema)
        print(f"Superset on {home.url} (user {ADMIN_USER}), over {uri}:")
        for d in bundle.dashboards(settings.bundle_dir):
            print(f"  {d.title:24} {home.url}/superset/dashboard/{d.slug}/")
        print("Ctrl-C stops.", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(3600)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m central.dashboards",
        description="Control-room dashboards on Superset, kept as code in dashboards/ "
        "(docs/dashboards.md).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="start Superset over the warehouse and import the dashboards")
    sub.add_parser("import", help="import dashboards/ into the running Superset")
    sub.add_parser("export", help="write the running Superset's dashboards back to dashboards/")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = get_settings()
    if args.command == "serve":
        return cmd_serve(settings)
    where = settings.superset_url or SupersetHome(settings).url
    try:
        api = target(settings)  # logs in
        if isinstance(api, str):
            print(api, file=sys.stderr)
            return 2
        if args.command == "import":
            with served(settings.clickhouse_dsn) as warehouse_url:
                import_into(api, settings, warehouse_url)
            print(f"imported {settings.bundle_dir} into {where}")
            return 0
        names = bundle.write_export(api.export_assets(), settings.bundle_dir)
    except (OSError, SupersetError) as exc:
        print(f"{args.command} failed: is Superset running on {where}? {exc}", file=sys.stderr)
        return 1
    print(f"exported {len(names)} files to {settings.bundle_dir} (review: git diff)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
