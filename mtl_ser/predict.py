"""`mtl-ser predict` / `embed`: files and folders in, one row (or vector) per recording out."""

from __future__ import annotations

import csv
import json
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np

from mtl_ser.atomic import atomic_write, check_file
from mtl_ser.prediction_types import AUDIO_EXTENSIONS, Embedding, Prediction


def collect_audio_files(inputs: list[str | Path]) -> list[Path]:
    """Expands folders (recursively, audio extensions only, sorted) and keeps files as given.

    A path that does not exist is kept, so that it gets its own error row.
    """
    files = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(
                p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS
            )
            files.extend(found)
        else:
            files.append(item)
    return files


ABSTAINED = "abstained"


def apply_min_confidence(predictions: list[Prediction], threshold: float) -> int:
    """Marks predictions whose largest probability is below ``threshold`` as abstained
    (in place; the probabilities are kept). Returns how many abstained."""
    count = 0
    for p in predictions:
        if p.error is None and max(p.probabilities.values()) < threshold:
            p.abstained = True
            count += 1
    return count


def rows(predictions: list[Prediction], labels: tuple[str, ...]) -> list[dict]:
    """Flat rows: path, emotion (``abstained`` below the confidence asked for), p_<class>...,
    transcript, duration, windows, window_emotions (``;``-separated), error."""
    out = []
    for p in predictions:
        row = {"path": p.path, "emotion": ABSTAINED if p.abstained else p.emotion}
        row.update({f"p_{c}": p.probabilities.get(c) for c in labels})
        row.update(
            transcript=p.transcript,
            duration=p.duration,
            windows=len(p.windows),
            window_emotions=";".join(w.emotion for w in p.windows),
            error=p.error,
        )
        out.append(row)
    return out


def _is_predictions_file(path: Path) -> bool:
    """Whether ``path`` is what `write_predictions` writes (so predicting again may replace
    it): a CSV whose header starts ``path,emotion`` or a JSON list of predictions."""
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(path.read_text())
            return isinstance(data, list) and all(
                isinstance(p, dict) and {"path", "emotion"} <= set(p) for p in data
            )
        with open(path, newline="") as f:
            return next(csv.reader(f), [])[:2] == ["path", "emotion"]
    except (OSError, ValueError):
        return False


def check_predictions_output(output: str | Path | None, overwrite: bool) -> None:
    """Refuses, before any work, an output name that is not .csv / .json (ValueError) or an
    existing file that predict did not write (OutputExistsError), unless ``overwrite``."""
    if output is None:
        return
    if Path(output).suffix.lower() not in (".csv", ".json"):
        raise ValueError(f"--output must end in .csv or .json, not {output}")
    check_file(output, _is_predictions_file, overwrite)


def write_predictions(
    predictions: list[Prediction], labels: tuple[str, ...], output: str | Path | None
) -> None:
    """Writes CSV (``.csv``, or stdout when ``output`` is None) or JSON (``.json``, with the
    per-window details); a file is written whole (a temporary name renamed into place)."""
    if output is not None and Path(output).suffix.lower() == ".json":
        text = json.dumps([asdict(p) for p in predictions], indent=2) + "\n"
        atomic_write(output, lambda tmp: tmp.write_text(text))
        return
    table = rows(predictions, labels)

    def write(handle) -> None:
        writer = csv.DictWriter(handle, fieldnames=list(table[0]) if table else ["path"])
        writer.writeheader()
        writer.writerows(table)

    if output is None:
        write(sys.stdout)
        return

    def write_file(tmp: Path) -> None:
        with open(tmp, "w", newline="") as handle:
            write(handle)

    atomic_write(output, write_file)


def check_embeddings_output(output: str | Path, overwrite: bool) -> None:
    """Refuses, before any work, an output name that is not .npy / .parquet (ValueError) or
    an existing file that embed did not write (OutputExistsError), unless ``overwrite``.
    A ``.npy`` is embed's when its ``.ids.txt`` is beside it."""
    output = Path(output)
    if output.suffix.lower() not in (".npy", ".parquet"):
        raise ValueError(f"--output must end in .npy or .parquet, not {output}")
    if output.suffix.lower() == ".npy":
        check_file(output, lambda p: p.with_suffix(".ids.txt").is_file(), overwrite)
        check_file(output.with_suffix(".ids.txt"), lambda p: output.is_file(), overwrite)
    else:
        check_file(output, lambda p: False, overwrite)


def write_embeddings(embeddings: list[Embedding], output: str | Path) -> list[Path]:
    """Writes vectors as ``.npy`` (``[N, D]`` float32, with the paths, one per line, in
    ``<name>.ids.txt``) or ``.parquet`` (columns ``path`` and ``embedding``, via pyarrow).

    Returns: the files written. Raises ImportError naming pyarrow when it is missing.
    """
    output = Path(output)
    matrix = np.stack([e.vector for e in embeddings]).astype(np.float32)
    paths = [str(e.path) for e in embeddings]
    if output.suffix.lower() == ".parquet":
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise ImportError(
                "writing .parquet needs pyarrow: pip install pyarrow (or write .npy)"
            ) from None
        vectors = pa.FixedSizeListArray.from_arrays(pa.array(matrix.ravel()), matrix.shape[1])
        table = pa.table({"path": paths, "embedding": vectors})
        atomic_write(output, lambda tmp: pq.write_table(table, tmp))
        return [output]
    ids = output.with_suffix(".ids.txt")
    # The temporary name keeps the suffix, so np.save adds no second ".npy".
    atomic_write(output, lambda tmp: np.save(tmp, matrix))
    atomic_write(ids, lambda tmp: tmp.write_text("".join(f"{p}\n" for p in paths)))
    return [output, ids]
