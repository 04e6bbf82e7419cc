"""Checkpoints keep loading: every preset's state_dict has exactly the parameter and buffer names, order and
shapes it had when tests/state_dict_keys.json was written (from main at commit 6bd03fd, before the attention
arrangement became data), so a checkpoint saved then loads now with strict=True. The order is the modules'
registration order, which is also the order their parameters are initialised in."""
import json
from pathlib import Path

import pytest
import torch

from fastsca import PRESETS, build_model
from fastsca.run_options import RunOptions

KEYS = json.loads((Path(__file__).with_name("state_dict_keys.json")).read_text())


def test_the_recorded_presets_are_the_presets():
    assert list(KEYS["presets"]) == list(PRESETS)


@pytest.mark.parametrize("name", list(PRESETS))
@pytest.mark.parametrize("fused", [False, True])
def test_state_dict_keys_and_shapes_are_unchanged(name, fused):
    with torch.device("meta"):   # shapes only: no memory, no init cost
        model = build_model(name, RunOptions(fused_attention=fused))
    keys = [[key, list(value.shape)] for key, value in model.state_dict().items()]
    assert keys == KEYS["key_sets"][KEYS["presets"][name]]
