"""Throughput of Medfusion's networks: forward, train step (forward + backward + optimizer), DDIM batch.

    python bench/models.py                      # small CPU configurations
    python bench/models.py --configs paper      # the paper's networks (meant for a GPU)
    python bench/models.py --dtype bfloat16     # bf16 compute, float32 parameters

Prints one JSON object per measurement and a summary with ratios: against the plain float32 run in the
same process when --dtype is not float32, and against the PyTorch original's times recorded in the
foundation issue (measured with 2 threads on this 2-core machine kind) where they exist.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from medfusion_jax.diffusion.sampler import sample_latents
from medfusion_jax.diffusion.schedule import make_schedule, q_sample
from medfusion_jax.losses.autoencoder import vae_loss
from medfusion_jax.models import VAE, UNet

# PyTorch original, 2 threads on this machine kind (foundation issue): ms per call.
PYTORCH_MS = {("small-unet", "forward"): 54.0, ("small-unet", "train_step"): 226.0,
              ("paper-unet", "train_step"): 7600.0}

CONFIGS = {
    "small-unet": dict(kind="unet", batch=8, latent=(16, 16, 4),
                       model=dict(in_ch=4, out_ch=4, hid_chs=(64, 64, 128, 256), time_emb_dim=256, num_classes=2)),
    "small-vae": dict(kind="vae", batch=8, image=(64, 64, 3),
                      model=dict(emb_channels=4, hid_chs=(32, 64, 128, 128), deep_supervision=1)),
    "paper-unet": dict(kind="unet", batch=32, latent=(32, 32, 8),
                       model=dict(in_ch=8, out_ch=8, num_classes=2)),
    "paper-vae": dict(kind="vae", batch=8, image=(256, 256, 3),
                      model=dict(emb_channels=8, deep_supervision=1)),
}
# Dense peak FLOP/s by device kind and compute dtype (vendor figures), for the fraction of peak.
PEAK_FLOPS = {
    ("NVIDIA H100 80GB HBM3", "bfloat16"): 989e12, ("NVIDIA H100 80GB HBM3", "float32"): 67e12,
    ("NVIDIA H200", "bfloat16"): 989e12, ("NVIDIA H200", "float32"): 67e12,
}
GROUPS = {"small": ["small-unet", "small-vae"], "paper": ["paper-unet", "paper-vae"]}


def model_flops(jitted, *args) -> float | None:
    """Model FLOPs of one call from XLA's cost analysis of the lowered (unoptimised) program.

    The lowered program is used because after GPU compilation convolutions become library calls whose
    FLOPs the analysis does not count.
    """
    try:
        cost = jitted.lower(*args).cost_analysis()
    except Exception:  # noqa: BLE001 - cost analysis is best-effort and backend-dependent
        return None
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    if not cost:
        return None
    return float(cost.get("flops", 0.0)) or None


def timeit(fn: Callable[[], object], repeats: int, warmup: int = 2) -> float:
    """Median seconds per call after ``warmup`` calls (compilation excluded)."""
    for _ in range(warmup):
        jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def time_train_step(train_step, params, opt_state, key, repeats) -> tuple[float, float | None]:
    """(seconds, FLOPs) of ``train_step(params, opt_state, key) -> (params, opt_state, loss)``, state carried."""
    flops = model_flops(train_step, params, opt_state, key)
    state = [params, opt_state]

    def one_step():
        state[0], state[1], loss = train_step(state[0], state[1], key)
        return loss

    return timeit(one_step, repeats), flops


def unet_benchmarks(cfg, dtype, repeats, ddim_steps):
    batch, latent = cfg["batch"], cfg["latent"]
    model = UNet(**cfg["model"], dtype=dtype, rngs=nnx.Rngs(0))
    schedule = make_schedule()
    key = jax.random.key(0)
    x0 = jax.random.normal(key, (batch, *latent))
    labels = jnp.arange(batch) % 2
    graphdef, params = nnx.split(model)

    @jax.jit
    def forward(params, x, t):
        return nnx.merge(graphdef, params)(x, t, labels)

    optimizer = optax.adamw(1e-4, weight_decay=0.01)
    opt_state = optimizer.init(params)

    @jax.jit
    def train_step(params, opt_state, key):
        k1, k2 = jax.random.split(key)
        t = jax.random.randint(k1, (batch,), 0, 1000)
        noise = jax.random.normal(k2, x0.shape)

        def loss_fn(p):
            pred = nnx.merge(graphdef, p)(q_sample(schedule, x0, t, noise), t, labels)
            return jnp.mean(jnp.abs(pred.astype(jnp.float32) - noise))

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    t = jnp.full((batch,), 500)
    results = {"forward": (timeit(lambda: forward(params, x0, t), repeats), model_flops(forward, params, x0, t))}
    results["train_step"] = time_train_step(train_step, params, opt_state, key, repeats)
    if ddim_steps:
        results[f"ddim_{ddim_steps}"] = (timeit(
            lambda: sample_latents(model, schedule, key, (batch, *latent), labels, num_steps=ddim_steps),
            max(1, repeats // 5), warmup=1), None)
    return results


def vae_benchmarks(cfg, dtype, repeats):
    batch, image = cfg["batch"], cfg["image"]
    model = VAE(**cfg["model"], dtype=dtype, rngs=nnx.Rngs(0))
    x = jax.random.uniform(jax.random.key(0), (batch, *image), minval=-1, maxval=1)
    graphdef, params = nnx.split(model)

    @jax.jit
    def forward(params, key):
        return nnx.merge(graphdef, params)(x, key=key)[0]

    optimizer = optax.adam(1e-4)
    opt_state = optimizer.init(params)

    @jax.jit
    def train_step(params, opt_state, key):
        # Pixel (L1) + SSIM + KL terms; the VGG perceptual term belongs to the training loss benchmark.
        def loss_fn(p):
            out, heads, kl = nnx.merge(graphdef, p)(x, key=key)
            return vae_loss(out, heads, kl, x)[0]

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    key = jax.random.key(1)
    results = {"forward": (timeit(lambda: forward(params, key), repeats), model_flops(forward, params, key))}
    results["train_step"] = time_train_step(train_step, params, opt_state, key, repeats)
    return results


def run(names, dtype_name, repeats, ddim_steps):
    dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[dtype_name]
    out = {}
    for name in names:
        cfg = CONFIGS[name]
        if cfg["kind"] == "unet":
            res = unet_benchmarks(cfg, dtype, repeats, ddim_steps)
        else:
            res = vae_benchmarks(cfg, dtype, repeats)
        kind = jax.devices()[0].device_kind
        for what, (seconds, flops) in res.items():
            record = dict(config=name, what=what, dtype=dtype_name, batch=cfg["batch"],
                          ms_per_call=round(1e3 * seconds, 2), img_per_s=round(cfg["batch"] / seconds, 2))
            if flops:
                record["tflop_per_s"] = round(flops / seconds / 1e12, 2)
                if (kind, dtype_name) in PEAK_FLOPS:
                    record["fraction_of_peak"] = round(flops / seconds / PEAK_FLOPS[(kind, dtype_name)], 3)
            print(json.dumps(record), flush=True)
            out[(name, what)] = record
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default="small", help="small, paper, all, or comma-separated names "
                        f"({', '.join(CONFIGS)})")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--ddim-steps", type=int, default=150, help="0 to skip the DDIM batch")
    parser.add_argument("--json", help="write all records and ratios to this file")
    args = parser.parse_args()
    names = GROUPS.get(args.configs) or (list(CONFIGS) if args.configs == "all" else args.configs.split(","))
    device = jax.devices()[0]
    print(json.dumps(dict(device=str(device.device_kind), platform=device.platform, machine=platform.machine(),
                          jax=jax.__version__)), flush=True)

    records = run(names, args.dtype, args.repeats, args.ddim_steps)
    ratios = []
    if args.dtype != "float32":
        baseline = run(names, "float32", args.repeats, 0)
        for key, rec in records.items():
            if key in baseline:
                ratios.append(dict(config=key[0], what=key[1], baseline="float32 (same run)",
                                   speedup=round(baseline[key]["ms_per_call"] / rec["ms_per_call"], 3)))
    if device.platform == "cpu":
        for key, rec in records.items():
            if key in PYTORCH_MS:
                ratios.append(dict(config=key[0], what=key[1], baseline=f"PyTorch original {PYTORCH_MS[key]} ms "
                                   "(recorded, 2 threads)", speedup=round(PYTORCH_MS[key] / rec["ms_per_call"], 3)))
    for r in ratios:
        print(json.dumps(r), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(records=list(records.values()), ratios=ratios), f, indent=1)


if __name__ == "__main__":
    main()
