"""Each attack / fault function exactly as defined, on hand-made input."""

from __future__ import annotations

import numpy as np
import pytest

from simulator import attacks

# One meter-day of 8 intervals, and two meters side by side.
X = np.array([1.0, 2.0, 4.0, 8.0, 8.0, 4.0, 2.0, 1.0])
X2 = np.stack([X, np.arange(1.0, 9.0)], axis=1)  # (8, 2)


def test_h1_scales_every_interval_by_alpha() -> None:
    assert np.array_equal(attacks.h1(X, 0.5), X * 0.5)
    out = attacks.h1(X2, np.array([0.1, 0.8]))
    assert np.allclose(out[:, 0], X * 0.1) and np.allclose(out[:, 1], X2[:, 1] * 0.8)


def test_h2_zeroes_only_inside_the_window() -> None:
    out = attacks.h2(X, 2, 3)  # intervals 2, 3, 4 -> 0
    assert out.tolist() == [1.0, 2.0, 0.0, 0.0, 0.0, 4.0, 2.0, 1.0]
    out2 = attacks.h2(X2, np.array([0, 6]), np.array([1, 2]))
    assert out2[:, 0].tolist() == [0.0, *X[1:].tolist()]
    assert out2[:, 1].tolist() == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 0.0, 0.0]


def test_h3_multiplies_per_interval_factor() -> None:
    gamma = np.linspace(0.1, 0.8, 8)
    assert np.allclose(attacks.h3(X, gamma), gamma * X)


def test_h4_is_gamma_times_the_mean() -> None:
    gamma = np.linspace(0.1, 0.8, 8)
    assert np.allclose(attacks.h4(X, gamma), gamma * 3.75)  # mean(X) = 30 / 8
    out = attacks.h4(X2, np.full((8, 2), 0.5))
    assert np.allclose(out[:, 1], 0.5 * 4.5)


def test_h5_is_the_mean_everywhere_and_keeps_the_total() -> None:
    out = attacks.h5(X2)
    assert np.allclose(out[:, 0], 3.75) and np.allclose(out[:, 1], 4.5)
    assert np.allclose(out.sum(axis=0), X2.sum(axis=0))


def test_h6_reverses_the_day() -> None:
    day = np.arange(8.0)
    assert attacks.h6(day).tolist() == [7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0, 0.0]
    assert np.array_equal(attacks.h6(X2)[:, 1], X2[::-1, 1])


def test_zero_report() -> None:
    assert not attacks.zero_report(X2).any()
    assert attacks.zero_report(X2).shape == X2.shape


def test_cap_clips_at_a_fraction_of_the_days_maximum() -> None:
    out = attacks.cap(X, 0.5)  # max 8 -> cap 4
    assert out.tolist() == [1.0, 2.0, 4.0, 4.0, 4.0, 4.0, 2.0, 1.0]


def test_subtract_is_floored_at_zero() -> None:
    assert attacks.subtract(X, 3.0).tolist() == [0.0, 0.0, 1.0, 5.0, 5.0, 1.0, 0.0, 0.0]


def test_ramp_reduction_grows_linearly_then_holds() -> None:
    t = np.arange(10)
    r = attacks.ramp_reduction(t, 2, 4, 0.8)
    assert np.allclose(r, [0, 0, 0, 0.2, 0.4, 0.6, 0.8, 0.8, 0.8, 0.8])
    assert np.allclose(attacks.ramp(np.ones(10), r), 1 - r)


def test_peak_shift_moves_peak_energy_to_off_peak_keeping_the_total() -> None:
    peak = np.array([False, False, False, True, True, False, False, False])
    out = attacks.peak_shift(X, peak, 0.25)
    assert out[3] == 2.0 and out[4] == 2.0  # 8 * 0.25
    moved = 2 * 8.0 * 0.75 / 6  # 12 kWh spread over 6 off-peak intervals
    assert np.allclose(out[~peak], X[~peak] + moved)
    assert np.isclose(out.sum(), X.sum())


def test_swap_reports_the_donor() -> None:
    donor = np.full(8, 0.3)
    assert np.array_equal(attacks.swap(X, donor), donor)


def test_on_off() -> None:
    on = np.array([1, 0, 1, 0, 1, 0, 1, 0], bool)
    assert attacks.on_off(X, on).tolist() == [1.0, 0.0, 4.0, 0.0, 8.0, 0.0, 2.0, 0.0]


def test_scale_where_stuck_and_spike() -> None:
    mask = np.zeros(8, bool)
    mask[2:4] = True
    assert attacks.scale_where(X, mask, 0.5).tolist() == [1, 2, 2, 4, 8, 4, 2, 1]
    assert attacks.stuck(X, 0.7).tolist() == [0.7] * 8
    assert attacks.spike(X, mask, 10.0).tolist() == [1, 2, 40, 80, 8, 4, 2, 1]


@pytest.mark.parametrize("name", ["h1", "h3", "h4", "h5", "h6", "cap", "subtract"])
def test_functions_do_not_modify_their_input(name: str) -> None:
    x = X2.copy()
    fn = getattr(attacks, name)
    arg = {
        "h1": (0.5,),
        "h3": (np.full((8, 2), 0.5),),
        "h4": (np.full((8, 2), 0.5),),
        "cap": (0.5,),
        "subtract": (1.0,),
    }.get(name, ())
    fn(x, *arg)
    assert np.array_equal(x, X2)
