"""Make ``tests/data/metrics/kid_reference.npz``: TorchMetrics' Kernel Inception Distance on fixed features.

Run by hand, never by the test suite. Needs a Python with torch and torchmetrics (neither is a
medfusion-jax dependency); the CPU torch file on disk is enough::

    python3 -m venv /tmp/tvenv
    /tmp/tvenv/bin/pip install torch==2.13.0 torchmetrics numpy
    /tmp/tvenv/bin/python tools/make_kid_reference.py

What it stores:

- ``real`` [90, 64] and ``fake`` [70, 64] float64 features (two Gaussian sets that differ in scale
  and mean, so the KID is clearly positive), and ``same`` [70, 64]: a second draw of the real
  distribution (KID near 0, either sign);
- for each pair, TorchMetrics' ``KernelInceptionDistance(feature=<identity>, subsets=12,
  subset_size=40)`` mean and std, computed on the float64 features (the metric keeps the features'
  dtype; float64 makes the reference exact to rounding), with ``torch.manual_seed(seed)``;
- the subsets TorchMetrics drew: ``torch.randperm`` is called in the same order as its ``compute``
  (real permutation, then fake permutation, per subset) after the same seed, so a test can feed the
  identical subsets to an independent implementation;
- the unbiased MMD of TorchMetrics' ``poly_mmd`` on the first 70 real rows and all 70 of the other set
  (it needs equal sizes) for a second check, and
  the float32 KID of the first pair (what TorchMetrics gives on float32 Inception features).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torchmetrics
from torchmetrics.image.kid import KernelInceptionDistance, poly_mmd

OUT = Path(__file__).resolve().parents[1] / "tests" / "data" / "metrics" / "kid_reference.npz"
SUBSETS, SUBSET_SIZE = 12, 40


class Identity(torch.nn.Module):
    """A "feature extractor" that returns its input, so the metric sees our features."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def kid(real: np.ndarray, fake: np.ndarray, seed: int) -> tuple[float, float, np.ndarray, np.ndarray]:
    metric = KernelInceptionDistance(feature=Identity(), subsets=SUBSETS, subset_size=SUBSET_SIZE)
    metric.update(torch.from_numpy(real), real=True)
    metric.update(torch.from_numpy(fake), real=False)
    torch.manual_seed(seed)
    mean, std = metric.compute()
    # The same draws, in the same order as KernelInceptionDistance.compute makes them.
    torch.manual_seed(seed)
    real_idx, fake_idx = [], []
    for _ in range(SUBSETS):
        real_idx.append(torch.randperm(len(real))[:SUBSET_SIZE].numpy())
        fake_idx.append(torch.randperm(len(fake))[:SUBSET_SIZE].numpy())
    return float(mean), float(std), np.stack(real_idx), np.stack(fake_idx)


def main() -> None:
    rng = np.random.default_rng(11)
    dim = 64
    basis = rng.normal(size=(dim, dim)) / np.sqrt(dim)
    real = rng.normal(size=(90, dim)) @ basis + 0.5
    fake = rng.normal(size=(70, dim)) @ (basis * 1.2) + 0.65
    same = rng.normal(size=(70, dim)) @ basis + 0.5
    out = {"real": real, "fake": fake, "same": same, "subsets": np.int64(SUBSETS),
           "subset_size": np.int64(SUBSET_SIZE)}
    for name, other, seed in (("fake", fake, 0), ("same", same, 1)):
        mean, std, real_idx, fake_idx = kid(real, other, seed)
        out |= {f"kid_mean_{name}": np.float64(mean), f"kid_std_{name}": np.float64(std),
                f"real_idx_{name}": real_idx, f"fake_idx_{name}": fake_idx,
                f"mmd_full_{name}": np.float64(poly_mmd(torch.from_numpy(real[: len(other)]), torch.from_numpy(other)))}
        print(f"{name}: KID {mean:.10g} ± {std:.10g}; full-set MMD {float(out[f'mmd_full_{name}']):.10g}")
    mean32, std32, _, _ = kid(real.astype(np.float32), fake.astype(np.float32), 0)
    out |= {"kid_mean_fake_float32": np.float64(mean32), "kid_std_fake_float32": np.float64(std32)}
    out["versions"] = np.array(f"torch {torch.__version__}, torchmetrics {torchmetrics.__version__}")
    np.savez_compressed(OUT, **out)
    print(f"wrote {OUT} (float32 KID {mean32:.10g} ± {std32:.10g})")


if __name__ == "__main__":
    main()
