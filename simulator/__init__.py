"""A realistic meter fleet and grid simulator with labelled theft (numpy + stdlib only).

    from simulator import FleetConfig, Fleet
    fleet = Fleet(FleetConfig(meters=300, days=3, gateways=2, seed=7))
    for chunk in fleet.chunks(gateway=0, chunk_intervals=48):
        ...

See docs/simulator.md for the model, its defaults and their sources.
"""

from .chunk import Chunk
from .config import (
    DEFAULT_CLASSES,
    LOAD_STYLES,
    REGION_TEMPLATES,
    ClassSpec,
    FleetConfig,
    RegionSpec,
)
from .fleet import Fleet
from .labels import (
    EVENT_LABELS,
    FAULT_LABELS,
    FLAG_BIT,
    FLAG_NAMES,
    LABEL_CODE,
    LABEL_NAMES,
    THEFT_LABELS,
    category,
    flag_names,
)
from .registry import Registry

__all__ = [
    "Chunk",
    "ClassSpec",
    "DEFAULT_CLASSES",
    "EVENT_LABELS",
    "FAULT_LABELS",
    "FLAG_BIT",
    "FLAG_NAMES",
    "Fleet",
    "FleetConfig",
    "LABEL_CODE",
    "LABEL_NAMES",
    "REGION_TEMPLATES",
    "Registry",
    "RegionSpec",
    "LOAD_STYLES",
    "THEFT_LABELS",
    "category",
    "flag_names",
]
