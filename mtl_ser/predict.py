"""`mtl-ser predict` / `embed`: files and folders in, one row (or vector) per recording out."""

from __future__ import annotations

import csv
import json
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np

from mtl_ser.inference import AUDIO_EXTENSIONS, Embedding, Prediction


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


def rows(predictions: list[Prediction], labels: tuple[str, ...]) -> list[dict]:
    """Flat rows: path, emotion, p_<class>..., transcript, duration, windows,
    window_emotions (``;``-separated), error, then the other tasks' predictions
    (``<task>_<dimension>``; ``<task>``, ``<task>_p_<class>``...)."""
    out = []
    for p in predictions:
        row = {"path": p.path, "emotion": p.emotion}
        row.update({f"p_{c}": p.probabilities.get(c) for c in labels})
        row.update(
            transcript=p.transcript,
            duration=p.duration,
            windows=len(p.windows),
            window_emotions=";".join(w.emotion for w in p.windows),
            error=p.error,
        )
        row.update(_task_cells(p.tasks))
        out.append(row)
    return out


def write_predictions(
    predictions: list[Prediction], labels: tuple[str, ...], output: str | Path | None
) -> None:
    """Writes CSV (``.csv``, or stdout when ``output`` is None) or JSON (``.json``, with the
    per-window details)."""
    if output is not None and Path(output).suffix.lower() == ".json":
        Path(output).write_text(json.dumps([asdict(p) for p in predictions], indent=2) + "\n")
        return
    table = rows(predictions, labels)
    handle = open(output, "w", newline="") if output else sys.stdout
    try:
        # Every row's columns (a failed file has no task columns).
        fields = list(dict.fromkeys(k for row in table for k in row)) or ["path"]
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(table)
    finally:
        if output:
            handle.close()


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
        pq.write_table(pa.table({"path": paths, "embedding": vectors}), output)
        return [output]
    ids = output.with_suffix(".ids.txt")
    np.save(output, matrix)
    ids.write_text("".join(f"{p}\n" for p in paths))
    return [output, ids]


def _task_cells(tasks: dict) -> dict:
    """A recording's other-task predictions as flat columns."""
    cells = {}
    for name, value in tasks.items():
        for key, v in value.items():
            if key == "label":
                cells[name] = v
            elif isinstance(v, dict):
                cells.update({f"{name}_p_{c}": p for c, p in v.items()})
            else:
                cells[f"{name}_{key}"] = v
    return cells
