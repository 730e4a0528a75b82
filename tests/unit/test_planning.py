"""Memory-aware planning: the estimate, the planner presets, the ``plan`` command and the calibration helpers."""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import math

import numpy as np
import pytest
import torch
from support.nnunet import nnunet_folders

from nnunet_tubeconv.architectures import TUBE_UNET_CLASS, VARIANTS
from nnunet_tubeconv.architectures.variants import plain_conv_unet_entry
from nnunet_tubeconv.benchmarks.perf.calibrate_memory import (
    HEPATIC_VESSEL_LIKE,
    hepatic_vessel_like_fingerprint,
    markdown_table,
    write_fingerprint_dataset,
)
from nnunet_tubeconv.cli import main
from nnunet_tubeconv.planning.estimate import (
    GpuMemoryModel,
    check_gpu_memory,
    dna_vanilla_estimate,
    measure_saved,
    network_estimate,
    neutral_entry,
    planner_estimate,
    variant_entry,
)
from nnunet_tubeconv.planning.planners import (
    PLANNERS,
    all_variants,
    planner_class,
    plans_name_for,
    trainer_for,
)

TASK08 = HEPATIC_VESSEL_LIKE["name"]
TASK08_ID = HEPATIC_VESSEL_LIKE["dataset_id"]


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    monkeypatch.setenv("nnUNet_n_proc_DA", "1")  # nnU-Net's own estimate sets torch threads from it
    monkeypatch.setenv("nnUNet_def_n_proc", "1")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _entry(dim: int, features=(4, 8, 16), kernel_sizes=None) -> dict:
    n = len(features)
    strides = [[1] * dim] + [[2] * dim] * (n - 1)
    return plain_conv_unet_entry(dim, features, strides, kernel_sizes=kernel_sizes)


def _quiet(fn, *args, **kwargs):
    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*args, **kwargs)


# ---------------------------------------------------------------------------------------------------------------
# the estimate


@pytest.mark.parametrize("dim", [2, 3])
def test_vanilla_estimate_is_nnunets_own(dim):
    from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner

    e = _entry(dim, (8, 16, 32, 64))
    patch = [32] * dim
    theirs = ExperimentPlanner.static_estimate_VRAM_usage(patch, 1, 3, e["network_class_name"], e["arch_kwargs"],
                                                          tuple(e["_kw_requires_import"]))
    assert planner_estimate(e, "vanilla", patch, 1, 3) == theirs
    assert dna_vanilla_estimate(e, patch, 1, 3) == theirs


@pytest.mark.parametrize("variant", ["vanilla", "dsconv", "scse", "dlkdff"])
@pytest.mark.parametrize("dim", [2, 3])
def test_estimate_grows_with_patch(variant, dim):
    e = _entry(dim)
    sizes = [16, 24, 32] if dim == 3 else [32, 48, 64]
    est = [planner_estimate(e, variant, [s] * dim, 1, 2) for s in sizes]
    assert est[0] < est[1] < est[2]


def test_estimate_grows_with_snake_kernel_size():
    e = _entry(3)
    est = [planner_estimate(e, "dsconv", [16, 16, 16], 1, 2, {"snake_kernel_size": k}) for k in (3, 5, 9, 15)]
    assert all(a < b for a, b in itertools.pairwise(est)), est


@pytest.mark.parametrize("dim", [2, 3])
def test_snake_estimate_exceeds_vanilla(dim):
    e = _entry(dim)
    patch = [24] * dim
    vanilla = planner_estimate(e, "vanilla", patch, 1, 2)
    assert planner_estimate(e, "dsconv", patch, 1, 2) > 1.05 * vanilla
    for v in VARIANTS:  # every variant keeps more than the plain network it extends
        assert planner_estimate(e, v, patch, 1, 2) > vanilla, v


@pytest.mark.parametrize("variant", ["dsconv", "scse", "dlkdff"])
def test_variant_ratio_is_the_measured_one(variant):
    # the planner scales nnU-Net's vanilla number by ours_variant / ours_vanilla: that ratio must be what autograd
    # really keeps (measured with saved_tensors_hooks), anisotropic first stage included
    e = _entry(3, (4, 8, 16), kernel_sizes=[[1, 3, 3], [3, 3, 3], [3, 3, 3]])
    patch = [8, 24, 24]
    measured = measure_saved(variant_entry(e, variant), patch, 1, 2)["elements"]
    measured_vanilla = measure_saved(neutral_entry(e), patch, 1, 2)["elements"]
    ratio = planner_estimate(e, variant, patch, 1, 2) / dna_vanilla_estimate(e, patch, 1, 2)
    assert ratio == pytest.approx(measured / measured_vanilla, rel=0.02)
    # and the honest counts themselves
    assert network_estimate(variant_entry(e, variant), patch, 1, 2) == pytest.approx(measured, rel=0.02)


def test_measure_saved_scales_with_batch_and_amp_halves_bytes():
    e = neutral_entry(_entry(3))
    one = measure_saved(e, [16, 16, 16], 1, 2)
    two = measure_saved(e, [16, 16, 16], 1, 2, batch_size=2)
    amp = measure_saved(e, [16, 16, 16], 1, 2, autocast_dtype=torch.bfloat16)
    assert two["bytes"] == pytest.approx(2 * one["bytes"], rel=0.01)
    assert one["bytes"] == 4 * one["elements"]  # float32
    assert 0.45 < (amp["bytes"] - 2 * amp["parameters"]) / one["bytes"] < 0.6


def test_estimate_rejects_bad_input():
    e = _entry(3)
    with pytest.raises(ValueError, match="patch_size"):
        planner_estimate(e, "dsconv", [16, 0, 16], 1, 2)
    with pytest.raises(ValueError, match="patch_size"):
        planner_estimate(e, "dsconv", "big", 1, 2)
    with pytest.raises(ValueError, match="PlainConvUNet"):
        planner_estimate(variant_entry(e, "scse"), "scse", [16, 16, 16], 1, 2)
    with pytest.raises(ValueError, match="unknown variant"):
        planner_estimate(e, "snakes", [16, 16, 16], 1, 2)
    with pytest.raises(ValueError, match="no block options"):
        planner_estimate(e, "vanilla", [16, 16, 16], 1, 2, {"snake_kernel_size": 5})
    with pytest.raises(ValueError, match="unknown block option"):
        planner_estimate(e, "dsconv", [16, 16, 16], 1, 2, {"snake_size": 5})


@pytest.mark.parametrize("bad", [0, -8, float("nan"), float("inf"), "eight", None, True, 1e6])
def test_bad_gpu_memory(bad):
    with pytest.raises(ValueError, match="GPU memory target"):
        check_gpu_memory(bad)


def test_gpu_memory_model_is_linear_in_batch():
    m = GpuMemoryModel()
    one = m.predict(1e9, 1, 10**6, amp_ratio=0.5, step_ratio=1.2)
    two = m.predict(1e9, 2, 10**6, amp_ratio=0.5, step_ratio=1.2)
    assert two - one == pytest.approx(0.6e9)
    assert one == pytest.approx(0.6e9 + 16e6 + 2**30)
    with pytest.raises(ValueError, match="amp_ratio"):
        m.predict(1e9, 1, 0, amp_ratio=0)


# ---------------------------------------------------------------------------------------------------------------
# presets


def test_presets_cover_every_variant_and_name_their_plans():
    assert set(PLANNERS) == set(all_variants()) == {"vanilla", *VARIANTS}
    for v, cls in PLANNERS.items():
        assert cls.variant == v
    assert plans_name_for("dsconv", 8) == "nnUNetPlans_dsconv_8G"
    assert plans_name_for("scse", 24.0) == "nnUNetPlans_scse_24G"
    assert plans_name_for("vanilla", 12.5) == "nnUNetPlans_vanilla_12.5G"
    assert trainer_for("dsconv") == "nnUNetTrainerDSConv"
    assert trainer_for("vanilla") == "nnUNetTrainer"
    with pytest.raises(ValueError, match="valid variants are"):
        plans_name_for("unet", 8)
    with pytest.raises(ValueError, match="unknown block option"):
        planner_class("dsconv", {"kernel": 5})
    custom = planner_class("dsconv", {"snake_kernel_size": 5})
    assert issubclass(custom, PLANNERS["dsconv"]) and custom.block_options["snake_kernel_size"] == 5


@pytest.fixture
def task08(tmp_path, monkeypatch):
    """A Task08 HepaticVessel-like data set: fingerprint + dataset.json only, nnU-Net folders in tmp_path."""
    paths = nnunet_folders(tmp_path)
    for k, v in paths.items():
        monkeypatch.setenv(k, v)
    fingerprint, dataset_json = hepatic_vessel_like_fingerprint()
    write_fingerprint_dataset(paths["nnUNet_raw"], paths["nnUNet_preprocessed"], TASK08, fingerprint, dataset_json)
    return paths


def _strides_product(cfg: dict) -> list[int]:
    return [int(np.prod([s[i] for s in cfg["architecture"]["arch_kwargs"]["strides"]])) for i in
            range(len(cfg["patch_size"]))]


def test_vanilla_preset_reproduces_nnunet_plans(task08):
    from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner

    theirs = _quiet(ExperimentPlanner(TASK08, 8).plan_experiment)["configurations"]
    ours = _quiet(PLANNERS["vanilla"](TASK08, 8).plan_experiment)["configurations"]
    assert set(ours) == set(theirs)
    for c in ("2d", "3d_fullres", "3d_lowres"):
        a, b = ours[c], theirs[c]
        assert list(a["patch_size"]) == list(b["patch_size"]) and a["batch_size"] == b["batch_size"], c
        assert json.dumps(a["architecture"], default=str) == json.dumps(b["architecture"], default=str)
    assert ours["3d_fullres"]["data_identifier"] == "nnUNetPlans_3d_fullres"
    assert ours["3d_lowres"]["data_identifier"] == "nnUNetPlans_vanilla_8G_3d_lowres"


def _plain_of(cfg: dict) -> dict:
    """The PlainConvUNet entry a preset's configuration was made from (its kwargs without block_options)."""
    arch = json.loads(json.dumps(cfg["architecture"], default=int))
    arch["arch_kwargs"].pop("block_options")
    arch["network_class_name"] = "dynamic_network_architectures.architectures.unet.PlainConvUNet"
    return arch


@pytest.mark.parametrize("variant", ["dsconv", "scse"])
def test_variant_plans_fit_the_reference(task08, variant):
    planner = PLANNERS[variant](TASK08, 8)
    plans = _quiet(planner.plan_experiment)
    vanilla = _quiet(PLANNERS["vanilla"](TASK08, 8).plan_experiment)
    for c, ref, ref_bs in (("3d_fullres", planner.UNet_reference_val_3d, 2), ("2d", planner.UNet_reference_val_2d, 12)):
        cfg, van = plans["configurations"][c], vanilla["configurations"][c]
        plain = _plain_of(cfg)
        assert cfg["architecture"]["network_class_name"] == TUBE_UNET_CLASS
        assert cfg["architecture"]["arch_kwargs"]["block_options"] == \
            variant_entry(plain, variant)["arch_kwargs"]["block_options"]
        # every axis a multiple of the strides' product
        assert all(p % d == 0 for p, d in zip(cfg["patch_size"], _strides_product(cfg))), c
        # the variant's estimate at the planned patch and batch is within nnU-Net's budget (batch rounding aside)
        est = planner_estimate(plain, variant, cfg["patch_size"], 1, 3)
        assert est * cfg["batch_size"] <= ref * ref_bs + est / 2, c
        # ... and the variant never gets more voxels per step than vanilla
        voxels = math.prod(cfg["patch_size"]) * cfg["batch_size"]
        assert voxels <= math.prod(van["patch_size"]) * van["batch_size"], c
    # the snake costs enough that the default memory target must shrink the 3D step
    v3, p3 = vanilla["configurations"]["3d_fullres"], plans["configurations"]["3d_fullres"]
    if variant == "dsconv":
        assert math.prod(p3["patch_size"]) * p3["batch_size"] < math.prod(v3["patch_size"]) * v3["batch_size"]


def test_larger_target_gives_larger_plans(task08):
    small = _quiet(PLANNERS["dsconv"](TASK08, 8).plan_experiment)["configurations"]["3d_fullres"]
    large = _quiet(PLANNERS["dsconv"](TASK08, 24).plan_experiment)["configurations"]["3d_fullres"]
    assert math.prod(large["patch_size"]) * large["batch_size"] > 1.5 * math.prod(small["patch_size"]) * \
        small["batch_size"]


def test_data_identifiers(task08):
    p = PLANNERS["scse"](TASK08, 24)
    assert p.plans_identifier == "nnUNetPlans_scse_24G"
    assert p.generate_data_identifier("2d") == "nnUNetPlans_2d"
    assert p.generate_data_identifier("3d_fullres") == "nnUNetPlans_3d_fullres"
    assert p.generate_data_identifier("3d_lowres") == "nnUNetPlans_scse_24G_3d_lowres"
    custom = PLANNERS["scse"](TASK08, 8, overwrite_target_spacing=[2.0, 0.8, 0.8])
    assert custom.generate_data_identifier("3d_fullres") == "nnUNetPlans_scse_8G_3d_fullres"
    named = PLANNERS["scse"](TASK08, 8, plans_name="MyPlans")
    assert named.generate_data_identifier("3d_lowres") == "MyPlans_3d_lowres"
    with pytest.raises(ValueError, match="GPU memory target"):
        PLANNERS["scse"](TASK08, -1)


# ---------------------------------------------------------------------------------------------------------------
# the `plan` command


def test_plan_command_errors(task08, capsys, tmp_path):
    assert main(["plan", "-d", str(TASK08_ID), "--variant", "unet"]) == 2
    err = capsys.readouterr().err
    assert "unknown variant 'unet'" in err and "dsconv" in err and "vanilla" in err
    with pytest.raises(SystemExit) as e:
        main(["plan", "-d", str(TASK08_ID), "--variant", "dsconv", "--gpu-memory", "-4"])
    assert e.value.code == 2
    assert "GPU memory target" in capsys.readouterr().err
    assert main(["plan", "-d", str(TASK08_ID), "--variant", "dsconv", "--option", "snake=5"]) == 2
    assert "unknown block option" in capsys.readouterr().err
    assert main(["plan", "-d", "907", "--variant", "dsconv"]) == 2
    assert "not found" in capsys.readouterr().err
    (tmp_path / "nnUNet_preprocessed" / TASK08 / "dataset_fingerprint.json").unlink()
    assert main(["plan", "-d", str(TASK08_ID), "--variant", "dsconv"]) == 2
    err = capsys.readouterr().err
    assert "fingerprint" in err and f"nnUNetv2_extract_fingerprint -d {TASK08_ID}" in err


def test_plan_command_writes_plans_and_prints_train_lines(task08, capsys, tmp_path):
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    assert main(["plan", "-d", str(TASK08_ID), "--variant", "dsconv", "--gpu-memory", "24",
                 "--option", "snake_kernel_size=5"]) == 0
    out = capsys.readouterr().out
    plans_file = tmp_path / "nnUNet_preprocessed" / TASK08 / "nnUNetPlans_dsconv_24G.json"
    pm = PlansManager(str(plans_file))
    assert pm.plans["experiment_planner_used"].startswith("nnUNetPlannerDSConv")
    assert pm.get_configuration("3d_fullres").network_arch_init_kwargs["block_options"]["snake_kernel_size"] == 5
    assert f"nnUNetv2_train {TASK08_ID} 3d_fullres 0 -tr nnUNetTrainerDSConv -p nnUNetPlans_dsconv_24G" in out
    assert "nnUNet_extTrainer=" in out
    assert "Not preprocessed yet" in out and f"nnUNetv2_preprocess -d {TASK08_ID}" in out


# ---------------------------------------------------------------------------------------------------------------
# calibration helpers


def test_task08_fingerprint_gives_nnunets_task08_geometry(task08):
    fingerprint, dataset_json = hepatic_vessel_like_fingerprint()
    assert len(fingerprint["spacings"]) == dataset_json["numTraining"] == 303
    z = np.array([s[0] for s in fingerprint["spacings"]])
    assert np.median(z) == 5.0 and np.percentile(z, 10) == 1.5
    assert np.median([s[0] for s in fingerprint["shapes_after_crop"]]) == 49
    planner = PLANNERS["vanilla"](TASK08, 8)
    assert list(np.round(planner.determine_fullres_target_spacing(), 3)) == [1.5, 0.8, 0.8]


def test_markdown_table_lists_every_row():
    row = {"variant": "dsconv", "dim": 3, "patch": [16, 32, 32], "estimate_elements": 100, "measured_elements": 101,
           "relative_error": -0.01, "planner_estimate": 150, "dna_vanilla_estimate": 100, "amp_ratio": 0.5}
    plan = {"variant": "dsconv", "target_gb": 8.0, "configurations": {
        "3d_fullres": {"patch": [48, 160, 160], "batch": 2}, "2d": {"patch": [512, 512], "batch": 9}},
        "measured": {"bytes_per_sample": 2 ** 31, "width_divisor": 2}, "predicted_peak_gib": 7.5,
        "within_target": True, "naive": {"predicted_peak_gib": 11.0}}
    result = {"meta": {"command": "nnunet-tubeconv calibrate-memory", "torch": "x", "device": "cpu", "threads": 1,
                       "date": "today"},
              "dataset": HEPATIC_VESSEL_LIKE, "model": {"bytes_per_parameter": 16, "workspace_bytes": 2 ** 30},
              "estimates": [row], "step_ratios": {}, "plans": [plan], "errors": [],
              "nnUNetPlans_8G": {"3d_fullres": {"patch": [64, 192, 192], "batch": 2}}}
    table = markdown_table(result)
    assert "| dsconv | 3D | 16x32x32 | 100 | 101 | -1.00% | 1.500 | 0.500 |" in table
    assert "| dsconv | 8 GB | 48x160x160 x2 | - | 512x512 x9 | 2.00 GiB (1/2 width) | 7.50 GiB | yes | 11.00 GiB |" \
        in table


# ---------------------------------------------------------------------------------------------------------------
# presets on nnU-Net's residual-encoder host (ResEnc M / L / XL)


def test_resenc_presets_start_from_nnunets_resenc_planners(task08):
    from nnunetv2.experiment_planning.experiment_planners.residual_unets.residual_encoder_unet_planners import (
        nnUNetPlannerResEncM,
    )

    from nnunet_tubeconv.architectures import RESENC_UNET_CLASS, TUBE_RESENC_UNET_CLASS
    from nnunet_tubeconv.planning.planners import RESENC_PLANNERS

    assert {h for h, _ in RESENC_PLANNERS} == {"resenc-m", "resenc-l", "resenc-xl"}
    assert {v for _, v in RESENC_PLANNERS} == set(all_variants())
    cls = planner_class("dsconv", host="resenc-l")
    assert cls.__name__ == "nnUNetPlannerResEncL_dsconv" and cls.host == "resenc-l"
    assert plans_name_for("dsconv", 24, "resenc-l") == "nnUNetResEncUNetLPlans_dsconv_24G"
    # the preset's own memory target by default (nnU-Net's: M 8, L 24, XL 40), without nnU-Net's warning about it
    assert planner_class("scse", host="resenc-xl")(TASK08).plans_identifier == "nnUNetResEncUNetXLPlans_scse_40G"
    with pytest.raises(ValueError, match="unknown host/preset"):
        planner_class("dsconv", host="resenc-s")

    theirs = _quiet(nnUNetPlannerResEncM(TASK08).plan_experiment)["configurations"]
    vanilla = _quiet(planner_class("vanilla", host="resenc-m")(TASK08).plan_experiment)["configurations"]
    for c in ("2d", "3d_fullres"):  # vanilla on ResEnc M: nnU-Net's own ResEnc M plans
        a, b = vanilla[c], theirs[c]
        assert list(a["patch_size"]) == list(b["patch_size"]) and a["batch_size"] == b["batch_size"], c
        assert a["architecture"]["network_class_name"] == RESENC_UNET_CLASS
        assert a["data_identifier"] == b["data_identifier"] == f"nnUNetPlans_{c}"

    planner = planner_class("dsconv", host="resenc-m")(TASK08)
    plans = _quiet(planner.plan_experiment)["configurations"]
    for c, ref, ref_bs in (("3d_fullres", planner.UNet_reference_val_3d, 2), ("2d", planner.UNet_reference_val_2d, 12)):
        cfg, van = plans[c], vanilla[c]
        arch = cfg["architecture"]
        assert arch["network_class_name"] == TUBE_RESENC_UNET_CLASS
        resenc = json.loads(json.dumps(arch, default=int))
        resenc["arch_kwargs"].pop("block_options")
        resenc["network_class_name"] = RESENC_UNET_CLASS
        assert arch["arch_kwargs"]["block_options"] == variant_entry(resenc, "dsconv")["arch_kwargs"]["block_options"]
        # within the ResEnc reference at the planned patch and batch (rounding aside), never more voxels than vanilla
        est = planner_estimate(resenc, "dsconv", cfg["patch_size"], 1, 3)
        assert est * cfg["batch_size"] <= ref * ref_bs + est / 2, c
        assert math.prod(cfg["patch_size"]) * cfg["batch_size"] <= math.prod(van["patch_size"]) * van["batch_size"]
        # the estimate's scale is ResidualEncoderUNet's own count (what nnU-Net's ResEnc reference values are for)
        assert dna_vanilla_estimate(resenc, cfg["patch_size"], 1, 3) == network_estimate(
            resenc, cfg["patch_size"], 1, 3, deep_supervision=None)
    v3, p3 = vanilla["3d_fullres"], plans["3d_fullres"]
    assert math.prod(p3["patch_size"]) * p3["batch_size"] < math.prod(v3["patch_size"]) * v3["batch_size"]


def test_plan_command_resenc_preset(task08, capsys, tmp_path):
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    assert main(["plan", "-d", str(TASK08_ID), "--variant", "scse", "--preset", "resenc-l"]) == 0
    out = capsys.readouterr().out
    plans_file = tmp_path / "nnUNet_preprocessed" / TASK08 / "nnUNetResEncUNetLPlans_scse_24G.json"
    pm = PlansManager(str(plans_file))
    assert pm.plans["experiment_planner_used"] == "nnUNetPlannerResEncL_scse"
    assert pm.get_configuration("3d_fullres").network_arch_class_name.endswith("TubeResEncUNet")
    assert "variant scse on ResEnc L, GPU memory target 24 GB" in out
    assert "-tr nnUNetTrainerScSE -p nnUNetResEncUNetLPlans_scse_24G" in out


def test_markdown_table_shows_hosts_and_presets():
    row = {"variant": "dsconv", "dim": 3, "patch": [16, 32, 32], "estimate_elements": 100, "measured_elements": 101,
           "relative_error": -0.01, "planner_estimate": 150, "dna_vanilla_estimate": 100, "amp_ratio": 0.5,
           "host": "resenc"}
    step = {"variant": "dsconv", "patch": [16, 64, 64], "saved_bytes": 2 ** 30, "rss_growth_bytes": 2 ** 30 * 1.25,
            "step_ratio": 1.25, "host": "resenc"}
    plan = {"variant": "dsconv", "preset": "resenc-l", "target_gb": 24.0, "configurations": {
        "3d_fullres": {"patch": [96, 256, 256], "batch": 2}, "2d": {"patch": [512, 512], "batch": 31}},
        "predicted_peak_gib": 20.5, "within_target": True, "naive": {"predicted_peak_gib": 25.0}}
    result = {"meta": {"command": "nnunet-tubeconv calibrate-memory --preset resenc-l", "torch": "x", "device": "cpu",
                       "threads": 1, "date": "today"}, "presets": ["resenc-l"],
              "dataset": HEPATIC_VESSEL_LIKE, "model": {"bytes_per_parameter": 16, "workspace_bytes": 2 ** 30},
              "estimates": [row], "step_ratios": {"resenc:dsconv": step}, "plans": [plan], "errors": [],
              "resenc_reference": {"resenc-l": {"plans_name": "nnUNetResEncUNetLPlans", "target_gb": 24.0,
                                                "configurations": {"3d_fullres": {"patch": [96, 320, 256],
                                                                                  "batch": 2}}}}}
    table = markdown_table(result)
    assert "| ResEnc | dsconv | 3D | 16x32x32 | 100 | 101 | -1.00% | 1.500 | 0.500 |" in table
    assert "| ResEnc | dsconv | 16x64x64 | 1.00 GiB | 1.25 GiB | 1.25 |" in table
    assert "| resenc-l | dsconv | 24 GB | 96x256x256 x2 | - | 512x512 x31 | - | 20.50 GiB | yes | 25.00 GiB |" in table
    assert "nnU-Net's `nnUNetResEncUNetLPlans` (24 GB): 3d_fullres 96x320x256 x2." in table
    assert "ExperimentPlanner" not in table
