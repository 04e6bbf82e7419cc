"""Trained models in the Hugging Face layout: a folder of config.json, model.safetensors and labels.csv.

`save_pretrained_from_checkpoint(best.pt, FOLDER)` writes what inference needs out of a training
checkpoint (no optimiser, no RNG states): config.json (the format tag, the model and front-end configs,
the label names and mids, the event detector's thresholds, the training step), the weights as
safetensors (a format that holds tensors only, so loading one runs no code) and labels.csv in AudioSet's
class_labels_indices.csv layout (index, mid, display_name). `load_pretrained` reads such a folder, or
downloads one from a Hugging Face Hub model repo (`owner/name`) with huggingface_hub. A folder that is
not a fastsca model, lacks a file or holds damaged weights is a one-line PretrainedError.

`python -m fastsca.hub CKPT --out FOLDER [--labels class_labels_indices.csv]` converts a checkpoint;
`hf upload OWNER/NAME FOLDER .` then shares the folder on the Hub.
"""
import argparse
import csv
import io
import json
import sys
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
from fastsca.run_options import options_for_device
from fastsca.text_files import read_text

PRETRAINED_FORMAT = "fastsca-pretrained/1"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
LABELS_NAME = "labels.csv"
FOLDER_FILES = (CONFIG_NAME, WEIGHTS_NAME, LABELS_NAME)


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


def save_pretrained(pretrained: Pretrained, folder: str | Path) -> Path:
    """Write `pretrained` into `folder` (created if needed) as config.json, model.safetensors and labels.csv,
    each file atomically, config.json last; returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    trained = pretrained.trained
    weights = {name: tensor.detach().cpu().contiguous() for name, tensor in trained.model.state_dict().items()}
    config = {"format": PRETRAINED_FORMAT,
              "model": asdict(trained.model.config),
              "log_mel": asdict(trained.log_mel),
              "label_names": list(trained.label_names),
              "label_mids": list(pretrained.label_mids),
              "events": asdict(pretrained.events),
              "step": trained.step}
    # bytes, then an ordinary write: save_file creates its file readable by its owner only, odd for a shared model
    write_atomically(folder / WEIGHTS_NAME,
                      lambda tmp: tmp.write_bytes(safetensors.torch.save(weights, metadata={"format": "pt"})))
    write_atomically(folder / LABELS_NAME,
                      lambda tmp: tmp.write_text(_labels_csv(trained.label_names, pretrained.label_mids)))
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
                                    events: EventConfig | None = None) -> Path:
    """Write a training checkpoint (best.pt) into `folder` in the Hugging Face layout, for `load_pretrained`
    and `fastsca.Tagger.from_pretrained`, with `events` or else the event settings the checkpoint stores (its
    per-class thresholds chosen on validation); a checkpoint that cannot be used is a one-line CheckpointError."""
    trained = load_trained_model(checkpoint_path)
    events = events if events is not None else stored_event_config(trained.configs)
    mids = label_mids if label_mids is not None else ("",) * len(trained.label_names)
    if len(mids) != len(trained.label_names):
        raise ValueError(f"{len(mids)} label mids for the {len(trained.label_names)} classes of {checkpoint_path}")
    events.onset_thresholds(trained.label_names)   # a per-class threshold must name a class of the model
    return save_pretrained(Pretrained(trained=trained, label_mids=tuple(mids), events=events), folder)


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
                           configs={"model": asdict(model_config), "log_mel": asdict(log_mel)})
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
                                                 "Face layout (config.json, model.safetensors, labels.csv), which "
                                                 "fastsca.Tagger.from_pretrained reads; share it with "
                                                 "`hf upload OWNER/NAME FOLDER .`.")
    parser.add_argument("checkpoint", metavar="CKPT", help="best.pt or latest.pt written by train.run")
    parser.add_argument("--out", type=Path, required=True, metavar="FOLDER",
                        help="the folder to write (created if needed; its three files are replaced)")
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
        folder = save_pretrained_from_checkpoint(args.checkpoint, args.out, mids, events)
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
    print(f"wrote {folder}: {', '.join(FOLDER_FILES)}")


if __name__ == "__main__":
    main()
