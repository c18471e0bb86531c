"""Start-up stays light: ``main.py --help``, a configuration error and ``python -m evaluation --help``
import no heavy library (issue 15, point 8).

Backbone builders (torchvision: importing any part of it imports ``torchvision.models`` and
``torch._dynamo``, seconds of CPU), the embedded dataset (scikit-learn, which pulls scipy and
pandas), the CARS ``.mat`` reader and NMI's log-gamma (scipy), the numba kernels, faiss, matplotlib
and wandb are imported by the functions that use them. Checked by module *names* in a fresh
process, not by timing, so a loaded machine cannot make the test flaky.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = (
    "torchvision",  # its __init__ imports torchvision.models (and torch._dynamo through torchvision.ops)
    "sklearn",
    "scipy",
    "timm",
    "pretrainedmodels",
    "numba",
    "matplotlib",
    "pandas",
    "wandb",
    "faiss",
)
# run an entry point exactly as the command line does; at exit, record which modules were imported
SCRIPT = """
import atexit, json, runpy, sys
out, target, *argv = sys.argv[1:]
atexit.register(lambda: open(out, "w").write(json.dumps(sorted(sys.modules))))
sys.argv = [target, *argv]
if target.endswith(".py"):
    runpy.run_path(target, run_name="__main__")
else:
    runpy.run_module(target, run_name="__main__", alter_sys=True)
"""


def _start(tmp_path: Path, target: str, *argv: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    out = tmp_path / "modules.json"
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(out), target, *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return proc, json.loads(out.read_text())


def _heavy(modules: list[str]) -> list[str]:
    return sorted({m.split(".")[0] for m in modules if m.split(".")[0] in HEAVY})


@pytest.mark.parametrize(
    ("target", "argv"),
    [("main.py", ["--help"]), ("evaluation", ["--help"])],
    ids=["main --help", "evaluation --help"],
)
def test_help_imports_no_heavy_library(tmp_path, target, argv):
    proc, modules = _start(tmp_path, target, *argv)
    assert proc.returncode == 0, proc.stderr
    assert "--help" in proc.stdout or "usage" in proc.stdout.lower()
    assert "torch" in modules  # the one heavy import start-up does pay
    assert _heavy(modules) == [], f"{target} {' '.join(argv)} imports {_heavy(modules)}"


def test_configuration_error_is_one_line_and_imports_no_heavy_library(tmp_path):
    """A missing dataset folder: past the command line, the device and metric checks, up to the
    dataset's listing, the furthest a configuration error of a fresh run gets."""
    missing = tmp_path / "no_datasets"
    proc, modules = _start(tmp_path, "main.py", "--dataset", "cub200", "--source_path", str(missing))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cub200: no dataset found"), proc.stderr
    assert _heavy(modules) == [], f"a configuration error imports {_heavy(modules)}"
