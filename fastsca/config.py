"""Model configuration of AT-SCA, the attention arrangements of §3.3 as data, and the named presets for every
row of the paper's Tables 1 and 2.

Choices the paper leaves open (channel widths, the pooling plan, the global branch's middle width, where
attention sits in a block) are fields here; docs/model.md says which default was chosen for each and why.
"""
from dataclasses import dataclass, field, replace
from enum import Enum


class Order(Enum):
    """Which attention mask is computed first when an arrangement has both (§3.3)."""

    SPATIAL_FIRST = "spatial-first"
    """SCA (eq. 10): M_s from F, then M_c from F' = M_s * F."""
    CHANNEL_FIRST = "channel-first"
    """CSA: M_c from F, then M_s from F' = M_c * F."""
    PARALLEL = "parallel"
    """C//S, and every one-branch arrangement: each mask from F."""


class Combine(Enum):
    """How the two masks gate F."""

    PRODUCT = "product"
    """F'' = M_c * M_s * F (eqs. 7, 9, 10); a missing mask is 1."""
    SUM = "sum"
    """C//S: F'' = sigma(logit_s + logit_c) * F, the logits added before one sigmoid."""


@dataclass(frozen=True)
class Arrangement:
    """One attention arrangement of §3.3 as data: which branches, in what order, how combined. Both the
    reference (kernels/reference.py) and the fused unit (kernels/attention.py) read it."""

    name: str
    """The name configs and checkpoints use (ModelConfig.arrangement)."""
    spatial: bool
    """Has the spatial mask M_s (eqs. 4-7)."""
    channel: bool
    """Has the channel mask M_c (eqs. 8-9)."""
    order: Order = Order.PARALLEL
    """Which mask comes first; PARALLEL where there is one mask or both come from F."""
    combine: Combine = Combine.PRODUCT
    """How the masks gate F."""

    def __post_init__(self) -> None:
        if not (self.spatial or self.channel):
            raise ValueError(f"arrangement {self.name!r} needs the spatial or the channel mask")
        if self.order is not Order.PARALLEL and not (self.spatial and self.channel):
            raise ValueError(f"arrangement {self.name!r}: order {self.order.value} needs both masks")
        if self.combine is Combine.SUM and not (self.spatial and self.channel and self.order is Order.PARALLEL):
            raise ValueError(f"arrangement {self.name!r}: combine sum needs both masks in parallel")

    @property
    def squeeze_gated(self) -> bool:
        """Z is squeezed from M_s * F (spatial first): eq. 8 weighted by sigma(logit_s)."""
        return self.order is Order.SPATIAL_FIRST

    @property
    def pool_weighted(self) -> bool:
        """S is pooled from M_c * F (channel first): eq. 4 weighted by sigma(logit_c)."""
        return self.order is Order.CHANNEL_FIRST

    @property
    def additive(self) -> bool:
        """The logits are added before one sigmoid (C//S)."""
        return self.combine is Combine.SUM


ATTENTION_ARRANGEMENTS: dict[str, Arrangement] = {a.name: a for a in (
    Arrangement("spatial", spatial=True, channel=False),
    Arrangement("channel", spatial=False, channel=True),
    Arrangement("sca", spatial=True, channel=True, order=Order.SPATIAL_FIRST),
    Arrangement("csa", spatial=True, channel=True, order=Order.CHANNEL_FIRST),
    Arrangement("cps", spatial=True, channel=True, combine=Combine.SUM),
)}
"""The arrangements of §3.3, the one place they are defined: spatial only (AT-S), channel only (AT-C), SCA
(eq. 10), CSA, and the parallel C//S."""

ARRANGEMENTS = ("none", *ATTENTION_ARRANGEMENTS)
"""A block's attention: none, or one of ATTENTION_ARRANGEMENTS."""


POOLINGS = ("attention", "linear_softmax", "exp_softmax", "max", "average")
"""The MIL pooling functions from frame to clip probabilities (fastsca/pooling.py): the paper's eq. 2 (attention)
and the other four of TALNet's comparison."""


def arrangement_of(name: str) -> Arrangement:
    """The arrangement called name; ValueError listing the valid names otherwise."""
    if name not in ATTENTION_ARRANGEMENTS:
        raise ValueError(f"unknown attention arrangement {name!r}; valid: {', '.join(ATTENTION_ARRANGEMENTS)}")
    return ATTENTION_ARRANGEMENTS[name]

POOLING_PLANS: dict[str, tuple[tuple[int, int], ...]] = {
    "time-freq": ((2, 2), (2, 2), (1, 2), (1, 2), (1, 1), (1, 1), (1, 1)),
    "six-pool": ((2, 2), (2, 2), (1, 2), (1, 2), (1, 2), (1, 2), (1, 1)),
}
"""Max-pool (time, freq) after each of the seven blocks, by name. "time-freq": four pools, so blocks 5-7
(every attention site) see a 100 x 4 time-frequency map; "six-pool": the paper's literal "six max-pooling
layers", which leaves 100 x 1 at block 7."""


@dataclass(frozen=True)
class ModelConfig:
    """Everything that shapes an AT-SCA model; presets below are instances of it."""

    num_classes: int = 527
    """K, the number of event classes (527 for AudioSet)."""
    n_mels: int = 64
    """Mel bins of the input log-mel (the paper's 64)."""
    input_frames: int = 400
    """Frames of the input log-mel (400 = 10 s at 40 frames/s)."""
    channels: tuple[int, ...] = (32, 64, 128, 256, 256, 512, 512)
    """Output channels of the seven residual blocks (docs/model.md; the paper gives no widths)."""
    pools: tuple[tuple[int, int], ...] = POOLING_PLANS["time-freq"]
    """Max-pool (time, freq) after each block, (1, 1) meaning none; a checkpoint stores them, so it loads with
    the plan it was trained with. Default: the "time-freq" plan (blocks 5-7 see 100 x 4)."""
    arrangement: str = "none"
    """Attention module: none, spatial (AT-S), channel (AT-C), sca, csa or cps (parallel C//S), §3.3."""
    spatial_global: bool = True
    """Spatial attention has the global 5x5-conv branch (eq. 5)."""
    spatial_local: bool = True
    """Spatial attention has the per-frequency-row local FC branch (eq. 6)."""
    attention_depth: int = 1
    """How many of the last blocks carry attention (Table 2: 1, 2 or 3 layers)."""
    rd_ratio: int = 16
    """Reduction ratio r of the local FC (T -> T/r) and of the channel SE MLP (C -> C/r), §3.1-3.2."""
    global_mid_channels: int = 8
    """Channels between the two 5x5 convs of the global branch (not given in the paper)."""
    global_kernel_size: int = 5
    """Kernel size of the global branch's convs (eq. 5: 5x5)."""
    pooling: str = "attention"
    """The MIL pooling from frame to clip probabilities, one of POOLINGS: attention (eq. 2, every preset's),
    linear_softmax, exp_softmax, max or average (fastsca/pooling.py). A checkpoint without it is attention."""
    pool_logit_clamp: float | None = None
    """None: eq. 2 exactly (a max-subtracted softmax needs no clamp). A number clamps the attention-pooling
    logits to +-it, only so that checkpoints trained that way (they stored 10.0) load as they were trained."""
    name: str = field(default="custom", compare=False)
    """Preset name this config came from, for logs and checkpoints."""

    def __post_init__(self) -> None:
        if self.arrangement not in ARRANGEMENTS:
            raise ValueError(f"arrangement {self.arrangement!r} is not one of {', '.join(ARRANGEMENTS)}")
        if len(self.channels) != len(self.pools):
            raise ValueError(f"channels has {len(self.channels)} blocks but pools has {len(self.pools)}")
        if self.arrangement != "none" and not 1 <= self.attention_depth <= len(self.channels):
            raise ValueError(f"attention_depth must be in 1..{len(self.channels)}, got {self.attention_depth}")
        if self.arrangement != "none" and arrangement_of(self.arrangement).spatial and not (
                self.spatial_global or self.spatial_local):
            raise ValueError("spatial attention needs spatial_global or spatial_local (or both)")
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling {self.pooling!r} is not one of {', '.join(POOLINGS)}")
        if self.pool_logit_clamp is not None and self.pooling != "attention":
            raise ValueError(f"pool_logit_clamp clamps attention pooling's logits; {self.pooling} pooling has none")
        if self.pool_logit_clamp is not None and not self.pool_logit_clamp > 0:
            raise ValueError(f"pool_logit_clamp must be None or > 0, got {self.pool_logit_clamp}")
        if self.rd_ratio < 1:
            raise ValueError(f"rd_ratio must be >= 1, got {self.rd_ratio}")
        t, f = self.input_frames, self.n_mels
        for i, (pt, pf) in enumerate(self.pools):
            if t % pt or f % pf:
                raise ValueError(f"block {i + 1}: a {pt}x{pf} max-pool does not divide its {t}x{f} input map; "
                                 f"choose input_frames/n_mels divisible by the pooling plan")
            t, f = t // pt, f // pf

    @property
    def attention_blocks(self) -> tuple[int, ...]:
        """0-based indices of the blocks that carry attention: the last `attention_depth`."""
        if self.arrangement == "none":
            return ()
        return tuple(range(len(self.channels) - self.attention_depth, len(self.channels)))

    def block_input_sizes(self) -> list[tuple[int, int]]:
        """(T, F) of the map each block works on (its output before its pool)."""
        sizes, t, f = [], self.input_frames, self.n_mels
        for pt, pf in self.pools:
            sizes.append((t, f))
            t, f = t // pt, f // pf
        return sizes

    @property
    def pooling_plan(self) -> str:
        """The name of `pools` in POOLING_PLANS, or "custom"."""
        return next((name for name, pools in POOLING_PLANS.items() if pools == self.pools), "custom")

    @property
    def output_frames(self) -> int:
        """T' of the frame-level output (100 for 400 input frames: 10 Hz)."""
        t = self.input_frames
        for pt, _ in self.pools:
            t //= pt
        return t

    @classmethod
    def from_name(cls, name: str, pooling_plan: str | None = None, **overrides) -> "ModelConfig":
        """A preset by name (see PRESETS), with any fields overridden; `pooling_plan` names `pools` in POOLING_PLANS."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; valid presets: {', '.join(PRESETS)}")
        if pooling_plan is not None:
            overrides["pools"] = pools_of(pooling_plan)
        return replace(PRESETS[name], **overrides)


def pools_of(pooling_plan: str) -> tuple[tuple[int, int], ...]:
    """The pools of a named plan; ValueError listing the valid names otherwise."""
    if pooling_plan not in POOLING_PLANS:
        raise ValueError(f"unknown pooling plan {pooling_plan!r}; valid plans: {', '.join(POOLING_PLANS)}")
    return POOLING_PLANS[pooling_plan]


def _attention_presets() -> dict[str, ModelConfig]:
    """Every attention row of Tables 1-2, each at depth 1, 2 and 3; the depth-less name means depth 1."""
    rows = {
        "at-s-global": dict(arrangement="spatial", spatial_local=False),
        "at-s-local": dict(arrangement="spatial", spatial_global=False),
        "at-s": dict(arrangement="spatial"),
        "at-c": dict(arrangement="channel"),
        "at-sca": dict(arrangement="sca"),
        "at-csa": dict(arrangement="csa"),
        "at-cps": dict(arrangement="cps"),
    }
    presets = {}
    for row, fields in rows.items():
        presets[row] = ModelConfig(**fields, attention_depth=1, name=row)
        for depth in (1, 2, 3):
            presets[f"{row}-{depth}"] = ModelConfig(**fields, attention_depth=depth, name=f"{row}-{depth}")
    return presets


PRESETS: dict[str, ModelConfig] = {"baseline": ModelConfig(name="baseline"), **_attention_presets()}
