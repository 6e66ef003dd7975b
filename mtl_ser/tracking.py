"""Experiment trackers: TensorBoard, Weights & Biases, MLflow (or none).

The Brain calls `ExperimentTracker.log_epoch` after each validation and
`ExperimentTracker.log_test` after the test pass; the tracker named by the ``tracker``
hparam gets, with the epoch as step, every task's training and validation losses,
validation WA / UA / macro-F1 / WER / CER, the learning rates, and the test metrics. Runs are
tagged with their identity (recipe, protocol, alpha, fold, seed, encoder), so the runs of a
sweep line up side by side.

Everything stays on disk by default: TensorBoard event files and the MLflow file store live
in the run's ``tracker_folder``; W&B runs in offline mode there (``wandb sync`` uploads them).
TensorBoard and W&B go through SpeechBrain's loggers; MLflow has a small logger here. Their
packages are imported only when chosen; a missing one is an error naming what to install.
Only the main process logs.
"""

from __future__ import annotations

import hashlib
import importlib
from pathlib import Path

from speechbrain.utils.distributed import if_main_process
from speechbrain.utils.train_logger import TensorboardLogger, TrainLogger, WandBLogger

TRACKERS = ("none", "tensorboard", "wandb", "mlflow")
TAG_KEYS = ("recipe", "protocol", "alpha", "fold", "seed", "encoder")
_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}


def _require(kind: str):
    """Imports the package behind tracker ``kind``; ImportError naming it when missing."""
    package = _PACKAGES[kind]
    try:
        return importlib.import_module(package)
    except ImportError:
        raise ImportError(
            f"tracker {kind!r} needs the {package!r} package: pip install {package} "
            "(or choose --tracker=none)"
        ) from None


class EpochTensorboardLogger(TensorboardLogger):
    """SpeechBrain's TensorBoard logger with the epoch as step (its own counter would
    restart at 1 when a run resumes) and the run's identity as text and hparams."""

    def log_stats(self, stats_meta, train_stats=None, valid_stats=None, test_stats=None, **_):
        step = stats_meta["step"]
        for name, value in stats_meta.items():
            if name != "step":
                self.writer.add_scalar(name, value, step)
        for split, stats in (("train", train_stats), ("valid", valid_stats), ("test", test_stats)):
            for name, value in (stats or {}).items():
                self.writer.add_scalar(f"{name}/{split}", value, step)
        self.writer.flush()

    def log_identity(self, tags: dict) -> None:
        table = "\n".join(f"| {k} | {v} |" for k, v in tags.items())
        self.writer.add_text("run", "| | |\n|---|---|\n" + table, 0)

    def close(self, tags: dict, metrics: dict) -> None:
        # The HParams dashboard compares runs of a sweep by their identity.
        hparams = {
            k: (v if isinstance(v, int | float | str | bool) else str(v)) for k, v in tags.items()
        }
        self.writer.add_hparams(
            hparams, {f"hparam/{k}": v for k, v in metrics.items()}, run_name="."
        )
        self.writer.close()


class MLflowLogger(TrainLogger):
    """Logs to MLflow (a file store by default); resumes the run of the same folder."""

    def __init__(self, folder: Path, experiment: str, run_name: str, tags: dict, uri=None):
        mlflow = _require("mlflow")
        self.mlflow = mlflow
        mlflow.set_tracking_uri(uri or (folder / "mlruns").resolve().as_uri())
        mlflow.set_experiment(experiment)
        run_id_file = folder / "mlflow_run_id"
        run_id = run_id_file.read_text().strip() if run_id_file.is_file() else None
        self.run = mlflow.start_run(run_id=run_id, run_name=run_name, tags=tags)
        run_id_file.write_text(self.run.info.run_id)

    def log_stats(self, stats_meta, train_stats=None, valid_stats=None, test_stats=None, **_):
        step = int(stats_meta["step"])
        metrics = {k: v for k, v in stats_meta.items() if k != "step"}
        for split, stats in (("train", train_stats), ("valid", valid_stats), ("test", test_stats)):
            metrics.update({f"{split}_{k}": v for k, v in (stats or {}).items()})
        self.mlflow.log_metrics(metrics, step=step)

    def close(self, tags: dict, metrics: dict) -> None:
        self.mlflow.end_run()


class WandbRunLogger(WandBLogger):
    """SpeechBrain's W&B logger (step = ``stats_meta["epoch"]``), finished after the test."""

    def log_stats(self, stats_meta, train_stats=None, valid_stats=None, test_stats=None, **_):
        meta = {("epoch" if k == "step" else k): v for k, v in stats_meta.items()}
        super().log_stats(meta, train_stats, valid_stats, test_stats)

    def close(self, tags: dict, metrics: dict) -> None:
        self.run.summary.update({f"test_{k}": v for k, v in metrics.items()})
        self.run.finish()


class ExperimentTracker:
    """Forwards a run's statistics to the chosen tracker (built at the first call, when the
    run's identity is known).

    Args:
        kind: "none", "tensorboard", "wandb" or "mlflow".
        folder: where the tracker writes (event files, MLflow store, offline W&B runs).
        project: W&B project / MLflow experiment name.
        wandb_mode: "offline" (default; ``wandb sync`` later) or "online".
        mlflow_uri: an MLflow tracking URI (default: a file store under ``folder``).
    """

    def __init__(
        self,
        kind: str = "none",
        folder: str | Path = "tracking",
        project: str = "mtl-ser",
        wandb_mode: str = "offline",
        mlflow_uri: str | None = None,
    ):
        if kind not in TRACKERS:
            raise ValueError(f"tracker {kind!r} is not one of {list(TRACKERS)}")
        if kind != "none":
            _require(kind)  # fail at start, not after the first epoch
        self.kind = kind
        self.folder = Path(folder)
        self.project = project
        self.wandb_mode = wandb_mode
        self.mlflow_uri = mlflow_uri
        self._logger = None
        self._tags: dict = {}

    @property
    def active(self) -> bool:
        return self.kind != "none" and if_main_process()

    def _start(self, run: dict):
        if self._logger is not None:
            return self._logger
        self._tags = {k: run.get(k) for k in TAG_KEYS}
        name = "_".join(
            f"{k}{self._tags[k]}" for k in ("recipe", "protocol", "alpha", "fold", "seed")
        )
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.kind == "tensorboard":
            self._logger = EpochTensorboardLogger(str(self.folder))
            self._logger.log_identity(self._tags)
        elif self.kind == "wandb":
            wandb = _require("wandb")
            # One W&B run per output folder: a resumed training continues it.
            run_id = hashlib.sha1(str(self.folder.resolve()).encode()).hexdigest()[:16]
            self._logger = WandbRunLogger(
                wandb.init,
                project=self.project,
                name=name,
                id=run_id,
                resume="allow",
                dir=str(self.folder),
                mode=self.wandb_mode,
                config={k: run.get(k) for k in run if k != "labels"},
                tags=[f"{k}={v}" for k, v in self._tags.items()],
            )
        else:
            self._logger = MLflowLogger(
                self.folder,
                self.project,
                name,
                {k: str(v) for k, v in self._tags.items()},
                self.mlflow_uri,
            )
        return self._logger

    def log_epoch(self, run: dict, epoch: int, lrs: dict, train: dict, valid: dict) -> None:
        """One epoch: learning rates, training losses, validation losses and metrics
        (None values are skipped). ``run`` is the run's identity (tags)."""
        if not self.active:
            return
        self._start(run).log_stats(
            stats_meta={"step": epoch, **lrs},
            train_stats=_numbers(train),
            valid_stats=_numbers(valid),
        )

    def log_test(self, run: dict, epoch: int | None, test: dict) -> None:
        """The test metrics (step = the chosen epoch), then closes the tracker."""
        if not self.active:
            return
        logger = self._start(run)
        logger.log_stats(stats_meta={"step": epoch or 0}, test_stats=_numbers(test))
        logger.close(self._tags, _numbers(test))
        self._logger = None


def _numbers(stats: dict) -> dict:
    return {k: float(v) for k, v in stats.items() if isinstance(v, int | float) and v is not None}
