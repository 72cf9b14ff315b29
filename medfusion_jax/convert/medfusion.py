"""Convert the original Medfusion's PyTorch-Lightning checkpoints into run directories of this package.

    python -m medfusion_jax.convert medfusion --autoencoder VAE.ckpt --diffusion PIPELINE.ckpt --out DIR \\
        [--dataset chexpert] [--class-names a,b] [--image-size 256]

Inputs (read without torch, see :mod:`medfusion_jax.convert.checkpoint`):

* ``--autoencoder``: the Lightning checkpoint of the reference ``VAE`` (keys at the top level, plus the
  frozen LPIPS ``perceiver.*`` which is dropped) or ``VAEGAN`` (the VAE under ``vqvae.``; the
  discriminators are not converted). ``hyper_parameters`` holds the constructor arguments.
* ``--diffusion``: the Lightning checkpoint of ``DiffusionPipeline``. Its state_dict holds the UNet under
  ``noise_estimator.``, the scheduler buffers under ``noise_scheduler.``, with ``use_ema`` the averaged
  UNet under ``ema_model.averaged_model.``, and usually a copy of the autoencoder under
  ``latent_embedder.``, which must equal ``--autoencoder`` (the pipeline was trained on it).
  ``hyper_parameters`` gives ``noise_estimator_kwargs`` (the UNet), ``noise_scheduler_kwargs`` (the
  schedule; absent keys take ``GaussianNoiseScheduler``'s defaults: cosine, 1e-4 -> 0.02, 1000 steps),
  ``estimator_objective``, ``clip_x0``, ``use_ema`` ... (absent keys take ``DiffusionPipeline``'s
  defaults; only noise prediction without variance or self-conditioning is supported).

Output: the layout of a training run (:mod:`medfusion_jax.run_folder`), so that
``load_trained(DIR)`` and ``python -m eval.sample --checkpoint DIR`` work:

* with ``--diffusion``, a diffusion run: ``config.json`` (a ``DiffusionConfig``; the schedule from the
  scheduler kwargs, ``ema`` when the pipeline kept one), ``model.json`` (UNet and VAE constructor
  arguments, class names, the VAE marked frozen as training does), ``checkpoints/0/params`` (and
  ``checkpoints/0/ema``) with the UNet weights, ``autoencoder/params`` with the VAE weights;
* without it, an autoencoder run: ``checkpoints/0/params`` with the VAE weights.

``model.json`` also records ``sampling`` (``clip_x0`` of the pipeline, which ``eval.sample`` honours) and
``converted_from`` (the source files and their Lightning step counters). Class names come from
``--class-names``, else from ``--dataset``'s registry entry, else ``class_<i>``; the image size from
``--image-size``, else the data set's, else 256.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx

from medfusion_jax import config as config_lib
from medfusion_jax.convert.checkpoint import select_weights
from medfusion_jax.convert.reference import (
    UNET_DEFAULTS,
    VAE_DEFAULTS,
    build_from_reference,
    norm_groups_from_reference,
    take_kwargs,
)
from medfusion_jax.convert.state_dict import load_state_dict
from medfusion_jax.diffusion.schedule import schedule_from_config
from medfusion_jax.run_folder import (
    AUTOENCODER_COPY,
    CHECKPOINTS,
    CONFIG_JSON,
    MODEL_JSON,
    MODULE_CLASSES,
    build_abstract,
    save_params,
    split_params,
    write_config,
    write_model_json,
)
from medfusion_jax.torch_file import load_torch_file

UNET_PREFIX = "noise_estimator."
EMA_PREFIX = "ema_model.averaged_model."
LATENT_EMBEDDER_PREFIX = "latent_embedder."
SCHEDULER_PREFIX = "noise_scheduler."
VAEGAN_PREFIX = "vqvae."
#: Step directory of the converted weights.
STEP = 0

# Defaults of the reference classes for arguments a checkpoint may leave out.
_SCHEDULER_DEFAULTS = dict(timesteps=1000, T=None, schedule_strategy="cosine", beta_start=1e-4, beta_end=0.02,
                           betas=None)
_PIPELINE_DEFAULTS = dict(estimator_objective="x_T", estimate_variance=False, use_self_conditioning=False,
                          clip_x0=True, use_ema=False, do_input_centering=True)


class ConversionError(ValueError):
    """A checkpoint cannot be converted; the message names the file and the reason."""


@dataclasses.dataclass
class Converted:
    """One converted network: constructor kwargs for ``MODULE_CLASSES[cls]`` and its parameter tree."""

    cls: str
    kwargs: dict[str, Any]
    params: dict
    source: str


# -- reading -----------------------------------------------------------------------------------------


def _read_lightning(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, Any], dict[str, Any]]:
    """(state_dict, hyper_parameters, other top-level entries such as global_step) of a checkpoint."""
    obj = load_torch_file(path)
    if not isinstance(obj, Mapping) or not isinstance(obj.get("state_dict"), Mapping):
        raise ConversionError(f"{path}: not a PyTorch-Lightning checkpoint (a dict with 'state_dict' and "
                              "'hyper_parameters')")
    state = {k: v for k, v in obj["state_dict"].items() if isinstance(v, np.ndarray)}
    hparams = dict(obj.get("hyper_parameters") or {})
    meta = {k: obj[k] for k in ("epoch", "global_step", "pytorch-lightning_version") if k in obj}
    return state, hparams, meta


def _class_name(value: Any) -> str | None:
    """Dotted name of a class stored in hyper_parameters (a pickled global or a string)."""
    if value is None:
        return None
    return str(getattr(value, "qualified_name", value))


def _load(path: str | Path, cls: str, kwargs: dict[str, Any], weights: Mapping[str, np.ndarray], what: str) -> dict:
    """The parameter tree of ``MODULE_CLASSES[cls](**kwargs)`` filled from a PyTorch-layout state_dict.

    The module is built from the same kwargs that ``load_trained`` will use (shape-only, nothing
    initialised), so a structure our kwargs do not reproduce fails here, naming the keys.
    """
    module = build_abstract(MODULE_CLASSES[cls], kwargs)
    load_state_dict(module, weights, source=f"{path} ({what})")
    params = split_params(module)[1]
    abstract = [leaf for leaf in jax.tree.leaves(params) if isinstance(leaf, jax.ShapeDtypeStruct)]
    if abstract:  # every leaf is a parameter, so load_state_dict filled them all; guard against surprises
        raise ConversionError(f"{path}: {len(abstract)} {what} arrays were not filled by the checkpoint")
    return params


def vae_kwargs_from_reference(hparams: Mapping[str, Any]) -> dict[str, Any]:
    """Our ``VAE`` kwargs (as ``model.json`` stores them) for the reference ``VAE``/``VAEGAN`` kwargs."""
    nnx.eval_shape(lambda: build_from_reference("VAE", hparams))  # refuses unsupported options, by name
    a = take_kwargs(hparams, VAE_DEFAULTS, "VAE")
    depth = len(a["hid_chs"])
    heads = depth - 1 if a["deep_supervision"] is True else int(a["deep_supervision"] or 0)
    return dict(emb_channels=int(a["emb_channels"]), hid_chs=[int(c) for c in a["hid_chs"]],
                kernel_sizes=[int(k) for k in a["kernel_sizes"]], strides=[int(s) for s in a["strides"]],
                norm_groups=norm_groups_from_reference(a["norm_name"], 8), deep_supervision=heads,
                in_channels=int(a["in_channels"]), out_channels=int(a["out_channels"]))


def unet_kwargs_from_reference(hparams: Mapping[str, Any]) -> dict[str, Any]:
    """Our ``UNet`` kwargs for the reference ``unet2.UNet`` kwargs (``noise_estimator_kwargs``)."""
    unet = nnx.eval_shape(lambda: build_from_reference("UNet", hparams))
    a = take_kwargs(hparams, UNET_DEFAULTS, "UNet")
    time_dim = int((a["time_embedder_kwargs"] or {}).get("emb_dim", 64))
    kwargs = dict(hid_chs=[int(c) for c in a["hid_chs"]], kernel_sizes=[int(k) for k in a["kernel_sizes"]],
                  strides=[int(s) for s in a["strides"]], norm_groups=norm_groups_from_reference(a["norm_name"], 32),
                  time_emb_dim=time_dim, num_res_blocks=int(a["num_res_blocks"]), in_ch=int(a["in_ch"]),
                  out_ch=int(a["out_ch"]), num_classes=unet.num_classes)
    if unet.time_embedder.pos_dim != time_dim // 4:
        kwargs["pos_emb_dim"] = int(unet.time_embedder.pos_dim)
    return kwargs


def read_autoencoder(path: str | Path) -> tuple[Converted, dict[str, np.ndarray], dict[str, Any]]:
    """(the VAE, its PyTorch-layout weights, the checkpoint's hyper_parameters and step counters)."""
    state, hparams, meta = _read_lightning(path)
    if not hparams:
        raise ConversionError(f"{path}: the checkpoint has no hyper_parameters (the VAE's constructor arguments)")
    is_vaegan = any(k.startswith(VAEGAN_PREFIX) for k in state)
    prefix = VAEGAN_PREFIX if is_vaegan else ""
    weights = select_weights(state, prefix)
    if is_vaegan:  # the discriminators live beside vqvae.*; they are not part of the autoencoder
        weights = {k: v for k, v in weights.items() if not k.startswith("discriminator.")}
    try:
        kwargs = vae_kwargs_from_reference(hparams)
    except ValueError as err:
        raise ConversionError(f"{path}: {err}") from None
    what = "VAEGAN's autoencoder, keys under 'vqvae.'" if is_vaegan else "VAE"
    params = _load(path, "VAE", kwargs, weights, what)
    info = dict(path=str(Path(path).absolute()), reference_class="VAEGAN" if is_vaegan else "VAE", **meta)
    return Converted("VAE", kwargs, params, str(path)), weights, {"hparams": hparams, "info": info}


def schedule_from_reference(kwargs: Mapping[str, Any], path: str | Path) -> config_lib.ScheduleConfig:
    """The schedule of ``noise_scheduler_kwargs`` (absent keys: ``GaussianNoiseScheduler``'s defaults)."""
    unknown = sorted(set(kwargs) - set(_SCHEDULER_DEFAULTS))
    if unknown:
        raise ConversionError(f"{path}: noise_scheduler_kwargs has unsupported arguments {unknown}")
    a = {**_SCHEDULER_DEFAULTS, **kwargs}
    if a["betas"] is not None:
        raise ConversionError(f"{path}: noise_scheduler_kwargs gives explicit 'betas', which is not supported")
    if a["T"] is not None and int(a["T"]) != int(a["timesteps"]):
        raise ConversionError(f"{path}: noise_scheduler_kwargs T={a['T']} differs from timesteps={a['timesteps']}, "
                              "which is not supported")
    return config_lib.ScheduleConfig(strategy=str(a["schedule_strategy"]), timesteps=int(a["timesteps"]),
                                      beta_start=float(a["beta_start"]), beta_end=float(a["beta_end"]))


def _check_scheduler_buffers(state: Mapping[str, np.ndarray], schedule: config_lib.ScheduleConfig, path) -> None:
    """The stored scheduler buffers (when present) must be those the kwargs give."""
    ours = schedule_from_config(schedule)
    for name in ("betas", "alphas_cumprod"):
        stored = state.get(SCHEDULER_PREFIX + name)
        if stored is None:
            continue
        mine = np.asarray(getattr(ours, name))
        if stored.shape != mine.shape or not np.allclose(stored, mine, rtol=1e-5, atol=1e-7):
            raise ConversionError(f"{path}: the stored {SCHEDULER_PREFIX}{name} does not match the schedule of "
                                  f"noise_scheduler_kwargs ({dataclasses.asdict(schedule)})")


def _check_pipeline_settings(hparams: Mapping[str, Any], path) -> dict[str, Any]:
    a = {**_PIPELINE_DEFAULTS, **{k: hparams[k] for k in _PIPELINE_DEFAULTS if k in hparams}}
    if a["estimator_objective"] != "x_T":
        raise ConversionError(f"{path}: estimator_objective={a['estimator_objective']!r} is not supported "
                              "(only 'x_T', noise prediction, as every Medfusion configuration uses)")
    for flag in ("estimate_variance", "use_self_conditioning"):
        if a[flag]:
            raise ConversionError(f"{path}: {flag}=True is not supported (every Medfusion configuration sets it False)")
    estimator = _class_name(hparams.get("noise_estimator"))
    if estimator is not None:
        module, _, name = estimator.rpartition(".")
        if name != "UNet" or module.rsplit(".", 1)[-1] == "unet":
            raise ConversionError(f"{path}: noise_estimator {estimator} is not supported (only unet2.UNet, "
                                  "exported as medical_diffusion.models.estimators.UNet)")
    scheduler = _class_name(hparams.get("noise_scheduler"))
    if scheduler is not None and scheduler.rsplit(".", 1)[-1] != "GaussianNoiseScheduler":
        raise ConversionError(f"{path}: noise_scheduler {scheduler} is not supported (only GaussianNoiseScheduler)")
    return a


def _compare_latent_embedder(state: Mapping[str, np.ndarray], vae_weights: Mapping[str, np.ndarray],
                             pipeline: str | Path, autoencoder: str | Path) -> bool:
    """True when the pipeline stores a copy of the autoencoder; raises when that copy differs."""
    embedded = select_weights(state, LATENT_EMBEDDER_PREFIX)
    if not embedded:
        return False
    if any(k.startswith(VAEGAN_PREFIX) for k in embedded):
        embedded = {k: v for k, v in select_weights(embedded, VAEGAN_PREFIX).items()
                    if not k.startswith("discriminator.")}
    missing = sorted(set(vae_weights) - set(embedded))
    extra = sorted(set(embedded) - set(vae_weights))
    differing = sorted(k for k in set(vae_weights) & set(embedded)
                       if vae_weights[k].shape != embedded[k].shape or not np.array_equal(vae_weights[k], embedded[k]))
    if missing or extra or differing:
        detail = "; ".join(f"{label} ({len(keys)}): {', '.join(keys[:8])}{' ...' if len(keys) > 8 else ''}"
                           for label, keys in (("differing keys", differing), ("keys only in --autoencoder", missing),
                                               ("keys only in the pipeline", extra)) if keys)
        raise ConversionError(f"{pipeline}: its latent_embedder weights are not those of --autoencoder {autoencoder} "
                              f"({detail}); give the autoencoder checkpoint the pipeline was trained with")
    return True


def read_pipeline(path: str | Path, vae_weights: Mapping[str, np.ndarray], autoencoder: str | Path) -> dict[str, Any]:
    """The UNet (raw and EMA), schedule and sampling settings of a ``DiffusionPipeline`` checkpoint."""
    state, hparams, meta = _read_lightning(path)
    if "noise_estimator_kwargs" not in hparams:
        raise ConversionError(f"{path}: hyper_parameters has no 'noise_estimator_kwargs' (is this a "
                              "DiffusionPipeline checkpoint?)")
    settings = _check_pipeline_settings(hparams, path)
    try:
        unet_kwargs = unet_kwargs_from_reference(dict(hparams["noise_estimator_kwargs"]))
    except ValueError as err:
        raise ConversionError(f"{path}: noise_estimator_kwargs: {err}") from None
    schedule = schedule_from_reference(dict(hparams.get("noise_scheduler_kwargs") or {}), path)
    _check_scheduler_buffers(state, schedule, path)
    params = _load(path, "UNet", unet_kwargs, select_weights(state, UNET_PREFIX),
                   f"UNet, keys under '{UNET_PREFIX}'")
    ema = None
    if settings["use_ema"]:
        ema_weights = select_weights(state, EMA_PREFIX)
        if not ema_weights:
            raise ConversionError(f"{path}: use_ema=True but the state_dict has no '{EMA_PREFIX}*' keys")
        ema = _load(path, "UNet", unet_kwargs, ema_weights, f"EMA UNet, keys under '{EMA_PREFIX}'")
    embedded = _compare_latent_embedder(state, vae_weights, path, autoencoder)
    info = dict(path=str(Path(path).absolute()), latent_embedder_checked=embedded,
                settings={k: settings[k] for k in _PIPELINE_DEFAULTS}, **meta)
    return dict(unet=Converted("UNet", unet_kwargs, params, str(path)), ema=ema, schedule=schedule,
                clip_x0=bool(settings["clip_x0"]), info=info, hparams=hparams)


# -- writing -----------------------------------------------------------------------------------------


def class_names_for(num_classes: int | None, class_names: Sequence[str] | None, dataset: str | None,
                    *, has_unet: bool = True) -> list[str]:
    """--class-names, else the data set's, else class_<i>.

    ``num_classes``: the UNet's (None: unconditional, which has no class names). Without a UNet
    (``has_unet`` False, an autoencoder run) the names are only recorded, so any number is accepted.
    """
    if has_unet and num_classes is None:
        if class_names:
            raise ConversionError("--class-names: the UNet is unconditional (it has no label embedding)")
        return []
    if class_names:
        names = [str(n) for n in class_names]
        if has_unet and len(names) != num_classes:
            raise ConversionError(f"--class-names gives {len(names)} names but the UNet has {num_classes} classes")
        return names
    if dataset is not None:
        from medfusion_jax.data.registry import get_info

        names = list(get_info(dataset).class_names)
        if has_unet and names and len(names) != num_classes:
            raise ConversionError(f"--dataset {dataset} has {len(names)} classes ({', '.join(names)}) but the UNet "
                                  f"has {num_classes}; give --class-names")
        if names or not has_unet:
            return names
    return [f"class_{i}" for i in range(num_classes)] if has_unet else []


def _image_size(image_size: int | None, dataset: str | None) -> int:
    if image_size is not None:
        return int(image_size)
    if dataset is not None:
        from medfusion_jax.data.registry import get_info

        return int(get_info(dataset).image_size)
    return 256


def _prepare_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ConversionError(f"--out {out}: exists and is not a directory")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise ConversionError(f"--out {out}: not empty; choose another directory or pass --overwrite")
        for name in (CONFIG_JSON, MODEL_JSON):
            (out / name).unlink(missing_ok=True)
        for name in (CHECKPOINTS, AUTOENCODER_COPY):
            shutil.rmtree(out / name, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)


def _add_to_model_json(out: Path, **entries: Any) -> None:
    path = out / MODEL_JSON
    payload = json.loads(path.read_text())
    payload.update(entries)
    path.write_text(json.dumps(payload, indent=1) + "\n")


def _jsonable(value: Any) -> Any:
    """hyper_parameters with pickled class references as their dotted names."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, np.ndarray):
        return value.tolist() if value.size <= 16 else f"<array {value.shape}>"
    return _class_name(value)


def convert_medfusion(
    autoencoder: str | Path,
    out: str | Path,
    *,
    diffusion: str | Path | None = None,
    dataset: str | None = None,
    class_names: Sequence[str] | None = None,
    image_size: int | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``out`` as a run directory holding the converted networks (see the module docstring)."""
    out = Path(out).absolute()
    if dataset is not None:
        from medfusion_jax.data.registry import DATASETS

        if dataset not in DATASETS:
            raise ConversionError(f"--dataset {dataset!r}: unknown; expected one of {sorted(DATASETS)}")
    vae, vae_weights, vae_meta = read_autoencoder(autoencoder)
    pipeline = read_pipeline(diffusion, vae_weights, autoencoder) if diffusion is not None else None
    num_classes = pipeline["unet"].kwargs["num_classes"] if pipeline else None
    names = class_names_for(num_classes, class_names, dataset, has_unet=pipeline is not None)
    size = _image_size(image_size, dataset)
    down = int(np.prod(vae.kwargs["strides"]))
    if size % down:
        raise ConversionError(f"--image-size {size} is not divisible by the autoencoder's downsampling {down}")
    data = config_lib.DataConfig(dataset=dataset or "folder", image_size=size)
    run = config_lib.RunConfig(run_dir=str(out))
    converted_from = {"autoencoder": vae_meta["info"],
                      "autoencoder_hyper_parameters": _jsonable(vae_meta["hparams"])}
    _prepare_out(out, overwrite)
    if pipeline is None:
        hp = vae_meta["hparams"]
        loss = (_class_name(hp.get("loss")) or "").rsplit(".", 1)[-1]
        config = config_lib.AutoencoderConfig(
            data=data, run=run, model=config_lib.VAEConfig(**{k: tuple(v) if isinstance(v, list) else v
                                                               for k, v in vae.kwargs.items()}),
            pixel_loss="mse" if loss == "MSELoss" else "l1",
            kl_weight=float(hp.get("embedding_loss_weight", 1e-6)))
        save_params(out / CHECKPOINTS / str(STEP) / "params", {"vae": vae.params})
        write_config(config, out)
        write_model_json(out, {"vae": {"class": "VAE", "kwargs": vae.kwargs}}, tuple(names))
        _add_to_model_json(out, converted_from=converted_from)
        return out

    unet = pipeline["unet"]
    k = unet.kwargs
    model = config_lib.UNetConfig(hid_chs=tuple(k["hid_chs"]), kernel_sizes=tuple(k["kernel_sizes"]),
                                  strides=tuple(k["strides"]), norm_groups=k["norm_groups"],
                                  time_emb_dim=k["time_emb_dim"], num_res_blocks=k["num_res_blocks"])
    hp = pipeline["hparams"]
    config = config_lib.DiffusionConfig(
        data=data, run=run, autoencoder=str(Path(autoencoder).absolute()), model=model,
        schedule=pipeline["schedule"], ema=pipeline["ema"] is not None,
        # The reference's default when the checkpoint does not record it: the same as ours (0.5).
        cfg_dropout=float(hp.get("classifier_free_guidance_dropout", config_lib.DiffusionConfig.cfg_dropout)))
    step_dir = out / CHECKPOINTS / str(STEP)
    save_params(step_dir / "params", {"unet": unet.params})
    if pipeline["ema"] is not None:
        save_params(step_dir / "ema", {"unet": pipeline["ema"]})
    save_params(out / AUTOENCODER_COPY / "params", vae.params)
    write_config(config, out)
    modules = {"unet": {"class": "UNet", "kwargs": unet.kwargs}, "vae": {"class": "VAE", "kwargs": vae.kwargs}}
    write_model_json(out, modules, tuple(names), frozen={"vae": f"{AUTOENCODER_COPY}/params"})
    converted_from["diffusion"] = pipeline["info"]
    converted_from["diffusion_hyper_parameters"] = _jsonable(hp)
    _add_to_model_json(out, sampling={"clip_x0": pipeline["clip_x0"]}, converted_from=converted_from)
    return out
