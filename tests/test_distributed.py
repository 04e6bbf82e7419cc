"""DDP on CPU (gloo): the collectives with unequal counts per rank, and a 2-process torchrun training run
whose gathered eval metrics equal a single-process evaluation of its checkpoint."""
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from fastsca.inference import load_trained_model
from fastsca.model import build_model
from fastsca.run_options import RunOptions
from train import distributed
from train.evaluate import evaluate
from train.data.loader import LoaderConfig, LogMelLoader

from test_train_run import records, tiny_args


def _collectives(rank: int, world_size: int, port: int, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        rows = torch.full((rank + 1, 3), float(rank))          # rank r holds r + 1 rows
        gathered = distributed.gather_rows(rows)
        flags = [distributed.any_rank(rank == world_size - 1, torch.device("cpu")),
                 distributed.any_rank(False, torch.device("cpu"))]
        objects = distributed.gather_objects({"rank": rank})
        results[rank] = (gathered, flags, objects)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_collectives_with_unequal_counts():
    world_size = 3
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_collectives, args=(world_size, 29000 + os.getpid() % 1000, results), nprocs=world_size)
        results = dict(results)
    expected = torch.cat([torch.full((r + 1, 3), float(r)) for r in range(world_size)])
    for rank in range(world_size):
        gathered, flags, objects = results[rank]
        torch.testing.assert_close(gathered, expected)
        assert flags == [True, False]
        assert objects == [{"rank": r} for r in range(world_size)]


def _strided_grads(model: torch.nn.Module) -> list[str]:
    return [name for name, p in model.named_parameters() if p.grad.stride() != p.stride()]


@pytest.mark.slow
def test_gradients_arrive_with_their_parameters_strides():
    """The local branch's w1 when T // r = 1: its gradient's size-1 dimension comes back strided otherwise."""
    torch.manual_seed(0)
    model = build_model("at-sca-2", RunOptions(fused_attention=False), num_classes=5, input_frames=40,
                        channels=(4, 4, 8, 8, 8, 8, 8))
    twin = build_model("at-sca-2", RunOptions(fused_attention=False), num_classes=5, input_frames=40,
                       channels=(4, 4, 8, 8, 8, 8, 8))
    twin.load_state_dict(model.state_dict())
    distributed.match_grad_strides(model)
    log_mel = torch.randn(3, 1, 40, 64)
    model(log_mel).clip.sum().backward()
    twin(log_mel).clip.sum().backward()
    assert any(".w1" in name for name in _strided_grads(twin))   # what DDP would warn about
    assert _strided_grads(model) == []
    for mine, theirs in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(mine.grad, theirs.grad, rtol=0, atol=0)


def test_a_gradient_in_another_layout_is_copied_into_the_parameters():
    parameter = torch.randn(7, 1, 5)
    same_memory = torch.randn(7, 5).unsqueeze(1).as_strided((7, 1, 5), (5, 1, 1))
    viewed = distributed._in_layout_of(same_memory, parameter)
    assert viewed.stride() == (5, 5, 1) and viewed.data_ptr() == same_memory.data_ptr()
    torch.testing.assert_close(viewed, same_memory, rtol=0, atol=0)
    transposed = torch.randn(5, 7).t().unsqueeze(1)            # (7, 1, 5) with strides (1, 7, 7)
    copied = distributed._in_layout_of(transposed, parameter)
    assert copied.stride() == (5, 5, 1)
    torch.testing.assert_close(copied, transposed, rtol=0, atol=0)


def test_single_process_collectives_are_identities():
    rows = torch.randn(5, 2)
    assert distributed.gather_rows(rows) is rows
    assert distributed.any_rank(True, torch.device("cpu")) is True
    assert distributed.gather_objects(3) == [3]


@pytest.fixture(scope="module")
def builtin_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("builtin")


@pytest.mark.slow
def test_torchrun_two_processes_gathers_the_whole_eval_split(tmp_path, builtin_dir):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "train.run",
         *tiny_args(out, builtin_dir, 12, "--eval-every", "6")],
        capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    # 1 s clips leave 10 frames at the attention blocks, so w1 of the local branch is (F, 1, 10): without
    # match_grad_strides its gradient comes back (1, 1, 1)-strided and DDP warns
    assert "Grad strides do not match bucket view strides" not in result.stderr
    evals = records(out, "val")
    assert [e["step"] for e in evals] == [6, 12]
    # only rank 0 writes: one line per event, and the step's clips/s counts both processes' batches
    assert len(records(out, "first_step")) == 1
    assert json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["kind"] == "test"
    latest = torch.load(out / "latest.pt", weights_only=True)
    assert latest["step"] == 12 and len(latest["loader"]) == 2 and len(latest["rng"]) == 2
    assert [state["sampler"]["rank"] for state in latest["loader"]] == [0, 1]

    # the 101 test clips split 51 + 50 over the ranks; gathered, each counts once and the metrics are the
    # one-process ones (the ranks evaluate with rank 0's BatchNorm statistics, best.pt's)
    [test] = records(out, "test")
    assert test["clips"] == 101
    trained = load_trained_model(out / "best.pt")
    eval_path = next(builtin_dir.glob("synth-*/eval.h5"))
    with LogMelLoader(eval_path, LoaderConfig(batch_size=64, sampler="sequential", drop_last=False, num_workers=1),
                      trained.log_mel) as loader:
        metrics, clips = evaluate(trained.model, loader, torch.device("cpu"))
    assert clips == 101
    for key, value in metrics.summary().items():
        assert test[key] == pytest.approx(value, abs=1e-6)
