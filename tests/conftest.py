from pathlib import Path

import pytest

from medfusion_jax.xla_cpu import apply_cpu_defaults

# The command lines apply the XLA:CPU setting (medfusion_jax/xla_cpu.py) before their first computation;
# the suite runs the library in-process, so it applies it here, before any test computes.
apply_cpu_defaults()

DATA = Path(__file__).resolve().parent / "data"
GOLDENS = DATA / "goldens"


@pytest.fixture(scope="session")
def goldens_dir() -> Path:
    return GOLDENS
