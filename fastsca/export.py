"""`python -m fastsca.export CKPT --onnx model.onnx [--torch-export model.pt2]`: a trained model for other runtimes.

Both files hold the network from its input log-mel to its outputs; the front end stays outside the graph
(the STFT is not an ONNX operator that every runtime has). The input is `log_mel`, float32
(batch, 1, frames, n_mels): `fastsca.frontend.log_mel` of 16 kHz mono audio, or any equivalent with the
settings stored in the file (docs/deploy.md). The outputs are `clip` (batch, K) and `frame`
(batch, T', K) probabilities. The batch axis is dynamic; the time axis is fixed at the model's
input_frames, because the local branch of spatial attention (eq. 6) has a learned weight per input
frame (T -> T/r): a longer file is cut into windows, as `fastsca.tag` cuts it.

Both carry the reference attention path (`RunOptions(fused_attention=False)`) with the checkpoint's
weights: the fused ops (`fastsca::attention_*`) have no ONNX translation, and a torch.export program
holding them would run only where fastsca is installed. The two paths give the same outputs
(tests/test_attention.py). After writing, the command runs the ONNX file with onnxruntime against
PyTorch on a random log-mel and prints the largest difference. The label names and the front end's
settings go into the files (ONNX metadata `fastsca.config`; the .pt2's extra file `fastsca.json`).
"""
import argparse
import importlib
import json
import logging
import sys
import warnings
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fastsca.atomic import write_atomically
from fastsca.hub import load_pretrained
from fastsca.inference import TrainedModel
from fastsca.model import build_model
from fastsca.run_options import RunOptions

INPUT_NAME = "log_mel"
OUTPUT_NAMES = ("clip", "frame")
# The largest batch the exported graph is declared for (a bound torch.export needs; 4096 windows of 10 s
# are 11 hours of audio per call).
MAX_BATCH = 4096
INSTALL_HINT = 'pip install "fastsca[export]" (from a checkout: pip install -e ".[export]")'


class ExportError(ValueError):
    """An export that cannot be made; the message says why and what to do."""


class ExportableModel(nn.Module):
    """The model on its reference attention path, returning (clip, frame) as a plain tuple for the exporters."""

    def __init__(self, trained: TrainedModel) -> None:
        super().__init__()
        self.model = build_model(trained.model.config, RunOptions(fused_attention=False))
        self.model.load_state_dict(trained.model.state_dict())
        self.eval()

    def forward(self, log_mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:   # (B, 1, T, F)
        output = self.model(log_mel)
        return output.clip, output.frame


def example_input(trained: TrainedModel, batch: int = 2) -> torch.Tensor:
    """A random log-mel batch of the model's input shape, in the front end's dB range."""
    config = trained.model.config
    return torch.randn(batch, 1, config.input_frames, config.n_mels) * 20.0 - 40.0


def metadata(trained: TrainedModel) -> dict:
    """What a user of the exported file needs besides the graph: label names, front end, path taken."""
    return {"label_names": list(trained.label_names), "log_mel": asdict(trained.log_mel),
            "input": f"{INPUT_NAME}: float32 (batch, 1, {trained.model.config.input_frames}, "
                     f"{trained.model.config.n_mels}) log-mel in dB, fastsca.frontend.log_mel",
            "attention_path": "reference (fused_attention=False)"}


def _dynamic_batch() -> tuple[dict, ...]:
    return ({0: torch.export.Dim("batch", min=1, max=MAX_BATCH)},)


def exported_program(trained: TrainedModel) -> torch.export.ExportedProgram:
    """The model traced by torch.export, with a dynamic batch axis (both exports start from it)."""
    return torch.export.export(ExportableModel(trained), (example_input(trained),), dynamic_shapes=_dynamic_batch())


def check_onnx_packages() -> None:
    """Raise ExportError (one line, with the pip command) unless the export extra is installed."""
    for package in ("onnx", "onnxscript", "onnxruntime"):   # the exporter needs the first two, the check the third
        try:
            importlib.import_module(package)
        except ImportError:
            raise ExportError(f"--onnx needs the {package} package: {INSTALL_HINT}") from None


def export_onnx(trained: TrainedModel, path: str | Path, program: torch.export.ExportedProgram | None = None) -> Path:
    """Write the model as ONNX (opset 18, dynamic batch) with its metadata, from `program` when given (it
    saves tracing again); needs onnx and onnxscript."""
    check_onnx_packages()
    import onnx   # the export extra: not needed for anything else
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)   # its per-op notes on missing torchvision ops
    onnx_program = torch.onnx.export(program if program is not None else exported_program(trained), dynamo=True,
                                     input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES), opset_version=18,
                                     external_data=False, verbose=False)
    proto = onnx_program.model_proto
    onnx.helper.set_model_props(proto, {"fastsca.config": json.dumps(metadata(trained))})
    path = Path(path)
    write_atomically(path, lambda tmp: onnx.save(proto, str(tmp)), keep_suffix=True)
    return path


def export_program(trained: TrainedModel, path: str | Path, program: torch.export.ExportedProgram | None = None
                   ) -> Path:
    """Write the model as a torch.export program (.pt2, dynamic batch): `torch.export.load(path).module()`."""
    program = program if program is not None else exported_program(trained)
    path = Path(path)
    write_atomically(path, keep_suffix=True, write=lambda tmp: torch.export.save(program, str(tmp),
                                                          extra_files={"fastsca.json": json.dumps(metadata(trained))}))
    return path


def onnx_difference(trained: TrainedModel, path: str | Path, log_mel: torch.Tensor) -> float:
    """Largest absolute difference between onnxruntime's outputs for `log_mel` and PyTorch's."""
    import onnxruntime   # the export extra (check_onnx_packages)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outputs = session.run(list(OUTPUT_NAMES), {INPUT_NAME: log_mel.numpy()})
    with torch.no_grad():
        expected = ExportableModel(trained)(log_mel)
    return max(float(np.abs(got - want.numpy()).max()) for got, want in zip(outputs, expected))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m fastsca.export",
                                     description="\n\n".join(__doc__.split("\n\n")[1:3]),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", metavar="CKPT",
                        help="best.pt written by train.run, a folder written by fastsca.hub, or a Hub repo id")
    parser.add_argument("--onnx", type=Path, metavar="model.onnx", help="write an ONNX file (needs the export extra)")
    parser.add_argument("--torch-export", type=Path, metavar="model.pt2", help="write a torch.export program")
    args = parser.parse_args(argv)
    if args.onnx is None and args.torch_export is None:
        parser.error("give --onnx model.onnx, --torch-export model.pt2, or both")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    warnings.filterwarnings("ignore", category=FutureWarning)   # torch.export's notes on its own internals
    written = []
    try:
        for target in (args.onnx, args.torch_export):
            if target is not None and (target.is_dir() or not target.parent.is_dir()):
                raise ExportError(f"{target}: {'is a folder' if target.is_dir() else 'its folder does not exist'}; "
                                  f"give a file name in an existing folder")
        if args.onnx is not None:
            check_onnx_packages()
        trained = load_pretrained(args.checkpoint).trained
        program = exported_program(trained)
        if args.onnx is not None:
            path = export_onnx(trained, args.onnx, program)
            written.append(str(path))
            difference = onnx_difference(trained, path, example_input(trained, batch=3))
            print(f"wrote {path}: input {INPUT_NAME} (batch, 1, {trained.model.config.input_frames}, "
                  f"{trained.model.config.n_mels}); onnxruntime vs PyTorch, batch 3: max difference {difference:.2g}")
        if args.torch_export is not None:
            path = export_program(trained, args.torch_export, program)
            written.append(str(path))
            print(f"wrote {path}: torch.export.load({str(path)!r}).module()(log_mel) -> (clip, frame)")
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
