"""The log-mel front end as a module for exported graphs that take the raw waveform (`fastsca.export --input
waveform`).

The same computation as `fastsca.frontend.log_mel` (centring pad, periodic Hann STFT, power, Slaney mel
filters, dB), in float32 and in ops that torch.export and the ONNX exporter translate: `torch.stft` becomes
ONNX's STFT operator (opset 17 and later), so a deployment feeds audio and runs no front end of its own. The
window and the filterbank are buffers made once here: computed inside a trace they would be traced as constants
of the trace's fake tensors. float32 rather than log_mel's float64, as onnxruntime's STFT takes float32:
tests/test_export.py bounds what that changes in the outputs.
"""
import torch
from torch import nn

from fastsca.frontend import LogMelConfig, hann_window, mel_filterbank, pad_edges


class LogMelModule(nn.Module):
    """(B, clip_samples) float32 waveform at config.sample_rate -> (B, 1, frames, n_mels) log-mel in dB."""

    def __init__(self, config: LogMelConfig) -> None:
        super().__init__()
        self.config = config
        self.register_buffer("window", hann_window(config.window_length).to(torch.float32))
        self.register_buffer("filterbank", mel_filterbank(config).to(torch.float32))   # (n_freqs, n_mels)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:                        # (B, N)
        config = self.config
        padded = pad_edges(waveform, config)                                          # (B, N + n_fft)
        spec = torch.stft(padded, n_fft=config.n_fft, hop_length=config.hop_length, win_length=config.window_length,
                          window=self.window, center=False, return_complex=True)      # (B, n_freqs, frames + 1)
        power = spec.real.square() + spec.imag.square()
        mel = torch.matmul(power.transpose(1, 2), self.filterbank)                    # (B, frames + 1, n_mels)
        db = 10.0 * torch.log10(mel.clamp(min=config.amin))
        return db[:, None, : config.frames]                                           # (B, 1, frames, n_mels)
