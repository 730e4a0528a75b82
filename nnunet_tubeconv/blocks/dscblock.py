"""DSCNet multi-view block (Qi et al., "Dynamic Snake Convolution based on Topological Geometric Constraints for
Tubular Structure Segmentation", ICCV 2023, arXiv 2307.08388). Maths: docs/explanation/maths.md section 2.

One ordinary convolution (the stage's kernel) and one :class:`DSConv` per usable spatial axis look at the same
features; each branch gives ``C_out`` channels followed by norm + nonlin; the ``(1 + n_axes) * C_out`` channels are
concatenated and fused by an ordinary convolution (stage kernel) to ``C_out``, then dropout, norm, nonlin.

The block is a drop-in for dynamic-network-architectures' ``ConvDropoutNormReLU``: same keyword arguments, same
output shape (that of ``nn.Conv`` with padding ``(k - 1) // 2`` and the stage stride).

Stride: nnU-Net puts a stage's stride in its first convolution. With stride 1 the branches run in parallel on the
input, as in the paper. With a stride > 1 the ordinary branch does the downsampling (stage kernel and stride, as
nnU-Net's own first convolution would) and the snakes run on its output at the reduced resolution, so no snake ever
samples at full resolution only to be thrown away. ``strided_snakes_follow_plain`` records which wiring was built.

Anisotropy: a spatial axis whose stage kernel is 1 (nnU-Net's ``[1, 3, 3]`` stages) gets no snake along it and no
snake swings along it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from nnunet_tubeconv.blocks.dsconv import DSConv
from nnunet_tubeconv.blocks.utils import (
    build_dropout,
    build_nonlin,
    build_norm,
    check_input,
    conv_output_size,
    drop_in_geometry,
    numel,
)

__all__ = ["DSCBlock"]


class DSCBlock(nn.Module):
    """Plain conv + one dynamic snake convolution per usable axis, concatenated and fused.

    x: ``(B, C_in, *S)`` -> ``(B, C_out, *S')`` with ``S'`` the size of a "same"-padded conv with ``stride``.

    Args:
        conv_op, input_channels, output_channels, kernel_size, stride, conv_bias, norm_op, norm_op_kwargs,
        dropout_op, dropout_op_kwargs, nonlin, nonlin_kwargs: as ``ConvDropoutNormReLU`` (nnU-Net plans vocabulary).
        snake_kernel_size: ``K`` of every DSConv (odd).
        extend_scope: DSConv's swing scale.
        swing_norm, swing_lr_scale: DSConv's swing-branch norm (``"stage"`` or ``"none"``) and learning-rate multiplier.

    Submodules: ``plain`` (conv, norm, nonlin), ``snakes`` (one DSConv with norm + nonlin per axis in
    ``snake_axes``), ``fuse`` (conv with the stage kernel), ``dropout``, ``norm``, ``nonlin``.
    """

    def __init__(
        self,
        conv_op: type,
        input_channels: int,
        output_channels: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        conv_bias: bool = True,
        norm_op: type | None = None,
        norm_op_kwargs: dict | None = None,
        dropout_op: type | None = None,
        dropout_op_kwargs: dict | None = None,
        nonlin: type | None = None,
        nonlin_kwargs: dict | None = None,
        snake_kernel_size: int = 9,
        extend_scope: float = 1.0,
        swing_norm: str = "stage",
        swing_lr_scale: float = 1.0,
    ):
        super().__init__()
        dim, kernel, strides = drop_in_geometry(self, conv_op, input_channels, output_channels, kernel_size, stride)
        self.snake_axes = tuple(i for i in range(dim) if kernel[i] > 1)
        self.strided_snakes_follow_plain = any(s > 1 for s in strides)
        padding = [(k - 1) // 2 for k in kernel]

        self.plain = nn.Sequential(
            conv_op(input_channels, output_channels, kernel, stride=strides, padding=padding, bias=conv_bias),
            build_norm(norm_op, output_channels, norm_op_kwargs),
            build_nonlin(nonlin, nonlin_kwargs),
        )
        snake_in = output_channels if self.strided_snakes_follow_plain else input_channels
        self.snakes = nn.ModuleList(
            DSConv(
                conv_op=conv_op,
                input_channels=snake_in,
                output_channels=output_channels,
                kernel_size=snake_kernel_size,
                axis=a,
                extend_scope=extend_scope,
                conv_bias=conv_bias,
                norm_op=norm_op,
                norm_op_kwargs=norm_op_kwargs,
                nonlin=nonlin,
                nonlin_kwargs=nonlin_kwargs,
                swing_axes=[s for s in self.snake_axes if s != a],
                swing_norm=swing_norm,
                swing_lr_scale=swing_lr_scale,
            )
            for a in self.snake_axes
        )
        n_branches = 1 + len(self.snakes)
        self.fuse = conv_op(n_branches * output_channels, output_channels, kernel, padding=padding, bias=conv_bias)
        self.dropout = build_dropout(dropout_op, dropout_op_kwargs)
        self.norm = build_norm(norm_op, output_channels, norm_op_kwargs)
        self.nonlin = build_nonlin(nonlin, nonlin_kwargs)
        # dynamic-network-architectures' blocks expose these; nnU-Net-style code reads them
        self.conv_op = conv_op

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.dim, self.input_channels, type(self).__name__)
        h = self.plain(x)
        src = h if self.strided_snakes_follow_plain else x
        y = torch.cat([h, *(snake(src) for snake in self.snakes)], dim=1)
        return self.nonlin(self.norm(self.dropout(self.fuse(y))))

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> int:
        """Elements saved for backward per batch element (input included), see ``block_api``: the input, what the
        plain branch's norm/nonlin keep, each DSConv's own count (its input counted once), the concatenation read by
        the fuse conv, and the fuse norm/nonlin."""
        if len(input_size) != self.dim:
            raise ValueError(f"input_size must be the {self.dim} spatial sizes (no batch/channel), got {input_size}")
        out_size = conv_output_size(input_size, self.kernel_size, self.stride)
        n_in, n_out = numel(input_size), numel(out_size)
        c_out = self.output_channels
        per_norm_nonlin = _norm_nonlin_elements(self.plain[1], self.plain[2], c_out * n_out)
        total = self.input_channels * n_in + per_norm_nonlin
        for snake in self.snakes:
            snake_in = out_size if self.strided_snakes_follow_plain else input_size
            # the snake's input is already counted (x or the plain branch's output)
            total += snake.compute_conv_feature_map_size(list(snake_in)) - snake.input_channels * numel(snake_in)
        total += (1 + len(self.snakes)) * c_out * n_out  # concatenation, saved by the fuse conv
        if not isinstance(self.dropout, nn.Identity):
            total += c_out * n_out
        total += _norm_nonlin_elements(self.norm, self.nonlin, c_out * n_out)
        return int(total)


def _norm_nonlin_elements(norm: nn.Module, nonlin: nn.Module, elements: int) -> int:
    """What a conv -> norm -> nonlin tail keeps: the norm's input, and the nonlin's input or (in place) result."""
    total = 0
    if not isinstance(norm, nn.Identity):
        total += elements
    if not isinstance(nonlin, nn.Identity):
        total += elements
    return total
