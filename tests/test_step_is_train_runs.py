"""The step bench.whole_step counts is the one train.run takes: both call `train.step.training_step`."""
import pytest

import train.run
import train.step
import train.trainer.trainer
from bench import whole_step


class Counted(Exception):
    """Raised by the stand-in once the counted step has called training_step (nothing to compile after)."""


def test_the_trainer_binds_the_same_training_step():
    assert train.trainer.trainer.training_step is train.step.training_step


@pytest.mark.slow   # a 2-step run on the tiny built-in set (its generation shared with tests/test_train_run.py)
def test_train_run_calls_training_step(tmp_path, builtin_dir, monkeypatch):
    from test_train_run import tiny_args

    calls = []
    real = train.step.training_step

    def counting(*args, **kwargs):
        calls.append(kwargs.get("step", args[-1]))
        return real(*args, **kwargs)

    monkeypatch.setattr(train.trainer.trainer, "training_step", counting)
    train.run.main(tiny_args(tmp_path / "run", builtin_dir, 2))
    assert calls == [1, 2]


def test_bench_whole_step_counts_training_step(monkeypatch):
    calls = []

    def stand_in(train_model, parameters, optimiser, log_mel, target, grad_clip, watch, step):
        calls.append((tuple(log_mel.shape), tuple(target.shape), grad_clip, step, type(optimiser).__name__,
                      optimiser.defaults["fused"]))
        raise Counted

    monkeypatch.setattr(train.step, "training_step", stand_in)
    with pytest.raises(Counted):
        whole_step.record("fastsca", 3, channels=(3, 5, 8, 11, 13, 21, 37), frames=28, classes=7)
    # the loader's (B, 1, T, F) log-mel, float targets, the default clip of 1.0, fused AdamW as on CUDA
    assert calls == [((3, 1, 28, 64), (3, 7), 1.0, 1, "AdamW", True)]
