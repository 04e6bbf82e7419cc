"""The Python API: `tagger = fastsca.Tagger.from_pretrained(PATH)`, then `tagger(waveform, sample_rate)`.

PATH is a training checkpoint (best.pt, latest.pt), a model folder (train.run's OUT/pretrained, or one
written by `python -m fastsca.hub`) or a Hub repo id (fastsca/hub.py). A call returns a `TagResult`
(fastsca/tagging/result.py): clip and frame probabilities, the detected events, the clip and frame
embeddings, with `top_k` and the Hugging Face pipeline's `[{"label", "score"}]`. Everything goes through
the tagging engine (fastsca/tagging/engine.py) that `python -m fastsca.tag` runs, so the API and the
command give the same numbers: a file of any length is streamed in bounded memory, and a waveform in
memory is handed to it as the same samples in a file (fastsca/tagging/waveform.py).
"""
from pathlib import Path

import torch

from fastsca.audio import AudioError
from fastsca.events import EventConfig
from fastsca.hub import Pretrained, load_pretrained
from fastsca.inference import CheckpointError, TrainedModel
from fastsca.tagging.engine import Asked, StreamConfig, check_front_end, tag_batch, tag_file
from fastsca.tagging.inputs import InputReader, expand_inputs
from fastsca.tagging.result import TagResult
from fastsca.tagging.waveform import WAVEFORM_NAME, as_wav_file, check_sample_rate


class Tagger:
    """A trained model with its front end, windowing and event detector: audio in, `TagResult` out."""

    def __init__(self, pretrained: Pretrained, stream: StreamConfig = StreamConfig(), embeddings: bool = True,
                 source: str = "the model") -> None:
        check_front_end(pretrained.trained, source)
        self.trained: TrainedModel = pretrained.trained
        self.label_mids = pretrained.label_mids
        self.events: EventConfig = pretrained.events
        self.stream = stream
        self.asked = Asked(events=self.events, embeddings=embeddings)

    @classmethod
    def from_pretrained(cls, source: str | Path, device: str | torch.device | None = None,
                        stream: StreamConfig = StreamConfig(), revision: str | None = None,
                        embeddings: bool = True) -> "Tagger":
        """A tagger from best.pt, a model folder or a Hub repo id (at `revision`), on `device` (default: CUDA
        where available, else the CPU); `embeddings=False` leaves the results' embeddings out."""
        device = torch.device(device if device is not None else "cuda" if torch.cuda.is_available() else "cpu")
        return cls(load_pretrained(source, device, revision), stream, embeddings, source=str(source))

    @property
    def label_names(self) -> tuple[str, ...]:
        """Name of each class the model tags."""
        return self.trained.label_names

    def __call__(self, audio, sample_rate: int | None = None) -> TagResult | list[TagResult]:
        """Tag a waveform (numpy or torch, (samples,) or (channels, samples), at `sample_rate` Hz), a list of
        waveforms or an (N, channels, samples) array (a list of results), or an audio file (a path; any
        length, streamed)."""
        if isinstance(audio, (str, Path)):
            if sample_rate is not None:
                raise ValueError("a file carries its own sample rate: give sample_rate only with a waveform")
            return self.tag_file(audio)
        if sample_rate is None:
            raise ValueError("give the waveform's sample_rate: tagger(waveform, sample_rate)")
        if isinstance(audio, (list, tuple)) or getattr(audio, "ndim", 0) == 3:
            return self.batch(audio, sample_rate)
        return self._tag(as_wav_file(audio, sample_rate))

    def batch(self, waveforms, sample_rate: int) -> list[TagResult]:
        """Tag each waveform of an (N, samples) or (N, channels, samples) array, or of a list, at one sample
        rate, as each alone, their windows run through the model together; result i is named "waveform[i]"."""
        check_sample_rate(sample_rate)
        if getattr(waveforms, "ndim", 2) not in (2, 3):
            raise ValueError(f"a batch must be (N, samples) or (N, channels, samples), got shape {waveforms.shape}")
        files = [as_wav_file(waveform, sample_rate, f"{WAVEFORM_NAME}[{i}]") for i, waveform in enumerate(waveforms)]
        return tag_batch(self.trained, files, self.stream, self.asked)

    def tag_file(self, path: str | Path) -> TagResult:
        """Tag one audio file of any length (wav, flac, ogg, mp3), streamed in bounded memory; AudioError (one
        line) when it cannot be read."""
        return self._tag(str(path))

    def tag_files(self, paths: list[str | Path]) -> tuple[list[TagResult], dict[str, str]]:
        """Tag several files, folders (walked recursively) and .zip/.tar archives as `python -m fastsca.tag`
        reads them (fastsca/tagging/inputs.py): the results of the audio files that could be read, in order,
        each named as the command names it, and the one-line error of each file or folder that could not (by
        that name, or the path given); a bad file is skipped, the others are tagged."""
        inputs = expand_inputs([str(path) for path in paths])
        errors = {line.split(": ", 1)[0]: line for line in inputs.skipped}
        results, reader = [], InputReader()
        try:
            for item in inputs.files:
                try:
                    with reader.open(item) as source:
                        results.append(self._tag(source, item.name))
                except (AudioError, CheckpointError) as error:
                    errors[item.name] = str(error)
        finally:
            reader.close()
        return results, errors

    def _tag(self, source, name: str | None = None) -> TagResult:
        return tag_file(self.trained, source, self.stream, self.asked, name=name)
