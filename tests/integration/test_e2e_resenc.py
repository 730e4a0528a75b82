"""End to end on nnU-Net's residual-encoder preset (ResEnc M) through stock console scripts, on CPU, 2D and 3D.

What a user who follows nnU-Net's recommendation does: plan with ``-pl nnUNetPlannerResEncM`` (here
``nnUNetv2_plan_experiment``: the shared data set of conftest's ``e2e_dataset`` is already preprocessed by the
default planner, and ResEnc M's 2d / 3d_fullres reuse that data, as nnU-Net designs it), then train our trainers
with ``-p nnUNetResEncUNetMPlans``: 2d with a short ``nnUNetTrainerDSConv`` subclass, killed after one epoch and
resumed with ``--c``, re-validated with ``--val``; 3d_fullres with a short ``nnUNetTrainerTubeConv`` subclass
(snakes, DFF and scSE on the residual host); both predict with ``nnUNetv2_predict``.

Kept small for a 2-core CI: the planner's ResEnc M network with its residual blocks as planned (1-3-4-6 per stage)
but narrower stages (8-16-32-32 instead of 32-64-128-256) and batch size 2 (the planner picks 80 for 2D patches of
32 x 32), written back into the same plans file so that every command names ``-p nnUNetResEncUNetMPlans`` as a user
would; 2 epochs of 2 iterations, no mirroring.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from support import e2e
from support.nnunet import run_console

from nnunet_tubeconv.architectures import RESENC_UNET_CLASS, TUBE_RESENC_UNET_CLASS, resenc_unet_entry

PLANS = "nnUNetResEncUNetMPlans"
TRAINERS = {"2d": "nnUNetTrainerDSConvResEncE2E", "3d_fullres": "nnUNetTrainerTubeConvResEncE2E"}
USER_TRAINER_SOURCE = e2e.short_trainer_source({TRAINERS["2d"]: "nnUNetTrainerDSConv",
                                                TRAINERS["3d_fullres"]: "nnUNetTrainerTubeConv"})


def _model_folder(ws: dict, configuration: str) -> Path:
    return Path(ws["env"]["nnUNet_results"]) / ws["dataset"] / f"{TRAINERS[configuration]}__{PLANS}__{configuration}"


def _train_command(configuration: str) -> list:
    return ["nnUNetv2_train", e2e.DATASET_ID, configuration, "0", "-tr", TRAINERS[configuration], "-p", PLANS,
            "-device", "cpu"]


def _train(ws: dict, configuration: str, *extra: str):
    return run_console([*_train_command(configuration), *extra], ws["env"], log=ws["log"])


@pytest.fixture(scope="module")
def ws(e2e_dataset) -> dict:
    """ResEnc M plans of the shared data set (stock planner; narrower stages, batch size 2); the user's trainer
    file."""
    ws = e2e_dataset
    e2e.add_user_trainers(ws, "my_resenc_trainers.py", USER_TRAINER_SOURCE)
    run_console(["nnUNetv2_plan_experiment", "-d", e2e.DATASET_ID, "-pl", "nnUNetPlannerResEncM"],
                {**ws["env"], "nnUNet_n_proc_DA": "1"}, log=ws["log"])
    ws["resenc_plans_as_planned"] = e2e.narrow_plans(ws["pre"], PLANS, source=PLANS)  # in place, as a user would
    return ws


@pytest.fixture(scope="module")
def trained_2d(ws) -> dict:
    """2d fold 0: killed after epoch 1 of 2, then resumed with --c."""
    state = e2e.interrupted_and_resumed(_train_command("2d"), ws["env"], _model_folder(ws, "2d") / "fold_0", ws["log"])
    state["folder"] = _model_folder(ws, "2d")
    return state


@pytest.fixture(scope="module")
def trained_3d(ws) -> Path:
    _train(ws, "3d_fullres")
    return _model_folder(ws, "3d_fullres")


def test_planner_wrote_nnunets_residual_encoder_plans(ws):
    """The stock planner's entries are ResidualEncoderUNet entries exactly as resenc_unet_entry writes them."""
    for configuration in ("2d", "3d_fullres"):
        entry = ws["resenc_plans_as_planned"]["configurations"][configuration]["architecture"]
        assert entry["network_class_name"] == RESENC_UNET_CLASS
        kw = entry["arch_kwargs"]
        ours = resenc_unet_entry(len(kw["kernel_sizes"][0]), kw["features_per_stage"], kw["strides"],
                                 kw["kernel_sizes"])
        assert ours["arch_kwargs"] == kw and list(ours["arch_kwargs"]) == list(kw)
        assert sorted(ours["_kw_requires_import"]) == sorted(entry["_kw_requires_import"])


def test_2d_trains_on_resenc_plans_and_resumes_with_c(ws, trained_2d):
    e2e.check_resumed(trained_2d)
    folder = trained_2d["folder"]
    ckpt = e2e.load_checkpoint(folder / "fold_0" / "checkpoint_final.pth")
    assert ckpt["current_epoch"] == 2 and ckpt["trainer_name"] == TRAINERS["2d"]
    entry = e2e.load_json(folder / "plans.json")["configurations"]["2d"]["architecture"]
    assert entry["network_class_name"] == TUBE_RESENC_UNET_CLASS
    assert entry["arch_kwargs"]["block_options"]["conv_block"] == "dsc"
    assert entry["arch_kwargs"]["n_blocks_per_stage"] == [1, 3, 4, 6]
    # the snake sits in the last residual block of encoder stage 2, in place of its conv2
    assert any(k.startswith("encoder.stages.2.blocks.3.conv2.snakes.") for k in ckpt["network_weights"])
    stock = e2e.load_json(ws["pre"] / f"{PLANS}.json")["configurations"]["2d"]["architecture"]
    assert stock["network_class_name"] == RESENC_UNET_CLASS and "block_options" not in stock["arch_kwargs"]


def test_2d_validation_only_with_val(ws, trained_2d):
    summary = trained_2d["folder"] / "fold_0" / "validation" / "summary.json"
    assert summary.is_file()
    summary.unlink()
    _train(ws, "2d", "--val")
    metrics = e2e.load_json(summary)
    assert "foreground_mean" in metrics and 0 <= metrics["foreground_mean"]["Dice"] <= 1


def test_3d_tubeconv_on_resenc_plans(trained_3d):
    fold = trained_3d / "fold_0"
    assert (fold / "validation" / "summary.json").is_file()
    opts = e2e.load_json(trained_3d / "plans.json")["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"][
        "block_options"]
    assert opts["conv_block"] == "dsc" and opts["dff_skips"] and opts["scse_encoder_stages"]
    weights = e2e.load_checkpoint(fold / "checkpoint_final.pth")["network_weights"]
    assert any(".fusions." in k for k in weights) and any(".blocks.4." in k for k in weights)  # DFF; scSE appended


@pytest.mark.parametrize("configuration, case", [("2d", "tubes_001"), ("3d_fullres", "tubes_002")])
def test_predict_on_resenc_plans(ws, trained_2d, trained_3d, configuration, case):
    e2e.predict(ws, [case], ws["base"] / f"predict_resenc_{configuration}", configuration, TRAINERS[configuration],
                PLANS)
