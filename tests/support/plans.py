"""nnU-Net plans made in the test: whole plans dicts shaped like nnU-Net's (ExperimentPlanner, PlainConvUNet; the
ResEnc presets), the architecture entries of a few stage layouts, and dataset.json dicts."""

from __future__ import annotations

import copy
from collections.abc import Sequence

from nnunet_tubeconv.architectures.variants import plain_conv_unet_entry, resenc_unet_entry


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


# ---------------------------------------------------------------------------------------------------------------
# architecture entries of a configuration, as nnU-Net's planners write them (JSON form)


def plans_entry(dim: int, n_stages: int, features: list[int], kernels: list, strides: list, n_dec: int = 2,
                **extra) -> dict:
    """A configuration's architecture entry as nnU-Net's default planner writes it (JSON form)."""
    assert len(features) == n_stages
    return plain_conv_unet_entry(dim, features, strides, kernels, n_conv_per_stage_decoder=n_dec, **extra)


def aniso_3d() -> tuple[dict, list[int]]:
    """6 stages, [1,3,3] kernels and [1,2,2] strides in the first stages, as for thick-slice CT/MR."""
    entry = plans_entry(3, 6, [2, 4, 6, 8, 8, 8],
                        [[1, 3, 3], [1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]],
                        [[1, 1, 1], [1, 2, 2], [1, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2]])
    return entry, [8, 64, 64]


def iso_2d() -> tuple[dict, list[int]]:
    """7 stages, as the planner makes for 2D configurations."""
    entry = plans_entry(2, 7, [2, 4, 6, 8, 8, 8, 8], [[3, 3]] * 7, [[1, 1]] + [[2, 2]] * 6)
    return entry, [128, 128]


def aniso_3d_resenc() -> tuple[dict, list[int]]:
    """``aniso_3d``'s stages as a ResidualEncoderUNet entry (ResEnc planner's form), 1-2 blocks per stage."""
    entry, patch = aniso_3d()
    kw = entry["arch_kwargs"]
    return resenc_unet_entry(3, kw["features_per_stage"], kw["strides"], kw["kernel_sizes"],
                             n_blocks_per_stage=[1, 2, 2, 2, 2, 2]), patch


def iso_2d_resenc() -> tuple[dict, list[int]]:
    """``iso_2d``'s stages as a ResidualEncoderUNet entry, 1-2 blocks per stage."""
    entry, patch = iso_2d()
    kw = entry["arch_kwargs"]
    return resenc_unet_entry(2, kw["features_per_stage"], kw["strides"], kw["kernel_sizes"],
                             n_blocks_per_stage=[1, 2, 2, 2, 2, 2, 2]), patch


#: the test plans per host: nnU-Net's network class -> (3D plan, 2D plan)
PLANS_BY_HOST = {"plain": (aniso_3d, iso_2d), "resenc": (aniso_3d_resenc, iso_2d_resenc)}
