"""`mtl-ser report` on hand-written results.json files with known answers."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from mtl_ser.cli import main
from mtl_ser.report import write_report
from mtl_ser.report_rows import aggregate, find_results, mean_std
from tests.builders import setting_record

LABELS = ["neu", "hap", "ang", "sad"]
# mtl loso alpha 0.1, folds 1..5: WA as written by each run, and (correct, total) of its
# confusion matrix, which the pooled WA uses.
WA = [0.5, 0.6, 0.7, 0.8, 0.9]
UA = [0.4, 0.4, 0.4, 0.4, 0.4]
WER = [0.2, 0.3, 0.2, 0.3, 0.5]
COUNTS = [(2, 4), (6, 10), (7, 10), (8, 10), (18, 20)]


def confusion(correct: int, total: int, size: int = 4) -> list[list[int]]:
    """Every correct utterance is a neu -> neu, every error a hap -> neu."""
    matrix = [[0] * size for _ in range(size)]
    matrix[0][0], matrix[1][0] = correct, total - correct
    return matrix


# Keys of a run that belong to its setting (the rest are results).
SETTING_KEYS = ("encoder", "lr_encoder", "lr_heads", "ctc_reduction", "ctc_sum_utterances")
SETTING_KEYS += ("checkpoint_selection", "pooling", "max_len")


def write_run(root: Path, recipe="mtl", protocol="loso", alpha=0.1, fold=1, seed=1986, **fields):
    """A results.json of schema 2; ``fields`` named in SETTING_KEYS go into its setting too."""
    correct, total = fields.pop("counts", (1, 2))
    values = {"recipe": recipe, "protocol": protocol, "alpha": alpha, "fold": fold, "seed": seed}
    values |= {"encoder": "facebook/wav2vec2-base"}
    values |= {k: v for k, v in fields.items() if k in SETTING_KEYS}
    results = {
        "schema": 2,
        "setting": setting_record(**values),
        "recipe": recipe,
        "protocol": protocol,
        "alpha": alpha,
        "fold": fold,
        "seed": seed,
        "encoder": "facebook/wav2vec2-base",
        "labels": LABELS,
        "wa": correct / total,
        "ua": 0.5,
        "macro_f1": 0.3,
        "wer": 0.25 if alpha > 0 else None,
        "cer": 0.1 if alpha > 0 else None,
        "wer_improvised": 0.3 if alpha > 0 else None,
        "confusion_matrix": confusion(correct, total, len(fields.get("labels", LABELS))),
        "num_utterances": total,
        "best_epoch": 3,
        **fields,
    }
    folder = root / recipe / protocol / f"alpha{alpha}" / f"fold{fold}" / f"seed{seed}"
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps(results))
    return folder


@pytest.fixture
def runs_folder(tmp_path):
    root = tmp_path / "runs"
    for fold, (wa, ua, wer, counts) in enumerate(zip(WA, UA, WER, COUNTS, strict=True), 1):
        write_run(root, fold=fold, wa=wa, ua=ua, wer=wer, counts=counts)
    for fold in (1, 2, 3):  # alpha 0: folds 4 and 5 missing
        write_run(root, alpha=0.0, fold=fold, counts=(fold, 4))
    write_run(root, protocol="cai2021", alpha=0.01, fold=3, counts=(3, 5))
    return root


def test_mean_and_sample_std():
    mean, std, n = mean_std([0.5, 0.6, 0.7, 0.8, 0.9])
    assert (mean, n) == (pytest.approx(0.7), 5)
    assert std == pytest.approx(math.sqrt(0.1 / 4))  # ddof = 1, not sqrt(0.1 / 5)
    assert mean_std([0.3]) == (0.3, None, 1)
    assert mean_std([]) == (None, None, 0)


def test_rows_means_stds_pooled_and_completeness(runs_folder):
    rows = aggregate(find_results([runs_folder]))
    assert [(r.recipe, r.protocol, r.alpha, r.n) for r in rows] == [
        ("mtl", "cai2021", 0.01, 1),
        ("mtl", "loso", 0.0, 3),
        ("mtl", "loso", 0.1, 5),
    ]
    cai, zero, main_row = rows
    wa_mean, wa_std, wa_n = main_row.stats["wa"]
    assert (wa_mean, wa_std, wa_n) == (pytest.approx(0.7), pytest.approx(0.158113883), 5)
    assert main_row.stats["ua"] == (pytest.approx(0.4), pytest.approx(0.0), 5)
    assert main_row.stats["wer"][:2] == (pytest.approx(0.3), pytest.approx(math.sqrt(0.015)))
    # Pooled WA weights folds by their utterances: 41 correct of 54, not the mean 0.7.
    assert main_row.pooled_wa == pytest.approx(41 / 54)
    assert main_row.pooled_ua == pytest.approx(0.5)  # neu recall 1, hap recall 0
    assert main_row.confusion[0][0] == 41 and main_row.confusion[1][0] == 13
    assert main_row.complete and main_row.folds_text() == "5/5"

    assert not zero.complete and zero.folds_text() == "3/5 (missing 4, 5)"
    assert zero.stats["wer"] == (None, None, 0)
    assert zero.pooled_wa == pytest.approx(6 / 12)
    assert zero.stats["wa"][1] == pytest.approx(0.25)  # WA 1/4, 2/4, 3/4
    assert (
        cai.stats["wa"] == (0.6, None, 1)
        and cai.folds_text() == "1/10 (missing 1, 2, 4, 5, 6, 7, 8, 9, 10)"
    )


def test_missing_folds_are_counted_per_seed(tmp_path):
    for fold in range(1, 6):
        write_run(tmp_path, fold=fold, seed=1)
    write_run(tmp_path, fold=2, seed=2)
    [row] = aggregate(find_results([tmp_path]))
    assert row.n == 6 and row.folds == [1, 2, 3, 4, 5] and not row.complete
    assert row.missing == {1: [], 2: [1, 3, 4, 5]}
    assert row.folds_text() == "5/5 (seed 2 misses 1, 3, 4, 5)"


def test_report_files(runs_folder, tmp_path):
    out = tmp_path / "report"
    printed = []
    report = write_report([runs_folder], out, echo=printed.append)
    names = {f.name for f in report["files"]}
    assert names == {
        "summary.md",
        "summary.csv",
        "runs.csv",
        "paired.csv",
        "alpha_ablation.png",
        "confusion_mtl_loso_alpha0.png",
        "confusion_mtl_loso_alpha0.1.png",
        "confusion_mtl_cai2021_alpha0.01.png",
    }
    assert {p.name for p in out.iterdir()} == names  # written whole: no temporary file left
    for name in names:
        if name.endswith(".png"):
            assert (out / name).read_bytes()[:4] == b"\x89PNG"
    with open(out / "summary.csv") as f:
        rows = {(r["protocol"], r["alpha"]): r for r in csv.DictReader(f)}
    main_row = rows[("loso", "0.1")]
    assert float(main_row["wa_mean"]) == pytest.approx(0.7)
    assert float(main_row["wa_std"]) == pytest.approx(0.158113883)
    assert float(main_row["pooled_wa"]) == pytest.approx(41 / 54)
    assert (main_row["n_runs"], main_row["folds_found"], main_row["complete"]) == (
        "5",
        "1 2 3 4 5",
        "True",
    )
    zero = rows[("loso", "0.0")]
    assert (zero["complete"], zero["folds_found"], zero["wer_mean"], zero["wer_n"]) == (
        "False",
        "1 2 3",
        "",
        "0",
    )
    assert rows[("cai2021", "0.01")]["wa_std"] == ""
    with open(out / "runs.csv") as f:
        assert len(list(csv.DictReader(f))) == 9

    markdown = (out / "summary.md").read_text()
    assert "sample standard deviation (ddof = 1)" in markdown
    assert (
        "| mtl | loso | 0.1 | 5 | 1 | 5/5 | 70.00 ± 15.81 | 40.00 ± 0.00 | 30.00 ± 0.00 "
        "| 0.300 ± 0.122 | 0.100 ± 0.000 | 0.300 ± 0.000 | 75.93 | 50.00 | 54 |" in markdown
    )
    assert "| mtl | loso | 0 | 3 | 1 | 3/5 (missing 4, 5) **incomplete** |" in markdown
    assert "cai2021 (speaker-overlapping)" in markdown
    assert "mtl loso alpha=0: incomplete set of folds: 3/5 (missing 4, 5)." in markdown
    assert "`../runs/mtl/loso/alpha0.1/fold5/seed1986`" in markdown
    assert any("pooled WA 75.93" in line and "alpha 0.1" in line for line in printed)


def test_mixed_label_sets_are_not_averaged(tmp_path):
    write_run(tmp_path / "a", fold=1)
    write_run(tmp_path / "b", fold=2, labels=["neu", "hap", "ang", "sad", "exc"])
    with pytest.raises(ValueError, match="runs differ in labels"):
        aggregate(find_results([tmp_path / "a", tmp_path / "b"]))


@pytest.mark.parametrize(
    "change",
    [
        {"encoder": "random:tiny"},
        {"lr_encoder": 1e-5, "lr_heads": 1e-5},  # sweep --alpha0-lr
        {"ctc_reduction": "length_mean", "ctc_sum_utterances": None},
        {"checkpoint_selection": "last"},
    ],
    ids=["encoder", "learning rates", "CTC reduction", "checkpoint selection"],
)
def test_runs_of_different_settings_are_separate_rows(tmp_path, change):
    """Another encoder, learning rate, CTC scale or checkpoint choice is another experiment:
    its own row, never averaged in, and the table says what differs."""
    base = {"lr_encoder": 5e-5, "lr_heads": 5e-5, "ctc_reduction": "sum"}
    base |= {"ctc_sum_utterances": 2, "checkpoint_selection": "best_valid"}
    write_run(tmp_path / "a", fold=1, **base)
    write_run(tmp_path / "b", fold=1, **{**base, **change})
    rows = aggregate(find_results([tmp_path]))
    assert len(rows) == 2 and all(row.n == 1 for row in rows)
    report = write_report([tmp_path], tmp_path / "report")
    markdown = (tmp_path / "report/summary.md").read_text()
    shown = next(k for k in change if change[k] is not None)
    if shown != "encoder":
        assert "| differs in |" in markdown and f"{shown}=" in markdown
    confusions = [f for f in report["files"] if f.name.startswith("confusion_")]
    assert len(confusions) == 2  # one file each, none overwritten


def test_results_of_an_untrained_model_are_refused(tmp_path):
    """mtl-ser 0.1 tested a run of --number_of_epochs=0 and wrote best_epoch null: such a
    results.json is no result (the recipe now refuses 0 epochs) and must not be averaged;
    the sweep does not count it as finished either."""
    from mtl_ser.sweep.plan import complete_results

    write_run(tmp_path / "a", fold=1, best_epoch=None)
    with pytest.raises(ValueError, match="best_epoch is null, the results of an untrained"):
        find_results([tmp_path])
    results_file = next(tmp_path.rglob("results.json"))
    assert complete_results(results_file.parent) is None


def test_the_same_fold_twice_is_refused(tmp_path):
    write_run(tmp_path / "a", fold=1)
    write_run(tmp_path / "b", fold=1)
    with pytest.raises(ValueError, match="fold 1 seed 1986 twice"):
        aggregate(find_results([tmp_path]))


def test_cli(runs_folder, tmp_path, capsys):
    assert main(["report", str(runs_folder)]) == 0
    assert (runs_folder / "summary.md").is_file()
    write_run(tmp_path / "other", fold=9, labels=["a", "b", "c", "d"])
    assert main(["report", str(runs_folder), str(tmp_path / "other")]) == 2
    assert "runs differ in labels" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "nothing")]) == 2


def test_speaker_independence_comes_from_the_runs(tmp_path):
    # A CSV corpus split by speakers is speaker-independent: not labelled overlapping.
    write_run(tmp_path / "a", protocol="csv", fold=1, folds=1, speaker_independent=True)
    write_run(tmp_path / "b", protocol="hf", fold=1, folds=1, speaker_independent=False)
    write_run(tmp_path / "c", protocol="loso-on-ravdess_test", fold=1, speaker_independent=None)
    rows = aggregate(find_results([tmp_path]))
    assert {r.protocol: (r.expected, r.complete) for r in rows} == {
        "csv": (1, True),
        "hf": (1, True),
        "loso-on-ravdess_test": (None, False),
    }
    write_report([tmp_path], tmp_path / "report")
    markdown = (tmp_path / "report/summary.md").read_text()
    assert "| mtl | csv | 0.1 | 1 | 1 | 1/1 |" in markdown
    assert "| mtl | hf (speaker-overlapping) | 0.1 |" in markdown
    assert "| mtl | loso-on-ravdess_test (speakers not checked) | 0.1 |" in markdown


def test_runs_that_differ_only_in_pooling_are_not_merged(tmp_path):
    """pooling was not among the fields the report grouped by: runs of attention and mean
    pooling were averaged into one row. The recorded setting keeps them apart, and the
    table names the key that differs."""
    for fold in (1, 2):
        write_run(tmp_path / "a", fold=fold, pooling="mean", max_len=8.0, wa=0.5)
        write_run(tmp_path / "b", fold=fold, pooling="attention", max_len=8.0, wa=0.7)
    rows = aggregate(find_results([tmp_path]))
    assert sorted((r.setting["pooling"], r.n, r.stats["wa"][0]) for r in rows) == [
        ("attention", 2, pytest.approx(0.7)),
        ("mean", 2, pytest.approx(0.5)),
    ]
    assert len({r.key for r in rows}) == 2
    write_report([tmp_path], tmp_path / "report")
    markdown = (tmp_path / "report/summary.md").read_text()
    assert "| recipe | protocol | alpha | differs in | n |" in markdown
    assert "| mtl | loso | 0.1 | pooling=attention | 2 |" in markdown
    assert "| mtl | loso | 0.1 | pooling=mean | 2 |" in markdown
    assert "max_len=8" in markdown.split("Shared by every row:")[1].splitlines()[0]
    with open(tmp_path / "report/summary.csv") as f:
        assert sorted(r["differs"] for r in csv.DictReader(f)) == [
            "pooling=attention",
            "pooling=mean",
        ]
    names = sorted(p.name for p in (tmp_path / "report").glob("confusion_*"))
    assert names == [
        "confusion_mtl_loso_alpha0.1_pooling=attention.png",
        "confusion_mtl_loso_alpha0.1_pooling=mean.png",
    ]


def test_std_over_folds_is_over_per_fold_means_and_seeds_apart(tmp_path):
    """2 folds x 2 seeds, UA by (fold, seed): (1, 1) 0.5, (1, 2) 0.7, (2, 1) 0.8, (2, 2) 1.0.
    Per-fold means 0.6 and 0.9: mean 0.75, std over folds sqrt(0.045) = 0.21213 (the std
    over all four runs, 0.20817, mixes seed noise into it). Within-fold variances 0.02 and
    0.02: seed spread sqrt(0.02) = 0.14142."""
    for (fold, seed), ua in {(1, 1): 0.5, (1, 2): 0.7, (2, 1): 0.8, (2, 2): 1.0}.items():
        write_run(tmp_path, protocol="csv", fold=fold, seed=seed, ua=ua, folds=2)
    [row] = aggregate(find_results([tmp_path]))
    assert row.n == 4
    mean, std, n = row.stats["ua"]
    assert (mean, std, n) == (pytest.approx(0.75), pytest.approx(math.sqrt(0.045)), 2)
    assert row.seed_std["ua"] == pytest.approx(math.sqrt(0.02))
    assert row.seed_std["wa"] == pytest.approx(0.0)  # every run wrote WA 0.5
    write_report([tmp_path], tmp_path / "report")
    markdown = (tmp_path / "report/summary.md").read_text()
    assert "| 75.00 ± 21.21 (seeds ± 14.14) |" in markdown
    with open(tmp_path / "report/summary.csv") as f:
        [line] = csv.DictReader(f)
    assert float(line["ua_std"]) == pytest.approx(math.sqrt(0.045))
    assert float(line["ua_seed_std"]) == pytest.approx(math.sqrt(0.02))
    assert line["ua_n"] == "2" and line["n_runs"] == "4"


def _one_line_error(capsys, folder) -> str:
    assert main(["report", str(folder)]) == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    return lines[0]


def test_results_without_a_setting_are_refused(tmp_path, capsys):
    """A schema-1 results.json records no full setting: averaging it with others could
    merge settings, so it is refused, naming the file and how to proceed."""
    folder = write_run(tmp_path, fold=1)
    data = json.loads((folder / "results.json").read_text())
    data["schema"] = 1
    del data["setting"]
    (folder / "results.json").write_text(json.dumps(data))
    line = _one_line_error(capsys, tmp_path)
    assert str(folder / "results.json") in line
    assert "schema 1" in line and "'setting'" in line and "re-run" in line


@pytest.mark.parametrize(
    ("edit", "key"),
    [
        (lambda d: [d], "holds a JSON list"),
        (lambda d: d | {"wa": "n/a"}, "key 'wa' is \"n/a\", expected a number or null"),
        (lambda d: d | {"fold": "1"}, "key 'fold' is \"1\", expected an integer"),
        (lambda d: d | {"labels": {"neu": 0}}, "key 'labels'"),
        (lambda d: d | {"confusion_matrix": [[1, 2]]}, "key 'confusion_matrix'"),
        (lambda d: d | {"setting": ["x"]}, "key 'setting' is"),
        (lambda d: d | {"setting": {"digest": "ab", "values": 3}}, "key 'setting.values'"),
        (lambda d: {k: v for k, v in d.items() if k != "ua"}, "key 'ua' is missing"),
    ],
    ids=["list", "n/a", "fold", "labels", "confusion", "setting", "values", "missing"],
)
def test_malformed_results_are_one_line_naming_file_and_key(tmp_path, capsys, edit, key):
    """Before: "'list' object has no attribute 'get'", "could not convert string to float:
    'n/a'" (no file, no key)."""
    folder = write_run(tmp_path, fold=1)
    data = json.loads((folder / "results.json").read_text())
    (folder / "results.json").write_text(json.dumps(edit(data)))
    line = _one_line_error(capsys, tmp_path)
    assert str(folder / "results.json") in line and key in line


def test_ablation_plot_does_not_import_report():
    """report.py and ablation_plot.py imported each other (a circle that only worked
    because report imported ablation_plot inside a function)."""
    import subprocess
    import sys

    code = (
        "import sys, mtl_ser.ablation_plot, mtl_ser.paired, mtl_ser.report_rows; "
        "print(sorted(m for m in sys.modules if m in ('mtl_ser.report',)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_outputs_are_written_whole(tmp_path):
    """A failure while writing leaves the previous file as it was and no temporary file."""
    from mtl_ser.report import written_whole

    target = tmp_path / "summary.md"
    target.write_text("old report\n")
    with pytest.raises(RuntimeError), written_whole(target) as tmp:
        tmp.write_text("half a rep")
        raise RuntimeError("killed")
    assert target.read_text() == "old report\n"
    assert [p.name for p in tmp_path.iterdir()] == ["summary.md"]
    with written_whole(target) as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".md"
        tmp.write_text("new report\n")
    assert target.read_text() == "new report\n"
    assert [p.name for p in tmp_path.iterdir()] == ["summary.md"]


def test_a_key_that_one_setting_lacks_tells_rows_apart(tmp_path):
    write_run(tmp_path / "a", fold=1, max_len=8.0)
    write_run(tmp_path / "b", fold=1)
    rows = aggregate(find_results([tmp_path]))
    assert len(rows) == 2
    write_report([tmp_path], tmp_path / "report")
    markdown = (tmp_path / "report/summary.md").read_text()
    assert "| max_len=8 |" in markdown and "| max_len=(absent) |" in markdown


def test_runs_csv_carries_every_tasks_metrics(tmp_path):
    import csv

    dims = {"ccc_mean": 0.41, "ccc_arousal": 0.5, "num_utterances": 2}
    write_run(tmp_path / "runs", task_metrics={"emotion": {"ua": 0.5}, "dimensions": dims})
    write_run(tmp_path / "runs", fold=2, task_metrics={"gender": {"accuracy": 0.9}})
    write_report([tmp_path / "runs"], tmp_path / "report")
    with open(tmp_path / "report" / "runs.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["dimensions/ccc_mean"] for r in rows] == ["0.41", ""]
    assert [r["gender/accuracy"] for r in rows] == ["", "0.9"]
    assert "emotion/ua" not in rows[0] and "dimensions/num_utterances" not in rows[0]


def test_oracle_text_runs_are_marked_in_every_table(tmp_path, capsys):
    oracle = {"text_view": "oracle (reference transcripts)", "max_len": 8.0}
    write_run(tmp_path / "runs", task_metrics={"emotion": {"ua": 0.5}}, **oracle)
    write_run(tmp_path / "runs", fold=2, task_metrics={"emotion": {"ua": 0.4}})
    assert main(["report", str(tmp_path / "runs"), "--output", str(tmp_path / "report")]) == 0
    markdown = (tmp_path / "report/summary.md").read_text()
    summary, rest = markdown.split("## Runs")
    runs, per_task = rest.split("## Metrics per task")
    for table in (summary, runs, per_task):  # the oracle row (only it) is marked
        assert table.count("| mtl (oracle text) | loso") == 1, table
        assert table.count("| mtl | loso") == 1, table
    assert "Rows marked (oracle text) fused the reference transcripts" in markdown
    assert "mtl (oracle text) loso" in capsys.readouterr().out
