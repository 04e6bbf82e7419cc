"""`python -m train.examples --out examples/`: audio to try the README's tag and plot commands on, from a fresh clone.

It writes clips of the built-in synthetic set (train/data/synth.py) as the default training run makes them: the
first `--count` clips of its test split (`test-000.wav` ...; never seen in training, nor in choosing best.pt),
`tag-plot.wav` (test clips 0, 1 and 2 joined: the clip of the README's `fastsca.tag --plot` figure) and
`events.tsv`, every written clip's true events in DCASE's layout (filename, onset, offset, event_label), which
`fastsca.tag --strong` draws beside the detected ones. The clips are the profile's length (`cpu`: 2 s, what
`python -m train.run` trains on without a GPU) at 16 kHz, int16 WAV.

The built-in classes are synthetic test signals (a tone, a chirp, a click train, a harmonic stack, ...), not
real-world sounds: a model trained on them gives a real recording the synthetic class it most resembles. The
command writes only into a new or empty folder, or one holding only the files it writes (`--overwrite` lifts
that); each file is written whole or not at all.
"""
import argparse
import re
import sys
from pathlib import Path

import numpy as np
import soundfile

from fastsca.atomic import write_atomically
from fastsca.events import Event, write_dcase_tsv
from fastsca.profiles import MODEL_PROFILES
from train.profiles import PROFILES
from fastsca.builtin_classes import CLASS_NAMES
from train.data.synth import SynthConfig, make_clip

PLOT_CLIP = "tag-plot.wav"
EVENTS_NAME = "events.tsv"
# The test clips joined into the README figure's clip: between them, seven of the ten default classes.
PLOT_INDICES = (0, 1, 2)
TEST_SPLIT = 1   # train/data/synth.py's split number of the test (eval) split
# Names this command writes, whatever --count: a folder holding only these, each as it writes them, is one it wrote.
OWN_CLIPS = re.compile(r"test-\d{3,}\.wav|" + re.escape(PLOT_CLIP))
OWN_NAMES = re.compile(OWN_CLIPS.pattern + "|" + re.escape(EVENTS_NAME))
# Written into each clip's metadata (the WAV's software field): a clip holding it is one this command wrote.
SOFTWARE = "fastsca train.examples"


def builtin_config(profile: str) -> SynthConfig:
    """The built-in set the default run of `profile` trains on (train/run.py's build_config, no flags given)."""
    clip_seconds = MODEL_PROFILES[profile].clip_seconds
    return SynthConfig(clip_seconds=clip_seconds, event_seconds=(0.1 * clip_seconds, 0.4 * clip_seconds),
                       n_train=PROFILES[profile].builtin_train, n_eval=PROFILES[profile].builtin_eval)


def example_clips(config: SynthConfig, count: int) -> dict[str, tuple[np.ndarray, list[Event]]]:
    """File name -> (int16 waveform, true events): test clips 0..count-1, then the plot's joined clip."""
    clips = {}
    for index in sorted(set(range(count)) | set(PLOT_INDICES)):
        waveform, _, events = make_clip(config, TEST_SPLIT, index)
        clips[f"test-{index:03d}.wav"] = waveform, [Event(f"test-{index:03d}.wav", onset, offset, CLASS_NAMES[k], 1.0)
                                                    for onset, offset, k in events]
    joined = [clips[f"test-{i:03d}.wav"] for i in PLOT_INDICES]
    seconds = config.clip_seconds
    plot_events = [Event(PLOT_CLIP, e.onset + n * seconds, e.offset + n * seconds, e.label, 1.0)
                   for n, (_, events) in enumerate(joined) for e in events]
    wanted = {f"test-{index:03d}.wav" for index in range(count)}
    return {**{name: clip for name, clip in clips.items() if name in wanted},
            PLOT_CLIP: (np.concatenate([waveform for waveform, _ in joined]), plot_events)}


def is_own(path: Path) -> bool:
    """`path` is a file as this command writes it: a clip carrying SOFTWARE, or an events.tsv in DCASE's layout
    naming only this command's clips (a user's own file of the same name is not)."""
    try:
        if path.name == EVENTS_NAME:
            lines = path.read_text().splitlines()
            return lines[:1] == ["filename\tonset\toffset\tevent_label"] and all(
                OWN_CLIPS.fullmatch(line.split("\t")[0]) for line in lines[1:])
        with soundfile.SoundFile(path) as clip:
            return clip.software.startswith(SOFTWARE)
    except (OSError, UnicodeDecodeError, RuntimeError):   # soundfile's LibsndfileError is a RuntimeError
        return False


def check_out(out: Path, overwrite: bool) -> None:
    """Raise ValueError (one line) unless `out` is new, empty or holds only files this command wrote."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: is a file, not a folder; give a folder")
    if overwrite or not out.exists():
        return
    foreign = sorted(path.name for path in out.iterdir() if not (OWN_NAMES.fullmatch(path.name) and is_own(path)))
    if foreign:
        raise ValueError(f"--out {out}: holds {foreign[0]}" + (f" and {len(foreign) - 1} more" if len(foreign) > 1
                         else "") + ", which train.examples did not write; give a new or empty folder, or "
                         "--overwrite to write the examples beside them")


def _write_clip(path: Path, waveform: np.ndarray, sample_rate: int) -> None:
    """An int16 WAV carrying SOFTWARE in its metadata."""
    with soundfile.SoundFile(path, "w", sample_rate, 1, "PCM_16", format="WAV") as clip:
        clip.software = SOFTWARE
        clip.write(waveform)


def write_examples(out: Path, config: SynthConfig, count: int, overwrite: bool = False) -> list[Path]:
    """Write the clips and events.tsv into `out` (see the module docstring); returns the files written."""
    clips = example_clips(config, count)
    check_out(out, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, (waveform, _) in clips.items():
        write_atomically(out / name, lambda tmp: _write_clip(tmp, waveform, config.sample_rate))
        written.append(out / name)
    events = [event for _, clip_events in clips.values() for event in sorted(clip_events, key=lambda e: e.onset)]
    write_atomically(out / EVENTS_NAME, lambda tmp: write_dcase_tsv(tmp, events))
    return written + [out / EVENTS_NAME]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m train.examples", description=__doc__.split("\n\n")[1],
                                     epilog="example: python -m train.examples --out examples/ && python -m "
                                            "fastsca.tag examples/tag-plot.wav --checkpoint runs/at-sca-3-cpu/best.pt "
                                            "--events --plot tags.png --strong examples/events.tsv")
    parser.add_argument("--out", type=Path, default=Path("examples"), metavar="FOLDER",
                        help="the folder to write (default: examples)")
    parser.add_argument("--count", type=int, default=4, help="test clips to write (default 4)")
    parser.add_argument("--profile", choices=sorted(PROFILES), default="cpu",
                        help="whose default run's built-in set (default cpu: 2 s clips; gpu: 10 s)")
    parser.add_argument("--overwrite", action="store_true",
                        help="write into a folder that holds other files (those are kept)")
    args = parser.parse_args(argv)
    if not 1 <= args.count <= PROFILES[args.profile].builtin_eval:
        parser.error(f"--count must be in 1..{PROFILES[args.profile].builtin_eval} (the test split's clips), "
                     f"got {args.count}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    config = builtin_config(args.profile)
    try:
        written = write_examples(args.out, config, args.count, args.overwrite)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except OSError as error:
        print(f"error: --out {args.out}: cannot write there ({error.strerror or error}); give a writable folder",
              file=sys.stderr)
        sys.exit(2)
    print(f"wrote {len(written)} files into {args.out}: {', '.join(path.name for path in written)}")
    print(f"they hold the built-in synthetic classes ({', '.join(config.class_names)}): synthetic test signals "
          f"that the default run's model knows, not real-world sounds ({config.clip_seconds:g} s clips, "
          f"{config.sample_rate} Hz)")


if __name__ == "__main__":
    main()
