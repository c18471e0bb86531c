"""The import graph: every import points down the layers, and sits at module top.

Layers, top to bottom: entry points (``main.py``, ``python -m evaluation``, the scripts, toy
experiments and benchmarks) -> ``parameters.py`` (main's command line) -> plugins (``criteria``, ``batch_mining``,
``datasampler``, ``datasets``, ``architectures``) and ``evaluation`` -> ``metrics`` ->
``utilities``. Packages of one layer do not import each other, with one declared exception:
miners produce what losses consume, so ``batch_mining`` may import ``criteria._common`` (the tuple
kinds and distance helpers live there because a copied loss file needs them).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYER = {
    "utilities": 0,
    "metrics": 1,
    "evaluation": 2,
    "criteria": 2,
    "batch_mining": 2,
    "datasampler": 2,
    "datasets": 2,
    "architectures": 2,
    "parameters": 3,  # the command line of main.py: builds on every plugin registry
    "main": 4,
    "evaluation.__main__": 4,
    "evaluation.ensemble": 4,  # python -m evaluation --ensemble: rebuilds runs from their flags
    "Result_Evaluations": 4,
    "toy_experiments": 4,
    "benchmarks": 4,
}
PROJECT = {name.split(".")[0] for name in LAYER}
ALLOWED_SIDEWAYS = {("batch_mining", "criteria._common"), ("evaluation.__main__", "evaluation.ensemble")}
# imports that may sit inside a function, each for a reason that holds: a slow optional dependency
# only some runs need, a library whose import costs seconds that `main.py --help` and configuration
# errors must not pay (tests/test_import_time.py), or a backend that must be chosen before its first
# import. Lazy imports of project modules obey the same layer rules as those at module top.
LAZY_OK = {
    "torchvision.models",  # any torchvision import loads torchvision.models and torch._dynamo
    "torchvision.transforms",
    "torchvision.transforms.functional",
    "sklearn.datasets",  # the embedded digits dataset; sklearn pulls scipy and pandas
    "scipy.special",  # NMI's expected mutual information
    "wandb",
    "matplotlib",
    "matplotlib.pyplot",
    "timm",
    "pretrainedmodels",
    "scipy.io",
    "numba",
    "metrics._rank_kernel",
    "metrics._kmeans_kernel",
    "pytorch_metric_learning",  # benchmarks: the dev-only comparison library
    "pytorch_metric_learning.losses",
    "pytorch_metric_learning.miners",
    "pytorch_metric_learning.utils.accuracy_calculator",
    "faiss",
}


def _modules() -> list[tuple[str, Path]]:
    out = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT)
        if rel.parts[0] in {".venv", "tests", ".git"} or rel.parts[0] not in PROJECT | {
            f"{p}.py" for p in PROJECT
        }:
            continue
        name = ".".join(rel.with_suffix("").parts)
        out.append((name.removesuffix(".__init__"), path))
    return out


def _layer_of(module: str) -> tuple[str, int]:
    """(the layer's key, its rank) of a project module."""
    key = module if module in ("evaluation.__main__", "evaluation.ensemble") else module.split(".")[0]
    return key, LAYER[key]


def _imports(path: Path, module: str) -> list[tuple[str, bool, int]]:
    """(imported module, at module top?, line) for every import in ``path``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    top = {id(node) for node in tree.body}
    # imports inside `if TYPE_CHECKING:` / try blocks at module level are still module-level
    for node in tree.body:
        if isinstance(node, (ast.If, ast.Try)):
            top |= {id(n) for n in ast.walk(node)}
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the importing package
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            # `from pkg import sub` may name a submodule: keep the most specific project name
            names = [
                f"{stem}.{a.name}" if (ROOT / stem.replace(".", "/") / f"{a.name}.py").exists() else stem
                for a in node.names
            ]
        else:
            continue
        found += [(name, id(node) in top, node.lineno) for name in names]
    return found


MODULES = _modules()


def test_the_graph_covers_the_project():
    names = {m for m, _ in MODULES}
    assert {"main", "parameters", "criteria.triplet", "utilities.registry", "evaluation.__main__"} <= names


@pytest.mark.parametrize(("module", "path"), MODULES, ids=[m for m, _ in MODULES])
def test_imports_point_down_and_sit_at_module_top(module, path):
    own_key, own_rank = _layer_of(module)
    for imported, at_top, line in _imports(path, module):
        where = f"{path.relative_to(ROOT)}:{line} imports {imported}"
        # benchmarks import inside their measurement functions on purpose: each measurement runs
        # in a fresh process and pays its imports outside the timer
        if not at_top and own_key != "benchmarks":
            assert imported in LAZY_OK, f"{where} inside a function (move it to the top)"
        if imported.split(".")[0] not in PROJECT:
            continue
        key, rank = _layer_of(imported)
        if key == own_key or any(module.startswith(a) and imported == b for a, b in ALLOWED_SIDEWAYS):
            continue
        assert rank < own_rank, f"{where}: layer {own_key} ({own_rank}) must not import {key} ({rank})"


def test_the_layer_check_catches_an_upward_import(tmp_path):
    """The test above can fail: a fake utilities module importing a plugin is flagged."""
    fake = tmp_path / "bad.py"
    fake.write_text("import criteria\n\ndef f():\n    from utilities import errors\n    import datasets\n")
    found = _imports(fake, "utilities.bad")
    assert ("criteria", True, 1) in found and ("utilities.errors", False, 4) in found
    assert ("datasets", False, 5) in found  # a lazy import is found, and layer-checked like the others
    assert _layer_of("criteria")[1] > _layer_of("utilities.bad")[1]
