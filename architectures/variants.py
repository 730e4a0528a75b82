"""The network variants and the conversion of an nnU-Net plans entry into one of them.

A variant is a name plus default block options (see :mod:`nnunet_tubeconv.architectures.options`), placing each
block where its paper puts it, within the cost budget measured by ``nnunet-tubeconv bench-train``:

``dsconv``
    DSCNet multi-view blocks (Qi et al., "Dynamic Snake Convolution based on Topological Geometric Constraints for
    Tubular Structure Segmentation", ICCV 2023), with the paper's K = 9. The paper uses them in every stage; that
    costs several times vanilla nnU-Net, so by default one block replaces the last convolution of encoder stage 2
    and of the decoder stage at the same resolution (the third-highest resolution: 1/4 in-plane for nnU-Net's
    usual plans): the highest-resolution placement with the paper's K that stays within the 2x budget with a
    margin; placements at higher resolution cost 2-5x. The placements measured, with their commands:
    ``benchmarks/perf/results/bench_train_cpu.md``.
``dlkdff``
    D-Net (Yang et al., arXiv 2403.10674): DLK blocks appended to the encoder stages from the third one down to
    the bottleneck, and dynamic feature fusion at every skip. D-Net itself has no DLK block at full resolution (a
    plain conv block there, DLK stages after a stride-2 stem, two blocks each, bottleneck included); one block per
    stage from stage 2 keeps the variant within 1.5x vanilla (``bench-train`` on its small 3D plan, CPU; the
    counts of blocks measured: ``benchmarks/perf/results/bench_train_cpu.md``).
``scse``
    scSE (Roy et al., MICCAI 2018) after every encoder and decoder stage, as in the paper.
``deform``
    The free-form baseline of the DSCNet paper: modulated deformable convolution (DCNv2, Zhu et al., CVPR 2019)
    exactly where ``dsconv`` puts snakes, so the two compare on the same pipeline.
``tubeconv``
    The combination: ``dsconv``'s snakes + DFF at every skip + scSE after every stage.

All placements and settings can be overridden through ``options``. The defaults name stages of nnU-Net's usual
5-8-stage plans; on a plan with fewer stages a default index past the end falls back to the deepest valid stage, so
a tiny plan still gets its blocks. Indices passed in ``options`` are never adjusted: out of range is a ValueError.
This module imports neither torch nor nnU-Net.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

from nnunet_tubeconv.architectures.options import (
    CONVS_PER_RESIDUAL_BLOCK,
    DECODER_SELECTORS,
    ENCODER_SELECTORS,
    check_option_names,
    resolve_block_options,
)

#: The keys of one configuration's ``architecture`` entry in nnU-Net plans (nnU-Net's network contract).
ARCHITECTURE_KEYS: tuple[str, ...] = ("network_class_name", "arch_kwargs", "_kw_requires_import")
#: import path of the network class every variant builds from a PlainConvUNet entry
TUBE_UNET_CLASS = "nnunet_tubeconv.architectures.unet.TubeUNet"
#: import path of the network class every variant builds from a ResidualEncoderUNet entry
TUBE_RESENC_UNET_CLASS = "nnunet_tubeconv.architectures.unet.TubeResEncUNet"
#: the classes whose plans entries we know how to take over
OUR_CLASSES: tuple[str, ...] = (TUBE_UNET_CLASS, TUBE_RESENC_UNET_CLASS)
#: import path of nnU-Net's default network, as the default ExperimentPlanner writes it into the plans
PLAIN_CONV_UNET_CLASS = "dynamic_network_architectures.architectures.unet.PlainConvUNet"
#: every name under which plans may give the PlainConvUNet: nnunetv2's ``get_network_from_plans`` also finds a
#: bare class name inside ``dynamic_network_architectures.architectures``
PLAIN_CONV_UNET_NAMES: tuple[str, ...] = (PLAIN_CONV_UNET_CLASS, "PlainConvUNet")
#: import path of nnU-Net's residual-encoder U-Net, as its ResEnc planners (nnUNetPlannerResEncM/L/XL) write it
RESENC_UNET_CLASS = "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"
#: every name under which plans may give the ResidualEncoderUNet
RESENC_UNET_NAMES: tuple[str, ...] = (RESENC_UNET_CLASS, "ResidualEncoderUNet")
#: nnU-Net network class (canonical path) -> the class of ours that hosts the blocks in it
HOSTS: dict[str, str] = {PLAIN_CONV_UNET_CLASS: TUBE_UNET_CLASS, RESENC_UNET_CLASS: TUBE_RESENC_UNET_CLASS}
#: the arch_kwargs every plans entry of a host class has (besides the layer settings)
_REQUIRED_KWARGS: dict[str, tuple[str, ...]] = {
    TUBE_UNET_CLASS: ("n_stages", "n_conv_per_stage", "n_conv_per_stage_decoder"),
    TUBE_RESENC_UNET_CLASS: ("n_stages", "n_blocks_per_stage", "n_conv_per_stage_decoder"),
}

# where the snake blocks go: chosen with `nnunet-tubeconv bench-train` (the placements measured, with their commands:
# benchmarks/perf/results/bench_train_cpu.md)
_SNAKE_PLACEMENT: dict[str, Any] = {
    "conv_block_encoder_stages": [2],
    "conv_block_decoder_stages": [2],
    "conv_block_convs": 1,
    "snake_kernel_size": 9,
}

# The snakes' swing branch under nnU-Net's SGD (the snakes study, docs/studies/snakes.md), chosen on nnU-Net's
# cross-validation of the 20 DRIVE training images with `python -m nnunet_tubeconv.benchmarks.studies.snakes.ablation`
# (benchmarks/studies/snakes/results/snakes_ablation_drive.md): no norm in the swing branch (the zero init then starts
# straight) and a tenth of the learning rate for it. {"snake_swing_norm": "stage", "snake_swing_lr_scale": 1.0} is the
# earlier network.
_SNAKE_SWING: dict[str, Any] = {
    "snake_swing_norm": "none",
    "snake_swing_lr_scale": 0.1,
}

VARIANTS: dict[str, dict[str, Any]] = {
    "dsconv": {
        "description": "DSCNet multi-view dynamic-snake blocks (Qi et al., ICCV 2023)",
        "options": {"conv_block": "dsc", **_SNAKE_PLACEMENT, **_SNAKE_SWING},
    },
    "dlkdff": {
        "description": "D-Net: DLK blocks in the encoder, DFF at every skip (Yang et al., arXiv 2403.10674)",
        "options": {"dlk_encoder_stages": "2:", "dlk_blocks_per_stage": 1, "dlk_mode": "paper", "dff_skips": "all"},
    },
    "scse": {
        "description": "scSE after every encoder and decoder stage (Roy et al., MICCAI 2018)",
        "options": {"scse_encoder_stages": "all", "scse_decoder_stages": "all", "scse_reduction": 2,
                    "scse_mode": "add"},
    },
    "deform": {
        "description": "DCNv2 modulated deformable convolution where dsconv puts snakes (Zhu et al., CVPR 2019)",
        "options": {"conv_block": "deform", **{k: v for k, v in _SNAKE_PLACEMENT.items() if k != "snake_kernel_size"}},
    },
    "tubeconv": {
        "description": "dsconv snakes + DFF at every skip + scSE after every stage",
        "options": {"conv_block": "dsc", **_SNAKE_PLACEMENT, **_SNAKE_SWING, "dff_skips": "all",
                    "scse_encoder_stages": "all", "scse_decoder_stages": "all"},
    },
}


def _fit_defaults(options: Mapping[str, Any], n_stages: int) -> dict[str, Any]:
    """The variant's default stage lists with indices past a small plan's end moved to its deepest valid stage."""
    out = copy.deepcopy(dict(options))
    for key, value in out.items():
        if isinstance(value, list) and key in ENCODER_SELECTORS + DECODER_SELECTORS:
            last = n_stages - 1 if key in ENCODER_SELECTORS else n_stages - 2
            out[key] = [min(i, last) if isinstance(i, int) and i >= 0 else i for i in value]
    return out


def _check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; valid variants are {sorted(VARIANTS)}")


def is_plain_conv_unet(name: str) -> bool:
    """True if ``name`` (a plans entry's ``network_class_name``) is nnU-Net's PlainConvUNet."""
    return name in PLAIN_CONV_UNET_NAMES


def is_resenc_unet(name: str) -> bool:
    """True if ``name`` (a plans entry's ``network_class_name``) is nnU-Net's ResidualEncoderUNet (ResEnc presets)."""
    return name in RESENC_UNET_NAMES


def supported_network_classes() -> list[str]:
    """Every ``network_class_name`` a variant can be built from: nnU-Net's hosts, then ours."""
    return [*HOSTS, *OUR_CLASSES]


def host_class(name: Any) -> str | None:
    """Our class that hosts the blocks for plans naming ``name`` (nnU-Net's class, or already ours); else None."""
    if not isinstance(name, str):
        return None
    if name in OUR_CLASSES:
        return name
    if is_plain_conv_unet(name):
        return TUBE_UNET_CLASS
    if is_resenc_unet(name):
        return TUBE_RESENC_UNET_CLASS
    return None


def unsupported_class_message(name: Any) -> str:
    """Why plans naming ``name`` cannot host the blocks, and which classes can."""
    return (
        f"network class {name!r} is not supported; supported are nnU-Net's {PLAIN_CONV_UNET_CLASS} (the default "
        f"planner's, plans nnUNetPlans) and {RESENC_UNET_CLASS} (its ResEnc presets: nnUNetPlannerResEncM/L/XL, "
        f"plans nnUNetResEncUNetM/L/XLPlans), and our own {list(OUR_CLASSES)}"
    )


def encoder_conv_counts(architecture: Mapping[str, Any]) -> Any:
    """Replaceable convolutions per encoder stage of a plans entry (what ``conv_block_convs`` counts).

    PlainConvUNet / TubeUNet: ``n_conv_per_stage``; ResidualEncoderUNet / TubeResEncUNet: ``n_blocks_per_stage``
    times :data:`~nnunet_tubeconv.architectures.options.CONVS_PER_RESIDUAL_BLOCK`. Passed through unchecked when it
    is not a list or an int (``resolve_block_options`` then says what is wrong).
    """
    kwargs = architecture["arch_kwargs"]
    if host_class(architecture["network_class_name"]) != TUBE_RESENC_UNET_CLASS:
        return kwargs["n_conv_per_stage"]
    blocks = kwargs["n_blocks_per_stage"]
    if isinstance(blocks, int) and not isinstance(blocks, bool):
        return CONVS_PER_RESIDUAL_BLOCK * blocks
    if isinstance(blocks, (list, tuple)) and all(isinstance(b, int) and not isinstance(b, bool) for b in blocks):
        return [CONVS_PER_RESIDUAL_BLOCK * b for b in blocks]
    return blocks


def _check_entry(architecture: Any) -> str | None:
    """Check the shape of a plans entry; return our host class for it (None for a network class we cannot host)."""
    if not isinstance(architecture, Mapping):
        kind = type(architecture).__name__
        raise ValueError(f"architecture must be a plans entry (a dict), got {kind}")
    missing = [k for k in ARCHITECTURE_KEYS if k not in architecture]
    if missing:
        raise ValueError(
            f"architecture entry lacks {missing}; expected a configuration's plans entry with keys "
            f"{list(ARCHITECTURE_KEYS)}"
        )
    kwargs = architecture["arch_kwargs"]
    if not isinstance(kwargs, Mapping):
        raise ValueError(f"architecture['arch_kwargs'] must be a dict, got {type(kwargs).__name__}")
    host = host_class(architecture["network_class_name"])
    if host is None:
        return host
    missing = [k for k in _REQUIRED_KWARGS[host] if k not in kwargs]
    if missing:
        kind = "ResidualEncoderUNet" if host == TUBE_RESENC_UNET_CLASS else "PlainConvUNet"
        raise ValueError(f"architecture['arch_kwargs'] lacks {missing}, which every {kind} plan has")
    return host


def _resolve(architecture: Mapping[str, Any], options: Mapping[str, Any]) -> dict[str, Any]:
    kwargs = architecture["arch_kwargs"]
    return resolve_block_options(
        options, kwargs["n_stages"], encoder_conv_counts(architecture), kwargs["n_conv_per_stage_decoder"]
    )


def variant_architecture(architecture: dict, variant: str, options: dict | None = None) -> dict:
    """Plans entry of ``variant`` built from one configuration's plans entry; the input is never modified.

    ``architecture``: ``{"network_class_name", "arch_kwargs", "_kw_requires_import"}`` as in nnU-Net's plans.

    * A ``PlainConvUNet`` entry gives a new entry naming :data:`TUBE_UNET_CLASS`, a ``ResidualEncoderUNet`` entry
      (nnU-Net's ResEnc presets) one naming :data:`TUBE_RESENC_UNET_CLASS`; either with the plans' kwargs and
      ``arch_kwargs["block_options"]``: every block option, explicit (stage lists resolved against ``n_stages``),
      from the variant's defaults overridden by ``options``.
    * An entry that already names one of our classes is deep-copied; ``options``, if given, are merged into its
      block options (the variant's defaults are not applied: the entry already describes a network).
    * Anything else raises ``ValueError`` naming the supported classes, as do an unknown variant and unknown or
      invalid options.

    The result is JSON-safe if the input was, so ``get_network_from_plans`` rebuilds the network from a model
    folder's plans alone.
    """
    _check_variant(variant)
    check_option_names(options)
    host = _check_entry(architecture)
    name = architecture["network_class_name"]
    if host is None:
        raise ValueError(f"cannot build variant {variant!r}: {unsupported_class_message(name)}")
    if name in OUR_CLASSES:
        out = copy.deepcopy(dict(architecture))
        if options:
            merged = {**out["arch_kwargs"].get("block_options", {}), **copy.deepcopy(options)}
            out["arch_kwargs"]["block_options"] = _resolve(out, merged)
        return out
    out = {
        "network_class_name": host,
        "arch_kwargs": copy.deepcopy(dict(architecture["arch_kwargs"])),
        "_kw_requires_import": list(architecture["_kw_requires_import"]),
    }
    kwargs = out["arch_kwargs"]
    if "block_options" in kwargs:
        raise ValueError(f"a {name.rsplit('.', 1)[-1]} entry has no 'block_options' argument; remove it from "
                         f"arch_kwargs")
    n_stages = kwargs["n_stages"]
    defaults = VARIANTS[variant]["options"]
    if isinstance(n_stages, int) and n_stages >= 2:  # else resolve_block_options raises
        defaults = _fit_defaults(defaults, n_stages)
    merged = {**copy.deepcopy(defaults), **copy.deepcopy(dict(options or {}))}
    kwargs["block_options"] = _resolve(out, merged)
    return out


def neutral_architecture(architecture: Mapping[str, Any]) -> dict:
    """Our entry with no block at all from a PlainConvUNet or ResidualEncoderUNet entry (input not modified).

    The network it builds is nnU-Net's own (same state-dict keys and parameters), but its
    ``compute_conv_feature_map_size`` counts what a training step really keeps (see
    :mod:`nnunet_tubeconv.architectures.memory`): the vanilla arm of memory comparisons and planner estimates.
    """
    host = _check_entry(architecture)
    name = architecture["network_class_name"]
    if host is None or name in OUR_CLASSES:
        raise ValueError(f"a neutral entry is made from nnU-Net's own plans entry: {unsupported_class_message(name)}"
                         if host is None else f"{name!r} is already ours; give nnU-Net's plans entry")
    kwargs = copy.deepcopy(dict(architecture["arch_kwargs"]))
    kwargs["block_options"] = None
    return {"network_class_name": host, "arch_kwargs": kwargs,
            "_kw_requires_import": list(architecture["_kw_requires_import"])}


def plain_conv_unet_entry(
    dim: int,
    features_per_stage: Sequence[int],
    strides: Sequence[Sequence[int]],
    kernel_sizes: Sequence[Sequence[int]] | None = None,
    n_conv_per_stage: int = 2,
    n_conv_per_stage_decoder: int = 2,
    **arch_kwargs: Any,
) -> dict:
    """One configuration's ``architecture`` entry exactly as nnU-Net 2.8's default planner writes it (JSON form).

    For tests, benchmarks and examples that need plans without running the planner; ``arch_kwargs`` override or
    add ``arch_kwargs`` keys (e.g. ``dropout_op``).
    """
    if dim not in (2, 3):
        raise ValueError(f"dim must be 2 or 3, got {dim!r}")
    n = len(features_per_stage)
    if kernel_sizes is None:
        kernel_sizes = [[3] * dim] * n
    kwargs: dict[str, Any] = {
        "n_stages": n,
        "features_per_stage": list(features_per_stage),
        "conv_op": f"torch.nn.modules.conv.Conv{dim}d",
        "kernel_sizes": [list(k) for k in kernel_sizes],
        "strides": [list(st) for st in strides],
        "n_conv_per_stage": [n_conv_per_stage] * n,
        "n_conv_per_stage_decoder": [n_conv_per_stage_decoder] * (n - 1),
        "conv_bias": True,
        "norm_op": f"torch.nn.modules.instancenorm.InstanceNorm{dim}d",
        "norm_op_kwargs": {"eps": 1e-05, "affine": True},
        "dropout_op": None,
        "dropout_op_kwargs": None,
        "nonlin": "torch.nn.LeakyReLU",
        "nonlin_kwargs": {"inplace": True},
    }
    kwargs.update(arch_kwargs)
    return {
        "network_class_name": PLAIN_CONV_UNET_CLASS,
        "arch_kwargs": kwargs,
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
    }


#: blocks per encoder stage of nnU-Net's ResEnc planners (nnUNetPlannerResEncM/L/XL), cut to ``n_stages``: nnU-Net
#: owns this (``ResEncUNetPlanner.UNet_blocks_per_stage_encoder``, set in its constructor, which needs a data set);
#: tests/integration/test_e2e_resenc.py checks this copy against plans the planner wrote
RESENC_BLOCKS_PER_STAGE: tuple[int, ...] = (1, 3, 4, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6)


def resenc_unet_entry(
    dim: int,
    features_per_stage: Sequence[int],
    strides: Sequence[Sequence[int]],
    kernel_sizes: Sequence[Sequence[int]] | None = None,
    n_blocks_per_stage: Sequence[int] | None = None,
    n_conv_per_stage_decoder: int = 1,
    **arch_kwargs: Any,
) -> dict:
    """One configuration's ``architecture`` entry as nnU-Net 2.8's ResEnc planners write it (JSON form).

    ``n_blocks_per_stage`` defaults to the planners' (:data:`RESENC_BLOCKS_PER_STAGE`), the decoder to their one
    convolution per stage. For tests, benchmarks and examples that need ResEnc plans without running the planner.
    """
    entry = plain_conv_unet_entry(dim, features_per_stage, strides, kernel_sizes, 2, n_conv_per_stage_decoder)
    kwargs = entry["arch_kwargs"]
    del kwargs["n_conv_per_stage"]
    n = len(features_per_stage)
    blocks = list(RESENC_BLOCKS_PER_STAGE[:n]) if n_blocks_per_stage is None else [int(b) for b in n_blocks_per_stage]
    ordered = {}
    for key, value in kwargs.items():  # the planner's key order: n_blocks_per_stage where n_conv_per_stage was
        ordered[key] = value
        if key == "strides":
            ordered["n_blocks_per_stage"] = blocks
    ordered.update(arch_kwargs)
    return {"network_class_name": RESENC_UNET_CLASS, "arch_kwargs": ordered,
            "_kw_requires_import": entry["_kw_requires_import"]}
