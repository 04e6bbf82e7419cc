"""The tagging engine: an audio file streamed through a trained model in bounded memory -> `TagResult`
(`tag_file`; `tag_batch` runs several files' windows through the model together, for batches of clips).

The file is read in blocks at the model's sample rate (fastsca/tagging/stream.py), turned into one
continuous log-mel, and cut into model windows that overlap by half a window, the last one aligned to
the file's end, so no window holds padding and a tag depends only on the audio. A file shorter than a
window is repeated to fill it. A class's clip probability is its largest over the windows; the frame
probabilities (10 Hz) are stitched from each window's middle, so an event crossing a join is seen whole.
Digital silence (every log-mel bin below SILENT_DB) gets probability 0: a silent file is reported as
such, with no tag. Memory stays bounded whatever the file's length; only the (T', K) frame
probabilities grow with it (10 Hz x K x 4 bytes: 1.4 MB an hour for 10 classes, 76 MB for 527); a
figure's view keeps only its range's log-mel and attention maps, and embeddings (asked for) keep the
(T', C) frame features.

Embeddings: the frame embeddings are the head's frame features x_t (the input of the MIL pooling, eq. 2's
by default), stitched like the frame probabilities; the clip embedding is their mean weighted by the pooling's
weights over the whole file (`MILPooling.clip_embedding`), which for a file of one window is the model's
own weighting.
"""
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from tqdm import tqdm

from fastsca.attention import SpatialAttention
from fastsca.audio import AudioError
from fastsca.events import EventConfig, detect_events
from fastsca.inference import CheckpointError, TrainedModel
from fastsca.tagging.result import PlotView, TagResult
from fastsca.tagging.stream import LogMelStream, WindowCutter, WindowPlan, audio_frames, read_blocks, source_name

# A log-mel frame whose every bin is below this is digital silence: white noise of +-1 LSB at 16 bits
# reads about -73 dB in every bin with the default front end, the quietest background of the built-in
# set about -45 dB, and exact zeros read the amin floor (-100 dB).
SILENT_DB = -70.0
# How far past a figure's end the frame probabilities are kept for its events: more than the median filter's
# half-width and the gap joined (train/postprocess.py's grid keeps half the median plus the gap at 0.95 s or less),
# so the events drawn are those of the whole file.
EVENT_REACH_SECONDS = 1.0


@dataclass(frozen=True)
class StreamConfig:
    """How a file is streamed through the model."""

    overlap: float = 0.5
    """Fraction of a window shared with the next one; each keeps the frames nearest its middle."""
    windows_per_batch: int = 32
    """Model windows per forward pass (a 2 s window of the CPU-profile model is ~1 MB of activations)."""
    block_seconds: float = 30.0
    """Seconds of audio decoded at a time."""

    def __post_init__(self) -> None:
        if not 0 <= self.overlap < 1:
            raise ValueError(f"overlap must be in [0, 1), got {self.overlap}")
        if self.windows_per_batch < 1 or self.block_seconds <= 0:
            raise ValueError("windows_per_batch must be >= 1 and block_seconds > 0")


@dataclass(frozen=True)
class Asked:
    """What to keep of a file beyond its clip probabilities."""

    events: EventConfig | None = None
    """Detect events with this detector (None: no events)."""
    view: tuple[float, float] | None = None
    """(start, end) seconds: keep the log-mel and spatial attention maps over that range for a figure."""
    frames_until: float | None = None
    """Keep the frame probabilities only up to this second (None: all), so memory stays flat in the file's
    length when they are not used; the clip probabilities still cover the whole file."""
    embeddings: bool = False
    """Keep the frame embeddings and the clip embedding."""


def check_front_end(trained: TrainedModel, source: str) -> None:
    """A model whose front end does not make the windows its network takes (another mel count or window length,
    e.g. a hand-edited config.json) is a one-line CheckpointError before any audio is read."""
    config, front = trained.model.config, trained.log_mel
    if config.n_mels != front.n_mels or config.input_frames != front.frames:
        raise CheckpointError(f"{source}: its front end makes {front.frames} frames x {front.n_mels} mel bins per "
                              f"window but its network takes {config.input_frames} x {config.n_mels}; the model "
                              f"folder was edited or mixed from two models: write it again with `python -m "
                              f"fastsca.hub CKPT --out FOLDER`")


def _spatial_modules(model: torch.nn.Module) -> dict[str, SpatialAttention]:
    """The model's spatial attention modules by block ("blocks.6.attention.spatial" -> "block 7")."""
    return {f"block {int(name.split('.')[1]) + 1}": module for name, module in model.named_modules()
            if isinstance(module, SpatialAttention)}


def _blocks_filling_a_window(path: str, blocks, clip_samples: int) -> tuple[list[np.ndarray], int | None]:
    """The first blocks of a stream, read until they fill one window: (blocks, None), or, when the whole
    file is shorter, (that file repeated to one window, its true length)."""
    head, total = [], 0
    for block in blocks:
        head.append(block)
        total += len(block)
        if total >= clip_samples:
            return head, None
    if total == 0:
        raise AudioError(f"{path}: the file holds no samples; re-download or re-encode it")
    return [np.resize(np.concatenate(head), clip_samples)], total


def _chain(head: list[np.ndarray], rest):
    """The blocks already read, then the rest of the stream."""
    yield from head
    yield from rest


def _grown(rows: np.ndarray, kept: int, stop: int) -> np.ndarray:
    """`rows` (T', width), with room for `stop` rows (its first `kept` rows carried over) when it has less."""
    if stop <= len(rows):
        return rows
    grown = np.zeros((max(stop, 2 * len(rows)), rows.shape[1]), np.float32)
    grown[:kept] = rows[:kept]
    return grown


@dataclass
class _Captured:
    """What forward hooks took from the model during one batch."""

    spatial: dict[str, torch.Tensor] = field(default_factory=dict)
    """Each spatial attention module's logit (eq. 7), by block."""
    features: torch.Tensor | None = None
    """The pooling's input x_t, (B, T', C)."""


def _hooked_forward(model: torch.nn.Module, mel: torch.Tensor, asked: Asked) -> tuple[torch.Tensor, _Captured]:
    """The model's output on (B, 1, T, F) windows, with the spatial logits (for a view) and the pooling's input
    (for embeddings) taken by forward hooks."""
    captured = _Captured()
    hooks = []
    if asked.view is not None:   # SpatialAttention returns the logit of eq. 7; M_s is its sigmoid
        hooks += [module.register_forward_hook(lambda m, i, out, name=name: captured.spatial.__setitem__(name, out))
                  for name, module in _spatial_modules(model).items()]
    if asked.embeddings:
        hooks.append(model.pooling.register_forward_hook(lambda m, inputs, out: setattr(captured, "features",
                                                                                        inputs[0])))
    try:
        return model(mel), captured
    finally:
        for hook in hooks:
            hook.remove()


class _Batcher:
    """Windows of one file or of several, run through the model `size` at a time: each window is queued with its
    file's runner, and a full batch runs once and hands every runner its windows' outputs in order. Digital
    silence (every bin of a log-mel frame below SILENT_DB) gets probability 0."""

    def __init__(self, model: torch.nn.Module, asked: Asked, size: int) -> None:
        self.model, self.asked, self.size = model, asked, size
        self.device = next(model.parameters()).device
        self.queue: list[tuple["_WindowRunner", int, torch.Tensor]] = []   # (runner, start, (window, n_mels))

    def push(self, runner: "_WindowRunner", windows: list[tuple[int, torch.Tensor]]) -> None:
        """Queue a file's windows (start, (window, n_mels) log-mel), running each full batch."""
        for start, window in windows:
            self.queue.append((runner, start, window))
            if len(self.queue) == self.size:
                self.flush()

    @torch.inference_mode()
    def flush(self) -> None:
        """Run the queued windows and hand each runner its outputs."""
        if not self.queue:
            return
        mel = torch.stack([w for _, _, w in self.queue])[:, None].to(self.device)   # (B, 1, T, F)
        output, captured = _hooked_forward(self.model, mel, self.asked)
        silent_in = (mel[:, 0].amax(dim=2) < SILENT_DB).cpu()                          # (B, T)
        clip, frame = output.clip.float().cpu(), output.frame.float().cpu()            # (B, K), (B, T', K)
        silent_out = silent_in.view(len(self.queue), frame.shape[1], -1).all(dim=2)    # (B, T')
        frame[silent_out] = 0.0
        clip[silent_in.all(dim=1)] = 0.0
        clip, frame = clip.numpy(), frame.numpy()
        maps = {name: torch.sigmoid(m[:, 0]).float().cpu().numpy() for name, m in captured.spatial.items()}
        features = captured.features.float().cpu().numpy() if captured.features is not None else None
        for i, (runner, start, _) in enumerate(self.queue):
            runner.take(start, clip[i], frame[i], {name: m[i] for name, m in maps.items()},
                        None if features is None else features[i])
        self.queue = []


class _WindowRunner:
    """One file's window outputs stitched in order, keeping only what is asked for."""

    def __init__(self, trained: TrainedModel, plan: WindowPlan, asked: Asked, expected_frames: int,
                 frame_limit: int | None) -> None:
        self.trained, self.plan, self.asked = trained, plan, asked
        self.model = trained.model
        self.device = next(self.model.parameters()).device
        self.frame_seconds = plan.ratio * trained.log_mel.hop_length / trained.log_mel.sample_rate
        self.clip = np.zeros(len(trained.label_names), np.float32)
        # the stitched (T', K) frame probabilities and (T', C) frame embeddings, filled in place: sized from the
        # file's header (grown if that under-counts), so no batch's output is kept alive and no final
        # concatenation doubles the peak
        self.frames = np.zeros((expected_frames, len(trained.label_names)), np.float32)
        self.embeddings = (np.zeros((expected_frames, self.model.pooling.tagging.in_features), np.float32)
                           if asked.embeddings else None)
        self.frame_limit = frame_limit            # output frames kept at most (None: all)
        self.maps: dict[str, list[np.ndarray]] = {name: [] for name in _spatial_modules(self.model)}
        self.handed_over = 0                      # output frames stitched so far
        self.pending = None                       # (start, frame probs, maps, embeddings) of the last window run

    def take(self, start: int, clip: np.ndarray, frame: np.ndarray, maps: dict[str, np.ndarray],
             features: np.ndarray | None) -> None:
        """Take one window's outputs (clip (K,), frame (T', K), spatial maps, frame features (T', C)) and stitch
        the window before it, whose share is known only now that this window's start is."""
        self.clip = np.maximum(self.clip, clip)
        if self.pending is not None:
            self._stitch(self.plan.join(self.pending[0], start))
        self.pending = (start, frame, maps, features)

    def _stitch(self, end: int) -> None:
        """Keep the pending window's output frames up to output frame `end`."""
        start, frame, maps, features = self.pending
        first = start // self.plan.ratio
        limit = end if self.frame_limit is None else self.frame_limit
        kept_from, kept_to = min(self.handed_over, limit), min(end, limit)   # output frames to store
        self.frames = _grown(self.frames, kept_from, kept_to)
        self.frames[kept_from:kept_to] = frame[kept_from - first: kept_to - first]
        if features is not None:
            self.embeddings = _grown(self.embeddings, kept_from, kept_to)
            self.embeddings[kept_from:kept_to] = features[kept_from - first: kept_to - first]
        if self.asked.view is not None:
            self._keep_maps(maps, first, end, frame.shape[0])
        self.handed_over = end

    def _keep_maps(self, maps: dict[str, np.ndarray], first: int, end: int, window_frames: int) -> None:
        """Keep the pending window's attention maps over its share [handed_over, end) within the view."""
        lo = int(self.asked.view[0] / self.frame_seconds)
        hi = math.ceil(self.asked.view[1] / self.frame_seconds)
        if self.handed_over < hi and end > lo:
            for name, m in maps.items():
                per_frame = m.shape[0] // window_frames                       # map rows per output frame
                a, b = max(self.handed_over, lo) - first, min(end, hi) - first
                # a copy: a slice would keep the whole batch's maps alive (with the frame probabilities kept as
                # slices too, a one-hour file with --plot held 1.1 GB at the end against 0.46 GB for 10 min)
                self.maps[name].append(m[a * per_frame: b * per_frame].copy())

    def finish(self, keep_frames: int | None) -> np.ndarray:
        """Stitch the last window; (T', K) frame probabilities, cut to `keep_frames` when given."""
        start, frame, _, _ = self.pending
        end = start // self.plan.ratio + frame.shape[0]
        self._stitch(end if keep_frames is None else min(end, keep_frames))
        return self.frames[: self.kept]

    @property
    def kept(self) -> int:
        """Output frames stored."""
        return self.handed_over if self.frame_limit is None else min(self.handed_over, self.frame_limit)

    @torch.inference_mode()
    def clip_embedding(self) -> np.ndarray:
        """(C,) the stitched frame embeddings' mean weighted by the pooling's weights over the whole file."""
        x = torch.from_numpy(self.embeddings[: self.kept]).to(self.device)[None]   # (1, T', C)
        return self.model.pooling.clip_embedding(x)[0].float().cpu().numpy()


@dataclass
class _Job:
    """One file on its way through the engine: streamed, its windows queued, its outputs being stitched."""

    name: str
    """What the result and its events are called."""
    source_label: str
    """What messages call the file."""
    runner: "_WindowRunner"
    samples: int
    """The file's samples at the model's rate."""
    short: bool
    """The file is shorter than a window (repeated to fill one)."""
    view_mel: list[torch.Tensor]
    """The log-mel frames in the figure's range."""


def _start(trained: TrainedModel, path: "str | Path | BinaryIO", config: StreamConfig, asked: Asked,
           name: str | None, batcher: _Batcher) -> _Job:
    """Stream a file through the log-mel and the window cutter, queueing its windows with `batcher`."""
    source_label = source_name(path)
    settings, model_config = trained.log_mel, trained.model.config
    plan = WindowPlan.for_model(model_config.input_frames, model_config.output_frames, config.overlap)
    file_frames, file_rate = audio_frames(path)
    blocks = read_blocks(path, settings.sample_rate, config.block_seconds)
    head, short_length = _blocks_filling_a_window(source_label, blocks, settings.clip_samples)
    source = head if short_length is not None else _chain(head, blocks)
    expected = math.ceil(file_frames * settings.sample_rate / file_rate / (settings.hop_length * plan.ratio))
    until = None if asked.embeddings else asked.frames_until    # embeddings cover the whole file
    frame_seconds = plan.ratio * settings.hop_length / settings.sample_rate
    limit = None if until is None else math.ceil(until / frame_seconds)
    capacity = max(expected, model_config.output_frames)
    runner = _WindowRunner(trained, plan, asked, capacity if limit is None else min(capacity, limit), limit)
    mels = LogMelStream(settings)
    view_mel = _stream_windows(runner, batcher, mels, WindowCutter(plan), source, asked.view, source_label,
                               round(file_frames / file_rate, 1))
    return _Job(name=source_label if name is None else name, source_label=source_label, runner=runner,
                samples=mels.samples if short_length is None else short_length, short=short_length is not None,
                view_mel=view_mel)


def _result(trained: TrainedModel, job: _Job, asked: Asked) -> TagResult:
    """A file's result once all its windows have run."""
    settings, runner = trained.log_mel, job.runner
    frame = runner.finish(math.ceil(job.samples / (settings.hop_length * runner.plan.ratio)) if job.short else None)
    if not (np.isfinite(frame).all() and np.isfinite(runner.clip).all()):
        raise CheckpointError(f"the model gave NaN or infinite probabilities on {job.source_label}; its checkpoint "
                              f"is damaged: use best.pt or latest.pt as written by `python -m train.run`")
    frame_seconds, name = runner.frame_seconds, job.name
    return TagResult(
        name=name, seconds=job.samples / settings.sample_rate, label_names=trained.label_names, clip=runner.clip,
        frame=frame, frame_seconds=frame_seconds, silent=not runner.clip.any() and not frame.any(),
        events=(detect_events(frame, frame_seconds, trained.label_names, name, asked.events, clip_probs=runner.clip)
                if asked.events is not None else []),
        embedding=runner.clip_embedding() if asked.embeddings else None,
        frame_embeddings=runner.embeddings[: runner.kept] if asked.embeddings else None,
        view=None if asked.view is None else _plot_view(asked.view, job.view_mel, runner, len(frame), settings))


def tag_file(trained: TrainedModel, path: "str | Path | BinaryIO", config: StreamConfig = StreamConfig(),
             asked: Asked = Asked(), name: str | None = None) -> TagResult:
    """Tag one audio file (a path, or an open binary file such as an archive member), streamed in bounded
    memory, keeping what `asked` asks for beyond the clip probabilities; the result and its events are called
    `name` (default: the path, or the open file's name). AudioError or CheckpointError (one line) when it
    cannot be read or the model gives non-finite probabilities."""
    batcher = _Batcher(trained.model, asked, config.windows_per_batch)
    job = _start(trained, path, config, asked, name, batcher)
    batcher.flush()
    return _result(trained, job, asked)


def tag_batch(trained: TrainedModel, paths: list["str | Path | BinaryIO"], config: StreamConfig = StreamConfig(),
              asked: Asked = Asked()) -> list[TagResult]:
    """Tag several files as `tag_file` tags each, their windows run through the model together (a batch of
    short clips fills a forward pass instead of running one window at a time); each file's outputs are kept
    until all have run, so give as many as fit in memory. The first file that cannot be read raises."""
    batcher = _Batcher(trained.model, asked, config.windows_per_batch)
    jobs = [_start(trained, path, config, asked, None, batcher) for path in paths]
    batcher.flush()
    return [_result(trained, job, asked) for job in jobs]


def _stream_windows(runner: _WindowRunner, batcher: _Batcher, mels: LogMelStream, cutter: WindowCutter, source,
                    view: tuple[float, float] | None, name: str, seconds: float) -> list[torch.Tensor]:
    """Push every block through the log-mel and the window cutter and queue the windows with `batcher`; the
    log-mel frames that fall in the view."""
    mel_rate = mels.config.sample_rate / mels.config.hop_length             # log-mel frames per second
    view_frames: list[torch.Tensor] = []

    def take(mel: torch.Tensor) -> list[tuple[int, torch.Tensor]]:
        """Keep the frames of `mel` (the stream's latest) that fall in the view; the windows they complete."""
        if view is not None:
            first = mels.frames - len(mel)
            lo, hi = int(view[0] * mel_rate) - first, math.ceil(view[1] * mel_rate) - first
            if hi > 0 and lo < len(mel):   # a clone: a slice would keep the whole block's log-mel alive
                view_frames.append(mel[max(0, lo): hi].clone())
        return cutter.push(mel)

    with tqdm(total=seconds, unit="s", desc=Path(name).name, leave=False, disable=None,
              bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s [{elapsed}<{remaining}]") as bar:
        for block in source:
            batcher.push(runner, take(mels.push(block)))
            bar.update(len(block) / mels.config.sample_rate)
        batcher.push(runner, take(mels.finish()) + cutter.finish())
    return view_frames


def _plot_view(view: tuple[float, float], view_frames: list[torch.Tensor], runner: _WindowRunner, frames: int,
               settings) -> PlotView:
    """The figure's part of the file: its range cut to the analysed audio, the log-mel and the attention maps."""
    mel_rate = settings.sample_rate / settings.hop_length
    end = max(view[0], min(view[1], frames * runner.frame_seconds))   # end == start: beyond the file
    log_mel = torch.cat(view_frames).numpy() if view_frames else np.zeros((0, settings.n_mels), np.float32)
    log_mel = log_mel[: math.ceil((end - view[0]) * mel_rate)]
    maps = {block: np.concatenate(parts) for block, parts in runner.maps.items() if parts}
    return PlotView(start=view[0], end=end, log_mel=log_mel, spatial_maps=maps)
