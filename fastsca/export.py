"""`python -m fastsca.export CKPT --onnx model.onnx [--torch-export model.pt2] [--input waveform]`: a trained
model for other runtimes.

By default both files hold the network from its input log-mel to its outputs, the front end outside the graph:
the input is `log_mel`, float32 (batch, 1, frames, n_mels), `fastsca.frontend.log_mel` of 16 kHz mono audio,
or any equivalent with the settings stored in the file (docs/deploy.md). With `--input waveform` the front end
is inside the graph (fastsca/export_frontend.py; ONNX's STFT operator, opset 17 and later): the input is
`waveform`, float32 (batch, clip_samples) mono audio at the stored sample rate. The outputs are `clip`
(batch, K) and `frame` (batch, T', K) probabilities. The batch axis is dynamic; the time axis is fixed at the
model's input_frames (clip_samples for a waveform), because the local branch of spatial attention (eq. 6) has
a learned weight per input frame (T -> T/r): a longer file is cut into windows, as `fastsca.tag` cuts it.
An existing target is replaced only when this command wrote it, or with --overwrite; the model being exported
never is.

Both carry the reference attention path and backbone (`RunOptions(fused_attention=False, fused_backbone=False)`;
an exported model is in eval mode, where the backbone is the reference anyway) with the checkpoint's weights: the
fused ops (`fastsca::attention_*`, `fastsca::block_*`) have no ONNX translation, and a torch.export program
holding them would run only where fastsca is installed. The two paths give the same outputs
(tests/test_attention.py). After writing, the command runs the ONNX file with onnxruntime against
PyTorch on a random input (for a waveform, against fastsca.frontend.log_mel and the model) and prints the
largest difference. The label names and the front end's
settings go into the files (ONNX metadata `fastsca.config`; the .pt2's extra file `fastsca.json`).
"""
import argparse
import importlib
import json
import logging
import sys
import warnings
import zipfile
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fastsca.atomic import write_atomically
from fastsca.export_frontend import LogMelModule
from fastsca.frontend import log_mel
from fastsca.hub import FOLDER_FILES, load_pretrained
from fastsca.inference import TrainedModel
from fastsca.model import build_model
from fastsca.run_options import RunOptions

INPUT_NAME = "log_mel"
WAVEFORM_NAME = "waveform"
OUTPUT_NAMES = ("clip", "frame")
# The largest batch the exported graph is declared for (a bound torch.export needs; 4096 windows of 10 s
# are 11 hours of audio per call).
MAX_BATCH = 4096
INSTALL_HINT = 'pip install "fastsca[export]" (from a checkout: pip install -e ".[export]")'


class ExportError(ValueError):
    """An export that cannot be made; the message says why and what to do."""


class ExportableModel(nn.Module):
    """The model on its reference attention path, returning (clip, frame) as a plain tuple for the exporters;
    with `waveform`, the front end (LogMelModule) before it."""

    def __init__(self, trained: TrainedModel, waveform: bool = False) -> None:
        super().__init__()
        self.front_end = LogMelModule(trained.log_mel) if waveform else nn.Identity()
        self.model = build_model(trained.model.config, RunOptions(fused_attention=False, fused_backbone=False))
        self.model.load_state_dict(trained.model.state_dict())
        self.eval()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:   # (B, 1, T, F) or (B, N)
        output = self.model(self.front_end(x))
        return output.clip, output.frame


def input_name(waveform: bool) -> str:
    return WAVEFORM_NAME if waveform else INPUT_NAME


def example_input(trained: TrainedModel, batch: int = 2, waveform: bool = False) -> torch.Tensor:
    """A random batch of the model's input shape: log-mels in the front end's dB range, or noise waveforms at
    about -20 dBFS."""
    config = trained.model.config
    if waveform:
        return torch.randn(batch, trained.log_mel.clip_samples) * 0.1
    return torch.randn(batch, 1, config.input_frames, config.n_mels) * 20.0 - 40.0


def input_text(trained: TrainedModel, waveform: bool) -> str:
    """The input's name, type and shape in words."""
    if waveform:
        return (f"{WAVEFORM_NAME}: float32 (batch, {trained.log_mel.clip_samples}) mono audio in [-1, 1] at "
                f"{trained.log_mel.sample_rate} Hz; the log-mel front end is in the graph")
    return (f"{INPUT_NAME}: float32 (batch, 1, {trained.model.config.input_frames}, {trained.model.config.n_mels}) "
            f"log-mel in dB, fastsca.frontend.log_mel")


def metadata(trained: TrainedModel, waveform: bool = False) -> dict:
    """What a user of the exported file needs besides the graph: label names, front end, path taken."""
    return {"label_names": list(trained.label_names), "log_mel": asdict(trained.log_mel),
            "input": input_text(trained, waveform), "attention_path": "reference (fused_attention=False)"}


def _dynamic_batch() -> tuple[dict, ...]:
    return ({0: torch.export.Dim("batch", min=1, max=MAX_BATCH)},)


def exported_program(trained: TrainedModel, waveform: bool = False) -> torch.export.ExportedProgram:
    """The model (after the front end, with `waveform`) traced by torch.export, with a dynamic batch axis (both
    exports start from it)."""
    return torch.export.export(ExportableModel(trained, waveform), (example_input(trained, waveform=waveform),),
                               dynamic_shapes=_dynamic_batch())


def check_onnx_packages() -> None:
    """Raise ExportError (one line, with the pip command) unless the export extra is installed."""
    for package in ("onnx", "onnxscript", "onnxruntime"):   # the exporter needs the first two, the check the third
        try:
            importlib.import_module(package)
        except ImportError:
            raise ExportError(f"--onnx needs the {package} package: {INSTALL_HINT}") from None


def export_onnx(trained: TrainedModel, path: str | Path, program: torch.export.ExportedProgram | None = None,
                waveform: bool = False) -> Path:
    """Write the model as ONNX (opset 18, dynamic batch) with its metadata, from `program` when given (it
    saves tracing again; made with the same `waveform`); needs onnx and onnxscript."""
    check_onnx_packages()
    import onnx   # the export extra: not needed for anything else
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)   # its per-op notes on missing torchvision ops
    onnx_program = torch.onnx.export(program if program is not None else exported_program(trained, waveform),
                                     dynamo=True, input_names=[input_name(waveform)], output_names=list(OUTPUT_NAMES), opset_version=18,
                                     external_data=False, verbose=False)
    proto = onnx_program.model_proto
    onnx.helper.set_model_props(proto, {"fastsca.config": json.dumps(metadata(trained, waveform))})
    path = Path(path)
    write_atomically(path, lambda tmp: onnx.save(proto, str(tmp)), keep_suffix=True)
    return path


def export_program(trained: TrainedModel, path: str | Path, program: torch.export.ExportedProgram | None = None,
                   waveform: bool = False) -> Path:
    """Write the model as a torch.export program (.pt2, dynamic batch): `torch.export.load(path).module()`."""
    program = program if program is not None else exported_program(trained, waveform)
    path = Path(path)
    extra = {"fastsca.json": json.dumps(metadata(trained, waveform))}
    write_atomically(path, keep_suffix=True, write=lambda tmp: torch.export.save(program, str(tmp), extra_files=extra))
    return path


def reference_outputs(trained: TrainedModel, x: torch.Tensor, waveform: bool = False) -> tuple[torch.Tensor, ...]:
    """PyTorch's (clip, frame) for a log-mel batch, or for a waveform batch through fastsca.frontend.log_mel (the
    float64 front end that fastsca.tag uses)."""
    with torch.no_grad():
        return ExportableModel(trained)(log_mel(x, trained.log_mel) if waveform else x)


def onnx_difference(trained: TrainedModel, path: str | Path, x: torch.Tensor, waveform: bool = False) -> float:
    """Largest absolute difference between onnxruntime's outputs for `x` and PyTorch's (`reference_outputs`)."""
    import onnxruntime   # the export extra (check_onnx_packages)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outputs = session.run(list(OUTPUT_NAMES), {input_name(waveform): x.numpy()})
    expected = reference_outputs(trained, x, waveform)
    return max(float(np.abs(got - want.numpy()).max()) for got, want in zip(outputs, expected))


def written_by_export(path: Path, flag: str) -> bool:
    """Whether the existing file `path` is an export this command wrote: an ONNX model carrying the
    `fastsca.config` metadata entry (--onnx), or a torch.export archive holding `fastsca.json` (--torch-export)."""
    try:
        if flag == "--onnx":
            import onnx   # the export extra: --onnx has checked it is installed
            proto = onnx.load(str(path), load_external_data=False)
            return any(prop.key == "fastsca.config" for prop in proto.metadata_props)
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("/extra/fastsca.json") for name in archive.namelist())
    except Exception:   # noqa: BLE001  (whatever the file is, failing to read it as ours means not ours)
        return False


def _inputs(checkpoint: str) -> set[Path]:
    """The files the export reads: the checkpoint, or a model folder's files; none for a Hub repo id."""
    path = Path(checkpoint).expanduser()
    if path.is_dir():
        return {(path / name).resolve() for name in FOLDER_FILES}
    return {path.resolve()} if path.exists() else set()


def check_targets(args: argparse.Namespace) -> None:
    """Raise ExportError (one line) for a target that is a folder, in no folder, also an input, named twice,
    or an existing file this command did not write (unless --overwrite)."""
    targets = [(flag, path) for flag, path in (("--onnx", args.onnx), ("--torch-export", args.torch_export))
               if path is not None]
    inputs = _inputs(args.checkpoint)
    if len(targets) == 2 and targets[0][1].resolve() == targets[1][1].resolve():
        raise ExportError(f"--onnx and --torch-export both name {targets[0][1]}; give two file names")
    for flag, target in targets:
        if target.is_dir() or not target.parent.is_dir():
            raise ExportError(f"{flag} {target}: {'is a folder' if target.is_dir() else 'its folder does not exist'}; "
                              f"give a file name in an existing folder")
        if target.resolve() in inputs:
            raise ExportError(f"{flag} {target}: is the model being exported ({args.checkpoint}); give another "
                              f"file name")
        if target.exists() and not args.overwrite and not written_by_export(target, flag):
            raise ExportError(f"{flag} {target}: exists and was not written by fastsca.export; give another file "
                              f"name, or --overwrite to replace it")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m fastsca.export",
                                     description="\n\n".join(__doc__.split("\n\n")[1:3]),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", metavar="CKPT",
                        help="best.pt written by train.run, a folder written by fastsca.hub, or a Hub repo id")
    parser.add_argument("--onnx", type=Path, metavar="model.onnx", help="write an ONNX file (needs the export extra)")
    parser.add_argument("--torch-export", type=Path, metavar="model.pt2", help="write a torch.export program")
    parser.add_argument("--input", choices=("log-mel", "waveform"), default="log-mel",
                        help="what the graph takes: the log-mel (default; the front end is the caller's) or the "
                             "waveform (the front end inside the graph)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing target that fastsca.export did not write (an earlier export is "
                             "replaced without it; the model being exported never is)")
    args = parser.parse_args(argv)
    if args.onnx is None and args.torch_export is None:
        parser.error("give --onnx model.onnx, --torch-export model.pt2, or both")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    warnings.filterwarnings("ignore", category=FutureWarning)   # torch.export's notes on its own internals
    written = []
    try:
        if args.onnx is not None:
            check_onnx_packages()
        check_targets(args)
        trained = load_pretrained(args.checkpoint).trained
        waveform = args.input == "waveform"
        program = exported_program(trained, waveform)
        if args.onnx is not None:
            path = export_onnx(trained, args.onnx, program, waveform)
            written.append(str(path))
            difference = onnx_difference(trained, path, example_input(trained, 3, waveform), waveform)
            print(f"wrote {path}: input {input_text(trained, waveform)}; onnxruntime vs PyTorch, batch 3: max "
                  f"difference {difference:.2g}")
        if args.torch_export is not None:
            path = export_program(trained, args.torch_export, program, waveform)
            written.append(str(path))
            print(f"wrote {path}: torch.export.load({str(path)!r}).module()({input_name(waveform)}) -> (clip, frame)")
    except ValueError as error:   # ExportError, CheckpointError and PretrainedError are ValueErrors
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"interrupted; {'only ' + ', '.join(written) + ' written' if written else 'nothing written'}",
              file=sys.stderr)
        sys.exit(130)
    except OSError as error:
        print(f"error: cannot write the export ({error.strerror or error}); give a writable file name",
              file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
