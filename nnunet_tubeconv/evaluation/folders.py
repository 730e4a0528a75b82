"""Evaluate a folder of predictions against a folder of references: ``nnunet-tubeconv evaluate``.

Files are read with nnU-Net's own reader/writer classes, chosen from the file ending the way nnU-Net does
(``determine_reader_writer_from_file_ending``: SimpleITKIO for ``.nii.gz``/``.nrrd``/``.mha``, NaturalImage2DIO for
``.png``/``.bmp``/``.tif``, Tiff3DIO for ``.tif`` volumes, ...), so spacing comes from the image header exactly as
nnU-Net sees it. An image whose first spatial axis has size 1 (nnU-Net's 2D layout, ``(1, 1, Y, X)``) is evaluated
as 2D with the in-plane spacing. Labels follow nnU-Net: an ``int`` label selects ``seg == label``; a tuple (region,
Python API only) selects ``seg in region``.

The folders must hold the same case ids (file name without the ending; or, with ``cases="pred"`` /
``--pred-cases-only``, every prediction needs a reference), and each pair the same shape and spacing
(relative tolerance 1e-4); otherwise :class:`EvaluationInputError` names every offending case and the CLI exits
with code 2.

results.json schema ``nnunet-tubeconv/results/1`` (stable; additions only ever add keys)::

    {"schema": "nnunet-tubeconv/results/1",
     "pred_dir": str, "ref_dir": str,            # as given
     "labels": [int | [int, ...], ...],          # evaluated labels (lists are nnU-Net regions)
     "spacing_source": "image header",
     "mask_dir": str | null,                     # every metric restricted to these masks (field of view)
     "label_names": {"<label>": str},            # only when the labels came from a dataset.json
     "settings": {"nsd_tolerance_mm": float,     # NSD tolerance in the header's unit
                  "hd_percentile": float,        # 95 -> "hd95"
                  "connectivity": {"mode": "full" | "face",
                                   "2d": {"foreground": 8, "background": 4},
                                   "3d": {"foreground": 26, "background": 6}},
                  "crop_margin": int, "distance_method": "kdtree" | "edt",
                  "min_component_size": int, "betti_patch_size": int,   # parameters of the fragment-robust Betti
                  "hd": str, "nsd": str, "skeleton": str, "betti": str,   # one-line definitions
                  "empty": {metric: rule},       # what empty masks score, see metrics.EMPTY_RULES
                  "file_ending": str, "reader": str, "num_cases": int, "dimensions": [2] | [3] | [2, 3],
                  "nnunet_tubeconv": version},
     "per_case": [{"case": str, "label": int | [int, ...],
                   "dice": float, "iou": float, "hd95": float, "nsd": float, "cldice": float,
                   "betti0_error": int, "betti1_error": int, "betti2_error": int | null,   # null in 2D
                   "betti0_error_filtered": int, "betti1_error_filtered": int,             # small specks removed
                   "betti2_error_filtered": int | null, "betti_error_patch": float,       # patch-wise (Hu et al.)
                   "n_ref": int, "n_pred": int},                                           # voxel counts
                  ...],                          # sorted by case, then label order
     "mean": {"<label>": {metric: float | null}}}   # nanmean over cases; key as nnU-Net writes it: "1", "(1, 2)"

Undefined values (e.g. Dice when both masks are empty, see ``metrics`` for every rule) are NaN in Python and
``null`` in the JSON file; :func:`load_results` turns them back into NaN.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nnunet_tubeconv.evaluation.metrics import METRICS, MetricSettings

SCHEMA = "nnunet-tubeconv/results/1"
#: the NaN-able metrics, written as null in JSON
FLOAT_METRICS = ("dice", "iou", "hd95", "nsd", "cldice", "recall_thin", "recall_medium", "recall_thick")
SPACING_RTOL = 1e-4

Label = int | tuple[int, ...]


class EvaluationInputError(ValueError):
    """The folders cannot be evaluated as given (the message names the offending cases)."""


# ------------------------------------------------------------------------------------------------ discovery
def _known_file_endings() -> list[str]:
    from nnunetv2.imageio.reader_writer_registry import LIST_OF_IO_CLASSES

    endings = {e.lower() for rw in LIST_OF_IO_CLASSES for e in rw.supported_file_endings}
    return sorted(endings, key=len, reverse=True)


def _ending_of(name: str, endings: list[str]) -> str | None:
    low = name.lower()
    return next((e for e in endings if low.endswith(e)), None)


def detect_file_ending(folder: str | os.PathLike) -> str:
    """The most common nnU-Net file ending among the files in ``folder`` (``.nii.gz`` wins over ``.gz``)."""
    endings = _known_file_endings()
    found = Counter(e for p in Path(folder).iterdir() if p.is_file() and (e := _ending_of(p.name, endings)))
    if not found:
        raise EvaluationInputError(f"no image files with an nnU-Net file ending ({', '.join(endings)}) in {folder}")
    return found.most_common(1)[0][0]


def list_cases(folder: str | os.PathLike, file_ending: str) -> dict[str, str]:
    """``{case_id: path}`` for the files of ``folder`` that end with ``file_ending`` (case id = name minus ending)."""
    n = len(file_ending)
    return {p.name[:-n]: str(p) for p in sorted(Path(folder).iterdir())
            if p.is_file() and p.name.lower().endswith(file_ending.lower())}


def _label_key(label: Label) -> str:
    # nnU-Net's label_or_region_to_key: str(int) or str(tuple)
    return str(label)


def _normalise_labels(labels) -> list[Label] | None:
    if labels is None:
        return None
    out: list[Label] = []
    for lab in labels:
        if isinstance(lab, (list, tuple)):
            region = tuple(int(v) for v in lab)
            if not region or any(v <= 0 for v in region):
                raise EvaluationInputError(f"a region must list positive labels, got {lab!r}")
            out.append(region)
        else:
            if int(lab) != lab or int(lab) <= 0:
                raise EvaluationInputError(f"labels must be positive integers (0 is background), got {lab!r}")
            out.append(int(lab))
    if not out:
        raise EvaluationInputError("labels is empty: give at least one label, or None for all labels found")
    return out


def _mask(seg: np.ndarray, label: Label) -> np.ndarray:
    if isinstance(label, tuple):
        return np.isin(seg, label)
    return seg == label


def _read(reader_cls, path: str) -> tuple[np.ndarray, tuple[float, ...]]:
    """Segmentation ``(X, Y[, Z])`` and its spacing, with nnU-Net's 2D layout ``(1, 1, Y, X)`` reduced to 2D."""
    seg, props = reader_cls().read_seg(path)
    spacing = tuple(float(s) for s in props["spacing"])
    if seg.ndim != 4 or seg.shape[0] != 1:
        raise EvaluationInputError(f"{path}: expected one segmentation channel, got array of shape {seg.shape}")
    seg = seg[0]
    if seg.shape[0] == 1:
        return seg[0], spacing[1:]
    return seg, spacing


# ------------------------------------------------------------------------------------------------- workers
def _check_pair(job: tuple) -> dict[str, Any]:
    case, ref_path, pred_path, reader_cls, want_labels, mask_path = job
    try:
        ref, sp_ref = _read(reader_cls, ref_path)
        pred, sp_pred = _read(reader_cls, pred_path)
        mask = None if mask_path is None else _read(reader_cls, mask_path)[0]
    except Exception as e:  # noqa: BLE001 - any unreadable file is reported by case, not as a traceback
        return {"case": case, "error": f"cannot read: {type(e).__name__}: {e}"}
    out: dict[str, Any] = {"case": case, "error": None, "ndim": ref.ndim}
    if ref.shape != pred.shape:
        out["error"] = f"shape {tuple(pred.shape)} (prediction) != {tuple(ref.shape)} (reference)"
    elif mask is not None and mask.shape != ref.shape:
        out["error"] = f"shape {tuple(mask.shape)} (mask) != {tuple(ref.shape)} (reference)"
    elif not np.allclose(sp_ref, sp_pred, rtol=SPACING_RTOL, atol=0):
        out["error"] = (f"spacing {tuple(round(s, 6) for s in sp_pred)} (prediction) != "
                        f"{tuple(round(s, 6) for s in sp_ref)} (reference)")
    if want_labels:
        out["labels"] = sorted({int(v) for v in np.unique(ref)} | {int(v) for v in np.unique(pred)})
    return out


def _evaluate_pair(job: tuple) -> list[dict[str, Any]]:
    case, ref_path, pred_path, reader_cls, labels, settings, mask_path = job
    ref, spacing = _read(reader_cls, ref_path)
    pred, _ = _read(reader_cls, pred_path)
    if mask_path is not None:  # field of view: everything outside the mask is background in both
        inside = _read(reader_cls, mask_path)[0] > 0
        ref, pred = np.where(inside, ref, 0), np.where(inside, pred, 0)
    from nnunet_tubeconv.evaluation.metrics import evaluate_masks

    rows = []
    for label in labels:
        values = evaluate_masks(_mask(ref, label), _mask(pred, label), spacing, settings)
        rows.append({"case": case, "label": list(label) if isinstance(label, tuple) else label, **values})
    return rows


def map_cases(fn, jobs: list, pool, progress: bool, desc: str) -> list:
    """``[fn(j) for j in jobs]`` in order, in ``pool`` when there is one, with a tqdm bar on stderr."""
    from tqdm import tqdm

    out = []
    with tqdm(total=len(jobs), desc=desc, unit="case", disable=not progress, dynamic_ncols=True) as bar:
        for r in (map(fn, jobs) if pool is None else pool.imap(fn, jobs)):
            out.append(r)
            bar.update()
    return out


def worker_pool(num_processes: int, n_jobs: int):
    """A spawn pool (as nnU-Net uses: forking a parent that holds threads is unsafe), or a null context."""
    import contextlib
    import multiprocessing

    if num_processes <= 1 or n_jobs <= 1:
        return contextlib.nullcontext(None)
    return multiprocessing.get_context("spawn").Pool(min(num_processes, n_jobs))


# ------------------------------------------------------------------------------------------------ main API
def labels_from_dataset_json(dataset_json: dict[str, Any]) -> tuple[list[Label], dict[str, str]]:
    """The foreground labels of an nnU-Net dataset.json (its regions when it defines regions, as nnU-Net's
    ``LabelManager`` reads them; the ignore label left out) and ``{label key: name}``."""
    from nnunetv2.utilities.label_handling.label_handling import LabelManager

    if not isinstance(dataset_json.get("labels"), dict):
        raise EvaluationInputError("dataset.json has no 'labels' table")
    lm = LabelManager(dataset_json["labels"], dataset_json.get("regions_class_order"))
    raw = lm.foreground_regions if lm.has_regions else lm.foreground_labels
    labels: list[Label] = []
    for w in raw:
        lab = tuple(int(x) for x in w) if isinstance(w, (list, tuple)) and len(w) > 1 else int(
            w[0] if isinstance(w, (list, tuple)) else w)
        if lab != lm.ignore_label:
            labels.append(lab)
    names = {}
    for name, v in dataset_json["labels"].items():
        v = tuple(int(x) for x in v) if isinstance(v, (list, tuple)) and len(v) > 1 else int(
            v[0] if isinstance(v, (list, tuple)) else v)
        if v in labels:
            names[_label_key(v)] = str(name)
    return labels, names


def evaluate_folders(pred_dir: str | os.PathLike, ref_dir: str | os.PathLike, labels=None, num_processes: int = 1,
                     progress: bool = True, file_ending: str | None = None, cases: str | Sequence[str] | None = None,
                     mask_dir: str | os.PathLike | None = None, label_names: dict[str, str] | None = None,
                     **settings) -> dict[str, Any]:
    """Evaluate every case of ``pred_dir`` against ``ref_dir``; returns the results.json schema of the module doc.

    labels: ints (and/or tuples = nnU-Net regions); ``None`` -> every non-zero value found in either folder.
    file_ending: e.g. ``".nii.gz"``; ``None`` -> the most common nnU-Net ending in ``ref_dir``.
    cases: ``None`` -> both folders must hold the same case ids; ``"pred"`` -> the cases found in ``pred_dir``,
    each of which needs a reference (extra references are ignored: one fold's ``validation/`` folder against
    ``gt_segmentations/``); a list of case ids -> exactly those, each needed in both folders.
    mask_dir: a folder with one mask per case (same ids and ending, e.g. DRIVE's field-of-view masks that
    ``convert drive`` writes to ``masksTr``): every metric is computed on ``ref * mask`` and ``pred * mask``.
    label_names: ``{label key: name}`` written into the results (see :func:`labels_from_dataset_json`).
    settings: fields of :class:`~nnunet_tubeconv.evaluation.metrics.MetricSettings` (``nsd_tolerance_mm``,
    ``hd_percentile``, ``connectivity``, ``crop_margin``, ``distance_method``).
    Raises :class:`EvaluationInputError` for mismatched case lists, shapes, spacings or unreadable files.
    """
    from nnunet_tubeconv import __version__

    try:
        metric_settings = MetricSettings(**settings)
    except TypeError as e:
        raise EvaluationInputError(f"unknown setting ({e}); allowed: {sorted(MetricSettings.__dataclass_fields__)}")
    except ValueError as e:
        raise EvaluationInputError(str(e)) from None
    if int(num_processes) < 1:
        raise EvaluationInputError(f"num_processes must be >= 1, got {num_processes}")
    for name, d in (("prediction", pred_dir), ("reference", ref_dir)):
        if not Path(d).is_dir():
            raise EvaluationInputError(f"{name} folder {d} does not exist or is not a folder")
    wanted = _normalise_labels(labels)
    ending = file_ending or detect_file_ending(ref_dir)
    refs, preds = list_cases(ref_dir, ending), list_cases(pred_dir, ending)
    if not refs:
        raise EvaluationInputError(f"no {ending} files in reference folder {ref_dir}")
    if cases is None:
        wanted_cases = set(refs) | set(preds)
    elif isinstance(cases, str):
        if cases != "pred":
            raise EvaluationInputError(f"cases must be None, 'pred' or a list of case ids, got {cases!r}")
        wanted_cases = set(preds)
        if not wanted_cases:
            raise EvaluationInputError(f"no {ending} files in prediction folder {pred_dir}")
    else:
        wanted_cases = {str(c) for c in cases}
        if not wanted_cases:
            raise EvaluationInputError("cases is an empty list")
    missing = sorted(wanted_cases - set(preds))
    extra = sorted(wanted_cases - set(refs))
    refs = {c: p for c, p in refs.items() if c in wanted_cases}
    preds = {c: p for c, p in preds.items() if c in wanted_cases}
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"no prediction for {len(missing)} case(s): {', '.join(missing)}")
        if extra:
            parts.append(f"no reference for {len(extra)} case(s): {', '.join(extra)}")
        raise EvaluationInputError(f"case lists differ ({ending} files in {pred_dir} vs {ref_dir}): "
                                   + "; ".join(parts))
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_file_ending

    case_ids = sorted(refs)
    masks: dict[str, str | None] = {c: None for c in case_ids}
    if mask_dir is not None:
        if not Path(mask_dir).is_dir():
            raise EvaluationInputError(f"mask folder {mask_dir} does not exist or is not a folder")
        found_masks = list_cases(mask_dir, ending)
        lacking = [c for c in case_ids if c not in found_masks]
        if lacking:
            raise EvaluationInputError(f"no {ending} mask in {mask_dir} for {len(lacking)} case(s): "
                                       + ", ".join(lacking))
        masks = {c: found_masks[c] for c in case_ids}
    try:
        reader_cls = determine_reader_writer_from_file_ending(ending, refs[case_ids[0]], verbose=False)
    except RuntimeError as e:
        raise EvaluationInputError(f"no nnU-Net reader can open {refs[case_ids[0]]}: {e}") from None

    with worker_pool(int(num_processes), len(case_ids)) as pool:
        checks = map_cases(_check_pair, [(c, refs[c], preds[c], reader_cls, wanted is None, masks[c])
                                         for c in case_ids], pool, progress, "checking")
        bad = [f"{c['case']}: {c['error']}" for c in checks if c["error"]]
        if bad:
            raise EvaluationInputError(f"{len(bad)} case(s) cannot be evaluated:\n  " + "\n  ".join(bad))
        if wanted is None:
            found = sorted({v for c in checks for v in c["labels"] if v != 0})
            if not found:
                raise EvaluationInputError("no foreground label in any file; pass labels to score empty masks")
            wanted = found
        jobs = [(c, refs[c], preds[c], reader_cls, wanted, metric_settings, masks[c]) for c in case_ids]
        per_case = [row for rows in map_cases(_evaluate_pair, jobs, pool, progress, "evaluating") for row in rows]

    settings_json = metric_settings.to_json()
    settings_json.update(file_ending=ending, reader=reader_cls.__name__, num_cases=len(case_ids),
                         dimensions=sorted({c["ndim"] for c in checks}), nnunet_tubeconv=__version__)
    return {
        "schema": SCHEMA,
        "pred_dir": str(pred_dir),
        "ref_dir": str(ref_dir),
        "labels": [list(w) if isinstance(w, tuple) else w for w in wanted],
        "spacing_source": "image header",
        "mask_dir": None if mask_dir is None else str(mask_dir),
        "settings": settings_json,
        "per_case": per_case,
        "mean": mean_per_label(per_case),
        **({"label_names": dict(label_names)} if label_names else {}),
    }


def mean_per_label(per_case: list[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """``{label_key: {metric: nanmean}}`` over the rows of ``per_case`` (NaN where a metric is never defined)."""
    grouped: dict[str, list[dict[str, Any]]] = {}
    for row in per_case:
        lab = row["label"]
        grouped.setdefault(_label_key(tuple(lab) if isinstance(lab, list) else lab), []).append(row)
    means: dict[str, dict[str, float | None]] = {}
    for key, rows in grouped.items():
        means[key] = {}
        for m in METRICS:
            vals = [r.get(m) for r in rows]
            if all(v is None for v in vals):
                means[key][m] = None
                continue
            arr = np.array([math.nan if v is None else float(v) for v in vals])
            means[key][m] = float(np.nanmean(arr)) if np.isfinite(arr).any() else math.nan
    return means


# ----------------------------------------------------------------------------------------------------- JSON
def _nan_to_none(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, (np.floating, np.integer)):
        return _nan_to_none(obj.item())
    if isinstance(obj, dict):
        return {str(k): _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_nan_to_none(v) for v in obj]
    return obj


def save_results(results: dict[str, Any], path: str | os.PathLike) -> None:
    """Write ``results`` as strict JSON (NaN -> null), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_nan_to_none(results), indent=1, allow_nan=False) + "\n")
    tmp.replace(path)


def load_results(path: str | os.PathLike) -> dict[str, Any]:
    """Read a results.json; metric nulls come back as NaN (``betti2_error`` stays ``None``: undefined in 2D)."""
    data = json.loads(Path(path).read_text())
    return results_nulls_to_nan(data)


def results_nulls_to_nan(data: dict[str, Any]) -> dict[str, Any]:
    """Turn the JSON nulls of a results dict's float metrics back into NaN (in place; returns ``data``)."""
    if data.get("schema") != SCHEMA:
        raise ValueError(f"not a {SCHEMA} document (schema={data.get('schema')!r})")
    for row in data.get("per_case", []):
        for m in FLOAT_METRICS:
            if m in row and row[m] is None:
                row[m] = math.nan
    return data


# ------------------------------------------------------------------------------------------------------ CLI
def add_arguments(parser) -> None:
    parser.add_argument("--pred", required=True, help="folder with predicted segmentations")
    parser.add_argument("--ref", required=True, help="folder with reference segmentations (same case ids)")
    parser.add_argument("--labels", type=int, nargs="+", default=None,
                        help="labels to evaluate (default: every non-zero label found)")
    parser.add_argument("-o", "--output", default="results.json", help="results file (default: results.json)")
    parser.add_argument("-np", "--num-processes", type=int, default=min(8, os.cpu_count() or 1),
                        help="worker processes (default: min(8, CPUs))")
    parser.add_argument("--file-ending", default=None,
                        help="e.g. .nii.gz or .png (default: the most common nnU-Net ending in --ref)")
    parser.add_argument("--nsd-tolerance", type=float, default=MetricSettings.nsd_tolerance_mm,
                        help="NSD tolerance in the header's unit, usually mm (default: %(default)s)")
    parser.add_argument("--connectivity", choices=("full", "face"), default="full",
                        help="foreground connectivity for topology: full = 8 (2D) / 26 (3D), face = 4 / 6; "
                             "background takes the dual (default: full)")
    parser.add_argument("--calibre-edges", type=float, nargs=2, default=MetricSettings.calibre_edges,
                        metavar=("THIN", "THICK"),
                        help="radii in the spacing's unit splitting the reference centreline into thin (< THIN), "
                             "medium and thick (>= THICK) for the recall_* columns (default: %(default)s)")
    parser.add_argument("--pred-cases-only", action="store_true",
                        help="evaluate only the cases found in --pred (e.g. one fold's validation folder against "
                             "gt_segmentations); by default both folders must hold the same cases")
    parser.add_argument("--mask-dir", default=None,
                        help="folder with one mask per case (same ids and ending, e.g. DRIVE's masksTr written by "
                             "convert drive): every metric is restricted to the mask (field of view)")
    parser.add_argument("--dataset-json", default=None,
                        help="nnU-Net dataset.json: evaluate its labels (its regions where it defines regions), "
                             "with their names; overrides --labels")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args) -> int:
    # an EvaluationInputError (a ValueError) is reported by the CLI with exit status 2
    labels, names = args.labels, None
    if args.dataset_json:
        try:
            labels, names = labels_from_dataset_json(json.loads(Path(args.dataset_json).read_text()))
        except (OSError, ValueError) as e:
            raise EvaluationInputError(f"cannot read --dataset-json {args.dataset_json}: {e}") from None
    results = evaluate_folders(args.pred, args.ref, labels=labels, num_processes=args.num_processes,
                               progress=not args.no_progress, file_ending=args.file_ending,
                               cases="pred" if args.pred_cases_only else None, mask_dir=args.mask_dir,
                               label_names=names, nsd_tolerance_mm=args.nsd_tolerance,
                               connectivity=args.connectivity, calibre_edges=tuple(args.calibre_edges))
    save_results(results, args.output)
    print(f"wrote {args.output}: {len(results['per_case'])} rows ({results['settings']['num_cases']} cases x "
          f"{len(results['labels'])} labels)")
    for key, means in results["mean"].items():
        shown = ", ".join(f"{m}={v:.4f}" for m, v in means.items() if v is not None and math.isfinite(v))
        print(f"  label {key}: {shown}")
    return 0
