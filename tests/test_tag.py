"""`fastsca.tag`: streamed windows over long files, tags that depend only on the audio, silence, events,
text and JSON, the figure's destinations, and one-line errors per bad file or destination."""
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from fastsca import tag
from fastsca.tagging import engine, outputs as tag_outputs
from fastsca.tagging.engine import Asked, StreamConfig
from fastsca.frontend import log_mel
from fastsca.inference import load_trained_model
from fastsca.tagging.stream import WindowPlan
from train import checkpoint

from test_checkpoint import LABELS, tiny_config, tiny_payload


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, str]:
    """Untrained 1 s-clip checkpoints of an SCA-3 model and of the baseline (no attention)."""
    folder = tmp_path_factory.mktemp("checkpoints")
    paths = {}
    for preset in ("at-sca-3", "baseline"):
        paths[preset] = str(folder / f"{preset}.pt")
        checkpoint.save(folder / f"{preset}.pt", tiny_payload(tiny_config(preset)))
    return paths


@pytest.fixture
def audio(tmp_path) -> dict[str, str]:
    """A 2.5 s stereo flac at 44.1 kHz, a 0.3 s mono wav at 22.05 kHz, a text file named .wav, a missing path,
    and two files that share the stem "same" in different folders."""
    rng = np.random.default_rng(79615)
    paths = {"flac": tmp_path / "long.flac", "wav": tmp_path / "short.wav", "text": tmp_path / "notes.wav",
             "missing": tmp_path / "missing.wav", "same1": tmp_path / "one" / "same.wav",
             "same2": tmp_path / "two" / "same.wav"}
    soundfile.write(paths["flac"], 0.1 * rng.standard_normal((110250, 2)), 44100)
    soundfile.write(paths["wav"], 0.1 * rng.standard_normal(6615), 22050)
    paths["text"].write_text("not audio\n")
    for name in ("same1", "same2"):
        paths[name].parent.mkdir()
        soundfile.write(paths[name], 0.1 * rng.standard_normal(20000), 16000)
    return {name: str(path) for name, path in paths.items()}


def write(path: Path, waveform: np.ndarray, rate: int = 16000, subtype: str = "FLOAT") -> str:
    soundfile.write(path, waveform, rate, subtype=subtype)
    return str(path)


def test_long_file_is_streamed_over_overlapping_windows(checkpoints, tmp_path):
    trained = load_trained_model(checkpoints["at-sca-3"])
    waveform = np.random.default_rng(74437).standard_normal(41000).astype(np.float32) * 0.1   # 2.5625 s
    tags = engine.tag_file(trained, write(tmp_path / "x.wav", waveform), StreamConfig(block_seconds=0.37),
                        Asked(view=(0.0, 60.0)))
    # 102 log-mel frames, 100 of them in whole output frames: 25 output frames, the last 25 ms left out
    assert tags.seconds == pytest.approx(41000 / 16000) and tags.frame.shape == (25, len(LABELS))
    whole = log_mel(torch.from_numpy(waveform)[None], replace(trained.log_mel, clip_samples=41000))[0, 0][:100]
    # read in 0.37 s blocks, the log-mel is the whole file's (continuous over the blocks and windows)
    np.testing.assert_allclose(tags.view.log_mel, whole.numpy(), atol=1e-4, rtol=0)
    assert [m.shape for m in tags.view.spatial_maps.values()] == [(25, 4)] * 3   # blocks 5-7, time-freq plan
    # windows of 40 frames every 20 (half overlap), the last ending at the file's end: starts 0, 20, 40, 60;
    # clip probability = the largest over them, frame t = the window whose middle is nearest
    starts = WindowPlan.for_model(40, 10, 0.5).starts(100)
    assert starts == [0, 20, 40, 60]
    with torch.no_grad():
        out = trained.model(torch.stack([whole[s:s + 40] for s in starts])[:, None])
    np.testing.assert_allclose(tags.clip, out.clip.amax(dim=0).numpy(), rtol=1e-5)
    expected = np.concatenate([out.frame[0, :7], out.frame[1, 2:7], out.frame[2, 2:7], out.frame[3, 2:]])
    np.testing.assert_allclose(tags.frame, expected, rtol=1e-5, atol=1e-6)


def test_the_last_window_is_aligned_to_the_end_not_padded():
    plan = WindowPlan.for_model(80, 20, 0.5)
    assert plan.hop == 40 and plan.starts(84) == [0, 4] and plan.starts(80) == [0] and plan.starts(163) == [0, 40, 80]
    assert plan.starts(170) == [0, 40, 80, 88]
    assert plan.join(0, 4) == (0 + 20 + 1) // 2


def test_digital_silence_is_silent_with_no_tag(checkpoints, tmp_path, capsys):
    trained = load_trained_model(checkpoints["at-sca-3"])
    for seconds in (0.1, 1.0, 2.0, 3.3):
        tags = engine.tag_file(trained, write(tmp_path / f"z{seconds}.wav", np.zeros(int(seconds * 16000)), 16000,
                                           "PCM_16"))
        assert tags.silent and tags.clip.max() == 0.0 and tags.frame.max() == 0.0
    tag.main([str(tmp_path / "z2.0.wav"), "--checkpoint", checkpoints["at-sca-3"], "--json"])
    result = json.loads(capsys.readouterr().out)
    assert result[0]["silent"] is True and result[0]["labels"] == []


def test_text_json_and_events(checkpoints, audio, tmp_path, capsys):
    tag.main([audio["flac"], audio["wav"], "--checkpoint", checkpoints["at-sca-3"], "--top-k", "3"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"{audio['flac']} (2.5 s)" and lines[4] == f"{audio['wav']} (0.3 s)"
    assert all(line.split()[1] in LABELS and 0 < float(line.split()[0]) < 1 for line in lines[1:4] + lines[5:8])

    out = tmp_path / "events"
    tag.main([audio["flac"], "--checkpoint", checkpoints["at-sca-3"], "--json", "--events", "--out", str(out),
              "--threshold", "0.05"])
    captured = capsys.readouterr()
    result = json.loads(captured.out, parse_constant=lambda name: pytest.fail(f"invalid JSON constant {name}"))
    assert result[0]["file"] == audio["flac"] and result[0]["seconds"] == 2.5 and result[0]["silent"] is False
    probabilities = [entry["probability"] for entry in result[0]["labels"]]
    assert len(probabilities) == 5 and probabilities == sorted(probabilities, reverse=True)
    events = result[0]["events"]
    assert events and all(0 <= e["onset"] < e["offset"] <= 2.5 and e["label"] in LABELS for e in events)
    strong = (out / "events.tsv").read_text().splitlines()
    dcase = (out / "events_dcase.tsv").read_text().splitlines()
    assert strong[0] == "segment_id\tstart_time_seconds\tend_time_seconds\tlabel" and len(strong) == len(events) + 1
    assert dcase[0] == "filename\tonset\toffset\tevent_label" and dcase[1].split("\t")[0] == "long.flac"
    assert json.loads((out / "events.json").read_text()) == events


@pytest.mark.slow
def test_bad_samples_are_one_line_errors(checkpoints, tmp_path):
    waveform = np.random.default_rng(3859).standard_normal(24000).astype(np.float32) * 0.1
    waveform[[100, 5000, 20000]] = [np.nan, np.inf, -np.inf]
    bad = write(tmp_path / "nan.wav", waveform)
    good = write(tmp_path / "good.wav", np.full(8000, 0.05, np.float32))
    result = subprocess.run([sys.executable, "-m", "fastsca.tag", bad, good, "--checkpoint", checkpoints["at-sca-3"],
                             "--json"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.splitlines()[0].startswith(f"error: {bad}: sample 100 (0.006 s) is NaN or infinite")
    assert [r["file"] for r in json.loads(result.stdout)] == [good]


@pytest.mark.slow
def test_plot_destinations_never_collide_and_are_reported(checkpoints, audio, tmp_path, capsys):
    files = [audio["same1"], audio["same2"], audio["flac"]]
    assert tag_outputs.plot_destinations(tmp_path / "figx", [audio["flac"]]) == [tmp_path / "figx.png"]
    assert tag_outputs.plot_destinations(tmp_path / "f.svg", files) == [tmp_path / "f-same.svg",
                                                                        tmp_path / "f-same-2.svg",
                                                                        tmp_path / "f-long.svg"]
    folder = tmp_path / "figures"
    folder.mkdir()
    tag.main(files + ["--checkpoint", checkpoints["at-sca-3"], "--plot", str(folder), "--json"])
    listed = [r["plot"] for r in json.loads(capsys.readouterr().out)]
    assert listed == [str(folder / "same.png"), str(folder / "same-2.png"), str(folder / "long.png")]
    assert all(Path(p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in listed)
    tag.main([audio["flac"], "--checkpoint", checkpoints["baseline"], "--plot", str(tmp_path / "figx"),
              "--start", "0.5", "--end", "2"])
    assert f"  plot: {tmp_path / 'figx.png'}" in capsys.readouterr().out
    assert (tmp_path / "figx.png").stat().st_size > 20000


@pytest.mark.parametrize("case, message", [
    ("extension", "cannot write '.xyz' figures; use .png, .pdf, .svg or a folder"),
    ("plot-under-a-file", "is a file, not a folder"),
    ("out-is-a-file", "is a file, not a folder"),
    ("read-only", "cannot write there"),
])
def test_bad_destinations_are_one_line_errors_before_any_work(checkpoints, audio, tmp_path, case, message, capsys,
                                                              monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    args = {"extension": ["--plot", str(tmp_path / "fig.xyz")],
            "plot-under-a-file": ["--plot", str(blocker / "fig.png")],
            "out-is-a-file": ["--events", "--out", str(blocker)],
            "read-only": ["--events", "--out", "/proc/fastsca-events"]}[case]
    monkeypatch.setattr(engine, "tag_file", lambda *a, **k: pytest.fail("the work started before the check"))
    with pytest.raises(SystemExit) as exit_info:
        tag.main([audio["flac"], "--checkpoint", checkpoints["at-sca-3"], *args])
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]


@pytest.mark.slow
def test_unreadable_files_are_reported_and_skipped(checkpoints, audio):
    # a subprocess, to see exactly what a user sees: one line per bad file, no traceback
    result = subprocess.run([sys.executable, "-m", "fastsca.tag", audio["missing"], audio["wav"], audio["text"],
                             "--checkpoint", checkpoints["at-sca-3"], "--top-k", "1"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 3 and "Traceback" not in result.stderr
    assert errors[0].startswith(f"error: {audio['missing']}: no such file")
    assert errors[1].startswith(f"error: {audio['text']}: cannot decode audio")
    assert errors[2] == "error: 2 of 3 files could not be read"
    assert result.stdout.startswith(f"{audio['wav']} (0.3 s)\n")   # the readable file is still tagged


def test_missing_checkpoint_is_one_line_exit_2(audio, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        tag.main([audio["wav"], "--checkpoint", str(tmp_path / "none.pt")])
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(lines) == 1
    assert lines[0].startswith(f"error: {tmp_path / 'none.pt'}: no such checkpoint")


def test_only_what_the_figure_and_the_frames_need_is_kept(checkpoints, tmp_path, monkeypatch):
    # A slice of a batch's output would keep the whole batch alive: with --plot, a one-hour file held 1.1 GB
    # resident at the end against 0.46 GB for ten minutes (527 classes); what is kept must own its memory.
    trained = load_trained_model(checkpoints["at-sca-3"])
    seconds = float(np.random.default_rng(92624).uniform(8, 12))
    path = write(tmp_path / "x.wav", np.random.default_rng(16166).standard_normal(int(seconds * 16000)) * 0.1)
    kept = {}
    finish = engine._WindowRunner.finish
    monkeypatch.setattr(engine._WindowRunner, "finish", lambda self, k: kept.update(frames=self.frames, maps=[
        part for parts in self.maps.values() for part in parts]) or finish(self, k))
    tags = engine.tag_file(trained, path, StreamConfig(windows_per_batch=3), Asked(view=(2.0, 4.0)))
    assert isinstance(kept["frames"], np.ndarray) and kept["frames"].base is None   # one array, filled in place
    # 1 s windows every 0.5 s each keep 0.5 s around their middle (1.75-2.25 s, ...): five shares meet 2-4 s
    assert len(kept["maps"]) == 3 * 5 and all(part.base is None for part in kept["maps"])
    assert len(tags.frame) == int(seconds * 16000) // 1600
    assert tags.view.log_mel.shape == (80, 64) and [m.shape for m in tags.view.spatial_maps.values()] == [(20, 4)] * 3


def test_frame_probabilities_can_be_kept_only_as_far_as_they_are_used(checkpoints, tmp_path):
    trained = load_trained_model(checkpoints["at-sca-3"])
    rng = np.random.default_rng(15196)
    path = write(tmp_path / "x.wav", rng.standard_normal(int(rng.uniform(6, 9) * 16000)) * 0.1)
    whole = engine.tag_file(trained, path, StreamConfig(block_seconds=0.7))
    until = float(rng.uniform(0.5, 4.0))
    part = engine.tag_file(trained, path, StreamConfig(block_seconds=0.7), Asked(frames_until=until))
    assert len(part.frame) == int(np.ceil(until / 0.1)) and part.seconds == whole.seconds
    np.testing.assert_array_equal(part.frame, whole.frame[: len(part.frame)])
    np.testing.assert_array_equal(part.clip, whole.clip)   # the clip probabilities still cover the whole file
    assert engine.tag_file(trained, path, asked=Asked(frames_until=0.0)).frame.shape == (0, len(LABELS))


def run_json(argv: list[str], capsys) -> tuple[list[dict], list[str]]:
    """The JSON results and stderr lines of `fastsca.tag ARGV --json`, which must succeed."""
    tag.main(argv + ["--json"])
    captured = capsys.readouterr()
    return json.loads(captured.out), captured.err.splitlines()


def test_every_model_reference_is_accepted(checkpoints, audio, tmp_path, capsys, monkeypatch):
    from fastsca import hub
    folder = hub.save_pretrained_from_checkpoint(checkpoints["at-sca-3"], tmp_path / "run" / "pretrained")
    want, _ = run_json([audio["flac"], "--checkpoint", checkpoints["at-sca-3"]], capsys)
    assert run_json([audio["flac"], "--checkpoint", str(folder)], capsys)[0] == want       # train.run's OUT/pretrained
    monkeypatch.setattr(hub, "_download", lambda repo_id, revision: folder if repo_id == "owner/name" else None)
    assert run_json([audio["flac"], "--checkpoint", "owner/name"], capsys)[0] == want       # a Hub id


def test_outputs_go_where_they_are_named_never_the_current_folder(checkpoints, audio, tmp_path, capsys, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    results, errors = run_json([audio["wav"], "--checkpoint", checkpoints["at-sca-3"], "--events"], capsys)
    assert "events" in results[0] and list(work.iterdir()) == []                  # nothing in the current folder
    assert errors == ["note: no events files written (the events are in the results): give --out FOLDER to write "
                      "them"]
    table = tmp_path / "tables" / "tags.csv"
    run_json([audio["wav"], "--checkpoint", checkpoints["at-sca-3"], "--events", "--table", str(table)], capsys)
    assert sorted(p.name for p in table.parent.iterdir()) == [".fastsca-tag.lock", ".tags.csv.lock",
                                                               ".tags.csv.stamps", "events.json", "events.tsv",
                                                               "events_dcase.tsv", "tag-report.txt", "tags.csv"]
    assert list(work.iterdir()) == []



def test_events_files_never_replace_the_true_events_they_draw(checkpoints, audio, tmp_path, capsys):
    """`--out examples/` beside `--strong examples/events.tsv` (train.examples' true events) is refused before any
    audio is read; another --out takes the same run."""
    truth = tmp_path / "examples" / "events.tsv"
    truth.parent.mkdir()
    truth.write_text("filename\tonset\toffset\tevent_label\nshort.wav\t0.0\t0.2\ta\n")
    before = truth.read_bytes()
    asked = [audio["wav"], "--checkpoint", checkpoints["at-sca-3"], "--events", "--strong", str(truth), "--out"]
    with pytest.raises(SystemExit) as stopped:
        tag.main([*asked, str(truth.parent)])
    assert stopped.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        f"error: --strong {truth}: is the events.tsv this run writes in --out {truth.parent}; give another --out"]
    assert truth.read_bytes() == before and "events.json" not in {p.name for p in truth.parent.iterdir()}
    tag.main([*asked, str(tmp_path / "tagged")])
    assert truth.read_bytes() == before and (tmp_path / "tagged" / "events.tsv").is_file()

def test_quiet_prints_a_summary_instead_of_each_file(checkpoints, audio, tmp_path, capsys):
    table = tmp_path / "tags.csv"
    tag.main([audio["flac"], audio["wav"], audio["same1"], "--checkpoint", checkpoints["at-sca-3"], "--quiet",
              "--table", str(table)])
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == [f"tagged 3 of 3 file(s) (0 silent); table: {table}"]
    assert len(table.read_text().splitlines()) == 4


def test_json_carries_the_embeddings_on_request(checkpoints, audio, capsys):
    import fastsca
    results, _ = run_json([audio["flac"], "--checkpoint", checkpoints["at-sca-3"], "--embeddings"], capsys)
    tagged = fastsca.Tagger.from_pretrained(checkpoints["at-sca-3"], device="cpu")(audio["flac"])
    # 1e-5: the JSON rounds to 5 decimals
    np.testing.assert_allclose(results[0]["embedding"], tagged.embedding, atol=1e-5, rtol=0)
    np.testing.assert_allclose(results[0]["frame_embeddings"], tagged.frame_embeddings, atol=1e-5, rtol=0)
    assert "embedding" not in run_json([audio["flac"], "--checkpoint", checkpoints["at-sca-3"]], capsys)[0][0]
