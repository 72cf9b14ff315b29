"""A step sharded over 8 devices equals the single-device step (loss and updated parameters, 1e-5), for
images and for volumes.

XLA_FLAGS must be set before JAX starts, so the comparison runs in a subprocess with 8 host devices.
The autoencoder step includes the VGG16 perceptual term; the diffusion step encodes images with a frozen
VAE; the diffusion step and the 3-D autoencoder step use FSDP (parameters and Adam moments sharded over the
8 devices).
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


def compare(name, fn, static, spec, state, constants, fsdp, batch=batch):
    state = jax.device_get(state)  # host copies: the step donates (deletes) the device arrays it is given
    one = step(fn, static, spec, state, constants, make_mesh(jax.devices()[:1]), False, batch)
    eight = step(fn, static, spec, state, constants, make_mesh(), fsdp, batch)
    lr = spec.config.lr
    worst_metric = max(relative(one[1][k], eight[1][k]) for k in one[1])
    groups = {"opt_state": [], "ema": [], "params": [], "param_step": [], "noise_moments": []}
    if "ema" in one[0]:
        groups["ema"] = [relative(a, b) for a, b in
                         zip(jax.tree.leaves(one[0]["ema"]), jax.tree.leaves(eight[0]["ema"]), strict=True)]
    # Adam's moments, each against its own scale. A moment of a gradient that is rounding noise (the bias of
    # a conv followed by GroupNorm, whose true gradient is 0: ~1e-14 while its kind's largest moments are
    # ~1e-2) differs with the reduction order; such leaves (below 1e-9 of the largest moment of their kind,
    # mu or nu) are held to 1e-9 of that largest moment instead.
    moments = [(jax.tree_util.keystr(path), np.asarray(a, np.float64), np.asarray(b, np.float64)) for (path, a), b in
               zip(jax.tree_util.tree_leaves_with_path(one[0]["opt_state"]), jax.tree.leaves(eight[0]["opt_state"]),
                   strict=True)]
    def kind(path):
        return ".mu" if ".mu" in path else ".nu" if ".nu" in path else "other"
    largest = {}
    for path, a, _ in moments:
        largest[kind(path)] = max(largest.get(kind(path), 0.0), float(np.max(np.abs(a), initial=0.0)))
    for path, a, b in moments:
        floor = 1e-9 * largest[kind(path)]
        if float(np.max(np.abs(a), initial=0.0)) >= floor:
            groups["opt_state"].append(relative(a, b))
        else:
            groups["noise_moments"].append(float(np.max(np.abs(a - b), initial=0.0)) / floor)
    for a, b in zip(jax.tree.leaves(one[0]["params"]), jax.tree.leaves(eight[0]["params"]), strict=True):
        # A parameter whose gradient is rounding noise (|g| << Adam's eps = 1e-8; e.g. a zero-initialised
        # output conv after one step) moves by lr * g / (|g| + eps), which amplifies that noise: such
        # leaves (max|p| ~ lr) are held to a thousandth of a step, the others to their own scale.
        if float(np.max(np.abs(a))) > 10 * lr:
            groups["params"].append(relative(a, b))
        groups["param_step"].append(float(np.max(np.abs(np.asarray(a, np.float64) - b))) / lr)
    return dict(loss=[float(one[1]["loss"]), float(eight[1]["loss"])], worst_metric=float(worst_metric),
                **{f"worst_{k}": max(v, default=0.0) for k, v in groups.items()},
                checked={k: len(v) for k, v in groups.items()}, specs=eight[2])


run = RunConfig("unused", batch_size=8, steps=1)
data = DataConfig("phantom-cxr", image_size=16)
# No deep-supervision head: the perceptual term needs outputs of 16x16 pixels or more.
ae_config = AutoencoderConfig(data=data, run=run, model=VAEConfig(hid_chs=(8, 16, 16), deep_supervision=0, **LEVELS))
spec, state, constants = autoencoder_task.init_autoencoder(ae_config)
fn, static = autoencoder_task.train_step_for(spec, 0)
report = {"autoencoder": compare("autoencoder", fn, static, spec, state, constants, False)}

# Volumes: a two-level 3-D autoencoder on 8^3 single-channel volumes (no perceptual term: LPIPS is 2-D); its
# second level's 3x3x3x32x32 kernels are above FSDP_MIN_SIZE, so --fsdp shards them.
volumes = {"image": rng.uniform(-1, 1, (8, 8, 8, 8, 1)).astype(np.float32), "label": np.arange(8, dtype=np.int32) % 2}
vol_config = AutoencoderConfig(data=DataConfig("phantom-brain", image_size=8), run=run, perceptual_weight=0.0,
                               model=VAEConfig(hid_chs=(8, 32), kernel_sizes=(3, 3), strides=(1, 2), deep_supervision=0,
                                               in_channels=1, out_channels=1, spatial_dims=3))
spec, state, constants = autoencoder_task.init_autoencoder(vol_config)
fn, static = autoencoder_task.train_step_for(spec, 0)
# With --fsdp: the parameters and Adam moments of the 3-D networks sharded over the mesh as well.
report["autoencoder_3d"] = compare("autoencoder_3d", fn, static, spec, state, constants, True, volumes)

vae_graph, vae_params = split_params(build(VAE, dict(hid_chs=(8, 16, 16), emb_channels=4, **LEVELS)))
diff_config = DiffusionConfig(data=data, run=run, autoencoder="unused",
                              model=UNetConfig(hid_chs=(32, 32, 64), time_emb_dim=64, norm_groups=8, **LEVELS))
spec, state, constants, _ = diffusion_task.init_diffusion(diff_config, vae_graph=vae_graph, vae_params=vae_params,
                                                          latent_channels=4, num_classes=2)
report["diffusion"] = compare("diffusion", diffusion_task.diffusion_train_step, {}, spec, state, constants, True)
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


@pytest.mark.parametrize("stage", ["autoencoder", "autoencoder_3d", "diffusion"])
def test_sharded_step_equals_single_device_step(report, stage):
    result = report[stage]
    assert result["worst_metric"] < 1e-5, result
    assert result["worst_opt_state"] < 1e-5, result  # Adam's mu and nu, each against its own scale
    assert result["worst_noise_moments"] <= 1.0, result  # moments of rounding-noise gradients (see compare)
    assert result["worst_params"] < 1e-5, result
    assert result["worst_param_step"] < 1e-3, result  # every parameter: within 0.1 % of one Adam step
    assert result["checked"]["opt_state"] > 0 and result["checked"]["params"] > 0
    assert result["worst_ema"] < 1e-5, result  # (no EMA in these configurations: 0 leaves)
    assert result["loss"][0] > 0


def test_fsdp_shards_parameters(report):
    for stage in ("diffusion", "autoencoder_3d"):
        assert any("'data'" in spec for spec in report[stage]["specs"]), report[stage]["specs"]
    assert report["autoencoder"]["specs"] == ["P()"]  # replicated without --fsdp
