"""Wasserstein-1 and KS between 1-D samples, on inputs whose answers are known in closed form."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medfusion_jax.metrics.distribution import compare_samples


def test_a_shift_moves_wasserstein_by_the_shift_and_keeps_it_at_zero_for_itself():
    x = np.random.default_rng(0).uniform(0.36, 0.45, 200)
    assert compare_samples(x, x).wasserstein1 == pytest.approx(0.0, abs=1e-15)
    assert compare_samples(x, x).ks_statistic == 0.0
    assert compare_samples(x, x + 0.02).wasserstein1 == pytest.approx(0.02, rel=1e-12)


def test_hand_computed_values():
    # Empirical CDFs F of {0, 1} and G of {0.5, 2}; W1 is the integral of |F - G|, piecewise:
    # [0, .5): F=.5, G=0 -> .25; [.5, 1): F=.5, G=.5 -> 0; [1, 2): F=1, G=.5 -> .5. Total 0.75.
    # KS: the largest gap |F - G| is 0.5.
    result = compare_samples([0.0, 1.0], [0.5, 2.0])
    assert result.wasserstein1 == pytest.approx(0.75)
    assert result.ks_statistic == pytest.approx(0.5)


def test_disjoint_samples_have_ks_one_and_a_small_p_value():
    result = compare_samples(np.linspace(0.36, 0.45, 100), np.linspace(0.55, 0.66, 100))
    assert result.ks_statistic == 1.0
    assert result.ks_pvalue < 1e-20
    # Disjoint: W1 is the difference of the means.
    assert result.wasserstein1 == pytest.approx(0.605 - 0.405, rel=1e-12)


def test_non_finite_values_are_left_out_and_counted():
    result = compare_samples([0.1, np.nan, 0.2, np.inf], [0.1, 0.2])
    assert (result.n_a, result.dropped_a, result.n_b, result.dropped_b) == (2, 2, 2, 0)
    assert result.wasserstein1 == 0.0
    empty = compare_samples([np.nan], [0.1])
    assert math.isnan(empty.wasserstein1) and empty.n_a == 0
