"""Detection quality: ``ml.evaluate`` on held-out simulated fleets, its figures recorded.

    python -m bench.detection [ml.evaluate options, e.g. --eval-seed 303]

The same evaluation as ``python -m ml.evaluate`` (see ``docs/detection.md``); its targets (each
with ``value``, ``target``, ``met``; per load style unless ``--style``) go to ``bench/RESULTS.md``
with the date, commit and command, and as the last line (JSON). The whole result is
``ml.evaluate``'s last line.
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
    result = evaluate.evaluate(args)
    targets = {
        name: {key: t[key] for key in ("value", "target", "met")}
        for name, t in result["targets"].items()
    }
    report("bench.detection", {"config": result["config"], "targets": targets}, argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
