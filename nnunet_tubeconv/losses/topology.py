"""Topology-aware loss terms added to nnU-Net's Dice + cross-entropy: Skeleton Recall and soft clDice.

* Skeleton Recall (Kirchhoff et al., ECCV 2024): ``1 - sum(p_c * S_c) / sum(S_c)`` per foreground class ``c``, with
  ``p_c`` the predicted probability (softmax for labels, sigmoid for regions) and ``S_c`` the tubed skeleton of the
  ground truth (:mod:`nnunet_tubeconv.losses.skeleton`, computed in the data-augmentation workers). Sums run over
  the batch and all voxels; classes without skeleton voxels in the batch are left out of the mean (nothing to
  recall), and a batch without any gives 0. The paper adds it to nnU-Net's loss with weight 1.
* soft clDice (Shit et al., CVPR 2021): a differentiable skeleton ``soft_skeleton`` from iterated min/max pooling
  (soft erosion = min-pool over the face-connected cross, soft dilation = 3^N max-pool), then
  ``Tprec = (sum(S_P * V_L) + s) / (sum(S_P) + s)``, ``Tsens = (sum(S_L * V_P) + s) / (sum(S_L) + s)`` and
  ``clDice = 2 Tprec Tsens / (Tprec + Tsens)`` per foreground class, loss ``1 - mean_c clDice_c``. ``s = 1`` as in
  the paper's implementation notes. The number of iterations should reach the largest radius to be skeletonised.

The wrappers :class:`SkeletonRecallCompound` and :class:`ClDiceCompound` take nnU-Net's own compound loss (or
whatever a trainer's ``_build_loss`` produced) and add the term; nnU-Net's ``DeepSupervisionWrapper`` then applies
them per output, each with its downsampled targets.

Shapes: ``net_output`` is ``(B, C, *spatial)`` logits; label targets are ``(B, 1, *spatial)`` label maps,
region targets ``(B, R, *spatial)`` binary masks (plus nnU-Net's ignore channel last when the data set has one).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: The Skeleton Recall paper's weight of the recall term next to nnU-Net's Dice + CE.
SKELETON_RECALL_WEIGHT = 1.0
#: Tube thickness: dilation iterations of the skeleton by the face-connected cross.
SKELETON_DILATION_ITERATIONS = 1
#: soft-skeleton iterations; clDice weight next to nnU-Net's Dice (weight 1) + CE: 1 keeps Dice : clDice = 1 : 1,
#: the clDice paper's alpha = 0.5 mix.
CLDICE_ITERATIONS = 3
CLDICE_WEIGHT = 1.0


def _pool_dims(x: torch.Tensor) -> int:
    dim = x.ndim - 2
    if dim not in (2, 3):
        raise ValueError(f"expected a (B, C, *spatial) tensor with 2 or 3 spatial dimensions, "
                         f"got shape {tuple(x.shape)}")
    return dim


def soft_erode(x: torch.Tensor) -> torch.Tensor:
    """Soft erosion: minimum over the face-connected cross, per axis. x: (B, C, *spatial) in [0, 1]."""
    dim = _pool_dims(x)
    pool = F.max_pool2d if dim == 2 else F.max_pool3d
    out = None
    for axis in range(dim):
        k = [1] * dim
        k[axis] = 3
        p = [0] * dim
        p[axis] = 1
        e = -pool(-x, kernel_size=tuple(k), stride=1, padding=tuple(p))
        out = e if out is None else torch.minimum(out, e)
    return out


def soft_dilate(x: torch.Tensor) -> torch.Tensor:
    """Soft dilation: maximum over the 3^N neighbourhood. x: (B, C, *spatial)."""
    dim = _pool_dims(x)
    pool = F.max_pool2d if dim == 2 else F.max_pool3d
    return pool(x, kernel_size=3, stride=1, padding=1)


def soft_skeleton(x: torch.Tensor, iterations: int) -> torch.Tensor:
    """Shit et al.'s soft skeleton of x: (B, C, *spatial) in [0, 1]; same shape, values in [0, 1]."""
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}")
    skel = F.relu(x - soft_dilate(soft_erode(x)))
    for _ in range(iterations):
        x = soft_erode(x)
        delta = F.relu(x - soft_dilate(soft_erode(x)))
        skel = skel + F.relu(delta - skel * delta)
    return skel


def _probabilities(net_output: torch.Tensor, regions: bool) -> torch.Tensor:
    """Foreground probabilities (B, K, *spatial): sigmoid of every region, or softmax without the background."""
    if net_output.dtype in (torch.float16, torch.bfloat16):  # sums over many voxels: not in half precision
        net_output = net_output.float()
    if regions:
        return torch.sigmoid(net_output)
    return torch.softmax(net_output, 1)[:, 1:]


def _one_hot_foreground(labels: torch.Tensor, num_classes: int, dtype: torch.dtype) -> torch.Tensor:
    """(B, 1, *spatial) label map -> (B, num_classes - 1, *spatial) one-hot without background."""
    onehot = torch.zeros((labels.shape[0], num_classes, *labels.shape[2:]), device=labels.device, dtype=dtype)
    onehot.scatter_(1, labels.long().clamp(0, num_classes - 1), 1)
    # labels >= num_classes (nnU-Net's ignore label) are not foreground of any class
    onehot[:, -1:] *= (labels < num_classes).to(dtype)
    return onehot[:, 1:]


class SoftSkeletonRecallLoss(nn.Module):
    """``1 - mean_c sum(p_c S_c) / sum(S_c)`` over foreground classes with skeleton voxels in the batch.

    forward(net_output (B, C, *spatial) logits, skeleton): skeleton is a (B, 1, *spatial) map holding the label
    value on the tubed skeleton (label-based) or (B, C, *spatial) binary masks (``regions=True``).
    """

    def __init__(self, regions: bool = False) -> None:
        super().__init__()
        self.regions = regions

    def forward(self, net_output: torch.Tensor, skeleton: torch.Tensor) -> torch.Tensor:
        probs = _probabilities(net_output, self.regions)
        if self.regions:
            if skeleton.shape[1] != net_output.shape[1]:
                raise ValueError(f"region skeleton targets need one channel per output ({net_output.shape[1]}), "
                                 f"got shape {tuple(skeleton.shape)}")
            skel = skeleton.to(probs.dtype)
        else:
            if skeleton.shape[1] != 1:
                raise ValueError(f"label skeleton targets must have one channel, got shape {tuple(skeleton.shape)}")
            skel = _one_hot_foreground(skeleton, net_output.shape[1], probs.dtype)
        axes = [0, *range(2, skel.ndim)]
        total = skel.sum(axes)
        hit = (probs * skel).sum(axes)
        present = total > 0
        if not bool(present.any()):
            return net_output.sum() * 0.0  # nothing to recall; keeps the graph for DDP
        recall = hit[present] / total[present]
        return 1.0 - recall.mean()


class SoftClDiceLoss(nn.Module):
    """``1 - mean_c clDice_c`` of the soft skeletons of prediction and target (Shit et al., CVPR 2021).

    forward(net_output (B, C, *spatial) logits, target): a (B, 1, *spatial) label map, or (B, C, *spatial) binary
    region masks with ``regions=True``.
    """

    def __init__(self, iterations: int = CLDICE_ITERATIONS, regions: bool = False, smooth: float = 1.0) -> None:
        super().__init__()
        if int(iterations) < 0:
            raise ValueError(f"clDice iterations must be >= 0, got {iterations}")
        self.iterations = int(iterations)
        self.regions = regions
        self.smooth = float(smooth)

    def forward(self, net_output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        probs = _probabilities(net_output, self.regions)
        if self.regions:
            ref = target[:, : net_output.shape[1]].to(probs.dtype)
        else:
            ref = _one_hot_foreground(target, net_output.shape[1], probs.dtype)
        skel_pred = soft_skeleton(probs, self.iterations)
        skel_ref = soft_skeleton(ref, self.iterations)
        axes = [0, *range(2, probs.ndim)]
        s = self.smooth
        tprec = ((skel_pred * ref).sum(axes) + s) / (skel_pred.sum(axes) + s)
        tsens = ((skel_ref * probs).sum(axes) + s) / (skel_ref.sum(axes) + s)
        cldice = 2 * tprec * tsens / (tprec + tsens)
        return 1.0 - cldice.mean()


class SkeletonRecallCompound(nn.Module):
    """``base(net_output, seg) + weight * recall(net_output, skeleton)``; target channels as the transform writes.

    num_seg_channels: channels of the segmentation target without skeletons (1 for labels; regions, plus one for
    nnU-Net's ignore channel). A target with exactly that many channels (nnU-Net's validation batches, which carry no
    skeleton) gets the base loss alone.
    """

    def __init__(self, base: nn.Module, num_seg_channels: int, regions: bool, weight: float = SKELETON_RECALL_WEIGHT):
        super().__init__()
        self.base = base
        self.num_seg_channels = int(num_seg_channels)
        self.weight = float(weight)
        self.recall = SoftSkeletonRecallLoss(regions)

    def forward(self, net_output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        n = self.num_seg_channels
        if target.shape[1] == n:
            return self.base(net_output, target)
        expected = n + (net_output.shape[1] if self.recall.regions else 1)
        if target.shape[1] != expected:
            raise ValueError(f"Skeleton Recall expects targets with {n} segmentation channel(s) followed by the "
                             f"skeleton channel(s) ({expected} in all, written by SkeletonTargetTransform), or {n} "
                             f"without skeletons; got shape {tuple(target.shape)}")
        seg, skel = target[:, :n], target[:, n:]
        return self.base(net_output, seg) + self.weight * self.recall(net_output, skel)


class ClDiceCompound(nn.Module):
    """``base(net_output, target) + weight * soft_clDice_loss(net_output, target)``."""

    def __init__(
        self,
        base: nn.Module,
        regions: bool,
        iterations: int = CLDICE_ITERATIONS,
        weight: float = CLDICE_WEIGHT,
    ) -> None:
        super().__init__()
        self.base = base
        self.weight = float(weight)
        self.cldice = SoftClDiceLoss(iterations, regions)

    def forward(self, net_output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.base(net_output, target) + self.weight * self.cldice(net_output, target)
