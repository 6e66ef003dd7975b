"""Checkpoints interrupted while saving are never resumed from."""

import torch

from mtl_ser.checkpoints import COMPLETE, CrashSafeCheckpointer


def test_incomplete_checkpoint_is_ignored(tmp_path):
    model = torch.nn.Linear(2, 2)
    checkpointer = CrashSafeCheckpointer(tmp_path, recoverables={"model": model})
    first = checkpointer.save_checkpoint(meta={"epoch": 1})
    second = checkpointer.save_checkpoint(meta={"epoch": 2})
    assert sorted(c.meta["epoch"] for c in checkpointer.list_checkpoints()) == [1, 2]
    # A crash after CKPT.yaml, before the parameter files: the marker is missing.
    (second.path / COMPLETE).unlink()
    (second.path / "model.ckpt").unlink()
    assert [c.path for c in checkpointer.list_checkpoints()] == [first.path]
    with torch.no_grad():
        model.weight.fill_(7.0)
    recovered = checkpointer.recover_if_possible()
    assert recovered.meta["epoch"] == 1
    assert not torch.all(model.weight == 7.0)
