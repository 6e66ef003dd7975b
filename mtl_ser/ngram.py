"""N-gram language models for CTC beam search: `mtl-ser lm build` and ARPA files.

    mtl-ser lm build --manifest PREPARED/train.json --order 6 --unit char --output lm.arpa

estimates an interpolated Kneser-Ney model (Chen & Goodman 1998, one discount per order,
``D = n1 / (n1 + 2 n2)`` of that order's count-of-counts, clamped to [0.1, 0.9]) from the
transcripts of a TRAINING manifest and writes it as an ARPA file, which the beam decoder
(`mtl_ser.decoding`, flashlight-text's KenLM) reads. The test and validation manifests are
refused by name (``valid.json`` / ``test.json``): an LM that saw test transcripts would
flatter the WER.

Units: ``char`` (tokens = the characters of the CTC vocabulary, the word boundary written
``|`` as flashlight's lexicon-free decoder expects) or ``word`` (tokens = words; the decoder
then spells them with a lexicon built from the LM's words). Transcripts are normalised with
`mtl_ser.data.text.normalize_transcript`, as the CTC targets are.

ARPA layout: order-k entries ``log10 p(w | h)  h w  [log10 backoff(h w)]``; p of a listed
n-gram is the interpolated probability, the backoff weight of a history is the mass the
discounts left to the shorter history, so ``p(w | h) = bo(h) * p(w | h[1:])`` for an n-gram
that is not listed. ``<s>`` is listed with -99 (never predicted); ``<unk>`` and every
character of the vocabulary have unigram mass (interpolated with the uniform distribution).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from pathlib import Path

from mtl_ser.atomic import atomic_write_text

BOS, EOS, UNK = "<s>", "</s>", "<unk>"
WORD_SEPARATOR = "|"
UNITS = ("char", "word")
# Manifests that hold held-out transcripts (prepared folders name their splits so).
HELD_OUT_NAMES = ("valid", "test")
NO_PROB = -99.0  # ARPA's log10 "never" (<s>)


def tokenize(text: str, unit: str) -> list[str]:
    """A normalised transcript as LM tokens.

    Args: text, e.g. ``"HI THERE"``; unit ``"char"`` or ``"word"``.

    Returns: ``["H", "I", "|", "T", ...]`` (char) or ``["HI", "THERE"]`` (word).
    """
    if unit == "char":
        return [WORD_SEPARATOR if c == " " else c for c in text]
    if unit == "word":
        return text.split()
    raise ValueError(f"unit must be one of {UNITS}, not {unit!r}")


def _discount(counts: Counter) -> float:
    """The absolute discount of one order from its count-of-counts ``n1``, ``n2``."""
    n1 = sum(1 for c in counts.values() if c == 1)
    n2 = sum(1 for c in counts.values() if c == 2)
    if n1 == 0 or n1 + 2 * n2 == 0:
        return 0.5
    return min(max(n1 / (n1 + 2 * n2), 0.1), 0.9)


def kneser_ney(sentences: list[list[str]], order: int, vocabulary=()) -> dict:
    """Estimates an interpolated Kneser-Ney model.

    Args:
        sentences: token lists (without ``<s>`` / ``</s>``).
        order: N >= 1.
        vocabulary: tokens that get unigram mass even when unseen (e.g. every character
            of the CTC vocabulary).

    Returns: ``{"order": N, "probs": [ {ngram tuple: log10 p} per order 1..N ],
    "backoffs": [ {ngram tuple: log10 bo} per order 1..N-1 ]}``.
    """
    if order < 1:
        raise ValueError(f"order must be at least 1, got {order}")
    raw: list[Counter] = [Counter() for _ in range(order)]
    for tokens in sentences:
        padded = [BOS, *tokens, EOS]
        for k in range(1, order + 1):
            for i in range(len(padded) - k + 1):
                raw[k - 1][tuple(padded[i : i + k])] += 1
    # Adjusted counts: the highest order (and n-grams starting with <s>, which nothing
    # precedes) keep raw counts; lower orders count distinct left extensions.
    counts: list[Counter] = [Counter() for _ in range(order)]
    counts[order - 1] = raw[order - 1]
    for k in range(order - 1, 0, -1):
        for gram in raw[k]:
            counts[k - 1][gram[1:]] += 1
        for gram, c in raw[k - 1].items():
            if gram[0] == BOS:
                counts[k - 1][gram] = c
    counts[0].pop((BOS,), None)
    words = sorted({g[0] for g in counts[0]} | set(vocabulary) | {EOS, UNK})
    words = [w for w in words if w != BOS]
    # Per order: discount, and per history its count total and number of followers.
    discounts = [_discount(c) for c in counts]
    totals, followers = [], []
    for c in counts:
        total, n = defaultdict(int), defaultdict(int)
        for gram, value in c.items():
            total[gram[:-1]] += value
            n[gram[:-1]] += 1
        totals.append(total)
        followers.append(n)

    def gamma(k: int, history: tuple) -> float:
        """The weight of the order-(k-1) estimate after history (order k, 1-based)."""
        total = totals[k - 1].get(history, 0)
        if total == 0:
            return 1.0
        return discounts[k - 1] * followers[k - 1][history] / total

    cache: dict = {}

    def prob(gram: tuple) -> float:
        k = len(gram)
        if gram in cache:
            return cache[gram]
        history = gram[:-1]
        lower = 1.0 / len(words) if k == 1 else prob(gram[1:])
        total = totals[k - 1].get(history, 0)
        if total == 0:
            value = lower
        else:
            seen = max(counts[k - 1].get(gram, 0) - discounts[k - 1], 0.0) / total
            value = seen + gamma(k, history) * lower
        cache[gram] = value
        return value

    probs = [{(w,): math.log10(prob((w,))) for w in words}]
    probs[0][(BOS,)] = NO_PROB
    for k in range(2, order + 1):
        probs.append({g: math.log10(prob(g)) for g in counts[k - 1]})
    backoffs = []
    for k in range(1, order):
        listed = probs[k - 1]
        backoffs.append({g: math.log10(gamma(k + 1, g)) for g in listed if totals[k].get(g, 0) > 0})
    return {"order": order, "probs": probs, "backoffs": backoffs}


def arpa_text(model: dict) -> str:
    """The ARPA text of a `kneser_ney` model."""
    lines = ["", "\\data\\"]
    lines += [f"ngram {k + 1}={len(p)}" for k, p in enumerate(model["probs"])]
    for k, probs in enumerate(model["probs"]):
        lines += ["", f"\\{k + 1}-grams:"]
        backoffs = model["backoffs"][k] if k < len(model["backoffs"]) else {}
        for gram in sorted(probs):
            line = f"{probs[gram]:.6f}\t{' '.join(gram)}"
            if gram in backoffs:
                line += f"\t{backoffs[gram]:.6f}"
            lines.append(line)
    lines += ["", "\\end\\", ""]
    return "\n".join(lines)


class ArpaModel:
    """An ARPA file read back (for checks and the decoder's choice of unit).

    ``log10_prob(history, word)`` follows the backoff rule; ``words`` are the unigrams.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.probs: dict[tuple, float] = {}
        self.backoffs: dict[tuple, float] = {}
        self.order = 0
        section = 0
        for number, line in enumerate(self.path.read_text().splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("ngram ") or line == "\\data\\":
                continue
            if line == "\\end\\":
                break
            if line.startswith("\\") and line.endswith("-grams:"):
                section = int(line[1:].split("-")[0])
                self.order = max(self.order, section)
                continue
            fields = line.split()
            if section == 0 or len(fields) < section + 1:
                raise ValueError(f"{self.path}:{number}: not an ARPA n-gram line: {line!r}")
            gram = tuple(fields[1 : section + 1])
            self.probs[gram] = float(fields[0])
            if len(fields) > section + 1:
                self.backoffs[gram] = float(fields[section + 1])
        if not self.order:
            raise ValueError(f"{self.path}: no n-grams (not an ARPA file)")
        self.words = [g[0] for g in self.probs if len(g) == 1]

    def log10_prob(self, history: tuple, word: str) -> float:
        """log10 p(word | history) (the last order-1 tokens of ``history`` count)."""
        history = tuple(history)[-(self.order - 1) :] if self.order > 1 else ()
        backoff = 0.0
        while True:
            gram = (*history, word)
            if gram in self.probs:
                return backoff + self.probs[gram]
            if not history:
                return backoff + self.probs.get((UNK,), NO_PROB)
            backoff += self.backoffs.get(history, 0.0)
            history = history[1:]

    @property
    def unit(self) -> str:
        """``char`` when every word is one character (or ``|``), else ``word``."""
        special = {BOS, EOS, UNK}
        return "char" if all(len(w) == 1 for w in self.words if w not in special) else "word"


def lm_digest(path: str | Path) -> str:
    """16 hex characters of a language model file's bytes (where it lies does not count)."""
    from mtl_ser.data.fingerprint import file_digest

    return file_digest(path)[:16]


def is_arpa_file(path: str | Path) -> bool:
    """Whether ``path`` starts like an ARPA file (`mtl-ser lm build` may replace it)."""
    with open(path, "rb") as f:
        return f.read(64).lstrip().startswith(b"\\data\\")


def build_lm(
    manifest: str | Path,
    output: str | Path,
    order: int = 6,
    unit: str = "char",
    progress: bool = True,
) -> dict:
    """`mtl-ser lm build`: an ARPA file from a training manifest's transcripts.

    Args:
        manifest: a prepared ``train.json`` (``valid.json`` / ``test.json`` are refused).
        output: the ARPA file to write (atomically).
        order: the n-gram order.
        unit: ``char`` or ``word``.
        progress: show a progress bar over the transcripts.

    Returns: ``{"sentences", "tokens", "ngrams": [count per order], "output"}``.
    """
    from mtl_ser.data.manifest import load_manifest
    from mtl_ser.data.text import CHARACTERS, normalize_transcript
    from mtl_ser.progress import track

    manifest = Path(manifest)
    if manifest.stem in HELD_OUT_NAMES:
        raise ValueError(
            f"{manifest}: a {manifest.stem} manifest; build the LM from the training split "
            "only (train.json): an LM that saw held-out transcripts flatters the WER"
        )
    if unit not in UNITS:
        raise ValueError(f"--unit must be one of {UNITS}, not {unit!r}")
    records = load_manifest(manifest)
    sentences = []
    for record in track(list(records.values()), "reading transcripts", "utt", progress):
        text = normalize_transcript(record.get("wrd") or "")
        if text:
            sentences.append(tokenize(text, unit))
    if not sentences:
        raise ValueError(f"{manifest}: no transcripts to build a language model from")
    vocabulary = tokenize("".join(CHARACTERS[1:]), "char") if unit == "char" else ()
    model = kneser_ney(sentences, order, vocabulary)
    atomic_write_text(output, arpa_text(model))
    return {
        "sentences": len(sentences),
        "tokens": sum(len(s) for s in sentences),
        "ngrams": [len(p) for p in model["probs"]],
        "output": str(output),
    }
