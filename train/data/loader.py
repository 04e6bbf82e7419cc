"""Log-mel batches from HDF5 shards: a DALI pipeline fed by a parallel external_source.

Data path: a sampler (train/data/sampler.py) picks this rank's clips; DALI's Python workers (spawned,
each opening the shards lazily) read them as int16 waveforms and multi-hot targets
(train/data/dali_source.py); DALI computes spectrogram -> mel_filter_bank -> to_decibels on the GPU when
the training device is CUDA (`device_id` = that GPU) and on the CPU otherwise (`device_id=None`);
the result, mel-major [B, 64, 401], is copied into torch on the training device, transposed and cut
to [B, 1, 400, 64], then mixed up / SpecAugmented there (train/data/augment.py). The DALI settings come
from `LogMelConfig`, so this agrees with `fastsca.frontend.log_mel` (tests/test_loader.py).

Epochs and resume with DALI's prefetching: the pipeline is built once and reused; each pass over the
loader is one DALI epoch whose clip order is written to a file before DALI starts prefetching it
(the workers were pickled at start-up and cannot be told otherwise). DALI drops a batch in which the
source stops, so the order is padded to whole batches and the padding cut off here. DALI prefetches
only within the pass's planned order, and the sampler's position counts only batches handed out, so
prefetching never changes what comes next; a pass ends by running DALI into its end of epoch. A pass
abandoned mid-epoch (a `break`) leaves DALI mid-epoch, which it cannot reset; the next pass (or
`load_state_dict`/`set_epoch`) then rebuilds the pipeline (a second or two) and continues from the
sampler's position, which counts only the batches actually handed out. Batches are read with
`pipeline.run()` + `feed_ndarray` rather than DALIGenericIterator because the loader, not DALI,
knows each pass's batch count and the real size of its last batch, and must decide when DALI resets.

Scripts that use this loader need the `if __name__ == "__main__":` guard: the workers are spawned.
"""
import math
import os
import shutil
import tempfile
import weakref
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from nvidia.dali import fn, types
from nvidia.dali.pipeline import Pipeline
from nvidia.dali.tensors import TensorGPU
from nvidia.dali.plugin.pytorch import feed_ndarray

from fastsca.frontend import LogMelConfig, hann_window
from train.data.augment import SpecAugmentConfig, mix, mix_strong, mixup_pairs, spec_augment, unmasked_frames
from train.data.dali_source import ClipSource, order_path
from train.data.frame_targets import StrongTargets
from train.data.sampler import SAMPLERS, ClipSampler
from train.data.shards import ShardIndex


@dataclass(frozen=True)
class LoaderConfig:
    """How batches are drawn, read and augmented."""

    batch_size: int = 32
    """Clips per batch (per rank)."""
    sampler: str = "balanced"
    """balanced (PANNs round-robin over classes), shuffle, or sequential (evaluation)."""
    seed: int = 0
    """Seed of the sampler and the augmentations; with the epoch it fixes every batch."""
    num_workers: int = 2
    """DALI Python worker processes reading the shards; 0 reads in the main process."""
    dali_threads: int = 2
    """DALI CPU threads for the log-mel ops (CPU pipeline) and input handling."""
    prefetch_batches: int = 2
    """Batches DALI prepares ahead (its prefetch_queue_depth)."""
    mixup_alpha: float = 0.0
    """Mixup Beta(alpha, alpha) parameter; 0 disables mixup."""
    spec_augment: bool = False
    """Apply SpecAugment time/frequency masks with `spec_augment_masks`."""
    spec_augment_masks: SpecAugmentConfig = field(default_factory=SpecAugmentConfig)
    """Mask counts and widths used when spec_augment is on."""
    drop_last: bool = True
    """Drop the last partial batch; every rank then yields the same number of batches (needed by DDP)."""

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler {self.sampler!r} is not one of {', '.join(SAMPLERS)}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.num_workers < 0 or self.dali_threads < 1 or self.prefetch_batches < 1:
            raise ValueError("num_workers must be >= 0, dali_threads and prefetch_batches >= 1")
        if self.mixup_alpha < 0:
            raise ValueError(f"mixup_alpha must be >= 0, got {self.mixup_alpha}")



def _clip_length(samples: int, sample_rate: int) -> str:
    """'10 s clips (160000 samples at 16000 Hz)'."""
    return f"{samples / sample_rate:g} s clips ({samples} samples at {sample_rate} Hz)"

class LogMelLoader:
    """Iterates (log_mel (B, 1, T, F) float32, target (B, K) float32) on `device`, one epoch a pass; with
    `strong_frames` > 0, (log_mel, target, StrongTargets) with the frame targets at that many frames a clip (the
    model's output frames: train/data/frame_targets.py), mixed up with the clips."""

    def __init__(self,
                 data_path: str | Path | ShardIndex,
                 config: LoaderConfig = LoaderConfig(),
                 log_mel: LogMelConfig = LogMelConfig(),
                 device: torch.device = torch.device("cpu"),
                 rank: int = 0,
                 world_size: int = 1,
                 strong_frames: int = 0) -> None:
        # or an opened index: a split, or part of one (train/data/holdout.py's SubsetIndex reads the same way)
        self.index = ShardIndex.open(data_path) if isinstance(data_path, (str, Path)) else data_path
        if (self.index.sample_rate, self.index.clip_samples) != (log_mel.sample_rate, log_mel.clip_samples):
            raise ValueError(f"{data_path} holds {_clip_length(self.index.clip_samples, self.index.sample_rate)} "
                             f"but the model takes {_clip_length(log_mel.clip_samples, log_mel.sample_rate)}; "
                             f"a model takes the clip length of the data it was trained on (for the built-in set "
                             f"train.run's --clip-seconds; packed AudioSet clips are 10 s at 16000 Hz)")
        self.config = config
        self.log_mel = log_mel
        self.strong_frames = strong_frames
        self.device = torch.device(device)
        self.sampler = ClipSampler(config.sampler, self.index.num_clips, config.seed, rank, world_size,
                                   self.index.class_members() if config.sampler == "balanced" else None)
        per_rank = self.index.num_clips // world_size if config.drop_last else len(self.sampler)
        self._batches = per_rank // config.batch_size if config.drop_last else math.ceil(per_rank / config.batch_size)
        if self._batches == 0:
            raise ValueError(f"a batch of {config.batch_size} clips is more than the {per_rank} clips that {data_path} "
                             f"gives each of {world_size} process(es), and only full batches are trained on; use "
                             f"--batch-size {per_rank} or less, or a larger split")
        self._pipe: Pipeline | None = None
        self._order_dir = tempfile.mkdtemp(prefix="fastsca-loader-")
        # Removes the clip-order files even when close() is never called (garbage collection, exit).
        self._remove_order_dir = weakref.finalize(self, shutil.rmtree, self._order_dir, ignore_errors=True)
        self._dali_epoch = 0
        self._builds = 0
        self._pass = 0              # id of the current pass; a superseded iterator refuses to go on
        self._mid_epoch = False     # DALI is inside an epoch that no pass will finish

    @property
    def label_names(self) -> list[str]:
        return list(self.index.label_names)

    @property
    def num_clips(self) -> int:
        """Clips in the whole split (all ranks)."""
        return self.index.num_clips

    def __len__(self) -> int:
        """Batches in a full epoch on this rank."""
        return self._batches

    @property
    def _epoch_samples(self) -> int:
        """Clips this rank hands out per epoch."""
        return self._batches * self.config.batch_size if self.config.drop_last else len(self.sampler)

    def set_epoch(self, epoch: int) -> None:
        """Start `epoch` from its beginning; a no-op when already in it (e.g. just restored mid-epoch)."""
        if epoch != self.sampler.epoch:
            self._abandon_dali_epoch()
            self.sampler.set_epoch(epoch)

    def state_dict(self) -> dict:
        """Where the loader is: the next pass resumes after the last batch handed out."""
        return {"sampler": self.sampler.state_dict(), "batch_size": self.config.batch_size}

    def load_state_dict(self, state: dict) -> None:
        if state["batch_size"] != self.config.batch_size:
            raise ValueError(f"loader state has batch_size {state['batch_size']} but this loader has "
                             f"{self.config.batch_size}; resume with the same batch size")
        self._abandon_dali_epoch()
        self.sampler.load_state_dict(state["sampler"])

    def _build(self) -> Pipeline:
        """The DALI pipeline: parallel external_source -> int16 to float -> log-mel, on the chosen device."""
        self._builds += 1
        self._dali_epoch = 0
        self._order_prefix = os.path.join(self._order_dir, f"build{self._builds}-epoch")
        c, lm, on_gpu = self.config, self.log_mel, self.device.type == "cuda"
        pipe = Pipeline(batch_size=c.batch_size, num_threads=c.dali_threads,
                        device_id=torch.cuda.current_device() if on_gpu and self.device.index is None
                        else self.device.index, seed=c.seed,
                        prefetch_queue_depth=c.prefetch_batches, py_num_workers=max(c.num_workers, 1),
                        py_start_method="spawn")
        with pipe:
            # Shared-memory slots sized for a whole sample up front, so DALI never has to grow them.
            parallel = {"parallel": True, "bytes_per_sample_hint": 2 * self.index.clip_samples
                        + (self.strong_frames + 1) * self.index.num_classes + 4097} if c.num_workers > 0 else {}
            outputs = 4 if self.strong_frames else 2
            waveform, target, *strong = fn.external_source(
                source=ClipSource(self.index, self._order_prefix, self.strong_frames), num_outputs=outputs,
                batch=False, dtype=[types.INT16, *[types.UINT8] * (outputs - 1)], **parallel)
            if on_gpu:
                waveform = waveform.gpu()
            waveform = fn.cast(waveform, dtype=types.FLOAT) * (1.0 / 32768.0)
            power = fn.spectrogram(waveform, nfft=lm.n_fft, window_length=lm.window_length,
                                   window_step=lm.hop_length, window_fn=hann_window(lm.window_length).tolist(),
                                   center_windows=True, reflect_padding=lm.pad_mode == "reflect", power=2)
            mel = fn.mel_filter_bank(power, sample_rate=lm.sample_rate, nfilter=lm.n_mels, freq_low=lm.f_min,
                                     freq_high=lm.f_max, mel_formula="slaney", normalize=True)
            # reference=1.0: DALI's default reference is each clip's own maximum, librosa's is 1.
            db = fn.to_decibels(mel, multiplier=10.0, reference=1.0, cutoff_db=lm.cutoff_db)
            pipe.set_outputs(db, target, *strong)
        pipe.build()
        return pipe

    def _to_torch(self, dali_out, dtype: torch.dtype) -> torch.Tensor:
        """Copy a dense DALI batch into a new torch tensor on the training device."""
        tensor = dali_out.as_tensor()
        if isinstance(tensor, TensorGPU):       # DALI copies on torch's stream: later torch ops are ordered after it
            out = torch.empty(tensor.shape(), dtype=dtype, device=self.device)
            return feed_ndarray(tensor, out, cuda_stream=torch.cuda.current_stream(self.device))
        out = feed_ndarray(tensor, torch.empty(tensor.shape(), dtype=dtype))
        return out.to(self.device, non_blocking=True)

    def _finish_dali_epoch(self) -> None:
        """Run DALI into its end of epoch (no work: the prefetched tail is all StopIteration) and reset."""
        try:
            self._pipe.run()
        except StopIteration:
            pass
        else:
            raise RuntimeError("DALI produced more batches than the clip order holds")
        self._pipe.reset()
        os.unlink(order_path(self._order_prefix, self._dali_epoch))
        self._dali_epoch += 1

    def _abandon_dali_epoch(self) -> None:
        """Drop a pipeline left mid-epoch by an abandoned pass; the next pass builds a fresh one."""
        if self._mid_epoch:
            self._pipe = None
            self._mid_epoch = False
        self._pass += 1

    def __iter__(self):
        self._abandon_dali_epoch()
        return self._iterate(self._pass)

    def _iterate(self, this_pass: int):
        c, sampler = self.config, self.sampler
        if self._pipe is None:
            self._pipe = self._build()
        if sampler.position >= self._epoch_samples:         # restored from a state at the epoch's very end
            sampler.set_epoch(sampler.epoch + 1)
        epoch, first = sampler.epoch, sampler.position
        indices = sampler.epoch_indices()[first:self._epoch_samples]
        n_batches = math.ceil(len(indices) / c.batch_size)
        padding = np.full(n_batches * c.batch_size - len(indices), indices[-1])
        np.save(order_path(self._order_prefix, self._dali_epoch), np.concatenate([indices, padding]))
        self._mid_epoch = True
        for b in range(n_batches):
            if this_pass != self._pass:
                raise RuntimeError("this loader iterator was superseded by a newer pass over the loader")
            try:
                outputs = self._pipe.run()
            except Exception:
                # a worker's ShardError arrives as a bare Exception holding its traceback's text; re-check
                # here so the error is the one-line ShardError
                self.index.check_unchanged()
                raise
            real = min(c.batch_size, len(indices) - b * c.batch_size)
            batch = self._augmented(outputs, real,
                                    np.random.default_rng([c.seed, epoch, sampler.rank, first // c.batch_size + b]))
            if b == n_batches - 1:
                self._finish_dali_epoch()
                self._mid_epoch = False
                sampler.set_epoch(epoch + 1)
            else:
                sampler.advance(real)
            yield batch

    def _augmented(self, outputs: tuple, real: int, rng: np.random.Generator) -> tuple:
        """The first `real` clips of a DALI batch in torch, mixed up and SpecAugmented as configured:
        (log_mel, target), with (..., StrongTargets) where the loader reads frame targets."""
        c = self.config
        db = self._to_torch(outputs[0], torch.float32)                                  # (B, F, T + 1)
        log_mel = db[:real, None, :, : self.log_mel.frames].transpose(2, 3).contiguous()   # (B, 1, T, F)
        target = self._to_torch(outputs[1], torch.uint8)[:real].float()                # (B, K)
        strong = None
        if self.strong_frames:
            strong = StrongTargets(self._to_torch(outputs[2], torch.uint8)[:real].float(),        # (B, T', K)
                                   self._to_torch(outputs[3], torch.uint8)[:real, 0].float())    # (B,)
        if c.mixup_alpha > 0:
            lam, partner = mixup_pairs(real, c.mixup_alpha, rng, log_mel.device)
            log_mel, target = mix(log_mel, lam, partner), mix(target, lam, partner)
            strong = mix_strong(strong, lam, partner) if strong is not None else None
        if c.spec_augment:
            log_mel, time_masked = spec_augment(log_mel, c.spec_augment_masks, rng)
            strong = unmasked_frames(strong, time_masked) if strong is not None else None
        return (log_mel, target) if strong is None else (log_mel, target, strong)

    def close(self) -> None:
        """Stop DALI's workers and remove the clip-order files."""
        self._pipe = None
        self._mid_epoch = False
        self.index.close()
        self._remove_order_dir()

    def __enter__(self) -> "LogMelLoader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
