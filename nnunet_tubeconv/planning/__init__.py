"""Memory-aware planning: nnU-Net planner presets whose memory estimate knows the variant's network.

* :mod:`~nnunet_tubeconv.planning.estimate`: the estimate on nnU-Net's scale
  (``DNA_vanilla * ours_variant / ours_vanilla``), CPU measurement of what autograd keeps, the GPU memory model.
* :mod:`~nnunet_tubeconv.planning.planners`: :class:`TubePlanner` and one preset per variant (``PLANNERS``),
  writing plans named ``nnUNetPlans_<variant>_<GB>G``.
* :mod:`~nnunet_tubeconv.planning.plan`: ``nnunet-tubeconv plan -d ID --variant dsconv --gpu-memory 8``.

Names are loaded on first access, so importing this package imports neither torch nor nnU-Net.
"""

from __future__ import annotations

import importlib

_LAZY: dict[str, str] = {
    "VANILLA": "estimate",
    "GpuMemoryModel": "estimate",
    "check_gpu_memory": "estimate",
    "dna_vanilla_estimate": "estimate",
    "measure_saved": "estimate",
    "network_estimate": "estimate",
    "planner_estimate": "estimate",
    "variant_entry": "estimate",
    "variant_ratio": "estimate",
    "PLANNERS": "planners",
    "PRESET_TARGETS_GB": "planners",
    "TubePlanner": "planners",
    "all_variants": "planners",
    "planner_class": "planners",
    "plans_name_for": "planners",
    "trainer_for": "planners",
}

__all__ = [
    "PLANNERS",
    "PRESET_TARGETS_GB",
    "VANILLA",
    "GpuMemoryModel",
    "TubePlanner",
    "all_variants",
    "check_gpu_memory",
    "dna_vanilla_estimate",
    "measure_saved",
    "network_estimate",
    "planner_class",
    "planner_estimate",
    "plans_name_for",
    "trainer_for",
    "variant_entry",
    "variant_ratio",
]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
