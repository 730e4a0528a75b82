"""The CPU plan cut (nnunet_tubeconv.planning.cpu): the rule's known answers on nnU-Net-shaped plans, per-axis
patches on anisotropic 3D plans, and bad input refused with what is allowed."""

from __future__ import annotations

import copy

import pytest
from support.plans import hepatic_vessel_like_plans, tiny_plans

from nnunet_tubeconv.planning.cpu import CPU_CUTS, CPU_PLANS, cpu_cut, cut_plans, scaled_patch


@pytest.fixture
def drive_like_plans():
    """nnU-Net's 2d plans shaped as for DRIVE's retina images: 8 stages of widths 32..512, patch 576 x 576, median
    image 584 x 565 (the 3d configurations are HepaticVessel's: anisotropic, with a 3d_lowres and a cascade)."""
    plans = hepatic_vessel_like_plans()
    conf = plans["configurations"]["2d"]
    conf["patch_size"], conf["median_image_size_in_voxels"] = [576, 576], [584.0, 565.0]
    return plans


def _kw(plans: dict, configuration: str) -> dict:
    return plans["configurations"][configuration]["architecture"]["arch_kwargs"]


def test_scaled_patch_keeps_the_aspect_ratio_rounds_to_the_strides_and_stops_at_the_median_image():
    assert scaled_patch([576, 576], [32, 32], 128 * 128) == [128, 128]  # a square retina patch: exactly 128^2
    assert scaled_patch([8, 8], [4, 4], 128 * 128) == [128, 128]  # a small planned patch grows to the budget
    # 64 x 192 x 192 at strides 8, 16, 16 to ~32^3 voxels: one factor 0.24 -> 15.4, 46.2, 46.2 -> 16, 48, 48
    assert scaled_patch([64, 192, 192], [8, 16, 16], 32**3) == [16, 48, 48]
    # the median image caps an axis at its size rounded up to the stride (90 -> 96), never below two strides
    assert scaled_patch([576, 576], [32, 32], 128 * 128, [100, 90]) == [128, 96]
    assert scaled_patch([576, 576], [32, 32], 128 * 128, [10, 10]) == [64, 64]


def test_cpu_cut_of_drive_shaped_2d_plans_is_128_squared_six_stages_of_widths_16_to_256(drive_like_plans):
    planned = copy.deepcopy(drive_like_plans)
    out = cpu_cut(drive_like_plans)
    assert drive_like_plans == planned  # the input is not changed
    assert out["plans_name"] == CPU_PLANS
    c = out["configurations"]["2d"]
    kw = c["architecture"]["arch_kwargs"]
    rule = CPU_CUTS[2]
    assert c["patch_size"] == [128, 128] and c["batch_size"] == rule.batch == 2
    assert kw["n_stages"] == 6 and kw["features_per_stage"] == [16, 32, 64, 128, 256, 256]
    assert kw["strides"] == _kw(planned, "2d")["strides"][:6]
    assert kw["kernel_sizes"] == _kw(planned, "2d")["kernel_sizes"][:6]
    assert len(kw["n_conv_per_stage"]) == 6 and len(kw["n_conv_per_stage_decoder"]) == 5
    # spacing and data identifier are nnU-Net's: the cut plans are preprocessed like nnU-Net's own
    for key in ("spacing", "data_identifier", "normalization_schemes"):
        assert c[key] == planned["configurations"]["2d"][key]


def test_cpu_cut_of_anisotropic_3d_plans_cuts_each_axis_to_its_stride_and_drops_the_other_configurations(
        drive_like_plans):
    out = cpu_cut(drive_like_plans, "MyCpuPlans")
    assert out["plans_name"] == "MyCpuPlans"
    assert sorted(out["configurations"]) == ["2d", "3d_fullres"]  # 3d_lowres and the cascade are dropped
    c = out["configurations"]["3d_fullres"]
    kw = c["architecture"]["arch_kwargs"]
    # HepaticVessel's 64 x 192 x 192, strides (1,1,1),(1,2,2),(2,2,2)x3 in the 5 kept stages: cumulative 8, 16, 16
    assert c["patch_size"] == [16, 48, 48] and c["batch_size"] == 2
    assert kw["n_stages"] == 5 and kw["features_per_stage"] == [16, 32, 64, 128, 256]
    assert kw["strides"] == [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2]]
    assert kw["kernel_sizes"][0] == [1, 3, 3]


def test_cut_plans_takes_one_edge_or_one_per_axis():
    plans = tiny_plans()
    out = cut_plans(plans, "P", "2d", 32, 3, 3, 8)
    c = out["configurations"]["2d"]
    assert out["plans_name"] == "P" and c["patch_size"] == [32, 32] and c["batch_size"] == 3
    assert _kw(out, "2d")["features_per_stage"] == [8, 16, 32] and len(_kw(out, "2d")["n_conv_per_stage_decoder"]) == 2
    assert c["data_identifier"] == plans["configurations"]["2d"]["data_identifier"]  # shares the preprocessed data
    assert _kw(plans, "2d")["features_per_stage"] == [4, 8, 16]  # input untouched
    hv = cut_plans(hepatic_vessel_like_plans(), "P", "3d_fullres", [24, 32, 48], 2, 5, 8, max_features=64)
    assert hv["configurations"]["3d_fullres"]["patch_size"] == [24, 32, 48]
    assert _kw(hv, "3d_fullres")["features_per_stage"] == [8, 16, 32, 64, 64]  # capped at max_features


def test_cut_plans_refuses_bad_input_naming_what_is_allowed():
    hv = hepatic_vessel_like_plans()
    with pytest.raises(ValueError, match=r"configuration '3d_lowres' is not in the plans; they have \['2d', "
                                         r"'3d_fullres'\]"):
        cut_plans(tiny_plans(), "P", "3d_lowres", 32, 2, 3, 8)
    with pytest.raises(ValueError, match="inherits its network; cut a configuration with its own architecture"):
        cut_plans(hv, "P", "3d_cascade_fullres", 32, 2, 5, 8)
    with pytest.raises(ValueError, match="stages must be between 3 and the planned 3, got 4"):
        cut_plans(tiny_plans(), "P", "2d", 32, 2, 4, 8)
    with pytest.raises(ValueError, match="stages must be between 3 and the planned 6, got 2"):
        cut_plans(hv, "P", "3d_fullres", 32, 2, 2, 8)
    with pytest.raises(ValueError, match=r"patch must have 3 edges for configuration '3d_fullres', got \[32, 32\]"):
        cut_plans(hv, "P", "3d_fullres", [32, 32], 2, 5, 8)
    with pytest.raises(ValueError, match=r"multiple of its axis's cumulative stride \[4, 4\] and at least twice it "
                                         r"for these plans, got \[30, 30\]"):
        cut_plans(tiny_plans(), "P", "2d", 30, 2, 3, 8)
    # anisotropic: 24 is a multiple of the first axis's 8 but not of the others' 16
    with pytest.raises(ValueError, match=r"cumulative stride \[8, 16, 16\] .*got \[24, 24, 24\]"):
        cut_plans(hv, "P", "3d_fullres", 24, 2, 5, 8)
    with pytest.raises(ValueError, match=r"at least twice it .*got \[8, 32, 32\]"):
        cut_plans(hv, "P", "3d_fullres", [8, 32, 32], 2, 5, 8)
