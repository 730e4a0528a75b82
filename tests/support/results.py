"""Fabricated benchmark results for tests: a ``RESULTS_DIR`` laid out exactly as the harness writes it.

:func:`fabricate_results_dir` writes ``suite.json`` and ``runs/<dataset>/<configuration>/<arm>/fold_<f>_seed_<s>/
record.json`` files (schema ``nnunet-tubeconv/record/1``) whose ``metrics`` follow ``nnunet-tubeconv/results/1``, with
per-case values drawn so that the answer is known: the variant arm gains ``effect`` Dice / IoU / NSD / clDice on every
case and is indistinguishable from the baseline on HD95 and the Betti errors. Used by the report's, the harness's
and the evaluation's tests; :func:`write_segmentation` writes small segmentation folders in nnU-Net's formats::

    from support.results import fabricate_results_dir
    root = fabricate_results_dir(tmp_path / "results")   # both arms seeds 0 and 1, folds 0-1,
                                                         # variant fold 1 seed 1 failed
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nnunet_tubeconv.evaluation.folders import SCHEMA as RESULTS_SCHEMA
from nnunet_tubeconv.evaluation.folders import mean_per_label
from nnunet_tubeconv.evaluation.layout import RECORD_SCHEMA, SUITE_FILE, unit_rel_dir
from nnunet_tubeconv.evaluation.metrics import MetricSettings

FABRICATED_ERROR = ("Traceback (most recent call last):\n  File \"run_training.py\", line 1, in <module>\n"
                    "torch.OutOfMemoryError: CUDA out of memory (fabricated)")


def _case_truth(rng: np.random.Generator, n_cases: int, ndim: int) -> list[dict[str, float]]:
    """Per-case 'difficulty': the baseline's expected value of each metric on that case."""
    out = []
    for _ in range(n_cases):
        dice = float(rng.uniform(0.6, 0.85))
        out.append({"dice": dice, "hd95": float(rng.uniform(2, 12)), "nsd": float(rng.uniform(0.6, 0.85)),
                    "cldice": float(rng.uniform(0.6, 0.85)), "betti0_error": float(rng.integers(0, 8)),
                    "betti1_error": float(rng.integers(0, 4)), "betti2_error": float(rng.integers(0, 2))})
    return out


def _draw_metrics(truth: dict[str, float], rng: np.random.Generator, gain: float, noise: float,
                  ndim: int) -> dict[str, Any]:
    def clip01(x: float) -> float:
        return float(min(max(x, 0.0), 1.0))

    dice = clip01(truth["dice"] + gain + rng.normal(0, noise))
    row: dict[str, Any] = {
        "dice": dice,
        "iou": dice / (2 - dice),
        "hd95": float(max(truth["hd95"] + rng.normal(0, 1.0), 0.0)),
        "nsd": clip01(truth["nsd"] + gain + rng.normal(0, noise)),
        "cldice": clip01(truth["cldice"] + gain + rng.normal(0, noise)),
        "betti0_error": int(max(truth["betti0_error"] + rng.integers(-2, 3), 0)),
        "betti1_error": int(max(truth["betti1_error"] + rng.integers(-1, 2), 0)),
        "betti2_error": None if ndim == 2 else int(max(truth["betti2_error"] + rng.integers(-1, 2), 0)),
    }
    row["n_ref"] = int(rng.integers(5_000, 20_000))
    row["n_pred"] = int(row["n_ref"] * (1 + rng.normal(0, 0.05)))
    return row


def _curves(rng: np.random.Generator, epochs: int, quality: float) -> dict[str, list[float]]:
    e = np.arange(epochs)
    train = 1.0 * np.exp(-e / (epochs / 3)) - 0.5 * quality + rng.normal(0, 0.01, epochs)
    val = train + 0.05 + rng.normal(0, 0.02, epochs)
    dice = (0.85 * quality) * (1 - np.exp(-e / (epochs / 4))) + rng.normal(0, 0.01, epochs)
    lr = 0.01 * (1 - e / epochs) ** 0.9
    return {"epoch": e.tolist(), "train_loss": train.round(5).tolist(), "val_loss": val.round(5).tolist(),
            "pseudo_dice": dice.round(5).tolist(), "lr": lr.round(7).tolist()}


def fabricate_results_dir(root: str | Path, *, datasets: Sequence[str] = ("Dataset901_SynthTubes",),
                          configuration: str = "3d_fullres", baseline: str = "baseline", variant: str = "dsconv",
                          baseline_seeds: Sequence[int] = (0, 1), variant_seeds: Sequence[int] = (0, 1),
                          folds: Sequence[int] = (0, 1), cases_per_fold: int = 8, labels: Sequence[int] = (1,),
                          effect: float = 0.06, noise: float = 0.01, epochs: int = 12,
                          failed: Sequence[tuple[str, int, int]] | None = None, seed: int = 0,
                          effect_labels: Sequence[int] | None = None,
                          label_names: dict[int, str] | None = None) -> Path:
    """Write a fabricated RESULTS_DIR under ``root`` and return it.

    The variant gains ``effect`` on Dice/IoU/NSD/clDice of every case (with Gaussian noise of sd ``noise`` per run),
    none on HD95/Betti. Each fold holds ``cases_per_fold`` validation cases (case ids ``<dataset>_<nnn>``), so an
    arm's folds pool into ``len(folds) * cases_per_fold`` cases. ``failed`` lists ``(arm, fold, seed)`` units written
    as ``status: "failed"`` with an error and no metrics; default: the variant's last fold at its last seed.
    ``suite.json["seeds"]`` is the union of both arms' seeds; when they differ, the arm that ran fewer simply has
    no record for the others (the report lists those units as not run). ``effect_labels``: the labels that get the
    effect (default: all); ``label_names``: written into each results.json as ``label_names`` (as the harness does
    when the labels come from dataset.json).
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    ndim = 2 if configuration.startswith("2d") else 3
    if failed is None:
        failed = [(variant, folds[-1], variant_seeds[-1])]
    failed_set = {(a, int(f), int(s)) for a, f, s in failed}
    arms = {baseline: {"trainer": "nnUNetTrainer", "plans": "nnUNetPlans"},
            variant: {"trainer": "nnUNetTrainerDSConv", "plans": "nnUNetPlans"}}
    suite = {"name": "fabricated", "baseline": baseline, "arms": arms, "datasets": list(datasets),
             "configurations": [configuration], "folds": list(folds),
             "seeds": sorted(set(baseline_seeds) | set(variant_seeds)), "budget": "smoke"}
    root.mkdir(parents=True, exist_ok=True)
    (root / SUITE_FILE).write_text(json.dumps(suite, indent=1))
    settings = MetricSettings().to_json()
    settings.update(file_ending=".nii.gz", reader="SimpleITKIO", dimensions=[ndim], nnunet_tubeconv="0.1.0")
    for dataset in datasets:
        n_cases = cases_per_fold * len(folds)
        truth = {lab: _case_truth(rng, n_cases, ndim) for lab in labels}
        for arm, seeds in ((baseline, baseline_seeds), (variant, variant_seeds)):
            gain = effect if arm == variant else 0.0
            gain_of = {lab: gain if effect_labels is None or lab in effect_labels else 0.0 for lab in labels}
            for s in seeds:
                for fi, fold in enumerate(folds):
                    unit = root / unit_rel_dir(dataset, configuration, arm, fold, s)
                    unit.mkdir(parents=True, exist_ok=True)
                    is_failed = (arm, int(fold), int(s)) in failed_set
                    case_ids = range(fi * cases_per_fold, (fi + 1) * cases_per_fold)
                    per_case = [{"case": f"{dataset.split('_')[-1]}_{c:03d}", "label": lab,
                                 **_draw_metrics(truth[lab][c], rng, gain_of[lab], noise, ndim)}
                                for c in case_ids for lab in labels]
                    metrics = None if is_failed else {
                        "schema": RESULTS_SCHEMA, "pred_dir": str(unit / "validation"),
                        "ref_dir": f"nnUNet_preprocessed/{dataset}/gt_segmentations", "labels": list(labels),
                        "spacing_source": "image header", "settings": dict(settings, num_cases=cases_per_fold),
                        "per_case": per_case, "mean": mean_per_label(per_case),
                        **({"label_names": {str(k): v for k, v in label_names.items()}} if label_names else {})}
                    record = {
                        "schema": RECORD_SCHEMA, "status": "failed" if is_failed else "done",
                        "dataset": dataset, "configuration": configuration, "arm": arm,
                        "trainer": arms[arm]["trainer"], "plans": arms[arm]["plans"], "fold": int(fold),
                        "seed": int(s), "budget": "smoke", "git_commit": None,
                        "versions": {"nnunetv2": "2.8.1", "torch": "2.14.1", "nnunet_tubeconv": "0.1.0",
                                     "python": "3.11"},
                        "device": "cpu", "wall_time_s": float(rng.uniform(500, 700) * (1.3 if gain else 1.0)),
                        "iteration_time_s": float(rng.uniform(0.2, 0.3) * (1.4 if gain else 1.0)),
                        "peak_memory_bytes": int(rng.uniform(2, 3) * 2**30 * (1.5 if gain else 1.0)),
                        "parameters": 31_000_000 if not gain else 33_500_000,
                        "block_options": {"dsconv": {"kernel_size": 9}} if gain else None,
                        "curves": None if is_failed else _curves(rng, epochs, 1.0 + gain),
                        "metrics": metrics,
                        "error": (FABRICATED_ERROR if is_failed else None),
                        "started": "2025-01-01T00:00:00+00:00", "finished": "2025-01-01T00:10:00+00:00",
                    }
                    (unit / "record.json").write_text(json.dumps(_json_safe(record), indent=1, allow_nan=False))
    return root


def write_segmentation(folder: str | Path, case: str, seg: np.ndarray, spacing: Sequence[float],
                       ending: str = ".nii.gz") -> Path:
    """Write ``seg`` (integer labels, ``(Z, Y, X)`` or ``(Y, X)``) as ``<folder>/<case><ending>`` the way nnU-Net's
    readers expect it: NIfTI through SimpleITK with ``spacing`` in array-axis order, PNG through Pillow (spacing 1)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{case}{ending}"
    if ending in (".nii.gz", ".nrrd", ".mha"):
        import SimpleITK as sitk

        img = sitk.GetImageFromArray(np.asarray(seg).astype(np.uint8))
        img.SetSpacing(tuple(float(s) for s in spacing[::-1]))  # SimpleITK orders x, y, z; the array z, y, x
        sitk.WriteImage(img, str(path))
    elif ending == ".png":
        from PIL import Image

        Image.fromarray(np.asarray(seg).astype(np.uint8)).save(path)
    else:
        raise ValueError(f"ending must be one of .nii.gz, .nrrd, .mha, .png; got {ending!r}")
    return path


def _json_safe(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_json_safe(v) for v in obj]
    return obj
