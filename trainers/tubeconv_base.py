"""The base of every nnunet-tubeconv trainer: stock nnU-Net training with a TubeUNet (or, on ResEnc plans, a
TubeResEncUNet) built from the plans.

nnU-Net's network contract (Isensee et al., Nature Methods 2021; nnunetv2 ``nnUNetTrainer``): a configuration's
plans entry ``{"network_class_name", "arch_kwargs", "_kw_requires_import"}`` describes the network, and
``build_network_architecture`` turns plans into a module. Inference calls it on the trainer CLASS (no instance), so
here it is a classmethod whose result depends on the plans and on two class constants only:

* ``variant``: a key of :data:`nnunet_tubeconv.architectures.VARIANTS` (``"dsconv"``, ``"dlkdff"``, ...);
* ``block_options``: optional block options laid over that variant's (see
  :mod:`nnunet_tubeconv.architectures.options`).

A PlainConvUNet entry (default plans) or a ResidualEncoderUNet entry (nnU-Net's ResEnc presets, plans
``nnUNetResEncUNetM/L/XLPlans``) becomes the variant's network on that host; an entry that already names our
network (the plans.json that training writes into the model folder, or plans written by a planner preset) is
rebuilt exactly as it stands.

This module is imported twice in practice: as ``nnunet_tubeconv.trainers.tubeconv_base``, and as a top-level module
``tubeconv_base`` by nnU-Net's ``nnUNet_extTrainer`` lookup, which puts this folder on ``sys.path``. Hence absolute
imports only, and nothing but definitions at import time.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch import nn

from nnunet_tubeconv.architectures import ARCHITECTURE_KEYS

# nnUNetTrainer's default device, shared rather than rebuilt per call
_CUDA = torch.device("cuda")


def _block_options(entry: Mapping[str, Any] | None) -> Any:
    return None if entry is None else (entry.get("arch_kwargs") or {}).get("block_options")


def plans_copy(plans: Mapping[str, Any], configuration: str, owner: str) -> dict:
    """A deep copy of nnU-Net ``plans``, which must hold ``configuration``; else a ``ValueError`` from ``owner``
    (the trainer's name) naming the configurations there are."""
    plans = copy.deepcopy(dict(plans))
    configurations = plans.get("configurations")
    if not isinstance(configurations, Mapping) or configuration not in configurations:
        available = sorted(configurations) if isinstance(configurations, Mapping) else []
        raise ValueError(
            f"{owner}: configuration {configuration!r} is not in the plans "
            f"{plans.get('plans_name', '?')!r}; available are {available}"
        )
    return plans


def with_architecture(configuration_manager: ConfigurationManager, entry: dict,
                      **extra: Any) -> ConfigurationManager:
    """A ConfigurationManager of a copy of the configuration whose ``architecture`` is ``entry`` (and ``extra``
    keys added): what a trainer hands to nnUNetTrainer's builder."""
    configuration = copy.deepcopy(configuration_manager.configuration)
    configuration["architecture"] = entry
    configuration.update(extra)
    return ConfigurationManager(configuration)


def architecture_entry(configuration_manager: ConfigurationManager) -> dict:
    """A deep copy of a configuration's ``architecture`` entry (inheritance already resolved by nnU-Net)."""
    return copy.deepcopy(
        {
            "network_class_name": configuration_manager.network_arch_class_name,
            "arch_kwargs": configuration_manager.network_arch_init_kwargs,
            "_kw_requires_import": configuration_manager.network_arch_init_kwargs_req_import,
        }
    )


def lr_scaled_param_groups(network: nn.Module) -> list[dict]:
    """The network's parameters in optimiser groups by learning-rate multiplier: ``[{"params", "lr_scale"}, ...]``.

    Modules that expose ``swing_parameters()`` and ``swing_lr_scale`` (DSConv) put those parameters at their scale;
    every other parameter is at scale 1. The scale-1 group comes first (nnU-Net logs ``param_groups[0]["lr"]``); a
    network without scaled parameters gives one group, the same as ``network.parameters()``.
    """
    scale_of: dict[int, float] = {}
    for module in network.modules():
        scale = getattr(module, "swing_lr_scale", None)
        if scale is not None and hasattr(module, "swing_parameters"):
            for p in module.swing_parameters():
                scale_of[id(p)] = float(scale)
    groups: dict[float, list] = {1.0: []}
    for p in network.parameters():
        groups.setdefault(scale_of.get(id(p), 1.0), []).append(p)
    return [{"params": ps, "lr_scale": scale} for scale, ps in groups.items() if ps or scale == 1.0]


class ScaledPolyLRScheduler(PolyLRScheduler):
    """nnU-Net's poly schedule, ``lr = initial_lr * (1 - step / max_steps) ** 0.9``, times each param group's
    ``lr_scale`` (1 where a group has none)."""

    def step(self, current_step=None):
        super().step(current_step)
        for group in self.optimizer.param_groups:
            group["lr"] = group["lr"] * group.get("lr_scale", 1.0)
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]


class nnUNetTrainerTubeBase(nnUNetTrainer):
    """nnUNetTrainer whose network is ``variant`` (+ ``block_options``) applied to the plans' PlainConvUNet or
    ResidualEncoderUNet (nnU-Net's ResEnc presets, ``-p nnUNetResEncUNetMPlans`` etc.).

    Subclasses set the class constants and nothing else; a user's subclass (a shorter schedule, other block
    options) keeps working because everything is looked up on ``cls``. Used directly (``variant = None``) it only
    accepts plans whose entry already names an nnunet-tubeconv network.
    """

    #: key of nnunet_tubeconv.architectures.VARIANTS, or None (plans must already name our network)
    variant: ClassVar[str | None] = None
    #: block options laid over the variant's own (read-only: use a MappingProxyType); None keeps the variant's
    block_options: ClassVar[Mapping[str, Any] | None] = None

    # The signature must stay exactly nnUNetTrainer's: nnU-Net records the constructor arguments by inspecting it
    # (my_init_kwargs, stored in every checkpoint).
    def __init__(
        self,
        plans: dict,
        configuration: str,
        fold: int,
        dataset_json: dict,
        device: torch.device = _CUDA,
    ):
        # The resolved entry goes into our own copy of the plans, which nnU-Net saves as the model folder's
        # plans.json: the folder alone then names and rebuilds the network.
        plans = self.plans_with_architecture(plans, configuration)
        super().__init__(plans, configuration, fold, dataset_json, device)

    def configure_optimizers(self):
        """nnU-Net's optimiser and schedule (SGD, momentum 0.99, Nesterov, poly decay), with the swing branch of
        every DSConv in its own parameter group at ``snake_swing_lr_scale`` times the learning rate.

        With every scale at 1 (plans written before the option existed, or block options that say so) this is
        exactly ``nnUNetTrainer.configure_optimizers``: one group.
        """
        groups = lr_scaled_param_groups(self.network)
        if len(groups) == 1:
            return super().configure_optimizers()
        for group in groups:
            group["lr"] = self.initial_lr * group["lr_scale"]
        optimizer = torch.optim.SGD(groups, self.initial_lr, weight_decay=self.weight_decay, momentum=0.99,
                                    nesterov=True)
        lr_scheduler = ScaledPolyLRScheduler(optimizer, self.initial_lr, self.num_epochs)
        return optimizer, lr_scheduler

    def load_checkpoint(self, filename_or_checkpoint: dict | str) -> None:
        """nnUNetTrainer's, but the network is the one the checkpoint was trained with (``--c``, ``--val``).

        ``nnUNetv2_train --c`` / ``--val`` rebuild the trainer from the preprocessed plans and the *current* class
        constants; if the variant's defaults changed since training started (a newer nnunet-tubeconv), the weights
        would not fit. The checkpoint's own plans (``init_args["plans"]``) hold the architecture entry it was
        trained with, so that entry is used instead, and the switch is logged.
        """
        if isinstance(filename_or_checkpoint, (str, os.PathLike)):
            # mmap: read the small plans part without loading the weights twice into memory
            peek = torch.load(filename_or_checkpoint, map_location="cpu", weights_only=False, mmap=True)
            self.adopt_checkpoint_architecture(peek)
            del peek
            super().load_checkpoint(str(filename_or_checkpoint))
        else:
            self.adopt_checkpoint_architecture(filename_or_checkpoint)
            super().load_checkpoint(filename_or_checkpoint)

    def adopt_checkpoint_architecture(self, checkpoint: Mapping[str, Any]) -> bool:
        """Use the architecture entry stored in ``checkpoint`` for this configuration; True if it differed.

        Raises ``ValueError`` if it differs and the network is already built (call before ``initialize``, as
        nnU-Net's ``load_checkpoint`` does for ``--c`` and ``--val``).
        """
        plans = (checkpoint.get("init_args") or {}).get("plans") or {}
        saved = (plans.get("configurations") or {}).get(self.configuration_name, {}).get("architecture")
        current = self.plans_manager.plans["configurations"][self.configuration_name].get("architecture")
        if saved is None or saved == current:
            return False
        if self.was_initialized:
            raise ValueError(
                f"{type(self).__name__}: the checkpoint was trained with another architecture entry than the one "
                f"this trainer built (block options {_block_options(saved)} vs {_block_options(current)}); load it "
                f"before initialize() so that the network is built from the checkpoint's entry"
            )
        self.print_to_log_file(
            f"The checkpoint was trained with block options {_block_options(saved)}; the current defaults would give "
            f"{_block_options(current)}. Building the checkpoint's network.",
            also_print_to_console=True,
        )
        self.plans_manager.plans["configurations"][self.configuration_name]["architecture"] = copy.deepcopy(saved)
        self.plans_manager = PlansManager(self.plans_manager.plans)  # fresh: get_configuration is cached
        self.configuration_manager = self.plans_manager.get_configuration(self.configuration_name)
        return True

    @classmethod
    def resolve_architecture(cls, architecture: Mapping[str, Any]) -> dict:
        """The architecture entry this trainer builds from a plans entry (a new dict; the input is not touched).

        Raises ``ValueError`` (naming the trainer, the network class and what is supported) when the entry is
        none of the supported classes (PlainConvUNet, ResidualEncoderUNet, ours).
        """
        from nnunet_tubeconv.architectures import (
            OUR_CLASSES,
            VARIANTS,
            host_class,
            unsupported_class_message,
            variant_architecture,
        )
        from nnunet_tubeconv.trainers import TRAINER_MODULES

        missing = [k for k in ARCHITECTURE_KEYS if k not in architecture]
        if missing:
            raise ValueError(
                f"{cls.__name__}: the plans' architecture entry lacks {missing}; needed: {ARCHITECTURE_KEYS}"
            )
        name = architecture["network_class_name"]
        if cls.variant is None:
            # No variant: only an entry that already describes one of our networks can be built, as it stands.
            if name not in OUR_CLASSES:
                raise ValueError(
                    f"{cls.__name__} sets no variant, so it only rebuilds plans that already name an nnunet-tubeconv "
                    f"network {list(OUR_CLASSES)}, but these plans name {name!r}. Use one of our trainers "
                    f"({', '.join(TRAINER_MODULES)}) or set `variant` to one of {sorted(VARIANTS)} in your subclass."
                )
            if cls.block_options:
                raise ValueError(f"{cls.__name__} sets block_options but no variant; set `variant` as well")
            return copy.deepcopy(dict(architecture))
        if host_class(name) is None:
            raise ValueError(
                f"{cls.__name__}: {unsupported_class_message(name)}. Train with plans whose configurations name one "
                f"of these, e.g. the default nnUNetPlans (nnUNetv2_plan_and_preprocess -d ID, then -p nnUNetPlans) "
                f"or a ResEnc preset (-pl nnUNetPlannerResEncM, then -p nnUNetResEncUNetMPlans)."
            )
        try:
            return variant_architecture(
                copy.deepcopy(dict(architecture)),
                cls.variant,
                None if cls.block_options is None else copy.deepcopy(dict(cls.block_options)),
            )
        except ValueError as e:
            raise ValueError(f"{cls.__name__} (variant {cls.variant!r}, network class {name!r}): {e}") from e

    @classmethod
    def plans_with_architecture(cls, plans: Mapping[str, Any], configuration: str) -> dict:
        """A deep copy of ``plans`` whose ``configuration`` entry holds the architecture this trainer builds.

        The entry is written into the configuration itself (not into the one it inherits from), so that
        ``3d_cascade_fullres`` gets it without touching ``3d_fullres``.
        """
        plans = plans_copy(plans, configuration, cls.__name__)
        resolved = PlansManager(plans).get_configuration(configuration)
        plans["configurations"][configuration]["architecture"] = cls.resolve_architecture(architecture_entry(resolved))
        return plans

    @classmethod
    def build_network_architecture(
        cls,
        plans_manager: PlansManager,
        configuration_manager: ConfigurationManager,
        num_input_channels: int,
        num_output_channels: int,
        enable_deep_supervision: bool = True,
    ) -> nn.Module:
        """Build the network for one configuration; inference calls this on the class.

        ``num_input_channels`` counts image channels plus, for ``3d_cascade_fullres``, one channel per foreground
        label of the previous stage's segmentation. The network maps ``(B, num_input_channels, *patch_size)`` to
        ``(B, num_output_channels, *patch_size)`` (a list, finest first, with deep supervision).
        """
        entry = cls.resolve_architecture(architecture_entry(configuration_manager))
        # nnUNetTrainer's builder turns the entry into a module (pydoc.locate + He init): reuse it, so that any
        # other override further down a user's MRO still applies.
        return super().build_network_architecture(
            plans_manager, with_architecture(configuration_manager, entry), num_input_channels, num_output_channels,
            enable_deep_supervision,
        )
