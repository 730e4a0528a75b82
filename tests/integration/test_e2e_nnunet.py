"""End to end through stock nnU-Net's console scripts, on CPU, on a tiny synthetic 3D data set (conftest's
``e2e_dataset``, shared with test_e2e_resenc.py).

What a user does, in order: plan and preprocess; write a shortened subclass of ``nnUNetTrainerDSConv`` in their own
``nnUNet_extTrainer`` folder (next to ours, separated by ``os.pathsep``); train 2d and 3d_fullres fold 0 (the 3D run
is killed after one epoch and resumed with ``--c``); re-run validation with ``--val``; rebuild the network from the
model folder alone; predict with ``nnUNetv2_predict``; pick the best with
``nnUNetv2_find_best_configuration``. 3d_lowres / 3d_cascade_fullres are covered at the builder level in
test_trainers.py (nnU-Net plans no lowres stage for images this small).

Kept small for a 2-core CI: 5 cases of 16 x 32 x 32, no mirroring, one worker everywhere, 2 epochs of 2 iterations,
and a copy of the default plans with narrower stages (``nnUNetPlansTiny``, same preprocessed data), which is also how
a user would make a variant plans file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from support import e2e
from support.nnunet import run_console

DATASET_ID = e2e.DATASET_ID
TRAINER = "nnUNetTrainerDSConvE2E"
PLANS = "nnUNetPlansTiny"
CONFIGURATIONS = e2e.CONFIGURATIONS
TUBE_UNET = "nnunet_tubeconv.architectures.unet.TubeUNet"

# A user's trainer file: exactly what docs/how-to/use-with-nnunet.md tells people to write (plus a test-only
# interruption hook).
USER_TRAINER_SOURCE = e2e.short_trainer_source({TRAINER: "nnUNetTrainerDSConv"})


def _model_folder(ws: dict, configuration: str) -> Path:
    return Path(ws["env"]["nnUNet_results"]) / ws["dataset"] / f"{TRAINER}__{PLANS}__{configuration}"


@pytest.fixture(scope="module")
def ws(e2e_dataset) -> dict:
    """Data set written, planned and preprocessed (conftest.e2e_dataset); tiny plans and the user's trainer file."""
    ws = e2e_dataset
    e2e.add_user_trainers(ws, "my_tubeconv_trainers.py", USER_TRAINER_SOURCE)
    e2e.narrow_plans(ws["pre"], PLANS)
    return ws


@pytest.fixture(scope="module")
def trained_2d(ws) -> Path:
    run_console(
        ["nnUNetv2_train", DATASET_ID, "2d", "0", "-tr", TRAINER, "-p", PLANS, "-device", "cpu", "--npz"],
        ws["env"],
        log=ws["log"],
    )
    return _model_folder(ws, "2d")


@pytest.fixture(scope="module")
def trained_3d(ws) -> dict:
    """3d_fullres fold 0: killed after epoch 1 of 2, then resumed with --c."""
    cmd = ["nnUNetv2_train", DATASET_ID, "3d_fullres", "0", "-tr", TRAINER, "-p", PLANS, "-device", "cpu"]
    fold = _model_folder(ws, "3d_fullres") / "fold_0"
    state = e2e.interrupted_and_resumed(cmd, ws["env"], fold, ws["log"], resume_args=("--c", "--npz"))
    state["folder"] = _model_folder(ws, "3d_fullres")
    return state


def test_training_saves_our_network_in_the_model_folder(ws, trained_2d):
    fold = trained_2d / "fold_0"
    assert (fold / "checkpoint_final.pth").is_file()
    assert (fold / "validation" / "summary.json").is_file()
    entry = e2e.load_json(trained_2d / "plans.json")["configurations"]["2d"]["architecture"]
    assert entry["network_class_name"] == TUBE_UNET
    assert entry["arch_kwargs"]["block_options"]["conv_block"] == "dsc"
    assert entry["arch_kwargs"]["features_per_stage"][0] == 8  # the tiny plans, not the default ones
    # the plans on disk that training started from are untouched
    stock = e2e.load_json(ws["pre"] / f"{PLANS}.json")["configurations"]["2d"]["architecture"]
    assert stock["network_class_name"].endswith("PlainConvUNet") and "block_options" not in stock["arch_kwargs"]
    ckpt = e2e.load_checkpoint(fold / "checkpoint_final.pth")
    assert ckpt["trainer_name"] == TRAINER
    assert ckpt["current_epoch"] == 2


def test_interrupted_training_resumes_with_c(trained_3d):
    e2e.check_resumed(trained_3d)
    ckpt = e2e.load_checkpoint(trained_3d["folder"] / "fold_0" / "checkpoint_final.pth")
    assert ckpt["current_epoch"] == 2
    assert len(ckpt["logging"]["train_losses"]) == 2  # epoch 0 from the first run, epoch 1 from the resumed one


def test_model_folder_alone_rebuilds_the_trained_network(ws, trained_3d):
    """Saved plans.json (our entry) and the original plans (PlainConvUNet + class constants) build one network."""
    import torch
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_tubeconv.trainers import nnUNetTrainerDSConv

    folder = trained_3d["folder"]
    dataset_json = e2e.load_json(folder / "dataset.json")
    weights = e2e.load_checkpoint(folder / "fold_0" / "checkpoint_final.pth")["network_weights"]
    keys = []
    for plans in (e2e.load_json(folder / "plans.json"), e2e.load_json(ws["pre"] / f"{PLANS}.json")):
        pm = PlansManager(plans)
        cm = pm.get_configuration("3d_fullres")
        n_in = determine_num_input_channels(pm, cm, dataset_json)
        net = nnUNetTrainerDSConv.build_network_architecture(pm, cm, n_in, 2, False)
        net.load_state_dict(weights)  # strict: every key and shape matches the trained network
        keys.append(sorted(net.state_dict()))
        with torch.no_grad():
            assert tuple(net.eval()(torch.zeros(1, n_in, *cm.patch_size)).shape) == (1, 2, *cm.patch_size)
    assert keys[0] == keys[1] == sorted(weights)


def test_validation_only_with_val(ws, trained_2d):
    summary = trained_2d / "fold_0" / "validation" / "summary.json"
    summary.unlink()
    run_console(
        ["nnUNetv2_train", DATASET_ID, "2d", "0", "-tr", TRAINER, "-p", PLANS, "-device", "cpu", "--val", "--npz"],
        ws["env"],
        log=ws["log"],
    )
    metrics = e2e.load_json(summary)
    assert "foreground_mean" in metrics and np.isfinite(metrics["foreground_mean"]["Dice"])


def test_predict_with_our_trainer(ws, trained_3d):
    e2e.predict(ws, ["tubes_000", "tubes_003"], ws["base"] / "predict_3d", "3d_fullres", TRAINER, PLANS)


def test_find_best_configuration(ws, trained_2d, trained_3d):
    r = run_console(
        [
            "nnUNetv2_find_best_configuration",
            DATASET_ID,
            "-c",
            *CONFIGURATIONS,
            "-tr",
            TRAINER,
            "-p",
            PLANS,
            "-f",
            "0",
            "-np",
            "1",
        ],
        ws["env"],
        log=ws["log"],
    )
    results = Path(ws["env"]["nnUNet_results"]) / ws["dataset"]
    info = e2e.load_json(results / "inference_information.json")
    assert set(info["all_results"]) >= {f"{TRAINER}__{PLANS}__{c}" for c in CONFIGURATIONS}
    assert any(k.startswith("ensemble___") for k in info["all_results"])  # --npz made ensembling possible
    for m in info["best_model_or_ensemble"]["selected_model_or_models"]:
        assert m["trainer"] == TRAINER and m["plans_identifier"] == PLANS
    assert f"-tr {TRAINER}" in (results / "inference_instructions.txt").read_text()
    assert "Best" in r.stdout
