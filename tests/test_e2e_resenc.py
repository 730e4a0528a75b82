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

import json
from pathlib import Path

import pytest
from conftest import (
    E2E_DATASET_ID,
    add_user_trainers,
    check_predictions,
    predict_input_folder,
    run_console,
    short_trainer_source,
)
from nnunet_tubeconv.architectures import RESENC_UNET_CLASS, TUBE_RESENC_UNET_CLASS, resenc_unet_entry

pytestmark = pytest.mark.slow

PLANS = "nnUNetResEncUNetMPlans"
TRAINERS = {"2d": "nnUNetTrainerDSConvResEncE2E", "3d_fullres": "nnUNetTrainerTubeConvResEncE2E"}
USER_TRAINER_SOURCE = short_trainer_source({TRAINERS["2d"]: "nnUNetTrainerDSConv",
                                            TRAINERS["3d_fullres"]: "nnUNetTrainerTubeConv"})


def _load(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def _checkpoint(path: Path) -> dict:
    import torch

    return torch.load(path, map_location="cpu", weights_only=False)


def _model_folder(ws: dict, configuration: str) -> Path:
    return Path(ws["env"]["nnUNet_results"]) / ws["dataset"] / f"{TRAINERS[configuration]}__{PLANS}__{configuration}"


def _train(ws: dict, configuration: str, *extra: str, **kwargs):
    cmd = ["nnUNetv2_train", E2E_DATASET_ID, configuration, "0", "-tr", TRAINERS[configuration], "-p", PLANS,
           "-device", "cpu", *extra]
    return run_console(cmd, kwargs.pop("env", ws["env"]), log=ws["log"], **kwargs)


@pytest.fixture(scope="module")
def ws(e2e_dataset) -> dict:
    """ResEnc M plans of the shared data set (stock planner; narrower stages, batch size 2); the user's trainer
    file."""
    ws = e2e_dataset
    add_user_trainers(ws, "my_resenc_trainers.py", USER_TRAINER_SOURCE)
    run_console(["nnUNetv2_plan_experiment", "-d", E2E_DATASET_ID, "-pl", "nnUNetPlannerResEncM"],
                {**ws["env"], "nnUNet_n_proc_DA": "1"}, log=ws["log"])
    path = ws["pre"] / f"{PLANS}.json"
    plans = _load(path)
    ws["resenc_plans_as_planned"] = plans
    plans = json.loads(json.dumps(plans))
    for c in plans["configurations"].values():
        kw = c["architecture"]["arch_kwargs"]
        kw["features_per_stage"] = [min(8 * 2**i, 32) for i in range(kw["n_stages"])]
        c["batch_size"] = 2
    path.write_text(json.dumps(plans, indent=2))
    return ws


@pytest.fixture(scope="module")
def trained_2d(ws) -> dict:
    """2d fold 0: killed after epoch 1 of 2, then resumed with --c."""
    first = _train(ws, "2d", env={**ws["env"], "E2E_STOP_AFTER_EPOCHS": "1"}, expect_ok=False)
    fold = _model_folder(ws, "2d") / "fold_0"
    state = {"first": first, "latest_epoch": _checkpoint(fold / "checkpoint_latest.pth")["current_epoch"],
             "final_after_first": (fold / "checkpoint_final.pth").exists()}
    state["resumed"] = _train(ws, "2d", "--c")
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
    first, resumed = trained_2d["first"], trained_2d["resumed"]
    assert first.returncode != 0 and "simulated interruption after 1 epoch" in first.stdout + first.stderr
    assert trained_2d["latest_epoch"] == 1 and not trained_2d["final_after_first"]
    assert "Epoch 1" in resumed.stdout and "Epoch 0\n" not in resumed.stdout  # continued, not restarted
    folder = trained_2d["folder"]
    ckpt = _checkpoint(folder / "fold_0" / "checkpoint_final.pth")
    assert ckpt["current_epoch"] == 2 and ckpt["trainer_name"] == TRAINERS["2d"]
    entry = _load(folder / "plans.json")["configurations"]["2d"]["architecture"]
    assert entry["network_class_name"] == TUBE_RESENC_UNET_CLASS
    assert entry["arch_kwargs"]["block_options"]["conv_block"] == "dsc"
    assert entry["arch_kwargs"]["n_blocks_per_stage"] == [1, 3, 4, 6]
    # the snake sits in the last residual block of encoder stage 2, in place of its conv2
    assert any(k.startswith("encoder.stages.2.blocks.3.conv2.snakes.") for k in ckpt["network_weights"])
    stock = _load(ws["pre"] / f"{PLANS}.json")["configurations"]["2d"]["architecture"]
    assert stock["network_class_name"] == RESENC_UNET_CLASS and "block_options" not in stock["arch_kwargs"]


def test_2d_validation_only_with_val(ws, trained_2d):
    summary = trained_2d["folder"] / "fold_0" / "validation" / "summary.json"
    assert summary.is_file()
    summary.unlink()
    _train(ws, "2d", "--val")
    metrics = _load(summary)
    assert "foreground_mean" in metrics and 0 <= metrics["foreground_mean"]["Dice"] <= 1


def test_3d_tubeconv_on_resenc_plans(trained_3d):
    fold = trained_3d / "fold_0"
    assert (fold / "validation" / "summary.json").is_file()
    opts = _load(trained_3d / "plans.json")["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"][
        "block_options"]
    assert opts["conv_block"] == "dsc" and opts["dff_skips"] and opts["scse_encoder_stages"]
    weights = _checkpoint(fold / "checkpoint_final.pth")["network_weights"]
    assert any(".fusions." in k for k in weights) and any(".blocks.4." in k for k in weights)  # DFF; scSE appended


@pytest.mark.parametrize("configuration, case", [("2d", "tubes_001"), ("3d_fullres", "tubes_002")])
def test_predict_on_resenc_plans(ws, trained_2d, trained_3d, configuration, case):
    out = ws["base"] / f"predict_resenc_{configuration}"
    run_console(["nnUNetv2_predict", "-i", predict_input_folder(ws, [case]), "-o", out, "-d", E2E_DATASET_ID,
                 "-c", configuration, "-tr", TRAINERS[configuration], "-p", PLANS, "-f", "0", "-device", "cpu",
                 "-npp", "1", "-nps", "1", "--disable_progress_bar"], ws["env"], log=ws["log"])
    check_predictions(ws, out, [case])
