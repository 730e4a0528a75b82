"""``TubeUNet``: nnU-Net's ``PlainConvUNet`` with tubular-structure blocks placed per stage by JSON options.

Built from the same plans arguments as dynamic_network_architectures' ``PlainConvUNet`` (any number of stages,
per-stage kernel sizes and strides, 2D/3D, anisotropic ``[1, 3, 3]`` stages, dropout, norm and nonlinearity from
the plans) plus ``block_options`` (see :mod:`nnunet_tubeconv.architectures.options`):

* ``conv_block`` ("dsc": DSCNet multi-view block, Qi et al. ICCV 2023; "deform": DCNv2, Zhu et al. CVPR 2019)
  replaces the last ``conv_block_convs`` convolutions of the selected encoder and decoder stages;
* ``dlk_encoder_stages``: D-Net DLK blocks (Yang et al., arXiv 2403.10674) appended after a stage's convolutions;
* ``dff_skips``: D-Net dynamic feature fusion instead of "concatenate skip" (the decoder stage's first convolution
  then takes ``C`` instead of ``2C`` channels);
* ``scse_encoder_stages`` / ``scse_decoder_stages``: scSE (Roy et al., MICCAI 2018) after a stage.

It keeps nnU-Net's network contract: no final nonlinearity; ``decoder.deep_supervision`` switches between a list of
logits (highest resolution first) and one tensor; the segmentation heads are always built, so the state dict does
not depend on deep supervision; every parameter is used. With neutral block options the module tree, the state-dict
keys and the parameter count are exactly ``PlainConvUNet``'s (pinned by tests), so nnU-Net checkpoints and
pretrained weights load. Extra blocks live under ``encoder.stages.<s>.<i>`` (appended after the conv stack),
``decoder.fusions.<i>`` and ``decoder.attention.<i>`` (``i`` in decoder order, lowest resolution first), or replace
``...convs.<j>``.

Shapes: input ``(B, input_channels, *S)``; output ``(B, num_classes, *S)``, or with deep supervision a list whose
entry ``r`` is ``(B, num_classes, *S_r)`` at resolution ``r`` (``S_0 = S``), for ``r = 0 .. n_stages - 2``.

``TubeResEncUNet`` is the same for nnU-Net's ``ResidualEncoderUNet`` (the ResEnc M/L/XL presets): its encoder
(:class:`TubeResidualEncoder`) places the blocks inside and after the residual stages, its decoder is the same
:class:`TubeDecoder` (ResEnc's decoder is nnU-Net's plain UNetDecoder), and the memory count
(:mod:`~nnunet_tubeconv.architectures.memory`) walks both encoders with one decoder accountant. With neutral
options it is exactly ``ResidualEncoderUNet`` (state-dict keys, parameter count, initialisation; pinned by tests).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from dynamic_network_architectures.architectures.abstract_arch import AbstractDynamicNetworkArchitectures
from dynamic_network_architectures.building_blocks.plain_conv_encoder import PlainConvEncoder
from dynamic_network_architectures.building_blocks.residual import BasicBlockD
from dynamic_network_architectures.building_blocks.residual_encoders import ResidualEncoder
from dynamic_network_architectures.building_blocks.simple_conv_blocks import StackedConvBlocks
from dynamic_network_architectures.building_blocks.unet_decoder import UNetDecoder
from dynamic_network_architectures.initialization.weight_init import InitWeights_He, init_last_bn_before_add_to_0
from torch import nn
from torch.nn.modules.dropout import _DropoutNd

from nnunet_tubeconv.architectures import memory
from nnunet_tubeconv.architectures.options import CONVS_PER_RESIDUAL_BLOCK, resolve_block_options
from nnunet_tubeconv.blocks import DFF, SCSE, DeformConv, DLKBlock, DSCBlock
from nnunet_tubeconv.blocks.utils import conv_op_to_dim


def _per_stage(name: str, value: Any, count: int) -> list:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return [int(value)] * count
    if not isinstance(value, (list, tuple)) or len(value) != count:
        raise ValueError(f"{name} must be an int or have {count} entries (one per stage), got {value!r}")
    return list(value)


def _host_geometry(conv_op: type[nn.Module], input_channels: int, num_classes: int, n_stages: int,
                   features_per_stage: Any, kernel_sizes: Any, strides: Any) -> tuple[list, list, list]:
    """The checks both hosts make on the arguments they share with nnU-Net's networks; returns
    ``(features_per_stage, kernel_sizes, strides)`` with one entry per stage."""
    conv_op_to_dim(conv_op)
    for name, value in (("input_channels", input_channels), ("num_classes", num_classes), ("n_stages", n_stages)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if n_stages < 2:
        raise ValueError(f"n_stages must be >= 2 (an encoder stage and a bottleneck), got {n_stages}")
    return (_per_stage("features_per_stage", features_per_stage, n_stages),
            _per_stage("kernel_sizes", kernel_sizes, n_stages), _per_stage("strides", strides, n_stages))


def _layer_kwargs(conv_bias: bool, norm_op: type[nn.Module] | None, norm_op_kwargs: dict | None,
                  dropout_op: type[_DropoutNd] | None, dropout_op_kwargs: dict | None,
                  nonlin: type[nn.Module] | None, nonlin_kwargs: dict | None) -> dict[str, Any]:
    """The per-layer settings of nnU-Net's conv blocks, as the encoders and the decoder take them."""
    return {"conv_bias": conv_bias, "norm_op": norm_op, "norm_op_kwargs": norm_op_kwargs, "dropout_op": dropout_op,
            "dropout_op_kwargs": dropout_op_kwargs, "nonlin": nonlin, "nonlin_kwargs": nonlin_kwargs}


class _SkipConcat(nn.Module):
    """nnU-Net's skip connection: ``cat((x, skip), 1)``; (B, C, *S), (B, C, *S) -> (B, 2C, *S). No parameters."""

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return torch.cat((x, skip), 1)


def _make_conv_block(kind: str, conv_op: type, input_channels: int, output_channels: int, kernel_size: Any,
                     stride: Any, layer_kwargs: dict, opts: dict) -> nn.Module:
    """A drop-in for ConvDropoutNormReLU: same in/out channels, kernel, stride, norm/dropout/nonlin."""
    common = dict(conv_op=conv_op, input_channels=input_channels, output_channels=output_channels,
                  kernel_size=kernel_size, stride=stride, **layer_kwargs)
    if kind == "dsc":
        return DSCBlock(**common, snake_kernel_size=opts["snake_kernel_size"], extend_scope=opts["snake_extend_scope"],
                        swing_norm=opts["snake_swing_norm"], swing_lr_scale=opts["snake_swing_lr_scale"])
    if kind == "deform":
        return DeformConv(**common)
    raise ValueError(f"unknown conv_block {kind!r}")


def _replace_last_convs(stack: StackedConvBlocks, n: int, kind: str, conv_op: type, kernel_size: Any,
                        layer_kwargs: dict, opts: dict) -> None:
    for j in range(len(stack.convs) - n, len(stack.convs)):
        old = stack.convs[j]
        stack.convs[j] = _make_conv_block(kind, conv_op, old.input_channels, old.output_channels, kernel_size,
                                          list(old.stride), layer_kwargs, opts)


class TubeEncoder(PlainConvEncoder):
    """PlainConvEncoder (``pool='conv'``, skips returned) with blocks placed by resolved ``block_options``.

    ``stages[s]`` is ``nn.Sequential(StackedConvBlocks, *DLKBlocks, SCSE?)``. Forward: (B, C_in, *S) -> list of
    ``n_stages`` skips, skip ``s`` of shape (B, features_per_stage[s], *S_s).
    """

    def __init__(self, input_channels: int, n_stages: int, features_per_stage: list[int], conv_op: type,
                 kernel_sizes: list, strides: list, n_conv_per_stage: list[int], layer_kwargs: dict,
                 nonlin_first: bool, block_options: dict) -> None:
        super().__init__(input_channels, n_stages, features_per_stage, conv_op, kernel_sizes, strides,
                         n_conv_per_stage, **layer_kwargs, return_skips=True, nonlin_first=nonlin_first)
        o = block_options
        for s in range(n_stages):
            stage = self.stages[s]
            if s in o["conv_block_encoder_stages"]:
                _replace_last_convs(stage[0], o["conv_block_convs"], o["conv_block"], conv_op, self.kernel_sizes[s],
                                    layer_kwargs, o)
            if s in o["dlk_encoder_stages"]:
                for _ in range(o["dlk_blocks_per_stage"]):
                    stage.append(DLKBlock(conv_op=conv_op, channels=features_per_stage[s],
                                          mlp_ratio=o["dlk_mlp_ratio"], dlk_mode=o["dlk_mode"]))
            if s in o["scse_encoder_stages"]:
                stage.append(SCSE(conv_op=conv_op, channels=features_per_stage[s], reduction=o["scse_reduction"],
                                  mode=o["scse_mode"]))
        # whether a drop-in block (DSC, deform) keeps its own output for backward: memory accounting needs it
        self._drop_in_saves_output = memory.nonlin_saves_result(layer_kwargs["nonlin"], layer_kwargs["nonlin_kwargs"]) \
            and not nonlin_first

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> int:
        """Elements saved for backward per batch element by the encoder alone (input included)."""
        return memory.encoder_saved_elements(self, input_size)


class TubeDecoder(UNetDecoder):
    """UNetDecoder with per-skip fusion (concatenation or DFF) and optional scSE after each stage.

    Decoder stage ``i`` works at resolution ``r = n_stages - 2 - i``:
    ``x = attention[i](stages[i](fusions[i](transpconvs[i](x), skip_r)))``.
    """

    def __init__(self, encoder: TubeEncoder, num_classes: int, n_conv_per_stage: list[int], deep_supervision: bool,
                 nonlin_first: bool, layer_kwargs: dict, block_options: dict) -> None:
        super().__init__(encoder, num_classes, n_conv_per_stage, deep_supervision, nonlin_first=nonlin_first)
        o = block_options
        conv_op = encoder.conv_op
        n = len(self.stages)
        fusions, attention = [], []
        for i in range(n):
            r = n - 1 - i
            channels = encoder.output_channels[-(i + 2)]
            kernel = encoder.kernel_sizes[-(i + 2)]
            if r in o["dff_skips"]:
                fusions.append(DFF(conv_op=conv_op, channels=channels))
                self.stages[i] = StackedConvBlocks(n_conv_per_stage[i], conv_op, channels, channels, kernel, 1,
                                                   **layer_kwargs, nonlin_first=nonlin_first)
            else:
                fusions.append(_SkipConcat())
            if r in o["conv_block_decoder_stages"]:
                _replace_last_convs(self.stages[i], o["conv_block_convs"], o["conv_block"], conv_op, kernel,
                                    layer_kwargs, o)
            if r in o["scse_decoder_stages"]:
                attention.append(SCSE(conv_op=conv_op, channels=channels, reduction=o["scse_reduction"],
                                      mode=o["scse_mode"]))
            else:
                attention.append(nn.Identity())
        self.fusions = nn.ModuleList(fusions)
        self.attention = nn.ModuleList(attention)

    def forward(self, skips: list[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
        """``skips``: the encoder's outputs, full resolution first, bottleneck last."""
        x = skips[-1]
        seg_outputs = []
        n = len(self.stages)
        for i in range(n):
            x = self.transpconvs[i](x)
            x = self.fusions[i](x, skips[-(i + 2)])
            x = self.attention[i](self.stages[i](x))
            if self.deep_supervision or i == n - 1:
                seg_outputs.append(self.seg_layers[i](x))
        seg_outputs = seg_outputs[::-1]
        return seg_outputs if self.deep_supervision else seg_outputs[0]

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> int:
        """Elements saved per batch element by the decoder, plus its logits (``input_size``: the encoder's input)."""
        return memory.decoder_saved_elements(self, input_size)


class TubeUNet(AbstractDynamicNetworkArchitectures):
    """nnU-Net's PlainConvUNet plus tubular-structure blocks; built by nnunetv2's ``get_network_from_plans``.

    Arguments: those of ``PlainConvUNet`` (same names, same meaning) and ``block_options``, a JSON dict described in
    :mod:`nnunet_tubeconv.architectures.options` (``None``: no blocks, i.e. exactly PlainConvUNet).
    ``x: (B, input_channels, *S) -> (B, num_classes, *S)`` or, with deep supervision, a list of
    ``(B, num_classes, *S_r)`` for ``r = 0 .. n_stages - 2``, highest resolution first. No final nonlinearity.
    """

    def __init__(
        self,
        input_channels: int,
        n_stages: int,
        features_per_stage: int | list[int] | tuple[int, ...],
        conv_op: type[nn.Module],
        kernel_sizes: int | list | tuple,
        strides: int | list | tuple,
        n_conv_per_stage: int | list[int] | tuple[int, ...],
        num_classes: int,
        n_conv_per_stage_decoder: int | list[int] | tuple[int, ...],
        conv_bias: bool = False,
        norm_op: type[nn.Module] | None = None,
        norm_op_kwargs: dict | None = None,
        dropout_op: type[_DropoutNd] | None = None,
        dropout_op_kwargs: dict | None = None,
        nonlin: type[nn.Module] | None = None,
        nonlin_kwargs: dict | None = None,
        deep_supervision: bool = False,
        nonlin_first: bool = False,
        block_options: dict | None = None,
    ) -> None:
        super().__init__()
        features_per_stage, kernel_sizes, strides = _host_geometry(
            conv_op, input_channels, num_classes, n_stages, features_per_stage, kernel_sizes, strides)
        n_conv_per_stage = _per_stage("n_conv_per_stage", n_conv_per_stage, n_stages)
        n_conv_per_stage_decoder = _per_stage("n_conv_per_stage_decoder", n_conv_per_stage_decoder, n_stages - 1)
        opts = resolve_block_options(block_options, n_stages, n_conv_per_stage, n_conv_per_stage_decoder)
        if nonlin_first and opts["conv_block"] != "conv":
            raise ValueError("nonlin_first=True is not supported with conv_block 'dsc' or 'deform' "
                             "(their norm comes before the nonlinearity, as in the papers)")
        self.block_options = opts

        self.key_to_encoder = "encoder.stages"
        self.key_to_stem = "encoder.stages.0"
        first_conv_replaced = 0 in opts["conv_block_encoder_stages"] and opts["conv_block_convs"] == n_conv_per_stage[0]
        # where nnU-Net's pretrained-weight loading finds the input projection (none if a block replaced it)
        self.keys_to_in_proj = () if first_conv_replaced else (
            "encoder.stages.0.0.convs.0.all_modules.0",
            "encoder.stages.0.0.convs.0.conv",
        )
        layer_kwargs = _layer_kwargs(conv_bias, norm_op, norm_op_kwargs, dropout_op, dropout_op_kwargs, nonlin,
                                     nonlin_kwargs)
        self.encoder = TubeEncoder(input_channels, n_stages, features_per_stage, conv_op, kernel_sizes, strides,
                                   n_conv_per_stage, layer_kwargs, nonlin_first, opts)
        self.decoder = TubeDecoder(self.encoder, num_classes, n_conv_per_stage_decoder, deep_supervision, nonlin_first,
                                   layer_kwargs, opts)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        return self.decoder(self.encoder(x))

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> int:
        """Tensor elements a training-mode forward keeps for backward, per batch element, plus the logits.

        ``input_size``: the patch size, spatial axes only. Same unit as the blocks' estimates (what
        ``saved_tensors_hooks`` sees, de-duplicated by storage, parameters excluded), including the network input,
        every plain convolution (its conv output for the norm and the nonlinearity's result, about twice
        dynamic_network_architectures' count), the transposed convolutions, the concatenated skips, the blocks and
        the segmentation heads' logits (returned to the loss, which keeps them). Counted by
        :func:`nnunet_tubeconv.architectures.memory.network_saved_elements`, within 0.1% of what
        :class:`~nnunet_tubeconv.architectures.memory.SavedTensors` measures (tests/unit/test_arch_contract.py), so it
        is *not* on the scale of ``PlainConvUNet.compute_conv_feature_map_size`` that nnU-Net's planner reference
        values were tuned for.
        """
        return memory.network_saved_elements(self, input_size)

    @staticmethod
    def initialize(module: nn.Module) -> None:
        """He initialisation as PlainConvUNet's, except convolutions marked ``_tubeconv_keep_init``.

        nnU-Net applies it with ``network.apply(network.initialize)``; the blocks' zero-initialised swing / offset
        convolutions keep their zeros, so snakes start straight and deformable kernels start regular.
        """
        if getattr(module, "_tubeconv_keep_init", False):
            return
        InitWeights_He(1e-2)(module)


# ----------------------------------------------------------------------------------------------------------------
# the residual-encoder host (nnU-Net's ResEnc presets)
# ----------------------------------------------------------------------------------------------------------------
def _check_basic_block(block: Any) -> None:
    if block is not BasicBlockD:
        raise ValueError(
            f"TubeResEncUNet hosts residual encoders of BasicBlockD (what nnU-Net's ResEnc planners build), got "
            f"block={block!r}; remove 'block' from arch_kwargs or use BasicBlockD"
        )


def residual_stage_convs(stage: nn.Module) -> list[tuple[nn.Module, str]]:
    """A residual encoder stage's replaceable convolutions in forward order: ``(block, "conv1" | "conv2")`` pairs.

    What ``conv_block_convs`` counts from the end on the ResEnc host (the residual path's projection is not one).
    """
    return [(b, name) for b in stage.blocks if isinstance(b, BasicBlockD) for name in ("conv1", "conv2")]


class TubeResidualEncoder(ResidualEncoder):
    """nnU-Net's ResidualEncoder (stem, BasicBlockD stages, strided first convs, skips returned) with blocks placed
    by resolved ``block_options``.

    * ``conv_block``: the last ``conv_block_convs`` convolutions of a selected stage (counted over its residual
      blocks' conv1/conv2, see :func:`residual_stage_convs`) become DSC / deformable blocks. A block replacing a
      ``conv2`` keeps what ``conv2`` is in ResNet-D: dropout-free, and without a nonlinearity at its end (norm, then
      the residual addition, then the block's ``nonlin2``); the nonlinearities inside the block (its branches) stay.
      The residual path (identity, or average pooling + 1x1 projection) is untouched.
    * ``dlk_encoder_stages`` / ``scse_encoder_stages``: DLK blocks / scSE appended to the stage's ``blocks``
      (``encoder.stages.<s>.blocks.<n_blocks + i>``), so the residual blocks' keys do not move.

    Forward: (B, C_in, *S) -> list of ``n_stages`` skips, skip ``s`` of shape (B, features_per_stage[s], *S_s).
    """

    def __init__(self, input_channels: int, n_stages: int, features_per_stage: list[int], conv_op: type,
                 kernel_sizes: list, strides: list, n_blocks_per_stage: list[int], layer_kwargs: dict,
                 bottleneck_channels: Any, stem_channels: int | None, block_options: dict) -> None:
        super().__init__(input_channels, n_stages, features_per_stage, conv_op, kernel_sizes, strides,
                         n_blocks_per_stage, **layer_kwargs, block=BasicBlockD,
                         bottleneck_channels=bottleneck_channels, return_skips=True, disable_default_stem=False,
                         stem_channels=stem_channels)
        o = block_options
        last_conv = {**layer_kwargs, "dropout_op": None, "dropout_op_kwargs": None}
        for s in range(n_stages):
            stage = self.stages[s]
            if s in o["conv_block_encoder_stages"]:
                for block, name in residual_stage_convs(stage)[-o["conv_block_convs"]:]:
                    old = getattr(block, name)
                    new = _make_conv_block(o["conv_block"], conv_op, old.input_channels, old.output_channels,
                                           self.kernel_sizes[s], list(old.stride),
                                           last_conv if name == "conv2" else layer_kwargs, o)
                    if name == "conv2":  # ResNet-D: no nonlinearity before the residual addition
                        new.nonlin = nn.Identity()
                    setattr(block, name, new)
            if s in o["dlk_encoder_stages"]:
                for _ in range(o["dlk_blocks_per_stage"]):
                    stage.blocks.append(DLKBlock(conv_op=conv_op, channels=features_per_stage[s],
                                                 mlp_ratio=o["dlk_mlp_ratio"], dlk_mode=o["dlk_mode"]))
            if s in o["scse_encoder_stages"]:
                stage.blocks.append(SCSE(conv_op=conv_op, channels=features_per_stage[s],
                                         reduction=o["scse_reduction"], mode=o["scse_mode"]))
        # whether a drop-in block with its nonlinearity (conv1) keeps its own output for backward
        self._drop_in_saves_output = memory.nonlin_saves_result(layer_kwargs["nonlin"], layer_kwargs["nonlin_kwargs"])

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> int:
        """Elements saved for backward per batch element by the encoder alone (input included)."""
        return memory.encoder_saved_elements(self, input_size)


class TubeResEncUNet(AbstractDynamicNetworkArchitectures):
    """nnU-Net's ResidualEncoderUNet (the ResEnc M/L/XL presets' network) plus tubular-structure blocks.

    Arguments: those of ``ResidualEncoderUNet`` (same names, same meaning; ``block`` must be ``BasicBlockD``, what
    the ResEnc planners use) and ``block_options`` (:mod:`nnunet_tubeconv.architectures.options`; ``None``: no
    blocks, i.e. exactly ResidualEncoderUNet: same modules with parameters, state-dict keys, parameter count and
    initialisation). Encoder: :class:`TubeResidualEncoder`; decoder: :class:`TubeDecoder`, the one TubeUNet uses
    (nnU-Net's plain UNetDecoder is ResEnc's decoder too). Option meanings are TubeUNet's; on this host the encoder's
    replaceable convolutions are the residual blocks' (see :func:`residual_stage_convs`), and the stem is never
    replaced. ``x: (B, input_channels, *S) -> (B, num_classes, *S)`` or, with deep supervision, a list of
    ``(B, num_classes, *S_r)`` for ``r = 0 .. n_stages - 2``, highest resolution first. No final nonlinearity.
    """

    def __init__(
        self,
        input_channels: int,
        n_stages: int,
        features_per_stage: int | list[int] | tuple[int, ...],
        conv_op: type[nn.Module],
        kernel_sizes: int | list | tuple,
        strides: int | list | tuple,
        n_blocks_per_stage: int | list[int] | tuple[int, ...],
        num_classes: int,
        n_conv_per_stage_decoder: int | list[int] | tuple[int, ...],
        conv_bias: bool = False,
        norm_op: type[nn.Module] | None = None,
        norm_op_kwargs: dict | None = None,
        dropout_op: type[_DropoutNd] | None = None,
        dropout_op_kwargs: dict | None = None,
        nonlin: type[nn.Module] | None = None,
        nonlin_kwargs: dict | None = None,
        deep_supervision: bool = False,
        block: type[nn.Module] = BasicBlockD,
        bottleneck_channels: int | list[int] | tuple[int, ...] | None = None,
        stem_channels: int | None = None,
        block_options: dict | None = None,
    ) -> None:
        super().__init__()
        _check_basic_block(block)
        features_per_stage, kernel_sizes, strides = _host_geometry(
            conv_op, input_channels, num_classes, n_stages, features_per_stage, kernel_sizes, strides)
        n_blocks_per_stage = _per_stage("n_blocks_per_stage", n_blocks_per_stage, n_stages)
        if any(not isinstance(b, (int, np.integer)) or b < 1 for b in n_blocks_per_stage):
            raise ValueError(f"n_blocks_per_stage must be positive integers, got {n_blocks_per_stage!r}")
        n_conv_per_stage_decoder = _per_stage("n_conv_per_stage_decoder", n_conv_per_stage_decoder, n_stages - 1)
        opts = resolve_block_options(block_options, n_stages,
                                     [CONVS_PER_RESIDUAL_BLOCK * int(b) for b in n_blocks_per_stage],
                                     n_conv_per_stage_decoder)
        self.block_options = opts

        self.key_to_encoder = "encoder.stages"
        self.key_to_stem = "encoder.stem"
        self.keys_to_in_proj = ("encoder.stem.convs.0.conv", "encoder.stem.convs.0.all_modules.0")
        layer_kwargs = _layer_kwargs(conv_bias, norm_op, norm_op_kwargs, dropout_op, dropout_op_kwargs, nonlin,
                                     nonlin_kwargs)
        self.encoder = TubeResidualEncoder(input_channels, n_stages, features_per_stage, conv_op, kernel_sizes,
                                           strides, n_blocks_per_stage, layer_kwargs, bottleneck_channels,
                                           stem_channels, opts)
        # ResidualEncoderUNet builds UNetDecoder(encoder, ...) with the encoder's layer settings, nonlin last
        self.decoder = TubeDecoder(self.encoder, num_classes, n_conv_per_stage_decoder, deep_supervision, False,
                                   layer_kwargs, opts)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        return self.decoder(self.encoder(x))

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> int:
        """Tensor elements a training-mode forward keeps for backward, per batch element, plus the logits.

        Same unit and counting as :meth:`TubeUNet.compute_conv_feature_map_size` (what ``saved_tensors_hooks``
        sees; the residual blocks, their projections and the in-place additions included), so *not* on the scale
        of ``ResidualEncoderUNet.compute_conv_feature_map_size`` that nnU-Net's ResEnc planners were tuned for.
        """
        return memory.network_saved_elements(self, input_size)

    @staticmethod
    def initialize(module: nn.Module) -> None:
        """ResidualEncoderUNet's initialisation: He init (except convolutions marked ``_tubeconv_keep_init``), then
        the last norm of every residual branch (``conv2.norm``, also when a block replaced ``conv2``) set to zero,
        so that every residual block starts as the identity (plus its nonlinearity)."""
        TubeUNet.initialize(module)
        init_last_bn_before_add_to_0(module)
