"""The case image of a data set: one validation case, each arm's prediction against the reference, its missed
vessel pixels in one colour and its false ones in another, so that missed thin vessels show.

Made by ``collect`` while nnU-Net's folders are at hand (the records name the prediction and reference folders;
the raw image comes from ``nnUNet_raw``), written to ``docs/images/results_<data set>_case.png``.

The case (fixed before any result, :data:`CASE_RULE`): the first case by name of the lowest fold of the baseline's
finished units (lowest seed); every arm shows its prediction of that case by its unit of the same fold (lowest seed).
The zoomed window (:data:`ZOOM_RULE`) is chosen from the errors of all arms together, never from one arm's.
3D cases are shown as maximum projections along the first array axis.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nnunet_tubeconv.benchmarks.studies.real_data.store import StoredSuite, image_name, short_name
from nnunet_tubeconv.evaluation.metrics import skeleton

CASE_RULE = ("the first case by name of the lowest fold of the baseline's finished units (its lowest seed); each "
             "arm's prediction of that case from its unit of the same fold (lowest seed)")
ZOOM_RULE = ("the square window of a quarter of the image's shorter side, on a grid of a sixteenth of it, holding "
             "the most reference centreline pixels missed by the arms together (a missed centreline is a vessel "
             "missed across its whole width, which thin vessels are; the first such window from the top left)")
CORRECT, MISSED, FALSE = "#BDBDBD", "#FF8C00", "#2F9BFF"
#: panels per row before the figure wraps into another band (image, reference and up to four arms)
MAX_COLUMNS = 6


@dataclass
class CaseFiles:
    dataset: str
    configuration: str
    case: str
    fold: int | str
    reference: Path
    image: Path | None
    predictions: dict[str, Path] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)          # arms with a unit of the fold but no prediction file


def _done(stored: StoredSuite, dataset: str, configuration: str):
    return [u for u in stored.units if u.status == "done" and u.split == "validation" and u.dataset == dataset
            and u.configuration == configuration]


def _fold_key(fold) -> tuple[int, str]:
    return (0, f"{int(fold):09d}") if str(fold).isdigit() else (1, str(fold))


def case_files(stored: StoredSuite, dataset: str, configuration: str, raw: Path | None) -> CaseFiles | None:
    """The files of the case :data:`CASE_RULE` picks, or None when the baseline has no finished unit."""
    units = _done(stored, dataset, configuration)
    baseline = str(stored.suite.get("baseline"))
    base = sorted((u for u in units if u.arm == baseline), key=lambda u: (_fold_key(u.fold), u.seed or 0))
    if not base:
        return None
    first = base[0]
    metrics = first.record["metrics"]
    case = min({str(r["case"]) for r in metrics["per_case"]})
    ending = (metrics.get("settings") or {}).get("file_ending", ".nii.gz")
    image = None if raw is None else Path(raw) / dataset / "imagesTr" / f"{case}_0000{ending}"
    out = CaseFiles(dataset, configuration, case, first.fold, Path(metrics["ref_dir"]) / f"{case}{ending}",
                    image if image is not None and image.is_file() else None)
    arms = [baseline, *[a for a in stored.suite.get("arms", {}) if a != baseline]]
    for arm in arms:
        mine = sorted((u for u in units if u.arm == arm and str(u.fold) == str(first.fold)), key=lambda u: u.seed or 0)
        if not mine:
            continue
        pred = Path(mine[0].record["metrics"]["pred_dir"]) / f"{case}{ending}"
        if pred.is_file():
            out.predictions[arm] = pred
        else:
            out.missing.append(arm)
    return out


def read_array(path: Path) -> np.ndarray:
    """The image as an array in nnU-Net's axis order (``(Y, X)`` or ``(Z, Y, X)``), singleton axes dropped."""
    import SimpleITK as sitk

    return np.squeeze(sitk.GetArrayFromImage(sitk.ReadImage(str(path))))


def _flat(arr: np.ndarray, mask: bool) -> np.ndarray:
    if arr.ndim == 3:
        return arr.any(axis=0) if mask else arr.max(axis=0)
    return arr


def zoom_window(missed: np.ndarray) -> tuple[int, int, int]:
    """``(row, column, side)`` of :data:`ZOOM_RULE` on the summed map of missed centreline pixels (2D)."""
    h, w = missed.shape
    side = max(16, min(h, w) // 4)
    step = max(1, min(h, w) // 16)
    integral = np.pad(missed.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    best, at = -1, (0, 0)
    for r in range(0, max(h - side, 0) + 1, step):
        for c in range(0, max(w - side, 0) + 1, step):
            r1, c1 = min(r + side, h), min(c + side, w)
            total = integral[r1, c1] - integral[r, c1] - integral[r1, c] + integral[r, c]
            if total > best:
                best, at = int(total), (r, c)
    return at[0], at[1], side


def _rgb(hex_colour: str) -> np.ndarray:
    return np.array([int(hex_colour[i:i + 2], 16) / 255 for i in (1, 3, 5)])


def error_map(reference: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """RGB picture on black: correct vessel grey, missed vessel (reference, not predicted) orange, false vessel
    (predicted, not reference) blue. 3D: maximum projections, missed drawn over false over correct."""
    ref, pred = reference > 0, prediction > 0
    out = np.zeros((*_flat(ref, True).shape, 3))
    for mask, colour in ((ref & pred, CORRECT), (pred & ~ref, FALSE), (ref & ~pred, MISSED)):
        out[_flat(mask, True)] = _rgb(colour)
    return out


def _grey(image: np.ndarray) -> np.ndarray:
    img = _flat(image.astype(float), False)
    lo, hi = np.percentile(img, [1, 99])
    return np.clip((img - lo) / (hi - lo if hi > lo else 1.0), 0, 1)


def case_figure(files: CaseFiles) -> bytes:
    """The PNG: columns image, reference, then one per arm; the whole case above, the zoomed window below."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch, Rectangle

    reference = read_array(files.reference)
    preds = {a: read_array(p) for a, p in files.predictions.items()}
    ref_flat = _flat(reference > 0, True)
    image = _grey(read_array(files.image)) if files.image is not None else ref_flat.astype(float)
    maps = {a: error_map(reference, p) for a, p in preds.items()}
    centreline = skeleton(reference > 0)
    missed = sum((_flat(centreline & ~(p > 0), True).astype(np.int64) for p in preds.values()),
                 np.zeros(ref_flat.shape, np.int64))
    r, c, side = zoom_window(missed)
    panels = [("image" if files.image is not None else "image (raw not found: reference)", image, "gray"),
              ("reference", ref_flat.astype(float), "gray"), *[(a, m, None) for a, m in maps.items()]]
    cols = min(len(panels), MAX_COLUMNS)
    bands = -(-len(panels) // cols)                         # each band: the whole case above, the window below
    fig = Figure(figsize=(2.9 * cols, 3.2 * 2 * bands), layout="constrained")
    axes = fig.subplots(2 * bands, cols, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for j, (title, pic, cmap) in enumerate(panels):
        band, col = divmod(j, cols)
        for i, view in enumerate((pic, pic[r:r + side, c:c + side])):
            ax = axes[2 * band + i, col]
            ax.set_axis_on()
            ax.imshow(view, cmap=cmap, interpolation="nearest", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(title, fontsize=11)
                ax.add_patch(Rectangle((c - 0.5, r - 0.5), side, side, fill=False, ec="#FFD400", lw=1.2))
    axes[1, 0].set_ylabel("zoomed (yellow square)", fontsize=10)
    fig.legend(handles=[Patch(color=CORRECT, label="vessel found"), Patch(color=MISSED, label="vessel missed"),
                        Patch(color=FALSE, label="false vessel")], loc="outside lower center", ncol=3, fontsize=10)
    projection = " (maximum projection)" if reference.ndim == 3 else ""
    fig.suptitle(f"{short_name(files.dataset)} / {files.configuration}: case {files.case} (fold {files.fold} "
                 f"validation){projection}", fontsize=12)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def write_case_figures(stored: StoredSuite, images_dir: Path, raw: Path | None) -> list[str]:
    """The case image of every (data set, configuration) of ``stored`` whose files are at hand; returns one line per
    data set saying what was written or why not (an image already written is kept when its files are gone)."""
    lines = []
    for ds in stored.suite.get("datasets", []):
        for cfg in stored.suite.get("configurations", []):
            files = case_files(stored, str(ds), str(cfg), raw)
            target = Path(images_dir) / image_name(str(ds), "case")
            if files is None:
                lines.append(f"{ds}: no finished baseline unit, no case image")
            elif not files.reference.is_file() or not files.predictions:
                lines.append(f"{ds}: the reference or the predictions of case {files.case} are not at hand "
                             f"({files.reference.parent}); case image {'kept' if target.is_file() else 'not made'}")
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(case_figure(files))
                extra = (f"; no prediction file for {', '.join(files.missing)}" if files.missing else "")
                extra += "" if files.image is not None else "; raw image not found (give --raw or set nnUNet_raw)"
                lines.append(f"{ds}: case image {target} (case {files.case}, {len(files.predictions)} arms{extra})")
            break  # one case image per data set: its first configuration
    return lines
