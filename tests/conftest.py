import os
import shutil
import tempfile
from pathlib import Path

import pytest

from medfusion_jax.xla_cpu import apply_cpu_defaults

# The command lines apply the XLA:CPU setting (medfusion_jax/xla_cpu.py) before their first computation;
# the suite runs the library in-process, so it applies it here, before any test computes.
apply_cpu_defaults()

# One XLA compilation cache for the whole run, shared by both xdist workers and every subprocess the tests
# start (they inherit the environment): the multi-process, command-line and resume tests start the same small
# programs in many fresh processes, and a process that finds its program compiled starts ~2.5x faster (a
# 6-step training command: 31 s -> 12 s on 2 cores). The cache holds XLA's own compiled executables, keyed by
# the program, the compile options and the devices, so a hit runs the very code a compilation would give.
# The controller (loaded first) makes a fresh folder per run and removes it at the end; a folder given in
# JAX_COMPILATION_CACHE_DIR is used (and kept) instead.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="medfusion-test-xla-cache-")
    os.environ["MEDFUSION_TEST_OWNS_XLA_CACHE"] = os.environ["JAX_COMPILATION_CACHE_DIR"]
# Programs that compile in under 0.1 s are not worth a file each.
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.1")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

DATA = Path(__file__).resolve().parent / "data"
GOLDENS = DATA / "goldens"


@pytest.fixture(scope="session")
def goldens_dir() -> Path:
    return GOLDENS


def pytest_unconfigure(config):
    owned = os.environ.get("MEDFUSION_TEST_OWNS_XLA_CACHE")
    if owned and not hasattr(config, "workerinput"):  # the controller (or a run without xdist) cleans up
        shutil.rmtree(owned, ignore_errors=True)
