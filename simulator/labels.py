"""Names of meter flags (a bitmask per reading) and of ground-truth labels (a code per reading)."""

from __future__ import annotations

import numpy as np

from edge_agent.vocabulary import METER_FLAGS

# Bit i of ``Chunk.flags`` <-> FLAG_NAMES[i]: the project's flag vocabulary, in its bit order.
FLAG_NAMES: tuple[str, ...] = METER_FLAGS
FLAG_BIT: dict[str, int] = {name: 1 << i for i, name in enumerate(FLAG_NAMES)}

# Electricity theft (non-technical loss on purpose).
THEFT_LABELS: tuple[str, ...] = (
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",  # Jokar et al. 2016
    "h1_fixed",  # h1 with one factor per meter: a step down that stays
    "zero_report",
    "cap",
    "subtract",
    "ramp",
    "peak_shift",
    "swap",
    "on_off",  # Altamimi 2023
    "bypass",
    "tamper_magnetic",
    "tamper_cover",
    "register_rollback",  # physical tampering
)
# Meter faults and tamper alarms without a change in consumption: anomalies, not theft.
FAULT_LABELS: tuple[str, ...] = ("stuck", "spike", "tamper_only")
# Code 0 = normal; Chunk.label_code indexes this tuple.
LABEL_NAMES: tuple[str, ...] = ("", *THEFT_LABELS, *FAULT_LABELS)
LABEL_CODE: dict[str, int] = {name: i for i, name in enumerate(LABEL_NAMES)}
# Labels put on an interval because of an event (flag, register jump) even if kwh is unchanged.
EVENT_LABELS: frozenset[str] = frozenset({"register_rollback", "tamper_only"})

LABEL_ARRAY = np.array(LABEL_NAMES, dtype=object)


def category(label: str) -> str:
    """'normal', 'theft' or 'fault'."""
    if not label:
        return "normal"
    return "theft" if label in THEFT_LABELS else "fault"


def flag_names(mask: int) -> list[str]:
    return [name for i, name in enumerate(FLAG_NAMES) if mask >> i & 1]
