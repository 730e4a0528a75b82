"""Dynamic snake convolution (DSConv), Qi et al., "Dynamic Snake Convolution based on Topological Geometric
Constraints for Tubular Structure Segmentation", ICCV 2023 (arXiv 2307.08388).
Maths: docs/explanation/maths.md section 1.

A length-``K`` convolution laid along one spatial axis (the *morph* axis ``a``) whose sample points swing sideways
along the other (*swing*) axes. The swing of kernel point ``j`` is accumulated outward from the centre, so the kernel
bends like a snake::

    delta = tanh(norm(conv3(x)))                      one value per kernel point j != 0 and swing axis s
    Delta_{s,0} = 0,  Delta_{s,+j} = sum_{i=1..j} delta_{s,+i},  Delta_{s,-j} = sum_{i=1..j} delta_{s,-i}
    point_j(p) = p + j * e_a + extend_scope * sum_s Delta_{s,j}(p) * e_s       (clamped to the volume)
    y(p) = sum_j W_j . interp(x, point_j(p)) + b

Implementation (:class:`.function.SnakeConvFunction`, a hand-written autograd Function): the coordinate along the
morph axis is an exact integer, so the interpolation only needs the ``2^(d-1)`` corners across the swing axes, read
with int64 row indices from a channels-last copy of ``x`` and contracted with ``W`` by a GEMM, chunk by chunk of
positions, so no ``K``-times enlarged tensor outlives a chunk. Only ``x``, the swing ``delta`` and the weights are
saved for backward, which recomputes the samples, scatters ``W^T g`` onto the interpolation corners and reads the
swing gradient from the corners' differences. On CPU (float32/float64) the reads, the scatter and the swing gradient
run in compiled C loops (``cpu_kernels.c`` via :mod:`.cpu_backend`, with the cumulative swing summed in the loop);
on CUDA in Triton kernels (:mod:`.triton_backend`); elsewhere, or without a C compiler or Triton, in PyTorch
(:mod:`.torch_backend`: ``embedding_bag`` for the fused gather + interpolation, ``scatter_add_``, forward-difference
tables). All give the same numbers; the tests run each.

Deliberate differences from the authors' code (docs/explanation/maths.md section 1, defects): batch elements never
mix, the centre point never moves (its swing channel is not even predicted, so no parameter is unused), all ``K - 1``
outer points get the accumulated swing, indices are int64, the swing branch norm is the stage's ``norm_op``
(GroupNorm when none or a BatchNorm is given; no norm with ``swing_norm="none"``) and sampling coordinates stay
float32 under autocast.

Gradient at the border: a point whose swing pushes it outside the volume is clamped onto the border (replicate
padding) and, like ``torch.clamp``, passes no gradient to its swing from that position.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from nnunet_tubeconv.blocks.dsconv import custom_ops
from nnunet_tubeconv.blocks.dsconv.function import SnakeConvFunction
from nnunet_tubeconv.blocks.dsconv.maths import cumulative_swing
from nnunet_tubeconv.blocks.dsconv.traceable import traced_snake_conv
from nnunet_tubeconv.blocks.utils import (
    build_nonlin,
    build_norm,
    check_channels,
    check_input,
    compiling,
    conv_op_to_dim,
    is_batch_norm,
    numel,
    tracing,
)
from nnunet_tubeconv.vocabulary import SWING_NORMS

__all__ = ["SWING_NORMS", "DSConv", "snake_conv"]


def snake_conv(
    x: torch.Tensor,
    delta: torch.Tensor | None,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    axis: int,
    swing_axes: Sequence[int],
    extend_scope: float = 1.0,
) -> torch.Tensor:
    """Functional snake convolution (stride 1, border replication).

    x: ``(B, C_in, *S)``; delta: ``(B, len(swing_axes) * (K - 1), *S)`` swing per kernel point ``j != 0`` (channels
    per swing axis in order ``j = -c..-1, +1..+c``), float32, or None for no swing; weight: ``(C_out, C_in, K)``;
    bias: ``(C_out,)`` or None. Returns ``(B, C_out, *S)`` in ``x``'s dtype.
    """
    swing_axes = tuple(swing_axes)
    if delta is not None and not swing_axes:
        raise ValueError("delta was given but swing_axes is empty")
    if tracing():
        return traced_snake_conv(x, delta, weight, bias, axis, swing_axes, float(extend_scope))
    return _apply_snake_conv(x, delta, weight, bias, axis, swing_axes, float(extend_scope))


def _apply_snake_conv(x, delta, weight, bias, axis: int, swing_axes: tuple[int, ...], extend_scope: float):
    """The eager Function, or, under ``torch.compile``, the same Function behind the custom op of
    ``custom_ops.py`` (the compiler cannot trace into its kernels; the op runs them as they are)."""
    if compiling():
        return custom_ops.snake_conv(x, delta, weight, bias, axis, swing_axes, extend_scope)
    return SnakeConvFunction.apply(x, delta, weight, bias, axis, swing_axes, extend_scope)


# ----------------------------------------------------------------------------------------------------------------
# the module
# ----------------------------------------------------------------------------------------------------------------
class DSConv(nn.Module):
    """Dynamic snake convolution along one spatial axis (stride 1), optionally followed by norm and nonlin.

    x: ``(B, C_in, *S)`` -> ``(B, C_out, *S)``, ``S`` = ``(H, W)`` (``conv_op=nn.Conv2d``) or ``(D, H, W)``.

    Args:
        conv_op: ``nn.Conv2d`` or ``nn.Conv3d``.
        kernel_size: ``K``, odd and positive: number of sample points along the snake.
        axis: the morph axis, an index into the spatial axes (0 = first spatial axis).
        extend_scope: voxels moved by one unit of accumulated swing.
        conv_bias: bias of the snake convolution.
        norm_op / nonlin: applied to the output (None: raw weighted sum). ``norm_op`` also normalises the swing
            branch, unless it is a BatchNorm or None, where GroupNorm (groups of 2 channels) is used instead.
        swing_axes: spatial axes the points may swing along; default every axis but ``axis``. DSCBlock passes the
            axes whose stage kernel is > 1 (anisotropic stages).

        swing_norm: ``"stage"`` (``delta = tanh(norm(conv3(x)))``, ``norm_op`` as above; the DSCNet authors' form) or
            ``"none"`` (``delta = tanh(conv3(x))``).
        swing_lr_scale: learning-rate multiplier for the swing branch's parameters (:meth:`swing_parameters`); the
            module only records it, the trainer's optimiser reads it (``nnUNetTrainerTubeBase.configure_optimizers``).

    Parameters: ``conv.weight`` ``(C_out, C_in, 1.., K, ..1)`` (an ``nn.ConvNd`` with kernel ``K`` along ``axis``, so
    network-level initialisers treat it as a convolution), ``swing_conv`` (3^d, no bias, zero-initialised and marked
    ``_tubeconv_keep_init``) and ``swing_norm`` (``nn.Identity`` with ``swing_norm="none"``). A fresh DSConv therefore
    equals ``conv`` applied with replicate padding of ``K // 2`` along ``axis``.

    The zero init only means "start straight and grow" with ``swing_norm="none"``: there the swing after the first
    optimiser step is of the size of that step (``lr * |grad|``). With ``"stage"`` the norm rescales any non-zero
    output of the swing conv to unit variance, so after the first update, however small, the swing is of full size
    (mean |delta| about 0.55, several percent beyond |tanh| = 0.95) in a direction set by that first gradient; at
    init the norm's input is constant, so its gradient passes with the gain ``1 / sqrt(eps)``.
    """

    def __init__(
        self,
        conv_op: type,
        input_channels: int,
        output_channels: int,
        kernel_size: int = 9,
        axis: int = 0,
        extend_scope: float = 1.0,
        conv_bias: bool = True,
        norm_op: type | None = None,
        norm_op_kwargs: dict | None = None,
        nonlin: type | None = None,
        nonlin_kwargs: dict | None = None,
        swing_axes: Sequence[int] | None = None,
        swing_norm: str = "stage",
        swing_lr_scale: float = 1.0,
    ):
        super().__init__()
        dim = conv_op_to_dim(conv_op)
        if swing_norm not in SWING_NORMS:
            raise ValueError(f"swing_norm must be one of {list(SWING_NORMS)}, got {swing_norm!r}")
        if (not isinstance(swing_lr_scale, (int, float)) or isinstance(swing_lr_scale, bool)
                or not swing_lr_scale >= 0 or swing_lr_scale == float("inf")):
            raise ValueError(f"swing_lr_scale must be a finite number >= 0 (1 = the network's learning rate), "
                             f"got {swing_lr_scale!r}")
        check_channels("input_channels", input_channels)
        check_channels("output_channels", output_channels)
        if not isinstance(kernel_size, int) or isinstance(kernel_size, bool) or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size of DSConv must be a positive odd int (e.g. 9), got {kernel_size!r}")
        if not isinstance(axis, int) or isinstance(axis, bool) or not 0 <= axis < dim:
            raise ValueError(
                f"axis must index a spatial axis of the {dim}D input: an int in [0, {dim - 1}], got {axis!r}"
            )
        if not isinstance(extend_scope, (int, float)) or isinstance(extend_scope, bool) or not extend_scope > 0:
            raise ValueError(f"extend_scope must be a positive number, got {extend_scope!r}")
        if swing_axes is None:
            swing_axes = tuple(i for i in range(dim) if i != axis)
        else:
            swing_axes = tuple(swing_axes)
            bad = [s for s in swing_axes if not isinstance(s, int) or not 0 <= s < dim or s == axis]
            if bad or len(set(swing_axes)) != len(swing_axes):
                raise ValueError(
                    f"swing_axes must be distinct spatial axes in [0, {dim - 1}] other than axis={axis}, "
                    f"got {swing_axes}"
                )
            swing_axes = tuple(sorted(swing_axes))
        if kernel_size == 1:
            swing_axes = ()  # a single point is the centre, which never moves
        self.dim = dim
        self.input_channels = input_channels
        self.output_channels = output_channels
        self.kernel_size = kernel_size
        self.axis = axis
        self.swing_axes = swing_axes
        self.extend_scope = float(extend_scope)
        self.swing_norm_kind = swing_norm
        self.swing_lr_scale = float(swing_lr_scale)

        conv_kernel = [1] * dim
        conv_kernel[axis] = kernel_size
        conv_padding = [0] * dim
        conv_padding[axis] = kernel_size // 2
        self.conv = conv_op(
            input_channels, output_channels, conv_kernel, padding=conv_padding, padding_mode="replicate", bias=conv_bias
        )
        self.swing_conv: nn.Module | None = None
        self.swing_norm: nn.Module | None = None
        n_swing_channels = len(swing_axes) * (kernel_size - 1)
        if n_swing_channels:
            self.swing_conv = conv_op(input_channels, n_swing_channels, 3, padding=1, bias=False)
            nn.init.zeros_(self.swing_conv.weight)
            self.swing_conv._tubeconv_keep_init = True
            if swing_norm == "none":
                self.swing_norm = nn.Identity()
            elif norm_op is None or is_batch_norm(norm_op):
                # BatchNorm would couple the samples of a batch and drift between train and eval
                # (docs/explanation/maths.md section 1)
                self.swing_norm = nn.GroupNorm(n_swing_channels // 2, n_swing_channels)
            else:
                self.swing_norm = norm_op(n_swing_channels, **(norm_op_kwargs or {}))
        self.norm = build_norm(norm_op, output_channels, norm_op_kwargs)
        self.nonlin = build_nonlin(nonlin, nonlin_kwargs)

    def swing_parameters(self) -> list[nn.Parameter]:
        """The swing branch's parameters (swing conv and swing norm): those ``swing_lr_scale`` applies to."""
        out: list[nn.Parameter] = []
        for m in (self.swing_conv, self.swing_norm):
            if m is not None:
                out.extend(m.parameters())
        return out

    def swing(self, x: torch.Tensor) -> torch.Tensor | None:
        """Raw swing ``delta = tanh(norm(conv3(x)))`` (``tanh(conv3(x))`` with ``swing_norm="none"``): float32
        ``(B, n_swing * (K - 1), *S)`` or None (no swing)."""
        if self.swing_conv is None:
            return None
        u = self.swing_conv(x)
        with torch.autocast(x.device.type, enabled=False):
            return torch.tanh(self.swing_norm(u.float()))

    def snake_coordinates(self, x: torch.Tensor) -> torch.Tensor:
        """Sample points ``(B, K, d, *S)`` float32, voxel units, spatial axes in input order, before clamping."""
        check_input(x, self.dim, self.input_channels, type(self).__name__)
        batch, _, *spatial = x.shape
        k_size = self.kernel_size
        grids = []
        for i, s in enumerate(spatial):
            shape = [1] * (self.dim + 2)
            shape[i + 2] = s
            grids.append(torch.arange(s, device=x.device, dtype=torch.float32).view(shape))
        j = torch.arange(k_size, device=x.device, dtype=torch.float32) - k_size // 2
        coords = []
        delta = self.swing(x)
        offsets = None
        if delta is not None:
            offsets = cumulative_swing(delta, len(self.swing_axes), k_size) * self.extend_scope
        for i in range(self.dim):
            c = grids[i].expand(batch, k_size, *spatial)
            if i == self.axis:
                c = c + j.view([1, k_size] + [1] * self.dim)
            elif i in self.swing_axes and offsets is not None:
                c = c + offsets[:, self.swing_axes.index(i)]
            coords.append(c)
        return torch.stack(coords, dim=2).contiguous()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.dim, self.input_channels, type(self).__name__)
        delta = self.swing(x)
        weight = self.conv.weight.reshape(self.output_channels, self.input_channels, self.kernel_size)
        bias = self.conv.bias
        device_type = x.device.type
        if torch.is_autocast_enabled(device_type):
            # features and weights follow autocast; the coordinates (delta) stay float32
            dtype = torch.get_autocast_dtype(device_type)
            x, weight = x.to(dtype), weight.to(dtype)
            bias = None if bias is None else bias.to(dtype)
        if tracing():
            y = traced_snake_conv(x, delta, weight, bias, self.axis, self.swing_axes, self.extend_scope)
        else:
            y = _apply_snake_conv(x, delta, weight, bias, self.axis, self.swing_axes, self.extend_scope)
        return self.nonlin(self.norm(y))

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> int:
        """Elements saved for backward per batch element: the input, the swing branch's norm input and tanh
        output, and (when present) the output norm's input and the nonlin's tensor. Never a K-times enlarged one."""
        if len(input_size) != self.dim:
            raise ValueError(f"input_size must be the {self.dim} spatial sizes (no batch/channel), got {input_size}")
        n = numel(input_size)
        total = self.input_channels * n
        if self.swing_conv is not None:
            # the norm's input (with a swing norm) and tanh's output
            per_channel = 1 if isinstance(self.swing_norm, nn.Identity) else 2
            total += per_channel * len(self.swing_axes) * (self.kernel_size - 1) * n
        if not isinstance(self.norm, nn.Identity):
            total += self.output_channels * n
        if not isinstance(self.nonlin, nn.Identity):
            total += self.output_channels * n
        return int(total)
