"""Peak memory of the 3-D training steps, from XLA's memory analysis of the compiled step (no GPU needed).

    python bench/memory3d.py                       # the table of the README (about 15 minutes on 2 CPU cores)
    python bench/memory3d.py --quick               # 128^3, batch 1 only

For the paper's networks built for volumes (``spatial_dims=3``: autoencoder hid 64-128-256-512, 8 latent
channels, one deep-supervision head, 1-channel volumes; UNet hid 256-256-512-1024, time embedding 1024,
two classes, on the 8x-compressed latents), each step is compiled exactly as training compiles it
(``training.state.compiled_step``: state donated, Adam/AdamW, the stage's full loss; the autoencoder
without the 2-D LPIPS term, which volumes do not have; the diffusion step from cached latent moments)
for the volume sizes 128^3 and 160x224x160 at batch 1 and 2, with and without ``--remat``. Nothing is
allocated: the train state is abstract (``jax.eval_shape``), so the 545M-parameter 3-D UNet costs
nothing but compile time.

Memory = arguments + outputs - donated aliases + temporaries of the compiled program (the same
statistic as ``bench/train.py``), in float32, in GiB (a "24 GB" or "80 GB" GPU has 24 or 80 GiB).
Beside it, ``residuals_gib``: what JAX's automatic differentiation keeps from the forward pass for the
backward pass (``saved_residuals`` of the network with an L1 loss: the VAE's forward for the
autoencoder, the UNet's for the diffusion step), the activation memory that ``--remat`` removes.
XLA:CPU's own analysis does not show that saving: its compiled program holds the forward activations
although JAX marks them for recomputation (measured on four 64^3 x 16-channel residual blocks: the
temporaries grow by the same 96 MiB per block with and without remat, while the residuals JAX keeps
fall from 272 MiB to 80 MiB; the compiled program has only some of the recomputed convolutions).

Then, per network, the largest cubic volume (side a multiple of 32) whose batch-1 step fits 24 and 80
GiB, from XLA's figures without remat (what remat saves is the residual column): the memory is affine
in the number of voxels, the side is predicted from the line through the two sizes, then compiled and
measured (stepping down by 32 while it does not fit), and the next side up is measured to show it does
not.

The figures are XLA:CPU's buffer assignment. A GPU compilation fuses and schedules differently and adds
convolution workspace; treat them as the size of what the step must hold, not a GPU reading.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from medfusion_jax import xla_cpu  # noqa: E402

xla_cpu.apply_cpu_defaults()
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from medfusion_jax import layers  # noqa: E402

# XLA's own 3-D convolution, as on a GPU (the CPU's 2-D depth-tap form, layers.CONV3D, holds other buffers).
layers.CONV3D = "native"
from medfusion_jax.config import (  # noqa: E402
    AutoencoderConfig,
    DataConfig,
    DiffusionConfig,
    RunConfig,
    UNetConfig,
    VAEConfig,
)
from medfusion_jax.mesh import make_mesh, state_shardings  # noqa: E402
from medfusion_jax.models import VAE  # noqa: E402
from medfusion_jax.run_folder import build, split_params  # noqa: E402
from medfusion_jax.training import autoencoder_task, diffusion_task  # noqa: E402
from medfusion_jax.training.state import compiled_step  # noqa: E402

GIB = 2**30
LEVELS = dict(kernel_sizes=(3, 3, 3, 3), strides=(1, 2, 2, 2))
PAPER_VAE = VAEConfig(emb_channels=8, hid_chs=(64, 128, 256, 512), deep_supervision=1, in_channels=1,
                      out_channels=1, spatial_dims=3, **LEVELS)
PAPER_UNET = UNetConfig(hid_chs=(256, 256, 512, 1024), time_emb_dim=1024, spatial_dims=3, **LEVELS)
SIZES = [(128, 128, 128), (160, 224, 160)]


def _abstract(init, *args):
    """(spec, abstract state, abstract constants) of ``init(*args)`` without allocating anything."""
    holder = {}

    def shapes(*args):
        spec, state, constants = init(*args)
        holder["spec"] = spec
        return state, constants

    state, constants = jax.eval_shape(shapes, *args)
    return holder["spec"], state, constants


def autoencoder_step(batch: int, size: tuple[int, ...], remat: bool):
    run = RunConfig("unused", batch_size=batch, steps=1, remat=remat)
    config = AutoencoderConfig(data=DataConfig("phantom-brain", image_size=size[0]), run=run, model=PAPER_VAE,
                               perceptual_weight=0.0)
    spec, state, constants = _abstract(lambda: autoencoder_task.init_autoencoder(config))
    fn, static = autoencoder_task.train_step_for(spec, 0)
    inputs = {"image": jax.ShapeDtypeStruct((batch, *size, 1), jnp.float32),
              "label": jax.ShapeDtypeStruct((batch,), jnp.int32)}
    return fn, static, spec, state, constants, inputs


def diffusion_step(batch: int, size: tuple[int, ...], remat: bool):
    run = RunConfig("unused", batch_size=batch, steps=1, remat=remat)
    config = DiffusionConfig(data=DataConfig("phantom-brain", image_size=size[0]), run=run, autoencoder="unused",
                             model=PAPER_UNET, cache_latents=True)
    vae_graph, vae_params = split_params(nnx.eval_shape(lambda: build(VAE, vars(PAPER_VAE))))

    def init(vae_params):
        spec, state, constants, _ = diffusion_task.init_diffusion(
            config, vae_graph=vae_graph, vae_params=vae_params, latent_channels=PAPER_VAE.emb_channels,
            num_classes=2)
        return spec, state, constants

    spec, state, constants = _abstract(init, vae_params)
    latent = tuple(n // 8 for n in size)
    moments = jax.ShapeDtypeStruct((batch, *latent, PAPER_VAE.emb_channels), jnp.float32)
    inputs = {"mean": moments, "logvar": moments, "label": jax.ShapeDtypeStruct((batch,), jnp.int32)}
    return diffusion_task.diffusion_train_step, {}, spec, state, constants, inputs


STEPS = {"autoencoder": autoencoder_step, "unet": diffusion_step}


def network_residual_bytes(network: str, spec, state, inputs) -> int:
    """Bytes of the forward values JAX saves for the backward pass of the network under an L1 loss."""
    from jax._src.ad_checkpoint import saved_residuals

    if network == "autoencoder":
        graph, params, x = spec.vae_graph, state["params"]["vae"], inputs["image"]

        def loss(params, x):
            out, heads, kl = nnx.merge(graph, params)(x, key=jax.random.key(0))
            return jnp.mean(jnp.abs(out - x)) + kl
    else:
        graph, params, x = spec.unet_graph, state["params"]["unet"], inputs["mean"]
        t, labels = jnp.zeros((x.shape[0],), jnp.int32), jnp.zeros((x.shape[0],), jnp.int32)

        def loss(params, x):
            return jnp.mean(jnp.abs(nnx.merge(graph, params)(x, t, labels) - x))
    residuals = saved_residuals(loss, params, x)
    return sum(math.prod(a.shape) * a.dtype.itemsize for a, _ in residuals)


def measure(network: str, batch: int, size: tuple[int, ...], remat: bool) -> dict:
    start = time.perf_counter()
    fn, static, spec, state, constants, inputs = STEPS[network](batch, size, remat)
    mesh = make_mesh(jax.devices()[:1])
    jitted = compiled_step(fn, static, spec, state_shardings(state, mesh), mesh)
    compiled = jitted.lower(state, constants, inputs).compile()
    m = compiled.memory_analysis()
    total = m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes + m.temp_size_in_bytes
    params = sum(math.prod(x.shape) for x in jax.tree.leaves(state["params"]))
    return dict(network=network, volume="x".join(map(str, size)), batch=batch, remat=remat,
                parameters=int(params), memory_gib=round(total / GIB, 2), temporaries_gib=round(m.temp_size_in_bytes
                                                                                                 / GIB, 2),
                state_gib=round((m.argument_size_in_bytes - sum(np.prod(x.shape) * 4 for x in
                                                                jax.tree.leaves(inputs))) / GIB, 2),
                residuals_gib=round(network_residual_bytes(network, spec, state, inputs) / GIB, 2),
                compile_s=round(time.perf_counter() - start, 1))


def largest_cube(network: str, remat: bool, records: list[dict], budget_gib: float) -> dict:
    """The largest cube (side a multiple of 32) predicted by the affine fit of batch-1 memory in voxels,
    compiled and measured; stepped down by 32 while the measurement exceeds the budget."""
    points = [(math.prod(int(v) for v in r["volume"].split("x")), r["memory_gib"]) for r in records
              if r["network"] == network and r["remat"] == remat and r["batch"] == 1]
    (v0, m0), (v1, m1) = points[:2]
    slope = (m1 - m0) / (v1 - v0)
    side = int(((budget_gib - (m0 - slope * v0)) / slope) ** (1 / 3) // 32 * 32)
    while side >= 32:
        record = measure(network, 1, (side,) * 3, remat)
        if record["memory_gib"] <= budget_gib:
            # The next size up is compiled too, to show it does not fit.
            above = measure(network, 1, (side + 32,) * 3, remat)
            return dict(record, budget_gib=budget_gib, next_side=side + 32, next_memory_gib=above["memory_gib"])
        side -= 32
    return dict(network=network, remat=remat, budget_gib=budget_gib, volume=None)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="128^3 at batch 1 only")
    p.add_argument("--networks", nargs="+", default=list(STEPS), choices=list(STEPS))
    p.add_argument("--out", type=Path, help="also write the records as JSON lines here")
    args = p.parse_args(argv)
    sizes, batches = (SIZES[:1], (1,)) if args.quick else (SIZES, (1, 2))
    records = []
    for network in args.networks:
        for size in sizes:
            for batch in batches:
                for remat in (False, True):
                    records.append(measure(network, batch, size, remat))
                    print(json.dumps(records[-1]), flush=True)
    if not args.quick:
        for network in args.networks:
            for budget in (24.0, 80.0):
                records.append(largest_cube(network, False, records, budget))
                print(json.dumps(records[-1]), flush=True)
    if args.out:
        args.out.write_text("".join(json.dumps(r) + "\n" for r in records))
    print(f"\n{'network':<12}{'volume':<14}{'batch':>6}{'remat':>7}{'step GiB':>10}{'residuals GiB':>15}")
    for r in records:
        if r.get("volume"):
            print(f"{r['network']:<12}{r['volume']:<14}{r['batch']:>6}{str(r['remat']):>7}{r['memory_gib']:>10.2f}"
                  f"{r['residuals_gib']:>15.2f}"
                  + (f"   largest cube within {r['budget_gib']:.0f} GiB ({r['next_side']}^3: "
                     f"{r['next_memory_gib']:.2f})" if "budget_gib" in r else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
