"""Mix strongly labelled soundscapes from event clips and background recordings, in the layout train.pack reads.

    python -m train.mix --manifest CLIPS.csv --audio-dir DIR --background-classes a,b --out OUT
    python -m train.mix --audio-dir DIR --backgrounds BG_DIR --out OUT                   (DIR/<class>/*.wav)

The mixing is train/data/soundscapes.py's (why not Scaper: its docstring). OUT holds, per split
(train, validation, test), AudioSet's layout, which `train.pack --csv ... --strong ...` packs:

    OUT/class_labels_indices.csv          the event classes (index, mid = class name, display_name)
    OUT/<split>/segments.csv              YTID, start, end, "labels" of each soundscape
    OUT/<split>/strong.tsv                segment_id, start_time_seconds, end_time_seconds, label
    OUT/<split>/audio/Y<YTID>.wav         16-bit soundscapes, YTID = mix-<split>-<n>
    OUT/<split>/sources.csv               what each soundscape holds: its background and events, each with its
                                          clip, recording, times (a background: its start in the clip) and SNR
    OUT/mix_report.json                   what was used, per split; printed as a summary
    OUT/mix_plan.json                     the settings and inputs OUT was mixed from

and the command prints the train.pack and train.run commands that follow. A missing, undecodable or
silent source clip is skipped and listed in the report, never fatal. OUT is refused when it holds anything
and is not this command's output with the same settings, unless --overwrite (which removes only the files
listed above). Errors are one line on stderr (exit 2).
"""
import argparse
import csv
import hashlib
import json
import os
import shlex
import sys
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import numpy as np
import soundfile
from tqdm import tqdm

from train.data.csv_meta import MetadataError
from train.data.out_folder import OutFolderError, RunLock, describe_os_error, ensure_writable, read_plan
from train.data.soundscapes import (SPLITS, MixConfig, Source, check_out_apart, deal_recordings, decode_sources,
                                    draw_plan, members_by_class, read_sources, render, require_sources)
from train.data.shards import to_stored

PLAN_FILE = "mix_plan.json"
REPORT_FILE = "mix_report.json"
LABELS_FILE = "class_labels_indices.csv"
SPLIT_FILES = ("segments.csv", "strong.tsv", "sources.csv")
AUDIO_FOLDER = "audio"


class _OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad option in one line (no usage block), exit 2."""

    def error(self, message: str):
        self.exit(2, f"error: {message}; see python -m train.mix --help\n")


def _pair(kind):
    def parse(text: str) -> tuple:
        try:
            values = tuple(kind(v) for v in text.split(","))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not numbers separated by commas") from None
        return values
    return parse


def build_parser() -> argparse.ArgumentParser:
    default = MixConfig()
    parser = _OneLineParser(prog="python -m train.mix", description="Mix strongly labelled soundscapes from event "
                            "clips over background recordings, split by recording, in the layout train.pack --strong "
                            "reads. See docs/data.md.")
    arg = parser.add_argument
    arg("--manifest", type=_user_path, metavar="CSV", help="CSV of the clips: file, label, optional recording (or any layout "
        "train.pack reads); default: --audio-dir's class subfolders")
    arg("--audio-dir", required=True, type=_user_path, metavar="DIR", help="folder holding the clips")
    arg("--background-classes", default="", metavar="NAMES", help="comma-separated classes of the clips used as backgrounds, never "
        "as events (e.g. air_conditioner,engine_idling)")
    arg("--backgrounds", type=_user_path, metavar="DIR", help="folder of background recordings (any depth), each its own recording")
    arg("--out", required=True, type=_user_path, metavar="DIR", help="output folder")
    arg("--soundscapes", type=int, default=default.soundscapes, help="soundscapes in all (default: %(default)s)")
    arg("--split-fractions", type=_pair(float), default=default.fractions, metavar="TRAIN,VALIDATION,TEST",
        help="shares of soundscapes and recordings (default: 0.7,0.15,0.15)")
    arg("--clip-seconds", type=float, default=default.clip_seconds, help="soundscape length, a length train.run "
        "trains on (default: %(default)s)")
    arg("--sample-rate", type=int, default=default.sample_rate, help="Hz (default: %(default)s, the model's)")
    arg("--events", type=_pair(int), default=default.events, metavar="MIN,MAX",
        help="events per soundscape (default: 1,3)")
    arg("--snr", type=_pair(float), default=default.snr_db, metavar="LOW,HIGH",
        help="event SNR over the background, dB (default: 6,30)")
    arg("--trim-db", type=float, default=default.trim_db, help="cut an event clip's leading and trailing quiet this "
        "far below its loudest 10 ms (0: none; default: %(default)s)")
    arg("--seed", type=int, default=default.seed, help="seed (default: %(default)s)")
    arg("--overwrite", action="store_true", help="mix into an --out that holds other files or another mix "
        "(removes only this command's files)")
    return parser


def _user_path(text: str) -> Path:
    return Path(os.path.expanduser(text))


def _plan(args: argparse.Namespace, config: MixConfig, sources: list[Source]) -> dict:
    """What OUT was mixed from: the settings and each source file's path, size and modification time."""
    digest = hashlib.sha1()
    for source in sources:
        try:
            stat = os.stat(source.path)
            file = f"{stat.st_size},{stat.st_mtime_ns}"
        except OSError:   # a broken link: skipped as undecodable when read
            file = "unreadable"
        digest.update(f"{source.path},{source.label},{source.recording},{file}\n".encode())
    return {"config": asdict(config), "manifest": str(args.manifest), "audio_dir": str(args.audio_dir),
            "backgrounds": str(args.backgrounds), "background_classes": args.background_classes,
            "sources": len(sources), "sources_sha1": digest.hexdigest()}


def _remove_ours(out: Path) -> None:
    """Remove the files this command writes in `out` (its soundscapes: OUT/<split>/audio/Ymix-*.wav), and the
    folders they leave empty; anything else stays."""
    for name in (PLAN_FILE, REPORT_FILE, LABELS_FILE):
        (out / name).unlink(missing_ok=True)
    for split in SPLITS:
        for name in SPLIT_FILES:
            (out / split / name).unlink(missing_ok=True)
        for soundscape in (out / split / AUDIO_FOLDER).glob("Ymix-*.wav"):
            soundscape.unlink()
        for folder in (out / split / AUDIO_FOLDER, out / split):
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()


def claim_out(out: Path, plan: dict, overwrite: bool) -> None:
    """Keep OUT to one mix: refuse (one line) a folder holding anything but this command's output with the same
    plan, unless `overwrite`, which removes this command's files (nothing else) first; then write the plan."""
    ensure_writable(out)
    path = out / PLAN_FILE
    plan = json.loads(json.dumps(plan))   # tuples as the file holds them: lists
    same = read_plan(path) == plan
    others = [p for p in out.iterdir() if p.name != ".lock"]
    if others and not same:
        if not overwrite:
            why = "another mix (other inputs or settings)" if path.exists() else "files train.mix did not write"
            raise OutFolderError(f"--out {out} holds {why}; use a new --out folder, or --overwrite to replace "
                                 f"train.mix's files there")
        _remove_ours(out)
    path.write_text(json.dumps(plan, indent=1))


def write_split(out: Path, split: int, config: MixConfig, events: tuple[list[Source], list[np.ndarray]],
                backgrounds: tuple[list[Source], list[np.ndarray]], count: int) -> dict:
    """Mix split `split`'s `count` soundscapes into OUT/<split>/ (audio, segments.csv, strong.tsv, sources.csv);
    its report."""
    name = SPLITS[split]
    require_sources(name, events[0], backgrounds[0])
    lengths, background_lengths = [len(a) for a in events[1]], [len(a) for a in backgrounds[1]]
    by_class = members_by_class(events[0])
    (out / name / AUDIO_FOLDER).mkdir(parents=True, exist_ok=True)
    width = max(5, len(str(count - 1)))
    segments, strong, used, plans, gains = [], [], [], [], []
    for index in tqdm(range(count), desc=f"mixing {name}", unit="soundscape"):
        plan = draw_plan(config, split, index, by_class, lengths, background_lengths)
        mix, gain = render(plan, config, events[1], backgrounds[1])
        ytid = f"mix-{name}-{index:0{width}d}"
        soundfile.write(out / name / AUDIO_FOLDER / f"Y{ytid}.wav", to_stored(mix)[0], config.sample_rate,
                        subtype="PCM_16")
        segments.append([ytid, "0.000", f"{config.clip_seconds:.3f}",
                         ",".join(sorted({events[0][e.source].label for e in plan.events}))])
        background = backgrounds[0][plan.background]
        used.append([f"{ytid}_0", "background", background.label, background.name, background.recording,
                     f"{plan.background_start / config.sample_rate:.6f}", "", ""])
        for e in plan.events:
            source, times = events[0][e.source], _seconds((e.onset, e.onset + lengths[e.source]), config)
            strong.append([f"{ytid}_0", *times, source.label])
            used.append([f"{ytid}_0", "event", source.label, source.name, source.recording, *times, f"{e.snr_db:.3f}"])
        plans.append(plan)
        gains.append(gain)
    _write_rows(out / name / "segments.csv", segments, ",", "# YTID, start_seconds, end_seconds, positive_labels")
    _write_rows(out / name / "strong.tsv", strong, "\t", "segment_id\tstart_time_seconds\tend_time_seconds\tlabel")
    _write_rows(out / name / "sources.csv", used, ",", "segment_id,role,label,clip,recording,onset,offset,snr_db")
    return split_report(plans, gains, events[0], backgrounds[0])


def _seconds(samples: tuple[int, ...], config: MixConfig) -> list[str]:
    return [f"{n / config.sample_rate:.6f}" for n in samples]


def _write_rows(path: Path, rows: list[list[str]], delimiter: str, header: str) -> None:
    with open(path, "w", newline="") as handle:
        handle.write(header + "\n")
        csv.writer(handle, delimiter=delimiter, lineterminator="\n").writerows(rows)


def split_report(plans: list, gains: list[float], events: list[Source], backgrounds: list[Source]) -> dict:
    """What one split's soundscapes used: counts by class, clips and recordings, SNR statistics."""
    placed = [e for plan in plans for e in plan.events]
    snr = np.array([e.snr_db for e in placed])
    return {
        "soundscapes": len(plans), "events": len(placed),
        "events_per_class": dict(sorted(Counter(events[e.source].label for e in placed).items())),
        "event_clips_used": len({e.source for e in placed}), "event_clips_available": len(events),
        "event_recordings_used": len({events[e.source].recording for e in placed}),
        "event_recordings_available": len({s.recording for s in events}),
        "background_clips_used": len({p.background for p in plans}), "background_clips_available": len(backgrounds),
        "background_recordings_used": len({backgrounds[p.background].recording for p in plans}),
        "snr_db": {"min": float(snr.min()), "mean": float(snr.mean()), "max": float(snr.max())},
        "peak_scaled": int(sum(g < 1 for g in gains)),
    }


def split_counts(total: int, fractions: tuple[float, ...]) -> list[int]:
    """Soundscapes per split: the shares of `total`, rounded down, the rest one each to the largest remainders."""
    exact = np.asarray(fractions) * total
    counts = np.floor(exact).astype(int)
    for k in np.argsort(-(exact - counts), kind="stable")[:total - counts.sum()]:
        counts[k] += 1
    return counts.tolist()


def mix(args: argparse.Namespace) -> dict:
    """Mix OUT (train.mix's command line in `args`); returns the report written to OUT/mix_report.json."""
    config = MixConfig(args.soundscapes, tuple(args.split_fractions), args.clip_seconds, args.sample_rate,
                       tuple(args.events), tuple(args.snr), args.trim_db, args.seed)
    classes = tuple(c.strip() for c in args.background_classes.split(",") if c.strip())
    if not classes and args.backgrounds is None:
        raise ValueError("no backgrounds: give --background-classes (classes of the clips to use as backgrounds) "
                         "or --backgrounds DIR")
    check_out_apart(args.out, [("--audio-dir", args.audio_dir), ("--backgrounds", args.backgrounds)])
    events, backgrounds, skipped = read_sources(args.manifest, args.audio_dir, args.backgrounds, classes)
    if not events:
        raise ValueError(f"no event clips: every class of {args.manifest or args.audio_dir} is a background class; "
                         f"leave some classes out of --background-classes")
    dealt = deal_recordings(events + backgrounds, config.fractions, config.seed)
    counts = split_counts(config.soundscapes, config.fractions)
    for split, count in enumerate(counts):
        if count:
            require_sources(SPLITS[split], *(_dealt_to(split, dealt, pool, pool)[0] for pool in (events, backgrounds)))
    with RunLock(args.out, what="train.mix run"):
        claim_out(args.out, _plan(args, config, events + backgrounds), args.overwrite)
        events, event_audio, bad_events = decode_sources(events, config, trim=True)
        backgrounds, background_audio, bad_backgrounds = decode_sources(backgrounds, config, trim=False)
        skipped += bad_events + bad_backgrounds
        labels = sorted({s.label for s in events})
        _write_rows(args.out / LABELS_FILE, [[k, c, c] for k, c in enumerate(labels)], ",", "index,mid,display_name")
        splits = {SPLITS[split]: write_split(args.out, split, config, _dealt_to(split, dealt, events, event_audio),
                                             _dealt_to(split, dealt, backgrounds, background_audio), count)
                  for split, count in enumerate(counts) if count}
        report = {"config": asdict(config), "classes": labels, "background_classes": list(classes),
                  "splits": splits, "skipped": [{"clip": clip, "reason": reason} for clip, reason in skipped]}
        (args.out / REPORT_FILE).write_text(json.dumps(report, indent=1))
    return report


def _dealt_to(split: int, dealt: dict[str, int], sources: list[Source], audio: list) -> tuple[list, list]:
    """The sources dealt to `split` and their entries of `audio` (a list parallel to `sources`)."""
    keep = [k for k, source in enumerate(sources) if dealt[source.recording] == split]
    return [sources[k] for k in keep], [audio[k] for k in keep]


def summarise(report: dict, out: Path) -> str:
    """The printed summary: a line per split, the skipped clips, and the commands that pack and train on OUT."""
    lines = []
    for name, split in report["splits"].items():
        per_class = ", ".join(f"{c} {n}" for c, n in split["events_per_class"].items())
        snr = split["snr_db"]
        lines.append(f"{name}: {split['soundscapes']} soundscapes, {split['events']} events ({per_class}) from "
                     f"{split['event_clips_used']} clips of {split['event_recordings_used']} recordings, over "
                     f"{split['background_clips_used']} backgrounds of {split['background_recordings_used']} "
                     f"recordings; SNR {snr['min']:.1f} to {snr['max']:.1f} dB (mean {snr['mean']:.1f})"
                     + (f"; {split['peak_scaled']} scaled down to fit full scale" if split["peak_scaled"] else ""))
    if report["skipped"]:
        reasons = Counter(s["reason"].split(":")[0] for s in report["skipped"])
        counts = ", ".join(f"{n} {r}" for r, n in sorted(reasons.items()))
        lines.append(f"skipped {len(report['skipped'])} source clips ({counts}), listed in {out / REPORT_FILE}")
    lines.append("pack and train with:")
    lines += ["  " + shlex.join(command) for command in follow_up(out, report)]
    return "\n".join(lines)


def follow_up(out: Path, report: dict) -> list[list[str]]:
    """The train.pack command of each split (into OUT-packed/<split>) and the train.run command on them."""
    packed = out.parent / f"{out.name}-packed"
    seconds = report["config"]["clip_seconds"]
    length = [] if seconds == 10 else ["--clip-seconds", f"{seconds:g}"]
    commands = [["python", "-m", "train.pack", "--csv", str(out / split / "segments.csv"), "--strong",
                 str(out / split / "strong.tsv"), "--labels", str(out / LABELS_FILE), "--audio-dir",
                 str(out / split / AUDIO_FOLDER), "--out", str(packed / split), *length]
                for split in report["splits"]]
    run = ["python", "-m", "train.run", "--data", str(packed / "train")]
    if "test" in report["splits"]:
        run += ["--eval-data", str(packed / "test")]
        if "validation" in report["splits"]:   # its recordings are not in train's: model selection and post-processing
            run += ["--validation-data", str(packed / "validation")]
    return commands + [run] * ("train" in report["splits"])


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        report = mix(args)
    except (MetadataError, ValueError) as error:   # OutFolderError too
        _fail(str(error))
    except OSError as error:   # a full disk while writing
        _fail(describe_os_error(error, f"write into {args.out}"))
    except KeyboardInterrupt:
        tqdm.write(f"interrupted: run the same command again to mix {args.out} anew", file=sys.stderr)
        sys.exit(130)
    print(summarise(report, args.out))


def _fail(message: str) -> None:
    """One `error:` line on stderr (on a line of its own, not after a progress bar), then exit 2."""
    tqdm.write(f"error: {message}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
    main()
