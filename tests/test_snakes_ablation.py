"""The issue-11 ablation script's pure parts: the reduced plans and the generated arm trainers."""

from __future__ import annotations

import importlib.util

import pytest
from conftest import tiny_plans
from nnunet_tubeconv.benchmarks.snakes_ablation import ARMS, arm_trainer_source, reduced_plans


def test_reduced_plans_cut_stages_widths_patch_and_batch():
    plans = tiny_plans()
    kw = plans["configurations"]["2d"]["architecture"]["arch_kwargs"]
    n = kw["n_stages"]
    assert n == 3  # the tiny plans: cut nothing, only the widths, patch and batch change
    out = reduced_plans(plans, "P", 32, 3, 3, 8)
    c = out["configurations"]["2d"]
    ka = c["architecture"]["arch_kwargs"]
    assert out["plans_name"] == "P" and c["patch_size"] == [32, 32] and c["batch_size"] == 3
    assert ka["n_stages"] == 3 and len(ka["strides"]) == 3 and len(ka["n_conv_per_stage_decoder"]) == 2
    assert ka["features_per_stage"] == [8, 16, 32]
    assert c["data_identifier"] == plans["configurations"]["2d"]["data_identifier"]  # shares the preprocessed data
    assert plans["configurations"]["2d"]["architecture"]["arch_kwargs"]["n_stages"] == n  # input untouched
    with pytest.raises(ValueError, match="stages must be between 3"):
        reduced_plans(plans, "P", 32, 2, 4, 8)
    with pytest.raises(ValueError, match="patch must be a multiple"):
        reduced_plans(plans, "P", 30, 2, 3, 8)


def test_arm_trainers_set_both_swing_options_explicitly(tmp_path):
    f = tmp_path / "snake_ablation_trainers.py"
    f.write_text(arm_trainer_source())
    spec = importlib.util.spec_from_file_location("snake_ablation_trainers", f)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for trainer, options, _ in ARMS.values():
        cls = getattr(module, trainer)
        if options is None:
            assert not hasattr(cls, "variant") or cls.variant is None
            continue
        assert dict(cls.block_options) == options
        assert set(options) == {"snake_swing_norm", "snake_swing_lr_scale"}  # immune to later default changes
        assert "perform_actual_validation" in dir(cls)
