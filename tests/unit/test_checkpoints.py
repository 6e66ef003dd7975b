"""Checkpoints: interrupted, damaged or planted files are never resumed from; random
generators and the checkpoint choice are exact."""

import hashlib
import json
import logging
import os
import pickle
import random

import numpy as np
import pytest
import torch

from mtl_ser.checkpoints import (
    COMPLETE,
    CheckpointLoadError,
    CrashSafeCheckpointer,
    DamagedCheckpointError,
    RandomStates,
    find_selected_checkpoint,
)
from mtl_ser.stopping import EarlyStoppingCounter


def two_checkpoints(tmp_path):
    """A model and counter with checkpoints after epochs 1 (weights 1.0) and 2 (2.0)."""
    model = torch.nn.Linear(2, 2)
    counter = EarlyStoppingCounter(limit=5)
    checkpointer = CrashSafeCheckpointer(
        tmp_path, recoverables={"model": model, "counter": counter}
    )
    saved = []
    for epoch in (1, 2):
        next(counter)
        with torch.no_grad():
            model.weight.fill_(float(epoch))
        saved.append(checkpointer.save_checkpoint(meta={"epoch": epoch}))
    with torch.no_grad():
        model.weight.fill_(7.0)
    return model, counter, checkpointer, saved


def test_marker_lists_every_file_with_its_hash(tmp_path):
    _, _, _, saved = two_checkpoints(tmp_path)
    manifest = json.loads((saved[1].path / COMPLETE).read_text())
    assert set(manifest) == {"CKPT.yaml", "model.ckpt", "counter.ckpt"}
    data = (saved[1].path / "model.ckpt").read_bytes()
    assert manifest["model.ckpt"] == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def test_incomplete_checkpoint_is_ignored(tmp_path):
    model, _, checkpointer, (first, second) = two_checkpoints(tmp_path)
    # A crash after CKPT.yaml, before the parameter files: the marker is missing.
    (second.path / COMPLETE).unlink()
    (second.path / "model.ckpt").unlink()
    assert [c.path for c in checkpointer.list_checkpoints()] == [first.path]
    assert checkpointer.recover_if_possible().meta["epoch"] == 1
    assert torch.all(model.weight == 1.0)


@pytest.mark.parametrize(
    "damage",
    [
        lambda p: (p / "model.ckpt").write_bytes((p / "model.ckpt").read_bytes()[:100]),
        lambda p: (p / "CKPT.yaml").write_text(""),
        lambda p: (p / "counter.ckpt").write_text(""),
        lambda p: (p / "model.ckpt").write_bytes(b"x" * (p / "model.ckpt").stat().st_size),
    ],
    ids=["truncated weights", "empty CKPT.yaml", "empty counter", "same size, other bytes"],
)
def test_damaged_newest_checkpoint_falls_back_with_a_named_warning(tmp_path, caplog, damage):
    model, counter, checkpointer, (first, second) = two_checkpoints(tmp_path)
    damage(second.path)
    with caplog.at_level(logging.WARNING):
        recovered = checkpointer.recover_if_possible()
    assert recovered.path == first.path
    assert torch.all(model.weight == 1.0) and counter.current == 1
    assert str(second.path) in caplog.text


def test_all_damaged_is_an_error(tmp_path):
    _, _, checkpointer, saved = two_checkpoints(tmp_path)
    for checkpoint in saved:
        (checkpoint.path / "model.ckpt").write_bytes(b"")
    # Listing already drops them (sizes differ): nothing to recover, as for a new run.
    assert checkpointer.recover_if_possible() is None
    for checkpoint in saved:
        (checkpoint.path / "model.ckpt").write_bytes(b"z" * 10)
        manifest = json.loads((checkpoint.path / COMPLETE).read_text())
        manifest["model.ckpt"]["size"] = 10
        (checkpoint.path / COMPLETE).write_text(json.dumps(manifest))
    with pytest.raises(DamagedCheckpointError, match="every checkpoint in .* is damaged"):
        checkpointer.recover_if_possible()


class Payload:
    """Unpickling this runs a shell command that writes a marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_planted_pickle_never_runs_even_with_weights_only_disabled(tmp_path, monkeypatch):
    """An attacker who rewrites a checkpoint file and its marker: the load is refused (not
    skipped) and the payload does not run, even with TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1."""
    _, _, checkpointer, (_, second) = two_checkpoints(tmp_path / "save")
    marker = tmp_path / "pwned"
    with open(second.path / "model.ckpt", "wb") as f:
        pickle.dump({"weight": Payload(marker)}, f)
    data = (second.path / "model.ckpt").read_bytes()
    manifest = json.loads((second.path / COMPLETE).read_text())
    manifest["model.ckpt"] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (second.path / COMPLETE).write_text(json.dumps(manifest))
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(CheckpointLoadError, match="is intact but does not load"):
        checkpointer.recover_if_possible()
    assert not marker.exists()
    assert os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] == "1"  # restored afterwards


def test_an_intact_checkpoint_of_another_model_is_an_error_not_a_fallback(tmp_path):
    two_checkpoints(tmp_path)
    other = CrashSafeCheckpointer(tmp_path, recoverables={"model": torch.nn.Linear(3, 3)})
    with pytest.raises(CheckpointLoadError, match="if the configuration changed"):
        other.recover_if_possible()


def draws():
    return (random.random(), float(np.random.rand()), float(torch.rand(1)))


def test_random_states_resume_the_same_draws(tmp_path):
    checkpointer = CrashSafeCheckpointer(tmp_path, recoverables={"rng": RandomStates()})
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    draws()
    checkpointer.save_checkpoint(meta={"epoch": 1})
    expected = [draws() for _ in range(3)]
    random.seed(9), np.random.seed(9), torch.manual_seed(9)  # as a restarted process
    checkpointer.recover_if_possible()
    assert [draws() for _ in range(3)] == expected


def test_checkpoint_selection(tmp_path):
    checkpointer = CrashSafeCheckpointer(tmp_path, recoverables={"m": torch.nn.Linear(1, 1)})
    for epoch, ua in [(1, 0.4), (2, 0.6), (3, 0.6), (4, 0.5)]:
        checkpointer.save_checkpoint(meta={"epoch": epoch, "UA": ua})
    checkpointer.save_checkpoint(meta={}, end_of_epoch=False)  # inside epoch 5
    # A tie goes to the earlier epoch, as early stopping counts a tie as no improvement.
    assert find_selected_checkpoint(checkpointer, "best_valid").meta["epoch"] == 2
    assert find_selected_checkpoint(checkpointer, "last").meta["epoch"] == 4
    with pytest.raises(ValueError, match="checkpoint_selection must be one of"):
        find_selected_checkpoint(checkpointer, "best_test")


def test_an_interrupted_checkpoint_is_deleted_when_the_next_one_completes(tmp_path):
    """A save killed before its COMPLETE marker leaves a folder no listing shows (so
    save_and_keep_only never deletes it): the next complete checkpoint removes it."""
    model = torch.nn.Linear(2, 2)
    checkpointer = CrashSafeCheckpointer(tmp_path, recoverables={"model": model})
    kept = checkpointer.save_checkpoint(meta={"epoch": 1})
    interrupted = checkpointer.save_checkpoint(meta={"epoch": 2})
    (interrupted.path / COMPLETE).unlink()  # as a kill between the files and the marker
    newest = checkpointer.save_checkpoint(meta={"epoch": 3})
    assert not interrupted.path.exists()
    assert kept.path.exists() and newest.path.exists()
    assert sorted(c.meta["epoch"] for c in checkpointer.list_checkpoints()) == [1, 3]


def _random_states_rank(rank: int, folder: str) -> None:
    """One of two gloo processes: seeded by rank, gathers, rank 0 writes; each draws what
    follows, scrambles its generators, recovers and draws again."""
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=2
    )
    random.seed(rank), np.random.seed(10 + rank), torch.manual_seed(20 + rank)
    states = RandomStates()
    states.gather()
    if rank == 0:
        states._save(f"{folder}/random_states.ckpt")
    torch.distributed.barrier()
    expected = draws()
    random.seed(99), np.random.seed(99), torch.manual_seed(99)  # a restarted process
    states._recover(f"{folder}/random_states.ckpt")
    torch.save({"expected": expected, "resumed": draws()}, f"{folder}/rank{rank}.pt")
    torch.distributed.destroy_process_group()


def test_every_ddp_process_resumes_its_own_random_draws(tmp_path):
    torch.multiprocessing.spawn(_random_states_rank, args=(str(tmp_path),), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    for rank in ranks:
        assert rank["resumed"] == rank["expected"]
    assert ranks[0]["expected"] != ranks[1]["expected"]  # each resumed its own, not rank 0's
