"""Process-group set-up for `torchrun` (NCCL on GPU, gloo on CPU), the few collectives training needs, and
the resume decision after torchrun restarts the workers of a job (`--max-restarts`).

Run as a single process, every function here is the identity, so the training loop has no branches on it.
"""
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Context:
    """Where this process sits: its rank among world_size processes and the device it drives."""

    rank: int
    """Global rank, 0 for a single process."""
    world_size: int
    """Processes in the job."""
    device: torch.device
    """cuda:LOCAL_RANK where there is a GPU, else cpu."""

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes checkpoints, logs and the progress bar."""
        return self.rank == 0


def setup() -> Context:
    """Join the process group torchrun describes in the environment (RANK, WORLD_SIZE, LOCAL_RANK), if any."""
    cuda = torch.cuda.is_available()
    if "WORLD_SIZE" not in os.environ:
        return Context(0, 1, torch.device("cuda" if cuda else "cpu"))
    local_rank = int(os.environ["LOCAL_RANK"])
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if cuda else "gloo", device_id=device if cuda else None)
    return Context(dist.get_rank(), dist.get_world_size(), device)


JOB_FILE = ".torchrun-job"
"""OUT/.torchrun-job: the rendezvous run id of the torchrun job that started the run in OUT."""


def resumes_after_restart(out: Path, resume: bool, is_main: bool) -> bool:
    """Whether the run in `out` continues from out/latest.pt: `resume` (the --resume flag), or this torchrun job
    (TORCHELASTIC_RUN_ID, the rendezvous id) started that run and torchrun has restarted the workers since (a
    worker died; every worker restarts with the same command). TORCHELASTIC_RESTART_COUNT cannot tell: it
    counts one agent's restarts, and an agent whose workers were restarted because another node's died keeps
    0. So the attempt that starts a fresh run records the job's id in out/JOB_FILE (rank 0, before latest.pt
    exists), and only a latest.pt beside this job's id is continued: a first attempt that refused to start
    (latest.pt of an older run there and no --resume) refuses again when restarted."""
    job = os.environ.get("TORCHELASTIC_RUN_ID")
    latest, recorded = out / "latest.pt", out / JOB_FILE
    if job is None or resume:
        return resume
    if not latest.exists():
        if is_main:
            _record_job(out, job)
        return False
    return recorded.exists() and recorded.read_text().strip() == job


def _record_job(out: Path, job: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f"{JOB_FILE}.tmp"
    tmp.write_text(f"{job}\n")
    os.replace(tmp, out / JOB_FILE)


def teardown() -> None:
    """Leave the process group (no-op for a single process)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank if `flag` is true on any: ranks must stop at the same step or the next
    all-reduce would hang. One scalar all-reduce, only when distributed."""
    if not dist.is_initialized():
        return flag
    value = torch.tensor([float(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def gather_rows(rows: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's (n_rank, ...) tensor in rank order; the n_rank may differ (the last
    eval shard is shorter), so each is padded to the largest for all_gather and trimmed after."""
    if not dist.is_initialized():
        return rows
    count = torch.tensor([rows.shape[0]], device=rows.device)
    counts = [torch.zeros_like(count) for _ in range(dist.get_world_size())]
    dist.all_gather(counts, count)
    longest = int(max(c.item() for c in counts))
    padded = torch.zeros((longest, *rows.shape[1:]), dtype=rows.dtype, device=rows.device)
    padded[: rows.shape[0]] = rows
    gathered = [torch.zeros_like(padded) for _ in counts]
    dist.all_gather(gathered, padded)
    return torch.cat([g[: int(c.item())] for g, c in zip(gathered, counts)])


def broadcast_buffers(module: torch.nn.Module) -> None:
    """Give every rank rank 0's buffers. BatchNorm running statistics drift apart between ranks (each
    updates them from its own batches; DDP re-broadcasts rank 0's only at the next forward), so without
    this each rank would evaluate its shard with other statistics than the checkpoint holds."""
    if not dist.is_initialized():
        return
    for buffer in module.buffers():
        dist.broadcast(buffer, src=0)


def gather_objects(obj) -> list:
    """Every rank's picklable `obj`, in rank order (on every rank)."""
    if not dist.is_initialized():
        return [obj]
    objects = [None] * dist.get_world_size()
    dist.all_gather_object(objects, obj)
    return objects


def match_grad_strides(module: torch.nn.Module) -> None:
    """Make every parameter's gradient arrive with the parameter's own strides, the layout of DDP's bucket views.

    A parameter with a dimension of size 1 can get a gradient laid out otherwise in that dimension: the
    global spatial branch's first conv weight (8, 1, 5, 5) under torch.compile, where Inductor lays the
    one-channel map S out channels-last and the weight gradient follows it, (25, 1, 5, 1) instead of
    (25, 25, 5, 1); the local branch's w1 (F, 1, T) when T // r = 1. DDP compares the strides, warns "Grad
    strides do not match bucket view strides" and copies through a strided path. A stride of a size-1
    dimension addresses nothing, so the gradient viewed with the parameter's strides is the same memory;
    any other mismatch is copied into the parameter's layout once.
    """
    for parameter in module.parameters():
        if parameter.requires_grad:
            parameter.register_hook(lambda grad, p=parameter: _in_layout_of(grad, p))


def _in_layout_of(grad: torch.Tensor, parameter: torch.Tensor) -> torch.Tensor:
    """`grad` with the strides of `parameter` (a view where they differ only in size-1 dimensions)."""
    if grad.stride() == parameter.stride():
        return grad
    if all(g == p or n == 1 for g, p, n in zip(grad.stride(), parameter.stride(), grad.shape)):
        return grad.as_strided(grad.shape, parameter.stride())
    return torch.empty_like(parameter, memory_format=torch.preserve_format).copy_(grad)
