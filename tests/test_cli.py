"""The command lines a user meets first: --help of every `python -m` entry point, describe's model options
(the same as train.run's), and the plain-language errors of bad flags."""
import argparse
import re
import subprocess
import sys
from dataclasses import fields

import pytest
import torch

import bench.bill
import bench.gpu_report
import bench.static_report
import bench.summarise
import fastsca.describe
import fastsca.export
import fastsca.figure3
import fastsca.hub
import fastsca.tag
import train.convert
import train.evaluate
import train.folds
import train.pack
import train.run
import train.sweep
from fastsca.config import POOLING_PLANS, PRESETS
from fastsca.model_options import model_config
from fastsca.profiles import BUILTIN_CLASSES
from fastsca.run_options import (COMPILE_MODES, PROFILE_RUN_OPTIONS, RunOptions, resolve_compile_mode,
                                 resolve_run_options)
from train import checkpoint
from train.cli import profile_defaults
from train.profiles import PROFILES
from train.recipes import apply as apply_recipe
from train.data.synth import SynthConfig

from test_checkpoint import tiny_config, tiny_payload
from test_train_run import tiny_args

ENTRY_POINTS = {
    "train.run": train.run.main, "train.pack": train.pack.main, "train.evaluate": train.evaluate.main,
    "fastsca.tag": fastsca.tag.main, "fastsca.describe": fastsca.describe.main,
    "bench.gpu_report": bench.gpu_report.main, "bench.summarise": bench.summarise.main,
    "bench.static_report": bench.static_report.main, "fastsca.figure3": fastsca.figure3.main,
    "train.sweep": train.sweep.main, "train.folds": train.folds.main, "train.convert": train.convert.main,
    "fastsca.hub": fastsca.hub.main, "fastsca.export": fastsca.export.main, "bench.bill": bench.bill.main,
}


class _Parsed(Exception):
    """Raised in place of parsing, carrying the parser an entry point built."""


def parser_of(main, monkeypatch) -> argparse.ArgumentParser:
    """The ArgumentParser `main` builds, caught when it is about to parse."""
    def catch(parser, *args, **kwargs):
        raise _Parsed(parser)
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", catch)
    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", catch)   # train.sweep passes the rest on
    with pytest.raises(_Parsed) as caught:
        main([])
    return caught.value.args[0]


@pytest.mark.parametrize("module", ENTRY_POINTS)
def test_help_shows_the_real_command_and_exits_0(module, capsys):
    with pytest.raises(SystemExit) as exit_info:
        ENTRY_POINTS[module](["--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0
    assert out.startswith(f"usage: python -m {module} ")


@pytest.mark.parametrize("module", ENTRY_POINTS)
def test_every_option_has_a_help_text(module, monkeypatch):
    parser = parser_of(ENTRY_POINTS[module], monkeypatch)
    assert parser.prog == f"python -m {module}"
    missing = [action.option_strings or action.dest for action in parser._actions if not action.help]
    assert missing == []


def test_run_description_does_not_repeat_the_usage_line(capsys):
    with pytest.raises(SystemExit):
        train.run.main(["--help"])
    text = capsys.readouterr().out
    assert text.split("examples:")[0].count("python -m train.run") == 1   # the examples at the end name it again


def test_profile_defaults_are_the_profiles_values(capsys):
    steps = {name: profile.steps for name, profile in PROFILES.items()}
    assert profile_defaults("steps") == "; ".join(f"{name}: {value}" for name, value in steps.items())
    with pytest.raises(SystemExit):
        train.run.main(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())   # argparse wraps lines
    assert "the profile's" in help_text
    for field, flag in [("steps", "--steps"), ("batch_size", "--batch-size"), ("eval_every", "--eval-every"),
                        ("warmup_steps", "--warmup-steps")]:
        assert f"{profile_defaults(field)})" in help_text, flag


@pytest.mark.parametrize("argv", [
    ["--profile", "cpu"],
    ["--profile", "gpu", "--channels", "4,8,8,16,16,32,24", "--pooling-plan", "six-pool"],
    ["--profile", "cpu", "--pooling-plan", "time-freq"],
])
def test_describe_builds_the_model_train_run_builds(argv):
    run_args = train.run.parse_args(argv + ["--preset", "at-csa-2"])
    describe_args = fastsca.describe.build_parser().parse_args(["at-csa-2", *argv, "--num-classes", "10"])
    profile = argv[1]
    frames = 40 * PROFILES[profile].clip_seconds
    expected = model_config(run_args, run_args.preset, PROFILES[profile], num_classes=10, input_frames=frames)
    assert fastsca.describe.model_from_args(describe_args) == expected
    if "--pooling-plan" in argv:
        assert expected.pools == POOLING_PLANS[argv[argv.index("--pooling-plan") + 1]]
    if "--channels" not in argv:
        assert expected.channels == (PROFILES[profile].channels or PRESETS["at-csa-2"].channels)


@pytest.mark.parametrize("profile", ["cpu", "gpu"])
@pytest.mark.parametrize("flag, fused", [([], None), (["--fused-attention"], True), (["--no-fused-attention"], False)])
def test_fused_attention_flag_overrides_the_profile(profile, flag, fused, capsys):
    args = train.run.parse_args(["--profile", profile, *flag])
    expected = PROFILE_RUN_OPTIONS[profile]["fused_attention"] if fused is None else fused
    assert resolve_run_options(vars(args), profile, cuda=False).fused_attention is expected
    # how the model runs is not what it is: describe, which shows the model, takes no execution flag
    if flag:
        with pytest.raises(SystemExit):
            fastsca.describe.build_parser().parse_args(["at-sca-3", "--profile", profile, *flag])
        assert "unrecognized arguments" in capsys.readouterr().err


@pytest.mark.parametrize("cuda", [False, True])
def test_run_options_come_from_flag_then_recipe_then_profile_then_device(cuda):
    device = {"channels_last": cuda, "precision": "bf16" if cuda else "fp32"}
    assert resolve_run_options(vars(train.run.parse_args([])), "cpu", cuda) == RunOptions(
        fused_attention=False, compile_mode="reduce-overhead" if cuda else "default", **device)
    recipe, _ = apply_recipe(train.run.parse_args(["--recipe", "audioset-balanced"]))   # the recipe compiles
    assert resolve_run_options(vars(recipe), "gpu", cuda).compile is True
    flag, _ = apply_recipe(train.run.parse_args(["--recipe", "audioset-balanced", "--no-compile"]))
    assert resolve_run_options(vars(flag), "gpu", cuda).compile is False
    # every field is taken by its name from what was given: a new field needs no change to the resolution
    given = {"fused_attention": True, "fused_backbone": True, "compile": True, "compile_backend": "eager", "compile_mode": "default",
             "channels_last": not cuda, "precision": "fp32" if cuda else "bf16"}
    assert set(given) == {f.name for f in fields(RunOptions)}
    assert resolve_run_options(given, "cpu", cuda) == RunOptions(**given)


@pytest.mark.parametrize("options, words", [
    (dict(compile_mode="fast"), "compile_mode must be one of default, reduce-overhead"),
    (dict(precision="fp16"), "precision must be one of fp32, bf16, got 'fp16'"),
])
def test_bad_run_options_are_one_line(options, words):
    with pytest.raises(ValueError, match=re.escape(words)):
        RunOptions(**options)


def test_run_options_autocast_at_their_precision():
    x = torch.randn(3, 5)
    with RunOptions(precision="bf16").autocast(torch.device("cpu")):
        assert (x @ x.T).dtype == torch.bfloat16
    with RunOptions(precision="fp32").autocast(torch.device("cpu")):
        assert (x @ x.T).dtype == torch.float32


def test_compile_mode_help_says_what_each_mode_does(capsys):
    with pytest.raises(SystemExit):
        train.run.main(["--help"])
    help_text = "".join(capsys.readouterr().out.split())   # argparse wraps lines, also at the hyphens of a mode
    assert "--compile-mode{" + ",".join(COMPILE_MODES) + "}" in help_text
    for mode, meaning in COMPILE_MODES.items():
        assert "".join(f"{mode}: {meaning}".split()) in help_text
    assert "(default:reduce-overheadonCUDAwiththeinductorbackend,elsedefault)" in help_text


@pytest.mark.parametrize("requested, backend, cuda, expected", [
    (None, "inductor", True, "reduce-overhead"),
    (None, "inductor", False, "default"),
    (None, "eager", True, "default"),
    ("max-autotune", "inductor", False, "max-autotune"),
])
def test_compile_mode_defaults_by_device(requested, backend, cuda, expected):
    assert resolve_compile_mode(requested, backend, cuda) == expected


def test_compile_mode_of_another_backend_is_one_line_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train.run.main(["--compile", "--compile-backend", "eager", "--compile-mode", "reduce-overhead",
                        "--out", str(tmp_path / "out"), "--builtin-dir", str(tmp_path / "builtin")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: --compile-mode reduce-overhead is a mode of the inductor backend; --compile-backend eager takes no "
        "mode: drop --compile-mode or use the inductor backend"]
    assert not (tmp_path / "builtin").exists()   # refused before the built-in set is generated


def test_describe_cpu_profile_table(capsys):
    fastsca.describe.main(["at-sca-3", "--profile", "cpu", "--pooling-plan", "time-freq"])
    table = capsys.readouterr().out
    channels = ",".join(map(str, PROFILES["cpu"].channels))
    assert f"input (1, 1, {40 * PROFILES['cpu'].clip_seconds:g}, 64), channels {channels}" in table
    frames = int(10 * PROFILES["cpu"].clip_seconds)   # 40 frames/s, pooled 4x in time
    assert table.count(f"sca on {frames}x4") == 3


def test_describe_cpu_profile_shows_what_the_default_run_trains(capsys):
    fastsca.describe.main(["at-sca-3", "--profile", "cpu"])
    header = capsys.readouterr().out.splitlines()[0]
    assert SynthConfig().n_classes == BUILTIN_CLASSES == 10   # the built-in set a run without --data trains
    assert header.endswith(f"input (1, 1, 80, 64), channels 8,16,32,64,64,128,128, {BUILTIN_CLASSES} classes, "
                           f"attention pooling")
    assert PROFILES["cpu"].clip_seconds == 2.0   # 80 frames: 2 s at 40 frames per second
    fastsca.describe.main(["at-sca-3"])   # the gpu profile: the paper's model, AudioSet's classes
    assert capsys.readouterr().out.splitlines()[0].endswith("input (1, 1, 400, 64), channels "
                                                            "32,64,128,256,256,512,512, 527 classes, "
                                                            "attention pooling")


def test_run_help_ends_with_examples(capsys):
    with pytest.raises(SystemExit):
        train.run.main(["--help"])
    lines = capsys.readouterr().out.rstrip().splitlines()
    start = lines.index("examples:")
    assert lines[start:] == train.run.EXAMPLES.rstrip().splitlines()
    assert all(line.startswith(("  python -m train.run", "  torchrun ")) for line in lines[start + 1:])


def test_run_parser_imports_no_training_code():
    """--help answers at once: the parser needs neither Inductor, nor the SED scorers, nor DALI, nor the loop."""
    code = ("import sys, train.run; train.run.parse_args([]); print(sorted({m.split('.')[0] + '.' + m.split('.')[1] "
            "if m.startswith('torch._') else m.split('.')[0] for m in sys.modules}))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    for heavy in ("torch._inductor", "sed_scores_eval", "nvidia", "psds_eval", "matplotlib"):
        assert f"'{heavy}'" not in loaded, heavy
    code = "import sys, train.run; print(sorted(m for m in sys.modules if m.startswith('train.')))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() \
        == str(["train.cli", "train.data", "train.data.sampler", "train.profiles", "train.recipes", "train.run"])


def test_describe_bad_model_option_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        fastsca.describe.main(["at-sca-3", "--channels", "8,16"])
    assert exit_info.value.code == 2
    assert "channels has 2 blocks but pools has 7" in capsys.readouterr().err


def test_zero_clip_seconds_names_the_flag(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train.run.main(["--clip-seconds", "0", "--out", str(tmp_path / "out"), "--builtin-dir", str(tmp_path)])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == ["error: --clip-seconds must be >= 0.1 and <= 600 (the built-in set's clips: shorter ones give "
                                                               "fewer frames than the model pools), got 0"]


@pytest.mark.slow
def test_a_missing_eval_split_from_the_checkpoint_says_so(tmp_path, monkeypatch, capsys):
    path = tmp_path / "run" / "best.pt"
    path.parent.mkdir()
    checkpoint.save(path, tiny_payload(tiny_config(train_path="data/train", eval_path="data/eval")))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        train.evaluate.main(["--checkpoint", str(path)])
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(lines) == 1
    assert f"the eval split data/eval that {path} names as its run's --eval-data is not there" in lines[0]
    assert f"(read from this folder, {tmp_path})" in lines[0] and "pass --data" in lines[0]


@pytest.mark.slow
def test_a_compiled_run_says_it_is_compiling_and_where_the_cache_is(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    train.run.main(tiny_args(tmp_path / "out", tmp_path / "builtin", 3, "--eval-every", "3", "--compile",
                             "--compile-backend", "eager"))
    captured = capsys.readouterr()
    out = captured.out
    assert re.search(r"compiling the model \(first step\): \d\d:\d\d", captured.err)   # the status line
    assert f"compiling the model in the first step (a minute or more); a later run of the same model and shapes " \
           f"reuses Inductor's cache in {tmp_path / 'inductor'}" in out
    assert out.index("compiling the model") < out.index("first step: ") < out.index("(includes compilation)")
