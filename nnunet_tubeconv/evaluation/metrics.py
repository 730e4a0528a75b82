"""Per-mask metrics for tubular structures: overlap, boundary distance, centreline overlap and topology.

All functions take boolean masks of shape ``(X, Y)`` or ``(X, Y, Z)`` (2D or 3D; axis order as nnU-Net's readers
return it) and, where distances matter, a ``spacing`` tuple with one physical voxel size per axis (same order).

Definitions (each one is tested on hand-built cases in ``tests/unit/test_metrics*.py``):

* **Dice, IoU** from voxel counts exactly as nnU-Net's ``compute_tp_fp_fn_tn``: ``2TP / (2TP + FP + FN)`` and
  ``TP / (TP + FP + FN)``; both masks empty -> ``NaN`` (nnU-Net's convention, so means skip the case).
* **Surface** of a mask: its voxels with at least one face-neighbour outside the mask (``binary_erosion`` with the
  face structuring element; voxels on the image border count as surface, as in MONAI).
* **HD95**: the larger of the two directed 95th percentiles of surface-to-surface Euclidean distances in physical
  units (a KD-tree over physical surface coordinates, or equivalently ``distance_transform_edt(..., sampling=
  spacing)``), the definition of MONAI's ``compute_hausdorff_distance(percentile=95)`` and DeepMind's
  ``compute_robust_hausdorff`` (per voxel, not per surfel area). The key stays ``hd95`` whatever
  ``MetricSettings.hd_percentile`` says; results.json records the percentile. Both empty -> ``NaN``; exactly one
  empty -> the physical diagonal of the whole image, the largest distance possible in it (BraTS convention), so the
  worst case stays finite, JSON-safe and rankable.
* **NSD** (normalised surface distance, a.k.a. surface Dice; Nikolov et al., JMIR 2021) at tolerance ``tau``:
  ``(|{s in S_ref : d(s, S_pred) <= tau}| + |{s in S_pred : d(s, S_ref) <= tau}|) / (|S_ref| + |S_pred|)``, counting
  surface voxels. Both empty -> ``NaN``; one empty -> 0.
* **clDice** (Shit et al., CVPR 2021): ``2 Tprec Tsens / (Tprec + Tsens)`` with ``Tprec = |skel(P) & R| / |skel(P)|``
  and ``Tsens = |skel(R) & P| / |skel(R)|``. Skeletons from ``skimage.morphology.skeletonize`` (Zhang-Suen in 2D,
  Lee et al. in 3D). scikit-image's 3D thinning deletes straight tubes of even width (a 2x2 or 4x4 cross-section
  skeletonises to nothing; 2D Zhang-Suen keeps them) -- so, by our rule, every connected component of a mask that
  holds no skeleton voxel contributes all its voxels to the skeleton instead of vanishing. Both empty -> ``NaN``; one
  empty -> 0; ``Tprec + Tsens == 0`` -> 0. Skeletons ignore spacing (they are topological); the ratios are voxel counts.
* **Betti numbers** with a stated connectivity pair: ``"full"`` (default) means foreground 8-connected in 2D /
  26-connected in 3D and background 4- / 6-connected (the dual, so the Jordan theorem holds); ``"face"`` swaps them.
  ``b0`` = foreground components; 2D ``b1`` = background components not touching the image border (holes); 3D
  ``b2`` = background components not touching the border (cavities) and ``b1 = b0 + b2 - chi`` with ``chi`` the Euler
  characteristic from ``skimage.measure.euler_number`` at the foreground connectivity. Computed on the whole volume
  (not patch-wise, unlike the Betti error of Hu et al., NeurIPS 2019). An empty mask has Betti numbers 0, so Betti
  errors ``|b_k(pred) - b_k(ref)|`` are always defined; ``betti2_error`` is ``None`` in 2D.
* **Topology that copes with fragments**: ``betti{0,1,2}_error_filtered`` are the Betti errors after removing
  foreground components of fewer than ``MetricSettings.min_component_size`` voxels from both masks (a scatter of
  specks no longer dominates b0); ``betti_error_patch`` is a patch-wise Betti error after Hu et al. (NeurIPS 2019):
  the mean, over the tiles of ``MetricSettings.betti_patch_size`` voxels per axis that hold foreground in either
  mask, of ``sum_k |b_k(pred) - b_k(ref)|`` (k < dim), so a local break counts locally instead of cancelling
  against a spurious piece elsewhere.

Masks are cropped to the bounding box of ``ref | pred`` plus a margin before the expensive steps; every metric
above is invariant to that crop (distances are Euclidean, and background touching the crop edge also touches the
image border), which the tests check.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

# Which way is good, per metric: the statistics turn "gain" into a decrease for lower-is-better metrics.
HIGHER_IS_BETTER: dict[str, bool] = {
    "dice": True,
    "iou": True,
    "nsd": True,
    "cldice": True,
    "hd95": False,
    "betti0_error": False,
    "betti1_error": False,
    "betti2_error": False,
    "betti0_error_filtered": False,
    "betti1_error_filtered": False,
    "betti2_error_filtered": False,
    "betti_error_patch": False,
    "recall_thin": True,
    "recall_medium": True,
    "recall_thick": True,
}
#: the calibre bands of :func:`calibre_recall`, in order (keys ``recall_<band>``)
CALIBRE_BANDS: tuple[str, ...] = ("thin", "medium", "thick")
METRICS: tuple[str, ...] = tuple(HIGHER_IS_BETTER)

CONNECTIVITY_CHOICES = ("full", "face")
DISTANCE_METHODS = ("kdtree", "edt")

EMPTY_RULES: dict[str, str] = {
    "dice": "both empty -> NaN (as nnU-Net); one empty -> 0",
    "iou": "both empty -> NaN (as nnU-Net); one empty -> 0",
    "hd95": "both empty -> NaN; one empty -> physical diagonal of the whole image",
    "nsd": "both empty -> NaN; one empty -> 0",
    "cldice": "both empty -> NaN; one empty -> 0",
    "betti_errors": "always defined: an empty mask has Betti numbers 0",
    "recall_<band>": "reference centreline without points of that calibre -> NaN; empty prediction -> 0",
}


@dataclass(frozen=True)
class MetricSettings:
    """What a run of the metrics depends on besides the masks; written into every results.json.

    nsd_tolerance_mm: NSD tolerance tau in the spacing's physical unit (mm for medical headers, pixels for PNG).
    hd_percentile: percentile of the directed surface distances (95 -> HD95).
    connectivity: ``"full"`` (foreground 8/26, background 4/6) or ``"face"`` (foreground 4/6, background 8/26).
    crop_margin: voxels kept around the bounding box of ``ref | pred`` (>= 1 keeps every metric exact).
    distance_method: ``"kdtree"`` or ``"edt"``, see :func:`surface_distances` (same values, different speed).
    min_component_size: foreground components smaller than this many voxels are removed from both masks before
    the ``*_filtered`` Betti errors (:func:`remove_small_components`).
    betti_patch_size: edge in voxels of the tiles of the patch-wise Betti error (:func:`patch_betti_error`).
    calibre_edges: the two radii, in the spacing's physical unit, that split the reference centreline into thin /
    medium / thick for :func:`calibre_recall` (thin: radius < first edge; thick: radius >= second edge). The
    default (1.5, 3.0) at spacing 1 puts vessels 1-2 px wide in "thin", 3-4 px in "medium", 5 px and wider in
    "thick".
    """

    nsd_tolerance_mm: float = 1.0
    hd_percentile: float = 95.0
    connectivity: str = "full"
    crop_margin: int = 2
    distance_method: str = "kdtree"
    min_component_size: int = 10
    betti_patch_size: int = 64
    calibre_edges: tuple[float, float] = (1.5, 3.0)

    def __post_init__(self) -> None:
        if self.connectivity not in CONNECTIVITY_CHOICES:
            raise ValueError(f"connectivity must be one of {CONNECTIVITY_CHOICES}, got {self.connectivity!r}")
        if not (self.nsd_tolerance_mm >= 0 and math.isfinite(self.nsd_tolerance_mm)):
            raise ValueError(f"nsd_tolerance_mm must be a finite number >= 0, got {self.nsd_tolerance_mm!r}")
        if not 0 <= self.hd_percentile <= 100:
            raise ValueError(f"hd_percentile must lie in [0, 100], got {self.hd_percentile!r}")
        if self.distance_method not in DISTANCE_METHODS:
            raise ValueError(f"distance_method must be one of {DISTANCE_METHODS}, got {self.distance_method!r}")
        if int(self.crop_margin) != self.crop_margin or self.crop_margin < 1:
            raise ValueError(f"crop_margin must be an integer >= 1, got {self.crop_margin!r}")
        if int(self.min_component_size) != self.min_component_size or self.min_component_size < 1:
            raise ValueError(f"min_component_size must be an integer >= 1, got {self.min_component_size!r}")
        if int(self.betti_patch_size) != self.betti_patch_size or self.betti_patch_size < 2:
            raise ValueError(f"betti_patch_size must be an integer >= 2, got {self.betti_patch_size!r}")
        edges = self.calibre_edges
        if (not isinstance(edges, (tuple, list)) or len(edges) != 2
                or not all(isinstance(e, (int, float)) and math.isfinite(e) for e in edges)
                or not 0 < edges[0] < edges[1]):
            raise ValueError(f"calibre_edges must be two increasing positive radii (thin < first <= medium < second "
                             f"<= thick), got {edges!r}")
        object.__setattr__(self, "calibre_edges", (float(edges[0]), float(edges[1])))

    def to_json(self) -> dict[str, Any]:
        """The settings as written into results.json, with the connectivities spelled out as neighbour counts."""
        d: dict[str, Any] = asdict(self)
        d["connectivity"] = {
            "mode": self.connectivity,
            "2d": {"foreground": foreground_connectivity(2, self.connectivity),
                   "background": background_connectivity(2, self.connectivity)},
            "3d": {"foreground": foreground_connectivity(3, self.connectivity),
                   "background": background_connectivity(3, self.connectivity)},
        }
        d["hd"] = f"max of the two directed {self.hd_percentile:g}th percentiles of surface-voxel distances"
        d["nsd"] = "surface Dice over surface voxels at tolerance nsd_tolerance_mm"
        d["skeleton"] = ("skimage.morphology.skeletonize (Zhang-Suen 2D, Lee 3D); a component with no skeleton voxel "
                         "keeps all its voxels")
        d["betti"] = "per volume; 3D b1 from the Euler characteristic (skimage.measure.euler_number)"
        d["betti_filtered"] = (f"Betti errors after removing foreground components of fewer than "
                               f"{self.min_component_size} voxels from both masks")
        d["betti_patch"] = (f"mean over the {self.betti_patch_size}-voxel tiles (grid anchored at the image origin) "
                            "holding foreground in either mask of the summed |b_k(pred) - b_k(ref)| over k = 0..dim-1 "
                            "(patch-wise Betti error, after Hu et al., NeurIPS 2019)")
        lo, hi = self.calibre_edges
        d["calibre"] = (f"recall of the reference skeleton by local radius (Euclidean distance transform of the "
                        f"reference, in the spacing's unit; the image border is not background): thin < {lo:g}, "
                        f"medium [{lo:g}, {hi:g}), thick >= {hi:g}; per band the fraction of its skeleton voxels "
                        "inside the prediction")
        d["empty"] = dict(EMPTY_RULES)
        return d


def foreground_connectivity(ndim: int, mode: str = "full") -> int:
    """Neighbour count for foreground components: full -> 8 (2D) / 26 (3D), face -> 4 / 6."""
    _check_ndim(ndim)
    if mode not in CONNECTIVITY_CHOICES:
        raise ValueError(f"connectivity must be one of {CONNECTIVITY_CHOICES}, got {mode!r}")
    return {(2, "full"): 8, (2, "face"): 4, (3, "full"): 26, (3, "face"): 6}[(ndim, mode)]


def background_connectivity(ndim: int, mode: str = "full") -> int:
    """The dual of :func:`foreground_connectivity`."""
    return foreground_connectivity(ndim, "face" if mode == "full" else "full")


def _check_ndim(ndim: int) -> None:
    if ndim not in (2, 3):
        raise ValueError(f"masks must be 2D or 3D, got {ndim} dimensions")


def _as_mask_pair(ref: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ref = np.asarray(ref).astype(bool, copy=False)
    pred = np.asarray(pred).astype(bool, copy=False)
    if ref.shape != pred.shape:
        raise ValueError(f"reference and prediction shapes differ: {ref.shape} vs {pred.shape}")
    _check_ndim(ref.ndim)
    return ref, pred


def _empty_masks(ref: np.ndarray, pred: np.ndarray) -> int:
    """How many of the two masks are empty: 0, 1 or 2 (the module docstring's empty-mask rules key on it)."""
    return int(not ref.any()) + int(not pred.any())


def _check_spacing(spacing, ndim: int) -> tuple[float, ...]:
    sp = tuple(float(s) for s in spacing)
    if len(sp) != ndim or not all(s > 0 and math.isfinite(s) for s in sp):
        raise ValueError(f"spacing must be {ndim} positive finite numbers (one per axis), got {spacing!r}")
    return sp


def foreground_bbox(*masks: np.ndarray, margin: int = 0) -> tuple[slice, ...] | None:
    """Slices of the bounding box of the union of ``masks`` grown by ``margin`` voxels (clipped to the image);
    ``None`` when all masks are empty."""
    union = masks[0].copy()
    for m in masks[1:]:
        union |= m
    if not union.any():
        return None
    slices = []
    for axis in range(union.ndim):
        other = tuple(a for a in range(union.ndim) if a != axis)
        idx = np.flatnonzero(union.any(axis=other))
        slices.append(slice(max(int(idx[0]) - margin, 0), min(int(idx[-1]) + 1 + margin, union.shape[axis])))
    return tuple(slices)


# --------------------------------------------------------------------------------------------------- overlap
def dice_iou(ref: np.ndarray, pred: np.ndarray) -> tuple[float, float]:
    """Dice and IoU from voxel counts, the same arithmetic as nnU-Net's evaluator (NaN when both are empty)."""
    ref, pred = _as_mask_pair(ref, pred)
    tp = int(np.count_nonzero(ref & pred))
    fp = int(np.count_nonzero(pred)) - tp
    fn = int(np.count_nonzero(ref)) - tp
    if tp + fp + fn == 0:
        return math.nan, math.nan
    return 2 * tp / (2 * tp + fp + fn), tp / (tp + fp + fn)


# -------------------------------------------------------------------------------------------------- distance
def surface(mask: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` with a face-neighbour outside it; image-border voxels count as surface."""
    from scipy import ndimage

    mask = np.asarray(mask, dtype=bool)
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


def surface_distances(ref: np.ndarray, pred: np.ndarray, spacing, method: str = "kdtree"
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Directed surface distances in physical units.

    Returns ``(d_ref, d_pred)``: for every surface voxel of ``ref`` its Euclidean distance to the nearest surface
    voxel of ``pred``, and vice versa (1-D float arrays, in ``np.argwhere`` order). Both masks must be non-empty.

    method: ``"edt"`` reads the distances off ``scipy.ndimage.distance_transform_edt(~surface, sampling=spacing)``;
    ``"kdtree"`` (default) queries a ``scipy.spatial.cKDTree`` of the other surface's physical coordinates. Both are
    exact and agree to ~1e-13 (tested); on the 512 x 512 x 128 vessel tree of ``bench.py`` the two EDTs take ~15 s
    and 2 GB, the trees 0.2 s, because a tubular surface is a tiny fraction of its bounding box.
    """
    ref, pred = _as_mask_pair(ref, pred)
    sp = _check_spacing(spacing, ref.ndim)
    if method not in DISTANCE_METHODS:
        raise ValueError(f"method must be one of {DISTANCE_METHODS}, got {method!r}")
    if not ref.any() or not pred.any():
        raise ValueError("surface_distances needs two non-empty masks")
    s_ref, s_pred = surface(ref), surface(pred)
    if method == "edt":
        from scipy import ndimage

        # The EDT of the complement gives, everywhere, the distance to the nearest surface voxel.
        d_to_pred = ndimage.distance_transform_edt(~s_pred, sampling=sp)
        d_to_ref = ndimage.distance_transform_edt(~s_ref, sampling=sp)
        return d_to_pred[s_ref], d_to_ref[s_pred]
    from scipy.spatial import cKDTree

    p_ref = np.argwhere(s_ref) * np.asarray(sp)
    p_pred = np.argwhere(s_pred) * np.asarray(sp)
    d_ref, _ = cKDTree(p_pred).query(p_ref, k=1)
    d_pred, _ = cKDTree(p_ref).query(p_pred, k=1)
    return np.asarray(d_ref, float), np.asarray(d_pred, float)


def image_diagonal(shape, spacing) -> float:
    """Physical length of the image diagonal: the HD95 assigned when exactly one mask is empty."""
    return float(np.sqrt(np.sum((np.asarray(shape, float) * np.asarray(spacing, float)) ** 2)))


def hausdorff_percentile(ref: np.ndarray, pred: np.ndarray, spacing, percentile: float = 95.0,
                         full_shape=None, method: str = "kdtree") -> float:
    """Robust Hausdorff distance (HD95 by default), see the module docstring for the empty-mask rules.

    full_shape: shape of the uncropped image, for the one-empty penalty (defaults to ``ref.shape``).
    """
    ref, pred = _as_mask_pair(ref, pred)
    sp = _check_spacing(spacing, ref.ndim)
    empty = _empty_masks(ref, pred)
    if empty:
        return math.nan if empty == 2 else image_diagonal(ref.shape if full_shape is None else full_shape, sp)
    d_ref, d_pred = surface_distances(ref, pred, sp, method)
    return float(max(np.percentile(d_ref, percentile), np.percentile(d_pred, percentile)))


def normalised_surface_distance(ref: np.ndarray, pred: np.ndarray, spacing, tolerance: float,
                                method: str = "kdtree") -> float:
    """NSD / surface Dice at ``tolerance`` (physical units), counting surface voxels."""
    ref, pred = _as_mask_pair(ref, pred)
    sp = _check_spacing(spacing, ref.ndim)
    empty = _empty_masks(ref, pred)
    if empty:
        return math.nan if empty == 2 else 0.0
    d_ref, d_pred = surface_distances(ref, pred, sp, method)
    return float((np.count_nonzero(d_ref <= tolerance) + np.count_nonzero(d_pred <= tolerance))
                 / (d_ref.size + d_pred.size))


# ------------------------------------------------------------------------------------------------ centreline
def _components(mask: np.ndarray, connectivity: int) -> tuple[np.ndarray, int]:
    import cc3d

    labels, n = cc3d.connected_components(np.ascontiguousarray(mask, dtype=np.uint8), connectivity=connectivity,
                                          return_N=True)
    return labels, int(n)


def component_sizes(mask: np.ndarray, connectivity: str = "full") -> tuple[np.ndarray, np.ndarray]:
    """The foreground components of ``mask`` at the foreground connectivity of ``connectivity`` (8/26 for
    ``"full"``, 4/6 for ``"face"``): ``(labels, sizes)``, ``labels`` an integer array of ``mask``'s shape (0 =
    background, 1..n = the components) and ``sizes[k]`` the voxel count of component ``k`` (``sizes[0]``: the
    background's). ``b0`` of the module docstring is ``len(sizes) - 1``."""
    mask = np.asarray(mask, dtype=bool)
    _check_ndim(mask.ndim)
    labels, n = _components(mask, foreground_connectivity(mask.ndim, connectivity))
    return labels, np.bincount(labels.ravel(), minlength=n + 1)


def skeleton(mask: np.ndarray, connectivity: str = "full") -> np.ndarray:
    """Centreline of ``mask`` (bool, same shape) with the empty-component fallback of the module docstring."""
    from skimage.morphology import skeletonize

    mask = np.asarray(mask, dtype=bool)
    _check_ndim(mask.ndim)
    if not mask.any():
        return np.zeros_like(mask)
    skel = skeletonize(mask).astype(bool, copy=False)
    labels, n = _components(mask, foreground_connectivity(mask.ndim, connectivity))
    kept = np.zeros(n + 1, dtype=bool)
    kept[np.unique(labels[skel])] = True
    if not kept[1:].all():
        lost = ~kept
        lost[0] = False
        skel = skel | lost[labels]
    return skel


def cldice(ref: np.ndarray, pred: np.ndarray, connectivity: str = "full") -> float:
    """Centreline Dice (Shit et al., CVPR 2021) between two masks; see the module docstring for empty cases."""
    ref, pred = _as_mask_pair(ref, pred)
    empty = _empty_masks(ref, pred)
    if empty:
        return math.nan if empty == 2 else 0.0
    return cldice_from_skeletons(ref, pred, skeleton(ref, connectivity), skeleton(pred, connectivity))


def cldice_from_skeletons(ref: np.ndarray, pred: np.ndarray, skel_ref: np.ndarray, skel_pred: np.ndarray) -> float:
    """:func:`cldice` with the two skeletons given (``skeleton(ref)``, ``skeleton(pred)``), for callers that score
    many predictions against one reference or derive one skeleton from another."""
    ref, pred = _as_mask_pair(ref, pred)
    empty = _empty_masks(ref, pred)
    if empty:
        return math.nan if empty == 2 else 0.0
    t_prec = np.count_nonzero(skel_pred & ref) / np.count_nonzero(skel_pred)
    t_sens = np.count_nonzero(skel_ref & pred) / np.count_nonzero(skel_ref)
    if t_prec + t_sens == 0:
        return 0.0
    return float(2 * t_prec * t_sens / (t_prec + t_sens))


# -------------------------------------------------------------------------------------------------- topology
def betti_numbers(mask: np.ndarray, connectivity: str = "full") -> tuple[int, int, int | None]:
    """``(b0, b1, b2)`` of a 2D or 3D mask (``b2`` is ``None`` in 2D); see the module docstring."""
    mask = np.asarray(mask, dtype=bool)
    ndim = mask.ndim
    _check_ndim(ndim)
    if not mask.any():
        return 0, 0, (None if ndim == 2 else 0)
    fg = foreground_connectivity(ndim, connectivity)
    bg = background_connectivity(ndim, connectivity)
    # One background frame joins every background component that touches the border into a single one.
    padded = np.pad(mask, 1)
    _, b0 = _components(padded, fg)
    _, n_bg = _components(~padded, bg)
    enclosed = n_bg - 1
    if ndim == 2:
        return b0, enclosed, None
    from skimage.measure import euler_number

    chi = int(euler_number(padded, connectivity=1 if fg == 6 else 3))
    return b0, b0 + enclosed - chi, enclosed


def betti_errors(ref: np.ndarray, pred: np.ndarray, connectivity: str = "full") -> tuple[int, int, int | None]:
    """``|b_k(pred) - b_k(ref)|`` for k = 0, 1, 2 (the last is ``None`` in 2D)."""
    ref, pred = _as_mask_pair(ref, pred)
    br, bp = betti_numbers(ref, connectivity), betti_numbers(pred, connectivity)
    b2 = None if br[2] is None else abs(bp[2] - br[2])
    return abs(bp[0] - br[0]), abs(bp[1] - br[1]), b2


def remove_small_components(mask: np.ndarray, min_size: int, connectivity: str = "full") -> np.ndarray:
    """``mask`` without its foreground components of fewer than ``min_size`` voxels (at the foreground
    connectivity of ``connectivity``)."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any() or min_size <= 1:
        return mask.copy()
    labels, sizes = component_sizes(mask, connectivity)
    keep = sizes >= min_size
    keep[0] = False
    return keep[labels]


def filtered_betti_errors(ref: np.ndarray, pred: np.ndarray, min_size: int, connectivity: str = "full"
                          ) -> tuple[int, int, int | None]:
    """:func:`betti_errors` after :func:`remove_small_components` on both masks."""
    ref, pred = _as_mask_pair(ref, pred)
    return betti_errors(remove_small_components(ref, min_size, connectivity),
                        remove_small_components(pred, min_size, connectivity), connectivity)


def patch_betti_error(ref: np.ndarray, pred: np.ndarray, patch: int, connectivity: str = "full",
                      origin: tuple[int, ...] | None = None) -> float:
    """Mean over tiles of ``patch`` voxels per axis (holding foreground in either mask) of
    ``sum_k |b_k(pred_tile) - b_k(ref_tile)|`` for k = 0..dim-1; 0.0 when no tile holds foreground.

    ``origin``: position of ``ref[0, ...]`` in the full image, so the tile grid stays anchored at the full image's
    origin when the masks are a crop (a tile cut by the crop edge has the same Betti numbers as the whole tile,
    as everything outside the crop is background).
    """
    ref, pred = _as_mask_pair(ref, pred)
    origin = (0,) * ref.ndim if origin is None else tuple(int(o) for o in origin)
    edges = []
    for size, o in zip(ref.shape, origin):
        first = -(o % patch)
        cuts = list(range(first, size, patch)) + [size]
        edges.append([(max(a, 0), min(b, size)) for a, b in itertools.pairwise(cuts) if min(b, size) > max(a, 0)])
    errors = []
    for tile in itertools.product(*edges):
        sl = tuple(slice(a, b) for a, b in tile)
        r, p = ref[sl], pred[sl]
        if not (r.any() or p.any()):
            continue
        br, bp = betti_numbers(r, connectivity), betti_numbers(p, connectivity)
        errors.append(sum(abs(x - y) for x, y in zip(bp[:ref.ndim], br[:ref.ndim])))
    return float(np.mean(errors)) if errors else 0.0


def calibre_recall(ref: np.ndarray, pred: np.ndarray, spacing, edges: tuple[float, float] = (1.5, 3.0),
                   connectivity: str = "full") -> dict[str, float]:
    """Recall of the reference centreline split by vessel calibre: ``{"recall_thin", "recall_medium",
    "recall_thick"}``.

    The reference's skeleton (:func:`skeleton`) is split by the local radius at each skeleton voxel, the reference's
    Euclidean distance transform in physical units (``spacing``; the image border is not background, so a vessel
    cut by the border keeps its radius up to it); bands: ``radius < edges[0]`` (thin),
    ``edges[0] <= radius < edges[1]`` (medium), ``radius >= edges[1]`` (thick). Each value is the fraction of the
    band's skeleton voxels that lie inside ``pred``; NaN for a band without skeleton voxels.
    """
    from scipy.ndimage import distance_transform_edt

    ref, pred = _as_mask_pair(ref, pred)
    sp = _check_spacing(spacing, ref.ndim)
    skel = skeleton(ref, connectivity)
    if not skel.any():
        return {f"recall_{name}": math.nan for name in CALIBRE_BANDS}
    radius = distance_transform_edt(ref, sampling=sp)[skel] if not ref.all() else np.full(skel.sum(), np.inf)
    covered = pred[skel]
    bands = (radius < edges[0], (radius >= edges[0]) & (radius < edges[1]), radius >= edges[1])
    return {f"recall_{name}": float(covered[band].mean()) if band.any() else math.nan
            for name, band in zip(CALIBRE_BANDS, bands)}


# --------------------------------------------------------------------------------------------------- all
def evaluate_masks(ref: np.ndarray, pred: np.ndarray, spacing, settings: MetricSettings | None = None,
                   timings: dict[str, float] | None = None) -> dict[str, Any]:
    """Every metric of one (reference, prediction) pair of boolean masks ``(X, Y[, Z])``.

    Returns ``{"dice", "iou", "hd95", "nsd", "cldice", "betti0_error", "betti1_error", "betti2_error",
    "betti0_error_filtered", "betti1_error_filtered", "betti2_error_filtered", "betti_error_patch",
    "recall_thin", "recall_medium", "recall_thick", "n_ref", "n_pred"}`` (floats, NaN for undefined; Betti errors
    ints, the ``betti2`` ones None in 2D; the patch error a float). ``timings``, when given, receives seconds per
    metric (used by ``python -m nnunet_tubeconv.evaluation.bench``).
    """
    import time

    settings = settings or MetricSettings()
    ref, pred = _as_mask_pair(ref, pred)
    sp = _check_spacing(spacing, ref.ndim)
    full_shape = ref.shape
    clock = {} if timings is None else timings

    def timed(name, fn, *a, **k):
        t = time.perf_counter()
        out = fn(*a, **k)
        clock[name] = clock.get(name, 0.0) + time.perf_counter() - t
        return out

    box = timed("crop", foreground_bbox, ref, pred, margin=int(settings.crop_margin))
    origin = (0,) * ref.ndim
    if box is not None:
        ref, pred = ref[box], pred[box]
        origin = tuple(s.start or 0 for s in box)
    dice, iou = timed("dice_iou", dice_iou, ref, pred)
    out: dict[str, Any] = {"dice": dice, "iou": iou}
    if box is not None and ref.any() and pred.any():
        # One pair of EDTs serves both distance metrics.
        d_ref, d_pred = timed("surface_distances", surface_distances, ref, pred, sp,
                               settings.distance_method)
        q = settings.hd_percentile
        out["hd95"] = float(max(np.percentile(d_ref, q), np.percentile(d_pred, q)))
        tol = settings.nsd_tolerance_mm
        out["nsd"] = float((np.count_nonzero(d_ref <= tol) + np.count_nonzero(d_pred <= tol))
                           / (d_ref.size + d_pred.size))
    else:
        out["hd95"] = hausdorff_percentile(ref, pred, sp, settings.hd_percentile, full_shape=full_shape)
        out["nsd"] = normalised_surface_distance(ref, pred, sp, settings.nsd_tolerance_mm)
    out["cldice"] = timed("cldice", cldice, ref, pred, settings.connectivity)
    b0, b1, b2 = timed("betti", betti_errors, ref, pred, settings.connectivity)
    out.update(betti0_error=b0, betti1_error=b1, betti2_error=b2)
    f0, f1, f2 = timed("betti_filtered", filtered_betti_errors, ref, pred, int(settings.min_component_size),
                       settings.connectivity)
    out.update(betti0_error_filtered=f0, betti1_error_filtered=f1, betti2_error_filtered=f2)
    out["betti_error_patch"] = timed("betti_patch", patch_betti_error, ref, pred, int(settings.betti_patch_size),
                                     settings.connectivity, origin)
    out.update(timed("calibre_recall", calibre_recall, ref, pred, sp, settings.calibre_edges, settings.connectivity))
    out["n_ref"] = int(np.count_nonzero(ref))
    out["n_pred"] = int(np.count_nonzero(pred))
    return out
