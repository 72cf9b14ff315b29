"""The whole Medfusion pipeline on one data set, end to end, with a report: ``make demo`` runs this.

    python -m eval.demo                                   # phantom-cxr at 64x64, about 23 min on 2 CPU cores
    python -m eval.demo --dataset phantom-fundus --out runs/demo-fundus
    python -m eval.demo --tiny --out /tmp/smoke           # seconds-sized smoke run of every stage

Stages (each is one of the project's command lines, printed before it runs, so you can rerun any
of them by hand):

1. ``train.autoencoder``: the VAE, without the VGG perceptual term by default (``--ae-perceptual``
   turns it on: on a 2-core CPU it triples the step time; the phantoms reconstruct well without it);
2. ``train.diffusion`` on cached latents, checkpoints at ``--fid-points`` evenly spaced steps;
3. ``eval.sample`` at every one of those checkpoints (``--num-per-class`` images per class,
   ``--sample-steps`` DDIM steps) and ``eval.fid`` against held-out images of the test split
   (FID over training: the curve should fall), precision/recall and per-class FID at the last one;
4. conditioning accuracy: the data set's measurement function applied to the generated images of
   each class, next to the same measurement on real test images (its ceiling);
5. ``eval.autoencoder``: MS-SSIM, MSE and LPIPS of the autoencoder on test images;
6. ``eval.memorization``: the generated images' nearest training images;
7. ``OUT/report.md`` and ``OUT/report.html``.

Run again with the same arguments, it continues where it stopped: training resumes from its last
checkpoint, sampling writes only missing images, finished scores are kept (delete ``OUT/scores`` to
recompute them).
"""

from __future__ import annotations

import argparse
import importlib
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from medfusion_jax.data import DATASETS, get_info, make_dataset, normalize
from medfusion_jax.generate import image_grid
from medfusion_jax.metrics import conditioning
from medfusion_jax.metrics.image_files import list_image_files, load_rgb
from medfusion_jax.report import heading, images, table, text, write_report
from medfusion_jax.training.logging import downsample_records, plot_curves, read_metrics, save_png

# (defaults, --tiny) of every size knob.
SIZES = {
    "image_size": (64, 32),
    "train_examples": (1000, 16),
    "ae_steps": (600, 3),
    "ae_hid_chs": (None, "8,8,8,8"),
    "diffusion_steps": (1800, 4),
    "diffusion_batch_size": (32, 8),
    "unet_hid_chs": (None, "16,16,32,32"),
    "fid_points": (3, 2),
    "num_per_class": (150, 4),
    "real_examples": (500, 8),
    "sample_steps": (50, 3),
    "ae_eval_examples": (200, 8),
}


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m eval.demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="phantom-cxr", choices=sorted(DATASETS),
                   help="a built-in phantom, or a real data set with --data-dir")
    p.add_argument("--data-dir", help="the data set's folder (real data sets)")
    p.add_argument("--out", type=Path, help="output folder (default runs/demo-<dataset>)")
    p.add_argument("--tiny", action="store_true", help="tiny sizes everywhere: a smoke test of every stage")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ae-perceptual", action="store_true", help="keep the VGG16 perceptual term (spec 4.3)")
    for name, (default, tiny) in SIZES.items():
        kind = str if name.endswith("hid_chs") else int
        p.add_argument("--" + name.replace("_", "-"), type=kind, default=None,
                       help=f"default {default} ({tiny} with --tiny)")
    args = p.parse_args(argv)
    for name, (default, tiny) in SIZES.items():
        if getattr(args, name) is None:
            setattr(args, name, tiny if args.tiny else default)
    args.out = args.out or Path(f"runs/demo-{args.dataset}")
    info = get_info(args.dataset)
    if not info.builtin and not args.data_dir:
        p.error(f"--dataset {args.dataset} needs --data-dir (only the phantom-* data sets are built in)")
    if args.fid_points < 1 or args.diffusion_steps < args.fid_points:
        p.error("--fid-points must be between 1 and --diffusion-steps")
    return args


class Stages:
    """Runs the command lines in this process, printing each with its elapsed time."""

    def __init__(self):
        self.index = 0
        self.timings: dict[str, float] = {}
        self.start = time.time()

    def run(self, name: str, module: str, argv: list[str]) -> None:
        self.index += 1
        command = "python -m " + module + " " + " ".join(shlex.quote(a) for a in argv)
        print(f"\n[{self.index}] {name}  (elapsed {self._elapsed()})\n$ {command}", flush=True)
        began = time.time()
        code = importlib.import_module(module).main(argv)
        self.timings[name] = self.timings.get(name, 0.0) + time.time() - began
        if code:
            raise SystemExit(f"demo stopped: stage '{name}' failed with exit status {code}. Fix the cause and "
                             f"run the demo again (finished stages are kept); the command was:\n$ {command}")

    def step(self, name: str) -> None:
        self.index += 1
        print(f"\n[{self.index}] {name}  (elapsed {self._elapsed()})", flush=True)

    def _elapsed(self) -> str:
        minutes, seconds = divmod(int(time.time() - self.start), 60)
        return f"{minutes}m{seconds:02d}s"


def export_images(source, folder: Path, limit: int | None = None) -> Path:
    """Write a data source as PNGs in the ImageFolder layout (skipped when already complete)."""
    count = len(source) if limit is None else min(limit, len(source))
    done = folder / ".complete"
    if done.is_file() and done.read_text() == str(count):
        return folder
    for i in range(count):
        item = source[i]
        target = folder / source.class_names[int(item["label"])] / f"{i:06d}.png"
        save_png(target, np.asarray(item["image"]))
    done.write_text(str(count))
    return folder


def write_reconstructions(ae_dir: Path, args, folder: Path, count: int) -> Path:
    """Autoencoder reconstructions (posterior sample, uint8 truncation as generated images) of the first
    ``count`` validation images, in the ImageFolder layout."""
    import jax

    from medfusion_jax.generate import to_uint8
    from medfusion_jax.metrics.reconstruction import load_autoencoder, vae_reconstructor

    vae, _ = load_autoencoder(ae_dir)
    reconstruct = vae_reconstructor(vae)
    info = get_info(args.dataset)
    split = "validation" if "validation" in info.splits else "train"
    source = make_dataset(args.dataset, data_dir=args.data_dir, split=split, image_size=args.image_size,
                          channels=3, num_examples=count if info.builtin else None)
    count = min(count, len(source))
    key = jax.random.key(args.seed)
    for start in range(0, count, 50):
        items = [source[i] for i in range(start, min(start + 50, count))]
        x = normalize(np.stack([it["image"] for it in items]))
        keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(np.arange(start, start + len(items)))
        for i, (item, image) in enumerate(zip(items, to_uint8(reconstruct(x, keys)))):
            save_png(folder / source.class_names[int(item["label"])] / f"{start + i:06d}.png", image)
    return folder


def class_grids(folder: Path, class_names, prefix: str, out: Path, per_class: int = 8) -> list[tuple[str, str]]:
    """One grid PNG per class of an ImageFolder; returns (path relative to ``out``, caption)."""
    files = list_image_files(folder)
    result = []
    for name in class_names:
        chosen = [f.path for f in files if f.label == name][:per_class]
        if not chosen:
            continue
        grid = image_grid(np.stack([load_rgb(p) for p in chosen]), columns=min(per_class, 4))
        path = save_png(out / "report" / f"{prefix}_{name.replace(' ', '_')}.png", grid)
        result.append((str(path.relative_to(out)), f"{prefix}: {name}"))
    return result


def read_json(path: Path):
    return json.loads(path.read_text())


def main(argv=None) -> int:
    args = parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    info = get_info(args.dataset)
    (out / "demo_args.json").write_text(json.dumps({k: str(v) if isinstance(v, Path) else v
                                                    for k, v in vars(args).items()}, indent=1))
    ae_dir, diff_dir, scores = out / "autoencoder", out / "diffusion", out / "scores"
    scores.mkdir(exist_ok=True)
    data_flags = ["--dataset", args.dataset, "--image-size", str(args.image_size)]
    if args.data_dir:
        data_flags += ["--data-dir", args.data_dir]
    train_flags = data_flags + (["--num-examples", str(args.train_examples)] if info.builtin else [])
    stages = Stages()

    # 1. Autoencoder.
    ae_argv = train_flags + ["--run-dir", str(ae_dir), "--steps", str(args.ae_steps), "--seed", str(args.seed),
                             "--checkpoint-every", str(max(1, args.ae_steps // 4)),
                             "--image-every", str(max(1, args.ae_steps // 4)), "--log-every", "10"]
    if not args.ae_perceptual:
        ae_argv += ["--perceptual-weight", "0"]
    if args.ae_hid_chs:
        ae_argv += ["--hid-chs", args.ae_hid_chs]
    stages.run("train the autoencoder", "train.autoencoder", ae_argv)

    # 2. Diffusion model, with checkpoints at the FID points.
    every = args.diffusion_steps // args.fid_points
    diff_argv = train_flags + ["--autoencoder", str(ae_dir), "--run-dir", str(diff_dir), "--cache-latents",
                               "--steps", str(every * args.fid_points), "--seed", str(args.seed),
                               "--batch-size", str(args.diffusion_batch_size),
                               "--checkpoint-every", str(every), "--keep-checkpoints", str(args.fid_points),
                               "--image-every", str(every), "--log-every", "10",
                               "--sample-steps", str(args.sample_steps)]
    if args.unet_hid_chs:
        diff_argv += ["--hid-chs", args.unet_hid_chs, "--time-emb-dim", "32", "--norm-groups", "8"]
    stages.run("train the diffusion model", "train.diffusion", diff_argv)

    # 3. Sample and score at every checkpoint.
    real_stats = scores / "real_test_features.npz"
    fid_points = []
    steps = sorted(int(p.name) for p in (diff_dir / "checkpoints").iterdir() if p.name.isdigit())
    for i, step in enumerate(steps):
        final = i == len(steps) - 1
        samples = out / "samples" / f"step_{step:06d}"
        fid_json = scores / f"fid_step_{step:06d}.json"
        if not fid_json.is_file():
            stages.run(f"sample step {step}", "eval.sample",
                       ["--checkpoint", str(diff_dir / "checkpoints" / str(step)), "--out", str(samples),
                        "--num-per-class", str(args.num_per_class), "--steps", str(args.sample_steps),
                        "--seed", str(args.seed), "--batch-size", "100"])
            if real_stats.is_file():
                real = ["--real", str(real_stats)]
            else:
                real = ["--real", args.dataset, "--split", "test", "--image-size", str(args.image_size),
                        "--save-stats", str(real_stats)]
                if info.builtin:
                    real += ["--num-examples", str(args.real_examples)]
                if args.data_dir:
                    real += ["--data-dir", args.data_dir]
            stages.run(f"FID at step {step}", "eval.fid",
                       real + ["--fake", str(samples), "--json", str(fid_json)] + (["--per-class"] if final else []))
        fid_points.append((step, read_json(fid_json)["results"][0]["fid"]))
    final_samples = out / "samples" / f"step_{steps[-1]:06d}"

    # The floor: FID of autoencoder reconstructions of real (validation) images, what a perfect
    # diffusion model on these latents would reach.
    floor_json = scores / "fid_autoencoder_floor.json"
    if not floor_json.is_file():
        floor = write_reconstructions(ae_dir, args, out / "autoencoder_reconstructions",
                                      count=args.num_per_class * max(1, len(info.class_names)))
        stages.run("FID of autoencoder reconstructions (the floor)", "eval.fid",
                   ["--real", str(real_stats), "--fake", str(floor), "--json", str(floor_json)])
    floor_fid = read_json(floor_json)["results"][0]["fid"]
    plot_curves(out / "report" / "fid_curve.png",
                {"FID": ([s for s, _ in fid_points], [f for _, f in fid_points]),
                 "autoencoder floor": ([steps[0], steps[-1]], [floor_fid, floor_fid])},
                title="FID against held-out images over diffusion training")

    # 4. Conditioning accuracy.
    stages.step("conditioning accuracy (measurement function)")
    accuracy_json = scores / "conditioning.json"
    if info.measure is None:
        print(f"{args.dataset} has no measurement function: skipped")
    elif not accuracy_json.is_file():
        test_source = make_dataset(args.dataset, data_dir=args.data_dir, split="test", image_size=args.image_size,
                                   channels=3, num_examples=args.real_examples if info.builtin else None)
        result = {"generated": conditioning.summary(conditioning.folder_accuracy(info, final_samples)),
                  "real": conditioning.summary(conditioning.source_accuracy(info, test_source, args.real_examples))}
        accuracy_json.write_text(json.dumps(result, indent=1))
        print(f"balanced accuracy: generated {result['generated']['balanced_accuracy']:.3f}, "
              f"real test images {result['real']['balanced_accuracy']:.3f} (chance {result['real']['chance']:.2f})")

    # 5. Autoencoder reconstruction.
    ae_scores = scores / "autoencoder"
    if not (ae_scores / "autoencoder_metrics.json").is_file():
        stages.run("autoencoder reconstruction quality", "eval.autoencoder",
                   data_flags + ["--checkpoint", str(ae_dir), "--split", "test", "--out", str(ae_scores),
                                 "--seed", str(args.seed)]
                   + (["--num-examples", str(args.ae_eval_examples)] if info.builtin else []))
    else:
        stages.step("autoencoder reconstruction quality (kept)")

    # 6. Memorisation audit against the training images.
    memo = scores / "memorization"
    if not (memo / "report.json").is_file():
        train_source = make_dataset(args.dataset, data_dir=args.data_dir, split="train",
                                    image_size=args.image_size, channels=3,
                                    num_examples=args.train_examples if info.builtin else None)
        train_folder = export_images(train_source, out / "data" / "train")
        stages.run("memorisation audit", "eval.memorization",
                   ["--train", str(train_folder), "--generated", str(final_samples), "--out", str(memo),
                    "--train-features", str(scores / "train_features.npz")])
    else:
        stages.step("memorisation audit (kept)")

    # 7. Report.
    stages.step("report")
    timings = {**(read_json(out / "timings.json") if (out / "timings.json").is_file() else {}), **stages.timings}
    (out / "timings.json").write_text(json.dumps(timings, indent=1))
    md, page = write_report(out, build_report(args, out, fid_points, timings), f"Medfusion demo: {args.dataset}")
    print(f"\nreport: {md}  and  {page}  (total {stages._elapsed()})")
    return 0


def build_report(args, out: Path, fid_points, timings) -> list[dict]:
    info = get_info(args.dataset)
    scores = out / "scores"
    final = read_json(scores / f"fid_step_{fid_points[-1][0]:06d}.json")["results"]
    ae = read_json(scores / "autoencoder" / "autoencoder_metrics.json")["metrics"]
    memo = read_json(scores / "memorization" / "report.json")
    blocks = [
        text(f"Data: {args.dataset} ({info.description}), {args.image_size}x{args.image_size}, "
             f"{args.train_examples} training images. Autoencoder {args.ae_steps} steps"
             f"{'' if args.ae_perceptual else ' (no perceptual term)'}, diffusion {args.diffusion_steps} steps, "
             f"DDIM {args.sample_steps} steps, eta 1, no guidance, {args.num_per_class} samples per class. "
             f"FID against {args.real_examples} held-out test images."),
        heading("Scores"),
        table(["metric", "value", "note"], [
            ["FID (all classes)", final[0]["fid"], f"{final[0]['n_fake']} generated vs {final[0]['n_real']} real"],
            ["precision", final[0].get("precision", float("nan")), "improved PR, k = 3"],
            ["recall", final[0].get("recall", float("nan")), ""],
            *[[f"FID ({row['subset']})", row["fid"], f"{row['n_fake']} vs {row['n_real']}"] for row in final[1:]],
            *[[f"autoencoder {label}", ae[key]["mean"], f"± {ae[key]['std']:.3g}"] if ae.get(key) else
              [f"autoencoder {label}", "n/a", "; ".join(ae["notes"]) or "not computed"]
              for label, key in (("MS-SSIM", "ms_ssim"), ("MSE (x1e-5)", "mse_x1e5"), ("LPIPS", "lpips"))],
            ["near copies of training images", memo["fraction_near_copies"],
             f"SSIM ≥ {memo['ssim_threshold']}, {memo['n_generated']} generated vs {memo['n_train']} training"],
        ]),
        heading("FID over diffusion training"),
        text("The floor is the FID of the autoencoder's reconstructions of real validation images: a diffusion "
             "model that matched the latent distribution perfectly would reach it, so the gap between the "
             "last point and the floor is what the diffusion model leaves, the floor itself what the "
             "autoencoder loses (with few training steps and no perceptual term: fine texture and noise)."
             + (" Precision and recall count a generated image as realistic only inside the 3-nearest-neighbour "
                "balls of the real images in Inception space (and a real one as covered only inside those of "
                "the generated images); the floor's precision of 0 shows that the autoencoder's smoothing alone "
                "puts every reconstruction outside them, so they measure the autoencoder here, not the "
                "diffusion model." if _fid_row(scores / "fid_autoencoder_floor.json")[1] == 0 else "")),
        table(["step", "FID", "precision", "recall"],
              [[step, *_fid_row(scores / f"fid_step_{step:06d}.json")] for step, _ in fid_points]
              + [["floor: autoencoder reconstructions", *_fid_row(scores / "fid_autoencoder_floor.json")]]),
        images([("report/fid_curve.png", "FID against held-out test images")]),
    ]
    accuracy_json = scores / "conditioning.json"
    if accuracy_json.is_file():
        acc = read_json(accuracy_json)
        real_by_class = {r["class_name"]: r for r in acc["real"]["classes"]}
        blocks += [
            heading("Conditioning accuracy"),
            text(f"The {info.feature} is measured on every generated image; a sample counts as correct when the "
                 f"measurement indicates the class it was generated for. The same measurement on real test "
                 f"images shows its ceiling. Chance: {acc['generated']['chance']:.2f}."),
            table(["class", "generated: accuracy", f"generated: {info.feature}", "real: accuracy",
                   f"real: {info.feature}", "unmeasurable (generated)"],
                  [[r["class_name"], r["accuracy"], f"{r['measurement_mean']:.3f} ± {r['measurement_std']:.3f}",
                    real_by_class[r["class_name"]]["accuracy"],
                    f"{real_by_class[r['class_name']]['measurement_mean']:.3f}", r["num_unmeasurable"]]
                   for r in acc["generated"]["classes"]]
                  + [["balanced", acc["generated"]["balanced_accuracy"], "", acc["real"]["balanced_accuracy"], "", ""]]),
        ]
    final_samples = out / "samples" / f"step_{fid_points[-1][0]:06d}"
    test_folder = export_images(make_dataset(args.dataset, data_dir=args.data_dir, split="test",
                                             image_size=args.image_size, channels=3,
                                             num_examples=64 if info.builtin else None),
                                out / "data" / "test_examples", limit=64)
    generated = class_grids(final_samples, info.class_names or _folders(final_samples), "generated", out)
    real = class_grids(test_folder, info.class_names or _folders(test_folder), "real", out)
    blocks.append(heading("Samples per class, next to real images"))
    for g, r in zip(generated, real):
        blocks.append(images([g, r]))
    blocks += [
        heading("Training"),
        images([("autoencoder/loss_curve.png", "autoencoder loss"), ("diffusion/loss_curve.png", "diffusion loss")]),
        heading("Autoencoder reconstructions"),
        text("Top: test images; bottom: reconstructions (posterior sample, as the reference evaluates)."),
        images([("scores/autoencoder/reconstructions.png", "originals above reconstructions")]),
        heading("Memorisation audit"),
        text(f"{memo['n_near_copies']} of {memo['n_generated']} generated images have a training image with "
             f"SSIM ≥ {memo['ssim_threshold']}. The closest pairs (generated left, training right):"),
        images([("scores/memorization/closest_pairs.png", "closest generated/training pairs")]),
        heading("Time per stage"),
        table(["stage", "seconds"], [[k, round(v, 1)] for k, v in timings.items()]),
    ]
    return blocks


def _fid_row(path: Path) -> list:
    row = read_json(path)["results"][0]
    return [row["fid"], row.get("precision", float("nan")), row.get("recall", float("nan"))]


def _folders(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir())


if __name__ == "__main__":
    sys.exit(main())
