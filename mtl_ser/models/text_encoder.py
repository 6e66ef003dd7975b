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
- anything else: a Hugging Face ``AutoModel`` hub id or local folder, with its fast
  ``AutoTokenizer`` (e.g. ``bert-base-uncased``, ``roberta-base``; the families of
  `text_config_classes`). Its config and tokenizer are saved in the model spec
  (`HFTextEncoder.export_source`), so a run's export rebuilds it without a download.
"""

from __future__ import annotations

import json
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

    def export_source(self) -> str:
        """The ``text_encoder`` name that rebuilds this encoder."""
        return "char"

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


def text_config_classes() -> dict:
    """The Hugging Face text model families a model spec may build: model_type -> config
    class."""
    import transformers

    return {
        "bert": transformers.BertConfig,
        "roberta": transformers.RobertaConfig,
        "xlm-roberta": transformers.XLMRobertaConfig,
        "distilbert": transformers.DistilBertConfig,
        "electra": transformers.ElectraConfig,
    }


class HFTextEncoder(nn.Module):
    """A Hugging Face text model (``AutoModel``) and its fast tokenizer; the states are its
    last hidden layer. Padding is masked by the model's attention mask.

    Args:
        source: a hub id or local folder (downloads / reads it); ``random:tiny-bert`` (a
            2-layer, hidden-32 BERT on `CharTokenizer`, randomly initialised); or a built
            model's parts ``{"config": <config dict>, "tokenizer": <tokenizer.json dict>}``
            (what `export_source` returns and a model spec holds: random weights, to be
            loaded; no download, no file read).
        max_length: tokens per string at most (special tokens included).
    """

    def __init__(self, source, max_length: int = 256):
        super().__init__()
        import tokenizers
        import transformers

        self.preset = source if source == "random:tiny-bert" else None
        self.max_length = int(max_length)
        if self.preset:
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
        elif isinstance(source, dict):
            config = dict(source["config"])
            config_class = text_config_classes()[config.pop("model_type")]
            self.model = transformers.AutoModel.from_config(config_class(**config))
            self.tokenizer = tokenizers.Tokenizer.from_str(json.dumps(source["tokenizer"]))
        else:
            wrapper = transformers.AutoTokenizer.from_pretrained(source)
            if not wrapper.is_fast:
                raise ValueError(
                    f"text_encoder {source}: its tokenizer has no fast (tokenizers) version, "
                    "which mtl-ser saves with the model; choose a model that has one"
                )
            self.tokenizer = wrapper.backend_tokenizer
            self.model = transformers.AutoModel.from_pretrained(source)
            if self.model.config.model_type not in text_config_classes():
                raise ValueError(
                    f"text_encoder {source} is a {self.model.config.model_type} model; "
                    f"supported: {sorted(text_config_classes())}"
                )
        if getattr(self.model, "pooler", None) is not None:
            # Never read (the states are mean-pooled over the mask): without it no parameter
            # lacks a gradient (DDP), and a spec-built model has the same weights.
            self.model.pooler = None
        if not isinstance(self.tokenizer, CharTokenizer):
            self.tokenizer.no_padding()  # padded here, with the mask
            self.tokenizer.no_truncation()
        self.output_size = self.model.config.hidden_size

    def export_source(self):
        """What rebuilds this encoder without a download: the preset's name, or the
        model's config and tokenizer (``source`` of the constructor)."""
        if self.preset:
            return self.preset
        config = self.model.config
        defaults = type(config)().to_dict()
        kept = {k: v for k, v in config.to_dict().items() if k in defaults}
        return {"config": kept, "tokenizer": json.loads(self.tokenizer.to_str())}

    def _tokens(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(self.tokenizer, CharTokenizer):
            return self.tokenizer(texts)
        rows = [e.ids[: self.max_length] for e in self.tokenizer.encode_batch(list(texts))]
        longest = max(len(r) for r in rows)
        ids = torch.zeros(len(rows), longest, dtype=torch.long)
        mask = torch.zeros(len(rows), longest, dtype=torch.bool)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            mask[i, : len(row)] = True
        return ids, mask

    def forward(self, texts: list[str]) -> TextStates:
        ids, mask = self._tokens(texts)
        device = next(self.model.parameters()).device
        ids, mask = ids.to(device), mask.to(device)
        states = self.model(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        return TextStates(states, mask, masked_mean(states, mask))


def build_text_encoder(name, hidden_size: int = 64, max_length: int = 256) -> nn.Module:
    """The text encoder ``name`` (see the module docstring, or a built Hugging Face model's
    parts: `HFTextEncoder`); ``hidden_size`` sizes ``char`` only (the others have their
    model's). Forward: B strings -> `TextStates`."""
    if name == "char":
        return CharTextEncoder(hidden_size, max_length)
    if not (isinstance(name, dict) or (isinstance(name, str) and name)):
        raise ValueError(f"text_encoder must be one of {list(PRESETS)} or a hub id / folder")
    return HFTextEncoder(name, max_length)
