"""Export-only forwards for blocks whose training forward cannot be traced into ONNX with dynamic shapes.

Why this exists: :class:`~nnunet_tubeconv.blocks.dsconv.DSConv` computes its snake convolution inside a custom
``torch.autograd.Function`` (a memory-lean backward). Neither of torch's ONNX exporters takes it with dynamic
spatial axes (torch 2.14): the TorchScript exporter crashes in its peephole pass on the inlined Python op, and the
dynamo exporter specialises the spatial sizes (Python ``max``/``int`` on sizes inside the Function), so the model
only accepts the example shape. :class:`~nnunet_tubeconv.blocks.deform.DeformConv` runs ``torchvision``'s
``deform_conv2d`` in 2D (no ONNX symbolic) and another autograd Function in 3D. This module computes the same maths
(SPEC-blocks.md sections 1 and 6; Qi et al., ICCV 2023, arXiv 2307.08388; Zhu et al., CVPR 2019) with plain tensor
operations whose every size is derived from the input's traced shape, and :func:`exportable` swaps them in on a
deep copy of a network. Tests compare them with the blocks' own forwards.

DSConv's sampling uses flat int64 gathers (ONNX ``GatherElements``), not ``grid_sample``: the coordinate along the
morph axis is an exact integer, so interpolation only needs the ``2^(d-1)`` corners across the swing axes, and
gathers export at any opset and in 3D (ONNX ``GridSample`` is 2-D only before opset 20). DeformConv's free offsets
need all ``2^d`` corners, so it uses ``grid_sample`` (one per kernel point), which makes 3D deformable networks
opset 20.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import itertools
import types
from collections.abc import Iterator, Sequence

import torch
from torch import nn

__all__ = [
    "cumulative_swing",
    "export_patches",
    "exportable",
    "replaced_modules",
    "traceable_deform_conv",
    "traceable_snake_conv",
]


def cumulative_swing(delta: torch.Tensor, n_swing: int, kernel_size: int) -> torch.Tensor:
    """``delta`` ``(B, n_swing * (K - 1), *S)`` -> cumulative swing ``(B, n_swing, K, *S)`` (centre 0).

    Channels per swing axis are the kernel points ``j = -c..-1, +1..+c``; ``Delta_{+j} = sum_{i<=j} delta_{+i}``,
    ``Delta_{-j} = sum_{i<=j} delta_{-i}``.
    """
    c = kernel_size // 2
    spatial = delta.shape[2:]
    d = delta.reshape(delta.shape[0], n_swing, kernel_size - 1, *spatial)
    neg = torch.flip(torch.cumsum(torch.flip(d[:, :, :c], [2]), 2), [2])
    pos = torch.cumsum(d[:, :, c:], 2)
    return torch.cat([neg, torch.zeros_like(d[:, :, :1]), pos], dim=2)


def _axis_grid(size: torch.Tensor | int, axis: int, dim: int, dtype: torch.dtype, device) -> torch.Tensor:
    """``arange(size)`` shaped ``(1, ..., size, ..., 1)`` (``dim + 1`` axes, batch first) to broadcast over ``S``."""
    shape = [1] * (dim + 1)
    shape[axis + 1] = -1
    return torch.arange(size, dtype=dtype, device=device).reshape(shape)


def traceable_snake_conv(
    x: torch.Tensor,
    delta: torch.Tensor | None,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    axis: int,
    swing_axes: Sequence[int],
    extend_scope: float,
) -> torch.Tensor:
    """Snake convolution (stride 1, border replication) in ops that trace with dynamic sizes.

    Same contract as :func:`nnunet_tubeconv.blocks.dsconv.snake_conv`: ``x`` ``(B, C_in, *S)``; ``delta``
    ``(B, len(swing_axes) * (K - 1), *S)`` or None; ``weight`` ``(C_out, C_in, K)``; ``bias`` ``(C_out,)`` or None.
    Returns ``(B, C_out, *S)``. Every size is read from ``x.shape`` at run time (under the ONNX tracer these are
    graph values, so the exported model accepts any spatial size).
    """
    batch, c_in = x.shape[0], x.shape[1]
    spatial = list(x.shape[2:])
    dim = len(spatial)
    c_out, kernel_size = weight.shape[0], weight.shape[2]
    device = x.device
    # sizes as int64 tensors: under the ONNX tracer they are graph values, in eager mode constants
    sizes = [torch.as_tensor(s, dtype=torch.int64, device=device) for s in spatial]
    zero = torch.zeros((), dtype=torch.int64, device=device)
    strides = [torch.ones((), dtype=torch.int64, device=device)] * dim
    for i in range(dim - 2, -1, -1):
        strides[i] = strides[i + 1] * sizes[i + 1]
    grids = [_axis_grid(spatial[i], i, dim, torch.int64, device) for i in range(dim)]
    base = zero
    for i in range(dim):
        if i != axis and i not in swing_axes:
            base = base + grids[i] * strides[i]
    offsets = None
    if delta is not None and len(swing_axes) > 0:
        offsets = cumulative_swing(delta.float(), len(swing_axes), kernel_size) * extend_scope
    xf = x.reshape(batch, c_in, -1)  # (B, C_in, N)

    # per swing axis: float grid, largest coordinate, largest "low" corner (size - 2, at least 0)
    swing_parts = []
    for s in swing_axes:
        top = sizes[s] - 1
        swing_parts.append((s, _axis_grid(spatial[s], s, dim, torch.float32, device), top.to(torch.float32),
                            torch.maximum(top - 1, zero).to(torch.float32), top))

    y = None
    for kk in range(kernel_size):
        j = kk - kernel_size // 2
        morph = torch.minimum(torch.maximum(grids[axis] + j, zero), sizes[axis] - 1) * strides[axis]
        static = base + morph  # (1, *S) int64: the morph-axis coordinate is an exact integer
        if j == 0:
            sample = xf
        elif offsets is None:
            sample = xf.gather(2, static.reshape(1, 1, -1).expand(batch, c_in, -1))
        else:
            lows, highs, fracs = [], [], []
            for k, (s, grid_f, top_f, low_max, top) in enumerate(swing_parts):
                pos = torch.minimum(torch.clamp(grid_f + offsets[:, k, kk], min=0.0), top_f)  # (B, *S), clamped
                low = torch.minimum(torch.floor(pos), low_max)
                low_i = low.to(torch.int64)
                lows.append(low_i * strides[s])
                highs.append(torch.minimum(low_i + 1, top) * strides[s])
                fracs.append((pos - low).reshape(batch, 1, -1).to(x.dtype))
            values = []
            for bits in itertools.product((0, 1), repeat=len(swing_parts)):
                idx = static
                for k, bit in enumerate(bits):
                    idx = idx + (highs[k] if bit else lows[k])
                values.append(xf.gather(2, idx.reshape(batch, 1, -1).expand(batch, c_in, -1)))
            # multilinear interpolation, the last swing axis innermost (itertools.product order)
            for k in reversed(range(len(fracs))):
                f = fracs[k]
                values = [values[i] + f * (values[i + 1] - values[i]) for i in range(0, len(values), 2)]
            sample = values[0]
        term = torch.matmul(weight[:, :, kk], sample)  # (C_out, C_in) @ (B, C_in, N) -> (B, C_out, N)
        y = term if y is None else y + term
    if bias is not None:
        y = y + bias.reshape(1, c_out, 1)
    return y.reshape(batch, c_out, *spatial)


def _dsconv_export_forward(self, x: torch.Tensor) -> torch.Tensor:
    """DSConv.forward with :func:`traceable_snake_conv` in place of the autograd Function (float32, eval)."""
    delta = self.swing(x)
    weight = self.conv.weight.reshape(self.output_channels, self.input_channels, self.kernel_size)
    y = traceable_snake_conv(x, delta, weight, self.conv.bias, self.axis, tuple(self.swing_axes), self.extend_scope)
    return self.nonlin(self.norm(y))


def traceable_deform_conv(
    x: torch.Tensor,
    offset: torch.Tensor,
    mask: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: Sequence[int],
    padding: Sequence[int],
) -> torch.Tensor:
    """Modulated deformable convolution (DCNv2, Zhu et al., CVPR 2019) in ops that trace with dynamic sizes, N-D.

    Same contract as :func:`nnunet_tubeconv.blocks.deform.deform_conv_nd` (and ``torchvision.ops.deform_conv2d``):
    ``x`` ``(B, C_in, *S_in)``; ``offset`` ``(B, d * P, *S_out)`` (per kernel point, row-major over the kernel, its
    displacement along each axis in input order); ``mask`` ``(B, P, *S_out)``; ``weight`` ``(C_out, C_in, *k)``.
    Returns ``(B, C_out, *S_out)``, the output size read from ``offset`` (the offset branch is a conv with the same
    kernel, stride and padding). One ``grid_sample`` (bilinear, zeros outside, ``align_corners=False``) per kernel
    point, as the block's own N-D path computes it; exports as ONNX ``GridSample``, 2-D from opset 16, 3-D from 20.
    (Flat gathers as in :func:`traceable_snake_conv` would need ``2^d`` of them per kernel point, 216 per 3x3x3
    layer: a graph that took minutes to export and ran 20 times slower in onnxruntime.)
    """
    import torch.nn.functional as F

    batch, c_in = x.shape[0], x.shape[1]
    dim = x.dim() - 2
    in_spatial = list(x.shape[2:])
    out_spatial = list(offset.shape[2:])
    kernel = list(weight.shape[2:])
    c_out = weight.shape[0]
    sizes = [torch.as_tensor(n, device=x.device).to(torch.float32) for n in in_spatial]
    out_grids = [_axis_grid(out_spatial[a], a, dim, torch.float32, x.device) for a in range(dim)]
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


def _deform_export_forward(self, x: torch.Tensor) -> torch.Tensor:
    """DeformConv.forward with :func:`traceable_deform_conv` in place of torchvision's op / the autograd Function."""
    offset, mask = self.offsets_and_mask(x)
    y = traceable_deform_conv(x, offset, mask, self.conv.weight, self.conv.bias, self.stride, self.padding)
    return self.nonlin(self.norm(self.dropout(y)))


def _substitutes() -> dict[type, types.FunctionType]:
    from nnunet_tubeconv.blocks.deform import DeformConv
    from nnunet_tubeconv.blocks.dsconv import DSConv

    return {DSConv: _dsconv_export_forward, DeformConv: _deform_export_forward}


def replaced_modules(network: nn.Module) -> list[str]:
    """Qualified names of the modules of ``network`` that :func:`exportable` gives an export forward."""
    subs = _substitutes()
    return [name for name, m in network.named_modules() if type(m) in subs]


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


# (module path, attribute, export replacement): module-level helpers that are harmless in eager mode but that the
# TorchScript exporter cannot write. DLK's ``_fast_layout`` converts to channels-last (a CPU speed-up of oneDNN's
# depth-wise kernels); ONNX tensors have no memory format, so the exporter refuses ``contiguous(memory_format=...)``.
_EXPORT_PATCHES: tuple[tuple[str, str, object], ...] = (("nnunet_tubeconv.blocks.dlk", "_fast_layout", _identity),)


@contextlib.contextmanager
def export_patches() -> Iterator[None]:
    """Swap the helpers of :data:`_EXPORT_PATCHES` for their export replacements while the block is active."""
    saved = []
    try:
        for module_name, attr, replacement in _EXPORT_PATCHES:
            module = importlib.import_module(module_name)
            if hasattr(module, attr):
                saved.append((module, attr, getattr(module, attr)))
                setattr(module, attr, replacement)
        yield
    finally:
        for module, attr, original in reversed(saved):
            setattr(module, attr, original)


def exportable(network: nn.Module) -> nn.Module:
    """A deep copy of ``network`` in eval mode whose DSConv and DeformConv modules use traceable export forwards.

    Same parameters and buffers (copied), same outputs up to float rounding; the original is not touched.
    """
    subs = _substitutes()
    net = copy.deepcopy(network).eval()
    for m in net.modules():
        fn = subs.get(type(m))
        if fn is not None:
            m.forward = types.MethodType(fn, m)
    return net
