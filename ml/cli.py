"""``python -m ml``: keygen, train, publish, evaluate, models, rank, load-shapes.

python -m ml keygen --private var/keys/model_signing.pem --public var/keys/model.pub
python -m ml train --out var/models/iforest                 # on a simulated fleet
python -m ml train --source postgres --start 2026-03-01 --end 2026-04-01 --out DIR
EIOT_MODEL_SIGNING_KEY_FILE=var/keys/model_signing.pem python -m ml publish DIR
python -m ml evaluate                                         # held-out simulated fleet
python -m ml models                                           # what ml.models holds
python -m ml rank                                             # the inspection list
python -m ml load-shapes --days 90                            # meters' load shapes to pin
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from ml import evaluate as evaluation
from ml.train import DEFAULT_MAX_SAMPLES

_DESCRIPTION = """Gateway anomaly models: train them, sign and publish them to the gateways
(retained model.v1 over MQTT, registered in PostgreSQL ml.models), and evaluate detection."""


def _date(text: str) -> datetime:
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def cmd_keygen(args: argparse.Namespace) -> int:
    from ml.publish import ensure_keypair, generate_keypair

    pub = (ensure_keypair if args.if_missing else generate_keypair)(args.private, args.public)
    print(f"private key: {args.private} (keep it on the central side, never commit it)")
    print(f"public key (configure the agents with it): {pub}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from ml.dataset import from_fleet, from_postgres, reading_features
    from ml.modelset import train_model_set
    from ml.registry import default_dsn

    if args.source == "sim":
        from simulator import FleetConfig

        cfg = FleetConfig(
            meters=args.meters,
            days=args.days,
            seed=args.seed,
            theft_share=args.theft_share,
            interval_s=args.interval,
            start=args.sim_start,
        )
        data = from_fleet(cfg)
        warmup = args.warmup_days
    else:
        if not args.end:
            raise SystemExit("--source postgres needs --end (and --start or --days)")
        end = _date(args.end)
        start = _date(args.start) if args.start else end - timedelta(days=args.days)
        data = from_postgres(args.dsn or default_dsn(), start, end, interval_s=args.interval)
        # The history before --start only feeds the features.
        warmup = max(0.0, (start.timestamp() - (data.ts[0] - data.interval_s)) / 86400.0)
    features = reading_features(data)
    model_set = train_model_set(
        data,
        features,
        name=args.name,
        version=args.version,
        variant=args.variant,
        warmup_days=warmup,
        max_rows=args.max_rows,
        samples_per_tree=args.samples_per_tree,
        threads=args.threads,
        seed=args.train_seed,
    )
    path = model_set.write(args.out)
    print(f"wrote {path} ({model_set.variant}, version {model_set.version})")
    for m in model_set.members:
        print(
            f"  {m.name}: threshold {m.threshold:.6f}, {m.train_rows} training readings, "
            f"{m.threshold_method}"
        )
    if model_set.validation:
        print(json.dumps(model_set.validation["results"], sort_keys=True))
    return 0


def cmd_publish(args: argparse.Namespace) -> int:
    import psycopg

    from ml.modelset import ModelSet
    from ml.publish import load_private_key
    from ml.registry import Broker, default_dsn, default_root, publish_model_set, service_change

    model_set = ModelSet.read(args.model_dir)
    key = load_private_key(args.key)
    broker = Broker.from_env(
        host=args.host, port=args.port, username=args.username, timeout_s=args.timeout
    )
    if args.tls:
        broker.tls = True
    dsn = args.dsn or default_dsn()
    # under the lock a lifecycle run and a rollback take (ml.registry.service_change)
    with (
        psycopg.connect(dsn, connect_timeout=5, autocommit=True) as conn,
        service_change(conn, model_set.name),
    ):
        results = publish_model_set(
            model_set, key, dsn=dsn, broker=broker, root=args.root or default_root()
        )
    for r in results:
        state = "registered" if r.registered else "already registered, re-sent"
        print(f"{r.name} {r.version} -> {r.topic} (retained, sha256 {r.sha256[:12]}…, {state})")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    import psycopg

    from ml.registry import default_dsn, registered

    with psycopg.connect(args.dsn or default_dsn(), connect_timeout=5) as conn:
        rows = registered(conn, args.name)
    for r in rows:
        print(
            f"{r['name']} {r['version']} class={r['customer_class'] or '*'} "
            f"threshold={r['threshold']:.6f} published={r['published_at'] or '-'} "
            f"sha256={r['sha256'][:12]}…"
        )
    if not rows:
        print("no models registered")
    return 0


def cmd_rank(args: argparse.Namespace) -> int:
    from ml.ranking import run
    from ml.registry import default_dsn

    run_id, ranking = run(
        args.dsn or default_dsn(),
        end=_date(args.end) if args.end else None,
        days=args.days,
        model_name=args.name,
        model_version=args.version,
        interval_s=args.interval,
        threads=args.threads,
    )
    model = " ".join(ranking.model) if ranking.model else "none registered (margins 0)"
    print(
        f"run {run_id}: {len(ranking.meter_ids)} customers ranked over"
        f" {ranking.window_start:%Y-%m-%d %H:%M} .. {ranking.window_end:%Y-%m-%d %H:%M} UTC;"
        f" gateway model {model}; stored in ml.customer_rankings (view ml.inspection_list)"
    )
    for k in range(min(args.top, len(ranking.meter_ids))):
        why = ", ".join(f"{r['signal']} z={r['z']:g}" for r in ranking.reasons[k]) or "-"
        print(
            f"{k + 1:4d}  {ranking.meter_ids[k]:<24} {ranking.scores[k]:8.2f}"
            f"  {ranking.customer_class[k] or '-':<22} {why}"
        )
    return 0


def cmd_load_shapes(args: argparse.Namespace) -> int:
    from collections import Counter

    import psycopg

    from ml.load_shape import propose
    from ml.registry import default_dsn

    with psycopg.connect(args.dsn or default_dsn(), connect_timeout=5) as conn:
        if args.end:
            end = _date(args.end)
        else:
            (newest,) = conn.execute("select max(ts) from raw.readings").fetchone() or (None,)
            end = newest or datetime.now(UTC)
        start = end - timedelta(days=args.days)
        proposals = propose(conn, start, end, args.interval)
    counts = Counter(p.action for p in proposals)
    print(
        f"{len(proposals)} customer meters, readings {start:%Y-%m-%d %H:%M} .. {end:%Y-%m-%d %H:%M}"
        f" UTC: " + ", ".join(f"{counts[a]} {a}" for a in ("set", "keep", "review", "wait"))
    )
    for p in proposals:
        if p.action in ("set", "review") or args.all:
            share = "-" if p.near_zero_share is None else f"{p.near_zero_share:.2f}"
            print(
                f"{p.action:<7} {p.meter_id:<24} pinned {p.pinned or '-':<12} readings say"
                f" {p.decided:<12} near-zero share {share}, {p.valid_days:g} days valid"
            )
    if args.out:
        rows = [p.as_row() for p in proposals]
        Path(args.out).write_text(json.dumps(rows, indent=1) + "\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ml", description=_DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "keygen",
        help="write a new Ed25519 model-signing keypair to files",
        description="Write an Ed25519 private key (PEM, mode 0600, never overwritten) and its "
        "public key (base64 of the raw 32 bytes) for the agents.",
    )
    p.add_argument("--private", required=True, help="private key file to create (PEM)")
    p.add_argument("--public", default=None, help="public key file (default: PRIVATE.pub)")
    p.add_argument(
        "--if-missing",
        action="store_true",
        help="keep an existing private key (write its public key again) instead of refusing",
    )
    p.set_defaults(func=cmd_keygen)

    p = sub.add_parser(
        "train",
        help="train the gateway model(s) and write ONNX + metadata to a directory",
        description="Train the gateway IsolationForest(s) on a simulated fleet (labelled) or on "
        "PostgreSQL raw.readings (unlabelled), and write model.json + one .onnx per model.",
    )
    p.add_argument("--out", required=True, help="directory to write model.json and *.onnx to")
    p.add_argument(
        "--source",
        choices=("sim", "postgres"),
        default="sim",
        help="training data: a simulated fleet (default) or raw.readings",
    )
    p.add_argument("--name", default="iforest", help="model name (topic models/NAME)")
    p.add_argument("--version", default=None, help="version (default: UTC time YYYYmmddTHHMMSSZ)")
    p.add_argument(
        "--variant",
        choices=("auto", "global", "per_class"),
        default="auto",
        help="one global model, one per customer class, or measure both and keep "
        "the better (auto; global without labels)",
    )
    p.add_argument("--meters", type=int, default=3000, help="sim: customer meters")
    p.add_argument(
        "--days",
        type=float,
        default=35,
        help="sim: days simulated; postgres: window length when --start is not given",
    )
    p.add_argument("--seed", type=int, default=101, help="sim: simulator seed")
    p.add_argument("--theft-share", type=float, default=0.12, help="sim: share of thieves")
    p.add_argument("--sim-start", default="2026-03-01", help="sim: first day (UTC)")
    p.add_argument(
        "--warmup-days",
        type=float,
        default=7.0,
        help="sim: first days used only as feature history",
    )
    p.add_argument("--interval", type=int, default=1800, help="interval length in seconds")
    p.add_argument("--dsn", default=None, help="postgres: DSN (default $EIOT_PG_DSN)")
    p.add_argument("--start", default=None, help="postgres: window start (ISO date/time, UTC)")
    p.add_argument("--end", default=None, help="postgres: window end (ISO date/time, UTC)")
    p.add_argument(
        "--max-rows", type=int, default=300_000, help="training readings per forest (random sample)"
    )
    p.add_argument(
        "--samples-per-tree",
        type=int,
        default=DEFAULT_MAX_SAMPLES,
        help=f"rows each tree is grown on (default {DEFAULT_MAX_SAMPLES}; 256 halves the model "
        "and saves ~1 MB of gateway RSS per model, at some detection)",
    )
    p.add_argument("--train-seed", type=int, default=0, help="random seed of the training")
    p.add_argument("--threads", type=int, default=1, help="onnxruntime threads (validation)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "publish",
        help="sign, register in ml.models and publish retained model.v1 messages",
        description="Sign each model of a trained directory with the Ed25519 key, store it in "
        "ml.models (the same version again is a no-op), publish it retained with QoS 1 on "
        "{root}/models/{name} and wait for the broker's acknowledgement.",
    )
    p.add_argument("model_dir", help="directory written by `python -m ml train`")
    p.add_argument(
        "--key",
        default=None,
        help="private key file (default $EIOT_MODEL_SIGNING_KEY_FILE or $EIOT_MODEL_SIGNING_KEY)",
    )
    p.add_argument("--dsn", default=None, help="PostgreSQL DSN (default $EIOT_PG_DSN)")
    p.add_argument("--host", default=None, help="MQTT broker host (default $EIOT_BROKER_HOST)")
    p.add_argument(
        "--port",
        type=int,
        default=None,
        help="MQTT broker port (default $EIOT_BROKER_PORT or 1883)",
    )
    p.add_argument(
        "--username", default=None, help="MQTT user (password only from $EIOT_BROKER_PASSWORD)"
    )
    p.add_argument("--tls", action="store_true", help="connect with TLS")
    p.add_argument("--root", default=None, help="topic root (default $EIOT_TOPIC_ROOT or eiot/v1)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the broker")
    p.set_defaults(func=cmd_publish)

    p = sub.add_parser(
        "evaluate",
        help="evaluate detection on a held-out simulated fleet (last line: JSON)",
        description=(evaluation.__doc__ or "").split("\n\n")[0],
    )
    evaluation.add_arguments(p)
    p.set_defaults(func=evaluation.command)

    p = sub.add_parser(
        "rank",
        help="rank customers for inspection over a window of raw.readings (ml.inspection_list)",
        description=(
            "Rank the customers of raw.readings over a window by the unsupervised peer score "
            "(gateway model margins, the meter against itself, its peers and its transformer), "
            "store the run in ml.customer_rankings and print the top of the list."
        ),
    )
    p.add_argument("--dsn", default=None, help="PostgreSQL DSN (default $EIOT_PG_DSN)")
    p.add_argument("--end", default=None, help="window end, ISO UTC (default: newest reading)")
    p.add_argument("--days", type=float, default=28.0, help="window length in days")
    p.add_argument("--name", default="iforest", help="gateway model set name in ml.models")
    p.add_argument("--version", default=None, help="model set version (default: newest)")
    p.add_argument("--interval", type=int, default=1800, help="interval length in seconds")
    p.add_argument("--threads", type=int, default=1, help="onnxruntime threads")
    p.add_argument("--top", type=int, default=20, help="rows of the list to print")
    p.set_defaults(func=cmd_rank)

    p = sub.add_parser(
        "models",
        help="list the models registered in ml.models",
        description="List ml.models, newest first.",
    )
    p.add_argument("--dsn", default=None, help="PostgreSQL DSN (default $EIOT_PG_DSN)")
    p.add_argument("--name", default=None, help="only this model name")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser(
        "load-shapes",
        help="propose each customer meter's load shape from months of readings (writes nothing)",
        description="Decide each registered customer meter's load shape (continuous or "
        "intermittent, ml/load_shape.py) from its valid readings in raw.readings and compare "
        "it with raw.meters.load_shape: set (none pinned), keep, review (the readings disagree "
        "with the pinned shape: a meter whose readings turn intermittent may be a thief "
        "zeroing them), wait (too few valid readings). Prints the set and review rows; writes "
        "nothing in the database: whoever keeps the registry pins the shapes.",
    )
    p.add_argument("--dsn", default=None, help="PostgreSQL DSN (default $EIOT_PG_DSN)")
    p.add_argument("--days", type=float, default=90, help="days of readings (default 90)")
    p.add_argument("--end", default=None, help="window end, YYYY-MM-DD (default newest reading)")
    p.add_argument(
        "--interval", type=int, default=1800, help="readings of this interval_s (default 1800)"
    )
    p.add_argument("--all", action="store_true", help="print the keep and wait rows too")
    p.add_argument("--out", default=None, help="also write every proposal to this JSON file")
    p.set_defaults(func=cmd_load_shapes)

    from ml import keeper

    p = sub.add_parser(
        "keep-published",
        help="keep the models in service retained on the broker (a service: after a broker "
        "restart it publishes again what the broker lost)",
        description=(keeper.__doc__ or "").split("\n\n")[0],
    )
    keeper.add_arguments(p)
    p.set_defaults(func=keeper.command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
