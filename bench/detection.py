"""Detection quality: ``ml.evaluate`` on held-out simulated fleets, its figures recorded.

    python -m bench.detection [ml.evaluate options, e.g. --eval-seed 303]

The same evaluation as ``python -m ml.evaluate`` (see ``docs/detection.md``); the figures go to
``bench/RESULTS.md`` with the date, commit and command, and as the last line (JSON).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from bench.results import report
from ml import evaluate


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.detection", description=__doc__)
    evaluate.add_arguments(parser)
    args = parser.parse_args(argv)
    report("bench.detection", evaluate.evaluate(args), argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
