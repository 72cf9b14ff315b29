"""Copy the reference goldens the tests need into tests/data/goldens (run by hand when they change).

Usage: python tests/data/make_goldens.py [SOURCE_DIR]   (default: ../shared/reference/goldens)

Keeps config.json and state_dict.npz as they are, and from io.npz only the arrays that
``medfusion_jax.convert verify`` compares or feeds (intermediate activations and the unused posterior
noise draws are dropped), so the copy stays a few MB and the tests do not need ../shared.
"""

import shutil
import sys
from pathlib import Path

import numpy as np

from medfusion_jax.convert.verify import verify_folder

HERE = Path(__file__).resolve().parent


def main(source: Path) -> None:
    target_root = HERE / "goldens"
    for folder in sorted(p for p in source.iterdir() if (p / "config.json").exists()):
        target = target_root / folder.name
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(folder / "config.json", target / "config.json")
        if (folder / "state_dict.npz").exists():
            shutil.copy(folder / "state_dict.npz", target / "state_dict.npz")
        _, skipped = verify_folder(folder)
        with np.load(folder / "io.npz") as io:
            kept = {k: io[k] for k in io.files if k not in skipped}
        np.savez_compressed(target / "io.npz", **kept)
        print(f"{folder.name}: kept {len(kept)} arrays, dropped {len(skipped)}")


if __name__ == "__main__":
    root = Path(__file__).resolve().parents[2]
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else root.parent / "shared" / "reference" / "goldens")
