"""The uninterrupted reference run shared by the resume and evaluate-only tests (trained once)."""

from __future__ import annotations

import pytest

from tests.lifecycle._runs import tiny_args


@pytest.fixture(scope="session")
def reference(tmp_path_factory):
    import main

    save = tmp_path_factory.mktemp("reference")
    main.main(tiny_args(save, "ref"))
    return save / "digits" / "ref"
