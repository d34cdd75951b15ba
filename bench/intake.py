"""Intake with an anomaly model loaded: what scoring costs the agent per call.

    python -m bench.intake [--meters 1000] [--days 8] [--singles 50]

A buffer is filled interval by interval (each ``Intake.take`` holds one interval of every meter,
as a head-end that publishes all meters at once delivers it), every reading scored by a signed
model (100 trees, the training defaults); then single readings are taken one per call, as a
meter that publishes on its own is. Features are recomputed from the week of history in the
buffer at every call, so the cost per call grows with the meters and the history held.
The last line is a JSON object.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bench.results import report
from edge_agent.alerts import Cooldown
from edge_agent.buffer import Buffer
from edge_agent.fields import Row, make_row
from edge_agent.rollout import ModelManager
from edge_agent.scoring import ActiveModels, Detector
from edge_agent.sources import Intake
from edge_agent.validate import Validator
from ml.publish import message_from_trained, public_key_b64
from ml.synthetic import FLAG_BITS, make_readings
from ml.train import features_for, train

INTERVAL = 1800


def _row(meter: int, k: int, t0: int) -> Row:
    kwh = 0.3 + 0.01 * (k % 48) + 0.001 * (meter % 7)
    return make_row(
        meter_id=f"m{meter:05d}", ts=t0 + k * INTERVAL, interval_s=INTERVAL, kwh=kwh, supply=1
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.intake", description=__doc__)
    parser.add_argument("--meters", type=int, default=1000, help="meters on the gateway")
    parser.add_argument("--days", type=int, default=8, help="days taken interval by interval")
    parser.add_argument("--singles", type=int, default=50, help="single-reading calls timed")
    args = parser.parse_args(argv)

    r = make_readings(100, 14, seed=1, attack_fraction=0.3)
    x = features_for(
        r.meter_index, r.ts, r.kwh, r.supply_on, r.flags, r.register_kwh, r.interval_s, FLAG_BITS
    )
    key = Ed25519PrivateKey.generate()
    message = message_from_trained(
        train(x, labels=r.label != "", random_state=1),
        name="iforest",
        version="bench",
        private_key=key,
    )
    intervals = args.days * 86400 // INTERVAL
    t0 = (int(time.time()) // 86400 - args.days - 2) * 86400
    with tempfile.TemporaryDirectory() as tmp:
        buffer = Buffer(Path(tmp) / "buffer.db")
        active = ActiveModels("iforest")
        detector = Detector("gw-bench", buffer.readings, active, cooldown=Cooldown(86400, {}))
        models = ModelManager(
            buffer.models,
            buffer.counters,
            buffer.meta,
            active,
            name="iforest",
            public_key=public_key_b64(key),
            clock=time.time,
        )
        if not models.offer(json.dumps(message).encode(), "bench"):
            raise SystemExit(f"model refused: {models.error}")
        intake = Intake(buffer.readings, buffer.meta, Validator(time.time), detector)
        start = time.perf_counter()
        last_day = start
        for k in range(intervals):
            intake.take([_row(m, k, t0) for m in range(args.meters)])
            if (k + 1) % 48 == 0:
                now = time.perf_counter()
                print(f"day {(k + 1) // 48}: {48 * args.meters / (now - last_day):,.0f} readings/s")
                last_day = now
        block_s = time.perf_counter() - start
        start = time.perf_counter()
        for i in range(args.singles):
            intake.take([_row(i % args.meters, intervals, t0)])
        single_ms = (time.perf_counter() - start) / args.singles * 1000
        scored = buffer.counters.all().get("readings_scored", 0)
        buffer.close()
    expected = intervals * args.meters + args.singles
    if scored != expected:
        raise SystemExit(f"{scored} of {expected} readings scored")
    rate = intervals * args.meters / block_s
    print(
        f"{args.meters} meters: interval blocks scored at {rate:,.0f} readings/s"
        f" ({block_s / intervals * 1000:.0f} ms per call); one reading per call {single_ms:.1f} ms"
    )
    report(
        "bench.intake",
        {
            "meters": args.meters,
            "days": args.days,
            "block_readings_per_s": round(rate),
            "block_call_ms": round(block_s / intervals * 1000, 1),
            "single_reading_call_ms": round(single_ms, 1),
            "scored": scored,
        },
        argv,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
