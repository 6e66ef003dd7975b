"""Transcript normalisation and the fixed character vocabulary of the CTC head.

The vocabulary is fixed in code (not learned from a corpus) so that every run, fold and
corpus shares one output layout: index 0 is the CTC blank, then space, apostrophe and A-Z.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch

# Bumped whenever `normalize_transcript` changes behaviour: preparation stores it with the
# manifests, so stale manifests are regenerated.
NORMALIZATION_VERSION = 1

BLANK = "<blank>"
BLANK_INDEX = 0
CHARACTERS = (BLANK, " ", "'") + tuple("ABCDEFGHIJKLMNOPQRSTUVWXYZ")

# Non-speech annotations: IEMOCAP writes [LAUGHTER], [BREATHING], [GARBAGE], ...; some copies
# write {LG}, {NS}, {BR}; a few carry <...> markers. Removed, never spelled out as letters.
_TAG = re.compile(r"\[[^\]]*\]|\{[^}]*\}|<[^>]*>")
_NOT_ALLOWED = re.compile(r"[^A-Z' ]+")
_SPACES = re.compile(r"\s+")


def normalize_transcript(text: str) -> str:
    """Turns a raw transcript into a CTC target string.

    Args:
        text: raw transcript, e.g. ``"Oh, [LAUGHTER] that's great!"``.

    Returns:
        Upper-case text with letters, apostrophe and single spaces only, e.g.
        ``"OH THAT'S GREAT"``. Non-speech tags are removed; punctuation and digits become
        word boundaries; quote-like apostrophes at word edges are dropped. May be ``""``.
    """
    text = _TAG.sub(" ", text).upper()
    text = text.replace("\u2019", "'").replace("`", "'")
    text = _NOT_ALLOWED.sub(" ", text)
    # An apostrophe belongs to a word only inside it (DON'T, O'CLOCK, SINGERS' stays SINGERS).
    words = [w.strip("'") for w in text.split()]
    return _SPACES.sub(" ", " ".join(w for w in words if w)).strip()


class CharVocabulary:
    """The fixed character set of the CTC head.

    ``encode`` maps normalised text to token ids (never the blank); ``decode`` maps ids back.
    """

    def __init__(self, characters: tuple[str, ...] = CHARACTERS):
        if characters[BLANK_INDEX] != BLANK:
            raise ValueError(f"index {BLANK_INDEX} of the vocabulary must be {BLANK!r}")
        if len(set(characters)) != len(characters):
            raise ValueError(f"duplicate characters in vocabulary {characters}")
        self.characters = tuple(characters)
        self.blank_index = BLANK_INDEX
        self._index = {c: i for i, c in enumerate(self.characters)}

    def __len__(self) -> int:
        return len(self.characters)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CharVocabulary) and self.characters == other.characters

    def encode(self, text: str) -> torch.Tensor:
        """Args: normalised text (see `normalize_transcript`).

        Returns: LongTensor of shape ``[len(text)]`` with ids in ``1..len(self)-1``.

        Raises ValueError naming the first character outside the vocabulary.
        """
        try:
            return torch.tensor([self._index[c] for c in text], dtype=torch.long)
        except KeyError as err:
            raise ValueError(
                f"character {err.args[0]!r} of {text!r} is not in the CTC vocabulary; "
                "transcripts must be normalised with mtl_ser.data.text.normalize_transcript"
            ) from None

    def decode(self, ids) -> str:
        """Args: a sequence of ids (blank ids are skipped). Returns: the text."""
        return "".join(self.characters[int(i)] for i in ids if int(i) != self.blank_index)

    def save(self, path: str | Path) -> None:
        """Writes the vocabulary as JSON ``{"characters": [...], "blank_index": 0}``
        (atomically: other processes never read a half-written file)."""
        path = Path(path)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(
            json.dumps({"characters": list(self.characters), "blank_index": self.blank_index})
        )
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | Path) -> CharVocabulary:
        """Reads a vocabulary written by `save`."""
        data = json.loads(Path(path).read_text())
        return cls(tuple(data["characters"]))
