"""A step sharded over 8 devices equals the single-device step, for volumes and for the diffusion model: the
same metrics (1e-5), the same gradient (Adam's moments, 1e-4 of each leaf's scale) and the same Adam step on every
parameter whose gradient is clear of rounding (1e-3 of a step).

XLA_FLAGS must be set before JAX starts, so the comparison runs in a subprocess with 8 host devices.
The 3-D autoencoder step uses FSDP (parameters and Adam moments sharded over the 8 devices); the diffusion step
(encoding images with a frozen VAE) replicates them. The zero-initialised output convolutions get random kernels
first: from the reference's initial state only the output layer has a gradient, and the test would compare little
else. (The 2-D autoencoder with its VGG term left this test for the suite's 15-minute budget: its batch-split
data-parallel step is checked across device layouts by tests/test_multiprocess.py, and on this project's CPUs it
agreed to 3.0e-6 in the moments, 2.2e-7 in the metrics, with random output kernels.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

SCRIPT = r"""
import json
from medfusion_jax.xla_cpu import apply_cpu_defaults
apply_cpu_defaults()  # the XLA:CPU setting of the commands and conftest, before jax starts its backend
import jax
import numpy as np
from medfusion_jax.models import VAE
from medfusion_jax.training import autoencoder_task, diffusion_task
from medfusion_jax.config import (AutoencoderConfig, DataConfig, DiffusionConfig, RunConfig, UNetConfig,
                                           VAEConfig)
from medfusion_jax.mesh import global_batch, make_mesh, replicated, state_shardings
from medfusion_jax.run_folder import build, split_params
from medfusion_jax.training.state import compiled_step

assert jax.device_count() == 8
LEVELS = dict(kernel_sizes=(3, 3, 3), strides=(1, 2, 2))
rng = np.random.default_rng(0)
batch = {"image": rng.uniform(-1, 1, (8, 16, 16, 3)).astype(np.float32), "label": np.arange(8, dtype=np.int32) % 2}


def step(fn, static, spec, state, constants, mesh, fsdp, batch):
    shardings = state_shardings(state, mesh, fsdp)
    new, metrics = compiled_step(fn, static, spec, shardings, mesh)(
        jax.device_put(state, shardings), jax.device_put(constants, replicated(mesh)), global_batch(batch, mesh))
    sharded = sorted({str(leaf.sharding.spec) for leaf in jax.tree.leaves(new)})
    return jax.device_get(new), jax.device_get(metrics), sharded


def relative(a, b):
    # max|a - b| / max|a|: each array against its own scale (no floor that would hide Adam's ~1e-12 moments).
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = float(np.max(np.abs(a)))
    diff = float(np.max(np.abs(a - b)))
    return diff / scale if scale > 0 else (0.0 if diff == 0 else float("inf"))


def zero_kernels_made_random(params):
    # The reference zero-initialises the output convolutions, so from its initial state every gradient but
    # the output layer's is 0: a first step would compare little else. And the autoencoder's reconstruction
    # is then a flat image whose near-constant VGG features LPIPS normalises, which amplifies rounding (one CPU
    # kind: the output kernel's gradient 6e-4 apart between the layouts, 4e-7 with a random kernel). A random
    # output kernel gives the state of any later step: every parameter has a gradient.
    made = []

    def fill(path, x):
        if jax.tree_util.keystr(path).endswith("['kernel']") and not np.any(x):
            made.append(jax.tree_util.keystr(path))
            return x + 0.1 * rng.standard_normal(x.shape).astype(x.dtype)
        return x

    params = jax.tree_util.tree_map_with_path(fill, params)
    assert made, "no zero-initialised kernel found"
    return params


def compare(name, fn, static, spec, state, constants, fsdp, batch=batch):
    state = jax.device_get(state)  # host copies: the step donates (deletes) the device arrays it is given
    state = dict(state, params=zero_kernels_made_random(state["params"]))
    clear_count = [0, 0]
    one = step(fn, static, spec, state, constants, make_mesh(jax.devices()[:1]), False, batch)
    eight = step(fn, static, spec, state, constants, make_mesh(), fsdp, batch)
    lr = spec.config.lr
    worst_metric = max(relative(one[1][k], eight[1][k]) for k in one[1])
    groups = {"opt_state": [], "ema": [], "param_step": [], "param_bound": [], "noise_moments": []}
    if "ema" in one[0]:
        groups["ema"] = [relative(a, b) for a, b in
                         zip(jax.tree.leaves(one[0]["ema"]), jax.tree.leaves(eight[0]["ema"]), strict=True)]
    # Adam's moments hold the gradient: mu = (1 - b1) g, nu = (1 - b2) g^2 after one step. Each leaf is held to
    # 1e-5 of its own scale. A leaf whose gradient is below 1e-5 of the network's largest (mu; nu: 1e-10) is
    # not told apart from the float32 rounding of the sums that make it (e.g. the bias of a conv right before a
    # GroupNorm of single-channel groups, which cancels it: its gradient is rounding noise, 1.0 apart against
    # its own scale); such leaves are held to that floor instead.
    moments = [(jax.tree_util.keystr(path), np.asarray(a, np.float64), np.asarray(b, np.float64)) for (path, a), b in
               zip(jax.tree_util.tree_leaves_with_path(one[0]["opt_state"]), jax.tree.leaves(eight[0]["opt_state"]),
                   strict=True)]

    def kind(path):
        return ".mu" if ".mu" in path else ".nu" if ".nu" in path else "other"

    def parameter_of(path):
        # "['vae'][0].mu['inc']...['bias']" -> "['vae']['inc']...['bias']", the parameter's own path.
        head, tail = path.split(kind(path), 1)
        return head[:head.index("]") + 1] + tail

    floors = {".mu": 1e-5, ".nu": 1e-10, "other": 0.0}
    largest, noise, gradient = {}, set(), {}
    for path, a, _ in moments:
        largest[kind(path)] = max(largest.get(kind(path), 0.0), float(np.max(np.abs(a), initial=0.0)))
    for path, a, b in moments:
        floor = floors[kind(path)] * largest[kind(path)]
        if kind(path) == ".mu":
            gradient[parameter_of(path)] = a
        if float(np.max(np.abs(a), initial=0.0)) > floor:
            groups["opt_state"].append(relative(a, b))
        else:
            groups["noise_moments"].append(float(np.max(np.abs(a - b), initial=0.0)) / floor)
            noise.add(parameter_of(path))
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(one[0]["params"]), jax.tree.leaves(eight[0]["params"]),
                            strict=True):
        # Adam's first step moves each element by lr * g / (|g| + eps): about lr times the sign of its gradient.
        # Where the gradient is clear (at least 1e-3 of its leaf's largest: its sign is no rounding) both layouts
        # must take the same step, to 1e-3 of a step; elsewhere (a gradient within rounding of 0, whose sign
        # the layout decides) the step can only be up to lr either way: held to 2 lr.
        step_apart = np.abs(np.asarray(a, np.float64) - b) / lr
        g = np.abs(gradient[jax.tree_util.keystr(path)])
        clear = (g >= 1e-3 * np.max(g)) & (g > 0) & (jax.tree_util.keystr(path) not in noise)
        groups["param_step"].append(float(np.max(step_apart[clear], initial=0.0)))
        groups["param_bound"].append(float(np.max(step_apart)))
        clear_count[0] += int(np.sum(clear))
        clear_count[1] += int(step_apart.size)
    return dict(loss=[float(one[1]["loss"]), float(eight[1]["loss"])], worst_metric=float(worst_metric),
                **{f"worst_{k}": max(v, default=0.0) for k, v in groups.items()},
                checked={k: len(v) for k, v in groups.items()}, specs=eight[2], noise=sorted(noise),
                clear_elements=clear_count[0] / clear_count[1])


run = RunConfig("unused", batch_size=8, steps=1)
data = DataConfig("phantom-cxr", image_size=16)
# Volumes: a two-level 3-D autoencoder on 8^3 single-channel volumes (no perceptual term: LPIPS is 2-D); its
# second level's 3x3x3x32x32 kernels are above FSDP_MIN_SIZE, so --fsdp shards them.
volumes = {"image": rng.uniform(-1, 1, (8, 8, 8, 8, 1)).astype(np.float32), "label": np.arange(8, dtype=np.int32) % 2}
vol_config = AutoencoderConfig(data=DataConfig("phantom-brain", image_size=8), run=run, perceptual_weight=0.0,
                               model=VAEConfig(hid_chs=(8, 32), kernel_sizes=(3, 3), strides=(1, 2), deep_supervision=0,
                                               in_channels=1, out_channels=1, spatial_dims=3))
spec, state, constants = autoencoder_task.init_autoencoder(vol_config)
fn, static = autoencoder_task.train_step_for(spec, 0)
# With --fsdp: the parameters and Adam moments of the 3-D networks sharded over the mesh as well.
report = {}
report["autoencoder_3d"] = compare("autoencoder_3d", fn, static, spec, state, constants, True, volumes)

vae_graph, vae_params = split_params(build(VAE, dict(hid_chs=(8, 16, 16), emb_channels=4, **LEVELS)))
diff_config = DiffusionConfig(data=data, run=run, autoencoder="unused",
                              model=UNetConfig(hid_chs=(32, 32, 64), time_emb_dim=64, norm_groups=8, **LEVELS))
spec, state, constants, _ = diffusion_task.init_diffusion(diff_config, vae_graph=vae_graph, vae_params=vae_params,
                                                          latent_channels=4, num_classes=2)
report["diffusion"] = compare("diffusion", diffusion_task.diffusion_train_step, {}, spec, state, constants, False)
print("REPORT" + json.dumps(report))
"""


@pytest.fixture(scope="module")
def report():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu",
               PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    (line,) = [line for line in proc.stdout.splitlines() if line.startswith("REPORT")]
    return json.loads(line[len("REPORT"):])


@pytest.mark.parametrize("stage", ["autoencoder_3d", "diffusion"])
def test_sharded_step_equals_single_device_step(report, stage):
    result = report[stage]
    assert result["worst_metric"] < 1e-5, result
    # Adam's mu and nu (the gradient), each leaf against its own scale: measured on an AMD EPYC (no AVX-512) 2.0e-6
    # (images), 3.8e-5 (volumes: every leaf of the 3-D network ~1e-5 apart, the loss itself 1.7e-6), 4.1e-6
    # (diffusion): float32 rounding of batch-split convolutions and sums, propagated through the network.
    assert result["worst_opt_state"] < 1e-4, result
    assert result["worst_noise_moments"] <= 1.0, result  # leaves of rounding-noise gradients (see compare)
    # ... which are only conv biases (those a following GroupNorm cancels), never most of the network.
    assert all(p.endswith("['conv']['bias']") for p in result["noise"]), result["noise"]
    assert result["checked"]["opt_state"] > 4 * len(result["noise"]), result
    assert result["worst_param_step"] < 1e-3, result  # clear gradients: the same step, to 0.1 % of a step
    assert result["clear_elements"] > 0.9, result  # ... which is nearly every parameter
    assert result["worst_param_bound"] <= 2.0, result  # the rest: at most one step either way
    assert result["worst_ema"] < 1e-5, result  # (no EMA in these configurations: 0 leaves)
    assert result["loss"][0] > 0

def test_fsdp_shards_parameters(report):
    assert any("'data'" in spec for spec in report["autoencoder_3d"]["specs"]), report["autoencoder_3d"]["specs"]
    assert report["diffusion"]["specs"] == ["P()"]  # replicated without --fsdp
