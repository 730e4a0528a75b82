"""Choose the postprocessing on a model folder's cross-validation predictions: ``postprocess determine``.

As nnU-Net's own ``determine_postprocessing`` does for its "keep the largest component" rule, the choice is made on
the validation predictions that ``nnUNetv2_train`` writes for each fold (``MODEL_FOLDER/fold_<f>/validation``)
against the training references (``$nnUNet_preprocessed/<dataset>/gt_segmentations``, the data set named by the
model folder's ``plans.json``). Nothing else is read: no test images, no held-out labels.

**The scan.** For every foreground label (every region of a region-based data set), in dataset.json's order, the
fixed grid :data:`GRID_VOXELS` of thresholds in voxel-equivalents (``0`` = no postprocessing) is applied with
:func:`~nnunet_tubeconv.postprocessing.components.remove_small_components` to every validation case, and each case
is scored with :mod:`nnunet_tubeconv.evaluation.metrics` (Dice, clDice, Betti-0 error at the same connectivity).
A threshold of ``n`` voxels is the physical size ``n x`` the data set's median voxel measure (area or volume of the
plans' ``original_median_spacing_after_transp``), the ``min_size`` written into the kwargs; the scan applies the
same kwargs stock nnU-Net will, so it scores exactly what ``nnUNetv2_apply_postprocessing`` does.

**The rule** (:func:`choose_threshold`): a threshold *passes* when, paired over the validation cases, the mean change
``postprocessed - raw`` of Dice and of clDice is ``>= -tolerance`` for each (cases where a value is undefined,
e.g. both masks empty, are left out of the pair, as nnU-Net's means skip NaN); the default tolerance is 0, so the
mean Dice and the mean clDice never go down. Among the passing thresholds the one with the lowest mean Betti-0 error
is chosen, ties going to the smaller threshold; threshold 0 always passes, so a label gets no postprocessing unless
removing components lowers its mean Betti-0 error without costing Dice or clDice beyond the tolerance. Labels are
decided one after another on the segmentations already postprocessed for the labels before them (with regions, a
removal can change a later region's mask), as nnU-Net does.

**Output** (default ``MODEL_FOLDER/postprocessing_tubes/``, not nnU-Net's ``crossval_results_folds_*`` folder, so that
``nnUNetv2_find_best_configuration``'s outputs are untouched): ``postprocessing.pkl``, nnU-Net's format
``(pp_fns, pp_fn_kwargs)`` with one :func:`remove_small_components` step per label that gets one (none: two empty
lists), which ``nnUNetv2_apply_postprocessing -pp_pkl_file`` applies; and ``postprocessing.json`` (schema
:data:`SCHEMA`): the scan table per label, the choice, the tolerance, the folds and cases used, the voxel size.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import pickle
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nnunet_tubeconv.postprocessing.components import (
    LabelOrRegion,
    components_to_keep,
    label_mask,
    normalise_label,
    remove_small_components,
    spatial_dims,
    voxel_measure,
)

__all__ = [
    "DEFAULT_FOLDS",
    "GRID_VOXELS",
    "GUARDED_METRICS",
    "JSON_FILE",
    "OUTPUT_FOLDER",
    "PKL_FILE",
    "SCHEMA",
    "CrossValidation",
    "PostprocessingError",
    "ValidationCase",
    "choose_threshold",
    "describe_postprocessing",
    "determine_postprocessing",
    "find_cross_validation",
    "median_voxel_size",
    "parse_tolerance",
    "scan_case",
    "select_labels",
    "write_postprocessing",
]

#: the candidate thresholds, in voxel-equivalents of the data set's median voxel (0: no postprocessing)
GRID_VOXELS: tuple[int, ...] = (0, 5, 10, 20, 50, 100, 200, 500)
#: the metrics that must not get worse (mean paired change >= -tolerance)
GUARDED_METRICS: tuple[str, ...] = ("dice", "cldice")
#: the folds scanned unless told otherwise: nnU-Net's five-fold cross-validation
DEFAULT_FOLDS: tuple[str, ...] = ("0", "1", "2", "3", "4")
#: where the pkl and json go, inside the model folder
OUTPUT_FOLDER = "postprocessing_tubes"
PKL_FILE = "postprocessing.pkl"
JSON_FILE = "postprocessing.json"
SCHEMA = "nnunet-tubeconv/postprocessing/1"
#: float slack of the pass test (a change of -1e-17 is no loss)
_SLACK = 1e-12


class PostprocessingError(ValueError):
    """Postprocessing cannot be determined or applied as asked (the message says what is wrong and what is allowed)."""


# ------------------------------------------------------------------------------------------------ input
@dataclass(frozen=True)
class ValidationCase:
    """One validation prediction of a fold and its training reference."""

    case: str
    fold: str
    prediction: Path
    reference: Path


@dataclass(frozen=True)
class CrossValidation:
    """What a determination reads: the model folder's plans and dataset.json, and its validation cases."""

    model_folder: Path
    plans: dict
    dataset_json: dict
    folds: tuple[str, ...]
    reference_folder: Path
    cases: tuple[ValidationCase, ...]

    @property
    def file_ending(self) -> str:
        return str(self.dataset_json["file_ending"])


def parse_tolerance(items: Iterable[str] | Mapping[str, float] | None) -> dict[str, float]:
    """``{"dice": t, "cldice": t}`` from ``["dice=0.003", "cldice=0.002"]`` (or a dict); unnamed metrics get 0."""
    out = {m: 0.0 for m in GUARDED_METRICS}
    if items is None:
        return out
    pairs: list[tuple[str, Any]] = []
    if isinstance(items, Mapping):
        pairs = list(items.items())
    else:
        for item in items:
            name, sep, value = str(item).partition("=")
            if not sep:
                raise PostprocessingError(f"--tolerance takes METRIC=VALUE, e.g. dice=0.003; got {item!r}")
            pairs.append((name.strip(), value.strip()))
    for name, value in pairs:
        if name not in GUARDED_METRICS:
            raise PostprocessingError(f"unknown tolerance metric {name!r}; allowed: {', '.join(GUARDED_METRICS)}")
        try:
            v = float(value)
        except (TypeError, ValueError):
            v = math.nan
        if not (math.isfinite(v) and v >= 0):
            raise PostprocessingError(f"tolerance of {name} must be a number >= 0, got {value!r}")
        out[name] = v
    return out


def median_voxel_size(plans: Mapping[str, Any]) -> list[float]:
    """The data set's median voxel size in the predictions' axis order: the plans'
    ``original_median_spacing_after_transp`` put back through ``transpose_backward`` (exported predictions are in
    the original axis order)."""
    try:
        after = [float(v) for v in plans["original_median_spacing_after_transp"]]
        backward = [int(i) for i in plans.get("transpose_backward", range(len(after)))]
    except (KeyError, TypeError, ValueError):
        raise PostprocessingError("plans.json has no usable original_median_spacing_after_transp") from None
    if sorted(backward) != list(range(len(after))):
        raise PostprocessingError(f"plans.json transpose_backward {backward} does not fit spacing {after}")
    return [after[i] for i in backward]


def _check_folds(folds: Sequence[str | int] | None) -> tuple[str, ...]:
    if folds is None:
        return DEFAULT_FOLDS
    out = []
    for f in folds:
        f = str(f)
        if f == "all":
            raise PostprocessingError("fold 'all' trains on every case, so its validation predictions are not held "
                                      "out; choose among the cross-validation folds 0-4")
        if not f.isdigit():
            raise PostprocessingError(f"a fold is an integer (0-4 in nnU-Net's five folds), got {f!r}")
        if f not in out:
            out.append(f)
    if not out:
        raise PostprocessingError("no folds given; give e.g. -f 0 1 2 3 4")
    return tuple(out)


def _read_json(path: Path, what: str) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise PostprocessingError(f"cannot read the model folder's {what} {path}: {e}") from None


def _split_of(preprocessed: Path, fold: str) -> list[str] | None:
    """The validation cases of ``fold`` in nnU-Net's splits_final.json, when there is one."""
    path = preprocessed / "splits_final.json"
    if not path.is_file():
        return None
    try:
        splits = json.loads(path.read_text())
        return [str(c) for c in splits[int(fold)]["val"]]
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return None


def find_cross_validation(model_folder: str | os.PathLike, folds: Sequence[str | int] | None = None,
                          reference_folder: str | os.PathLike | None = None) -> CrossValidation:
    """The validation predictions of ``folds`` (default all five) of a trained model folder and their references.

    model_folder: ``$nnUNet_results/DatasetXXX_Name/<Trainer>__<Plans>__<configuration>`` (or one of its
    ``fold_<f>`` folders: that fold only, unless ``folds`` says otherwise).
    reference_folder: default ``$nnUNet_preprocessed/<plans' dataset_name>/gt_segmentations``, where nnU-Net keeps
    the training references its own postprocessing and ``find_best_configuration`` compare against.
    Raises :class:`PostprocessingError` naming what is missing: a fold without validation predictions (and the
    folds that have them), a fold whose validation lacks cases of its split (``splits_final.json``), a case without
    a reference.
    """
    from nnunet_tubeconv.deploy.model_folder import resolve_model_path

    given = Path(model_folder).expanduser()
    if given.is_dir() and not any((d / "plans.json").is_file() and (d / "dataset.json").is_file()
                                  for d in (given, given.parent)):
        raise PostprocessingError(
            f"{given} is not a trained nnU-Net model folder (no plans.json and dataset.json): give the folder "
            "nnUNetv2_train wrote, $nnUNet_results/DatasetXXX_Name/<Trainer>__<Plans>__<configuration>")
    folder, path_fold = resolve_model_path(given)
    if folds is None and path_fold is not None:
        folds = [path_fold]
    fold_ids = _check_folds(folds)
    plans = _read_json(folder / "plans.json", "plans.json")
    dataset_json = _read_json(folder / "dataset.json", "dataset.json")
    ending = dataset_json.get("file_ending")
    if not isinstance(ending, str) or not ending:
        raise PostprocessingError(f"{folder / 'dataset.json'} has no file_ending")
    dataset = plans.get("dataset_name")
    if reference_folder is None:
        root = os.environ.get("nnUNet_preprocessed")
        if not root:
            raise PostprocessingError(
                "nnUNet_preprocessed is not set: the references are read from "
                f"$nnUNet_preprocessed/{dataset or '<dataset>'}/gt_segmentations, as nnU-Net reads them")
        if not dataset:
            raise PostprocessingError(f"{folder / 'plans.json'} has no dataset_name")
        reference_folder = Path(root) / str(dataset) / "gt_segmentations"
    reference_folder = Path(reference_folder)
    if not reference_folder.is_dir():
        raise PostprocessingError(f"no reference folder {reference_folder} (nnUNetv2_plan_and_preprocess writes "
                                  "gt_segmentations there)")

    def predictions(fold: str) -> dict[str, Path]:
        val = folder / f"fold_{fold}" / "validation"
        if not val.is_dir():
            return {}
        n = len(ending)
        return {p.name[:-n]: p for p in sorted(val.iterdir()) if p.is_file() and p.name.endswith(ending)}

    found = {f: predictions(f) for f in fold_ids}
    lacking = [f for f in fold_ids if not found[f]]
    if lacking:
        present = sorted(d.name[len("fold_"):] for d in folder.glob("fold_*")
                         if d.name[len("fold_"):].isdigit() and predictions(d.name[len("fold_"):]))
        hint = (f"; folds with validation predictions: {', '.join(present)} (choose them with -f "
                f"{' '.join(present)})" if present else
                "; no fold has any: train the folds (nnUNetv2_train writes fold_<f>/validation at the end), or run "
                "nnUNetv2_train ... --val")
        raise PostprocessingError(f"no validation predictions (*{ending}) in {folder}/fold_"
                                  f"{{{','.join(lacking)}}}/validation" + hint)
    preprocessed = reference_folder.parent
    cases: list[ValidationCase] = []
    seen: dict[str, str] = {}
    for f in fold_ids:
        split = _split_of(preprocessed, f)
        if split is not None:
            missing = sorted(set(split) - set(found[f]))
            if missing:
                raise PostprocessingError(
                    f"fold_{f}/validation lacks {len(missing)} of the {len(split)} validation cases of its split "
                    f"(splits_final.json): {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}; "
                    "rerun nnU-Net's validation (nnUNetv2_train ... --val)")
        for case, pred in found[f].items():
            if case in seen:
                raise PostprocessingError(f"case {case} is in the validation of fold {seen[case]} and fold {f}: "
                                          "cross-validation folds must not share validation cases")
            seen[case] = f
            cases.append(ValidationCase(case, f, pred, reference_folder / f"{case}{ending}"))
    no_ref = [c.case for c in cases if not c.reference.is_file()]
    if no_ref:
        raise PostprocessingError(f"no reference in {reference_folder} for {len(no_ref)} validation case(s): "
                                  f"{', '.join(no_ref[:5])}{' ...' if len(no_ref) > 5 else ''}")
    return CrossValidation(folder, plans, dataset_json, fold_ids, reference_folder, tuple(cases))


def select_labels(dataset_json: Mapping[str, Any], labels: Sequence | None = None
                  ) -> tuple[list[LabelOrRegion], dict[str, str]]:
    """The labels to decide: every foreground label (or region) of dataset.json, or those of ``labels`` (ints, or
    tuples for regions), each of which must be one of them; and ``{str(label): name}``."""
    from nnunet_tubeconv.evaluation.folders import labels_from_dataset_json

    try:
        known, names = labels_from_dataset_json(dict(dataset_json))
    except ValueError as e:
        raise PostprocessingError(f"dataset.json: {e}") from None
    if labels is None:
        return known, names
    chosen: list[LabelOrRegion] = []
    for lab in labels:
        try:
            lab = normalise_label(lab)
        except ValueError as e:
            raise PostprocessingError(str(e)) from None
        if lab not in known:
            listing = ", ".join(f"{k} ({names.get(str(k), '?')})" for k in known)
            raise PostprocessingError(f"label {lab} is not a foreground label of dataset.json; its labels: {listing}")
        if lab not in chosen:
            chosen.append(lab)
    return chosen, names


# ------------------------------------------------------------------------------------------------ the scan
def _read_seg(reader_cls, path: Path) -> tuple[np.ndarray, tuple[float, ...]]:
    """The segmentation as nnU-Net hands it to postprocessing functions (``read_seg(...)[0]``) and its spacing."""
    seg, props = reader_cls().read_seg(str(path))
    return seg[0], tuple(float(s) for s in props["spacing"])


def scan_case(job: tuple) -> dict[str, Any]:
    """Scan one validation case for one label: Dice, clDice and Betti-0 error at every threshold of ``grid``.

    ``job``: ``(case, reader_cls, label, prior_fns, prior_kwargs, grid, voxel_size, connectivity)``; the prior
    steps (the choices for earlier labels) are applied first. A top-level function, for spawned worker processes.
    """
    from nnunet_tubeconv.evaluation.metrics import (
        cldice_from_skeletons,
        component_sizes,
        dice_iou,
        foreground_bbox,
        skeleton,
    )

    case, reader_cls, label, prior_fns, prior_kwargs, grid, voxel_size, connectivity = job
    pred, _ = _read_seg(reader_cls, case.prediction)
    ref, _ = _read_seg(reader_cls, case.reference)
    if pred.shape != ref.shape:
        raise PostprocessingError(f"fold_{case.fold}/validation/{case.prediction.name}: shape {pred.shape} differs "
                                  f"from its reference's {ref.shape}")
    for fn, kwargs in zip(prior_fns, prior_kwargs):
        pred = fn(pred, **kwargs)
    measure = voxel_measure(pred.shape, voxel_size)
    p, r = label_mask(pred, label), label_mask(ref, label)
    if spatial_dims(p.shape) == 2 and p.ndim == 3:  # nnU-Net's (1, Y, X): score in 2D, as `evaluate` does
        p, r = p[0], r[0]
    box = foreground_bbox(r, p, margin=2)  # every metric here is invariant to this crop
    if box is not None:
        p, r = p[box], r[box]
    labels, sizes = component_sizes(p, connectivity)
    b0_ref = len(component_sizes(r, connectivity)[1]) - 1
    skel_ref, skel_pred = skeleton(r, connectivity), skeleton(p, connectivity)
    out: dict[str, Any] = {"case": case.case, "fold": case.fold, "dice": [], "cldice": [], "betti0_error": [],
                           "removed_voxels": []}
    for n in grid:
        keep = components_to_keep(sizes, n * measure, measure)  # n = 0 keeps every component
        kept = keep[labels]
        if connectivity == "full":
            # kept is a union of whole 8/26-connected components of p, which the (local) thinning treats
            # independently: its skeleton is p's skeleton restricted to it (tested)
            skel_kept = skel_pred & kept
        else:
            skel_kept = skeleton(kept, connectivity)
        out["dice"].append(dice_iou(r, kept)[0])
        out["cldice"].append(cldice_from_skeletons(r, kept, skel_ref, skel_kept))
        out["betti0_error"].append(abs(int(np.count_nonzero(keep[1:])) - b0_ref))
        out["removed_voxels"].append(int(np.count_nonzero(p)) - int(np.count_nonzero(kept)))
    return out


def _mean(values: Iterable[float]) -> float:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(vals)) if vals else math.nan


def choose_threshold(per_case: Sequence[Mapping[str, Any]], grid: Sequence[int], tolerance: Mapping[str, float],
                     measure: float) -> tuple[list[dict[str, Any]], int]:
    """The scan table (one row per threshold of ``grid``, whose first entry must be 0) and the chosen threshold in
    voxel-equivalents, by the rule of the module docstring, from :func:`scan_case` rows of one label."""
    if not grid or grid[0] != 0:
        raise ValueError(f"the grid must start with 0 (no postprocessing), got {list(grid)}")
    rows = []
    for i, n in enumerate(grid):
        row: dict[str, Any] = {
            "threshold_voxels": n,
            "min_size": n * measure,
            "betti0_error": _mean(c["betti0_error"][i] for c in per_case),
            "betti0_error_change": _mean(c["betti0_error"][i] - c["betti0_error"][0] for c in per_case),
        }
        passed = True
        for m in GUARDED_METRICS:
            pairs = [(c[m][i], c[m][0]) for c in per_case]
            diffs = [a - b for a, b in pairs if math.isfinite(a) and math.isfinite(b)]
            change = float(np.mean(diffs)) if diffs else 0.0
            row[m] = _mean(a for a, _ in pairs)
            row[f"{m}_change"] = change
            row[f"{m}_paired_cases"] = len(diffs)
            passed = passed and change >= -float(tolerance.get(m, 0.0)) - _SLACK
        row["removed_voxels"] = _mean(c["removed_voxels"][i] for c in per_case)
        row["passed"] = passed
        rows.append(row)
    # threshold 0 always passes (no change), so there is always a choice
    best = min((r for r in rows if r["passed"]),
               key=lambda r: (math.inf if math.isnan(r["betti0_error"]) else r["betti0_error"], r["threshold_voxels"]))
    for r in rows:
        r["chosen"] = r is best
    return rows, int(best["threshold_voxels"])


# ------------------------------------------------------------------------------------------------ main API
RULE = ("per label: among the grid thresholds whose mean paired change (postprocessed - raw) over the validation "
        "cases is >= -tolerance for Dice and for clDice, the one with the lowest mean Betti-0 error, ties to the "
        "smaller threshold; 0 (no postprocessing) always passes")


def determine_postprocessing(model_folder: str | os.PathLike, output_folder: str | os.PathLike | None = None,
                             folds: Sequence[str | int] | None = None,
                             tolerance: Iterable[str] | Mapping[str, float] | None = None,
                             labels: Sequence | None = None, num_processes: int = 1,
                             reference_folder: str | os.PathLike | None = None, connectivity: str = "full",
                             grid: Sequence[int] = GRID_VOXELS, progress: bool = False) -> dict[str, Any]:
    """Scan, choose and write ``postprocessing.pkl`` and ``postprocessing.json`` into ``output_folder`` (default
    ``MODEL_FOLDER/postprocessing_tubes``); returns the json document (schema :data:`SCHEMA`).

    folds: default all five; each needs ``fold_<f>/validation`` predictions. tolerance: ``{"dice": t, "cldice":
    t}`` or ``["dice=t", ...]`` (default 0 each). labels: default every foreground label or region of dataset.json.
    reference_folder: see :func:`find_cross_validation`. grid: thresholds in voxel-equivalents, starting with 0
    (default :data:`GRID_VOXELS`; tests only). Raises :class:`PostprocessingError` for bad input.
    """
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_tubeconv import __version__
    from nnunet_tubeconv.evaluation.folders import map_cases, worker_pool
    from nnunet_tubeconv.evaluation.metrics import CONNECTIVITY_CHOICES, foreground_connectivity

    tol = parse_tolerance(tolerance)
    if connectivity not in CONNECTIVITY_CHOICES:
        raise PostprocessingError(f"connectivity must be one of {CONNECTIVITY_CHOICES}, got {connectivity!r}")
    if int(num_processes) < 1:
        raise PostprocessingError(f"the number of processes must be >= 1, got {num_processes}")
    grid = tuple(int(n) for n in grid)
    if not grid or grid[0] != 0 or any(b <= a for a, b in itertools.pairwise(grid)):
        raise PostprocessingError(f"the grid must be increasing and start with 0, got {list(grid)}")
    cv = find_cross_validation(model_folder, folds, reference_folder)
    wanted, names = select_labels(cv.dataset_json, labels)
    try:
        reader_cls = PlansManager(cv.plans).image_reader_writer_class
    except Exception as e:  # noqa: BLE001 - an unknown reader name in plans.json is bad input
        raise PostprocessingError(f"plans.json names no reader nnU-Net knows: {e}") from None
    voxel_size = median_voxel_size(cv.plans)
    first, _ = _read_seg(reader_cls, cv.cases[0].prediction)
    dims = spatial_dims(first.shape)
    measure = voxel_measure(first.shape, voxel_size)
    out_dir = Path(output_folder) if output_folder is not None else cv.model_folder / OUTPUT_FOLDER

    pp_fns: list = []
    pp_kwargs: list[dict[str, Any]] = []
    label_docs = []
    with worker_pool(int(num_processes), len(cv.cases)) as pool:
        for lab in wanted:
            jobs = [(c, reader_cls, lab, list(pp_fns), [dict(k) for k in pp_kwargs], grid, voxel_size, connectivity)
                    for c in cv.cases]
            per_case = map_cases(scan_case, jobs, pool, progress, f"label {lab}")
            rows, chosen = choose_threshold(per_case, grid, tol, measure)
            kwargs = {"labels_or_regions": lab, "min_size": chosen * measure, "voxel_size": list(voxel_size),
                      "connectivity": connectivity, "background_label": 0}
            if chosen > 0:
                pp_fns.append(remove_small_components)
                pp_kwargs.append(kwargs)
            label_docs.append({
                "label": list(lab) if isinstance(lab, tuple) else lab,
                "name": names.get(str(lab)),
                "chosen_voxels": chosen,
                "chosen_min_size": chosen * measure,
                "postprocessing": chosen > 0,
                "scan": rows,
                "per_case": per_case,
            })
    parts = cv.model_folder.name.split("__")
    document = {
        "schema": SCHEMA,
        "model_folder": str(cv.model_folder),
        "dataset": cv.plans.get("dataset_name"),
        "trainer": parts[0] if len(parts) == 3 else None,
        "plans": cv.plans.get("plans_name"),
        "configuration": parts[2] if len(parts) == 3 else None,
        "reference_folder": str(cv.reference_folder),
        "folds": list(cv.folds),
        "num_cases": len(cv.cases),
        "cases": {f: [c.case for c in cv.cases if c.fold == f] for f in cv.folds},
        "file_ending": cv.file_ending,
        "dimensions": dims,
        "voxel_size": list(voxel_size),
        "voxel_size_source": ("plans.json original_median_spacing_after_transp in the predictions' axis order "
                              "(transpose_backward)"),
        "voxel_measure": measure,
        "size_unit": f"spacing unit^{dims}",
        "connectivity": {"mode": connectivity, "foreground": foreground_connectivity(dims, connectivity)},
        "grid_voxels": list(grid),
        "tolerance": tol,
        "rule": RULE,
        "labels": label_docs,
        "postprocessing_fns": [step["function"] for step in describe_postprocessing(pp_fns, pp_kwargs)],
        "postprocessing_kwargs": pp_kwargs,
        "nnunet_tubeconv": __version__,
    }
    write_postprocessing(out_dir, pp_fns, pp_kwargs, document)
    return document


def describe_postprocessing(pp_fns: Sequence, pp_fn_kwargs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The steps as JSON-able dicts: ``[{"function": "module.name", "kwargs": {...}}, ...]`` (tuples as lists)."""
    from nnunet_tubeconv.evaluation.serialise import json_safe

    return [{"function": f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}",
             "kwargs": json_safe(dict(kwargs))} for fn, kwargs in zip(pp_fns, pp_fn_kwargs)]


def write_postprocessing(output_folder: str | os.PathLike, pp_fns: list, pp_fn_kwargs: list[dict],
                         document: Mapping[str, Any]) -> tuple[Path, Path]:
    """Write ``postprocessing.pkl`` (nnU-Net's ``(pp_fns, pp_fn_kwargs)``) and ``postprocessing.json``, each
    atomically; returns their paths."""
    from nnunet_tubeconv.evaluation.serialise import write_json_atomic

    folder = Path(output_folder)
    folder.mkdir(parents=True, exist_ok=True)
    pkl = folder / PKL_FILE
    tmp = pkl.with_name(f".{pkl.name}.tmp")
    with open(tmp, "wb") as f:
        pickle.dump((list(pp_fns), [dict(k) for k in pp_fn_kwargs]), f)
    tmp.replace(pkl)
    js = folder / JSON_FILE
    write_json_atomic(js, document)
    return pkl, js


# ------------------------------------------------------------------------------------------------ CLI
def _label_arg(text: str) -> LabelOrRegion:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"a label is an integer, a region comma-separated integers; got {text!r}")
    return values[0] if len(values) == 1 else tuple(values)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model_folder", metavar="MODEL_FOLDER",
                        help="trained model folder ($nnUNet_results/DatasetXXX_Name/<Trainer>__<Plans>__"
                             "<configuration>) with fold_<f>/validation predictions")
    parser.add_argument("-o", "--output", default=None,
                        help=f"folder for postprocessing.pkl and postprocessing.json (default: "
                             f"MODEL_FOLDER/{OUTPUT_FOLDER})")
    parser.add_argument("-f", "--folds", nargs="+", default=None,
                        help="cross-validation folds whose validation predictions are scanned (default: 0 1 2 3 4)")
    parser.add_argument("--tolerance", nargs="+", default=None, metavar="METRIC=VALUE",
                        help="how much the mean paired Dice / clDice may drop, e.g. dice=0.003 cldice=0.002 "
                             "(default: 0, never lower them)")
    parser.add_argument("--labels", nargs="+", type=_label_arg, default=None,
                        help="labels to decide (a region as 1,2; default: every foreground label or region of "
                             "dataset.json)")
    parser.add_argument("-np", "--num-processes", type=int, default=1, help="worker processes (default: 1)")


def run(args: argparse.Namespace) -> int:
    doc = determine_postprocessing(args.model_folder, args.output, args.folds, args.tolerance, args.labels,
                                   args.num_processes, progress=True)
    out = Path(args.output) if args.output else Path(doc["model_folder"]) / OUTPUT_FOLDER
    print(f"scanned {doc['num_cases']} validation cases of folds {', '.join(doc['folds'])}; voxel "
          f"{doc['voxel_measure']:g} {doc['size_unit']}; tolerance "
          + ", ".join(f"{m} {v:g}" for m, v in doc["tolerance"].items()))
    for lab in doc["labels"]:
        raw = lab["scan"][0]
        best = next(r for r in lab["scan"] if r["chosen"])
        name = f" ({lab['name']})" if lab["name"] else ""
        if lab["postprocessing"]:
            print(f"  label {lab['label']}{name}: remove components < {best['threshold_voxels']} voxels "
                  f"({best['min_size']:g} {doc['size_unit']}): Betti-0 error {raw['betti0_error']:.2f} -> "
                  f"{best['betti0_error']:.2f}, Dice {best['dice_change']:+.4f}, clDice {best['cldice_change']:+.4f}")
        else:
            print(f"  label {lab['label']}{name}: no postprocessing (no threshold lowers the Betti-0 error "
                  f"{raw['betti0_error']:.2f} within the tolerance)")
    print(f"wrote {out / PKL_FILE} and {out / JSON_FILE}")
    return 0
