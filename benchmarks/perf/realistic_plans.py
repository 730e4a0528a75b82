"""Plans shaped like real data for ``bench-train --plan`` and ``profile-snake``: what nnU-Net's own default
``ExperimentPlanner`` writes for a data set, planned from a fingerprint (no image is read or preprocessed).

* ``drive2d``: the 20 DRIVE training images (:data:`DRIVE_LIKE`: 584 x 565 pixels, spacing 1, one channel, vessel
  label). These are the shape numbers of the real data set: ``nnunet-tubeconv convert drive`` of the 20 images
  followed by ``nnUNetv2_extract_fingerprint`` and ``nnUNetv2_plan_experiment`` gives the same fingerprint
  (20 x ``[1, 584, 565]``, spacing ``[999, 1, 1]``) and the same 2d plan: patch 640 x 640, batch 2, 8 stages of
  widths 32-512 (``tests/unit/test_bench_train.py`` compares both when ``../shared/data/DRIVE`` is present).
* ``hepaticvessel3d``: the Task08 HepaticVessel-like fingerprint of ``calibrate-memory``
  (:data:`nnunet_tubeconv.benchmarks.perf.calibrate_memory.HEPATIC_VESSEL_LIKE`), planned ``3d_fullres`` at nnU-Net's
  default 8 GB target: patch 64 x 192 x 192, batch 2, 6 stages of widths 32-320.

Both use nnU-Net's planner at its default GPU memory target, so patch and batch are what a new user gets.
"""

from __future__ import annotations

import tempfile
from typing import Any

#: DRIVE's training half as nnU-Net's fingerprint sees it (shape numbers only; the images are not in the repository)
DRIVE_LIKE: dict[str, Any] = {
    "name": "Dataset909_DRIVELike",
    "num_training": 20,
    "shape": [1, 584, 565],
    "spacing": [999.0, 1.0, 1.0],
    "channel_names": {"0": "fundus"},
    "labels": {"background": 0, "vessel": 1},
}

#: ``--plan`` names: data set, the nnU-Net configuration taken from its plans
REALISTIC_PLANS: dict[str, str] = {"drive2d": "2d", "hepaticvessel3d": "3d_fullres"}


def drive_like_fingerprint(spec: dict[str, Any] = DRIVE_LIKE) -> tuple[dict, dict]:
    """``(dataset_fingerprint.json, dataset.json)`` contents for the DRIVE-like data set."""
    n = int(spec["num_training"])
    fingerprint = {
        "foreground_intensity_properties_per_channel": {
            "0": {"max": 255.0, "mean": 120.0, "median": 120.0, "min": 1.0, "percentile_00_5": 20.0,
                  "percentile_99_5": 230.0, "std": 40.0}
        },
        "median_relative_size_after_cropping": 1.0,
        "shapes_after_crop": [list(spec["shape"]) for _ in range(n)],
        "spacings": [list(spec["spacing"]) for _ in range(n)],
    }
    dataset_json = {"channel_names": dict(spec["channel_names"]), "labels": dict(spec["labels"]), "numTraining": n,
                    "file_ending": ".nii.gz", "overwrite_image_reader_writer": "SimpleITKIO"}
    return fingerprint, dataset_json


def _spec(name: str) -> dict[str, Any]:
    if name not in REALISTIC_PLANS:
        raise ValueError(f"unknown plan {name!r}; realistic plans are {sorted(REALISTIC_PLANS)}")
    from nnunet_tubeconv.benchmarks.perf.calibrate_memory import HEPATIC_VESSEL_LIKE

    return DRIVE_LIKE if name == "drive2d" else HEPATIC_VESSEL_LIKE


def nnunet_default_plans(name: str) -> dict:
    """nnU-Net's default plans (``ExperimentPlanner``, 8 GB) of the data set behind ``--plan name``."""
    from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner

    from nnunet_tubeconv.benchmarks.perf.calibrate_memory import (
        hepatic_vessel_like_fingerprint,
        nnunet_paths,
        plan_quietly,
        write_fingerprint_dataset,
    )

    spec = _spec(name)
    fingerprint, dataset_json = (drive_like_fingerprint() if name == "drive2d" else hepatic_vessel_like_fingerprint())
    with tempfile.TemporaryDirectory(prefix="tubeconv_plan_") as tmp, nnunet_paths(tmp) as paths:
        write_fingerprint_dataset(paths["nnUNet_raw"], paths["nnUNet_preprocessed"], spec["name"], fingerprint,
                                  dataset_json)
        return plan_quietly(ExperimentPlanner, spec["name"], 8)


def realistic_plan(name: str) -> tuple[dict, dict]:
    """Architecture entry and run settings (bench-train's ``run`` dict) of ``--plan name``."""
    plans = nnunet_default_plans(name)
    cfg = plans["configurations"][REALISTIC_PLANS[name]]
    run = {"patch_size": [int(p) for p in cfg["patch_size"]], "batch_size": int(cfg["batch_size"]),
           "batch_dice": bool(cfg.get("batch_dice", True)), "input_channels": 1,
           "num_classes": len(_spec(name)["labels"]),  # background included, as nnU-Net's outputs
           "plan": f"{name} (nnU-Net default plans, {REALISTIC_PLANS[name]})"}
    return _plain(cfg["architecture"]), run


def _plain(architecture: dict) -> dict:
    """The planner's entry with tuples as lists (as a plans.json read back gives it)."""
    import json

    return json.loads(json.dumps(architecture, default=lambda o: o.tolist() if hasattr(o, "tolist") else int(o)))
