"""Modulated deformable convolution (DCNv2): Dai et al., "Deformable Convolutional Networks", ICCV 2017, and Zhu et
al., "Deformable ConvNets v2: More Deformable, Better Results", CVPR 2019. Maths: docs/explanation/maths.md section 6.

The free-form baseline next to the snake: every one of the ``P = prod(kernel)`` sample points of every output
position has its own free offset (``d`` values) and a modulation ``m = sigmoid(.)``, both predicted by a
zero-initialised convolution with the same kernel and stride::

    y(o) = sum_p W_p . m_p(o) . interp(x, o * stride - pad + q_p + offset_p(o)) + b

``interp`` is bilinear / trilinear with zeros outside the input (a corner outside contributes 0), as in the paper and
``torchvision.ops.deform_conv2d``. A fresh block has zero offsets and ``m = 0.5``: half an ordinary convolution.

3D has no library op: :func:`deform_conv_nd` is an autograd Function that loops over the kernel points with
``grid_sample`` and saves only the input, the offsets and the mask (the backward recomputes each point's samples and
calls ``grid_sampler_*_backward``), so memory stays that of the input, never ``P`` times it. It is N-D and the tests
check it against ``torchvision.ops.deform_conv2d`` in 2D. On CUDA, 2D runs ``torchvision.ops.deform_conv2d``; on CPU
it runs :func:`deform_conv_nd`, which there is about 5x faster than torchvision's im2col kernel (12x32x128^2,
forward + backward, one thread: 1.2 s vs 6.3 s).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from nnunet_tubeconv.blocks.utils import (
    as_tuple,
    axis_grid,
    build_dropout,
    build_nonlin,
    build_norm,
    check_input,
    conv_output_size,
    drop_in_geometry,
    numel,
    tracing,
)

__all__ = ["DeformConv", "deform_conv_nd", "traceable_deform_conv"]


def _kernel_points(kernel: Sequence[int]) -> list[tuple[int, ...]]:
    """Kernel offsets ``q_p`` in row-major order (the order of ``weight.flatten(2)`` and of torchvision's offsets)."""
    return list(itertools.product(*[range(k) for k in kernel]))


def _sampling_grid(offset_p: torch.Tensor, point, stride, padding, in_size) -> torch.Tensor:
    """Normalised ``grid_sample`` grid ``(B, *S_out, d)`` (last dim x, y[, z]) of one kernel point.

    ``offset_p``: ``(B, d, *S_out)`` float32, axes in input order. ``align_corners=False`` maps voxel ``i`` of an axis
    of size ``n`` to ``(2 i + 1) / n - 1``, which stays finite for ``n = 1``.
    """
    d = offset_p.shape[1]
    out_size = offset_p.shape[2:]
    coords = []
    for a in range(d):
        shape = [1] * d
        shape[a] = out_size[a]
        base = torch.arange(out_size[a], device=offset_p.device, dtype=offset_p.dtype).view(shape)
        pos = base * stride[a] - padding[a] + point[a] + offset_p[:, a]
        coords.append((2.0 * pos + 1.0) / in_size[a] - 1.0)
    return torch.stack(coords[::-1], dim=-1)


def _coordinates(t: torch.Tensor) -> torch.Tensor:
    """Sampling coordinates are at least float32 (half precision is only 0.5 voxel exact at index 512)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def _grid_sample(x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _grid_sample_backward(grad: torch.Tensor, x: torch.Tensor, grid: torch.Tensor, need_x: bool):
    op = torch.ops.aten.grid_sampler_2d_backward if x.ndim == 4 else torch.ops.aten.grid_sampler_3d_backward
    # interpolation 0 = bilinear, padding 0 = zeros
    return op(grad, x, grid, 0, 0, False, [need_x, True])


class _DeformConvFunction(torch.autograd.Function):
    """Modulated deformable convolution, one kernel point at a time; saves ``x``, ``offset``, ``mask`` only."""

    @staticmethod
    def forward(ctx, x, offset, mask, weight, bias, stride: tuple[int, ...], padding: tuple[int, ...]):
        with torch.autocast(x.device.type, enabled=False):
            batch, c_in, *in_size = x.shape
            c_out = weight.shape[0]
            kernel = weight.shape[2:]
            d = len(in_size)
            out_size = offset.shape[2:]
            n_out = numel(out_size)
            w = weight.flatten(2)  # (C_out, C_in, P)
            y = torch.zeros(batch, c_out, n_out, device=x.device, dtype=x.dtype)
            for p, point in enumerate(_kernel_points(kernel)):
                grid = _sampling_grid(_coordinates(offset[:, d * p : d * (p + 1)]), point, stride, padding, in_size)
                s = _grid_sample(x, grid.to(x.dtype)).view(batch, c_in, n_out)
                s = s * mask[:, p].reshape(batch, 1, n_out).to(x.dtype)
                y.baddbmm_(w[:, :, p].expand(batch, -1, -1), s)
            if bias is not None:
                y += bias.view(1, -1, 1)
        ctx.save_for_backward(x, offset, mask, weight)
        ctx.has_bias = bias is not None
        ctx.stride, ctx.padding = stride, padding
        return y.view(batch, c_out, *out_size)

    @staticmethod
    def backward(ctx, grad_out):
        x, offset, mask, weight = ctx.saved_tensors
        need_x, need_off, need_mask, need_w, need_b = ctx.needs_input_grad[:5]
        with torch.autocast(x.device.type, enabled=False):
            batch, c_in, *in_size = x.shape
            kernel = weight.shape[2:]
            d = len(in_size)
            out_size = offset.shape[2:]
            n_out = numel(out_size)
            c_out = weight.shape[0]
            w = weight.flatten(2)
            g = grad_out.reshape(batch, c_out, n_out).to(x.dtype)
            grad_x = torch.zeros_like(x) if need_x else None
            grad_off = torch.zeros_like(offset) if need_off else None
            grad_mask = torch.zeros_like(mask) if need_mask else None
            grad_w = torch.zeros_like(w) if need_w else None
            for p, point in enumerate(_kernel_points(kernel)):
                offset_p = _coordinates(offset[:, d * p : d * (p + 1)])
                grid = _sampling_grid(offset_p, point, ctx.stride, ctx.padding, in_size)
                grid = grid.to(x.dtype)
                s = _grid_sample(x, grid).view(batch, c_in, n_out)
                m = mask[:, p].reshape(batch, 1, n_out).to(x.dtype)
                gs = torch.matmul(w[:, :, p].t(), g)  # (B, C_in, N_out): gradient w.r.t. m * s
                if need_w:
                    grad_w[:, :, p] = torch.bmm(g, (s * m).transpose(1, 2)).sum(0)
                if need_mask:
                    grad_mask[:, p] = (gs * s).sum(1).view(batch, *out_size).to(mask.dtype)
                if need_x or need_off:
                    gx, gg = _grid_sample_backward((gs * m).view(batch, c_in, *out_size), x, grid, need_x)
                    if need_x:
                        grad_x += gx
                    if need_off:
                        for a in range(d):
                            # grid coordinate of axis a is (2 pos + 1) / n - 1, so d grid / d offset = 2 / n
                            grad_off[:, d * p + a] = (gg[..., d - 1 - a] * (2.0 / in_size[a])).to(offset.dtype)
            grad_weight = grad_w.view_as(weight) if need_w else None
            grad_b = g.sum((0, 2)) if (need_b and ctx.has_bias) else None
        return grad_x, grad_off, grad_mask, grad_weight, grad_b, None, None


def deform_conv_nd(
    x: torch.Tensor,
    offset: torch.Tensor,
    mask: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] = 0,
) -> torch.Tensor:
    """N-D modulated deformable convolution (dilation 1, one offset group), torchvision's conventions.

    x: ``(B, C_in, *S_in)``; weight: ``(C_out, C_in, *k)``; offset: ``(B, d * P, *S_out)`` with, per kernel point
    ``p`` (row-major over ``k``), its displacement along each spatial axis in input order (in 2D ``(dy, dx)`` pairs as
    in ``torchvision.ops.deform_conv2d``); mask: ``(B, P, *S_out)``. Returns ``(B, C_out, *S_out)``.
    """
    d = x.ndim - 2
    stride_t = as_tuple("stride", stride, d)
    padding_t = as_tuple("padding", padding, d, minimum=0)
    kernel = weight.shape[2:]
    n_points = numel(kernel)
    out_size = tuple((n + 2 * pd - k) // s + 1 for n, pd, k, s in zip(x.shape[2:], padding_t, kernel, stride_t))
    if offset.shape != (x.shape[0], d * n_points, *out_size):
        raise ValueError(f"offset must have shape {(x.shape[0], d * n_points, *out_size)}, got {tuple(offset.shape)}")
    if mask.shape != (x.shape[0], n_points, *out_size):
        raise ValueError(f"mask must have shape {(x.shape[0], n_points, *out_size)}, got {tuple(mask.shape)}")
    if tracing():
        return traceable_deform_conv(x, offset, mask, weight, bias, stride_t, padding_t)
    return _DeformConvFunction.apply(x, offset, mask, weight, bias, stride_t, padding_t)


def traceable_deform_conv(
    x: torch.Tensor,
    offset: torch.Tensor,
    mask: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: Sequence[int],
    padding: Sequence[int],
) -> torch.Tensor:
    """Modulated deformable convolution (DCNv2, Zhu et al., CVPR 2019) in ops that trace with dynamic sizes, N-D:
    what :class:`DeformConv` runs while a graph is exported (:func:`nnunet_tubeconv.blocks.utils.tracing`), as its
    eager paths cannot be (``torchvision``'s ``deform_conv2d`` has no ONNX symbolic, 3D runs an autograd Function).

    Same contract as :func:`nnunet_tubeconv.blocks.deform.deform_conv_nd` (and ``torchvision.ops.deform_conv2d``):
    ``x`` ``(B, C_in, *S_in)``; ``offset`` ``(B, d * P, *S_out)`` (per kernel point, row-major over the kernel, its
    displacement along each axis in input order); ``mask`` ``(B, P, *S_out)``; ``weight`` ``(C_out, C_in, *k)``.
    Returns ``(B, C_out, *S_out)``, the output size read from ``offset`` (the offset branch is a conv with the same
    kernel, stride and padding). One ``grid_sample`` (bilinear, zeros outside, ``align_corners=False``) per kernel
    point, as the block's own N-D path computes it; exports as ONNX ``GridSample``, 2-D from opset 16, 3-D from 20.
    (Flat gathers as in DSConv's ``traceable_snake_conv`` would need ``2^d`` of them per kernel point, 216 per 3x3x3
    layer: a graph that took minutes to export and ran 20 times slower in onnxruntime.)
    """
    batch, c_in = x.shape[0], x.shape[1]
    dim = x.dim() - 2
    in_spatial = list(x.shape[2:])
    out_spatial = list(offset.shape[2:])
    kernel = list(weight.shape[2:])
    c_out = weight.shape[0]
    sizes = [torch.as_tensor(n, device=x.device).to(torch.float32) for n in in_spatial]
    out_grids = [axis_grid(out_spatial[a], a, dim, torch.float32, x.device) for a in range(dim)]
    w = weight.reshape(c_out, c_in, -1)
    y = None
    for p, point in enumerate(itertools.product(*[range(k) for k in kernel])):
        coords = []
        for a in range(dim):
            pos = out_grids[a] * float(stride[a]) + float(point[a] - padding[a]) + offset[:, dim * p + a].float()
            coords.append((2 * pos + 1) / sizes[a] - 1)  # voxel i of n -> (2 i + 1) / n - 1 (align_corners=False)
        grid = torch.stack(coords[::-1], dim=-1)  # (B, *S_out, d), last dim x, y[, z]
        sample = F.grid_sample(x, grid.to(x.dtype), mode="bilinear", padding_mode="zeros", align_corners=False)
        sample = sample.reshape(batch, c_in, -1) * mask[:, p].reshape(batch, 1, -1).to(x.dtype)
        term = torch.matmul(w[:, :, p], sample)
        y = term if y is None else y + term
    if bias is not None:
        y = y + bias.reshape(1, c_out, 1)
    return y.reshape(batch, c_out, *out_spatial)


class DeformConv(nn.Module):
    """Modulated deformable convolution (DCNv2) + dropout, norm, nonlin: a drop-in for ``ConvDropoutNormReLU``.

    x: ``(B, C_in, *S)`` -> ``(B, C_out, *S')``, ``S'`` the size of ``nn.Conv`` with padding ``(k - 1) // 2`` and
    ``stride``. Kernel sizes must be odd (centred sample grid); anisotropic kernels such as ``[1, 3, 3]`` work.

    Submodules: ``conv`` (holds ``W`` and ``b``; an ``nn.ConvNd`` so network initialisers treat it as one),
    ``offset_conv`` (``(d + 1) * P`` channels: ``d`` offsets per point in the layout of :func:`deform_conv_nd`,
    then ``P`` mask logits; zero-initialised and marked ``_tubeconv_keep_init``), ``dropout``, ``norm``, ``nonlin``.
    """

    def __init__(
        self,
        conv_op: type,
        input_channels: int,
        output_channels: int,
        kernel_size: int | Sequence[int] = 3,
        stride: int | Sequence[int] = 1,
        conv_bias: bool = True,
        norm_op: type | None = None,
        norm_op_kwargs: dict | None = None,
        dropout_op: type | None = None,
        dropout_op_kwargs: dict | None = None,
        nonlin: type | None = None,
        nonlin_kwargs: dict | None = None,
    ):
        super().__init__()
        dim, kernel, strides = drop_in_geometry(self, conv_op, input_channels, output_channels, kernel_size, stride)
        self.padding = tuple((k - 1) // 2 for k in kernel)
        self.n_points = numel(kernel)
        self.conv = conv_op(
            input_channels, output_channels, kernel, stride=strides, padding=self.padding, bias=conv_bias
        )
        self.offset_conv = conv_op(
            input_channels, (dim + 1) * self.n_points, kernel, stride=strides, padding=self.padding, bias=True
        )
        nn.init.zeros_(self.offset_conv.weight)
        nn.init.zeros_(self.offset_conv.bias)
        self.offset_conv._tubeconv_keep_init = True
        self.dropout = build_dropout(dropout_op, dropout_op_kwargs)
        self.norm = build_norm(norm_op, output_channels, norm_op_kwargs)
        self.nonlin = build_nonlin(nonlin, nonlin_kwargs)

    def offsets_and_mask(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Offsets ``(B, d * P, *S')`` in voxels and modulation ``(B, P, *S')`` in (0, 1), float32."""
        om = self.offset_conv(x)
        with torch.autocast(x.device.type, enabled=False):
            om = om.float()
            split = self.dim * self.n_points
            return om[:, :split], torch.sigmoid(om[:, split:])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.dim, self.input_channels, type(self).__name__)
        offset, mask = self.offsets_and_mask(x)
        weight, bias = self.conv.weight, self.conv.bias
        if tracing():  # graph export: the same maths in plain operations (torchvision's op has no ONNX symbolic)
            y = traceable_deform_conv(x, offset, mask, weight, bias, self.stride, self.padding)
        elif self.dim == 2 and x.is_cuda:
            from torchvision.ops import deform_conv2d

            y = deform_conv2d(x, offset.to(x.dtype), weight, bias, self.stride, self.padding, mask=mask.to(x.dtype))
        else:
            device_type = x.device.type
            if torch.is_autocast_enabled(device_type):
                # grid_sample wants input and grid of one dtype: keep the deformable sampling in float32
                x, weight = x.float(), weight.float()
                bias = None if bias is None else bias.float()
            y = _DeformConvFunction.apply(x, offset, mask, weight, bias, self.stride, self.padding)
        return self.nonlin(self.norm(self.dropout(y)))

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> int:
        """Elements saved for backward per batch element: the input, the offset/mask conv's output and the mask, and
        the dropout/norm/nonlin tail; never a ``P``-times enlarged sample tensor."""
        if len(input_size) != self.dim:
            raise ValueError(f"input_size must be the {self.dim} spatial sizes (no batch/channel), got {input_size}")
        n_in = numel(input_size)
        n_out = numel(conv_output_size(input_size, self.kernel_size, self.stride))
        total = self.input_channels * n_in + (self.dim + 2) * self.n_points * n_out
        c = self.output_channels * n_out
        for module in (self.dropout, self.norm, self.nonlin):
            if not isinstance(module, nn.Identity):
                total += c
        return int(total)
