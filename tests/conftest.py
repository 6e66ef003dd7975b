"""Fixtures shared by the whole test suite."""

from __future__ import annotations

from pathlib import Path

import pytest

from mtl_ser.data.demo import synthesize_demo_corpus


@pytest.fixture(scope="session")
def demo_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default demo corpus (seed 0, 5 sessions x 2 speakers x 30 utterances) in the
    IEMOCAP release layout, synthesised once per test session; returns its folder.
    Tests must not modify it."""
    out = tmp_path_factory.mktemp("demo_corpus")
    synthesize_demo_corpus(out, progress=False)
    return out
