"""One nnU-Net trainer per block variant; the class name is what ``nnUNetv2_train -tr`` takes.

Each class changes one thing against ``nnUNetTrainer``: the network (see :mod:`nnunet_tubeconv.architectures` for
where each block goes). Everything else (schedule, loss, augmentation, inference) is stock nnU-Net.

* ``nnUNetTrainerDSConv``: Dynamic Snake Convolution, DSCNet (Qi et al., ICCV 2023).
* ``nnUNetTrainerDLKDFF``: D-Net's dynamic large kernel and dynamic feature fusion (Yang et al., arXiv 2403.10674).
* ``nnUNetTrainerDLKDFFAuthors2025``: the same with the DLK of the authors' 2025 code release.
* ``nnUNetTrainerScSE``: concurrent spatial and channel squeeze & excitation (Roy et al., MICCAI 2018).
* ``nnUNetTrainerDeformConv``: modulated deformable convolution, DCNv2 (Zhu et al., CVPR 2019), the free-form
  baseline for the snake.
* ``nnUNetTrainerTubeConv``: the combination.

Each class is registered in :data:`nnunet_tubeconv.trainers.TRAINER_MODULES` (one line per trainer). Imported by
nnU-Net's ``nnUNet_extTrainer`` lookup as a top-level module: absolute imports only.
"""

from __future__ import annotations

from types import MappingProxyType

from nnunet_tubeconv.trainers.tubeconv_base import nnUNetTrainerTubeBase


class nnUNetTrainerDSConv(nnUNetTrainerTubeBase):
    """nnU-Net with DSCNet's dynamic snake convolution blocks."""

    variant = "dsconv"


class nnUNetTrainerDLKDFF(nnUNetTrainerTubeBase):
    """nnU-Net with D-Net's dynamic large kernel blocks and dynamic feature fusion skips (paper's DLK)."""

    variant = "dlkdff"


class nnUNetTrainerDLKDFFAuthors2025(nnUNetTrainerTubeBase):
    """nnUNetTrainerDLKDFF with the DLK module as in the authors' 2025 code instead of the paper's description."""

    variant = "dlkdff"
    block_options = MappingProxyType({"dlk_mode": "authors2025"})


class nnUNetTrainerScSE(nnUNetTrainerTubeBase):
    """nnU-Net with scSE recalibration."""

    variant = "scse"


class nnUNetTrainerDeformConv(nnUNetTrainerTubeBase):
    """nnU-Net with DCNv2 modulated deformable convolutions where the snake would go."""

    variant = "deform"


class nnUNetTrainerTubeConv(nnUNetTrainerTubeBase):
    """nnU-Net with the combination of the blocks (see ``VARIANTS["tubeconv"]``)."""

    variant = "tubeconv"

