"""Topology-aware loss trainers: Skeleton Recall and soft clDice, as mixins that combine with any trainer.

A mixin changes the loss (and, for Skeleton Recall, appends one transform to nnU-Net's augmentation pipeline) and
nothing else, by post-processing what ``super()`` returns; the network comes from whatever trainer follows it in
the MRO. So any block variant combines with any loss in two lines::

    from nnunet_tubeconv.trainers import SkeletonRecallMixin, nnUNetTrainerScSE

    class nnUNetTrainerScSESkeletonRecall(SkeletonRecallMixin, nnUNetTrainerScSE):
        pass

Options are class constants (override them in such a subclass): ``skeleton_recall_weight`` and
``skeleton_dilation_iterations`` (Skeleton Recall), ``cldice_weight`` and ``cldice_iterations`` (clDice).

* ``nnUNetTrainerSkeletonRecall``: vanilla nnU-Net + Skeleton Recall (Kirchhoff et al., ECCV 2024).
* ``nnUNetTrainerClDice``: vanilla nnU-Net + soft clDice (Shit et al., CVPR 2021).
* ``nnUNetTrainerDSConvSkeletonRecall``, ``nnUNetTrainerTubeConvSkeletonRecall``: snake networks with Skeleton Recall.

Region-based data: both losses work per region on sigmoid outputs. Ignore label: Skeleton Recall works (only
annotated voxels are skeletonised; the recall term never looks at unannotated ones); clDice is refused, because its
precision term would count every predicted centre line in unannotated voxels as wrong.

Imported by nnU-Net's ``nnUNet_extTrainer`` lookup as a top-level module: absolute imports only.
"""

from __future__ import annotations

from typing import ClassVar

from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from torch import nn

from nnunet_tubeconv import losses
from nnunet_tubeconv.trainers.tubeconv_variants import nnUNetTrainerDSConv, nnUNetTrainerTubeConv


def _wrap_loss(loss: nn.Module, wrap) -> nn.Module:
    """Apply ``wrap`` to the per-output loss inside nnU-Net's DeepSupervisionWrapper (or to ``loss`` without DS)."""
    if isinstance(loss, DeepSupervisionWrapper):
        loss.loss = wrap(loss.loss)
        return loss
    return wrap(loss)


def insert_before_deep_supervision(pipeline, transform):
    """Put ``transform`` into nnU-Net's ComposeTransforms right before its DownsampleSegForDSTransform (or last).

    Returns the pipeline. Anything that is not a ComposeTransforms is wrapped in one.
    """
    from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
    from batchgeneratorsv2.transforms.utils.deep_supervision_downsampling import DownsampleSegForDSTransform

    if not isinstance(pipeline, ComposeTransforms):
        pipeline = ComposeTransforms([pipeline])
    at = next((i for i, t in enumerate(pipeline.transforms) if isinstance(t, DownsampleSegForDSTransform)),
              len(pipeline.transforms))
    pipeline.transforms.insert(at, transform)
    return pipeline


class SkeletonRecallMixin:
    """Adds the Skeleton Recall term to the trainer's loss; tubed skeletons are made in the DA workers.

    Put it first among the bases: ``class T(SkeletonRecallMixin, nnUNetTrainerX)``.
    """

    #: weight of the recall term next to nnU-Net's Dice + CE (the paper's default: 1)
    skeleton_recall_weight: ClassVar[float] = losses.SKELETON_RECALL_WEIGHT
    #: tube thickness: dilation iterations of the skeleton by the face-connected cross (the paper's: 1)
    skeleton_dilation_iterations: ClassVar[int] = losses.SKELETON_DILATION_ITERATIONS

    @classmethod
    def get_training_transforms(
        cls,
        patch_size,
        rotation_for_DA,
        deep_supervision_scales,
        mirror_axes,
        do_dummy_2d_data_aug,
        use_mask_for_norm=None,
        is_cascaded=False,
        foreground_labels=None,
        regions=None,
        ignore_label=None,
    ):
        """nnU-Net's pipeline with :class:`SkeletonTargetTransform` after region conversion, before DS downsampling."""
        pipeline = super().get_training_transforms(
            patch_size, rotation_for_DA, deep_supervision_scales, mirror_axes, do_dummy_2d_data_aug,
            use_mask_for_norm, is_cascaded, foreground_labels, regions, ignore_label,
        )
        if regions is not None:
            transform = losses.SkeletonTargetTransform(num_regions=len(regions),
                                                       dilation_iterations=cls.skeleton_dilation_iterations)
        else:
            transform = losses.SkeletonTargetTransform(labels=foreground_labels,
                                                       dilation_iterations=cls.skeleton_dilation_iterations)
        return insert_before_deep_supervision(pipeline, transform)

    @classmethod
    def loss_problem(cls, label_manager) -> str | None:
        """Why this loss cannot train on a data set with these labels (None: it can). ``doctor`` asks this too."""
        if not label_manager.has_regions and not label_manager.foreground_labels:
            return f"{cls.__name__}: Skeleton Recall needs at least one foreground label"
        return None

    def _build_loss(self):
        problem = self.loss_problem(self.label_manager)
        if problem:
            raise ValueError(problem)
        if self.skeleton_recall_weight < 0:
            raise ValueError(f"{type(self).__name__}: skeleton_recall_weight must be >= 0, got "
                             f"{self.skeleton_recall_weight}")
        lm = self.label_manager
        if lm.has_regions:
            n_seg = len(lm.foreground_regions) + (1 if lm.has_ignore_label else 0)
        else:
            n_seg = 1
        return _wrap_loss(
            super()._build_loss(),
            lambda base: losses.SkeletonRecallCompound(base, n_seg, lm.has_regions, self.skeleton_recall_weight),
        )


class ClDiceMixin:
    """Adds the soft clDice term to the trainer's loss. Put it first among the bases."""

    #: soft-skeleton iterations (should reach the largest radius to be skeletonised)
    cldice_iterations: ClassVar[int] = losses.CLDICE_ITERATIONS
    #: weight of the clDice term next to nnU-Net's Dice (1) + CE (1)
    cldice_weight: ClassVar[float] = losses.CLDICE_WEIGHT

    @classmethod
    def loss_problem(cls, label_manager) -> str | None:
        """Why this loss cannot train on a data set with these labels (None: it can). ``doctor`` asks this too."""
        if label_manager.has_ignore_label:
            return (
                f"{cls.__name__}: soft clDice cannot be used with an ignore label (label "
                f"{label_manager.ignore_label} in dataset.json): its precision term counts predicted centre lines in "
                f"unannotated voxels as wrong. Use Skeleton Recall (nnUNetTrainerSkeletonRecall), which only "
                f"looks at annotated structures, or remove 'ignore' from the labels."
            )
        return None

    def _build_loss(self):
        if self.cldice_weight < 0 or self.cldice_iterations < 0:
            raise ValueError(f"{type(self).__name__}: cldice_weight and cldice_iterations must be >= 0, got "
                             f"{self.cldice_weight} and {self.cldice_iterations}")
        problem = self.loss_problem(self.label_manager)
        if problem:
            raise ValueError(problem)
        lm = self.label_manager
        return _wrap_loss(
            super()._build_loss(),
            lambda base: losses.ClDiceCompound(base, lm.has_regions, self.cldice_iterations, self.cldice_weight),
        )


class nnUNetTrainerSkeletonRecall(SkeletonRecallMixin, nnUNetTrainer):
    """Vanilla nnU-Net + Skeleton Recall (weight 1, tube = skeleton dilated once)."""


class nnUNetTrainerClDice(ClDiceMixin, nnUNetTrainer):
    """Vanilla nnU-Net + soft clDice (3 iterations, weight 1)."""


class nnUNetTrainerDSConvSkeletonRecall(SkeletonRecallMixin, nnUNetTrainerDSConv):
    """DSCNet snake network trained with Skeleton Recall."""


class nnUNetTrainerTubeConvSkeletonRecall(SkeletonRecallMixin, nnUNetTrainerTubeConv):
    """The combination network (snakes + DFF + scSE) trained with Skeleton Recall."""
