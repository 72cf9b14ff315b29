"""Generate images per class with DDIM and write them as PNGs in the ImageFolder layout, plus a grid.

    python -m eval.sample --random-init --out runs/demo

``--random-init`` samples from freshly initialised (untrained) networks of a small configuration: it
exercises the whole chain (DDIM scan, guidance, decoding, uint8 truncation, PNG files) without a
checkpoint. Like the reference, a fresh autoencoder's output layer is zero, so those images are a flat
mid-grey; they prove the plumbing, not a model. Loading trained checkpoints comes with the training
stage.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from PIL import Image
from tqdm import tqdm

from medfusion_jax.diffusion.schedule import make_schedule
from medfusion_jax.generate import generate_images, image_grid
from medfusion_jax.models import VAE, UNet

# Small networks for --random-init: 64x64 images, 8x8x4 latents.
RANDOM_INIT_IMAGE = 64
RANDOM_INIT_VAE = dict(in_channels=3, out_channels=3, emb_channels=4, hid_chs=(16, 32, 64, 64))
RANDOM_INIT_UNET = dict(in_ch=4, out_ch=4, hid_chs=(32, 32, 64, 64), time_emb_dim=64, num_classes=2)


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m eval.sample", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--random-init", action="store_true", help="sample from untrained small networks")
    p.add_argument("--out", required=True, type=Path, help="output folder (one sub-folder per class)")
    p.add_argument("--num-per-class", type=int, default=8)
    p.add_argument("--classes", type=int, nargs="+", default=None, help="class indices (default: all)")
    p.add_argument("--steps", type=int, default=150, help="DDIM steps (reference: 150)")
    p.add_argument("--eta", type=float, default=1.0, help="DDIM eta (reference: 1, stochastic)")
    p.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance scale (1 = none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=16)
    args = p.parse_args(argv)
    if not args.random_init:
        p.error("--random-init is required until trained checkpoints can be loaded by this command")
    if args.num_per_class < 1 or args.batch_size < 1:
        p.error("--num-per-class and --batch-size must be positive")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    vae = VAE(**RANDOM_INIT_VAE, rngs=nnx.Rngs(args.seed))
    unet = UNet(**RANDOM_INIT_UNET, rngs=nnx.Rngs(args.seed + 1))
    classes = args.classes if args.classes is not None else list(range(unet.num_classes))
    bad = [c for c in classes if not 0 <= c < unet.num_classes]
    if bad:
        raise SystemExit(f"--classes {bad}: the model has classes 0..{unet.num_classes - 1}")
    latent = RANDOM_INIT_IMAGE // vae.downsampling
    schedule = make_schedule()
    key = jax.random.key(args.seed)

    all_images = []
    for cls in classes:
        folder = args.out / f"class_{cls}"
        folder.mkdir(parents=True, exist_ok=True)
        done = 0
        with tqdm(total=args.num_per_class, desc=f"class {cls}", unit="img") as bar:
            while done < args.num_per_class:
                n = min(args.batch_size, args.num_per_class - done)
                batch_key = jax.random.fold_in(jax.random.fold_in(key, cls), done)
                images = generate_images(unet, vae, schedule, jnp.full((n,), cls), batch_key,
                                         latent_size=(latent, latent), num_steps=args.steps, eta=args.eta,
                                         guidance_scale=args.guidance)
                for i, img in enumerate(images):
                    Image.fromarray(img).save(folder / f"{done + i:06d}.png")
                all_images.append(images)
                done += n
                bar.update(n)
    grid = image_grid(np.concatenate(all_images), columns=args.num_per_class)
    Image.fromarray(grid).save(args.out / "grid.png")
    summary = dict(out=str(args.out), classes=classes, num_per_class=args.num_per_class, steps=args.steps,
                   eta=args.eta, guidance=args.guidance, seed=args.seed, random_init=True)
    (args.out / "samples.json").write_text(json.dumps(summary, indent=1))
    print(f"wrote {len(classes) * args.num_per_class} images and {args.out / 'grid.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
