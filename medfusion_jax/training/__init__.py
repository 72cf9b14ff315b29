"""Training Medfusion's two stages, from one CPU to many GPUs or TPU hosts.

Command lines: ``python -m train.autoencoder`` and ``python -m train.diffusion``, thin flag parsers
(:mod:`~.cli`, :mod:`~.presets`) over :func:`~medfusion_jax.training.stages.run_autoencoder` and
:func:`~medfusion_jax.training.stages.run_diffusion`. Later commands load a trained run with
:func:`medfusion_jax.run_folder.load_trained`.

Modules:

* :mod:`medfusion_jax.config` (below): the configuration dataclasses and their validation;
  :mod:`medfusion_jax.run_folder` (below): ``config.json``, ``model.json``, building the networks and
  their pure-pytree form, ``load_trained``;
* :mod:`~.presets`: per-dataset values (the paper's settings, CPU-sized phantoms);
* :mod:`~.autoencoder_task`, :mod:`~.diffusion_task`: train states and pure step functions;
* :mod:`~.state`: the step counter and key of a train state, and the jitted, donating step;
* :mod:`medfusion_jax.mesh` (below training and evaluation): devices, sharding, multi-host start;
* :mod:`~.loop`: the one training loop; :mod:`~.stages`: both stages assembled with their data;
* :mod:`~.checkpointing`: Orbax checkpoints of the train state incl. the Grain iterator state;
* :mod:`~.latent_cache`: ``--cache-latents``;
* :mod:`~.logging`: JSON lines, TensorBoard event files (tensorboardX), the loss curve.
"""
