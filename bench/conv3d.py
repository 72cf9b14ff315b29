"""The 3-D training steps on a CPU with XLA's 3-D convolution against the 2-D depth-tap form (same run).

    python bench/conv3d.py                     # phantom-brain presets: 32^3 volumes, batch 4 / 16
    python bench/conv3d.py --repeats 20

Why: XLA:CPU's 3-D convolution is several times slower than its 2-D one, and its backward through a
stride-2 convolution far more so; :func:`medfusion_jax.layers.conv` computes a 3-D convolution on a CPU
as one 2-D convolution over the depth taps stacked in the channels (``MEDFUSION_JAX_CONV3D``, module
docstring of :mod:`medfusion_jax.layers`). Both sides are the same jitted training step of
``training.state.compiled_step`` (state donated), built from the ``phantom-brain`` presets: the
autoencoder step (L1 + SSIM 3-D + KL, Adam) and the diffusion step on cached latents (UNet, AdamW).
The two forms are timed alternately, ``--rounds`` times each, and the median ms per step is reported
with the ratio native / depth-taps (above 1: the depth-tap form is faster).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from medfusion_jax import xla_cpu  # noqa: E402

xla_cpu.apply_cpu_defaults()
import jax  # noqa: E402
import numpy as np  # noqa: E402

from medfusion_jax import layers  # noqa: E402
from medfusion_jax.config import (  # noqa: E402
    AutoencoderConfig,
    DataConfig,
    DiffusionConfig,
    RunConfig,
    UNetConfig,
    VAEConfig,
)
from medfusion_jax.mesh import global_batch, make_mesh, replicated, state_shardings  # noqa: E402
from medfusion_jax.models import VAE  # noqa: E402
from medfusion_jax.run_folder import build, split_params  # noqa: E402
from medfusion_jax.training import autoencoder_task, diffusion_task  # noqa: E402
from medfusion_jax.training.presets import preset  # noqa: E402
from medfusion_jax.training.state import compiled_step  # noqa: E402
from train import time_steps  # noqa: E402  (bench/train.py)

DATASET = "phantom-brain"


def _vae_config() -> VAEConfig:
    p = preset("autoencoder", DATASET)
    return VAEConfig(emb_channels=p["emb_channels"], hid_chs=p["hid_chs"], deep_supervision=p["deep_supervision"],
                     in_channels=1, out_channels=1, spatial_dims=3, kernel_sizes=(3,) * len(p["hid_chs"]),
                     strides=(1,) + (2,) * (len(p["hid_chs"]) - 1))


def setup(stage: str):
    """(step, static kwargs, spec, state, constants, batch) of the stage's phantom-brain step."""
    rng = np.random.default_rng(0)
    p = preset(stage, DATASET)
    size = preset("autoencoder", DATASET)["image_size"]
    run = RunConfig("unused", batch_size=p["batch_size"], steps=1)
    data = DataConfig(DATASET, image_size=size)
    labels = (np.arange(p["batch_size"]) % 2).astype(np.int32)
    vae_config = _vae_config()
    if stage == "autoencoder":
        config = AutoencoderConfig(data=data, run=run, model=vae_config, perceptual_weight=0.0)
        spec, state, constants = autoencoder_task.init_autoencoder(config)
        fn, static = autoencoder_task.train_step_for(spec, 0)
        images = rng.uniform(-1, 1, (p["batch_size"], size, size, size, 1)).astype(np.float32)
        return fn, static, spec, state, constants, {"image": images, "label": labels}
    levels = len(p["hid_chs"])
    unet = UNetConfig(hid_chs=p["hid_chs"], time_emb_dim=p["time_emb_dim"], num_res_blocks=p["num_res_blocks"],
                      spatial_dims=3, kernel_sizes=(3,) * levels, strides=(1,) + (2,) * (levels - 1))
    config = DiffusionConfig(data=data, run=run, autoencoder="unused", model=unet, cache_latents=True)
    vae_graph, vae_params = split_params(build(VAE, vars(vae_config)))
    spec, state, constants, _ = diffusion_task.init_diffusion(
        config, vae_graph=vae_graph, vae_params=vae_params, latent_channels=vae_config.emb_channels, num_classes=2)
    latent = size // 2 ** (len(vae_config.hid_chs) - 1)
    shape = (p["batch_size"], latent, latent, latent, vae_config.emb_channels)
    batch = {"mean": rng.normal(size=shape).astype(np.float32), "logvar": np.full(shape, -2.0, np.float32),
             "label": labels}
    return diffusion_task.diffusion_train_step, {}, spec, state, constants, batch


def stepper(stage: str, form: str):
    """A function running one step of ``stage`` with 3-D convolutions in ``form``, compiled ahead of
    time (``layers.CONV3D`` is read when the step is traced; the trace cache is cleared so that the
    second form is traced anew and not taken from the first)."""
    layers.CONV3D = form
    jax.clear_caches()
    fn, static, spec, state, constants, batch = setup(stage)
    mesh = make_mesh(jax.devices()[:1])
    shardings = state_shardings(state, mesh)
    holder = [jax.device_put(state, shardings)]
    constants, batch = jax.device_put(constants, replicated(mesh)), global_batch(batch, mesh)
    compiled = compiled_step(fn, static, spec, shardings, mesh).lower(holder[0], constants, batch).compile()

    def one_step():
        holder[0], metrics = compiled(holder[0], constants, batch)
        return metrics["loss"]

    jax.block_until_ready(one_step())
    return one_step


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=5, help="steps per timing")
    p.add_argument("--rounds", type=int, default=3, help="alternating timings of each form")
    args = p.parse_args(argv)
    if jax.default_backend() != "cpu":
        print(f"note: the backend is {jax.default_backend()}; the depth-tap form is meant for CPUs", file=sys.stderr)
    for stage in ("autoencoder", "diffusion"):
        steps = {form: stepper(stage, form) for form in ("native", "depth-taps")}
        times: dict[str, list[float]] = {form: [] for form in steps}
        for _ in range(args.rounds):
            for form, one_step in steps.items():
                times[form].append(time_steps(one_step, args.repeats, warmup=1))
        ms = {form: 1e3 * statistics.median(t) for form, t in times.items()}
        print(json.dumps({"stage": stage, "dataset": DATASET, "batch": preset(stage, DATASET)["batch_size"],
                          "native_ms": round(ms["native"], 1), "depth_taps_ms": round(ms["depth-taps"], 1),
                          "ratio_native_over_depth_taps": round(ms["native"] / ms["depth-taps"], 2)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
