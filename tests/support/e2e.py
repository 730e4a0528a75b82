"""The end-to-end workflow of the integration tests through nnU-Net's entry points, as a user runs it: a synthetic
data set planned by ``nnUNetv2_plan_and_preprocess``, a user's short trainer subclasses in their own
``nnUNet_extTrainer`` folder, narrower plans, a training killed and resumed, predictions, and the checks of what
nnU-Net wrote. Test modules import the module (``from support import e2e``) and call ``e2e.narrow_plans(...)``."""

from __future__ import annotations

import copy
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from support.nnunet import nnunet_env, run_console

#: a user's trainer class of the end-to-end tests: exactly what docs/how-to/use-with-nnunet.md tells people to write
#: (a shorter schedule), no mirroring (validation and prediction 4-8x faster on CPU) and a test-only interruption hook
_SHORT_TRAINER_CLASS = '''

class {name}({base}):
    """{base}, {epochs} epochs of {iterations} iterations, no mirroring."""

    def __init__(self, plans, configuration, fold, dataset_json, device=torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = {epochs}
        self.num_iterations_per_epoch = {iterations}
        self.num_val_iterations_per_epoch = 1
        self.save_every = 1  # checkpoint_latest.pth after every epoch

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        # no mirroring, hence no test-time mirroring either
        rot, dummy_2d, initial_size, _ = super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        self.inference_allowed_mirroring_axes = None
        return rot, dummy_2d, initial_size, None

    def on_epoch_end(self):
        super().on_epoch_end()
        stop = os.environ.get("E2E_STOP_AFTER_EPOCHS")  # test hook: die like a killed job
        if stop is not None and self.current_epoch == int(stop):
            raise SystemExit(f"simulated interruption after {{self.current_epoch}} epoch(s)")
'''


def short_trainer_source(classes: dict[str, str], epochs: int = 2, iterations: int = 2) -> str:
    """Source of a user's trainer module: one short subclass ``name`` of each of our trainers ``base``
    (``{name: base}``), with the ``E2E_STOP_AFTER_EPOCHS`` interruption hook."""
    bases = sorted(set(classes.values()))
    head = f"import os\n\nimport torch\n\nfrom nnunet_tubeconv.trainers import {', '.join(bases)}\n"
    return head + "".join(_SHORT_TRAINER_CLASS.format(name=n, base=b, epochs=epochs, iterations=iterations)
                          for n, b in classes.items())


def planned_synthetic_dataset(base: Path, dataset_id: int, shape: Sequence[int], num_cases: int,
                              configurations: Sequence[str] = ("2d", "3d_fullres"), name: str | None = None) -> dict:
    """A synthetic data set under ``base`` (2D or 3D: ``len(shape)``), planned and preprocessed by
    ``nnUNetv2_plan_and_preprocess`` (default planner), and an empty user trainer folder ``user`` in
    ``nnUNet_extTrainer`` after ours (put files there with :func:`add_user_trainers` before training). Returns the
    workspace dict of the end-to-end tests: ``base``, ``env``, ``log``, ``user``, ``dataset_id``, ``dataset``
    (folder name), ``raw`` and ``pre`` (its raw and preprocessed folders)."""
    from nnunet_tubeconv.data.synthetic import write_synthetic_dataset
    from nnunet_tubeconv.trainers import trainer_folder

    user = base / "user_trainers"
    user.mkdir()
    env = nnunet_env(base, [trainer_folder(), user])
    log = base / "commands.log"
    folder = write_synthetic_dataset(env["nnUNet_raw"], dataset_id, len(shape), num_cases, shape=shape, name=name)
    plan_env = {**env, "nnUNet_n_proc_DA": "1"}  # the planner calls torch.set_num_threads(n_proc_DA)
    run_console(["nnUNetv2_plan_and_preprocess", "-d", dataset_id, "-c", *configurations,
                 "-np", *["1"] * len(configurations), "-npfp", "1"], plan_env, log=log)
    pre = Path(env["nnUNet_preprocessed"]) / folder.name
    return {"base": base, "env": env, "log": log, "user": user, "dataset_id": dataset_id, "dataset": folder.name,
            "raw": folder, "pre": pre}


def add_user_trainers(ws: dict, file_name: str, source: str) -> None:
    """Write a user's trainer module into the workspace's user trainer folder (found by nnU-Net's lookup)."""
    path = ws["user"] / file_name
    if path.exists():
        raise ValueError(f"{path} exists: give each test module's trainers their own file")
    path.write_text(source)


def narrow_plans(pre: Path, plans_name: str, source: str = "nnUNetPlans") -> dict:
    """Write ``<plans_name>.json`` into the preprocessed folder ``pre``: the planned ``<source>.json`` (same
    preprocessed data) with narrower stages (8, 16, 32, 32, ...) and batch size 2, which is also how a user would
    make a variant plans file. Returns the plans as planned."""
    planned = load_json(pre / f"{source}.json")
    plans = copy.deepcopy(planned)
    plans["plans_name"] = plans_name
    for c in plans["configurations"].values():
        kw = c["architecture"]["arch_kwargs"]
        kw["features_per_stage"] = [min(8 * 2**i, 32) for i in range(kw["n_stages"])]
        c["batch_size"] = 2
    (pre / f"{plans_name}.json").write_text(json.dumps(plans, indent=2))
    return planned


#: the end-to-end data set shared by the test modules that train on it (integration/test_e2e_nnunet.py,
#: integration/test_e2e_resenc.py): 5 cases of 16 x 32 x 32, planned for 2d and 3d_fullres
DATASET_ID = 987
SHAPE = (16, 32, 32)  # (z, y, x); 16 slices keep 2d validation short
CONFIGURATIONS = ("2d", "3d_fullres")


def interrupted_and_resumed(cmd: Sequence, env: dict[str, str], fold: Path, log: Path,
                            resume_args: Sequence[str] = ("--c",)) -> dict:
    """Run ``nnUNetv2_train`` (``cmd``) of a short trainer killed after epoch 1 by its ``E2E_STOP_AFTER_EPOCHS``
    hook, then again with ``resume_args``; returns both runs and the fold folder's state in between (the keys
    :func:`check_resumed` reads)."""
    first = run_console(cmd, {**env, "E2E_STOP_AFTER_EPOCHS": "1"}, expect_ok=False, log=log)
    latest = fold / "checkpoint_latest.pth"
    state = {
        "first": first,
        "latest_epoch": load_checkpoint(latest)["current_epoch"] if latest.exists() else None,
        "final_after_first": (fold / "checkpoint_final.pth").exists(),
    }
    state["resumed"] = run_console([*cmd, *resume_args], env, log=log)
    return state


def check_resumed(state: dict) -> None:
    """The first run of :func:`interrupted_and_resumed` died after epoch 1 with a checkpoint and no final one; the
    second continued from that checkpoint instead of starting again."""
    first, resumed = state["first"], state["resumed"]
    assert first.returncode != 0
    assert "simulated interruption after 1 epoch" in first.stdout + first.stderr
    assert state["latest_epoch"] == 1 and not state["final_after_first"]
    assert "Epoch 1" in resumed.stdout and "Epoch 0\n" not in resumed.stdout  # continued, not restarted


def predict_input_folder(ws: dict, cases: Sequence[str]) -> Path:
    """A fresh folder with the images of ``cases`` of the workspace's raw data set (nnUNetv2_predict's ``-i``)."""
    src = ws["raw"] / "imagesTr"
    dst = ws["base"] / f"predict_in_{'_'.join(cases)}"
    dst.mkdir()
    for c in cases:
        shutil.copy(src / f"{c}_0000.nii.gz", dst / f"{c}_0000.nii.gz")
    return dst


def predict(ws: dict, cases: Sequence[str], out: Path, configuration: str, trainer: str, plans: str) -> None:
    """``nnUNetv2_predict`` of fold 0 on CPU, one worker, on a fresh folder with the images of ``cases``; then
    :func:`check_predictions`."""
    run_console(["nnUNetv2_predict", "-i", predict_input_folder(ws, cases), "-o", out, "-d", ws["dataset_id"],
                 "-c", configuration, "-tr", trainer, "-p", plans, "-f", "0", "-device", "cpu", "-npp", "1",
                 "-nps", "1", "--disable_progress_bar"], ws["env"], log=ws["log"])
    check_predictions(ws, out, cases)


def check_predictions(ws: dict, out: Path, cases: Sequence[str]) -> None:
    """nnUNetv2_predict wrote one binary segmentation per case with the image's shape and affine."""
    import nibabel as nib
    import numpy as np

    written = sorted(p.name for p in out.glob("*.nii.gz"))
    assert written == sorted(f"{c}.nii.gz" for c in cases)
    for c in cases:
        image = nib.load(ws["raw"] / "imagesTr" / f"{c}_0000.nii.gz")
        seg = nib.load(out / f"{c}.nii.gz")
        assert seg.shape == image.shape
        np.testing.assert_allclose(seg.affine, image.affine, atol=1e-4)
        assert set(np.unique(np.asarray(seg.dataobj)).tolist()) <= {0, 1}


def load_json(path: str | os.PathLike) -> dict:
    return json.loads(Path(path).read_text())


def load_checkpoint(path: str | os.PathLike) -> dict:
    """An nnU-Net checkpoint, on CPU (it pickles more than tensors)."""
    import torch

    return torch.load(path, map_location="cpu", weights_only=False)

