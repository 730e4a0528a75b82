"""Shared test helpers: nnU-Net plans dicts made in the test, nnU-Net folder variables, console-script runs.

Other test files may append fixtures here.
"""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from nnunet_tubeconv.architectures.variants import plain_conv_unet_entry, resenc_unet_entry

NNUNET_PATH_VARIABLES = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")


# ---------------------------------------------------------------------------------------------------------------
# plans dicts shaped like nnU-Net's (ExperimentPlanner, PlainConvUNet)


def configuration_entry(patch_size: Sequence[int], spacing: Sequence[float], architecture: dict, **extra) -> dict:
    """A full configuration of nnU-Net plans (what ``PlansManager.get_configuration`` needs)."""
    dim = len(patch_size)
    return {
        "data_identifier": f"nnUNetPlans_{dim}d_test",
        "preprocessor_name": "DefaultPreprocessor",
        "batch_size": 2,
        "patch_size": list(patch_size),
        "median_image_size_in_voxels": [float(p) for p in patch_size],
        "spacing": list(spacing),
        "normalization_schemes": ["ZScoreNormalization"],
        "use_mask_for_norm": [False],
        "resampling_fn_data": "resample_data_or_seg_to_shape",
        "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
        "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None},
        "architecture": architecture,
        "batch_dice": False,
        **extra,
    }


def plans_dict(configurations: dict, dataset_name: str = "Dataset999_Test", plans_name: str = "nnUNetPlans") -> dict:
    """Top-level nnU-Net plans around ``configurations``."""
    return {
        "dataset_name": dataset_name,
        "plans_name": plans_name,
        "original_median_spacing_after_transp": [1.0, 1.0, 1.0],
        "original_median_shape_after_transp": [32, 32, 32],
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "configurations": copy.deepcopy(configurations),
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {
            "0": {
                "max": 1.0,
                "mean": 0.5,
                "median": 0.5,
                "min": 0.0,
                "percentile_00_5": 0.0,
                "percentile_99_5": 1.0,
                "std": 0.2,
            }
        },
    }


def tiny_plans(features: Sequence[int] = (4, 8, 16)) -> dict:
    """Small 2d + 3d_fullres plans (3 stages by default): networks build and run in well under a second."""
    n = len(features)
    strides2 = [[1, 1]] + [[2, 2]] * (n - 1)
    strides3 = [[1, 1, 1]] + [[2, 2, 2]] * (n - 1)
    side = 4 * 2 ** (n - 1)
    return plans_dict(
        {
            "2d": configuration_entry([side, side], [1.0, 1.0], plain_conv_unet_entry(2, features, strides2)),
            "3d_fullres": configuration_entry(
                [side] * 3, [1.0, 1.0, 1.0], plain_conv_unet_entry(3, features, strides3)
            ),
        }
    )


def tiny_resenc_plans(features: Sequence[int] = (4, 8, 16)) -> dict:
    """``tiny_plans`` as nnU-Net's ResEnc planners write them (ResidualEncoderUNet, 1-3-4 blocks, plans name
    nnUNetResEncUNetMPlans)."""
    plans = tiny_plans(features)
    for configuration in plans["configurations"].values():
        kw = configuration["architecture"]["arch_kwargs"]
        dim = len(kw["kernel_sizes"][0])
        configuration["architecture"] = resenc_unet_entry(dim, kw["features_per_stage"], kw["strides"],
                                                          kw["kernel_sizes"])
    plans["plans_name"] = "nnUNetResEncUNetMPlans"
    return plans


def hepatic_vessel_like_plans() -> dict:
    """Plans shaped like nnU-Net's for MSD Task08 HepaticVessel (2 foreground labels, anisotropic CT).

    Has all four configurations: ``3d_lowres`` (``next_stage``) and ``3d_cascade_fullres``, which inherits
    everything from ``3d_fullres`` and adds ``previous_stage``, exactly as the default planner writes a cascade.
    """
    k3 = [[1, 3, 3]] + [[3, 3, 3]] * 5
    s3 = [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2]]
    f3 = [32, 64, 128, 256, 320, 320]
    f2 = [32, 64, 128, 256, 512, 512, 512, 512]
    s2 = [[1, 1]] + [[2, 2]] * 7
    return plans_dict(
        {
            "2d": configuration_entry([512, 512], [0.8, 0.8], plain_conv_unet_entry(2, f2, s2)),
            "3d_fullres": configuration_entry(
                [64, 192, 192], [1.5, 0.8, 0.8], plain_conv_unet_entry(3, f3, s3, kernel_sizes=k3)
            ),
            "3d_lowres": configuration_entry(
                [64, 160, 160],
                [2.4, 1.6, 1.6],
                plain_conv_unet_entry(3, f3, s3, kernel_sizes=k3),
                next_stage=["3d_cascade_fullres"],
            ),
            "3d_cascade_fullres": {"inherits_from": "3d_fullres", "previous_stage": "3d_lowres"},
        },
        dataset_name="Dataset008_HepaticVessel",
    )


HEPATIC_VESSEL_DATASET_JSON = {
    "channel_names": {"0": "CT"},
    "labels": {"background": 0, "Vessel": 1, "Tumour": 2},
    "numTraining": 303,
    "file_ending": ".nii.gz",
}

TINY_DATASET_JSON = {
    "channel_names": {"0": "synthetic"},
    "labels": {"background": 0, "vessel": 1},
    "numTraining": 5,
    "file_ending": ".nii.gz",
}


@pytest.fixture
def make_tiny_plans() -> Callable[..., dict]:
    return tiny_plans


@pytest.fixture
def make_hepatic_vessel_plans() -> Callable[[], dict]:
    return hepatic_vessel_like_plans


# ---------------------------------------------------------------------------------------------------------------
# nnU-Net folders, environment and console scripts


def nnunet_folders(base: Path) -> dict[str, str]:
    """nnUNet_raw / nnUNet_preprocessed / nnUNet_results under ``base`` (created)."""
    out = {}
    for var in NNUNET_PATH_VARIABLES:
        d = base / var
        d.mkdir(parents=True, exist_ok=True)
        out[var] = str(d)
    return out


def nnunet_env(base: Path, ext_trainer: Sequence[str | os.PathLike] = ()) -> dict[str, str]:
    """Environment for nnU-Net console scripts: folders under ``base``, one worker everywhere (2-core CI)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("nnUNet")}
    env.update(nnunet_folders(base))
    env.update(
        {
            # 0 -> nnU-Net's single-threaded augmenter; the planner needs >= 1 (it calls torch.set_num_threads)
            "nnUNet_n_proc_DA": "0",
            "nnUNet_def_n_proc": "1",
            "nnUNet_compile": "0",
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            "PYTHONUNBUFFERED": "1",
        }
    )
    if ext_trainer:
        env["nnUNet_extTrainer"] = os.pathsep.join(str(p) for p in ext_trainer)
    return env


def console_script(name: str) -> str:
    """Path of an installed console script, preferring the running interpreter's environment."""
    here = Path(sys.executable).parent / name
    if here.exists():
        return str(here)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"console script {name!r} not found next to {sys.executable} nor on PATH")
    return found


def run_console(
    args: Sequence[str], env: dict[str, str], timeout: float = 600, expect_ok: bool = True, log: Path | None = None
) -> subprocess.CompletedProcess:
    """Run ``args`` (first item a console-script name; items may be ints or paths) and fail the test with the
    output's tail if it fails (unless ``expect_ok=False``). ``log``: append the command and its output there."""
    args = [str(a) for a in args]
    cmd = [console_script(args[0]), *args[1:]]
    t0 = time.perf_counter()
    r = subprocess.run(
        cmd, check=False, env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )
    r.wall_time = time.perf_counter() - t0
    if log is not None:
        with open(log, "a") as f:
            f.write(f"$ {' '.join(args)}  # {r.wall_time:.1f} s, exit {r.returncode}\n{r.stdout}\n{r.stderr}\n")
    if expect_ok and r.returncode != 0:
        tail = (r.stdout + "\n" + r.stderr)[-6000:]
        pytest.fail(f"{' '.join(args)} exited with {r.returncode}:\n{tail}")
    return r


# ---------------------------------------------------------------------------------------------------------------
# end-to-end runs: a user's short trainer subclasses, a synthetic data set planned by nnU-Net's console script

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
                              configurations: Sequence[str] = ("2d", "3d_fullres")) -> dict:
    """A synthetic 3D data set under ``base``, planned and preprocessed by ``nnUNetv2_plan_and_preprocess`` (default
    planner), and an empty user trainer folder ``user`` in ``nnUNet_extTrainer`` after ours (put files there with
    :func:`add_user_trainers` before training). Returns the workspace dict of the end-to-end tests: ``base``,
    ``env``, ``log``, ``user``, ``dataset`` (folder name), ``raw`` and ``pre`` (its raw and preprocessed folders)."""
    from nnunet_tubeconv.trainers import trainer_folder

    from nnunet_tubeconv.data.synthetic import write_synthetic_dataset

    user = base / "user_trainers"
    user.mkdir()
    env = nnunet_env(base, [trainer_folder(), user])
    log = base / "commands.log"
    folder = write_synthetic_dataset(env["nnUNet_raw"], dataset_id, 3, num_cases, shape=shape)
    plan_env = {**env, "nnUNet_n_proc_DA": "1"}  # the planner calls torch.set_num_threads(n_proc_DA)
    run_console(["nnUNetv2_plan_and_preprocess", "-d", dataset_id, "-c", *configurations,
                 "-np", *["1"] * len(configurations), "-npfp", "1"], plan_env, log=log)
    pre = Path(env["nnUNet_preprocessed"]) / folder.name
    return {"base": base, "env": env, "log": log, "user": user, "dataset": folder.name, "raw": folder, "pre": pre}


def add_user_trainers(ws: dict, file_name: str, source: str) -> None:
    """Write a user's trainer module into the workspace's user trainer folder (found by nnU-Net's lookup)."""
    path = ws["user"] / file_name
    if path.exists():
        raise ValueError(f"{path} exists: give each test module's trainers their own file")
    path.write_text(source)


#: the end-to-end data set shared by the test modules that train on it (tests/test_e2e_nnunet.py,
#: tests/test_e2e_resenc.py): 5 cases of 16 x 32 x 32, planned for 2d and 3d_fullres
E2E_DATASET_ID = 987
E2E_SHAPE = (16, 32, 32)  # (z, y, x); 16 slices keep 2d validation short
E2E_CONFIGURATIONS = ("2d", "3d_fullres")


@pytest.fixture(scope="session")
def e2e_dataset(tmp_path_factory) -> dict:
    """The shared end-to-end workspace (:func:`planned_synthetic_dataset`), planned once per session; the ResEnc
    presets reuse its preprocessed 2d / 3d_fullres data, as nnU-Net's ResEnc planners do."""
    return planned_synthetic_dataset(tmp_path_factory.mktemp("e2e"), E2E_DATASET_ID, E2E_SHAPE, 5,
                                     E2E_CONFIGURATIONS)


def predict_input_folder(ws: dict, cases: Sequence[str]) -> Path:
    """A fresh folder with the images of ``cases`` of the workspace's raw data set (nnUNetv2_predict's ``-i``)."""
    src = ws["raw"] / "imagesTr"
    dst = ws["base"] / f"predict_in_{'_'.join(cases)}"
    dst.mkdir()
    for c in cases:
        shutil.copy(src / f"{c}_0000.nii.gz", dst / f"{c}_0000.nii.gz")
    return dst


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
