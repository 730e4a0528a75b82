"""Network builders that meet nnU-Net's network contract.

* :data:`VARIANTS` and :func:`variant_architecture` turn a plans entry of nnU-Net's ``PlainConvUNet`` into one of
  our variants (pure Python, no torch import).
* :class:`~nnunet_tubeconv.architectures.unet.TubeUNet` is the network every variant builds, named in the plans as
  ``nnunet_tubeconv.architectures.unet.TubeUNet`` (:data:`TUBE_UNET_CLASS`).
* :data:`ARCHITECTURE_KEYS`, :data:`PLAIN_CONV_UNET_CLASS` / :data:`PLAIN_CONV_UNET_NAMES`: nnU-Net's network
  contract (the keys of a plans entry, the class path of its default network), defined once here.
"""

from nnunet_tubeconv.architectures.options import DEFAULT_BLOCK_OPTIONS, allowed_options, resolve_block_options
from nnunet_tubeconv.architectures.variants import (
    ARCHITECTURE_KEYS,
    OUR_CLASSES,
    PLAIN_CONV_UNET_CLASS,
    PLAIN_CONV_UNET_NAMES,
    TUBE_UNET_CLASS,
    VARIANTS,
    is_plain_conv_unet,
    plain_conv_unet_entry,
    variant_architecture,
)

__all__ = [
    "ARCHITECTURE_KEYS",
    "DEFAULT_BLOCK_OPTIONS",
    "OUR_CLASSES",
    "PLAIN_CONV_UNET_CLASS",
    "PLAIN_CONV_UNET_NAMES",
    "TUBE_UNET_CLASS",
    "VARIANTS",
    "allowed_options",
    "is_plain_conv_unet",
    "plain_conv_unet_entry",
    "resolve_block_options",
    "variant_architecture",
]
