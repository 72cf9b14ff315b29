"""Inception Score as torch-fidelity computes it (``isc_features_to_metric``), from Inception logits.

It needs the 1008-way classifier, which ``default_1.pt`` lacks: load torch-fidelity's or pytorch-fid's
``.pth`` (:func:`~medfusion_jax.pretrained.inception_weights.load_inception`) and feed the
``'logits_unbiased'`` output (torch-fidelity's default for the score).
"""

from __future__ import annotations

import numpy as np
from scipy.special import log_softmax


def inception_score(
    logits: np.ndarray, splits: int = 10, *, shuffle: bool = True, seed: int = 2020
) -> tuple[float, float]:
    """Mean and (population) standard deviation over ``splits`` of exp(E_x KL(p(y|x) || p(y))).

    Rows are first permuted with ``numpy.random.RandomState(seed).permutation``, as torch-fidelity
    does, so the splits (and the result) equal its own; computed in float64.
    """
    logits = np.asarray(logits, np.float64)
    if logits.ndim != 2 or logits.shape[0] < splits:
        raise ValueError(f"expected logits [N, classes] with N >= splits = {splits}, got shape {logits.shape}")
    n = logits.shape[0]
    if shuffle:
        logits = logits[np.random.RandomState(seed).permutation(n)]
    log_p = log_softmax(logits, axis=1)
    p = np.exp(log_p)
    scores = []
    for i in range(splits):
        part = slice(i * n // splits, (i + 1) * n // splits)
        q = p[part].mean(axis=0, keepdims=True)
        kl = (p[part] * (log_p[part] - np.log(q))).sum(axis=1)
        scores.append(float(np.exp(kl.mean())))
    return float(np.mean(scores)), float(np.std(scores))
