"""The host networks our blocks go into: nnU-Net's plain U-Net and its residual-encoder presets (defined once).

nnU-Net 2.5+ ships four planners whose plans every trainer of ours accepts (Isensee et al., "nnU-Net Revisited",
MICCAI 2024, recommend the ResEnc presets as the new default):

============  ==========================  ========================  =========  ==============================
host          plans name                  nnU-Net planner           target GB  network
============  ==========================  ========================  =========  ==============================
``plain``     ``nnUNetPlans``             ``ExperimentPlanner``      8         ``PlainConvUNet``
``resenc-m``  ``nnUNetResEncUNetMPlans``  ``nnUNetPlannerResEncM``   8         ``ResidualEncoderUNet``
``resenc-l``  ``nnUNetResEncUNetLPlans``  ``nnUNetPlannerResEncL``  24         ``ResidualEncoderUNet``
``resenc-xl`` ``nnUNetResEncUNetXLPlans`` ``nnUNetPlannerResEncXL`` 40         ``ResidualEncoderUNet``
============  ==========================  ========================  =========  ==============================

Our memory-aware presets write ``<plans name>_<variant>_<GB>G`` (``nnUNetPlans_dsconv_8G``,
``nnUNetResEncUNetLPlans_dsconv_24G``); :func:`parse_preset_plans_name` reads such a name back, which is how the
benchmark harness plans them by itself. This module imports neither torch nor nnU-Net.
"""

from __future__ import annotations

import copy
import difflib
import re
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Host:
    """One host: our name for it, nnU-Net's plans name and planner class name, its memory target, a short label."""

    name: str
    plans: str
    planner: str
    gpu_memory_gb: float
    label: str

    @property
    def residual(self) -> bool:
        return self.name != PLAIN


#: the default host (nnU-Net's original configuration)
PLAIN = "plain"
#: every host, by our name (``nnunet-tubeconv plan --preset``, ``bench-train --host``)
HOST_PRESETS: dict[str, Host] = {
    h.name: h
    for h in (
        Host(PLAIN, "nnUNetPlans", "ExperimentPlanner", 8.0, "plain U-Net"),
        Host("resenc-m", "nnUNetResEncUNetMPlans", "nnUNetPlannerResEncM", 8.0, "ResEnc M"),
        Host("resenc-l", "nnUNetResEncUNetLPlans", "nnUNetPlannerResEncL", 24.0, "ResEnc L"),
        Host("resenc-xl", "nnUNetResEncUNetXLPlans", "nnUNetPlannerResEncXL", 40.0, "ResEnc XL"),
    )
}
#: nnU-Net's default plans name (the plain host's)
DEFAULT_PLANS = HOST_PRESETS[PLAIN].plans
#: nnU-Net's planner class name for each of its plans names
NNUNET_PLANNERS: dict[str, str] = {h.plans: h.planner for h in HOST_PRESETS.values()}

_PRESET_NAME = re.compile(r"^(?P<base>[A-Za-z0-9]+)_(?P<variant>[a-z0-9_+]+?)_(?P<gb>\d+(?:\.\d+)?)G$")


def check_host(name: object) -> Host:
    """The host called ``name``, or ``ValueError`` listing the allowed names."""
    if not isinstance(name, str) or name not in HOST_PRESETS:
        raise ValueError(f"unknown host/preset {name!r}; allowed: {list(HOST_PRESETS)}")
    return HOST_PRESETS[name]


def host_of_plans(plans: str) -> Host | None:
    """The host whose plans (nnU-Net's, or one of our presets' ``<plans>_<variant>_<GB>G``) ``plans`` names."""
    for h in HOST_PRESETS.values():
        if plans == h.plans:
            return h
    parsed = parse_preset_plans_name(plans)
    return None if parsed is None else parsed[0]


def host_label(plans: str) -> str:
    """A short label of the host a plans name builds on (``"ResEnc M"``), or the plans name itself."""
    h = host_of_plans(plans)
    return plans if h is None else h.label


def preset_plans_name(host: str, variant: str, gb: float) -> str:
    """``<host plans>_<variant>_<GB>G``: what our preset for ``variant`` on ``host`` at ``gb`` writes."""
    return f"{check_host(host).plans}_{variant}_{float(gb):g}G"


def parse_preset_plans_name(plans: str) -> tuple[Host, str, float] | None:
    """``(host, variant, GB)`` of one of our presets' plans names, or None (the variant is not checked here)."""
    m = _PRESET_NAME.match(plans)
    if not m:
        return None
    for h in HOST_PRESETS.values():
        if m.group("base") == h.plans:
            return h, m.group("variant"), float(m.group("gb"))
    return None


def close_plans_names(plans: str, known: list[str]) -> list[str]:
    """Known plans names that look like a typo of ``plans`` (for error messages): the one that differs only in case,
    else up to three close ones."""
    same = [k for k in known if k.lower() == plans.lower()]
    return same or difflib.get_close_matches(plans, known, n=3, cutoff=0.75)


def resenc_entry(plain_entry: dict[str, Any], host: str = "resenc-m") -> dict[str, Any]:
    """The ``ResidualEncoderUNet`` entry nnU-Net's ResEnc planner of ``host`` writes for the same stages, widths,
    kernels and strides as a ``PlainConvUNet`` entry (for benchmarks on a fixed plan), built by
    :func:`~nnunet_tubeconv.architectures.resenc_unet_entry` (the planners' residual blocks per stage, one
    convolution per decoder stage); other layer settings are kept. M, L and XL build the same network for the same
    stages; they differ in the patch and batch their planners pick.
    """
    from nnunet_tubeconv.architectures import resenc_unet_entry

    h = check_host(host)
    if not h.residual:
        raise ValueError(f"host {host!r} is not a residual-encoder host; allowed: "
                         f"{[n for n, x in HOST_PRESETS.items() if x.residual]}")
    kw = copy.deepcopy(dict(plain_entry["arch_kwargs"]))
    dim = len(kw["strides"][0])
    out = resenc_unet_entry(dim, kw["features_per_stage"], kw["strides"], kw["kernel_sizes"])
    for k, v in kw.items():  # the plain entry's layer settings (norm, nonlinearity, bias, dropout)
        if k in out["arch_kwargs"] and k not in ("n_conv_per_stage_decoder",):
            out["arch_kwargs"][k] = v
    return out
