"""Text encoders for the transcript as a second view (README "Transcript as a second view").

Every encoder takes a list of B strings and returns `TextStates`: token states ``[B, L, H]``,
a bool mask ``[B, L]`` of the real tokens (padding False) and their masked mean ``[B, H]``.
A string always gives at least one token (a leading [CLS]), so an empty transcript (no text,
or a recogniser that emitted nothing) still has a defined embedding. Padding never changes
a string's states: a batch gives each string what it gets alone.

``text_encoder`` names one of:

- ``char``: character embeddings and a bidirectional GRU (packed, so padding is never read);
  needs nothing.
- ``random:tiny-bert``: a randomly initialised 2-layer BERT (hidden 32) on our own
  character tokenizer, built locally (tests; no download).
- anything else: a Hugging Face ``AutoModel`` hub id or local folder, with its
  ``AutoTokenizer`` (e.g. ``bert-base-uncased``, ``roberta-base``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mtl_ser.models.masking import masked_mean

# Our character tokenizer's alphabet (lower-cased text): 0 padding, 1 [CLS], 2 unknown.
CHAR_ALPHABET = " abcdefghijklmnopqrstuvwxyz0123456789'.,?!-"
PAD_ID, CLS_ID, UNK_ID = 0, 1, 2
PRESETS = ("char", "random:tiny-bert")


@dataclass
class TextStates:
    """A text encoder's output: ``states`` ``[B, L, H]``, ``mask`` ``[B, L]`` bool (real
    tokens), ``pooled`` ``[B, H]`` (the mean of the real tokens' states)."""

    states: torch.Tensor
    mask: torch.Tensor
    pooled: torch.Tensor


class CharTokenizer:
    """Characters of `CHAR_ALPHABET` (lower-cased; others map to unknown) after a [CLS].

    Args: max_length: tokens per string at most ([CLS] included); longer strings are cut.
    """

    def __init__(self, max_length: int = 256):
        self.max_length = int(max_length)
        self.index = {c: i + 3 for i, c in enumerate(CHAR_ALPHABET)}
        self.vocab_size = len(CHAR_ALPHABET) + 3

    def __call__(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns: ids ``[B, L]`` long (right-padded with 0) and mask ``[B, L]`` bool."""
        rows = [
            [CLS_ID] + [self.index.get(c, UNK_ID) for c in t.lower()][: self.max_length - 1]
            for t in texts
        ]
        longest = max(len(r) for r in rows)
        ids = torch.full((len(rows), longest), PAD_ID, dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row)
        return ids, ids != PAD_ID


class CharTextEncoder(nn.Module):
    """Character embeddings -> bidirectional GRU over each string's own characters.

    Args: hidden_size H (the states' size; each direction H / 2); max_length (tokens).
    """

    def __init__(self, hidden_size: int = 64, max_length: int = 256):
        super().__init__()
        if hidden_size % 2:
            raise ValueError(
                f"text hidden_size must be even (two GRU directions), not {hidden_size}"
            )
        self.tokenizer = CharTokenizer(max_length)
        self.output_size = hidden_size
        self.embedding = nn.Embedding(self.tokenizer.vocab_size, hidden_size, padding_idx=PAD_ID)
        self.gru = nn.GRU(hidden_size, hidden_size // 2, batch_first=True, bidirectional=True)

    def forward(self, texts: list[str]) -> TextStates:
        ids, mask = self.tokenizer(texts)
        ids, mask = ids.to(self.embedding.weight.device), mask.to(self.embedding.weight.device)
        lengths = mask.sum(dim=1).cpu()
        packed = nn.utils.rnn.pack_padded_sequence(
            self.embedding(ids), lengths, batch_first=True, enforce_sorted=False
        )
        out, _ = self.gru(packed)
        states, _ = nn.utils.rnn.pad_packed_sequence(
            out, batch_first=True, total_length=ids.shape[1]
        )
        return TextStates(states, mask, masked_mean(states, mask))


class HFTextEncoder(nn.Module):
    """A Hugging Face text model (``AutoModel``) and its tokenizer; the states are its last
    hidden layer. Padding is masked by the model's attention mask.

    Args: source: a hub id, a local folder, or ``random:tiny-bert`` (a 2-layer, hidden-32
    BERT on `CharTokenizer`, randomly initialised); max_length (tokens).
    """

    def __init__(self, source: str, max_length: int = 256):
        super().__init__()
        import transformers

        self.source = source
        self.max_length = int(max_length)
        if source == "random:tiny-bert":
            self.tokenizer = CharTokenizer(max_length)
            config = transformers.BertConfig(
                vocab_size=self.tokenizer.vocab_size,
                hidden_size=32,
                num_hidden_layers=2,
                num_attention_heads=2,
                intermediate_size=64,
                max_position_embeddings=max(self.max_length, 8),
                pad_token_id=PAD_ID,
            )
            self.model = transformers.BertModel(config, add_pooling_layer=False)
        else:
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(source)
            self.model = transformers.AutoModel.from_pretrained(source)
        self.output_size = self.model.config.hidden_size

    def _tokens(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(self.tokenizer, CharTokenizer):
            return self.tokenizer(texts)
        enc = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        return enc["input_ids"], enc["attention_mask"].bool()

    def forward(self, texts: list[str]) -> TextStates:
        ids, mask = self._tokens(texts)
        device = next(self.model.parameters()).device
        ids, mask = ids.to(device), mask.to(device)
        states = self.model(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        return TextStates(states, mask, masked_mean(states, mask))


def build_text_encoder(name: str, hidden_size: int = 64, max_length: int = 256) -> nn.Module:
    """The text encoder ``name`` (see the module docstring); ``hidden_size`` sizes ``char``
    only (the others have their model's). Forward: B strings -> `TextStates`."""
    if name == "char":
        return CharTextEncoder(hidden_size, max_length)
    if not isinstance(name, str) or not name:
        raise ValueError(f"text_encoder must be one of {list(PRESETS)} or a hub id / folder")
    return HFTextEncoder(name, max_length)
