"""Both task losses fall clearly when the tiny model memorises four demo utterances."""

import torch
from speechbrain.dataio.batch import PaddedBatch
from speechbrain.decoders.ctc import ctc_greedy_decode

from mtl_ser.data.labels import LabelSet
from mtl_ser.data.pipelines import add_pipelines, load_dataset
from mtl_ser.data.prepare import prepare_iemocap
from mtl_ser.data.text import CharVocabulary
from mtl_ser.metrics import error_rates
from mtl_ser.models.heads import CTCHead, EmotionHead
from mtl_ser.models.objective import MultiTaskObjective
from mtl_ser.models.ssl import SSLEncoder


def four_utterances(demo_corpus, tmp_path):
    """One utterance with text per class from the demo corpus, through the real pipelines."""
    paths = prepare_iemocap(demo_corpus, tmp_path / "prep", verbose=False)
    labels = LabelSet.load(tmp_path / "prep")
    vocab = CharVocabulary()
    dataset = load_dataset(paths["train"], demo_corpus)
    add_pipelines(dataset, labels, vocab, max_len=None)
    chosen = {}
    for item in dataset:
        label = int(item["emo_encoded"])
        if item["has_text"] and label not in chosen:
            chosen[label] = item
    return PaddedBatch([chosen[k] for k in sorted(chosen)]), vocab


def test_emotion_and_ctc_losses_fall(demo_corpus, tmp_path):
    torch.manual_seed(0)
    batch, vocab = four_utterances(demo_corpus, tmp_path)
    assert len(batch) == 4
    encoder = SSLEncoder("random:tiny", mask_time_prob=0.0)
    emotion_head = EmotionHead(encoder.output_size, n_classes=4)
    ctc_head = CTCHead(encoder.output_size, len(vocab))
    modules = torch.nn.ModuleList([encoder, emotion_head, ctc_head])
    optimizer = torch.optim.AdamW([p for p in modules.parameters() if p.requires_grad], lr=3e-3)
    # One of the paper's alphas; at the released scale the CTC term of 4 utterances is ~400x
    # the cross-entropy at the start, and with alpha 0.1 it swamps the tiny random encoder.
    objective = MultiTaskObjective(alpha=0.01)
    wavs, wav_lens = batch.sig
    tokens, token_rel = batch.tokens
    token_lens = torch.round(token_rel * tokens.shape[1]).long()
    emo = batch.emo_encoded.data.squeeze(-1)

    history = []
    for _ in range(120):
        hidden, frames, _ = encoder(wavs, wav_lens)
        losses = objective(
            emotion_head(hidden, frames),
            emo,
            ctc_head(hidden),
            frames,
            tokens,
            token_lens,
            batch.ctc_mask.data.squeeze(-1),
        )
        optimizer.zero_grad()
        losses.total.backward()
        optimizer.step()
        history.append((losses.emo.item(), losses.ctc.item()))

    (emo_first, ctc_first), (emo_last, ctc_last) = history[0], history[-1]
    assert emo_last < 0.1 * emo_first
    assert ctc_last < 0.05 * ctc_first
    # Memorised transcripts: the greedy CTC output reads (nearly) the references.
    modules.eval()
    with torch.no_grad():
        hidden, frames, _ = encoder(wavs, wav_lens)
        ids = ctc_greedy_decode(ctc_head(hidden), frames / hidden.shape[1], blank_id=0)
    hypotheses = [vocab.decode(seq) for seq in ids]
    assert error_rates(batch.wrd, hypotheses)["cer"] < 0.1
