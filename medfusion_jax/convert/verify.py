"""Check our implementation against a reference golden folder (layout: shared/reference/goldens/README.md).

A folder holds ``config.json`` (the reference class and its constructor kwargs), ``state_dict.npz``
(PyTorch-layout weights) and ``io.npz`` (NCHW inputs and outputs). :func:`verify_folder` builds our
module from the kwargs, loads the converted weights, replays the recorded inputs and noise, and returns
one :class:`Comparison` per output it recomputes, with the error max|diff| / max(1, max|ref|).
Sampling trajectories (``*_per_step``, DDIM ``step{i}`` outputs) are compared step by step, each step
normalised by its own scale (max|diff_i| / max|ref_i|), so the early steps, whose values are large, are
checked as tightly as the late ones; the line reports the worst step. A folder that lacks the main
outputs of its class (:data:`MAIN_OUTPUTS`) is refused: a golden that compares nothing important must
not pass.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from medfusion_jax.convert.reference import build_from_reference, reference_class_short_name, unet_from_reference
from medfusion_jax.convert.state_dict import load_state_dict
from medfusion_jax.diffusion.sampler import ddim_sample, sample_latents
from medfusion_jax.diffusion.schedule import ddim_timesteps, make_schedule, q_sample, x0_from_eps
from medfusion_jax.losses.autoencoder import (
    head_target_area,
    head_target_nearest_exact,
    reconstruction_loss,
    ssim_loss,
)
from medfusion_jax.losses.gan import generator_adversarial_loss, hinge_d_loss, vaegan_losses
from medfusion_jax.models.unet import sinusoidal_embedding

OUTPUT_TOL = 1e-4
SCHEDULE_TOL = 1e-5


@dataclasses.dataclass(frozen=True)
class Comparison:
    name: str
    error: float
    tolerance: float
    note: str = ""

    @property
    def ok(self) -> bool:
        return bool(np.isfinite(self.error)) and self.error <= self.tolerance

    def line(self) -> str:
        line = f"{'ok  ' if self.ok else 'FAIL'} {self.name:<40s} err {self.error:.3e}  (tol {self.tolerance:.0e})"
        return f"{line}  {self.note}" if self.note else line


def step_relative_error(ours, ref) -> tuple[float, int]:
    """(worst error, its step) over the leading axis, each step normalised by its own max|ref|."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    if ours.shape != ref.shape or ours.ndim == 0 or len(ours) == 0:
        return float("inf"), -1
    axes = tuple(range(1, ours.ndim))
    diff = np.max(np.abs(ours - ref), axis=axes) if axes else np.abs(ours - ref)
    scale = np.max(np.abs(ref), axis=axes) if axes else np.abs(ref)
    errors = diff / np.maximum(scale, np.finfo(np.float64).tiny)
    worst = int(np.argmax(errors))
    return float(errors[worst]), worst


def relative_error(ours, ref) -> float:
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    if ours.shape != ref.shape:
        return float("inf")
    return float(np.max(np.abs(ours - ref), initial=0.0) / max(1.0, float(np.max(np.abs(ref), initial=0.0))))


def to_nhwc(a: np.ndarray, spatial_dims: int = 2) -> jnp.ndarray:
    """Channels-first reference arrays (NCHW, NCDHW with ``spatial_dims=3``, or a leading steps axis before
    either) to our channels-last layout; other arrays unchanged."""
    a = np.asarray(a)
    if a.ndim in (spatial_dims + 2, spatial_dims + 3):
        a = np.moveaxis(a, a.ndim - spatial_dims - 1, -1)
    return jnp.asarray(a)


def to_nchw(a, spatial_dims: int = 2) -> np.ndarray:
    """The inverse of :func:`to_nhwc`."""
    a = np.asarray(a)
    if a.ndim in (spatial_dims + 2, spatial_dims + 3):
        return np.moveaxis(a, -1, a.ndim - spatial_dims - 1)
    return a


class _Collector:
    """Compares computed outputs with the recorded ones that exist in io.npz."""

    def __init__(self, io: dict[str, np.ndarray], spatial_dims: int = 2):
        self.io = io
        self.spatial_dims = spatial_dims
        self.results: list[Comparison] = []
        self.used: set[str] = set()

    def has(self, name: str) -> bool:
        return name in self.io

    def inp(self, name: str):
        self.used.add(name)
        return self.io[name]

    def image(self, name: str) -> jnp.ndarray:
        """A recorded channels-first input in our channels-last layout."""
        return to_nhwc(self.inp(name), self.spatial_dims)

    def check(self, name: str, compute: Callable[[], object], tol: float = OUTPUT_TOL) -> None:
        """Compare with ``name`` and with its float64 replicas (``name_f64``, ``name_f64_replay``)."""
        for n, ours in self._recorded(name, compute):
            self.results.append(Comparison(n, relative_error(ours, self.io[n]), tol))

    def check_steps(self, name: str, compute: Callable[[], object], tol: float = OUTPUT_TOL) -> None:
        """Like :meth:`check` for a [steps, ...] trajectory, every step against its own scale."""
        for n, ours in self._recorded(name, compute):
            error, step = step_relative_error(ours, self.io[n])
            self.results.append(Comparison(n, error, tol, f"worst of {len(ours)} steps: {step}, per-step scale"))

    def _recorded(self, name: str, compute: Callable[[], object]) -> list[tuple[str, np.ndarray]]:
        """(recorded name, our NCHW value) for ``name`` and its replicas; computes only if one is recorded."""
        present = [n for n in (name, f"{name}_f64", f"{name}_f64_replay") if n in self.io]
        if not present:
            return []
        ours = to_nchw(compute(), self.spatial_dims)
        self.used.update(present)
        return [(n, ours) for n in present]


def _load_module(folder: Path, config: dict) -> nnx.Module:
    module = build_from_reference(config["class"], config["ctor_kwargs"])
    weights = folder / "state_dict.npz"
    load_state_dict(module, dict(np.load(weights)), source=str(weights))
    return module


def _verify_vae(folder, config, c: _Collector):
    vae = _load_module(folder, config)
    x, eps = c.image("x"), c.image("eps")
    out, heads, kl = vae(x, noise=eps)
    mean, logvar = vae.posterior(x)
    c.check("moments", lambda: vae.moments(x))
    c.check("mean", lambda: mean)
    c.check("logvar_clamped", lambda: logvar)
    c.check("z", lambda: vae.encode(x, noise=eps))
    c.check("kl", lambda: kl)
    c.check("forward_emb_loss", lambda: kl)
    c.check("out", lambda: out)
    for j, head in enumerate(heads):
        c.check(f"out_hor_{j}", lambda head=head: head)
        c.check(f"target_hor_{j}_nearest_exact", lambda head=head: head_target_nearest_exact(x, head))
        c.check(f"ssim_loss_per_image_hor_{j}", lambda head=head: ssim_loss(head, head_target_nearest_exact(x, head)))
    c.check("decode_of_mean", lambda: vae.decode(mean))
    c.check("ssim_loss_per_image_out", lambda: ssim_loss(out, x))
    kl_weight = config["ctor_kwargs"].get("embedding_loss_weight", 1e-6)
    for name, pixel in (("L1", "l1"), ("MSE", "mse")):
        rec = reconstruction_loss(out, x, pixel_loss=pixel) + sum(
            reconstruction_loss(h, head_target_nearest_exact(x, h), pixel_loss=pixel) for h in heads
        )
        c.check(f"rec_loss_{name}", lambda rec=rec: rec)
        c.check(f"total_loss_{name}", lambda rec=rec: rec + kl_weight * kl)


def _verify_discriminator(folder, config, c: _Collector):
    disc = _load_module(folder, config)
    x = c.image("x")
    logits = disc(x)
    c.check("logits", lambda: logits)
    if c.has("x_fake"):
        fake = disc(c.image("x_fake"))
        c.check("hinge_d_loss", lambda: hinge_d_loss(logits, fake))
        c.check("gen_adv_loss_sum", lambda: generator_adversarial_loss(fake))


def _verify_vaegan(folder, config, c: _Collector):
    model = _load_module(folder, config)
    x, eps = c.image("x"), c.image("eps")
    kwargs = config["ctor_kwargs"]
    gen, disc, terms = vaegan_losses(
        model, x, noise=eps, gan_weight=kwargs.get("gan_loss_weight", 1.0),
        kl_weight=kwargs.get("embedding_loss_weight", 1e-6),
    )
    c.check("pred", lambda: terms["pred_0"])
    for j in range(len(model.vqvae.outc_ver)):
        c.check(f"pred_hor_{j}", lambda j=j: terms[f"pred_{j + 1}"])
        c.check(f"target_hor_{j}_area", lambda j=j: head_target_area(x, terms[f"pred_{j + 1}"]))
    c.check("kl", lambda: terms["kl"])
    for d in range(1 + len(model.vqvae.outc_ver)):
        for name in ("rec_loss", "gan_loss_raw", "lambda"):
            c.check(f"{name}_{d}", lambda key=f"{name}_{d}": terms[key])
    c.check("generator_loss", lambda: gen)
    c.check("discriminator_loss", lambda: disc)


def _verify_unet(folder, config, c: _Collector):
    unet = _load_module(folder, config)
    k = 0
    while c.has(f"run{k}_x_t"):
        run = f"run{k}_"
        x, t = c.image(run + "x_t"), jnp.asarray(c.inp(run + "t"))
        cond = jnp.asarray(c.inp(run + "cond")) if c.has(run + "cond") else None
        c.check(run + "pos_emb", lambda t=t: sinusoidal_embedding(t, unet.time_embedder.pos_dim))
        c.check(run + "time_emb", lambda t=t: unet.time_embedder(t))
        if cond is not None:
            c.check(run + "cond_emb", lambda cond=cond: unet.cond_embedder(cond))
        c.check(run + "pred", lambda x=x, t=t, cond=cond: unet(x, t, cond))
        k += 1


def _schedule_from(kwargs: dict):
    return make_schedule(
        kwargs.get("schedule_strategy", "cosine"), kwargs.get("timesteps", 1000),
        kwargs.get("beta_start", 1e-4), kwargs.get("beta_end", 0.02),
    )


def _verify_scheduler(folder, config, c: _Collector):
    for variant, kwargs in config.get("variants", {}).items():
        schedule = _schedule_from(kwargs)
        for field in dataclasses.fields(schedule):
            c.check(f"{variant}__{field.name}", lambda s=schedule, f=field.name: getattr(s, f), SCHEDULE_TOL)
        c.check(f"{variant}__timesteps_array", lambda s=schedule: np.arange(s.timesteps), SCHEDULE_TOL)
    for name in list(c.io):
        if m := re.fullmatch(r"ddim_timesteps_(\d+)", name):
            n = int(m.group(1))
            c.check(name, lambda n=n: ddim_timesteps(n), SCHEDULE_TOL)
    paper = _schedule_from(config["variants"]["paper"]) if "paper" in config.get("variants", {}) else make_schedule()
    if c.has("q_sample_x0"):
        t = jnp.asarray(c.inp("q_sample_t"))
        c.check("q_sample_x_t", lambda: q_sample(paper, c.image("q_sample_x0"), t,
                                                 c.image("q_sample_noise")))
        for clip in (False, True):
            c.check(f"estimate_x_0_{'clip' if clip else 'noclip'}", lambda clip=clip: x0_from_eps(
                paper, c.image("q_sample_x_t"), t, c.image("q_sample_noise"), clip=clip))


def _verify_ddim_step(folder, config, c: _Collector):
    schedule = _schedule_from(config["scheduler_kwargs"])
    eps = c.image("eps_pred_const")
    for prefix, clip in (("noclip", False), ("clip", True)):
        if not c.has(f"{prefix}_final"):
            continue
        steps = len(c.inp(f"{prefix}_timesteps"))
        noise = jnp.stack([c.image(f"{prefix}_ddim_noise_step{i}") for i in range(steps - 1)])
        final, trace = ddim_sample(lambda x, t: eps, schedule, c.image("x_start"), num_steps=steps,
                                   clip_x0=clip, step_noise=noise, trace=True)
        c.check(f"{prefix}_timesteps", lambda n=steps: ddim_timesteps(n, schedule.timesteps), SCHEDULE_TOL)
        for i in range(steps):  # one comparison per step: each against its own scale
            c.check(f"{prefix}_step{i}_x0", lambda i=i, tr=trace: tr["x0"][i])
            if i > 0:
                c.check(f"{prefix}_step{i}_input_x_t", lambda i=i, tr=trace: tr["x_t"][i])
        c.check(f"{prefix}_final", lambda out=final: out)


def _sibling_weights(folder: Path, config: dict) -> Path:
    """The sampling golden stores no weights; its config names the state_dict.npz it reuses."""
    if (folder / "state_dict.npz").exists():
        return folder / "state_dict.npz"
    m = re.search(r"(\.\./[\w./-]+\.npz)", config.get("unet_weights", ""))
    if not m:
        raise FileNotFoundError(f"{folder}: no state_dict.npz and no weights file named in config 'unet_weights'")
    return (folder / m.group(1)).resolve()


def _verify_sampling(folder, config, c: _Collector):
    unet = unet_from_reference(config["unet_ctor_kwargs"], nnx.Rngs(0))
    weights = _sibling_weights(folder, config)
    load_state_dict(unet, dict(np.load(weights)), source=str(weights))
    schedule = _schedule_from(config["scheduler_kwargs"])
    clip = bool(config.get("pipeline_kwargs", {}).get("clip_x0", False))
    for k, run in enumerate(config["runs"]):
        p = f"run{k}_"
        x_T = c.image(p + "x_T_init")
        condition = jnp.asarray(c.inp(p + "condition")) if run["condition"] is not None else None
        final, trace = sample_latents(
            unet, schedule, jax.random.key(0), tuple(x_T.shape), condition, num_steps=run["steps"],
            guidance_scale=float(run["guidance_scale"]), clip_x0=clip, x_T=x_T,
            step_noise=c.image(p + "ddim_noise"), trace=True,
        )
        n = x_T.shape[0]
        c.check(p + "t_per_step", lambda tr=trace, n=n: np.repeat(np.asarray(tr["t"])[:, None], n, 1), SCHEDULE_TOL)
        c.check_steps(p + "x_t_per_step", lambda tr=trace: tr["x_t"])
        c.check_steps(p + "x0_per_step", lambda tr=trace: tr["x0"])
        c.check_steps(p + "eps_guided_per_step", lambda tr=trace: tr["eps"])
        c.check(p + "final", lambda out=final: out)


def _verifier(config: dict):
    cls = config.get("class", "")
    if "DiffusionPipeline.sample" in cls:
        return _verify_sampling
    if "DiffusionPipeline.denoise" in cls:
        return _verify_ddim_step
    if cls.endswith("GaussianNoiseScheduler"):
        return _verify_scheduler
    short = reference_class_short_name(cls)
    table = {"VAE": _verify_vae, "VAEGAN": _verify_vaegan, "Discriminator": _verify_discriminator,
             "UNet": _verify_unet}
    if short not in table:
        raise ValueError(f"no verifier for reference class {cls!r}")
    return table[short]


#: Per verifier, groups of output names of which at least one must be compared (ignoring ``_f64`` replicas):
#: what makes a golden of that class worth passing.
MAIN_OUTPUTS: dict[Callable, tuple[tuple[str, ...], ...]] = {
    _verify_vae: (("out",), ("z",), ("kl",), ("decode_of_mean",), ("rec_loss_L1", "rec_loss_MSE")),
    _verify_discriminator: (("logits",),),
    _verify_vaegan: (("generator_loss",), ("discriminator_loss",)),
    _verify_unet: (("run0_pred",),),
    _verify_scheduler: (("paper__alphas_cumprod", "default__alphas_cumprod"),),
    _verify_ddim_step: (("noclip_final", "clip_final"),),
    _verify_sampling: (("run0_final",), ("run0_x_t_per_step",)),
}


def missing_main_outputs(verifier: Callable, compared: set[str]) -> list[str]:
    """The groups of :data:`MAIN_OUTPUTS` of which nothing was compared, as 'a or b' strings."""
    return [" or ".join(group) for group in MAIN_OUTPUTS.get(verifier, ()) if not compared & set(group)]


def verify_folder(folder: str | Path) -> tuple[list[Comparison], list[str]]:
    """(comparisons, recorded arrays that were not compared) for one golden folder."""
    folder = Path(folder)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{folder}: no config.json (is this a golden folder?)")
    config = json.loads(config_path.read_text())
    with np.load(folder / "io.npz") as io_file:
        io = {k: io_file[k] for k in io_file.files}
    kwargs = config.get("ctor_kwargs") or config.get("unet_ctor_kwargs") or {}
    collector = _Collector(io, int(kwargs.get("spatial_dims", 2)))
    verifier = _verifier(config)
    with jax.default_matmul_precision("highest"):
        verifier(folder, config, collector)
    if not collector.results:
        raise ValueError(f"{folder}: none of the recorded outputs could be compared")
    missing = missing_main_outputs(verifier, {r.name for r in collector.results})
    if missing:
        raise ValueError(f"{folder}: io.npz lacks the main outputs of a {config.get('class', '?')} golden: "
                         + "; ".join(missing))
    skipped = sorted(set(io) - collector.used)
    return collector.results, skipped
