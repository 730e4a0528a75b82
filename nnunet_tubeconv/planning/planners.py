"""Planner presets: nnU-Net's default planner with a memory estimate that knows the variant's network.

nnU-Net chooses patch and batch size from a memory estimate of its plain U-Net (Isensee et al., Nature Methods
2021). A variant with snakes or DLK blocks trained on those plans keeps more for backward than the estimate
assumed, and runs out of memory (or wastes it, for a cheaper network). nnU-Net's documented remedy is a planner
whose estimate knows the network; these presets are exactly that, and nothing more:

* :meth:`TubePlanner.static_estimate_VRAM_usage` is nnU-Net's estimate hook (the planner calls it as
  ``self.static_estimate_VRAM_usage(...)``), overridden per instance to return
  :func:`~nnunet_tubeconv.planning.estimate.planner_estimate`: DNA's vanilla count times the variant's honest
  memory ratio, on the scale of nnU-Net's reference values (``UNet_reference_val_3d`` / ``_2d``, scaled linearly
  to the memory target as nnU-Net's ``-gpu_memory_target`` does);
* :meth:`TubePlanner.get_plans_for_configuration` post-processes ``super()``'s configuration, swapping the
  PlainConvUNet entry for the variant's (:func:`~nnunet_tubeconv.architectures.variant_architecture`, which
  deep-copies);
* :meth:`TubePlanner.generate_data_identifier` reuses the default planner's preprocessed data for ``2d`` and
  ``3d_fullres`` (same spacing, normalisation and transposition, as nnU-Net's ResEnc presets do). ``3d_lowres``
  gets its own identifier: its spacing grows until its patch covers a quarter of the median image, so it depends on
  the patch, hence on the estimate. With a custom target spacing, transposition or preprocessor every
  configuration gets its own identifier.

The plans name says variant and target: ``nnUNetPlans_<variant>_<GB>G`` (``nnUNetPlans_dsconv_8G``). 8 GB is
nnU-Net's default target; 24 and 40 GB are the targets of its ResEnc L and XL presets. ``"vanilla"`` plans the
plain network with the same machinery (identical to ``nnUNetPlans`` at 8 GB), as the baseline at other targets.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, ClassVar

from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner
from nnunetv2.experiment_planning.experiment_planners.residual_unets import residual_encoder_unet_planners as _resenc

from nnunet_tubeconv.planning.estimate import VANILLA, check_gpu_memory, planner_estimate, variant_entry
from nnunet_tubeconv.planning.hosts import DEFAULT_PLANS, HOST_PRESETS, PLAIN, check_host, preset_plans_name

#: the memory targets with a meaning in nnU-Net: its default (8) and its ResEnc L / XL presets (24, 40)
PRESET_TARGETS_GB: tuple[int, ...] = tuple(sorted({int(h.gpu_memory_gb) for h in HOST_PRESETS.values()}))


def all_variants() -> list[str]:
    """``"vanilla"`` and every key of ``VARIANTS``, sorted after vanilla."""
    from nnunet_tubeconv.architectures import VARIANTS

    return [VANILLA, *sorted(VARIANTS)]


def check_variant(variant: Any) -> str:
    if variant not in all_variants():
        raise ValueError(f"unknown variant {variant!r}; valid variants are {all_variants()}")
    return variant


def plans_name_for(variant: str, gpu_memory_target_in_gb: float, host: str = PLAIN) -> str:
    """``<host plans>_<variant>_<GB>G``, e.g. ``nnUNetPlans_dsconv_8G``, ``nnUNetResEncUNetLPlans_dsconv_24G``
    (``12.5G`` for a fractional target)."""
    gb = check_gpu_memory(gpu_memory_target_in_gb)
    return preset_plans_name(host, check_variant(variant), gb)


class TubePlanner(ExperimentPlanner):
    """nnU-Net's ``ExperimentPlanner`` planning for ``variant`` (class constant) at ``gpu_memory_target_in_gb``.

    Same constructor as ``ExperimentPlanner``; ``plans_name=None`` gives :func:`plans_name_for`. Subclasses set
    ``variant`` (and optionally ``block_options``, laid over the variant's) and nothing else.
    """

    variant: ClassVar[str] = VANILLA
    block_options: ClassVar[Mapping[str, Any] | None] = None
    #: the host network (:data:`~nnunet_tubeconv.planning.hosts.HOST_PRESETS`); a ResEnc preset also subclasses
    #: nnU-Net's planner of that host, whose plans (network, reference values) it then starts from
    host: ClassVar[str] = PLAIN

    def __init__(self, dataset_name_or_id: str | int, gpu_memory_target_in_gb: float | None = None,
                 preprocessor_name: str = "DefaultPreprocessor", plans_name: str | None = None,
                 overwrite_target_spacing: list[float] | tuple[float, ...] | None = None,
                 suppress_transpose: bool = False) -> None:
        gb = check_gpu_memory(check_host(self.host).gpu_memory_gb if gpu_memory_target_in_gb is None
                              else gpu_memory_target_in_gb)
        check_variant(self.variant)
        if self.variant == VANILLA and self.block_options:
            raise ValueError(f"{type(self).__name__}: variant {VANILLA!r} takes no block_options")
        if plans_name is None:
            plans_name = plans_name_for(self.variant, gb, self.host)
        with warnings.catch_warnings():
            # nnU-Net's ResEnc planners warn about a non-standard memory target; ours is deliberate
            warnings.filterwarnings("ignore", message=".*non-standard gpu_memory_target_in_gb.*")
            super().__init__(dataset_name_or_id, gb, preprocessor_name, plans_name, overwrite_target_spacing,
                             suppress_transpose)
        # data written by the default planner is only the same data if nothing that shapes it was changed
        self._shares_default_data = (preprocessor_name == "DefaultPreprocessor" and overwrite_target_spacing is None
                                     and not suppress_transpose)

    def _options(self) -> dict | None:
        return None if self.block_options is None else copy.deepcopy(dict(self.block_options))

    # nnU-Net calls this as self.static_estimate_VRAM_usage(...): an instance method sees the variant
    def static_estimate_VRAM_usage(self, patch_size: tuple[int, ...], input_channels: int, output_channels: int,
                                   arch_class_name: str, arch_kwargs: dict,
                                   arch_kwargs_req_import: tuple[str, ...]) -> int:
        """The variant's estimate on the scale of the reference values (see :mod:`nnunet_tubeconv.planning`)."""
        architecture = {"network_class_name": arch_class_name, "arch_kwargs": arch_kwargs,
                        "_kw_requires_import": list(arch_kwargs_req_import)}
        return planner_estimate(architecture, self.variant, patch_size, input_channels, output_channels,
                                self._options())

    def get_plans_for_configuration(self, spacing, median_shape, data_identifier: str,
                                    approximate_n_voxels_dataset: float, _cache: dict) -> dict:
        plan = copy.deepcopy(super().get_plans_for_configuration(spacing, median_shape, data_identifier,
                                                                 approximate_n_voxels_dataset, _cache))
        if self.variant != VANILLA:
            plan["architecture"] = variant_entry(plan["architecture"], self.variant, self._options())
        return plan

    def generate_data_identifier(self, configuration_name: str) -> str:
        if configuration_name in ("2d", "3d_fullres") and self._shares_default_data:
            return f"{DEFAULT_PLANS}_{configuration_name}"
        return f"{self.plans_identifier}_{configuration_name}"


class nnUNetPlannerVanilla(TubePlanner):
    """nnU-Net's PlainConvUNet; at 8 GB the same configurations as ``nnUNetPlans``."""

    variant = VANILLA


class nnUNetPlannerDSConv(TubePlanner):
    """Plans for ``nnUNetTrainerDSConv`` (DSCNet dynamic snake convolution, Qi et al., ICCV 2023)."""

    variant = "dsconv"


class nnUNetPlannerDLKDFF(TubePlanner):
    """Plans for ``nnUNetTrainerDLKDFF`` (D-Net, Yang et al., arXiv 2403.10674)."""

    variant = "dlkdff"


class nnUNetPlannerScSE(TubePlanner):
    """Plans for ``nnUNetTrainerScSE`` (scSE, Roy et al., MICCAI 2018)."""

    variant = "scse"


class nnUNetPlannerDeformConv(TubePlanner):
    """Plans for ``nnUNetTrainerDeformConv`` (DCNv2, Zhu et al., CVPR 2019)."""

    variant = "deform"


class nnUNetPlannerTubeConv(TubePlanner):
    """Plans for ``nnUNetTrainerTubeConv`` (snakes + DFF + scSE)."""

    variant = "tubeconv"


#: one preset per variant, by variant name
PLANNERS: dict[str, type[TubePlanner]] = {
    c.variant: c
    for c in (nnUNetPlannerVanilla, nnUNetPlannerDSConv, nnUNetPlannerDLKDFF, nnUNetPlannerScSE,
              nnUNetPlannerDeformConv, nnUNetPlannerTubeConv)
}


def _resenc_preset(host: str, variant: str) -> type[TubePlanner]:
    """The preset for ``variant`` on a ResEnc host: our hooks first, then nnU-Net's planner of that host."""
    h = check_host(host)
    base = getattr(_resenc, h.planner)
    return type(f"{h.planner}_{variant}", (TubePlanner, base),
                {"variant": variant, "host": host, "__module__": __name__,
                 "__doc__": f"Plans for variant {variant!r} on nnU-Net's {h.label} ({h.plans}), {h.gpu_memory_gb:g} GB "
                            "by default."})


#: one preset per (ResEnc host, variant), e.g. ``RESENC_PLANNERS["resenc-l", "dsconv"]`` is
#: ``nnUNetPlannerResEncL_dsconv`` (a name of this module, so a planner path can name it)
RESENC_PLANNERS: dict[tuple[str, str], type[TubePlanner]] = {
    (h, v): _resenc_preset(h, v) for h in HOST_PRESETS if h != PLAIN for v in all_variants()
}
globals().update({c.__name__: c for c in RESENC_PLANNERS.values()})


def planner_class(variant: str, block_options: Mapping[str, Any] | None = None, host: str = PLAIN
                  ) -> type[TubePlanner]:
    """The preset for ``variant`` on ``host`` (default: nnU-Net's plain U-Net); with ``block_options``, a subclass
    of it that lays them over the variant's.

    Options are validated here (unknown names and bad values raise ``ValueError``).
    """
    check_variant(variant)
    check_host(host)
    base = PLANNERS.get(variant) if host == PLAIN else RESENC_PLANNERS.get((host, variant))
    if base is None:  # a variant added to VARIANTS after this module was written
        base = (type(f"nnUNetPlanner_{variant}", (TubePlanner,), {"variant": variant}) if host == PLAIN
                else _resenc_preset(host, variant))
    if not block_options:
        return base
    if variant == VANILLA:
        raise ValueError(f"variant {VANILLA!r} places no blocks, so it takes no block options; "
                         f"got {dict(block_options)}")
    from nnunet_tubeconv.architectures.options import check_option_names

    check_option_names(block_options)
    frozen = MappingProxyType(copy.deepcopy(dict(block_options)))
    return type(f"{base.__name__}Custom", (base,), {"block_options": frozen})


def preset_class_path(host: str, variant: str) -> str:
    """``module.ClassName`` of the preset for ``variant`` on ``host`` (what the benchmark harness imports)."""
    return f"{__name__}.{planner_class(variant, host=host).__name__}"


def trainer_for(variant: str) -> str:
    """The ``nnUNetv2_train -tr`` name that trains plans of ``variant``.

    Plans written by a preset already name our network with every block option resolved; each of our trainers
    rebuilds such an entry as it stands, and the variant's own trainer is the one whose name says what it is.
    """
    if check_variant(variant) == VANILLA:
        return "nnUNetTrainer"
    from nnunet_tubeconv.trainers import TRAINERS

    for name, cls in TRAINERS.items():
        if getattr(cls, "variant", None) == variant and not getattr(cls, "block_options", None):
            return name
    raise ValueError(f"no trainer for variant {variant!r} among {sorted(TRAINERS)}")
