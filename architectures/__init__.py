"""Network builders that meet nnU-Net's network contract.

* :data:`VARIANTS` and :func:`variant_architecture` turn a plans entry of nnU-Net's ``PlainConvUNet`` or
  ``ResidualEncoderUNet`` (its ResEnc presets) into one of our variants (pure Python, no torch import).
* :class:`~nnunet_tubeconv.architectures.unet.TubeUNet` (:data:`TUBE_UNET_CLASS`) and
  :class:`~nnunet_tubeconv.architectures.unet.TubeResEncUNet` (:data:`TUBE_RESENC_UNET_CLASS`) are the networks the
  variants build on the two hosts (:data:`HOSTS`: nnU-Net's class -> ours).
* :data:`ARCHITECTURE_KEYS`, :data:`PLAIN_CONV_UNET_CLASS` / :data:`PLAIN_CONV_UNET_NAMES`,
  :data:`RESENC_UNET_CLASS` / :data:`RESENC_UNET_NAMES`: nnU-Net's network contract (the keys of a plans entry, the
  class paths of its networks), defined once here.
"""

from nnunet_tubeconv.architectures.options import (
    DEFAULT_BLOCK_OPTIONS,
    allowed_options,
    places_snakes,
    resolve_block_options,
)
from nnunet_tubeconv.architectures.variants import (
    ARCHITECTURE_KEYS,
    HOSTS,
    OUR_CLASSES,
    PLAIN_CONV_UNET_CLASS,
    PLAIN_CONV_UNET_NAMES,
    RESENC_UNET_CLASS,
    RESENC_UNET_NAMES,
    TUBE_RESENC_UNET_CLASS,
    TUBE_UNET_CLASS,
    VARIANTS,
    host_class,
    is_plain_conv_unet,
    is_resenc_unet,
    neutral_architecture,
    plain_conv_unet_entry,
    resenc_unet_entry,
    supported_network_classes,
    unsupported_class_message,
    variant_architecture,
)

__all__ = [
    "ARCHITECTURE_KEYS",
    "DEFAULT_BLOCK_OPTIONS",
    "HOSTS",
    "OUR_CLASSES",
    "PLAIN_CONV_UNET_CLASS",
    "PLAIN_CONV_UNET_NAMES",
    "RESENC_UNET_CLASS",
    "RESENC_UNET_NAMES",
    "TUBE_RESENC_UNET_CLASS",
    "TUBE_UNET_CLASS",
    "VARIANTS",
    "allowed_options",
    "host_class",
    "is_plain_conv_unet",
    "is_resenc_unet",
    "neutral_architecture",
    "places_snakes",
    "plain_conv_unet_entry",
    "resenc_unet_entry",
    "resolve_block_options",
    "supported_network_classes",
    "unsupported_class_message",
    "variant_architecture",
]
