"""Built-in procedural data sets, one per modality of the paper; no download needed.

* :mod:`~medfusion_jax.data.phantoms.fundus` (``phantom-fundus``): vertical cup-to-disc ratio;
* :mod:`~medfusion_jax.data.phantoms.cxr` (``phantom-cxr``): cardiothoracic ratio;
* :mod:`~medfusion_jax.data.phantoms.histo` (``phantom-histo``): lymphocyte density;
* :mod:`~medfusion_jax.data.phantoms.brain` (``phantom-brain``, volumes): ventricle-to-brain ratio.

Each module has ``CLASS_NAMES``, ``render(rng, label, size)``, ``measure(image) -> float``,
``THRESHOLD``, ``POSITIVE_CLASS`` (the class a measurement above the threshold indicates) and
``FEATURE`` (what is measured). Items are deterministic per (seed, split, index), at any size;
see :mod:`~medfusion_jax.data.phantoms.common`.
"""

from medfusion_jax.data.phantoms import brain, cxr, fundus, histo
from medfusion_jax.data.phantoms.common import PhantomSource

__all__ = ["PhantomSource", "brain", "cxr", "fundus", "histo"]
