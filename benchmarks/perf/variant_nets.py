"""Tiny networks of every shipped trainer's variant (and vanilla), for the compile, DDP and AMP tests and for
``compile_check`` (inductor on every variant).

The variants come from the trainer registry (``TRAINER_MODULES``: every class of ``tubeconv_variants``, with its
``variant`` and ``block_options``), so a new variant trainer is tested without editing these tests. Plans: nnU-Net's
PlainConvUNet entry for 2D with 3 stages of 2-4-4 channels, one convolution per stage; the variants' default stage
lists fall back to the deepest stage of so small a plan (``variant_architecture``), so every block is present. The
zero-initialised offset / swing convolutions get random weights, so snakes and deformable kernels really bend.
"""

from __future__ import annotations

import importlib

import torch
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

from nnunet_tubeconv.architectures import variant_architecture
from nnunet_tubeconv.architectures.variants import plain_conv_unet_entry
from nnunet_tubeconv.trainers import TRAINER_MODULES

#: input channels, classes and spatial size of the tiny networks
IN_CHANNELS, NUM_CLASSES, PATCH = 1, 3, (16, 16)


def variant_trainers() -> dict[str, tuple[str | None, dict]]:
    """Trainer name -> (variant, block options) for vanilla (``nnUNetTrainer``: no variant) and every variant
    trainer."""
    module = importlib.import_module("nnunet_tubeconv.trainers.tubeconv_variants")
    out: dict[str, tuple[str | None, dict]] = {"nnUNetTrainer": (None, {})}
    for name, mod in TRAINER_MODULES.items():
        if mod == "tubeconv_variants":
            cls = getattr(module, name)
            out[name] = (cls.variant, dict(cls.block_options or {}))
    return out


TRAINERS = sorted(variant_trainers())


def plans_entry() -> dict:
    return plain_conv_unet_entry(2, [2, 4, 4], [[1, 1], [2, 2], [2, 2]], n_conv_per_stage=1, n_conv_per_stage_decoder=1)


def build_network(trainer: str, seed: int = 0, deep_supervision: bool = True) -> torch.nn.Module:
    """The tiny network of ``trainer`` (a key of :func:`variant_trainers`), seeded, offsets randomised."""
    variant, options = variant_trainers()[trainer]
    entry = plans_entry() if variant is None else variant_architecture(plans_entry(), variant, options)
    torch.manual_seed(seed)
    net = get_network_from_plans(entry["network_class_name"], entry["arch_kwargs"], entry["_kw_requires_import"],
                                 IN_CHANNELS, NUM_CLASSES, allow_init=True, deep_supervision=deep_supervision)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in net.modules():
            if getattr(m, "_tubeconv_keep_init", False):
                m.weight.copy_(torch.randn(m.weight.shape, generator=generator) * 0.3)
    return net


def batch(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` random images and integer label maps of :data:`PATCH`."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, IN_CHANNELS, *PATCH, generator=generator)
    y = torch.randint(0, NUM_CLASSES, (n, *PATCH), generator=generator)
    return x, y


def loss_fn(outputs, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy (mean over the batch) on every deep-supervision output, the target nearest-downsampled."""
    outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    total = 0.0
    for o in outputs:
        t = torch.nn.functional.interpolate(target[:, None].float(), size=o.shape[2:], mode="nearest")[:, 0].long()
        total = total + torch.nn.functional.cross_entropy(o.float(), t)
    return total
