"""Block options of :class:`~nnunet_tubeconv.architectures.unet.TubeUNet`: where each block goes, and its settings.

The options are plain JSON (strings, numbers, lists of ints) so that they can live in nnU-Net's plans, under
``arch_kwargs["block_options"]``, next to the ``PlainConvUNet`` keyword arguments. This module imports neither torch
nor nnU-Net: the trainer and the planner can validate options without building a network.

Stage indices
-------------
* Encoder stages are numbered as in the plans: ``0`` is the full-resolution stage, ``n_stages - 1`` the bottleneck.
* Decoder stages and skips are numbered by the resolution they work at, the same way: ``0`` is the full-resolution
  decoder stage (the last one computed, the one that feeds the final segmentation head), ``n_stages - 2`` the one
  just above the bottleneck. (dynamic_network_architectures' ``decoder.stages[i]`` is at resolution
  ``n_stages - 2 - i``.)

A *stage selector* is a list of such indices (negative indices count from the end, as in Python), ``"all"``,
``"none"``, or a slice written as a string such as ``"1:"`` or ``":2"`` (Python slice semantics). Selectors are
resolved to explicit sorted lists by :func:`resolve_block_options`, so a stored plans entry always lists the stages.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

from nnunet_tubeconv.vocabulary import DLK_MODES, SCSE_MODES, SWING_NORMS

CONV_BLOCKS: tuple[str, ...] = ("conv", "dsc", "deform")

#: convolutions per residual block of a ResidualEncoderUNet encoder stage (BasicBlockD: conv1, conv2); there a
#: stage's convolutions, counted by ``conv_block_convs`` from the stage's last one, are its blocks' conv1 and conv2
#: in forward order (the stem and the residual path's 1x1 projection are never replaced)
CONVS_PER_RESIDUAL_BLOCK = 2

#: Every option with its neutral default: with all defaults the network is nnU-Net's PlainConvUNet.
DEFAULT_BLOCK_OPTIONS: dict[str, Any] = {
    # which block replaces ordinary convolutions in the selected stages: "conv" (none), "dsc" (DSCNet multi-view
    # block, Qi et al. ICCV 2023) or "deform" (modulated deformable convolution, DCNv2, Zhu et al. CVPR 2019)
    "conv_block": "conv",
    "conv_block_encoder_stages": [],
    "conv_block_decoder_stages": [],
    # how many convolutions of each selected stage are replaced, counted from the stage's last one (the last conv
    # of a stage has stride 1 and equal input/output widths, the first carries the stride or the skip concatenation;
    # in a residual encoder stage the last conv is the last block's conv2, see CONVS_PER_RESIDUAL_BLOCK)
    "conv_block_convs": 1,
    "snake_kernel_size": 9,
    "snake_extend_scope": 1.0,
    # DSConv's swing branch: "stage" = tanh(norm(conv3(x))) with the stage's norm (the DSCNet authors' form; the
    # norm voids the swing conv's zero init), "none" = tanh(conv3(x)) (starts straight, grows smoothly); and the
    # learning-rate multiplier of its parameters (read by nnUNetTrainerTubeBase.configure_optimizers). These neutral
    # values keep plans written before the options existed building the same network; the trainers' variants set
    # their own (architectures.variants).
    "snake_swing_norm": "stage",
    "snake_swing_lr_scale": 1.0,
    # D-Net (Yang et al., arXiv 2403.10674): DLK blocks appended to encoder stages, after the stage's convolutions
    "dlk_encoder_stages": [],
    "dlk_blocks_per_stage": 2,
    "dlk_mode": "paper",
    "dlk_mlp_ratio": 4,
    # D-Net's dynamic feature fusion in place of "concatenate skip" at these decoder resolutions
    "dff_skips": [],
    # scSE (Roy et al., MICCAI 2018) after these encoder / decoder stages
    "scse_encoder_stages": [],
    "scse_decoder_stages": [],
    "scse_reduction": 2,
    "scse_mode": "add",
}

#: options that select encoder stages (indices 0 .. n_stages - 1)
ENCODER_SELECTORS = ("conv_block_encoder_stages", "dlk_encoder_stages", "scse_encoder_stages")
#: options that select decoder stages / skips by resolution (indices 0 .. n_stages - 2)
DECODER_SELECTORS = ("conv_block_decoder_stages", "dff_skips", "scse_decoder_stages")


def places_snakes(options: Mapping[str, Any] | None) -> bool:
    """Whether block ``options`` (resolved or not) put DSConv blocks, dynamic snake convolutions, into the network:
    ``conv_block`` "dsc" with at least one encoder or decoder stage selected. None (no options: nnU-Net's own
    network) places none. The one place that says which networks have snakes."""
    if not options or options.get("conv_block") != "dsc":
        return False

    def selects(sel: Any) -> bool:
        return bool(sel) and not (isinstance(sel, str) and sel.strip().lower() == "none")

    return any(selects(options.get(k)) for k in ("conv_block_encoder_stages", "conv_block_decoder_stages"))


def allowed_options() -> list[str]:
    """Names of every block option, sorted."""
    return sorted(DEFAULT_BLOCK_OPTIONS)


def check_option_names(options: Mapping[str, Any] | None) -> None:
    """Raise ``ValueError`` naming the unknown keys of ``options`` and listing the allowed ones."""
    if options is None:
        return
    if not isinstance(options, Mapping):
        raise ValueError(f"block options must be a dict, got {type(options).__name__}: {options!r}")
    unknown = sorted(set(options) - set(DEFAULT_BLOCK_OPTIONS))
    if unknown:
        raise ValueError(f"unknown block option(s) {unknown}; allowed are {allowed_options()}")


def resolve_selector(name: str, selector: Any, count: int) -> list[int]:
    """Turn a stage selector into a sorted list of distinct indices in ``range(count)``.

    ``selector``: ``"all"``, ``"none"``, a slice string (``"1:"``, ``":-1"``, ``"::2"``) or a list of ints
    (negatives count from the end). Out-of-range indices raise ``ValueError``.
    """
    if isinstance(selector, str):
        s = selector.strip()
        if s == "all":
            return list(range(count))
        if s == "none":
            return []
        if ":" in s:
            parts = s.split(":")
            if len(parts) > 3:
                raise ValueError(f"{name}: bad slice {selector!r}; write e.g. '1:', ':2' or '::2'")
            try:
                bounds = [int(p) if p.strip() else None for p in parts]
            except ValueError:
                raise ValueError(f"{name}: bad slice {selector!r}; write e.g. '1:', ':2' or '::2'") from None
            if len(bounds) == 3 and bounds[2] == 0:
                raise ValueError(f"{name}: slice step must not be zero, got {selector!r}")
            return sorted(set(range(count)[slice(*bounds)]))
        raise ValueError(
            f"{name} must be a list of stage indices, 'all', 'none' or a slice string like '1:', got {selector!r}"
        )
    if not isinstance(selector, Sequence) or isinstance(selector, (bytes, bytearray)):
        raise ValueError(
            f"{name} must be a list of stage indices, 'all', 'none' or a slice string like '1:', got {selector!r}"
        )
    out = set()
    for i in selector:
        if not isinstance(i, int) or isinstance(i, bool):
            raise ValueError(f"{name} must contain integers, got {selector!r}")
        if not -count <= i < count:
            raise ValueError(f"{name}: index {i} out of range, there are {count} stages here (valid 0..{count - 1})")
        out.add(i % count)
    return sorted(out)


def _check_int(name: str, value: Any, minimum: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def _check_choice(name: str, value: Any, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
    return value


def _as_list(name: str, value: int | Sequence[int], count: int) -> list[int]:
    if isinstance(value, int) and not isinstance(value, bool):
        return [value] * count
    try:
        out = [int(v) for v in value]
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be an int or a list of {count} ints, got {value!r}") from None
    if len(out) != count:
        raise ValueError(f"{name} must have {count} entries, got {value!r}")
    return out


def resolve_block_options(
    options: Mapping[str, Any] | None,
    n_stages: int,
    n_conv_per_stage: int | Sequence[int],
    n_conv_per_stage_decoder: int | Sequence[int],
) -> dict[str, Any]:
    """Validate ``options`` against a plan and return the complete, explicit option dict (a new dict).

    Missing options take :data:`DEFAULT_BLOCK_OPTIONS`; selectors become explicit index lists. Raises ``ValueError``
    for an unknown option, a bad value, an index outside the plan, or a request that the plan cannot honour
    (e.g. replacing 2 convolutions of a decoder stage that has only 1).
    """
    check_option_names(options)
    n_stages = _check_int("n_stages", n_stages, 2)
    enc_convs = _as_list("n_conv_per_stage", n_conv_per_stage, n_stages)
    dec_convs = _as_list("n_conv_per_stage_decoder", n_conv_per_stage_decoder, n_stages - 1)
    out = copy.deepcopy(DEFAULT_BLOCK_OPTIONS)
    out.update(copy.deepcopy(dict(options or {})))

    for key in ENCODER_SELECTORS:
        out[key] = resolve_selector(key, out[key], n_stages)
    for key in DECODER_SELECTORS:
        out[key] = resolve_selector(key, out[key], n_stages - 1)

    _check_choice("conv_block", out["conv_block"], CONV_BLOCKS)
    _check_int("conv_block_convs", out["conv_block_convs"], 1)
    if out["conv_block"] == "conv" and (out["conv_block_encoder_stages"] or out["conv_block_decoder_stages"]):
        raise ValueError(
            "conv_block is 'conv' (plain convolutions) but conv_block_encoder_stages / conv_block_decoder_stages "
            f"select stages {out['conv_block_encoder_stages']} / {out['conv_block_decoder_stages']}: set conv_block "
            f"to one of {list(CONV_BLOCKS[1:])} or clear the stage lists"
        )
    for s in out["conv_block_encoder_stages"]:
        if out["conv_block_convs"] > enc_convs[s]:
            raise ValueError(
                f"conv_block_convs={out['conv_block_convs']} but encoder stage {s} has only {enc_convs[s]} conv(s)"
            )
    for r in out["conv_block_decoder_stages"]:
        if out["conv_block_convs"] > dec_convs[n_stages - 2 - r]:
            raise ValueError(
                f"conv_block_convs={out['conv_block_convs']} but the decoder stage at resolution {r} has only "
                f"{dec_convs[n_stages - 2 - r]} conv(s)"
            )
    k = _check_int("snake_kernel_size", out["snake_kernel_size"], 3)
    if k % 2 == 0:
        raise ValueError(f"snake_kernel_size must be odd (the snake is centred on the output voxel), got {k}")
    scope = out["snake_extend_scope"]
    if not isinstance(scope, (int, float)) or isinstance(scope, bool) or not scope > 0:
        raise ValueError(f"snake_extend_scope must be a positive number, got {scope!r}")
    out["snake_extend_scope"] = float(scope)
    _check_choice("snake_swing_norm", out["snake_swing_norm"], SWING_NORMS)
    lr_scale = out["snake_swing_lr_scale"]
    if (not isinstance(lr_scale, (int, float)) or isinstance(lr_scale, bool) or not lr_scale >= 0
            or lr_scale == float("inf")):
        raise ValueError(f"snake_swing_lr_scale must be a finite number >= 0 (1 = the network's learning rate), "
                         f"got {lr_scale!r}")
    out["snake_swing_lr_scale"] = float(lr_scale)
    _check_int("dlk_blocks_per_stage", out["dlk_blocks_per_stage"], 1)
    _check_choice("dlk_mode", out["dlk_mode"], DLK_MODES)
    _check_int("dlk_mlp_ratio", out["dlk_mlp_ratio"], 1)
    _check_int("scse_reduction", out["scse_reduction"], 1)
    _check_choice("scse_mode", out["scse_mode"], SCSE_MODES)
    return out
