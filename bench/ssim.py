"""SSIM of the autoencoder loss and MS-SSIM of the evaluation: the current filters against the previous ones.

    python bench/ssim.py                           # batch 8, 3x64x64 and 3x256x256, 20 timed runs each
    python bench/ssim.py --sizes 32 128 --repeats 10 --batch 4

Cases, all jitted, float32, on the default device (CPU here):

* ``ssim fwd``: ``medfusion_jax.losses.ssim.ssim`` against ``_ssim_reference`` (the previous 11-slice
  sums, each of the five maps filtered on its own);
* ``ssim fwd+grad``: value and gradient, with respect to the prediction, of the summed SSIM loss
  (what a training step differentiates);
* ``ms_ssim fwd`` (sizes above 160 only): ``medfusion_jax.metrics.msssim.ms_ssim`` against the
  previous depthwise 11x11 ``conv_general_dilated``.

Old and new run alternately (after two warm-up calls each), so that other processes on the machine
slow both alike; each line gives the median and minimum of ``--repeats`` runs and the ratio new/old
of the medians (below 1: the new one is faster), and the largest relative difference of the values
(and gradients). Also prints the load average, and a JSON summary with --json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from medfusion_jax.losses.ssim import _ssim_reference, ssim
from medfusion_jax.metrics import msssim
from medfusion_jax.xla_cpu import apply_cpu_defaults

apply_cpu_defaults()  # as the command lines do: before the first computation (medfusion_jax/xla_cpu.py)


# -- the previous MS-SSIM filtering (depthwise 2-D convolution) ------------------------------------


def _ssim_and_cs_conv(preds, target, window, data_range, k1, k2):
    c = preds.shape[-1]
    kernel = jnp.tile(jnp.asarray(window)[:, :, None, None], (1, 1, 1, c))
    stacked = jnp.concatenate([preds, target, preds * preds, target * target, preds * target], axis=0)
    out = jax.lax.conv_general_dilated(
        stacked, kernel, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=c, precision=jax.lax.Precision.HIGHEST,
    )
    mu_p, mu_t, e_pp, e_tt, e_pt = jnp.split(out, 5, axis=0)
    mu_pp, mu_tt, mu_pt = mu_p**2, mu_t**2, mu_p * mu_t
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    upper = 2 * (e_pt - mu_pt) + c2
    lower = (e_pp - mu_pp) + (e_tt - mu_tt) + c2
    ssim_map = ((2 * mu_pt + c1) * upper) / ((mu_pp + mu_tt + c1) * lower)
    return jnp.mean(ssim_map, axis=(1, 2, 3)), jnp.mean(upper / lower, axis=(1, 2, 3))


@jax.jit
def ms_ssim_conv(preds, target):
    """The previous ``ms_ssim`` (defaults: per-image data range, relu, 5 scales)."""
    window, betas = msssim.gaussian_window(1.5), msssim.BETAS
    terms = []
    for scale in range(len(betas)):
        dr = msssim._data_range(preds, target)
        sim, cs = _ssim_and_cs_conv(preds, target, window, dr, 0.01, 0.03)
        sim, cs = jax.nn.relu(sim), jax.nn.relu(cs)
        terms.append(sim if scale == len(betas) - 1 else cs)
        preds = jax.lax.reduce_window(preds, 0.0, jax.lax.add, (1, 2, 2, 1), (1, 2, 2, 1), "VALID") / 4
        target = jax.lax.reduce_window(target, 0.0, jax.lax.add, (1, 2, 2, 1), (1, 2, 2, 1), "VALID") / 4
    return jnp.prod(jnp.stack(terms) ** jnp.asarray(betas, jnp.float32)[:, None], axis=0)


# -- timing ------------------------------------------------------------------------------------------


def _loss_value_and_grad(fn):
    return jax.jit(jax.value_and_grad(lambda p, t: jnp.sum(1.0 - fn(p, t))))


def _rel_diff(new, old) -> float:
    leaves = zip(jax.tree_util.tree_leaves(new), jax.tree_util.tree_leaves(old), strict=True)
    return max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / max(float(np.max(np.abs(np.asarray(b)))), 1e-30))
               for a, b in leaves)


def time_pair(new, old, args, repeats: int) -> dict:
    for _ in range(2):
        jax.block_until_ready(new(*args))
        jax.block_until_ready(old(*args))
    times = {"new": [], "old": []}
    for _ in range(repeats):
        for name, fn in (("new", new), ("old", old)):
            start = time.perf_counter()
            jax.block_until_ready(fn(*args))
            times[name].append(time.perf_counter() - start)
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    return dict(new_ms=med["new"], old_ms=med["old"], new_min_ms=min(times["new"]) * 1e3,
                old_min_ms=min(times["old"]) * 1e3, ratio=med["new"] / med["old"],
                rel_diff=_rel_diff(new(*args), old(*args)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--json", action="store_true", help="also print the results as one JSON object")
    args = parser.parse_args(argv)

    print(f"device: {jax.devices()[0].device_kind}, load average before: {os.getloadavg()[0]:.2f}")
    print(f"{'case':<16} {'size':>5} {'old ms':>10} {'new ms':>10} {'new/old':>8} {'min old':>9} {'min new':>9} "
          f"{'rel diff':>9}")
    rows = []
    for size in args.sizes:
        kx, kn = jax.random.split(jax.random.key(size))
        target = jax.random.uniform(kx, (args.batch, size, size, args.channels), jnp.float32)
        pred = jnp.clip(target + 0.1 * jax.random.normal(kn, target.shape), 0.0, 1.0)
        cases = [("ssim fwd", jax.jit(ssim), jax.jit(_ssim_reference)),
                 ("ssim fwd+grad", _loss_value_and_grad(ssim), _loss_value_and_grad(_ssim_reference))]
        if size > 160:
            cases.append(("ms_ssim fwd", msssim.ms_ssim, ms_ssim_conv))
        for name, new, old in cases:
            row = dict(case=name, size=size, batch=args.batch, **time_pair(new, old, (pred, target), args.repeats))
            rows.append(row)
            print(f"{name:<16} {size:>5} {row['old_ms']:>10.2f} {row['new_ms']:>10.2f} {row['ratio']:>8.3f} "
                  f"{row['old_min_ms']:>9.2f} {row['new_min_ms']:>9.2f} {row['rel_diff']:>9.1e}", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    if args.json:
        print(json.dumps(dict(device=jax.devices()[0].device_kind, repeats=args.repeats, results=rows)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
