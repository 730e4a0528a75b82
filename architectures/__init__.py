"""Network builders that meet nnU-Net's network contract.

* :data:`VARIANTS` and :func:`variant_architecture` turn a plans entry of nnU-Net's ``PlainConvUNet`` into one of
  our variants (pure Python, no torch import).
* :class:`~nnunet_tubeconv.architectures.unet.TubeUNet` is the network every variant builds, named in the plans as
  ``nnunet_tubeconv.architectures.unet.TubeUNet``.
"""

from nnunet_tubeconv.architectures.options import DEFAULT_BLOCK_OPTIONS, allowed_options, resolve_block_options
from nnunet_tubeconv.architectures.variants import (
    OUR_CLASSES,
    TUBE_UNET_CLASS,
    VARIANTS,
    plain_conv_unet_entry,
    variant_architecture,
)

__all__ = [
    "DEFAULT_BLOCK_OPTIONS",
    "OUR_CLASSES",
    "TUBE_UNET_CLASS",
    "VARIANTS",
    "allowed_options",
    "plain_conv_unet_entry",
    "resolve_block_options",
    "variant_architecture",
]
