"""Dynamic snake convolution (DSConv), Qi et al., "Dynamic Snake Convolution based on Topological Geometric
Constraints for Tubular Structure Segmentation", ICCV 2023 (arXiv 2307.08388). Maths: docs/maths.md section 1.

A length-``K`` convolution laid along one spatial axis (the *morph* axis ``a``) whose sample points swing sideways
along the other (*swing*) axes. The swing of kernel point ``j`` is accumulated outward from the centre, so the kernel
bends like a snake::

    delta = tanh(norm(conv3(x)))                      one value per kernel point j != 0 and swing axis s
    Delta_{s,0} = 0,  Delta_{s,+j} = sum_{i=1..j} delta_{s,+i},  Delta_{s,-j} = sum_{i=1..j} delta_{s,-i}
    point_j(p) = p + j * e_a + extend_scope * sum_s Delta_{s,j}(p) * e_s       (clamped to the volume)
    y(p) = sum_j W_j . interp(x, point_j(p)) + b

Implementation (``_SnakeConvFunction``, a hand-written autograd Function): the coordinate along the morph axis is an
exact integer, so the interpolation only needs the ``2^(d-1)`` corners across the swing axes, read with int64 row
indices from a channels-last copy of ``x`` and contracted with ``W`` by a GEMM, chunk by chunk of positions, so no
``K``-times enlarged tensor outlives a chunk. Only ``x``, the swing ``delta`` and the weights are saved for
backward, which recomputes the samples, scatters ``W^T g`` onto the interpolation corners and reads the swing
gradient from the corners' differences. On CPU (float32/float64) the reads, the scatter and the swing gradient run
in compiled C loops (``_cpu_kernels.c`` via :mod:`nnunet_tubeconv.blocks._native`, with the cumulative swing
summed in the loop); elsewhere, or without a C compiler, in PyTorch (``embedding_bag`` for the fused gather +
interpolation, ``scatter_add_``, forward-difference tables). Both give the same numbers; the tests run both.

Deliberate differences from the authors' code (docs/maths.md section 1, defects): batch elements never mix, the centre
point never moves (its swing channel is not even predicted, so no parameter is unused), all ``K - 1`` outer points
get the accumulated swing, indices are int64, the swing branch norm is the stage's ``norm_op`` (GroupNorm when none
or a BatchNorm is given; no norm with ``swing_norm="none"``) and sampling coordinates stay float32 under autocast.

Gradient at the border: a point whose swing pushes it outside the volume is clamped onto the border (replicate
padding) and, like ``torch.clamp``, passes no gradient to its swing from that position.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from nnunet_tubeconv.blocks import _custom_ops, _native, _triton
from nnunet_tubeconv.blocks._traceable import traceable_snake_conv
from nnunet_tubeconv.blocks._utils import (
    _compiling,
    _tracing,
    build_nonlin,
    build_norm,
    check_channels,
    check_input,
    conv_op_to_dim,
    is_batch_norm,
    numel,
)
from nnunet_tubeconv.vocabulary import SWING_NORMS

__all__ = ["SWING_NORMS", "DSConv", "snake_conv"]



# ----------------------------------------------------------------------------------------------------------------
# cumulative swing
# ----------------------------------------------------------------------------------------------------------------
def _cumulative_outer(delta: torch.Tensor, n_swing: int, kernel_size: int) -> torch.Tensor:
    """``delta``: ``(B, n_swing * (K - 1), ...)`` -> cumulative swing of the outer points ``(B, n_swing, K - 1, ...)``.

    Channels per swing axis are the kernel points ``j = -c..-1, +1..+c`` (the centre's swing is 0 and not predicted);
    ``Delta_{+j} = delta_{+1} + ... + delta_{+j}`` and ``Delta_{-j} = delta_{-1} + ... + delta_{-j}``.
    """
    c = kernel_size // 2
    # reshape with the traced sizes (not unflatten, whose trace fixes the batch size): graph capture uses this too
    d = delta.reshape(delta.shape[0], n_swing, kernel_size - 1, *delta.shape[2:])
    return torch.cat([d[:, :, :c].flip(2).cumsum(2).flip(2), d[:, :, c:].cumsum(2)], dim=2)


def _cumulative_outer_backward(grad: torch.Tensor) -> torch.Tensor:
    """Adjoint of :func:`_cumulative_outer`: ``(B, n_swing, K - 1, ...)`` -> ``(B, n_swing * (K - 1), ...)``."""
    c = grad.shape[2] // 2
    # delta_{-i} feeds every Delta_{-j} with j >= i, delta_{+i} every Delta_{+j} with j >= i
    return torch.cat([grad[:, :, :c].cumsum(2), grad[:, :, c:].flip(2).cumsum(2).flip(2)], dim=2).flatten(1, 2)


def _cumulative_swing(delta: torch.Tensor, n_swing: int, kernel_size: int) -> torch.Tensor:
    """Cumulative swing of all K points (the centre's is 0): ``(B, n_swing, K, ...)``."""
    outer = _cumulative_outer(delta, n_swing, kernel_size)
    c = kernel_size // 2
    return torch.cat([outer[:, :, :c], torch.zeros_like(outer[:, :, :1]), outer[:, :, c:]], dim=2)


# ----------------------------------------------------------------------------------------------------------------
# sampling geometry
# ----------------------------------------------------------------------------------------------------------------
# Interpolated samples of one chunk of positions hold about this many elements: small enough to stay in cache on CPU
# and to bound the transient memory on GPU, large enough to amortise the per-operation cost.
_CHUNK_ELEMENTS = 1 << 20


# The CPU kernels' path takes chunks this many times larger: every chunk is a handful of OpenMP parallel regions
# (kernels, GEMMs), and on a 2-core machine shared with other processes each region's barrier waits for a descheduled
# thread; 4x fewer regions made a DSConv forward + backward at nnU-Net's DRIVE plan's stage 2 2-3x faster in wall time
# at load 11 on 2 threads (and no slower alone); 16x was slower (cache). Issue 15.
_NATIVE_CHUNK_SCALE = 4


def _chunks(n: int, per_position: int, scale: int = 1) -> list[tuple[int, int]]:
    """Ranges ``(n0, n1)`` of about equal size covering ``n`` positions, each <= ``scale * _CHUNK_ELEMENTS``
    elements."""
    count = -(-n * max(per_position, 1) // (_CHUNK_ELEMENTS * scale))
    step = -(-n // count)
    return [(n0, min(n, n0 + step)) for n0 in range(0, n, step)]


class _Geometry:
    """Integer coordinates of every flat position of one spatial shape, and the gather plan of a chunk of them.

    The centre point reads ``x`` itself. The value of each of the ``K - 1`` outer points is the weighted sum
    (``embedding_bag``) of its ``Q = 2^n_swing`` interpolation corners, read as rows of the channels-last copy
    ``(B * N, C)`` of ``x``: one fused gather + interpolation for all points of a chunk. Row indices include the
    sample's batch offset ``b * N``, so the samples of a batch never mix, and are int64, so no index loses
    exactness on large volumes.
    """

    def __init__(self, batch: int, spatial: Sequence[int], axis: int, swing_axes: Sequence[int], kernel_size: int,
                 device):
        self.batch = batch
        self.spatial = tuple(int(s) for s in spatial)
        self.n = numel(spatial)
        self.axis = axis
        self.swing_axes = tuple(swing_axes)
        self.strides = [numel(spatial[i + 1 :]) for i in range(len(spatial))]
        flat = torch.arange(self.n, device=device, dtype=torch.int64)
        self.coords = [(flat // st) % s for st, s in zip(self.strides, self.spatial)]  # per axis, (N,)
        c = kernel_size // 2
        self.j = torch.cat([torch.arange(-c, 0), torch.arange(1, c + 1)]).to(device)  # the outer points
        self.batch_offset = (torch.arange(batch, device=device, dtype=torch.int64) * self.n).view(-1, 1, 1)
        # flat-index step from the low to the high interpolation corner along each swing axis (0 on a size-1 axis)
        self.steps = [self.strides[s] if self.spatial[s] > 1 else 0 for s in self.swing_axes]
        n_sw = len(self.swing_axes)
        corners = list(itertools.product((0, 1), repeat=n_sw))  # first swing axis outermost
        self.corner_steps = self._steps_tensor(corners, device)
        self.corner_steps_list = self._steps_list(corners)
        # corners of the other swing axes, for the derivative along each swing axis
        self.other_steps = [
            self._steps_tensor([bits for bits in corners if bits[s] == 0], device) for s in range(n_sw)
        ]
        if n_sw:
            sizes = [self.spatial[s] for s in self.swing_axes]
            self.coord_swing = torch.stack([self.coords[s] for s in self.swing_axes]).view(n_sw, 1, -1, 1)
            self.max_pos = torch.tensor([s - 1.0 for s in sizes], device=device).view(-1, 1, 1, 1)
            self.max_low = torch.tensor([max(s - 2, 0) for s in sizes], device=device, dtype=torch.float32)
            self.max_low = self.max_low.view(-1, 1, 1, 1)
            self.stride_swing = torch.tensor([self.strides[s] for s in self.swing_axes], device=device)
            self.stride_swing = self.stride_swing.view(-1, 1, 1, 1)

    def _steps_list(self, corners) -> list[int]:
        return [sum(b * st for b, st in zip(bits, self.steps)) for bits in corners]

    def _steps_tensor(self, corners, device) -> torch.Tensor:
        return torch.tensor(self._steps_list(corners), device=device, dtype=torch.int64)

    def chunks(self, per_position: int) -> list[tuple[int, int]]:
        return _chunks(self.n, per_position)

    def plan(self, n0: int, n1: int, offsets: torch.Tensor | None):
        """Gather plan of the ``K - 1`` outer points for the positions ``n0 .. n1 - 1`` (``n`` of them).

        ``offsets``: ``(n_swing, B, n, K - 1)`` swing in voxels (scaled by extend_scope) or None.
        Returns ``(low, fracs, inside)``: ``low`` ``(B, n, K - 1)`` int64 row index of the low corner in
        ``(B * N, C)`` (corner ``q`` at ``low + corner_steps[q]``); ``fracs`` ``(n_swing, B, n, K - 1)``
        interpolation fractions and ``inside`` a bool of that shape, False where the unclamped coordinate left the
        volume (no swing gradient there).
        """
        a = self.axis
        base = torch.arange(n0, n1, device=self.j.device, dtype=torch.int64).unsqueeze(1)
        coord_a = self.coords[a][n0:n1].unsqueeze(1)
        # the coordinate along the morph axis is an exact integer: clamping it is replicate padding
        low = base + ((coord_a + self.j).clamp_(0, self.spatial[a] - 1) - coord_a) * self.strides[a]
        low = low + self.batch_offset
        if offsets is None:
            return low, None, None
        coord = self.coord_swing[:, :, n0:n1]
        raw = coord.to(offsets.dtype) + offsets
        max_pos = self.max_pos.to(raw.dtype)
        pos = torch.minimum(raw.clamp(min=0.0), max_pos)
        low_s = torch.minimum(pos.floor(), self.max_low.to(raw.dtype))
        inside = (raw >= 0) & (raw <= max_pos)
        shift = (low_s.to(torch.int64) - coord) * self.stride_swing
        for s in range(shift.shape[0]):
            low = low + shift[s]
        return low, pos - low_s, inside

    @staticmethod
    def corner_weights(fracs: torch.Tensor | None, skip: int = -1, dim: int = -1) -> torch.Tensor | None:
        """Products of ``1 - frac`` / ``frac`` over the swing axes, one per corner, stacked along ``dim``.

        ``fracs``: ``(n_swing, *shape)`` -> ``(*shape, Q)`` (``dim=-1``) in corner order. With ``skip = s`` axis
        ``s`` is left out (``Q / 2`` corners): the weights of the derivative along ``s``, read from the forward
        difference table of ``x`` along ``s``. None stands for a single corner of weight 1.
        """
        if fracs is None:
            return None
        factors = [(1.0 - fracs[s], fracs[s]) for s in range(fracs.shape[0]) if s != skip]
        if not factors:
            return None
        ws = []
        for bits in itertools.product((0, 1), repeat=len(factors)):
            w = factors[0][bits[0]]
            for f, bit in zip(factors[1:], bits[1:]):
                w = w * f[bit]
            ws.append(w)
        return torch.stack(ws, dim=dim)


def _embedding_rows(table: torch.Tensor, low: torch.Tensor, steps: torch.Tensor, weights: torch.Tensor | None):
    """``(B * n * (K - 1), C)``: per sample, the weighted sum of the rows ``low + steps[q]`` of ``table``."""
    q = steps.numel()
    idx = (low.unsqueeze(-1) + steps).view(-1, q)
    w = None if weights is None else weights.reshape(-1, q).to(table.dtype)
    if w is None and q > 1:
        w = torch.ones(idx.shape, device=table.device, dtype=table.dtype)
    return F.embedding_bag(idx, table, per_sample_weights=w, mode="sum")


def _all_offsets(delta: torch.Tensor | None, n_swing: int, kernel_size: int, scale: float) -> torch.Tensor | None:
    """Cumulative swing of the outer points in voxels: ``(B, n_swing*(K-1), N)`` -> ``(n_swing, B, N, K - 1)`` view."""
    if delta is None:
        return None
    return (_cumulative_outer(delta, n_swing, kernel_size) * scale).permute(1, 0, 3, 2)


def _to_rows(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, *S)`` -> contiguous channels-last rows ``(B * N, C)``."""
    return x.movedim(1, -1).reshape(-1, x.shape[1])


def _difference_rows(x_rows: torch.Tensor, step: int) -> torch.Tensor:
    """Forward difference ``x[r + step] - x[r]`` of the rows (0 where it would leave the table or ``step == 0``).

    Rows whose coordinate along the axis is the last one hold a meaningless difference; the plan never reads them,
    as the low interpolation corner is at most ``size - 2`` along every swing axis of size >= 2.
    """
    out = torch.zeros_like(x_rows)
    if step:
        torch.sub(x_rows[step:], x_rows[:-step], out=out[:-step])
    return out


def _split_weight(weight: torch.Tensor):
    """``(C_out, C_in, K)`` -> outer points ``(C_out, (K - 1) * C_in)`` ordered (point, channel), centre ``(C_out,
    C_in)``, and all points ``(C_out, C_in, K)`` reordered outer points first, centre last."""
    k = weight.shape[2]
    c = k // 2
    order = [i for i in range(k) if i != c] + [c]
    w_perm = weight[:, :, order]
    return w_perm[:, :, :-1].transpose(1, 2).reshape(weight.shape[0], -1), weight[:, :, c], w_perm


def _merge_weight_grad(grad_w_outer: torch.Tensor, grad_w_centre: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The inverse of :func:`_split_weight` for gradients: outer ``(C_out, (K - 1) * C_in)`` ordered (point, channel)
    and centre ``(C_out, C_in)`` -> ``(C_out, C_in, K)`` in ``dtype``."""
    c_out, c_in = grad_w_centre.shape
    outer = grad_w_outer.view(c_out, -1, c_in).transpose(1, 2)
    c = outer.shape[2] // 2
    return torch.cat([outer[:, :, :c], grad_w_centre.unsqueeze(2), outer[:, :, c:]], dim=2).to(dtype)


# ----------------------------------------------------------------------------------------------------------------
# the autograd function
# ----------------------------------------------------------------------------------------------------------------
class _SnakeConvFunction(torch.autograd.Function):
    """``y = sum_j W_j . interp(x, point_j) + b``; saves ``x``, ``delta`` and the weights only.

    Chunk by chunk of positions: the ``K - 1`` outer samples of every position come from one ``embedding_bag`` (fused
    gather + interpolation, ``(B*n, (K-1)*C_in)``) and are contracted with ``W`` by one GEMM, the centre by another.
    Backward recomputes the samples for the weight gradient, scatters ``W^T g`` onto each interpolation corner
    (``scatter_add_``, int64 indices) for the input gradient, and reads the swing gradient from the forward
    differences of ``x`` along each swing axis (``embedding_bag`` again).
    """

    @staticmethod
    def forward(ctx, x, delta, weight, bias, axis: int, swing_axes: tuple[int, ...], extend_scope: float):
        native = _native.kernels(x, delta, weight, axis, swing_axes)
        ctx.save_for_backward(x, delta, weight)
        ctx.has_bias = bias is not None
        ctx.axis, ctx.swing_axes, ctx.extend_scope = axis, swing_axes, extend_scope
        if native is not None:
            with torch.autocast("cpu", enabled=False):
                return _native_forward(native, x, delta, weight, bias, extend_scope)
        if _triton.usable(x, delta, weight):  # CUDA with Triton: the kernels of _triton_kernels.py
            return _triton.forward(x, delta, weight, bias, axis, swing_axes, extend_scope)
        with torch.autocast(x.device.type, enabled=False):
            batch, c_in, *spatial = x.shape
            c_out, _, kernel_size = weight.shape
            geo = _Geometry(batch, spatial, axis, swing_axes, kernel_size, x.device)
            x_rows = _to_rows(x)
            x_pos = x_rows.view(batch, geo.n, c_in)
            delta_f = None if delta is None else delta.reshape(batch, delta.shape[1], geo.n)
            w_outer, w_centre, _ = _split_weight(weight)
            w_outer_t, w_centre_t = w_outer.t(), w_centre.t()
            offsets_all = _all_offsets(delta_f, len(swing_axes), kernel_size, extend_scope)
            y = torch.empty(batch, c_out, geo.n, device=x.device, dtype=x.dtype)
            for n0, n1 in geo.chunks(batch * kernel_size * c_in):
                x_c = x_pos[:, n0:n1].reshape(-1, c_in)
                yc = x_c @ w_centre_t if bias is None else torch.addmm(bias, x_c, w_centre_t)
                if kernel_size > 1:
                    offsets = None if offsets_all is None else offsets_all[:, :, n0:n1]
                    low, fracs, _ = geo.plan(n0, n1, offsets)
                    s = _embedding_rows(x_rows, low, geo.corner_steps, geo.corner_weights(fracs))
                    yc.addmm_(s.view(yc.shape[0], -1), w_outer_t)
                y[:, :, n0:n1] = yc.view(batch, n1 - n0, c_out).transpose(1, 2)
        return y.view(batch, c_out, *spatial)

    @staticmethod
    def backward(ctx, grad_out):
        x, delta, weight = ctx.saved_tensors
        need_x, need_delta, need_w, need_b = ctx.needs_input_grad[:4]
        need_delta = need_delta and delta is not None
        native = _native.kernels(x, delta, weight, ctx.axis, ctx.swing_axes)
        if native is not None:
            with torch.autocast("cpu", enabled=False):
                return _native_backward(native, ctx, grad_out, x, delta, weight, (need_x, need_delta, need_w, need_b))
        if _triton.usable(x, delta, weight):
            return (*_triton.backward(grad_out, x, delta, weight, ctx.has_bias, ctx.axis, ctx.swing_axes,
                                      ctx.extend_scope, (need_x, need_delta, need_w, need_b)), None, None, None)
        with torch.autocast(x.device.type, enabled=False):
            batch, c_in, *spatial = x.shape
            c_out, _, kernel_size = weight.shape
            swing_axes = ctx.swing_axes
            geo = _Geometry(batch, spatial, ctx.axis, swing_axes, kernel_size, x.device)
            x_rows = _to_rows(x)
            x_pos = x_rows.view(batch, geo.n, c_in)
            delta_f = None if delta is None else delta.reshape(batch, delta.shape[1], geo.n)
            g = grad_out.to(x.dtype).reshape(batch, c_out, geo.n)
            acc = torch.promote_types(x.dtype, torch.float32)
            w_outer, _, w_perm = _split_weight(weight)
            # (B, C_in * K, C_out), rows ordered (channel, point) with the centre point last
            w_col = w_perm.reshape(c_out, c_in * kernel_size).t().expand(batch, -1, -1)
            grad_xf = torch.zeros(batch, c_in, geo.n, device=x.device, dtype=acc) if need_x else None
            grad_w_outer = torch.zeros(c_out, (kernel_size - 1) * c_in, device=x.device, dtype=acc)
            grad_w_centre = torch.zeros(c_out, c_in, device=x.device, dtype=acc)
            offsets_all = _all_offsets(delta_f, len(swing_axes), kernel_size, ctx.extend_scope)
            grad_offsets = torch.empty_like(offsets_all) if need_delta else None  # (n_swing, B, N, K - 1)
            diffs = [_difference_rows(x_rows, st) for st in geo.steps] if need_delta else []
            buf = None
            for n0, n1 in geo.chunks(batch * kernel_size * c_in):
                n = n1 - n0
                offsets = None if offsets_all is None else offsets_all[:, :, n0:n1]
                low, fracs, inside = geo.plan(n0, n1, offsets)
                weights = geo.corner_weights(fracs)  # (B, n, K - 1, Q)
                g_chunk = g[:, :, n0:n1]
                g_rows = g_chunk.transpose(1, 2).reshape(batch * n, c_out)
                if need_w:
                    grad_w_centre += (g_rows.t() @ x_pos[:, n0:n1].reshape(-1, c_in)).to(acc)
                    s = _embedding_rows(x_rows, low, geo.corner_steps, weights).view(batch * n, -1)
                    grad_w_outer += (g_rows.t() @ s).to(acc)
                if need_x:
                    # W^T g of every sample, (B, C_in, K, n) with the centre last: the centre's goes straight to
                    # its own position, the others onto each interpolation corner with its weight
                    gt = torch.bmm(w_col, g_chunk).view(batch, c_in, kernel_size, n).to(acc)
                    grad_xf[:, :, n0:n1] += gt[:, :, -1]
                    gt = gt[:, :, :-1]
                    low_t = (low.transpose(1, 2) - geo.batch_offset).contiguous()  # (B, K - 1, n) spatial index
                    w_t = None
                    if fracs is not None:  # (B, Q, K - 1, n)
                        w_t = geo.corner_weights(fracs.transpose(2, 3).contiguous(), dim=1).to(acc)
                    # all corners at once: (B, C_in, Q, K - 1, n), one multiply and one scatter
                    src = gt.unsqueeze(2)
                    if w_t is not None:
                        size = gt.numel() * w_t.shape[1]
                        if buf is None or buf.numel() < size:
                            buf = torch.empty(size, device=x.device, dtype=acc)
                        src = torch.mul(src, w_t.unsqueeze(1), out=buf[:size].view(batch, c_in, *w_t.shape[1:]))
                    idx = low_t.unsqueeze(1) + geo.corner_steps.view(-1, 1, 1)  # (B, Q, K - 1, n)
                    grad_xf.scatter_add_(2, idx.view(batch, 1, -1).expand(batch, c_in, -1), src.reshape(batch, c_in, -1))
                if need_delta:
                    gt_rows = (g_rows @ w_outer).view(-1, c_in, 1)  # (B*n*(K-1), C_in, 1): W^T g of every sample
                    for s in range(len(swing_axes)):
                        d_s = _embedding_rows(diffs[s], low, geo.other_steps[s], geo.corner_weights(fracs, skip=s))
                        dfrac = torch.bmm(d_s.unsqueeze(1), gt_rows).view(batch, n, -1).to(offsets.dtype)
                        torch.mul(dfrac, inside[s], out=grad_offsets[s, :, n0:n1])
            grad_x = grad_xf.view(x.shape).to(x.dtype) if need_x else None
            grad_w = None
            if need_w:
                grad_w = _merge_weight_grad(grad_w_outer, grad_w_centre, weight.dtype)
            grad_d = None
            if need_delta:
                grad_d = _cumulative_outer_backward(grad_offsets.permute(1, 0, 3, 2) * ctx.extend_scope)
                grad_d = grad_d.view(delta.shape).to(delta.dtype)
            grad_b = g.sum((0, 2)).to(weight.dtype) if (need_b and ctx.has_bias) else None
        return grad_x, grad_d, grad_w, grad_b, None, None, None


def _native_forward(native, x, delta, weight, bias, extend_scope):
    """Forward of :class:`_SnakeConvFunction` with the compiled CPU kernels (``_cpu_kernels.c``) for the reads."""
    batch, c_in, *spatial = x.shape
    c_out, _, kernel_size = weight.shape
    n_all = numel(spatial)
    x_rows = _to_rows(x).contiguous()
    x_pos = x_rows.view(batch, n_all, c_in)
    delta_f = None if delta is None else delta.reshape(batch, -1, n_all).contiguous()
    w_outer, w_centre, _ = _split_weight(weight)
    w_centre = w_centre.contiguous()
    y = torch.empty(batch, c_out, n_all, dtype=x.dtype)
    chunks = _chunks(n_all, batch * kernel_size * c_in, _NATIVE_CHUNK_SCALE)
    samples = torch.empty(batch * (chunks[0][1] - chunks[0][0]) * (kernel_size - 1) * c_in, dtype=x.dtype)
    for n0, n1 in chunks:
        x_c = x_pos[:, n0:n1].reshape(-1, c_in)
        yc = _native.linear(x_c, w_centre, bias)  # the GEMMs on oneDNN where available (_native.linear)
        if kernel_size > 1:
            s = samples[: batch * (n1 - n0) * (kernel_size - 1) * c_in].view(batch * (n1 - n0), -1)
            native.sample(x_rows, delta_f, extend_scope, s, n0, n1)
            yc += _native.linear(s, w_outer)
        y[:, :, n0:n1] = yc.view(batch, n1 - n0, c_out).transpose(1, 2)
    return y.view(batch, c_out, *spatial)


def _native_backward(native, ctx, grad_out, x, delta, weight, needs):
    """Backward of :class:`_SnakeConvFunction` with the compiled CPU kernels: per chunk, ``W^T g`` of every sample
    by a GEMM, then one kernel reads the samples (weight gradient) and the swing gradient, another scatters
    ``W^T g`` onto the interpolation corners (input gradient)."""
    need_x, need_delta, need_w, need_b = needs
    batch, c_in, *spatial = x.shape
    c_out, _, kernel_size = weight.shape
    n_all = numel(spatial)
    scope = ctx.extend_scope
    x_rows = _to_rows(x).contiguous()
    x_pos = x_rows.view(batch, n_all, c_in)
    delta_f = None if delta is None else delta.reshape(batch, -1, n_all).contiguous()
    g = grad_out.to(x.dtype).reshape(batch, c_out, n_all)
    w_outer, w_centre, _ = _split_weight(weight)
    # transposed copies as linear weights: g @ W = linear(g, W^T) (the GEMMs on oneDNN where available)
    w_outer_lt, w_centre_lt = w_outer.t().contiguous(), w_centre.t().contiguous()
    grad_rows = torch.zeros(batch, n_all, c_in, dtype=x.dtype) if need_x else None
    grad_delta = torch.empty_like(delta_f) if need_delta else None  # (B, n_swing * (K - 1), N)
    grad_w_outer = torch.zeros(c_out, (kernel_size - 1) * c_in, dtype=x.dtype)
    grad_w_centre = torch.zeros(c_out, c_in, dtype=x.dtype)
    chunks = _chunks(n_all, batch * kernel_size * c_in, _NATIVE_CHUNK_SCALE)
    samples = torch.empty(batch * (chunks[0][1] - chunks[0][0]) * (kernel_size - 1) * c_in, dtype=x.dtype)
    for n0, n1 in chunks:
        n = n1 - n0
        g_rows = g[:, :, n0:n1].transpose(1, 2).reshape(batch * n, c_out)
        if need_w:
            grad_w_centre += _native.linear(g_rows.t(), x_pos[:, n0:n1].reshape(-1, c_in).t())  # g^T x
        if need_x:
            grad_rows[:, n0:n1] += _native.linear(g_rows, w_centre_lt).view(batch, n, c_in)
        if kernel_size == 1:
            continue
        # (B * n, (K - 1) * C_in): W^T g per sample
        gt = _native.linear(g_rows, w_outer_lt) if (need_x or need_delta) else None
        s = samples[: batch * n * (kernel_size - 1) * c_in].view(batch * n, -1) if need_w else None
        if need_w or need_delta:
            native.gather_backward(x_rows, delta_f, scope, gt if gt is not None else s, s, grad_delta, n0, n1)
        if need_w:
            grad_w_outer += _native.linear(g_rows.t(), s.t())  # g^T s
        if need_x:
            native.scatter(grad_rows, delta_f, scope, gt, n0, n1)
    grad_x = None
    if need_x:
        grad_x = grad_rows.view(batch, *spatial, c_in).movedim(-1, 1).contiguous()
    grad_w = None
    if need_w:
        grad_w = _merge_weight_grad(grad_w_outer, grad_w_centre, weight.dtype)
    grad_d = grad_delta.view(delta.shape) if need_delta else None
    grad_b = g.sum((0, 2)) if (need_b and ctx.has_bias) else None
    return grad_x, grad_d, grad_w, grad_b, None, None, None


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
    if _tracing():
        return _traced_snake_conv(x, delta, weight, bias, axis, swing_axes, float(extend_scope))
    return _apply_snake_conv(x, delta, weight, bias, axis, swing_axes, float(extend_scope))


def _apply_snake_conv(x, delta, weight, bias, axis: int, swing_axes: tuple[int, ...], extend_scope: float):
    """The eager Function, or, under ``torch.compile``, the same Function behind the custom op of
    ``_custom_ops.py`` (the compiler cannot trace into its kernels; the op runs them as they are)."""
    if _compiling():
        return _custom_ops.snake_conv(x, delta, weight, bias, axis, swing_axes, extend_scope)
    return _SnakeConvFunction.apply(x, delta, weight, bias, axis, swing_axes, extend_scope)


def _traced_snake_conv(x, delta, weight, bias, axis: int, swing_axes: tuple[int, ...], extend_scope: float):
    """The snake convolution in plain tensor operations, for graph capture (the rule of ``_utils._tracing``)."""
    offsets = None
    if delta is not None and swing_axes:
        offsets = _cumulative_swing(delta.float(), len(swing_axes), weight.shape[2]) * extend_scope
    return traceable_snake_conv(x, offsets, weight, bias, axis, swing_axes)


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
            raise ValueError(f"axis must index a spatial axis of the {dim}D input: an int in [0, {dim - 1}], got {axis!r}")
        if not isinstance(extend_scope, (int, float)) or isinstance(extend_scope, bool) or not extend_scope > 0:
            raise ValueError(f"extend_scope must be a positive number, got {extend_scope!r}")
        if swing_axes is None:
            swing_axes = tuple(i for i in range(dim) if i != axis)
        else:
            swing_axes = tuple(swing_axes)
            bad = [s for s in swing_axes if not isinstance(s, int) or not 0 <= s < dim or s == axis]
            if bad or len(set(swing_axes)) != len(swing_axes):
                raise ValueError(
                    f"swing_axes must be distinct spatial axes in [0, {dim - 1}] other than axis={axis}, got {swing_axes}"
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
                # BatchNorm would couple the samples of a batch and drift between train and eval (docs/maths.md section 1)
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
        """Raw swing ``delta = tanh(norm(conv3(x)))`` (``tanh(conv3(x))`` with ``swing_norm="none"``): float32 ``(B, n_swing * (K - 1), *S)`` or None (no swing)."""
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
            offsets = _cumulative_swing(delta, len(self.swing_axes), k_size) * self.extend_scope
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
        if _tracing():
            y = _traced_snake_conv(x, delta, weight, bias, self.axis, self.swing_axes, self.extend_scope)
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
