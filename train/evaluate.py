"""Evaluation: clip scores over a held-out split, gathered across ranks, and the tagging metrics.

`python -m train.evaluate --checkpoint MODEL [--data D] [--out DIR]` prints the metrics table (mAP, mAUC, d',
excluded classes) and writes DIR/per_class_metrics.csv (name, AP, AUC, positives) for a model trained by
`python -m train.run`: best.pt or latest.pt, a model folder (OUT/pretrained) or a Hugging Face Hub id
(fastsca/hub.py's `load_pretrained`); without --data it evaluates on the held-out split a checkpoint's run used. With
strong labels (`--strong STRONG.tsv`, or packed into the split) it also scores localisation (event and
segment F1, PSDS1, PSDS2, frame AP; train/localisation.py) into DIR/per_class_localisation.csv, on the
clips that have strong labels, each class's figures beside the overall ones, with the event settings the
checkpoint stores (chosen per class on its run's validation split by train/postprocess.py; the defaults for a
class without, or an older checkpoint); `--post-processing validation` chooses them again on the validation split
of the checkpoint's run, `--post-processing defaults` uses the defaults, for comparison. A fault there is one
line after the clip metrics (exit 2). On a single-label split (every clip one positive class) the table adds
top-1 accuracy.
"""
import argparse
import csv
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fastsca.atomic import write_atomically
from fastsca.events import EventConfig, ReferenceReport
from fastsca.hub import load_pretrained
from fastsca.inference import CheckpointError, TrainedModel
from fastsca.metrics import TaggingMetrics, tagging_metrics
from fastsca.run_options import RunOptions, options_for_device
from train import distributed, localisation, postprocess
from train.data import holdout
from train.cli import Limit, check_numbers
from train.data.holdout import SubsetIndex
from train.data.loader import LoaderConfig, LogMelLoader
from train.data.out_folder import OutFolderError, describe_os_error, ensure_writable
from train.data.shards import ShardIndex
from train.data.synth import SynthConfig, ensure_builtin


def autocast(device: torch.device):
    """The device's default autocast (fastsca/run_options.py): bf16 on CUDA; plain fp32 on CPU (where the tests
    check resumes bit for bit)."""
    return options_for_device(device).autocast(device)


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader, device: torch.device, frames: list | None = None,
             options: RunOptions | None = None) -> tuple[TaggingMetrics, int]:
    """Metrics of `model` over every rank's part of `loader`, gathered (the same on every rank), and the
    number of clips they cover, its forward passes at the precision of `options` (None: the device's default).
    Given a list `frames`, it receives the gathered (N, T', K) frame probabilities and (N, K) clip probabilities,
    for localisation scores (train/localisation.py)."""
    precision = options.autocast(device) if options is not None else autocast(device)
    was_training = model.training
    model.eval()
    scores, targets = [], []
    for log_mel, target in loader:
        with precision:
            output = model(log_mel)
        scores.append(output.clip.float())
        if frames is not None:
            frames.append(output.frame.float())
        targets.append(target)
    model.train(was_training)
    scores = distributed.gather_rows(torch.cat(scores)).cpu().numpy()
    if frames is not None:
        frames[:] = [distributed.gather_rows(torch.cat(frames)).cpu().numpy(), scores]
    targets = distributed.gather_rows(torch.cat(targets)).cpu().numpy()
    return tagging_metrics(targets, scores), len(scores)


def _shown(value: float | None, digits: int) -> str:
    """A figure, or '-' where it is undefined (None)."""
    return "-" if value is None else f"{value:.{digits}f}"


def format_table(metrics: TaggingMetrics) -> str:
    """The headline metrics, one per line; '-' for a figure no class could be scored for, and top-1 accuracy
    on a single-label set."""
    summary = metrics.summary()
    lines = [f"{'mAP':<18}{_shown(summary['mAP'], 4)}", f"{'mAUC':<18}{_shown(summary['mAUC'], 4)}",
             f"{'d-prime':<18}{_shown(summary['d_prime'], 4)}",
             f"{'excluded classes':<18}{summary['excluded_classes']} (no positive or no negative clip)"]
    if "accuracy" in summary:
        lines.append(f"{'accuracy':<18}{summary['accuracy']:.4f} (top-1: every clip has one label)")
    return "\n".join(lines)


def summary_text(summary: dict) -> str:
    """A `TaggingMetrics.summary()` on one line, as train.run prints each evaluation: 'mAP 0.9529  mAUC 0.9735
    d' 2.736', with accuracy on a single-label set, the count of classes that could not be scored and the
    localisation figures the summary carries."""
    text = (f"mAP {_shown(summary['mAP'], 4)}  mAUC {_shown(summary['mAUC'], 4)}  d' {_shown(summary['d_prime'], 3)}"
            + (f"  accuracy {summary['accuracy']:.4f}" if "accuracy" in summary else ""))
    excluded = summary["excluded_classes"]
    text += (f"  ({excluded} class{'es' if excluded != 1 else ''} not scored: no positive or no negative clip)"
             if excluded else "")
    # localisation figures, where the summary carries them (train.run's test split with strong labels)
    located = [f"{label} {summary[name]:.4f}" for name, label in LOCALISATION_FIGURES if name in summary]
    return text + (f"  {'  '.join(located)}" if located else "")


LOCALISATION_FIGURES = (("event_f1", "event F1"), ("segment_f1", "segment F1"), ("psds1", "PSDS1"),
                        ("psds2", "PSDS2"), ("frame_ap", "frame AP"))
"""Localisation figures `summary_text` shows, by summary key."""


def write_per_class_csv(path: Path, metrics: TaggingMetrics, label_names: tuple[str, ...]) -> None:
    """One row per class: name, AP, AUC (empty where excluded), positives; written whole or not at all
    (through a temporary file; a file-system error is a one-line OutFolderError)."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w", newline="") as file:
            writer = csv.writer(file)
            writer.writerow(["name", "AP", "AUC", "positives"])
            for name, ap, auc, positives in zip(label_names, metrics.average_precision, metrics.roc_auc,
                                                metrics.positives):
                writer.writerow([name, "" if np.isnan(ap) else f"{ap:.6f}", "" if np.isnan(auc) else f"{auc:.6f}",
                                 int(positives)])
        os.replace(tmp, path)
    except OSError as error:
        tmp.unlink(missing_ok=True)
        raise OutFolderError(describe_os_error(error, f"write {path}")) from None


def run_eval_split(trained: TrainedModel, checkpoint_path: str) -> tuple[str, str | SubsetIndex]:
    """(what to call it, what to read) of the held-out split the checkpoint's run evaluated on: its --eval-data,
    fold K of its --data for a `--fold K` run, or the built-in eval split (regenerated if it was removed)."""
    if "data" not in trained.configs:
        raise ValueError(f"--checkpoint {checkpoint_path} is a model folder or Hub id, which does not name the split "
                         f"its run was evaluated on (a checkpoint does): give --data")
    data = trained.configs["data"]
    if data.get("fold") is not None:
        path = data["train_path"]
        if not Path(path).exists():
            raise CheckpointError(f"the split {path} whose fold {data['fold']} {checkpoint_path} was tested on is "
                                  f"not there (read from this folder, {Path.cwd()}); run from the folder train.run "
                                  f"ran in, or pass --data")
        index = ShardIndex.open(path)
        return f"fold {data['fold']} of {path}", SubsetIndex(index, holdout.fold_clips(index, path, data["fold"])[1])
    if data["eval_path"] is not None:
        if not Path(data["eval_path"]).exists():
            where = "" if Path(data["eval_path"]).is_absolute() else f" (read from this folder, {Path.cwd()})"
            raise CheckpointError(f"the eval split {data['eval_path']} that {checkpoint_path} names as its run's "
                                  f"--eval-data is not there{where}; run from the folder train.run ran in, or "
                                  f"pass --data")
        return data["eval_path"], data["eval_path"]
    _, eval_path = ensure_builtin(Path(data["builtin_dir"]).expanduser(), SynthConfig(**data["builtin"]))
    return str(eval_path), str(eval_path)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m train.evaluate", description=__doc__.split("\n\n")[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, metavar="MODEL",
                        help="the model: best.pt or latest.pt written by train.run, a model folder (OUT/pretrained) "
                             "or a Hugging Face Hub id")
    parser.add_argument("--data", help="split to evaluate: a shard .h5 or a folder with index.json "
                                       "(default: the run's held-out split, which a checkpoint names)")
    parser.add_argument("--out", help="folder for per_class_metrics.csv (default: the checkpoint's folder; beside a "
                                      "model folder; needed for a Hub id)")
    parser.add_argument("--strong", metavar="STRONG.tsv",
                        help="strong labels (AudioSet layout: segment_id, start, end, label mid; or id, onset, "
                             "offset, display name; the layouts of docs/labels.md) to score localisation on the "
                             "clips they cover, a clip's overlapping same-class events merged; a split packed with "
                             "strong labels is scored without it")
    parser.add_argument("--threshold", type=float,
                        help="event onset threshold for every class when scoring localisation, with the default "
                             "filters (default: the checkpoint's per-class settings chosen on validation)")
    parser.add_argument("--post-processing", choices=POST_PROCESSING, default="stored",
                        help="event settings for localisation: 'stored' (the checkpoint's, chosen per class on its "
                             "run's validation split), 'validation' (chosen again there: a checkpoint of a run "
                             "whose data has strong labels), 'defaults' (fastsca.events.EventConfig's) "
                             "(default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a per_class_metrics.csv or per_class_localisation.csv in --out that "
                             "train.evaluate did not write (refused without it)")
    parser.add_argument("--batch-size", type=int, default=64, help="clips per batch (default: %(default)s)")
    parser.add_argument("--num-workers", type=int, default=2, help="loader worker processes (default: %(default)s)")
    return parser


POST_PROCESSING = ("stored", "validation", "defaults")
"""Where --post-processing takes the event settings from."""


# The files train.evaluate writes in --out, each by the header row that marks it as one it wrote.
OWN_FILES = {"per_class_metrics.csv": "name,AP,AUC,positives",
             "per_class_localisation.csv": "name,event_f1,segment_f1,psds1,psds2,frame_ap,reference_events"}


def check_own_files(out: Path, overwrite: bool) -> None:
    """OutFolderError (one line) for a file of OWN_FILES in `out` that train.evaluate did not write (its first
    line is not the header it writes), unless `overwrite`: the run would replace it."""
    for name, header in OWN_FILES.items():
        path = out / name
        if not path.exists() or overwrite:
            continue
        try:
            with open(path, newline="", errors="replace") as handle:
                first = handle.readline().rstrip("\r\n")
        except OSError as error:
            raise OutFolderError(describe_os_error(error, f"read {path}")) from None
        if first != header:
            raise OutFolderError(f"--out {out}: its {name} was not written by train.evaluate; it was left as it is: "
                                 f"give another --out, or add --overwrite to replace it")


def default_out(reference: str) -> Path:
    """Where the CSVs go without --out: the checkpoint's folder, or beside a model folder (never into it)."""
    path = Path(reference).expanduser()
    if path.is_file():
        return path.parent
    if path.is_dir():
        return path.resolve().parent
    raise ValueError(f"--checkpoint {reference}: a Hub id has no folder of its own to write per_class_metrics.csv "
                     f"into: give --out DIR")


def load_model(reference: str, device: torch.device, threshold: float | None,
               post_processing: str = "stored") -> tuple[TrainedModel, EventConfig]:
    """The model a reference names (best.pt, latest.pt, a model folder, a Hub id) and the event settings to score
    with: --threshold for every class, else the defaults for `post_processing` "defaults", else the per-class
    settings it stores (for "validation" too, until `validation_selection` replaces them)."""
    pretrained = load_pretrained(reference, device)
    events = (EventConfig(threshold=threshold) if threshold is not None else
              EventConfig() if post_processing == "defaults" else pretrained.events)
    return pretrained.trained, events


def validation_selection(trained: TrainedModel, checkpoint_path: str, args: argparse.Namespace,
                         device: torch.device) -> postprocess.Selection:
    """The event settings chosen again on the validation split of the checkpoint's run (the clips train.run held
    out of its training split, with their packed strong labels): never on the split being evaluated (a --data
    that holds those clips is refused)."""
    if "data" not in trained.configs:
        raise ValueError(f"--post-processing validation: {checkpoint_path} is a model folder or Hub id, which does "
                         f"not name its run's data; give its best.pt")
    data = trained.configs["data"]
    paths = (data["train_path"], data["eval_path"])
    if data["train_path"] is None:
        paths = tuple(map(str, ensure_builtin(Path(data["builtin_dir"]).expanduser(), SynthConfig(**data["builtin"]))))
    holder = data.get("validation_path") or paths[0]   # the split the validation clips come from
    if args.data is not None and data.get("fold") is None and Path(args.data).resolve() == Path(holder).resolve():
        raise ValueError(f"--post-processing validation: --data {args.data} is the validation or training split of "
                         f"{checkpoint_path}'s run, which holds the validation clips the settings would be chosen on; "
                         f"give another split")
    _, validation, _ = holdout.split_run(paths[0], paths[1], data["validation_fraction"], data["validation_max_clips"],
                                         data["loader"]["seed"], data.get("fold"), say=lambda text: None,
                                         validation_path=data.get("validation_path"))
    strong = localisation.reference_for_split(data.get("validation_path") or paths[0], None)
    if strong is None:
        raise ValueError(f"--post-processing validation: the training split {paths[0]} of {checkpoint_path}'s run "
                         f"has no strong labels packed, so there is nothing to choose on")
    config = LoaderConfig(batch_size=args.batch_size, sampler="sequential", num_workers=args.num_workers,
                          drop_last=False)
    frames: list = []
    with LogMelLoader(validation, config, log_mel=trained.log_mel, device=device) as loader:
        evaluate(trained.model, loader, device, frames)
    return postprocess.select_postprocessing(frames[0], frames[1], [strong[0][i] for i in validation.clips], strong[1],
                                             trained.label_names, trained.log_mel.clip_seconds / frames[0].shape[1])


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        check_numbers(args, {"batch_size": Limit(1, 4096), "num_workers": Limit(0, 64, why="each is a process")})
        if args.threshold is not None and not 0 < args.threshold < 1:   # NaN too
            raise ValueError(f"--threshold {args.threshold}: give a probability between 0 and 1, exclusive")
        if args.threshold is not None and args.post_processing != "stored":
            raise ValueError(f"--threshold sets the event settings, as --post-processing {args.post_processing} "
                             f"does: give one of them")
    except ValueError as error:
        parser.exit(2, f"error: {error}\n")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        trained, events = load_model(args.checkpoint, device, args.threshold, args.post_processing)
        # checked before the work, so an unwritable --out never costs a whole evaluation
        out = ensure_writable(Path(args.out) if args.out else default_out(args.checkpoint))
        check_own_files(out, args.overwrite)
        data, source = (args.data, args.data) if args.data else run_eval_split(trained, args.checkpoint)
        selection = (validation_selection(trained, args.checkpoint, args, device)
                     if args.post_processing == "validation" else None)
        events = events if selection is None else selection.events
        result = score(trained, events, data, source, args, device)
        result.events, result.selection = events, selection
        # the tables first: a disk that fills up while a CSV is written still leaves the metrics on screen
        print_tables(trained, result, data, args)
        write_tables(out, trained, result)
    except ValueError as error:   # CheckpointError, ShardError, OutFolderError and the loader's are ValueErrors
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    print(f"per-class metrics: {out / 'per_class_metrics.csv'}")
    if result.located is not None:
        print(f"per-class localisation: {out / 'per_class_localisation.csv'}")
    if result.localisation_error is not None:
        print(f"error: {result.localisation_error}", file=sys.stderr)
        sys.exit(2)


@dataclass
class Scores:
    """What `score` found on a split."""

    metrics: TaggingMetrics
    """The clip metrics."""
    clips: int
    """Clips evaluated."""
    located: localisation.LocalisationMetrics | None = None
    """The localisation metrics, where the split has strong labels and scoring worked."""
    report: ReferenceReport | None = None
    """What reading the strong labels found (skipped rows, unknown labels)."""
    localisation_error: str | None = None
    """Why localisation was not scored, reported after the clip metrics, which it never stops."""
    events: EventConfig | None = None
    """The event settings localisation was scored with."""
    selection: postprocess.Selection | None = None
    """Their choice on the run's validation split, with its F1s (--post-processing validation)."""


def score(trained: TrainedModel, events: EventConfig, data: str, source, args: argparse.Namespace,
          device: torch.device) -> Scores:
    """The clip metrics of `trained` on `source`, and its localisation where strong labels are given or packed."""
    config = LoaderConfig(batch_size=args.batch_size, sampler="sequential", num_workers=args.num_workers,
                          drop_last=False)
    with LogMelLoader(source, config, log_mel=trained.log_mel, device=device) as loader:
        if tuple(loader.label_names) != trained.label_names:
            raise CheckpointError(f"{data} has labels {_short(loader.label_names)} but {args.checkpoint} "
                                  f"was trained on {_short(trained.label_names)}; evaluate on data with the "
                                  f"checkpoint's label set")
        report, localisation_error = ReferenceReport(), None
        try:
            if isinstance(source, str):
                strong = localisation.reference_for_split(source, args.strong, report)
            elif args.strong:
                raise ValueError(f"give the split as --data to score --strong labels on {data}")
            else:
                strong = None
        except ValueError as error:   # ShardError, TextFileError too
            strong, localisation_error = None, f"localisation not scored: {error}"
        frames = [] if strong is not None else None
        metrics, clips = evaluate(trained.model, loader, device, frames)
    result = Scores(metrics=metrics, clips=clips, report=report if strong is not None else None,
                    localisation_error=localisation_error)
    if strong is not None:
        try:
            result.located = localisation.localisation_metrics(
                frames[0], strong[0], strong[1], trained.label_names, trained.log_mel.clip_seconds / frames[0].shape[1],
                events, clip_probs=frames[1])
        except Exception as error:   # a scoring library's assertion must not hide the clip metrics
            result.localisation_error = localisation.fault_text(error)
    return result


def print_tables(trained: TrainedModel, result: Scores, data: str, args: argparse.Namespace) -> None:
    print(f"{args.checkpoint} (step {trained.step}) on {data}: {result.clips} clips, "
          f"{len(trained.label_names)} classes")
    print(format_table(result.metrics), flush=True)
    if result.report is not None and result.report.describe():   # (when reading failed, the error line says why)
        print(f"note: strong labels {args.strong}: {result.report.describe()}", file=sys.stderr)
    if result.located is not None:
        print(localisation.format_table(result.located))
        print(localisation.format_per_class(result.located))
        source = {"stored": "stored with the model", "defaults": "the defaults",
                  "validation": "chosen again on its run's validation split"}[args.post_processing]
        print(f"event settings: {source if args.threshold is None else f'--threshold {args.threshold:g}'}\n"
              f"{postprocess.format_selection(result.events, trained.label_names, result.selection)}", flush=True)


def write_tables(out: Path, trained: TrainedModel, result: Scores) -> None:
    write_per_class_csv(out / "per_class_metrics.csv", result.metrics, trained.label_names)
    if result.located is not None:
        try:
            write_atomically(out / "per_class_localisation.csv",
                             lambda tmp: localisation.write_per_class_csv(tmp, result.located))
        except OSError as error:
            raise OutFolderError(describe_os_error(error, f"write {out / 'per_class_localisation.csv'}")) from None


def _short(names) -> str:
    """The first few names of a label list and its length, for error messages."""
    names = list(names)
    return f"({len(names)}: {', '.join(names[:3])}{', ...' if len(names) > 3 else ''})"


if __name__ == "__main__":
    main()
