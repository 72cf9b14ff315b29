from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parent / "data"
GOLDENS = DATA / "goldens"


@pytest.fixture(scope="session")
def goldens_dir() -> Path:
    return GOLDENS
