"""`mtl-ser evaluate`: a trained or exported model on any labelled set, without retraining.

    mtl-ser evaluate MODEL DATA --output DIR [--label-map src=dst,...] [--drop-unmapped]
                     [--group-columns speaker,gender,...]

DATA is a prepared manifest (``test.json`` of any `mtl-ser prepare` folder; its
``labels.json`` gives the set's classes) or a CSV with columns ``path, emotion`` and
optionally ``transcript`` (paths relative to ``--audio-root``, default the CSV's folder).
Every utterance is scored whole, as in a recipe's test pass, and DIR gets the same files:
``results.json``, ``predictions.csv``, ``confusion_matrix.png``, ``reliability_diagram.png``
and ``coverage_accuracy.png`` (calibration: ECE over ``calibration_bins`` confidence bins,
Brier score; before and after the model's temperature when it was calibrated).

Every other task the model has is scored where the data provides its targets, with the
metrics (and names) of training's ``task_metrics``: A/V/D (``dimensions``) when the set has
its ``arousal`` / ``valence`` / ``dominance`` columns (manifest keys or CSV columns), a
speaker attribute when its column (e.g. ``gender``) is there. A task whose column the set
lacks is listed under ``tasks_not_scored`` ("not scored: no <column> in <file>") and printed
on one line; it is not an error.

Labels are matched by name. A data label that is not one of the model's classes must be
mapped explicitly (``--label-map cal=neu``) or excluded explicitly (``--drop-unmapped``,
counted in results.json); otherwise the evaluation stops naming it. A map entry naming a
class the model lacks, or a label the data lacks, is an error too.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from pathlib import Path

import torch

import mtl_ser
from mtl_ser.atomic import atomic_folder, check_folder
from mtl_ser.data.labels import LabelSet
from mtl_ser.data.manifest import OPTIONS_FILE, load_manifest, read_split_info
from mtl_ser.data.protocols import PROTOCOL_FOLDS
from mtl_ser.data.text import normalize_transcript
from mtl_ser.groups import DEFAULT_GROUP_COLUMNS, attach_groups, check_columns
from mtl_ser.paired import DETAIL_FIELDS
from mtl_ser.prediction_types import task_vector
from mtl_ser.results import PredictionLog, write_run_outputs
from mtl_ser.tasks.ctc import CTCTask
from mtl_ser.tasks.emotion import EmotionTask

# Files scored per call of the model (their waveforms are held in memory at once).
CHUNK = 64


def parse_label_map(text: str | None) -> dict[str, str]:
    """``"cal=neu,exc=hap"`` -> {"cal": "neu", "exc": "hap"}; raises ValueError for a
    malformed entry or a label mapped twice."""
    mapping = {}
    for entry in (text or "").split(","):
        if not entry.strip():
            continue
        src, sep, dst = entry.partition("=")
        if not sep or not src.strip() or not dst.strip():
            raise ValueError(f"--label-map entry {entry!r} is not of the form src=dst")
        if src.strip() in mapping:
            raise ValueError(f"--label-map maps {src.strip()!r} twice")
        mapping[src.strip()] = dst.strip()
    return mapping


def read_items(
    data: str | Path, data_folder: str | Path | None = None, audio_root: str | Path | None = None
) -> tuple[list[dict], list[str], dict]:
    """Reads the utterances of a manifest or a CSV.

    Returns: (items ``{"id", "wav", "label", "wrd", "has_text", "scripted", "speaker",
    "record" (the manifest record or CSV row)}``, bad rows of a
    CSV (named), facts about the set: ``{"kind", "corpus", "labels", "name"}``).
    """
    data = Path(data)
    if not data.is_file():
        raise FileNotFoundError(f"no manifest or CSV at {data}")
    if data.suffix.lower() == ".json":
        return _manifest_items(data, data_folder)
    if data.suffix.lower() == ".csv":
        return _csv_items(data, Path(audio_root) if audio_root else data.parent)
    raise ValueError(f"{data}: expected a manifest (.json) or a CSV (.csv)")


def _manifest_items(path: Path, data_folder) -> tuple[list[dict], list[str], dict]:
    folder = path.parent
    options_path = folder / OPTIONS_FILE
    options = json.loads(options_path.read_text()) if options_path.is_file() else {}
    root = data_folder or options.get("data_folder") or options.get("audio_root")
    records = load_manifest(path, root)
    unresolved = [k for k, r in records.items() if "{data_root}" in r["wav"]]
    if unresolved:
        raise ValueError(
            f"{path}: wav paths start with {{data_root}} and the corpus folder is unknown; "
            "give --data-folder"
        )
    labels = list(LabelSet.load(folder).classes) if (folder / "labels.json").is_file() else None
    items = [
        {
            "id": utt_id,
            "wav": r["wav"],
            "label": r["emo"],
            "wrd": r.get("wrd", ""),
            "has_text": bool(r.get("has_text", r.get("wrd"))),
            "scripted": r.get("scripted"),
            "speaker": r.get("spk"),
            "record": r,  # its other keys (gender, session, ...) name groups
        }
        for utt_id, r in sorted(records.items())
    ]
    corpus = options.get("corpus") or "manifest"
    facts = {
        "kind": "manifest",
        "corpus": corpus,
        "labels": labels,
        "name": f"{corpus}_{path.stem}",
        "split": read_split_info(folder),
    }
    return items, [], facts


def _csv_items(path: Path, audio_root: Path) -> tuple[list[dict], list[str], dict]:
    from mtl_ser.data.csv_corpus import (
        RowError,
        field_count_error,
        read_rows,
        resolve_row_path,
        row_where,
    )

    rows, header = read_rows(path, required=("path", "emotion"))
    items, errors, seen = [], [], set()
    for row in rows:
        try:
            wrong = field_count_error(row, header)
            if wrong:
                raise RowError(f"{row_where(row)}: {wrong}")
            if not row.get("emotion"):
                raise RowError(f"{row_where(row)}: empty emotion label")
            source, utt_id = resolve_row_path(row, audio_root, allow_outside_root=True)
            if utt_id in seen:
                raise RowError(f"{row_where(row)}: listed twice")
        except RowError as err:
            errors.append(str(err))
            continue
        seen.add(utt_id)
        wrd = normalize_transcript(row.get("transcript", ""))
        items.append(
            {
                "id": utt_id,
                "wav": str(source),
                "label": row["emotion"],
                "wrd": wrd,
                "has_text": bool(wrd),
                "scripted": None,
                "speaker": row.get("speaker") or None,
                # Its other columns (gender, ...) name groups; speaker as in a manifest.
                "record": {**row, "spk": row.get("speaker")},
                "where": row_where(row),
            }
        )
    facts = {"kind": "csv", "corpus": "csv", "labels": None, "name": path.stem, "split": {}}
    return items, errors, facts


def resolve_labels(
    data_labels: list[str], model_labels: tuple[str, ...], label_map: dict, drop_unmapped: bool
) -> tuple[dict[str, str], list[str]]:
    """Maps each data label to a model class.

    Args:
        data_labels: the labels of the set (its label set, or those found in a CSV).
        model_labels: the model's classes.
        label_map: explicit src -> dst entries.
        drop_unmapped: exclude data labels without a counterpart instead of failing.

    Returns: ({data label: model class}, data labels excluded).

    Raises: ValueError naming map entries whose class the model lacks or whose label the
    data lacks, and (without ``drop_unmapped``) data labels without counterpart.
    """
    bad_dst = {s: d for s, d in label_map.items() if d not in model_labels}
    if bad_dst:
        raise ValueError(
            f"--label-map targets {bad_dst} are not classes of the model {list(model_labels)}"
        )
    unused = [s for s in label_map if s not in data_labels]
    if unused:
        raise ValueError(f"--label-map sources {unused} are not labels of the data {data_labels}")
    mapping, unmapped = {}, []
    for label in data_labels:
        target = label_map.get(label, label)
        if target in model_labels:
            mapping[label] = target
        else:
            unmapped.append(label)
    if unmapped and not drop_unmapped:
        raise ValueError(
            f"data label(s) {unmapped} have no counterpart among the model's classes "
            f"{list(model_labels)}: map them (--label-map {unmapped[0]}=<class>) or exclude "
            "them (--drop-unmapped)"
        )
    return mapping, unmapped


def data_tasks(tasks: dict, items: list[dict], data: str | Path) -> tuple[dict, dict]:
    """Which of a model's other tasks the set can score.

    Args: tasks: the recognizer's ``{task: (class, export_info)}``; items: from
    `read_items` (each ``record`` holds the manifest's keys or the CSV's columns); data:
    the set's file, for messages.

    Returns: ({task: `Task` rebuilt from its export_info} of the tasks whose every column
    some utterance has, {task: "<task>: not scored: no <column> in <file>"} of the rest).
    """
    scored, not_scored = {}, {}
    for name, (cls, info) in tasks.items():
        task = cls.from_export_info(name, info)
        missing = [
            c for c in task.columns if not any(i["record"].get(c) not in (None, "") for i in items)
        ]
        if missing:
            not_scored[name] = f"{name}: not scored: no {', '.join(missing)} in {data}"
        else:
            scored[name] = task
    return scored, not_scored


def task_metrics(metrics: dict, recognizer) -> dict:
    """Training's ``task_metrics`` of an evaluation: emotion and CTC (when the model has
    it) by their tasks' `metric_values`, the other scored tasks from their logs."""
    out = {"emotion": EmotionTask(name="emotion").metric_values(metrics)}
    if recognizer.has_ctc:
        out["ctc"] = CTCTask(name="ctc", vocab=recognizer.model.vocab).metric_values(metrics)
    out.update(metrics.get("by_task", {}))
    return out


def _headline(metrics: dict) -> str:
    """A task's main figure for the summary line."""
    for key in ("ccc_mean", "ua"):
        if metrics.get(key) is not None:
            return f"{key} {metrics[key]:.3f}"
    return "no figure"


def _set_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "set"


def _greedy(prediction, beam: bool) -> str:
    """A prediction's greedy transcript (its ``transcript`` unless decoded by beam search)."""
    return (prediction.greedy_transcript if beam else prediction.transcript) or ""


def evaluate(
    model_path: str | Path,
    data: str | Path,
    output: str | Path,
    label_map: dict[str, str] | None = None,
    drop_unmapped: bool = False,
    data_folder: str | Path | None = None,
    audio_root: str | Path | None = None,
    name: str | None = None,
    on_error: str = "fail",
    batch_size: int = 8,
    device: str = "cpu",
    verbose: bool = True,
    group_columns=DEFAULT_GROUP_COLUMNS,
    overwrite: bool = False,
    calibration_bins: int = 15,
) -> dict:
    """Scores a model on a labelled set and writes a recipe's test outputs (module docstring)
    into ``output`` whole (a temporary sibling renamed into place).

    Args:
        model_path: an exported model folder or a training run folder.
        data: a manifest ``.json`` or a ``.csv`` (path, emotion, [transcript]).
        output: the folder for results.json, predictions.csv and confusion_matrix.png.
        label_map: data label -> model class, for labels whose names differ.
        drop_unmapped: exclude (and count) utterances whose label has no counterpart.
        data_folder: the corpus folder for a manifest's ``{data_root}`` (default: the one
            saved with the manifest).
        audio_root: where a CSV's relative paths start (default: the CSV's folder).
        name: the set's name in the identity (default: ``<corpus>_<split>`` or the CSV's
            name); the results' ``protocol`` is ``<training protocol>-on-<name>``.
        on_error: "fail" or "skip" bad CSV rows and files that cannot be scored.
        batch_size, device: for the model.
        verbose: progress and a summary line.
        group_columns: manifest keys (or CSV columns) whose per-group UA / WA go into
            results.json (`mtl_ser.groups`); ``speaker`` reads a manifest's ``spk``.
        overwrite: replace an ``output`` folder that holds anything but an earlier
            evaluation of the same model on the same data (never a training run folder).
        calibration_bins: confidence bins of the expected calibration error.

    Returns: the results dict written to results.json. Raises OutputExistsError (before any
    work) for an ``output`` it may not replace.
    """
    from mtl_ser.inference import load_model
    from mtl_ser.progress import Progress

    if on_error not in ("fail", "skip"):
        raise ValueError(f"on_error must be 'fail' or 'skip', got {on_error!r}")
    group_columns = check_columns(group_columns, "--group-columns")
    owner = {
        "command": "evaluate",
        "model": str(Path(model_path).resolve()),
        "data": str(Path(data).resolve()),
    }
    check_folder(output, owner, overwrite)
    items, errors, facts = read_items(data, data_folder, audio_root)
    # The whole utterance at once, as in a recipe's test pass.
    recognizer = load_model(model_path, window=math.inf, device=device)
    model_labels = tuple(recognizer.labels)
    data_labels = facts["labels"] or sorted({i["label"] for i in items})
    strays = sorted({i["label"] for i in items} - set(data_labels))
    if strays:
        raise ValueError(f"{data}: labels {strays} are not in its labels.json {data_labels}")
    mapping, _ = resolve_labels(data_labels, model_labels, label_map or {}, drop_unmapped)
    excluded = Counter(i["label"] for i in items if i["label"] not in mapping)
    items = [i for i in items if i["label"] in mapping]

    scored_tasks, not_scored = data_tasks(recognizer.tasks, items, data)
    for message in not_scored.values():
        print(message)
    log = PredictionLog(
        model_labels, task_logs={name: task.new_log() for name, task in scored_tasks.items()}
    )
    # A model tested with beam search: greedy's wer / cer and the beam decoder's beside them
    # (wer_beam, wer_beam_lm), as at the run's test pass.
    beam = recognizer.decoder is not None and recognizer.decoder.name != "greedy"
    with Progress("scoring", total=len(items), unit="utterance", enabled=verbose) as bar:
        for start in range(0, len(items), CHUNK):
            chunk = items[start : start + CHUNK]
            predictions = recognizer.predict_batch([i["wav"] for i in chunk], batch_size)
            done = []
            for item, p in zip(chunk, predictions, strict=True):
                if p.error:
                    errors.append(f"{item.get('where', item['id'])}: {p.error}")
                else:
                    done.append((item, p))
            bar.update(len(chunk))
            if not done:
                continue
            probs = torch.tensor([[p.probabilities[c] for c in model_labels] for _, p in done])
            log.add_batch(
                [i["id"] for i, _ in done],
                # softmax(T log p) = softmax(logits): the uncalibrated probabilities.
                torch.log(probs.clamp_min(1e-12)) * recognizer.model.temperature,
                torch.tensor([model_labels.index(mapping[i["label"]]) for i, _ in done]),
                [i["wrd"] for i, _ in done],
                None if not recognizer.has_ctc else [_greedy(p, beam) for _, p in done],
                [i["has_text"] for i, _ in done],
                [i["scripted"] for i, _ in done],
                speakers=[i.get("speaker") for i, _ in done],
                decoded=(
                    {recognizer.decoder.name: [p.transcript or "" for _, p in done]}
                    if beam
                    else None
                ),
            )
            for name, task in scored_tasks.items():
                info = recognizer.tasks[name][1]
                values = torch.tensor([task_vector(p.tasks[name], info) for _, p in done])
                columns = {c: [i["record"].get(c, "") for i, _ in done] for c in task.columns}
                log.task_logs[name].add_batch(
                    [i["id"] for i, _ in done], values, task.column_targets(columns)
                )
    if errors and on_error == "fail":
        raise ValueError(
            f"{data}: {len(errors)} utterance(s) cannot be scored (use --on-error skip to "
            "skip them):\n  " + "\n  ".join(errors)
        )
    for error in errors:
        print(f"skipped {error}")
    if not log.rows:
        raise ValueError(f"{data}: no utterance left to score")

    trained = (recognizer.model.info or {}).get("results") or {}
    set_name = _set_name(name or facts["name"])
    identity = {
        "recipe": trained.get("recipe", "unknown"),
        "alpha": trained.get("alpha"),
        "protocol": f"{trained.get('protocol', 'unknown')}-on-{set_name}",
        "fold": trained.get("fold"),
        "folds": trained.get("folds") or PROTOCOL_FOLDS.get(trained.get("protocol")),
        "seed": trained.get("seed"),
        "encoder": trained.get("encoder"),
        # The trained run's setting, so that reports keep different settings apart.
        **{key: trained.get(key) for key in DETAIL_FIELDS},
        "setting": trained.get("setting"),  # the trained run's full setting (mtl_ser.settings)
        "best_epoch": (recognizer.model.info or {}).get("checkpoint_epoch"),
        "calibration": {
            "bins": calibration_bins,
            "temperature": (recognizer.model.spec or {}).get("temperature"),
        },
        "corpus": facts["corpus"],
        # The model's test speakers are not compared with this set's: not claimed.
        "speaker_independent": None,
        "labels": list(model_labels),
        "mtl_ser_version": mtl_ser.__version__,
        "evaluation": {
            "model": str(Path(model_path).resolve()),
            "data": str(Path(data).resolve()),
            "set": set_name,
            "data_labels": list(data_labels),
            "label_map": {k: v for k, v in mapping.items() if k != v},
            "excluded_unmapped": dict(sorted(excluded.items())),
            "skipped": len(errors),
            "trained_protocol": trained.get("protocol"),
            "trained_corpus": trained.get("corpus"),
            "data_split": facts.get("split") or None,
        },
    }
    identity["task_metrics"] = task_metrics(log.metrics(), recognizer)
    identity["tasks_not_scored"] = not_scored
    attach_groups(log, {i["id"]: i["record"] for i in items}, group_columns)
    output = Path(output)
    with atomic_folder(output, owner, overwrite) as tmp:
        results = write_run_outputs(tmp, identity, log, [])
    if verbose:
        dropped = sum(excluded.values())
        print(
            f"{len(log.rows)} utterances of {set_name}: WA {results['wa']:.1%}  "
            f"UA {results['ua']:.1%}  macro-F1 {results['macro_f1']:.1%}  "
            f"ECE {results['ece']:.3f}  Brier {results['brier']:.3f}"
            + ("" if results.get("wer") is None else f"  WER {results['wer']:.3f}")
            + (f"; excluded (unmapped labels): {dict(excluded)}" if dropped else "")
            + (f"; skipped: {len(errors)}" if errors else "")
            + "".join(f"; {t}: {_headline(m)}" for t, m in results.get("by_task", {}).items())
            + f"; written to {output}"
        )
    return results
