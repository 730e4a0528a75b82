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
