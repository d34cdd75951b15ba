"""Where benchmark figures go: the last line of a run's output, and one row of ``bench/RESULTS.md``.

Each benchmark ends with :func:`report`: it prints the run's figures as one JSON object (the
last line, for scripts) and appends a row with the date, the commit, the command and the same
JSON to ``bench/RESULTS.md``, so measurements are kept with what produced them instead of in
code comments or docs. ``EIOT_BENCH_RESULTS`` names another file; ``-`` records nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "RESULTS.md"
_HEADER = """# Benchmark results

Appended by the benchmarks themselves (`bench/results.py`), one row per run: when (UTC), on
which commit (`+` = uncommitted changes), the command, and the figures it printed as its last
line. The machine matters: these runs are on the development machine unless the command says
otherwise. Targets are in the issues and in `docs/`.

| date (UTC) | commit | command | figures |
|---|---|---|---|
"""


def _commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, check=False
        ).stdout.strip()

    head = git("rev-parse", "--short=8", "HEAD") or "unknown"
    changed = [
        line for line in git("status", "--porcelain").splitlines() if "bench/RESULTS.md" not in line
    ]
    return head + ("+" if changed else "")


def _target() -> Path | None:
    value = os.environ.get("EIOT_BENCH_RESULTS")
    if value == "-":
        return None
    return Path(value) if value else RESULTS


def report(module: str, figures: dict[str, Any], argv: Sequence[str] | None = None) -> None:
    """Print ``figures`` as the last line and record the run (see the module docstring)."""
    text = json.dumps(figures, sort_keys=False, allow_nan=False)
    print(text, flush=True)
    path = _target()
    if path is None:
        return
    args = list(sys.argv[1:] if argv is None else argv)
    command = " ".join(["python -m", module, *args])
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M")
    new = not path.exists()
    with path.open("a", encoding="utf-8") as f:
        if new:
            f.write(_HEADER)
        cell = text.replace("|", "\\|")
        f.write(f"| {when} | `{_commit()}` | `{command}` | `{cell}` |\n")
