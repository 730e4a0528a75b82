"""Capacity-matched vanilla nnU-Net: a PlainConvUNet (or, on ResEnc plans, a ResidualEncoderUNet) whose stage widths
are scaled to match a variant's cost.

The control arm for "the block helps" versus "more capacity helps": same plans, same network class, same training,
only ``features_per_stage`` grows until the vanilla network costs what the named variant (on the same plans entry)
costs. Two measures:

``params``
    trainable parameters of the network as nnU-Net builds it (deep-supervision heads included), built on the meta
    device (no memory, milliseconds);
``flops``
    floating-point operations of one training step (forward + backward, batch 1) counted by
    ``torch.utils.flop_counter.FlopCounterMode``. It counts convolutions, transposed convolutions and matrix
    products; interpolated reads of the snake / deformable convolutions (gathers) count zero, so for those variants
    it under-states their work. Counted on twice the smallest input the plans allow (the product of the strides
    per axis; twice, because instance normalisation needs more than one voxel at the bottleneck): convolution FLOPs
    are proportional to the number of voxels, so the match holds at any patch size. The PlainConvUNet is counted on
    the meta device (shapes only), the variant once on the CPU (its custom kernels need real tensors).

How the width is chosen: one multiplier ``m`` scales every stage's width (the capped deep stages too, so the shape
of the U-Net is kept): ``f_i = max(multiple, round(m * f_i / multiple) * multiple)``. The cost is non-decreasing in
``m``; bisection (40 steps on ``m`` in [1/4, 8]) brackets the target, and the bracketing width vector whose cost is
nearer the target wins (ties: the smaller). ``multiple = 1`` (exact integers, the default) gives the closest match;
``multiple = 8`` gives widths friendly to tensor cores, at the cost of a coarser match.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from nnunet_tubeconv.architectures.variants import (
    HOSTS,
    VARIANTS,
    is_plain_conv_unet,
    is_resenc_unet,
    variant_architecture,
)

#: what a Wide network can be matched on
MATCH_MEASURES: tuple[str, ...] = ("params", "flops")


@dataclass(frozen=True)
class WidthMatch:
    """The outcome of :func:`match_width`; ``as_dict`` is what the Wide trainer records in the plans."""

    variant: str
    measure: str
    multiple: int
    factor: float
    base_features_per_stage: tuple[int, ...]
    features_per_stage: tuple[int, ...]
    target: int
    achieved: int
    vanilla: int

    def as_dict(self) -> dict[str, Any]:
        """The fields by name, the widths as lists (as the plans' JSON holds them)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def _is_vanilla(name: Any) -> bool:
    return isinstance(name, str) and (is_plain_conv_unet(name) or is_resenc_unet(name))


def _check_plain(entry: Mapping[str, Any]) -> None:
    name = entry.get("network_class_name") if isinstance(entry, Mapping) else None
    if not _is_vanilla(name):
        raise ValueError(f"a Wide network is widened from one of nnU-Net's own plans entries {list(HOSTS)} (default "
                         f"or ResEnc plans), got network class {name!r}")


def scaled_features(base: Sequence[int], factor: float, multiple: int = 1) -> list[int]:
    """``base`` widths times ``factor``, rounded to the nearest multiple of ``multiple`` (at least ``multiple``)."""
    if multiple < 1:
        raise ValueError(f"width multiple must be >= 1, got {multiple}")
    return [max(multiple, round(f * factor / multiple) * multiple) for f in base]


def widened_entry(entry: Mapping[str, Any], features_per_stage: Sequence[int]) -> dict:
    """A deep copy of a PlainConvUNet / ResidualEncoderUNet plans entry with other stage widths."""
    _check_plain(entry)
    out = copy.deepcopy(dict(entry))
    if len(features_per_stage) != out["arch_kwargs"]["n_stages"]:
        raise ValueError(f"{len(features_per_stage)} widths for {out['arch_kwargs']['n_stages']} stages")
    out["arch_kwargs"]["features_per_stage"] = [int(f) for f in features_per_stage]
    return out


def _build(entry: Mapping[str, Any], in_channels: int, out_channels: int, device: str):
    import torch
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    with torch.device(device):
        return get_network_from_plans(entry["network_class_name"], entry["arch_kwargs"],
                                      entry["_kw_requires_import"], in_channels, out_channels,
                                      allow_init=False, deep_supervision=True)


def parameter_count(entry: Mapping[str, Any], in_channels: int, out_channels: int) -> int:
    """Trainable parameters of the network a plans entry builds (on the meta device)."""
    net = _build(entry, in_channels, out_channels, "meta")
    return sum(p.numel() for p in net.parameters() if p.requires_grad)


def flops_input(entry: Mapping[str, Any]) -> list[int]:
    """The input FLOPs are counted on: twice the product of the strides per axis."""
    strides = entry["arch_kwargs"]["strides"]
    dim = len(entry["arch_kwargs"]["kernel_sizes"][0])
    return [2 * math.prod((s if isinstance(s, int) else s[d]) for s in strides) for d in range(dim)]


def training_flops(entry: Mapping[str, Any], in_channels: int, out_channels: int,
                   patch_size: Sequence[int] | None = None) -> int:
    """FLOPs of forward + backward (batch 1, ``patch_size`` or :func:`flops_input`), FlopCounterMode."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    device = "meta" if _is_vanilla(entry["network_class_name"]) else "cpu"
    net = _build(entry, in_channels, out_channels, device).train()
    size = list(patch_size) if patch_size is not None else flops_input(entry)
    x = torch.zeros((1, in_channels, *size), device=device)
    with FlopCounterMode(display=False) as counter:
        out = net(x)
        out = out if isinstance(out, (list, tuple)) else [out]
        sum(o.float().mean() for o in out).backward()
    return int(counter.get_total_flops())


def _cost(measure: str):
    if measure == "params":
        return parameter_count
    if measure == "flops":
        return training_flops
    raise ValueError(f"unknown width-matching measure {measure!r}; allowed are {list(MATCH_MEASURES)}")


def match_width(
    entry: Mapping[str, Any],
    variant: str = "dsconv",
    in_channels: int = 1,
    out_channels: int = 2,
    measure: str = "params",
    multiple: int = 1,
    options: Mapping[str, Any] | None = None,
) -> WidthMatch:
    """Widths of ``entry``'s network (PlainConvUNet or ResidualEncoderUNet) whose ``measure`` is nearest to that of
    ``variant`` on the same entry."""
    _check_plain(entry)
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r} to match; valid are {sorted(VARIANTS)}")
    cost = _cost(measure)
    if not isinstance(multiple, int) or multiple < 1:
        raise ValueError(f"width multiple must be an integer >= 1, got {multiple!r}")
    base = [int(f) for f in entry["arch_kwargs"]["features_per_stage"]]
    target = cost(variant_architecture(dict(entry), variant, None if options is None else dict(options)),
                  in_channels, out_channels)
    cache: dict[tuple[int, ...], int] = {}

    def at(factor: float) -> tuple[tuple[int, ...], int]:
        feats = tuple(scaled_features(base, factor, multiple))
        if feats not in cache:
            cache[feats] = cost(widened_entry(entry, feats), in_channels, out_channels)
        return feats, cache[feats]

    lo, hi = 0.25, 8.0
    if at(hi)[1] < target:
        raise ValueError(f"{variant} costs {target} {measure}, more than vanilla at 8x width; cannot match")
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        if at(mid)[1] < target:
            lo = mid
        else:
            hi = mid
    (f_lo, c_lo), (f_hi, c_hi) = at(lo), at(hi)
    feats, achieved, factor = (f_lo, c_lo, lo) if abs(c_lo - target) <= abs(c_hi - target) else (f_hi, c_hi, hi)
    return WidthMatch(variant, measure, multiple, round(factor, 6), tuple(base), feats, int(target), int(achieved),
                      int(at(1.0)[1] if multiple == 1 else cost(dict(entry), in_channels, out_channels)))
