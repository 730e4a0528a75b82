"""``nnUNetTrainerWide``: vanilla nnU-Net whose stage widths are scaled to match a variant's parameters (or FLOPs).

On default plans the network is a widened PlainConvUNet, on ResEnc plans (``-p nnUNetResEncUNetMPlans`` etc.) a
widened ResidualEncoderUNet matched against the variant on the ResEnc host.

The capacity control: if a block variant beats vanilla nnU-Net, does a vanilla network with as many parameters
beat it too? Everything but ``features_per_stage`` is stock nnU-Net (same network class, loss, schedule).
How the widths are found: :mod:`nnunet_tubeconv.architectures.wide`.

Options (class constants; override them in a subclass):

* ``wide_match_variant``: the variant to match (default ``"dsconv"``, the snake network on the same plans);
* ``wide_match_measure``: ``"params"`` (default) or ``"flops"`` (training FLOPs per iteration);
* ``wide_width_multiple``: round widths to multiples of this (default 1: exact integers, the closest match).

The trainer writes the widened entry and a record of the match (``configuration["tubeconv_wide"]``: variant,
measure, factor, base and new widths, target and achieved cost) into its copy of the plans, which nnU-Net saves as
the model folder's ``plans.json``; inference then rebuilds exactly that network. Combine with a loss mixin as with
any trainer: ``class T(SkeletonRecallMixin, nnUNetTrainerWide): pass``.

Imported by nnU-Net's ``nnUNet_extTrainer`` lookup as a top-level module: absolute imports only.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch import nn

from nnunet_tubeconv.architectures.wide import match_width, widened_entry
from nnunet_tubeconv.trainers.tubeconv_base import architecture_entry, plans_copy, with_architecture

#: the configuration key that records a resolved width match (and marks the entry as already widened)
WIDE_KEY = "tubeconv_wide"

_CUDA = torch.device("cuda")


class nnUNetTrainerWide(nnUNetTrainer):
    """Vanilla PlainConvUNet / ResidualEncoderUNet, widths scaled so that its parameters match
    ``nnUNetTrainerDSConv``'s network on the same plans."""

    wide_match_variant: ClassVar[str] = "dsconv"
    wide_match_measure: ClassVar[str] = "params"
    wide_width_multiple: ClassVar[int] = 1

    def __init__(
        self,
        plans: dict,
        configuration: str,
        fold: int,
        dataset_json: dict,
        device: torch.device = _CUDA,
    ):
        plans = self.plans_with_wide_architecture(plans, configuration, dataset_json)
        super().__init__(plans, configuration, fold, dataset_json, device)
        record = self.plans_manager.plans["configurations"][configuration][WIDE_KEY]
        self.print_to_log_file(
            f"Wide: widths {record['base_features_per_stage']} -> {record['features_per_stage']} "
            f"(x{record['factor']:.3f}), {record['measure']} {record['achieved']} "
            f"vs {record['variant']}'s {record['target']} (vanilla {record['vanilla']})"
        )

    @classmethod
    def resolve_wide(cls, cm: ConfigurationManager, in_channels: int, out_channels: int) -> tuple[dict, dict]:
        """(widened architecture entry, match record) for one configuration; an entry already widened stays."""
        record = cm.configuration.get(WIDE_KEY)
        if record is not None:
            return architecture_entry(cm), copy.deepcopy(record)
        try:
            match = match_width(architecture_entry(cm), cls.wide_match_variant, in_channels, out_channels,
                                cls.wide_match_measure, cls.wide_width_multiple)
        except ValueError as e:
            raise ValueError(f"{cls.__name__}: {e}") from e
        return widened_entry(architecture_entry(cm), match.features_per_stage), match.as_dict()

    @classmethod
    def plans_with_wide_architecture(cls, plans: Mapping[str, Any], configuration: str, dataset_json: dict) -> dict:
        """A deep copy of ``plans`` whose ``configuration`` holds the widened entry and the match record."""
        plans = plans_copy(plans, configuration, cls.__name__)
        pm = PlansManager(plans)
        cm = pm.get_configuration(configuration)
        n_in = determine_num_input_channels(pm, cm, dataset_json)
        n_out = pm.get_label_manager(dataset_json).num_segmentation_heads
        entry, record = cls.resolve_wide(cm, n_in, n_out)
        plans["configurations"][configuration]["architecture"] = entry
        plans["configurations"][configuration][WIDE_KEY] = record
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
        """The widened network; a model folder's plans (already widened) are built as they stand."""
        entry, record = cls.resolve_wide(configuration_manager, num_input_channels, num_output_channels)
        return super().build_network_architecture(
            plans_manager, with_architecture(configuration_manager, entry, **{WIDE_KEY: record}), num_input_channels,
            num_output_channels, enable_deep_supervision,
        )
