"""The fused residual block (fastsca/backbone.py's fused path over kernels/residual_block.py's ops) against the
reference block, on the CPU with the reference passes (kernels/block_reference.py).

Tolerances, and why:
- fp32 block, forward and backward: outputs and the input gradient within 1e-5 relative and 1e-5 of the map's
  largest entry absolute (the BatchNorm scales carry ~1e-6 relative rounding into every value, so the absolute
  error of a small sum of two large terms follows the terms' size: measured up to 1.3e-5 at a 0.02 entry of a
  map whose entries reach 12), each
  parameter gradient within 1e-4 of its tensor's largest entry (test_fused_model's bound). Both blocks are
  fp32; the fused one takes the batch variance as E[y^2] - E[y]^2 from fp32 sums (over up to 133 x 99 values)
  where nn.BatchNorm2d takes the mean of squared deviations, and sums its gradients in another order: rounding
  only (measured: outputs ~1e-6; gradients ~1e-6 of the largest entry, up to 3.5e-5 for the attention's
  scalar conv bias, a sum of 13,167 terms that largely cancel), while a wrong term is off by O(1). A 1x1
  shortcut of ONE input channel before a training-mode BatchNorm is scale-invariant, so its weight's gradient is
  0 in exact arithmetic and both blocks return rounding noise: that one is held to 1e-4 of the block's largest
  gradient.
- Running statistics after 3 steps: 1e-5 relative, 1e-6 absolute (the same fp32 update; the variance rounded
  as above, measured up to 1.7e-6 relative at batch 133); num_batches_tracked exactly. Eval mode with the
  same state: bit for bit (both blocks run the reference there).
- The whole model in fp32 and in bf16: see `test_compiled_fused_model_tracks_the_reference`.
"""
import copy

import pytest
import torch

import fastsca.backbone
import train.run
from fastsca import build_model
from fastsca.attention import build_attention
from fastsca.backbone import ResidualBlock
from fastsca.backbone_plan import (CUDNN_EFFICIENCY, H100, MEMORY_EFFICIENCY, TRITON_CONV_EFFICIENCY, backbone_plan,
                                   implicit_gemm)
from fastsca.config import ModelConfig
from fastsca.describe import main as describe_main
from fastsca.export import ExportableModel
from fastsca.inference import TrainedModel
from fastsca.frontend import LogMelConfig
from fastsca.run_options import PROFILE_RUN_OPTIONS, RunOptions, options_for_device, resolve_run_options
from kernels import residual_block
from kernels.common import LAUNCHES
from test_production_path import (BATCH, MODEL, assert_bf16_as_close_as_the_reference, assert_tracks_in_fp32, batches,
                                  odd_model, train_steps)

C, T, FREQ = 7, 11, 9
STEPS = 3


def _attention(fused: bool, arrangement: str = "sca") -> torch.nn.Module:
    return build_attention(arrangement=arrangement, channels=C, time_steps=T, freq_bins=FREQ, use_global=True,
                           use_local=True, rd_ratio=4, global_mid_channels=4, global_kernel_size=5, fused=fused)


def _twins(c_in: int, pool, attention: str | None, momentum=0.1, fused_attention: bool = False):
    """A reference block and a fused one with the same random weights (BatchNorm affines not 1 and 0), with the
    `attention` arrangement on the main path (None: none)."""
    make = (lambda: _attention(fused_attention, attention)) if attention else torch.nn.Identity
    reference = ResidualBlock(c_in, C, make(), pool)
    with torch.no_grad():
        for p in reference.parameters():
            p.copy_(torch.randn_like(p) * 0.5 + (1.0 if p.dim() == 1 and p.shape[0] == C else 0.0))
    for module in reference.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = momentum
    fused = ResidualBlock(c_in, C, make(), pool, fused=True)
    fused.load_state_dict(reference.state_dict())
    for module in fused.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = momentum
    return reference.train(), fused.train()


KINK_MARGIN = 1e-5
"""Least |input| of every ReLU of the reference block on a drawn batch: 5x the largest gap between the two paths'
pre-activations (measured: 2e-6 at batch 133; typically 4e-7); at batch 133 a draw has ~1.5 ReLU inputs within
it on average, so about one draw in five qualifies."""


def _smooth_batch(reference, shape) -> torch.Tensor:
    """A random batch on which no ReLU input of the reference block lies within KINK_MARGIN of 0.

    Where one does, the two paths' pre-activations (1e-6 apart by rounding) may fall on either side of the kink,
    and each path's gradient is then a correct one-sided derivative of its own: the difference of one element's
    gradient, spread by the BatchNorms' backward over the whole batch, is not rounding. Drawn from the seeded
    generator, so the batch is the same every run."""
    probe, least = copy.deepcopy(reference), []
    probe.fused = False   # the reference path, whose ReLUs are modules
    hooks = [m.register_forward_pre_hook(lambda mod, inp: least.append(inp[0].abs().min().item()))
             for m in probe.modules() if isinstance(m, torch.nn.ReLU)]
    for _ in range(50):
        x, least[:] = torch.randn(shape), []
        with torch.no_grad():
            probe(x)
        if min(least) > KINK_MARGIN:
            break
    for hook in hooks:
        hook.remove()
    assert min(least) > KINK_MARGIN, "no smooth batch in 50 draws"
    return x


def _step(block, x, grad):
    x = x.clone().requires_grad_()
    out = block(x)
    out.backward(grad)
    grads = {name: p.grad.clone() for name, p in block.named_parameters()}
    block.zero_grad(set_to_none=True)
    return out.detach(), x.grad, grads


def _count_ops(monkeypatch) -> dict[str, int]:
    """Counts of the fused block's calls of its conv and tail ops, from now on."""
    calls = {"conv_forward": 0, "tail_forward": 0}
    for name in calls:
        op = getattr(fastsca.backbone, name)

        def counted(*args, name=name, op=op):
            calls[name] += 1
            return op(*args)
        monkeypatch.setattr(fastsca.backbone, name, counted)
    return calls


def _assert_map(actual, expected):
    torch.testing.assert_close(actual, expected, atol=1e-5 * expected.abs().max().item(), rtol=1e-5)


def _assert_grads(actual: dict, expected: dict, zero: set[str]):
    largest = max(g.abs().max().item() for g in expected.values())
    for name, wanted in expected.items():
        atol = 1e-4 * (largest if name in zero else wanted.abs().max().item())
        torch.testing.assert_close(actual[name], wanted, atol=atol, rtol=1e-5,
                                   msg=lambda m, name=name: f"gradient of {name}: {m}")


def _assert_buffers(fused, reference):
    for (name, expected), actual in zip(reference.named_buffers(), fused.buffers()):
        if expected.dtype == torch.long:
            assert torch.equal(actual, expected), name
        else:
            torch.testing.assert_close(actual, expected, atol=1e-6, rtol=1e-5, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("batch", [1, 133])
@pytest.mark.parametrize("c_in", [1, 5])
@pytest.mark.parametrize("pool", [(2, 2), (1, 2), (1, 1)])
@pytest.mark.parametrize("attention", [None, "channel"])
def test_fused_block_matches_the_reference_in_training(batch, c_in, pool, attention, monkeypatch):
    # The channel arrangement's few ReLUs (B x 1 in its MLP) are all checked for kinks by _smooth_batch; sca's
    # global and local branches hold B x 4 x T x F more behind functional ReLUs (test_compiled_fused_block_...).
    reference, fused = _twins(c_in, pool, attention)
    calls = _count_ops(monkeypatch)
    zero = {"shortcut.0.weight"} if c_in == 1 else set()
    for _ in range(STEPS):
        x = _smooth_batch(reference, (batch, c_in, T, FREQ))
        grad = torch.randn(batch, C, T // pool[0], FREQ // pool[1])
        out, dx, grads = _step(fused, x, grad)
        expected_out, expected_dx, expected_grads = _step(reference, x, grad)
        _assert_map(out, expected_out)
        _assert_map(dx, expected_dx)
        _assert_grads(grads, expected_grads, zero)
    _assert_buffers(fused, reference)
    assert calls == {"conv_forward": 3 * STEPS, "tail_forward": STEPS}   # the fused path ran
    fused.load_state_dict(reference.state_dict())   # eval runs the reference path: the same numbers bit for bit
    x = torch.randn(batch, c_in, T, FREQ)
    assert torch.equal(fused.eval()(x), reference.eval()(x))
    assert calls == {"conv_forward": 3 * STEPS, "tail_forward": STEPS}


def test_cumulative_running_statistics_with_momentum_none():
    reference, fused = _twins(5, (2, 2), None, momentum=None)
    for _ in range(STEPS):
        x = torch.randn(4, 5, T, FREQ)
        reference(x).sum().backward()
        fused(x).sum().backward()
    _assert_buffers(fused, reference)
    assert int(fused.bn1.num_batches_tracked) == STEPS


@pytest.mark.parametrize("norm", ["bn1", "bn2", "shortcut.1"])
@pytest.mark.parametrize("change", ["eval", "untracked"])
def test_a_batchnorm_without_batch_statistics_runs_the_reference(norm, change, monkeypatch):
    """A BatchNorm put in eval mode in a training block (running statistics), or built without running
    statistics, is nn.BatchNorm2d's to run: the block takes the reference path, so the numbers are the same."""
    reference, fused = _twins(5, (2, 2), None)
    for block in (reference, fused):
        bn = block.get_submodule(norm)
        if change == "eval":
            bn.eval()
        else:
            bn.track_running_stats, bn.running_mean, bn.running_var, bn.num_batches_tracked = False, None, None, None
    calls = _count_ops(monkeypatch)
    x = torch.randn(4, 5, T, FREQ)
    assert torch.equal(fused(x), reference(x)) and calls == {"conv_forward": 0, "tail_forward": 0}


def test_a_batch_of_one_value_per_channel_is_refused_as_batchnorm_refuses_it():
    reference, fused = _twins(5, (1, 1), None)
    x = torch.randn(1, 5, 1, 1)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        reference(x)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        fused(x)


# ---- the ops ----

def _vec(n: int, requires_grad: bool) -> torch.Tensor:
    return (torch.rand(n) + 0.5).requires_grad_(requires_grad)


@pytest.mark.parametrize("dtype, channels_last", [(torch.float32, False), (torch.bfloat16, True)])
@pytest.mark.parametrize("prologue", [False, True])
@pytest.mark.parametrize("k", [1, 3])
def test_conv_ops_pass_opcheck(dtype, channels_last, prologue, k):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(3, 5, T, FREQ, dtype=dtype).contiguous(memory_format=fmt)
    weight = torch.randn(C, 5, k, k)
    scale, shift = (_vec(5, True), _vec(5, True) - 1) if prologue else (None, None)
    shift = shift.detach().requires_grad_() if prologue else None
    torch.library.opcheck(residual_block.conv_forward,
                          (x.requires_grad_(), weight.requires_grad_(), scale, shift, k == 3))
    grad = torch.randn(3, C, T, FREQ, dtype=dtype).contiguous(memory_format=fmt)
    plain = [None if v is None else v.detach() for v in (scale, shift)]
    no_sums = (None, None, None)
    sums = (torch.randn_like(grad), torch.randn(C), torch.randn(C))   # y, d_sum, d_squares
    for sums_grad in (no_sums, sums):
        torch.library.opcheck(residual_block.conv_input_grad,
                              (grad, weight.detach(), x.detach() if prologue else None, *plain, *sums_grad, False))
        torch.library.opcheck(residual_block.conv_weight_grad,
                              (x.detach(), grad, list(weight.shape), *plain, *sums_grad, False))


def test_sums_leave_an_op_as_one_tensor_without_a_copy_when_they_are_its_rows():
    # The Triton passes return their per-channel sums as rows of one reduced (K, C) tensor: the op hands that
    # storage back as it is (a copy per row would be a launch each); separate tensors are stacked.
    torch.manual_seed(5)
    reduced = torch.randn(3, 7)
    together = residual_block._rows(reduced[0], reduced[1], reduced[2])
    assert together.untyped_storage().data_ptr() == reduced.untyped_storage().data_ptr()
    assert torch.equal(together, reduced)
    apart = [torch.randn(7), torch.randn(7)]
    stacked = residual_block._rows(*apart)
    assert stacked.untyped_storage().data_ptr() != apart[0].untyped_storage().data_ptr()
    assert torch.equal(stacked, torch.stack(apart))
    assert torch.equal(residual_block._rows(reduced[1], reduced[0]), reduced[[1, 0]])   # not in order: stacked


@pytest.mark.parametrize("pool", [(2, 2), (1, 2), (1, 1)])
@pytest.mark.parametrize("normalised_main", [False, True])
def test_tail_ops_pass_opcheck(pool, normalised_main):
    main = torch.randn(3, C, T, FREQ).contiguous(memory_format=torch.channels_last)
    shortcut = torch.randn(3, C, T, FREQ).contiguous(memory_format=torch.channels_last)
    main_affine = (None, None) if normalised_main else (_vec(C, True), _vec(C, True))
    args = (main.requires_grad_(), *main_affine, shortcut.requires_grad_(), _vec(C, True), _vec(C, True), list(pool))
    torch.library.opcheck(residual_block.tail_forward, args)
    plain = [a.detach() if isinstance(a, torch.Tensor) else a for a in args]
    out, argmax = residual_block.tail_forward(*plain)
    assert argmax.dtype == torch.int8 and argmax.numel() == (0 if pool == (1, 1) else out.numel())
    torch.library.opcheck(residual_block.tail_backward,
                          (torch.randn_like(out), None if pool == (1, 1) else argmax, out, *plain))


# ---- compiled ----

@pytest.mark.parametrize("pool, attention", [((2, 2), None), ((1, 2), "sca")])
def test_compiled_fused_block_matches_eager(pool, attention):
    torch._dynamo.reset()
    eager, fused = _twins(5, pool, attention, fused_attention=True)
    eager.fused = True
    compiled = torch.compile(fused, fullgraph=True)
    for _ in range(2):
        x = _smooth_batch(eager, (3, 5, T, FREQ)).contiguous(memory_format=torch.channels_last)
        grad = torch.randn(3, C, T // pool[0], FREQ // pool[1])
        out, dx, grads = _step(compiled, x, grad)
        expected_out, expected_dx, expected_grads = _step(eager, x, grad)
        _assert_map(out, expected_out)
        _assert_map(dx, expected_dx)
        _assert_grads({n.removeprefix("_orig_mod."): g for n, g in grads.items()}, expected_grads, set())
    _assert_buffers(fused, eager)


# ---- the whole model ----

def _model(fused: bool, state: dict | None) -> torch.nn.Module:
    """test_production_path's odd at-sca-3, fused attention and backbone or neither."""
    return odd_model(RunOptions(fused_attention=fused, fused_backbone=fused), state)


@pytest.mark.slow
def test_compiled_fused_model_tracks_the_reference():
    """fp32: the compiled fused model (fused backbone and attention, channels_last, Inductor, fullgraph) against the
    eager reference, test_production_path's tolerances: losses and running statistics within 1e-5, the first
    step's gradients within 1e-4 of each tensor's largest entry, parameters after 3 AdamW steps within 0.1 lr
    (AdamW moves an entry whose gradient is rounding noise by a noisy fraction of lr; a wrong gradient moves it by
    ~lr a step), the ZERO_GRADIENT ones within 3 lr.
    bf16 autocast: at batch 3 through seven small BatchNorms the eager bf16 reference's own gradients are 20-50 %
    off its fp32 ones (measured, test_production_path), so the compiled fused bf16 model is held to being no
    further from the fp32 gradients than the eager bf16 reference (relative L2 over all parameters, 1.5x + 0.05),
    its losses and running statistics within 2e-2 of fp32 (bf16's 3.9e-3 relative rounding, through 7 blocks)."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    reference = _model(False, None)
    state = {k: v.clone() for k, v in reference.state_dict().items()}
    fused = _model(True, state)
    steps = batches(1)
    fused_run = train_steps(fused, steps, compiled=True, bf16=False)
    assert_tracks_in_fp32(fused, fused_run, reference, train_steps(reference, steps, compiled=False, bf16=False))

    torch._dynamo.reset()
    steps = batches(2)
    fp32 = _model(False, state)
    fp32_run = train_steps(fp32, steps, compiled=False, bf16=False)
    _, eager_grads = train_steps(_model(False, state), steps, compiled=False, bf16=True)
    fused = _model(True, state)
    assert_bf16_as_close_as_the_reference(fused, train_steps(fused, steps, compiled=True, bf16=True), fp32, fp32_run,
                                          eager_grads)


def test_checkpoints_load_across_fused_and_reference(tmp_path):
    torch.manual_seed(0)
    fused = _model(True, None)
    train_steps(fused, batches(3), compiled=False, bf16=False)   # running statistics and weights moved by the fused path
    torch.save(fused.state_dict(), tmp_path / "fused.pt")
    reference = _model(False, None)
    assert [(k, v.shape) for k, v in reference.state_dict().items()] == \
        [(k, v.shape) for k, v in fused.state_dict().items()]
    reference.load_state_dict(torch.load(tmp_path / "fused.pt"))   # strict: the same keys
    torch.save(reference.state_dict(), tmp_path / "reference.pt")
    again = _model(True, None)
    again.load_state_dict(torch.load(tmp_path / "reference.pt"))
    log_mel = torch.randn(BATCH, 1, MODEL["input_frames"], 64)
    outputs = [model.eval()(log_mel).clip for model in (fused, reference, again)]
    assert torch.equal(outputs[0], outputs[1]) and torch.equal(outputs[0], outputs[2])


# ---- the switch, export and the tagger, the plan ----

@pytest.mark.parametrize("profile", ["cpu", "gpu"])
@pytest.mark.parametrize("flag, fused", [([], None), (["--fused-backbone"], True), (["--no-fused-backbone"], False)])
def test_fused_backbone_flag_overrides_the_profile(profile, flag, fused):
    args = train.run.parse_args(["--profile", profile, *flag])
    expected = {"cpu": False, "gpu": True}[profile] if fused is None else fused
    assert PROFILE_RUN_OPTIONS[profile]["fused_backbone"] is {"cpu": False, "gpu": True}[profile]
    for cuda in (False, True):
        assert resolve_run_options(vars(args), profile, cuda).fused_backbone is expected
    assert RunOptions().fused_backbone is False   # a model built with no options is the reference (the baseline)
    model = build_model("at-sca-3", resolve_run_options(vars(args), profile, False), **MODEL)
    assert all(block.fused is expected for block in model.blocks)


def test_inference_and_export_run_the_reference_backbone(monkeypatch):
    """A GPU's inference options turn the fused backbone on, but the Tagger's and evaluation's models are in eval
    mode, where the block runs the reference; export builds it off. Checked by making the fused ops fail."""
    def refuse(*args):
        raise AssertionError("a fused backbone op ran")
    monkeypatch.setattr(fastsca.backbone, "conv_forward", refuse)
    monkeypatch.setattr(fastsca.backbone, "tail_forward", refuse)
    cuda_options = options_for_device(torch.device("cuda"))
    assert cuda_options.fused_backbone is True
    torch.manual_seed(0)
    reference = build_model("at-sca-3", RunOptions(fused_attention=False), **MODEL).eval()
    gpu_model = build_model("at-sca-3", RunOptions(fused_attention=False, fused_backbone=True), **MODEL)
    gpu_model.load_state_dict(reference.state_dict())
    log_mel = torch.randn(2, 1, MODEL["input_frames"], 64)
    assert torch.equal(gpu_model.eval()(log_mel).clip, reference(log_mel).clip)
    config = ModelConfig.from_name("at-sca-3", **MODEL)
    trained = TrainedModel(model=gpu_model, log_mel=LogMelConfig(), label_names=tuple("abcdefg"), step=0, configs={})
    exported = ExportableModel(trained)
    assert exported.model.config == config and not exported.training
    assert not any(block.fused for block in exported.model.blocks)


def test_plan_prices_each_convolution_from_the_roofline():
    config = ModelConfig.from_name("at-sca-3")
    rows = backbone_plan(config, 256)
    assert [(r.block, r.conv) for r in rows[:3]] == [(1, "conv1"), (1, "conv2"), (1, "shortcut")] and len(rows) == 21
    row = next(r for r in rows if (r.block, r.conv) == (4, "conv2"))   # 256 -> 256, 3x3 on 100 x 8
    pixels = 256 * 100 * 8
    flops = 2 * pixels * 256 * 256 * 9
    fused_bytes = 2 * (pixels * 512 + 256 * 256 * 9)
    bandwidth = H100.bytes_per_s * MEMORY_EFFICIENCY
    triton = max(flops / (H100.bf16_flops_per_s * TRITON_CONV_EFFICIENCY["wide"]), fused_bytes / bandwidth)
    cudnn = (max(flops / (H100.bf16_flops_per_s * CUDNN_EFFICIENCY["wide"]), fused_bytes / bandwidth)
             + 2 * pixels * (256 + 2 * 256) / bandwidth)   # the statistics read and the normalised map's write + read
    assert (row.c_in, row.c_out, row.map_size, row.flops) == (256, 256, (100, 8), flops)
    assert row.intensity == pytest.approx(flops / fused_bytes)
    assert row.implicit_gemm is (triton < cudnn) is False   # compute-bound, wide: cuDNN's 60 % wins
    assert [r.implicit_gemm for r in rows if r.block == 1] == [True, True, True]   # bandwidth-bound at 32 channels
    for r in rows:   # the table and the block read one rule
        assert r.implicit_gemm is implicit_gemm(r.c_in, r.c_out, 1 if r.conv == "shortcut" else 3,
                                                256 * r.map_size[0] * r.map_size[1], r.conv == "conv2")


def test_describe_prints_the_plan(capsys):
    describe_main(["at-sca-3", "--plan-batch", "64"])
    printed = capsys.readouterr().out
    assert "per-layer rule at batch 64 on H100 SXM" in printed
    table = printed[printed.index("per-layer rule"):].splitlines()[3:]
    assert len(table) == 21
    choices = [line.split()[6] for line in table]
    rows = backbone_plan(ModelConfig.from_name("at-sca-3"), 64)
    assert choices == ["triton" if r.implicit_gemm else "cudnn" for r in rows]
    assert table[0].split()[:4] == ["1", "conv1", "1->32", "400x64"]


@pytest.mark.parametrize("implicit_gemm", ["all", "plan", "none"])
@pytest.mark.parametrize("c_in, pool, attention", [(1, (2, 2), None), (5, (1, 2), None), (5, (1, 1), "channel")])
def test_triton_passes_match_the_reference_block(implicit_gemm, c_in, pool, attention, kernel_device, monkeypatch):
    """The fused block with its Triton kernels (the implicit-GEMM convolutions where the rule, or here every
    convolution, asks for them, and the plain-torch cuDNN path where none does; the tail always) against the
    reference block, fp32 under the interpreter: the same tolerances as above (fp32 sums in another order)."""
    if implicit_gemm != "plan":
        monkeypatch.setattr(fastsca.backbone, "implicit_gemm", lambda *args: implicit_gemm == "all")
    reference, fused = _twins(c_in, pool, attention)
    reference, fused = reference.to(kernel_device), fused.to(kernel_device)
    before = dict(LAUNCHES)
    x = _smooth_batch(reference, (3, c_in, T, FREQ)).to(kernel_device)
    grad = torch.randn(3, C, T // pool[0], FREQ // pool[1], device=kernel_device)
    out, dx, grads = _step(fused, x, grad)
    expected_out, expected_dx, expected_grads = _step(reference, x, grad)
    _assert_map(out, expected_out)
    _assert_map(dx, expected_dx)
    _assert_grads(grads, expected_grads, {"shortcut.0.weight"} if c_in == 1 else set())
    _assert_buffers(fused, reference)
    ran = {name: LAUNCHES[name] - before.get(name, 0) for name in
           ("conv_forward", "conv_input_grad", "conv_weight_grad", "block_tail_forward", "block_tail_backward")}
    pixels = 3 * T * FREQ
    chosen = {"all": 3, "none": 0}.get(implicit_gemm) if implicit_gemm != "plan" else sum(
        fastsca.backbone.implicit_gemm(*shape) for shape in
        ((c_in, C, 3, pixels, False), (c_in, C, 1, pixels, False), (C, C, 3, pixels, True)))
    assert ran == {"conv_forward": chosen, "conv_input_grad": chosen, "conv_weight_grad": chosen,
                   "block_tail_forward": 1, "block_tail_backward": 1}
