"""Every loss is copyable: ``criteria/<loss>.py`` + ``criteria/_common.py`` dropped into a package
of another name import without this repository's packages and build by hand from their documented
context alone (``n_classes``, ``embed_dim``, ``lr``, a ``batchminer`` of an accepted kind)."""

from __future__ import annotations

import ast
import importlib
import inspect
import shutil
import sys
from pathlib import Path

import pytest
import torch

import criteria
from tests.criteria.helpers import STUB_MINERS, packed

CRITERIA = Path(criteria.__file__).resolve().parent
CONTEXT = {"n_classes": 4, "embed_dim": 8, "lr": 1e-3, "seed": 0}


def _absolute_imports(path: Path) -> set[str]:
    """Top-level names of the absolute imports of a file (relative imports are the copied pair)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.fixture
def copied_package(tmp_path, request, monkeypatch):
    """A fresh package ``mylosses_<test>`` under ``tmp_path``; its modules are unloaded afterwards."""
    package = f"mylosses_{request.node.callspec.id}"
    root = tmp_path / package
    root.mkdir()
    (root / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield package, root
    for module in [m for m in sys.modules if m == package or m.startswith(package + ".")]:
        del sys.modules[module]


@pytest.mark.parametrize("name", criteria.REGISTRY.names())
def test_loss_file_and_common_work_as_a_copy(name, copied_package):
    package, root = copied_package
    cls = criteria.REGISTRY.get(name)
    source = Path(inspect.getfile(cls))
    for path in (source, CRITERIA / "_common.py"):
        assert _absolute_imports(path) <= {"torch", *sys.stdlib_module_names}, path.name
        shutil.copy(path, root / path.name)

    module = importlib.import_module(f"{package}.{source.stem}")
    copy = getattr(module, cls.__name__)
    assert copy is not cls and copy.__module__.startswith(package)
    values = dict(CONTEXT)
    if copy.requires_miner:
        values["batchminer"] = STUB_MINERS[copy.tuple_kinds[0]]()
    params = list(inspect.signature(copy.__init__).parameters.values())[1:]
    required = [p.name for p in params if p.default is inspect.Parameter.empty]
    assert set(required) <= set(values), f"undocumented context {set(required) - set(values)}"
    loss = copy(**{k: values[k] for k in required})

    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(12, 8, generator=g), dim=1)
    labels = torch.arange(4).repeat_interleave(3)[torch.randperm(12, generator=g)]
    x = packed(name, x, g).requires_grad_()  # as the network emits the loss's distribution
    value = loss(x, labels)
    value.backward()
    assert value.dim() == 0 and torch.isfinite(value)
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
