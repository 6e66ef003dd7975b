"""The transcript as a second view: text encoders, fusion (shapes and padding masks on both
sides), the text_emotion task's transcripts (reference, hypothesis, the per-utterance mix
draws and their resume, a fit killed between epochs and resumed), its training step
through the Brain, and its model spec."""

import json

import pytest
import speechbrain as sb
import torch
from speechbrain.dataio.batch import PaddedBatch

from mtl_ser.data.pipelines import ItemSeeds
from mtl_ser.export import module_spec
from mtl_ser.model_spec import SpecError, build_module, validate_spec
from mtl_ser.models.fusion import FUSIONS, Fusion, TextFusionHead
from mtl_ser.models.text_encoder import build_text_encoder
from mtl_ser.tasks import configured_tasks
from mtl_ser.tasks.base import TaskInputs
from mtl_ser.tasks.text_emotion import TextEmotionTask
from tests.recipes.helpers import epoch_log, tiny_mtl_brain
from tests.recipes.test_train_mtl import untimed
from tests.unit.test_tasks import batch, brain_with, examples

TEXTS = ["hello there", "", "a much longer transcript, with punctuation!"]


@pytest.mark.parametrize("name", ["char", "random:tiny-bert"])
def test_text_encoders_give_each_string_what_it_gets_alone(name):
    torch.manual_seed(0)
    encoder = build_text_encoder(name, hidden_size=16).eval()
    out = encoder(TEXTS)
    B, L, H = out.states.shape
    assert (B, H) == (3, encoder.output_size) and out.pooled.shape == (3, H)
    # [CLS] + characters; the empty transcript still has its [CLS].
    assert out.mask.sum(1).tolist() == [1 + len(t) for t in TEXTS]
    for i, text in enumerate(TEXTS):
        alone = encoder([text])
        n = len(text) + 1
        torch.testing.assert_close(out.states[i, :n], alone.states[0], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(out.pooled[i], alone.pooled[0], atol=1e-5, rtol=1e-4)


def acoustic(seed=0, B=3, T=7, D=12, lengths=(7, 4, 2)):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, T, D, generator=g), torch.tensor(lengths)


@pytest.mark.parametrize("fusion", FUSIONS)
def test_fusion_shapes_and_padding_on_both_sides_do_not_matter(fusion):
    torch.manual_seed(1)
    head = TextFusionHead(
        12,
        n_classes=4,
        text_encoder="char",
        fusion=fusion,
        text_size=8,
        fusion_size=8,
        fusion_heads=2,
    ).eval()
    x, lengths = acoustic()
    logits = head(x, lengths, texts=TEXTS)
    assert logits.shape == (3, 4)
    expected = {"concat": 12 + 8, "gated": 8, "cross_attention": 12 + 8}[fusion]
    assert head.fusion.output_size == expected
    # Padded frames changed: same output.
    noisy = x.clone()
    for i, n in enumerate(lengths.tolist()):
        noisy[i, n:] = 1e3
    torch.testing.assert_close(head(noisy, lengths, texts=TEXTS), logits)
    # Each utterance alone (its own frames, its own tokens): same output as in the batch.
    for i, n in enumerate(lengths.tolist()):
        alone = head(x[i : i + 1, :n], lengths[i : i + 1], texts=[TEXTS[i]])
        torch.testing.assert_close(alone[0], logits[i], atol=1e-5, rtol=1e-4)


def test_cross_attention_masks_padded_tokens_and_frames():
    torch.manual_seed(2)
    fusion = Fusion("cross_attention", acoustic_size=6, pooled_size=6, text_size=4, size=4)
    frames = torch.randn(2, 5, 6)
    frame_mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    states = torch.randn(2, 3, 4)
    token_mask = torch.tensor([[1, 1, 0], [1, 1, 1]], dtype=torch.bool)
    pooled = torch.randn(2, 6)

    def run(frames, states):
        from mtl_ser.models.text_encoder import TextStates

        return fusion(frames, frame_mask, pooled, TextStates(states, token_mask, states[:, 0]))

    out = run(frames, states)
    frames2, states2 = frames.clone(), states.clone()
    frames2[0, 3:] = -50.0  # padded frames
    states2[0, 2] = 99.0  # a padded token
    torch.testing.assert_close(run(frames2, states2), out)
    frames2[0, 0] = 3.0  # a real frame does change it
    assert not torch.allclose(run(frames2, states)[0], out[0])


def inputs_for(b, stage, log_probs=None, item_seeds=None, rows=None, task_names=("ctc",)):
    from mtl_ser.data.text import CharVocabulary
    from mtl_ser.tasks.ctc import CTCTask

    tasks = [CTCTask(name=n, weight=0.1, vocab=CharVocabulary()) for n in task_names]
    rows = torch.arange(len(b.id)) if rows is None else rows
    return TaskInputs(b, stage, tasks, {"ctc": log_probs}, rows, item_seeds)


def spelled(text: str, frames: int = 12) -> torch.Tensor:
    """CTC log-probabilities ``[T, V]`` whose greedy decoding is ``text``."""
    from mtl_ser.data.text import CharVocabulary

    vocab = CharVocabulary()
    ids = vocab.encode(text).tolist()
    log_probs = torch.full((frames, len(vocab)), -10.0)
    log_probs[:, vocab.blank_index] = 0.0
    for t, i in enumerate(ids):
        log_probs[2 * t, i] = 1.0
    return log_probs.log_softmax(-1)


def test_transcripts_reference_hypothesis_and_the_mix():
    b = batch(3, n=4)  # references "HI THERE"
    log_probs = torch.stack([spelled("HO")] * 4)
    lengths = torch.full((4,), 12)
    reference = TextEmotionTask(name="emotion", text_source="reference")
    assert reference.transcripts(inputs_for(b, sb.Stage.TEST), lengths) == ["HI THERE"] * 4
    hypothesis = TextEmotionTask(name="emotion", text_source="hypothesis", hypothesis_mix=0.5)
    # Evaluation: hypotheses only, whatever the mix.
    assert hypothesis.transcripts(inputs_for(b, sb.Stage.VALID, log_probs), lengths) == ["HO"] * 4
    # Augmented copies (rows) read their utterance's reference and their own hypothesis.
    rows = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    seeds = ItemSeeds(7)
    texts = hypothesis.transcripts(
        inputs_for(b, sb.Stage.TRAIN, torch.cat([log_probs] * 2), seeds, rows), lengths.repeat(2)
    )
    assert texts[:4] == texts[4:] and set(texts) <= {"HI THERE", "HO"}


def test_the_mix_draws_per_utterance_and_epoch_and_resumes_exactly():
    ids = [f"Ses01F_impro01_F{i:03d}" for i in range(2000)]
    seeds = ItemSeeds(1)

    def draws(item_seeds, epoch):
        item_seeds.set_epoch(epoch)
        return [item_seeds.uniform(f"{u}:text_source") < 0.3 for u in ids]

    first = draws(seeds, 1)
    assert 0.27 < sum(first) / len(ids) < 0.33  # p = share that gets the reference
    second = draws(seeds, 2)
    assert first != second  # a new coin each epoch
    # A resumed run (fresh object, generators moved by anything) draws the same coins.
    torch.rand(100)
    assert draws(ItemSeeds(1), 1) == first and draws(ItemSeeds(2), 1) != first
    # Independent of the crop draws' CRC: neighbouring ids are not correlated.
    pairs = sum(a == b for a, b in zip(first, first[1:], strict=False)) / (len(ids) - 1)
    assert 0.5 < pairs < 0.66  # ~ 0.3^2 + 0.7^2 = 0.58 for independent coins


class Utterances(torch.utils.data.Dataset):
    """Utterances of `tests.unit.test_tasks.examples`, with the training set's per-utterance
    draws (``item_seeds``) that `dataio_prep` attaches."""

    def __init__(self, items, seed):
        self.items, self.item_seeds = items, ItemSeeds(seed)

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


class Killed(Exception):
    """Stands for a kill -9 between two epochs."""


def text_fusion_fit(folder, kill_at_epoch=None):
    """Fits the tiny Brain with the text_emotion task (hypotheses with hypothesis_mix 0.5,
    dropout on) for 2 epochs of 2 batches of 2 utterances, checkpointing into
    ``folder/save`` at each epoch's end; ``kill_at_epoch``: raise `Killed` as that epoch
    starts. Returns the Brain."""
    tasks = {
        "emotion": {"kind": "text_emotion", "hypothesis_mix": 0.5, "fusion": "gated"},
        "ctc": {},
    }
    brain = tiny_mtl_brain(
        folder,
        "--number_of_epochs=2",
        "--head_dropout=0.1",  # draws from the generators the checkpoint restores
        adjust=lambda hparams: hparams.update(tasks=tasks),
        checkpointed=True,
    )
    if kill_at_epoch is not None:
        start = brain.on_stage_start

        def on_stage_start(stage, epoch=None):
            if stage == sb.Stage.TRAIN and epoch == kill_at_epoch:
                raise Killed
            start(stage, epoch)

        brain.on_stage_start = on_stage_start
    loader = torch.utils.data.DataLoader
    train = loader(Utterances(examples(5), seed=7), batch_size=2, collate_fn=PaddedBatch)
    valid = loader(examples(7, n=2), batch_size=2, collate_fn=PaddedBatch)
    brain.fit(brain.hparams.epoch_counter, train, valid, progressbar=False)
    return brain


def test_a_text_fusion_run_killed_between_epochs_resumes_exactly(tmp_path):
    """The hypothesis mix draws per utterance and epoch from the seed: a run killed after
    epoch 1's checkpoint and resumed (a new Brain on the same folder) ends with the
    uninterrupted run's parameters and epoch log, bit for bit."""
    uninterrupted = text_fusion_fit(tmp_path / "a")
    with pytest.raises(Killed):
        text_fusion_fit(tmp_path / "b", kill_at_epoch=2)
    assert [e["epoch"] for e in epoch_log(tmp_path / "b")] == [1]
    resumed = text_fusion_fit(tmp_path / "b")
    assert untimed(epoch_log(tmp_path / "b")) == untimed(epoch_log(tmp_path / "a"))
    expected = uninterrupted.modules.state_dict()
    got = resumed.modules.state_dict()
    assert got.keys() == expected.keys()
    assert any(k.startswith("emotion_head.text.") for k in got)
    for key, value in expected.items():
        assert torch.equal(got[key], value), key


def test_text_emotion_configuration():
    from mtl_ser.data.text import CharVocabulary

    tasks = configured_tasks(
        {"alpha": 0.1, "tasks": {"emotion": {"kind": "text_emotion"}, "ctc": {}}},
        CharVocabulary(),
    )
    assert isinstance(tasks[0], TextEmotionTask) and tasks[0].order > tasks[1].order
    with pytest.raises(ValueError, match="text_source: hypothesis reads the CTC task 'ctc'"):
        configured_tasks({"alpha": 0.0, "tasks": {"emotion": {"kind": "text_emotion"}}})
    ok = configured_tasks(
        {"alpha": 0.0, "tasks": {"emotion": {"kind": "text_emotion", "text_source": "reference"}}}
    )
    assert ok[0].identity()["text_view"] == "oracle (reference transcripts)"
    with pytest.raises(ValueError, match="hypothesis_mix must be in"):
        TextEmotionTask(name="emotion", hypothesis_mix=1.5)
    with pytest.raises(ValueError, match="fusion 'sum' is not one of"):
        TextEmotionTask(name="emotion", fusion="sum")


def test_the_brain_trains_encoder_ctc_text_branch_and_fusion_together(tmp_path):
    tasks = {
        "emotion": {"kind": "text_emotion", "fusion": "gated", "text_encoder": "random:tiny-bert"},
        "ctc": {},
    }
    brain = brain_with(tmp_path, tasks)
    head = brain.modules["emotion_head"]
    assert isinstance(head, TextFusionHead) and [t.name for t in brain.tasks] == ["emotion", "ctc"]
    b = batch(4)
    outputs = brain.compute_forward(b, stage=sb.Stage.VALID)
    assert outputs.by_task["emotion"].shape == (4, 4)
    # The emotion head read the CTC head's greedy transcripts of this very forward pass.
    ctc = brain.tasks[1]
    assert brain.tasks[0]._texts == ctc.greedy(outputs.by_task["ctc"], outputs.frame_lens)
    before = {k: v.clone() for k, v in brain.modules.state_dict().items()}
    brain.on_stage_start(sb.Stage.TRAIN, epoch=1)
    brain.step = 1
    brain.fit_batch(b)
    after = brain.modules.state_dict()
    for part in ("encoder.", "ctc_head.", "emotion_head.text.", "emotion_head.fusion."):
        assert any(k.startswith(part) and not torch.equal(after[k], before[k]) for k in after), part


def test_the_head_round_trips_through_the_model_spec_and_a_hub_encoder_is_refused():
    head = TextFusionHead(12, n_classes=4, text_encoder="char", fusion="cross_attention")
    spec = module_spec(head)
    assert spec["class"] == "mtl_ser.models.fusion.TextFusionHead"
    full = {
        "format": 1,
        "modules": {"encoder": _cnn_spec(), "emotion_head": spec},
        "labels": ["a", "b", "c", "d"],
        "vocab": ["x"],
        "sample_rate": 16000,
        "channels": "mean",
    }
    checked = validate_spec(json.loads(json.dumps(full)), "spec.json")
    rebuilt = build_module(checked["modules"]["emotion_head"])
    rebuilt.load_state_dict(head.state_dict(), strict=True)
    full["modules"]["emotion_head"]["kwargs"]["text_encoder"] = "bert-base-uncased"
    with pytest.raises(SpecError, match="text_encoder is 'bert-base-uncased'"):
        validate_spec(full, "spec.json")


def _cnn_spec():
    from mtl_ser.models.cnn import CNNEncoder, LogMelFrontEnd

    return module_spec(CNNEncoder(LogMelFrontEnd(n_mels=40), [4]))


def local_bert_folder(folder):
    """A tiny BERT and a fast word-level tokenizer saved as a Hugging Face folder (what a
    hub id downloads), built here: no network."""
    import tokenizers
    import transformers

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "hello", "there", "a", "much", "longer"]
    vocab = {w: i for i, w in enumerate(words)}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok.post_processor = tokenizers.processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    wrapper = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]"
    )
    config = transformers.BertConfig(
        vocab_size=len(words),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
    )
    transformers.BertModel(config).save_pretrained(folder)
    wrapper.save_pretrained(folder)
    return str(folder)


def test_a_hugging_face_text_encoder_is_saved_in_the_spec_and_rebuilt_without_it(tmp_path):
    torch.manual_seed(3)
    folder = local_bert_folder(tmp_path / "bert")
    head = TextFusionHead(12, n_classes=4, text_encoder=folder, fusion="concat").eval()
    x, lengths = acoustic()
    logits = head(x, lengths, texts=TEXTS)
    for i, n in enumerate(lengths.tolist()):  # batched == alone with the hub tokenizer too
        alone = head(x[i : i + 1, :n], lengths[i : i + 1], texts=[TEXTS[i]])
        torch.testing.assert_close(alone[0], logits[i], atol=1e-5, rtol=1e-4)
    spec = json.loads(json.dumps(module_spec(head)))
    assert spec["kwargs"]["text_encoder"]["config"]["model_type"] == "bert"
    full = {
        "format": 1,
        "modules": {"encoder": _cnn_spec(), "emotion_head": spec},
        "labels": ["a", "b", "c", "d"],
        "vocab": ["x"],
        "sample_rate": 16000,
        "channels": "mean",
    }
    checked = validate_spec(full, "spec.json")
    import shutil

    shutil.rmtree(folder)  # the rebuilt head reads nothing but the spec and the weights
    rebuilt = build_module(checked["modules"]["emotion_head"])
    rebuilt.load_state_dict(head.state_dict(), strict=True)
    torch.testing.assert_close(rebuilt.eval()(x, lengths, texts=TEXTS), logits)
    full["modules"]["emotion_head"]["kwargs"]["text_encoder"]["config"]["model_type"] = "gpt2"
    with pytest.raises(SpecError, match="buildable encoders"):
        validate_spec(full, "spec.json")


def test_onnx_and_hf_exports_refuse_the_text_head_in_one_line():
    from mtl_ser.data.text import CharVocabulary
    from mtl_ser.export import LoadedModel
    from mtl_ser.export_hf import _require_exportable
    from mtl_ser.export_onnx import OnnxExportError, check_exportable

    head = TextFusionHead(12, n_classes=4)
    model = LoadedModel({"emotion_head": head}, ("a", "b", "c", "d"), CharVocabulary(), 16000, {})
    with pytest.raises(OnnxExportError, match="text_emotion.*--format mtl_ser"):
        check_exportable(model)
    with pytest.raises(ValueError, match="--format hf: .*text_emotion.*--format mtl_ser"):
        _require_exportable(model)
