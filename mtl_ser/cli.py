"""The `mtl-ser` command: thin wrappers around the library functions.

mtl-ser prepare iemocap|csv|ravdess|crema-d|msp-podcast|hf --output-folder O ...
mtl-ser demo-data OUT [--seed N]
mtl-ser evaluate MODEL MANIFEST_OR_CSV --output DIR [--label-map a=b,...] [--group-columns ...]
mtl-ser export RUN OUT [--format mtl_ser|hf|onnx]
mtl-ser predict MODEL FILES... [--output x.csv|x.json] [--min-confidence P]
mtl-ser embed MODEL FILES... --output x.npy|x.parquet [--layer last|head|N]
mtl-ser sweep HPARAMS [--alphas ... --folds ... --launcher local|slurm|submitit-local] [-- ARGS]
mtl-ser sweep --status OUT
mtl-ser report FOLDERS... [--output-folder O] [--group-columns speaker,gender,...]
    [--baseline alpha=0] [--paired-metrics emotion/ua,...] [--ablation-metrics emotion/ua,...]
    [--wer-bins 0.25,0.5] [--wer-bins-hypothesis hypothesis]
mtl-ser lm build --manifest PREPARED/train.json --order N --unit char|word --output lm.arpa
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _add_prepare(subparsers) -> None:
    from mtl_ser.data.corpora.registry import add_prepare_commands

    add_prepare_commands(subparsers)


def _check_device(device: str) -> None:
    from mtl_ser.hparams_check import check_device

    check_device(device)


def _evaluate(args) -> None:
    from mtl_ser.evaluate import evaluate, parse_label_map

    _check_device(args.device)
    evaluate(
        args.model,
        args.data,
        args.output,
        label_map=parse_label_map(args.label_map),
        drop_unmapped=args.drop_unmapped,
        data_folder=args.data_folder,
        audio_root=args.audio_root,
        name=args.name,
        on_error=args.on_error,
        batch_size=args.batch_size,
        device=args.device,
        **({} if args.group_columns is None else {"group_columns": args.group_columns}),
        overwrite=args.overwrite,
        calibration_bins=args.calibration_bins,
    )


OVERWRITE_HELP = (
    "replace an output that another run, other inputs or the user made (refused without it; "
    "a training run folder is never replaced)"
)


def _add_evaluate(subparsers) -> None:
    evaluate = subparsers.add_parser(
        "evaluate", help="metrics of a trained model on any labelled set (cross-corpus testing)"
    )
    evaluate.add_argument("model", help="exported model folder or training run folder")
    evaluate.add_argument("data", help="a prepared manifest (.json) or a CSV (path, emotion, ...)")
    evaluate.add_argument("--output", required=True, help="folder for results.json etc.")
    evaluate.add_argument(
        "--label-map", default=None, help="data label -> model class, e.g. cal=neu,exc=hap"
    )
    evaluate.add_argument(
        "--drop-unmapped",
        action="store_true",
        help="exclude (and count) utterances whose label has no model class",
    )
    evaluate.add_argument("--data-folder", default=None, help="corpus folder of the manifest")
    evaluate.add_argument("--audio-root", default=None, help="CSV paths start here")
    evaluate.add_argument("--name", default=None, help="the set's name in results.json")
    evaluate.add_argument("--on-error", choices=("fail", "skip"), default="fail")
    evaluate.add_argument("--batch-size", type=int, default=8)
    evaluate.add_argument("--device", default="cpu")
    evaluate.add_argument(
        "--group-columns",
        default=None,
        help="manifest keys / CSV columns with per-group UA / WA (speaker-bootstrap CIs) in "
        "results.json (default: speaker,gender)",
    )
    evaluate.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    evaluate.add_argument(
        "--calibration-bins", type=_positive_int, default=15, help="confidence bins of ECE"
    )
    evaluate.set_defaults(func=_evaluate)


def _demo_data(args) -> None:
    from mtl_ser.data.demo import synthesize_demo_corpus

    summary = synthesize_demo_corpus(args.output, seed=args.seed)
    labels = ", ".join(f"{k} {v}" for k, v in sorted(summary["per_label"].items()))
    state = "already there" if summary["skipped"] else f"made in {summary['elapsed_seconds']:.1f} s"
    print(
        f"demo corpus in {args.output} ({state}): {summary['utterances']} utterances, "
        f"{summary['audio_seconds'] / 60:.1f} min of audio; labels: {labels}"
    )


def _export(args) -> None:
    if args.format == "hf":
        from mtl_ser.export_hf import export_hf as export
    elif args.format == "onnx":
        from mtl_ser.export_onnx import export_onnx as export
    else:
        from mtl_ser.export import export_run as export

    out = export(args.run_folder, args.out_dir, overwrite=args.overwrite)
    print(f"exported {args.run_folder} to {out} ({args.format} format)")


def _predict(args) -> int:
    from mtl_ser.onnx_predictor import OnnxRecognizer, is_onnx_folder
    from mtl_ser.predict import (
        apply_min_confidence,
        check_predictions_output,
        collect_audio_files,
        write_predictions,
    )

    check_predictions_output(args.output, args.overwrite)
    if is_onnx_folder(args.model):  # ONNX Runtime only: no torch model code is imported
        model = OnnxRecognizer(args.model, window=args.window)
    else:
        from mtl_ser.inference import load_model

        _check_device(args.device)
        model = load_model(args.model, window=args.window, device=args.device)
    files = collect_audio_files(args.inputs)
    if not files:
        raise FileNotFoundError(f"no audio files in {args.inputs}")
    # Progress bars only on a terminal; the summary line below either way.
    predictions = model.predict_batch(files, batch_size=args.batch_size, progress=None)
    abstained = apply_min_confidence(predictions, args.min_confidence)
    write_predictions(predictions, model.labels, args.output)
    if not is_onnx_folder(args.model):  # (ONNX refuses text heads: never an oracle run)
        from mtl_ser.tasks.text_emotion import ORACLE_NOTE, is_oracle

        if is_oracle(model.model.info.get("results")):
            print(f"note: {ORACLE_NOTE}", file=sys.stderr)
    failed = [p for p in predictions if p.error]
    for p in failed:
        print(f"failed: {p.error}", file=sys.stderr)
    where = f" to {args.output}" if args.output else ""
    print(
        f"{len(files) - len(failed)} of {len(files)} file(s) scored{where}"
        + (f"; {abstained} abstained (confidence < {args.min_confidence:g})" if abstained else ""),
        file=sys.stderr,
    )
    return 1 if failed else 0


def _embed(args) -> int:
    from mtl_ser.inference import load_model
    from mtl_ser.predict import check_embeddings_output, collect_audio_files, write_embeddings

    output = Path(args.output)
    check_embeddings_output(output, args.overwrite)
    _check_device(args.device)
    model = load_model(args.model, window=args.window, device=args.device)
    files = collect_audio_files(args.inputs)
    if not files:
        raise FileNotFoundError(f"no audio files in {args.inputs}")
    layer = int(args.layer) if args.layer.lstrip("-").isdigit() else args.layer
    embeddings = model.embed_batch(files, layer=layer, batch_size=args.batch_size, progress=None)
    ok = [e for e in embeddings if e.error is None]
    written = write_embeddings(ok, output) if ok else []
    for e in embeddings:
        if e.error:
            print(f"failed: {e.error}", file=sys.stderr)
    print(
        f"{len(ok)} of {len(files)} file(s) embedded to {', '.join(map(str, written)) or '-'}",
        file=sys.stderr,
    )
    return 1 if len(ok) < len(files) else 0


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, not {text}")
    return value


def _probability(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be a probability in [0, 1], not {text}")
    return value


def _add_inference(subparsers) -> None:
    export = subparsers.add_parser("export", help="a finished run -> self-contained model folder")
    export.add_argument("run_folder")
    export.add_argument("out_dir")
    export.add_argument(
        "--format",
        choices=("mtl_ser", "hf", "onnx"),
        default="mtl_ser",
        help="mtl_ser: for mtl_ser's loader and `predict`; hf: a folder transformers loads "
        "(AutoModelForAudioClassification, pipeline), the CTC head in OUT/ctc, other tasks "
        "(A/V/D, speaker attributes) in OUT/<task>; onnx: model.onnx for ONNX Runtime, "
        "one output per task (checked against PyTorch on export), which `predict` runs "
        "without torch model code",
    )
    export.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    export.set_defaults(func=_export)

    predict = subparsers.add_parser(
        "predict", help="emotions (and transcripts) of recordings; exit 1 if a file failed"
    )
    predict.add_argument(
        "model", help="exported model folder (mtl_ser or onnx format) or training run folder"
    )
    predict.add_argument("inputs", nargs="+", help="audio files and/or folders (searched)")
    predict.add_argument(
        "--output", default=None, help="results .csv or .json (default: CSV on stdout)"
    )
    predict.add_argument(
        "--window", type=_positive_float, default=8.0, help="seconds scored at once"
    )
    predict.add_argument("--batch-size", type=_positive_int, default=8)
    predict.add_argument("--device", default="cpu")
    predict.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    predict.add_argument(
        "--min-confidence",
        type=_probability,
        default=0.0,
        help="abstain (emotion 'abstained') when the largest probability is below this",
    )
    predict.set_defaults(func=_predict)

    embed = subparsers.add_parser(
        "embed", help="utterance-level vectors of recordings (.npy + ids, or .parquet)"
    )
    embed.add_argument("model", help="exported model folder or training run folder")
    embed.add_argument("inputs", nargs="+", help="audio files and/or folders (searched)")
    embed.add_argument(
        "--output",
        required=True,
        help="x.npy ([files, D] float32, with the paths in x.ids.txt) or x.parquet "
        "(columns path, embedding; needs pyarrow)",
    )
    embed.add_argument(
        "--layer",
        default="last",
        help="last: mean of the encoder's output over true frames; head: the emotion "
        "head's pooled input; N: mean of hidden layer N (0 = before the first transformer "
        "layer, -1 = after the last)",
    )
    embed.add_argument("--window", type=_positive_float, default=8.0)
    embed.add_argument("--batch-size", type=_positive_int, default=8)
    embed.add_argument("--device", default="cpu")
    embed.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    embed.set_defaults(func=_embed)


def _sweep(args) -> int:
    from mtl_ser.sweep import main as sweep_main

    return sweep_main(args.argv)


def _lm_build(args) -> None:
    from mtl_ser.atomic import check_file
    from mtl_ser.ngram import build_lm, is_arpa_file

    check_file(args.output, is_arpa_file, args.overwrite)
    facts = build_lm(args.manifest, args.output, args.order, args.unit)
    print(
        f"{facts['sentences']} transcripts, {facts['tokens']} {args.unit} tokens -> "
        f"{args.order}-gram model ({', '.join(map(str, facts['ngrams']))} n-grams per order) "
        f"written to {facts['output']}"
    )


def _add_lm(subparsers) -> None:
    lm = subparsers.add_parser("lm", help="n-gram language models for CTC beam search")
    commands = lm.add_subparsers(dest="lm_command", required=True)
    build = commands.add_parser(
        "build", help="an ARPA n-gram model (interpolated Kneser-Ney) of training transcripts"
    )
    build.add_argument(
        "--manifest", required=True, help="the TRAINING manifest (train.json of a prepared folder)"
    )
    build.add_argument("--order", type=_positive_int, default=6, help="n-gram order (default 6)")
    build.add_argument("--unit", choices=("char", "word"), default="char")
    build.add_argument("--output", required=True, help="the ARPA file to write")
    build.add_argument(
        "--overwrite", action="store_true", help="replace a file that is not an ARPA file"
    )
    build.set_defaults(func=_lm_build)


def _report(args) -> None:
    from mtl_ser.report import write_report

    write_report(
        args.folders,
        args.output_folder,
        echo=print,
        group_columns=args.group_columns,
        baseline=args.baseline,
        paired_metrics=args.paired_metrics,
        ablation_metrics=args.ablation_metrics,
        wer_bins=args.wer_bins,
        wer_bins_hypothesis=args.wer_bins_hypothesis,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mtl-ser", description=__doc__.split("\n")[0])
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_prepare(subparsers)

    demo = subparsers.add_parser("demo-data", help="synthesize the demo corpus (IEMOCAP layout)")
    demo.add_argument("output", help="output folder")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=_demo_data)
    _add_inference(subparsers)
    _add_evaluate(subparsers)
    _add_lm(subparsers)

    # The sweep parses its own options: argparse sub-commands cannot pass on what follows `--`.
    sweep = subparsers.add_parser(
        "sweep",
        help="run a recipe for every (alpha, fold, seed); `mtl-ser sweep -h` for options",
        add_help=False,
        prefix_chars="\0",
    )
    sweep.add_argument("argv", nargs=argparse.REMAINDER)
    sweep.set_defaults(func=_sweep)

    report = subparsers.add_parser("report", help="tables and plots from finished runs")
    report.add_argument("folders", nargs="+", help="folders searched for results.json")
    report.add_argument("--output-folder", default=None, help="default: the first folder")
    report.add_argument(
        "--group-columns",
        default=None,
        help="predictions.csv columns with per-group results, e.g. speaker,gender,scripted "
        "(default: those the runs recorded, else speaker,gender)",
    )
    report.add_argument(
        "--baseline",
        default=None,
        help="compare every setting with this one: key=value[,key=value] (e.g. alpha=0, "
        "task_weighting=fixed,alpha=0.1) or a setting digest of summary.csv (default: pairs "
        "of settings that differ in one key)",
    )
    report.add_argument(
        "--paired-metrics",
        default=None,
        help="metrics of the paired tests, e.g. emotion/ua,dimensions/ccc_mean (default: "
        "wa,ua,macro_f1,wer)",
    )
    report.add_argument(
        "--ablation-metrics",
        default=None,
        help="one panel each in alpha_ablation.png, e.g. emotion/ua,ctc/wer,dimensions/ccc_mean "
        "(default: UA / WA and WER)",
    )
    report.add_argument(
        "--wer-bins",
        default="0.25,0.5",
        help="edges of the per-utterance WER bins of wer_bins.csv (bins 0, (0, 0.25], "
        "(0.25, 0.5], > 0.5 by default)",
    )
    report.add_argument(
        "--wer-bins-hypothesis",
        default="hypothesis",
        help="the predictions.csv column the WER bins score (default: hypothesis, the greedy "
        "CTC output; another decoder's column where the runs wrote one)",
    )
    report.set_defaults(func=_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `mtl-ser` console script. Returns the exit status."""
    from mtl_ser.errors import expected_errors, report

    args = build_parser().parse_args(argv)
    try:
        status = args.func(args)
    except expected_errors() + (ValueError, OSError, ImportError) as err:
        # Data and file problems are the user's to fix: the message, not a traceback.
        return report(f"mtl-ser {args.command}", err)
    return status or 0


if __name__ == "__main__":
    sys.exit(main())
