"""Training configurations as dataclasses, their JSON form, and the check that a run directory fits.

A configuration is the complete description of a run: ``AutoencoderConfig`` or ``DiffusionConfig``, each
holding a :class:`DataConfig` (what is read), a :class:`RunConfig` (how long, how big, where, how often
things are saved) and the stage's model and loss settings. The command lines fill them from a preset
(:mod:`medfusion_jax.training.presets`) and flags; ``config.json`` beside the checkpoints is
:func:`to_dict` of it, and :func:`from_dict` reads it back (``load_trained`` does).
"""

from __future__ import annotations

import dataclasses
import json
import re
import types
import typing
from collections.abc import Mapping
from typing import Any

DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """What is read: a data set of :data:`medfusion_jax.data.DATASETS` and how its images are made."""

    dataset: str
    data_dir: str | None = None
    image_size: int = 256
    #: Random flips, the reference's RandomHorizontal/VerticalFlip: "", "h", "v" or "hv"; volumes may add
    #: "d" (depth), as the original's 3-D transforms flip every axis.
    flips: str = ""
    #: Items in the split, for the built-in phantoms only (None: the phantom's default).
    num_examples: int | None = None
    #: Decoding processes of the Grain pipeline (0: threads of the training process).
    worker_count: int = 0
    #: ``volume-folder`` only (the original's SimpleDataset3D transforms; None: the default): how a volume
    #: becomes the cube, "resize" (default) or "crop-or-pad"; a voxel spacing (D, H, W) in mm to resample
    #: to first; intensities "zscore" (default, MRI) or "rescale" (to [-1, 1], CT).
    volume_fit: str | None = None
    volume_spacing: tuple[float, float, float] | None = None
    volume_intensity: str | None = None


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """How the loop runs: length, batch, precision, parallelism, and how often it saves and reports."""

    run_dir: str
    seed: int = 0
    #: Images per optimizer step over all devices and hosts.
    batch_size: int = 8
    #: Total optimizer steps; when None, ``epochs`` passes over the data decide.
    steps: int | None = None
    epochs: int | None = None
    #: Compute dtype of the networks; parameters and optimizer state are always float32.
    dtype: str = "float32"
    #: Shard parameters and optimizer state over the devices (FSDP / ZeRO-3 style) instead of replicating.
    fsdp: bool = False
    #: Rematerialise every residual block's activations in the backward pass (less memory, ~1/3 more
    #: compute); the trained values are the same.
    remat: bool = False
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    async_checkpoints: bool = True
    #: Steps between metric records (JSON lines, TensorBoard, progress bar); NaN checks run every step.
    log_every: int = 10
    #: Steps between PNG grids (reconstructions or samples); 0 disables them.
    image_every: int = 1000


@dataclasses.dataclass(frozen=True)
class VAEConfig:
    """Constructor arguments of :class:`medfusion_jax.models.VAE` (in/out channels come from the data)."""

    emb_channels: int = 4
    hid_chs: tuple[int, ...] = (64, 128, 256, 512)
    kernel_sizes: tuple[int, ...] = (3, 3, 3, 3)
    strides: tuple[int, ...] = (1, 2, 2, 2)
    norm_groups: int = 8
    deep_supervision: int = 1
    in_channels: int = 3
    out_channels: int = 3
    #: 2 for images, 3 for volumes (set from the data set).
    spatial_dims: int = 2


@dataclasses.dataclass(frozen=True)
class GANConfig:
    """The VAEGAN stage (spec section 5): one PatchGAN discriminator per autoencoder output."""

    #: GAN terms are active once the step counter exceeds this (-1: from the first batch, the
    #: script's commented VAEGAN block; the class default is 50000).
    start_step: int = -1
    disc_lr: float = 1e-6
    gan_weight: float = 1.0
    #: The reference's counter advances twice per batch (once per optimizer); True counts batches.
    fix_step_counter: bool = False
    disc_hid_chs: tuple[int, ...] = (64, 128, 256, 512)
    disc_norm_groups: int = 8


@dataclasses.dataclass(frozen=True)
class AutoencoderConfig:
    """The autoencoder stage: VAE loss of spec 4.3 (Adam 1e-4), or VAEGAN of spec 5 (Adam 1e-6 twice)."""

    data: DataConfig
    run: RunConfig
    model: VAEConfig = VAEConfig()
    #: "l1" (the class default, and always in VAEGAN) or "mse" (the reference's chest script).
    pixel_loss: str = "l1"
    perceptual_weight: float = 1.0
    kl_weight: float = 1e-6
    lr: float = 1e-4
    #: Linear decay of the (VAE's) learning rate to 0 between these steps, as DiffusionConfig's; None:
    #: constant, as the reference.
    lr_decay_start: int | None = None
    lr_decay_end: int | None = None
    gan: GANConfig | None = None
    #: A trained autoencoder run (or checkpoint) whose weights start this one (the reference's
    #: ``load_pretrained`` before VAEGAN fine-tuning).
    init_from: str | None = None
    stage: str = "autoencoder"


@dataclasses.dataclass(frozen=True)
class UNetConfig:
    """Constructor arguments of :class:`medfusion_jax.models.UNet` (channels and classes come from the
    autoencoder and the data)."""

    hid_chs: tuple[int, ...] = (256, 256, 512, 1024)
    kernel_sizes: tuple[int, ...] = (3, 3, 3, 3)
    strides: tuple[int, ...] = (1, 2, 2, 2)
    norm_groups: int = 32
    time_emb_dim: int = 1024
    num_res_blocks: int = 2
    #: 2 for images, 3 for volumes (set from the autoencoder's).
    spatial_dims: int = 2


@dataclasses.dataclass(frozen=True)
class ScheduleConfig:
    """The noise schedule (spec 7.1): scaled-linear 0.002 -> 0.02 over 1000 steps."""

    strategy: str = "scaled_linear"
    timesteps: int = 1000
    beta_start: float = 0.002
    beta_end: float = 0.02


@dataclasses.dataclass(frozen=True)
class DiffusionConfig:
    """The diffusion stage (spec 7.2): eps prediction, L1, AdamW 1e-4 / wd 0.01, CFG dropout 0.5 per batch."""

    data: DataConfig
    run: RunConfig
    #: The trained autoencoder: a run directory of ``train.autoencoder`` or one of its checkpoints.
    autoencoder: str
    model: UNetConfig = UNetConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    lr: float = 1e-4
    #: Linear decay of the learning rate from ``lr`` at step ``lr_decay_start`` to 0 at step
    #: ``lr_decay_end`` (then 0); None: constant, as the reference. A fixed-length run gains from the
    #: decay what a constant rate leaves as noise in the last weights (an option, not the reference).
    lr_decay_start: int | None = None
    lr_decay_end: int | None = None
    weight_decay: float = 0.01
    cfg_dropout: float = 0.5
    per_sample_cfg_dropout: bool = False
    #: Encode the data set once (posterior mean and log-variance) and sample latents from the cache.
    cache_latents: bool = False
    #: Exponential moving average of the weights (the reference's unused EMAModel: decay
    #: min(ema_max_decay, 1 - (1 + step)^(-2/3))); used for sampling when present.
    ema: bool = False
    ema_max_decay: float = 0.9999
    #: Preview grids: DDIM steps, guidance scale, images per class.
    sample_steps: int = 150
    guidance_scale: float = 1.0
    samples_per_class: int = 4
    stage: str = "diffusion"


Config = AutoencoderConfig | DiffusionConfig
STAGES: dict[str, type] = {"autoencoder": AutoencoderConfig, "diffusion": DiffusionConfig}

#: Keys that may change when a run is resumed: they change how long and how often, not what is trained.
RESUMABLE_KEYS = frozenset({
    "run.run_dir", "run.steps", "run.epochs", "run.checkpoint_every", "run.keep_checkpoints",
    "run.async_checkpoints", "run.log_every", "run.image_every", "run.fsdp", "run.remat", "data.data_dir",
    "data.worker_count", "sample_steps", "guidance_scale", "samples_per_class",
})


class ConfigError(ValueError):
    """A setting that cannot work. The message names configuration fields as `` `run.batch_size` ``;
    ``str()`` shows the field paths, :meth:`named` the names a caller knows them by (the command lines:
    their flags, :func:`medfusion_jax.training.flags.flag_names`)."""

    def __init__(self, message: str):
        super().__init__(message)
        self.template = message

    def named(self, names: Mapping[str, str]) -> str:
        return re.sub(r"`([\w.]+)`", lambda m: names.get(m.group(1), m.group(1)), self.template)

    def __str__(self) -> str:
        return self.named({})


def validate(config: Config) -> None:
    """Raise :class:`ConfigError` naming the fields of settings that cannot work."""
    run, data = config.run, config.data
    checks = [
        (run.batch_size > 0, f"`run.batch_size` must be positive, got {run.batch_size}"),
        (run.steps is None or run.steps > 0, f"`run.steps` must be positive, got {run.steps}"),
        (run.epochs is None or run.epochs > 0, f"`run.epochs` must be positive, got {run.epochs}"),
        (run.steps is not None or run.epochs is not None, "give `run.steps` or `run.epochs`"),
        (run.dtype in DTYPES, f"`run.dtype` must be one of {DTYPES}, got {run.dtype!r}"),
        (run.checkpoint_every > 0, f"`run.checkpoint_every` must be positive, got {run.checkpoint_every}"),
        (run.keep_checkpoints > 0, f"`run.keep_checkpoints` must be positive, got {run.keep_checkpoints}"),
        (run.log_every > 0, f"`run.log_every` must be positive, got {run.log_every}"),
        (run.image_every >= 0, f"`run.image_every` must be >= 0, got {run.image_every}"),
        (set(data.flips) <= {"h", "v", "d"}, f"`data.flips` must be '', 'h', 'v' or 'hv' (volumes also 'd'), "
                                             f"got {data.flips!r}"),
        ("d" not in data.flips or config.model.spatial_dims == 3,
         f"`data.flips` {data.flips!r}: 'd' (depth) flips volumes only"),
        (data.image_size > 0, f"`data.image_size` must be positive, got {data.image_size}"),
        (data.volume_fit in (None, "resize", "crop-or-pad"),
         f"`data.volume_fit` must be 'resize' or 'crop-or-pad', got {data.volume_fit!r}"),
        (data.volume_intensity in (None, "zscore", "rescale"),
         f"`data.volume_intensity` must be 'zscore' or 'rescale', got {data.volume_intensity!r}"),
        (data.volume_spacing is None or (len(data.volume_spacing) == 3 and min(data.volume_spacing) > 0),
         f"`data.volume_spacing` must be three positive millimetre values D,H,W, got {data.volume_spacing}"),
        (data.dataset == "volume-folder" or (data.volume_fit, data.volume_spacing, data.volume_intensity)
         == (None, None, None), f"`data.volume_fit`, `data.volume_spacing` and `data.volume_intensity` apply to "
                                f"`data.dataset` volume-folder only, not {data.dataset}"),
        (config.lr > 0, f"`lr` must be positive, got {config.lr}"),
        ((config.lr_decay_start is None) == (config.lr_decay_end is None),
         "`lr_decay_start` and `lr_decay_end` go together"),
        (None in (config.lr_decay_start, config.lr_decay_end) or 0 <= config.lr_decay_start < config.lr_decay_end,
         f"`lr_decay_start` ({config.lr_decay_start}) must be >= 0 and below `lr_decay_end` ({config.lr_decay_end})"),
    ]
    if isinstance(config, AutoencoderConfig):
        down = 1
        for s in config.model.strides:
            down *= s
        checks += [
            (config.pixel_loss in ("l1", "mse"), f"`pixel_loss` must be 'l1' or 'mse', got {config.pixel_loss!r}"),
            (data.image_size % down == 0, f"`data.image_size` {data.image_size} must be divisible by {down} "
                                          "(the autoencoder's downsampling)"),
            (all(c % config.model.norm_groups == 0 for c in config.model.hid_chs),
             f"`model.hid_chs` {config.model.hid_chs} must be multiples of the {config.model.norm_groups} norm "
             "groups (`model.norm_groups`)"),
        ]
        smallest_output = data.image_size // 2 ** config.model.deep_supervision
        checks.append((config.model.spatial_dims == 2 or not config.perceptual_weight,
                       "the perceptual term (LPIPS on 2-D images) is not available for volumes: use "
                       "`perceptual_weight` 0"))
        checks.append((not config.perceptual_weight or smallest_output >= 16,
                       f"`data.image_size` {data.image_size}: the perceptual term needs outputs of at least "
                       f"16x16 pixels, and the deep-supervision head's are {smallest_output}x{smallest_output} "
                       "(use larger images or `perceptual_weight` 0)"))
        if config.gan is not None:
            checks += [
                (config.pixel_loss == "l1", "`pixel_loss` mse cannot be used with the GAN stage: VAEGAN's "
                                            "reconstruction term is L1 (spec 5.1)"),
                (config.gan.disc_lr > 0, f"`gan.disc_lr` must be positive, got {config.gan.disc_lr}"),
            ]
    else:
        checks += [
            (0.0 <= config.cfg_dropout <= 1.0, f"`cfg_dropout` must be in [0, 1], got {config.cfg_dropout}"),
            (0.0 < config.ema_max_decay < 1.0, f"`ema_max_decay` must be in (0, 1), got {config.ema_max_decay}"),
            (all(c % config.model.norm_groups == 0 for c in config.model.hid_chs),
             f"`model.hid_chs` {config.model.hid_chs} must be multiples of the {config.model.norm_groups} norm "
             "groups (`model.norm_groups`)"),
            (not (config.cache_latents and data.flips), "`cache_latents` encodes every image once, so it "
                                                        "cannot be combined with random `data.flips`"),
            (config.sample_steps >= 1, f"`sample_steps` must be >= 1, got {config.sample_steps}"),
        ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def to_dict(config: Config) -> dict[str, Any]:
    """The JSON form (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def _build(cls: type, values: dict[str, Any]) -> Any:
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for field in dataclasses.fields(cls):
        if field.name not in values:
            continue
        kwargs[field.name] = _convert(hints[field.name], values[field.name])
    unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown keys {sorted(unknown)}")
    return cls(**kwargs)


def _convert(hint: Any, value: Any) -> Any:
    if value is None:
        return None
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union \
        else (hint,)
    for option in options:
        if dataclasses.is_dataclass(option):
            return _build(option, value)
        if typing.get_origin(option) is tuple:
            return tuple(value)
    return value


def from_dict(values: dict[str, Any]) -> Config:
    """The configuration of a ``config.json`` (``stage`` picks the class)."""
    stage = values.get("stage")
    if stage not in STAGES:
        raise ValueError(f"config has unknown stage {stage!r}; expected one of {sorted(STAGES)}")
    return _build(STAGES[stage], values)


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"run": {"seed": 0}} -> {"run.seed": 0}."""
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def differing_keys(saved: dict[str, Any], current: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """{key: (saved, current)} for every key that differs, except those a resumed run may change."""
    a, b = flatten(saved), flatten(current)
    return {
        key: (a.get(key), b.get(key))
        for key in sorted(set(a) | set(b))
        if key not in RESUMABLE_KEYS and a.get(key) != b.get(key)
    }
