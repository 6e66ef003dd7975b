"""CTC decoding: greedy, or beam search with an optional n-gram language model.

Configured by the hparams keys (defaults in hparams/mtl.yaml)::

    ctc_decoding: greedy   # greedy | beam
    beam_width: 50         # hypotheses kept per frame (beam)
    lm_path: null          # ARPA or binary KenLM file (beam); `mtl-ser lm build` writes one
    lm_weight: 0.5         # weight of the LM's log-probability (beam with lm_path)
    word_score: 0.0        # bonus added at each word (insertion bonus; beam)

Beam search is flashlight-text's decoder through ``torchaudio.models.decoder.ctc_decoder``
(the ``flashlight-text`` wheel bundles KenLM, so nothing compiles on install; pyctcdecode's
LM needs the ``kenlm`` module, an sdist that must compile). A character LM (every unigram one
character, the word boundary ``|``; `mtl_ser.ngram`) is decoded lexicon-free, each character
scored by the LM and ``word_score`` added at each ``|``; a word LM is decoded with a lexicon
of its words spelled in the CTC vocabulary (words with other characters left out), and
``word_score`` added per word. A binary KenLM file is read as a character LM.

Greedy decoding is `greedy_decode` (the CTC task's at every pass, and predict's and
evaluate's through `CTCDecoder`).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from speechbrain.decoders.ctc import ctc_greedy_decode

from mtl_ser.ngram import BOS, EOS, UNK, WORD_SEPARATOR, lm_digest

DECODINGS = ("greedy", "beam")
# The hparams keys of a decoder and their defaults (greedy: today's results).
DEFAULTS = {
    "ctc_decoding": "greedy",
    "beam_width": 50,
    "lm_path": None,
    "lm_weight": 0.5,
    "word_score": 0.0,
}
# The first bytes of a binary KenLM file.
_KENLM_MAGIC = b"mmap lm "


def greedy_decode(log_probs: torch.Tensor, frame_lens: torch.Tensor, vocab) -> list[str]:
    """Best path decoding.

    Args: log_probs ``[B, T, V]``; frame_lens ``[B]`` true frame counts; vocab the
    `CharVocabulary` (its blank is removed, repeats merged).

    Returns: B strings.
    """
    rel = frame_lens.float() / log_probs.shape[1]
    ids = ctc_greedy_decode(log_probs, rel, blank_id=vocab.blank_index)
    return [vocab.decode(seq) for seq in ids]


@dataclass(frozen=True)
class DecoderConfig:
    """A decoder's settings (the hparams keys of `DEFAULTS`)."""

    ctc_decoding: str = "greedy"
    beam_width: int = 50
    lm_path: str | None = None
    lm_weight: float = 0.5
    word_score: float = 0.0

    @classmethod
    def from_hparams(cls, hparams: dict) -> DecoderConfig:
        """The decoder of ``hparams`` (absent keys take `DEFAULTS`). Raises ValueError
        naming the key for a value that cannot work."""
        values = {k: hparams.get(k, v) for k, v in DEFAULTS.items()}
        config = cls(**values)
        config.check()
        return config

    def check(self) -> None:
        if self.ctc_decoding not in DECODINGS:
            raise ValueError(
                f"ctc_decoding must be one of {list(DECODINGS)}, not {self.ctc_decoding!r}"
            )
        if int(self.beam_width) < 1:
            raise ValueError(f"beam_width must be at least 1, not {self.beam_width}")
        if self.lm_path is None:
            return
        if self.ctc_decoding != "beam":
            raise ValueError(
                f"lm_path = {self.lm_path} is used only by beam search: set ctc_decoding: beam "
                "(or lm_path: null)"
            )
        if not Path(self.lm_path).is_file():
            raise ValueError(
                f"lm_path = {self.lm_path}: no such file (build one from the training "
                "transcripts with `mtl-ser lm build --manifest .../train.json ...`)"
            )

    @property
    def name(self) -> str:
        """``greedy``, ``beam`` or ``beam_lm``: the metric suffix (``wer_beam_lm``)."""
        if self.ctc_decoding == "greedy":
            return "greedy"
        return "beam_lm" if self.lm_path else "beam"

    def describe(self) -> dict:
        """The settings for results.json (the LM by its file name)."""
        out = {"ctc_decoding": self.ctc_decoding}
        if self.ctc_decoding == "beam":
            out.update(beam_width=int(self.beam_width), word_score=float(self.word_score))
            if self.lm_path:
                out.update(lm=Path(self.lm_path).name, lm_weight=float(self.lm_weight))
        return out


def lm_words(path: str | Path) -> list[str] | None:
    """The unigrams of an ARPA file (read up to its 2-grams), or None for a binary KenLM
    file."""
    with open(path, "rb") as f:
        if f.read(len(_KENLM_MAGIC)) == _KENLM_MAGIC:
            return None
    words, inside = [], False
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line == "\\1-grams:":
                inside = True
            elif inside and (line.startswith("\\") or line.startswith("ngram")):
                break
            elif inside and line:
                words.append(line.split()[1])
    if not words:
        raise ValueError(f"{path}: no 1-grams: not an ARPA or binary KenLM file")
    return words


class CTCDecoder:
    """Decodes CTC log-probabilities with a `DecoderConfig`.

    Args: config; vocab the run's `CharVocabulary`.
    """

    def __init__(self, config: DecoderConfig, vocab):
        config.check()
        self.config = config
        self.vocab = vocab
        self.name = config.name
        self._beam = None
        if config.ctc_decoding == "beam":
            self._beam = self._build_beam()

    def _tokens(self) -> list[str]:
        """The vocabulary as flashlight tokens: the space is the word separator ``|``."""
        if WORD_SEPARATOR in self.vocab.characters:
            raise ValueError(
                f"the CTC vocabulary holds {WORD_SEPARATOR!r}, the decoder's word separator"
            )
        return [WORD_SEPARATOR if c == " " else c for c in self.vocab.characters]

    def _build_beam(self):
        from torchaudio.models.decoder import ctc_decoder

        config, tokens = self.config, self._tokens()
        blank = tokens[self.vocab.blank_index]
        options = dict(
            tokens=tokens,
            beam_size=int(config.beam_width),
            blank_token=blank,
            sil_token=WORD_SEPARATOR,
        )
        words = lm_words(config.lm_path) if config.lm_path else None
        word_lm = words is not None and any(len(w) > 1 for w in words if w not in (BOS, EOS, UNK))
        if config.lm_path:
            options.update(lm=str(config.lm_path), lm_weight=float(config.lm_weight))
        if word_lm:
            options.update(lexicon=self._lexicon(words), word_score=float(config.word_score))
        else:
            # Lexicon-free: flashlight's insertion bonus is the score of the separator.
            options.update(lexicon=None, sil_score=float(config.word_score))
            if config.lm_path:
                # The LM's words in token order: torchaudio 2.11's own word dictionary of a
                # lexicon-free decoder numbers them in another order than the tokens, so the
                # LM would score other characters than those emitted.
                options["lm_dict"] = _temporary_file([*tokens, UNK])
        try:
            with _quiet_stdout():  # KenLM prints its loading progress
                return ctc_decoder(**options)
        finally:
            for key in ("lexicon", "lm_dict"):
                if options.get(key):
                    os.unlink(options[key])  # read by the constructor

    def _lexicon(self, words: list[str]) -> str:
        """A temporary lexicon file of the LM's words spelled in the vocabulary (the decoder
        reads it when it is built). Returns its path."""
        known = set(self.vocab.characters[1:]) - {" "}
        # Spelled without a trailing "|": the CTC head emits no space after an utterance's
        # last word (with one, a hypothesis could only end on a boundary it never emits,
        # and flashlight 0.0.7 then picks among near-equal bad paths unpredictably).
        lines = [
            f"{w}\t{' '.join(w)}" for w in words if w not in (BOS, EOS, UNK) and set(w) <= known
        ]
        if not lines:
            raise ValueError(
                f"{self.config.lm_path}: no word of the LM is spelled in the vocabulary"
            )
        return _temporary_file(lines)

    def __call__(self, log_probs: torch.Tensor, frame_lens: torch.Tensor) -> list[str]:
        """Args: log_probs ``[B, T, V]`` (log-softmax outputs); frame_lens ``[B]`` true frame
        counts. Returns: B strings (spaces between words, none at the ends)."""
        if self._beam is None:
            return greedy_decode(log_probs, frame_lens, self.vocab)
        emissions = log_probs.detach().float().cpu().contiguous()
        lengths = frame_lens.detach().cpu().to(torch.int32)
        out = []
        for hyps in self._beam(emissions, lengths):
            ids = hyps[0].tokens.tolist() if hyps else []
            text = self.vocab.decode(ids)
            out.append(" ".join(text.split()))
        return out


def _temporary_file(lines: list[str]) -> str:
    """Writes ``lines`` to a new temporary file. Returns its path (the caller removes it)."""
    handle, path = tempfile.mkstemp(prefix="mtl_ser_decoder_", suffix=".txt")
    with os.fdopen(handle, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return path


class _quiet_stdout:
    """Silences the C library's writes to file descriptors 1 and 2 (KenLM's loading bars)."""

    def __enter__(self):
        self._saved = [os.dup(1), os.dup(2)]
        null = os.open(os.devnull, os.O_WRONLY)
        for fd in (1, 2):
            os.dup2(null, fd)
        os.close(null)

    def __exit__(self, *exc):
        for fd, saved in zip((1, 2), self._saved, strict=True):
            os.dup2(saved, fd)
            os.close(saved)


def decoding_spec(config: DecoderConfig) -> dict | None:
    """What a model spec records of the decoder (None for greedy): the settings, the LM's
    absolute path and its digest (`decoder_from_spec` refuses a changed file)."""
    if config.ctc_decoding == "greedy":
        return None
    spec = {
        "ctc_decoding": config.ctc_decoding,
        "beam_width": int(config.beam_width),
        "lm_weight": float(config.lm_weight),
        "word_score": float(config.word_score),
        "lm": None,
        "lm_digest": None,
    }
    if config.lm_path:
        spec.update(lm=str(Path(config.lm_path).resolve()), lm_digest=lm_digest(config.lm_path))
    return spec


def decoder_from_spec(spec: dict | None, folder: str | Path, vocab) -> CTCDecoder:
    """The decoder a model spec records (greedy when ``spec`` is None).

    Args: spec (`decoding_spec`; an exported model's ``lm`` is a file name inside
    ``folder``); folder the model's folder; vocab its `CharVocabulary`.

    Raises ValueError naming the LM file when it is missing or not the file the model was
    tested with (its digest differs).
    """
    if spec is None:
        return CTCDecoder(DecoderConfig(), vocab)
    lm = spec.get("lm")
    if lm is not None:
        lm = Path(folder) / lm  # an absolute path stays as it is
        if not lm.is_file():
            raise ValueError(
                f"{folder}: this model decodes with the language model {lm}, which is "
                "missing; put it back, or export the run again (the export carries it)"
            )
        if lm_digest(lm) != spec["lm_digest"]:
            raise ValueError(
                f"{lm} is not the language model this model was tested with (its digest "
                f"differs from {spec['lm_digest']}); restore that file"
            )
    config = DecoderConfig(
        spec["ctc_decoding"],
        spec["beam_width"],
        None if lm is None else str(lm),
        spec["lm_weight"],
        spec["word_score"],
    )
    return CTCDecoder(config, vocab)
