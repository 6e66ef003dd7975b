"""Tasks as plug-ins (mtl_ser/tasks): today's objective through the task loop, the
per-utterance rule for missing targets, the dimensions and speaker-attribute tasks, class
weights, learned task weighting (uncertainty, PCGrad) and a task of one's own. Real tiny
model, real batches."""

from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from speechbrain.dataio.batch import PaddedBatch

from mtl_ser.data.text import CharVocabulary
from mtl_ser.models.objective import MultiTaskObjective
from mtl_ser.tasks import configured_tasks, parse_metric, tasks_identity
from mtl_ser.tasks.balance import class_weights
from mtl_ser.tasks.base import Task, masked_mean_loss
from mtl_ser.tasks.dimensions import DimensionsLog, DimensionsTask, ccc
from mtl_ser.tasks.emotion import EmotionTask
from mtl_ser.tasks.weighting import project_conflicting
from tests.recipes.helpers import tiny_mtl_brain

FOUR_TASKS = {
    "emotion": {},
    "ctc": {},
    "dimensions": {"weight": 0.5},
    "gender": {"kind": "speaker_attribute", "classes": ["F", "M"], "weight": 0.1},
}


def batch(seed: int, n: int = 4, gender=("F", "M", None, "F"), arousal=(2.0, 4.0, None, 3.0)):
    """``n`` utterances of 0.5 s noise with text, A/V/D and gender columns (None: missing)."""
    return PaddedBatch(examples(seed, n, gender, arousal))


def examples(seed: int, n: int = 4, gender=("F", "M", None, "F"), arousal=(2.0, 4.0, None, 3.0)):
    """The utterances of `batch` (dicts as a dataset gives them)."""
    generator = torch.Generator().manual_seed(seed)
    vocab = CharVocabulary()
    out = []
    for i in range(n):
        out.append(
            {
                "id": f"u{seed}_{i}",
                "sig": torch.randn(8000, generator=generator) * 0.1,
                "emo_encoded": torch.tensor([i % 4]),
                "tokens": vocab.encode("HI THERE"),
                "ctc_mask": torch.tensor([i != 1]),
                "wrd": "HI THERE",
                "has_text": True,
                "scripted": False,
                "duration": 0.5,
                "column_arousal": "" if arousal[i] is None else str(arousal[i]),
                "column_valence": "" if arousal[i] is None else str(5 - arousal[i]),
                "column_dominance": "" if arousal[i] is None else str(arousal[i] / 2),
                "column_gender": gender[i] or "",
            }
        )
    return out


def brain_with(tmp_path, tasks=None, *overrides):
    def adjust(hparams):
        if tasks is not None:
            hparams["tasks"] = tasks

    brain = tiny_mtl_brain(
        tmp_path,
        "--head_dropout=0.0",
        "--mask_time_prob=0.0",
        "--warmup_fraction=0.0",  # a learning rate > 0 at the first step
        *overrides,
        adjust=adjust,
    )
    brain.modules.eval()
    return brain


def test_the_default_tasks_are_todays_objective(tmp_path):
    brain = brain_with(tmp_path)
    assert [(t.name, t.weight) for t in brain.tasks] == [("emotion", 1.0), ("ctc", 0.1)]
    b = batch(1)
    outputs = brain.compute_forward(b, stage=None)
    total = brain.compute_objectives(outputs, b, stage=__import__("speechbrain").Stage.TRAIN)
    tokens, rel = b.tokens
    released = MultiTaskObjective(0.1)(
        outputs.by_task["emotion"],
        b.emo_encoded.data.squeeze(-1),
        outputs.by_task["ctc"],
        outputs.frame_lens,
        tokens,
        torch.round(rel * tokens.shape[1]).long(),
        b.ctc_mask.data.squeeze(-1),
    )
    torch.testing.assert_close(total, released.total)
    torch.testing.assert_close(brain.batch_losses.emo, released.emo)
    torch.testing.assert_close(brain.batch_losses.ctc, released.ctc)


def test_alpha_zero_has_no_ctc_task_nor_head(tmp_path):
    brain = brain_with(tmp_path, None, "--alpha=0.0")
    assert [t.name for t in brain.tasks] == ["emotion"]
    assert "ctc_head" not in brain.modules


def test_an_utterances_weight_does_not_depend_on_its_neighbours_targets():
    per_utt = torch.tensor([1.0, 2.0, 3.0, 4.0], requires_grad=True)
    all_have = masked_mean_loss(per_utt, torch.tensor([True, True, True, True]))
    some_have = masked_mean_loss(per_utt, torch.tensor([True, False, False, True]))
    assert float(all_have.detach()) == pytest.approx(10 / 4)
    assert float(some_have.detach()) == pytest.approx(5 / 4)  # not 5 / 2
    some_have.backward()
    assert per_utt.grad.tolist() == [0.25, 0.0, 0.0, 0.25]


def test_four_tasks_train_and_skip_missing_targets(tmp_path):
    brain = brain_with(tmp_path, FOUR_TASKS)
    assert [t.name for t in brain.tasks] == ["emotion", "ctc", "dimensions", "gender"]
    assert {"dimensions_head", "gender_head"} <= set(brain.modules)
    b = batch(2)
    outputs = brain.compute_forward(b, stage=None)
    gender = next(t for t in brain.tasks if t.name == "gender")
    target, mask = gender.targets(b)
    assert mask.tolist() == [True, True, False, True]  # the missing gender is skipped
    expected = F.cross_entropy(outputs.by_task["gender"][mask], target[mask], reduction="sum") / 4
    torch.testing.assert_close(
        gender.loss(outputs.by_task["gender"], (target, mask), None), expected
    )
    dims = next(t for t in brain.tasks if t.name == "dimensions")
    values, dmask = dims.targets(b)
    assert dmask.tolist() == [True, True, False, True]
    before = {k: v.clone() for k, v in brain.modules.state_dict().items()}
    brain.on_stage_start(__import__("speechbrain").Stage.TRAIN, epoch=1)
    brain.step = 1
    brain.fit_batch(b)
    after = brain.modules.state_dict()
    for head in ("dimensions_head", "gender_head", "emotion_head", "ctc_head"):
        moved = [k for k in after if k.startswith(head) and not torch.equal(after[k], before[k])]
        assert moved, head
    assert set(brain.loss_sums) == {
        "loss",
        "loss_emo",
        "loss_ctc",
        "loss_dimensions",
        "loss_gender",
    }


def test_trained_parameters_count_every_tasks_head_and_learned_weights(tmp_path, caplog):
    with caplog.at_level("INFO", logger="mtl_ser.models.peft_tuning"):
        brain = brain_with(tmp_path, FOUR_TASKS, "--task_weighting=uncertainty")
    trained = {
        name: sum(p.numel() for p in module.parameters() if p.requires_grad)
        for name, module in brain.modules.items()
    }
    # The heads the tasks build themselves and the 4 learned log-variances are counted.
    assert trained["dimensions_head"] > 0 and trained["gender_head"] > 0
    assert trained["task_weighting"] == 4
    assert brain.identity["trained_parameters"] == sum(trained.values())
    assert brain.identity["trained_encoder_parameters"] == trained["encoder"]
    heads = sum(trained.values()) - trained["encoder"]
    assert f"heads {heads:,})" in caplog.text


def test_ccc_loss_and_metrics():
    target = torch.tensor([[1.0, 2.0], [2.0, 1.0], [3.0, 5.0], [4.0, 3.0]])
    torch.testing.assert_close(ccc(target, target), torch.ones(2))
    task = DimensionsTask(name="dimensions", dimensions=("arousal", "valence"))
    mask = torch.tensor([True, True, True, True])
    assert float(task.loss(target.clone(), (target, mask), None)) == pytest.approx(0.0, abs=1e-6)
    shifted = target + 1.0  # correlated but biased: CCC < 1 (Pearson stays 1)
    assert float(task.loss(shifted, (target, mask), None)) > 0.1
    half = torch.tensor([True, True, False, False])
    # 2 of 4 utterances with targets: the loss is the subset's, times 2 / 4.
    expected = (1 - ccc(shifted[half], target[half])).mean() * 0.5
    torch.testing.assert_close(task.loss(shifted, (target, half), None), expected)
    log = DimensionsLog(("arousal", "valence"))
    nan_row = torch.tensor([[float("nan"), 1.0]])
    log.add_batch(
        ["a", "b", "c", "d", "e"],
        torch.cat([shifted, torch.zeros(1, 2)]),
        (torch.cat([target, nan_row]), None),
    )
    metrics = log.metrics()
    assert metrics["num_utterances"] == 4  # the utterance without targets is not scored
    assert metrics["pearson_arousal"] == pytest.approx(1.0)
    assert metrics["mae_valence"] == pytest.approx(1.0)
    assert metrics["ccc_mean"] < 1.0


def test_class_weights_are_computed_on_counts_and_recorded():
    counts = [60, 30, 10]
    inverse = class_weights(counts, "inverse_frequency")
    assert sum(n * w for n, w in zip(counts, inverse, strict=True)) == pytest.approx(100)
    assert inverse[2] / inverse[0] == pytest.approx(6.0)
    effective = class_weights(counts, "effective_number", beta=0.9)
    assert effective[0] < effective[1] < effective[2]
    assert class_weights(counts, "none") is None
    with pytest.raises(ValueError, match="class_weighting must be one of"):
        class_weights(counts, "balanced")
    task = EmotionTask(name="emotion", class_weighting="inverse_frequency")
    task.weights = inverse
    logits = torch.randn(3, 3)
    targets = torch.tensor([0, 2, 2])
    ce = F.cross_entropy(logits, targets, reduction="none")
    expected = (ce * torch.tensor([inverse[0], inverse[2], inverse[2]])).sum() / 3
    torch.testing.assert_close(
        task.loss(logits, (targets, torch.ones(3, dtype=bool)), None), expected
    )
    assert tasks_identity([task])["class_weighting"] == "inverse_frequency"
    assert tasks_identity([task])["class_weights"] == inverse


def test_uncertainty_weights_are_learned_on_the_tiny_model(tmp_path):
    brain = brain_with(tmp_path, FOUR_TASKS, "--task_weighting=uncertainty")
    log_vars = brain.modules["task_weighting"].log_vars
    assert torch.equal(log_vars, torch.zeros(4))
    heads_params = [p for g in brain.optimizers_dict["heads"].param_groups for p in g["params"]]
    assert any(p is log_vars for p in heads_params)  # trained with the heads
    brain.on_stage_start(__import__("speechbrain").Stage.TRAIN, epoch=1)
    for step in (1, 2):
        brain.step = step
        brain.fit_batch(batch(step))
    assert not torch.equal(log_vars.detach(), torch.zeros(4))
    stats = brain.task_weighting.stats()
    assert set(stats) == {"log_var_emo", "log_var_ctc", "log_var_dimensions", "log_var_gender"}


def test_pcgrad_projections_have_no_negative_inner_products():
    g1 = torch.tensor([1.0, 0.0, 1.0])
    g2 = torch.tensor([-1.0, 1.0, 0.0])  # conflicts with g1
    p1, p2 = project_conflicting([g1, g2], order="fixed")
    assert float(torch.dot(g1, g2)) < 0
    assert float(torch.dot(p1, g2)) >= -1e-6 and float(torch.dot(p2, g1)) >= -1e-6
    assert not torch.equal(p1, g1)
    # Gradients that agree are left alone.
    q1, q2 = project_conflicting([g1, g1 * 2], order="fixed")
    assert torch.equal(q1, g1) and torch.equal(q2, g1 * 2)


def test_pcgrad_on_the_tiny_models_shared_encoder(tmp_path):
    brain = brain_with(tmp_path, None, "--task_weighting=pcgrad", "--alpha=1.0")
    b = batch(3)
    shared = [p for p in brain.modules.encoder.parameters() if p.requires_grad]
    outputs = brain.compute_forward(b, stage=None)
    brain.compute_objectives(outputs, b, stage=__import__("speechbrain").Stage.TRAIN)
    grads = []
    for term in brain.batch_losses.terms.values():
        g = torch.autograd.grad(term, shared, retain_graph=True, allow_unused=True)
        grads.append(
            torch.cat(
                [
                    (torch.zeros_like(p) if x is None else x).flatten()
                    for p, x in zip(shared, g, strict=True)
                ]
            )
        )
    projected = project_conflicting(grads, order="fixed")
    for i, p in enumerate(projected):
        for j, g in enumerate(grads):
            if i != j:
                assert float(torch.dot(p, g)) >= -1e-6 * float(p.norm() * g.norm())
    # fit_batch applies the projected sum to the encoder and plain gradients to the heads.
    brain.on_stage_start(__import__("speechbrain").Stage.TRAIN, epoch=1)
    brain.step = 1
    before = {k: v.clone() for k, v in brain.modules.state_dict().items()}
    brain.fit_batch(b)
    after = brain.modules.state_dict()
    assert any(not torch.equal(after[k], before[k]) for k in after if k.startswith("encoder"))
    assert any(not torch.equal(after[k], before[k]) for k in after if k.startswith("ctc_head"))


@dataclass
class UtteranceLength(Task):
    """A task of one's own (one module + YAML): regress the utterance's frame count."""

    def __post_init__(self):
        self.head_module = f"{self.name}_head"

    def build_head(self, context):
        return torch.nn.Linear(context.encoder_dim, 1)

    def forward(self, head, hidden, lengths, layers):
        return head(hidden.mean(dim=1)).squeeze(-1)

    def targets(self, batch):
        n = batch.sig.data.shape[0]
        return batch.sig.lengths * 0 + 1.0, torch.ones(n, dtype=torch.bool)

    def loss(self, output, targets, frame_lens):
        return masked_mean_loss((output - targets[0]) ** 2, targets[1])


def test_a_task_of_ones_own_plugs_in_by_its_class_path(tmp_path):
    tasks = {"emotion": {}, "ctc": {}, "length": {"kind": f"{__name__}.UtteranceLength"}}
    brain = brain_with(tmp_path, tasks)
    b = batch(4)
    brain.on_stage_start(__import__("speechbrain").Stage.TRAIN, epoch=1)
    brain.step = 1
    brain.fit_batch(b)
    assert "loss_length" in brain.loss_sums and brain.loss_sums["loss_length"] > 0


def test_task_configuration_errors_name_the_problem():
    vocab = CharVocabulary()
    with pytest.raises(ValueError, match="the CTC task's weight is alpha"):
        configured_tasks({"alpha": 0.1, "tasks": {"emotion": {}, "ctc": {"weight": 1}}}, vocab)
    with pytest.raises(ValueError, match="'moods' is not one of"):
        configured_tasks({"alpha": 0.1, "tasks": {"emotion": {}, "moods": {}}}, vocab)
    with pytest.raises(ValueError, match="has no ctc task"):
        configured_tasks({"alpha": 0.1, "tasks": {"emotion": {}}}, vocab)
    tasks = configured_tasks({"alpha": 0.1}, vocab)
    assert parse_metric("emotion/ua", tasks)[2] is True
    assert parse_metric("ctc/cer", tasks)[2] is False  # lower is better
    with pytest.raises(ValueError, match="selection_metric 'dimensions/ccc_mean'"):
        parse_metric("dimensions/ccc_mean", tasks)


def test_class_balanced_batches_draw_classes_equally_and_stay_length_grouped():
    from mtl_ser.data.balanced_sampler import ClassBalancedBatchSampler
    from mtl_ser.data.sampler import LengthGroupedBatchSampler, padding_share

    generator = torch.Generator().manual_seed(0)
    lengths = (torch.rand(1000, generator=generator) * 10 + 0.5).tolist()
    labels = ["neu"] * 700 + ["ang"] * 200 + ["sad"] * 100
    sampler = ClassBalancedBatchSampler(lengths, labels, 8, pool=50, seed=1)
    batches = sampler.batches()
    drawn = [labels[i] for b in batches for i in b]
    assert len(drawn) == 1000
    shares = {c: drawn.count(c) / len(drawn) for c in ("neu", "ang", "sad")}
    assert all(0.27 < s < 0.40 for s in shares.values()), shares
    grouped = padding_share(batches, lengths)
    random_batches = LengthGroupedBatchSampler(lengths, 8, pool=1, seed=1).batches()
    assert grouped < padding_share(random_batches, lengths) / 4
    sampler.set_epoch(2)
    assert sampler.batches() != batches  # another epoch, other draws


def test_iemocap_label_lines_give_the_annotators_mean_dimensions(tmp_path):
    from mtl_ser.data.iemocap import read_label_dimensions

    path = tmp_path / "Ses01F_impro01.txt"
    path.write_text(
        "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n\n"
        "[6.2901 - 8.2357]\tSes01F_impro01_F000\tneu\t[2.5000, 2.0000, 3.5000]\n"
        "C-E2:\tNeutral;\t()\n"
        "[10.0 - 11.0]\tSes01F_impro01_M000\tang\t[1.5, 4.0, 4.5]\n"
    )
    assert read_label_dimensions(path) == {
        # The bracket is valence, activation (arousal), dominance.
        "Ses01F_impro01_F000": (2.5, 2.0, 3.5),
        "Ses01F_impro01_M000": (1.5, 4.0, 4.5),
    }


def test_selection_metric_is_maximised_and_chooses_the_checkpoint(tmp_path):
    from types import SimpleNamespace

    from mtl_ser.checkpoints import selection_key

    brain = brain_with(tmp_path, None, "--selection_metric=ctc/cer")
    metrics = {"ua": 0.5, "wa": 0.5, "macro_f1": 0.5, "wer": 0.9, "cer": 0.4}
    brain._valid_metrics = {**metrics, "wer_improvised": None, "cer_improvised": None}
    assert brain.selection_value({}) == -0.4  # lower CER is better: negated
    brain._valid_metrics["cer"] = None
    assert brain.selection_value({}) == float("-inf")
    key = selection_key("best_valid")

    def checkpoint(epoch, ua, selection):
        meta = {"epoch": epoch, "UA": ua, "WA": ua, "selection": selection}
        return SimpleNamespace(meta=meta)

    # The higher selection value wins whatever the UA; a checkpoint without one uses UA.
    chosen = max([checkpoint(1, 0.9, -0.5), checkpoint(2, 0.3, -0.2)], key=key)
    assert chosen.meta["epoch"] == 2
    old = SimpleNamespace(meta={"epoch": 3, "UA": 0.7, "WA": 0.7})
    assert key(old)[1] == 0.7
