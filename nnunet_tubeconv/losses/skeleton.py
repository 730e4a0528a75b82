"""Tubed skeleton targets for the Skeleton Recall loss, computed on the augmented patch in nnU-Net's DA workers.

Skeleton Recall (Kirchhoff, Rokuss, Roy, Kovacs, Ulrich, Wald, Zenk, Vollmuth, Kleesiek, Isensee, Maier-Hein;
ECCV 2024) asks the network to recall a thin, cheap stand-in for the centre line of every structure: the skeleton of
the ground truth, thickened by a small dilation into a "tubed skeleton". The skeleton is computed once per training
sample after all spatial augmentation, so it matches the patch the network sees, and in the data-augmentation
worker processes, so the training loop does not wait for it.

Here a batchgeneratorsv2 transform (:class:`SkeletonTargetTransform`) appends the tubed skeleton to the sample's
``segmentation`` as extra channel(s). That is the only field nnU-Net's data loader carries from the transforms to
the batch, and nnU-Net's own ``DownsampleSegForDSTransform`` then downsamples the skeleton with the segmentation
(nearest neighbour) for every deep-supervision output. The loss side splits the channels again
(:class:`~nnunet_tubeconv.losses.topology.SkeletonRecallCompound`).

Layout of the segmentation after the transform, ``(C, *spatial)``:

* label-based training: channel 0 the label map, channel 1 the tubed skeleton map (the label value on the tubed
  skeleton of that label, 0 elsewhere);
* region-based training: the region channels (and nnU-Net's ignore channel, when the data set has one) unchanged,
  then one binary tubed-skeleton channel per region.

Skeletons come from scikit-image (``skeletonize``: Zhang's thinning in 2D, Lee's in 3D), the dilation from SciPy
(``binary_dilation`` with the face-connected cross, ``dilation_iterations`` times). The tubed skeleton is clipped to
the structure's own mask: for structures one or two voxels wide a dilated skeleton would otherwise ask for
foreground on background voxels, against the cross-entropy term (our choice; the paper does not discuss it).
Each label is cropped to its bounding box before thinning, and empty labels cost nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from batchgeneratorsv2.transforms.base.basic_transform import BasicTransform
from scipy import ndimage
from skimage.morphology import skeletonize


def tubed_skeleton(mask: np.ndarray, dilation_iterations: int = 1) -> np.ndarray:
    """The tubed skeleton of a binary mask, 2D or 3D: skeleton, dilated by a cross, clipped to ``mask``.

    mask: (*spatial) bool, 2 or 3 spatial dimensions. Returns a bool array of the same shape.
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim not in (2, 3):
        raise ValueError(f"tubed_skeleton takes a 2D or 3D mask, got {mask.ndim} dimensions (shape {mask.shape})")
    if dilation_iterations < 0:
        raise ValueError(f"dilation_iterations must be >= 0, got {dilation_iterations}")
    out = np.zeros(mask.shape, dtype=bool)
    if not mask.any():
        return out
    # bounding box with room for the dilation, so that thinning works on the structure, not the patch
    pad = dilation_iterations + 1
    box = []
    for axis in range(mask.ndim):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        box.append(slice(max(hit[0] - pad, 0), min(hit[-1] + pad + 1, mask.shape[axis])))
    box = tuple(box)
    sub = mask[box]
    skel = skeletonize(sub).astype(bool)
    if dilation_iterations:
        cross = ndimage.generate_binary_structure(sub.ndim, 1)
        skel = ndimage.binary_dilation(skel, structure=cross, iterations=dilation_iterations)
    out[box] = skel & sub
    return out


class SkeletonTargetTransform(BasicTransform):
    """Append tubed-skeleton channels to one sample's ``segmentation`` (see the module docstring for the layout).

    labels: the foreground labels to skeletonise (label-based training; nnU-Net's ``foreground_labels``, which
        excludes background and the ignore label). Mutually exclusive with ``num_regions``.
    num_regions: number of region channels at the start of the segmentation (region-based training).
    dilation_iterations: dilation of the skeleton by the face-connected cross (1 = the paper's thin tube).
    """

    def __init__(
        self,
        labels: Sequence[int] | None = None,
        num_regions: int | None = None,
        dilation_iterations: int = 1,
    ) -> None:
        super().__init__()
        if (labels is None) == (num_regions is None):
            raise ValueError("SkeletonTargetTransform needs exactly one of labels (label-based training) or "
                             f"num_regions (region-based training), got labels={labels}, num_regions={num_regions}")
        if labels is not None:
            labels = [int(v) for v in labels]
            if not labels or any(v <= 0 for v in labels):
                raise ValueError(f"labels must be a non-empty list of foreground labels (> 0), got {labels}")
        if num_regions is not None and int(num_regions) < 1:
            raise ValueError(f"num_regions must be >= 1, got {num_regions}")
        if int(dilation_iterations) < 0:
            raise ValueError(f"dilation_iterations must be >= 0, got {dilation_iterations}")
        self.labels = labels
        self.num_regions = None if num_regions is None else int(num_regions)
        self.dilation_iterations = int(dilation_iterations)

    def apply(self, data_dict: dict, **params) -> dict:
        seg = data_dict.get("segmentation")
        if seg is not None:
            data_dict["segmentation"] = self._apply_to_segmentation(seg)
        return data_dict

    def _apply_to_segmentation(self, segmentation: torch.Tensor, **params) -> torch.Tensor:
        """segmentation: (C, *spatial) -> (C + 1, *spatial) for labels, (C + num_regions, *spatial) for regions."""
        seg = segmentation.numpy() if isinstance(segmentation, torch.Tensor) else np.asarray(segmentation)
        if self.labels is not None:
            if seg.shape[0] != 1:
                raise ValueError(f"label-based skeleton targets expect a one-channel label map, got shape {seg.shape}")
            skel = np.zeros(seg.shape, dtype=seg.dtype)
            for value in self.labels:
                m = seg[0] == value
                if m.any():
                    skel[0][tubed_skeleton(m, self.dilation_iterations)] = value
        else:
            if seg.shape[0] < self.num_regions:
                raise ValueError(f"expected at least {self.num_regions} region channels, got shape {seg.shape}")
            skel = np.zeros((self.num_regions, *seg.shape[1:]), dtype=seg.dtype)
            for r in range(self.num_regions):
                if seg[r].any():
                    skel[r] = tubed_skeleton(seg[r].astype(bool), self.dilation_iterations)
        out = np.concatenate([seg, skel], axis=0)
        return torch.from_numpy(out) if isinstance(segmentation, torch.Tensor) else out
