"""Evaluation: the metrics of :mod:`medfusion_jax.metrics` applied to image sets, with typed results.

:mod:`medfusion_jax.metrics` holds the mathematics on arrays (features in, numbers out); this package
does the loading, the looping over batches, the pairing, the per-class splitting and the bookkeeping
that a report needs:

- :mod:`.features`: batched Inception features of images; :mod:`.feature_sets`: the features of an
  image folder, a data set split or a saved ``.npz``; :mod:`.dataset_images`: a split as uint8 images;
- :mod:`.image_scores`: FID, KID and precision/recall of one set against the real set, per class too;
- :mod:`.reconstruction`: the autoencoder's MS-SSIM/MSE/LPIPS over a set of images;
- :mod:`.conditioning`, :mod:`.measurements`: the phantoms' measured feature per image, conditioning
  accuracy and the within-class distribution distances (Wasserstein-1, Kolmogorov–Smirnov);
- :mod:`.sample_folder`: generated image sets on disk, resumable image by image.
"""
