"""The default install carries faiss's CPU wheel; the GPU build is an opt-in group that replaces it."""

from __future__ import annotations

from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
ROOT = Path(__file__).resolve().parents[1]


def test_faiss_gpu_is_opt_in_and_excludes_the_cpu_wheel():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    groups, uv = project["dependency-groups"], project["tool"]["uv"]
    assert any(d.startswith("faiss-cpu") for d in groups["faiss-cpu"])
    assert any(d.startswith("faiss-gpu") for d in groups["faiss-gpu"])
    assert "faiss-cpu" in uv["default-groups"] and "faiss-gpu" not in uv["default-groups"]
    assert [{"group": "faiss-cpu"}, {"group": "faiss-gpu"}] in uv["conflicts"]
    assert not any("faiss" in d for d in project["project"]["dependencies"])


def test_the_lock_resolves_both_builds():
    lock = (ROOT / "uv.lock").read_text()
    assert 'name = "faiss-cpu"' in lock and 'name = "faiss-gpu-cu12"' in lock
