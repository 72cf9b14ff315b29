"""Training Medfusion's two stages, from one CPU to many GPUs or TPU hosts.

Command lines: ``python -m train.autoencoder`` and ``python -m train.diffusion``, thin flag parsers
(:mod:`~.cli`, :mod:`~.presets`) over :func:`~medfusion_jax.training.stages.run_autoencoder` and
:func:`~medfusion_jax.training.stages.run_diffusion`. Later commands load a trained run with
:func:`medfusion_jax.training.checkpointing.load_trained`.

Modules:

* :mod:`~.config`: the configuration dataclasses, ``config.json``, the resume check;
* :mod:`~.presets`: per-dataset values (the paper's settings, CPU-sized phantoms);
* :mod:`~.modules`: building the networks and their pure-pytree form;
* :mod:`~.autoencoder_task`, :mod:`~.diffusion_task`: train states and pure step functions;
* :mod:`~.state`: the step counter and key of a train state, and the jitted, donating step;
* :mod:`medfusion_jax.mesh` (below training and evaluation): devices, sharding, multi-host start;
* :mod:`~.loop`: the one training loop; :mod:`~.stages`: both stages assembled with their data;
* :mod:`~.checkpointing`: Orbax checkpoints incl. the Grain iterator state, ``load_trained``;
* :mod:`~.latent_cache`: ``--cache-latents``;
* :mod:`~.logging`: JSON lines, TensorBoard event files, PNG grids, the loss curve.
"""
