"""Emotion label sets: the fixed class order shared by every fold, run and report."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

LABELS_FILE = "labels.json"

# The standard IEMOCAP 4-class order; every recipe, metric and plot uses the saved order.
IEMOCAP_CLASSES = ("neu", "hap", "ang", "sad")


@dataclass(frozen=True)
class LabelSet:
    """An ordered set of emotion classes plus the raw labels merged into them.

    Attributes:
        classes: class names in their fixed order (index = class id).
        merge: raw label -> class, for raw labels that are not class names (e.g. exc -> hap).
    """

    classes: tuple[str, ...]
    merge: dict[str, str] = field(default_factory=dict)

    def __post_init__(self):
        if not self.classes:
            raise ValueError("a label set needs at least one class")
        if len(set(self.classes)) != len(self.classes):
            raise ValueError(f"duplicate classes in label set {self.classes}")
        for raw, target in self.merge.items():
            if target not in self.classes:
                raise ValueError(f"label {raw!r} is merged into {target!r}, not a class")

    def map(self, raw: str) -> str | None:
        """Returns the class of a raw label, or None when the label is outside the set."""
        if raw in self.classes:
            return raw
        return self.merge.get(raw)

    def index(self, label: str) -> int:
        """Returns the class id of a class name (raises KeyError naming the label)."""
        try:
            return self.classes.index(label)
        except ValueError:
            raise KeyError(f"label {label!r} is not one of {list(self.classes)}") from None

    def to_dict(self) -> dict:
        return {"classes": list(self.classes), "merge": dict(sorted(self.merge.items()))}

    def save(self, folder: str | Path) -> Path:
        """Writes ``folder/labels.json`` (atomically) and returns its path."""
        path = Path(folder) / LABELS_FILE
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> LabelSet:
        """Reads a label set from ``labels.json`` or from the folder that holds it."""
        path = Path(path)
        if path.is_dir():
            path = path / LABELS_FILE
        if not path.is_file():
            raise FileNotFoundError(
                f"no label set at {path}: manifests are written with a labels.json by "
                "`mtl-ser prepare`; prepare the data again"
            )
        data = json.loads(path.read_text())
        return cls(tuple(data["classes"]), dict(data.get("merge", {})))


def iemocap_label_set(keep_exc_apart: bool = False) -> LabelSet:
    """The IEMOCAP label set: neu, hap, ang, sad with exc merged into hap (default) or kept
    as a fifth class placed after hap."""
    if keep_exc_apart:
        return LabelSet(("neu", "hap", "exc", "ang", "sad"))
    return LabelSet(IEMOCAP_CLASSES, {"exc": "hap"})


def parse_label_list(text: str) -> LabelSet:
    """Parses a comma-separated class list such as ``"ang,dis,fea,hap,neu,sad,sur"``."""
    classes = tuple(c.strip() for c in text.split(",") if c.strip())
    return LabelSet(classes)
