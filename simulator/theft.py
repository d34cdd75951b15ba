"""Who steals (or has a faulty meter), how, from when; and applying it to a gateway's day.

The plan is fixed per fleet (seeded once). Each day, per gateway, the injector turns true
energy into what the meters report, with a label code per interval where the report differs
from the truth (or where a tamper / register event happened) and the meter flags raised.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import attacks, rng
from .config import FleetConfig
from .labels import FLAG_BIT, LABEL_CODE, LABEL_NAMES
from .topology import Topology

DAY_LEVEL = frozenset(
    {
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "zero_report",
        "cap",
        "subtract",
        "swap",
        "on_off",
        "peak_shift",
    }
)


@dataclass
class TheftPlan:
    code: np.ndarray  # uint8 label code per customer, 0 = honest
    onset_day: np.ndarray  # int64
    onset_k: np.ndarray  # int64 interval of the onset day
    p1: np.ndarray  # float64, meaning per type (see _params)
    p2: np.ndarray
    p3: np.ndarray
    donor: np.ndarray  # int64 customer index (swap), -1 otherwise
    flag: np.ndarray  # uint16 flag bit raised by the type (bypass, rollback, tamper_only)

    def describe(self, i: int) -> dict[str, float | int | str]:
        """The static parameters of customer i's attack, for the ground-truth file."""
        name = LABEL_NAMES[int(self.code[i])]
        params: dict[str, float | int | str] = {}
        names = PARAM_NAMES.get(name, ())
        for key, value in zip(names, (self.p1[i], self.p2[i], self.p3[i]), strict=False):
            params[key] = round(float(value), 4)
        if self.donor[i] >= 0:
            params["donor_index"] = int(self.donor[i])
        if self.flag[i]:
            params["flag"] = next(k for k, v in FLAG_BIT.items() if v == self.flag[i])
        return params


PARAM_NAMES: dict[str, tuple[str, ...]] = {
    "h1_fixed": ("alpha",),
    "cap": ("a",),
    "subtract": ("c_kwh",),
    "ramp": ("r_max", "length_intervals"),
    "peak_shift": ("keep",),
    "on_off": ("p_on",),
    "bypass": ("keep", "start_hour", "hours"),
    "tamper_magnetic": ("keep",),
    "tamper_cover": ("keep",),
    "register_rollback": ("fraction", "period_days"),
    "stuck": ("value_kwh", "days"),
}


def make_plan(cfg: FleetConfig, topo: Topology) -> TheftPlan:
    gen = rng.stream(cfg.seed, rng.THEFT_PLAN)
    n = topo.n_customers
    n_grid = topo.n_grid
    ipd = cfg.intervals_per_day
    code = np.zeros(n, np.uint8)
    order = gen.permutation(n_grid)  # only grid customers steal / have modelled faults
    n_theft = int(round(cfg.theft_share * n_grid))
    n_fault = min(int(round(cfg.fault_share * n_grid)), n_grid - n_theft)
    for picked, weights in (
        (order[:n_theft], cfg.theft_weights),
        (order[n_theft : n_theft + n_fault], cfg.fault_weights),
    ):
        names = [k for k, w in weights if w > 0]
        w = np.array([w for _, w in weights if w > 0], np.float64)
        if not len(picked) or not len(names):
            continue
        exact = len(picked) * w / w.sum()
        counts = np.floor(exact).astype(np.int64)
        counts[np.argsort(-(exact - counts), kind="stable")[: len(picked) - counts.sum()]] += 1
        kinds = np.repeat([LABEL_CODE[k] for k in names], counts)
        code[picked] = gen.permutation(kinds)

    at_start = gen.random(n) < cfg.onset_at_start
    onset_day = np.where(at_start, 0, gen.integers(0, cfg.day_blocks, n))
    onset_k = gen.integers(0, ipd, n)
    level_iv = topo.cust_level / ipd
    u1, u2, u3, u4 = (gen.random(n) for _ in range(4))
    p1 = np.zeros(n)
    p2 = np.zeros(n)
    p3 = np.zeros(n)
    flag = np.zeros(n, np.uint16)

    def set_(
        name: str, a: np.ndarray, b: np.ndarray | None = None, c: np.ndarray | None = None
    ) -> None:
        sel = code == LABEL_CODE[name]
        p1[sel] = a[sel]
        if b is not None:
            p2[sel] = b[sel]
        if c is not None:
            p3[sel] = c[sel]

    set_("h1_fixed", 0.1 + 0.7 * u1)
    set_("cap", 0.2 + 0.4 * u1)
    set_("subtract", (0.3 + 0.5 * u1) * level_iv)
    set_("ramp", 0.5 + 0.4 * u1, np.floor((3 + 11 * u2) * ipd))
    set_("peak_shift", 0.2 + 0.4 * u1)
    set_("on_off", 0.3 + 0.4 * u1)
    # Bypass at night from 17..21 h for 8..14 h, or all day (start_hour -1) for a quarter.
    start_h = np.where(u2 < 0.25, -1.0, 17.0 + np.floor(5 * u2))
    set_("bypass", 0.05 + 0.35 * u1, start_h, np.where(start_h < 0, 24.0, 8.0 + np.floor(7 * u4)))
    set_("tamper_magnetic", 0.1 + 0.4 * u1)
    set_("tamper_cover", 0.2 + 0.4 * u1)
    set_("register_rollback", 0.2 + 0.6 * u1, 7.0 + np.floor(24 * u2))
    set_("stuck", (0.3 + 1.2 * u1) * level_iv, 1.0 + np.floor(5 * u2))
    sel = code == LABEL_CODE["bypass"]
    flag[sel & (u3 < 0.3)] = FLAG_BIT["reverse_flow"]
    sel = code == LABEL_CODE["register_rollback"]
    flag[sel & (u3 < 0.5)] = FLAG_BIT["clock_reset"]
    sel = code == LABEL_CODE["tamper_only"]
    flag[sel] = np.where(u3[sel] < 0.5, FLAG_BIT["cover_open"], FLAG_BIT["magnetic"])

    donor = _pick_donors(np.flatnonzero(code == LABEL_CODE["swap"]), topo, gen)
    return TheftPlan(
        code=code, onset_day=onset_day, onset_k=onset_k, p1=p1, p2=p2, p3=p3, donor=donor, flag=flag
    )


def _pick_donors(thieves: np.ndarray, topo: Topology, gen: np.random.Generator) -> np.ndarray:
    """For each swap thief, another grid customer of the same gateway using at most 60 % of
    the thief's energy (the lowest consumer if none does)."""
    donor = np.full(topo.n_customers, -1, np.int64)
    level = topo.cust_level
    for g, gw in enumerate(topo.gateways):
        mine = thieves[topo.cust_gateway[thieves] == g]
        if not len(mine):
            continue
        pool = gw.customers[: gw.n_grid]
        order = pool[np.argsort(level[pool], kind="stable")]
        count = np.searchsorted(level[order], 0.6 * level[mine], side="right")
        pick = order[(gen.random(len(mine)) * np.maximum(count, 1)).astype(np.int64)]
        second = order[1] if len(order) > 1 else order[0]
        lowest = np.where(order[0] != mine, order[0], second)
        donor[mine] = np.where(count > 0, pick, lowest)
    return donor


@dataclass(frozen=True)
class _Group:
    code: int
    cols: np.ndarray  # columns of the gateway's customer block
    idx: np.ndarray  # global customer indices
    region: np.ndarray
    donor_cols: np.ndarray


def _first_operating(op: np.ndarray, k0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per column, the first interval >= k0 in which the meter operates, and whether any."""
    m = op & (np.arange(op.shape[0])[:, None] >= k0[None, :])
    return m.argmax(axis=0), m.any(axis=0)


class TheftInjector:
    def __init__(self, cfg: FleetConfig, topo: Topology, plan: TheftPlan) -> None:
        self.cfg = cfg
        self.plan = plan
        self.ipd = cfg.intervals_per_day
        self.groups: list[list[_Group]] = []
        for gw in topo.gateways:
            col_of = {int(c): j for j, c in enumerate(gw.customers)}
            codes = plan.code[gw.customers]
            groups = []
            for code in np.unique(codes[codes > 0]):
                cols = np.flatnonzero(codes == code)
                idx = gw.customers[cols]
                donor_cols = np.array(
                    [col_of.get(int(plan.donor[i]), c) for i, c in zip(idx, cols, strict=True)],
                    np.int64,
                )
                groups.append(_Group(int(code), cols, idx, topo.cust_region[idx], donor_cols))
            self.groups.append(groups)

    def apply(
        self,
        day: int,
        gateway: int,
        true: np.ndarray,
        operating: np.ndarray,
        hour: np.ndarray,
        reported: np.ndarray,
        label: np.ndarray,
        flags: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Overwrite the attacked columns of ``reported`` (a copy of ``true``), set ``label``
        and ``flags`` there. All are (T, N) for the gateway's customers; ``hour`` is the local
        hour (T, regions). Returns the register rollbacks: (columns, intervals, fractions)."""
        cfg, plan, ipd = self.cfg, self.plan, self.ipd
        gen = rng.stream(cfg.seed, rng.THEFT_DAY, day, gateway)
        rb_cols: list[np.ndarray] = []
        rb_k: list[np.ndarray] = []
        rb_frac: list[np.ndarray] = []
        t_day = np.arange(ipd)[:, None]
        t_abs = day * ipd + t_day
        for grp in self.groups[gateway]:
            name = LABEL_NAMES[grp.code]
            i, k = grp.idx, len(grp.idx)
            x = true[:, grp.cols]
            op = operating[:, grp.cols]
            u_day = gen.random(k)
            draws = gen.random((ipd, k))
            start = gen.integers(0, ipd, k)
            factor = gen.random(k)
            started = plan.onset_day[i] <= day
            t0 = plan.onset_day[i] * ipd + plan.onset_k[i]
            event = np.zeros((ipd, k), bool)
            flag_mask = np.zeros((ipd, k), bool)
            if name in DAY_LEVEL:
                y = self._day_level(name, x, grp, true, draws, start, factor, hour)
                y = np.where(started & (u_day < cfg.theft_day_prob), y, x)
            elif name == "h1_fixed":  # the meter's own factor, every interval from its onset
                y = attacks.scale_where(x, t_abs >= t0, plan.p1[i])
            elif name == "ramp":
                y = attacks.ramp(x, attacks.ramp_reduction(t_abs, t0, plan.p2[i], plan.p1[i]))
            elif name == "bypass":
                h = hour[:, grp.region]
                sh = plan.p2[i]
                window = ((h - sh) % 24 < plan.p3[i]) | (sh < 0)
                active = window & (t_abs >= t0)
                y = attacks.scale_where(x, active, plan.p1[i])
                flag_mask = active & (plan.flag[i] > 0)
            elif name == "tamper_magnetic":
                length = np.maximum(1, np.round((2 + 8 * factor) * 3600 / cfg.interval_s))
                active = (t_day >= start) & (t_day < start + length)
                active &= started & (u_day < cfg.theft_day_prob)
                y = attacks.scale_where(x, active, plan.p1[i])
                flag_mask = active
            elif name == "tamper_cover":
                on_onset = plan.onset_day[i] == day
                k_open, ok = _first_operating(op, np.where(on_onset, plan.onset_k[i], ipd))
                opened = on_onset & ok
                from_k = np.where(opened, k_open, np.where(plan.onset_day[i] < day, 0, ipd))
                active = t_day >= from_k
                y = attacks.scale_where(x, active, plan.p1[i])
                flag_mask = (t_day == k_open) & opened
            elif name == "register_rollback":
                due = started & ((day - plan.onset_day[i]) % np.maximum(plan.p2[i], 1) == 0)
                k_ev, ok = _first_operating(op, plan.onset_k[i])
                hit = due & ok
                rb_cols.append(grp.cols[hit])
                rb_k.append(k_ev[hit])
                rb_frac.append(plan.p1[i][hit])
                event = (t_day == k_ev) & hit
                flag_mask = event & (plan.flag[i] > 0)
                y = x
            elif name == "tamper_only":
                k_ev, ok = _first_operating(op, start)
                event = (t_day == k_ev) & ok & started & (u_day < 0.3)
                flag_mask = event
                y = x
            elif name == "stuck":
                active = (t_abs >= t0) & (t_abs < t0 + plan.p2[i] * ipd)
                y = np.where(active, attacks.stuck(x, plan.p1[i]), x)
            elif name == "spike":
                second = np.where(draws[0] < 0.5, start, (start + ipd // 2) % ipd)
                active = ((t_day == start) | (t_day == second)) & started & (u_day < 0.4)
                y = attacks.spike(x, active, 5.0 + 15.0 * factor)
            else:  # pragma: no cover - plan and injector list the same names
                raise AssertionError(name)
            y = np.where(op, y, 0.0)
            reported[:, grp.cols] = y
            flag_mask &= op
            label[:, grp.cols] = np.where((y != x) | event | flag_mask, grp.code, 0)
            if flag_mask.any():
                bits = np.where(plan.flag[i] > 0, plan.flag[i], _default_flag(name))
                flags[:, grp.cols] |= np.where(flag_mask, bits, 0).astype(np.uint16)
        return _cat(rb_cols), _cat(rb_k), _cat(rb_frac)

    def _day_level(
        self,
        name: str,
        x: np.ndarray,
        grp: _Group,
        true: np.ndarray,
        draws: np.ndarray,
        start: np.ndarray,
        factor: np.ndarray,
        hour: np.ndarray,
    ) -> np.ndarray:
        plan, ipd, i = self.plan, self.ipd, grp.idx
        if name == "h1":
            return attacks.h1(x, 0.1 + 0.7 * factor)
        if name == "h2":
            lo = min(ipd, max(1, int(np.ceil(4 * 3600 / self.cfg.interval_s))))
            hi = max(lo, ipd - 1)
            duration = lo + np.floor(factor * (hi - lo + 1)).astype(np.int64)
            begin = np.floor(draws[0] * (ipd - duration + 1)).astype(np.int64)
            return attacks.h2(x, begin, duration)
        if name == "h3":
            return attacks.h3(x, 0.1 + 0.7 * draws)
        if name == "h4":
            return attacks.h4(x, 0.1 + 0.7 * draws)
        if name == "h5":
            return attacks.h5(x)
        if name == "h6":
            return attacks.h6(x)
        if name == "zero_report":
            return attacks.zero_report(x)
        if name == "cap":
            return attacks.cap(x, plan.p1[i])
        if name == "subtract":
            return attacks.subtract(x, plan.p1[i])
        if name == "swap":
            return attacks.swap(x, true[:, grp.donor_cols])
        if name == "on_off":
            return attacks.on_off(x, draws < plan.p1[i])
        if name == "peak_shift":
            a, b = self.cfg.peak_hours
            h = hour[:, grp.region]
            return attacks.peak_shift(x, (h >= a) & (h < b), plan.p1[i])
        raise AssertionError(name)  # pragma: no cover


def _default_flag(name: str) -> int:
    return {"tamper_magnetic": FLAG_BIT["magnetic"], "tamper_cover": FLAG_BIT["cover_open"]}.get(
        name, 0
    )


def _cat(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)
