"""The AT-SCA model family: every preset runs, shapes and ranges, and the paper's equations hold."""
import pytest
import torch

from fastsca import PRESETS, ModelConfig, build_model
from fastsca.attention import ChannelAttention, LocalSpatialBranch, SpatialAttention
from fastsca.run_options import RunOptions


def _tiny(name: str, **overrides) -> torch.nn.Module:
    """A narrow model of a preset: same structure, cheap on the CPU."""
    return build_model(name, RunOptions(fused_attention=False), channels=(4, 8, 8, 16, 16, 32, 32), **overrides)


FAST_PRESETS = ("baseline", "at-sca-3")
"""Presets the fast suite (-m "not slow") runs at full size; the rest take the same code paths, 10-20 s each."""


@pytest.mark.parametrize("name", [n if n in FAST_PRESETS else pytest.param(n, marks=pytest.mark.slow) for n in PRESETS])
def test_every_preset_runs_forward_and_backward(name):
    model = build_model(name, RunOptions(fused_attention=False))
    log_mel = torch.randn(2, 1, 400, 64)
    out = model(log_mel)
    assert out.clip.shape == (2, 527)
    assert out.frame.shape == (2, 100, 527)             # 10 Hz frame-level predictions
    assert 0 <= out.clip.min() and out.clip.max() <= 1
    assert 0 <= out.frame.min() and out.frame.max() <= 1
    out.clip.sum().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_presets_match_tables_1_and_2():
    rows = ["at-s-global", "at-s-local", "at-s", "at-c", "at-sca", "at-csa", "at-cps"]
    assert set(PRESETS) == {"baseline"} | set(rows) | {f"{r}-{d}" for r in rows for d in (1, 2, 3)}
    assert PRESETS["at-sca-3"].attention_blocks == (4, 5, 6)   # blocks 5-7
    assert PRESETS["at-sca"] == PRESETS["at-sca-1"]
    assert PRESETS["at-s-global"].spatial_local is False and PRESETS["at-s-local"].spatial_global is False
    assert PRESETS["baseline"].attention_blocks == ()


def test_attention_sees_time_frequency_maps_by_default():
    config = PRESETS["at-sca-3"]
    assert config.pooling_plan == "time-freq"
    sizes = [config.block_input_sizes()[i] for i in config.attention_blocks]
    assert sizes == [(100, 4), (100, 4), (100, 4)]
    assert config.output_frames == 100


def test_six_pool_plan_is_one_argument_away():
    config = ModelConfig.from_name("at-sca-3", pooling_plan="six-pool")
    assert config.pooling_plan == "six-pool" and config.name == "at-sca-3"
    assert [config.block_input_sizes()[i] for i in config.attention_blocks] == [(100, 4), (100, 2), (100, 1)]
    assert ModelConfig(pools=((2, 1),) * 7, channels=(4,) * 7, input_frames=256).pooling_plan == "custom"
    with pytest.raises(ValueError, match="time-freq, six-pool"):
        ModelConfig.from_name("at-sca-3", pooling_plan="five-pool")


@pytest.mark.parametrize("overrides, message", [
    (dict(arrangement="bogus"), "arrangement"),
    (dict(channels=(8, 8)), "pools"),
    (dict(arrangement="sca", spatial_global=False, spatial_local=False), "spatial"),
    (dict(arrangement="sca", attention_depth=9), "attention_depth"),
    (dict(input_frames=398), "divide"),
    (dict(pool_logit_clamp=0.0), "pool_logit_clamp"),
])
def test_bad_config_raises_a_clear_error(overrides, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(**overrides)


def test_unknown_preset_lists_valid_names():
    with pytest.raises(ValueError, match="at-sca-3"):
        build_model("at-sca-9")


def test_local_branch_is_one_mlp_per_frequency_row():
    model = build_model("at-s-local-3", RunOptions(fused_attention=False))
    branches = [m for m in model.modules() if isinstance(m, LocalSpatialBranch)]
    assert [tuple(b.w1.shape) for b in branches] == [(4, 6, 100)] * 3   # H = 4 rows, W/r = 100 // 16
    assert [tuple(b.w2.shape) for b in branches] == [(4, 100, 6)] * 3
    branch = branches[0]
    s = torch.randn(3, 1, 100, 4)
    out = branch(s)
    for f in range(4):   # eq. 6, row by row
        expected = branch.w2[f] @ torch.relu(branch.w1[f] @ s[:, 0, :, f].T + branch.b1[f][:, None]) + branch.b2[f][:, None]
        torch.testing.assert_close(out[:, 0, :, f], expected.T)
    bumped = s.clone()
    bumped[:, 0, :, 2] += 1.0           # a change in row 2 moves row 2 only
    diff = (branch(bumped) - out).abs().amax(dim=(0, 1, 2))
    assert diff[2] > 0 and torch.all(diff[[0, 1, 3]] == 0)


def test_sca_and_csa_differ_with_the_same_weights():
    sca = _tiny("at-sca-3").eval()
    csa = _tiny("at-csa-3").eval()
    with torch.no_grad():    # unit-scale attention weights: at init the gates sit near 0.5 and barely differ
        for block in sca.blocks:
            for p in block.attention.parameters():
                p.normal_()
    csa.load_state_dict(sca.state_dict())
    log_mel = torch.randn(2, 1, 400, 64)
    with torch.no_grad():
        for sca_block, csa_block, (t, f) in zip(sca.blocks[4:], csa.blocks[4:], [(100, 4)] * 3):
            x = torch.randn(2, sca_block.conv2.out_channels, t, f)
            sca_out, csa_out = sca_block.attention(x), csa_block.attention(x)
            assert (sca_out - csa_out).norm() / sca_out.norm() > 1e-2
        assert not torch.equal(sca(log_mel).clip, csa(log_mel).clip)


def test_spatial_attention_with_local_branch_zeroed_equals_global_only():
    both = _tiny("at-s-2").eval()
    global_only = _tiny("at-s-global-2").eval()
    with torch.no_grad():
        for branch in (m for m in both.modules() if isinstance(m, LocalSpatialBranch)):
            for p in (branch.w1, branch.b1, branch.w2, branch.b2):
                p.zero_()
    state = {k: v for k, v in both.state_dict().items() if "branches.1" not in k}   # drop the local branch
    global_only.load_state_dict(state)
    log_mel = torch.randn(2, 1, 400, 64)
    torch.testing.assert_close(both(log_mel).clip, global_only(log_mel).clip)
    torch.testing.assert_close(both(log_mel).frame, global_only(log_mel).frame)


def _explicit_arrangement(arrangement, x, spatial: SpatialAttention, channel: ChannelAttention):
    """Eqs. 4-10 step by step, with F' materialised, as the paper writes them."""
    def m_s(f):
        return torch.sigmoid(spatial(f.mean(dim=1, keepdim=True)))     # eqs. 4, 7

    def m_c(f):
        return torch.sigmoid(channel(f.mean(dim=(2, 3))))[:, :, None, None]   # eqs. 8, 9

    if arrangement == "sca":
        f1 = m_s(x) * x
        return m_c(f1) * f1
    if arrangement == "csa":
        f1 = m_c(x) * x
        return m_s(f1) * f1
    logit_s = spatial(x.mean(dim=1, keepdim=True))
    logit_c = channel(x.mean(dim=(2, 3)))[:, :, None, None]
    return torch.sigmoid(logit_s + logit_c) * x


@pytest.mark.parametrize("arrangement", ["sca", "csa", "cps"])
def test_arrangements_follow_section_3_3(arrangement):
    from fastsca.attention import build_attention
    module = build_attention(arrangement=arrangement, channels=37, time_steps=100, freq_bins=3, use_global=True,
                             use_local=True, rd_ratio=16, global_mid_channels=8, global_kernel_size=5,
                             fused=False).eval()
    x = torch.randn(2, 37, 100, 3)
    expected = _explicit_arrangement(arrangement, x, module.spatial, module.channel)
    torch.testing.assert_close(module(x), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_compiled_at_sca_3_matches_eager():
    model = _tiny("at-sca-3").eval()
    log_mel = torch.randn(2, 1, 400, 64)
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        eager, fast = model(log_mel), compiled(log_mel)
    torch.testing.assert_close(fast.clip, eager.clip, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(fast.frame, eager.frame, atol=1e-4, rtol=1e-4)


def test_a_checkpoint_loads_with_the_plan_and_clamp_it_was_trained_with(tmp_path):
    from dataclasses import asdict

    from fastsca.frontend import LogMelConfig
    from fastsca.inference import CHECKPOINT_FORMAT, load_trained_model
    # what a checkpoint written before the time-freq default and exact eq. 2 holds (fused_attention was then a
    # model field: read without it)
    old = ModelConfig.from_name("at-sca-3", pooling_plan="six-pool", channels=(4, 8, 8, 16, 16, 32, 32),
                                num_classes=5, pool_logit_clamp=10.0)
    model = build_model(old, RunOptions(fused_attention=False))
    path = tmp_path / "old.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "model": model.state_dict(), "step": 1, "label_names": list("abcde"),
                "config": {"model": {**asdict(old), "fused_attention": False},
                           "log_mel": asdict(LogMelConfig())}}, path)
    loaded = load_trained_model(path)
    assert loaded.model.config.pooling_plan == "six-pool" and loaded.model.pooling.logit_clamp == 10.0
    log_mel = torch.randn(2, 1, 400, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(log_mel).clip, model.eval()(log_mel).clip)
