"""XLA:CPU settings that make Medfusion's training steps faster, applied when the package is imported.

Recent jaxlib releases route convolutions, dots and some fusions on the CPU through YNNPACK by
default. For Medfusion's networks that is slower than XLA's Eigen kernels: with YNNPACK off, the
small autoencoder step of ``bench/train.py`` (batch 8, 64x64, full loss with LPIPS-VGG16) takes
~0.72 s instead of ~0.92 s and the small UNet diffusion step ~0.19 s instead of ~0.23 s on a 2-core
machine (measured with jaxlib 0.10.2). The two libraries compute the same sums; only the float
rounding order differs.

What is done: ``--xla_cpu_experimental_ynn_fusion_type=`` (the empty list) is appended to
``XLA_FLAGS``, unless

- ``XLA_FLAGS`` already sets that flag (the user's choice wins),
- ``MEDFUSION_JAX_XLA_CPU_DEFAULTS=0`` is in the environment (keep XLA's own defaults), or
- the installed jaxlib does not know the flag (XLA aborts the process on an unknown flag, so its
  name is looked up in jaxlib's shared libraries first).

XLA reads ``XLA_FLAGS`` when its CPU backend starts, i.e. at the first computation; importing
:mod:`medfusion_jax` before running any JAX computation is enough. The flag does not affect GPUs or TPUs.
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path

FLAG = "xla_cpu_experimental_ynn_fusion_type"
SETTING = f"--{FLAG}="
OPT_OUT = "MEDFUSION_JAX_XLA_CPU_DEFAULTS"


def jaxlib_knows_flag(flag: str = FLAG) -> bool:
    """Whether one of jaxlib's shared libraries contains ``flag`` (the flag registry is compiled in)."""
    try:
        import jaxlib  # noqa: PLC0415 - only needed for its location
    except ImportError:
        return False
    libraries = sorted(Path(jaxlib.__file__).parent.glob("*.so"), key=lambda p: p.stat().st_size, reverse=True)
    needle = flag.encode()
    for library in libraries:
        try:
            with open(library, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
                if data.find(needle) >= 0:
                    return True
        except (OSError, ValueError):  # unreadable or empty file
            continue
    return False


def apply_cpu_defaults(environ: dict | None = None) -> bool:
    """Append the setting to ``XLA_FLAGS`` in ``environ`` (default ``os.environ``); True if it did."""
    environ = os.environ if environ is None else environ
    flags = environ.get("XLA_FLAGS", "")
    if environ.get(OPT_OUT, "1") == "0" or FLAG in flags or not jaxlib_knows_flag():
        return False
    environ["XLA_FLAGS"] = f"{flags} {SETTING}".strip()
    return True
