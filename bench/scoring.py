"""Scoring benchmark: fast ONNX graph vs the stock skl2onnx graph.

    python -m bench.scoring [--meters 200] [--days 30] [--threads 1]

Trains an IsolationForest on features of synthetic meters (``ml.synthetic``), exports our fast
graph and the stock skl2onnx graph, and measures for both: single-row p50 latency (in process,
many repetitions, through the agent's ``LoadedModel.score``) and batch throughput (one call on
100,000 rows). Checks parity with scikit-learn on 100,000 rows, and measures the peak RSS of a
fresh interpreter that imports ``edge_agent.model``, verifies and loads the signed model, computes
features for a meter and scores (the agent with a model loaded, less its buffer and MQTT).
Human-readable lines first; the LAST line is one JSON object.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent.features import FEATURE_NAMES
from edge_agent.model import LoadedModel, load_model
from ml.onnx_export import export_stock, fast_graph
from ml.publish import message_from_trained, public_key_b64
from ml.synthetic import FLAG_BITS, make_readings
from ml.train import anomaly_scores, features_for, train

PARITY_ROWS = 100_000

_CHILD = r"""
import json, resource, sys, numpy as np
from edge_agent.features import compute_features, FEATURE_NAMES
from edge_agent.model import load_model
message = json.load(open(sys.argv[1]))
model = load_model(message, sys.argv[2])
data = np.load(sys.argv[3])
x = compute_features(data["ts"], data["kwh"], data["supply_on"], data["flags"],
                     data["register_kwh"], int(data["interval_s"]), json.loads(sys.argv[4]))
scores = model.score(x)
for row in x[-48:]:
    model.score(row)
big = np.tile(x, (max(1, 20000 // len(x)), 1))
model.score(big)
# VmHWM is this process's own peak; ru_maxrss would include the parent's RSS at fork time.
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
try:
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            peak = int(line.split()[1]) / 1024.0
except OSError:
    pass
flagged = int((scores > model.threshold).sum())
print(json.dumps({"peak_rss_mb": peak, "rows": int(len(x)), "flagged": flagged}))
"""


def p50_us(fn: Callable[[], object], repeats: int) -> float:
    for _ in range(min(200, repeats)):
        fn()
    times = np.empty(repeats, dtype=np.int64)
    gc.disable()
    try:
        for i in range(repeats):
            start = time.perf_counter_ns()
            fn()
            times[i] = time.perf_counter_ns() - start
    finally:
        gc.enable()
    return float(np.median(times)) / 1000.0


def rows_per_s(fn: Callable[[np.ndarray], object], x: np.ndarray, rounds: int = 5) -> float:
    fn(x)
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        fn(x)
        best = min(best, time.perf_counter() - start)
    return x.shape[0] / best


def features(n_meters: int, days: int, seed: int) -> tuple[np.ndarray, np.ndarray, Any]:
    r = make_readings(n_meters, days, seed=seed, attack_fraction=0.3)
    x = features_for(
        r.meter_index, r.ts, r.kwh, r.supply_on, r.flags, r.register_kwh, r.interval_s, FLAG_BITS
    )
    return x, r.label != "", r


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scoring")
    parser.add_argument("--meters", type=int, default=200, help="training meters")
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    parser.add_argument("--repeats", type=int, default=20_000, help="single-row repetitions")
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    x_train, y_train, _ = features(args.meters, args.days, seed=1)
    trained = train(x_train, labels=y_train)
    print(
        f"trained IsolationForest(n_estimators=100, max_samples=256) on {trained.train_rows} rows"
        f" x {len(FEATURE_NAMES)} features in {time.perf_counter() - t0:.1f}s;"
        f" threshold {trained.threshold:.4f} ({trained.threshold_method})"
    )
    metrics = ", ".join(f"{k}={v:.3f}" for k, v in trained.metrics.items())
    print(f"  labelled-train metrics: {metrics}")

    n_test_meters = PARITY_ROWS // (args.days * 46) + 2
    x_test, _, _ = features(n_test_meters, args.days, seed=2)
    if x_test.shape[0] < PARITY_ROWS:
        raise SystemExit(f"only {x_test.shape[0]} test rows")
    x_test = np.ascontiguousarray(x_test[:PARITY_ROWS])

    key = Ed25519PrivateKey.generate()
    pub = public_key_b64(key)
    message = message_from_trained(trained, name="iforest", version="bench-1", private_key=key)
    fast = load_model(message, pub, threads=args.threads)
    proto = fast_graph(trained.model, FEATURE_NAMES)
    fast_bytes = proto.SerializeToString()
    stock_bytes = export_stock(trained.model, len(FEATURE_NAMES))
    import onnx

    stock_nodes = len(onnx.load_from_string(stock_bytes).graph.node)
    print(
        f"fast graph: {len(proto.graph.node)} nodes, {len(fast_bytes) / 1024:.0f} KiB;"
        f" stock skl2onnx graph: {stock_nodes} nodes, {len(stock_bytes) / 1024:.0f} KiB"
    )
    stock = LoadedModel(
        stock_bytes,
        name="stock",
        version="stock",
        threshold=0.0,
        feature_names=FEATURE_NAMES,
        threads=args.threads,
    )
    stock_session = stock._session
    stock_in = stock_session.get_inputs()[0].name

    def stock_scores(x: np.ndarray) -> np.ndarray:
        out = stock_session.run(["scores"], {stock_in: x})[0]
        return np.asarray(out).reshape(-1)

    # Parity on 100,000 rows.
    t0 = time.perf_counter()
    expected = anomaly_scores(trained.model, x_test)
    sk_labels = trained.model.predict(x_test) == -1
    sk_time = time.perf_counter() - t0
    got = fast.score(x_test).astype(np.float64)
    max_diff = float(np.abs(got - expected).max())
    mismatches = int(np.sum(fast.is_anomaly(got) != sk_labels))
    stock_diff = float(
        np.abs(stock_scores(x_test[:20000]) + trained.model.offset_ - (-expected[:20000])).max()
    )
    print(
        f"parity on {PARITY_ROWS} rows: max |onnx - sklearn| = {max_diff:.2e},"
        f" label mismatches = {mismatches} ({int(sk_labels.sum())} flagged by sklearn);"
        f" stock graph max diff {stock_diff:.2e} (20k rows)"
    )

    row = x_test[12345]
    single = p50_us(lambda: fast.score(row), args.repeats)
    stock_single = p50_us(lambda: stock_scores(row.reshape(1, -1)), max(200, args.repeats // 20))
    batch = rows_per_s(fast.score, x_test)
    stock_batch = rows_per_s(stock_scores, x_test[:20000], rounds=2)
    print(
        f"fast  ({args.threads} thread): single-row p50 {single:.1f} us, batch {batch:,.0f} rows/s"
    )
    print(
        f"stock ({args.threads} thread): single-row p50 {stock_single:.1f} us,"
        f" batch {stock_batch:,.0f} rows/s"
    )
    print(f"sklearn score_samples+predict: {PARITY_ROWS / sk_time:,.0f} rows/s")
    if args.threads == 1:
        two = load_model(message, pub, threads=2)
        print(f"fast  (2 threads): batch {rows_per_s(two.score, x_test):,.0f} rows/s (for info)")
        del two

    with tempfile.TemporaryDirectory() as tmp:
        msg_path = Path(tmp) / "model.json"
        msg_path.write_text(json.dumps(message))
        r = make_readings(1, 14, seed=3)
        data_path = Path(tmp) / "meter.npz"
        np.savez(
            data_path,
            ts=r.ts,
            kwh=r.kwh,
            supply_on=r.supply_on,
            flags=r.flags,
            register_kwh=r.register_kwh,
            interval_s=r.interval_s,
        )
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH", "")]
        )
        child = subprocess.run(
            [
                sys.executable,
                "-c",
                _CHILD,
                str(msg_path),
                pub,
                str(data_path),
                json.dumps(FLAG_BITS),
            ],
            capture_output=True,
            text=True,
            check=True,
            env=env,
            timeout=120,
        )
    child_report = json.loads(child.stdout.strip().splitlines()[-1])
    rss = float(child_report["peak_rss_mb"])
    print(
        f"fresh agent-like process (import edge_agent.model, verify+load, features+score"
        f" {child_report['rows']} rows): peak RSS {rss:.1f} MB"
    )
    targets = [
        ("single_row_p50_us <= 50", single <= 50),
        ("batch_rows_per_s >= 300000", batch >= 300_000),
        ("agent_peak_rss_mb <= 90", rss <= 90),
        ("parity_max_abs_diff <= 1e-5", max_diff <= 1e-5),
        ("parity_label_mismatches == 0", mismatches == 0),
    ]
    print("targets: " + ", ".join(f"{name}: {'ok' if ok else 'MISSED'}" for name, ok in targets))
    print(
        json.dumps(
            {
                "single_row_p50_us": round(single, 2),
                "batch_rows_per_s": round(batch),
                "stock_single_row_p50_us": round(stock_single, 2),
                "stock_batch_rows_per_s": round(stock_batch),
                "agent_peak_rss_mb": round(rss, 1),
                "parity_max_abs_diff": max_diff,
                "parity_label_mismatches": mismatches,
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
