"""Fleet configuration: every figure the model uses, with defaults (sources in docs/simulator.md).

All hourly shapes are in local time, hour ``h`` covering ``h:00``–``h+1:00``. They are relative
weights: only their ratios matter (each is normalised to one day's worth of energy).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from functools import lru_cache
from zoneinfo import ZoneInfo

ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
HOURS = 24


@dataclass(frozen=True)
class ClassSpec:
    """One customer class: how much, when, and how it reacts to weather and credit."""

    name: str
    share: float  # share of the fleet's customer meters
    daily_kwh: tuple[float, float]  # a meter's mean daily energy lies in this range
    evening_share: tuple[float, float]  # expected share of daily energy in the peak hours
    weekday: tuple[float, ...]  # 24 hourly weights
    weekend_boost: tuple[int, int, float] = (9, 16, 1.0)  # hours [a, b) x factor on weekends
    saturday_level: float = 1.0  # day energy relative to a weekday
    sunday_level: float = 1.0  # also used on public holidays
    noise_sigma: float = 0.25  # interval-to-interval lognormal noise
    day_sigma: float = 0.15  # day-to-day lognormal level noise
    cooling_share: float = 0.0  # share of energy that is cooling at the region's mean
    cooling_hours: tuple[int, int] = (12, 24)  # hours when cooling runs (local)
    prepaid_share: float = 0.7
    credit_gaps_per_day: float = 0.01  # chance a prepaid meter runs out of credit on a day
    credit_gap_median_h: float = 8.0
    grid: bool = True  # False: off-grid (solar home system), no transformer
    reports_voltage: bool = True

    def __post_init__(self) -> None:
        if len(self.weekday) != HOURS or min(self.weekday) < 0 or sum(self.weekday) <= 0:
            raise ValueError(f"class {self.name}: weekday needs 24 non-negative weights")
        lo, hi = self.daily_kwh
        if not 0 < lo <= hi:
            raise ValueError(f"class {self.name}: daily_kwh must satisfy 0 < lo <= hi")
        if not 0 <= self.prepaid_share <= 1 or not 0 <= self.cooling_share < 1:
            raise ValueError(f"class {self.name}: shares must be in [0, 1)")


# Residential lifeline: lights, phone charging, radio/TV. Evening dominated.
LIFELINE = ClassSpec(
    name="residential_lifeline",
    share=0.33,
    daily_kwh=(0.2, 0.5),
    evening_share=(0.45, 0.75),
    weekday=(
        0.25,
        0.25,
        0.25,
        0.25,
        0.25,
        0.5,
        0.8,
        0.6,
        0.3,
        0.3,
        0.3,
        0.3,
        0.3,
        0.3,
        0.3,
        0.3,
        0.3,
        0.8,
        2.2,
        3.2,
        3.2,
        2.6,
        1.4,
        0.6,
    ),
    weekend_boost=(9, 17, 1.3),
    noise_sigma=0.30,
    day_sigma=0.15,
    prepaid_share=0.95,
    credit_gaps_per_day=0.04,
    credit_gap_median_h=14.0,
)
# Urban residential: fridge, fans/AC, cooking, TV; morning bump and evening peak.
URBAN = ClassSpec(
    name="residential_urban",
    share=0.45,
    daily_kwh=(3.0, 8.0),
    evening_share=(0.30, 0.50),
    weekday=(
        0.55,
        0.55,
        0.55,
        0.55,
        0.55,
        0.7,
        1.1,
        1.2,
        0.9,
        0.75,
        0.75,
        0.75,
        0.75,
        0.75,
        0.75,
        0.75,
        0.85,
        1.3,
        2.0,
        2.4,
        2.3,
        1.9,
        1.3,
        0.8,
    ),
    weekend_boost=(9, 17, 1.3),
    saturday_level=1.05,
    sunday_level=1.05,
    noise_sigma=0.25,
    day_sigma=0.12,
    cooling_share=0.2,
    cooling_hours=(13, 24),
    prepaid_share=0.75,
    credit_gaps_per_day=0.015,
    credit_gap_median_h=10.0,
)
# Commercial: shops, offices, bars; business hours, quieter weekends.
COMMERCIAL = ClassSpec(
    name="commercial",
    share=0.15,
    daily_kwh=(10.0, 60.0),
    evening_share=(0.12, 0.35),
    weekday=(
        0.3,
        0.3,
        0.3,
        0.3,
        0.3,
        0.3,
        0.3,
        0.6,
        1.3,
        1.8,
        1.8,
        1.8,
        1.8,
        1.8,
        1.8,
        1.8,
        1.8,
        1.6,
        1.4,
        1.2,
        0.9,
        0.6,
        0.35,
        0.35,
    ),
    saturday_level=0.75,
    sunday_level=0.45,
    noise_sigma=0.18,
    day_sigma=0.10,
    cooling_share=0.3,
    cooling_hours=(9, 19),
    prepaid_share=0.4,
    credit_gaps_per_day=0.01,
    credit_gap_median_h=6.0,
)
# Small industrial: workshops, mills, welding, cold rooms; one long shift on weekdays.
INDUSTRIAL = ClassSpec(
    name="industrial_small",
    share=0.03,
    daily_kwh=(80.0, 400.0),
    evening_share=(0.08, 0.30),
    weekday=(
        0.35,
        0.35,
        0.35,
        0.35,
        0.35,
        0.35,
        0.8,
        1.9,
        1.9,
        1.9,
        1.9,
        1.9,
        1.5,
        1.9,
        1.9,
        1.9,
        1.9,
        1.5,
        0.9,
        0.9,
        0.9,
        0.9,
        0.45,
        0.45,
    ),
    saturday_level=0.6,
    sunday_level=0.3,
    noise_sigma=0.12,
    day_sigma=0.08,
    cooling_share=0.1,
    cooling_hours=(8, 18),
    prepaid_share=0.1,
    credit_gaps_per_day=0.005,
    credit_gap_median_h=4.0,
)
# Pay-as-you-go solar home system (off-grid): lights, phone, radio, small TV.
SOLAR_HOME = ClassSpec(
    name="solar_home_payg",
    share=0.04,
    daily_kwh=(0.05, 0.3),
    evening_share=(0.50, 0.80),
    weekday=(
        0.15,
        0.15,
        0.15,
        0.15,
        0.15,
        0.15,
        0.4,
        0.35,
        0.35,
        0.35,
        0.35,
        0.35,
        0.35,
        0.35,
        0.35,
        0.35,
        0.35,
        0.9,
        2.6,
        3.2,
        3.0,
        2.2,
        1.0,
        0.4,
    ),
    noise_sigma=0.25,
    day_sigma=0.15,
    prepaid_share=1.0,
    credit_gaps_per_day=0.05,
    credit_gap_median_h=20.0,
    grid=False,
    reports_voltage=False,
)
DEFAULT_CLASSES: tuple[ClassSpec, ...] = (LIFELINE, URBAN, COMMERCIAL, INDUSTRIAL, SOLAR_HOME)
# Shape of the load on illegal direct hook-ups (unmetered households).
HOOKUP_WEIGHTS: tuple[float, ...] = URBAN.weekday


@dataclass(frozen=True)
class RegionSpec:
    """A supply region: where it is, its climate, and how its utility sheds load."""

    code: str
    name: str
    latitude: float
    longitude: float
    timezone: str  # IANA name; the simulator's clock needs one that keeps one offset all year
    temp_mean_c: float
    temp_season_amp_c: float
    temp_peak_doy: int  # day of year of the warmest season
    temp_diurnal_amp_c: float  # half the day-night swing
    humidity_mean_pct: float
    humidity_season_amp_pct: float
    humidity_peak_doy: int  # wettest season
    wind_mean_ms: float
    shedding: str  # "rotation" | "bands" | "none"

    @property
    def utc_offset_s(self) -> int:
        """The zone's offset, the same all year (checked: the time grid has no DST)."""
        return _fixed_offset_s(self.timezone)


@lru_cache(maxsize=32)
def _fixed_offset_s(timezone: str) -> int:
    tz = ZoneInfo(timezone)
    seen = {
        datetime(year, month, 15, tzinfo=UTC).astimezone(tz).utcoffset()
        for year in (2020, 2024, 2026)
        for month in (1, 4, 7, 10)
    }
    if len(seen) != 1:
        raise ValueError(f"region time zone {timezone!r} changes its offset (DST)")
    (offset,) = seen
    return int(offset.total_seconds()) if offset is not None else 0


# Rough climatological normals (see docs/simulator.md). Nigeria sheds by service bands, South
# Africa by rotating stages, the others by rotating feeder cuts ("délestage").
REGION_TEMPLATES: tuple[RegionSpec, ...] = (
    RegionSpec(
        "DKR",
        "Dakar",
        14.69,
        -17.44,
        "Africa/Dakar",
        24.5,
        3.5,
        260,
        3.5,
        70,
        10,
        240,
        4.5,
        "rotation",
    ),
    RegionSpec(
        "DLA",
        "Douala",
        4.05,
        9.70,
        "Africa/Douala",
        26.5,
        1.5,
        50,
        4.0,
        83,
        6,
        220,
        2.5,
        "rotation",
    ),
    RegionSpec(
        "COO",
        "Cotonou",
        6.37,
        2.39,
        "Africa/Porto-Novo",
        27.3,
        1.5,
        75,
        4.0,
        78,
        6,
        170,
        3.5,
        "rotation",
    ),
    RegionSpec(
        "LOS", "Lagos", 6.52, 3.38, "Africa/Lagos", 27.0, 1.5, 75, 4.5, 80, 6, 170, 3.0, "bands"
    ),
    RegionSpec(
        "KAN", "Kano", 12.00, 8.52, "Africa/Lagos", 26.5, 5.0, 125, 7.0, 35, 25, 225, 3.0, "bands"
    ),
    RegionSpec(
        "JNB",
        "Johannesburg",
        -26.20,
        28.05,
        "Africa/Johannesburg",
        16.0,
        5.0,
        15,
        7.0,
        55,
        15,
        15,
        3.5,
        "rotation",
    ),
    RegionSpec(
        "ACC", "Accra", 5.60, -0.19, "Africa/Accra", 27.0, 1.5, 75, 4.0, 78, 6, 170, 3.5, "rotation"
    ),
    RegionSpec(
        "ABJ",
        "Abidjan",
        5.36,
        -4.01,
        "Africa/Abidjan",
        27.0,
        1.5,
        75,
        4.0,
        80,
        6,
        165,
        3.0,
        "rotation",
    ),
    RegionSpec(
        "NBO",
        "Nairobi",
        -1.29,
        36.82,
        "Africa/Nairobi",
        19.0,
        1.5,
        60,
        6.0,
        65,
        10,
        110,
        3.5,
        "rotation",
    ),
)

THEFT_WEIGHTS: dict[str, float] = {
    "h1": 1.0,
    "h2": 1.0,
    "h3": 1.0,
    "h4": 1.0,
    "h5": 1.0,
    "h6": 1.0,
    "h1_fixed": 1.0,
    "zero_report": 0.5,
    "cap": 0.7,
    "subtract": 0.7,
    "ramp": 0.7,
    "peak_shift": 0.5,
    "swap": 0.5,
    "on_off": 0.5,
    "bypass": 1.5,
    "tamper_magnetic": 0.7,
    "tamper_cover": 0.7,
    "register_rollback": 0.5,
}
FAULT_WEIGHTS: dict[str, float] = {"stuck": 1.0, "spike": 1.0, "tamper_only": 1.0}

#: How customers draw their energy (``FleetConfig.load_style``):
#: ``household``: the classes' smooth hourly shapes with lognormal noise;
#: ``bursty``: the same energy, drawn by a few discrete appliances switching on and off (long
#: near-zero stretches, short blocks at a few fixed powers), as in many lifeline homes;
#: ``commercial``: shops and workshops only, smooth profiles (little noise).
LOAD_STYLES: tuple[str, ...] = ("household", "bursty", "commercial")
BAND_MIN_HOURS: dict[str, float] = {"A": 20.0, "B": 16.0, "C": 12.0, "D": 8.0, "E": 4.0}


@dataclass(frozen=True)
class FleetConfig:
    """What to simulate. ``meters`` counts customer meters; transformer meters come on top."""

    meters: int = 1000
    days: float = 7  # may be fractional: 0.25 = the first 6 hours
    start: str = "2026-03-01"  # UTC date; the first interval ends at start + interval
    interval_s: int = 1800
    seed: int = 0
    gateways: int = 1
    theft_share: float = 0.06  # share of grid customers that steal
    fault_share: float = 0.01  # share of grid customers with a meter fault
    regions: int = 4  # the first N of REGION_TEMPLATES (or region_codes)
    region_codes: tuple[str, ...] = ()  # pick templates by code instead
    classes: tuple[ClassSpec, ...] = DEFAULT_CLASSES
    customers_per_transformer: tuple[int, int] = (15, 80)
    transformers_per_feeder: tuple[int, int] = (4, 12)
    # Supply.
    shedding: str = "auto"  # "auto" (per region) | "rotation" | "bands" | "none"
    shedding_block_h: float = 2.0  # length of one rotating cut
    shedding_groups: int = 16  # feeders rotate through this many groups
    stage_probs: tuple[float, ...] = (0.35, 0.15, 0.2, 0.15, 0.1, 0.05)  # stages 0..5
    stage_persistence: float = 0.6  # chance the stage stays the same the next day
    band_mix: tuple[tuple[str, float], ...] = (
        ("A", 0.2),
        ("B", 0.25),
        ("C", 0.25),
        ("D", 0.2),
        ("E", 0.1),
    )
    feeder_faults_per_day: float = 0.04
    transformer_faults_per_day: float = 0.01
    fault_median_h: float = 2.5
    cold_load_pickup: float = 0.3  # extra load in the first interval after restoration
    # Calendar. "MM-DD" recurs every year, "YYYY-MM-DD" is a single date.
    holidays: tuple[str, ...] = ("01-01", "05-01", "12-25")
    peak_hours: tuple[int, int] = (17, 22)
    # Losses: loss fraction = base + slope * utilisation, capped (per transformer).
    loss_base: tuple[float, float] = (0.02, 0.05)
    loss_slope: tuple[float, float] = (0.03, 0.07)
    loss_max: float = 0.15
    unmetered_share: float = 0.03  # share of transformers with illegal direct hook-ups
    # Theft and faults.
    theft_weights: tuple[tuple[str, float], ...] = tuple(THEFT_WEIGHTS.items())
    fault_weights: tuple[tuple[str, float], ...] = tuple(FAULT_WEIGHTS.items())
    theft_day_prob: float = 0.85  # chance a thief's day-level attack runs on a given day
    onset_at_start: float = 0.5  # share of thieves already stealing on day 0
    load_style: str = "household"  # LOAD_STYLES; see style_config for "commercial"

    def __post_init__(self) -> None:
        if self.meters < 1:
            raise ValueError("meters must be >= 1")
        if not 300 <= self.interval_s <= 86400 or 86400 % self.interval_s:
            raise ValueError("interval_s must divide a day and lie in 300..86400")
        if self.days <= 0 or self.total_intervals < 1:
            raise ValueError("days must cover at least one interval")
        if self.seed < 0:
            raise ValueError("seed must be >= 0")
        if self.gateways < 1:
            raise ValueError("gateways must be >= 1")
        for name, value in (
            ("theft_share", self.theft_share),
            ("fault_share", self.fault_share),
            ("unmetered_share", self.unmetered_share),
        ):
            if not 0 <= value <= 1:
                raise ValueError(f"{name} must be in [0, 1]")
        if self.theft_share + self.fault_share > 1:
            raise ValueError("theft_share + fault_share must be <= 1")
        if self.load_style not in LOAD_STYLES:
            raise ValueError(f"load_style must be one of {LOAD_STYLES}")
        if self.shedding not in ("auto", "rotation", "bands", "none"):
            raise ValueError("shedding must be auto, rotation, bands or none")
        if sum(c.share for c in self.classes) <= 0:
            raise ValueError("class shares must sum to > 0")
        lo, hi = self.customers_per_transformer
        if not 1 <= lo <= hi:
            raise ValueError("customers_per_transformer must satisfy 1 <= lo <= hi")
        lo, hi = self.transformers_per_feeder
        if not 1 <= lo <= hi:
            raise ValueError("transformers_per_feeder must satisfy 1 <= lo <= hi")
        unknown = {k for k, _ in self.theft_weights} - set(THEFT_WEIGHTS)
        unknown |= {k for k, _ in self.fault_weights} - set(FAULT_WEIGHTS)
        if unknown:
            raise ValueError(f"unknown attack types: {sorted(unknown)}")
        self.start_epoch  # noqa: B018 - validates the date
        self.region_specs  # noqa: B018

    def with_(self, **changes: object) -> FleetConfig:
        return replace(self, **changes)  # type: ignore[arg-type]

    @classmethod
    def for_style(cls, style: str, **kwargs: object) -> FleetConfig:
        """A fleet of ``style`` (LOAD_STYLES): ``commercial`` also means commercial and small
        industrial customers only, unless ``classes`` is given."""
        if style == "commercial" and "classes" not in kwargs:
            kwargs["classes"] = (replace(COMMERCIAL, share=0.7), replace(INDUSTRIAL, share=0.3))
        return cls(load_style=style, **kwargs)  # type: ignore[arg-type]

    @property
    def start_epoch(self) -> int:
        try:
            day = date.fromisoformat(self.start[:10])
        except ValueError as exc:
            raise ValueError(f"start {self.start!r} is not a YYYY-MM-DD date") from exc
        return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp())

    @property
    def intervals_per_day(self) -> int:
        return 86400 // self.interval_s

    @property
    def total_intervals(self) -> int:
        return int(round(self.days * self.intervals_per_day))

    @property
    def day_blocks(self) -> int:
        """UTC days touched by the simulation (the last one possibly in part)."""
        return -(-self.total_intervals // self.intervals_per_day)

    @property
    def region_specs(self) -> tuple[RegionSpec, ...]:
        if self.region_codes:
            by_code = {r.code: r for r in REGION_TEMPLATES}
            missing = [c for c in self.region_codes if c not in by_code]
            if missing:
                raise ValueError(f"unknown region codes {missing}; known: {sorted(by_code)}")
            return tuple(by_code[c] for c in self.region_codes)
        if not 1 <= self.regions <= len(REGION_TEMPLATES):
            raise ValueError(f"regions must be in 1..{len(REGION_TEMPLATES)}")
        return REGION_TEMPLATES[: self.regions]
