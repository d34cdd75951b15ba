"""A model's calibration: its raw anomaly score mapped to a level among normal readings.

``ml.calibration`` fits it when a model is trained and writes its knots into the ONNX file's
metadata (``eiot.calibration``, covered by the model's signature with the rest of the file);
:class:`edge_agent.model.LoadedModel` reads them back and returns levels. See ``ml.calibration``
for what a level means.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

#: The ONNX metadata key that holds the knots, as JSON ``[[raw, level], ...]``.
METADATA_KEY = "eiot.calibration"
_MAX_KNOTS = 256


@dataclass(frozen=True)
class Calibration:
    """Knots ``(raw score, level)``, both strictly increasing, levels in [0, 1]."""

    raw: tuple[float, ...]
    level: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.raw) != len(self.level) or not 2 <= len(self.raw) <= _MAX_KNOTS:
            raise ValueError(f"a calibration has 2..{_MAX_KNOTS} (raw, level) knots")
        if not all(math.isfinite(v) for v in (*self.raw, *self.level)):
            raise ValueError("calibration knots must be finite")
        if not (np.all(np.diff(self.raw) > 0) and np.all(np.diff(self.level) > 0)):
            raise ValueError("calibration knots must be strictly increasing")
        if self.level[0] < 0.0 or self.level[-1] > 1.0:
            raise ValueError("calibration levels must lie in [0, 1]")

    def level_of(self, raw: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """The level of raw scores: linear between knots, the end levels outside them."""
        out: npt.NDArray[np.float64] = np.interp(np.asarray(raw, np.float64), self.raw, self.level)
        return out

    def raw_of(self, level: float) -> float:
        """The raw score at ``level`` (the inverse map)."""
        return float(np.interp(level, self.level, self.raw))

    def knots(self) -> list[list[float]]:
        return [[r, v] for r, v in zip(self.raw, self.level, strict=True)]

    def to_json(self) -> str:
        return json.dumps(self.knots())

    @classmethod
    def from_knots(cls, knots: object) -> Calibration:
        """``[[raw, level], ...]``; ValueError when they are not a valid calibration."""
        try:
            raw = tuple(float(k[0]) for k in knots)  # type: ignore[attr-defined]
            level = tuple(float(k[1]) for k in knots)  # type: ignore[attr-defined]
        except (TypeError, ValueError, IndexError, KeyError, OverflowError) as exc:
            raise ValueError(f"calibration is not [[raw, level], ...]: {exc}") from None
        return cls(raw, level)

    @classmethod
    def from_json(cls, text: str) -> Calibration:
        try:
            knots = json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise ValueError(f"calibration is not JSON: {exc}") from None
        return cls.from_knots(knots)
