"""Trained models in the Hugging Face layout: a folder of config.json, model.safetensors, labels.csv and README.md.

`save_pretrained_from_checkpoint(best.pt, FOLDER)` writes what inference needs out of a training
checkpoint (no optimiser, no RNG states): config.json (the format tag, the model and front-end configs,
the label names and mids, `id2label`/`label2id` as transformers names them, the event detector's thresholds,
the training step), the weights as safetensors (a format that holds tensors only, so loading one runs no code),
labels.csv in AudioSet's class_labels_indices.csv layout (index, mid, display_name) and the model card
(README.md, fastsca/model_card.py). It writes only into a new or empty folder or one it wrote before
(`overwrite` lifts that). `load_pretrained` reads such a folder, or downloads one from a Hugging Face Hub model
repo (`owner/name`) with huggingface_hub; `push_to_hub` uploads one. A folder that is not a fastsca model,
lacks a file or holds damaged weights is a one-line PretrainedError.

`python -m fastsca.hub CKPT --out FOLDER [--labels class_labels_indices.csv]` converts a checkpoint;
`fastsca.hub.push_to_hub(FOLDER, "OWNER/NAME")` or `hf upload OWNER/NAME FOLDER .` then shares the folder.
"""
import argparse
import csv
import io
import json
import sys
import tempfile
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import safetensors
import safetensors.torch
import torch

from fastsca.atomic import write_atomically
from fastsca.config import ModelConfig
from fastsca.events import EventConfig, stored_event_config
from fastsca.frontend import LogMelConfig
from fastsca.inference import CheckpointError, TrainedModel, current_model_fields, load_trained_model
from fastsca.model import build_model
from fastsca.model_card import LIBRARY_LINE, TrainingFacts, model_card
from fastsca.run_options import options_for_device
from fastsca.text_files import read_text

PRETRAINED_FORMAT = "fastsca-pretrained/1"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
LABELS_NAME = "labels.csv"
CARD_NAME = "README.md"
# What loading needs; the model card is for readers (a folder written before it existed still loads).
FOLDER_FILES = (CONFIG_NAME, WEIGHTS_NAME, LABELS_NAME)
WRITTEN_FILES = FOLDER_FILES + (CARD_NAME,)


class PretrainedError(ValueError):
    """A pretrained folder or Hub repo that cannot be used; the message names it and what to do."""


@dataclass(frozen=True)
class Pretrained:
    """A trained model with what the Hugging Face layout adds: label mids and event thresholds."""

    trained: TrainedModel
    """The network in eval mode, its front end and label names."""
    label_mids: tuple[str, ...]
    """AudioSet mid of each class ("/m/09x0r"), "" where the model was saved without them."""
    events: EventConfig
    """How the model's frame probabilities become events (thresholds, hysteresis, filters)."""


def _labels_csv(label_names: tuple[str, ...], label_mids: tuple[str, ...]) -> str:
    """labels.csv's text: index, mid, display_name (AudioSet's class_labels_indices.csv layout)."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["index", "mid", "display_name"])
    writer.writerows((i, mid, name) for i, (name, mid) in enumerate(zip(label_names, label_mids)))
    return text.getvalue()


def _is_ours(path: Path) -> bool:
    """Whether an existing file of the model folder's names was written by this module (config.json and README.md
    say so; the weights and labels.csv count as ours only beside one of those: alone, they may be a user's)."""
    try:
        text = path.read_text(encoding="utf-8")[:100_000] if path.name in (CONFIG_NAME, CARD_NAME) else ""
    except (OSError, UnicodeDecodeError):
        return False
    if path.name == CONFIG_NAME:
        return f'"format": "{PRETRAINED_FORMAT}"' in text
    if path.name == CARD_NAME:
        return LIBRARY_LINE in text.split("\n---", 1)[0]
    return any((path.parent / name).is_file() and _is_ours(path.parent / name) for name in (CONFIG_NAME, CARD_NAME))


def check_folder(folder: Path, overwrite: bool = False, inputs: tuple[Path, ...] = ()) -> None:
    """Raise PretrainedError (one line) unless `folder` is new, empty or a model folder this module wrote (only its
    files, config.json and README.md its own); with `overwrite`, any folder. A file among `inputs` that the folder
    would replace is refused either way."""
    if folder.exists() and not folder.is_dir():
        raise PretrainedError(f"{folder}: is a file, not a folder; give a folder")
    clash = [path for path in inputs if path.resolve().parent == folder.resolve() and path.name in WRITTEN_FILES]
    if clash:
        raise PretrainedError(f"{folder}: its {clash[0].name} is the input {clash[0]}; give another folder")
    if overwrite or not folder.exists():
        return
    foreign = sorted(path.name for path in folder.iterdir() if path.name not in WRITTEN_FILES or not _is_ours(path))
    if foreign:
        raise PretrainedError(f"{folder}: holds {foreign[0]}" + (f" and {len(foreign) - 1} more" if len(foreign) > 1
                              else "") + ", which fastsca.hub did not write; give a new or empty folder, or "
                              "--overwrite to write the model's files into it")


def save_pretrained(pretrained: Pretrained, folder: str | Path, facts: TrainingFacts = TrainingFacts(),
                    overwrite: bool = False) -> Path:
    """Write `pretrained` into `folder` (created if needed; `check_folder` first) as config.json, model.safetensors,
    labels.csv and the model card README.md (from `facts`), each file atomically, config.json last; returns the
    folder."""
    folder = Path(folder)
    check_folder(folder, overwrite)
    folder.mkdir(parents=True, exist_ok=True)
    trained = pretrained.trained
    weights = {name: tensor.detach().cpu().contiguous() for name, tensor in trained.model.state_dict().items()}
    config = {"format": PRETRAINED_FORMAT,
              "model": asdict(trained.model.config),
              "log_mel": asdict(trained.log_mel),
              "label_names": list(trained.label_names),
              "label_mids": list(pretrained.label_mids),
              "id2label": {str(i): name for i, name in enumerate(trained.label_names)},
              "label2id": {name: i for i, name in enumerate(trained.label_names)},
              "events": asdict(pretrained.events),
              "step": trained.step}
    # bytes, then an ordinary write: save_file creates its file readable by its owner only, odd for a shared model
    write_atomically(folder / WEIGHTS_NAME,
                      lambda tmp: tmp.write_bytes(safetensors.torch.save(weights, metadata={"format": "pt"})))
    write_atomically(folder / LABELS_NAME,
                      lambda tmp: tmp.write_text(_labels_csv(trained.label_names, pretrained.label_mids)))
    write_atomically(folder / CARD_NAME, lambda tmp: tmp.write_text(model_card(trained, pretrained.events, facts),
                                                                   encoding="utf-8"))
    write_atomically(folder / CONFIG_NAME, lambda tmp: tmp.write_text(json.dumps(config, indent=2) + "\n"))
    return folder


def read_label_mids(path: str | Path, label_names: tuple[str, ...]) -> tuple[str, ...]:
    """Each class's mid from an AudioSet class_labels_indices.csv (index, mid, display_name), matched by display
    name; ValueError (one line; TextFileError is one) when the file cannot be read or lacks a class."""
    rows = [row for row in csv.reader(io.StringIO(read_text(path, "--labels"))) if len(row) == 3 and row[0] != "index"]
    mids = {name: mid for _, mid, name in rows}
    missing = [name for name in label_names if name not in mids]
    if missing:
        raise ValueError(f"--labels {path}: has no mid for {missing[0]!r} (matched by display name); give the "
                         f"labels file the model was trained with")
    return tuple(mids[name] for name in label_names)


def save_pretrained_from_checkpoint(checkpoint_path: str | Path, folder: str | Path,
                                    label_mids: tuple[str, ...] | None = None,
                                    events: EventConfig | None = None, overwrite: bool = False) -> Path:
    """Write a training checkpoint (best.pt) into `folder` in the Hugging Face layout, for `load_pretrained`
    and `fastsca.Tagger.from_pretrained`, with `events` or else the event settings the checkpoint stores (its
    per-class thresholds chosen on validation), and a model card from the checkpoint and the metrics.jsonl beside
    it; a checkpoint that cannot be used is a one-line CheckpointError, a folder it may not write into a
    PretrainedError (`check_folder`)."""
    check_folder(Path(folder), overwrite, inputs=(Path(checkpoint_path),))
    trained = load_trained_model(checkpoint_path)
    events = events if events is not None else stored_event_config(trained.configs)
    mids = label_mids if label_mids is not None else ("",) * len(trained.label_names)
    if len(mids) != len(trained.label_names):
        raise ValueError(f"{len(mids)} label mids for the {len(trained.label_names)} classes of {checkpoint_path}")
    events.onset_thresholds(trained.label_names)   # a per-class threshold must name a class of the model
    return save_pretrained(Pretrained(trained=trained, label_mids=tuple(mids), events=events), folder,
                           TrainingFacts.from_checkpoint(checkpoint_path), overwrite)


def push_to_hub(source: str | Path, repo_id: str, private: bool = False, token: str | None = None,
                revision: str | None = None, commit_message: str = "Upload fastsca model") -> str:
    """Upload a model folder, or a training checkpoint converted into one first, to the Hub model repo `repo_id`
    (created if needed, `private` then); returns the commit's URL. The folder is loaded first, so a folder that
    would not load is not uploaded; a Hub that refuses (no token, no access, no network) is a PretrainedError."""
    from huggingface_hub import HfApi   # here: only an upload needs it (about 0.2 s to import)
    from huggingface_hub.errors import HfHubHTTPError
    source = Path(source).expanduser()
    with tempfile.TemporaryDirectory(prefix="fastsca-push-") as scratch:
        folder = source if source.is_dir() else save_pretrained_from_checkpoint(source, Path(scratch) / "model")
        load_folder(folder)
        api = HfApi(token=token)
        try:
            api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
            commit = api.upload_folder(repo_id=repo_id, repo_type="model", folder_path=folder, revision=revision,
                                       allow_patterns=[name for name in WRITTEN_FILES if (folder / name).is_file()],
                                       commit_message=commit_message)
        except (HfHubHTTPError, OSError) as error:
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise PretrainedError(f"{repo_id}: the Hugging Face Hub refused the upload ({reason}); check the repo "
                                  f"id, your token (`hf auth login`) and the network") from None
    return str(getattr(commit, "commit_url", commit))


def _download(repo_id: str, revision: str | None) -> Path:
    """The three files of a Hub model repo, downloaded into (or found in) huggingface_hub's cache."""
    # imported here: only a Hub repo needs it, and importing it takes about 0.2 s
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, HfHubHTTPError, LocalEntryNotFoundError
    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=list(FOLDER_FILES)))
    except HFValidationError:
        raise PretrainedError(f"{repo_id}: no such checkpoint, folder or Hub repo id; give best.pt, a folder "
                              f"written by `python -m fastsca.hub` or a Hub repo id (owner/name)") from None
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise PretrainedError(f"{repo_id}: not a local checkpoint or folder, and the Hugging Face Hub did not "
                              f"give it ({reason}); check the path or repo id and the network") from None


def _config_fields(cls, values: dict, folder: Path, part: str):
    """A config dataclass from config.json's dict, JSON lists turned back into the tuples the fields hold."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise PretrainedError(f"{folder / CONFIG_NAME}: {part} field {unknown[0]!r} is unknown to this fastsca; "
                              f"the folder was written by a newer fastsca: upgrade fastsca")

    def as_tuple(value):
        return tuple(as_tuple(v) for v in value) if isinstance(value, list) else value
    return cls(**{name: as_tuple(value) for name, value in values.items()})


def _weights_mismatch(model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> str:
    """How `weights` differ from what `model` holds, in words; "" when they fit."""
    expected = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    found = {name: tuple(tensor.shape) for name, tensor in weights.items()}
    if missing := sorted(set(expected) - set(found)):
        return f"no {missing[0]}" + (f" and {len(missing) - 1} more" if len(missing) > 1 else "")
    if extra := sorted(set(found) - set(expected)):
        return f"{extra[0]}, which the model has not" + (f", and {len(extra) - 1} more" if len(extra) > 1 else "")
    reshaped = [name for name in expected if expected[name] != found[name]]
    return f"{reshaped[0]} is {found[reshaped[0]]} where the model has {expected[reshaped[0]]}" if reshaped else ""


def load_folder(folder: str | Path, device: torch.device = torch.device("cpu")) -> Pretrained:
    """The model saved in a folder by `save_pretrained`, ready for inference on `device`."""
    folder = Path(folder)
    missing = [name for name in FOLDER_FILES if not (folder / name).is_file()]
    if missing:
        raise PretrainedError(f"{folder}: no {missing[0]} in the folder; a fastsca model folder holds "
                              f"{', '.join(FOLDER_FILES)}: write it again with `python -m fastsca.hub CKPT --out "
                              f"{folder}`")
    try:
        config = json.loads((folder / CONFIG_NAME).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise PretrainedError(f"{folder / CONFIG_NAME}: not readable JSON ({error}); write the folder again with "
                              f"`python -m fastsca.hub CKPT --out {folder}`") from None
    if not isinstance(config, dict) or config.get("format") != PRETRAINED_FORMAT:
        raise PretrainedError(f"{folder}: not a fastsca model folder (its {CONFIG_NAME} has no {PRETRAINED_FORMAT!r} "
                              f"format field; another library's model?); give a folder written by "
                              f"`python -m fastsca.hub`")
    try:
        model_config = _config_fields(ModelConfig, current_model_fields(config["model"]), folder, "model")
        log_mel = _config_fields(LogMelConfig, config["log_mel"], folder, "log_mel")
        events = _config_fields(EventConfig, config["events"], folder, "events")
        label_names, label_mids = tuple(config["label_names"]), tuple(config["label_mids"])
        step = int(config["step"])
    except KeyError as error:
        raise PretrainedError(f"{folder / CONFIG_NAME}: no {error} entry; write the folder again with "
                              f"`python -m fastsca.hub CKPT --out {folder}`") from None
    except PretrainedError:
        raise
    except (TypeError, ValueError) as error:
        raise PretrainedError(f"{folder / CONFIG_NAME}: its settings do not build a model ({error}); write the "
                              f"folder again with `python -m fastsca.hub CKPT --out {folder}`") from None
    if config.get("id2label") not in (None, {str(i): name for i, name in enumerate(label_names)}):
        raise PretrainedError(f"{folder / CONFIG_NAME}: its id2label disagrees with its label_names; the file was "
                              f"edited: write the folder again")
    if not len(label_names) == len(label_mids) == model_config.num_classes:
        raise PretrainedError(f"{folder / CONFIG_NAME}: {len(label_names)} label names and {len(label_mids)} mids "
                              f"for a model of {model_config.num_classes} classes; the file was edited: write the "
                              f"folder again")
    try:
        weights = safetensors.torch.load_file(str(folder / WEIGHTS_NAME))
    except (safetensors.SafetensorError, OSError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise PretrainedError(f"{folder / WEIGHTS_NAME}: not readable safetensors ({reason}); the file is damaged "
                              f"or truncated: download or write it again") from None
    model = build_model(model_config, options_for_device(device))
    if mismatch := _weights_mismatch(model, weights):
        raise PretrainedError(f"{folder / WEIGHTS_NAME}: its weights do not fit the model of {CONFIG_NAME} "
                              f"({mismatch}); the two files come from different models: write the folder again "
                              f"from one checkpoint")
    model.load_state_dict(weights)
    trained = TrainedModel(model=model.to(device).eval(), log_mel=log_mel, label_names=label_names, step=step,
                           configs={"model": asdict(model_config), "log_mel": asdict(log_mel), "events": asdict(events)})
    return Pretrained(trained=trained, label_mids=label_mids, events=events)


def load_pretrained(source: str | Path, device: torch.device = torch.device("cpu"),
                    revision: str | None = None) -> Pretrained:
    """A trained model from a training checkpoint (best.pt), a folder in the Hugging Face layout, or a Hub
    model repo id (owner/name, at `revision`); a one-line PretrainedError or CheckpointError otherwise."""
    path = Path(source).expanduser()
    if path.is_file():
        trained = load_trained_model(path, device)
        return Pretrained(trained=trained, label_mids=("",) * len(trained.label_names),
                          events=stored_event_config(trained.configs))
    if path.is_dir():
        return load_folder(path, device)
    if str(source).endswith(".pt") or str(source).startswith((".", "/", "~")):
        raise PretrainedError(f"{source}: no such checkpoint or folder; check the path (`python -m train.run --out "
                              f"DIR` writes DIR/best.pt)")
    return load_folder(_download(str(source), revision), device)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m fastsca.hub",
                                     description="Convert a training checkpoint into a model folder in the Hugging "
                                                 "Face layout (config.json, model.safetensors, labels.csv and the "
                                                 "model card README.md), which fastsca.Tagger.from_pretrained "
                                                 "reads; share it with fastsca.hub.push_to_hub(FOLDER, "
                                                 "\"OWNER/NAME\") or `hf upload OWNER/NAME FOLDER .`.")
    parser.add_argument("checkpoint", metavar="CKPT", help="best.pt or latest.pt written by train.run")
    parser.add_argument("--out", type=Path, required=True, metavar="FOLDER",
                        help="the folder to write: new, empty, or one this command wrote (its files are replaced)")
    parser.add_argument("--overwrite", action="store_true",
                        help="write the model's files into a folder that holds other files (those are kept; the "
                             "checkpoint being converted is never replaced)")
    parser.add_argument("--labels", type=Path,
                        help="class_labels_indices.csv: stores each class's AudioSet mid beside its name "
                             "(default: names only)")
    parser.add_argument("--threshold", type=float,
                        help="event onset threshold stored for the tagger's events, for every class (default: the "
                             "checkpoint's per-class thresholds chosen on validation, 0.5 for the others)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        try:
            events = EventConfig(threshold=args.threshold) if args.threshold is not None else None
        except ValueError as error:
            raise ValueError(f"--threshold: {error}") from None
        if args.out.exists() and not args.out.is_dir():
            raise ValueError(f"--out {args.out}: is a file, not a folder; give a folder")
        mids = read_label_mids(args.labels, load_trained_model(args.checkpoint).label_names) if args.labels else None
        folder = save_pretrained_from_checkpoint(args.checkpoint, args.out, mids, events, args.overwrite)
    except (ValueError, CheckpointError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"interrupted; {args.out} holds each file whole, new or as it was", file=sys.stderr)
        sys.exit(130)
    except OSError as error:
        print(f"error: --out {args.out}: cannot write there ({error.strerror or error}); give a writable folder",
              file=sys.stderr)
        sys.exit(2)
    print(f"wrote {folder}: {', '.join(WRITTEN_FILES)}")


if __name__ == "__main__":
    main()
