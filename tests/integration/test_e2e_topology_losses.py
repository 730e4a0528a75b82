"""End to end through stock nnU-Net's console scripts for nnUNetTrainerSkeletonRecall, on CPU, on a tiny synthetic
2D data set: plan and preprocess, train (killed after one epoch, resumed with ``--c``), ``--val``, ``nnUNetv2_predict``.

Training runs with one data-augmentation worker process (``nnUNet_n_proc_DA=1``): the tubed skeletons are made
there, by the transform the trainer appends to nnU-Net's pipeline, and the user's subclass checks in ``train_step``
that every batch arriving from nnU-Net's augmenter carries them. Kept small: 5 cases of 64 x 64, 2 epochs of 3
iterations, narrow stages, no mirroring.
"""

from __future__ import annotations

import ast
import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
from support import e2e
from support.nnunet import run_console

DATASET_ID = 986
TRAINER = "nnUNetTrainerSkeletonRecallE2E"
PLANS = "nnUNetPlansTinySR"

USER_TRAINER_SOURCE = textwrap.dedent(
    '''
    import os

    import torch

    from nnunet_tubeconv.trainers import nnUNetTrainerSkeletonRecall


    class nnUNetTrainerSkeletonRecallE2E(nnUNetTrainerSkeletonRecall):
        """nnUNetTrainerSkeletonRecall, 2 epochs of 3 iterations, no mirroring; logs what each batch carries."""

        def __init__(self, plans, configuration, fold, dataset_json, device=torch.device("cuda")):
            super().__init__(plans, configuration, fold, dataset_json, device)
            self.num_epochs = 2
            self.num_iterations_per_epoch = 3
            self.num_val_iterations_per_epoch = 1
            self.save_every = 1

        def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
            rot, dummy_2d, initial_size, _ = super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
            self.inference_allowed_mirroring_axes = None
            return rot, dummy_2d, initial_size, None

        def train_step(self, batch):
            target = batch["target"]
            with open(os.environ["E2E_BATCH_LOG"], "a") as f:
                f.write(f"{[tuple(t.shape) for t in target]} {int((target[0][:, 1] > 0).sum())} "
                        f"{int((target[0][:, 0] > 0).sum())}\\n")
            return super().train_step(batch)

        def on_epoch_end(self):
            super().on_epoch_end()
            stop = os.environ.get("E2E_STOP_AFTER_EPOCHS")
            if stop is not None and self.current_epoch == int(stop):
                raise SystemExit(f"simulated interruption after {self.current_epoch} epoch(s)")
    '''
)


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> dict:
    ws = e2e.planned_synthetic_dataset(tmp_path_factory.mktemp("e2e_sr"), DATASET_ID, (64, 64), 5, ("2d",))
    e2e.add_user_trainers(ws, "my_skeleton_recall_trainers.py", USER_TRAINER_SOURCE)
    ws["env"]["E2E_BATCH_LOG"] = str(ws["base"] / "batches.log")
    e2e.narrow_plans(ws["pre"], PLANS)
    return {**ws, "model": Path(ws["env"]["nnUNet_results"]) / ws["dataset"] / f"{TRAINER}__{PLANS}__2d"}


def test_skeleton_recall_through_nnunets_entry_points(ws):
    env, log = {**ws["env"], "nnUNet_n_proc_DA": "1"}, ws["log"]
    cmd = ["nnUNetv2_train", DATASET_ID, "2d", "0", "-tr", TRAINER, "-p", PLANS, "-device", "cpu"]
    fold = ws["model"] / "fold_0"
    state = e2e.interrupted_and_resumed(cmd, env, fold, log)
    assert state["latest_epoch"] == 1 and not state["final_after_first"]
    assert (fold / "checkpoint_final.pth").exists()
    # every training batch came out of nnU-Net's augmenter (one worker process) with the skeleton channel, at
    # every deep-supervision resolution, the skeleton a non-empty part of the foreground
    lines = Path(env["E2E_BATCH_LOG"]).read_text().splitlines()
    assert len(lines) == 6  # 3 iterations x (epoch 0 + epoch 1 after the resume)
    for line in lines:
        shapes, n_skel, n_fg = line.rsplit(" ", 2)
        assert all(s[1] == 2 for s in ast.literal_eval(shapes))
        assert 0 < int(n_skel) <= int(n_fg)  # tubes <= 3 px wide: the tubed skeleton is all of them
    debug = json.loads((fold / "debug.json").read_text())
    assert "SkeletonRecallCompound" in debug["loss"] and "DeepSupervisionWrapper" in debug["loss"]

    (fold / "validation" / "summary.json").unlink()
    run_console([*cmd, "--val"], env, log=log)
    summary = json.loads((fold / "validation" / "summary.json").read_text())
    assert np.isfinite(summary["foreground_mean"]["Dice"])

    inp = ws["base"] / "predict_in"
    inp.mkdir()
    (inp / "tubes_000_0000.nii.gz").write_bytes((ws["raw"] / "imagesTr" / "tubes_000_0000.nii.gz").read_bytes())
    out = ws["base"] / "predict_out"
    run_console(["nnUNetv2_predict", "-i", inp, "-o", out, "-d", DATASET_ID, "-c", "2d", "-tr", TRAINER, "-p", PLANS,
                 "-f", "0", "-device", "cpu", "-npp", "1", "-nps", "1", "--disable_progress_bar"], env, log=log)
    assert (out / "tubes_000.nii.gz").is_file()
