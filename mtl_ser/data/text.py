"""Transcript normalisation and the character vocabulary of the CTC head.

Transcripts keep letters of every script: Unicode NFKC, upper-cased where a letter has a
one-character capital (``ß`` stays ``ß``), letters and combining marks kept, punctuation a
word boundary. Characters that are neither (digits, symbols) are dropped and counted
(`dropped_characters`; preparation reports them in its summary).

The vocabulary of a run is the base set (index 0 the CTC blank, then space, apostrophe and
A-Z, the set every English corpus uses, unchanged) followed by every other character of the
training transcripts in code-point order (`CharVocabulary.from_transcripts`). It is saved
with the run and in every model spec, so export and predict decode with the recorded set.
"""

from __future__ import annotations

import json
import os
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import torch

# Bumped whenever `normalize_transcript` changes behaviour: preparation stores it with the
# manifests, so stale manifests are regenerated.
# 2: letters of every script kept (NFKC, upper-cased), other characters dropped and counted.
NORMALIZATION_VERSION = 2

BLANK = "<blank>"
BLANK_INDEX = 0
CHARACTERS = (BLANK, " ", "'") + tuple("ABCDEFGHIJKLMNOPQRSTUVWXYZ")

# Non-speech annotations: IEMOCAP writes [LAUGHTER], [BREATHING], [GARBAGE], ...; some copies
# write {LG}, {NS}, {BR}; a few carry <...> markers. Removed, never spelled out as letters.
_TAG = re.compile(r"\[[^\]]*\]|\{[^}]*\}|<[^>]*>")
_SPACES = re.compile(r"\s+")


def _normalize(text: str) -> tuple[str, Counter]:
    """`normalize_transcript` and the characters it dropped (not letters, marks, spaces,
    apostrophes or punctuation), counted."""
    text = unicodedata.normalize("NFKC", _TAG.sub(" ", text))
    text = text.replace("\u2019", "'").replace("`", "'")
    out, dropped = [], Counter()
    for char in text:
        category = unicodedata.category(char)
        if char == "'":
            out.append(char)
        elif category[0] in "LM":
            upper = char.upper()
            # Only one-character capitals: "ß".upper() is "SS", which would change the text.
            out.append(upper if len(upper) == 1 else char)
        else:
            out.append(" ")
            if not (char.isspace() or category[0] == "P"):
                dropped[char] += 1
    # An apostrophe belongs to a word only inside it (DON'T, O'CLOCK, SINGERS' stays SINGERS).
    words = [w.strip("'") for w in "".join(out).split()]
    return _SPACES.sub(" ", " ".join(w for w in words if w)).strip(), dropped


def normalize_transcript(text: str) -> str:
    """Turns a raw transcript into a CTC target string.

    Args:
        text: raw transcript, e.g. ``"Oh, [LAUGHTER] that's great!"`` or ``"Café über"``.

    Returns:
        Upper-case text of letters (any script, NFKC-normalised), combining marks,
        apostrophes and single spaces, e.g. ``"OH THAT'S GREAT"``, ``"CAFÉ ÜBER"``.
        Non-speech tags are removed; punctuation becomes a word boundary; digits and symbols
        are dropped (counted by `dropped_characters`); quote-like apostrophes at word edges
        are dropped. May be ``""``.
    """
    return _normalize(text)[0]


def dropped_characters(text: str) -> Counter:
    """The characters of ``text`` that `normalize_transcript` drops without their being
    punctuation or spaces (digits, symbols, ...): ``Counter({char: count})``."""
    return _normalize(text)[1]


class CharVocabulary:
    """The character set of the CTC head (default: the base set of English corpora).

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

    @classmethod
    def from_transcripts(cls, texts: Iterable[str]) -> CharVocabulary:
        """The base set followed by every other character of ``texts`` (normalised
        transcripts), in code-point order: English transcripts give exactly the base set."""
        extra = set()
        for text in texts:
            extra.update(text)
        return cls(CHARACTERS + tuple(sorted(extra - set(CHARACTERS))))

    def unknown(self, text: str) -> Counter:
        """The characters of ``text`` outside this vocabulary, counted."""
        return Counter(c for c in text if c not in self._index)

    def __len__(self) -> int:
        return len(self.characters)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CharVocabulary) and self.characters == other.characters

    def encode(self, text: str, drop_unknown: bool = False) -> torch.Tensor:
        """Args: normalised text (see `normalize_transcript`); ``drop_unknown``: leave out
        characters outside the vocabulary (a valid / test transcript's letters that no
        training transcript has; counted and reported by the recipe) instead of raising.

        Returns: LongTensor of shape ``[len(text)]`` (fewer with ``drop_unknown``) with ids
        in ``1..len(self)-1``.

        Raises ValueError naming the first character outside the vocabulary.
        """
        if drop_unknown:
            text = "".join(c for c in text if c in self._index)
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
