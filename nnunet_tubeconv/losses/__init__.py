"""Topology-aware losses for nnU-Net training: Skeleton Recall (ECCV 2024) and soft clDice (CVPR 2021).

Plain ``nn.Module``s and one batchgeneratorsv2 transform; the trainer mixins that plug them into nnU-Net live in
:mod:`nnunet_tubeconv.trainers.topology_losses`.
"""

from nnunet_tubeconv.losses.skeleton import SkeletonTargetTransform, tubed_skeleton
from nnunet_tubeconv.losses.topology import (
    CLDICE_ITERATIONS,
    CLDICE_WEIGHT,
    SKELETON_DILATION_ITERATIONS,
    SKELETON_RECALL_WEIGHT,
    ClDiceCompound,
    SkeletonRecallCompound,
    SoftClDiceLoss,
    SoftSkeletonRecallLoss,
    soft_dilate,
    soft_erode,
    soft_skeleton,
)

__all__ = [
    "CLDICE_ITERATIONS",
    "CLDICE_WEIGHT",
    "SKELETON_DILATION_ITERATIONS",
    "SKELETON_RECALL_WEIGHT",
    "ClDiceCompound",
    "SkeletonRecallCompound",
    "SkeletonTargetTransform",
    "SoftClDiceLoss",
    "SoftSkeletonRecallLoss",
    "soft_dilate",
    "soft_erode",
    "soft_skeleton",
    "tubed_skeleton",
]
