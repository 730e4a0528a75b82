"""Postprocessing functions that nnU-Net's ``apply_postprocessing`` can call: ``fn(segmentation, **kwargs)``.

nnU-Net stores its postprocessing as ``postprocessing.pkl`` = ``(pp_fns, pp_fn_kwargs)`` and applies it with
``for fn, kw in zip(pp_fns, pp_fn_kwargs): segmentation = fn(segmentation, **kw)``
(``nnunetv2/postprocessing/remove_connected_components.py``). The functions are pickled *by reference*
(``nnunet_tubeconv.postprocessing.components.remove_small_components``), so they stay top-level functions of this
module under these names: moving or renaming one breaks every ``postprocessing.pkl`` written before.

**Sizes are physical.** ``min_size`` is an area (2D, e.g. mm^2) or a volume (3D, e.g. mm^3) in the unit of the
spacing. A component is kept when ``voxel count x voxel measure >= min_size``, the voxel measure being the product of
the voxel size along the image's spatial axes. nnU-Net hands a postprocessing function only the array, never the
spacing, so the voxel size travels in the kwargs: ``nnunet-tubeconv postprocess determine`` writes the data set's
median voxel size (the plans' ``original_median_spacing_after_transp``, put back into the predictions' axis order)
and scans thresholds in voxel-equivalents of that voxel (``min_size = n voxels x its measure``). Applied by stock
``nnUNetv2_apply_postprocessing`` the threshold is therefore exactly the ``n`` voxels that cross-validation chose,
on every case; ``nnunet-tubeconv postprocess apply --case-spacing`` instead passes each case's own voxel size, so a
finer case needs more voxels for the same physical size.

**Dimensions**, as nnU-Net's readers return segmentations: an array ``(X, Y)`` or one whose first axis has size 1
(nnU-Net's layout of a 2D image, ``(1, Y, X)``) is 2D, measured in the last two entries of ``voxel_size`` (nnU-Net
gives 2D images a dummy first spacing such as 999); an array ``(X, Y, Z)`` is 3D, measured in the last three.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from nnunet_tubeconv.evaluation.metrics import CONNECTIVITY_CHOICES, component_sizes

__all__ = [
    "components_to_keep",
    "label_mask",
    "normalise_label",
    "remove_small_components",
    "spatial_dims",
    "voxel_measure",
]

#: relative slack of the size comparison, so that ``min_size = n x measure`` keeps components of exactly n voxels
#: whatever the rounding of the product
SIZE_RTOL = 1e-9

LabelOrRegion = int | tuple[int, ...]


def spatial_dims(shape: Sequence[int]) -> int:
    """2 for ``(X, Y)`` and for nnU-Net's 2D layout ``(1, Y, X)``, 3 for ``(X, Y, Z)``; ``ValueError`` otherwise."""
    shape = tuple(int(s) for s in shape)
    if len(shape) in (2, 3):
        return 2 if len(shape) == 2 or shape[0] == 1 else 3
    raise ValueError(f"a segmentation must be 2D (X, Y), nnU-Net's 2D (1, Y, X) or 3D (X, Y, Z); got shape {shape}")


def voxel_measure(shape: Sequence[int], voxel_size: Sequence[float]) -> float:
    """Area (2D) or volume (3D) of one voxel of an array of ``shape``: the product of the last
    :func:`spatial_dims` entries of ``voxel_size``."""
    d = spatial_dims(shape)
    try:
        sizes = [float(v) for v in voxel_size]
    except (TypeError, ValueError):
        raise ValueError(f"voxel_size must be a sequence of numbers, got {voxel_size!r}") from None
    if len(sizes) < d or not all(math.isfinite(v) and v > 0 for v in sizes[-d:]):
        raise ValueError(f"voxel_size must end with {d} positive finite numbers for a {d}D segmentation of shape "
                         f"{tuple(shape)}, got {voxel_size!r}")
    return float(np.prod(sizes[-d:]))


def normalise_label(label_or_region) -> LabelOrRegion:
    """A positive ``int`` label, or a region as a tuple of positive labels (a list or tuple given); ``ValueError``
    otherwise."""
    if isinstance(label_or_region, (list, tuple)):
        region = tuple(label_or_region)
        if not region or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0
                                 for v in region):
            raise ValueError(f"a region must be a non-empty list of positive integer labels, got {label_or_region!r}")
        return tuple(int(v) for v in region)
    if isinstance(label_or_region, (int, np.integer)) and not isinstance(label_or_region, bool) and label_or_region > 0:
        return int(label_or_region)
    raise ValueError(f"labels_or_regions must be a positive integer label or a region (a tuple of them), "
                     f"got {label_or_region!r}")


def label_mask(segmentation: np.ndarray, label_or_region: LabelOrRegion) -> np.ndarray:
    """``segmentation == label``, or for a region (tuple of labels) the voxels holding any of them, as nnU-Net's
    ``region_or_label_to_mask``."""
    lab = normalise_label(label_or_region)
    seg = np.asarray(segmentation)
    return np.isin(seg, lab) if isinstance(lab, tuple) else seg == lab


def components_to_keep(sizes: np.ndarray, min_size: float, measure: float) -> np.ndarray:
    """Which components of :func:`~nnunet_tubeconv.evaluation.metrics.component_sizes`' ``sizes`` stay: those of
    physical size ``count x measure >= min_size`` (index 0, the background, never). The one rule of both the
    postprocessing function and the cross-validation scan."""
    sizes = np.asarray(sizes)
    keep = sizes * float(measure) >= float(min_size) * (1.0 - SIZE_RTOL)
    if keep.size:
        keep[0] = False
    return keep


def remove_small_components(segmentation: np.ndarray, labels_or_regions, min_size: float,
                            voxel_size: Sequence[float], connectivity: str = "full",
                            background_label: int = 0) -> np.ndarray:
    """``segmentation`` with the connected components of ``labels_or_regions`` smaller than ``min_size`` set to
    ``background_label``; the input is never modified (a new array is returned).

    labels_or_regions: one label (``int``) or one region (a tuple of labels, taken together as one mask, as
    nnU-Net's regions); a determination writes one entry per label with its own threshold.
    min_size: area (2D) or volume (3D) in the unit of ``voxel_size`` (mm^2 / mm^3 for medical images, pixels for
    PNGs of spacing 1); components of ``count x voxel measure < min_size`` go. ``min_size <= 0`` changes nothing.
    voxel_size: the voxel size along the array's axes; its last 2 (2D) or 3 (3D) entries are used, see the module
    docstring.
    connectivity: ``"full"`` (8 in 2D / 26 in 3D, as the Betti-0 error counts components; the default) or
    ``"face"`` (4 / 6).
    """
    if connectivity not in CONNECTIVITY_CHOICES:
        raise ValueError(f"connectivity must be one of {CONNECTIVITY_CHOICES}, got {connectivity!r}")
    try:
        threshold = float(min_size)
    except (TypeError, ValueError):
        raise ValueError(f"min_size must be a number (an area or volume), got {min_size!r}") from None
    if not math.isfinite(threshold):
        raise ValueError(f"min_size must be finite, got {min_size!r}")
    seg = np.asarray(segmentation)
    measure = voxel_measure(seg.shape, voxel_size)
    mask = label_mask(seg, labels_or_regions)
    out = np.array(seg, copy=True)  # never modify the input
    if threshold <= 0 or not mask.any():
        return out
    labels, sizes = component_sizes(mask, connectivity)
    keep = components_to_keep(sizes, threshold, measure)
    out[mask & ~keep[labels]] = background_label
    return out
