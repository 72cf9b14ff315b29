"""Evaluation: the metrics of :mod:`medfusion_jax.metrics` applied to image sets, with typed results.

:mod:`medfusion_jax.metrics` holds the mathematics on arrays (features in, numbers out); this package
does the pairing, the per-class splitting and the bookkeeping that a report needs:

- :mod:`.image_scores`: FID, KID and precision/recall of one set against the real set, per class too;
- :mod:`.measurements`: the phantoms' measured feature per image, conditioning accuracy and the
  within-class distribution distances (Wasserstein-1, Kolmogorov–Smirnov).
"""
