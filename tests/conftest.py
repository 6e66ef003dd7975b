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


@pytest.fixture(scope="session")
def mtl_run(demo_corpus, tmp_path_factory):
    """A finished 2-epoch multi-task run (tiny encoder, LOSO fold 1) on the demo corpus:
    (run folder, the recipe's CompletedProcess). Tests must not modify it."""
    from tests.recipes.helpers import run_recipe

    out = tmp_path_factory.mktemp("mtl_run")
    done = run_recipe("train_mtl.py", "mtl.yaml", demo_corpus, out, "--number_of_epochs=2")
    return out, done
