"""Throughput of Medfusion's networks: forward, train step (forward + backward + optimizer), DDIM batch.

    python bench/models.py                      # small CPU configurations
    python bench/models.py --configs paper      # the paper's networks (meant for a GPU)
    python bench/models.py --dtype bfloat16     # bf16 compute, float32 parameters
    python bench/models.py --compare-host-devices 2   # CPU: also run with the batch split over 2 devices

The batch is always split over every local device (data parallel, parameters replicated). On a CPU,
XLA runs small elementwise and reduction kernels on one thread and only convolutions on all of them,
which leaves part of a 2-core machine idle; ``--compare-host-devices N`` reruns the same measurements
in a subprocess with ``--xla_force_host_platform_device_count=N`` (one virtual device per core, each
running its share of the batch) and prints the speedup over this process's single device.

Prints one JSON object per measurement and a summary with ratios: against the plain float32 run in the
same process when --dtype is not float32, and against the PyTorch original's times recorded in the
foundation issue (measured with 2 threads on this 2-core machine kind) where they exist.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from medfusion_jax.diffusion.sampler import sample_latents
from medfusion_jax.diffusion.schedule import make_schedule, q_sample
from medfusion_jax.losses.autoencoder import vae_loss
from medfusion_jax.models import VAE, UNet
from medfusion_jax.xla_cpu import apply_cpu_defaults

apply_cpu_defaults()  # as the command lines do: before the first computation (medfusion_jax/xla_cpu.py)

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


def step_flops(jitted, *args) -> tuple[float | None, str]:
    """(model FLOPs of one step, where the count comes from).

    XLA's cost analysis of the lowered program where the backend gives one; jax
    0.11 on GPU gives none, and there the convolutions and matrix products of the step's jaxpr are
    counted instead (2 x multiply-adds; elementwise work is not counted, so this is a little lower).
    """
    flops = model_flops(jitted, *args)
    if flops:
        return flops, "xla_cost_analysis"
    return float(jaxpr_flops(jitted.trace(*args).jaxpr.jaxpr)), "jaxpr_conv_dot"


def jaxpr_flops(jaxpr) -> int:
    total = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "conv_general_dilated":
            lhs, rhs = (v.aval for v in eqn.invars)
            out = eqn.outvars[0].aval
            dims = eqn.params["dimension_numbers"]
            kernel_spatial = int(np.prod([rhs.shape[d] for d in dims.rhs_spec[2:]]))
            in_per_group = rhs.shape[dims.rhs_spec[1]]
            total += 2 * int(np.prod(out.shape)) * kernel_spatial * in_per_group
        elif eqn.primitive.name == "dot_general":
            lhs, rhs = (v.aval for v in eqn.invars)
            (lhs_contract, _), _ = eqn.params["dimension_numbers"]
            contracted = int(np.prod([lhs.shape[d] for d in lhs_contract]))
            total += 2 * int(np.prod(eqn.outvars[0].aval.shape)) * contracted
        for value in eqn.params.values():
            for sub in value if isinstance(value, (list, tuple)) else [value]:
                inner = getattr(sub, "jaxpr", sub)  # ClosedJaxpr -> Jaxpr
                if hasattr(inner, "eqns"):
                    total += jaxpr_flops(inner)
    return total


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


def data_parallel():
    """(put_batch, put_replicated): the batch split over every local device, parameters replicated."""
    mesh = Mesh(np.array(jax.local_devices()), ("data",))
    batch, replicated = NamedSharding(mesh, PartitionSpec("data")), NamedSharding(mesh, PartitionSpec())
    return (lambda x: jax.device_put(x, batch)), (lambda x: jax.device_put(x, replicated))


def time_train_step(train_step, params, opt_state, repeats) -> tuple[float, float | None]:
    """(seconds, FLOPs) of ``train_step(params, opt_state) -> (params, opt_state, loss)``, state carried."""
    flops = step_flops(train_step, params, opt_state)[0]
    state = [params, opt_state]

    def one_step():
        state[0], state[1], loss = train_step(state[0], state[1])
        return loss

    return timeit(one_step, repeats), flops


def unet_benchmarks(cfg, dtype, repeats, ddim_steps):
    batch, latent = cfg["batch"], cfg["latent"]
    model = UNet(**cfg["model"], dtype=dtype, rngs=nnx.Rngs(0))
    schedule = make_schedule()
    key = jax.random.key(0)
    put_batch, put_replicated = data_parallel()
    x0 = put_batch(jax.random.normal(key, (batch, *latent)))
    labels = put_batch(jnp.arange(batch) % 2)
    t_train = put_batch(jax.random.randint(jax.random.key(1), (batch,), 0, 1000))
    noise = put_batch(jax.random.normal(jax.random.key(2), x0.shape))
    graphdef, params = nnx.split(model)
    params = put_replicated(params)

    @jax.jit
    def forward(params, x, t):
        return nnx.merge(graphdef, params)(x, t, labels)

    optimizer = optax.adamw(1e-4, weight_decay=0.01)
    opt_state = put_replicated(optimizer.init(params))

    @jax.jit
    def train_step(params, opt_state):
        def loss_fn(p):
            pred = nnx.merge(graphdef, p)(q_sample(schedule, x0, t_train, noise), t_train, labels)
            return jnp.mean(jnp.abs(pred.astype(jnp.float32) - noise))

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    t = put_batch(jnp.full((batch,), 500))
    results = {"forward": (timeit(lambda: forward(params, x0, t), repeats), step_flops(forward, params, x0, t)[0])}
    results["train_step"] = time_train_step(train_step, params, opt_state, repeats)
    if ddim_steps:
        results[f"ddim_{ddim_steps}"] = (timeit(
            lambda: sample_latents(nnx.merge(graphdef, params), schedule, key, (batch, *latent), labels,
                                   num_steps=ddim_steps, x_T=x0),
            max(1, repeats // 5), warmup=1), None)
    return results


def vae_benchmarks(cfg, dtype, repeats):
    batch, image = cfg["batch"], cfg["image"]
    model = VAE(**cfg["model"], dtype=dtype, rngs=nnx.Rngs(0))
    put_batch, put_replicated = data_parallel()
    x = put_batch(jax.random.uniform(jax.random.key(0), (batch, *image), minval=-1, maxval=1))
    latent = (image[0] // model.downsampling, image[1] // model.downsampling, model.emb_channels)
    eps = put_batch(jax.random.normal(jax.random.key(3), (batch, *latent)))
    graphdef, params = nnx.split(model)
    params = put_replicated(params)

    @jax.jit
    def forward(params):
        return nnx.merge(graphdef, params)(x, noise=eps)[0]

    optimizer = optax.adam(1e-4)
    opt_state = put_replicated(optimizer.init(params))

    @jax.jit
    def train_step(params, opt_state):
        # Pixel (L1) + SSIM + KL terms; the VGG perceptual term belongs to the training loss benchmark.
        def loss_fn(p):
            out, heads, kl = nnx.merge(graphdef, p)(x, noise=eps)
            return vae_loss(out, heads, kl, x)[0]

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    results = {"forward": (timeit(lambda: forward(params), repeats), step_flops(forward, params)[0])}
    results["train_step"] = time_train_step(train_step, params, opt_state, repeats)
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


def host_devices_run(args) -> dict:
    """The same measurements in a subprocess whose CPU is split into ``args.compare_host_devices`` devices."""
    out = Path(tempfile.mkdtemp()) / "host_devices.json"
    env = dict(os.environ, XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") +
                                      f" --xla_force_host_platform_device_count={args.compare_host_devices}"))
    cmd = [sys.executable, __file__, "--configs", args.configs, "--dtype", args.dtype, "--repeats",
           str(args.repeats), "--ddim-steps", str(args.ddim_steps), "--json", str(out)]
    subprocess.run(cmd, env=env, check=True)
    records = json.loads(out.read_text())["records"]
    return {(r["config"], r["what"]): r for r in records if r["dtype"] == args.dtype}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default="small", help="small, paper, all, or comma-separated names "
                        f"({', '.join(CONFIGS)})")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--ddim-steps", type=int, default=150, help="0 to skip the DDIM batch")
    parser.add_argument("--json", help="write all records and ratios to this file")
    parser.add_argument("--compare-host-devices", type=int, default=0, metavar="N",
                        help="CPU: rerun with the batch split over N virtual host devices and compare")
    args = parser.parse_args()
    names = GROUPS.get(args.configs) or (list(CONFIGS) if args.configs == "all" else args.configs.split(","))
    device = jax.devices()[0]
    print(json.dumps(dict(device=str(device.device_kind), platform=device.platform, machine=platform.machine(),
                          local_devices=jax.local_device_count(), jax=jax.__version__)), flush=True)

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
    if args.compare_host_devices and device.platform == "cpu":
        for key, rec in host_devices_run(args).items():
            if key in records:
                ratios.append(dict(config=key[0], what=key[1], ms_per_call=rec["ms_per_call"],
                                   baseline=f"{jax.local_device_count()} device(s) (same run)",
                                   variant=f"{args.compare_host_devices} host devices",
                                   speedup=round(records[key]["ms_per_call"] / rec["ms_per_call"], 3)))
    for r in ratios:
        print(json.dumps(r), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(records=list(records.values()), ratios=ratios), f, indent=1)


if __name__ == "__main__":
    main()
