"""The resolved setting of a run: what `results.json` records under ``"setting"``.

    "setting": {"digest": "<16 hex>", "values": {key: JSON value, ...}, "ignored": [keys]}

``values`` holds every key that can change a run's result, ``fold`` and ``seed`` included;
``ignored`` names keys that cannot (workers, tracker, ...). Runs that differ only in
`REPLICATE_KEYS` are replicates of one setting: `group_key` is what reports group by.
"""

from __future__ import annotations

import hashlib
import json

# Keys whose runs are replicates of one experiment (averaged, never told apart as settings).
REPLICATE_KEYS = ("fold", "seed")


def digest(values: dict) -> str:
    """First 16 hex digits of the sha256 of ``values`` as canonical JSON (sorted keys, no
    spaces): equal for equal values whatever their order."""
    text = json.dumps(values, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def group_key(values: dict) -> str:
    """The digest of a setting's ``values`` without `REPLICATE_KEYS`: equal for the folds and
    seeds of one setting."""
    return digest({k: v for k, v in values.items() if k not in REPLICATE_KEYS})
