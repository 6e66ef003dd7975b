"""Checkpoints that survive crashes, damage and hostile files, and make resume exact.

SpeechBrain's Checkpointer writes a checkpoint's CKPT.yaml first and its parameter files
after, loads whatever the newest folder holds, and unpickles with the caller's torch
defaults. `CrashSafeCheckpointer` adds:

- a ``COMPLETE`` marker written after the last file, holding each file's size and SHA-256;
  a checkpoint without it (saving was interrupted) is never listed;
- damage detection: a checkpoint whose CKPT.yaml does not parse, or whose files no longer
  match the marker (truncated weights, an emptied ``counter.ckpt``), is skipped with a
  warning naming it, and recovery falls back to the next complete checkpoint;
- weights-only loading: every file is unpickled with ``weights_only=True`` (forced, even
  when ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` is set), so a planted pickle cannot run code;
- a crash while an old checkpoint is deleted leaves files missing from its marker's list:
  it is then skipped like any damaged one;
- a checkpoint folder left without its marker by a crash (up to a model's size each) is
  deleted as soon as the next checkpoint is complete.

`RandomStates` is a recoverable holding the Python, NumPy and torch (CPU and CUDA) random
generators of every process: a run killed at any point and re-run resumes with the
generators of its last checkpoint, so it continues exactly as the uninterrupted run would.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
import yaml
from speechbrain.utils.checkpoints import (
    METAFNAME,
    Checkpoint,
    Checkpointer,
    mark_as_loader,
    mark_as_saver,
    register_checkpoint_hooks,
)
from speechbrain.utils.distributed import if_main_process

logger = logging.getLogger(__name__)

COMPLETE = "COMPLETE"


class DamagedCheckpointError(ValueError):
    """A checkpoint's files do not match what was written."""


class CheckpointLoadError(ValueError):
    """An intact checkpoint that cannot be loaded into this run."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def weights_only_loads():
    """Within this block every ``torch.load`` unpickles tensors and plain containers only,
    whatever its call site asks (SpeechBrain's load hooks do not pass ``weights_only``, and
    ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` would otherwise turn it off)."""
    saved = {
        k: os.environ.get(k)
        for k in ("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")
    }
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    os.environ.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class CrashSafeCheckpointer(Checkpointer):
    """`speechbrain.utils.checkpoints.Checkpointer` that lists complete, undamaged
    checkpoints only, loads weights only, and falls back past damaged checkpoints."""

    # --------------------------------------------------------------------------- saving
    def save_checkpoint(self, *args, **kwargs):
        checkpoint = super().save_checkpoint(*args, **kwargs)
        if if_main_process() and checkpoint is not None:
            files = sorted(p for p in checkpoint.path.iterdir() if p.name != COMPLETE)
            manifest = {p.name: {"size": p.stat().st_size, "sha256": _sha256(p)} for p in files}
            tmp = checkpoint.path / f"{COMPLETE}.tmp"
            tmp.write_text(json.dumps(manifest, indent=1) + "\n")
            os.replace(tmp, checkpoint.path / COMPLETE)
            self._delete_incomplete(keep=checkpoint.path)
        return checkpoint

    def _delete_incomplete(self, keep: Path) -> None:
        """Deletes the checkpoint folders other than ``keep`` that have no COMPLETE marker:
        saves interrupted by a crash, never listed and so never deleted by
        `save_and_keep_only` (one run folder is written by one run at a time: the run
        lock)."""
        for folder in self._list_checkpoint_dirs():
            if folder != keep and not (folder / COMPLETE).is_file():
                logger.info("deleting the interrupted checkpoint %s", folder)
                shutil.rmtree(folder, ignore_errors=True)

    # -------------------------------------------------------------------------- listing
    def list_checkpoints(self) -> list[Checkpoint]:
        """Complete checkpoints whose metadata parses and whose files have the sizes
        recorded in their marker (missing files and content hashes are checked when one is
        loaded)."""
        good = []
        for folder in self._list_checkpoint_dirs():
            try:
                good.append(self._open(folder))
            except DamagedCheckpointError as err:
                logger.warning("ignoring checkpoint %s: %s", folder, err)
        return good

    @staticmethod
    def _open(folder: Path) -> Checkpoint:
        """The `Checkpoint` of ``folder``; raises DamagedCheckpointError saying why not."""
        marker = folder / COMPLETE
        if not marker.is_file():
            raise DamagedCheckpointError("incomplete (saving was interrupted)")
        try:
            meta = yaml.safe_load((folder / METAFNAME).read_text())
        except (OSError, yaml.YAMLError) as err:
            raise DamagedCheckpointError(f"{METAFNAME} is unreadable ({err})") from None
        if not isinstance(meta, dict) or "end-of-epoch" not in meta:
            raise DamagedCheckpointError(f"{METAFNAME} holds no checkpoint metadata")
        manifest = _read_manifest(marker)
        paramfiles = {}
        for path in folder.iterdir():
            if path.suffix == ".ckpt":
                paramfiles[path.stem] = path
        for name, expected in manifest.items():
            path = folder / name
            # A missing file (e.g. optimiser states removed to save space) is found by
            # `verify` when that checkpoint is loaded; a present one must be whole.
            if path.is_file() and path.stat().st_size != expected["size"]:
                raise DamagedCheckpointError(
                    f"{name} has {path.stat().st_size} bytes, {expected['size']} were written"
                )
        return Checkpoint(folder, meta, paramfiles)

    @staticmethod
    def verify(checkpoint: Checkpoint, names=None) -> bool:
        """Checks the files ``names`` of ``checkpoint`` (default: all it was written with)
        against the SHA-256 in its marker; raises DamagedCheckpointError naming the first
        file that is missing or differs.

        Returns: False for a checkpoint of mtl-ser 0.1 (empty marker: nothing to check).
        """
        manifest = _read_manifest(Path(checkpoint.path) / COMPLETE)
        for name in manifest if names is None else names:
            path = Path(checkpoint.path) / name
            if not path.is_file():
                raise DamagedCheckpointError(f"{name} is missing")
            if name in manifest and _sha256(path) != manifest[name].get("sha256"):
                raise DamagedCheckpointError(f"{name} differs from what was written")
        return bool(manifest)

    # ------------------------------------------------------------------------- recovery
    def recover_if_possible(
        self, importance_key=None, max_key=None, min_key=None, ckpt_predicate=None
    ):
        """Loads the best checkpoint by the given key (the newest by default) whose files
        are intact; a damaged one is skipped with a warning naming it and the next is
        tried. A checkpoint whose files are intact but do not load (another model
        configuration, or a file that is not plain weights) is an error, never skipped.

        Returns: the loaded `Checkpoint`, or None when there is none.
        """
        candidates = self.find_checkpoints(importance_key, max_key, min_key, ckpt_predicate)
        for checkpoint in candidates:
            try:
                verified = self.verify(checkpoint)
            except DamagedCheckpointError as err:
                logger.warning(
                    "checkpoint %s is damaged (%s); falling back to an older one",
                    checkpoint.path,
                    err,
                )
                continue
            try:
                self.load_checkpoint(checkpoint)
            except Exception as err:
                if verified:
                    raise CheckpointLoadError(
                        f"checkpoint {checkpoint.path} is intact but does not load into this "
                        f"run ({type(err).__name__}: {err}); if the configuration changed, "
                        "use a new output folder"
                    ) from err
                logger.warning(
                    "checkpoint %s does not load (%s: %s); falling back to an older one",
                    checkpoint.path,
                    type(err).__name__,
                    err,
                )
                continue
            return checkpoint
        if candidates:
            raise DamagedCheckpointError(
                f"every checkpoint in {self.checkpoints_dir} is damaged; remove them to start over"
            )
        logger.info("no checkpoint to recover from in %s", self.checkpoints_dir)
        return None

    def load_checkpoint(self, checkpoint):
        with weights_only_loads():
            super().load_checkpoint(checkpoint)


CHECKPOINT_SELECTIONS = ("best_valid", "last")


def has_valid_metrics(checkpoint: Checkpoint) -> bool:
    """Saved at the end of an epoch, with its validation metrics (not inside an epoch)."""
    return "UA" in checkpoint.meta and "epoch" in checkpoint.meta


def selection_key(selection: str):
    """The importance key of ``checkpoint_selection`` over end-of-epoch checkpoints:

    - "best_valid": the highest validation value of ``selection_metric`` (UA by default;
      negated for a metric where lower is better); among ties the earliest epoch (the early
      stopper does not count a tie as an improvement either);
    - "last": the latest epoch.

    Checkpoints saved inside an epoch (no validation metrics) rank below all others.
    """
    if selection not in CHECKPOINT_SELECTIONS:
        raise ValueError(
            f"checkpoint_selection must be one of {list(CHECKPOINT_SELECTIONS)}, not {selection!r}"
        )

    def key(checkpoint: Checkpoint) -> tuple:
        if not has_valid_metrics(checkpoint):
            return (0, 0.0, 0)
        epoch = checkpoint.meta["epoch"]
        if selection == "last":
            return (1, float(epoch), 0)
        # The selection metric's value (higher is better); checkpoints saved before
        # selection_metric existed chose on validation UA.
        return (1, float(checkpoint.meta.get("selection", checkpoint.meta["UA"])), -epoch)

    return key


def find_selected_checkpoint(checkpointer: Checkpointer, selection: str) -> Checkpoint | None:
    """The end-of-epoch checkpoint that ``selection`` chooses, or None when there is none."""
    return checkpointer.find_checkpoint(
        importance_key=selection_key(selection), ckpt_predicate=has_valid_metrics
    )


def _read_manifest(marker: Path) -> dict:
    """The files recorded in a COMPLETE marker ({} for the empty markers of mtl-ser 0.1)."""
    text = marker.read_text()
    if not text.strip():
        return {}
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError as err:
        raise DamagedCheckpointError(f"{COMPLETE} is unreadable ({err})") from None
    if not isinstance(manifest, dict):
        raise DamagedCheckpointError(f"{COMPLETE} is not a file list")
    return manifest


def _process_random_state() -> dict:
    """This process's generators (Python, NumPy, torch CPU and CUDA) as tensors and plain
    values (loadable with ``weights_only``)."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": {"version": version, "internal": list(internal), "gauss": gauss},
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def _restore_random_state(state: dict) -> None:
    """Sets this process's generators to a `_process_random_state`."""
    py = state["python"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss"]))
    np_state = state["numpy"]
    np.random.set_state(
        (
            np_state["kind"],
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached"],
        )
    )
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


@register_checkpoint_hooks
class RandomStates:
    """The random generators (Python, NumPy, torch CPU and CUDA) of every process, as a
    recoverable.

    Saved with every checkpoint and restored on recovery, after the model was built (which
    consumed random numbers), so the next epoch draws what it drew in the uninterrupted run:
    the shuffling, dropout, wav2vec2's time masks and batch augmentation.

    Under DDP only the main process writes checkpoints, so every process calls `gather`
    (a collective) just before a save: the main process then writes the list of all
    processes' states, and on recovery each process restores its own rank's. Without a
    gather (one process) the saving process's state is written. A checkpoint of mtl-ser 0.x
    (one state) or of a different number of processes restores what it holds and leaves the
    other processes' generators as their seeds made them (logged).
    """

    def __init__(self):
        self._gathered: list | None = None

    def gather(self) -> None:
        """Collects every process's generators for the next save (call on every process;
        under DDP a collective)."""
        state = _process_random_state()
        if _distributed():
            states = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(states, state)
            self._gathered = states
        else:
            self._gathered = [state]

    @mark_as_saver
    def _save(self, path):
        states = self._gathered if self._gathered is not None else [_process_random_state()]
        self._gathered = None
        torch.save({"processes": states}, path)

    @mark_as_loader
    def _recover(self, path, end_of_epoch=True):
        del end_of_epoch
        saved = torch.load(path, weights_only=True)
        states = saved["processes"] if "processes" in saved else [saved]
        rank = torch.distributed.get_rank() if _distributed() else 0
        if rank >= len(states):
            logger.warning(
                "the checkpoint holds the random generators of %d process(es), not of rank "
                "%d: this process keeps the generators its seed made (resume is not exact)",
                len(states),
                rank,
            )
            return
        _restore_random_state(states[rank])
