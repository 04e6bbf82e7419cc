"""Own data without AudioSet ids: manifest layouts (ESC-50, UrbanSound8K, FSD50K, generic) recognised from the
header, class-folder trees, splits, folds and groups, windows over long files, and the real UrbanSound8K clips."""
import csv
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import soundfile

from train import pack as pack_module
from train.data.csv_meta import MetadataError
from train.data.manifest import AudioFiles, read_folder, read_manifest
from train.pack import PackConfig, main, pack
from train.data.shards import ShardIndex

REAL_AUDIO = Path(__file__).parents[2] / "shared" / "real-audio"


@pytest.fixture
def in_process_pool(monkeypatch):
    """Decode in threads: the spawned workers' imports (torch, through fastsca) cost seconds per pack; the
    process pool itself is exercised by tests/test_pack.py and the real-audio test."""
    monkeypatch.setattr(pack_module, "ProcessPoolExecutor", lambda workers, **_: ThreadPoolExecutor(workers))


def write_tone(path: Path, seconds: float, hz: float, rate: int = 16000, channels: int = 1) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(round(seconds * rate)) / rate
    wave = 0.3 * np.sin(2 * np.pi * hz * t + np.random.default_rng([round(hz), len(t)]).uniform(0, 6))
    data = np.stack([wave] * channels, axis=1) if channels > 1 else wave
    soundfile.write(path, data, rate)
    return wave


def dominant_hz(waveform: np.ndarray) -> float:
    return float(np.fft.rfftfreq(len(waveform), 1 / 16000)[np.abs(np.fft.rfft(waveform)).argmax()])


LAYOUTS = {
    "ESC-50": ("filename,fold,target,category,esc10,src_file,take\n"
               "1-100032-A-0.wav,1,0,dog,True,100032,A\n1-100038-A-14.wav,3,14,chirping_birds,False,100038,A\n",
               [("1-100032-A-0.wav", ("dog",), 1, "100032", "", None),
                ("1-100038-A-14.wav", ("chirping_birds",), 3, "100038", "", None)]),
    "UrbanSound8K": ("slice_file_name,fsID,start,end,salience,fold,classID,class\n"
                     "100032-3-0-0.wav,100032,0.0,0.317551,1,5,3,dog_bark\n"
                     "100263-2-0-117.wav,100263,58.5,62.5,1,5,2,children_playing\n",
                     [("100032-3-0-0.wav", ("dog_bark",), 5, "100032", "", None),
                      ("100263-2-0-117.wav", ("children_playing",), 5, "100263", "", None)]),
    "FSD50K dev": ('fname,labels,mids,split\n64760,"Electric_guitar,Guitar,Plucked_string_instrument",'
                   '"/m/02sgy,/m/0342h,/m/0fx80y",train\n16399,Bark,/m/05tny_,val\n',
                   [("64760", ("/m/02sgy", "/m/0342h", "/m/0fx80y"), -1, "", "train", None),
                    ("16399", ("/m/05tny_",), -1, "", "val", None)]),
    "FSD50K eval": ('fname,labels,mids\n37199,"Chink_and_clink,Glass",/m/07q7njn,/m/039jq\n',
                    None),
    "generic": ('File,Labels,Fold,Recording,Start,End\nsub/a.flac,"x,y",2,rec1,30,40\nb.wav,y,,,,\n',
                [("sub/a.flac", ("x", "y"), 2, "rec1", "", (30.0, 40.0)), ("b.wav", ("y",), -1, "", "", None)]),
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_layouts_are_recognised_from_the_header(tmp_path, layout):
    text, expected = LAYOUTS[layout]
    if expected is None:   # FSD50K eval.csv's mids field is unquoted here: 4 fields for a 3-field header
        path = tmp_path / "eval.csv"
        path.write_text(text)
        with pytest.raises(MetadataError, match=r"eval\.csv:2: 4 fields, the header has 3; is a field with commas "
                                                r"unquoted\?"):
            read_manifest(path, AudioFiles(tmp_path))
        path.write_text(text.replace(",/m/07q7njn,/m/039jq", ',"/m/07q7njn,/m/039jq"'))
        expected = [("37199", ("/m/07q7njn", "/m/039jq"), -1, "", "eval", None)]
    else:
        path = tmp_path / "manifest.csv"
        path.write_text(text)
    names = [row[0] for row in expected]
    for name in names[:1]:   # the first row's file exists (FSD50K: under its stem, any extension)
        write_tone(tmp_path / "audio" / (name if "." in name else name + ".flac"), 0.1, 440)
    items, shown, found = read_manifest(path, AudioFiles(tmp_path / "audio"))
    assert found == layout
    assert [(i.name, i.labels, i.fold, i.group, i.split, None if i.start is None else (i.start, i.end))
            for i in items] == expected
    assert items[0].path is not None and items[0].problem == ""
    assert all(i.path is None and i.problem.startswith("missing: no file") for i in items[1:])
    if layout.startswith("FSD50K"):
        assert shown[expected[0][1][0]] in ("Electric_guitar", "Chink_and_clink")


def test_a_header_without_file_or_label_column_is_one_line(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("name,tag\na.wav,dog\n")
    with pytest.raises(MetadataError, match=r"m\.csv:1: header 'name,tag' names no file column .*docs/data\.md"):
        read_manifest(path, AudioFiles(tmp_path))
    path.write_text("file,label,fold\na.wav,dog,two\n")
    with pytest.raises(MetadataError, match=r"m\.csv:2: fold 'two' is not an integer"):
        read_manifest(path, AudioFiles(tmp_path))


def test_pack_own_data_with_splits_folds_groups_and_windows(tmp_path, in_process_pool):
    audio = tmp_path / "audio"
    tones = np.random.default_rng(100).choice(np.arange(3, 30) * 50.0, 3, replace=False)   # three distinct tones
    hz = dict(zip(("long", "short", "val"), tones))
    write_tone(audio / "long.wav", 2.5, hz["long"])
    write_tone(audio / "deep" / "short.flac", 0.4, hz["short"], rate=44100, channels=2)
    write_tone(audio / "val.wav", 1.0, hz["val"])
    manifest = tmp_path / "m.csv"
    manifest.write_text("file,labels,fold,group,split\nlong.wav,\"cat,dog\",3,r1,train\nshort.flac,dog,4,,train\n"
                        "val.wav,bird,,r9,val\ngone.wav,cat,1,r2,train\n")
    summary = pack(PackConfig((), None, audio, tmp_path / "out", shard_size=2, workers=1, clip_samples=16000,
                              manifests=(manifest,), fit="window"))
    assert summary["packed"] == 5 and summary["skipped"] == 1 and set(summary["splits"]) == {"train", "val"}
    train = ShardIndex.open(tmp_path / "out" / "train")
    assert train.label_names == ("bird", "cat", "dog") and train.counts == (4, 0)
    assert train.folds().tolist() == [3, 3, 3, 4] and train.groups() == ["r1", "r1", "r1", ""]
    assert [train.read(i)[1].tolist() for i in range(4)] == [[0, 1, 1]] * 3 + [[0, 0, 1]]
    waves = [train.read(i)[0] / 32767 for i in range(4)]
    assert [dominant_hz(w) for w in waves] == [hz["long"]] * 3 + [hz["short"]]
    assert np.all(waves[2][8000:] == 0) and np.abs(waves[2][:7900]).max() > 0.25    # 2.5 s: third window half
    with open(tmp_path / "out" / "train" / "pack_report.csv") as handle:
        report = [(r["clip"], r["reason"].split(":")[0], r["cut"]) for r in csv.DictReader(handle)]
    assert report == [("long.wav#0", "", "window 1/3"), ("long.wav#1", "", "window 2/3"),
                      ("long.wav#2", "", "window 3/3, padded"), ("short.flac", "", "whole file, padded"),
                      ("gone.wav", "missing", "")]
    val = ShardIndex.open(tmp_path / "out" / "val")
    assert val.label_names == train.label_names and val.folds().tolist() == [-1] and val.groups() == ["r9"]


def test_class_folders_pack_with_a_label_list(tmp_path, in_process_pool, capsys):
    audio = tmp_path / "audio"
    for name in ("rain/a.wav", "rain/x/b.ogg", "wind/c.flac", "snow/d.wav"):
        write_tone(audio / name, 0.5, 700)
    (audio / "notes.txt").write_text("not audio")
    assert [i.name for i in read_folder(audio)[0]] == [
        "rain/a.wav", "rain/x/b.ogg", "snow/d.wav", "wind/c.flac"]
    (tmp_path / "classes.txt").write_text("wind\nrain\n")
    main(["--audio-dir", str(audio), "--out", str(tmp_path / "out"), "--labels", str(tmp_path / "classes.txt"),
          "--clip-seconds", "1", "--workers", "1"])
    assert "packed 3 clips into 1 shards" in capsys.readouterr().out
    split = ShardIndex.open(tmp_path / "out")
    assert split.label_names == ("wind", "rain") and [split.read(i)[1].tolist() for i in range(3)] == [
        [0, 1], [0, 1], [1, 0]]
    rows = list(csv.reader(open(tmp_path / "out" / "pack_report.csv")))
    assert rows[1][0] == "snow/d.wav" and rows[1][2] == "label: 'snow' is not in --labels " + str(
        tmp_path / "classes.txt")


@pytest.mark.slow
@pytest.mark.skipif(not REAL_AUDIO.is_dir(), reason="../shared/real-audio is absent (387 UrbanSound8K clips)")
def test_the_real_urbansound8k_clips_pack_with_one_command(tmp_path, in_process_pool, capsys):
    main(["--manifest", str(REAL_AUDIO / "labels.csv"), "--audio-dir", str(REAL_AUDIO / "clips"),
          "--out", str(tmp_path / "us8k"), "--clip-seconds", "4", "--workers", "2"])
    assert "packed 387 clips into 1 shards" in capsys.readouterr().out
    split = ShardIndex.open(tmp_path / "us8k")
    with open(REAL_AUDIO / "labels.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert split.num_clips == 387 and split.clip_samples == 64000
    assert split.label_names == tuple(sorted({r["label"] for r in rows}))
    assert split.folds().tolist() == [int(r["fold"]) for r in rows]
    assert split.groups() == [r["recording"] for r in rows]
    column = {name: k for k, name in enumerate(split.label_names)}
    picked = int(np.random.default_rng(158).integers(387))
    assert split.read(picked)[1].tolist() == np.eye(10, dtype=int)[column[rows[picked]["label"]]].tolist()
    original, rate = soundfile.read(REAL_AUDIO / "clips" / rows[picked]["filename"], always_2d=True)
    stored = split.read(picked)[0] / 32767
    kept = round(len(original) * 16000 / rate)
    assert np.sqrt(np.mean(stored[:kept] ** 2)) == pytest.approx(np.sqrt(np.mean(original.mean(axis=1) ** 2)),
                                                                 rel=0.02)
