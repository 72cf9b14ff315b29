"""Imports flow one way: every module imports only from its own layer or the layers below it.

The stack (lowest first) is the README's "Architecture" section; a module that imports upward, or a
new module that no layer claims, fails here with the offending import named. Imports inside functions
count as much as those at the top: a deferred upward import is still an upward dependency.
"""

from __future__ import annotations

import ast
import importlib.util
import io
import re
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: (rank, group, module prefixes). A module may import a module of a lower rank or of its own group;
#: groups of equal rank are siblings and may not import each other.
LAYERS = [
    (0, "base", ["medfusion_jax", "medfusion_jax.xla_cpu", "medfusion_jax.command", "medfusion_jax.mesh",
                 "medfusion_jax.torch_file",
                 "medfusion_jax.images", "medfusion_jax.config", "medfusion_jax.plots", "medfusion_jax.report",
                 "medfusion_jax.data"]),
    (1, "layers", ["medfusion_jax.layers"]),
    (2, "models", ["medfusion_jax.models"]),
    (3, "diffusion", ["medfusion_jax.diffusion"]),
    (4, "losses", ["medfusion_jax.losses"]),
    (5, "pretrained", ["medfusion_jax.pretrained"]),
    (6, "metrics", ["medfusion_jax.metrics"]),
    (7, "evaluation", ["medfusion_jax.evaluation"]),
    (7, "run_folder", ["medfusion_jax.run_folder"]),
    (8, "training", ["medfusion_jax.training"]),
    (8, "convert", ["medfusion_jax.convert"]),
    (9, "workflows", ["medfusion_jax.workflows"]),
    (10, "commands", ["train", "eval"]),
]
PACKAGES = ("medfusion_jax", "train", "eval")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def layer_of(module: str) -> tuple[int, str] | None:
    best = None
    for rank, group, prefixes in LAYERS:
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and (best is None or len(prefix) > best[0]):
                best = (len(prefix), rank, group)
    return None if best is None else best[1:]


def imported_modules(path: Path, name: str, known: set[str]) -> list[tuple[int, str]]:
    """(line, module) for every import of one of our modules (``from pkg import mod`` resolves to mod)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.append((node.lineno, sub if sub in known else target))
    return [(line, mod) for line, mod in found if mod.split(".")[0] in PACKAGES]


MODULES = all_modules()


def test_every_module_has_a_layer():
    unplaced = [m for m in MODULES if layer_of(m) is None]
    assert not unplaced, f"modules that no layer claims (add them to LAYERS and the README): {unplaced}"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_flow_downward(name):
    rank, group = layer_of(name)
    upward = []
    for line, target in imported_modules(MODULES[name], name, set(MODULES)):
        placed = layer_of(target)
        assert placed is not None, f"{name}:{line} imports {target}, which no layer claims"
        if not (placed[0] < rank or placed[1] == group):
            upward.append(f"{MODULES[name].relative_to(ROOT)}:{line} imports {target} "
                          f"({placed[1]}, rank {placed[0]}) from {group} (rank {rank})")
    assert not upward, "upward imports:\n" + "\n".join(upward)


def test_the_checker_sees_an_upward_import(tmp_path):
    """The test itself can fail: a models module that imports training is reported, also inside a function."""
    source = "def f():\n    from medfusion_jax.training import loop\n    from ..evaluation import features\n"
    path = tmp_path / "fake_probe.py"
    path.write_text(source)
    known = set(MODULES) | {"medfusion_jax.models.fake_probe"}
    found = imported_modules(path, "medfusion_jax.models.fake_probe", known)
    assert [m for _, m in found] == ["medfusion_jax.training.loop", "medfusion_jax.evaluation.features"]
    assert all(layer_of(m)[0] > layer_of("medfusion_jax.models.fake_probe")[0] for _, m in found)


def test_layers_are_importable():
    for _, _, prefixes in LAYERS:
        for prefix in prefixes:
            assert importlib.util.find_spec(prefix) is not None, prefix


#: "the spec" (or "spec section") in a docstring or comment must be followed by its section number.
UNNUMBERED_SPEC = re.compile(r"\b(?:the|of|in|see|per) spec\b(?!\s*\(?(?:sections?\s*)?\d)|\bspec sections?\b(?!\s*\d)",
                             re.IGNORECASE)


def unnumbered_spec_citations(source: str) -> list[int]:
    lines = []
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type in (tokenize.STRING, tokenize.COMMENT) and UNNUMBERED_SPEC.search(tok.string):
            lines.append(tok.start[0])
    return lines


def test_spec_citations_name_their_section():
    """A docstring or comment that cites the spec names the section (what is cited there is stated beside it
    by hand; this checks the half a machine can)."""
    assert unnumbered_spec_citations('"""Loss as in the spec."""\n# see spec section 4.3\n') == [1]
    assert unnumbered_spec_citations('"""As the spec (section 5.1): L1."""\n') == []
    found = [f"{path.relative_to(ROOT)}:{line}" for path in MODULES.values()
             for line in unnumbered_spec_citations(path.read_text())]
    assert not found, found
