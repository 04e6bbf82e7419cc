"""Log-mel front end (TALNet's, which the paper's backbone builds on) and its plain-torch reference.

`LogMelConfig` holds the front-end settings shared by the DALI loader (train/data/loader.py) and
`log_mel`, the reference used to tag single files and to check the loader. The defaults are
docs/design.md's ("Front end"): 16 kHz, periodic Hann 1024, FFT 1024, hop 400, centred frames with reflect padding
(what DALI's `fn.spectrogram(reflect_padding=True)` does, which is numpy's and librosa's "reflect"),
the first `clip_samples // hop` frames kept, 64 Slaney mel bins with Slaney norm over 50-8000 Hz,
power -> dB with amin 1e-10. They agree with `librosa.feature.melspectrogram` + `power_to_db` on the
same settings (tests/test_frontend.py). The mel matrix is built from Slaney's formulas here, so
librosa is needed only by the tests. `context_windows` cuts a long file into clips that carry their
neighbours' samples, so the windows' log-mels join up with no padding at the joins.
"""
import math
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F

PAD_MODES = ("reflect", "constant")


@dataclass(frozen=True)
class LogMelConfig:
    """Waveform -> log-mel settings; one instance drives both the DALI loader and `log_mel`."""

    sample_rate: int = 16000
    """Sample rate in Hz of the waveforms the front end takes."""
    clip_samples: int = 160000
    """Samples per clip (10 s at 16 kHz); the front end keeps clip_samples // hop_length frames."""
    window_length: int = 1024
    """Length of the periodic Hann window in samples."""
    n_fft: int = 1024
    """FFT size (>= window_length; the window is centred in the FFT frame when shorter)."""
    hop_length: int = 400
    """Hop between frames in samples (25 ms at 16 kHz: 40 frames/s)."""
    n_mels: int = 64
    """Mel bins (Slaney scale, Slaney area normalisation)."""
    f_min: float = 50.0
    """Lowest mel filter edge in Hz."""
    f_max: float = 8000.0
    """Highest mel filter edge in Hz (at most sample_rate / 2)."""
    amin: float = 1e-10
    """Power floor before the log: dB = 10 log10(max(power, amin))."""
    pad_mode: str = "reflect"
    """Padding of the centred frames at the clip edges: reflect (DALI's default) or constant (zeros)."""

    @property
    def clip_seconds(self) -> float:
        """Duration of one clip in seconds (clip_samples / sample_rate)."""
        return self.clip_samples / self.sample_rate

    def __post_init__(self) -> None:
        if self.n_fft < self.window_length:
            raise ValueError(f"n_fft ({self.n_fft}) must be >= window_length ({self.window_length})")
        if not 0 < self.hop_length <= self.clip_samples:
            raise ValueError(f"hop_length must be in 1..clip_samples, got {self.hop_length}")
        if not 0 <= self.f_min < self.f_max <= self.sample_rate / 2:
            raise ValueError(f"need 0 <= f_min < f_max <= sample_rate/2, got {self.f_min}, {self.f_max}")
        if self.amin <= 0:
            raise ValueError(f"amin must be > 0, got {self.amin}")
        if self.pad_mode not in PAD_MODES:
            raise ValueError(f"pad_mode {self.pad_mode!r} is not one of {', '.join(PAD_MODES)}")
        if self.pad_mode == "reflect" and self.clip_samples <= self.n_fft // 2:
            raise ValueError(f"reflect padding needs clip_samples > n_fft // 2 ({self.n_fft // 2})")

    @property
    def frames(self) -> int:
        """Frames kept per clip (400 for the defaults); the centred STFT has one more, dropped."""
        return self.clip_samples // self.hop_length

    @property
    def cutoff_db(self) -> float:
        """The amin floor in dB, as DALI's `to_decibels` takes it."""
        return 10.0 * math.log10(self.amin)


def hann_window(length: int) -> torch.Tensor:
    """Periodic Hann window (scipy's `get_window("hann", n)`, librosa's default), float64."""
    return torch.hann_window(length, periodic=True, dtype=torch.float64)


def _hz_to_mel(hz: torch.Tensor) -> torch.Tensor:
    """Slaney's mel scale: linear below 1 kHz (3 mel per 200 Hz), logarithmic above."""
    f_sp, min_log_hz = 200.0 / 3.0, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0
    return torch.where(hz >= min_log_hz, min_log_mel + torch.log(hz.clamp(min=min_log_hz) / min_log_hz) / logstep,
                       hz / f_sp)


def _mel_to_hz(mel: torch.Tensor) -> torch.Tensor:
    """Inverse of `_hz_to_mel`."""
    f_sp, min_log_hz = 200.0 / 3.0, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0
    return torch.where(mel >= min_log_mel, min_log_hz * torch.exp(logstep * (mel - min_log_mel)), mel * f_sp)


@lru_cache(maxsize=8)
def mel_filterbank(config: LogMelConfig) -> torch.Tensor:
    """(n_fft // 2 + 1, n_mels) float64 Slaney-normalised triangular filters (librosa's `filters.mel`)."""
    fft_hz = torch.linspace(0.0, config.sample_rate / 2, config.n_fft // 2 + 1, dtype=torch.float64)
    mel_edges = torch.linspace(_hz_to_mel(torch.tensor(config.f_min, dtype=torch.float64)).item(),
                               _hz_to_mel(torch.tensor(config.f_max, dtype=torch.float64)).item(),
                               config.n_mels + 2, dtype=torch.float64)
    hz_edges = _mel_to_hz(mel_edges)                                  # (n_mels + 2,)
    widths = hz_edges.diff()                                          # (n_mels + 1,)
    ramps = hz_edges[:, None] - fft_hz[None, :]                       # (n_mels + 2, n_freqs)
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = torch.clamp(torch.minimum(lower, upper), min=0.0)       # (n_mels, n_freqs)
    weights *= (2.0 / (hz_edges[2:] - hz_edges[:-2]))[:, None]        # Slaney norm: unit area per filter
    return weights.T.contiguous()


def pad_edges(waveform: torch.Tensor, config: LogMelConfig) -> torch.Tensor:
    """(B, N) -> (B, N + 2 * (n_fft // 2)): the centring pad of the STFT, config.pad_mode at both ends."""
    half = config.n_fft // 2
    return F.pad(waveform[:, None], (half, half), mode=config.pad_mode)[:, 0]


def context_windows(waveform: torch.Tensor, config: LogMelConfig) -> torch.Tensor:
    """A mono waveform (N,) as consecutive clips of clip_samples (the last zero-padded), each with the
    n_fft // 2 samples around it (the centring pad only at the file's two ends): (count, clip_samples +
    2 * (n_fft // 2)), a view, for `log_mel(..., with_context=True)`. Padding every window instead
    puts a reflection at each join, which smears a loud tone there into a broadband click."""
    if waveform.dim() != 1:
        raise ValueError(f"waveform must be mono (N,), got shape {tuple(waveform.shape)}")
    count = max(1, -(-len(waveform) // config.clip_samples))
    whole = F.pad(waveform, (0, count * config.clip_samples - len(waveform)))
    padded = pad_edges(whole[None], config)[0]
    return padded.unfold(0, config.clip_samples + 2 * (config.n_fft // 2), config.clip_samples)


def log_mel(waveform: torch.Tensor, config: LogMelConfig = LogMelConfig(), with_context: bool = False) -> torch.Tensor:
    """Reference log-mel of float waveforms (B, N) at config.sample_rate -> (B, 1, frames, n_mels) float32.

    Computed in float64 so it can serve as the reference the DALI loader is checked against. With
    `with_context`, each row already holds its n_fft // 2 samples of context on both sides
    (`context_windows`) and is not padded again.
    """
    if waveform.dim() != 2:
        raise ValueError(f"waveform must be (B, N), got shape {tuple(waveform.shape)}")
    x = waveform.to(torch.float64)
    if not with_context:
        x = pad_edges(x, config)
    spec = torch.stft(x, n_fft=config.n_fft, hop_length=config.hop_length, win_length=config.window_length,
                      window=hann_window(config.window_length).to(x.device), center=False,
                      return_complex=True)      # (B, n_freqs, frames + 1)
    power = spec.real.square() + spec.imag.square()
    mel = torch.einsum("bft,fm->btm", power, mel_filterbank(config).to(x.device))
    db = 10.0 * torch.log10(mel.clamp(min=config.amin))
    return db[:, None, : config.frames].to(torch.float32)
