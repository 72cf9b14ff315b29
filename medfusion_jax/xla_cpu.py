"""XLA:CPU settings that make Medfusion's training steps faster, applied by the command lines (not on import).

Recent jaxlib releases route convolutions, dots and some fusions on the CPU through YNNPACK by
default. For Medfusion's networks that is slower than XLA's Eigen kernels: with YNNPACK off, the
small autoencoder step of ``bench/train.py`` (batch 8, 64x64, full loss with LPIPS-VGG16) takes
~0.72 s instead of ~0.92 s and the small UNet diffusion step ~0.19 s instead of ~0.23 s on a 2-core
machine (measured with jaxlib 0.10.2). The two libraries compute the same sums; only the float
rounding order differs.

What is done: :func:`apply_cpu_defaults` appends ``--xla_cpu_experimental_ynn_fusion_type=`` (the
empty list) to ``XLA_FLAGS``, unless

- ``XLA_FLAGS`` already sets that flag (the user's choice wins),
- ``MEDFUSION_JAX_XLA_CPU_DEFAULTS=0`` is in the environment (keep XLA's own defaults), or
- the installed jaxlib is outside :data:`MEASURED_JAXLIB`, the releases where the flag exists and
  the speed-up was measured (XLA aborts the process on a flag it does not know, and a later release
  may rename it or change the kernels; extend the range after measuring with ``bench/train.py``).

Who calls it: every command line, through :func:`medfusion_jax.command.run`, before its first
computation (XLA reads ``XLA_FLAGS`` when its CPU backend starts, i.e. at the first computation), and
the test suite's ``conftest.py``. Importing :mod:`medfusion_jax` changes nothing: a library user's
process keeps its own settings. The flag does not affect GPUs or TPUs.
"""

from __future__ import annotations

import os
from importlib import metadata

FLAG = "xla_cpu_experimental_ynn_fusion_type"
SETTING = f"--{FLAG}="
OPT_OUT = "MEDFUSION_JAX_XLA_CPU_DEFAULTS"
#: [first, end) of the jaxlib versions on which the setting is applied (measured on 0.10.2).
MEASURED_JAXLIB = ((0, 10, 0), (0, 11, 0))


def jaxlib_version() -> tuple[int, ...] | None:
    """The installed jaxlib's version as integers (``0.10.2`` -> (0, 10, 2)); None without jaxlib."""
    try:
        text = metadata.version("jaxlib")
    except metadata.PackageNotFoundError:
        return None
    numbers = []
    for part in text.split("."):
        digits = "".join(ch for ch in part if ch.isdigit()) if part[:1].isdigit() else ""
        if not digits:
            break
        numbers.append(int(digits))
    return tuple(numbers)


def setting_applies(version: tuple[int, ...] | None) -> bool:
    first, end = MEASURED_JAXLIB
    return version is not None and first <= version < end


def apply_cpu_defaults(environ: dict | None = None, *, version: tuple[int, ...] | None = None) -> bool:
    """Append the setting to ``XLA_FLAGS`` in ``environ`` (default ``os.environ``); True if it did.

    ``version``: the jaxlib version to decide by (default: the installed one)."""
    environ = os.environ if environ is None else environ
    flags = environ.get("XLA_FLAGS", "")
    if environ.get(OPT_OUT, "1") == "0" or FLAG in flags:
        return False
    if not setting_applies(jaxlib_version() if version is None else version):
        return False
    environ["XLA_FLAGS"] = f"{flags} {SETTING}".strip()
    return True
