"""The step's accounting rules with no compile: multi-tensor launches (bench/multi_tensor.py), both prices
(bench/pricing.py), the DALI front end's bytes (bench/front_end.py) and the profiled-against-estimated report
(bench/step_profile.py) from a fake profile. Every expected figure is worked out by hand from the stated rules."""
import pytest

from bench import pricing, step_profile
from bench.front_end import dali_rows
from bench.multi_tensor import launches_of, multi_tensor_launches
from fastsca.frontend import LogMelConfig

H100 = pricing.GPUS[0]
CHUNK = 65536


@pytest.mark.parametrize("numels, depth, launches", [
    ([10] * 36, 4, 1),                    # exactly MAX_TENSORS[4] tensors: one launch
    ([10] * 37, 4, 2),                    # one more: a second launch
    ([CHUNK * 320], 4, 1),                # exactly MAX_BLOCKS chunks
    ([CHUNK * 320 + 1], 4, 2),            # one element more: a 321st chunk
    ([CHUNK * 319, CHUNK * 2], 4, 2),     # the 2nd tensor is cut at block 320 and carried into the next launch
    ([1] * 221, 1, 3),                    # 110 scalars per launch at depth 1
])
def test_multi_tensor_apply_launches_by_the_chunking_rule(numels, depth, launches):
    assert multi_tensor_launches(numels, depth) == launches


def test_ops_take_their_depth_and_the_norm_its_clean_up_kernel():
    assert launches_of("_fused_adamw_", [10] * 37) == 2
    assert launches_of("_foreach_norm", [10] * 37) == 2          # one multi-tensor kernel + the clean-up
    assert launches_of("_foreach_mul_", [10] * 111) == 2


def test_datasheet_price_is_the_roofline_plus_a_launch_per_kernel():
    row = {"bytes": 8e8, "flops": 0, "launches": 3, "phase": "backward", "kind": "inductor"}
    assert pricing.datasheet_us(row, H100) == pytest.approx(8e8 / 3.35e12 * 1e6 + 3 * 2.5, rel=1e-12)
    conv = {"bytes": 1e6, "flops": 1e12, "phase": "forward", "kind": "extern"}
    assert pricing.datasheet_us(conv, H100) == pytest.approx(1e12 / 989e12 * 1e6 + 2.5, rel=1e-12)


def test_derated_price_applies_each_kind_its_efficiency_and_launch_cost():
    memory = {"bytes": 8e8, "flops": 0, "phase": "backward", "kind": "inductor", "in_graph": True}
    assert pricing.derated_us(memory, H100) == pytest.approx(8e8 / (3.35e12 * 0.8) * 1e6 + 2.5, rel=1e-12)
    wide = {"bytes": 1e6, "flops": 1e12, "phase": "forward", "kind": "extern", "in_graph": True,
            "detail": {"c_in": 256, "c_out": 512, "kernel": [3, 3], "role": "forward"}}
    assert pricing.derated_us(wide, H100) == pytest.approx(1e12 / (989e12 * 0.6) * 1e6 + 2.5, rel=1e-12)
    wgrad = dict(wide, detail=dict(wide["detail"], role="wgrad", c_in=37))   # narrow class, wgrad factor
    assert pricing.derated_us(wgrad, H100) == pytest.approx(1e12 / (989e12 * 0.25 * 0.8) * 1e6 + 2.5, rel=1e-12)
    tiny_eager = {"bytes": 4, "flops": 0, "phase": "optimiser", "kind": "extern", "in_graph": False, "launches": 2}
    assert pricing.derated_us(tiny_eager, H100) == pytest.approx(2 * 8.0, rel=1e-12)   # host-bound: 8 µs each
    tiny_compiled = {"bytes": 4, "flops": 0, "phase": "forward", "kind": "inductor", "in_graph": True}
    assert pricing.derated_us(tiny_compiled, H100) == pytest.approx(3.0 + 2.5, rel=1e-12)
    assert pricing.derated_us(tiny_compiled, H100, graphs=False) == pytest.approx(8.0, rel=1e-12)   # host-bound
    big_compiled = dict(memory, in_graph=True)   # long kernels hide the launcher's 8 µs
    assert pricing.derated_us(big_compiled, H100, graphs=False) == pricing.derated_us(big_compiled, H100)


def test_the_dali_front_end_is_priced_from_the_stated_bytes():
    config = LogMelConfig(clip_samples=28 * 400)   # 28 frames, as the narrow step
    rows = dali_rows(3, config, 7)
    samples, frames, bins, mels = 11200, 29, 513, 64
    expected = (2 * samples + 4 * samples) + 8 * samples + (4 * samples + 4 * 1024 * frames) + (
        4 * 1024 * frames + 8 * bins * frames) + (8 * bins * frames + 4 * bins * frames) + (
        4 * bins * frames + 4 * mels * frames) + 2 * 4 * mels * frames + 2 * 4 * mels * frames + 2 * 7
    assert sum(r["bytes"] for r in rows) == 3 * expected
    assert sum(r["launches"] for r in rows) == 9 and {r["phase"] for r in rows} == {"front end"}


def test_a_fake_profile_is_set_against_the_estimate_by_category():
    kernels = [("sm90_xmma_fprop_implicit_gemm_bf16", 100.0), ("sm90_xmma_dgrad_implicit_gemm", 60.0),
               ("sm90_xmma_wgrad_implicit_gemm", 80.0), ("triton_red_fused_BatchNorm2d_3", 10.0),
               ("void at::native::(anonymous namespace)::multi_tensor_apply_kernel<FusedAdamMathFunctor>", 6.0),
               ("triton_poi_fused_MaxPool2d_7", 4.0), ("channel_pool_forward_kernel", 2.0)] * 2   # two steps
    measured = step_profile.per_category(kernels, steps=2)
    assert measured == {"conv fwd": {"launches": 1, "us": 100.0}, "conv dgrad": {"launches": 1, "us": 60.0},
                        "conv wgrad": {"launches": 1, "us": 80.0}, "BN stats": {"launches": 1, "us": 10.0},
                        "max-pool fwd": {"launches": 1, "us": 4.0}, "attention": {"launches": 1, "us": 2.0},
                        "optimiser": {"launches": 1, "us": 6.0}}
    estimated = [{"category": "conv fwd", "launches": 1, "derated": 80.0},
                 {"category": "clipping", "launches": 4, "derated": 28.0}]
    rows = {r["category"]: r for r in step_profile.compare(measured, estimated)}
    assert rows["conv fwd"]["measured_over_estimated"] == pytest.approx(1.25, rel=1e-12)
    assert rows["clipping"] == {"category": "clipping", "measured_launches": 0, "estimated_launches": 4,
                                "measured_us": 0.0, "estimated_us": 28.0, "measured_over_estimated": 0.0}
    assert rows["conv dgrad"]["measured_over_estimated"] is None
    text = step_profile.markdown("fastsca", list(rows.values()))
    assert "| conv fwd | 1 / 1 | 100 | 80 | 1.25 |" in text and "| total" in text
