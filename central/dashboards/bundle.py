"""The dashboards-as-code bundle: Superset's import format, one YAML file per database,
dataset, chart and dashboard, under ``dashboards/`` in the repository.

The repository's copy is instance-free and secret-free: the warehouse connection is injected at
import time (``database_uri``), and an export is normalized (``normalize``) so that exporting
what was imported gives back the same files, and an analyst's edit in the UI comes back as a
small reviewable diff.
"""

from __future__ import annotations

import io
import re
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import yaml

#: The one database of the bundle: the warehouse marts. Its URI in the repository is a
#: placeholder; the real one comes from settings at import.
WAREHOUSE_DB_FILE = "databases/warehouse.yaml"
PLACEHOLDER_URI = "clickhousedb://127.0.0.1:8124/marts"
ROOT = "eiot_dashboards"
# Per-instance keys of an exported chart's params (ids of this Superset's rows).
INSTANCE_PARAMS = ("slice_id", "datasource", "dashboards")


@dataclass(frozen=True)
class Dashboard:
    slug: str
    title: str
    charts: int
    filters: list[str]


def dashboards(bundle_dir: Path) -> list[Dashboard]:
    """The bundle's dashboards: slug, title, how many charts, the names of their filters."""
    found = []
    for path in sorted((bundle_dir / "dashboards").glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        layout = [c for c in doc["position"].values() if isinstance(c, dict)]
        filters = doc["metadata"].get("native_filter_configuration", [])
        found.append(
            Dashboard(
                doc["slug"],
                doc["dashboard_title"],
                sum(c["type"] == "CHART" for c in layout),
                [f["name"] for f in filters],
            )
        )
    return found


#: What Superset writes in place of a password in a URI; an imported URI with it keeps the
#: password passed beside the bundle (a URI without one would clear it).
PASSWORD_MASK = "XXXXXXXXXX"


def database_uri(http_url: str, schema: str) -> tuple[str, str | None]:
    """Superset's SQLAlchemy URI (clickhouse-connect) for the warehouse at ``http_url`` and
    its password, kept apart: the URI carries the user and, if there is a password, Superset's
    mask in its place."""
    parts = urlsplit(http_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not a ClickHouse HTTP URL: {http_url!r}")
    password = unquote(parts.password) if parts.password else None
    user = quote(unquote(parts.username), safe="") if parts.username else ""
    login = f"{user}:{PASSWORD_MASK}@" if password else f"{user}@" if user else ""
    port = f":{parts.port}" if parts.port else ""
    secure = "?secure=true" if parts.scheme == "https" else ""
    return f"clickhousedb://{login}{parts.hostname}{port}/{schema}{secure}", password


def _dump(doc: Any) -> str:
    return str(yaml.safe_dump(doc, sort_keys=True, allow_unicode=True, width=100))


def files(bundle_dir: Path) -> dict[str, str]:
    """The bundle's files, relative path -> text."""
    return {
        p.relative_to(bundle_dir).as_posix(): p.read_text()
        for p in sorted(bundle_dir.rglob("*.yaml"))
    }


def to_zip(bundle_dir: Path, uri: str) -> bytes:
    """The bundle as the ZIP Superset imports, the warehouse's URI set to ``uri``."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, text in files(bundle_dir).items():
            if name == WAREHOUSE_DB_FILE:
                doc = yaml.safe_load(text)
                doc["sqlalchemy_uri"] = uri
                text = _dump(doc)
            zf.writestr(f"{ROOT}/{name}", text)
    return out.getvalue()


def normalize(name: str, doc: dict[str, Any]) -> dict[str, Any]:
    """An exported file made instance-free: no ids of the exporting Superset, no secrets."""
    if name.startswith("databases/"):
        doc["sqlalchemy_uri"] = PLACEHOLDER_URI
        doc.pop("password", None)
    elif name.startswith("charts/"):
        for key in INSTANCE_PARAMS:
            doc.get("params", {}).pop(key, None)
        doc["query_context"] = None
    elif name.startswith("dashboards/"):
        _renumber_charts(doc)
    elif name == "metadata.yaml":
        doc.pop("timestamp", None)
    return doc


def _renumber_charts(doc: dict[str, Any]) -> None:
    """Chart ids in a dashboard are the exporting instance's; the importer maps them through
    the charts' UUIDs (layout and filter scopes), so any consistent numbering does: 1, 2, ...
    in UUID order."""
    charts = [c for c in doc.get("position", {}).values() if isinstance(c, dict)]
    charts = sorted(
        (c for c in charts if c.get("type") == "CHART"), key=lambda c: c["meta"]["uuid"]
    )
    numbers = {chart["meta"]["chartId"]: n for n, chart in enumerate(charts, 1)}
    for chart in charts:
        chart["meta"]["chartId"] = numbers[chart["meta"]["chartId"]]
    metadata = doc.get("metadata", {})
    for key in ("chart_configuration", "global_chart_configuration", "positions"):
        metadata.pop(key, None)
    for native_filter in metadata.get("native_filter_configuration", []):
        native_filter.pop("chartsInScope", None)
        native_filter.pop("tabsInScope", None)
        scope = native_filter.get("scope", {})
        scope["excluded"] = sorted(numbers[i] for i in scope.get("excluded", []) if i in numbers)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_") or "unnamed"


def _path(name: str, doc: dict[str, Any], databases: int) -> str | None:
    """A file name that does not depend on the exporting instance's ids (the one database is
    the warehouse; datasets by table, charts by title and UUID, dashboards by slug), built from
    sanitized parts only; None for what the bundle does not keep."""
    kind = name.split("/", 1)[0]
    if name == "metadata.yaml":
        return name
    if kind == "databases":
        return (
            WAREHOUSE_DB_FILE if databases == 1 else f"databases/{_slug(doc['database_name'])}.yaml"
        )
    if kind == "datasets" and name.count("/") == 2:
        return f"datasets/{_slug(name.split('/')[1])}/{_slug(doc['table_name'])}.yaml"
    if kind == "charts":
        return f"charts/{_slug(doc['slice_name'])}_{_slug(str(doc['uuid']))[:8]}.yaml"
    if kind == "dashboards":
        return f"dashboards/{_slug(doc.get('slug') or str(doc['uuid']))}.yaml"
    return None


def write_export(bundle: bytes, bundle_dir: Path) -> list[str]:
    """Replace ``bundle_dir`` with the normalized contents of an exported ZIP; the file names.
    Only the bundle's kinds of file are kept (saved queries and anything else are left out)."""
    docs: dict[str, Any] = {}
    with zipfile.ZipFile(io.BytesIO(bundle)) as zf:
        for member in zf.namelist():
            if member.endswith(".yaml") and "/" in member:
                name = member.split("/", 1)[1]
                docs[name] = normalize(name, yaml.safe_load(zf.read(member)))
    databases = sum(1 for n in docs if n.startswith("databases/"))
    written: dict[str, str] = {}
    for name, doc in docs.items():
        kept = _path(name, doc, databases)
        if kept is not None:
            if kept in written:
                raise ValueError(f"two exported objects would both be {kept}")
            written[kept] = _dump(doc)
    if "metadata.yaml" not in written or len(written) == 1:
        raise ValueError("the export holds no bundle (metadata.yaml and objects)")
    if bundle_dir.exists():
        shutil.rmtree(bundle_dir)
    for name, text in written.items():
        target = bundle_dir / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    return sorted(written)
