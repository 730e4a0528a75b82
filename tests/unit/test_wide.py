"""nnUNetTrainerWide and the width matching behind it: known answers for the rounding, the cost counters, the
bisection's match, and the trainer's plans round trip (a model folder's plans rebuild without re-matching)."""

from __future__ import annotations

import copy

import pytest
import torch
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
from support.nnunet import cpu_trainer
from support.plans import TINY_DATASET_JSON, tiny_plans

from nnunet_tubeconv.architectures import variant_architecture
from nnunet_tubeconv.architectures.variants import PLAIN_CONV_UNET_CLASS, plain_conv_unet_entry
from nnunet_tubeconv.architectures.wide import (
    flops_input,
    match_width,
    parameter_count,
    scaled_features,
    training_flops,
    widened_entry,
)
from nnunet_tubeconv.trainers.wide import WIDE_KEY, nnUNetTrainerWide

torch.set_num_threads(1)
ENTRY_2D = plain_conv_unet_entry(2, [8, 16, 32, 32], [[1, 1]] + [[2, 2]] * 3)


def test_scaled_features_rounding():
    assert scaled_features([32, 64, 320], 1.5) == [48, 96, 480]
    assert scaled_features([32, 64], 1.1, 8) == [32, 72]  # 35.2 -> 32, 70.4 -> 72
    assert scaled_features([4], 0.1, 8) == [8]  # never below one multiple
    with pytest.raises(ValueError, match=">= 1"):
        scaled_features([4], 1.0, 0)


def test_parameter_count_is_the_built_networks():
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    e = ENTRY_2D
    net = get_network_from_plans(e["network_class_name"], e["arch_kwargs"], e["_kw_requires_import"], 1, 3,
                                 deep_supervision=True)
    assert parameter_count(e, 1, 3) == sum(p.numel() for p in net.parameters())


def test_training_flops_scale_with_voxels():
    base = flops_input(ENTRY_2D)
    assert base == [16, 16]
    f1 = training_flops(ENTRY_2D, 1, 2)
    f2 = training_flops(ENTRY_2D, 1, 2, [32, 32])
    assert f1 > 0 and f2 == 4 * f1


@pytest.mark.parametrize("measure", ["params", "flops"])
def test_match_width_lands_nearest_the_variants_cost(measure):
    m = match_width(ENTRY_2D, "dsconv", 1, 2, measure)
    cost = parameter_count if measure == "params" else training_flops
    target = cost(variant_architecture(ENTRY_2D, "dsconv"), 1, 2)
    assert m.target == target and m.vanilla == cost(ENTRY_2D, 1, 2) and m.vanilla < target
    assert m.achieved == cost(widened_entry(ENTRY_2D, m.features_per_stage), 1, 2)
    assert all(f >= b for f, b in zip(m.features_per_stage, m.base_features_per_stage))
    # no other multiplier on the search grid gets nearer
    for factor in (m.factor * 0.97, m.factor * 1.03):
        other = cost(widened_entry(ENTRY_2D, scaled_features(m.base_features_per_stage, factor)), 1, 2)
        assert abs(other - target) >= abs(m.achieved - target)
    assert abs(m.achieved - target) / target < 0.05


def test_match_width_multiple_of_eight_and_bad_input():
    m = match_width(plain_conv_unet_entry(2, [32, 64, 128], [[1, 1], [2, 2], [2, 2]]), "dsconv", 1, 2, "params", 8)
    assert all(f % 8 == 0 for f in m.features_per_stage)
    with pytest.raises(ValueError, match="allowed are"):
        match_width(ENTRY_2D, "dsconv", measure="memory")
    with pytest.raises(ValueError, match="valid are"):
        match_width(ENTRY_2D, "snakes")
    with pytest.raises(ValueError, match="PlainConvUNet"):
        match_width(variant_architecture(ENTRY_2D, "scse"), "dsconv")


@pytest.mark.parametrize("configuration", ["2d", "3d_fullres"])
def test_wide_trainer_matches_dsconv_and_its_plans_rebuild_alone(configuration, tmp_path, monkeypatch):
    tr = cpu_trainer(nnUNetTrainerWide, tmp_path, monkeypatch, configuration)
    tr.initialize()
    record = tr.plans_manager.plans["configurations"][configuration][WIDE_KEY]
    assert tr.configuration_manager.network_arch_class_name == PLAIN_CONV_UNET_CLASS
    params = sum(p.numel() for p in tr.network.parameters())
    assert params == record["achieved"] and record["variant"] == "dsconv" and record["measure"] == "params"
    assert abs(params - record["target"]) / record["target"] < 0.05 and params > record["vanilla"]
    # what inference does with the model folder's plans.json: the recorded widths, no new search
    import nnunet_tubeconv.trainers.wide as wide_module

    monkeypatch.setattr(wide_module, "match_width", lambda *a, **k: pytest.fail("re-matched a widened entry"))
    pm = PlansManager(copy.deepcopy(tr.plans_manager.plans))
    net = nnUNetTrainerWide.build_network_architecture(pm, pm.get_configuration(configuration), 1, 2, True)
    assert {k: v.shape for k, v in net.state_dict().items()} == {k: v.shape for k, v in tr.network.state_dict().items()}


def test_wide_trainer_options_and_errors(tmp_path, monkeypatch):
    class nnUNetTrainerWideScSE8(nnUNetTrainerWide):
        wide_match_variant = "scse"
        wide_width_multiple = 8

    tr = cpu_trainer(nnUNetTrainerWideScSE8, tmp_path, monkeypatch)
    record = tr.plans_manager.plans["configurations"]["2d"][WIDE_KEY]
    assert record["variant"] == "scse" and all(f % 8 == 0 for f in record["features_per_stage"])

    class nnUNetTrainerWideBad(nnUNetTrainerWide):
        wide_match_measure = "latency"

    with pytest.raises(ValueError, match="nnUNetTrainerWideBad: unknown width-matching measure"):
        cpu_trainer(nnUNetTrainerWideBad, tmp_path, monkeypatch)
    plans = tiny_plans()
    plans["configurations"]["2d"]["architecture"] = variant_architecture(
        plans["configurations"]["2d"]["architecture"], "dsconv")
    with pytest.raises(ValueError, match="PlainConvUNet"):
        nnUNetTrainerWide.plans_with_wide_architecture(plans, "2d", TINY_DATASET_JSON)
    with pytest.raises(ValueError, match="available are"):
        nnUNetTrainerWide.plans_with_wide_architecture(tiny_plans(), "3d_lowres", TINY_DATASET_JSON)
