"""Per-utterance predictions of an evaluation pass, their metrics and a run's output files.

A finished run writes to its output folder::

    results.json           metrics + the run's identity (schema below), per-group results
                           (`mtl_ser.groups`) when group columns are attached
    results.json           metrics + the run's identity and its full resolved setting
                           ("setting": {digest, values, ignored}, mtl_ser/settings.py)
    setting.json           the setting, written when the run starts (a resume must match it)
    predictions.csv        one row per test utterance
    confusion_matrix.png   test confusion matrix
    reliability_diagram.png  accuracy vs confidence (before / after temperature scaling)
    coverage_accuracy.png  accuracy when abstaining below a confidence threshold
    training_curves.png    per-epoch losses and validation metrics
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mtl_ser.calibration import DEFAULT_BINS, calibration_results
from mtl_ser.groups import per_group_results
from mtl_ser.metrics import classification_metrics, error_rates
from mtl_ser.plots import (
    plot_confusion,
    plot_coverage_accuracy,
    plot_reliability,
    plot_training_curves,
)

RESULTS_FILE = "results.json"
PREDICTIONS_FILE = "predictions.csv"
# Bumped when results.json changes shape; `mtl-ser report` reads it.
# 2: the run's full resolved setting under "setting" (mtl_ser/settings.py).
RESULTS_SCHEMA = 2


@dataclass
class Prediction:
    """One evaluated utterance."""

    id: str
    true: int
    predicted: int
    probabilities: list[float]
    reference: str  # normalised transcript ("" when the utterance has none)
    hypothesis: str | None  # greedy CTC output; None without a CTC head
    has_text: bool
    scripted: bool | None
    speaker: str | None = None  # the test speaker (the report's bootstrap resamples them)
    # Other CTC decoders' outputs by decoder name (the test pass's beam search, e.g.
    # {"beam_lm": "..."}; empty with greedy decoding only).
    decoded: dict[str, str] = field(default_factory=dict)


@dataclass
class PredictionLog:
    """Collects the predictions of one evaluation pass and scores them."""

    labels: tuple[str, ...]
    rows: list[Prediction] = field(default_factory=list)
    # The other tasks' logs by task name (`mtl_ser.tasks.base.TaskLog`): their metrics go
    # under "tasks" and their columns into predictions.csv.
    task_logs: dict = field(default_factory=dict)
    # Group column -> {utt_id: value or None} (`mtl_ser.groups.attach_groups`): per-group
    # results in results.json and the columns' values in predictions.csv.
    groups: dict[str, dict] = field(default_factory=dict)
    # Unrounded emotion logits [C] per row, in row order (calibration figures).
    logits: list = field(default_factory=list)

    def add_batch(
        self,
        ids: list[str],
        logits: torch.Tensor,
        targets: torch.Tensor,
        references: list[str],
        hypotheses: list[str] | None = None,
        has_text: list[bool] = (),
        scripted: list = (),
        speakers: list | None = None,
        decoded: dict[str, list[str]] | None = None,
    ) -> None:
        """Adds a batch: emotion logits ``[B, C]`` and targets ``[B]``, the transcripts,
        the greedy CTC ``hypotheses`` (None without CTC), per-utterance flags
        (``speakers`` None when unknown), and ``decoded``: other decoders' hypotheses by
        decoder name (``{"beam_lm": [B strings]}``; None: greedy only)."""
        probs = torch.softmax(logits.detach().float(), dim=-1).cpu()
        self.logits.extend(logits.detach().float().cpu().numpy())
        for i, utt in enumerate(ids):
            self.rows.append(
                Prediction(
                    id=utt,
                    true=int(targets[i]),
                    predicted=int(probs[i].argmax()),
                    probabilities=[round(float(p), 6) for p in probs[i]],
                    reference=references[i],
                    hypothesis=None if hypotheses is None else hypotheses[i],
                    has_text=bool(has_text[i]),
                    scripted=scripted[i],
                    speaker=None if speakers is None else speakers[i],
                    decoded={name: texts[i] for name, texts in (decoded or {}).items()},
                )
            )

    def metrics(self) -> dict:
        """WA / UA / macro-F1 / confusion over all rows; WER / CER over the rows with text,
        also over improvised (unscripted) rows only (scripted sentences recur across
        sessions, so their WER flatters the model). Error rates are None without CTC.
        Each other decoder of the rows (`Prediction.decoded`) adds ``wer_<decoder>`` /
        ``cer_<decoder>`` (and their ``_improvised`` variants); ``wer`` / ``cer`` are
        greedy's."""
        out = classification_metrics(
            [r.true for r in self.rows], [r.predicted for r in self.rows], self.labels
        )
        out["labels"] = list(self.labels)
        with_text = [r for r in self.rows if r.has_text]
        has_ctc = bool(self.rows) and self.rows[0].hypothesis is not None
        for suffix, subset in (
            ("", with_text),
            ("_improvised", [r for r in with_text if r.scripted is False]),
        ):
            rates = (
                error_rates([r.reference for r in subset], [r.hypothesis for r in subset])
                if has_ctc
                else {}
            )
            out["wer" + suffix] = rates.get("wer")
            out["cer" + suffix] = rates.get("cer")
            out["num_wer_utterances" + suffix] = len(subset) if has_ctc else 0
            for name in self.decoders:
                rates = error_rates(
                    [r.reference for r in subset], [r.decoded[name] for r in subset]
                )
                out[f"wer_{name}{suffix}"] = rates.get("wer")
                out[f"cer_{name}{suffix}"] = rates.get("cer")
        if self.task_logs:
            out["by_task"] = {name: log.metrics() for name, log in self.task_logs.items()}
        return out

    @property
    def decoders(self) -> list[str]:
        """The names of the rows' other CTC decoders (`Prediction.decoded`)."""
        return list(self.rows[0].decoded) if self.rows else []

    def write_csv(self, path: str | Path) -> None:
        """Writes one row per utterance: id, true, predicted, p_<class>..., reference,
        hypothesis (greedy), hypothesis_<decoder> per other decoder, has_text, scripted,
        speaker (empty when unknown), then the group columns not among those (e.g. gender;
        empty when unknown)."""
        extra = [c for c in self.groups if c not in ("scripted", "speaker")]
        with open(path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(
                ["id", "true", "predicted", *(f"p_{c}" for c in self.labels)]
                + ["reference", "hypothesis", *(f"hypothesis_{n}" for n in self.decoders)]
                + ["has_text", "scripted", "speaker", *extra]
                + [f"{n}_{c}" for n, log in self.task_logs.items() for c in log.columns()]
            )
            for r in sorted(self.rows, key=lambda r: r.id):
                writer.writerow(
                    [r.id, self.labels[r.true], self.labels[r.predicted], *r.probabilities]
                    + [r.reference, "" if r.hypothesis is None else r.hypothesis]
                    + [r.decoded[n] for n in self.decoders]
                    + [r.has_text]
                    + ["" if r.scripted is None else r.scripted, r.speaker or ""]
                    + [self.groups[c].get(r.id) or "" for c in extra]
                    + [cell for log in self.task_logs.values() for cell in log.row(r.id)]
                )


def run_title(identity: dict) -> str:
    """A one-line name of a run, e.g. ``mtl alpha=0.1 loso fold 1``."""
    return (
        f"{identity.get('recipe')} alpha={identity.get('alpha')} "
        f"{identity.get('protocol')} fold {identity.get('fold')}"
    )


def write_run_outputs(
    folder: str | Path, identity: dict, log: PredictionLog, epochs: list[dict]
) -> dict:
    """Writes results.json, predictions.csv and the PNGs of a finished run.

    Args:
        folder: the run's output folder.
        identity: recipe, alpha, protocol, fold, seed and other facts about the run.
        log: the test predictions.
        epochs: per-epoch log entries for the training curves (may be empty).

    Returns: the results dict written to results.json.
    """
    folder = Path(folder)
    results = {"schema": RESULTS_SCHEMA, **identity, **log.metrics()}
    if log.groups:
        results["groups"] = per_group_results(log)
    log.write_csv(folder / PREDICTIONS_FILE)
    title = run_title(identity)
    # identity["calibration"]: {"bins", "temperature" (fitted on validation) or absent}.
    setting = identity.get("calibration") or {}
    calibration = calibration_results(
        log.logits,
        [r.true for r in log.rows],
        setting.get("bins", DEFAULT_BINS),
        setting.get("temperature"),
    )
    results["calibration"] = {**setting, **calibration}  # + how the temperature was fitted
    final = calibration["after"] or calibration["before"]  # what the model outputs
    results["ece"], results["brier"] = final["ece"], final["brier"]
    curves = {"uncalibrated": calibration["before"]}
    if calibration["after"] is not None:
        curves[f"temperature {calibration['temperature']:.2f}"] = calibration["after"]
    plot_reliability(
        {k: v["bins"] for k, v in curves.items()},
        folder / "reliability_diagram.png",
        f"{title}\nECE {final['ece']:.3f}  Brier {final['brier']:.3f}",
    )
    plot_coverage_accuracy(
        {k: v["coverage_accuracy"] for k, v in curves.items()},
        folder / "coverage_accuracy.png",
        title,
    )
    plot_confusion(
        results["confusion_matrix"],
        log.labels,
        folder / "confusion_matrix.png",
        f"{title}\nWA {results['wa']:.1%}  UA {results['ua']:.1%}",
    )
    if epochs:
        plot_training_curves(
            epochs, folder / "training_curves.png", title, identity.get("best_epoch")
        )
    tmp = folder / (RESULTS_FILE + ".tmp")
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    os.replace(tmp, folder / RESULTS_FILE)  # complete results.json or none at all
    return results
