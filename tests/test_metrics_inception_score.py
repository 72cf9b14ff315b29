"""Inception Score (torch-fidelity's definition) on hand-checked logits."""

from __future__ import annotations

import numpy as np
import pytest

from medfusion_jax.metrics.inception_score import inception_score


def test_uniform_predictions_score_one():
    mean, std = inception_score(np.zeros((40, 1008)), splits=4)
    assert mean == pytest.approx(1.0) and std == pytest.approx(0.0, abs=1e-12)


def test_confident_distinct_classes_score_their_count():
    # Each split sees 5 classes equally often, each predicted with certainty: IS = 5 per split.
    logits = np.full((50, 20), -40.0)
    logits[np.arange(50), np.arange(50) % 5] = 0.0
    mean, std = inception_score(logits, splits=10, shuffle=False)
    assert mean == pytest.approx(5.0) and std == pytest.approx(0.0, abs=1e-9)


def test_shuffle_is_numpy_randomstate_2020():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(30, 7)) * 3
    permuted = logits[np.random.RandomState(2020).permutation(30)]
    assert inception_score(logits, splits=3) == inception_score(permuted, splits=3, shuffle=False)
    with pytest.raises(ValueError, match="N >= splits"):
        inception_score(logits[:2], splits=3)
