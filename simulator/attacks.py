"""Attack and fault functions, exactly as defined, on arrays of interval energy.

``x`` holds a meter's true energy per interval, time along axis 0: shape (T,) for one meter-day
or (T, k) for k meters side by side. Per-meter parameters broadcast along axis 1 (shape (k,)),
per-interval ones have the shape of ``x``. Every function returns a new array.

Jokar, Arianpoo & Leung, "Electricity theft detection in AMI using customers' consumption
patterns", IEEE Trans. Smart Grid 7(1), 2016 (h1..h6); further types after Altamimi et al.
(Energy, 2023); see docs/simulator.md.
"""

from __future__ import annotations

import numpy as np


def _time_index(x: np.ndarray) -> np.ndarray:
    return np.arange(x.shape[0]).reshape((-1,) + (1,) * (x.ndim - 1))


def h1(x: np.ndarray, alpha: np.ndarray | float) -> np.ndarray:
    """alpha * x_t, alpha ~ U(0.1, 0.8)."""
    return x * alpha


def h2(x: np.ndarray, start: np.ndarray | int, duration: np.ndarray | int) -> np.ndarray:
    """beta_t * x_t with beta_t = 0 for start <= t < start + duration, else 1."""
    t = _time_index(x)
    off = (t >= start) & (t < np.asarray(start) + duration)
    return np.where(off, 0.0, x)


def h3(x: np.ndarray, gamma: np.ndarray) -> np.ndarray:
    """gamma_t * x_t, gamma_t ~ U(0.1, 0.8) drawn per interval."""
    return gamma * x


def h4(x: np.ndarray, gamma: np.ndarray) -> np.ndarray:
    """gamma_t * mean(x), gamma_t ~ U(0.1, 0.8) drawn per interval."""
    return gamma * x.mean(axis=0)


def h5(x: np.ndarray) -> np.ndarray:
    """mean(x) in every interval: the day's energy, flattened."""
    return np.broadcast_to(x.mean(axis=0), x.shape).copy()


def h6(x: np.ndarray) -> np.ndarray:
    """x_{T-1-t}: the day reversed (evening peak reported at night, when tariffs are low)."""
    return x[::-1].copy()


def zero_report(x: np.ndarray) -> np.ndarray:
    """0 in every interval."""
    return np.zeros_like(x)


def cap(x: np.ndarray, a: np.ndarray | float) -> np.ndarray:
    """min(x_t, a * max(x)): readings clipped at a fraction of the day's maximum."""
    return np.minimum(x, a * x.max(axis=0))


def subtract(x: np.ndarray, c: np.ndarray | float) -> np.ndarray:
    """max(x_t - c, 0): a constant taken off every interval, floored at zero."""
    return np.maximum(x - c, 0.0)


def ramp_reduction(
    t: np.ndarray, t0: np.ndarray | int, length: np.ndarray | float, r_max: np.ndarray | float
) -> np.ndarray:
    """The share taken off at absolute interval t: 0 before t0, growing linearly to r_max over
    ``length`` intervals, then r_max."""
    grown = np.clip((t - np.asarray(t0)) / np.asarray(length, dtype=np.float64), 0.0, 1.0)
    return grown * r_max


def ramp(x: np.ndarray, reduction: np.ndarray) -> np.ndarray:
    """x_t * (1 - r_t) with r_t from ramp_reduction: theft that grows progressively."""
    return x * (1.0 - reduction)


def peak_shift(x: np.ndarray, peak: np.ndarray, keep: np.ndarray | float) -> np.ndarray:
    """Peak intervals reduced to keep * x_t; the energy removed is spread evenly over the
    off-peak intervals, so the day's total is unchanged (defeats time-of-use tariffs)."""
    peak = np.broadcast_to(peak, x.shape)
    removed = np.where(peak, x * (1.0 - np.asarray(keep)), 0.0).sum(axis=0)
    n_off = np.maximum((~peak).sum(axis=0), 1)
    return np.where(peak, x * keep, x + removed / n_off)


def swap(x: np.ndarray, donor: np.ndarray) -> np.ndarray:
    """The readings of another (lower-consuming) customer instead of one's own."""
    return np.array(np.broadcast_to(donor, x.shape), dtype=np.float64)


def on_off(x: np.ndarray, on: np.ndarray) -> np.ndarray:
    """x_t where on_t else 0: reporting switched off and on at random."""
    return np.where(on, x, 0.0)


def scale_where(x: np.ndarray, mask: np.ndarray, keep: np.ndarray | float) -> np.ndarray:
    """keep * x_t inside ``mask``: a bypass, a magnet on the meter, an opened cover."""
    return np.where(mask, x * keep, x)


def stuck(x: np.ndarray, value: np.ndarray | float) -> np.ndarray:
    """A flat line at ``value`` (a frozen meter repeating one reading)."""
    return np.array(np.broadcast_to(value, x.shape), dtype=np.float64)


def spike(x: np.ndarray, mask: np.ndarray, factor: np.ndarray | float) -> np.ndarray:
    """factor * x_t inside ``mask``: a measurement or transmission spike."""
    return np.where(mask, x * factor, x)
