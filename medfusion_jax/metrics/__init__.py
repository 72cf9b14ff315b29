"""The paper's evaluation metrics as mathematics on arrays, with TorchMetrics' numbers.

Features or images in, numbers out; nothing here loads a file, a data set or a network's weights (the
networks and their weights are :mod:`medfusion_jax.pretrained`, the loading and looping
:mod:`medfusion_jax.evaluation`), as MONAI's metrics take features:

- :mod:`.fid`, :mod:`.kid`, :mod:`.precision_recall`, :mod:`.inception_score`: distribution metrics on
  Inception features;
- :mod:`.msssim`: MS-SSIM and MSE of the autoencoder's reconstructions;
- :mod:`.memorization`: near-copies of training images among generated ones;
- :mod:`.distribution`: Wasserstein-1 and Kolmogorov–Smirnov between two samples of a measurement.
"""

from medfusion_jax.metrics.fid import FeatureStats, fid_from_features, fid_from_stats, frechet_distance
from medfusion_jax.metrics.inception_score import inception_score
from medfusion_jax.metrics.msssim import mean_std, ms_ssim, mse_per_image, ssim
from medfusion_jax.metrics.precision_recall import PrecisionRecall, knn_radii, precision_recall

__all__ = [
    "FeatureStats",
    "PrecisionRecall",
    "fid_from_features",
    "fid_from_stats",
    "frechet_distance",
    "inception_score",
    "knn_radii",
    "mean_std",
    "ms_ssim",
    "mse_per_image",
    "precision_recall",
    "ssim",
]
