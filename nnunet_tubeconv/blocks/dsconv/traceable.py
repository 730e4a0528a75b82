"""DSConv's snake convolution in plain tensor operations, which every graph export takes (ONNX, TorchScript,
torch.export).

Why this exists: :class:`~nnunet_tubeconv.blocks.dsconv.DSConv` computes its snake convolution inside a custom
``torch.autograd.Function`` (a memory-lean backward, compiled CPU kernels). Neither of torch's ONNX exporters takes it
with dynamic spatial axes (torch 2.14): the TorchScript exporter crashes in its peephole pass on the inlined Python
op, and the dynamo exporter specialises the spatial sizes (Python ``max``/``int`` on sizes inside the Function), so
the model only accepts the example shape. The functions here compute the same maths (docs/explanation/maths.md,
DSConv) with plain tensor operations whose every size is derived from the input's traced shape. DSConv calls them by
itself while a graph is exported (:func:`nnunet_tubeconv.blocks.utils.tracing`); tests compare them with the eager
forward.
``torch.compile`` does not come here: it takes the kernels as a custom op (:mod:`.custom_ops`). DeformConv's
counterpart is :func:`nnunet_tubeconv.blocks.deform.traceable_deform_conv`.

The sampling uses flat int64 gathers (ONNX ``GatherElements``), not ``grid_sample``: the coordinate along the morph
axis is an exact integer, so interpolation only needs the ``2^(d-1)`` corners across the swing axes, and gathers
export at any opset and in 3D (ONNX ``GridSample`` is 2-D only before opset 20).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch

from nnunet_tubeconv.blocks.dsconv.maths import cumulative_swing
from nnunet_tubeconv.blocks.utils import axis_grid

__all__ = ["traceable_snake_conv", "traced_snake_conv"]


def traceable_snake_conv(
    x: torch.Tensor,
    offsets: torch.Tensor | None,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    axis: int,
    swing_axes: Sequence[int],
) -> torch.Tensor:
    """Snake convolution (stride 1, border replication) in ops that trace with dynamic sizes.

    ``x`` ``(B, C_in, *S)``; ``offsets`` ``(B, len(swing_axes), K, *S)``: the cumulative swing of every kernel point
    in voxels (``extend_scope`` applied, the centre's 0; :func:`.maths.cumulative_swing`), or None for no swing;
    ``weight`` ``(C_out, C_in, K)``; ``bias`` ``(C_out,)`` or None. Returns ``(B, C_out, *S)``, as
    :func:`nnunet_tubeconv.blocks.dsconv.snake_conv` does. Every size is read from ``x.shape`` at run time (under a
    tracer these are graph values, so the captured graph accepts any spatial size).
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
    grids = [axis_grid(spatial[i], i, dim, torch.int64, device) for i in range(dim)]
    base = zero
    for i in range(dim):
        if i != axis and i not in swing_axes:
            base = base + grids[i] * strides[i]
    if len(swing_axes) == 0:
        offsets = None
    xf = x.reshape(batch, c_in, -1)  # (B, C_in, N)

    # per swing axis: float grid, largest coordinate, largest "low" corner (size - 2, at least 0)
    swing_parts = []
    for s in swing_axes:
        top = sizes[s] - 1
        swing_parts.append((s, axis_grid(spatial[s], s, dim, torch.float32, device), top.to(torch.float32),
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


def traced_snake_conv(x, delta, weight, bias, axis: int, swing_axes: tuple[int, ...], extend_scope: float):
    """:func:`traceable_snake_conv` from the raw swing ``delta`` ``(B, n_swing * (K - 1), *S)`` (or None), with the
    arguments of :func:`nnunet_tubeconv.blocks.dsconv.snake_conv`: what DSConv runs while a graph is exported."""
    offsets = None
    if delta is not None and swing_axes:
        offsets = cumulative_swing(delta.float(), len(swing_axes), weight.shape[2]) * extend_scope
    return traceable_snake_conv(x, offsets, weight, bias, axis, swing_axes)
