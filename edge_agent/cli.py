"""``edge-agent``: run the gateway agent, or look at its buffer."""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import signal
import sqlite3
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from edge_agent.backoff import Backoff
from edge_agent.buffer import Buffer, BufferFull, is_full
from edge_agent.buffer.salvage import corrupt, damaged, mark_suspect, marker_path
from edge_agent.sdnotify import Notifier
from edge_agent.settings import load_settings

log = logging.getLogger(__name__)


def _fmt_time(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _models_of(buffer: Buffer) -> list[str]:
    """The models the agent scores with, as it last recorded (not merely the newest stored: a
    damaged one is not in use)."""
    from edge_agent.rollout import models_in_use

    return [f"{name} {version}" for name, version in models_in_use(buffer.meta).items()]


def cmd_run(args: argparse.Namespace) -> int:
    from edge_agent.heap import pin_mmap_threshold

    pin_mmap_threshold()  # before numpy, onnxruntime and the model are loaded
    from edge_agent.agent import Agent

    settings = load_settings(args.config)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    notifier = Notifier()
    backoff = Backoff(1.0, 60.0)
    while not stop.is_set():
        try:
            agent = Agent(settings)
        except (sqlite3.DatabaseError, BufferFull) as exc:
            if corrupt(exc):
                # damage the start's check did not see (an index, a text value): the next try
                # salvages the buffer (edge_agent/buffer/salvage.py)
                log.error("the buffer %s is damaged (%s): salvaging it", settings.db_path, exc)
                mark_suspect(settings.db_path, str(exc))
                stop.wait(backoff.next_delay())  # a salvage failing again does not spin
                continue
            # A card full to the last byte (another program's files, a power cut) cannot even
            # open the buffer's write-ahead log: wait for room, saying so (to systemd too),
            # instead of crash-looping. BufferFull: a write inside a transaction (DiskFull),
            # e.g. the clock's mark or a salvage with no room. An I/O error waits too: a card
            # that hesitated; a sector that stays unreadable fails the next try's check.
            if not (isinstance(exc, BufferFull) or is_full(exc) or "disk I/O error" in str(exc)):
                raise
            free = shutil.disk_usage(settings.db_path.parent).free
            delay = backoff.next_delay()
            log.error(
                "cannot open the buffer %s (%s; %d bytes free on its disk): retry in %.0f s",
                settings.db_path,
                exc,
                free,
                delay,
            )
            notifier.still_starting(
                f"waiting for room on the buffer's disk ({free} B free)", delay + 30
            )
            stop.wait(delay)
            continue
        notifier.close()
        try:
            agent.run(stop, exit_when_drained=args.exit_when_drained)
        except sqlite3.DatabaseError as exc:
            if corrupt(exc):  # the next start salvages; systemd restarts us
                log.error("the buffer %s is damaged (%s): exiting", settings.db_path, exc)
                mark_suspect(settings.db_path, str(exc))
            raise
        break
    return 0


def _damaged_status(db: Path, exc: sqlite3.DatabaseError, as_json: bool) -> int:
    """``status`` on a buffer that cannot be read: say so, and what the agent does about it."""
    if not damaged(exc):
        raise exc
    what = (
        f"the buffer {db} cannot be read ({exc}): the agent sets it aside and salvages it at "
        "its next start (docs/runbook.md)"
    )
    if as_json:
        print(json.dumps({"buffer": str(db), "damaged": str(exc)}, indent=2))
    print(what, file=sys.stderr)
    return 3


def cmd_status(args: argparse.Namespace) -> int:
    from edge_agent.sources.polled import meter_states

    db = Path(args.db) if args.db else load_settings(args.config).db_path
    if not db.exists():
        recovering = marker_path(db).exists()
        print(
            f"no buffer at {db}" + (" (a recovery of it is under way)" if recovering else ""),
            file=sys.stderr,
        )
        return 2
    try:
        buffer = Buffer(db)  # WAL: reading while the agent writes is safe
    except sqlite3.DatabaseError as exc:
        return _damaged_status(db, exc, args.json)
    try:
        stats = buffer.maintenance.stats()
        counters = buffer.counters.all()
        models = _models_of(buffer)
        alerts_waiting = buffer.alerts.undelivered()
        meters = meter_states(buffer.meta)
        recorded = buffer.meta.get("buffer_recovery")  # salvage.py: a damaged file set aside
        recovered = json.loads(recorded) if recorded else None
        report = {
            "buffer": str(db),
            "pending_readings": stats.pending_readings,
            "unbatched_readings": stats.unbatched_readings,
            "inflight_batches": stats.inflight_batches,
            "total_readings": stats.total_readings,
            "oldest_pending_ts": _fmt_time(stats.oldest_pending_ts),
            "last_ack_at": _fmt_time(stats.last_ack_at),
            "models": models,
            "alerts_waiting": alerts_waiting,
            "counters": counters,
            "polled_meters": meters,
            "buffer_recovery": recovered,
        }
    except sqlite3.DatabaseError as exc:
        return _damaged_status(db, exc, args.json)
    finally:
        buffer.close()
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    age = "-"
    if stats.last_ack_at is not None:
        age = f"{time.time() - stats.last_ack_at:.0f}s ago"
    print(f"buffer            {db}")
    print(
        f"pending readings  {stats.pending_readings} ({stats.unbatched_readings} not yet batched)"
    )
    print(f"batches in flight {stats.inflight_batches}")
    print(f"oldest pending    {report['oldest_pending_ts']}")
    print(f"last ack          {report['last_ack_at']} ({age})")
    print(f"readings held     {stats.total_readings}")
    print(f"anomaly models    {'; '.join(models) or 'none'}")
    print(f"alerts waiting    {alerts_waiting} (not yet taken by the broker)")
    if r := recovered:
        print(
            f"RECOVERED         from a damaged buffer, kept as {r['aside']}: "
            f"{r['readings_pending']} unacknowledged readings salvaged, unreadable rowids "
            f"{r['unreadable'] or 'none'}"
            f"{', copy cut short (disk full)' if r.get('cut_short_at') else ''}"
            " - replace the SD card"
        )
    for name, value in sorted(counters.items()):
        print(f"  {name:<22}{value}")
    if meters:
        silent = {m: s for m, s in meters.items() if s["silent_since"] is not None}
        print(f"polled meters     {len(meters)} ({len(silent)} not answering)")
        for meter_id, state in silent.items():
            since = _fmt_time(float(state["silent_since"]))  # type: ignore[arg-type]
            print(f"  {meter_id:<22}silent since {since}: {state['last_error']}")
    return 0


def cmd_clock_reset(args: argparse.Namespace) -> int:
    from edge_agent.clock import reset_high_water

    db = Path(args.db) if args.db else load_settings(args.config).db_path
    if not db.exists():
        print(f"no buffer at {db}", file=sys.stderr)
        return 2
    buffer = Buffer(db)
    try:
        old = reset_high_water(buffer)
    finally:
        buffer.close()
    seen = _fmt_time(old) if old else "none"
    print(f"clock high-water mark cleared (was {seen}); the current clock is taken as right")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge-agent",
        description="Gateway agent: buffers meter readings in SQLite and forwards them to central "
        "over MQTT, exactly once in effect. Settings come from a TOML file (--config or "
        "EIOT_CONFIG) and EIOT_* environment variables.",
    )
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser(
        "run",
        help="run the agent until stopped (SIGTERM/SIGINT)",
        description="Run the agent: read its sources, buffer, forward, publish status.",
    )
    run.add_argument("--config", type=Path, help="TOML settings file")
    run.add_argument(
        "--exit-when-drained",
        action="store_true",
        help="stop once every source is exhausted and central acknowledged every reading",
    )
    run.set_defaults(func=cmd_run)

    st = sub.add_parser(
        "status",
        help="show buffer depth, oldest pending reading, last ack and counters",
        description="Read the buffer file (also while the agent runs) and print its state.",
    )
    st.add_argument("--config", type=Path, help="TOML settings file (for db_path)")
    st.add_argument("--db", help="buffer file to read, instead of the configured one")
    st.add_argument("--json", action="store_true", help="print JSON instead of text")
    st.set_defaults(func=cmd_status)

    clock = sub.add_parser(
        "clock",
        help="the clock's high-water mark (see docs/runbook.md, wrong clocks)",
        description="The agent takes a wall clock behind the latest time it has seen as wrong.",
    )
    clock_sub = clock.add_subparsers(dest="clock_command", required=True, metavar="ACTION")
    reset = clock_sub.add_parser(
        "reset",
        help="forget the latest time seen, when it was raised by a wrong clock",
        description="Clear the high-water mark: the agent (running or next started) takes its "
        "current clock as right. Use after checking the clock (date -u) is correct.",
    )
    reset.add_argument("--config", type=Path, help="TOML settings file (for db_path)")
    reset.add_argument("--db", help="buffer file, instead of the configured one")
    reset.set_defaults(func=cmd_clock_reset)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
