"""Several nodes over loopback: two torchrun agents (2 nodes x 1 process, c10d rendezvous on 127.0.0.1) train
the tiny built-in set into one shared --out, one worker is killed and torchrun's restart continues from latest.pt;
what that run equals exactly (a 1 node x 2 process run, the global batches of a one-process run), and why it is
not bit-identical to one process training on the whole batch (training-mode BatchNorm sees half-batches)."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fastsca.frontend import LogMelConfig
from fastsca.model import build_model
from fastsca.run_options import RunOptions
from train import distributed
from train.data.loader import LoaderConfig, LogMelLoader
from train.loss import clip_bce
from train.data.shards import ShardIndex
from train.data.synth import ensure_builtin

from test_train_run import BUILTIN, CHANNELS, records, tiny_args

LOADER = dict(sampler="shuffle", seed=0, num_workers=1, mixup_alpha=0.0, spec_augment=False)
# the regularisation is pinned: a recipe or profile that turns it on would draw it per rank (see docs/distributed.md)
PINNED = ("--mixup-alpha", "0", "--no-spec-augment", "--threads", "1")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _node(out: Path, builtin_dir: Path, port: int, job: str, steps: int, log: Path) -> subprocess.Popen:
    """One torchrun agent of a 2-node job with one process per node, rendezvous at 127.0.0.1:port."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
               "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", job,
               "--max-restarts", "1", "--monitor-interval", "0.2", "-m", "train.run",
               *tiny_args(out, builtin_dir, steps, "--batch-size", "8", "--eval-every", "4", *PINNED)]
    # without it the restarted workers can read the dead ones' gloo addresses from the agents' shared store
    # (pytorch/pytorch#135712; seen here: "Gloo connectFullMesh failed ... Connection refused")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}
    return subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT, text=True, env=env)


def _children(pid: int) -> list[int]:
    """PIDs whose parent is `pid` (a torchrun agent's workers)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
        except (OSError, ValueError):
            continue
        if entry.name.isdigit() and int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def _wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def builtin_files(builtin_dir):
    return ensure_builtin(builtin_dir, BUILTIN)


@pytest.mark.slow
def test_two_ranks_batches_are_the_halves_of_the_one_process_batch(builtin_files):
    """The sampler deals the global order out round-robin: at every step rank r's 8 clips are rows r::2 of the
    one-process run's 16, so the 2 x 8 run trains on exactly the 16-clip run's global batches."""
    train_path, _ = builtin_files
    index = ShardIndex.open(train_path)
    log_mel = LogMelConfig(sample_rate=index.sample_rate, clip_samples=index.clip_samples)
    with LogMelLoader(train_path, LoaderConfig(batch_size=16, **LOADER), log_mel) as whole, \
            LogMelLoader(train_path, LoaderConfig(batch_size=8, **LOADER), log_mel, rank=0, world_size=2) as first, \
            LogMelLoader(train_path, LoaderConfig(batch_size=8, **LOADER), log_mel, rank=1, world_size=2) as second:
        assert len(whole) == len(first) == len(second) == 256 // 16
        for (mel, target), (mel0, target0), (mel1, target1) in zip(whole, first, second):
            torch.testing.assert_close(mel[0::2], mel0, rtol=0, atol=0)
            torch.testing.assert_close(mel[1::2], mel1, rtol=0, atol=0)
            torch.testing.assert_close(target[0::2], target0, rtol=0, atol=0)
            torch.testing.assert_close(target[1::2], target1, rtol=0, atol=0)


def _gradients(model: torch.nn.Module, log_mel: torch.Tensor, target: torch.Tensor) -> list[torch.Tensor]:
    model.zero_grad()
    clip_bce(model(log_mel).clip, target).backward()
    return [p.grad.clone() for p in model.parameters()]


def test_the_averaged_half_batch_gradient_is_the_whole_batch_gradient_but_for_batchnorm():
    """What DDP does with 2 ranks of 8 (the mean of the two half-batch gradients) is the 16-clip gradient as far
    as floating point goes, when BatchNorm normalises with fixed statistics; in training mode each half is
    normalised with its own mean and variance, and the step differs from the one-process step by far more."""
    torch.manual_seed(int.from_bytes(os.urandom(4), "little"))
    # the model and input shape of the torchrun runs below (1 s clips: 40 frames)
    model = build_model("at-sca-3", RunOptions(fused_attention=False), num_classes=10, input_frames=40,
                        channels=tuple(map(int, CHANNELS.split(","))))
    log_mel, target = torch.randn(16, 1, 40, 64), (torch.rand(16, 10) < 0.2).float()

    def relative_difference() -> float:
        whole = _gradients(model, log_mel, target)
        halves = [_gradients(model, log_mel[r::2], target[r::2]) for r in (0, 1)]
        averaged = torch.cat([((a + b) / 2).flatten() for a, b in zip(*halves)])
        whole = torch.cat([g.flatten() for g in whole])
        return float((averaged - whole).norm() / whole.norm())

    model.eval()          # BatchNorm with its running statistics: every clip's output is its own
    fixed = relative_difference()
    model.train()         # BatchNorm with the batch's statistics: the half-batches see other ones
    batch_statistics = relative_difference()
    assert fixed < 1e-5
    assert batch_statistics > 0.1      # 0.64-0.65 over three seeds; 5e-8 to 1e-7 with fixed statistics


def test_only_a_restart_of_the_job_that_wrote_latest_pt_resumes(tmp_path, monkeypatch):
    out, job = tmp_path / "run", f"job-{os.urandom(4).hex()}"
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    assert distributed.resumes_after_restart(out, False, True) is False          # no torchrun: the flag decides
    assert distributed.resumes_after_restart(out, True, True) is True
    assert not out.exists()
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", job)
    assert distributed.resumes_after_restart(out, False, False) is False         # a fresh start; rank 1 records nothing
    assert not out.exists()
    assert distributed.resumes_after_restart(out, False, True) is False          # rank 0 records the job
    assert (out / distributed.JOB_FILE).read_text() == f"{job}\n"
    (out / "latest.pt").write_bytes(b"")
    assert [distributed.resumes_after_restart(out, False, main) for main in (True, False)] == [True, True]
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", f"{job}-next")                      # a new job in that folder
    assert distributed.resumes_after_restart(out, False, True) is False          # refused (train.run: pass --resume)
    assert (out / distributed.JOB_FILE).read_text() == f"{job}\n"
    assert distributed.resumes_after_restart(out, True, True) is True


def _figures(record: dict) -> dict:
    return {k: v for k, v in record.items() if k != "time" and not k.endswith("seconds")}


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["model"]


@pytest.mark.slow
def test_two_nodes_over_loopback_survive_a_killed_worker_and_equal_one_node(tmp_path, builtin_dir, builtin_files):
    """2 nodes x 1 process, one worker SIGKILLed after the step-4 checkpoint: torchrun (--max-restarts 1)
    restarts both, train.run continues from latest.pt without --resume, and the end is bit for bit the
    uninterrupted 1 node x 2 process run's."""
    steps, job = 12, f"test-{os.getpid()}"
    out = tmp_path / "two-nodes"
    port = _free_port()
    agents = [_node(out, builtin_dir, port, job, steps, tmp_path / f"node{n}.log") for n in (0, 1)]
    try:
        metrics = out / "metrics.jsonl"
        _wait_for(lambda: metrics.exists() and any(r["step"] == 4 for r in records(out, "val")), 180,
                  "the step-4 evaluation")
        [worker] = _children(agents[1].pid)
        os.kill(worker, signal.SIGKILL)
        for agent in agents:
            agent.wait(timeout=240)
    finally:
        for agent in agents:
            if agent.poll() is None:
                agent.kill()
    logs = [(tmp_path / f"node{n}.log").read_text() for n in (0, 1)]
    assert [agent.returncode for agent in agents] == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    assert "torchrun restarted this job's workers: continuing its run from" in "".join(logs)
    [resumed] = records(out, "resume")
    assert resumed["step"] in (4, 8)           # the latest.pt of the step-4 evaluation, or of step 8's if it came first
    assert [r["step"] for r in records(out, "val")] == [4, 8, 12]
    # each attempt logs its first step as first_step; the records the killed worker's attempt wrote after the
    # checkpoint are dropped on resume, so every step is there once
    first_steps = [r["step"] for r in records(out, "first_step")]
    assert first_steps == [1, resumed["step"] + 1]
    assert sorted(first_steps + [r["step"] for r in records(out, "train")]) == list(range(1, steps + 1))
    assert (out / distributed.JOB_FILE).read_text().strip() == job

    reference = tmp_path / "one-node"
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "train.run",
         *tiny_args(reference, builtin_dir, steps, "--batch-size", "8", "--eval-every", "4", *PINNED)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("latest.pt", "best.pt"):
        mine, theirs = _weights(out / name), _weights(reference / name)
        assert mine.keys() == theirs.keys()
        for key in mine:
            torch.testing.assert_close(mine[key], theirs[key], rtol=0, atol=0, msg=f"{name} {key}")
    for kind in ("val", "test"):            # every figure but the timings
        assert [_figures(r) for r in records(out, kind)] == [_figures(r) for r in records(reference, kind)]
    assert json.loads(metrics.read_text().splitlines()[-1])["kind"] == "test"
