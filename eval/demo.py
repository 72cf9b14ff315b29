"""The whole Medfusion pipeline on one data set, end to end, with a report: ``make demo`` runs this.

    python -m eval.demo                                   # phantom-cxr at 64x64, ~25-46 min on 2 CPU cores
    python -m eval.demo --dataset phantom-fundus          # or phantom-histo; runs/demo-<dataset>
    python -m eval.demo --tiny --out /tmp/smoke           # seconds-sized smoke run of every stage
    python -m eval.demo --dataset phantom-brain           # volumes: 32^3 brain MRI phantom, under 30 min

Volumes (a 3-D data set such as ``phantom-brain``) go through the same stages: the sets are scored on
2-D slices (each volume's three orthogonal mid-slices through the FID Inception: no 3-D feature
network's weights ship in a package), pooled over the planes and per plane; volumes are exported as
NIfTI; the reconstruction metrics are 3-D (SSIM, MSE; MS-SSIM where the volume is large enough); the
memorisation audit compares whole volumes; the report shows orthogonal mid-slices.

Stages (each calls the library function behind the project's command of that name, with the
configuration that command would build: ``train.autoencoder``'s ``run_autoencoder`` on the preset's
configuration, ``eval.sample``'s ``sample_checkpoint``, and so on; no command runs another):

1. ``train.autoencoder`` with the data set's preset (for the phantoms: 4x compression to a 16x16
   latent with as many latent values as image values, no VGG term, Adam 1e-3; see the report's
   "Settings that differ from the paper" for every value and why);
2. ``train.diffusion`` on cached latents, a checkpoint at each of ``--fid-points`` evenly spaced steps;
3. references, scored exactly like the samples and at the same sizes: a second held-out real split
   (``validation``, disjoint from the training and test splits) against the test split, the best any
   generator can score at this sample size; and the autoencoder's reconstructions of those same
   images, what the frozen autoencoder allows;
4. ``eval.sample`` at every checkpoint (``--num-per-class`` images per class, ``--sample-steps`` DDIM
   steps) and FID, KID (mean ± std over subsets) and precision/recall (k = 3) against
   ``--real-examples`` held-out test images, overall and per class;
5. the data set's measured feature (phantoms: cardiothoracic ratio, cup-to-disc ratio, lymphocyte
   area fraction) on every generated and real image: conditioning accuracy, and per class the
   Wasserstein-1 distance and Kolmogorov–Smirnov statistic of generated against real values;
6. ``eval.autoencoder`` (MS-SSIM, MSE, LPIPS) and ``eval.memorization`` (nearest training images);
7. ``OUT/report.md`` and ``OUT/report.html``.

Run again with the same arguments, it continues where it stopped: training resumes from its last
checkpoint, sampling writes only missing images, finished scores are kept (delete ``OUT/scores`` to
recompute them).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

from medfusion_jax import command
from medfusion_jax.command import EXIT_FAILED, EXIT_INTERRUPTED, CommandError
from medfusion_jax.config import AutoencoderConfig, DiffusionConfig
from medfusion_jax.data import DATASETS, get_info, make_dataset, normalize
from medfusion_jax.evaluation.feature_sets import (
    FeatureSet,
    folder_feature_set,
    load_feature_set,
    volume_feature_set,
)
from medfusion_jax.evaluation.image_scores import ImageScores, score_per_class
from medfusion_jax.evaluation.measurements import ClassMeasurement, compare_classes, measure
from medfusion_jax.evaluation.memorization import audit_folders
from medfusion_jax.images import (
    NIFTI_SUFFIX,
    PLANES,
    list_items,
    read_json,
    save_png,
    write_json_atomic,
    write_nifti_atomic,
)
from medfusion_jax.training.flags import int_tuple
from medfusion_jax.training.loop import NonFiniteLossError, TrainResult
from medfusion_jax.training.presets import autoencoder_config, diffusion_config, with_channels
from medfusion_jax.training.stages import run_autoencoder, run_diffusion
from medfusion_jax.workflows.autoencoder_quality import evaluate_autoencoder
from medfusion_jax.workflows.sampling import SampleRequest, sample_checkpoint

# (defaults, --tiny) of every size knob.
SIZES = {
    "image_size": (64, 32),
    "train_examples": (1000, 16),
    "ae_steps": (2000, 3),
    "ae_hid_chs": (None, "8,8,8"),
    # phantom-cxr, 300 samples against 500 test images: precision 0.46 / 0.50 (two sample seeds) after 5400
    # steps, 0.52 / 0.55 after 7200; recall ~0.30 either way.
    "diffusion_steps": (7200, 4),
    "diffusion_batch_size": (16, 8),
    "unet_hid_chs": (None, "16,16,32,32"),
    "fid_points": (3, 2),
    "num_per_class": (150, 6),
    "real_examples": (500, 12),
    "sample_steps": (50, 3),
    "ae_eval_examples": (200, 8),
}
#: (defaults, --tiny) that differ for volumes (3-D data sets): the sizes a 2-core CPU runs within 30 minutes.
VOLUME_SIZES = {"image_size": (32, 32), "train_examples": (500, 16), "ae_steps": (800, 3), "diffusion_steps": (3300, 4),
                "diffusion_batch_size": (16, 8), "num_per_class": (100, 6), "real_examples": (250, 12)}
#: (defaults, --tiny) that differ for one data set. phantom-fundus: its RGB pixel noise (independent per
#: channel, 1-5 grey levels) is what the FID Inception sees, and its autoencoder learns to pass it late:
#: reconstructions of 300 validation images against 500 test images, rate decayed over the last half,
#: 32,64,64 channels (the phantom preset) x 2000 steps: precision 0.17, recall 0.04, FID 39.9;
#: 32,64,128 x 2000: 0.17 / 0.08, FID 35.7; x 4000: 0.51 / 0.36, FID 19.6; x 6000 (the demo on a fresh clone):
#: 0.68 / 0.61, FID 13.5, KID 0.006 (a second real split: 0.83 / 0.76, FID 9.0, KID 0.000), in 24 min.
DATASET_SIZES = {"phantom-fundus": {"ae_steps": (6000, 3), "ae_hid_chs": ("32,64,128", "8,8,8")}}
#: Fraction of the autoencoder's steps over which its learning rate decays linearly to 0, where it is not
#: the paper's constant rate (see DATASET_SIZES: phantom-fundus, 2000 steps: precision 0.09 constant,
#: 0.17 decayed over the last half).
AE_LR_DECAY = {"phantom-fundus": 0.5}
#: Fraction of the diffusion steps over which the learning rate decays linearly to 0 (the paper: 0, a
#: constant rate). Images: the last 40 % (phantom-cxr, batch 16 x 5200 steps, 300 samples against 500
#: test images: precision 0.48 with it; with one residual block, batch 32 x 4000 steps: 0.38 against 0.34
#: at a constant rate). Volumes: constant, the 3-D demo's measured setting.
LR_DECAY = {2: 0.4, 3: 0.0}
#: Classifier-free guidance of the samples (the paper's sampling: 1, none). Volumes: 3, because the
#: CPU-sized 3-D model's conditioning is weak without it (phantom-brain, 3900 diffusion steps, 60 samples
#: per class: ventriculomegaly measured on its side of the threshold in 51 % of samples at 1, 72 % at 2,
#: 88 % at 3; normal ventricles 89 %, 98 %, 100 %).
GUIDANCE = {2: 1.0, 3: 3.0}
#: The paper's data set whose configuration each built-in phantom scales down (for volumes, which the
#: paper did not train: the paper's networks built in 3-D, the ``volume-folder`` preset).
PAPER_COUNTERPART = {"phantom-cxr": "chexpert", "phantom-fundus": "airogs", "phantom-histo": "crcdx",
                     "phantom-brain": "volume-folder"}
#: Split of the real reference set (a second held-out real split), where the data set has one.
REFERENCE_SPLIT = "validation"


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m eval.demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="phantom-cxr", choices=sorted(DATASETS),
                   help="a built-in phantom, or a real data set with --data-dir")
    p.add_argument("--data-dir", help="the data set's folder (real data sets)")
    p.add_argument("--out", type=Path, help="output folder (default runs/demo-<dataset>)")
    p.add_argument("--tiny", action="store_true", help="tiny sizes everywhere: a smoke test of every stage")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--guidance", type=float,
                   help="classifier-free guidance scale of the samples (default 1, none, as the paper; volumes: 3)")
    ae = p.add_argument_group("autoencoder (defaults: the data set's preset of train.autoencoder)")
    ae.add_argument("--ae-perceptual", action="store_true",
                    help="add the VGG16 perceptual term with weight 1 (spec 4.3; about 3x the step time on a CPU)")
    ae.add_argument("--ae-emb-channels", type=int, help="latent channels")
    ae.add_argument("--ae-lr", type=float, help="learning rate")
    ae.add_argument("--ae-lr-decay", type=float,
                    help="decay the autoencoder's learning rate linearly to 0 over this final fraction of its steps "
                         "(default 0: constant, as the paper; phantom-fundus 0.5)")
    ae.add_argument("--paper-autoencoder", action="store_true",
                    help="the paper's autoencoder instead of the preset: 64,128,256,512 channels (8x compression), "
                         "the paper data set's latent channels, Adam 1e-4, VGG16 term (slow on a CPU)")
    diff = p.add_argument_group("diffusion (defaults: the data set's preset of train.diffusion)")
    diff.add_argument("--unet-res-blocks", type=int,
                      help="UNet residual blocks per level (the paper and images: 2; volumes: 1)")
    diff.add_argument("--lr-decay", type=float,
                      help="decay the learning rate linearly to 0 over this final fraction of the diffusion steps "
                           "(default 0.4 for images, 0 for volumes; 0: constant, as the paper)")
    for name, (default, tiny) in SIZES.items():
        kind = str if name.endswith("hid_chs") else int
        special = "".join(f"; {dataset} {sizes[name][0]}" for dataset, sizes in DATASET_SIZES.items() if name in sizes)
        p.add_argument("--" + name.replace("_", "-"), type=kind, default=None,
                       help=f"default {'the preset' if default is None else default}{special} ({tiny} with --tiny)")
    args = p.parse_args(argv)
    info = get_info(args.dataset)
    if args.lr_decay is None:
        args.lr_decay = LR_DECAY[info.spatial_dims]
    if args.ae_lr_decay is None:
        args.ae_lr_decay = AE_LR_DECAY.get(args.dataset, 0.0)
    for flag, value in (("--lr-decay", args.lr_decay), ("--ae-lr-decay", args.ae_lr_decay)):
        if not 0.0 <= value <= 1.0:
            p.error(f"{flag} must be a fraction in [0, 1], got {value}")
    for name, (default, tiny) in SIZES.items():
        if info.spatial_dims == 3:
            default, tiny = VOLUME_SIZES.get(name, (default, tiny))
        default, tiny = DATASET_SIZES.get(args.dataset, {}).get(name, (default, tiny))
        if getattr(args, name) is None:
            setattr(args, name, tiny if args.tiny else default)
    args.guidance = GUIDANCE[info.spatial_dims] if args.guidance is None else args.guidance
    args.out = args.out or Path(f"runs/demo-{args.dataset}")
    if not info.builtin and not args.data_dir:
        p.error(f"--dataset {args.dataset} needs --data-dir (only the phantom-* data sets are built in)")
    if args.fid_points < 1 or args.diffusion_steps < args.fid_points:
        p.error("--fid-points must be between 1 and --diffusion-steps")
    if min(args.num_per_class, args.real_examples) < 4:
        p.error("--num-per-class and --real-examples must be at least 4 (precision/recall use k = 3 neighbours)")
    return args


class Stages:
    """Runs the stages, printing each with the elapsed time, and records how long each took."""

    def __init__(self, timings_json: Path):
        self.index = 0
        self.timings_json = timings_json
        # Seconds per stage, summed over every run of the demo in this folder (a resumed stage adds the
        # rest of its work), kept in ``timings.json`` after each stage so an interrupted run loses none.
        self.timings: dict[str, float] = read_json(timings_json) if timings_json.is_file() else {}
        self.start = time.time()

    def train(self, name: str, run: Callable[..., TrainResult], config) -> None:
        """A training stage (``run_autoencoder`` or ``run_diffusion``): resumed from its last checkpoint when
        the demo runs again."""
        with self.timed(name):
            try:
                result = run(config)
            except NonFiniteLossError as err:
                raise CommandError(f"demo stopped: stage '{name}': {err}", exit_code=EXIT_FAILED) from None
        if result.interrupted:
            raise CommandError(f"demo interrupted in stage '{name}' at step {result.final_step} (checkpoint saved in "
                               f"{result.run_dir / 'checkpoints'}); run the same command again to continue",
                               exit_code=EXIT_INTERRUPTED)

    @contextlib.contextmanager
    def timed(self, name: str):
        self.index += 1
        print(f"\n[{self.index}] {name}  (elapsed {self.elapsed()})", flush=True)
        began = time.time()
        yield
        self.timings[name] = self.timings.get(name, 0.0) + time.time() - began
        write_json_atomic(self.timings_json, self.timings)

    def elapsed(self) -> str:
        minutes, seconds = divmod(int(time.time() - self.start), 60)
        return f"{minutes}m{seconds:02d}s"


def dataset_images(args, split: str, count: int) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """(uint8 images [N, H, W, 3] or volumes [N, D, H, W, C], class indices [N], class names) of the first
    ``count`` items of a split."""
    info = get_info(args.dataset)
    source = make_dataset(args.dataset, data_dir=args.data_dir, split=split, image_size=args.image_size,
                          channels=info.channels if info.spatial_dims == 3 else 3,
                          num_examples=count if info.builtin else None)
    count = min(count, len(source))
    items = [source[i] for i in range(count)]
    return (np.stack([it["image"] for it in items]), np.array([int(it["label"]) for it in items]),
            tuple(source.class_names))


def export_images(images: np.ndarray, labels: np.ndarray, class_names, folder: Path) -> Path:
    """Write images as PNGs (volumes as NIfTI) in the ImageFolder layout (skipped when already complete)."""
    done = folder / ".complete"
    if done.is_file() and done.read_text() == str(len(images)):
        return folder
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        if image.ndim == 4:
            path = folder / class_names[int(label)] / f"{i:06d}{NIFTI_SUFFIX}"
            path.parent.mkdir(parents=True, exist_ok=True)
            write_nifti_atomic(path, image)
        else:
            save_png(folder / class_names[int(label)] / f"{i:06d}.png", image)
    done.write_text(str(len(images)))
    return folder


def reconstruct(ae_dir: Path, images: np.ndarray, seed: int, batch: int = 50) -> np.ndarray:
    """The autoencoder's reconstructions (a posterior sample per image, uint8 truncation as for generated
    images); image i's posterior noise comes from ``fold_in(key(seed), i)``."""
    import jax

    from medfusion_jax.convert.autoencoder import load_autoencoder
    from medfusion_jax.evaluation.reconstruction import vae_reconstructor
    from medfusion_jax.images import to_uint8

    vae, _ = load_autoencoder(ae_dir)
    run = vae_reconstructor(vae)
    key = jax.random.key(seed)
    out = []
    for start in range(0, len(images), batch):
        x = normalize(images[start:start + batch])
        keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(np.arange(start, start + len(x)))
        out.append(to_uint8(run(x, keys)))
    return np.concatenate(out)


class Features:
    """Inception features of the demo's image sets, extracted once (one extractor) and kept as ``.npz``."""

    def __init__(self, folder: Path):
        self.folder = folder
        self._extractor = None

    def extractor(self):
        if self._extractor is None:
            from medfusion_jax.evaluation.features import InceptionFeatureExtractor

            self._extractor = InceptionFeatureExtractor(batch_size=50)
        return self._extractor

    def of_images(self, name: str, images: np.ndarray, labels: np.ndarray, class_names) -> FeatureSet:
        """Features of images, or of the slices of volumes ([N, D, H, W, C]: their mid-slices, plane by plane)."""
        path = self.folder / f"{name}.npz"
        if path.is_file():
            return load_feature_set(path)
        names = np.array([class_names[int(c)] for c in labels], dtype=object)
        if images.ndim == 5:
            result = volume_feature_set(images, names, self.extractor(), source=name, desc=name)
        else:
            result = FeatureSet.from_features(self.extractor().extract(images, desc=name)["pool"], names, name)
        self._save(result, path)
        return result

    def of_folder(self, name: str, folder: Path) -> FeatureSet:
        path = self.folder / f"{name}.npz"
        if path.is_file():
            return load_feature_set(path)
        result = folder_feature_set(folder, self.extractor())
        self._save(result, path)
        return result

    def _save(self, result: FeatureSet, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.stem + ".tmp.npz")
        result.save(tmp)
        tmp.replace(path)


def score_set(path: Path, real: FeatureSet, fake: FeatureSet, seed: int,
              provenance: dict | None = None) -> list[ImageScores]:
    """FID/KID/precision/recall of ``fake`` against ``real``, overall and per class; kept in ``path``
    (with ``provenance``: where the real side came from)."""
    if not path.is_file():
        rows = score_per_class(real, fake, seed=seed)
        payload = {**(provenance or {}), "rows": [r.to_dict() for r in rows]}
        if real.planes is not None and fake.planes is not None:  # volumes: the planes' slices pooled, and each
            payload["planes"] = {plane: [r.to_dict() for r in score_per_class(real.in_plane(plane),
                                                                              fake.in_plane(plane), seed=seed)]
                                 for plane in PLANES}
        write_json_atomic(path, payload)
    rows = [ImageScores.from_dict(r) for r in read_json(path)["rows"]]
    overall = rows[0]
    print(f"{path.stem}: FID {overall.fid:.2f}, KID {overall.kid_mean:.4g} ± {overall.kid_std:.2g}, "
          f"precision {overall.precision:.3f}, recall {overall.recall:.3f} "
          f"({overall.n_fake} vs {overall.n_real} real)")
    return rows


def folder_images(folder: Path, class_names) -> tuple[np.ndarray, np.ndarray]:
    """The images (RGB) or volumes (NIfTI) of an ImageFolder-like folder, with class indices."""
    files, load = list_items(folder)
    return (np.stack([load(f.path) for f in files]),
            np.array([list(class_names).index(f.label) for f in files]))


def main(argv=None) -> int:
    return command.run(lambda: _main(parse_args(argv)), prog="eval.demo")


def _main(args) -> int:
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    info = get_info(args.dataset)
    write_json_atomic(out / "demo_args.json", {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()})
    ae_dir, diff_dir, scores = out / "autoencoder", out / "diffusion", out / "scores"
    features = Features(scores / "features")
    stages = Stages(out / "timings.json")

    # 1. Autoencoder.
    stages.train("train the autoencoder", run_autoencoder, demo_autoencoder_config(args, ae_dir))

    # 2. Diffusion model, with checkpoints at the FID points.
    stages.train("train the diffusion model", run_diffusion, demo_diffusion_config(args, ae_dir, diff_dir))

    # 3. The real test set and the two references, at the generated set's size.
    num_generated = args.num_per_class * len(info.class_names)
    reference_split = REFERENCE_SPLIT if REFERENCE_SPLIT in info.splits else "train"
    with stages.timed("references: a second real split and the autoencoder's reconstructions"):
        test_images, test_labels, class_names = dataset_images(args, "test", args.real_examples)
        real = features.of_images("real_test", test_images, test_labels, class_names)
        ref_images, ref_labels, _ = dataset_images(args, reference_split, num_generated)
        ref_real = features.of_images("real_reference", ref_images, ref_labels, class_names)
        recon_folder = out / "autoencoder_reconstructions"
        if (recon_folder / ".complete").is_file():
            recon_images, recon_labels = folder_images(recon_folder, class_names)
        else:
            recon_images, recon_labels = reconstruct(ae_dir, ref_images, args.seed), ref_labels
            export_images(recon_images, recon_labels, class_names, recon_folder)
        recon = features.of_images("reconstructions", recon_images, recon_labels, class_names)
        provenance = {"real": {"split": "test", "n": len(test_images), "first_index": 0}}
        write_json_atomic(scores / "references.json", {
            **provenance,
            "real_reference": {"split": reference_split, "n": len(ref_images), "first_index": 0,
                               "overlaps_training": reference_split == "train"},
            "reconstructions": {"of": "real_reference", "split": reference_split, "n": len(recon_images)},
            "generated_per_checkpoint": num_generated,
        })
        score_set(scores / "reference_real.json", real, ref_real, args.seed, provenance)
        score_set(scores / "reference_reconstructions.json", real, recon, args.seed, provenance)

    # 4. Sample and score at every checkpoint.
    steps = sorted(int(p.name) for p in (diff_dir / "checkpoints").iterdir() if p.name.isdigit())
    for step in steps:
        samples = out / "samples" / f"step_{step:06d}"
        step_json = scores / f"step_{step:06d}.json"
        if not step_json.is_file():
            with stages.timed(f"sample step {step}"):
                summary = sample_checkpoint(SampleRequest(
                    out=samples, checkpoint=diff_dir / "checkpoints" / str(step), num_per_class=args.num_per_class,
                    steps=args.sample_steps, seed=args.seed, batch_size=100, guidance=args.guidance))
                print(f"wrote {summary['written']} images to {samples}")
            with stages.timed(f"score step {step}"):
                fake = features.of_folder(f"generated_step_{step:06d}", samples)
                score_set(step_json, real, fake, args.seed, provenance)
        else:
            score_set(step_json, real, load_feature_set(scores / "features" / f"generated_step_{step:06d}.npz"),
                      args.seed)
    final_samples = out / "samples" / f"step_{steps[-1]:06d}"

    # 5. The measured feature: conditioning accuracy and within-class distributions.
    measurements_json = scores / "measurements.json"
    if info.measure is None:
        print(f"{args.dataset} has no measurement function: conditioning accuracy skipped")
    elif not measurements_json.is_file():
        with stages.timed(f"measure the {info.feature} (conditioning and within-class distribution)"):
            gen_images, gen_labels = folder_images(final_samples, class_names)
            values = {"generated": measure(info, gen_images), "real_reference": measure(info, ref_images),
                      "real": measure(info, test_images)}
            labels = {"generated": gen_labels, "real_reference": ref_labels, "real": test_labels}
            result = {"feature": info.feature, "threshold": info.threshold, "step": steps[-1],
                      "values": {k: [float(x) for x in v] for k, v in values.items()},
                      "labels": {k: [int(x) for x in v] for k, v in labels.items()}}
            for name in ("generated", "real_reference", "real"):
                rows = compare_classes(info, values[name], labels[name], values["real"], labels["real"])
                result[name] = [r.to_dict() for r in rows]
            write_json_atomic(measurements_json, result)
    if measurements_json.is_file():
        for row in read_json(measurements_json)["generated"]:
            m = ClassMeasurement.from_dict(row)
            print(f"{m.class_name}: accuracy {m.accuracy:.3f}, {info.feature} {m.mean:.3f} ± {m.std:.3f}, "
                  f"Wasserstein-1 {m.distance.wasserstein1:.4f}, KS {m.distance.ks_statistic:.3f}")

    # 6. Autoencoder reconstruction quality and memorisation.
    if not (scores / "autoencoder" / "autoencoder_metrics.json").is_file():
        with stages.timed("autoencoder reconstruction quality"):
            quality = evaluate_autoencoder(str(ae_dir), dataset=args.dataset, data_dir=args.data_dir, split="test",
                                           image_size=args.image_size, out=scores / "autoencoder", seed=args.seed,
                                           num_examples=args.ae_eval_examples if info.builtin else None)
            print(f"reconstructions of {quality.result.num_images} test items: "
                  + ", ".join(f"{k} {v['mean']:.4g}" for k, v in quality.payload["metrics"].items()
                              if isinstance(v, dict) and "mean" in v))
    if not (scores / "memorization" / "report.json").is_file():
        train_images, train_labels, _ = dataset_images(args, "train", args.train_examples)
        train_folder = export_images(train_images, train_labels, class_names, out / "data" / "train")
        with stages.timed("memorisation audit"):
            audit = audit_folders(train_folder, final_samples, extractor=features.extractor(), k=5,
                                  train_features_cache=scores / "train_features.npz")
            summary = audit.write(scores / "memorization", ssim_threshold=0.9, cosine_threshold=None, top=16)
            print(f"{summary['n_near_copies']} of {summary['n_generated']} generated items have a training item "
                  "with SSIM >= 0.9")

    # 7. Report.
    with stages.timed("report"):
        from eval.demo_report import write_demo_report

        export_images(test_images[:64], test_labels[:64], class_names, out / "data" / "test_examples")
        md, page = write_demo_report(args, out, steps, stages.timings)
    print(f"\nreport: {md}  and  {page}  (total {stages.elapsed()})")
    return 0


def decay_steps(fraction: float, total: int) -> dict[str, int]:
    """The configuration fields of a learning rate decayed linearly to 0 over the final ``fraction`` of
    ``total`` steps ({} when that is under one step: a constant rate)."""
    steps = round(fraction * total)
    return dict(lr_decay_start=total - steps, lr_decay_end=total) if steps >= 1 else {}


def demo_autoencoder_config(args, run_dir: Path) -> AutoencoderConfig:
    """The data set's autoencoder preset with the demo's sizes and its autoencoder options."""
    info = get_info(args.dataset)
    base = autoencoder_config(args.dataset, run_dir=str(run_dir))
    model, changes = base.model, {}
    if args.paper_autoencoder:
        paper = autoencoder_config(PAPER_COUNTERPART.get(args.dataset, args.dataset)).model
        model = with_channels(model, paper.hid_chs, emb_channels=paper.emb_channels)
        changes.update(lr=1e-4, perceptual_weight=1.0)
    if args.ae_perceptual:
        changes["perceptual_weight"] = 1.0
    if args.ae_emb_channels:
        model = replace(model, emb_channels=args.ae_emb_channels)
    if args.ae_lr:
        changes["lr"] = args.ae_lr
    if args.ae_hid_chs:
        model = with_channels(model, int_tuple(args.ae_hid_chs))
    changes.update(decay_steps(args.ae_lr_decay, args.ae_steps))
    every = max(1, args.ae_steps // 4)
    return replace(base, data=replace(base.data, image_size=args.image_size, data_dir=args.data_dir or None,
                                      num_examples=args.train_examples if info.builtin else None),
                   run=replace(base.run, steps=args.ae_steps, epochs=None, seed=args.seed, checkpoint_every=every,
                               image_every=every, log_every=10),
                   model=model, **changes)


def demo_diffusion_config(args, ae_dir: Path, run_dir: Path) -> DiffusionConfig:
    """The data set's diffusion preset on the demo's autoencoder, with the demo's sizes and options:
    cached latents, a kept checkpoint at each FID point."""
    info = get_info(args.dataset)
    every = args.diffusion_steps // args.fid_points  # --fid-points evenly spaced checkpoints
    total = every * args.fid_points
    base = diffusion_config(args.dataset, autoencoder=str(Path(ae_dir).expanduser().absolute()),
                            image_size=args.image_size, run_dir=str(run_dir))
    model, changes = base.model, {}
    if args.unet_hid_chs:
        model = with_channels(model, int_tuple(args.unet_hid_chs), time_emb_dim=32, norm_groups=8)
    if args.unet_res_blocks:
        model = replace(model, num_res_blocks=args.unet_res_blocks)
    changes.update(decay_steps(args.lr_decay, total))
    return replace(base, data=replace(base.data, data_dir=args.data_dir or None,
                                      num_examples=args.train_examples if info.builtin else None),
                   run=replace(base.run, steps=total, epochs=None, seed=args.seed,
                               batch_size=args.diffusion_batch_size, checkpoint_every=every,
                               keep_checkpoints=args.fid_points, image_every=every, log_every=10),
                   model=model, cache_latents=True, sample_steps=args.sample_steps, **changes)


if __name__ == "__main__":
    sys.exit(main())
