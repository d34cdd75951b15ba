"""The inspection list, computed centrally: rank the customers of ``raw.readings`` over a window.

``python -m ml rank`` reads the window (plus the week of history the reading features need) from
PostgreSQL, scores every reading with the newest registered gateway model set (the global model and
the per-class ones, each meter by its best member as a gateway without a ``max_models`` limit
does, rebuilt from the signed messages in ``ml.models``), describes
each customer over the window (:func:`ml.customer.customer_features`: the gateway margins
aggregated, the meter against itself, against its peers, against its transformer) and ranks them
by the unsupervised peer score (:func:`ml.customer.peer_score`: no labels needed; its quality on
held-out simulated fleets is part of ``python -m bench.detection``). Each customer's ``reasons``
are the strongest of those signals, named, so an inspector knows what to look at.

The run is stored in ``ml.ranking_runs`` / ``ml.customer_rankings``; ``ml.inspection_list`` is the
newest run (what a dashboard reads).
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import numpy.typing as npt
import psycopg
from psycopg.types.json import Jsonb

from edge_agent.features import FEATURE_NAMES
from ml.customer import PEER_SIGNS, customer_features, peer_contributions
from ml.dataset import MeterData, from_postgres, reading_features
from ml.modelset import Member, ModelSet, key_parts
from ml.registry import in_service_version

SCORER = "peer"
REASONS = 3


@dataclass
class Ranking:
    window_start: datetime
    window_end: datetime
    model: tuple[str, str] | None  # (name, version) of the gateway model set used
    members: list[str]  # its members (global + class models)
    unregistered: int  # meters with readings but not in raw.meters: left out
    meter_ids: list[str]
    scores: npt.NDArray[np.float64]  # in rank order, highest first
    reasons: list[list[dict[str, Any]]]
    customer_class: list[str]
    region: list[str]
    transformer_id: list[str]


def model_set_from_registry(
    conn: psycopg.Connection, name: str, version: str | None = None
) -> ModelSet | None:
    """The model set ``name`` as gateways got it: the newest PUBLISHED version unless
    ``version``, its global member ``name`` and the others (``name.<class>``, ``name.intermittent``,
    ``name.<class>.intermittent``: :func:`~ml.modelset.key_parts`). None if none."""
    version = version or in_service_version(conn, name)
    if version is None:
        return None
    rows = conn.execute(
        "select name, customer_class, variant, created_at, sha256, threshold, threshold_method,"
        " train_rows, message from ml.models"
        " where version = %s and (name = %s or left(name, length(%s) + 1) = %s || '.')"
        " order by name",
        (version, name, name, name),
    ).fetchall()
    if not rows:
        return None
    members = []
    for member, klass, _variant, _created, sha256, threshold, method, train_rows, msg in rows:
        onnx = base64.b64decode(msg["onnx_b64"])
        if hashlib.sha256(onnx).hexdigest() != sha256:
            raise ValueError(f"ml.models {member} {version}: the stored model fails its sha256")
        if list(msg["feature_names"]) != list(FEATURE_NAMES):
            raise ValueError(f"ml.models {member} {version}: other feature names than this code")
        customer_class, load_shape = key_parts(name, member)
        if customer_class != (klass or ""):
            raise ValueError(f"ml.models {member} {version}: class {klass!r} is not its name's")
        members.append(
            Member(
                name=member,
                customer_class=customer_class,
                onnx=onnx,
                threshold=float(threshold),
                threshold_method=method or "",
                train_rows=int(train_rows or 0),
                load_shape=load_shape,
            )
        )
    if not any(m.key == "" for m in members):
        raise ValueError(f"model set {name} {version} has no global member")
    return ModelSet(
        name=name,
        version=version,
        variant=str(rows[0][2]),
        created_at=rows[0][3],
        interval_s=1800,
        members=members,
    )


def rank(
    data: MeterData,
    start: int,
    model_set: ModelSet | None,
    *,
    customers: npt.NDArray[np.bool_] | None = None,
    threads: int = 1,
) -> Ranking:
    """Rank the ``customers`` (default: every customer meter) of ``data`` over the intervals
    ``start:`` (the intervals before are the features' history)."""
    customers = data.customers if customers is None else customers
    rows = data.present & customers[None, :]
    rows[:start] = False
    if model_set is not None:
        x = reading_features(data)
        margin = model_set.margins(
            x, data.customer_class, rows, load_shape=data.load_shapes, threads=threads
        )
        del x
    else:
        margin = np.zeros(rows.shape)
    feats = customer_features(data, margin, start, customers=customers)
    parts = peer_contributions(feats)
    scores = parts.sum(axis=1)
    order = np.argsort(-scores, kind="stable")
    names = list(PEER_SIGNS)
    reasons: list[list[dict[str, Any]]] = []
    for i in order.tolist():
        top = np.argsort(-parts[i], kind="stable")[:REASONS]
        reasons.append(
            [
                {
                    "signal": names[j],
                    "z": round(float(parts[i, j]), 2),
                    "value": round(float(feats.values[i, feats.names.index(names[j])]), 4),
                }
                for j in top.tolist()
                if parts[i, j] > 0
            ]
        )
    cols = feats.meter_index[order]
    first, last = data.window_bounds(start)
    return Ranking(
        window_start=first,
        window_end=last,
        model=None if model_set is None else (model_set.name, model_set.version),
        members=[] if model_set is None else [m.name for m in model_set.members],
        unregistered=0,
        meter_ids=data.meter_ids[cols].tolist(),
        scores=scores[order],
        reasons=reasons,
        customer_class=data.customer_class[cols].tolist(),
        region=data.region[cols].tolist(),
        transformer_id=data.transformer_id[cols].tolist(),
    )


def store(conn: psycopg.Connection, ranking: Ranking) -> str:
    """Write a run and its rows (one transaction); returns the run id."""
    run_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ-") + secrets.token_hex(3)
    name, version = ranking.model or (None, None)
    with conn.transaction():
        conn.execute(
            "insert into ml.ranking_runs (run_id, window_start, window_end, model_name,"
            " model_version, model_members, scorer, customers, unregistered_meters)"
            " values (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (
                run_id,
                ranking.window_start,
                ranking.window_end,
                name,
                version,
                ranking.members,
                SCORER,
                len(ranking.meter_ids),
                ranking.unregistered,
            ),
        )
        with conn.cursor().copy(
            "copy ml.customer_rankings (run_id, rank, meter_id, score, customer_class, region,"
            " transformer_id, reasons) from stdin"
        ) as copy:
            for k, meter_id in enumerate(ranking.meter_ids):
                copy.write_row(
                    (
                        run_id,
                        k + 1,
                        meter_id,
                        float(ranking.scores[k]),
                        ranking.customer_class[k] or None,
                        ranking.region[k] or None,
                        ranking.transformer_id[k] or None,
                        Jsonb(ranking.reasons[k]),
                    )
                )
    return run_id


def latest_reading(conn: psycopg.Connection) -> datetime | None:
    row = conn.execute("select max(ts) from raw.readings").fetchone()
    return None if row is None else row[0]


def run(
    dsn: str,
    *,
    end: datetime | None = None,
    days: float = 28.0,
    model_name: str = "iforest",
    model_version: str | None = None,
    interval_s: int = 1800,
    threads: int = 1,
) -> tuple[str, Ranking]:
    """Rank the customers over ``days`` up to ``end`` (default: the newest reading); store."""
    with psycopg.connect(dsn, connect_timeout=5) as conn:
        end = end or latest_reading(conn)
        if end is None:
            raise ValueError("raw.readings is empty: nothing to rank")
        model_set = model_set_from_registry(conn, model_name, model_version)
        registered = [r[0] for r in conn.execute("select meter_id from raw.meters")]
    start = end - timedelta(days=days)
    data = from_postgres(dsn, start, end, interval_s=interval_s)
    first = int(np.searchsorted(data.ts, start.timestamp(), side="right"))
    if model_set is not None:
        model_set.interval_s = interval_s
    # A meter not in the registry has no known role: a transformer meter ranked as a customer
    # would top the list. Left out, and counted.
    known = np.isin(data.meter_ids, registered)
    ranking = rank(data, first, model_set, customers=data.customers & known, threads=threads)
    ranking.unregistered = int((~known).sum())
    with psycopg.connect(dsn, connect_timeout=5) as conn:
        run_id = store(conn, ranking)
    return run_id, ranking
