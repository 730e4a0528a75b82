"""CPU plans: nnU-Net's own plans cut, by one written rule per dimension, to what a 2-core CPU trains in minutes.

Real-data comparisons on a CPU cannot use nnU-Net's planned patch, batch and widths (an iteration would take
seconds to minutes). They use nnU-Net's plans cut by a fixed rule, decided before any run and the same for every
arm and data set of a dimension (:data:`CPU_CUTS`):

* the first ``stages`` stages of nnU-Net's planned network (its kernels and strides kept), widths
  ``base_features * 2**i`` capped at 256, nnU-Net's convolutions per stage kept;
* ``batch`` patches of about ``patch_voxels`` voxels: nnU-Net's planned patch scaled by one factor in every axis
  (its aspect ratio kept), each axis rounded to a multiple of its cumulative stride, at least two of them, and at
  most the multiple of the stride nearest above the median image size;
* spacing, normalisation, resampling and the data identifier are nnU-Net's: the plans are preprocessed like
  nnU-Net's own under their own name.

2D: patch 128 x 128 (nnU-Net's square patch of a retina image scales to exactly that), batch 2, 6 stages, widths
16..256: the plans of the DRIVE snake ablation. 3D: about 32^3 voxels, batch 2, 5 stages, widths 16..256: a 3D
iteration then costs about what a 2D one does (the synthetic 3D trees trained at 0.19 s per iteration against
DRIVE's 0.18 s on the 2-core development machine).

``nnUNetPlannerCPU`` is nnU-Net's default planner with this cut applied to ``2d`` and ``3d_fullres`` after planning
(``3d_lowres`` and the cascade are dropped: the cut plans are for cross-validation on a CPU). The benchmark harness
plans it like any planner named by a dotted path in a suite's ``[planning.planners]``.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from batchgenerators.utilities.file_and_folder_operations import join, save_json
from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner
from nnunetv2.paths import nnUNet_preprocessed

#: plans name of the cut plans in the real-data suites
CPU_PLANS = "nnUNetPlans_cpu"
#: the configurations the cut applies to; the others are dropped from the cut plans
CUT_CONFIGURATIONS = ("2d", "3d_fullres")


@dataclass(frozen=True)
class CpuCut:
    """One dimension's rule: patch voxels, batch size, number of stages, width of the first stage."""

    patch_voxels: int
    batch: int
    stages: int
    base_features: int
    max_features: int = 256


#: the written rule, per dimension (see the module docstring for why these numbers)
CPU_CUTS: dict[int, CpuCut] = {
    2: CpuCut(patch_voxels=128 * 128, batch=2, stages=6, base_features=16),
    3: CpuCut(patch_voxels=32 * 32 * 32, batch=2, stages=5, base_features=16),
}


def _divisors(strides: Sequence[Sequence[int]], dim: int) -> list[int]:
    return [int(math.prod(s[ax] for s in strides)) for ax in range(dim)]


def scaled_patch(planned: Sequence[int], divisors: Sequence[int], voxels: int,
                 median_shape: Sequence[float] | None = None) -> list[int]:
    """``planned`` scaled by one factor to about ``voxels`` voxels, each axis a multiple of its divisor (at least
    two), and no larger than the median image needs (its size rounded up to the divisor)."""
    factor = (voxels / math.prod(planned)) ** (1 / len(planned))
    out = []
    for ax, (p, d) in enumerate(zip(planned, divisors)):
        edge = max(2 * d, round(p * factor / d) * d)
        if median_shape is not None:
            edge = min(edge, max(2 * d, math.ceil(median_shape[ax] / d) * d))
        out.append(edge)
    return out


def cut_plans(plans: dict[str, Any], name: str, configuration: str, patch: int | Sequence[int], batch: int,
              stages: int, base_features: int, max_features: int = 256) -> dict[str, Any]:
    """A copy of nnU-Net ``plans`` named ``name`` with ``configuration`` cut: its first ``stages`` stages, widths
    ``base_features * 2**i`` (at most ``max_features``), ``patch`` (one edge for every axis, or one per axis) and
    ``batch``. The data identifier is kept. Raises ``ValueError`` naming what is allowed."""
    plans = copy.deepcopy(plans)
    plans["plans_name"] = name
    if configuration not in plans["configurations"]:
        raise ValueError(f"configuration {configuration!r} is not in the plans; they have "
                         f"{sorted(plans['configurations'])}")
    conf = plans["configurations"][configuration]
    if "architecture" not in conf:
        raise ValueError(f"configuration {configuration!r} inherits its network; cut a configuration with its own "
                         "architecture (2d or 3d_fullres)")
    kw = conf["architecture"]["arch_kwargs"]
    if not 3 <= stages <= kw["n_stages"]:
        raise ValueError(f"stages must be between 3 and the planned {kw['n_stages']}, got {stages}")
    kw["n_stages"] = stages
    for key in ("features_per_stage", "kernel_sizes", "strides", "n_conv_per_stage"):
        kw[key] = kw[key][:stages]
    kw["n_conv_per_stage_decoder"] = kw["n_conv_per_stage_decoder"][: stages - 1]
    dim = len(conf["patch_size"])
    edges = [int(patch)] * dim if isinstance(patch, int) else [int(p) for p in patch]
    if len(edges) != dim:
        raise ValueError(f"patch must have {dim} edges for configuration {configuration!r}, got {list(patch)}")
    divisors = _divisors(kw["strides"], dim)
    if any(e % d or e // d < 2 for e, d in zip(edges, divisors)):
        raise ValueError(f"each patch edge must be a multiple of its axis's cumulative stride {divisors} and at least "
                         f"twice it for these plans, got {edges}")
    conf["patch_size"] = edges
    conf["batch_size"] = int(batch)
    kw["features_per_stage"] = [min(base_features * 2**i, max_features) for i in range(stages)]
    return plans


def cpu_cut(plans: dict[str, Any], name: str = CPU_PLANS) -> dict[str, Any]:
    """nnU-Net ``plans`` with :data:`CPU_CUTS` applied to ``2d`` and ``3d_fullres`` (those it has); every other
    configuration dropped."""
    out = copy.deepcopy(plans)
    out["plans_name"] = name
    configs = out["configurations"]
    for c in [c for c in configs if c not in CUT_CONFIGURATIONS]:
        del configs[c]
    for c in CUT_CONFIGURATIONS:
        if c not in configs:
            continue
        conf = configs[c]
        dim = len(conf["patch_size"])
        rule = CPU_CUTS[dim]
        kw = conf["architecture"]["arch_kwargs"]
        stages = min(rule.stages, kw["n_stages"])
        divisors = _divisors(kw["strides"][:stages], dim)
        patch = scaled_patch(conf["patch_size"], divisors, rule.patch_voxels, conf.get("median_image_size_in_voxels"))
        out = cut_plans(out, name, c, patch, rule.batch, stages, rule.base_features, rule.max_features)
    return out


class nnUNetPlannerCPU(ExperimentPlanner):
    """nnU-Net's default planner, then :func:`cpu_cut` on its plans (written under the plans name)."""

    def plan_experiment(self):
        plans = cpu_cut(super().plan_experiment(), self.plans_identifier)
        self.plans = plans
        # written directly: nnU-Net's save_plans would merge back the configurations the cut dropped
        save_json(plans, join(nnUNet_preprocessed, self.dataset_name, self.plans_identifier + ".json"), sort_keys=False)
        print(f"CPU cut: {json.dumps({c: v['patch_size'] for c, v in plans['configurations'].items()})}")
        return plans
